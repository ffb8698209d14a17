"""PyTorch in-process runtimes: eager FP32 (the baseline), FP16/BF16 autocast and ``torch.compile`` on CUDA.

Each runtime loads its own copy of the checkpoint, so compilation or a device move never leaks into another.
Threads stay at torch's default (one per core), which is what an application gets out of the box.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from aigi.benchmarks.runtimes import BaseRuntime, RuntimeSpec, RuntimeUnavailableError

logger = logging.getLogger(__name__)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def precheck(spec: RuntimeSpec) -> str | None:
    """Autocast and compile variants are CUDA-only (on CPU they measure nothing a deployment would use)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed"
    if spec.option("cuda_only") and not _cuda_available():
        return "needs a CUDA GPU (none visible)"
    return None


class TorchRuntime(BaseRuntime):
    """``ExportableDetector`` under ``torch.inference_mode``; ``mode`` is ``eager``, ``autocast`` or ``compile``."""

    @property
    def on_gpu(self) -> bool:  # type: ignore[override]
        """Runs on the GPU whenever one is visible (the baseline too)."""
        return _cuda_available()

    def setup(self) -> None:
        """Load the checkpoint onto the GPU when there is one (else the CPU), wrap per mode."""
        import torch

        from aigi.training.model import ExportableDetector

        self._torch = torch
        self.device = torch.device("cuda" if self.on_gpu else "cpu")
        detector = self.store.load_detector()
        # the module, or what torch.compile wraps it in; None after teardown()
        self.model: Callable[..., Any] | None = ExportableDetector(detector).eval().to(self.device)
        mode = self.spec.option("mode", "eager")
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.spec.precision)
        if mode == "compile":
            try:
                # one graph for every batch size: recompiling per size would cost minutes on large towers
                self.model = torch.compile(self.model, dynamic=True)
            except Exception as exc:  # noqa: BLE001 - any compiler failure means "not on this machine"
                raise RuntimeUnavailableError(f"torch.compile failed: {exc.__class__.__name__}: {exc}") from exc

    def _context(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return self._torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def prepare(self, batch: np.ndarray) -> Any:
        """The batch as a tensor on the runtime's device (the host-to-device copy stays out of the timing)."""
        tensor = self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        return tensor.to(self.device, non_blocking=False) if self.on_gpu else tensor

    def run(self, prepared: Any) -> np.ndarray:
        """Forward pass; copying ``probs`` to the host synchronizes the device."""
        model = self.model
        if model is None:
            raise RuntimeError(f"{self.name} was torn down")
        with self._torch.inference_mode(), self._context():
            probs = model(prepared)[1]  # (logits, probs, p_fake, ...): the exported graph's outputs, in order
        return probs.float().cpu().numpy()

    def sync(self) -> None:
        """``torch.cuda.synchronize`` on GPU."""
        if self.on_gpu:
            self._torch.cuda.synchronize()

    def teardown(self) -> None:
        """Drop the model and return cached GPU memory."""
        self.model = None
        if self.on_gpu:
            self._torch.cuda.empty_cache()

    def info(self) -> dict[str, Any]:
        """Device, threads, mode and autocast dtype."""
        return {
            "device": str(self.device),
            "torch_threads": self._torch.get_num_threads(),
            "mode": self.spec.option("mode", "eager"),
            "autocast": str(self.dtype).replace("torch.", "") if self.dtype is not None else None,
        }
