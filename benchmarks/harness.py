"""The sweep: every available runtime x batch size x client concurrency, measured in one run, side by side.

Order of work: resolve the architecture and weights; find the benchmark images; measure the GPU's matmul
peak (on a GPU); set up every runtime (Triton first, so in-process ONNX Runtime loads the served files);
compute agreement with FP32 PyTorch; then measure cells interleaved by batch size (for each batch size,
every runtime, every concurrency) so drift on a shared machine hits all runtimes alike, keeping every request's
latency (:mod:`aigi.benchmarks.latency_log`) and, for Triton cells, the server's split and percentiles; right
after the baseline's cell at one batch size, time the baseline again in a fresh process
(:mod:`aigi.benchmarks.baseline_check`); finally run perf_analyzer if asked, tear everything down, and compute
agreement on the checkpoint's own architecture when the speed architecture (``--model``) differs from it.

With ``--url`` (:mod:`aigi.benchmarks.remote`) the Triton runtimes call a server started elsewhere instead:
nothing is exported or started, the in-process runtimes are skipped, and agreement needs ``--checkpoint``.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aigi import __version__
from aigi.benchmarks import baseline_check, latency_log, perf_analyzer, perf_compare
from aigi.benchmarks.agreement import agreement_on, agreement_rebuilt
from aigi.benchmarks.artifacts import ArtifactStore, random_checkpoint, same_architecture
from aigi.benchmarks.cell_window import CellWindow
from aigi.benchmarks.cells import BenchCell
from aigi.benchmarks.lifecycle import safe_info, setup_runtime, teardown
from aigi.benchmarks.remote import RemoteStore
from aigi.benchmarks.runtimes import (
    BASELINE,
    BaseRuntime,
    RuntimeSpec,
    select_runtimes,
)
from aigi.benchmarks.server_percentiles import WindowTracker
from aigi.benchmarks.timing import InputPool, measure
from aigi.benchmarks.workload import ImageSet, bytes_pool, find_benchmark_images, tensor_pool
from aigi.checkpoint import CheckpointMeta, load_meta
from aigi.errors import AigiError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "vit-b-32"
BASELINE_CHECK_BATCH = 8  # the batch the baseline check runs at when the sweep has it (else the sweep's smallest)


@dataclass
class BenchConfig:
    """Settings of one ``aigi bench`` run (the CLI flags)."""

    out: Path
    model: str | None = None
    checkpoint: Path | None = None
    runtimes: str | None = None
    exclude: str | None = None
    exclude_reason: str = "excluded (--exclude)"
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    concurrency: tuple[int, ...] = (1, 2, 4)
    duration_s: float = 3.0
    iters: int | None = None
    min_iters: int = 5
    warmup: int = 3
    pool_batches: int = 4
    agreement_images: int = 128
    agreement_batch: int = 8
    images: Path | None = None
    repos: list[Path] = field(default_factory=list)
    triton_threads: int = 0
    budget_s: float | None = None
    cell_timeout_s: float = 300.0
    perf_analyzer: bool = False
    workdir: Path | None = None
    progress: bool = True
    urls: list[str] = field(default_factory=list)
    metrics_url: str | None = None
    served_models: tuple[str, ...] = ("aigi",)
    baseline_check: bool = True
    clean_percentiles: bool = False

    def __post_init__(self) -> None:
        if self.urls and (self.repos or self.model):
            raise AigiError("--url benchmarks the model the server serves: --repo and --model do not apply with it")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise AigiError("--batch-sizes must be positive integers")
        if not self.concurrency or min(self.concurrency) < 1:
            raise AigiError("--concurrency must be positive integers")
        if self.iters is None and self.duration_s <= 0:
            raise AigiError("--duration must be positive")
        if self.pool_batches < 2:
            raise AigiError("--pool-batches must be at least 2 (inputs are rotated)")

    @property
    def max_batch(self) -> int:
        """Largest batch any request carries."""
        return max(*self.batch_sizes, self.agreement_batch)


@dataclass
class _Plan:
    """What the run measures: the architectures, their stores, and the runtimes."""

    model_name: str
    weights: str
    speed: ArtifactStore | RemoteStore
    agreement: ArtifactStore | RemoteStore
    specs: list[RuntimeSpec]
    skipped: dict[str, dict[str, Any]]
    preset_gflops: float | None
    remote: RemoteStore | None = None  # --url: the server started elsewhere


def _resolve_model(config: BenchConfig) -> tuple[str, CheckpointMeta | None, bool]:
    """``(speed architecture name, checkpoint meta, whether the checkpoint is that architecture)``."""
    from aigi.training.presets import PRESETS, get_preset

    meta = load_meta(config.checkpoint) if config.checkpoint else None
    if config.model is not None and get_preset(config.model) is None:
        raise AigiError(f"--model {config.model!r} is not a preset; choose from {', '.join(PRESETS)}")
    if meta is not None and config.model is None:
        return meta.architecture.source, meta, True
    name = config.model or DEFAULT_MODEL
    return name, meta, meta is not None and same_architecture(meta, name)


def _selected(config: BenchConfig) -> tuple[list[RuntimeSpec], dict[str, dict[str, Any]]]:
    """The runtimes asked for, less the ``--exclude``d ones: ``(specs, skipped entries)``."""
    specs = select_runtimes(config.runtimes)
    skipped: dict[str, dict[str, Any]] = {}
    if config.exclude:
        for spec in select_runtimes(config.exclude):
            skipped[spec.name] = {"status": "skipped", "reason": config.exclude_reason}
    return [spec for spec in specs if spec.name not in skipped], skipped


def _remote_plan(config: BenchConfig) -> _Plan:
    """``--url``: the server's entry models give the architecture; only Triton runtimes that fit it run."""
    from aigi.benchmarks import remote
    from aigi.training.presets import get_preset

    store = remote.connect(config.urls, config.metrics_url, list(config.served_models), max(config.batch_sizes))
    specs, skipped = _selected(config)
    available = []
    for spec in specs:
        reason = remote.unavailable_reason(spec, store.server) or spec.precheck()
        if reason:
            skipped[spec.name] = {"status": "skipped", "reason": reason}
        else:
            available.append(spec)
    name = store.meta.architecture.source
    preset = get_preset(name)
    gflops = preset.gflops if preset is not None else None
    return _Plan(name, store.weights, store, store, available, skipped, gflops, remote=store)


