"""``aigi export``: checkpoint -> ONNX (+ FP16 / INT8 / TensorRT) -> checked Triton model repository.

Steps, each reported with its status and the max differences it saw against FP32 PyTorch:

``export`` (FP32 ONNX, tolerance 1e-4 on probs) -> ``fp16`` -> ``int8`` -> ``optimize`` (ORT levels timed)
-> ``trt`` (engine, or ``build_engine.sh`` where TensorRT or a GPU is missing) -> ``repository``.

All files are produced in a staging folder beside the repository and moved in at the end, so a failed step
leaves the previous repository intact. With ``--backend trt`` on a machine without TensorRT or a GPU the
repository is still written (without ``model.plan``) and :class:`TensorRTUnavailableError` (exit code 3) is
raised afterwards.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aigi.checkpoint import CheckpointMeta
from aigi.errors import AigiError, ExportError, ParityError, TensorRTUnavailableError
from aigi.export import parity
from aigi.export.repo_check import CheckReport
from aigi.export.repo_writer import (
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_PRECISION,
    DEFAULT_QUEUE_TIMEOUT_MS,
    NetworkArtifacts,
    RepositorySpec,
    install,
    model_names,
    stage_models,
    staging_area,
)
from aigi.export.report import ExportReport, StepReport

logger = logging.getLogger(__name__)

STEPS = ("export", "fp16", "int8", "optimize", "trt", "repository")
# another level must beat ONNX Runtime's default (all) by this factor to be kept; timing noise is larger than 1.0
OPT_LEVEL_MARGIN = 1.10


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

    @property
    def resolved_precision(self) -> str:
        """The precision, defaulted per backend."""
        return self.precision or DEFAULT_PRECISION.get(self.backend, "fp32")


def default_parity_dir(meta: CheckpointMeta) -> Path | None:
    """The training data folder recorded in the checkpoint, if it still exists."""
    candidates = []
    for key, value in meta.training.items():
        if isinstance(value, str) and ("data" in key or "dir" in key or "root" in key):
            candidates.append(value)
        elif isinstance(value, dict):
            candidates += [v for k, v in value.items() if isinstance(v, str) and ("data" in k or "root" in k)]
    for candidate in candidates:
        path = Path(candidate)
        if path.is_dir():
            return path
    return None


class _Steps:
    """Runs steps, times them, prints their lines, keeps the report."""

    def __init__(self, report: ExportReport, echo: Callable[[str], None], progress) -> None:
        self.report, self.echo, self.progress = report, echo, progress

    def add(self, step: StepReport) -> StepReport:
        self.report.steps.append(step)
        self.echo(step.line())
        if self.progress is not None:
            self.progress.update(1)
        return step

    def skip(self, name: str, why: str) -> None:
        self.add(StepReport(name, "skipped", message=why))


def _parity_inputs(options: ExportOptions, meta: CheckpointMeta) -> tuple[list[parity.ParityBatch], dict]:
    size = meta.preprocessing.size
    batches = parity.random_batches(size)
    description = {"random_batches": list(parity.RANDOM_BATCH_SIZES)}
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


def _check_or_raise(steps: _Steps, step: StepReport, result: parity.ParityResult) -> None:
    step.parity = result
    if not result.passed:
        step.status = "failed"
        steps.add(step)
        raise ParityError(
            f"{step.step}: {result.artifact} differs from PyTorch past tolerance: probs max abs "
            f"{result.max_abs['probs']:.2e} > {result.tolerance:.0e}"
        )
    steps.add(step)


def run_export(options: ExportOptions, echo: Callable[[str], None] = print, show_progress: bool = True) -> ExportReport:
    """Run every step and write the repository; see the module docstring.

    Raises:
        CheckpointError: the run directory is unusable.
        ParityError: an artifact differs from PyTorch past its tolerance (nothing is written).
        ExportError: a step failed (nothing is written).
        TensorRTUnavailableError: ``--backend trt`` without TensorRT or a GPU (everything else is written).
    """
    from tqdm import tqdm

    from aigi.export import tensorrt_build, variants
    from aigi.export.onnx_export import export_onnx
    from aigi.export.repo_check import check_repository
    from aigi.training.model import load_checkpoint

    precision = options.resolved_precision
    detector, meta = load_checkpoint(options.checkpoint)
    opt_batch = options.opt_batch or max(1, options.max_batch // 2)
    if not 1 <= opt_batch <= options.max_batch:
        raise ExportError(f"--opt-batch {opt_batch} must lie in 1..--max-batch ({options.max_batch})")
    # validates backend, precision, name and batch before any heavy work
    RepositorySpec(
        options.name,
        options.backend,
        precision,
        meta,
        options.max_batch,
        NetworkArtifacts({}),
        max_queue_size=options.max_queue_size,
        queue_timeout_ms=options.queue_timeout_ms,
    )
    repo = Path(options.repo)
    report = ExportReport(
        str(options.checkpoint), str(repo), options.name, options.backend, precision, options.max_batch
    )
    progress = tqdm(total=len(STEPS), desc="aigi export", unit="step", disable=not show_progress or None, leave=False)
    steps = _Steps(report, echo, progress)
    trt_unavailable = ""
    try:
        progress.set_postfix_str("reference outputs")
        batches, report.parity_inputs = _parity_inputs(options, meta)
        references = [parity.torch_outputs(detector, batch.pixel_values) for batch in batches]
        threshold = float(meta.threshold)
        size = meta.preprocessing.size

        def check(step: StepReport, path: Path, tolerance: float) -> None:
            runner = parity.onnx_runner(path)
            _check_or_raise(steps, step, parity.check(path.name, runner, batches, references, tolerance, threshold))

        with staging_area(repo) as staging:
            work = staging / "work"
            work.mkdir()
            fp32 = work / "model.onnx"

            progress.set_postfix_str("export")
            start = time.perf_counter()
            summary = export_onnx(detector, fp32, size, options.opset)
            step = StepReport("export", "ok", artifact="model.onnx", details=summary)
            step.message = (
                f"{summary['exporter']} opset {summary['opset']}, {summary['layer_norm_nodes']} LayerNorm nodes"
            )
            step.seconds = time.perf_counter() - start
            check(step, fp32, parity.TOLERANCES["fp32"])

            want_fp16 = options.all_variants or options.backend == "trt" or precision == "fp16"
            fp16 = work / tensorrt_build.FP16_ONNX_FILENAME
            if want_fp16:
                progress.set_postfix_str("fp16")
                start = time.perf_counter()
                details = variants.make_fp16(fp32, fp16)
                step = StepReport("fp16", "ok", artifact=fp16.name, details={"casts_added": details["casts_added"]})
                step.seconds = time.perf_counter() - start
                check(step, fp16, parity.TOLERANCES["fp16"])
            else:
                steps.skip("fp16", "not needed for this backend (--all-variants to check it anyway)")

            want_int8 = options.all_variants or precision == "int8"
            int8 = work / "model.int8.onnx"
            if want_int8:
                progress.set_postfix_str("int8")
                start = time.perf_counter()
                details = variants.make_int8(fp32, int8)
                step = StepReport("int8", "ok", artifact=int8.name, details=details)
                step.seconds = time.perf_counter() - start
                check(step, int8, parity.TOLERANCES["int8"])
            else:
                steps.skip("int8", "not needed for this backend (--precision int8 or --all-variants)")

            served = {"fp32": fp32, "fp16": fp16, "int8": int8}[precision]
            cpu_parameters: dict[str, str] = {}
            if options.backend == "cpu" and options.time_optimizations:
                progress.set_postfix_str("optimize")
                start = time.perf_counter()
                timing = variants.time_optimization_levels(served, size, threads=options.intra_op_threads)
                medians = timing["median_ms"]
                faster = medians[timing["best"]] * OPT_LEVEL_MARGIN < medians["all"]
                timing["chosen"] = timing["best"] if faster else "all"
                cpu_parameters["graph_optimization_level"] = timing["chosen"]
                step = StepReport("optimize", "ok", details={"timing": timing})
                step.message = (
                    f"ORT levels (ms, batch {timing['batch']}): "
                    + ", ".join(f"{k} {v:.1f}" for k, v in medians.items())
                    + f"; keeping '{timing['chosen']}'"
                )
                step.seconds = time.perf_counter() - start
                steps.add(step)
            else:
                why = "--no-timing" if options.backend == "cpu" else "GPU backends optimize at load on the server"
                steps.skip("optimize", why)

            network_files: dict[str, Path] = {}
            if options.backend == "trt":
                progress.set_postfix_str("trt (engine build can take minutes)")
                trt_dir = work / "trt"
                trt_dir.mkdir()
                shutil.move(str(fp16), trt_dir / fp16.name)
                names = model_names(options.name)
                previous_cache = repo / names["trt"] / "1" / tensorrt_build.TIMING_CACHE_FILENAME
                if previous_cache.is_file():
                    shutil.copy2(previous_cache, trt_dir / tensorrt_build.TIMING_CACHE_FILENAME)
                shapes = tensorrt_build.EngineShapes(size, options.max_batch, opt_batch)
                script = tensorrt_build.write_build_script(trt_dir, shapes)
                start = time.perf_counter()
                step = StepReport("trt", "ok", artifact=tensorrt_build.ENGINE_FILENAME)
                try:
                    info = tensorrt_build.build_engine(trt_dir, shapes)
                except TensorRTUnavailableError as exc:
                    final_script = repo.absolute() / names["trt"] / "1" / script.name
                    trt_unavailable = tensorrt_build.unavailable_message(str(exc), final_script, repo)
                    step.status, step.message = "unavailable", str(exc)
                    step.seconds = time.perf_counter() - start
                    steps.add(step)
                else:
                    step.details = {"engine": info.__dict__}
                    step.seconds = time.perf_counter() - start
                    runner = tensorrt_build.engine_runner(trt_dir / tensorrt_build.ENGINE_FILENAME)
                    result = parity.check(
                        "model.plan", runner, batches, references, parity.TOLERANCES["trt"], threshold
                    )
                    _check_or_raise(steps, step, result)
                network_files = {p.name: p for p in sorted(trt_dir.iterdir()) if p.is_file()}
            else:
                steps.skip("trt", "--backend trt builds the TensorRT engine")
                network_files = {"model.onnx": served}

            progress.set_postfix_str("repository")
            start = time.perf_counter()
            spec = RepositorySpec(
                options.name,
                options.backend,
                precision,
                meta,
                options.max_batch,
                NetworkArtifacts(network_files),
                python_env=options.python_env,
                intra_op_threads=options.intra_op_threads,
                cpu_parameters=cpu_parameters,
                max_queue_size=options.max_queue_size,
                queue_timeout_ms=options.queue_timeout_ms,
            )
            staged = staging / "repo"
            staged.mkdir()
            written = stage_models(staged, spec)
            check_report = _check_staged(staged, check_repository)
            expected = [p for p in check_report.problems if trt_unavailable and "model.plan: missing" in p]
            unexpected = [p for p in check_report.problems if p not in expected]
            if unexpected:
                raise ExportError("the written repository fails its check: " + unexpected[0])
            step = StepReport("repository", "ok", artifact=str(repo), details={"models": written})
            step.message = f"models {', '.join(written)}" + ("; model.plan to be built" if expected else "")
            step.seconds = time.perf_counter() - start
            steps.add(step)
            report_json, report_md = f"{options.name}_export_report.json", f"{options.name}_EXPORT.md"
            (staged / report_json).write_text(report.to_json())
            (staged / report_md).write_text(report.to_markdown())
            owned = list(model_names(options.name).values())
            removed = install(staged, repo, owned, [report_json, report_md])
            if removed:
                logger.info("removed %s (replaced by %s)", ", ".join(removed), spec.network_name)
            _write_manifest(repo, options, spec)
    except AigiError:
        raise
    except Exception as exc:  # an unexpected failure is still one line, and nothing is installed
        raise ExportError(f"export failed: {exc.__class__.__name__}: {exc}") from exc
    finally:
        progress.close()
    if trt_unavailable:
        raise TensorRTUnavailableError(trt_unavailable)
    return report


def _check_staged(staged: Path, check_repository) -> CheckReport:
    """Check the staged models (with a throwaway manifest) before they replace anything."""
    from aigi.manifest import MANIFEST_FILENAME, write_manifest

    write_manifest(staged, {})
    try:
        return check_repository(staged)
    finally:
        (staged / MANIFEST_FILENAME).unlink(missing_ok=True)


def _write_manifest(repo: Path, options: ExportOptions, spec: RepositorySpec) -> None:
    from aigi.manifest import write_manifest

    write_manifest(
        repo,
        {
            options.name: {
                "checkpoint": str(Path(options.checkpoint).absolute()),
                "backend": options.backend,
                "precision": spec.precision,
                "network_model": spec.network_name,
                "max_batch": options.max_batch,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        },
    )
