"""The protocol-level pieces both detectors share: tensors in, results out, and what an error means.

Sync (:mod:`aigi.client.detector`) and asyncio (:mod:`aigi.client.async_detector`) differ only in
how they wait; building requests, reading responses and deciding whether to retry live here once.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from aigi.client.model_info import ModelInfo
from aigi.client.result import Result
from aigi.errors import (
    ClientError,
    ModelNotReadyError,
    RequestRejectedError,
    RequestTimeoutError,
    ServerUnreachableError,
)

PROTOCOLS = ("grpc", "http")
PREPROCESS_MODES = ("server", "client")
OUTPUTS = ("probs", "p_fake")
MAX_BACKOFF_S = 5.0

RETRY = "retry"
NOT_READY = "not_ready"
REJECTED = "rejected"
TIMEOUT = "timeout"

# gRPC status names / HTTP codes that mean "nobody is answering right now", worth another try
_RETRY_STATUSES = {
    "StatusCode.UNAVAILABLE",
    "StatusCode.CANCELLED",
    "StatusCode.RESOURCE_EXHAUSTED",
    "502",
    "503",
    "504",
}
# the server took the request and did not answer in time: slow, not down, so a retry would only add load
_TIMEOUT_STATUSES = {"StatusCode.DEADLINE_EXCEEDED"}
_NOT_READY_STATUSES = {"StatusCode.NOT_FOUND", "404"}
_NOT_READY_WORDS = ("unknown model", "not ready", "no available version", "is not found")


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Validate an option against its choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def normalize_url(url: str) -> str:
    """``host:port`` as tritonclient wants it (a scheme such as ``http://`` is dropped)."""
    url = url.strip()
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme) :]
    return url.rstrip("/")


def client_module(protocol: str, aio: bool = False) -> ModuleType:
    """The tritonclient module for a protocol (imported here, so picking one never loads the other)."""
    check_choice("protocol", protocol, PROTOCOLS)
    if protocol == "grpc":
        if aio:
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.grpc as module
    elif aio:
        import tritonclient.http.aio as module
    else:
        import tritonclient.http as module
    return module


