"""Triton Python-backend model ``aigi_preprocess``: encoded image bytes -> normalized ``pixel_values``.

``aigi export`` copies this file to ``<repo>/aigi_preprocess/1/model.py``. The config's
``preprocessing`` parameter (JSON of :class:`aigi.preprocessing.PreprocessSpec`) says how; the work
is done by :func:`aigi.preprocessing.preprocess`, the same function training and the client call.

A request whose images cannot all be decoded gets an error response of its own; the other
requests that Triton's dynamic batcher merged into the same ``execute`` call still succeed.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


def _import_aigi():
    """``aigi.preprocessing`` and ``aigi.errors``, from the environment or a copy vendored next to this file."""
    try:
        import aigi.errors as errors
        import aigi.preprocessing as preprocessing
    except ImportError:
        # a stock Triton container has no aigi; a repository may carry aigi/{__init__,errors,preprocessing}.py here
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import aigi.errors as errors
        import aigi.preprocessing as preprocessing
    return preprocessing, errors


class TritonPythonModel:
    """Decode and preprocess each image of each request with the checkpoint's spec."""

    def initialize(self, args: dict) -> None:
        """Read the ``preprocessing`` parameter from the model config."""
        self._pre, self._errors = _import_aigi()
        self.model_name = args["model_name"]
        parameters = json.loads(args["model_config"]).get("parameters", {})
        if "preprocessing" not in parameters:
            raise pb_utils.TritonModelException(f"{self.model_name}: config has no 'preprocessing' parameter")
        self.spec = self._pre.PreprocessSpec.from_dict(json.loads(parameters["preprocessing"]["string_value"]))
        pb_utils.Logger.log_info(f"{self.model_name}: preprocessing {self.spec.to_dict()}")

    def execute(self, requests: list) -> list:
        """One response per request, in order; a bad image fails only the request that carried it."""
        return [self._one(request) for request in requests]

    def _one(self, request):
        try:
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("pixel_values", self._pixels(request))])
        except self._errors.InvalidImageError as exc:
            message = f"invalid image: {exc}"
        except Exception as exc:  # noqa: BLE001 - whatever happened belongs to this request only
            message = f"preprocessing failed: {exc.__class__.__name__}: {exc}"
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

    def _pixels(self, request) -> np.ndarray:
        images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()  # object [B, 1] of bytes
        count = images.shape[0]
        batch = np.empty((count, 3, self.spec.size, self.spec.size), dtype=np.float32)
        for index, payload in enumerate(images.reshape(count, -1)[:, 0]):
            where = f"image {index} of {count}: " if count > 1 else ""
            if not isinstance(payload, (bytes, bytearray)):
                raise self._errors.InvalidImageError(f"{where}expected encoded bytes, got {type(payload).__name__}")
            try:
                batch[index] = self._pre.preprocess(bytes(payload), self.spec)
            except self._errors.InvalidImageError as exc:
                raise self._errors.InvalidImageError(f"{where}{exc}") from exc
        return batch
