"""Triton Python-backend model ``aigi_preprocess``: encoded image bytes -> normalized ``pixel_values``.

``aigi export`` copies this file to ``<repo>/aigi_preprocess/1/model.py``, with the core modules it needs
(``aigi/{__init__,errors,preprocessing}.py``) beside it; those sealed copies are what runs (see
:func:`_import_aigi`). The config's ``preprocessing`` parameter (JSON of
:class:`aigi.preprocessing.PreprocessSpec`) says how; the work is done by :func:`aigi.preprocessing.preprocess`,
the same function training and the client call.

A request whose images cannot all be decoded gets an error response of its own; the other
requests that Triton's dynamic batcher merged into the same ``execute`` call still succeed.

The images of every request of one ``execute`` call are decoded concurrently on a thread pool (Pillow and the
resampling release the GIL); the config parameter ``decode_threads`` sizes it (default: the CPU count, at most 8).

Metrics on Triton's ``/metrics`` (custom metrics API, labels ``model`` and ``version``; see
``model_repository/README.md``): ``aigi_images_refused_total{reason}`` with :data:`REFUSAL_REASONS`,
``aigi_preprocess_duration_us`` (per decoded image), ``aigi_image_pixels`` and ``aigi_image_bytes`` (histograms).
"""

from __future__ import annotations

import importlib
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

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


REFUSAL_REASONS = ("unsupported_format", "too_many_bytes", "too_many_pixels", "corrupt", "other")
DURATION_BUCKETS_US = (500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 250000, 1000000)
PIXEL_BUCKETS = (65536, 262144, 1048576, 4194304, 16777216, 67108864)  # 256^2 ... 8192^2
BYTE_BUCKETS = (16384, 65536, 262144, 1048576, 4194304, 16777216, 33554432)


def refusal_reason(message: str) -> str:
    """The metric's ``reason`` for an ``InvalidImageError`` message (the messages of aigi.preprocessing)."""
    text = message.lower()
    if "bytes per image" in text:
        return "too_many_bytes"
    if "refusing to decode" in text:  # over max_pixels, or Pillow's decompression-bomb check
        return "too_many_pixels"
    if "unsupported image format" in text:  # an excluded format, or bytes no allowed plugin recognises
        return "unsupported_format"
    if any(word in text for word in ("not a decodable image", "corrupt", "truncated", "empty", "no pixels")):
        return "corrupt"
    return "other"


class _Metrics:
    """The preprocessing's custom metrics, every series created at start so dashboards see zeros, not gaps."""

    def __init__(self, model: str, version: str) -> None:
        labels = {"model": model, "version": version}
        family = pb_utils.MetricFamily
        self.families = [
            family("aigi_images_refused_total", "Images refused by aigi_preprocess, by reason", family.COUNTER),
            family("aigi_preprocess_duration_us", "Decode + crop + normalize time per image (us)", family.HISTOGRAM),
            family("aigi_image_pixels", "Decoded images' width x height", family.HISTOGRAM),
            family("aigi_image_bytes", "Encoded images' size in bytes", family.HISTOGRAM),
        ]
        refused, duration, pixels, size = self.families
        self.refused = {reason: refused.Metric(labels={**labels, "reason": reason}) for reason in REFUSAL_REASONS}
        self.duration = duration.Metric(labels=labels, buckets=list(DURATION_BUCKETS_US))
        self.pixels = pixels.Metric(labels=labels, buckets=list(PIXEL_BUCKETS))
        self.bytes = size.Metric(labels=labels, buckets=list(BYTE_BUCKETS))

    def record(self, outcomes: list) -> None:
        """Count one ``execute`` call's outcomes: refusals by reason, sizes and times of the decoded images."""
        refusals: dict[str, int] = {}
        for outcome in outcomes:
            if outcome.reason is not None:
                refusals[outcome.reason] = refusals.get(outcome.reason, 0) + 1
                continue
            self.duration.observe(outcome.seconds * 1e6)
            self.bytes.observe(outcome.size)
            if outcome.pixels:
                self.pixels.observe(outcome.pixels)
        for reason, count in refusals.items():
            self.refused[reason].increment(count)

    def close(self) -> None:
        """Metrics go before their families (the backend requires that order)."""
        self.refused = {}
        self.duration = self.pixels = self.bytes = None
        self.families = []


class _Outcome:
    """One image's result: its pixels went into the batch, or why it was refused."""

    __slots__ = ("error", "reason", "seconds", "size", "pixels")

    def __init__(self, size: int) -> None:
        self.error: Exception | None = None
        self.reason: str | None = None
        self.seconds = 0.0
        self.size = size
        self.pixels = 0