def build_request(module: ModuleType, payloads: Sequence[bytes | np.ndarray], client_side: bool) -> tuple[list, list]:
    """Inputs and requested outputs for one batch: encoded bytes ``[B, 1]`` or ``pixel_values`` ``[B, 3, H, W]``."""
    if client_side:
        data = np.ascontiguousarray(np.stack(payloads), dtype=np.float32)
        tensor = module.InferInput("pixel_values", list(data.shape), "FP32")
    else:
        data = np.empty((len(payloads), 1), dtype=object)
        data[:, 0] = list(payloads)
        tensor = module.InferInput("image", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return [tensor], [module.InferRequestedOutput(name) for name in OUTPUTS]


def response_version(result: Any) -> str:
    """The version of the model that answered, from an ``InferResult`` of either protocol."""
    response = result.get_response()
    if isinstance(response, dict):
        return str(response.get("model_version", ""))
    return str(getattr(response, "model_version", ""))


def parse_results(result: Any, info: ModelInfo, model: str, sources: Sequence[str]) -> list[Result]:
    """One :class:`Result` per image of a successful response."""
    probs = np.asarray(result.as_numpy("probs"), dtype=np.float32).reshape(len(sources), -1)
    raw_p_fake = result.as_numpy("p_fake")
    p_fake = 1.0 - probs[:, 0] if raw_p_fake is None else np.asarray(raw_p_fake, dtype=np.float32).reshape(-1)
    if probs.shape[1] != len(info.labels):
        raise ClientError(f"model {model!r} returned {probs.shape[1]} scores for {len(info.labels)} labels")
    version = response_version(result)
    results = []
    for source, row, fake in zip(sources, probs, p_fake, strict=True):
        results.append(
            Result(
                source=source,
                label=info.labels[int(np.argmax(row))],
                p_fake=float(fake),
                is_fake=bool(fake >= info.threshold),
                scores={label: float(score) for label, score in zip(info.labels, row, strict=True)},
                model=model,
                model_version=version,
            )
        )
    return results


def _status(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    return str(status() if callable(status) else status or "")


def classify(exc: BaseException) -> str:
    """What a failed call means, and so whether to send it again.

    Returns:
        ``retry`` (nobody answered: refused, reset, unavailable), ``timeout`` (a deadline expired: the server is
        slow, not down, so it is not retried), ``not_ready`` (the model is not loaded) or ``rejected`` (the
        server said no).

    Raises:
        The exception itself, when it is none of these (a bug, not a server condition).
    """
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status, message = _status(exc), str(exc.message() or "").lower()
        if status in _TIMEOUT_STATUSES:
            return TIMEOUT
        if status in _NOT_READY_STATUSES or any(words in message for words in _NOT_READY_WORDS):
            return NOT_READY
        if status in _RETRY_STATUSES or not status and "connect" in message:
            return RETRY
        return REJECTED
    if isinstance(exc, (TimeoutError, socket.timeout, asyncio.TimeoutError)) or type(exc).__name__ == "Timeout":
        return TIMEOUT  # gevent's Timeout (HTTP client) is matched by name: importing gevent here is not wanted
    if isinstance(exc, (OSError, ConnectionError)):
        return RETRY
    if _is_transport_error(exc):
        return RETRY
    raise exc


def _is_transport_error(exc: BaseException) -> bool:
    # gevent's Timeout and aiohttp's errors do not derive from OSError; match them by module, not import
    module = type(exc).__module__ or ""
    return module.startswith(("gevent", "aiohttp", "geventhttpclient", "grpc"))


def describe(exc: BaseException) -> str:
    """One line for an exception from tritonclient or the transport below it."""
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    status = _status(exc)
    return f"{text} ({status})" if status else f"{text or type(exc).__name__}"


def backoff_delay(attempt: int, base: float) -> float:
    """Exponential backoff with jitter: about ``base * 2**attempt`` seconds, at most :data:`MAX_BACKOFF_S`."""
    return min(MAX_BACKOFF_S, base * (2**attempt)) * (0.5 + random.random() / 2)


def exhausted_error(kind: str, url: str, model: str, attempts: int, last: BaseException) -> ClientError:
    """The error to raise once retries are spent."""
    if kind == NOT_READY:
        return ModelNotReadyError(f"model {model!r} at {url} is not ready after {attempts} attempts: {describe(last)}")
    return ServerUnreachableError(f"no Triton server answered at {url} after {attempts} attempts: {describe(last)}")


def final_error(kind: str, what: str, exc: BaseException, settings: Any, target: str) -> ClientError | None:
    """The error to raise at once for a failed call, or ``None`` when the call is worth another try.

    Args:
        kind: :func:`classify`'s verdict.
        what: ``metadata`` or ``infer``; a model that is not ready fails a metadata call at once, while an
            inference is retried (a restarted server answers before its models are loaded).
        exc: the exception of the call.
        settings: the detector (its ``url``, ``model`` and ``timeout``).
        target: the model the call went to.
    """
    if kind == REJECTED:
        return rejected_error(target, exc)
    if kind == TIMEOUT:
        return timeout_error(settings.url, target, settings.timeout, exc)
    if kind == NOT_READY and what == "metadata":
        return ModelNotReadyError(f"model {settings.model!r} is not available at {settings.url}: {describe(exc)}")
    return None


def timeout_error(url: str, model: str, timeout: float, exc: BaseException) -> RequestTimeoutError:
    """The error for a request that got no answer before its deadline."""
    return RequestTimeoutError(
        f"model {model!r} at {url} did not answer within {timeout:g} s (server busy?); not retried: {describe(exc)}"
    )


def rejected_error(model: str, exc: BaseException) -> RequestRejectedError:
    """The error for a request the server refused or failed."""
    return RequestRejectedError(f"model {model!r} rejected the request: {describe(exc)}")
