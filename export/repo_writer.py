"""Write the Triton model repository of docs/CONTRACT.md from typed configs, atomically.

Models (``--name P`` replaces the ``aigi`` prefix): the ensemble ``P`` (image bytes -> ``probs``, ``p_fake``,
``label_id``),
``P_preprocess`` (Python backend), and one network model: ``P_cpu`` (Python backend running ONNX Runtime),
``P_torch`` (Python backend running the checkpoint with PyTorch, on a GPU when there is one), ``P_onnx``
(onnxruntime backend, GPU) or ``P_trt`` (TensorRT plan).

Everything is staged in a folder beside the repository and moved into place at the end; a failed export
leaves the previous repository as it was.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aigi.checkpoint import CheckpointMeta
from aigi.errors import ExportError, SettingsError
from aigi.export.onnx_export import INPUT_NAME
from aigi.export.settings import ServingSettings
from aigi.export.torch_network import TorchNetSettings
from aigi.export.triton_config import (
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_QUEUE_TIMEOUT_MS,
    DynamicBatching,
    EnsembleStep,
    InstanceGroup,
    ModelWarmup,
    QueuePolicy,
    TensorSpec,
    TritonModelConfig,
    WarmupInput,
    preferred_batch_sizes,
    render_config,
)

logger = logging.getLogger(__name__)

BACKENDS = ("cpu", "onnx", "trt", "torch")
PRECISIONS = {"cpu": ("fp32", "int8"), "onnx": ("fp32", "fp16"), "trt": ("fp16",), "torch": ("fp32", "bf16", "fp16")}
DEFAULT_PRECISION = {"cpu": "fp32", "onnx": "fp32", "trt": "fp16", "torch": "fp32"}
# the Python-backend network models: their model.py, with network_common.py (batching, metrics, labels) beside it
PYTHON_NETWORKS = ("cpu", "torch")
LABELS_FILENAME = "labels.txt"
# the served label index: 0..C-1 name labels.txt's lines, C means ``unknown`` (open-set attribution); labels.txt keeps
# the C class names only, since it names the entries of ``probs``
LABEL_OUTPUT = "label_id"
WARMUP_FOLDER = "warmup"  # Triton reads a warm-up input_data_file from this subfolder of the model folder
WARMUP_IMAGE = "image.png"
PYTHON_MODEL_SOURCES = {
    "preprocess": "preprocess.py",
    "cpu": "onnx_cpu.py",
    "torch": "torch_net.py",
    "network_common": "network_common.py",
}
# aigi_preprocess carries the few core modules it imports, and runs them rather than an installed aigi
VENDORED_CORE = ("__init__.py", "errors.py", "preprocessing.py")
# Beside every Python source in a model folder, a *file* named __pycache__: Python can then neither write nor read
# bytecode caches there (it skips them silently), so serving leaves the sealed folder as MANIFEST.json describes it
# and a planted .pyc cannot take the place of the source without replacing this sealed file. An environment
# variable cannot do this: Triton's Python backend stub runs an isolated interpreter that ignores
# PYTHONDONTWRITEBYTECODE.
PYCACHE_BLOCKER = "__pycache__"
PYCACHE_BLOCKER_TEXT = (
    "Written by aigi export: a file, not a folder, so Python neither writes nor reads bytecode caches here.\n"
    "The sources beside it are sealed in MANIFEST.json; keep this file.\n"
)


def model_names(prefix: str) -> dict[str, str]:
    """Every model name a prefix owns: ensemble, preprocess and the three network variants."""
    return {
        "ensemble": prefix,
        "preprocess": f"{prefix}_preprocess",
        **{backend: f"{prefix}_{backend}" for backend in BACKENDS},
    }


def python_model_source(kind: str) -> Path:
    """The Python-backend source for ``kind`` (a key of :data:`PYTHON_MODEL_SOURCES`) from ``aigi.triton_models``.

    Raises:
        ExportError: the source file is missing from the installed package.
    """
    filename = PYTHON_MODEL_SOURCES[kind]
    try:
        resource = importlib.resources.files("aigi.triton_models") / filename
    except ModuleNotFoundError as exc:
        raise ExportError(f"package aigi.triton_models is missing; cannot copy {filename}") from exc
    if not resource.is_file():
        raise ExportError(
            f"Python-backend source aigi.triton_models/{filename} (model_repository/python_models/{filename}) "
            "is missing; reinstall aigi"
        )
    return Path(str(resource))


@dataclass
class NetworkArtifacts:
    """Files of the network model: version-folder name -> source file (moved into the repository)."""

    files: dict[str, Path]
    onnx_file: str = "model.onnx"


@dataclass
class RepositorySpec:
    """Everything the writer needs to lay out one prefix's models."""

    prefix: str
    backend: str
    precision: str
    meta: CheckpointMeta
    max_batch: int
    network: NetworkArtifacts
    python_env: dict[str, str] | None = None
    intra_op_threads: int = 0
    cpu_parameters: dict[str, str] = field(default_factory=dict)
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    queue_timeout_ms: int = DEFAULT_QUEUE_TIMEOUT_MS
    serving: ServingSettings = field(default_factory=ServingSettings)
    device: str = "auto"  # --backend torch: where aigi_torch runs (aigi.export.torch_network)
    compile: str = "none"  # --backend torch: torch.compile mode

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ExportError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.precision not in PRECISIONS[self.backend]:
            raise ExportError(
                f"--precision {self.precision} does not apply to --backend {self.backend} "
                f"(choose from {', '.join(PRECISIONS[self.backend])})"
            )
        if self.max_batch < 1:
            raise ExportError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.max_queue_size < 0:
            raise ExportError(f"--max-queue-size must be 0 (no limit) or more, got {self.max_queue_size}")
        if self.queue_timeout_ms < 0:
            raise ExportError(f"--queue-timeout-ms must be 0 (no timeout) or more, got {self.queue_timeout_ms}")
        if not self.prefix or not self.prefix.replace("_", "").replace("-", "").isalnum():
            raise ExportError(f"--name must be letters, digits, '_' or '-', got {self.prefix!r}")
        written = {"ensemble": self.names["ensemble"], "preprocess": self.names["preprocess"]}
        self.serving.validate(self.max_batch, {**written, "network": self.network_name})
        self._check_torch()

    def _check_torch(self) -> None:
        if self.backend != "torch":
            if (self.device, self.compile) != ("auto", "none"):
                raise ExportError("--device and --compile apply to --backend torch only")
            return
        try:
            self.torch_settings()
        except SettingsError as exc:
            raise ExportError(f"--backend torch: {exc}") from exc

    def torch_settings(self) -> TorchNetSettings:
        """The ``--backend torch`` network's settings (its config parameters).

        Raises:
            SettingsError: a value outside its choices, or bf16/fp16 with ``--device cpu``.
        """
        return TorchNetSettings(self.device, self.precision, self.compile, self.intra_op_threads)

    @property
    def names(self) -> dict[str, str]:
        """Model names for this prefix."""
        return model_names(self.prefix)

    @property
    def network_name(self) -> str:
        """Name of the network model (``P_cpu``, ``P_onnx`` or ``P_trt``)."""
        return self.names[self.backend]


