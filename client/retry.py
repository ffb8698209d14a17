"""When a failed call is sent again, and to which replica: the decisions both detectors share, with no I/O.

A detector runs a call and waits in its own way (``time.sleep`` or ``await asyncio.sleep``); everything
else is decided here and in :class:`aigi.client.replicas.Replicas`::

    attempts = Attempts(settings, "infer", target)
    while (step := attempts.next_step(time.monotonic())) is not None:
        if step.address is None:            # no replica is up: wait, then ask again
            sleep(step.delay)
            continue
        try:
            result = call(client_for(step.address))
        except Exception as exc:
            attempts.failed(exc, time.monotonic())   # raises at once when another try cannot help
        else:
            attempts.answered()
            return result
    raise attempts.exhausted()

Retries are bounded by time: unanswered calls (refused, reset, UNAVAILABLE) are sent again until
``retry_timeout`` seconds have passed since the first try, to the next replica at once when one is up, else
after the cool-down of the replica that comes back first (exponential backoff with jitter, at most
:data:`MAX_BACKOFF_S`). ``retries``, when set, also caps how many times a call is sent again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aigi.errors import (
    ClientError,
    ModelNotReadyError,
    RequestRejectedError,
    RequestTimeoutError,
    ServerBusyError,
    ServerUnreachableError,
)

if TYPE_CHECKING:
    from aigi.client.replicas import Replicas

logger = logging.getLogger(__name__)

# the longest wait between two tries of one replica: short, so a server that is back is found within 2 s
MAX_BACKOFF_S = 2.0

RETRY = "retry"
NOT_READY = "not_ready"
REJECTED = "rejected"
TIMEOUT = "timeout"
TLS = "tls"
BUSY = "busy"
# Triton's words when a model's queue policy refuses a request (aigi export --max-queue-size, --queue-timeout-ms)
_BUSY_WORDS = ("exceeds maximum queue size", "request timeout expired")

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
# gRPC's words for a TLS handshake that failed (wrong CA, no client certificate, a plaintext server)
_TLS_WORDS = ("ssl", "tls", "handshake", "certificate")


class ModelNotReadyReplyError(Exception):
    """A replica answered that the model is not ready (``is_model_ready`` said no)."""


def _status(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    return str(status() if callable(status) else status or "")


def classify(exc: BaseException) -> str:
    """What a failed call means, and so whether to send it again.

    Returns:
        ``retry`` (nobody answered: refused, reset, unavailable), ``busy`` (a queue policy refused it: back off and
        retry, elsewhere if possible), ``timeout`` (a deadline expired: the server is
        slow, not down, so it is not retried), ``not_ready`` (the model is not loaded), ``tls`` (the TLS handshake
        failed: a certificate, or a plaintext server) or ``rejected`` (the server said no, a restricted API
        included).

    Raises:
        The exception itself, when it is none of these (a bug, not a server condition).
    """
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, ModelNotReadyReplyError):
        return NOT_READY
    if isinstance(exc, InferenceServerException):
        status, message = _status(exc), str(exc.message() or "").lower()
        if status in _TIMEOUT_STATUSES:
            return TIMEOUT
        if status in _NOT_READY_STATUSES or any(words in message for words in _NOT_READY_WORDS):
            return NOT_READY
        if "restricted" in message:  # Triton refuses a restricted API without its header as UNAVAILABLE
            return REJECTED
        if any(words in message for words in _BUSY_WORDS):
            return BUSY  # answered, but overloaded: back off from this replica, try another
        if status == "StatusCode.UNAVAILABLE" and any(word in message for word in _TLS_WORDS):
            return TLS
        if status in _RETRY_STATUSES or not status and "connect" in message:
            return RETRY
        return REJECTED
    if isinstance(exc, (TimeoutError, socket.timeout, asyncio.TimeoutError)) or type(exc).__name__ == "Timeout":
        return TIMEOUT  # gevent's Timeout (HTTP client) is matched by name: importing gevent here is not wanted
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):
        return TLS  # aiohttp's TLS errors derive from these too
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
    return min(MAX_BACKOFF_S, base * (2 ** min(attempt, 32))) * (0.5 + random.random() / 2)


def timeout_error(url: str, model: str, timeout: float, exc: BaseException) -> RequestTimeoutError:
    """The error for a request that got no answer before its deadline."""
    return RequestTimeoutError(
        f"model {model!r} at {url} did not answer within {timeout:g} s (server busy?); not retried: {describe(exc)}"
    )


def rejected_error(model: str, exc: BaseException) -> RequestRejectedError:
    """The error for a request the server refused or failed."""
    return RequestRejectedError(f"model {model!r} rejected the request: {describe(exc)}")


@dataclass(frozen=True)
class Step:
    """What a detector does next for one call: send it to ``address`` now, or (``address`` ``None``) wait ``delay``
    seconds and ask again."""

    address: str | None
    delay: float = 0.0


class Attempts:
    """The tries of one call: which replica each goes to, the waits between them, and what each failure means.

    Args:
        settings: the detector (``url``, ``model``, ``timeout``, ``retry_timeout``, ``retries``, ``backoff``).
        what: ``metadata`` or ``infer``; a model that is not ready fails a metadata call once no other replica is
            left to ask, while an inference is retried (a restarted server answers before its models are loaded).
        target: the model the call goes to.
        replicas: where calls go (the detector's :class:`aigi.client.replicas.Replicas`).
        on_retry: called once per re-send (the detectors count them).
    """

    def __init__(
        self,
        settings: Any,
        what: str,
        target: str,
        replicas: Replicas,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.what = what
        self.target = target
        self.replicas = replicas
        self.on_retry = on_retry
        self.tries = 0
        self.tried: set[str] = set()
        self.kind = RETRY
        self.last: BaseException | None = None
        self.address: str | None = None  # of the try in progress (then of the last one)
        self.sent_at = 0.0
        self.started: float | None = None
        self.deadline = 0.0
        self._waits = 0
        self._waited_for_deadline = False
        self._last_chance = False

    def next_step(self, now: float) -> Step | None:
        """Where the next try goes, or how long to wait first; ``None`` when no try is left (see :meth:`exhausted`).

        A replica that is up gets the try at once, round-robin; when none is, the call waits for the first one to
        leave its cool-down. Once ``retry_timeout`` has passed, only replicas this call has not tried yet are
        tried, plus one last try when the call waited until its deadline.
        """
        if self.started is None:
            self.started, self.deadline = now, now + float(self.settings.retry_timeout)
        retries = self.settings.retries
        if self.tries and retries is not None and self.tries > retries:
            return None
        address = self.replicas.pick(now) if now < self.deadline or not self.tries else None
        if address is None and now >= self.deadline:
            address = self.replicas.pick(now, exclude=self.tried)
            if address is None and (self._waited_for_deadline or not self.tries) and not self._last_chance:
                self._last_chance = True
                address = self.replicas.soonest()
            if address is None:
                return None
        if address is not None:
            if self.tries and self.on_retry is not None:
                self.on_retry()
            self.tries += 1
            self.tried.add(address)
            self.address, self.sent_at = address, now
            return Step(address)
        wake = self.replicas.next_up(now)
        if wake is None:  # no replica known: a dns:/// name that has not resolved (yet)
            wake = now + backoff_delay(self._waits, self.settings.backoff)
        self._waits += 1
        self._waited_for_deadline = wake >= self.deadline
        return Step(None, max(0.0, min(wake, self.deadline) - now))

    def answered(self) -> None:
        """The try in progress got an answer: its replica is up."""
        if self.address is not None:
            self.replicas.mark_up(self.address, self.sent_at)

    def failed(self, exc: BaseException, now: float) -> None:
        """Record the failure of the try in progress (its replica goes into a cool-down when it did not answer).

        Raises:
            ClientError: the failure is final: rejected, timed out, or (once no other replica is left to ask) a TLS
                failure or a metadata call to a model that is not ready.
            Exception: ``exc`` itself when it is not a server condition at all (a bug).
        """
        self.kind, self.last = classify(exc), exc
        address = self.address or "?"
        if self.kind == REJECTED:
            self.answered()
            raise rejected_error(self.target, exc) from exc
        if self.kind == TIMEOUT:
            raise timeout_error(address, self.target, self.settings.timeout, exc) from exc
        if self.kind == TLS and self.replicas.has_answered(address):
            self.kind = RETRY  # a handshake cut short by a replica that answered before: it is restarting
        cooldown = self.replicas.mark_down(address, now, self.sent_at, self.settings.backoff)
        # a TLS failure of a replica that never answered is a certificate or a plaintext server: another try at it
        # would not help, so the call fails once no other replica is left to ask
        final = self.kind == TLS or self.kind == NOT_READY and self.what == "metadata"
        if final and self.replicas.pick(now, exclude=self.tried, advance=False) is None:
            raise self._final_error(exc) from exc
        logger.debug(
            "%s: no answer from %s (%s); try %d, cool-down %.2f s",
            self.what,
            address,
            describe(exc),
            self.tries,
            cooldown,
        )

    def _final_error(self, exc: BaseException) -> ClientError:
        where = ", ".join(sorted(self.tried)) or self.settings.url
        if self.kind == TLS:
            return ServerUnreachableError(f"TLS with the Triton server at {where} failed: {describe(exc)}")
        return ModelNotReadyError(f"model {self.settings.model!r} is not available at {where}: {describe(exc)}")

    def exhausted(self) -> ClientError:
        """The error to raise once :meth:`next_step` returned ``None``."""
        url = self.settings.url
        if self.last is None:
            why = self.replicas.resolve_error or "no replica known"
            return ServerUnreachableError(f"no Triton server to send to at {url}: {why}")
        spent = f"after {self.tries} attempts"
        detail = f"{describe(self.last)} (last at {self.address})"
        if self.kind == NOT_READY:
            return ModelNotReadyError(f"model {self.target!r} at {url} is not ready {spent}: {detail}")
        if self.kind == BUSY:
            return ServerBusyError(f"model {self.target!r} at {url} stayed busy (queue full) {spent}: {detail}")
        return ServerUnreachableError(f"no Triton server answered at {url} {spent}: {detail}")
