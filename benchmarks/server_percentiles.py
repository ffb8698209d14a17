"""Triton's server-side latency percentiles per model, from its summary metrics, and what window they cover.

With ``--metrics-config summary_latencies=true`` (the embedded server sets it) Triton exports, per model and
version, Prometheus *summaries* of each request's request, queue and compute (input, infer, output) time:
``nv_inference_queue_summary_us{quantile="0.9"}`` and so on, plus ``_count`` and ``_sum``. Their quantiles are
computed over a sliding time window, not since the server started: Triton keeps prometheus-cpp's default of
60 s in 5 buckets, so an observation counts for 48 to 60 s after it was made. Read right after a cell, they
cover that cell's requests (its warm-up included; for cells longer than 48 s only their last 48-60 s) and any
other request the same model served in the minute before: earlier cells' (:class:`WindowTracker` says which
cells that may be), or, on a server started elsewhere, other clients'. The means next to them come from the
counters' exact difference across the cell (:mod:`aigi.benchmarks.metrics_scrape`).
"""

from __future__ import annotations

import logging
import math
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aigi.benchmarks.metrics_scrape import Sample, parse_prometheus

logger = logging.getLogger(__name__)

# what the report calls each summary, and Triton's metric name for it
SUMMARIES = {
    "request": "nv_inference_request_summary_us",
    "queue": "nv_inference_queue_summary_us",
    "compute_input": "nv_inference_compute_input_summary_us",
    "compute_infer": "nv_inference_compute_infer_summary_us",
    "compute_output": "nv_inference_compute_output_summary_us",
}
QUANTILES = {"0.5": "p50_ms", "0.9": "p90_ms", "0.99": "p99_ms"}
WINDOW_S = 60.0  # prometheus-cpp's default max_age, which Triton keeps; an observation lives 48-60 s
MIN_AGE_S = 48.0  # max_age minus one of its 5 age buckets


def _quantile_samples(samples: Iterable[Sample]) -> dict[tuple[str, str, str], dict[str, float]]:
    """``(model, version, kind) -> {quantile: value in us}`` of the summaries in :data:`SUMMARIES`."""
    kinds = {name: kind for kind, name in SUMMARIES.items()}
    found: dict[tuple[str, str, str], dict[str, float]] = {}
    for sample in samples:
        kind = kinds.get(sample.name)
        quantile = sample.label("quantile")
        if kind is None or quantile not in QUANTILES:
            continue
        key = (sample.label("model"), sample.label("version"), kind)
        found.setdefault(key, {})[quantile] = sample.value
    return found


def _counts(samples: Iterable[Sample]) -> dict[tuple[str, str], float]:
    """``(model, version) -> requests observed`` (the request summary's ``_count``)."""
    name = SUMMARIES["request"] + "_count"
    return {(s.label("model"), s.label("version")): s.value for s in samples if s.name == name}


def _ms(value_us: float | None) -> float | None:
    return None if value_us is None or math.isnan(value_us) else value_us / 1e3


def summary_percentiles(samples: Sequence[Sample]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per model: ``{kind: {"p50_ms": ..., "p90_ms": ..., "p99_ms": ...}}`` for every kind in :data:`SUMMARIES`.

    A quantile over an empty window (Triton writes ``NaN``) is ``None``. Quantiles of several versions of one
    model cannot be merged: the version that served the most requests is taken.
    """
    quantiles = _quantile_samples(samples)
    counts = _counts(samples)
    best_version: dict[str, str] = {}
    for model, version, _ in quantiles:
        current = best_version.get(model)
        if current is None or counts.get((model, version), 0.0) > counts.get((model, current), 0.0):
            best_version[model] = version
    result: dict[str, dict[str, dict[str, float | None]]] = {}
    for (model, version, kind), values in sorted(quantiles.items()):
        if model and best_version.get(model) == version:
            result.setdefault(model, {})[kind] = {label: _ms(values.get(q)) for q, label in QUANTILES.items()}
    return result


def read_percentiles(
    metrics_url: str, models: Iterable[str], timeout_s: float = 5.0
) -> dict[str, dict[str, dict[str, float | None]]]:
    """:func:`summary_percentiles` of ``models`` as the server reports them now.

    Raises:
        OSError: the metrics endpoint did not answer.
    """
    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:  # noqa: S310 - the run's server
        text = response.read().decode("utf-8", errors="replace")
    wanted = set(models)
    return {model: kinds for model, kinds in summary_percentiles(parse_prometheus(text)).items() if model in wanted}


@dataclass
class WindowTracker:
    """Which cells sent requests to each ``(metrics URL, model)`` and when, to say what a cell's quantiles cover."""

    ends: dict[tuple[str, str], list[tuple[float, str]]] = field(default_factory=dict)

    def earlier_cells(self, url: str, models: Iterable[str], read_at: float) -> list[str]:
        """The earlier cells whose requests to ``models`` ended less than :data:`WINDOW_S` before ``read_at``
        (monotonic): some of their requests may still be inside the quantiles' window."""
        recent = {
            label for model in models for ended, label in self.ends.get((url, model), []) if read_at - ended < WINDOW_S
        }
        return sorted(recent)

    def record(self, url: str, models: Iterable[str], label: str, ended_at: float | None = None) -> None:
        """Note that cell ``label`` sent requests to ``models`` until ``ended_at`` (default: now)."""
        moment = time.monotonic() if ended_at is None else ended_at
        for model in models:
            self.ends.setdefault((url, model), []).append((moment, label))

    def wait_until_clear(self, url: str, sleep=time.sleep) -> float:
        """Sleep until every earlier request to the server at ``url`` has left the quantiles' window (so the next
        cell's quantiles cover that cell alone); returns the seconds slept."""
        ends = [ended for (seen, _), cells in self.ends.items() if seen == url for ended, _ in cells]
        wait = max(0.0, WINDOW_S - (time.monotonic() - max(ends))) if ends else 0.0
        if wait:
            logger.info("waiting %.0f s for Triton's summary window to clear", wait)
            sleep(wait)
        return wait