class TritonPythonModel:
    """Decode and preprocess each image of each request with the checkpoint's spec."""

    def initialize(self, args: dict) -> None:
        """Read the ``preprocessing`` parameter, start the decode pool and create the metrics."""
        self.model_name = args["model_name"]
        self._pre, self._errors, where = _import_aigi(os.path.dirname(os.path.abspath(__file__)))
        log = pb_utils.Logger.log_info if where.startswith("sealed") else pb_utils.Logger.log_warn
        log(f"{self.model_name}: aigi preprocessing from the {where}")
        parameters = json.loads(args["model_config"]).get("parameters", {})
        if "preprocessing" not in parameters:
            raise pb_utils.TritonModelException(f"{self.model_name}: config has no 'preprocessing' parameter")
        self.spec = self._pre.PreprocessSpec.from_dict(json.loads(parameters["preprocessing"]["string_value"]))
        threads = int(parameters.get("decode_threads", {}).get("string_value", "") or 0)
        self.threads = threads if threads > 0 else min(8, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="aigi-decode") if self.threads > 1 else None
        self.metrics = _Metrics(self.model_name, str(args["model_version"]))
        pb_utils.Logger.log_info(
            f"{self.model_name}: preprocessing {self.spec.to_dict()}, {self.threads} decode thread(s)"
        )

    def execute(self, requests: list) -> list:
        """One response per request, in order; a bad image fails only the request that carried it."""
        payloads = [self._payloads(request) for request in requests]
        flat = [(r, i, payload) for r, images in enumerate(payloads) for i, payload in enumerate(images)]
        batches = [np.empty((len(images), 3, self.spec.size, self.spec.size), np.float32) for images in payloads]
        outcomes = [_Outcome(len(p) if isinstance(p, (bytes, bytearray)) else 0) for _, _, p in flat]

        def work(k: int) -> None:
            r, i, payload = flat[k]
            self._decode(payload, batches[r], i, outcomes[k])

        if self.pool is not None and len(flat) > 1:
            list(self.pool.map(work, range(len(flat))))
        else:
            for k in range(len(flat)):
                work(k)
        self.metrics.record(outcomes)
        errors: list[Exception | None] = [None] * len(requests)
        for (r, i, _), outcome in zip(flat, outcomes, strict=True):
            if outcome.error is not None and errors[r] is None:
                where = f"image {i} of {len(payloads[r])}: " if len(payloads[r]) > 1 else ""
                invalid = isinstance(outcome.error, self._errors.InvalidImageError)
                errors[r] = self._errors.InvalidImageError(f"{where}{outcome.error}") if invalid else outcome.error
        return [self._response(batch, error) for batch, error in zip(batches, errors, strict=True)]

    @staticmethod
    def _payloads(request) -> list:
        images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()  # object [B, 1] of bytes
        return list(images.reshape(images.shape[0], -1)[:, 0])

    def _decode(self, payload, batch: np.ndarray, index: int, outcome: _Outcome) -> None:
        """Preprocess one image into ``batch[index]`` (runs on the pool); failures land in ``outcome``."""
        started = time.perf_counter()
        try:
            if not isinstance(payload, (bytes, bytearray)):
                raise self._errors.InvalidImageError(f"expected encoded bytes, got {type(payload).__name__}")
            data = bytes(payload)
            batch[index] = self._pre.preprocess(data, self.spec)
            outcome.seconds = time.perf_counter() - started
            outcome.pixels = self._pixel_count(data)
        except self._errors.InvalidImageError as exc:
            outcome.error, outcome.reason = exc, refusal_reason(str(exc))
        except Exception as exc:  # noqa: BLE001 - whatever happened belongs to this request only
            outcome.error, outcome.reason = exc, "other"

    def _pixel_count(self, data: bytes) -> int:
        """Width x height from the header of bytes that just decoded (a header parse, no pixels)."""
        try:
            with self._pre.Image.open(io.BytesIO(data), formats=self._pre.ALLOWED_FORMATS) as image:
                return int(image.size[0]) * int(image.size[1])
        except Exception:  # noqa: BLE001 - a metric is never worth failing an image that decoded
            return 0

    def _response(self, batch: np.ndarray, error: Exception | None):
        if error is None:
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("pixel_values", batch)])
        if isinstance(error, self._errors.InvalidImageError):
            # the caller's input: INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT), so it is never retried as a fault
            triton_error = pb_utils.TritonError(f"invalid image: {error}", pb_utils.TritonError.INVALID_ARG)
        else:
            # our own bug: INTERNAL (HTTP 500), and the message says so
            triton_error = pb_utils.TritonError(f"preprocessing failed: {error.__class__.__name__}: {error}")
        return pb_utils.InferenceResponse(output_tensors=[], error=triton_error)

    def finalize(self) -> None:
        """Stop the decode pool and drop the metrics."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        self.metrics.close()
