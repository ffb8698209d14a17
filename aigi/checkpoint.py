"""The checkpoint directory contract: ``model.safetensors`` plus ``aigi.json`` (this schema).

``aigi.json`` carries everything a later stage needs without the training code's defaults: the
architecture (preset name or source, and the full vision config), labels, preprocessing spec,
decision threshold and its calibration, and a summary of the training data and metrics.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aigi.errors import CheckpointError
from aigi.labels import validate_labels
from aigi.preprocessing import PreprocessSpec

META_FILENAME = "aigi.json"
WEIGHTS_FILENAME = "model.safetensors"
METRICS_FILENAME = "metrics.json"
FORMAT_VERSION = 1


@dataclass
class ArchitectureMeta:
    """How to rebuild the network offline.

    Attributes:
        source: a preset name, Hugging Face id or local directory the run started from.
        vision_config: the full ``CLIPVisionConfig`` as a dict, so no download is needed to rebuild.
        residual_stem: whether the high-pass residual input branch is present.
        residual_scale: the scale applied to the high-pass residual.
        pooling: ``cls`` (CLIP's pooled class token) or ``mean`` (post-LayerNorm mean of the patch tokens).
    """

    source: str
    vision_config: dict[str, Any]
    residual_stem: bool = False
    residual_scale: float = 4.0
    pooling: str = "cls"


@dataclass
class CheckpointMeta:
    """The contents of ``aigi.json``."""

    architecture: ArchitectureMeta
    task: str
    labels: list[str]
    preprocessing: PreprocessSpec
    threshold: float = 0.5
    calibration: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.labels = validate_labels(self.labels)
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise CheckpointError(f"threshold must lie in [0, 1], got {self.threshold}")

    @property
    def num_labels(self) -> int:
        """Number of output classes."""
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "format_version": self.format_version,
            "architecture": asdict(self.architecture),
            "task": self.task,
            "labels": list(self.labels),
            "preprocessing": self.preprocessing.to_dict(),
            "threshold": float(self.threshold),
            "calibration": self.calibration,
            "training": self.training,
            "metrics": self.metrics,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointMeta:
        """Parse and validate; raises :class:`CheckpointError` on a malformed document."""
        try:
            version = int(data.get("format_version", FORMAT_VERSION))
            if version > FORMAT_VERSION:
                raise CheckpointError(f"aigi.json format {version} is newer than this aigi ({FORMAT_VERSION})")
            return cls(
                architecture=ArchitectureMeta(**data["architecture"]),
                task=data["task"],
                labels=list(data["labels"]),
                preprocessing=PreprocessSpec.from_dict(data["preprocessing"]),
                threshold=float(data.get("threshold", 0.5)),
                calibration=dict(data.get("calibration", {})),
                training=dict(data.get("training", {})),
                metrics=dict(data.get("metrics", {})),
                format_version=version,
            )
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"malformed aigi.json: {exc.__class__.__name__}: {exc}") from exc

    def to_json(self) -> str:
        """Pretty JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CheckpointMeta:
        """Parse JSON text (see :meth:`from_dict`)."""
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"aigi.json is not valid JSON: {exc}") from exc


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON through a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = payload if isinstance(payload, str) else json.dumps(payload, indent=2) + "\n"
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
        tmp_name = handle.name
    os.replace(tmp_name, path)


def save_meta(run_dir: str | Path, meta: CheckpointMeta) -> Path:
    """Write ``aigi.json`` into ``run_dir`` atomically and return its path."""
    path = Path(run_dir) / META_FILENAME
    write_json_atomic(path, meta.to_json())
    return path


def load_meta(run_dir: str | Path) -> CheckpointMeta:
    """Read ``aigi.json`` from a run directory.

    Raises:
        CheckpointError: the directory or file is missing or malformed.
    """
    path = Path(run_dir) / META_FILENAME
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no {META_FILENAME}; is this a run directory from 'aigi train'?")
    return CheckpointMeta.from_json(path.read_text())
