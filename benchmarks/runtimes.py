"""The runtimes a benchmark drives, behind one small protocol, and the registry of their names.

A runtime turns a batch into class probabilities ``[B, C]`` on the host: ``setup()`` loads it,
``prepare(batch)`` stages one input batch where the runtime reads it (the GPU for in-process GPU runtimes,
nothing for Triton) outside the timed region, ``run(prepared)`` is the timed call, ``teardown()`` frees it.
Names read ``<family>-<variant>-<precision>``; :data:`RUNTIMES` lists every one aigi knows, in the order
cells run. Implementations live in ``torch_runtimes``, ``ort_runtimes``, ``tensorrt_runtime`` and
``triton_runtimes`` and are imported only when a runtime is built.

Triton runtimes call the ``aigi_cpu`` network (ONNX Runtime) unless their spec names another served network:
``served="torch"`` (``triton-torch-*``) goes through ``aigi_torch`` (``aigi export --backend torch``), with the
spec's ``compile`` mode; :meth:`RuntimeSpec.build` hands such a runtime the store's view of that network
(:meth:`aigi.benchmarks.artifacts.ArtifactStore.served_view`).
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from aigi.errors import AigiError

if TYPE_CHECKING:
    from aigi.benchmarks.artifacts import ArtifactStore

logger = logging.getLogger(__name__)

BASELINE = "torch-eager-fp32"


class RuntimeUnavailableError(AigiError):
    """A runtime this machine cannot run (no GPU, package missing, server did not start); the cell is skipped."""


@runtime_checkable
class Runtime(Protocol):
    """What the harness needs from a runtime."""

    name: str
    input_kind: str  # "tensor" (normalized FP32 pixel_values) or "bytes" (encoded images)
    concurrent: bool  # sweeps client concurrency (servers); in-process runtimes run one stream

    def setup(self) -> None:
        """Load the model; raise :class:`RuntimeUnavailableError` when it cannot run here."""

    def prepare(self, batch: np.ndarray) -> Any:
        """Stage one batch for :meth:`run` (untimed)."""

    def run(self, prepared: Any) -> np.ndarray:
        """Class probabilities ``[B, C]`` in host memory (so the device has finished)."""

    def sync(self) -> None:
        """Wait for queued device work."""

    def teardown(self) -> None:
        """Free what :meth:`setup` took."""

    def info(self) -> dict[str, Any]:
        """Settings worth reporting (threads, providers, endpoints)."""


class BaseRuntime:
    """Defaults shared by the implementations: identity staging, no device, nothing to report."""

    input_kind = "tensor"
    concurrent = False
    on_gpu = False

    def __init__(self, spec: RuntimeSpec, store: ArtifactStore) -> None:
        self.spec = spec
        self.store = store
        self.name = spec.name

    def setup(self) -> None:  # noqa: D102 - documented on the protocol
        return None

    def prepare(self, batch: np.ndarray) -> Any:  # noqa: D102
        return batch

    def run(self, prepared: Any) -> np.ndarray:  # noqa: D102
        raise NotImplementedError

    def sync(self) -> None:  # noqa: D102
        return None

    def teardown(self) -> None:  # noqa: D102
        return None

    def info(self) -> dict[str, Any]:  # noqa: D102
        return {}

    def memory_root_pid(self) -> int | None:
        """The process whose memory a cell reports (``None``: this one)."""
        return None

    def triton_view(self) -> tuple[str, str] | None:
        """``(metrics_url, entry_model)`` for Triton runtimes, else ``None``."""
        return None


@dataclass(frozen=True)
class RuntimeSpec:
    """A named runtime and how to build it.

    Attributes:
        name: CLI and report name.
        family: ``torch``, ``onnxruntime``, ``tensorrt`` or ``triton``.
        precision: ``fp32``, ``fp16``, ``bf16`` or ``int8``.
        builder: ``module:Class`` under :mod:`aigi.benchmarks` that implements it.
        options: implementation settings (device, mode, protocol, path, shm).
    """

    name: str
    family: str
    precision: str
    builder: str
    options: dict[str, Any] = field(default_factory=dict)

    def option(self, key: str, default: Any = None) -> Any:
        """One implementation setting."""
        return self.options.get(key, default)

    def build(self, store: ArtifactStore) -> BaseRuntime:
        """Instantiate the runtime (imports its module now); a ``served`` network gets the store's view of it."""
        module_name, class_name = self.builder.split(":")
        module = importlib.import_module(f"aigi.benchmarks.{module_name}")
        served = self.option("served")
        target: Any = store
        if served:
            view = getattr(store, "served_view", None)
            target = view(served, self.option("compile", "none")) if view else _NotServed(store, served)
        return getattr(module, class_name)(self, target)

    def precheck(self) -> str | None:
        """Why this runtime cannot run on this machine, checked cheaply before any set-up; ``None`` if it may."""
        if self.option("cuda_only") and not _cuda_available():
            return "needs a CUDA GPU (none visible)"
        module_name, class_name = self.builder.split(":")
        module = importlib.import_module(f"aigi.benchmarks.{module_name}")
        check: Callable[[RuntimeSpec], str | None] | None = getattr(module, "precheck", None)
        return check(self) if check else None


