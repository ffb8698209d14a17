"""The I/O-free core of both detectors: settings, counters, model info, chunking and result assembly.

:class:`aigi.client.Detector` (threads) and :class:`aigi.client.AsyncDetector` (asyncio) differ only in
how they wait for the server; what they decide is decided here (and in :mod:`aigi.client.retry`), once,
and tested without a server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from aigi.client import protocol as wire
from aigi.client.images import Prepared, prepare
from aigi.client.model_info import ModelInfo, serves_label_ids
from aigi.client.replicas import Replicas, parse_endpoints, tls_setting
from aigi.client.result import Result
from aigi.errors import ClientError, InvalidImageError, RequestRejectedError, SettingsError
from aigi.preprocessing import ImageInput, PreprocessSpec


@dataclass
class DetectorStats:
    """Counters over the detector's life (the sync detector updates them under a lock; read them any time).

    Attributes:
        requests: inference requests sent, retries included.
        retries: calls (inference or metadata) sent again, to the same replica or another, after none answered.
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


@dataclass(eq=False)
class DetectorSettings:
    """The settings both detectors take, checked once (see :class:`aigi.client.Detector` for each).

    After checking, ``url`` is the endpoints joined by commas, :attr:`endpoints` the parsed ones and
    :attr:`replicas` where requests go.

    Raises:
        SettingsError: ``protocol`` or ``preprocess`` is not one of its choices, an endpoint is malformed, TLS
            settings contradict each other (a plaintext URL with ``ssl=True``), a certificate file is missing,
            or a header cannot be sent.
    """

    url: str | Sequence[str] = "127.0.0.1:8001"
    _: KW_ONLY
    protocol: str = "grpc"
    model: str = "aigi"
    preprocess: str = "server"
    timeout: float = 30.0
    retry_timeout: float = 30.0
    retries: int | None = None
    backoff: float = 0.2
    max_in_flight: int = 4
    raise_errors: bool = False
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    headers: Mapping[str, str] | None = None
    stats: DetectorStats = field(default_factory=DetectorStats, init=False, repr=False)

    def __post_init__(self) -> None:
        self.protocol = wire.check_choice("protocol", self.protocol, wire.PROTOCOLS)
        self.preprocess = wire.check_choice("preprocess", self.preprocess, wire.PREPROCESS_MODES)
        self.endpoints = parse_endpoints(self.url, self.protocol)
        self.url = ",".join(map(str, self.endpoints))
        self.timeout = float(self.timeout)
        self.retry_timeout = max(0.0, float(self.retry_timeout))
        self.retries = None if self.retries is None else max(0, int(self.retries))
        self.backoff = float(self.backoff)
        self.max_in_flight = max(1, int(self.max_in_flight))
        self._check_tls()
        self.headers = wire.check_headers(self.headers, self.protocol)
        self.replicas = Replicas(self.endpoints)
        # the model inference goes to: the ensemble, or the network model under client-side preprocessing
        self._target = self.model
        self._stats_lock = threading.Lock()

    def _check_tls(self) -> None:
        files = {
            "root_certificates": self.root_certificates,
            "private_key": self.private_key,
            "certificate_chain": self.certificate_chain,
        }
        for name, path in files.items():
            if path is not None and not Path(path).is_file():
                raise SettingsError(f"{name}: no such file {path!r}")
        if (self.private_key is None) != (self.certificate_chain is None):
            raise SettingsError("private_key and certificate_chain (a client certificate) go together")
        self.ssl = tls_setting(self.endpoints, bool(self.ssl), any(files.values()))

    def count(self, **increments: int) -> None:
        """Add to :attr:`stats` (thread-safe)."""
        with self._stats_lock:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)

    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of every call: the headers, and the deadline (gRPC takes one per call; HTTP sets it on
        the client)."""
        kwargs: dict[str, Any] = {"headers": dict(self.headers)} if self.headers else {}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        return kwargs

    def window(self, info: ModelInfo) -> int:
        """Images read and sent per step of ``detect``: enough to keep ``max_in_flight`` full requests going."""
        return info.max_batch_size * self.max_in_flight


def network_model_of(info: ModelInfo) -> str:
    """The network model that client-side preprocessing sends ``pixel_values`` to.

    Raises:
        ClientError: the ensemble's config names no network model or preprocessing spec.
    """
    if not info.network_model or info.preprocessing is None:
        raise ClientError(
            f"model {info.name!r} names no 'network_model' and 'preprocessing' in its config parameters; "
            "use preprocess='server'"
        )
    return info.network_model


def client_side_info(info: ModelInfo, network_config: dict[str, Any], network_version: str) -> ModelInfo:
    """The model info for client-side preprocessing: calls go to the ensemble's network model.

    Raises:
        ClientError: the ensemble's config names no network model or preprocessing spec.
    """
    return ModelInfo(
        name=network_model_of(info),
        labels=info.labels,
        threshold=info.threshold,
        max_batch_size=min(info.max_batch_size, ModelInfo.batch_limit(network_config)),
        network_model=info.network_model,
        preprocessing=info.preprocessing,
        version=network_version,
        label_ids=serves_label_ids(network_config),
    )


def newest_version(versions: list[str]) -> str:
    """The highest of Triton's version strings (numbers, compared as numbers)."""
    return max((str(v) for v in versions), key=lambda v: (len(v), v), default="")


def as_iterable(images: Iterable[ImageInput] | ImageInput) -> Iterable[ImageInput]:
    """The images of a ``detect`` call: one image (a path, bytes, an array, a PIL image) becomes a list of one."""
    single = (str, Path, bytes, bytearray, memoryview, np.ndarray, Image.Image)
    if isinstance(images, single) or not isinstance(images, Iterable):
        return [images]
    return images


def prepare_window(
    window: list[tuple[int, ImageInput]], local_spec: PreprocessSpec | None, limits: PreprocessSpec
) -> list[Prepared]:
    """Prepare one window of ``(index, image)`` pairs (see :func:`aigi.client.images.prepare`)."""
    return [prepare(image, index, local_spec, limits) for index, image in window]


def payloads(chunk: list[Prepared]) -> list[bytes | np.ndarray]:
    """The payloads of one request's images (:func:`split_chunks` puts only prepared images in a chunk)."""
    ready = [item.payload for item in chunk if item.payload is not None]
    assert len(ready) == len(chunk), "a chunk holds only prepared images"
    return ready


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


def rejected_result(item: Prepared, model: str, error: Exception) -> Result:
    """The result of one image the server refused on its own."""
    return Result(source=item.source, model=model, error=str(error))


def first_error(failures: list[Result], local_failures: set[str]) -> Exception:
    """The exception ``raise_errors`` raises: local decode failures are invalid images, the rest were rejected."""
    first = failures[0]
    message = f"{first.source}: {first.error}" + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
    return InvalidImageError(message) if first.source in local_failures else RequestRejectedError(message)


def finish(
    settings: DetectorSettings, final: list[Result], local_failures: set[str], raise_errors: bool | None
) -> None:
    """Count a finished ``detect`` call and raise its first failure when asked to."""
    failures = [result for result in final if result.error]
    settings.count(images=len(final), image_errors=len(failures))
    if failures and (settings.raise_errors if raise_errors is None else raise_errors):
        raise first_error(failures, local_failures)
