"""Triton Python-backend model ``aigi_cpu``: the exported ONNX network run by ONNX Runtime on CPU.

For Triton builds without the ``onnxruntime`` backend (such as the one in the ``nvidia-pytriton``
wheel). ``aigi export --backend cpu`` copies this file to ``<repo>/aigi_cpu/1/model.py`` next to
``model.onnx``. Config parameters: ``onnx_file`` (default ``model.onnx``, relative to the version
folder) and ``intra_op_threads`` (``0`` lets ONNX Runtime decide).

All requests of one ``execute`` call run as a single ONNX Runtime batch, so Triton's dynamic
batching turns into real batching; each request then gets its own slice of the outputs.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUT_NAME = "pixel_values"


def _parameter(parameters: dict, key: str, default: str) -> str:
    value = parameters.get(key, {}).get("string_value", "")
    return value if value != "" else default


class TritonPythonModel:
    """One ONNX Runtime session per model instance."""

    def initialize(self, args: dict) -> None:
        """Open the session named by ``onnx_file`` with ``intra_op_threads`` threads."""
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        onnx_path = os.path.join(version_dir, _parameter(parameters, "onnx_file", "model.onnx"))
        if not os.path.isfile(onnx_path):
            raise pb_utils.TritonModelException(f"{args['model_name']}: ONNX file {onnx_path} not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_parameter(parameters, "intra_op_threads", "0"))
        # Triton runs one execute() at a time per instance; a second pool would only contend for cores
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(onnx_path, sess_options=options, providers=["CPUExecutionProvider"])
        available = {output.name for output in self.session.get_outputs()}
        self.output_names = [output["name"] for output in config.get("output", [])]
        missing = sorted(set(self.output_names) - available)
        if missing:
            raise pb_utils.TritonModelException(
                f"{args['model_name']}: {onnx_path} lacks outputs {missing} (it has {sorted(available)})"
            )
        pb_utils.Logger.log_info(
            f"{args['model_name']}: {onnx_path}, onnxruntime {ort.__version__}, "
            f"intra_op_threads={options.intra_op_num_threads}, outputs {self.output_names}"
        )

    def execute(self, requests: list) -> list:
        """Run every request's ``pixel_values`` in one session call and split the outputs back."""
        inputs = [pb_utils.get_input_tensor_by_name(request, INPUT_NAME).as_numpy() for request in requests]
        sizes = [array.shape[0] for array in inputs]
        try:
            batch = np.ascontiguousarray(np.concatenate(inputs, axis=0), dtype=np.float32)
            outputs = self.session.run(self.output_names, {INPUT_NAME: batch})
        except Exception as exc:  # noqa: BLE001 - report it on every request of the batch, keep the model alive
            error = pb_utils.TritonError(f"onnxruntime failed: {exc.__class__.__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(value[start : start + size], dtype=np.float32))
                for name, value in zip(self.output_names, outputs, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self) -> None:
        """Drop the session."""
        self.session = None
