"""Triton Python-backend model ``aigi_preprocess``: encoded image bytes -> normalized ``pixel_values``.

``aigi export`` copies this file to ``<repo>/aigi_preprocess/1/model.py``, with the core modules it needs
(``aigi/{__init__,errors,preprocessing}.py``) beside it; those sealed copies are what runs (see
:func:`_import_aigi`). The config's ``preprocessing`` parameter (JSON of
:class:`aigi.preprocessing.PreprocessSpec`) says how; the work is done by :func:`aigi.preprocessing.preprocess`,
the same function training and the client call.

A request whose images cannot all be decoded gets an error response of its own; the other
requests that Triton's dynamic batcher merged into the same ``execute`` call still succeed.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


def _import_aigi(model_dir: str):
    """``(aigi.preprocessing, aigi.errors, where)``: the copy sealed in ``model_dir`` first, else the installed one.

    ``aigi export`` copies ``aigi/{__init__,errors,preprocessing}.py`` next to this file and hashes them into
    ``MANIFEST.json``, so the preprocessing that runs is the one that was checked with the network, whatever
    aigi (if any) the serving environment has. Only a repository without that copy falls back to the installed
    package (``where`` says which ran; :meth:`TritonPythonModel.initialize` logs it).
    """
    model_dir = os.path.realpath(model_dir)
    sealed = os.path.join(model_dir, "aigi")
    if not os.path.isfile(os.path.join(sealed, "preprocessing.py")):
        import aigi.errors as errors
        import aigi.preprocessing as preprocessing

        return (
            preprocessing,
            errors,
            f"installed package {os.path.dirname(preprocessing.__file__)} (no copy in {sealed})",
        )
    # an aigi imported from elsewhere (nothing in the stub should have) would shadow the sealed copy
    for name in [name for name in sys.modules if name == "aigi" or name.startswith("aigi.")]:
        del sys.modules[name]
    if model_dir in sys.path:
        sys.path.remove(model_dir)
    sys.path.insert(0, model_dir)
    importlib.invalidate_caches()
    import aigi.errors as errors
    import aigi.preprocessing as preprocessing

    loaded = os.path.realpath(preprocessing.__file__)
    if os.path.dirname(loaded) != sealed:
        raise ImportError(f"aigi.preprocessing came from {loaded}, not from the copy sealed in {sealed}")
    return preprocessing, errors, f"sealed copy {loaded}"


class TritonPythonModel:
    """Decode and preprocess each image of each request with the checkpoint's spec."""

    def initialize(self, args: dict) -> None:
        """Read the ``preprocessing`` parameter from the model config."""
        self.model_name = args["model_name"]
        self._pre, self._errors, where = _import_aigi(os.path.dirname(os.path.abspath(__file__)))
        log = pb_utils.Logger.log_info if where.startswith("sealed") else pb_utils.Logger.log_warn
        log(f"{self.model_name}: aigi preprocessing from the {where}")
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
            # the caller's input: INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT), so it is never retried as a fault
            error = pb_utils.TritonError(f"invalid image: {exc}", pb_utils.TritonError.INVALID_ARG)
        except Exception as exc:  # noqa: BLE001 - whatever happened belongs to this request only
            # our own bug: INTERNAL (HTTP 500), and the message says so
            error = pb_utils.TritonError(f"preprocessing failed: {exc.__class__.__name__}: {exc}")
        return pb_utils.InferenceResponse(output_tensors=[], error=error)

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
