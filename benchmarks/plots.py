"""The PNG plots of a run by cell summary: throughput vs batch size, latency vs client concurrency.

The plots drawn from every request's latency and Triton's split are in :mod:`aigi.benchmarks.latency_plots`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from aigi.benchmarks.cells import BenchCell

logger = logging.getLogger(__name__)

THROUGHPUT_PNG = "throughput_vs_batch.png"
LATENCY_PNG = "latency_vs_concurrency.png"


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def line_style(index: int, runtime: str) -> dict:
    """A distinct colour per line (20 before repeating) and a line style per family."""
    import matplotlib

    family = runtime.split("-", 1)[0]
    dashes = {"torch": "-", "ort": "--", "tensorrt": "-.", "triton": ":"}
    return {"color": matplotlib.colormaps["tab20"](index % 20), "linestyle": dashes.get(family, "-")}


def plot_throughput_vs_batch(cells: Sequence[BenchCell], out_dir: Path, title: str) -> Path | None:
    """Images/s of ``ok`` cells against batch size, one line per runtime at its lowest concurrency (log-log)."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    lowest: dict[str, int] = {}
    for cell in cells:
        lowest[cell.runtime] = min(lowest.get(cell.runtime, cell.concurrency), cell.concurrency)
    for cell in cells:
        if cell.concurrency == lowest[cell.runtime]:
            series[cell.runtime][cell.batch] = cell.measured.images_per_s
    if not series:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for index, (runtime, points) in enumerate(sorted(series.items())):
        batches = sorted(points)
        label = runtime + (f" (conc {lowest[runtime]})" if lowest[runtime] > 1 else "")
        ax.plot(batches, [points[b] for b in batches], marker="o", label=label, **line_style(index, runtime))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s")
    ax.set_title(f"{title}: throughput vs batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path = out_dir / THROUGHPUT_PNG
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency_vs_concurrency(cells: Sequence[BenchCell], out_dir: Path, title: str) -> Path:
    """p50 latency of ``ok`` cells (with a p99 whisker) against concurrency, one line per runtime and batch size.

    Only runtimes that sweep concurrency (servers) have more than one point; without any, the figure says so.
    """
    series: dict[tuple[str, int], dict[int, tuple[float, float]]] = defaultdict(dict)
    for cell in cells:
        series[(cell.runtime, cell.batch)][cell.concurrency] = (cell.measured.p50_ms, cell.measured.p99_ms)
    swept = {key: points for key, points in series.items() if len(points) > 1}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.5))
    if not swept:
        ax.text(0.5, 0.5, "no runtime swept concurrency\n(Triton cells were skipped)", ha="center", va="center")
        ax.set_axis_off()
    for index, ((runtime, batch), points) in enumerate(sorted(swept.items())):
        conc = sorted(points)
        p50 = [points[c][0] for c in conc]
        p99 = [points[c][1] for c in conc]
        line = ax.plot(conc, p50, marker="o", label=f"{runtime} b{batch}", **line_style(index, runtime))[0]
        ax.vlines(conc, p50, p99, color=line.get_color(), alpha=0.4)
    if swept:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("client concurrency (requests in flight)")
        ax.set_ylabel("latency p50 ms (whisker to p99)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"{title}: latency vs concurrency")
    fig.tight_layout()
    path = out_dir / LATENCY_PNG
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
