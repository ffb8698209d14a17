"""Load and fault check: concurrent clients, a server that is killed mid-run, and nothing may be lost.

``python -m aigi.benchmarks.load_check --repo DIR --concurrency 16 --duration 60 --out DIR``

Starts its own Triton server on 127.0.0.1 (free ports) and first records a reference answer (label, p_fake)
for every valid image it will send, on the healthy server. Then ``--concurrency`` client threads, each with
its own :class:`aigi.client.Detector` built with the client's *default* retry settings (what a user gets),
send batches of 1-6 images (about 5% of them invalid on purpose: empty, junk, a truncated JPEG) for
``--duration`` seconds, while the server is hit by ``--fault``: ``sigterm`` (graceful stop), ``sigkill`` (a
crash) or ``both`` (SIGTERM at 1/3 of the run, SIGKILL at 2/3), each followed by a restart on the same ports.
The load is extended so that it goes on for a while after the last restart.

Every image of every call must come back: a valid image with the reference's label and p_fake (within a
tolerance set by the served precision), an invalid one with an ``invalid image`` error. An image whose call
raised (retries spent), that is missing, or that got the wrong kind of outcome is LOST; an answer that differs
from the reference is WRONG (rules: :mod:`aigi.benchmarks.fault_check`). Writes ``load_check.json`` and
``LOAD_CHECK.md`` to ``--out`` and exits 1 when anything is lost or wrong, or a fault did not happen.
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
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from aigi.benchmarks.fault_check import FAULT_PLANS, Reference, Tally, build_reference, inject
from aigi.checkpoint import write_json_atomic
from aigi.client import protocol as wire
from aigi.client.detector import Detector
from aigi.errors import AigiError
from aigi.server import TritonServer

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
INVALID_SHARE = 0.05
MAX_IMAGES_PER_CALL = 6
JOIN_GRACE_S = 120.0
RECOVERY_WAIT_S = 60.0  # longest a fault waits for the clients to be answered again after the previous one
EPILOG = """\
Before any fault, every valid image is answered once by the healthy server: that is its reference.
The clients use aigi.client.Detector with its default retries, backoff and timeout.
LOST: an image whose call raised, one missing from the results, a valid image with an error,
      an invalid image (empty, junk, truncated; ~5% mixed in) with a verdict or a non-"invalid image" error.
WRONG: a verdict whose label or p_fake differs from the reference (tolerance from the served precision).
Writes OUT/load_check.json and OUT/LOAD_CHECK.md.
Exit status: 0 nothing lost or wrong and every check passed, 1 otherwise, 2 the check could not run."""


def make_images(count: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """``count`` valid PNG/JPEG images of assorted sizes, and invalid payloads (empty, junk, truncated JPEG)."""
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


class Budget:
    """When workers stop: when the call budget is spent, or once the faults are done and the planned end has passed.

    The deadline stays open while faults are pending (a restart that runs long must not end the load before the
    next fault); :meth:`close_at` then sets it to the planned end or later.
    """

    def __init__(self, planned_end: float, max_calls: int) -> None:
        self.planned_end = planned_end
        self.deadline = float("inf")
        self._calls_left = max_calls
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Whether a worker may start one more call."""
        with self._lock:
            if time.monotonic() >= self.deadline or self._calls_left <= 0:
                return False
            self._calls_left -= 1
            return True

    def close_at(self, until: float) -> None:
        """End the load at ``until`` or at the planned end, whichever is later."""
        with self._lock:
            self.deadline = max(self.planned_end, until)


