"""Read Triton's request traces (``aigi serve --trace-file``): one request's path through the ensemble, in ms.

Triton writes a JSON list of records: one per traced request naming its model and its parent (the ensemble's
request is the parent of its steps), and one per timestamp (``REQUEST_START``, ``QUEUE_START``,
``COMPUTE_START``, ``COMPUTE_INPUT_END``, ``COMPUTE_OUTPUT_START``, ``COMPUTE_END``, ``REQUEST_END``, in ns).
:func:`read_traces` groups them into :class:`TracedRequest` trees; :func:`format_trace` prints one.

Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from aigi.errors import AigiError


@dataclass
class TracedRequest:
    """One traced request of one model, with the steps it caused.

    Attributes:
        id: Triton's trace id.
        model: the model that ran it.
        version: its version.
        parent: the id of the request that caused it (the ensemble's), or ``None``.
        stamps: timestamp name to nanoseconds.
        steps: the requests it caused, in start order.
    """

    id: int
    model: str = ""
    version: int | str = ""
    parent: int | None = None
    stamps: dict[str, int] = field(default_factory=dict)
    steps: list[TracedRequest] = field(default_factory=list)

    def span_ms(self, start: str, end: str) -> float | None:
        """Milliseconds from one timestamp to another, or ``None`` when either is missing."""
        if start not in self.stamps or end not in self.stamps:
            return None
        return (self.stamps[end] - self.stamps[start]) / 1e6

    @property
    def total_ms(self) -> float | None:
        """Request start to end."""
        return self.span_ms("REQUEST_START", "REQUEST_END")

    @property
    def queue_ms(self) -> float | None:
        """Time waiting in the model's queue."""
        return self.span_ms("QUEUE_START", "COMPUTE_START")

    @property
    def compute_ms(self) -> float | None:
        """Time in the model's execute (inputs, inference, outputs)."""
        return self.span_ms("COMPUTE_START", "COMPUTE_END")


def read_traces(path: str | Path) -> list[TracedRequest]:
    """The top-level traced requests (usually the ensemble's) in a trace file, each with its steps.

    Raises:
        AigiError: the file is missing or is not Triton's trace JSON.
    """
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise AigiError(f"{path}: not a readable Triton trace file ({exc})") from exc
    if not isinstance(records, list):
        raise AigiError(f"{path}: not a Triton trace file (expected a JSON list)")
    requests: dict[int, TracedRequest] = {}
    for record in records:
        request = requests.setdefault(int(record["id"]), TracedRequest(id=int(record["id"])))
        if "model_name" in record:
            request.model, request.version = record["model_name"], record.get("model_version", "")
            request.parent = record.get("parent_id")
        for stamp in record.get("timestamps", []):
            request.stamps[stamp["name"]] = int(stamp["ns"])
    for request in requests.values():
        if request.parent in requests:
            requests[request.parent].steps.append(request)
    for request in requests.values():
        request.steps.sort(key=lambda step: step.stamps.get("REQUEST_START", 0))
    return [request for request in requests.values() if request.parent not in requests]


def format_trace(request: TracedRequest, indent: int = 0) -> list[str]:
    """Lines showing a request and its steps: total, queue and compute time of each, in ms."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    name = f"{'  ' * indent}{request.model or '?'} v{request.version} (trace {request.id})"
    line = (
        f"{name}: total {ms(request.total_ms)} ms, queue {ms(request.queue_ms)} ms, compute {ms(request.compute_ms)} ms"
    )
    return [line, *(text for step in request.steps for text in format_trace(step, indent + 1))]