def plan(config: BenchConfig, workdir: Path) -> _Plan:
    """Decide architectures, stores and runtimes (nothing heavy is built yet)."""
    from aigi.training.presets import get_preset

    if config.urls:
        return _remote_plan(config)
    name, meta, same = _resolve_model(config)
    specs, skipped = _selected(config)
    available = []
    for spec in specs:
        reason = spec.precheck()
        if reason:
            skipped[spec.name] = {"status": "skipped", "reason": reason}
        else:
            available.append(spec)
    triton_precisions = {spec.precision for spec in available if spec.family == "triton"}

    def store(checkpoint: Path, folder: str, weights: str, repos: list[Path]) -> ArtifactStore:
        return ArtifactStore(
            checkpoint,
            workdir / folder,
            max_batch=config.max_batch,
            triton_precisions=triton_precisions,
            repos=repos,
            triton_threads=config.triton_threads,
            weights=weights,
        )

    # meta is read from config.checkpoint: `same` and `meta is not None` both mean a checkpoint was given
    if same and config.checkpoint is not None:
        speed = store(config.checkpoint, "speed", "checkpoint", config.repos)
        agreement = speed
    else:
        checkpoint = random_checkpoint(name, workdir / "random-init")
        # --repo serves the checkpoint's own export, which speed cells on another architecture cannot use
        speed = store(checkpoint, "speed", "random-init", [] if meta is not None else config.repos)
        agreement = (
            store(config.checkpoint, "agreement", "checkpoint", config.repos)
            if config.checkpoint is not None
            else speed
        )
    preset = get_preset(name)
    return _Plan(
        name, speed.weights, speed, agreement, available, skipped, preset.gflops if preset is not None else None
    )


