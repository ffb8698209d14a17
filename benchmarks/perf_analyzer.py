"""Drive NVIDIA's ``perf_analyzer`` with the harness's shapes and parse its CSV into the same report.

The tensor path sends random FP32 ``pixel_values`` (``--input-data random``; with ``--shared-memory system``
for the shared-memory runtimes); the bytes path sends the benchmark's own encoded images through a JSON
input file. perf_analyzer builds a request of ``-b N`` from N consecutive entries of that file, and a ``BYTES``
tensor's base64 content must be serialized as Triton does on the wire: each element a 4-byte little-endian
length and then its bytes. Without that prefix the server reads a JPEG's first four bytes as a length of
gigabytes, takes the whole batch for one element and refuses it ("expected 8 string elements for inference
input 'image' ..., got 1"), which is what perf_analyzer 2.51 showed before :func:`bytes_input_file` wrote it.

Measurement: count windows (``--measurement-mode count_windows``) of at least ``--measurement-request-count``
requests, sized from the requests aigi's own cell completed so a slow CPU model still gets several requests per
window; stable when the last three windows agree within :data:`STABILITY_PCT` percent, at most
:data:`MAX_TRIALS` windows. A point that does not settle is measured once more with :data:`RELAXED_STABILITY_PCT`
and its row says so. Its CSV reports microseconds; rows here use milliseconds like the harness's cells.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MISSING = "perf_analyzer is not installed (it ships in Triton's SDK image or the perf-analyzer pip package)"


def perf_analyzer_missing() -> str | None:
    """Why perf_analyzer cannot run here; ``None`` when it is on ``PATH``."""
    return None if shutil.which("perf_analyzer") else MISSING


STABILITY_PCT = 25
RELAXED_STABILITY_PCT = 50
MAX_TRIALS = 6
MIN_WINDOW_REQUESTS = 8
UNSTABLE = "Failed to obtain stable measurement"


def serialize_bytes_element(item: bytes) -> bytes:
    """One ``BYTES`` element as Triton serializes it: a 4-byte little-endian length, then the bytes."""
    return struct.pack("<I", len(item)) + item


def bytes_input_file(encoded: Sequence[bytes], path: str | Path, limit: int = 64) -> Path:
    """Write perf_analyzer's JSON input data: one ``image`` per entry (one batch element), serialized with its
    length prefix and base64-encoded; perf_analyzer fills a batch of ``-b N`` from N consecutive entries."""
    data = [
        {"image": {"b64": base64.b64encode(serialize_bytes_element(item)).decode("ascii")}}
        for item in list(encoded)[:limit]
    ]
    path = Path(path)
    path.write_text(json.dumps({"data": data}))
    return path


def window_requests(our_requests: int | None) -> int:
    """Requests per count window: half of what aigi's own cell completed (so three windows take about 1.5 times
    its length), at least :data:`MIN_WINDOW_REQUESTS`."""
    return max(MIN_WINDOW_REQUESTS, (our_requests or 0) // 2)


def build_command(
    model: str,
    url: str,
    protocol: str,
    batch: int,
    concurrency: int,
    csv_path: str | Path,
    window_requests: int = MIN_WINDOW_REQUESTS,
    input_data: str | Path | None = None,
    shared_memory: bool = False,
    output_bytes: int = 0,
    headers: dict[str, str] | None = None,
    stability_pct: int = STABILITY_PCT,
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
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        str(int(window_requests)),
        "--stability-percentage",
        str(int(stability_pct)),
        "--max-trials",
        str(MAX_TRIALS),
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
    csv_path.unlink(missing_ok=True)  # an earlier attempt's CSV must not pass for this one's
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"perf_analyzer timed out after {timeout_s:.0f} s") from exc
    if done.returncode != 0 or not csv_path.is_file():
        output = f"{done.stdout}\n{done.stderr}"
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        why = UNSTABLE if UNSTABLE in output else tail[0]
        raise RuntimeError(f"perf_analyzer exited with {done.returncode}: {why}")
    return parse_csv(csv_path.read_text(), model, batch)


def _measure_point(runtime: Any, model: str, batch: int, concurrency: int, csv_path: Path, **options: Any) -> list:
    """One point; a point that does not settle within :data:`STABILITY_PCT` is measured again with
    :data:`RELAXED_STABILITY_PCT` (rows carry the ``stability_pct`` they settled at)."""
    protocol = runtime.spec.option("protocol")
    shm = bool(runtime.spec.option("shm"))
    timeout_s = options.pop("timeout_s")
    for stability in (STABILITY_PCT, RELAXED_STABILITY_PCT):
        command = build_command(
            model,
            runtime.served.endpoints[protocol],
            protocol,
            batch,
            concurrency,
            csv_path,
            shared_memory=shm,
            output_bytes=batch * runtime.served.num_labels * 4,
            headers=runtime.served.admin_headers if shm else None,
            stability_pct=stability,
            **options,
        )
        try:
            return [
                {**row, "stability_pct": stability} for row in run_point(command, csv_path, model, batch, timeout_s)
            ]
        except RuntimeError as exc:
            if UNSTABLE not in str(exc) or stability == RELAXED_STABILITY_PCT:
                raise
            logger.info(
                "perf_analyzer %s b%d c%d: not stable within %d%%; again with %d%%",
                model,
                batch,
                concurrency,
                stability,
                RELAXED_STABILITY_PCT,
            )
    raise AssertionError("unreachable")


def sweep(
    runtimes: dict[str, Any],
    encoded: Sequence[bytes],
    folder: Path,
    batch_sizes: Sequence[int],
    concurrencies: Sequence[int],
    duration_s: float,
    our_requests: dict[tuple[str, int, int], int] | None = None,
) -> dict[str, Any]:
    """perf_analyzer over every Triton runtime at the harness's batch sizes and concurrencies.

    Args:
        our_requests: requests aigi's own cell completed, per ``(runtime, batch, concurrency)``; sizes the count
            windows (:func:`window_requests`).

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
        for batch in batch_sizes:
            for concurrency in concurrencies:
                requests = window_requests((our_requests or {}).get((name, batch, concurrency)))
                try:
                    point = _measure_point(
                        runtime,
                        view[1],
                        batch,
                        concurrency,
                        folder / f"{name}-b{batch}-c{concurrency}.csv",
                        window_requests=requests,
                        input_data=images_json if runtime.input_kind == "bytes" else None,
                        timeout_s=120 + 20 * duration_s,
                    )
                    rows += [{**row, "runtime": name} for row in point]
                except RuntimeError as exc:
                    errors.append(f"{name} b{batch} c{concurrency}: {exc}")
    return {"rows": rows, "errors": errors}
