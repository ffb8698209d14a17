"""``aigi repo check``: validate a Triton model repository without starting a server.

Each model folder's ``config.pbtxt`` is parsed into Triton's ``ModelConfig`` protobuf; tensor names, types and
shapes are compared with the ONNX graphs (dynamic batch axis included); ensemble steps must reference existing
models and map tensors that exist with matching types and shapes; labels files must match the output size;
version folders and artifacts must exist; every file must match ``MANIFEST.json``.
Each problem is one line naming the file it is about.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigi.errors import RepositoryError
from aigi.export.torch_network import RUNTIME as TORCH_RUNTIME
from aigi.export.triton_config import TensorSpec, TritonModelConfig, config_from_proto, parse_config
from aigi.manifest import CONFIG_FILENAME, verify_manifest

logger = logging.getLogger(__name__)

# ONNX TensorProto element types -> Triton data types
ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}
DEFAULT_FILENAMES = {"onnxruntime": "model.onnx", "tensorrt_plan": "model.plan", "python": "model.py"}


@dataclass
class CheckReport:
    """The outcome of a repository check."""

    repo: str
    models: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files_verified: int = 0

    @property
    def ok(self) -> bool:
        """No problems found."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "repo": self.repo,
            "ok": self.ok,
            "models": self.models,
            "problems": self.problems,
            "notes": self.notes,
            "files_verified": self.files_verified,
        }

    def summary(self) -> str:
        """The closing line."""
        if self.ok:
            return (
                f"OK: {len(self.models)} models ({', '.join(self.models)}), "
                f"{self.files_verified} files match MANIFEST.json"
            )
        return f"FAILED: {len(self.problems)} problem(s) in {self.repo}"


def _platform(config: TritonModelConfig) -> str:
    return config.platform or config.backend