def _pixel_dims(meta: CheckpointMeta) -> tuple[int, int, int]:
    return (3, meta.preprocessing.size, meta.preprocessing.size)


def _batching(spec: RepositorySpec) -> DynamicBatching:
    policy: QueuePolicy | None = None
    # Both limits off writes no policy at all: with any default_queue_policy, Triton 2.51's dynamic batcher held
    # about 1 request in 10 for ~510 ms (p99 queue 500 ms at concurrency 1; benchmarks/results/
    # 2026-11-30_cpu-2core_tiny_server_side/README.md), so `--max-queue-size 0 --queue-timeout-ms 0` is the way out
    if spec.max_queue_size or spec.queue_timeout_ms:
        policy = QueuePolicy(
            timeout_action="REJECT",
            default_timeout_microseconds=spec.queue_timeout_ms * 1000,
            allow_timeout_override=True,
            max_queue_size=spec.max_queue_size,
        )
    preferred = spec.serving.preferred_batch_sizes
    preferred = preferred_batch_sizes(spec.max_batch) if preferred is None else preferred
    return DynamicBatching(spec.serving.max_queue_delay_us, preferred, policy)


def _warmup_sizes(spec: RepositorySpec) -> tuple[int, ...]:
    sizes = spec.serving.warmup_batch_sizes
    return tuple(sorted({1, spec.max_batch})) if sizes is None else sizes


