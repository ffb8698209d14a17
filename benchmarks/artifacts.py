"""Everything the runtimes of one architecture need, built once and on demand: weights, ONNX graphs, engine, Triton.

An :class:`ArtifactStore` wraps one checkpoint directory. Speed needs no trained weights, so when the
``--model`` preset is not the checkpoint's architecture the harness writes a random-init checkpoint of the
preset (:func:`random_checkpoint`) and builds a second store from it. Triton repositories come from
:func:`aigi.export.pipeline.run_export` (the same code as ``aigi export``); every needed precision is
exported into one repository under its own prefix (``aigi`` FP32, ``aigi_int8`` INT8), so one server serves
them all. In-process ONNX Runtime then loads the very files Triton serves. The ``triton-torch-*`` runtimes ask
for ``aigi_torch`` networks (``--backend torch``; :func:`torch_prefix`): each is exported into the same repository
when first asked for and loaded into the running server.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aigi.benchmarks.runtimes import RuntimeUnavailableError
from aigi.checkpoint import CheckpointMeta, TrainingSummary, load_meta
from aigi.errors import AigiError

logger = logging.getLogger(__name__)

PREFIXES = {"fp32": "aigi", "int8": "aigi_int8"}
SERVABLE_BACKEND = "cpu"  # the nvidia-pytriton server has only the Python backend
TORCH_BACKEND = "torch"  # aigi_torch: the checkpoint run by PyTorch in the Python backend (GPU when there is one)


def torch_prefix(precision: str, compile_mode: str = "none") -> str:
    """The prefix the store exports a torch network under: ``aigi_torch``, ``aigi_torch_bf16``,
    ``aigi_torch_bf16_graphs`` (``compile_mode`` reduce-overhead), ``aigi_torch_bf16_max_autotune``."""
    suffix = "" if precision == "fp32" else f"_{precision}"
    if compile_mode != "none":
        suffix += "_" + ("graphs" if compile_mode == "reduce-overhead" else compile_mode.replace("-", "_"))
    return f"aigi_torch{suffix}"


def served_key(precision: str, backend: str = SERVABLE_BACKEND, compile_mode: str = "none") -> str:
    """The store's key of a served network: the precision for ``aigi_cpu``, else ``torch:PRECISION:COMPILE``."""
    return precision if backend == SERVABLE_BACKEND else f"{backend}:{precision}:{compile_mode}"


