"""One benchmark cell (a runtime at one batch size and client concurrency), typed.

``bench.json`` is a published artifact: :meth:`BenchCell.to_dict` writes exactly the keys, in the order, that
the harness always wrote, and :meth:`BenchCell.from_dict` reads them back, so a report can be rendered again
from an existing ``bench.json`` (``python -m aigi.benchmarks.report --from bench.json``).

A cell's flat JSON is built from parts: what ran (runtime, batch, concurrency...), the client's timing
(:class:`CellTiming`), what the run added on success (memory, FLOP/s, speed-up) and, for Triton cells, the
server's own latency split read from its Prometheus counters (:class:`TritonSplit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

OK = "ok"
ERROR = "error"

# bench.json's keys, in its order: a cell is IDENTITY, COUNTS, [first_error], LATENCIES, status, error or
# RESOURCES, [triton], speedup, [client_cpu_ms], [latencies_file] (COUNTS' "concurrency" repeats IDENTITY's and
# keeps its place; bracketed keys only when set)
IDENTITY = ("runtime", "family", "precision", "path", "protocol", "shared_memory", "batch", "concurrency")
COUNTS = ("images_per_s", "requests", "images", "wall_s", "concurrency", "warmup", "errors")
LATENCIES = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms")
RESOURCES = ("peak_mem_mb", "mem_kind", "achieved_tflops", "peak_fraction")
SPLIT = (
    "requests",
    "server_request_ms",
    "queue_ms",
    "compute_ms",
    "network_marshal_ms",
    "avg_server_batch",
    "per_model",
)


def _pick(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in names}


@dataclass
class CellTiming:
    """What the client measured in the cell's window (:meth:`aigi.benchmarks.timing.TimingResult.summary`)."""

    images_per_s: float
    requests: int
    images: int
    wall_s: float
    concurrency: int
    warmup: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    first_error: str | None = None  # in JSON only when set, between ``errors`` and ``p50_ms``

    def to_dict(self) -> dict[str, Any]:
        """The summary's keys in the order :meth:`TimingResult.summary` gives them."""
        first_error = {"first_error": self.first_error} if self.first_error else {}
        return _pick(self, COUNTS) | first_error | _pick(self, LATENCIES)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellTiming:
        """Read the timing keys of a cell (or of a timing summary); other keys are ignored."""
        values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(cls)}  # JSON values, as read
        return cls(**values)


@dataclass
class RequestsMismatch:
    """The client sent ``client`` requests in the window but the server's counters grew by ``server``."""

    client: int
    server: float

    def to_dict(self) -> dict[str, Any]:
        return {"client": self.client, "server": self.server}


