"""aigi's cells beside perf_analyzer's for the same runtime, batch size and concurrency: do they agree?

They must agree within :data:`TOLERANCE` on throughput, or the report says why, from what both measured. The two
count the same thing (images completed per second of a client-side window, warm-up excluded) but differ in
who the client is and which window is kept:

* perf_analyzer is a C++ client: serializing a request, sending it and reading the answer costs it a fraction of
  what tritonclient's Python costs aigi, and on a machine whose few cores the server also needs, the client's CPU
  time is taken from the server's;
* it sends one random tensor (``--input-data random``) again and again; aigi rotates real benchmark images;
* it reports the mean of its last three count windows once they agree within its stability percentage, which on a
  shared machine selects a calm stretch; aigi reports its whole window, calm or not;
* the two run one after the other, so the machine may not be the same (the server's compute time per request,
  which both see, shows whether it was).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from aigi.benchmarks.cells import BenchCell

logger = logging.getLogger(__name__)

TOLERANCE = 0.10  # |ours / perf_analyzer's - 1| on images/s
COMPUTE_DRIFT = 0.10  # server compute per request differing by more than this: the machine changed between runs
CLIENT_CPU_SHARE = 0.05  # client CPU per request above this share of the latency is worth naming
CLIENT_SIDE_SHARE = 0.02  # so is a difference in client-side time per request above this share (and 1 ms)


def _client_side_ms(row: dict[str, Any]) -> float | None:
    """What perf_analyzer spent per request outside the server's queue and compute."""
    parts = [row.get(key) for key in ("client_send_ms", "network_server_ms", "client_recv_ms")]
    return sum(part for part in parts if part is not None) if any(part is not None for part in parts) else None


def _reasons(cell: BenchCell, row: dict[str, Any], cpu_cores: int | None) -> list[str]:
    """Why the two figures may differ, from what each measured for this cell."""
    reasons = []
    split = cell.triton
    theirs = _client_side_ms(row)
    if split is not None and split.network_marshal_ms is not None and theirs is not None:
        extra = split.network_marshal_ms - theirs
        if abs(extra) >= max(1.0, CLIENT_SIDE_SHARE * cell.measured.mean_ms):
            reasons.append(
                f"client side per request: aigi's Python client {split.network_marshal_ms:.1f} ms (network + "
                f"marshalling), perf_analyzer {theirs:.1f} ms (send + network/server send-receive + receive)"
            )
    if split is not None and split.compute_ms and row.get("compute_ms"):
        drift = row["compute_ms"] / split.compute_ms - 1
        if abs(drift) > COMPUTE_DRIFT:
            reasons.append(
                f"the server's compute per request differed ({split.compute_ms:.1f} ms in aigi's cell, "
                f"{row['compute_ms']:.1f} ms in perf_analyzer's): the machine was not the same during the two runs"
            )
    if cell.client_cpu_ms and cell.client_cpu_ms > CLIENT_CPU_SHARE * cell.measured.mean_ms:
        cores = f" of {cpu_cores} cores" if cpu_cores else ""
        reasons.append(
            f"aigi's client used {cell.client_cpu_ms:.1f} ms of CPU per request, on a machine{cores} it shares "
            "with the server"
        )
    reasons.append(
        f"perf_analyzer keeps its last three windows once they agree within {row.get('stability_pct', '?')}% and "
        f"sends {'one random tensor' if cell.path == 'tensor' else 'the same images'} each time"
        + ("; aigi rotates real images over its whole window" if cell.path == "tensor" else "")
    )
    return reasons


def compare(cells: Sequence[BenchCell], rows: Sequence[dict[str, Any]], cpu_cores: int | None = None) -> list[dict]:
    """One entry per perf_analyzer row that has an ``ok`` aigi cell: both throughputs, their ratio, whether they
    agree within :data:`TOLERANCE`, and (when they do not) the reasons :func:`_reasons` finds."""
    ours = {cell.key: cell for cell in cells if cell.ok}
    entries = []
    for row in rows:
        cell = ours.get((row.get("runtime", ""), row["batch"], row["concurrency"]))
        theirs = row.get("images_per_s")
        if cell is None or not theirs:
            continue
        ratio = cell.measured.images_per_s / theirs
        agree = abs(ratio - 1) <= TOLERANCE
        entries.append(
            {
                "runtime": cell.runtime,
                "batch": cell.batch,
                "concurrency": cell.concurrency,
                "aigi_images_per_s": cell.measured.images_per_s,
                "perf_analyzer_images_per_s": theirs,
                "ratio": ratio,
                "agree": agree,
                "why": [] if agree else _reasons(cell, row, cpu_cores),
            }
        )
    return entries