def random_checkpoint(preset_name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a random-init binary checkpoint of a preset (for speed cells: weights do not change the cost)."""
    from aigi.labels import BINARY_LABELS
    from aigi.preprocessing import PreprocessSpec
    from aigi.training.model import create_detector, save_checkpoint
    from aigi.training.presets import get_preset

    preset = get_preset(preset_name)
    if preset is None:
        raise AigiError(f"unknown preset {preset_name!r}")
    detector, arch = create_detector(preset_name, num_labels=len(BINARY_LABELS), seed=seed)
    meta = CheckpointMeta(
        architecture=arch,
        task="binary",
        labels=list(BINARY_LABELS),
        preprocessing=PreprocessSpec(size=preset.image_size),
        training=TrainingSummary.from_dict(
            {"note": "random initialization written by aigi bench for speed measurements"}
        ),
    )
    save_checkpoint(out_dir, detector, meta)
    return Path(out_dir)


def same_architecture(meta: CheckpointMeta, preset_name: str) -> bool:
    """Whether a checkpoint was built from ``preset_name`` (same vision shape and residual stem)."""
    from aigi.training.presets import get_preset

    preset = get_preset(preset_name)
    if preset is None:
        return False
    wanted = preset.vision_config_dict()
    have = meta.architecture.vision_config
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size")
    return all(int(have.get(key, -1)) == int(wanted[key]) for key in keys) and bool(
        meta.architecture.residual_stem
    ) == bool(preset.residual_stem)


@dataclass
class ServedRepo:
    """A running Triton server and the names of the models a runtime calls."""

    server: Any
    repo: Path
    ensemble_model: str
    network_model: str
    num_labels: int
    image_size: int
    intra_op_threads: int | None

    @property
    def endpoints(self) -> dict[str, str]:
        """The server's endpoints (``grpc``, ``http``, ``metrics_url`` ...)."""
        return self.server.endpoints

    @property
    def pid(self) -> int | None:
        """The server's process id."""
        return self.server.pid

    @property
    def admin_headers(self) -> dict[str, str]:
        """Headers for the server's restricted APIs (shared-memory registration, model repository)."""
        return self.server.admin_headers


class ServedView:
    """The store as the Triton runtimes of one served network see it: :meth:`triton` answers with that network
    (``aigi_torch`` with ``compile_mode``); everything else is the store's."""

    def __init__(self, store: ArtifactStore, backend: str, compile_mode: str = "none") -> None:
        self._store, self.backend, self.compile_mode = store, backend, compile_mode

    def triton(self, precision: str) -> ServedRepo:
        """The served network of this view's backend in ``precision`` (see :meth:`ArtifactStore.triton`)."""
        return self._store.triton(precision, self.backend, self.compile_mode)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class ArtifactStore:
    """Lazily built artifacts of one checkpoint.

    Args:
        checkpoint: run directory (``model.safetensors`` + ``aigi.json``).
        workdir: where exports and engines go (a temporary folder of the harness).
        max_batch: largest batch any cell sends (sizes the repository and the TensorRT profile).
        triton_precisions: precisions the Triton runtimes of this run need (exported together, one server).
        repos: existing repositories (``--repo``) to serve instead of exporting.
        triton_threads: ``intra_op_threads`` of the ``aigi_cpu`` model (0: ONNX Runtime's default).
        weights: ``checkpoint`` or ``random-init``, for the report.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        workdir: str | Path,
        max_batch: int,
        triton_precisions: set[str] | None = None,
        repos: list[Path] | None = None,
        triton_threads: int = 0,
        weights: str = "checkpoint",
    ) -> None:
        self.checkpoint = Path(checkpoint)
        self.meta = load_meta(self.checkpoint)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.max_batch = int(max_batch)
        self.triton_precisions = set(triton_precisions or ())
        self.user_repos = [Path(r) for r in repos or []]
        self.triton_threads = int(triton_threads)
        self.weights = weights
        self._onnx: dict[str, Path] = {}
        self._engine: Path | None = None
        self._served: dict[str, ServedRepo] = {}
        self._servers: list[Any] = []
        self._triton_error: str | None = None
        self._torch_errors: dict[str, str] = {}  # served_key -> why that torch network could not be served
        self.export_seconds = 0.0

    # -- weights -------------------------------------------------------------------------------

    def load_detector(self):
        """A fresh copy of the network on the CPU, in eval mode (each runtime gets its own)."""
        from aigi.training.model import load_checkpoint

        detector, _ = load_checkpoint(self.checkpoint)
        return detector

    @property
    def image_size(self) -> int:
        """Side of the network's input."""
        return int(self.meta.preprocessing.size)

    # -- ONNX and TensorRT ---------------------------------------------------------------------

    def onnx_path(self, precision: str) -> Path:
        """The ONNX graph of ``precision`` (``fp32``, ``int8``, ``fp16``): the served file when Triton has one."""
        if precision in self._onnx:
            return self._onnx[precision]
        from aigi.export import variants
        from aigi.export.onnx_export import export_onnx

        folder = self.workdir / "onnx"
        folder.mkdir(exist_ok=True)
        if precision == "fp32":
            path = folder / "model.onnx"
            export_onnx(self.load_detector(), path, self.image_size)
        elif precision == "int8":
            path = folder / "model.int8.onnx"
            variants.make_int8(self.onnx_path("fp32"), path)
        elif precision == "fp16":
            path = folder / "model.fp16.onnx"
            variants.make_fp16(self.onnx_path("fp32"), path)
        else:
            raise RuntimeUnavailableError(f"no ONNX variant for precision {precision!r}")
        self._onnx[precision] = path
        return path

    def engine_path(self) -> Path:
        """A TensorRT engine built here from the FP16 graph, one profile for batch 1..``max_batch``."""
        if self._engine is not None:
            return self._engine
        from aigi.export import tensorrt_build

        folder = self.workdir / "trt"
        folder.mkdir(exist_ok=True)
        shutil.copy2(self.onnx_path("fp16"), folder / tensorrt_build.FP16_ONNX_FILENAME)
        shapes = tensorrt_build.EngineShapes(self.image_size, self.max_batch, min(8, self.max_batch))
        tensorrt_build.build_engine(folder, shapes)
        self._engine = folder / tensorrt_build.ENGINE_FILENAME
        return self._engine

    # -- Triton --------------------------------------------------------------------------------

    def served_view(self, backend: str, compile_mode: str = "none") -> ServedView:
        """This store as the runtimes of the ``backend`` network (``torch``) see it."""
        return ServedView(self, backend, compile_mode)

    def triton(self, precision: str, backend: str = SERVABLE_BACKEND, compile_mode: str = "none") -> ServedRepo:
        """The running server whose repository has a ``backend`` network of ``precision`` (started on first use).

        A torch network missing from the store's own repository is exported into it and loaded then.

        Raises:
            RuntimeUnavailableError: no such repository, the export failed or the server did not start.
        """
        key = served_key(precision, backend, compile_mode)
        if self._triton_error:
            raise RuntimeUnavailableError(self._triton_error)
        if not self._served:
            try:
                self._start_servers((backend, precision, compile_mode))
            except AigiError as exc:
                self._triton_error = f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}"
                logger.debug("Triton unavailable", exc_info=True)
                raise RuntimeUnavailableError(self._triton_error) from exc
        if key not in self._served and backend == TORCH_BACKEND and not self.user_repos:
            self._serve_torch(precision, compile_mode)
        if key not in self._served:
            have = ", ".join(sorted(self._served)) or "none"
            raise RuntimeUnavailableError(f"no served repository has a {key} network (have: {have})")
        return self._served[key]

    def _start_servers(self, first: tuple[str, str, str] = (SERVABLE_BACKEND, "fp32", "none")) -> None:
        from aigi.server import TritonServer

        repos = self.user_repos or [self._export_repository(first)]
        for repo in repos:
            torch_entries = _torch_exports(repo)
            entries = {**_cpu_exports(repo), **torch_entries}
            if not entries:
                raise RuntimeUnavailableError(
                    f"{repo}: no aigi_cpu or aigi_torch network in its MANIFEST.json to serve here"
                )
            server = TritonServer(repo)
            self._servers.append(server)
            server.start()
            server.wait_ready(timeout=300)
            for prefix, entry in torch_entries.items():
                self._register_torch(server, repo, prefix, entry)
            for prefix, entry in _cpu_exports(repo).items():
                precision = entry.get("precision", "fp32")
                if precision in self._served:
                    continue
                self._served[precision] = ServedRepo(
                    server=server,
                    repo=repo,
                    ensemble_model=prefix,
                    network_model=entry.get("network_model", f"{prefix}_cpu"),
                    num_labels=self.meta.num_labels,
                    image_size=self.image_size,
                    intra_op_threads=_intra_op_threads(repo, entry.get("network_model", f"{prefix}_cpu")),
                )
        # the in-process ONNX Runtime cells then load the exact files Triton serves (when they are this checkpoint's)
        for precision, served in self._served.items():
            graph = served.repo / served.network_model / "1" / "model.onnx"
            source = _cpu_exports(served.repo).get(served.ensemble_model, {}).get("checkpoint")
            if graph.is_file() and source and Path(source).resolve() == self.checkpoint.resolve():
                self._onnx.setdefault(precision, graph)

    def _export_repository(self, first: tuple[str, str, str] = (SERVABLE_BACKEND, "fp32", "none")) -> Path:
        """The store's repository: an ``aigi_cpu`` network per CPU precision asked for, and the torch network of
        ``first`` (the request that starts the server) when it is one."""
        repo = self.workdir / "model_repository"
        for precision in sorted(p for p in self.triton_precisions or {"fp32"} if p in PREFIXES):
            self._export(repo, SERVABLE_BACKEND, precision)
        backend, precision, compile_mode = first
        if backend == TORCH_BACKEND:
            self._export(repo, backend, precision, compile_mode)
        return repo

    def _export(self, repo: Path, backend: str, precision: str, compile_mode: str = "none") -> str:
        """Export this checkpoint's ``backend`` network into ``repo`` (as ``aigi export`` does); returns its prefix."""
        import time

        from aigi.export.pipeline import ExportOptions, run_export

        prefix = PREFIXES[precision] if backend == SERVABLE_BACKEND else torch_prefix(precision, compile_mode)
        logger.info("exporting %s (%s %s) for Triton cells (%s)", prefix, backend, precision, self.checkpoint)
        started = time.perf_counter()
        options = ExportOptions(
            checkpoint=self.checkpoint,
            repo=repo,
            backend=backend,
            name=prefix,
            precision=precision,
            max_batch=self.max_batch,
            time_optimizations=False,
            intra_op_threads=self.triton_threads,
            compile=compile_mode,
        )
        run_export(options, echo=logger.debug, show_progress=False)
        self.export_seconds += time.perf_counter() - started
        return prefix

    def _serve_torch(self, precision: str, compile_mode: str) -> None:
        """Export the torch network into the running server's repository and load it there (repository API)."""
        from aigi.export.versions import load_model

        key = served_key(precision, TORCH_BACKEND, compile_mode)
        if key in self._torch_errors:  # a second runtime of the same network: no second export
            raise RuntimeUnavailableError(self._torch_errors[key])
        server = self._servers[0]
        repo = self.workdir / "model_repository"
        try:
            prefix = self._export(repo, TORCH_BACKEND, precision, compile_mode)
            load_model(server.endpoints["http_url"], prefix, server.admin_key)
        except AigiError as exc:
            why = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:300]}"
            self._torch_errors[key] = f"aigi_torch {precision} (compile {compile_mode}): {why}"
            raise RuntimeUnavailableError(self._torch_errors[key]) from exc
        self._register_torch(server, repo, prefix, _torch_exports(repo)[prefix])

    def _register_torch(self, server: Any, repo: Path, prefix: str, entry: dict) -> None:
        network = entry.get("network_model", f"{prefix}_{TORCH_BACKEND}")
        parameters = _network_parameters(repo, network)
        key = served_key(entry.get("precision", "fp32"), TORCH_BACKEND, parameters.get("compile") or "none")
        self._served.setdefault(
            key,
            ServedRepo(
                server=server,
                repo=repo,
                ensemble_model=prefix,
                network_model=network,
                num_labels=self.meta.num_labels,
                image_size=self.image_size,
                intra_op_threads=int(parameters.get("intra_op_threads") or 0),
            ),
        )

    def close(self) -> None:
        """Stop every server this store started."""
        for server in self._servers:
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001 - shutting down is best effort
                logger.warning("stopping tritonserver failed: %s", exc)
        self._servers = []
        self._served = {}