class Harness:
    """One benchmark run; :meth:`run` returns the results dict the report writer takes."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.started = time.monotonic()
        self.windows = WindowTracker()  # what each Triton cell's server percentiles cover
        self.server_pids: list[int] = []  # the Triton servers this run started (for the baseline check)
        self.baseline: dict[str, Any] | None = None
        self.workdir = Path(tempfile.gettempdir())  # the run's work folder, set by run()

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _out_of_time(self) -> str | None:
        budget = self.config.budget_s
        if budget is not None and self._elapsed() > budget:
            return f"time budget of {budget:.0f} s spent"
        return None

    def run(self) -> dict[str, Any]:
        """Plan, set up, measure, tear down; see the module docstring."""
        from aigi.benchmarks.environment import collect_environment

        config = self.config
        owned_tmp = None
        if config.workdir is None:
            owned_tmp = tempfile.TemporaryDirectory(prefix="aigi-bench-")
            workdir = Path(owned_tmp.name)
        else:
            workdir = Path(config.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        environment = collect_environment()
        the_plan = plan(config, workdir)
        try:
            return self._run(the_plan, environment, workdir)
        finally:
            the_plan.speed.close()
            the_plan.agreement.close()
            if owned_tmp is not None:
                owned_tmp.cleanup()

    def _run(self, the_plan: _Plan, environment: dict, workdir: Path) -> dict[str, Any]:
        from aigi.benchmarks.flops import gflops_per_image, measure_matmul_peak
        from aigi.benchmarks.targets import evaluate_targets

        config = self.config
        self.workdir = workdir
        speed, agree = the_plan.speed, the_plan.agreement
        images = self._benchmark_images(the_plan, workdir)
        tensors = images.tensors(speed.meta.preprocessing)
        on_gpu = environment.get("gpu") is not None and the_plan.remote is None  # a remote server's GPU is not ours
        gpu_peak = measure_matmul_peak() if on_gpu else None
        arch = speed.meta.architecture
        flops = gflops_per_image(the_plan.preset_gflops, arch.vision_config, arch.residual_stem)
        runtimes, static_mb, runtime_status = self._set_up_runtimes(the_plan)
        self.server_pids = sorted({pid for rt in runtimes.values() if (pid := rt.memory_root_pid()) is not None})

        separate = agree is not speed
        agreement_images = (
            images if len(images) <= config.agreement_images else _subset(images, config.agreement_images)
        )
        agreement, agreement_note = self._agreement_first(the_plan, runtimes, agreement_images, workdir)

        cells, skipped_cells = self._measure_all(runtimes, static_mb, images, tensors, flops, gpu_peak, the_plan)
        perf = self._perf_analyzer(runtimes, images, workdir, cells) if config.perf_analyzer else None

        for runtime in runtimes.values():
            teardown(runtime)
        speed.close()
        if runtimes and separate and isinstance(agree, ArtifactStore):
            agreement = agreement_rebuilt(
                list(runtimes), agree, agreement_images, config.agreement_batch, self._out_of_time, config.progress
            )

        _add_speedups(cells)
        results: dict[str, Any] = {
            "format": 1,
            "aigi_version": __version__,
            "command": sys.argv,
            "environment": environment,
            "config": _config_dict(config),
            "model": _model_dict(the_plan, flops),
            "agreement_model": _agreement_model_dict(agree, separate),
            "images": images.summary(),
            "gpu_peak": gpu_peak,
            "runtimes": runtime_status,
            "cells": cells,
            "skipped_cells": skipped_cells,
            "agreement": agreement,
            "export_seconds": speed.export_seconds + (agree.export_seconds if separate else 0.0),
            "wall_s": self._elapsed(),
        }
        results |= _optional_sections(the_plan, agreement_note, self.baseline, perf, cells, environment)
        results["targets"] = evaluate_targets(cells, agreement)
        return results

    def _agreement_first(
        self, the_plan: _Plan, runtimes: dict[str, BaseRuntime], images: ImageSet, workdir: Path
    ) -> tuple[dict[str, dict], str | None]:
        """Agreement computed before the cells, while the runtimes are up: ``(agreement, why it is empty)``.

        On the speed cells' own architecture it uses the runtimes as they are; against a server started elsewhere
        the reference is PyTorch on ``--checkpoint`` (the weights that server is meant to serve).
        """
        config = self.config
        if not runtimes:
            return {}, None
        if the_plan.remote is None:
            if the_plan.agreement is not the_plan.speed or not isinstance(the_plan.speed, ArtifactStore):
                return {}, None  # computed after the cells, on the checkpoint's own architecture
            return agreement_on(runtimes, the_plan.speed, images, config.agreement_batch), None
        if config.checkpoint is None:
            return {}, "not measured: --url without --checkpoint gives no PyTorch reference for the served weights"
        store = ArtifactStore(config.checkpoint, workdir / "agreement", config.agreement_batch, set())
        try:
            return agreement_on(runtimes, store, images, config.agreement_batch), None
        finally:
            store.close()

    def _benchmark_images(self, the_plan: _Plan, workdir: Path) -> ImageSet:
        """Enough images for the agreement set and every cell's input pool."""
        config = self.config
        agree = the_plan.agreement
        return find_benchmark_images(
            config.images,
            agree.meta if agree.weights == "checkpoint" else None,
            max(config.agreement_images, config.max_batch * config.pool_batches),
            the_plan.speed.meta.preprocessing,
            workdir,
        )

    def _set_up_runtimes(
        self, the_plan: _Plan
    ) -> tuple[dict[str, BaseRuntime], dict[str, float], dict[str, dict[str, Any]]]:
        """Set up every planned runtime on the speed store: ``(runtimes, static MiB, status of every runtime)``."""
        runtime_status: dict[str, dict[str, Any]] = dict(the_plan.skipped)
        # Triton first: its export writes the ONNX files in-process ONNX Runtime then loads
        ordered = sorted(the_plan.specs, key=lambda spec: spec.family != "triton")
        runtimes: dict[str, BaseRuntime] = {}
        static_mb: dict[str, float] = {}
        for spec in ordered:
            reason = self._out_of_time()
            if reason:
                runtime_status[spec.name] = {"status": "skipped", "reason": reason}
                continue
            logger.info("setting up %s", spec.name)
            runtime, reason, static = setup_runtime(spec, the_plan.speed)  # type: ignore[arg-type]
            if runtime is None:
                runtime_status[spec.name] = {"status": "skipped", "reason": reason}
                logger.warning("%s skipped: %s", spec.name, reason)
                continue
            runtimes[spec.name] = runtime
            static_mb[spec.name] = static
        # keep the registry's order for cells and tables
        runtimes = {spec.name: runtimes[spec.name] for spec in the_plan.specs if spec.name in runtimes}
        for name, runtime in runtimes.items():
            runtime_status[name] = {"status": "ok", "reason": None, "info": safe_info(runtime)}
        return runtimes, static_mb, runtime_status

    def _perf_analyzer(
        self, runtimes: dict[str, BaseRuntime], images: ImageSet, workdir: Path, cells: list[BenchCell]
    ) -> dict[str, Any]:
        config = self.config
        return perf_analyzer.sweep(
            runtimes,
            images.encoded,
            workdir / "perf_analyzer",
            config.batch_sizes,
            config.concurrency,
            config.duration_s,
            our_requests={cell.key: cell.measured.requests for cell in cells if cell.ok},
        )

    # -- speed ---------------------------------------------------------------------------------

    def _measure_all(
        self, runtimes, static_mb, images, tensors, flops, gpu_peak, the_plan: _Plan
    ) -> tuple[list[BenchCell], list[dict]]:
        from tqdm import tqdm

        config = self.config
        plan_cells = [
            (batch, name, conc)
            for batch in config.batch_sizes
            for name, runtime in runtimes.items()
            for conc in (config.concurrency if runtime.concurrent else (1,))
        ]
        cells: list[BenchCell] = []
        skipped: list[dict] = []
        pools: dict[tuple[str, int], list] = {}
        bar = tqdm(plan_cells, desc="bench", unit="cell", disable=not config.progress, file=sys.stderr)
        hung: dict[str, str] = {}  # a runtime whose streams hung once would only hang again
        for batch, name, conc in bar:
            bar.set_postfix_str(f"{name} b{batch} c{conc}")
            reason = self._out_of_time() or hung.get(name)
            if reason:
                skipped.append({"runtime": name, "batch": batch, "concurrency": conc, "reason": reason})
                continue
            runtime = runtimes[name]
            key = (runtime.input_kind, batch)
            if key not in pools:
                pools[key] = (
                    bytes_pool(images.encoded, batch, config.pool_batches)
                    if runtime.input_kind == "bytes"
                    else tensor_pool(tensors, batch, config.pool_batches)
                )
            cell, window = self._measure_cell(
                runtime, pools[key], batch, conc, static_mb.get(name, 0.0), flops, gpu_peak
            )
            first_error = cell.timing.first_error if cell.timing is not None else None
            if "still busy" in str(first_error or cell.error or ""):
                hung[name] = f"an earlier cell (batch {batch}, concurrency {conc}) hung"
            cells.append(cell)
            if self._wants_baseline_check(cell, the_plan):
                bar.set_postfix_str(f"baseline check b{batch} (fresh process)")
                self.baseline = self._baseline_check(cell, window, pools[key], the_plan, runtimes)
        return cells, skipped

    def _measure_cell(
        self, runtime: BaseRuntime, batches: list, batch: int, conc: int, static: float, flops, peak
    ) -> tuple[BenchCell, CellWindow | None]:
        """Time one cell, then add its memory, FLOP/s, raw latencies and (for Triton) the server's split."""
        config = self.config
        spec = runtime.spec
        cell = BenchCell(
            runtime=runtime.name,
            family=spec.family,
            precision=spec.precision,
            path=runtime.input_kind,
            protocol=spec.option("protocol"),
            shared_memory=bool(spec.option("shm")),
            batch=batch,
            concurrency=conc,
        )
        try:
            prepared = [runtime.prepare(b) for b in batches]
        except Exception as exc:  # noqa: BLE001
            return cell.failed(f"preparing inputs: {exc.__class__.__name__}: {exc}"), None
        view = runtime.triton_view()
        if config.clean_percentiles and view is not None:
            self.windows.wait_until_clear(view[0])
        window = CellWindow(runtime, self.windows, f"{runtime.name} b{batch} c{conc}", self.server_pids)
        result = measure(
            runtime.run,
            InputPool(prepared, batch),
            concurrency=conc,
            warmup=config.warmup,
            iters=config.iters,
            duration_s=None if config.iters else config.duration_s,
            min_iters=config.min_iters,
            sync=runtime.sync,
            on_window=window.opens,
            timeout_s=config.cell_timeout_s,
        )
        window.closes()
        cell.timing = result.cell_timing()
        if not result.requests:
            return cell.failed(result.first_error or "no request succeeded"), window
        cell.status = "ok"
        window.add_memory(cell, static)
        achieved = result.images_per_s * flops["gflops"] / 1e3
        cell.achieved_tflops = achieved
        cell.peak_fraction = achieved / peak["tflops"] if peak else None
        cell.triton = window.triton_split(result.requests + result.errors, cell.timing.mean_ms)
        cell.client_cpu_ms = window.cpu_s * 1e3 / result.requests
        cell.latencies_file = latency_log.cell_file_name(runtime.name, batch, conc)
        latency_log.write_latencies(config.out, cell.latencies_file, result.records)
        return cell, window

    # -- baseline check ------------------------------------------------------------------------

    def _wants_baseline_check(self, cell: BenchCell, the_plan: _Plan) -> bool:
        """Right after the baseline's ok cell at the check batch, once per run (never against a remote server)."""
        batches = self.config.batch_sizes
        check_batch = BASELINE_CHECK_BATCH if BASELINE_CHECK_BATCH in batches else min(batches)
        return (
            self.config.baseline_check
            and self.baseline is None
            and the_plan.remote is None
            and cell.runtime == BASELINE
            and cell.ok
            and cell.batch == check_batch
        )

    def _baseline_check(
        self, cell: BenchCell, window: CellWindow | None, batches: list, the_plan: _Plan, runtimes: dict
    ) -> dict[str, Any]:
        """Time the baseline again in a fresh process and record what this process held during its cell."""
        config = self.config
        timing = {"warmup": config.warmup, "iters": config.iters, "duration_s": config.duration_s}
        timing["min_iters"] = config.min_iters
        fresh = baseline_check.fresh_process(the_plan.speed.checkpoint, batches, self.workdir / "baseline", timing)
        harness = {
            **baseline_check.torch_threads(),
            "process_threads": baseline_check.process_threads(),
            "in_process_runtimes_alive": sorted(name for name, rt in runtimes.items() if rt.spec.family != "triton"),
            "servers_alive": len(self.server_pids),
            "server_cpu_s_during_cell": window.others_cpu_s if window is not None else None,
            "cell_wall_s": cell.measured.wall_s,
            "cpu_ms_per_request": cell.client_cpu_ms,  # this process's CPU per request (beside the fresh one's)
        }
        summary = baseline_check.summarize(cell.batch, cell.measured.images_per_s, fresh, harness)
        logger.info("baseline check: %s", summary)
        return summary


