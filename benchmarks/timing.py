"""Honest timing: warm-up excluded, inputs rotated, many runs, percentiles, and a threaded concurrency driver.

Every timed call returns host memory (the runtimes copy their outputs back), so the clock stops only after
the device has finished; ``sync`` is called around the measured window as well for runtimes that queue work.
Each thread cycles through a pool of distinct input batches, starting at its own offset, so neither a
cache nor a memoizing server sees the same batch twice in a row.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from aigi.benchmarks.cells import CellTiming

logger = logging.getLogger(__name__)

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float] | npt.NDArray[np.float64], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation; NaN for no values."""
    if len(values) == 0:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def latency_summary_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99, mean, min and max of latencies given in seconds, in milliseconds."""
    values = np.asarray(latencies_s, dtype=np.float64) * 1e3
    summary = {f"p{q}_ms": percentile(values, q) for q in PERCENTILES}
    if values.size:
        summary.update(mean_ms=float(values.mean()), min_ms=float(values.min()), max_ms=float(values.max()))
    else:
        summary.update(mean_ms=float("nan"), min_ms=float("nan"), max_ms=float("nan"))
    return summary


@dataclass(frozen=True)
class RequestRecord:
    """One measured request: which client stream sent it, when it started (seconds after the window opened)
    and how long it took (seconds)."""

    stream: int
    start_s: float
    latency_s: float


@dataclass
class TimingResult:
    """What one measured cell saw.

    Attributes:
        latencies_s: per-request wall latency, seconds, in completion order (all threads).
        images: images processed inside the measured window.
        wall_s: seconds from the start barrier to the last request's completion.
        concurrency: threads that issued requests.
        warmup: warm-up calls per thread, excluded from everything above.
        errors: requests that raised (the first error's text is kept).
        records: one :class:`RequestRecord` per successful request, in completion order (the raw data behind
            ``latencies_s``, for ``latencies.csv``).
    """

    latencies_s: list[float]
    images: int
    wall_s: float
    concurrency: int
    warmup: int
    errors: int = 0
    first_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    records: list[RequestRecord] = field(default_factory=list)

    @property
    def requests(self) -> int:
        """Successful requests measured."""
        return len(self.latencies_s)

    @property
    def images_per_s(self) -> float:
        """Throughput over the measured window."""
        return self.images / self.wall_s if self.wall_s > 0 else float("nan")

    def cell_timing(self) -> CellTiming:
        """The cell's timing figures (what ``bench.json`` records per cell)."""
        return CellTiming(
            images_per_s=self.images_per_s,
            requests=self.requests,
            images=self.images,
            wall_s=self.wall_s,
            concurrency=self.concurrency,
            warmup=self.warmup,
            errors=self.errors,
            first_error=self.first_error,
            **latency_summary_ms(self.latencies_s),
        )

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers for the report."""
        return self.cell_timing().to_dict()


class InputPool:
    """A fixed list of distinct prepared batches, handed out round-robin from a per-caller offset."""

    def __init__(self, batches: Sequence[Any], batch_size: int) -> None:
        if not batches:
            raise ValueError("an input pool needs at least one batch")
        self.batches = list(batches)
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return len(self.batches)

    def cycle(self, offset: int = 0):
        """Yield batches forever, starting at ``offset`` (threads use different offsets)."""
        index = offset % len(self.batches)
        while True:
            yield self.batches[index]
            index = (index + 1) % len(self.batches)


def measure(
    call: Callable[[Any], Any],
    pool: InputPool,
    *,
    concurrency: int = 1,
    warmup: int = 3,
    iters: int | None = None,
    duration_s: float | None = None,
    min_iters: int = 5,
    sync: Callable[[], None] | None = None,
    on_window: Callable[[], None] | None = None,
    timeout_s: float | None = None,
) -> TimingResult:
    """Time ``call`` on rotating inputs from ``concurrency`` threads.

    Each thread first makes ``warmup`` untimed calls; all threads then start together. The window closes
    after ``iters`` requests in total when given, otherwise once ``duration_s`` has passed *and* at least
    ``min_iters`` requests completed (so slow cells still give several samples for their percentiles).

    Args:
        call: runs one batch and returns host results (so the device is synchronized on return).
        pool: prepared input batches of ``pool.batch_size`` images.
        concurrency: client threads issuing requests back to back.
        warmup: untimed calls per thread before the window.
        iters: total measured requests (all threads); takes precedence over ``duration_s``.
        duration_s: minimum length of the window when ``iters`` is not given.
        min_iters: minimum measured requests in duration mode.
        sync: called before the window opens and after it closes (e.g. ``torch.cuda.synchronize``).
        on_window: called once after the warm-up, just before the window opens (to read counters).
        timeout_s: give up on streams still busy this long after the window opened (a hung server or client);
            the cell then reports what completed and counts the stuck streams as errors.

    Returns:
        The cell's :class:`TimingResult`; requests that raised are counted in ``errors``, not timed.
    """
    _check_measure_args(concurrency, iters, duration_s)
    streams = _Streams(call, pool, concurrency, warmup, iters, min_iters)
    streams.start()
    if not streams.warmed_up(timeout_s):
        return TimingResult(
            [],
            0,
            0.0,
            concurrency,
            warmup,
            errors=concurrency,
            first_error=f"warm-up still busy after {timeout_s:.0f} s",
        )
    if sync is not None:
        sync()
    if on_window is not None:
        on_window()
    start = streams.open_window(duration_s)
    streams.join(start, timeout_s)
    if sync is not None:
        sync()
    return streams.result(start)


def _check_measure_args(concurrency: int, iters: int | None, duration_s: float | None) -> None:
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if iters is None and duration_s is None:
        raise ValueError("give iters or duration_s")
    if iters is not None and iters < 1:
        raise ValueError("iters must be at least 1")


class _Streams:
    """The client threads of one :func:`measure` call and what they share: barriers, counters, the window's end."""

    def __init__(
        self,
        call: Callable[[Any], Any],
        pool: InputPool,
        concurrency: int,
        warmup: int,
        iters: int | None,
        min_iters: int,
    ) -> None:
        self.call = call
        self.pool = pool
        self.concurrency = concurrency
        self.warmup = warmup
        self.iters = iters
        self.min_iters = min_iters
        self.lock = threading.Lock()
        self.warmed = threading.Barrier(concurrency + 1)
        self.go = threading.Barrier(concurrency + 1)
        self.latencies: list[float] = []
        self.records: list[RequestRecord] = []
        self.opened = 0.0
        self.issued = 0
        self.images = 0
        self.errors = 0
        self.first_error: str | None = None
        self.end = 0.0
        self.deadline = float("inf")
        self.stride = max(1, len(pool) // concurrency)
        self.threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(concurrency)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def warmed_up(self, timeout_s: float | None) -> bool:
        """Wait for every stream's warm-up; ``False`` (and the streams released) when it took over ``timeout_s``."""
        try:
            self.warmed.wait(timeout_s)
        except threading.BrokenBarrierError:
            self.go.abort()
            return False
        return True

    def open_window(self, duration_s: float | None) -> float:
        """Start the clock and release the streams; returns the window's start."""
        start = time.perf_counter()
        self.opened = start
        if duration_s is not None:
            self.deadline = start + duration_s
        self.go.wait()
        return start

    def join(self, start: float, timeout_s: float | None) -> None:
        """Wait for the streams; those still busy ``timeout_s`` after ``start`` count as errors."""
        for thread in self.threads:
            thread.join(None if timeout_s is None else max(0.0, start + timeout_s - time.perf_counter()))
        stuck = sum(thread.is_alive() for thread in self.threads)
        if stuck:
            with self.lock:
                self.errors += stuck
                self.first_error = self.first_error or f"{stuck} stream(s) still busy after {timeout_s:.0f} s"

    def result(self, start: float) -> TimingResult:
        wall = (self.end or time.perf_counter()) - start
        return TimingResult(
            latencies_s=self.latencies,
            images=self.images,
            wall_s=max(wall, 0.0),
            concurrency=self.concurrency,
            warmup=self.warmup,
            errors=self.errors,
            first_error=self.first_error,
            records=self.records,
        )

    def _wanted(self) -> bool:
        """Whether a stream may issue one more measured request (and count it as issued)."""
        with self.lock:
            if self.iters is not None:
                if self.issued >= self.iters:
                    return False
            elif time.perf_counter() >= self.deadline and self.issued >= self.min_iters:
                return False
            self.issued += 1
            return True

    def _failed(self, message: str) -> None:
        with self.lock:
            self.errors += 1
            self.first_error = self.first_error or message

    def _worker(self, thread_index: int) -> None:
        batches = self.pool.cycle(thread_index * self.stride)
        try:
            for _ in range(self.warmup):
                self.call(next(batches))
        except Exception as exc:  # noqa: BLE001 - reported in the cell, not raised from a thread
            self._failed(f"warm-up: {exc.__class__.__name__}: {exc}")
        try:
            self.warmed.wait()
            self.go.wait()
        except threading.BrokenBarrierError:
            return  # the caller gave up on a stuck warm-up
        while self._wanted():
            batch = next(batches)
            start = time.perf_counter()
            try:
                self.call(batch)
            except Exception as exc:  # noqa: BLE001
                self._failed(f"{exc.__class__.__name__}: {exc}")
                continue
            end = time.perf_counter()
            with self.lock:
                self.latencies.append(end - start)
                self.records.append(RequestRecord(thread_index, start - self.opened, end - start))
                self.images += self.pool.batch_size
                self.end = max(self.end, end)
