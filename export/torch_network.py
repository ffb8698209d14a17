"""The ``--backend torch`` network: the checkpoint's :class:`~aigi.training.model.ExportableDetector` run by PyTorch.

One class, :class:`TorchNetwork`, runs it both where ``aigi_torch`` serves it (``torch_net.py`` inside Triton's
Python backend) and where ``aigi export`` checks it against PyTorch, so the check covers the code that serves.
It loads the run directory copied into the model's version folder (``model.safetensors`` + ``aigi.json``) with
aigi's own :func:`~aigi.training.model.load_checkpoint`, and serves whatever ``ExportableDetector`` returns, named
by :data:`aigi.export.onnx_export.OUTPUT_NAMES` (the ONNX graph's outputs), so both backends serve the same tensors.

Settings (:class:`TorchNetSettings`, the model config's parameters):

* ``device``: ``auto`` (CUDA when visible, else the CPU), ``cpu`` or ``cuda``.
* ``precision``: ``fp32``, or ``bf16`` / ``fp16`` autocast on CUDA. Refused on the CPU rather than silently served
  in FP32 (a repository exported for a GPU should not quietly run ten times slower).
* ``compile``: ``none`` or a ``torch.compile`` mode (``default``, ``reduce-overhead`` = CUDA graphs,
  ``max-autotune``). A compiled network sees a few fixed batch sizes (:func:`batch_buckets`; smaller batches are
  padded), each compiled while the model loads, so no request pays for a compilation.
* ``intra_op_threads``: PyTorch's CPU threads (``0``: its default).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aigi.errors import SettingsError

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
RUNTIME = "torch"  # the config's ``runtime`` parameter marks a torch network model (aigi.export.repo_check reads it)


def _choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SettingsError(f"torch network: {key} must be one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class TorchNetSettings:
    """How ``aigi_torch`` runs the network (see the module docstring).

    Raises:
        SettingsError: a value outside its choices, negative threads, or bf16/fp16 asked of the CPU.
    """

    device: str = "auto"
    precision: str = "fp32"
    compile: str = "none"
    intra_op_threads: int = 0

    def __post_init__(self) -> None:
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("compile", self.compile, COMPILE_MODES)
        if self.intra_op_threads < 0:
            raise SettingsError(
                f"torch network: intra_op_threads must be 0 (default) or more, got {self.intra_op_threads}"
            )
        if self.device == "cpu" and self.precision != "fp32":
            raise SettingsError(
                f"torch network: precision {self.precision} is CUDA autocast and device cpu serves fp32 only; "
                "choose precision fp32, or device cuda/auto"
            )

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> TorchNetSettings:
        """The settings from a model config's string parameters (unset ones take their defaults)."""
        threads = parameters.get("intra_op_threads") or "0"
        try:
            count = int(threads)
        except ValueError:
            raise SettingsError(f"torch network: intra_op_threads must be a whole number, got {threads!r}") from None
        return cls(
            device=parameters.get("device") or "auto",
            precision=parameters.get("precision") or "fp32",
            compile=parameters.get("compile") or "none",
            intra_op_threads=count,
        )

    def parameters(self) -> dict[str, str]:
        """The config parameters that carry these settings."""
        return {
            "runtime": RUNTIME,
            "device": self.device,
            "precision": self.precision,
            "compile": self.compile,
            "intra_op_threads": str(self.intra_op_threads),
        }

    def resolve_device(self, cuda_available: bool) -> str:
        """``cuda`` or ``cpu`` on a machine with or without a visible CUDA GPU.

        Raises:
            SettingsError: ``cuda`` asked and none is visible, or bf16/fp16 with ``auto`` on a machine without one.
        """
        if self.device == "cpu":
            return "cpu"
        if cuda_available:
            return "cuda"
        if self.device == "cuda":
            raise SettingsError("torch network: device cuda, but PyTorch sees no CUDA GPU here; use device auto or cpu")
        if self.precision != "fp32":
            raise SettingsError(
                f"torch network: precision {self.precision} needs a CUDA GPU and PyTorch sees none here; serve this "
                "repository on a GPU machine, or export it with --precision fp32"
            )
        return "cpu"


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """The batch sizes a compiled network runs: powers of two below ``max_batch``, and ``max_batch``."""
    sizes = {1 << power for power in range(max(1, max_batch).bit_length()) if 1 << power < max_batch}
    return tuple(sorted(sizes | {max(1, max_batch)}))


