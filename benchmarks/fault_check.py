"""The rules of the load check: which faults it injects, the reference answers, and what counts as lost or wrong.

:mod:`aigi.benchmarks.load_check` drives the threads and writes the report; this module decides:

* **Faults** (:func:`inject`): ``sigterm`` is a graceful :meth:`TritonServer.stop` (Triton drains for up to its
  exit timeout; with replicas this is a *roll*), ``sigkill`` is :meth:`TritonServer.kill` (a crash: no drain,
  in-flight requests die with it). Either is followed by :meth:`TritonServer.restart` on the same ports; the
  fault's ``down_s`` runs from the signal until the restarted server is ready again. A plan's faults go to the
  replicas in turn (:func:`fault_targets`): with several replicas, no replica is hit twice in a row.
* **Reference** (:func:`build_reference`): before any fault, every valid payload is classified by the healthy
  server twice (once in one batched call, once alone); the batched answer is the reference and the largest
  difference between the two passes is kept as ``spread``, the measured batch-composition noise.
* **Accounting** (:class:`Tally`): every image of every call must come back. A valid image must get a verdict
  with the reference's label and ``|p_fake - reference| <= tolerance``; one that differs is *wrong*. An invalid
  payload must get an error result that says ``invalid image``. Everything else is *lost*: a call that raised
  (all its images), an image missing from the results, a valid image with an error, an invalid one with a
  verdict or another error, and images of a worker that never finished its call.

The tolerance comes from the served network's precision (its config's ``precision`` parameter), see
:data:`TOLERANCES`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aigi.client.detector import Detector
from aigi.client.result import Result
from aigi.errors import ServerError
from aigi.server import TritonServer

FAULTS = ("sigterm", "sigkill")
# --fault -> (kind, fraction of --duration at which it is injected)
FAULT_PLANS: dict[str, list[tuple[str, float]]] = {
    "sigterm": [("sigterm", 0.5)],
    "sigkill": [("sigkill", 0.5)],
    "both": [("sigterm", 1 / 3), ("sigkill", 2 / 3)],
}
INVALID_MARK = "invalid image"
EXAMPLES_KEPT = 8

# |p_fake - reference| allowed per served precision, and why (measured on the tests' tiny exported model,
# 24 images answered alone, in one batch and in 5 shuffled batches; see FAULT_CHECK.md's "Reference" line)
TOLERANCES: dict[str, tuple[float, str]] = {
    "fp32": (
        1e-4,
        "FP32 network: answers do not depend on batch composition (max |dp_fake| 1.2e-7 measured across batch "
        "compositions); 1e-4 is the export's FP32 parity tolerance and still tells images apart",
    ),
    "int8": (
        1e-2,
        "INT8 dynamic quantization scales activations per batch, so an image's answer depends on its batch "
        "companions (max |dp_fake| 1.8e-3 measured on the tiny model); 1e-2 leaves 5x headroom",
    ),
    "fp16": (
        5e-3,
        "FP16 on GPU: kernels differ by batch size; not measured on this CPU-only machine, the run's own "
        "'spread' figure checks it",
    ),
}


def tolerance_for(precision: str) -> tuple[float, str]:
    """The ``p_fake`` tolerance for a served precision; an unknown precision gets the strict FP32 one."""
    if precision in TOLERANCES:
        return TOLERANCES[precision]
    value, _ = TOLERANCES["fp32"]
    return value, f"precision {precision!r} unknown: the strict FP32 tolerance applies"


# -- faults ----------------------------------------------------------------------------------------


def fault_targets(fault: str, replicas: int) -> list[tuple[str, float, int]]:
    """The faults of plan ``fault`` as ``(kind, fraction of the run, replica index)``: the i-th goes to replica
    ``i % replicas``, so with several replicas each fault hits another one (one server takes them all).

    Raises:
        ValueError: an unknown plan, or fewer than one replica.
    """
    if fault not in FAULT_PLANS:
        raise ValueError(f"fault must be one of {tuple(FAULT_PLANS)}, got {fault!r}")
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    return [(kind, fraction, index % replicas) for index, (kind, fraction) in enumerate(FAULT_PLANS[fault])]


def inject(server: TritonServer, kind: str, started: float) -> dict[str, Any]:
    """Inject one fault, restart the server on the same ports and say when and for how long it was down.

    Returns:
        ``kind``, ``at_s`` (since ``started``), ``exit_code``, ``stop_s`` (signal until the process was gone),
        ``down_s`` (signal until ready again), and the monotonic ``begin_at`` and ``back_at`` (ready again).

    Raises:
        ServerError: the server did not come back.
    """
    if kind not in FAULTS:
        raise ValueError(f"fault must be one of {FAULTS}, got {kind!r}")
    begin = time.monotonic()
    exit_code = server.stop() if kind == "sigterm" else server.kill()
    gone = time.monotonic()
    server.restart()
    back = time.monotonic()
    return {
        "kind": kind,
        "at_s": round(begin - started, 3),
        "exit_code": exit_code,
        "stop_s": round(gone - begin, 3),
        "down_s": round(back - begin, 3),
        "begin_at": begin,
        "back_at": back,
    }


# -- reference -------------------------------------------------------------------------------------


@dataclass
class Reference:
    """What the healthy server answered for every valid payload, and the tolerance answers are held to."""

    labels: list[str]
    p_fake: list[float]
    margins: list[float]  # top-1 minus top-2 score: a label may only flip when this is within 2 * tolerance
    precision: str
    tolerance: float
    tolerance_why: str
    spread: float  # max |p_fake(alone) - p_fake(batched)| over the valid payloads

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (not the per-image answers)."""
        return {
            "valid_payloads": len(self.labels),
            "precision": self.precision,
            "tolerance_p_fake": self.tolerance,
            "tolerance_why": self.tolerance_why,
            "spread_p_fake": self.spread,
        }


