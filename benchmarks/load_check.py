"""Load and fault check: replicas under concurrent clients, killed and rolled mid-run, and nothing may be lost.

``aigi fault-check --repo DIR --replicas 3 --concurrency 16 --duration 60 --out DIR [--fault ...]``
(``python -m aigi.benchmarks.load_check`` takes the same options).

Starts ``--replicas`` Triton servers of one repository on 127.0.0.1 (free ports each) and first records a reference
answer (label, p_fake) for every valid image it will send, on a healthy replica. Then ``--concurrency`` client
threads, each with its own :class:`aigi.client.Detector` given every replica's endpoint and the client's *default*
settings (what a user gets), send calls of 1-6 images (about 5% of them invalid on purpose: empty, junk, a truncated
JPEG) for ``--duration`` seconds, while the replicas are hit by ``--fault``: ``sigterm`` (a roll: graceful stop,
drain, restart), ``sigkill`` (a crash, restart) or ``both`` (SIGTERM at 1/3 of the run, SIGKILL at 2/3), one fault
at a time, the i-th on replica ``i % replicas``, each followed by a restart on the same ports. A fault waits until
the previous one's replica serves again and every client has been answered since; the load goes on for a while
after the last restart.

``--url HOST:PORT`` loads a server started elsewhere instead (:mod:`aigi.benchmarks.remote`): the same clients,
reference and accounting, no fault (a server that is not ours is neither killed nor rolled), its counter read for
the traffic when its metrics endpoint answers.

Every image of every call must come back: a valid image with the reference's label and p_fake (within a
tolerance set by the served precision), an invalid one with an ``invalid image`` error. An image whose call
raised, that is missing, or that got the wrong kind of outcome is LOST; an answer that differs from the reference
is WRONG (rules: :mod:`aigi.benchmarks.fault_check`). Each replica's own counter is read twice a second for the
timeline and the per-replica traffic (:mod:`aigi.benchmarks.fault_timeline`). Writes ``fault_check.json``,
``FAULT_CHECK.md`` and ``timeline.png`` (:mod:`aigi.benchmarks.fault_report`) and exits 1 when anything is lost
or wrong, or a check failed.
"""

from __future__ import annotations

import argparse
import dataclasses
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

from aigi.benchmarks.commands import FAULT_CHECK_DESCRIPTION, FAULT_CHECK_EPILOG, add_fault_check_arguments
from aigi.benchmarks.fault_check import Reference, Tally, build_reference, fault_targets, inject
from aigi.benchmarks.fault_report import percentiles, write_report
from aigi.benchmarks.fault_timeline import ReplicaMeter, build_timeline
from aigi.benchmarks.remote import RemoteServer, resolve_endpoints
from aigi.client.core import DetectorSettings
from aigi.client.detector import Detector
from aigi.errors import AigiError, SettingsError
from aigi.server import TritonServer

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
INVALID_SHARE = 0.05
MAX_IMAGES_PER_CALL = 6
MAX_REPLICAS = 16
JOIN_GRACE_S = 120.0
RECOVERY_WAIT_S = 60.0  # longest a fault waits for the previous one's replica and clients to be answered again
# the Detector settings the report shows (whatever their values: the client's defaults unless overridden)
SHOWN_SETTINGS = ("protocol", "timeout", "retry_timeout", "retries", "backoff", "max_in_flight")


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


@dataclass(frozen=True)
class CheckSettings:
    """What one run of the check does (the command line's options)."""

    concurrency: int
    duration: float
    protocol: str = "grpc"
    fault: str = "both"
    replicas: int = 1
    max_calls: int = 100_000
    seed: int = 0
    client_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fleet:
    """The moving parts of one run, for the drive and the summary."""

    servers: list[TritonServer]
    meter: ReplicaMeter
    reference: Reference
    detectors: list[Detector]
    tallies: list[Tally]
    outs: list[dict[str, Any]]
    threads: list[threading.Thread] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0


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
    """The detector's effective retry and timeout settings (the client's defaults unless overridden)."""
    return {name: getattr(detector, name) for name in SHOWN_SETTINGS if hasattr(detector, name)}


def start_replicas(repo: Path, count: int) -> list[TritonServer]:
    """``count`` ready servers of ``repo``, each on its own free ports (started together, then waited for)."""
    servers = [TritonServer(repo, host=HOST) for _ in range(count)]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
    except BaseException:
        stop_replicas(servers)
        raise
    return servers


