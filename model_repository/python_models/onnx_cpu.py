"""Triton Python-backend model ``aigi_cpu``: the exported ONNX network run by ONNX Runtime on CPU.

For Triton builds without the ``onnxruntime`` backend (such as the one in the ``nvidia-pytriton``
wheel). ``aigi export --backend cpu`` copies this file to ``<repo>/aigi_cpu/1/model.py`` next to
``model.onnx``. Config parameters: ``onnx_file`` (default ``model.onnx``, relative to the version
folder) and ``intra_op_threads`` (``0`` lets ONNX Runtime decide).

All requests of one ``execute`` call run as a single ONNX Runtime batch, so Triton's dynamic
batching turns into real batching; each request then gets its own slice of the outputs.

Metrics on Triton's ``/metrics`` (custom metrics API, labels ``model`` and ``version``): ``aigi_verdicts_total``
by ``label`` (the argmax of ``probs``, names from ``labels.txt`` beside the config; ``non_finite`` for a NaN) and
the ``aigi_p_fake`` histogram (``1 - probs[:, 0]``): its drift is the first sign a new generator is being missed.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUT_NAME = "pixel_values"
NON_FINITE = "non_finite"  # the verdict label of outputs with a NaN or infinity
P_FAKE_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def _parameter(parameters: dict, key: str, default: str) -> str:
    value = parameters.get(key, {}).get("string_value", "")
    return value if value != "" else default


def _labels(model_dir: str, classes: int) -> list[str]:
    """Label names from ``labels.txt`` in the model folder (Triton's ``label_filename``), else the indices."""
    path = os.path.join(model_dir, "labels.txt")
    names = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
    return names if len(names) == classes else [str(index) for index in range(classes)]


class _Metrics:
    """Verdicts per label and the p_fake histogram; every series exists from the start."""

    def __init__(self, model: str, version: str, labels: list[str]) -> None:
        common = {"model": model, "version": version}
        family = pb_utils.MetricFamily
        self.families = [
            family("aigi_verdicts_total", "Images classified, by argmax label", family.COUNTER),
            family("aigi_p_fake", "Distribution of p_fake = 1 - p(real) over images", family.HISTOGRAM),
        ]
        verdicts, p_fake = self.families
        self.verdicts = [verdicts.Metric(labels={**common, "label": label}) for label in [*labels, NON_FINITE]]
        self.p_fake = p_fake.Metric(labels=common, buckets=list(P_FAKE_BUCKETS))

    def record(self, probs: np.ndarray) -> None:
        """Count one batch's verdicts and observe each image's p_fake.

        Rows with a NaN or infinity (Triton's random warm-up input can make them) count as ``non_finite`` and stay
        out of the histogram, whose ``_sum`` they would poison for good.
        """
        finite = np.isfinite(probs).all(axis=1)
        counts = np.bincount(np.argmax(probs[finite], axis=1), minlength=len(self.verdicts) - 1).tolist()
        counts.append(int((~finite).sum()))
        for metric, count in zip(self.verdicts, counts, strict=True):
            if count:
                metric.increment(count)
        for value in (1.0 - probs[finite, 0]).tolist():
            self.p_fake.observe(value)

    def close(self) -> None:
        """Metrics go before their families (the backend requires that order)."""
        self.verdicts = []
        self.p_fake = None
        self.families = []


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
        probs = next((output for output in config.get("output", []) if output["name"] == "probs"), None)
        classes = int(probs["dims"][-1]) if probs else 0
        labels = _labels(args["model_repository"], classes)
        self.metrics = _Metrics(args["model_name"], str(args["model_version"]), labels)
        self.probs_index = self.output_names.index("probs") if "probs" in self.output_names else None
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
        if self.probs_index is not None:
            self.metrics.record(np.asarray(outputs[self.probs_index], dtype=np.float32).reshape(batch.shape[0], -1))
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
        """Drop the session and the metrics."""
        self.session = None
        self.metrics.close()
