"""Triton's own view of a cell: its Prometheus counters read before and after, split per model.

Triton exports cumulative counters per model and version (``nv_inference_request_success``,
``nv_inference_count``, ``nv_inference_exec_count`` and the ``*_duration_us`` totals). The difference
across a cell, divided by the entry model's request count, gives the server's time per client request;
what the client saw beyond the server's request duration is network and (de)serialization.
"""

from __future__ import annotations

import logging
import re
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)

_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    """One Prometheus sample: metric name, labels and value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str, default: str = "") -> str:
        """The value of label ``key``."""
        return dict(self.labels).get(key, default)


def parse_prometheus(text: str) -> list[Sample]:
    """Parse Prometheus text exposition format; comments and malformed lines are skipped."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            logger.debug("skipping unparseable metrics line %r", line)
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        labels = tuple(
            (key, raw.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
            for key, raw in _LABEL.findall(match["labels"] or "")
        )
        samples.append(Sample(match["name"], labels, value))
    return samples


def model_counters(samples: Iterable[Sample]) -> dict[str, dict[str, float]]:
    """Per-model totals (summed over versions) of the inference counters in :data:`COUNTERS`."""
    totals: dict[str, dict[str, float]] = {}
    for sample in samples:
        if sample.name not in COUNTERS:
            continue
        model = sample.label("model")
        if not model:
            continue
        per_model = totals.setdefault(model, dict.fromkeys(COUNTERS, 0.0))
        per_model[sample.name] += sample.value
    return totals


def scrape(metrics_url: str, timeout_s: float = 5.0) -> dict[str, dict[str, float]]:
    """Fetch ``metrics_url`` (``http://host:8002/metrics``) and return :func:`model_counters` of it."""
    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:  # noqa: S310 - local server
        text = response.read().decode("utf-8", errors="replace")
    return model_counters(parse_prometheus(text))


def scrape_settled(
    metrics_url: str, model: str, at_least: float | None = None, timeout_s: float = 2.0
) -> dict[str, dict[str, float]]:
    """Scrape once the server has recorded every finished request of ``model``.

    Triton updates a request's statistics just after sending its response, so a scrape right after the
    client's last answer can miss it. With ``at_least`` the scrape is repeated until the model's successful
    plus failed requests reach it; without, until two scrapes 20 ms apart agree. Gives up after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    previous = scrape(metrics_url)
    while time.monotonic() < deadline:
        counters = previous.get(model, {})
        done = counters.get("nv_inference_request_success", 0.0) + counters.get("nv_inference_request_failure", 0.0)
        if at_least is not None and done >= at_least:
            return previous
        time.sleep(0.02)
        current = scrape(metrics_url)
        if at_least is None and current.get(model) == previous.get(model):
            return current
        previous = current
    return previous


def requests_done(counters: dict[str, dict[str, float]], model: str) -> float:
    """Successful plus failed requests of ``model`` in a scrape."""
    entry = counters.get(model, {})
    return entry.get("nv_inference_request_success", 0.0) + entry.get("nv_inference_request_failure", 0.0)


def counter_delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """``after - before`` per model and counter; models with no new requests are dropped."""
    delta = {}
    for model, counters in after.items():
        base = before.get(model, {})
        change = {name: value - base.get(name, 0.0) for name, value in counters.items()}
        if change.get("nv_inference_request_success", 0.0) > 0 or change.get("nv_inference_request_failure", 0.0) > 0:
            delta[model] = change
    return delta


def split_latency(
    delta: dict[str, dict[str, float]], entry_model: str, client_mean_latency_ms: float
) -> dict[str, object]:
    """Split the client's mean latency into network+marshalling, queue and compute, per client request.

    Args:
        delta: :func:`counter_delta` over the cell.
        entry_model: the model the client called (the ensemble for the bytes path).
        client_mean_latency_ms: the client's mean request latency in the cell.

    Returns:
        ``server_request_ms`` (the entry model's request duration), ``queue_ms`` and ``compute_ms``
        (summed over every model the requests touched: input + infer + output), ``network_marshal_ms``
        (client latency minus server request duration), ``avg_server_batch`` (images per execution of the
        entry model or its busiest step) and ``per_model`` (each model's own per-request numbers). Empty when
        the entry model saw no requests (metrics disabled, or another server). No component is ever negative:
        one that measured below zero is set to 0 and its measured value kept under ``clamped`` (the client's
        mean can be a fraction of a millisecond shorter than the server's request duration, which ends only
        after the response was handed to the network; counters that went back mean a restarted server).
    """
    entry = delta.get(entry_model)
    requests = entry.get("nv_inference_request_success", 0.0) if entry else 0.0
    if entry is None or not requests:
        return {}
    per_model = {}
    queue_us = compute_us = 0.0
    for model, counters in sorted(delta.items()):
        model_queue = counters["nv_inference_queue_duration_us"]
        model_compute = (
            counters["nv_inference_compute_input_duration_us"]
            + counters["nv_inference_compute_infer_duration_us"]
            + counters["nv_inference_compute_output_duration_us"]
        )
        executions = counters["nv_inference_exec_count"]
        per_model[model] = {
            "requests": counters["nv_inference_request_success"],
            "failures": counters["nv_inference_request_failure"],
            "inferences": counters["nv_inference_count"],
            "executions": executions,
            "avg_batch": counters["nv_inference_count"] / executions if executions else None,
            "request_ms": counters["nv_inference_request_duration_us"] / requests / 1e3,
            "queue_ms": model_queue / requests / 1e3,
            "compute_infer_ms": counters["nv_inference_compute_infer_duration_us"] / requests / 1e3,
            "compute_ms": model_compute / requests / 1e3,
        }
        # An ensemble's own duration counters summarize its steps; count time once, at the steps.
        if model != entry_model or len(delta) == 1:
            queue_us += model_queue
            compute_us += model_compute
    server_request_ms = entry["nv_inference_request_duration_us"] / requests / 1e3
    batches = [m["avg_batch"] for m in per_model.values() if m["avg_batch"]]
    split: dict[str, object] = {
        "requests": requests,
        "server_request_ms": server_request_ms,
        "queue_ms": queue_us / requests / 1e3,
        "compute_ms": compute_us / requests / 1e3,
        "network_marshal_ms": client_mean_latency_ms - server_request_ms,
        "avg_server_batch": max(batches) if batches else None,
        "per_model": per_model,
    }
    clamped = clamp_negative(split, ("server_request_ms", "queue_ms", "compute_ms", "network_marshal_ms"))
    for model, figures in per_model.items():
        clamped |= {f"{model}.{key}": value for key, value in clamp_negative(figures, MODEL_TIMES).items()}
    if clamped:
        split["clamped"] = clamped
    return split


MODEL_TIMES = ("request_ms", "queue_ms", "compute_infer_ms", "compute_ms")


def clamp_negative(figures: dict[str, Any], keys: Iterable[str]) -> dict[str, float]:
    """Set every ``figures[key]`` below zero to 0, in place; returns ``{key: measured value}`` of those."""
    clamped = {}
    for key in keys:
        value = figures.get(key)
        if isinstance(value, int | float) and value < 0:
            clamped[key] = float(value)
            figures[key] = 0.0
            logger.info("%s measured %.3f ms: clamped to 0", key, value)
    return clamped