def _subset(images: ImageSet, count: int) -> ImageSet:
    return ImageSet(images.paths[:count], images.encoded[:count], images.source, images.found, images.corrupt)


def _add_speedups(cells: list[BenchCell]) -> None:
    """Images/s over the baseline's at the same batch size (one stream), in place."""
    baseline = {
        cell.batch: cell.images_per_s
        for cell in cells
        if cell.runtime == BASELINE and cell.ok and cell.concurrency == 1
    }
    for cell in cells:
        base = baseline.get(cell.batch)
        cell.speedup = cell.measured.images_per_s / base if base and cell.ok else None


def _optional_sections(
    the_plan: _Plan,
    agreement_note: str | None,
    baseline: dict[str, Any] | None,
    perf: dict[str, Any] | None,
    cells: list[BenchCell],
    environment: dict[str, Any],
) -> dict[str, Any]:
    """The parts of ``bench.json`` a run has only sometimes: server, agreement note, baseline check, perf_analyzer."""
    sections: dict[str, Any] = {}
    if the_plan.remote is not None:
        sections["server"] = the_plan.remote.describe()
    if agreement_note:
        sections["agreement_note"] = agreement_note
    if baseline is not None:
        sections["baseline_check"] = baseline
    if perf is not None:
        if perf.get("rows"):
            cores = environment.get("cpu_cores_usable")
            perf = {**perf, "comparison": perf_compare.compare(cells, perf["rows"], cores)}
        sections["perf_analyzer"] = perf
    return sections