def _network_warmups(spec: RepositorySpec) -> list[ModelWarmup]:
    data = {INPUT_NAME: WarmupInput("TYPE_FP32", _pixel_dims(spec.meta))}
    return [ModelWarmup(f"random_batch_{size}", size, data) for size in _warmup_sizes(spec)]


def _preprocess_warmups(spec: RepositorySpec) -> list[ModelWarmup]:
    data = {"image": WarmupInput("TYPE_STRING", (1,), random_data=False, input_data_file=WARMUP_IMAGE)}
    return [ModelWarmup(f"image_batch_{size}", size, data) for size in _warmup_sizes(spec)]


def warmup_image(size: int) -> bytes:
    """The encoded PNG the preprocessing model decodes while warming up, as Triton reads it for a TYPE_STRING
    element: a 4-byte little-endian length, then the bytes (a ``size`` x ``size`` gradient)."""
    import io
    import struct

    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 128)], -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return struct.pack("<I", buffer.tell()) + buffer.getvalue()


# What of aigi.json the ensemble's ``aigi_json`` parameter carries. Anyone who reaches the server can read a
# model's config, so it holds what a client needs to interpret the scores and nothing about the machine or the
# folders a model was trained on: an allow-list per section, then every string that looks like a local path
# (or names this host) is replaced by PATH_REMOVED.
PUBLIC_META_KEYS = (
    "format_version",
    "task",
    "labels",
    "preprocessing",
    "threshold",
    "calibration",
    "open_set",
    "metrics",
    "architecture",
    "training",
)
PUBLIC_TRAINING_KEYS = (
    "completed",
    "epochs",
    "epochs_completed",
    "best_epoch",
    "images",
    "parameters",
    "trainable_parameters",
)
PUBLIC_DATASET_KEYS = ("layout", "num_samples", "class_names", "counts")
PATH_REMOVED = "<local>"
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def _looks_local(text: str) -> bool:
    """Whether ``text`` looks like a filesystem path or names this machine."""
    host = socket.gethostname().split(".")[0]
    return (
        text.startswith(("/", "~", "./", "../", "file:"))
        or "\\" in text
        or bool(_DRIVE.match(text))
        or text.count("/") >= 2
        or (len(host) >= 3 and re.search(rf"(?<![\w-]){re.escape(host)}(?![\w-])", text, re.IGNORECASE) is not None)
    )


def _scrub(value):
    if isinstance(value, str):
        return PATH_REMOVED if _looks_local(value) else value
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in value.items() if not (isinstance(key, str) and _looks_local(key))}
    if isinstance(value, (list, tuple)):
        return [_scrub(item) for item in value]
    return value


def public_meta(meta: dict) -> dict:
    """The part of an ``aigi.json`` dict fit to serve (see ``PUBLIC_META_KEYS``).

    Kept: labels, task, threshold and calibration, preprocessing, metrics, the architecture (its ``source`` only
    when it is a preset name or a Hugging Face id, never a local folder), and a training summary without data
    folders, file lists, hyperparameters (they name folders) or devices. Every remaining string that looks like a
    local path or names this host becomes ``PATH_REMOVED``. The result still parses with
    :meth:`CheckpointMeta.from_dict`.
    """
    from aigi.training.presets import get_preset

    public = {key: meta[key] for key in PUBLIC_META_KEYS if key in meta}
    if isinstance(public.get("architecture"), dict):
        architecture = dict(public["architecture"])
        source = str(architecture.get("source", ""))
        if get_preset(source) is None and (not _HF_ID.match(source) or Path(source).exists()):
            architecture["source"] = PATH_REMOVED
        public["architecture"] = architecture
    if isinstance(public.get("training"), dict):
        training = {key: public["training"][key] for key in PUBLIC_TRAINING_KEYS if key in public["training"]}
        dataset = public["training"].get("dataset")
        if isinstance(dataset, dict):
            training["dataset"] = {key: dataset[key] for key in PUBLIC_DATASET_KEYS if key in dataset}
        public["training"] = training
    labels = public.pop("labels", None)  # validated class names, served in labels.txt anyway
    public = _scrub(public)
    if labels is not None:
        public["labels"] = labels
    return {key: public[key] for key in PUBLIC_META_KEYS if key in public}


