"""What one cell reads around its measured window, besides the client's own timing.

Memory (the kernel's high-water mark reset when the window opens, or the GPU's), the CPU time this process and the
run's Triton servers used during it, and for Triton cells the server's view: its counters before and after
(:mod:`aigi.benchmarks.metrics_scrape`: the mean split per request) and its summary quantiles right after
(:mod:`aigi.benchmarks.server_percentiles`). Against a server started elsewhere there is no memory to read, and
when its metrics cannot be read the split says why instead of being left out.
"""

from __future__ import annotations

import logging
import time

from aigi.benchmarks import baseline_check, metrics_scrape
from aigi.benchmarks.cells import BenchCell, RequestsMismatch, TritonSplit
from aigi.benchmarks.lifecycle import memory_probe
from aigi.benchmarks.memory import process_tree
from aigi.benchmarks.runtimes import BaseRuntime
from aigi.benchmarks.server_percentiles import WINDOW_S, WindowTracker, read_percentiles

logger = logging.getLogger(__name__)


class CellWindow:
    """What a cell reads around its measured window: memory (reset when it opens), this process's CPU time,
    that of the run's servers, and Triton's counters and percentiles."""

    def __init__(self, runtime: BaseRuntime, windows: WindowTracker, label: str, server_pids: list[int]) -> None:
        self.runtime = runtime
        self.windows = windows
        self.label = label
        self.server_pids = server_pids
        self.remote = runtime.spec.family == "triton" and runtime.memory_root_pid() is None
        self.probe = None if self.remote else memory_probe(runtime)  # a remote server's memory is not ours to read
        self.view = runtime.triton_view()  # (metrics URL, entry model) or None
        self.before: dict[str, dict[str, float]] | None = None
        self.scrape_error: str | None = None
        self.base_mb: float | None = None
        self.cpu_s = self.others_cpu_s = 0.0

    def _others(self) -> list[int]:
        return [pid for root in self.server_pids for pid in process_tree(root)]

    def opens(self) -> None:
        """Called by :func:`measure` after the warm-up, just before the window opens."""
        if self.view is not None:
            try:
                self.before = metrics_scrape.scrape_settled(self.view[0], self.view[1])
            except OSError as exc:
                self.scrape_error = f"metrics at {self.view[0]} could not be read: {exc}"
                logger.debug("metrics scrape failed: %s", exc)
        if self.probe is not None:
            self.probe.reset_peak()
            self.base_mb = self.probe.current_mb()
        self.cpu_s = time.process_time()
        self.others_cpu_s = baseline_check.cpu_seconds(self._others())

    def closes(self) -> None:
        """Called right after :func:`measure` returns: the CPU time this process and the servers used."""
        self.cpu_s = time.process_time() - self.cpu_s
        self.others_cpu_s = baseline_check.cpu_seconds(self._others()) - self.others_cpu_s

    def add_memory(self, cell: BenchCell, static: float) -> None:
        """The cell's peak memory: the runtime's share of the device, or the resident set of its process."""
        if self.probe is None:
            return
        peak_mb = self.probe.peak_mb()
        if self.probe.kind == "gpu":
            base = self.base_mb if self.base_mb is not None else peak_mb
            cell.peak_mem_mb = static + max(0.0, peak_mb - base)
            cell.mem_kind = "gpu"
        else:
            cell.peak_mem_mb = peak_mb
            cell.mem_kind = "rss-server" if self.runtime.memory_root_pid() else "rss"

    def triton_split(self, sent: int, client_mean_ms: float) -> TritonSplit | None:
        """Triton's latency split and percentiles over the window (``None`` off Triton; says why when unread)."""
        if self.view is None:
            return None
        if self.before is None:
            return TritonSplit(unavailable=self.scrape_error or "metrics were not read")
        url, model = self.view
        try:
            expected = metrics_scrape.requests_done(self.before, model) + sent
            after = metrics_scrape.scrape_settled(url, model, at_least=expected)
        except OSError as exc:
            return TritonSplit(unavailable=f"metrics at {url} could not be read after the cell: {exc}")
        delta = metrics_scrape.counter_delta(self.before, after)
        split = TritonSplit.from_split(metrics_scrape.split_latency(delta, model, client_mean_ms))
        counted = metrics_scrape.requests_done(after, model) - metrics_scrape.requests_done(self.before, model)
        if counted != sent:  # another client, or a lagging counter: the split is approximate
            split.requests_mismatch = RequestsMismatch(client=sent, server=counted)
        self._add_percentiles(split, url, sorted(delta))
        return split

    def _add_percentiles(self, split: TritonSplit, url: str, models: list[str]) -> None:
        """Triton's p50/p90/p99 per model, read now, and which earlier cells may share their window."""
        if not models:
            return
        read_at = time.monotonic()
        try:
            split.server_percentiles = read_percentiles(url, models)
        except OSError as exc:
            split.percentiles_window = {"error": f"summary metrics could not be read: {exc}"}
            return
        if not any(split.server_percentiles.values()):
            split.percentiles_window = {"error": "the server exports no summary latencies (--metrics-config)"}
        else:
            earlier = self.windows.earlier_cells(url, models, read_at)
            split.percentiles_window = {"window_s": WINDOW_S, "earlier_cells": earlier}
        self.windows.record(url, models, self.label, read_at)
