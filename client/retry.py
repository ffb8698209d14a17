"""When a failed call is sent again: the retry decisions both detectors share, with no I/O and no waiting.

A detector runs a call and waits in its own way (``time.sleep`` or ``await asyncio.sleep``); everything
else is decided here::

    attempts = Attempts(settings, "infer", target)
    for delay in attempts:
        wait(delay)
        try:
            return call()
        except Exception as exc:
            attempts.failed(exc)        # raises at once when another try cannot help
    raise attempts.exhausted()
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable, Iterator
from typing import Any

from aigi.errors import (
    ClientError,
    ModelNotReadyError,
    RequestRejectedError,
    RequestTimeoutError,
    ServerUnreachableError,
)

logger = logging.getLogger(__name__)

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


class Attempts:
    """The attempts of one call: the delay before each, and what each failure means.

    Args:
        settings: the detector (``url``, ``model``, ``timeout``, ``retries``, ``backoff``).
        what: ``metadata`` or ``infer`` (see :func:`final_error`).
        target: the model the call goes to.
        on_retry: called once per failure that will be retried (the detectors count them).
    """

    def __init__(self, settings: Any, what: str, target: str, on_retry: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.what = what
        self.target = target
        self.on_retry = on_retry
        self.attempt = 0
        self.kind = RETRY
        self.last: BaseException | None = None

    def __iter__(self) -> Iterator[float]:
        """Seconds to wait before each attempt: 0 before the first, then :func:`backoff_delay`."""
        for attempt in range(self.settings.retries + 1):
            self.attempt = attempt
            yield 0.0 if attempt == 0 else backoff_delay(attempt - 1, self.settings.backoff)

    def failed(self, exc: BaseException) -> None:
        """Record a failed attempt.

        Raises:
            ClientError: the failure is final (rejected, timed out, or a metadata call to a model that is not ready).
            Exception: ``exc`` itself when it is not a server condition at all (a bug).
        """
        self.kind, self.last = classify(exc), exc
        if (error := final_error(self.kind, self.what, exc, self.settings, self.target)) is not None:
            raise error from exc
        logger.debug(
            "%s: no answer from %s (%s); attempt %d", self.what, self.settings.url, describe(exc), self.attempt
        )
        if self.attempt < self.settings.retries and self.on_retry is not None:
            self.on_retry()

    def exhausted(self) -> ClientError:
        """The error to raise after the last attempt failed."""
        assert self.last is not None, "exhausted() before any attempt failed"
        attempts = self.settings.retries + 1
        return exhausted_error(self.kind, self.settings.url, self.target, attempts, self.last)
