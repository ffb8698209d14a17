"""The TensorRT engine run directly (no Triton), with device buffers from PyTorch and one CUDA stream.

The engine is built in the same run by :func:`aigi.export.tensorrt_build.build_engine` from the FP16 ONNX
graph (strongly typed), with one optimization profile covering the swept batch sizes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from aigi.benchmarks.runtimes import BaseRuntime, RuntimeSpec, RuntimeUnavailableError

logger = logging.getLogger(__name__)


def precheck(spec: RuntimeSpec) -> str | None:
    """TensorRT's Python package and a CUDA GPU are both needed."""
    from aigi.export.tensorrt_build import tensorrt_missing

    return tensorrt_missing()


class TensorRTRuntime(BaseRuntime):
    """``execute_async_v3`` on a deserialized engine; outputs land in preallocated torch tensors."""

    on_gpu = True

    def setup(self) -> None:
        """Build (or reuse) the engine, deserialize it and open an execution context."""
        import tensorrt as trt
        import torch

        self._torch = torch
        plan = self.store.engine_path()
        trt_logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(trt_logger).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise RuntimeUnavailableError(f"TensorRT could not deserialize {plan}")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        self.dtypes = {name: dtypes.get(self.engine.get_tensor_dtype(name), torch.float32) for name in self.outputs}
        self.trt_version = trt.__version__
        self.plan = plan

    def prepare(self, batch: np.ndarray) -> Any:
        """The batch on the GPU plus its output buffers, shapes resolved once per batch."""
        torch = self._torch
        pixels = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).cuda()
        return pixels

    def run(self, prepared: Any) -> np.ndarray:
        """Enqueue on the runtime's stream, wait for it, return ``probs``."""
        torch = self._torch
        context = self.context
        context.set_input_shape("pixel_values", tuple(prepared.shape))
        context.set_tensor_address("pixel_values", prepared.data_ptr())
        buffers = {}
        for name in self.outputs:
            shape = tuple(context.get_tensor_shape(name))
            buffers[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            context.set_tensor_address(name, buffers[name].data_ptr())
        # the input was written on the default stream; order our stream after it
        self.stream.wait_stream(torch.cuda.current_stream())
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return buffers["probs"].float().cpu().numpy()

    def sync(self) -> None:
        """Wait for the stream."""
        self.stream.synchronize()

    def teardown(self) -> None:
        """Release context and engine."""
        self.context = None
        self.engine = None
        self._torch.cuda.empty_cache()

    def info(self) -> dict[str, Any]:
        """TensorRT version and the engine file."""
        return {"tensorrt": self.trt_version, "plan": str(self.plan)}