def ensemble_config(spec: RepositorySpec) -> TritonModelConfig:
    """The ensemble ``P``: ``image`` bytes -> preprocess -> network -> ``probs``, ``p_fake``, ``label_id``."""
    meta = spec.meta
    return TritonModelConfig(
        name=spec.names["ensemble"],
        platform="ensemble",
        max_batch_size=spec.max_batch,
        inputs=[TensorSpec("image", "TYPE_STRING", (1,))],
        outputs=[
            TensorSpec("probs", "TYPE_FP32", (meta.num_labels,), label_filename=LABELS_FILENAME),
            TensorSpec("p_fake", "TYPE_FP32", (1,)),
            TensorSpec(LABEL_OUTPUT, "TYPE_INT64", (1,)),
        ],
        ensemble_steps=[
            EnsembleStep(spec.names["preprocess"], {"image": "image"}, {INPUT_NAME: INPUT_NAME}),
            EnsembleStep(
                spec.network_name,
                {INPUT_NAME: INPUT_NAME},
                {"probs": "probs", "p_fake": "p_fake", LABEL_OUTPUT: LABEL_OUTPUT},
            ),
        ],
        parameters={
            "threshold": repr(float(meta.threshold)),
            "labels": json.dumps(meta.labels),
            "network_model": spec.network_name,
            "preprocessing": json.dumps(meta.preprocessing.to_dict()),
            "aigi_json": json.dumps(public_meta(meta.to_dict()), separators=(",", ":")),
        },
        response_cache=spec.serving.response_cache,
    )


def preprocess_config(spec: RepositorySpec) -> TritonModelConfig:
    """``P_preprocess``: Python backend, ``image`` bytes -> ``pixel_values``."""
    return TritonModelConfig(
        name=spec.names["preprocess"],
        backend="python",
        max_batch_size=spec.max_batch,
        inputs=[TensorSpec("image", "TYPE_STRING", (1,))],
        outputs=[TensorSpec(INPUT_NAME, "TYPE_FP32", _pixel_dims(spec.meta))],
        dynamic_batching=_batching(spec),
        instance_groups=[InstanceGroup("KIND_CPU", spec.serving.instances["preprocess"])],
        warmups=_preprocess_warmups(spec),
        parameters={"preprocessing": json.dumps(spec.meta.preprocessing.to_dict()), **(spec.python_env or {})},
    )


def network_config(spec: RepositorySpec) -> TritonModelConfig:
    """The network model: ``pixel_values`` -> ``logits``, ``probs``, ``p_fake``, ``label_id``, per backend."""
    classes = spec.meta.num_labels
    config = TritonModelConfig(
        name=spec.network_name,
        max_batch_size=spec.max_batch,
        inputs=[TensorSpec(INPUT_NAME, "TYPE_FP32", _pixel_dims(spec.meta))],
        outputs=[
            TensorSpec("logits", "TYPE_FP32", (classes,)),
            TensorSpec("probs", "TYPE_FP32", (classes,), label_filename=LABELS_FILENAME),
            TensorSpec("p_fake", "TYPE_FP32", (1,)),
            TensorSpec(LABEL_OUTPUT, "TYPE_INT64", (1,)),
        ],
        dynamic_batching=_batching(spec),
        warmups=_network_warmups(spec),
        parameters={"precision": spec.precision},
    )
    count = spec.serving.instances["network"]
    if spec.backend == "cpu":
        config.backend = "python"
        config.instance_groups = [InstanceGroup("KIND_CPU", count)]
        config.parameters.update(
            {
                "onnx_file": spec.network.onnx_file,
                "intra_op_threads": str(spec.intra_op_threads),
                **spec.cpu_parameters,
                **(spec.python_env or {}),
            }
        )
    elif spec.backend == "torch":
        # KIND_CPU: the model picks its device itself (parameter device), so the same repository loads on a
        # machine without a GPU; a KIND_GPU override puts each instance on the GPU Triton assigns it
        config.backend = "python"
        config.instance_groups = [InstanceGroup("KIND_CPU", count)]
        config.parameters.update({**spec.torch_settings().parameters(), **(spec.python_env or {})})
    elif spec.backend == "onnx":
        config.backend = "onnxruntime"
        config.default_model_filename = "model.onnx"
        config.instance_groups = [InstanceGroup("KIND_GPU", count)]
    else:
        config.platform = "tensorrt_plan"
        config.default_model_filename = "model.plan"
        config.instance_groups = [InstanceGroup("KIND_GPU", count)]
    return config


