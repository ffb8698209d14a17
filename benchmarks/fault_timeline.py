"""The fault check's timeline: what each replica served (from its own counters) and what the clients got, per second.

:class:`ReplicaMeter` reads every replica's Prometheus counter ``nv_inference_count`` of the called model (images
the server inferred) every :data:`SAMPLE_PERIOD_S` seconds, and once more right before a fault is injected. A
restarted replica is a new process whose counter starts again at 0: the meter notices the new process id and adds
the old process's last reading, so each replica's count only grows. Images a replica finished after its last
reading and before it died are not counted (at most one sampling period of its traffic; none for a graceful stop,
whose drain the meter keeps reading): the per-replica counts are a lower bound, for the plot and for "traffic
reached every replica", never for the lost/wrong accounting, which is the clients' own (:mod:`fault_check`).

:func:`build_timeline` bins both per second since the load started.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.error
import urllib.request
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aigi.benchmarks.metrics_scrape import parse_prometheus

logger = logging.getLogger(__name__)

SAMPLE_PERIOD_S = 0.5
COUNTER = "nv_inference_count"


class Served(Protocol):
    """What the meter needs of a :class:`aigi.server.TritonServer`."""

    @property
    def pid(self) -> int | None: ...

    @property
    def running(self) -> bool: ...

    @property
    def endpoints(self) -> dict[str, str]: ...


def scrape_count(metrics_url: str, model: str, timeout: float = 1.0) -> float | None:
    """The server's ``nv_inference_count`` of ``model`` (summed over versions; 0 before its first inference), or
    ``None`` when the metrics endpoint does not answer."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return sum(
        sample.value for sample in parse_prometheus(text) if sample.name == COUNTER and sample.label("model") == model
    )


@dataclass
class ReplicaCount:
    """One replica's images served, over all of its processes."""

    name: str
    pid: int | None = None
    base: float = 0.0  # served by the replica's earlier processes
    last: float = 0.0  # the current process's counter at its last reading
    times: list[float] = field(default_factory=list)  # monotonic time of each reading
    totals: list[float] = field(default_factory=list)  # base + last at that reading

    def at(self, moment: float, gap: float = math.inf) -> float:
        """The total at ``moment``: interpolated between the readings around it when they are at most ``gap`` s
        apart, else the last reading's (the first reading's before any)."""
        index = bisect_right(self.times, moment)
        if not self.totals:
            return 0.0
        if index == 0 or index == len(self.times):
            return self.totals[max(0, index - 1)]
        (t0, t1), (v0, v1) = self.times[index - 1 : index + 1], self.totals[index - 1 : index + 1]
        if t1 - t0 > gap:
            return v0
        return v0 + (v1 - v0) * (moment - t0) / (t1 - t0)


class ReplicaMeter:
    """Reads every replica's counter in a background thread (:meth:`start` / :meth:`stop`); thread-safe.

    Args:
        servers: the replicas, in order (named ``r0``, ``r1``...).
        model: the model whose counter is read (the one the clients call).
        period: seconds between two readings of every replica.
        scrape: ``(metrics_url, model) -> count or None``; :func:`scrape_count` unless a test passes another.
    """

    def __init__(
        self,
        servers: Sequence[Served],
        model: str,
        period: float = SAMPLE_PERIOD_S,
        scrape: Callable[[str, str], float | None] = scrape_count,
    ) -> None:
        self.servers = list(servers)
        self.model = model
        self.period = period
        self._scrape = scrape
        self.counts = [ReplicaCount(f"r{index}") for index in range(len(self.servers))]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self, index: int) -> None:
        """Read one replica's counter now (nothing when it is down, or restarted while being read)."""
        server = self.servers[index]
        pid = server.pid
        if pid is None or not server.running:
            return
        value = self._scrape(server.endpoints["metrics_url"], self.model)
        if value is None or server.pid != pid:
            return
        now = time.monotonic()
        with self._lock:
            count = self.counts[index]
            if count.pid != pid:  # a new process: its counter started again at 0
                count.base += count.last
                count.pid, count.last = pid, 0.0
            count.last = max(count.last, value)
            count.times.append(now)
            count.totals.append(count.base + count.last)

    def sample_all(self) -> None:
        """Read every replica's counter now."""
        for index in range(len(self.servers)):
            self.sample(index)

    def start(self) -> ReplicaMeter:
        """Read every counter once (the baseline), then keep reading in a daemon thread."""
        self.sample_all()
        self._thread = threading.Thread(target=self._loop, name="replica-meter", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.sample_all()

    def stop(self) -> None:
        """Stop the thread and read every counter a last time (call it while the servers still run)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        self.sample_all()

    def served(self, index: int, since: float, until: float = math.inf) -> float:
        """Images replica ``index`` served between two moments, as far as its readings tell (interpolated between
        readings of one running process: up to two periods apart)."""
        with self._lock:
            count = self.counts[index]
            gap = 2 * self.period
            return count.at(until, gap) - count.at(since, gap)

    def served_since(self, index: int, moment: float) -> float | None:
        """When a reading first showed replica ``index`` serving after ``moment``, if one has."""
        with self._lock:
            count = self.counts[index]
            before = count.at(moment)
            start = bisect_right(count.times, moment)
            for when, total in zip(count.times[start:], count.totals[start:], strict=True):
                if total > before:
                    return when
        return None

    def totals(self, since: float) -> dict[str, int]:
        """Images each replica served since ``since``, by name."""
        return {count.name: int(round(self.served(index, since))) for index, count in enumerate(self.counts)}


def build_timeline(
    started: float,
    ended: float,
    events: Sequence[tuple[float, int, int, int, int]],
    meter: ReplicaMeter | None = None,
) -> dict[str, Any]:
    """Per-second figures over the whole seconds from ``started`` to ``ended`` (a last partial second, and the
    calls that ended in it, are left out: the totals are the report's, not the timeline's sums).

    Args:
        events: ``(when a call ended, images answered, refused as invalid, lost, wrong)`` of every call
            (:attr:`aigi.benchmarks.fault_check.Tally.events`).
        meter: the replicas' readings; ``per_replica`` is empty without one.

    Returns:
        ``t_s`` (the start of each second), ``answered``, ``refused_invalid``, ``lost``, ``wrong`` (images of the
        calls that ended in that second) and ``per_replica`` (images each replica served in that second).
    """
    seconds = max(1, math.floor(ended - started))
    series: dict[str, list[int]] = {name: [0] * seconds for name in ("answered", "refused_invalid", "lost", "wrong")}
    for when, *counts in events:
        slot = max(0, int(when - started))
        if slot >= seconds:
            continue
        for name, value in zip(series, counts, strict=True):
            series[name][slot] += value
    per_replica: dict[str, list[int]] = {}
    if meter is not None:
        for index, count in enumerate(meter.counts):
            edges = [meter.served(index, started, started + second) for second in range(seconds + 1)]
            per_replica[count.name] = [int(round(b - a)) for a, b in zip(edges, edges[1:], strict=False)]
    return {"t_s": list(range(seconds)), **series, "per_replica": per_replica}
