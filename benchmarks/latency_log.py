"""Every measured request of a cell, kept: ``latencies/<runtime>_b<batch>_c<concurrency>.csv`` in the output folder.

One row per successful request, in completion order: ``request`` (its index), ``stream`` (the client thread that
sent it), ``start_ms`` (when it was sent, after the measured window opened) and ``latency_ms``. The cell's
p50/p90/p99 in ``bench.json`` are percentiles of exactly these latencies; the CDF plot is drawn from them.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aigi.benchmarks.timing import RequestRecord

logger = logging.getLogger(__name__)

FOLDER = "latencies"
COLUMNS = ("request", "stream", "start_ms", "latency_ms")


def cell_file_name(runtime: str, batch: int, concurrency: int) -> str:
    """The cell's file, relative to the output folder."""
    return f"{FOLDER}/{runtime}_b{batch}_c{concurrency}.csv"


def write_latencies(out_dir: Path, name: str, records: Sequence[RequestRecord]) -> Path:
    """Write ``records`` to ``out_dir / name`` (folders made as needed); returns the path."""
    path = out_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for index, record in enumerate(records):
            writer.writerow((index, record.stream, f"{record.start_s * 1e3:.3f}", f"{record.latency_s * 1e3:.3f}"))
    return path


def read_latencies_ms(path: Path) -> np.ndarray:
    """The ``latency_ms`` column of a cell's file (empty when the file is missing or unreadable)."""
    try:
        with path.open(newline="") as handle:
            return np.asarray([float(row["latency_ms"]) for row in csv.DictReader(handle)], dtype=np.float64)
    except (OSError, KeyError, ValueError) as exc:
        logger.warning("cannot read latencies from %s: %s", path, exc)
        return np.empty(0, dtype=np.float64)