def build_configs(spec: RepositorySpec) -> list[TritonModelConfig]:
    """The three configs of a prefix: ensemble, preprocess, network, each with the overrides aimed at it."""
    configs = [ensemble_config(spec), preprocess_config(spec), network_config(spec)]
    for role, config in zip(("ensemble", "preprocess", "network"), configs, strict=True):
        config.overrides = spec.serving.overrides_for(role, config.name)
    return configs


def _write_model(root: Path, config: TritonModelConfig, files: dict[str, Path], labels: list[str] | None) -> Path:
    directory = root / config.name
    (directory / "1").mkdir(parents=True, exist_ok=True)
    (directory / "config.pbtxt").write_text(render_config(config))
    _write_warmup_files(directory, config)
    if labels is not None:
        (directory / LABELS_FILENAME).write_text("\n".join(labels) + "\n")
    for relative, source in files.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target) if source.suffix in (".py", ".sh") else shutil.move(str(source), target)
    for folder in sorted({(directory / relative).parent for relative in files if relative.endswith(".py")}):
        (folder / PYCACHE_BLOCKER).write_text(PYCACHE_BLOCKER_TEXT)
    return directory


def _write_warmup_files(directory: Path, config: TritonModelConfig) -> None:
    """The encoded image the preprocessing model's warm-up reads (``warmup/image.png``), when its config uses it."""
    files = {data.input_data_file for warmup in config.warmups for data in warmup.inputs.values()}
    if WARMUP_IMAGE in files:
        size = max(config.outputs[0].dims[-1], 8) if config.outputs and config.outputs[0].dims else 64
        (directory / WARMUP_FOLDER).mkdir(exist_ok=True)
        (directory / WARMUP_FOLDER / WARMUP_IMAGE).write_bytes(warmup_image(size))


def stage_models(staging: str | Path, spec: RepositorySpec, version: int = 1, keep_versions: int = 2) -> list[str]:
    """Write the prefix's three model folders into ``staging`` (moving the network artifacts in), as ``version``.

    The ensemble's steps pin ``version`` of its composing models and it keeps one version; the network and
    preprocessing models keep ``keep_versions`` (see :mod:`aigi.export.versions`).

    Returns:
        The model folder names written.

    Raises:
        ExportError: a Python-backend source or an artifact is missing.
    """
    staging = Path(staging)
    for name, source in spec.network.files.items():
        if not Path(source).is_file():
            raise ExportError(f"artifact {name} was not produced ({source} missing)")
    ensemble, preprocess, network = build_configs(spec)
    for step in ensemble.ensemble_steps:
        step.model_version = version
    _write_model(staging, ensemble, {}, spec.meta.labels)
    core = Path(str(importlib.resources.files("aigi")))
    preprocess_files = {"1/model.py": python_model_source("preprocess")}
    preprocess_files.update({f"1/aigi/{name}": core / name for name in VENDORED_CORE})
    _write_model(staging, preprocess, preprocess_files, None)
    network_files = {f"1/{name}": Path(source) for name, source in spec.network.files.items()}
    if spec.backend in PYTHON_NETWORKS:
        network_files["1/model.py"] = python_model_source(spec.backend)
        network_files["1/network_common.py"] = python_model_source("network_common")
    _write_model(staging, network, network_files, spec.meta.labels)
    _number_version(staging, {ensemble.name: 1, preprocess.name: keep_versions, network.name: keep_versions}, version)
    return [ensemble.name, preprocess.name, network.name]


def _number_version(staging: Path, keep: dict[str, int], version: int) -> None:
    """Rename each staged model's version folder ``1`` to ``version``, append its version policy and seal its
    model-level files into that folder."""
    from aigi.export.versions import seal_model_files, version_policy_text

    for name, count in keep.items():
        directory = staging / name
        if version != 1:
            os.replace(directory / "1", directory / str(version))
        with open(directory / "config.pbtxt", "a") as handle:
            handle.write(version_policy_text(count))
        seal_model_files(directory, version)


