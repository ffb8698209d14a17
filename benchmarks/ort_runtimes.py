"""ONNX Runtime in-process: the exported FP32 and INT8 graphs on the CPU provider, FP32 and FP16 on CUDA.

The CPU sessions keep ONNX Runtime's defaults (one intra-op thread per core, all graph optimizations),
the settings an application gets without tuning. On CUDA the input is bound on the device ahead of the
timed call (I/O binding), as the PyTorch GPU runtimes get their input staged too.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from aigi.benchmarks.runtimes import BaseRuntime, RuntimeSpec, RuntimeUnavailableError

logger = logging.getLogger(__name__)


def precheck(spec: RuntimeSpec) -> str | None:
    """onnxruntime must be installed; the CUDA variants need its CUDA provider (``onnxruntime-gpu``)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if spec.option("provider") == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu on a CUDA machine)"
    return None


class OrtRuntime(BaseRuntime):
    """One ``InferenceSession`` on the ONNX file of the runtime's precision."""

    @property
    def on_gpu(self) -> bool:  # type: ignore[override]
        """The CUDA provider variants."""
        return self.spec.option("provider") == "cuda"

    def setup(self) -> None:
        """Open the session (the store exports the graph first when needed)."""
        import onnxruntime as ort

        self._ort = ort
        path = self.store.onnx_path(self.spec.precision)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.on_gpu else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        if self.on_gpu and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeUnavailableError(
                f"onnxruntime fell back to {self.session.get_providers()} (CUDA provider failed)"
            )
        self.path = path

    def prepare(self, batch: np.ndarray) -> Any:
        """On CUDA, an ``OrtValue`` already on the GPU; on CPU the array itself."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if not self.on_gpu:
            return batch
        return self._ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)

    def run(self, prepared: Any) -> np.ndarray:
        """One session call; returns ``probs``."""
        if not self.on_gpu:
            return self.session.run(["probs"], {"pixel_values": prepared})[0]
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("pixel_values", prepared)
        names = [output.name for output in self.session.get_outputs()]  # every output the graph has, in order
        for name in names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[names.index("probs")]

    def teardown(self) -> None:
        """Close the session."""
        self.session = None

    def info(self) -> dict[str, Any]:
        """Provider, graph file and threads."""
        options = self.session.get_session_options() if self.session is not None else None
        return {
            "providers": self.session.get_providers() if self.session is not None else [],
            "onnx": str(self.path),
            "intra_op_threads": options.intra_op_num_threads if options else None,
        }
