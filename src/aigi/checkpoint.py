"""The checkpoint directory contract: ``model.safetensors`` plus ``aigi.json`` (this schema).

``aigi.json`` carries everything a later stage needs without the training code's defaults: the
architecture (preset name or source, and the full vision config), labels, preprocessing spec,
decision threshold and its calibration, and a summary of the training data and metrics.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from aigi.errors import CheckpointError
from aigi.labels import validate_labels
from aigi.preprocessing import PreprocessSpec

META_FILENAME = "aigi.json"
WEIGHTS_FILENAME = "model.safetensors"
METRICS_FILENAME = "metrics.json"
FORMAT_VERSION = 1
TEMPERATURE_KEY = "temperature"
OPEN_SET_THRESHOLD_KEY = "threshold"


def _check_temperature(value: Any) -> float:
    """``value`` as a temperature: a finite number above zero.

    Raises:
        CheckpointError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"calibration temperature must be a finite number > 0, got {value!r}")
    return float(value)


def _check_open_set_threshold(value: Any) -> float | None:
    """``value`` as an open-set threshold: ``None`` (no open set) or a number in ``[0, 1]``.

    Raises:
        CheckpointError: anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise CheckpointError(f"open_set threshold must be a number in [0, 1] or null, got {value!r}")
    return float(value)


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
class TrainingSummary:
    """What ``aigi train`` records about a run: the ``training`` section of ``aigi.json``.

    The summary is informative: nothing downstream needs it to load or serve a model, so an ``aigi.json`` written by
    another version or tool still loads. :meth:`from_dict` keeps every key it does not know, and every known key whose
    value has the wrong type, verbatim in :attr:`extra`; known keys the document lacks stay at their defaults and
    :meth:`to_dict` leaves them out again, so a document round-trips unchanged. A summary built directly (as ``aigi
    train`` does) writes every field, ``None`` ones included.

    Attributes:
        data: the training data (a folder or a CSV manifest) as given to ``aigi train --data``; see :attr:`data_dir`.
        dataset: the dataset index's summary (layout, root, class names, counts per split, skipped files).
        images: decoded images per split, ``{"train": n, "val": n}``.
        skipped_files: files the dataset index skipped (any split), plus train and val images that did not decode.
        skipped: ``[path, reason]`` of the first 50 undecodable files.
        hyperparameters: the full ``TrainConfig``, with the resolved ``lr`` and ``grad_checkpointing_enabled``.
        amp: the mixed-precision dtype used (``bfloat16``, ``float16``) or ``off``.
        device: the device rank 0 trained on, e.g. ``cuda:0`` or ``cpu``.
        world_size: number of ranks.
        parameters: parameters of the detector.
        trainable_parameters: parameters the fine-tuning mode trained.
        epochs: epochs asked for.
        completed: whether all ``epochs`` ran (``False`` after ``--stop-after-epochs`` until a resume finishes).
        epochs_completed: epochs run so far.
        best_epoch: the 1-based epoch whose weights ``model.safetensors`` holds; ``None`` before the first one.
        time_s: wall time of the epochs run, in seconds.
        images_per_s: training throughput over all ranks; ``None`` before the first epoch.
        peak_gpu_memory_mb: highest GPU memory allocated in an epoch; ``None`` on CPU.
        extra: keys this version does not know (``aigi bench`` writes a ``note``) and known keys whose value has the
            wrong type, kept verbatim so they are written back.
    """

    data: str | None = None
    dataset: dict[str, Any] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)
    skipped_files: int = 0
    skipped: list[list[str]] = field(default_factory=list)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    amp: str | None = None
    device: str | None = None
    world_size: int = 1
    parameters: int | None = None
    trainable_parameters: int | None = None
    epochs: int | None = None
    completed: bool = False
    epochs_completed: int = 0
    best_epoch: int | None = None
    time_s: float | None = None
    images_per_s: float | None = None
    peak_gpu_memory_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # known keys the parsed document lacked: to_dict leaves them out while they keep their defaults (compared by ==,
    # so equal summaries write the same JSON; dataclasses.replace starts a summary that writes every field)
    _absent: frozenset[str] = field(default=frozenset(), init=False, repr=False)

    @property
    def data_dir(self) -> str | None:
        """The training data this run indexed (a folder, or a CSV manifest), or ``None`` when none is recorded.

        ``data`` (written by every ``aigi train``), else the ``data`` hyperparameter or the dataset's ``root`` (for
        hand-written summaries), with ``~`` expanded as training did. It may no longer exist, and a relative path is
        relative to where training ran.
        """
        for candidate in (self.data, self.hyperparameters.get("data"), self.dataset.get("root")):
            if isinstance(candidate, str) and candidate:
                return os.path.expanduser(candidate)
        return None

    @classmethod
    def empty(cls) -> TrainingSummary:
        """A summary that records nothing (``{}`` in ``aigi.json``), for checkpoints not written by training."""
        return cls.from_dict({})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingSummary:
        """Parse the ``training`` section of ``aigi.json``; any JSON object loads (see the class docstring).

        Raises:
            TypeError: ``data`` is not a mapping.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"the training summary must be a JSON object, got {type(data).__name__}")
        hints = _summary_hints()
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key in hints and _accepts(hints[key], value):
                known[key] = value
            else:
                extra[key] = value
        summary = cls(**known, extra=extra)
        summary._absent = frozenset(hints.keys() - known.keys())
        return summary

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the fields in order (less those absent from a parsed document), then :attr:`extra`."""
        out: dict[str, Any] = {}
        for item in _summary_fields():
            value = getattr(self, item.name)
            if item.name not in self._absent or value != _default(item):
                out[item.name] = value
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out


def _summary_fields() -> list[Field]:
    """The fields of :class:`TrainingSummary` that are keys of the ``training`` section."""
    return [item for item in fields(TrainingSummary) if item.init and item.name != "extra"]


@functools.cache
def _summary_hints() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainingSummary)
    return {item.name: hints[item.name] for item in _summary_fields()}


def _default(item: Field) -> Any:
    if item.default is not MISSING:
        return item.default
    factory = item.default_factory
    assert callable(factory), f"field {item.name} has no default"
    return factory()


def _accepts(hint: Any, value: Any) -> bool:
    """Whether a JSON value fits a field's annotation (containers by their outer type only)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):  # JSON has one number type; a bool is not a count
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


