"""The synchronous client: ``Detector(url).detect(images) -> list[Result]``.

Before the first request the detector reads the served model's config (labels, threshold,
max_batch_size, network model, preprocessing spec). ``detect`` then splits the images into
requests of at most ``max_batch_size`` and keeps up to ``max_in_flight`` of them in flight on a
small thread pool. A request that finds no server (connection refused, UNAVAILABLE, timeout) is
retried with exponential backoff; when retries run out the call raises
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
from aigi.client.result import Result
from aigi.client.retry import Attempts
from aigi.errors import ModelNotReadyError, RequestRejectedError
from aigi.preprocessing import ImageInput, PreprocessSpec

logger = logging.getLogger(__name__)

__all__ = ["Detector", "DetectorSettings", "DetectorStats"]


class Detector(DetectorSettings):
    """Detect generated images through a Triton server (gRPC or HTTP).

    Args:
        url: ``host:port`` of the server's gRPC (8001) or HTTP (8000) endpoint.
        protocol: ``grpc`` or ``http``.
        model: the ensemble to call (``aigi`` unless exported with ``--name``).
        preprocess: ``server`` sends encoded image bytes to the ensemble; ``client`` preprocesses
            locally with :func:`aigi.preprocessing.preprocess` and sends ``pixel_values`` to the network model.
        timeout: seconds one request (or metadata call) may take before it counts as unanswered.
        retries: how many times a request is re-sent after no server answered (refused, reset, unavailable).
            The default 8 with ``backoff`` 0.2 keeps trying for about 10-20 s, long enough to ride out a
            server restart; a request that timed out is never re-sent (the server is slow, not down).
        backoff: first retry delay in seconds; it doubles per retry (with jitter), up to 5 s.
        max_in_flight: requests outstanding at once.
        raise_errors: default of ``detect(raise_errors=...)``.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._module = wire.client_module(self.protocol)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._clients: list[Any] = []
        self._pool: ThreadPoolExecutor | None = None
        self._info: ModelInfo | None = None

    # -- connection ------------------------------------------------------------------------------

    def _client(self) -> Any:
        """The calling thread's tritonclient (gRPC clients are shared; HTTP ones are one per thread)."""
        if self.protocol == "grpc":
            with self._lock:
                if not self._clients:
                    self._clients.append(self._module.InferenceServerClient(self.url))
                return self._clients[0]
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._module.InferenceServerClient(
                self.url, connection_timeout=self.timeout, network_timeout=self.timeout
            )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn``, sleeping and retrying as :class:`aigi.client.retry.Attempts` decides."""
        attempts = Attempts(self, what, self._target, on_retry=lambda: self.count(retries=1))
        for delay in attempts:
            time.sleep(delay)
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - Attempts.failed re-raises what is not a server condition
                attempts.failed(exc)
        raise attempts.exhausted()

    @property
    def info(self) -> ModelInfo:
        """The served model's labels, threshold, batch limit and preprocessing (read once, on first use).

        Raises:
            ServerUnreachableError: no server answered at ``url`` (after retries).
            ModelNotReadyError: the server does not serve ``model`` (or its network model), or not yet.
        """
        if self._info is None:
            client = self._client()
            config, version = self._read_config(client, self.model)
            info = ModelInfo.from_config(self.model, config, version=version)
            if self.preprocess == "client":
                info = client_side_info(info, *self._read_config(client, network_model_of(info)))
                self._target = info.name
            logger.debug("model info: %s", info)
            self._info = info
        return self._info

    def _read_config(self, client: Any, name: str) -> tuple[dict[str, Any], str]:
        """A ready model's config (as JSON) and newest version."""
        kwargs = self.timeout_kwargs()
        if not self._call("metadata", client.is_model_ready, name, **kwargs):
            raise ModelNotReadyError(f"model {name!r} is not ready at {self.url}")
        if self.protocol == "grpc":
            kwargs["as_json"] = True
        config = self._call("metadata", client.get_model_config, name, **kwargs)
        metadata = self._call("metadata", client.get_model_metadata, name, **kwargs)
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
        client = self._client()
        inputs, outputs = wire.build_request(self._module, payloads(chunk), client_side=self.preprocess == "client")

        def send() -> Any:
            self.count(requests=1)
            return client.infer(self._target, inputs, outputs=outputs, **self.timeout_kwargs())

        answer = self._call("infer", send)
        return wire.parse_results(answer, self.info, self._target, [item.source for item in chunk])

    # -- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker threads and close the connections."""
        with self._lock:
            pool, self._pool = self._pool, None
            clients, self._clients = self._clients, []
        if pool is not None:
            pool.shutdown(wait=True)
        for client in clients:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                logger.debug("closing a client failed: %s", exc)
        self._local = threading.local()

    def __enter__(self) -> Detector:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
