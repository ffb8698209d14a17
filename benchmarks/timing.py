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

logger = logging.getLogger(__name__)

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
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
    """

    latencies_s: list[float]
    images: int
    wall_s: float
    concurrency: int
    warmup: int
    errors: int = 0
    first_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        """Successful requests measured."""
        return len(self.latencies_s)

    @property
    def images_per_s(self) -> float:
        """Throughput over the measured window."""
        return self.images / self.wall_s if self.wall_s > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers for the report."""
        return {
            "images_per_s": self.images_per_s,
            "requests": self.requests,
            "images": self.images,
            "wall_s": self.wall_s,
            "concurrency": self.concurrency,
            "warmup": self.warmup,
            "errors": self.errors,
            **({"first_error": self.first_error} if self.first_error else {}),
            **latency_summary_ms(self.latencies_s),
        }


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
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if iters is None and duration_s is None:
        raise ValueError("give iters or duration_s")
    if iters is not None and iters < 1:
        raise ValueError("iters must be at least 1")
    lock = threading.Lock()
    warmed = threading.Barrier(concurrency + 1)
    go = threading.Barrier(concurrency + 1)
    latencies: list[float] = []
    state = {"issued": 0, "images": 0, "errors": 0, "first_error": None, "end": 0.0}
    deadline = [float("inf")]
    stride = max(1, len(pool) // concurrency)

    def wanted() -> bool:
        with lock:
            if iters is not None:
                if state["issued"] >= iters:
                    return False
            elif time.perf_counter() >= deadline[0] and state["issued"] >= min_iters:
                return False
            state["issued"] += 1
            return True

    def worker(thread_index: int) -> None:
        batches = pool.cycle(thread_index * stride)
        try:
            for _ in range(warmup):
                call(next(batches))
        except Exception as exc:  # noqa: BLE001 - reported in the cell, not raised from a thread
            with lock:
                state["errors"] += 1
                state["first_error"] = state["first_error"] or f"warm-up: {exc.__class__.__name__}: {exc}"
        try:
            warmed.wait()
            go.wait()
        except threading.BrokenBarrierError:
            return  # the caller gave up on a stuck warm-up
        while wanted():
            batch = next(batches)
            start = time.perf_counter()
            try:
                call(batch)
            except Exception as exc:  # noqa: BLE001
                with lock:
                    state["errors"] += 1
                    state["first_error"] = state["first_error"] or f"{exc.__class__.__name__}: {exc}"
                continue
            end = time.perf_counter()
            with lock:
                latencies.append(end - start)
                state["images"] += pool.batch_size
                state["end"] = max(state["end"], end)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    try:
        warmed.wait(timeout_s)
    except threading.BrokenBarrierError:
        go.abort()
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
    start = time.perf_counter()
    if duration_s is not None:
        deadline[0] = start + duration_s
    go.wait()
    for thread in threads:
        thread.join(None if timeout_s is None else max(0.0, start + timeout_s - time.perf_counter()))
    stuck = sum(thread.is_alive() for thread in threads)
    if stuck:
        with lock:
            state["errors"] += stuck
            state["first_error"] = state["first_error"] or f"{stuck} stream(s) still busy after {timeout_s:.0f} s"
    if sync is not None:
        sync()
    wall = (state["end"] or time.perf_counter()) - start
    return TimingResult(
        latencies_s=latencies,
        images=state["images"],
        wall_s=max(wall, 0.0),
        concurrency=concurrency,
        warmup=warmup,
        errors=state["errors"],
        first_error=state["first_error"],
    )