@dataclass
class CheckpointMeta:
    """The contents of ``aigi.json``.

    ``training`` is a :class:`TrainingSummary`; a plain dict given for it (at construction or assigned later) is
    parsed with :meth:`TrainingSummary.from_dict`, so code that writes summaries as dicts keeps working.

    ``calibration`` is the record ``aigi eval`` writes: how ``threshold`` was chosen and the softmax
    :attr:`temperature` (``calibration["temperature"]``; absent means 1, an uncalibrated model). The served
    ``probs`` and ``p_fake`` are ``softmax(logits / temperature)`` and ``threshold`` applies to that ``p_fake``.

    ``open_set`` is the open-set attribution record ``aigi eval`` writes for a source model
    (``{"threshold": t, "keep": 0.95, ...}``, see :mod:`aigi.training.open_set`); :attr:`open_set_threshold` is its
    ``threshold`` (absent: no open set, which is also what an ``aigi.json`` without the section means). A flagged
    fake whose known-generator confidence is below it is served as ``unknown``.
    """

    architecture: ArchitectureMeta
    task: str
    labels: list[str]
    preprocessing: PreprocessSpec
    threshold: float = 0.5
    calibration: dict[str, Any] = field(default_factory=dict)
    open_set: dict[str, Any] = field(default_factory=dict)
    training: TrainingSummary = field(default_factory=TrainingSummary.empty)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "training" and isinstance(value, Mapping):
            value = TrainingSummary.from_dict(value)
        super().__setattr__(name, value)

    def __post_init__(self) -> None:
        self.labels = validate_labels(self.labels)
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise CheckpointError(f"threshold must lie in [0, 1], got {self.threshold}")
        _check_temperature(self.calibration.get(TEMPERATURE_KEY, 1.0))
        _check_open_set_threshold(self.open_set.get(OPEN_SET_THRESHOLD_KEY))

    @property
    def temperature(self) -> float:
        """The softmax temperature ``T`` the served probabilities divide the logits by (1.0 when not calibrated)."""
        return _check_temperature(self.calibration.get(TEMPERATURE_KEY, 1.0))

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.calibration = {**self.calibration, TEMPERATURE_KEY: _check_temperature(value)}

    @property
    def open_set_threshold(self) -> float | None:
        """The open-set threshold on the known-generator confidence, or ``None`` when the model has no open set."""
        return _check_open_set_threshold(self.open_set.get(OPEN_SET_THRESHOLD_KEY))

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
            "open_set": self.open_set,
            "training": self.training.to_dict(),
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
                open_set=dict(data.get("open_set") or {}),
                training=TrainingSummary.from_dict(data.get("training", {})),
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