class _NotServed:
    """A store that cannot pick a served network (a server started elsewhere, ``aigi bench --url``): the runtime's
    set-up is refused with a reason, so it is listed as skipped."""

    def __init__(self, store: Any, served: str) -> None:
        self._store, self._served = store, served

    def triton(self, precision: str) -> Any:
        raise RuntimeUnavailableError(
            f"this run cannot choose the {self._served} network it serves; with --url name an aigi_{self._served} "
            "export in --served-model and measure it with the triton-tensor-*/triton-bytes-* runtimes"
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _spec(name: str, family: str, precision: str, builder: str, **options: Any) -> RuntimeSpec:
    return RuntimeSpec(name, family, precision, builder, dict(options))


# the torch-backed Triton network (aigi_torch): the wheel's server on a GPU workstation; on the CPU, FP32
_TORCH_TENSOR = "triton_runtimes:TritonTensorRuntime"
_TORCH_BYTES = "triton_runtimes:TritonBytesRuntime"


RUNTIMES: tuple[RuntimeSpec, ...] = (
    _spec(BASELINE, "torch", "fp32", "torch_runtimes:TorchRuntime", mode="eager"),
    _spec("torch-autocast-fp16", "torch", "fp16", "torch_runtimes:TorchRuntime", mode="autocast", cuda_only=True),
    _spec("torch-autocast-bf16", "torch", "bf16", "torch_runtimes:TorchRuntime", mode="autocast", cuda_only=True),
    _spec("torch-compile-bf16", "torch", "bf16", "torch_runtimes:TorchRuntime", mode="compile", cuda_only=True),
    _spec("ort-cpu-fp32", "onnxruntime", "fp32", "ort_runtimes:OrtRuntime", provider="cpu"),
    _spec("ort-cpu-int8", "onnxruntime", "int8", "ort_runtimes:OrtRuntime", provider="cpu"),
    _spec("ort-cuda-fp32", "onnxruntime", "fp32", "ort_runtimes:OrtRuntime", provider="cuda"),
    _spec("ort-cuda-fp16", "onnxruntime", "fp16", "ort_runtimes:OrtRuntime", provider="cuda"),
    _spec("tensorrt-fp16", "tensorrt", "fp16", "tensorrt_runtime:TensorRTRuntime"),
    _spec("triton-tensor-grpc-fp32", "triton", "fp32", "triton_runtimes:TritonTensorRuntime", protocol="grpc"),
    _spec(
        "triton-tensor-grpc-shm-fp32",
        "triton",
        "fp32",
        "triton_runtimes:TritonTensorRuntime",
        protocol="grpc",
        shm=True,
    ),
    _spec("triton-tensor-http-fp32", "triton", "fp32", "triton_runtimes:TritonTensorRuntime", protocol="http"),
    _spec("triton-tensor-grpc-int8", "triton", "int8", "triton_runtimes:TritonTensorRuntime", protocol="grpc"),
    _spec(
        "triton-tensor-grpc-shm-int8",
        "triton",
        "int8",
        "triton_runtimes:TritonTensorRuntime",
        protocol="grpc",
        shm=True,
    ),
    _spec("triton-bytes-grpc-fp32", "triton", "fp32", "triton_runtimes:TritonBytesRuntime", protocol="grpc"),
    _spec("triton-bytes-http-fp32", "triton", "fp32", "triton_runtimes:TritonBytesRuntime", protocol="http"),
    _spec("triton-bytes-grpc-int8", "triton", "int8", "triton_runtimes:TritonBytesRuntime", protocol="grpc"),
    _spec("triton-torch-grpc-fp32", "triton", "fp32", _TORCH_TENSOR, protocol="grpc", served="torch"),
    _spec("triton-torch-bytes-grpc-fp32", "triton", "fp32", _TORCH_BYTES, protocol="grpc", served="torch"),
    _spec("triton-torch-grpc-bf16", "triton", "bf16", _TORCH_TENSOR, protocol="grpc", served="torch", cuda_only=True),
    _spec(
        "triton-torch-bytes-grpc-bf16", "triton", "bf16", _TORCH_BYTES, protocol="grpc", served="torch", cuda_only=True
    ),
    # torch.compile mode reduce-overhead (CUDA graphs): measured on an H200 at 1.1-4.5x eager bf16 (docs/DEPLOY.md)
    _spec(
        "triton-torch-graphs-grpc-bf16",
        "triton",
        "bf16",
        _TORCH_TENSOR,
        protocol="grpc",
        served="torch",
        compile="reduce-overhead",
        cuda_only=True,
    ),
)
RUNTIME_NAMES: tuple[str, ...] = tuple(spec.name for spec in RUNTIMES)


def select_runtimes(patterns: str | Sequence[str] | None) -> list[RuntimeSpec]:
    """The runtimes matching comma-separated names or shell patterns (``ort-*``), in :data:`RUNTIMES` order.

    ``None``, ``""`` and ``"all"`` select every runtime.

    Raises:
        AigiError: a pattern that matches no runtime (the message lists the known names).
    """
    if patterns is None or patterns == "" or patterns == "all":
        return list(RUNTIMES)
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen: set[str] = set()
    for pattern in patterns:
        matched = fnmatch.filter(RUNTIME_NAMES, pattern)
        if not matched:
            raise AigiError(f"--runtimes: {pattern!r} matches no runtime; known: {', '.join(RUNTIME_NAMES)}")
        chosen.update(matched)
    return [spec for spec in RUNTIMES if spec.name in chosen]


def spec_by_name(name: str) -> RuntimeSpec:
    """The registered runtime called ``name``."""
    for spec in RUNTIMES:
        if spec.name == name:
            return spec
    raise KeyError(name)