def stop_replicas(servers: Sequence[TritonServer]) -> None:
    """Stop every server, all at once (each may take its exit timeout to drain)."""
    threads = [threading.Thread(target=server.stop, name=f"stop-r{i}") for i, server in enumerate(servers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run(
    repo: Path | None,
    concurrency: int,
    duration: float,
    protocol: str = "grpc",
    fault: str = "both",
    max_calls: int = 100_000,
    seed: int = 0,
    client_options: dict[str, Any] | None = None,
    replicas: int = 1,
    server: RemoteServer | None = None,
) -> dict[str, Any]:
    """Run the load and fault check and return its report (see the module docstring).

    Args:
        client_options: keyword arguments for every worker's :class:`Detector` on top of the defaults. Only for
            showing that the check can fail (e.g. ``{"retries": 0}``); the reference pass always uses defaults.
        replicas: servers of ``repo`` to start; every client is given all of their endpoints.
        server: a server started elsewhere (``--url``) to load instead of ``repo``'s: no fault is injected.
    """
    fault = "none" if server is not None else fault
    settings = CheckSettings(
        concurrency, duration, protocol, fault, replicas, max_calls, seed, dict(client_options or {})
    )
    targets = fault_targets(fault, replicas) if server is None else []
    valid, invalid = make_images(12, seed)
    servers: list[Any] = [server] if server is not None else start_replicas(_repo(repo), replicas)
    try:
        reference = build_reference(servers[0], protocol, valid, invalid)
        fleet = load(servers, reference, settings, targets, valid, invalid)
    finally:
        if server is None:
            stop_replicas(servers)
    report = summarize(fleet, len(targets), remote=server is not None)
    report.update(
        repo=str(repo) if server is None else f"served elsewhere at {server.endpoints[protocol]}",
        protocol=protocol,
        replicas=replicas,
        concurrency=concurrency,
        duration_s=duration,
        load_s=round(fleet.ended - fleet.started, 2),
        fault=fault,
        client_options=settings.client_options,
        client_settings=client_settings(fleet.detectors[0]),
    )
    return report


def _repo(repo: Path | None) -> Path:
    if repo is None:
        raise SettingsError("give --repo (servers started here) or --url (a server running elsewhere)")
    return repo


def remote_server(urls: list[str], metrics_url: str | None, protocol: str) -> RemoteServer:
    """The server at ``--url``, with both endpoints the check needs (it reads the served precision over HTTP).

    Raises:
        SettingsError: an endpoint the check needs was not found.
    """
    endpoints = resolve_endpoints(urls, metrics_url)
    missing = [name for name in {"http", protocol} if name not in endpoints]
    if missing:
        raise SettingsError(f"--url: no {' or '.join(sorted(missing))} endpoint found; give it too (HOST:PORT)")
    # pid 0 stands for the one process of a server that is not ours: it is never restarted, so its counter never
    # starts again (the meter reads a server only while it has a pid)
    return RemoteServer(endpoints, pid=0)


def load(
    servers: list[Any],
    reference: Reference,
    settings: CheckSettings,
    targets: list[tuple[str, float, int]],
    valid: list[bytes],
    invalid: list[bytes],
) -> Fleet:
    """Run the client threads against the replicas while :func:`drive_faults` hits them; the fleet as it ended."""
    urls = [server.endpoints[settings.protocol] for server in servers]
    count = settings.concurrency
    detectors = [Detector(urls, protocol=settings.protocol, **settings.client_options) for _ in range(count)]
    meter = ReplicaMeter(servers, detectors[0].model)
    fleet = Fleet(servers, meter, reference, detectors, [Tally() for _ in range(count)], [{} for _ in range(count)])
    meter.start()
    try:
        fleet.started = time.monotonic()
        budget = Budget(fleet.started + settings.duration, settings.max_calls)
        fleet.threads = [
            threading.Thread(
                target=worker,
                args=(detectors[i], valid, invalid, reference, budget, settings.seed + i, fleet.tallies[i], out),
                name=f"load-{i}",
                daemon=True,
            )
            for i, out in enumerate(fleet.outs)
        ]
        for thread in fleet.threads:
            thread.start()
        try:
            drive_faults(fleet, targets, settings.duration, budget)
        except BaseException:
            budget.close_at(time.monotonic())  # let the workers end
            raise
        for thread in fleet.threads:
            thread.join(timeout=max(0.0, budget.deadline - time.monotonic()) + JOIN_GRACE_S)
        fleet.ended = time.monotonic()
    finally:
        meter.stop()
    return fleet


def drive_faults(fleet: Fleet, targets: list[tuple[str, float, int]], duration: float, budget: Budget) -> None:
    """Inject the planned faults into ``fleet.faults`` and keep the load going after each.

    A fault waits for its planned moment, for the previous fault's replica to serve again and every running client
    to have had an answer since that restart (at most :data:`RECOVERY_WAIT_S`), and then ``tail_s`` more, so two
    faults never merge into one outage. Then it closes ``budget``: the load ends at the planned end, or ``tail_s``
    after the last restart if that is later.
    """
    tail_s = max(2.0, 0.1 * duration)
    for kind, fraction, index in targets:
        if not wait_for_fault(fleet, fleet.started + fraction * duration, tail_s):
            logger.warning("every worker ended before the %s fault; it was not injected", kind)
            break
        fleet.meter.sample(index)  # the replica's count up to the signal
        record = inject(fleet.servers[index], kind, fleet.started)
        record.update(replica=f"r{index}", replica_index=index, planned_at_s=round(fraction * duration, 3))
        fleet.faults.append(record)
        logger.info(
            "%s on r%d: down %.2f s, back at %.2f s", kind, index, record["down_s"], record["back_at"] - fleet.started
        )
    budget.close_at(fleet.faults[-1]["back_at"] + tail_s if fleet.faults else 0.0)


def recovered_at(fleet: Fleet, fault: dict[str, Any]) -> float | None:
    """When the replica a fault hit served again and every running client had been answered since its restart
    (the later of these moments), or ``None`` while either is still awaited."""
    back_at = fault["back_at"]
    moments = [
        tally.first_answer_after(back_at)
        for tally, thread in zip(fleet.tallies, fleet.threads, strict=True)
        if thread.is_alive()
    ]
    moments.append(fleet.meter.served_since(fault["replica_index"], back_at))
    return None if None in moments else max(moment for moment in moments if moment is not None)


def wait_for_fault(fleet: Fleet, planned: float, tail_s: float) -> bool:
    """Sleep until the next fault may be injected; ``False`` when every worker has ended first."""
    previous = fleet.faults[-1] if fleet.faults else None
    give_up = time.monotonic() + RECOVERY_WAIT_S
    while any(thread.is_alive() for thread in fleet.threads):
        now = time.monotonic()
        if previous is not None and now < give_up:
            recovered = recovered_at(fleet, previous)
            if recovered is None:
                time.sleep(0.05)
                continue
            planned = max(planned, recovered + tail_s)
        if now >= planned:
            return True
        time.sleep(min(0.05, planned - now))
    return False


def fault_figures(fleet: Fleet, tally: Tally) -> None:
    """Add to every fault record what the clients and the replica saw after it, up to the next fault."""
    answered = sorted(tally.answer_times)
    faults = fleet.faults
    ends = [record["begin_at"] for record in faults[1:]] + [float("inf")] * bool(faults)
    for record, end in zip(faults, ends, strict=True):
        begin, back = record["begin_at"], record["back_at"]
        # calls with at least one verdict between this restart and the next fault
        record["answered_calls_after"] = sum(back < moment < end for moment in answered)
        # the outage as the clients saw it: from the signal until the last worker had a verdict again
        firsts = [one.first_answer_after(back, end) for one in fleet.tallies]
        last_back = None if None in firsts or not firsts else max(f for f in firsts if f is not None)
        record["clients_back_after_s"] = None if last_back is None else round(last_back - begin, 3)
        # the longest stretch with no verdict for anyone, from the signal on (the service's outage)
        record["longest_answer_gap_s"] = longest_gap(answered, begin, end)
        # the longest any one client waited for a verdict, from the signal on
        waits = [longest_gap(one.answer_times, begin, end) for one in fleet.tallies]
        record["longest_client_wait_s"] = None if None in waits or not waits else max(w for w in waits if w is not None)
        served = fleet.meter.served_since(record["replica_index"], back)
        record["replica_serving_again_after_s"] = None if served is None else round(served - begin, 3)
        record["images_lost_after"] = sum(event[3] for event in tally.events if begin <= event[0] < end)
    for record in faults:
        del record["begin_at"], record["back_at"]


def longest_gap(moments: Sequence[float], begin: float, end: float) -> float | None:
    """The longest stretch from ``begin`` on, before ``end``, between two of ``moments`` (sorted); ``None`` when none
    falls after ``begin``."""
    window = [begin, *(moment for moment in moments if begin < moment < end)]
    gaps = [later - earlier for earlier, later in zip(window, window[1:], strict=False)]
    return round(max(gaps), 3) if gaps else None


def summarize(fleet: Fleet, planned_faults: int, remote: bool = False) -> dict[str, Any]:
    """Merge the workers' counts into the report's figures, timeline and checks.

    With no fault planned (a server started elsewhere) there is no "answers after every fault" check, and the
    traffic check is left out when the server's metrics could not be read (``metrics_read`` says which).
    """
    tally = Tally()
    for one in fleet.tallies:
        tally.merge(one)
    stats = {"requests": 0, "retries": 0, "rejected": 0}
    for detector in fleet.detectors:
        for key in stats:
            stats[key] += int(getattr(detector.stats, key, 0))
    hung = [thread.name for thread in fleet.threads if thread.is_alive()]
    crashed = {f"load-{i}": out["error"] for i, out in enumerate(fleet.outs) if "error" in out}
    timeline = build_timeline(fleet.started, fleet.ended, tally.events, fleet.meter)
    fault_figures(fleet, tally)
    served = fleet.meter.totals(fleet.started)
    per_replica: dict[str, dict[str, Any]] = {
        f"r{index}": {
            "endpoint": server.endpoints.get("grpc"),
            "http_endpoint": server.endpoints.get("http"),
            "images_served": served[f"r{index}"],
            "faults": [record["kind"] for record in fleet.faults if record["replica_index"] == index],
        }
        for index, server in enumerate(fleet.servers)
    }
    metrics_read = all(count.times for count in fleet.meter.counts)
    checks = {
        "no image lost": tally.lost_total == 0,
        "no wrong answer": tally.wrong == 0,
        "every planned fault injected": len(fleet.faults) == planned_faults,
        "answers after every fault": bool(fleet.faults) and all(r["answered_calls_after"] > 0 for r in fleet.faults),
        "every restarted replica served again": all(
            record["replica_serving_again_after_s"] is not None for record in fleet.faults
        ),
        "traffic reached every replica": all(entry["images_served"] > 0 for entry in per_replica.values()),
        "reference passes agree within tolerance": fleet.reference.spread <= fleet.reference.tolerance,
        "no worker hung or crashed": not hung and not crashed,
    }
    if not planned_faults:
        del checks["answers after every fault"]
    if remote and not metrics_read:
        del checks["traffic reached every replica"]
    return {
        "reference": fleet.reference.to_dict(),
        "faults": fleet.faults,
        "per_replica": per_replica,
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
        "timeline": timeline,
        "checks": checks,
        "passed": all(checks.values()),
        "metrics_read": metrics_read,
    }


def client_options_from(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """``--client-option`` pairs as Detector keyword arguments.

    Raises:
        SettingsError: a key that is not a Detector setting.
    """
    known = {f.name for f in dataclasses.fields(DetectorSettings) if f.init and f.name not in ("url", "protocol")}
    unknown = sorted({key for key, _ in pairs} - known)
    if unknown:
        raise SettingsError(f"--client-option: not a Detector setting: {', '.join(unknown)} (known: {sorted(known)})")
    return dict(pairs)


def execute(args: argparse.Namespace) -> int:
    """Run the check from parsed options (:func:`aigi.benchmarks.commands.add_fault_check_arguments`), write its
    report to ``args.out`` and return the exit status: 0 when every check passed, else 1.

    Raises:
        SettingsError: an option out of range.
        AigiError: the check could not run (a server did not start or come back).
    """
    if not 1 <= args.concurrency <= 256 or not 0 < args.duration <= 3600 or not 1 <= args.replicas <= MAX_REPLICAS:
        raise SettingsError(
            f"--concurrency must lie in [1, 256], --duration in (0, 3600] and --replicas in [1, {MAX_REPLICAS}]"
        )
    _check_target(args)
    options = client_options_from(args.client_option)
    server = remote_server(args.url, args.metrics_url, args.protocol) if args.url else None
    report = run(
        args.repo,
        args.concurrency,
        args.duration,
        protocol=args.protocol,
        fault=args.fault or "both",
        max_calls=args.max_calls,
        seed=args.seed,
        client_options=options,
        replicas=args.replicas,
        server=server,
    )
    text = write_report(report, args.out)
    print(text)
    return 0 if report["passed"] else 1


def _check_target(args: argparse.Namespace) -> None:
    """``--repo`` or ``--url``, and with ``--url`` neither faults nor replicas (the server is not ours).

    Raises:
        SettingsError: both, neither, or a fault or replicas asked of a server started elsewhere.
    """
    if bool(args.repo) == bool(args.url):
        raise SettingsError("give --repo (servers started here) or --url (a server running elsewhere), one of them")
    if args.url and (args.fault or args.replicas != 1):
        raise SettingsError(
            "--url: a server started elsewhere is not ours to kill, roll or replicate; drop --fault and --replicas"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aigi.benchmarks.load_check``: the same check and options as ``aigi fault-check``."""
    parser = argparse.ArgumentParser(
        prog="python -m aigi.benchmarks.load_check",
        description=FAULT_CHECK_DESCRIPTION + "\n\nThe same as 'aigi fault-check'.",
        epilog=FAULT_CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_fault_check_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return execute(args)
    except AigiError as exc:
        print(f"load_check: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
