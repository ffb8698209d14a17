"""The plots drawn from every request's latency and Triton's split: CDFs, where the time goes, throughput vs latency.

* ``latency_cdf.png``: the empirical CDF of each cell's request latencies (``latencies/*.csv``), one panel per
  batch size, one line per runtime and concurrency.
* ``latency_split.png``: each cell's mean client latency as a stacked bar: network + marshalling (client mean
  minus the server's request duration), queue, compute and the rest of the server's request time, from Triton's
  counters; an in-process cell is one bar of in-process time.
* ``throughput_vs_latency.png``: images/s against p50 latency across client concurrency, one line per runtime and
  batch size (each point labelled with its concurrency): where more streams stop buying throughput.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aigi.benchmarks.cells import BenchCell
from aigi.benchmarks.latency_log import read_latencies_ms
from aigi.benchmarks.plots import line_style, pyplot

logger = logging.getLogger(__name__)

CDF_PNG = "latency_cdf.png"
SPLIT_PNG = "latency_split.png"
THROUGHPUT_LATENCY_PNG = "throughput_vs_latency.png"
SPLIT_PARTS = (
    ("network + marshalling", "#8c8c8c"),
    ("queue", "#d62728"),
    ("compute", "#1f77b4"),
    ("server, other", "#9edae5"),
    ("in-process", "#2ca02c"),
)


def plot_latency_cdf(cells: Sequence[BenchCell], out_dir: Path, title: str) -> Path | None:
    """CDF of every request's latency per cell (cells without a latencies file are left out)."""
    by_batch: dict[int, list[tuple[str, np.ndarray]]] = defaultdict(list)
    for cell in cells:
        if cell.latencies_file:
            values = read_latencies_ms(out_dir / cell.latencies_file)
            if values.size:
                by_batch[cell.batch].append((f"{cell.runtime} c{cell.concurrency}", np.sort(values)))
    if not by_batch:
        return None
    plt = pyplot()
    batches = sorted(by_batch)
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches) + 3, 5), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        for index, (label, values) in enumerate(by_batch[batch]):
            share = np.arange(0, values.size + 1) / values.size  # from 0 below the fastest request to 1
            ax.step(np.concatenate([values[:1], values]), share, where="post", label=label, **line_style(index, label))
        ax.set_xscale("log")
        ax.set_xlabel("request latency ms (log)")
        ax.set_ylabel("fraction of requests ≤ latency")
        ax.set_title(f"batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(f"{title}: latency CDF (every measured request)")
    fig.tight_layout()
    return _save(fig, out_dir / CDF_PNG)


def split_parts(cell: BenchCell) -> dict[str, float]:
    """The cell's mean latency in the parts of :data:`SPLIT_PARTS`, in ms, none negative."""
    mean = cell.measured.mean_ms
    split = cell.triton
    if split is None or split.requests is None:
        return {"in-process": mean} if cell.family != "triton" else {}
    queue, compute = max(0.0, split.queue_ms or 0.0), max(0.0, split.compute_ms or 0.0)
    server = max(0.0, split.server_request_ms or 0.0)
    return {
        "network + marshalling": max(0.0, split.network_marshal_ms or 0.0),  # an older bench.json may hold < 0
        "queue": queue,
        "compute": compute,
        "server, other": max(0.0, server - queue - compute),
    }


def plot_latency_split(cells: Sequence[BenchCell], out_dir: Path, title: str) -> Path | None:
    """A stacked horizontal bar per cell: where its mean latency went."""
    rows = [(f"{cell.runtime} b{cell.batch} c{cell.concurrency}", split_parts(cell)) for cell in cells]
    rows = [(label, parts) for label, parts in rows if parts]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.28 * len(rows)))
    positions = np.arange(len(rows))[::-1]
    left = np.zeros(len(rows))
    for part, color in SPLIT_PARTS:
        widths = np.array([parts.get(part, 0.0) for _, parts in rows])
        if widths.any():
            ax.barh(positions, widths, left=left, color=color, label=part, height=0.7)
            left += widths
    ax.set_yticks(positions, [label for label, _ in rows], fontsize=7)
    ax.set_xlabel("mean latency per request, ms")
    ax.set_title(f"{title}: where the time goes (Triton's counters; in-process = client-measured)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, out_dir / SPLIT_PNG)


def plot_throughput_vs_latency(cells: Sequence[BenchCell], out_dir: Path, title: str) -> Path | None:
    """Images/s against p50 latency, a line per runtime and batch size through its concurrencies."""
    series: dict[tuple[str, int], list[BenchCell]] = defaultdict(list)
    for cell in cells:
        series[(cell.runtime, cell.batch)].append(cell)
    swept = {key: sorted(group, key=lambda c: c.concurrency) for key, group in series.items() if len(group) > 1}
    if not swept:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for index, ((runtime, batch), group) in enumerate(sorted(swept.items())):
        x = [cell.measured.p50_ms for cell in group]
        y = [cell.measured.images_per_s for cell in group]
        ax.plot(x, y, marker="o", label=f"{runtime} b{batch}", **line_style(index, runtime))
        for cell, px, py in zip(group, x, y, strict=True):
            ax.annotate(f"c{cell.concurrency}", (px, py), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("latency p50 ms (log)")
    ax.set_ylabel("images/s")
    ax.set_title(f"{title}: throughput vs latency across client concurrency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _save(fig, out_dir / THROUGHPUT_LATENCY_PNG)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
