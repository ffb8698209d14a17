"""Drive NVIDIA's ``perf_analyzer`` with the harness's shapes and parse its CSV into the same report.

The tensor path sends random FP32 ``pixel_values`` (``--input-data random``; with ``--shared-memory system``
for the shared-memory runtimes); the bytes path sends the benchmark's own encoded images through a JSON
input file (base64). Its CSV reports microseconds; rows here use milliseconds like the harness's cells.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MISSING = "perf_analyzer is not installed (it ships in Triton's SDK image or the perf-analyzer pip package)"


def perf_analyzer_missing() -> str | None:
    """Why perf_analyzer cannot run here; ``None`` when it is on ``PATH``."""
    return None if shutil.which("perf_analyzer") else MISSING


def bytes_input_file(encoded: Sequence[bytes], path: str | Path, limit: int = 64) -> Path:
    """Write perf_analyzer's JSON input data: one ``image`` per entry, base64-encoded, cycled by the tool."""
    data = [{"image": {"b64": base64.b64encode(item).decode("ascii")}} for item in list(encoded)[:limit]]
    path = Path(path)
    path.write_text(json.dumps({"data": data}))
    return path


def build_command(
    model: str,
    url: str,
    protocol: str,
    batch: int,
    concurrency: int,
    csv_path: str | Path,
    measurement_ms: int = 5000,
    input_data: str | Path | None = None,
    shared_memory: bool = False,
    output_bytes: int = 0,
    headers: dict[str, str] | None = None,
) -> list[str]:
    """The perf_analyzer command line for one (model, batch, concurrency) point."""
    command = [
        "perf_analyzer",
        "-m",
        model,
        "-u",
        url,
        "-i",
        protocol,
        "-b",
        str(batch),
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--measurement-interval",
        str(int(measurement_ms)),
        "--percentile",
        "99",
        "-f",
        str(csv_path),
        "--input-data",
        str(input_data) if input_data else "random",
    ]
    for key, value in (headers or {}).items():
        command += ["-H", f"{key}:{value}"]  # the restricted shared-memory API wants the server's admin key
    if shared_memory:
        command += ["--shared-memory", "system", "--output-shared-memory-size", str(max(output_bytes, 1024))]
    return command


def _us_to_ms(row: dict[str, str], key: str) -> float | None:
    value = row.get(key)
    if value in (None, ""):
        return None
    return float(value) / 1e3


def parse_csv(text: str, model: str, batch: int) -> list[dict[str, Any]]:
    """Rows of perf_analyzer's ``-f`` CSV as report rows (images/s, latencies and the server split in ms)."""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        if not row.get("Concurrency"):
            continue
        compute = [
            _us_to_ms(row, key)
            for key in ("Server Compute Input", "Server Compute Infer", "Server Compute Output", "Server Compute")
        ]
        rows.append(
            {
                "model": model,
                "batch": batch,
                "concurrency": int(float(row["Concurrency"])),
                # perf_analyzer counts inferences, i.e. images (requests x batch)
                "images_per_s": float(row["Inferences/Second"]),
                "p50_ms": _us_to_ms(row, "p50 latency"),
                "p90_ms": _us_to_ms(row, "p90 latency"),
                "p95_ms": _us_to_ms(row, "p95 latency"),
                "p99_ms": _us_to_ms(row, "p99 latency"),
                "client_send_ms": _us_to_ms(row, "Client Send"),
                "network_server_ms": _us_to_ms(row, "Network+Server Send/Recv"),
                "queue_ms": _us_to_ms(row, "Server Queue"),
                "compute_ms": sum(value for value in compute if value is not None) if any(compute) else None,
                "client_recv_ms": _us_to_ms(row, "Client Recv"),
            }
        )
    return rows


def run_point(command: list[str], csv_path: Path, model: str, batch: int, timeout_s: float) -> list[dict[str, Any]]:
    """Run one perf_analyzer command and parse its CSV.

    Raises:
        RuntimeError: it failed or produced no CSV (the message carries its last output line).
    """
    logger.debug("running %s", " ".join(command))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"perf_analyzer timed out after {timeout_s:.0f} s") from exc
    if done.returncode != 0 or not csv_path.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"perf_analyzer exited with {done.returncode}: {tail[0]}")
    return parse_csv(csv_path.read_text(), model, batch)


def sweep(
    runtimes: dict[str, Any],
    encoded: Sequence[bytes],
    folder: Path,
    batch_sizes: Sequence[int],
    concurrencies: Sequence[int],
    duration_s: float,
) -> dict[str, Any]:
    """perf_analyzer over every Triton runtime at the harness's batch sizes and concurrencies.

    Returns:
        ``{"skipped": reason}`` without perf_analyzer, else ``{"rows": [...], "errors": [...]}``.
    """
    missing = perf_analyzer_missing()
    if missing:
        logger.warning("--perf-analyzer: %s; skipped", missing)
        return {"skipped": missing}
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    images_json = bytes_input_file(encoded, folder / "images.json")
    for name, runtime in runtimes.items():
        view = runtime.triton_view()
        if view is None:
            continue
        model = view[1]
        protocol = runtime.spec.option("protocol")
        for batch in batch_sizes:
            for concurrency in concurrencies:
                csv_path = folder / f"{name}-b{batch}-c{concurrency}.csv"
                command = build_command(
                    model,
                    runtime.served.endpoints[protocol],
                    protocol,
                    batch,
                    concurrency,
                    csv_path,
                    measurement_ms=int(max(1.0, duration_s) * 1000),
                    input_data=images_json if runtime.input_kind == "bytes" else None,
                    shared_memory=bool(runtime.spec.option("shm")),
                    output_bytes=batch * runtime.served.num_labels * 4,
                    headers=runtime.served.admin_headers if runtime.spec.option("shm") else None,
                )
                try:
                    for row in run_point(command, csv_path, model, batch, timeout_s=120 + 10 * duration_s):
                        rows.append({**row, "runtime": name})
                except RuntimeError as exc:
                    errors.append(f"{name} b{batch} c{concurrency}: {exc}")
    return {"rows": rows, "errors": errors}