@contextmanager
def staging_area(repo: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``repo`` (same filesystem, so moves are renames), removed on exit."""
    repo = Path(repo).absolute()
    repo.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repo.name}.export-", dir=repo.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def install_version(
    staged: str | Path, repo: str | Path, owned: list[str], top_level: list[str], version: int
) -> list[str]:
    """Add the staged ``version`` of each owned model beside the versions already in ``repo``.

    A model new to ``repo`` moves in whole; an existing one gets the new version folder (never replacing one)
    and the new model-level files. When an owned folder is not staged (``--backend`` changed the network model),
    the export is a new lineage: every owned folder is replaced as by :func:`install`, keeping the numbering.
    Everything is checked before anything moves, and each move is a rename undone if a later one fails.

    Raises:
        ExportError: the version folder exists already, or the new model is incompatible with the kept versions.
    """
    from aigi.export.versions import incompatibility

    staged, repo = Path(staged), Path(repo)
    if any((repo / name).is_dir() and not (staged / name).exists() for name in owned):
        # another network model (the backend changed): a new lineage replaces the prefix's models; its version
        # number still follows the old ones, so no number ever names two different models
        return install(staged, repo, owned, top_level)
    for name in owned:
        current, new = repo / name, staged / name
        if current.is_dir() and new.is_dir():
            if (current / str(version)).exists():
                raise ExportError(f"{name}/{version} exists already; a served version is never rewritten")
            why = incompatibility(current, new)
            if why:
                raise ExportError(
                    f"cannot add version {version} to {name}: {why} from the versions it holds; export under "
                    "another --name or into a new repository"
                )
    merged = [name for name in owned if (repo / name).is_dir() and (staged / name).is_dir()]
    backup = Path(tempfile.mkdtemp(prefix=".versions-", dir=staged.parent))
    moved: list[tuple[Path, Path]] = []  # (from, to), to undo in reverse
    try:
        for name in merged:  # a new folder beside the kept versions, then the new model-level files
            moves = [(staged / name / str(version), repo / name / str(version))]
            moves += [(entry, repo / name / entry.name) for entry in (staged / name).iterdir() if entry.is_file()]
            for source, target in moves:
                if target.is_file():
                    (backup / name).mkdir(exist_ok=True)
                    os.replace(target, backup / name / target.name)
                    moved.append((target, backup / name / target.name))
                os.replace(source, target)
                moved.append((source, target))
        return install(staged, repo, [name for name in owned if name not in merged], top_level)
    except (OSError, ExportError) as exc:
        for source, target in reversed(moved):
            os.replace(target, source)
        if isinstance(exc, ExportError):
            raise
        raise ExportError(f"could not add version {version} to {repo}: {exc}; the repository is unchanged") from exc
    finally:
        shutil.rmtree(backup, ignore_errors=True)


def install(staged: str | Path, repo: str | Path, owned: list[str], top_level: list[str]) -> list[str]:
    """Move staged model folders and top-level files into ``repo``, replacing what the prefix owned before.

    Folders named in ``owned`` but not staged (say ``aigi_cpu`` after switching to ``--backend onnx``) are
    removed, so the repository holds one network per prefix. Each replacement is a rename; if one fails, the
    ones already done are rolled back.

    Returns:
        The names of folders removed because this export no longer writes them.
    """
    staged, repo = Path(staged), Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    backup = staged.parent / (staged.name + ".previous")
    backup.mkdir()
    moved: list[tuple[Path, Path]] = []  # (from, to), to undo in reverse
    removed: list[str] = []
    try:
        for name in [*owned, *top_level]:
            current, new = repo / name, staged / name
            if current.exists():
                os.replace(current, backup / name)
                moved.append((current, backup / name))
                if not new.exists():
                    removed.append(name)
            if new.exists():
                os.replace(new, current)
                moved.append((new, current))
    except OSError as exc:
        for source, target in reversed(moved):
            os.replace(target, source)
        raise ExportError(f"could not move the export into {repo}: {exc}; the repository is unchanged") from exc
    finally:
        shutil.rmtree(backup, ignore_errors=True)
    return removed
