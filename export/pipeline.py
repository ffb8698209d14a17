"""``aigi export``: checkpoint -> ONNX (+ FP16 / INT8 / TensorRT) -> checked Triton model repository.

A pipeline of small steps, after NVIDIA Model Navigator's commands. Each step is one function taking the shared
:class:`ExportContext` and returning a :class:`StepReport`: a :class:`StepStatus` and the max abs/rel differences
it saw against FP32 PyTorch. :class:`StepRunner` times each step, prints its line and turns what goes wrong into
one error:

``export`` (FP32 ONNX, tolerance 1e-4 on probs) -> ``fp16`` -> ``int8`` -> ``optimize`` (ORT levels timed)
-> ``trt`` (engine, or ``build_engine.sh`` where TensorRT or a GPU is missing) -> ``repository``.

With ``--backend torch`` there is no ONNX: ``export`` stages the run directory as the network's files and checks
:class:`aigi.export.torch_network.TorchNetwork` on them (the code ``aigi_torch`` serves with) against PyTorch,
and the ONNX steps are skipped.

Every parity check also needs argmax and is_fake agreement of at least :data:`aigi.export.parity.MIN_AGREEMENT`.
A failed step can be run again alone: ``step_int8(prepare_context(options, folder))`` after ``step_fp32`` on the
same context (each later step reads the files the earlier ones left in ``context.work``).

All files are produced in a staging folder beside the repository and moved in at the end, so a failed step
leaves the previous repository intact. With ``--backend trt`` on a machine without TensorRT or a GPU the
repository is still written (without ``model.plan``) and :class:`TensorRTUnavailableError` (exit code 3) is
raised afterwards.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from aigi.checkpoint import CheckpointMeta
from aigi.errors import AigiError, ExportError, ParityError, TensorRTUnavailableError
from aigi.export import parity, tensorrt_build, variants
from aigi.export.repo_check import CheckReport, check_repository
from aigi.export.repo_writer import (
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_PRECISION,
    DEFAULT_QUEUE_TIMEOUT_MS,
    NetworkArtifacts,
    RepositorySpec,
    install_version,
    model_names,
    stage_models,
    staging_area,
)
from aigi.export.report import ExportReport, StepReport, StepStatus
from aigi.export.settings import ServingSettings
from aigi.export.versions import next_version

logger = logging.getLogger(__name__)

# another level must beat ONNX Runtime's default (all) by this factor to be kept; timing noise is larger than 1.0
OPT_LEVEL_MARGIN = 1.10
INT8_FILENAME = "model.int8.onnx"
NO_ONNX = "--backend torch serves the checkpoint with PyTorch, no ONNX graph"
# probs tolerance of the torch network against FP32 PyTorch: FP32 as the ONNX graph; autocast as the FP16 graph, and
# bf16 (8 mantissa bits to FP16's 11) twice that
TORCH_TOLERANCES = {"fp32": parity.TOLERANCES["fp32"], "fp16": parity.TOLERANCES["fp16"], "bf16": 2e-2}


@dataclass
class ExportOptions:
    """Settings of one export (the CLI flags)."""

    checkpoint: Path
    repo: Path
    backend: str
    name: str = "aigi"
    precision: str | None = None
    max_batch: int = 32
    opt_batch: int | None = None
    opset: int = 17
    parity_data: Path | None = None
    parity_images: int = 8
    all_variants: bool = False
    time_optimizations: bool = True
    python_env: dict[str, str] | None = None
    intra_op_threads: int = 0
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    queue_timeout_ms: int = DEFAULT_QUEUE_TIMEOUT_MS
    min_agreement: float = parity.MIN_AGREEMENT
    keep_versions: int = 2  # versions of the network and preprocessing models Triton keeps loaded
    serving: ServingSettings = field(default_factory=ServingSettings)
    device: str = "auto"  # --backend torch: auto|cpu|cuda
    compile: str = "none"  # --backend torch: none or a torch.compile mode

    @property
    def resolved_precision(self) -> str:
        """The precision, defaulted per backend."""
        return self.precision or DEFAULT_PRECISION.get(self.backend, "fp32")


def default_parity_dir(meta: CheckpointMeta) -> Path | None:
    """The training data folder recorded in the checkpoint (``TrainingSummary.data_dir``), if it still exists."""
    recorded = meta.training.data_dir
    if recorded is None:
        return None
    path = Path(recorded)
    return path if path.is_dir() else None  # a CSV manifest or a folder gone since training: no default


def _parity_inputs(options: ExportOptions, meta: CheckpointMeta) -> tuple[list[parity.ParityBatch], dict[str, Any]]:
    size = meta.preprocessing.size
    batches = parity.random_batches(size)
    description: dict[str, Any] = {"random_batches": list(parity.RANDOM_BATCH_SIZES)}
    source = options.parity_data or default_parity_dir(meta)
    if options.parity_data is not None and not Path(options.parity_data).exists():
        raise ExportError(f"--parity-data {options.parity_data}: no such file or folder")
    if source is not None:
        sample = parity.sample_images(source, meta.preprocessing, options.parity_images)
        if len(sample.pixel_values):
            batches.append(parity.ParityBatch(f"images[{len(sample.pixel_values)}]", sample.pixel_values))
        description.update(
            {
                "images_dir": str(source),
                "images_found": sample.found,
                "images_used": sample.used,
                "corrupt": sample.corrupt,
            }
        )
        if options.parity_data is not None and not len(sample.pixel_values):
            raise ExportError(f"--parity-data {source}: no decodable images ({len(sample.corrupt)} corrupt)")
    used = description.get("images_used", [])
    corrupt = description.get("corrupt", [])
    description["description"] = (
        f"random batches {list(parity.RANDOM_BATCH_SIZES)}"
        + (f" + {len(used)} real images from {source}" if used else " (no real images)")
        + (f"; {len(corrupt)} corrupt image(s) skipped" if corrupt else "")
    )
    return batches, description


# ----------------------------------------------------------------------------- the shared context


@dataclass
class ExportContext:
    """What the steps share: the settings, the PyTorch reference outputs, and the files made so far.

    Files go to ``staging/work`` (the artifacts) and ``staging/repo`` (the staged repository). A step reads what
    the earlier ones wrote there and records what the later ones need (``cpu_parameters``, ``engine_pending``).
    """

    options: ExportOptions
    meta: CheckpointMeta
    detector: Any
    opt_batch: int
    batches: list[parity.ParityBatch]
    references: list[parity.Outputs]
    staging: Path
    cpu_parameters: dict[str, str] = field(default_factory=dict)
    # set by the trt step when the engine cannot be built here; raised once everything else is written
    engine_pending: TensorRTUnavailableError | None = None
    # the version this export adds (aigi.export.versions: one more than any the repository holds or retired)
    version: int = 1

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)

    @property
    def precision(self) -> str:
        return self.options.resolved_precision

    @property
    def repo(self) -> Path:
        return Path(self.options.repo)

    @property
    def network_name(self) -> str:
        return model_names(self.options.name)[self.options.backend]

    @property
    def work(self) -> Path:
        return self.staging / "work"

    @property
    def trt_dir(self) -> Path:
        return self.work / "trt"

    @property
    def torch_dir(self) -> Path:
        """The ``--backend torch`` network's files: the run directory's weights and ``aigi.json``."""
        return self.work / "torch"

    def artifact(self, precision: str) -> Path:
        """Where the ONNX file of ``precision`` (fp32, fp16, int8) is written."""
        names = {"fp32": "model.onnx", "fp16": tensorrt_build.FP16_ONNX_FILENAME, "int8": INT8_FILENAME}
        return self.work / names[precision]

    def network_files(self) -> dict[str, Path]:
        """The files of the served network model: the engine folder for trt, the run directory's files for torch,
        else the served ONNX."""
        folder = {"trt": self.trt_dir, "torch": self.torch_dir}.get(self.options.backend)
        if folder is None:
            return {"model.onnx": self.artifact(self.precision)}
        return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}

    def check(self, artifact: str, run: Callable, tolerance: float) -> parity.ParityResult:
        """Run ``run`` on the parity batches and compare with PyTorch (see :func:`aigi.export.parity.check`)."""
        result = parity.check(artifact, run, self.batches, self.references, tolerance, float(self.meta.threshold))
        return dataclasses.replace(result, min_agreement=self.options.min_agreement)


def _repository_spec(options: ExportOptions, meta: CheckpointMeta, context: ExportContext | None) -> RepositorySpec:
    """The repository layout; with no context (no files yet) it only validates the settings."""
    return RepositorySpec(
        options.name,
        options.backend,
        options.resolved_precision,
        meta,
        options.max_batch,
        NetworkArtifacts(context.network_files() if context else {}),
        python_env=options.python_env,
        intra_op_threads=options.intra_op_threads,
        cpu_parameters=context.cpu_parameters if context else {},
        max_queue_size=options.max_queue_size,
        queue_timeout_ms=options.queue_timeout_ms,
        serving=options.serving,
        device=options.device,
        compile=options.compile,
    )


def _load(options: ExportOptions) -> tuple[Any, CheckpointMeta, int]:
    """The detector, its metadata and the TensorRT profile's optimum, once the settings are checked."""
    from aigi.training.model import load_checkpoint

    detector, meta = load_checkpoint(options.checkpoint)
    opt_batch = options.opt_batch or max(1, options.max_batch // 2)
    if not 1 <= opt_batch <= options.max_batch:
        raise ExportError(f"--opt-batch {opt_batch} must lie in 1..--max-batch ({options.max_batch})")
    _repository_spec(options, meta, None)  # validates backend, precision, name and batch before any heavy work
    return detector, meta, opt_batch


def _references(options: ExportOptions, meta: CheckpointMeta, detector) -> tuple[list, list, dict]:
    """The parity batches, PyTorch's outputs on them, and their description for the report."""
    batches, description = _parity_inputs(options, meta)
    return batches, [parity.torch_outputs(detector, batch.pixel_values) for batch in batches], description


def prepare_context(options: ExportOptions, staging: Path) -> ExportContext:
    """Everything a step needs, to run one step alone (files go under ``staging``)."""
    detector, meta, opt_batch = _load(options)
    batches, references, _ = _references(options, meta, detector)
    return ExportContext(options, meta, detector, opt_batch, batches, references, Path(staging))


# ----------------------------------------------------------------------------- the steps


def _checked(report: StepReport, result: parity.ParityResult) -> StepReport:
    """``report`` with its parity result; FAILED when the check failed."""
    report.parity = result
    if not result.passed:
        report.status = StepStatus.FAILED
    return report


def _onnx_check(context: ExportContext, report: StepReport, precision: str) -> StepReport:
    path = context.artifact(precision)
    return _checked(report, context.check(path.name, parity.onnx_runner(path), parity.TOLERANCES[precision]))


def _skipped(name: str, why: str) -> StepReport:
    return StepReport(name, StepStatus.SKIPPED, message=why)


def step_fp32(context: ExportContext) -> StepReport:
    """``export``: the FP32 ONNX graph, checked against PyTorch."""
    from aigi.export.onnx_export import export_onnx

    path = context.artifact("fp32")
    summary = export_onnx(context.detector, path, context.meta.preprocessing.size, context.options.opset)
    message = f"{summary['exporter']} opset {summary['opset']}, {summary['layer_norm_nodes']} LayerNorm nodes"
    report = StepReport("export", StepStatus.OK, artifact=path.name, message=message, details=summary)
    return _onnx_check(context, report, "fp32")


def step_export(context: ExportContext) -> StepReport:
    """``export``: the served network, checked against PyTorch (:func:`step_torch` for ``--backend torch``, else
    :func:`step_fp32`)."""
    return step_torch(context) if context.options.backend == "torch" else step_fp32(context)


def _torch_check_settings(context: ExportContext) -> tuple[Any, str]:
    """The torch network's settings as this machine can check them, and what of the served ones goes unchecked.

    Without a CUDA GPU here a network served on one is checked in FP32 on the CPU; compilation is left out (it
    takes minutes, and changes which kernels run, not what they compute).
    """
    import torch

    served = _repository_spec(context.options, context.meta, None).torch_settings()
    check = dataclasses.replace(served, compile="none", intra_op_threads=0)
    notes = []
    if served.device != "cpu" and not torch.cuda.is_available():
        check = dataclasses.replace(check, device="cpu", precision="fp32")
        if served.precision != "fp32" or served.device == "cuda":
            notes.append(f"no CUDA GPU here: checked fp32 on the CPU, not {served.precision} on the GPU it is for")
    if served.compile != "none":
        notes.append(f"checked without compile (served with compile={served.compile})")
    return check, "; ".join(notes)


def step_torch(context: ExportContext) -> StepReport:
    """``export`` for ``--backend torch``: the run directory's weights and ``aigi.json`` staged as the network's
    files, loaded by :class:`~aigi.export.torch_network.TorchNetwork` (what ``aigi_torch`` serves with) and checked
    against PyTorch."""
    from aigi.checkpoint import META_FILENAME, WEIGHTS_FILENAME
    from aigi.export.torch_network import TorchNetwork

    folder = context.torch_dir
    folder.mkdir()
    for filename in (WEIGHTS_FILENAME, META_FILENAME):
        shutil.copy2(Path(context.options.checkpoint) / filename, folder / filename)
    settings, unchecked = _torch_check_settings(context)
    network = TorchNetwork(folder, settings, context.options.max_batch)
    message = network.describe() + (f"; {unchecked}" if unchecked else "")
    details = {"checked": dataclasses.asdict(settings), "unchecked": unchecked or None}
    report = StepReport("export", StepStatus.OK, artifact=WEIGHTS_FILENAME, message=message, details=details)
    tolerance = TORCH_TOLERANCES[settings.precision]
    return _checked(report, context.check(f"torch {settings.precision} on {network.device}", network.run, tolerance))


def step_fp16(context: ExportContext) -> StepReport:
    """``fp16``: the FP16 graph (GPU backends and TensorRT's source), checked against PyTorch."""
    options = context.options
    if options.backend == "torch":
        return _skipped("fp16", NO_ONNX)
    if not (options.all_variants or options.backend == "trt" or context.precision == "fp16"):
        return _skipped("fp16", "not needed for this backend (--all-variants to check it anyway)")
    path = context.artifact("fp16")
    details = variants.make_fp16(context.artifact("fp32"), path)
    report = StepReport("fp16", StepStatus.OK, artifact=path.name, details={"casts_added": details["casts_added"]})
    return _onnx_check(context, report, "fp16")


def step_int8(context: ExportContext) -> StepReport:
    """``int8``: the dynamically quantized graph for CPU serving, checked against PyTorch."""
    if context.options.backend == "torch":
        return _skipped("int8", NO_ONNX)
    if not (context.options.all_variants or context.precision == "int8"):
        return _skipped("int8", "not needed for this backend (--precision int8 or --all-variants)")
    path = context.artifact("int8")
    details = variants.make_int8(context.artifact("fp32"), path)
    return _onnx_check(context, StepReport("int8", StepStatus.OK, artifact=path.name, details=details), "int8")


def step_optimize(context: ExportContext) -> StepReport:
    """``optimize``: time ONNX Runtime's graph optimization levels on the served CPU graph and keep one."""
    options = context.options
    if options.backend != "cpu" or not options.time_optimizations:
        reasons = {"cpu": "--no-timing", "torch": NO_ONNX}
        why = reasons.get(options.backend, "GPU backends optimize at load on the server")
        return _skipped("optimize", why)
    served, size = context.artifact(context.precision), context.meta.preprocessing.size
    timing = variants.time_optimization_levels(served, size, threads=options.intra_op_threads)
    medians = timing["median_ms"]
    faster = medians[timing["best"]] * OPT_LEVEL_MARGIN < medians["all"]
    timing["chosen"] = timing["best"] if faster else "all"
    context.cpu_parameters["graph_optimization_level"] = timing["chosen"]
    message = (
        f"ORT levels (ms, batch {timing['batch']}): "
        + ", ".join(f"{k} {v:.1f}" for k, v in medians.items())
        + f"; keeping '{timing['chosen']}'"
    )
    return StepReport("optimize", StepStatus.OK, message=message, details={"timing": timing})


def _engine_folder(context: ExportContext) -> tuple[tensorrt_build.EngineShapes, Path]:
    """The FP16 graph, the previous timing cache and ``build_engine.sh`` in ``trt_dir``: shapes and script."""
    context.trt_dir.mkdir()
    fp16 = context.artifact("fp16")
    shutil.move(str(fp16), context.trt_dir / fp16.name)
    previous_cache = context.repo / context.network_name / "1" / tensorrt_build.TIMING_CACHE_FILENAME
    if previous_cache.is_file():
        shutil.copy2(previous_cache, context.trt_dir / tensorrt_build.TIMING_CACHE_FILENAME)
    shapes = tensorrt_build.EngineShapes(context.meta.preprocessing.size, context.options.max_batch, context.opt_batch)
    return shapes, tensorrt_build.write_build_script(context.trt_dir, shapes)


def step_trt(context: ExportContext) -> StepReport:
    """``trt``: the TensorRT engine from the FP16 graph, checked against PyTorch; UNAVAILABLE without TensorRT."""
    if context.options.backend != "trt":
        return _skipped("trt", "--backend trt builds the TensorRT engine")
    shapes, script = _engine_folder(context)
    report = StepReport("trt", StepStatus.OK, artifact=tensorrt_build.ENGINE_FILENAME)
    try:
        info = tensorrt_build.build_engine(context.trt_dir, shapes)
    except TensorRTUnavailableError as exc:
        final_script = context.repo.absolute() / context.network_name / "1" / script.name
        message = tensorrt_build.unavailable_message(str(exc), final_script, context.repo)
        context.engine_pending = TensorRTUnavailableError(message)
        report.status, report.message = StepStatus.UNAVAILABLE, str(exc)
        return report
    report.details = {"engine": info.__dict__}
    runner = tensorrt_build.engine_runner(context.trt_dir / tensorrt_build.ENGINE_FILENAME)
    return _checked(report, context.check(tensorrt_build.ENGINE_FILENAME, runner, parity.TOLERANCES["trt"]))


def step_repository(context: ExportContext) -> StepReport:
    """``repository``: the three model folders staged in ``staging/repo`` and checked like ``aigi repo check``."""
    spec = _repository_spec(context.options, context.meta, context)
    staged = context.staging / "repo"
    staged.mkdir()
    written = stage_models(staged, spec, context.version, context.options.keep_versions)
    engine = f"{spec.network_name}/{context.version}/{tensorrt_build.ENGINE_FILENAME}"
    pending = [engine] if context.engine_pending else []
    problems = _check_staged(staged, pending).problems
    if problems:
        applied = ", ".join(f"{o.target}={o.source}" for o in spec.serving.overrides)
        raise ExportError(
            "the written repository fails its check: "
            + "; ".join(problems)
            + (f" (config overrides applied: {applied})" if applied else "")
        )
    message = f"models {', '.join(written)}, version {context.version}"
    message += "; model.plan to be built" if pending else ""
    details = {"models": written, "config_overrides": spec.serving.override_digests()}
    return StepReport("repository", StepStatus.OK, artifact=str(context.repo), message=message, details=details)


class Step(NamedTuple):
    """One step of the pipeline: its name, its function, and what the progress bar says while it runs."""

    name: str
    run: Callable[[Any], StepReport]
    label: str = ""


PIPELINE = (
    Step("export", step_export),
    Step("fp16", step_fp16),
    Step("int8", step_int8),
    Step("optimize", step_optimize),
    Step("trt", step_trt, "trt (engine build can take minutes)"),
    Step("repository", step_repository),
)
STEPS = tuple(step.name for step in PIPELINE)


# ----------------------------------------------------------------------------- running them


def _as_aigi_error(exc: Exception) -> AigiError:
    """``exc`` itself if it is an :class:`AigiError`, else an :class:`ExportError` naming it (one CLI line)."""
    if isinstance(exc, AigiError):
        return exc
    return ExportError(f"export failed: {exc.__class__.__name__}: {exc}")


def _failure(report: StepReport) -> ExportError:
    """The error for a step that returned FAILED: a :class:`ParityError` when its check failed."""
    reason = report.parity.failure() if report.parity is not None else None
    if reason:
        return ParityError(f"{report.step}: {reason}")
    return ExportError(f"{report.step}: {report.message or 'failed'}")


class StepRunner:
    """Runs steps: shows each on the progress bar, times it, prints its line and keeps it in the report.

    A step that raises is recorded FAILED with the error as its message, then the error goes on (an
    :class:`ExportError` naming it unless it is an :class:`AigiError`). A step that returns FAILED (its parity
    check failed) is recorded as returned, so its line shows the differences, then raises :class:`ParityError`.
    """

    def __init__(self, report: ExportReport, echo: Callable[[str], None] = print, progress=None) -> None:
        self.report, self.echo, self.progress = report, echo, progress

    def run(self, step: Step, context: Any) -> StepReport:
        """Run ``step`` on ``context``; see the class docstring."""
        if self.progress is not None:
            self.progress.set_postfix_str(step.label or step.name)
        start = time.perf_counter()
        try:
            result = step.run(context)
        except Exception as exc:
            error = _as_aigi_error(exc)
            self._record(StepReport(step.name, StepStatus.FAILED, message=str(error)), start)
            if error is exc:
                raise
            raise error from exc
        self._record(result, start)
        if result.status is StepStatus.FAILED:
            raise _failure(result)
        return result

    def _record(self, step: StepReport, start: float) -> None:
        step.seconds = time.perf_counter() - start
        self.report.steps.append(step)
        self.echo(step.line())
        if self.progress is not None:
            self.progress.update(1)


def run_export(options: ExportOptions, echo: Callable[[str], None] = print, show_progress: bool = True) -> ExportReport:
    """Run every step of :data:`PIPELINE` and write the repository; see the module docstring.

    Raises:
        CheckpointError: the run directory is unusable.
        ParityError: an artifact differs from PyTorch past its tolerance (nothing is written).
        ExportError: a step failed (nothing is written).
        TensorRTUnavailableError: ``--backend trt`` without TensorRT or a GPU (everything else is written).
    """
    from tqdm import tqdm

    detector, meta, opt_batch = _load(options)
    settings = (options.name, options.backend, options.resolved_precision, options.max_batch)
    report = ExportReport(str(options.checkpoint), str(Path(options.repo)), *settings)
    progress = tqdm(
        total=len(PIPELINE), desc="aigi export", unit="step", disable=not show_progress or None, leave=False
    )
    runner = StepRunner(report, echo, progress)
    try:
        progress.set_postfix_str("reference outputs")
        batches, references, report.parity_inputs = _references(options, meta, detector)
        with staging_area(options.repo) as staging:
            context = ExportContext(options, meta, detector, opt_batch, batches, references, staging)
            context.version = next_version(options.repo, options.name, list(model_names(options.name).values()))
            for step in PIPELINE:
                runner.run(step, context)
            _install(context, report)
    except AigiError:
        raise
    except Exception as exc:  # an unexpected failure is still one line, and nothing is installed
        raise _as_aigi_error(exc) from exc
    finally:
        progress.close()
    if context.engine_pending is not None:
        raise context.engine_pending
    return report


def _check_staged(staged: Path, pending: list[str]) -> CheckReport:
    """Check the staged models (with a throwaway manifest) before they replace anything."""
    from aigi.manifest import MANIFEST_FILENAME, write_manifest

    write_manifest(staged, {})
    try:
        return check_repository(staged, pending)
    finally:
        (staged / MANIFEST_FILENAME).unlink(missing_ok=True)


def _install(context: ExportContext, report: ExportReport) -> None:
    """Write the report beside the staged models, move them into the repository and record them in its manifest."""
    name, staged = context.options.name, context.staging / "repo"
    report_json, report_md = f"{name}_export_report.json", f"{name}_EXPORT.md"
    (staged / report_json).write_text(report.to_json())
    (staged / report_md).write_text(report.to_markdown())
    owned = list(model_names(name).values())
    removed = install_version(staged, context.repo, owned, [report_json, report_md], context.version)
    if removed:
        logger.info("removed %s (replaced by %s)", ", ".join(removed), context.network_name)
    _write_manifest(context)


def _write_manifest(context: ExportContext) -> None:
    from aigi.manifest import read_manifest, write_manifest

    options = context.options
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    previous = ((read_manifest(context.repo) or {}).get("exports") or {}).get(options.name) or {}
    versions = dict(previous.get("versions") or {})
    versions[str(context.version)] = version_record(context, created)
    write_manifest(
        context.repo,
        {
            options.name: {
                "checkpoint": str(Path(options.checkpoint).absolute()),
                "backend": options.backend,
                "precision": context.precision,
                "network_model": context.network_name,
                "preprocess_model": model_names(options.name)["preprocess"],
                "ensemble": options.name,
                "max_batch": options.max_batch,
                "created": created,
                "version": context.version,
                "keep_versions": options.keep_versions,
                "versions": versions,
            }
        },
    )


def version_record(context: ExportContext, created: str) -> dict[str, Any]:
    """What ``aigi repo versions`` shows of the version this export added: where it came from, its metrics
    (from aigi.json) and the sha256 of the network's files in its version folder."""
    from aigi.manifest import sha256_file

    folder = context.repo / context.network_name / str(context.version)
    hashes = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}
    return {
        "checkpoint": str(Path(context.options.checkpoint).absolute()),
        "created": created,
        "backend": context.options.backend,
        "precision": context.precision,
        "threshold": float(context.meta.threshold),
        "metrics": context.meta.metrics,
        "network_sha256": hashes,
    }
