"""Load check: concurrent clients against a local Triton server that is restarted mid-run.

``python -m aigi.benchmarks.load_check --repo DIR --concurrency 16 --duration 60 --out DIR``

Starts its own server on 127.0.0.1 (free ports), runs ``--concurrency`` client threads for
``--duration`` seconds, each sending small batches of generated images (a few of them invalid on
purpose), stops and restarts the server halfway, and checks that every image sent came back with
either a verdict or an explicit error: none silently lost, no valid image refused (a restart must
cost retries, not verdicts), every invalid image refused. Writes ``load_check.json`` and ``LOAD_CHECK.md`` to ``--out``;
exits 1 when a check fails. The loop is bounded by ``--duration`` and ``--max-calls``.
"""

from __future__ import annotations

import argparse
import io
import logging
import random
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from aigi.checkpoint import write_json_atomic
from aigi.client.detector import Detector
from aigi.errors import AigiError, ClientError
from aigi.server import TritonServer

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


def make_images(count: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """``count`` valid PNG/JPEG images of assorted sizes, and invalid payloads (empty, junk, truncated)."""
    rng = np.random.default_rng(seed)
    valid = []
    for index in range(count):
        height, width = int(rng.integers(120, 400)), int(rng.integers(120, 400))
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            buffer, format="PNG" if index % 2 else "JPEG"
        )
        valid.append(buffer.getvalue())
    invalid = [b"", b"this is not an image", valid[0][: len(valid[0]) // 3]]
    return valid, invalid


@dataclass
class Tally:
    """Per-image and per-call counts, merged from every worker."""

    calls: int = 0
    images_sent: int = 0
    images_answered: int = 0
    images_failed: int = 0
    images_raised: int = 0
    valid_refused: int = 0
    invalid_accepted: int = 0
    raised_by_type: dict[str, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    last_answer_at: float = 0.0

    def merge(self, other: Tally) -> None:
        for name in ("calls", "images_sent", "images_answered", "images_failed", "images_raised"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.valid_refused += other.valid_refused
        self.invalid_accepted += other.invalid_accepted
        for key, value in other.raised_by_type.items():
            self.raised_by_type[key] = self.raised_by_type.get(key, 0) + value
        self.latencies_s.extend(other.latencies_s)
        self.last_answer_at = max(self.last_answer_at, other.last_answer_at)


def worker(
    url: str,
    protocol: str,
    valid: list[bytes],
    invalid: list[bytes],
    deadline: float,
    calls_left: list[int],
    lock: threading.Lock,
    seed: int,
    retries: int,
    out: dict[str, Any],
) -> None:
    """One client thread: batches of 1-4 images until the deadline or the shared call budget runs out."""
    rng = random.Random(seed)
    tally = Tally()
    detector = Detector(url, protocol=protocol, retries=retries, backoff=0.1, max_in_flight=1, timeout=30)
    try:
        while time.monotonic() < deadline:
            with lock:
                if calls_left[0] <= 0:
                    break
                calls_left[0] -= 1
            flags = [rng.random() < 0.05 for _ in range(rng.randint(1, 4))]  # True: an invalid image
            payloads = [rng.choice(invalid) if bad else rng.choice(valid) for bad in flags]
            tally.calls += 1
            tally.images_sent += len(payloads)
            started = time.monotonic()
            try:
                results = detector.detect(payloads)
            except ClientError as exc:  # explicit: the caller is told, for every image of the call
                tally.images_raised += len(payloads)
                name = type(exc).__name__
                tally.raised_by_type[name] = tally.raised_by_type.get(name, 0) + 1
                continue
            tally.latencies_s.append(time.monotonic() - started)
            if len(results) != len(payloads):
                raise AssertionError(f"{len(payloads)} images sent, {len(results)} results")
            for bad, result in zip(flags, results, strict=True):
                if result.error:
                    tally.images_failed += 1
                    tally.valid_refused += not bad
                else:
                    tally.images_answered += 1
                    tally.invalid_accepted += bad
                    tally.last_answer_at = time.monotonic()
        out["stats"] = detector.stats.to_dict()
    finally:
        detector.close()
        out["tally"] = tally


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds."""
    if not values:
        return {}
    array = np.asarray(values) * 1000.0
    return {
        "p50_ms": float(np.percentile(array, 50)),
        "p90_ms": float(np.percentile(array, 90)),
        "p99_ms": float(np.percentile(array, 99)),
        "max_ms": float(array.max()),
    }


def run(
    repo: Path,
    concurrency: int,
    duration: float,
    protocol: str = "grpc",
    restart_at: float = 0.5,
    max_calls: int = 100_000,
    retries: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the load check and return its report (see the module docstring)."""
    valid, invalid = make_images(12, seed)
    server = TritonServer(repo, host=HOST)
    server.start().wait_ready()
    url = server.endpoints[protocol]
    outs: list[dict[str, Any]] = [{} for _ in range(concurrency)]
    lock = threading.Lock()
    calls_left = [max_calls]
    started = time.monotonic()
    deadline = started + duration
    threads = [
        threading.Thread(
            target=worker,
            args=(url, protocol, valid, invalid, deadline, calls_left, lock, seed + i, retries, outs[i]),
            name=f"load-{i}",
            daemon=True,
        )
        for i in range(concurrency)
    ]
    restart: dict[str, float] = {}
    back_at = float("inf")
    try:
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, duration * restart_at))
        if any(thread.is_alive() for thread in threads):
            stop_begin = time.monotonic()
            server.stop()
            stopped = time.monotonic()
            server.restart()
            back_at = time.monotonic()
            restart = {
                "at_s": round(stop_begin - started, 2),
                "stop_s": round(stopped - stop_begin, 2),
                "down_s": round(time.monotonic() - stop_begin, 2),
            }
            logger.info("server restarted: %s", restart)
        for thread in threads:
            # workers stop at the deadline; a call in progress may still spend its retries
            thread.join(timeout=max(0.0, deadline - time.monotonic()) + 120)
    finally:
        server.stop()
    hung = [thread.name for thread in threads if thread.is_alive()]
    tally, detector_stats = Tally(), {"requests": 0, "retries": 0, "rejected": 0, "split": 0}
    for out in outs:
        if "tally" in out:
            tally.merge(out["tally"])
        for key in detector_stats:
            detector_stats[key] += out.get("stats", {}).get(key, 0)
    accounted = tally.images_answered + tally.images_failed + tally.images_raised
    checks = {
        "every image answered or given an explicit error": accounted == tally.images_sent,
        "no worker hung": not hung,
        "every invalid image refused": tally.invalid_accepted == 0,
        "no valid image refused": tally.valid_refused == 0,
        "images answered after the restart": tally.last_answer_at > back_at,
    }
    return {
        "repo": str(repo),
        "protocol": protocol,
        "concurrency": concurrency,
        "duration_s": duration,
        "elapsed_s": round(time.monotonic() - started, 2),
        "restart": restart,
        "requests_sent": detector_stats["requests"],
        "requests_retried": detector_stats["retries"],
        "requests_rejected": detector_stats["rejected"],
        "calls": tally.calls,
        "calls_raised": tally.raised_by_type,
        "images_sent": tally.images_sent,
        "images_answered": tally.images_answered,
        "images_failed": tally.images_failed,
        "images_raised": tally.images_raised,
        "images_lost": tally.images_sent - accounted,
        "valid_images_refused": tally.valid_refused,
        "latency": percentiles(tally.latencies_s),
        "hung_workers": hung,
        "checks": checks,
        "passed": all(checks.values()),
    }


def markdown(report: dict[str, Any]) -> str:
    """``LOAD_CHECK.md`` text."""
    latency = report["latency"]
    lines = [
        "# Load check",
        "",
        f"{report['concurrency']} client threads, {report['duration_s']:g} s, {report['protocol']}, "
        f"server restarted at {report['restart'].get('at_s', '-')} s "
        f"(down {report['restart'].get('down_s', '-')} s). Result: **{'PASS' if report['passed'] else 'FAIL'}**.",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    for key in (
        "requests_sent",
        "requests_retried",
        "requests_rejected",
        "calls",
        "images_sent",
        "images_answered",
        "images_failed",
        "images_raised",
        "images_lost",
        "valid_images_refused",
    ):
        lines.append(f"| {key.replace('_', ' ')} | {report[key]} |")
    for key, value in latency.items():
        lines.append(f"| latency {key.replace('_ms', '')} per call | {value:.1f} ms |")
    lines += ["", "| check | result |", "|---|---|"]
    lines += [f"| {name} | {'pass' if ok else 'FAIL'} |" for name, ok in report["checks"].items()]
    if report["calls_raised"]:
        lines += ["", f"Calls that raised (all their images counted as explicit errors): {report['calls_raised']}"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 when every check passes."""
    parser = argparse.ArgumentParser(prog="python -m aigi.benchmarks.load_check", description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="model repository (aigi export --backend cpu)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--out", type=Path, required=True, help="folder for load_check.json and LOAD_CHECK.md")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--restart-at", type=float, default=0.5, help="fraction of the run at which to restart")
    parser.add_argument("--max-calls", type=int, default=100_000, help="upper bound on detect() calls")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= 256 or not 0 < args.duration <= 3600:
        parser.error("--concurrency must lie in [1, 256] and --duration in (0, 3600]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = run(args.repo, args.concurrency, args.duration, args.protocol, args.restart_at, args.max_calls)
    except AigiError as exc:
        print(f"load_check: error: {exc}", file=sys.stderr)
        return exc.exit_code
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "load_check.json", report)
    (args.out / "LOAD_CHECK.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