class TorchNetwork:
    """The served network on one device: ``pixel_values`` FP32 ``[B, 3, H, W]`` -> named host arrays.

    Args:
        folder: a run directory (``model.safetensors`` + ``aigi.json``): the model's version folder when served.
        settings: device, precision, compilation and threads.
        max_batch: the largest batch (the config's ``max_batch_size``); sizes the compiled batch buckets.
        device_index: the CUDA device (Triton's ``model_instance_device_id`` for a ``KIND_GPU`` instance).
        cuda_available: whether to treat CUDA as present (``None``: ask PyTorch).

    Raises:
        SettingsError: the settings cannot run on this machine (see :meth:`TorchNetSettings.resolve_device`).
        CheckpointError: the folder holds no loadable checkpoint.
    """

    def __init__(
        self,
        folder: str | Path,
        settings: TorchNetSettings,
        max_batch: int,
        device_index: int | None = None,
        cuda_available: bool | None = None,
    ) -> None:
        import torch

        from aigi.export.onnx_export import OUTPUT_NAMES
        from aigi.training.model import ExportableDetector, load_checkpoint

        self.settings = settings
        self.max_batch = max(1, int(max_batch))
        kind = settings.resolve_device(torch.cuda.is_available() if cuda_available is None else cuda_available)
        self.device = torch.device(kind if kind == "cpu" or device_index is None else f"cuda:{device_index}")
        if settings.intra_op_threads:
            torch.set_num_threads(settings.intra_op_threads)
        if self.device.type == "cuda" and settings.precision == "fp32":
            # FP32 means FP32: TF32 convolutions (cuDNN's default) would move probs by ~1e-3
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        detector, self.meta = load_checkpoint(folder, self.device)
        self.output_names: tuple[str, ...] = tuple(OUTPUT_NAMES)
        self.module = ExportableDetector(detector).eval()
        self.model: Any = self.module
        self.buckets: tuple[int, ...] = ()
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.precision)
        if settings.compile != "none":
            self._compile(torch)
        self._torch = torch

    def _compile(self, torch: Any) -> None:
        self.buckets = batch_buckets(self.max_batch)
        dynamo_config = torch._dynamo.config
        limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        # one compiled graph per bucket: the default limit (8) would send the largest buckets back to eager
        setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), len(self.buckets) + 2))
        mode = None if self.settings.compile == "default" else self.settings.compile
        self.model = torch.compile(self.module, mode=mode)

    def _autocast(self):
        import contextlib

        if self.autocast_dtype is None or self.device.type != "cuda":
            return contextlib.nullcontext()
        return self._torch.autocast(device_type="cuda", dtype=self.autocast_dtype)

    def _padded_size(self, batch: int) -> int:
        return next((size for size in self.buckets if size >= batch), batch)

    def run(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """The outputs for one batch, as host arrays: float outputs FP32, integer ones (``label_id``) as they are."""
        torch = self._torch
        batch = int(pixel_values.shape[0])
        inputs = torch.from_numpy(np.ascontiguousarray(pixel_values, dtype=np.float32))
        padded = self._padded_size(batch)
        if padded > batch:  # a compiled network runs fixed sizes; the padding rows are dropped below
            inputs = torch.cat([inputs, inputs.new_zeros((padded - batch, *inputs.shape[1:]))])
        with torch.inference_mode(), self._autocast():
            outputs = self.model(inputs.to(self.device, non_blocking=True))
        arrays = {}
        for name, tensor in zip(self.output_names, outputs, strict=True):
            tensor = tensor[:batch].detach()
            arrays[name] = (tensor.float() if tensor.is_floating_point() else tensor).cpu().numpy()
        return arrays

    def warm_up(self) -> dict[int, float]:
        """Run each batch size requests will use once (every bucket when compiled, else 1 and ``max_batch``), so
        compilation, CUDA graph capture and cuDNN/cuBLAS set-up happen at load; ``size -> seconds``."""
        sizes = self.buckets or tuple(sorted({1, self.max_batch}))
        size = int(self.meta.preprocessing.size)
        rng = np.random.default_rng(0)
        seconds = {}
        for batch in sizes:
            start = time.perf_counter()
            self.run(rng.standard_normal((batch, 3, size, size), dtype=np.float32))
            seconds[batch] = time.perf_counter() - start
        return seconds

    def describe(self) -> str:
        """One line for the log: device, precision, compilation, threads, buckets."""
        torch = self._torch
        return (
            f"torch {torch.__version__} on {self.device}, precision {self.settings.precision}, compile "
            f"{self.settings.compile}, threads {torch.get_num_threads()}"
            + (f", batch buckets {list(self.buckets)}" if self.buckets else "")
        )