def _version_dirs(directory: Path) -> list[Path]:
    return sorted((p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def _onnx_tensors(path: Path) -> tuple[dict[str, tuple[str, tuple]], dict[str, tuple[str, tuple]]]:
    """Graph inputs and outputs as ``name -> (triton type, dims with None for symbolic)``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}

    def describe(values) -> dict[str, tuple[str, tuple]]:
        out = {}
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
            out[value.name] = (ONNX_TO_TRITON.get(tensor.elem_type, f"onnx type {tensor.elem_type}"), dims)
        return out

    return describe(model.graph.input), describe(model.graph.output)


def _check_against_onnx(where: str, config: TritonModelConfig, onnx_path: Path, problems: list[str]) -> None:
    try:
        graph_inputs, graph_outputs = _onnx_tensors(onnx_path)
    except Exception as exc:  # noqa: BLE001 - any unreadable graph is one problem line
        problems.append(f"{where}: cannot read {onnx_path.name}: {exc.__class__.__name__}: {exc}")
        return
    batched = config.max_batch_size > 0
    for kind, specs, graph in (("input", config.inputs, graph_inputs), ("output", config.outputs, graph_outputs)):
        for spec in specs:
            if spec.name not in graph:
                problems.append(
                    f"{where}: {kind} '{spec.name}' is not among the {kind}s of {onnx_path.name} {sorted(graph)}"
                )
                continue
            data_type, dims = graph[spec.name]
            if data_type != spec.data_type:
                problems.append(
                    f"{where}: {kind} '{spec.name}' is {spec.data_type} but {onnx_path.name} has {data_type}"
                )
            if batched:
                if not dims or dims[0] is not None:
                    problems.append(
                        f"{where}: {kind} '{spec.name}' in {onnx_path.name} has no dynamic batch axis "
                        f"(dims {dims}) but max_batch_size is {config.max_batch_size}"
                    )
                dims = dims[1:]
            if len(dims) != len(spec.dims) or any(
                g is not None and g != c for g, c in zip(dims, spec.dims, strict=False)
            ):
                problems.append(
                    f"{where}: {kind} '{spec.name}' has dims {list(spec.dims)} but {onnx_path.name} has "
                    f"{['?' if d is None else d for d in dims]}"
                )
        missing = sorted(set(graph) - {spec.name for spec in specs})
        if kind == "input" and missing:
            problems.append(f"{where}: {onnx_path.name} input(s) {missing} are not in the config")


def _check_labels(directory: Path, config: TritonModelConfig, problems: list[str]) -> None:
    for spec in config.outputs:
        if not spec.label_filename:
            continue
        where = f"{directory.name}/{spec.label_filename}"
        path = directory / spec.label_filename
        if not path.is_file():
            problems.append(f"{where}: missing (label_filename of output '{spec.name}')")
            continue
        labels = [line for line in path.read_text().splitlines() if line.strip()]
        size = 1
        for dim in spec.dims:
            size *= dim
        if len(labels) != size:
            problems.append(f"{where}: {len(labels)} labels but output '{spec.name}' has {size} values")


def _check_warmups(directory: Path, config: TritonModelConfig, problems: list[str]) -> None:
    where = f"{directory.name}/{CONFIG_FILENAME}"
    for warmup in config.warmups:
        if not 1 <= warmup.batch_size <= max(config.max_batch_size, 1):
            problems.append(
                f"{where}: warm-up '{warmup.name}' has batch_size {warmup.batch_size}, outside 1..max_batch_size "
                f"({config.max_batch_size})"
            )
        for key, data in warmup.inputs.items():
            spec = config.input(key)
            if spec is None:
                problems.append(f"{where}: warm-up '{warmup.name}' feeds '{key}', which is not an input")
            elif (spec.data_type, spec.dims) != (data.data_type, data.dims):
                problems.append(
                    f"{where}: warm-up '{warmup.name}' input '{key}' is {data.data_type}{list(data.dims)} but the "
                    f"input is {spec.data_type}{list(spec.dims)}"
                )
            if data.input_data_file and not (directory / "warmup" / data.input_data_file).is_file():
                problems.append(f"{directory.name}/warmup/{data.input_data_file}: missing (warm-up '{warmup.name}')")


# The ensemble's tensors are the contract clients rely on (docs/CONTRACT.md): name -> (type, dims or None: any).
CONTRACT_INPUTS: dict[str, tuple[str, tuple[int, ...] | None]] = {"image": ("TYPE_STRING", (1,))}
CONTRACT_OUTPUTS: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "probs": ("TYPE_FP32", None),
    "p_fake": ("TYPE_FP32", (1,)),
    "label_id": ("TYPE_INT64", (1,)),
}
# outputs a repository exported before they existed lacks; clients fall back without them (label_id: the argmax)
OPTIONAL_OUTPUTS = frozenset({"label_id"})


def _check_contract(name: str, config: TritonModelConfig, problems: list[str]) -> None:
    """The ensemble's inputs and outputs are exactly those of docs/CONTRACT.md (an override may not change them)."""
    where = f"{name}/{CONFIG_FILENAME}: breaks docs/CONTRACT.md:"
    for kind, specs, contract in (
        ("input", config.inputs, CONTRACT_INPUTS),
        ("output", config.outputs, CONTRACT_OUTPUTS),
    ):
        names = [spec.name for spec in specs]
        optional = OPTIONAL_OUTPUTS - set(names) if kind == "output" else frozenset()
        if sorted(names) != sorted(set(contract) - optional):
            problems.append(f"{where} ensemble {kind}s are {names}, the contract's are {list(contract)}")
        for spec in specs:
            data_type, dims = contract.get(spec.name, (spec.data_type, tuple(spec.dims)))
            if spec.data_type != data_type or (dims is not None and tuple(spec.dims) != dims):
                problems.append(
                    f"{where} ensemble {kind} '{spec.name}' is {spec.data_type}{list(spec.dims)}, the contract's is "
                    f"{data_type}{list(dims) if dims is not None else ''}"
                )


def _check_model(
    directory: Path, config: TritonModelConfig, problems: list[str], notes: list[str], pending: Collection[str] = ()
) -> None:
    name = directory.name
    where = f"{name}/{CONFIG_FILENAME}"
    if config.name and config.name != name:
        problems.append(f"{where}: name '{config.name}' differs from its folder '{name}'")
    versions = _version_dirs(directory)
    if not versions:
        problems.append(f"{name}: no version folder (expected {name}/1/)")
        return
    platform = _platform(config)
    if platform not in ("ensemble", "python", "onnxruntime", "tensorrt_plan"):
        notes.append(f"{where}: platform/backend '{platform}' is not one aigi writes; artifacts not checked")
    _check_labels(directory, config, problems)
    _check_warmups(directory, config, problems)
    for version in versions:
        vwhere = f"{name}/{version.name}"
        if platform == "ensemble":
            continue
        filename = config.default_model_filename or DEFAULT_FILENAMES.get(platform, "")
        if filename and not (version / filename).is_file():
            missing = f"{vwhere}/{filename}"
            if missing in pending:
                notes.append(f"{missing}: not built yet ({platform} artifact)")
            else:
                problems.append(f"{missing}: missing ({platform} artifact)")
        if platform == "onnxruntime" and (version / filename).is_file():
            _check_against_onnx(vwhere + "/" + filename, config, version / filename, problems)
        if platform == "python" and "onnx_file" in config.parameters:
            onnx_path = version / config.parameters["onnx_file"]
            if not onnx_path.is_file():
                problems.append(f"{vwhere}/{onnx_path.name}: missing (parameter onnx_file)")
            else:
                _check_against_onnx(f"{vwhere}/{onnx_path.name}", config, onnx_path, problems)
        if platform == "python" and config.parameters.get("runtime") == TORCH_RUNTIME:
            _check_torch_network(vwhere, config, version, problems)
        if platform == "tensorrt_plan":
            fp16 = version / "model.fp16.onnx"
            if fp16.is_file():  # the engine's own tensors need TensorRT to read; its source graph does not
                _check_against_onnx(f"{vwhere}/{fp16.name}", config, fp16, problems)
    if platform == "ensemble":
        _check_ensemble_parameters(directory, config, problems)


def _check_torch_network(where: str, config: TritonModelConfig, version: Path, problems: list[str]) -> None:
    """A ``--backend torch`` network: its settings, and a run directory whose labels match ``probs``."""
    from aigi.checkpoint import META_FILENAME, WEIGHTS_FILENAME, load_meta
    from aigi.errors import CheckpointError, SettingsError
    from aigi.export.torch_network import TorchNetSettings

    try:
        TorchNetSettings.from_parameters(config.parameters)
    except SettingsError as exc:
        problems.append(f"{where}: {exc}")
    for filename in (WEIGHTS_FILENAME, META_FILENAME):
        if not (version / filename).is_file():
            problems.append(f"{where}/{filename}: missing (the torch network's run directory)")
    if not (version / META_FILENAME).is_file():
        return
    try:
        classes = load_meta(version).num_labels
    except CheckpointError as exc:
        problems.append(f"{where}/{META_FILENAME}: {exc}")
        return
    probs = config.output("probs")
    if probs is not None and tuple(probs.dims) != (classes,):
        problems.append(f"{where}: output 'probs' has dims {list(probs.dims)} but {META_FILENAME} has {classes} labels")


def _check_ensemble_parameters(directory: Path, config: TritonModelConfig, problems: list[str]) -> None:
    where = f"{directory.name}/{CONFIG_FILENAME}"
    threshold = config.parameters.get("threshold")
    if threshold is not None:
        try:
            if not 0.0 <= float(threshold) <= 1.0:
                problems.append(f"{where}: parameter threshold {threshold} is outside [0, 1]")
        except ValueError:
            problems.append(f"{where}: parameter threshold {threshold!r} is not a number")
    labels_text = config.parameters.get("labels")
    labels_file = directory / "labels.txt"
    if labels_text is not None and labels_file.is_file():
        try:
            labels = json.loads(labels_text)
        except json.JSONDecodeError:
            problems.append(f"{where}: parameter labels is not JSON")
        else:
            on_disk = [line for line in labels_file.read_text().splitlines() if line.strip()]
            if labels != on_disk:
                problems.append(f"{where}: parameter labels {labels} differs from labels.txt {on_disk}")


def _same_tensor(a: TensorSpec, b: TensorSpec) -> bool:
    return a.data_type == b.data_type and tuple(a.dims) == tuple(b.dims)


def _check_ensemble(name: str, config: TritonModelConfig, configs: dict[str, TritonModelConfig], problems: list[str]):
    where = f"{name}/{CONFIG_FILENAME}"
    if not config.ensemble_steps:
        problems.append(f"{where}: ensemble has no steps")
        return
    available: dict[str, TensorSpec] = {spec.name: spec for spec in config.inputs}
    produced: set[str] = set()
    for index, step in enumerate(config.ensemble_steps, start=1):
        swhere = f"{where}: step {index} ({step.model_name})"
        target = configs.get(step.model_name)
        if target is None:
            problems.append(f"{swhere}: model '{step.model_name}' is not in the repository")
            continue
        if target.max_batch_size < config.max_batch_size:
            problems.append(
                f"{swhere}: max_batch_size {target.max_batch_size} is below the ensemble's {config.max_batch_size}"
            )
        for model_input, tensor in step.input_map.items():
            spec = target.input(model_input)
            if spec is None:
                problems.append(f"{swhere}: input_map key '{model_input}' is not an input of {step.model_name}")
            elif tensor not in available:
                problems.append(f"{swhere}: input_map value '{tensor}' is not produced by an earlier step or input")
            elif not _same_tensor(spec, available[tensor]):
                problems.append(
                    f"{swhere}: '{tensor}' is {available[tensor].data_type}{list(available[tensor].dims)} but "
                    f"{step.model_name} input '{model_input}' is {spec.data_type}{list(spec.dims)}"
                )
        missing_inputs = sorted({s.name for s in target.inputs} - set(step.input_map))
        if missing_inputs:
            problems.append(f"{swhere}: input(s) {missing_inputs} of {step.model_name} are not mapped")
        for model_output, tensor in step.output_map.items():
            spec = target.output(model_output)
            if spec is None:
                problems.append(f"{swhere}: output_map key '{model_output}' is not an output of {step.model_name}")
                continue
            available[tensor] = spec
            produced.add(tensor)
    for spec in config.outputs:
        if spec.name not in produced:
            problems.append(f"{where}: ensemble output '{spec.name}' is not produced by any step")
        elif not _same_tensor(spec, available[spec.name]):
            got = available[spec.name]
            problems.append(
                f"{where}: ensemble output '{spec.name}' is {spec.data_type}{list(spec.dims)} but its step "
                f"produces {got.data_type}{list(got.dims)}"
            )


def check_repository(repo: str | Path, pending: Collection[str] = ()) -> CheckReport:
    """Check every model folder of ``repo`` and the manifest; see the module docstring.

    Args:
        repo: the repository folder.
        pending: artifacts (``model/version/file``, e.g. ``aigi_trt/1/model.plan``) known to be built later: their
            absence is a note, not a problem.

    Raises:
        RepositoryError: ``repo`` is not a folder.
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise RepositoryError(f"{repo}: no such repository folder")
    report = CheckReport(repo=str(repo))
    configs: dict[str, TritonModelConfig] = {}
    for directory in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config_path = directory / CONFIG_FILENAME
        if not config_path.is_file():
            report.notes.append(
                f"{directory.name}/: no {CONFIG_FILENAME}, not a model (start Triton with "
                "--model-control-mode=explicit, or it will try to load it)"
            )
            continue
        try:
            config = config_from_proto(parse_config(config_path.read_text(), f"{directory.name}/{CONFIG_FILENAME}"))
        except RepositoryError as exc:
            report.problems.append(str(exc))
            continue
        configs[directory.name] = config
        report.models.append(directory.name)
        _check_model(directory, config, report.problems, report.notes, pending)
    if not configs:
        report.problems.append(f"{repo}: no model folders (none has a {CONFIG_FILENAME})")
    for name, config in configs.items():
        if config.platform == "ensemble":
            _check_contract(name, config, report.problems)
            _check_ensemble(name, config, configs, report.problems)
    manifest_problems, verified = verify_manifest(repo)
    report.problems.extend(str(problem) for problem in manifest_problems)
    report.files_verified = verified
    return report
