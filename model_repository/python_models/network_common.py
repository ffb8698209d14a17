"""What the Python-backend network models share (``aigi_cpu``: ONNX Runtime, ``aigi_torch``: PyTorch).

``aigi export`` copies this file beside each network's ``model.py`` (``<repo>/P_cpu/1/network_common.py``,
``<repo>/P_torch/1/network_common.py``), and each ``model.py`` loads it by path from its own folder (Triton
imports ``model.py`` from a version folder that is no package, so a relative import cannot be relied on): the
sealed repository carries the code that runs, and ``aigi_cpu`` needs no installed aigi.

* :func:`parameter`, :func:`output_dtypes`: config parameters and the numpy type of each configured output.
* :func:`labels`: names from ``labels.txt`` beside the config.
* :class:`Metrics`: ``aigi_verdicts_total`` by ``label`` (the argmax of ``probs``; ``non_finite`` for a NaN) and the
  ``aigi_p_fake`` histogram (``1 - probs[:, 0]``): its drift is the first sign a new generator is being missed.
* :func:`run_batched`: every request of one ``execute`` call as one batch, each request answered with its slice.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

INPUT_NAME = "pixel_values"
NON_FINITE = "non_finite"  # the verdict label of outputs with a NaN or infinity
P_FAKE_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def parameter(parameters: dict, key: str, default: str) -> str:
    """A config parameter's string value (``default`` when unset or empty)."""
    value = parameters.get(key, {}).get("string_value", "")
    return value if value != "" else default


def string_parameters(config: dict) -> dict[str, str]:
    """Every config parameter as ``key -> string value``."""
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


def output_dtypes(config: dict) -> dict[str, type]:
    """``output name -> numpy type`` from the config's outputs (``TYPE_FP32``: float32, ``TYPE_INT64``: int64)."""
    return {output["name"]: pb_utils.triton_string_to_numpy(output["data_type"]) for output in config.get("output", [])}


def labels(model_dir: str, classes: int) -> list[str]:
    """Label names from ``labels.txt`` in the model folder (Triton's ``label_filename``), else the indices."""
    path = os.path.join(model_dir, "labels.txt")
    names = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
    return names if len(names) == classes else [str(index) for index in range(classes)]


def probs_classes(config: dict) -> int:
    """Classes of the configured ``probs`` output (0 when there is none)."""
    probs = next((output for output in config.get("output", []) if output["name"] == "probs"), None)
    return int(probs["dims"][-1]) if probs else 0


class Metrics:
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


def run_batched(
    requests: list,
    run: Callable[[np.ndarray], Sequence[np.ndarray]],
    output_names: Sequence[str],
    dtypes: dict[str, type],
    metrics: Metrics,
    engine: str,
) -> list:
    """Run every request's ``pixel_values`` as one batch through ``run`` and split the outputs back.

    Args:
        requests: one ``execute`` call's requests.
        run: FP32 ``[B, 3, H, W]`` -> one array per name of ``output_names``, in that order.
        output_names: the outputs to return, as the config lists them.
        dtypes: the config's numpy type per output (float outputs FP32, ``label_id`` INT64).
        metrics: records the batch's ``probs``.
        engine: names the runtime in the error a failed batch answers every request with (the model stays alive).
    """
    inputs = [pb_utils.get_input_tensor_by_name(request, INPUT_NAME).as_numpy() for request in requests]
    sizes = [array.shape[0] for array in inputs]
    try:
        batch = np.ascontiguousarray(np.concatenate(inputs, axis=0), dtype=np.float32)
        outputs = list(run(batch))
    except Exception as exc:  # noqa: BLE001 - report it on every request of the batch, keep the model alive
        error = pb_utils.TritonError(f"{engine} failed: {exc.__class__.__name__}: {exc}")
        return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
    if "probs" in output_names:
        probs = outputs[list(output_names).index("probs")]
        metrics.record(np.asarray(probs, dtype=np.float32).reshape(batch.shape[0], -1))
    responses = []
    start = 0
    for size in sizes:
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(value[start : start + size], dtype=dtypes.get(name, np.float32)))
            for name, value in zip(output_names, outputs, strict=True)
        ]
        responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        start += size
    return responses