def worker(
    detector: Detector,
    valid: list[bytes],
    invalid: list[bytes],
    reference: Reference,
    budget: Budget,
    seed: int,
    tally: Tally,
    out: dict[str, Any],
) -> None:
    """One client thread: calls of 1-6 images until the budget says stop; every outcome goes to ``tally``."""
    rng = random.Random(seed)
    try:
        while budget.take():
            picks = [
                (False, rng.randrange(len(invalid)))
                if rng.random() < INVALID_SHARE
                else (True, rng.randrange(len(valid)))
                for _ in range(rng.randint(1, MAX_IMAGES_PER_CALL))
            ]
            payloads = [valid[index] if ok else invalid[index] for ok, index in picks]
            tally.begin(picks)
            started = time.monotonic()
            try:
                results = detector.detect(payloads)
            except Exception as exc:  # noqa: BLE001 - any exception loses the call's images; that is the finding
                tally.latencies_s.append(time.monotonic() - started)
                tally.raised(picks, exc)
                continue
            tally.latencies_s.append(time.monotonic() - started)
            tally.returned(picks, results, reference)
    except BaseException as exc:  # a bug in the check itself: its images stay unaccounted, and the run fails
        out["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        detector.close()


def client_settings(detector: Detector) -> dict[str, Any]:
    """The detector's effective settings (the client's defaults unless overridden), and its nominal retry budget."""
    settings = {
        key: value
        for key, value in vars(detector).items()
        if not key.startswith("_") and key != "url" and isinstance(value, (bool, int, float, str))
    }
    retries, backoff = int(settings.get("retries", 0)), float(settings.get("backoff", 0.0))
    cap = float(getattr(wire, "MAX_BACKOFF_S", 5.0))
    settings["nominal_backoff_budget_s"] = round(sum(min(cap, backoff * 2**i) for i in range(retries)), 2)
    return settings


def run(
    repo: Path,
    concurrency: int,
    duration: float,
    protocol: str = "grpc",
    fault: str = "both",
    max_calls: int = 100_000,
    seed: int = 0,
    client_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the load and fault check and return its report (see the module docstring).

    Args:
        client_options: keyword arguments for every worker's :class:`Detector` on top of the defaults. Only for
            showing that the check can fail (e.g. ``{"retries": 0}``); the reference pass always uses defaults.
    """
    if fault not in FAULT_PLANS:
        raise ValueError(f"fault must be one of {tuple(FAULT_PLANS)}, got {fault!r}")
    valid, invalid = make_images(12, seed)
    server = TritonServer(repo, host=HOST)
    server.start().wait_ready()
    try:
        reference = build_reference(server, protocol, valid, invalid)
        url = server.endpoints[protocol]
        detectors = [Detector(url, protocol=protocol, **(client_options or {})) for _ in range(concurrency)]
        settings = client_settings(detectors[0])
        tallies = [Tally() for _ in range(concurrency)]
        outs: list[dict[str, Any]] = [{} for _ in range(concurrency)]
        started = time.monotonic()
        budget = Budget(started + duration, max_calls)
        threads = [
            threading.Thread(
                target=worker,
                args=(detectors[i], valid, invalid, reference, budget, seed + i, tallies[i], outs[i]),
                name=f"load-{i}",
                daemon=True,
            )
            for i in range(concurrency)
        ]
        for thread in threads:
            thread.start()
        try:
            faults = drive_faults(server, fault, duration, started, budget, threads, tallies)
        except BaseException:
            budget.close_at(time.monotonic())  # let the workers end
            raise
        for thread in threads:
            thread.join(timeout=max(0.0, budget.deadline - time.monotonic()) + JOIN_GRACE_S)
        load_s = time.monotonic() - started
    finally:
        server.stop()
    report = summarize(tallies, detectors, threads, outs, reference, faults, len(FAULT_PLANS[fault]))
    report.update(
        repo=str(repo),
        protocol=protocol,
        concurrency=concurrency,
        duration_s=duration,
        load_s=round(load_s, 2),
        fault=fault,
        client_options=dict(client_options or {}),
        client_settings=settings,
    )
    return report


def drive_faults(
    server: TritonServer,
    fault: str,
    duration: float,
    started: float,
    budget: Budget,
    threads: list[threading.Thread],
    tallies: list[Tally],
) -> list[dict[str, Any]]:
    """Inject the planned faults and keep the load going after each.

    A fault waits for its planned moment, for every running client to have had an answer since the previous
    restart (at most :data:`RECOVERY_WAIT_S`) and then ``tail_s`` more, so two faults never merge into one outage
    as the clients see it. Then it closes ``budget``: the load ends at the planned end, or ``tail_s`` after the last
    restart if that is later.
    """
    tail_s = max(2.0, 0.1 * duration)
    faults: list[dict[str, Any]] = []
    for kind, fraction in FAULT_PLANS[fault]:
        if not wait_for_fault(
            started + fraction * duration, faults[-1]["back_at"] if faults else None, tail_s, threads, tallies
        ):
            logger.warning("every worker ended before the %s fault; it was not injected", kind)
            break
        record = inject(server, kind, started)
        record["planned_at_s"] = round(fraction * duration, 3)
        faults.append(record)
        logger.info("%s: server down %.2f s, back at %.2f s", kind, record["down_s"], record["back_at"] - started)
    budget.close_at(faults[-1]["back_at"] + tail_s if faults else 0.0)
    return faults


def wait_for_fault(
    planned: float, back_at: float | None, tail_s: float, threads: list[threading.Thread], tallies: list[Tally]
) -> bool:
    """Sleep until the next fault may be injected; ``False`` when every worker has ended first."""
    give_up = time.monotonic() + RECOVERY_WAIT_S
    while any(thread.is_alive() for thread in threads):
        now = time.monotonic()
        if back_at is not None and now < give_up:
            answered = [
                tally.first_answer_after(back_at)
                for tally, thread in zip(tallies, threads, strict=True)
                if thread.is_alive()
            ]
            moments = [moment for moment in answered if moment is not None]
            if len(moments) < len(answered):  # a live worker has not been answered since the server came back
                time.sleep(0.05)
                continue
            planned = max(planned, max(moments, default=now) + tail_s)
        if now >= planned:
            return True
        time.sleep(min(0.05, planned - now))
    return False


def summarize(
    tallies: list[Tally],
    detectors: list[Detector],
    threads: list[threading.Thread],
    outs: list[dict[str, Any]],
    reference: Reference,
    faults: list[dict[str, Any]],
    planned_faults: int,
) -> dict[str, Any]:
    """Merge the workers' counts into the report's figures and checks."""
    tally = Tally()
    for one in tallies:
        tally.merge(one)
    stats = {"requests": 0, "retries": 0, "rejected": 0}
    for detector in detectors:
        for key in stats:
            stats[key] += int(getattr(detector.stats, key, 0))
    hung = [thread.name for thread in threads if thread.is_alive()]
    crashed = {f"load-{i}": out["error"] for i, out in enumerate(outs) if "error" in out}
    ends = [record["begin_at"] for record in faults[1:]] + [float("inf")]
    for record, end in zip(faults, ends, strict=True):
        # calls with at least one verdict between this restart and the next fault
        record["answered_calls_after"] = sum(record["back_at"] < moment < end for moment in tally.answer_times)
        # the outage as the clients saw it: from the signal until the last worker had a verdict again
        firsts = [one.first_answer_after(record["back_at"], end) for one in tallies]
        record["clients_back_after_s"] = (
            None if None in firsts or not firsts else round(max(firsts) - record["begin_at"], 3)  # type: ignore[type-var]
        )
    for record in faults:
        del record["begin_at"], record["back_at"]
    checks = {
        "no image lost": tally.lost_total == 0,
        "no wrong answer": tally.wrong == 0,
        "every planned fault injected": len(faults) == planned_faults,
        "answers after every fault": bool(faults) and all(record["answered_calls_after"] > 0 for record in faults),
        "reference passes agree within tolerance": reference.spread <= reference.tolerance,
        "no worker hung or crashed": not hung and not crashed,
    }
    return {
        "reference": reference.to_dict(),
        "faults": faults,
        "requests": stats["requests"],
        "retries": stats["retries"],
        "requests_rejected": stats["rejected"],
        "calls": tally.calls,
        "calls_raised": tally.raised_by_type,
        "images_sent": tally.sent,
        "images_sent_valid": tally.valid_sent,
        "images_sent_invalid": tally.invalid_sent,
        "images_answered": tally.answered,
        "images_refused_invalid": tally.refused,
        "images_lost": tally.lost_total,
        "images_wrong": tally.wrong,
        "lost_by_reason": {**tally.lost, "unaccounted": tally.unaccounted},
        "max_abs_dp_fake": tally.max_dp_fake,
        "latency_per_call": percentiles(tally.latencies_s),
        "examples": tally.examples,
        "hung_workers": hung,
        "crashed_workers": crashed,
        "checks": checks,
        "passed": all(checks.values()),
    }


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds (empty when there are no values)."""
    if not values:
        return {}
    array = np.asarray(values) * 1000.0
    summary = {f"p{q}_ms": float(np.percentile(array, q)) for q in (50, 90, 99)}
    summary["max_ms"] = float(array.max())
    return summary


def markdown(report: dict[str, Any]) -> str:
    """``LOAD_CHECK.md`` text."""
    settings = report["client_settings"]
    reference = report["reference"]
    overrides = report["client_options"]
    lines = [
        "# Load and fault check",
        "",
        f"{report['concurrency']} client threads, {report['duration_s']:g} s planned ({report['load_s']:g} s of load), "
        f"{report['protocol']}, fault plan `{report['fault']}`. Result: **{'PASS' if report['passed'] else 'FAIL'}**.",
        "",
        f"Client: retries={settings.get('retries')}, backoff={settings.get('backoff')} s, "
        f"timeout={settings.get('timeout')} s (nominal backoff budget {settings.get('nominal_backoff_budget_s')} s); "
        + (f"**overridden for this run: {overrides}**" if overrides else "the client's defaults")
        + ".",
        "",
        f"Reference: {reference['valid_payloads']} valid images answered by the healthy server; served precision "
        f"{reference['precision']}, tolerance |dp_fake| <= {reference['tolerance_p_fake']:g} "
        f"({reference['tolerance_why']}); batched vs alone spread {reference['spread_p_fake']:.2g}.",
        "",
        "| fault | at | planned at | exit code | process gone after | down (signal to ready) "
        "| every client answered again after | answered calls after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in report["faults"]:
        back = record["clients_back_after_s"]
        lines.append(
            f"| {record['kind']} | {record['at_s']:.2f} s | {record['planned_at_s']:.2f} s | {record['exit_code']} | "
            f"{record['stop_s']:.2f} s | {record['down_s']:.2f} s | {'never' if back is None else f'{back:.2f} s'} | "
            f"{record['answered_calls_after']} |"
        )
    lines += ["", "| measure | value |", "|---|---|"]
    for key in (
        "images_sent",
        "images_answered",
        "images_refused_invalid",
        "images_lost",
        "images_wrong",
        "images_sent_valid",
        "images_sent_invalid",
        "calls",
        "requests",
        "retries",
        "requests_rejected",
        "max_abs_dp_fake",
    ):
        value = report[key]
        lines.append(
            f"| {key.replace('_', ' ')} | {value:.3g} |"
            if isinstance(value, float)
            else f"| {key.replace('_', ' ')} | {value} |"
        )
    for key, value in report["latency_per_call"].items():
        lines.append(f"| latency {key.replace('_ms', '')} per call | {value:.1f} ms |")
    lines += ["", "| check | result |", "|---|---|"]
    lines += [f"| {name} | {'pass' if ok else 'FAIL'} |" for name, ok in report["checks"].items()]
    lost = {reason: count for reason, count in report["lost_by_reason"].items() if count}
    if lost or report["calls_raised"]:
        lines += ["", f"Lost images by reason: {lost}; calls that raised, by exception: {report['calls_raised']}."]
    if report["examples"]:
        lines += ["", "First problems seen:", ""] + [f"- {example}" for example in report["examples"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 when nothing was lost or wrong and every check passed, else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m aigi.benchmarks.load_check",
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repo", type=Path, required=True, help="model repository (aigi export --backend cpu)")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads (default 16)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load, extended past the last restart")
    parser.add_argument("--out", type=Path, required=True, help="folder for load_check.json and LOAD_CHECK.md")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="client protocol (default grpc)")
    parser.add_argument(
        "--fault",
        choices=tuple(FAULT_PLANS),
        default="both",
        help="sigterm: graceful stop at 1/2; sigkill: crash at 1/2; both (default): SIGTERM at 1/3, SIGKILL at 2/3; "
        "each followed by a restart on the same ports",
    )
    parser.add_argument("--max-calls", type=int, default=100_000, help="upper bound on detect() calls")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images and of each client's picks")
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= 256 or not 0 < args.duration <= 3600:
        parser.error("--concurrency must lie in [1, 256] and --duration in (0, 3600]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = run(args.repo, args.concurrency, args.duration, args.protocol, args.fault, args.max_calls, args.seed)
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