@dataclass
class TritonSplit:
    """Triton's view of a cell, per client request (:func:`aigi.benchmarks.metrics_scrape.split_latency`).

    ``requests`` is ``None`` when the entry model saw no request in the window (metrics off, another server):
    the split is then empty (``{}`` in JSON, plus ``requests_mismatch`` when the counts disagreed, or
    ``unavailable`` with the reason when the metrics could not be read at all).

    ``clamped`` names the components that measured below zero (set to 0) with their measured values;
    ``server_percentiles`` holds, per model, Triton's p50/p90/p99 of request, queue and compute time
    (:mod:`aigi.benchmarks.server_percentiles`) and ``percentiles_window`` what they cover. These three appear in
    JSON only when set, so a ``bench.json`` written before them reads back unchanged.
    """

    requests: float | None = None
    server_request_ms: float | None = None
    queue_ms: float | None = None
    compute_ms: float | None = None
    network_marshal_ms: float | None = None
    avg_server_batch: float | None = None
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests_mismatch: RequestsMismatch | None = None
    clamped: dict[str, float] = field(default_factory=dict)
    server_percentiles: dict[str, dict[str, dict[str, float | None]]] | None = None
    percentiles_window: dict[str, Any] | None = None
    unavailable: str | None = None

    @classmethod
    def from_split(cls, split: dict[str, Any]) -> TritonSplit:
        """From :func:`split_latency`'s dict (or a cell's ``triton`` entry in ``bench.json``)."""
        mismatch = split.get("requests_mismatch")
        known = {f.name for f in fields(cls)} - {"requests_mismatch"}
        return cls(
            **{key: value for key, value in split.items() if key in known},
            requests_mismatch=RequestsMismatch(**mismatch) if mismatch else None,
        )

    def to_dict(self) -> dict[str, Any]:
        data = _pick(self, SPLIT) if self.requests is not None else {}
        if self.clamped:
            data["clamped"] = self.clamped
        for key in ("server_percentiles", "percentiles_window", "unavailable"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.requests_mismatch is not None:
            data["requests_mismatch"] = self.requests_mismatch.to_dict()
        return data


@dataclass
class BenchCell:
    """A runtime at one batch size and concurrency: what ran, what it measured, or why it failed.

    ``timing`` is ``None`` only when the inputs could not even be prepared. ``peak_mem_mb``, ``mem_kind``,
    ``achieved_tflops`` and ``peak_fraction`` are written for ``ok`` cells only; ``error`` for failed ones.
    """

    runtime: str
    family: str
    precision: str
    path: str  # the input kind: "tensor" or "bytes"
    protocol: str | None
    shared_memory: bool
    batch: int
    concurrency: int
    status: str = ERROR
    timing: CellTiming | None = None
    error: str | None = None
    peak_mem_mb: float | None = None
    mem_kind: str | None = None  # "rss", "rss-server" or "gpu"
    achieved_tflops: float | None = None
    peak_fraction: float | None = None
    triton: TritonSplit | None = None
    speedup: float | None = None  # images/s over the baseline's at the same batch size (one stream)
    client_cpu_ms: float | None = None  # this process's CPU time per measured request (after speedup, when set)
    latencies_file: str | None = None  # every request's latency, relative to the output folder (when set)

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def images_per_s(self) -> float | None:
        return self.timing.images_per_s if self.timing is not None else None

    @property
    def measured(self) -> CellTiming:
        """The timing of a cell that ran (every ``ok`` cell has one).

        Raises:
            ValueError: the cell has no timing (its inputs could not be prepared).
        """
        if self.timing is None:
            raise ValueError(f"cell {self.key} has no timing")
        return self.timing

    @property
    def key(self) -> tuple[str, int, int]:
        """``(runtime, batch, concurrency)``."""
        return self.runtime, self.batch, self.concurrency

    def failed(self, error: str) -> BenchCell:
        """Mark the cell failed with ``error``; returns it."""
        self.status, self.error = ERROR, error
        return self

    def to_dict(self) -> dict[str, Any]:
        """The cell as ``bench.json`` holds it (the same keys in the same order as ever)."""
        data = _pick(self, IDENTITY)
        if self.timing is not None:
            data |= self.timing.to_dict()  # its "concurrency" keeps the place it already has
        data["status"] = self.status
        data |= _pick(self, RESOURCES) if self.ok else {"error": self.error}
        if self.triton is not None:
            data["triton"] = self.triton.to_dict()
        data["speedup"] = self.speedup
        for key in ("client_cpu_ms", "latencies_file"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchCell:
        """A cell from ``bench.json``; ``from_dict(d).to_dict() == d`` for every cell the harness writes."""
        simple = {f.name for f in fields(cls)} - {"timing", "triton"}
        return cls(
            **{key: value for key, value in data.items() if key in simple},
            timing=CellTiming.from_dict(data) if "images_per_s" in data else None,
            triton=TritonSplit.from_split(data["triton"]) if "triton" in data else None,
        )


def cells_from_json(items: list[dict[str, Any]]) -> list[BenchCell]:
    """The ``cells`` list of a ``bench.json``, typed."""
    return [BenchCell.from_dict(item) for item in items]