def _cpu_exports(repo: Path) -> dict[str, dict]:
    """Prefixes of a repository whose network is the CPU model, from its ``MANIFEST.json``."""
    from aigi.manifest import read_manifest

    manifest = read_manifest(repo) or {}
    return {
        prefix: entry
        for prefix, entry in (manifest.get("exports") or {}).items()
        if entry.get("backend") == SERVABLE_BACKEND
    }


def _torch_exports(repo: Path) -> dict[str, dict]:
    """Prefixes of a repository whose network is the torch model (``--backend torch``), from its ``MANIFEST.json``."""
    from aigi.manifest import read_manifest

    exports = (read_manifest(repo) or {}).get("exports") or {}
    return {prefix: entry for prefix, entry in exports.items() if entry.get("backend") == TORCH_BACKEND}


def _network_parameters(repo: Path, network_model: str) -> dict[str, str]:
    """The string parameters of a network model's config (empty when it cannot be read)."""
    from aigi.export.triton_config import config_from_proto, parse_config

    path = repo / network_model / "config.pbtxt"
    try:
        return dict(config_from_proto(parse_config(path.read_text(), str(path))).parameters)
    except (OSError, AigiError):
        return {}


def _intra_op_threads(repo: Path, network_model: str) -> int | None:
    from aigi.export.triton_config import config_from_proto, parse_config

    path = repo / network_model / "config.pbtxt"
    try:
        config = config_from_proto(parse_config(path.read_text(), str(path)))
        return int(config.parameters.get("intra_op_threads", "0"))
    except (OSError, ValueError, AigiError, json.JSONDecodeError):
        return None
