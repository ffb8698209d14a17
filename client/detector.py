"""The synchronous client: ``Detector(url).detect(images) -> list[Result]``.

Before the first request the detector reads the served model's config (labels, threshold,
max_batch_size, network model, preprocessing spec). ``detect`` then splits the images into
requests of at most ``max_batch_size`` and keeps up to ``max_in_flight`` of them in flight on a
small thread pool, spread round-robin over the replicas (one endpoint, a list, or a ``dns:///`` name
resolved to its addresses). A request that finds nobody answering (connection refused or reset,
UNAVAILABLE) moves to the next replica at once; the replica sits out a short cool-down that doubles per
failure in a row. Calls are retried so for up to ``retry_timeout`` seconds; then the call raises
:class:`~aigi.errors.ServerUnreachableError`.

Bad images never fail the whole call: Triton fails a whole request when one image in it is bad,
so a rejected request of several images is retried one image at a time, and only the images the
server rejects on their own get a :class:`Result` with ``error`` set. With ``raise_errors=True``
``detect`` raises instead (:class:`~aigi.errors.InvalidImageError` for images that could not be
read or decoded locally, :class:`~aigi.errors.RequestRejectedError` for images the server refused),
after every image has been tried.

The detector is thread-safe: threads may share one.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

from aigi.client import protocol as wire
from aigi.client.core import (
    DetectorSettings,
    DetectorStats,
    as_iterable,
    assemble,
    client_side_info,
    finish,
    network_model_of,
    newest_version,
    payloads,
    prepare_window,
    rejected_result,
    split_chunks,
)
from aigi.client.images import Prepared, windows
from aigi.client.model_info import ModelInfo
from aigi.client.replicas import Endpoint, addresses_from_addrinfo
from aigi.client.result import Result
from aigi.client.retry import Attempts, ModelNotReadyReplyError
from aigi.errors import RequestRejectedError
from aigi.preprocessing import ImageInput, PreprocessSpec

logger = logging.getLogger(__name__)

__all__ = ["Detector", "DetectorSettings", "DetectorStats"]


class Detector(DetectorSettings):
    """Detect generated images through Triton servers (gRPC or HTTP), spread over their replicas.

    Args:
        url: where the servers are: ``host:port`` of a gRPC (8001) or HTTP (8000) endpoint, a URL
            (``https://`` and ``grpcs://`` mean TLS, ``http://`` and ``grpc://`` plaintext), ``dns:///name:port``
            (a Kubernetes headless Service: one replica per address the name resolves to, resolved again every
            30 s and when every replica failed), or several of these as a list or comma-separated.
        protocol: ``grpc`` or ``http``.
        model: the ensemble to call (``aigi`` unless exported with ``--name``).
        preprocess: ``server`` sends encoded image bytes to the ensemble; ``client`` preprocesses
            locally with :func:`aigi.preprocessing.preprocess` and sends ``pixel_values`` to the network model.
        timeout: seconds one request (or metadata call) may take before it counts as unanswered; a request
            that timed out is never re-sent (the server is slow, not down) and raises ``RequestTimeoutError``.
        retry_timeout: seconds during which a call nobody answered (refused, reset, unavailable) is sent again:
            at once to another replica when one is up, else after a backoff. The default 30 rides out a server
            restart of 10 s with margin; 0 sends each call once (plus a try of each other replica).
        retries: an optional cap on how many times one call is re-sent (failovers included); ``None``: no cap,
            only ``retry_timeout`` bounds the retries.
        backoff: first cool-down of a replica that stopped answering, in seconds; it doubles per failure in a
            row (with jitter), up to 2 s, so a server that is back is found within about 2 s.
        max_in_flight: requests outstanding at once.
        raise_errors: default of ``detect(raise_errors=...)``.
        ssl: use TLS (implied by an ``https://`` or ``grpcs://`` URL or a certificate option; a plaintext
            ``http://`` / ``grpc://`` URL with ``ssl=True`` is a ``SettingsError``).
        root_certificates: CA file (PEM) to verify the servers with; the system's CAs when ``None``.
        private_key, certificate_chain: the client's key and certificate files (PEM), for mutual TLS.
        headers: sent with every request (for example to an authenticating proxy); over gRPC names are lowercased.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._module = wire.client_module(self.protocol)
        self._client_kwargs = wire.client_kwargs(self)
        self._lock = threading.Lock()
        # (thread, address) -> client: gRPC clients are shared by all threads (thread 0), HTTP ones are per thread
        self._clients: dict[tuple[int, str], Any] = {}
        self._retired: list[tuple[float, Any]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._info: ModelInfo | None = None

    # -- connections -----------------------------------------------------------------------------

    def _client(self, address: str) -> Any:
        """The calling thread's tritonclient for one replica."""
        key = (0 if self.protocol == "grpc" else threading.get_ident(), address)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = self._module.InferenceServerClient(address, **self._client_kwargs)
            return client

    def _refresh(self) -> None:
        """Resolve the ``dns:///`` names when due, and close the clients of replicas gone long enough ago."""
        now = time.monotonic()
        self._close_retired(now)
        names = self.replicas.claim_resolve(now)
        if not names:
            return
        found: dict[Endpoint, list[str] | BaseException] = {}
        for name in names:
            host, port = name.host_port()
            try:
                found[name] = addresses_from_addrinfo(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), port)
            except OSError as exc:
                found[name] = exc
        gone = set(self.replicas.resolved(found))
        if gone:
            logger.info("replicas gone from DNS: %s; now %s", ", ".join(sorted(gone)), self.replicas.addresses)
            with self._lock:
                for key in [key for key in self._clients if key[1] in gone]:
                    self._retired.append((now, self._clients.pop(key)))

    def _close_retired(self, now: float) -> None:
        # a call that picked a replica before it left DNS may still use its client, for at most `timeout`
        if not self._retired:
            return
        with self._lock:
            due = [client for since, client in self._retired if now - since > self.timeout + 5]
            self._retired = [(since, client) for since, client in self._retired if now - since <= self.timeout + 5]
        _close_all(due)

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(client)`` on a replica, failing over, waiting and retrying as :class:`Attempts` decides."""
        attempts = Attempts(self, what, self._target, self.replicas, on_retry=lambda: self.count(retries=1))
        while True:
            self._refresh()
            step = attempts.next_step(time.monotonic())
            if step is None:
                raise attempts.exhausted()
            if step.address is None:
                time.sleep(step.delay)
                continue
            try:
                result = fn(self._client(step.address))
            except Exception as exc:  # noqa: BLE001 - Attempts.failed re-raises what is not a server condition
                attempts.failed(exc, time.monotonic())
            else:
                attempts.answered()
                return result

    @property
    def info(self) -> ModelInfo:
        """The served model's labels, threshold, batch limit and preprocessing (read once, on first use).

        Raises:
            ServerUnreachableError: no server answered at ``url`` (within ``retry_timeout``).
            ModelNotReadyError: no replica serves ``model`` (or its network model), or not yet.
        """
        if self._info is None:
            config, version = self._read_config(self.model)
            info = ModelInfo.from_config(self.model, config, version=version)
            if self.preprocess == "client":
                info = client_side_info(info, *self._read_config(network_model_of(info)))
                self._target = info.name
            logger.debug("model info: %s", info)
            self._info = info
        return self._info

    def _read_config(self, name: str) -> tuple[dict[str, Any], str]:
        """A ready model's config (as JSON) and newest version."""
        kwargs = self.call_kwargs()
        as_json = {"as_json": True} if self.protocol == "grpc" else {}

        def ready(client: Any) -> bool:
            if not client.is_model_ready(name, **kwargs):
                raise ModelNotReadyReplyError(f"model {name!r} is not ready")
            return True

        self._call("metadata", ready)
        config = self._call("metadata", lambda client: client.get_model_config(name, **kwargs, **as_json))
        metadata = self._call("metadata", lambda client: client.get_model_metadata(name, **kwargs, **as_json))
        return config, newest_version(metadata.get("versions") or [])

    # -- detection -------------------------------------------------------------------------------

    def detect(self, images: Iterable[ImageInput] | ImageInput, raise_errors: bool | None = None) -> list[Result]:
        """Classify images; one :class:`Result` per input, in order.

        Images are read and sent a window at a time (``max_batch_size * max_in_flight`` images), so a long
        list of paths, or a generator over a folder, costs the memory of one window.

        Args:
            images: paths, encoded bytes, PIL images or uint8 arrays (mixed is fine), or one of them.
            raise_errors: raise on the first per-image failure (after trying all images) instead of
                returning it in ``Result.error``; defaults to the detector's ``raise_errors``.

        Raises:
            ServerUnreachableError: no server answered (after retries).
            RequestTimeoutError: the server did not answer a request within ``timeout`` (not retried).
            ModelNotReadyError: the model is not loaded.
            InvalidImageError, RequestRejectedError: only with ``raise_errors``.
        """
        info = self.info
        local_spec = info.preprocessing if self.preprocess == "client" else None
        limits = info.preprocessing or PreprocessSpec()
        final: list[Result] = []
        local_failures: set[str] = set()
        for window in windows(as_iterable(images), self.window(info)):
            items = prepare_window(window, local_spec, limits)
            local_failures.update(item.source for item in items if item.error)
            chunks = split_chunks(items, info.max_batch_size)
            if len(chunks) <= 1 or self.max_in_flight == 1:
                answered = [self._run_chunk(chunk) for chunk in chunks]
            else:
                answered = list(self._executor().map(self._run_chunk, chunks))
            final.extend(assemble(items, chunks, answered))
        finish(self, final, local_failures, raise_errors)
        return final

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="aigi-detect")
            return self._pool

    def _run_chunk(self, chunk: list[Prepared]) -> list[Result]:
        """Results for one request's images; a rejected request of several images is re-sent image by image."""
        try:
            return self._infer(chunk)
        except RequestRejectedError as exc:
            self.count(rejected=1, split=int(len(chunk) > 1))
            if len(chunk) == 1:
                return [rejected_result(chunk[0], self._target, exc)]
            logger.debug("request of %d images rejected (%s); retrying one by one", len(chunk), exc)
            return [result for item in chunk for result in self._run_chunk([item])]

    def _infer(self, chunk: list[Prepared]) -> list[Result]:
        inputs, outputs = wire.build_request(
            self._module, payloads(chunk), client_side=self.preprocess == "client", label_ids=self.info.label_ids
        )
        kwargs = self.call_kwargs()

        def send(client: Any) -> Any:
            self.count(requests=1)
            return client.infer(self._target, inputs, outputs=outputs, **kwargs)

        answer = self._call("infer", send)
        return wire.parse_results(answer, self.info, self._target, [item.source for item in chunk])

    # -- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker threads and close the connections."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        with self._lock:
            clients = [*self._clients.values(), *(client for _, client in self._retired)]
            self._clients, self._retired = {}, []
        _close_all(clients)

    def __enter__(self) -> Detector:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _close_all(clients: Iterable[Any]) -> None:
    for client in clients:
        try:
            client.close()
        except Exception as exc:  # noqa: BLE001 - closing is best effort
            logger.debug("closing a client failed: %s", exc)