def served_precision(server: TritonServer, network_model: str) -> str:
    """The ``precision`` parameter of the served network model's config (``unknown`` when it has none)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.endpoints["http"])
    try:
        config = client.get_model_config(network_model)
    finally:
        client.close()
    return str((config.get("parameters") or {}).get("precision", {}).get("string_value") or "unknown")


def build_reference(server: TritonServer, protocol: str, valid: list[bytes], invalid: list[bytes]) -> Reference:
    """Classify every valid payload on the healthy server (batched, then alone) and check the invalid ones fail.

    Raises:
        ServerError: the healthy server refused a valid payload or accepted an invalid one (the check's own
            inputs are wrong, so nothing it measured would mean anything).
    """
    with Detector(server.endpoints[protocol], protocol=protocol) as detector:
        batched = detector.detect(valid)
        alone = [detector.detect([image])[0] for image in valid]
        refused = detector.detect(invalid)
        network = detector.info.network_model or detector.info.name
    for index, result in enumerate(batched + alone):
        if not result.ok:
            raise ServerError(f"reference pass: valid payload {index % len(valid)} got an error: {result.error}")
    for index, result in enumerate(refused):
        if result.ok or INVALID_MARK not in (result.error or ""):
            raise ServerError(f"reference pass: invalid payload {index} was not refused as invalid: {result}")
    precision = served_precision(server, network)
    tolerance, why = tolerance_for(precision)
    return Reference(
        labels=[str(result.label) for result in batched],
        p_fake=[float(result.p_fake or 0.0) for result in batched],
        margins=[_margin(result) for result in batched],
        precision=precision,
        tolerance=tolerance,
        tolerance_why=why,
        spread=max(abs(float(a.p_fake or 0.0) - float(b.p_fake or 0.0)) for a, b in zip(alone, batched, strict=True)),
    )


def _margin(result: Result) -> float:
    scores = sorted(result.scores.values(), reverse=True)
    return scores[0] - scores[1] if len(scores) > 1 else 1.0


# -- accounting ------------------------------------------------------------------------------------

LOST_REASONS = ("raised", "missing", "valid_refused", "invalid_answered", "invalid_other_error")


@dataclass
class Tally:
    """Per-image outcomes of one worker's calls (merged across workers for the report).

    ``sent`` is counted before each call, so images of a call that never returned stay unaccounted (lost).
    """

    calls: int = 0
    sent: int = 0
    valid_sent: int = 0
    invalid_sent: int = 0
    answered: int = 0
    refused: int = 0
    wrong: int = 0
    lost: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LOST_REASONS, 0))
    raised_by_type: dict[str, int] = field(default_factory=dict)
    max_dp_fake: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    answer_times: list[float] = field(default_factory=list)
    # (when a call ended, images answered, refused as invalid, lost, wrong by it): the report's timeline
    events: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def begin(self, picks: list[tuple[bool, int]]) -> None:
        """Count a call's images as sent; ``picks`` are ``(is_valid, payload index)``."""
        self.calls += 1
        self.sent += len(picks)
        self.valid_sent += sum(valid for valid, _ in picks)
        self.invalid_sent += sum(not valid for valid, _ in picks)

    def raised(self, picks: list[tuple[bool, int]], exc: BaseException) -> None:
        """A call that raised: every one of its images is lost."""
        name = type(exc).__name__
        self.raised_by_type[name] = self.raised_by_type.get(name, 0) + 1
        self._lose("raised", len(picks), f"{name}: {exc}")
        self.events.append((time.monotonic(), 0, 0, len(picks), 0))

    def returned(self, picks: list[tuple[bool, int]], results: list[Result], reference: Reference) -> None:
        """Judge each image of a call that returned against the reference."""
        before = self._outcomes()
        for (valid, index), result in zip(picks, results, strict=False):
            if valid:
                self._judge_valid(index, result, reference)
            elif result.ok:
                self._lose("invalid_answered", 1, f"invalid payload {index} got a verdict: {result.label}")
            elif INVALID_MARK in (result.error or ""):
                self.refused += 1
            else:
                self._lose("invalid_other_error", 1, f"invalid payload {index}: {result.error}")
        if len(results) != len(picks):
            self._lose("missing", max(0, len(picks) - len(results)), f"{len(picks)} sent, {len(results)} results")
        now = time.monotonic()
        if any(result.ok for result in results):
            self.answer_times.append(now)
        after = self._outcomes()
        answered, refused, lost, wrong = (later - earlier for later, earlier in zip(after, before, strict=True))
        self.events.append((now, answered, refused, lost, wrong))

    def _outcomes(self) -> tuple[int, int, int, int]:
        return self.answered, self.refused, sum(self.lost.values()), self.wrong

    def _judge_valid(self, index: int, result: Result, reference: Reference) -> None:
        if not result.ok:
            self._lose("valid_refused", 1, f"valid payload {index}: {result.error}")
            return
        delta = abs(result.p_fake - reference.p_fake[index]) if result.p_fake is not None else float("inf")
        self.max_dp_fake = max(self.max_dp_fake, delta)
        flip_allowed = reference.margins[index] <= 2 * reference.tolerance
        if delta <= reference.tolerance and (result.label == reference.labels[index] or flip_allowed):
            self.answered += 1
            return
        self.wrong += 1
        self._example(
            f"wrong answer for valid payload {index}: {result.label} p_fake={result.p_fake} "
            f"(reference {reference.labels[index]} p_fake={reference.p_fake[index]}, |dp|={delta:.3g})"
        )

    def _lose(self, reason: str, count: int, example: str) -> None:
        self.lost[reason] += count
        self._example(f"lost {count} ({reason}): {example}")

    def _example(self, text: str) -> None:
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(text[:300])

    def merge(self, other: Tally) -> None:
        """Add another worker's counts to this one."""
        for name in ("calls", "sent", "valid_sent", "invalid_sent", "answered", "refused", "wrong"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, value in other.lost.items():
            self.lost[key] = self.lost.get(key, 0) + value
        for key, value in other.raised_by_type.items():
            self.raised_by_type[key] = self.raised_by_type.get(key, 0) + value
        self.max_dp_fake = max(self.max_dp_fake, other.max_dp_fake)
        self.latencies_s.extend(other.latencies_s)
        self.answer_times.extend(other.answer_times)
        self.events.extend(other.events)
        self.examples.extend(other.examples[: max(0, EXAMPLES_KEPT - len(self.examples))])

    def first_answer_after(self, moment: float, before: float = float("inf")) -> float | None:
        """When this worker's first call with a verdict returned after ``moment`` (and before ``before``), if any.

        Safe to call from another thread while the worker appends (``answer_times`` only grows, in time order).
        """
        found = None
        for index in range(len(self.answer_times) - 1, -1, -1):
            answered_at = self.answer_times[index]
            if answered_at <= moment:
                break
            if answered_at < before:
                found = answered_at
        return found

    @property
    def unaccounted(self) -> int:
        """Images sent that no outcome covers (a worker stuck in, or crashed during, a call)."""
        return self.sent - self.answered - self.refused - self.wrong - sum(self.lost.values())

    @property
    def lost_total(self) -> int:
        """Every image that did not come back as it should, wrong answers excepted."""
        return sum(self.lost.values()) + self.unaccounted
