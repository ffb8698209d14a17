"""Triton Python-backend model ``aigi_cpu``: the exported ONNX network run by ONNX Runtime on CPU.

For Triton builds without the ``onnxruntime`` backend (such as the one in the ``nvidia-pytriton``
wheel). ``aigi export --backend cpu`` copies this file to ``<repo>/aigi_cpu/1/model.py`` next to
``model.onnx`` and ``network_common.py`` (shared with ``aigi_torch``: batching, metrics, labels). Config
parameters: ``onnx_file`` (default ``model.onnx``, relative to the version folder) and ``intra_op_threads``
(``0`` lets ONNX Runtime decide).

All requests of one ``execute`` call run as a single ONNX Runtime batch, so Triton's dynamic
batching turns into real batching; each request then gets its own slice of the outputs, in the config's type per
output (float outputs FP32, ``label_id`` INT64).

Metrics on Triton's ``/metrics`` (custom metrics API, labels ``model`` and ``version``): ``aigi_verdicts_total``
by ``label`` and the ``aigi_p_fake`` histogram, from ``network_common.Metrics``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from types import ModuleType
from typing import TYPE_CHECKING

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _load_common() -> ModuleType:
    """``network_common.py`` from this file's folder, by path (it is copied beside this file; see its docstring)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "network_common.py")
    spec = importlib.util.spec_from_file_location("aigi_network_common", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from aigi.triton_models import network_common as common
else:
    common = _load_common()


class TritonPythonModel:
    """One ONNX Runtime session per model instance."""

    def initialize(self, args: dict) -> None:
        """Open the session named by ``onnx_file`` with ``intra_op_threads`` threads."""
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        onnx_path = os.path.join(version_dir, common.parameter(parameters, "onnx_file", "model.onnx"))
        if not os.path.isfile(onnx_path):
            raise pb_utils.TritonModelException(f"{args['model_name']}: ONNX file {onnx_path} not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(common.parameter(parameters, "intra_op_threads", "0"))
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
        self.dtypes = common.output_dtypes(config)
        labels = common.labels(args["model_repository"], common.probs_classes(config))
        self.metrics = common.Metrics(args["model_name"], str(args["model_version"]), labels)
        pb_utils.Logger.log_info(
            f"{args['model_name']}: {onnx_path}, onnxruntime {ort.__version__}, "
            f"intra_op_threads={options.intra_op_num_threads}, outputs {self.output_names}"
        )

    def execute(self, requests: list) -> list:
        """Run every request's ``pixel_values`` in one session call and split the outputs back."""

        def run(batch):
            return self.session.run(self.output_names, {common.INPUT_NAME: batch})

        return common.run_batched(requests, run, self.output_names, self.dtypes, self.metrics, "onnxruntime")

    def finalize(self) -> None:
        """Drop the session and the metrics."""
        self.session = None
        self.metrics.close()
