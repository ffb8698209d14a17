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
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from aigi.client import protocol as wire
from aigi.client.images import Prepared, prepare, windows
from aigi.client.model_info import ModelInfo
from aigi.client.result import Result
from aigi.errors import ClientError, InvalidImageError, ModelNotReadyError, RequestRejectedError
from aigi.preprocessing import ImageInput, PreprocessSpec

logger = logging.getLogger(__name__)


@dataclass
class DetectorStats:
    """Counters over the detector's life (updated under a lock; read them any time).

    Attributes:
        requests: inference requests sent, retries included.
        retries: calls (inference or metadata) sent again after no server answered.
        rejected: requests the server refused or failed.
        split: rejected multi-image requests re-sent one image at a time.
        images: images passed to ``detect``.
        image_errors: images that got a ``Result`` with ``error`` set.
    """

    requests: int = 0
    retries: int = 0
    rejected: int = 0
    split: int = 0
    images: int = 0
    image_errors: int = 0

    def to_dict(self) -> dict[str, int]:
        """JSON-ready form."""
        return asdict(self)


class DetectorSettings:
    """The settings :class:`Detector` and :class:`aigi.client.AsyncDetector` share, checked once."""

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        protocol: str = "grpc",
        model: str = "aigi",
        preprocess: str = "server",
        timeout: float = 30.0,
        retries: int = 8,
        backoff: float = 0.2,
        max_in_flight: int = 4,
        raise_errors: bool = False,
    ) -> None:
        self.url = wire.normalize_url(url)
        self.protocol = wire.check_choice("protocol", protocol, wire.PROTOCOLS)
        self.model = model
        self.preprocess = wire.check_choice("preprocess", preprocess, wire.PREPROCESS_MODES)
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.max_in_flight = max(1, int(max_in_flight))
        self.raise_errors = raise_errors
        self.stats = DetectorStats()
        self._target = model


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` with retries on unanswered calls; not-ready and rejections are raised as they come."""
        last: BaseException | None = None
        kind = wire.RETRY
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(wire.backoff_delay(attempt - 1, self.backoff))
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classify() re-raises what it does not know
                kind = wire.classify(exc)
                last = exc
                if (error := wire.final_error(kind, what, exc, self, self._target)) is not None:
                    raise error from exc
                logger.debug("%s: no answer from %s (%s); attempt %d", what, self.url, wire.describe(exc), attempt)
                if attempt < self.retries:
                    with self._lock:
                        self.stats.retries += 1
        assert last is not None
        raise wire.exhausted_error(kind, self.url, self._target, self.retries + 1, last) from last

    def _timeout_kwargs(self) -> dict[str, Any]:
        return {"client_timeout": self.timeout} if self.protocol == "grpc" else {}

    @property
    def info(self) -> ModelInfo:
        """The served model's labels, threshold, batch limit and preprocessing (read once, on first use).

        Raises:
            ServerUnreachableError: no server answered at ``url`` (after retries).
            ModelNotReadyError: the server does not serve ``model`` (or its network model), or not yet.
        """
        if self._info is None:
            self._info = self._load_info()
        return self._info

    def _load_info(self) -> ModelInfo:
        client = self._client()
        info = self._read_model(client, self.model)
        if self.preprocess == "client":
            if not info.network_model or info.preprocessing is None:
                raise ClientError(
                    f"model {self.model!r} names no 'network_model' and 'preprocessing' in its config parameters; "
                    "use preprocess='server'"
                )
            network_config, network_version = self._read_config(client, info.network_model)
            self._target = info.network_model
            info = ModelInfo(
                name=info.network_model,
                labels=info.labels,
                threshold=info.threshold,
                max_batch_size=min(info.max_batch_size, ModelInfo.batch_limit(network_config)),
                network_model=info.network_model,
                preprocessing=info.preprocessing,
                version=network_version,
            )
        logger.debug("model info: %s", info)
        return info

    def _read_model(self, client: Any, name: str) -> ModelInfo:
        config, version = self._read_config(client, name)
        return ModelInfo.from_config(name, config, version=version)

    def _read_config(self, client: Any, name: str) -> tuple[dict[str, Any], str]:
        """A ready model's config (as JSON) and newest version."""
        kwargs = self._timeout_kwargs()
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
        for window in windows(as_iterable(images), info.max_batch_size * self.max_in_flight):
            items = [prepare(image, index, local_spec, limits) for index, image in window]
            local_failures.update(item.source for item in items if item.error)
            chunks = split_chunks(items, info.max_batch_size)
            if len(chunks) <= 1 or self.max_in_flight == 1:
                answered = [self._run_chunk(chunk) for chunk in chunks]
            else:
                answered = list(self._executor().map(self._run_chunk, chunks))
            final.extend(assemble(items, chunks, answered))
        failures = [result for result in final if result.error]
        with self._lock:
            self.stats.images += len(final)
            self.stats.image_errors += len(failures)
        if failures and (self.raise_errors if raise_errors is None else raise_errors):
            raise first_error(failures, local_failures)
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
            with self._lock:
                self.stats.rejected += 1
                self.stats.split += len(chunk) > 1
            if len(chunk) == 1:
                return [Result(source=chunk[0].source, model=self._target, error=str(exc))]
            logger.debug("request of %d images rejected (%s); retrying one by one", len(chunk), exc)
            return [result for item in chunk for result in self._run_chunk([item])]

    def _infer(self, chunk: list[Prepared]) -> list[Result]:
        client = self._client()
        inputs, outputs = wire.build_request(
            self._module, [item.payload for item in chunk], client_side=self.preprocess == "client"
        )

        def send() -> Any:
            with self._lock:
                self.stats.requests += 1
            return client.infer(self._target, inputs, outputs=outputs, **self._timeout_kwargs())

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


def newest_version(versions: list[str]) -> str:
    """The highest of Triton's version strings (numbers, compared as numbers)."""
    return max((str(v) for v in versions), key=lambda v: (len(v), v), default="")


def as_iterable(images: Iterable[ImageInput] | ImageInput) -> Iterable[ImageInput]:
    """The images of a ``detect`` call: one image (a path, bytes, an array, a PIL image) becomes a list of one."""
    single = (str, Path, bytes, bytearray, memoryview, np.ndarray, Image.Image)
    if isinstance(images, single) or not isinstance(images, Iterable):
        return [images]  # type: ignore[list-item]
    return images


def split_chunks(items: list[Prepared], size: int) -> list[list[Prepared]]:
    """The images that are ready to send, in requests of at most ``size``."""
    ready = [item for item in items if item.error is None]
    return [ready[start : start + size] for start in range(0, len(ready), size)]


def assemble(items: list[Prepared], chunks: list[list[Prepared]], answered: list[list[Result]]) -> list[Result]:
    """One result per item, in the items' order: local failures as they are, the rest from the answers."""
    by_index = {item.index: Result(source=item.source, error=item.error) for item in items if item.error}
    for chunk, results in zip(chunks, answered, strict=True):
        for item, result in zip(chunk, results, strict=True):
            by_index[item.index] = result
    return [by_index[item.index] for item in items]


def first_error(failures: list[Result], local_failures: set[str]) -> Exception:
    """The exception ``raise_errors`` raises: local decode failures are invalid images, the rest were rejected."""
    first = failures[0]
    message = f"{first.source}: {first.error}" + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
    return InvalidImageError(message) if first.source in local_failures else RequestRejectedError(message)
