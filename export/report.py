"""The export report: one entry per step (status, time, max abs/rel differences), as JSON and Markdown.

Written into the repository root as ``<name>_export_report.json`` and ``<name>_EXPORT.md`` (both covered by
``MANIFEST.json``), and printed step by step while the export runs, like Model Navigator's status lines.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aigi import __version__
from aigi.export.parity import MIN_AGREEMENT, OUTPUTS, ParityResult


class StepStatus(StrEnum):
    """How a step ended; the value is what the JSON, the Markdown table and (upper-cased) the terminal show."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNAVAILABLE = "unavailable"  # TensorRT or a GPU is missing: the step's artifact is to be built elsewhere


@dataclass
class StepReport:
    """What one step did."""

    step: str
    status: StepStatus
    seconds: float = 0.0
    artifact: str = ""
    message: str = ""
    parity: ParityResult | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = StepStatus(self.status)  # a plain "ok" is accepted; anything else raises ValueError

    def line(self) -> str:
        """One status line for the terminal."""
        text = f"{self.step:<10} {self.status.upper():<11} {self.seconds:6.1f}s"
        if self.parity is not None:
            text += "  " + self.parity.summary()
        if self.message:
            text += f"  {self.message}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "step": self.step,
            "status": self.status.value,
            "seconds": round(self.seconds, 3),
            "artifact": self.artifact,
            "message": self.message,
            "parity": self.parity.to_dict() if self.parity else None,
            "details": self.details,
        }


@dataclass
class ExportReport:
    """The whole export: settings, inputs used for parity, and the steps."""

    checkpoint: str
    repo: str
    name: str
    backend: str
    precision: str
    max_batch: int
    parity_inputs: dict[str, Any] = field(default_factory=dict)
    steps: list[StepReport] = field(default_factory=list)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def step(self, name: str) -> StepReport | None:
        """The report of step ``name``, or ``None``."""
        return next((s for s in self.steps if s.step == name), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "aigi_version": __version__,
            "created": self.created,
            "checkpoint": self.checkpoint,
            "repo": self.repo,
            "name": self.name,
            "backend": self.backend,
            "precision": self.precision,
            "max_batch": self.max_batch,
            "parity_inputs": self.parity_inputs,
            "steps": [step.to_dict() for step in self.steps],
        }

    def to_json(self) -> str:
        """Pretty JSON text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def _min_agreement(self) -> float:
        return next((step.parity.min_agreement for step in self.steps if step.parity), MIN_AGREEMENT)

    def to_markdown(self) -> str:
        """Human-readable report."""
        lines = [
            f"# Export report: `{self.name}` ({self.backend}, {self.precision})",
            "",
            f"- checkpoint: `{self.checkpoint}`",
            f"- repository: `{self.repo}`",
            f"- max batch: {self.max_batch}",
            f"- created: {self.created} (aigi {__version__})",
            f"- parity inputs: {self.parity_inputs.get('description', '')}",
            f"- checks: `probs` within the step's tolerance, argmax and is_fake agreement with PyTorch at least "
            f"{self._min_agreement():.0%}",
            "",
            "| step | status | time (s) | tolerance (probs) | "
            + " | ".join(f"{o} max abs / rel" for o in OUTPUTS)
            + " | argmax agree | is_fake agree | note |",
            "|---|---|---|---|" + "---|" * len(OUTPUTS) + "---|---|---|",
        ]
        for step in self.steps:
            parity = step.parity
            if parity:
                diffs = " | ".join(f"{parity.max_abs[o]:.2e} / {parity.max_rel[o]:.2e}" for o in OUTPUTS)
                cells = (
                    f"{parity.tolerance:.0e} | {diffs} | {parity.argmax_agreement:.1%} | {parity.is_fake_agreement:.1%}"
                )
            else:
                cells = " | ".join(["–"] * (3 + len(OUTPUTS)))
            note = step.message.replace("|", "\\|")
            lines.append(f"| {step.step} | {step.status} | {step.seconds:.1f} | {cells} | {note} |")
        timing = next((s.details.get("timing") for s in self.steps if s.details.get("timing")), None)
        if timing:
            lines += [
                "",
                f"## ONNX Runtime graph optimization (CPU, batch {timing['batch']}, median ms)",
                "",
                "| level | ms |",
                "|---|---|",
            ]
            lines += [f"| {level} | {ms:.2f} |" for level, ms in timing["median_ms"].items()]
            lines.append("")
            lines.append(f"Chosen: `{timing.get('chosen', timing['best'])}` (fastest measured: `{timing['best']}`).")
        return "\n".join(lines) + "\n"