def _model_dict(the_plan: _Plan, flops: dict[str, Any]) -> dict[str, Any]:
    """The speed cells' architecture and weights (``model`` in bench.json)."""
    speed = the_plan.speed
    arch = speed.meta.architecture
    return {
        "name": the_plan.model_name,
        "weights": the_plan.weights,
        "checkpoint": str(speed.checkpoint) if the_plan.weights == "checkpoint" else None,
        "image_size": speed.image_size,
        "vision_config": arch.vision_config,
        "residual_stem": arch.residual_stem,
        "gflops": flops["gflops"],
        "gflops_source": flops["source"],
        "analytic_gflops": flops["analytic_gflops"],
    }


def _agreement_model_dict(agree: ArtifactStore | RemoteStore, separate: bool) -> dict[str, Any]:
    """The architecture and weights agreement was computed on (``agreement_model`` in bench.json)."""
    return {
        "checkpoint": str(agree.checkpoint),
        "architecture": agree.meta.architecture.source,
        "weights": agree.weights,
        "separate": separate,
        "threshold": agree.meta.threshold,
    }


def _config_dict(config: BenchConfig) -> dict[str, Any]:
    data = asdict(config)
    return {key: (str(value) if isinstance(value, Path) else value) for key, value in data.items()} | {
        "repos": [str(repo) for repo in config.repos]
    }


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run the benchmark and write ``bench.json``, ``BENCH.md`` and the plots into ``config.out``."""
    from aigi.benchmarks.report import write_report

    results = Harness(config).run()
    write_report(config.out, results)
    return results
