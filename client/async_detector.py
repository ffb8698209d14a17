"""The asyncio twin of :class:`aigi.client.Detector`, on ``tritonclient.grpc.aio`` / ``tritonclient.http.aio``.

Same options, same results, same error handling (retries with backoff, bad images isolated by
re-sending a rejected request image by image); ``await detector.detect(images)``. Create and use
it inside one event loop, and close it (``async with`` or ``await close()``) in that loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from aigi.client import protocol as wire
from aigi.client.detector import (
    DetectorSettings,
    as_iterable,
    assemble,
    first_error,
    newest_version,
    split_chunks,
)
from aigi.client.images import Prepared, prepare, windows
from aigi.client.model_info import ModelInfo
from aigi.client.result import Result
from aigi.errors import ClientError, ModelNotReadyError, RequestRejectedError
from aigi.preprocessing import ImageInput, PreprocessSpec

logger = logging.getLogger(__name__)


class AsyncDetector(DetectorSettings):
    """Detect generated images through a Triton server, with asyncio.

    Args are those of :class:`aigi.client.Detector`; ``max_in_flight`` bounds the requests
    outstanding at once across all concurrent ``detect`` calls of this detector.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._module = wire.client_module(self.protocol, aio=True)
        self._client_obj: Any = None
        self._semaphore: asyncio.Semaphore | None = None
        self._info: ModelInfo | None = None
        self._info_lock: asyncio.Lock | None = None

    def _client(self) -> Any:
        # aio clients bind to the running loop, so they are made on first use, inside it
        if self._client_obj is None:
            if self.protocol == "grpc":
                self._client_obj = self._module.InferenceServerClient(self.url)
            else:
                self._client_obj = self._module.InferenceServerClient(
                    self.url, conn_limit=self.max_in_flight, conn_timeout=self.timeout
                )
            self._semaphore = asyncio.Semaphore(self.max_in_flight)
        return self._client_obj

    def _timeout_kwargs(self) -> dict[str, Any]:
        return {"client_timeout": self.timeout} if self.protocol == "grpc" else {}

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        last: BaseException | None = None
        kind = wire.RETRY
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(wire.backoff_delay(attempt - 1, self.backoff))
            try:
                if what == "metadata":
                    return await asyncio.wait_for(fn(*args, **kwargs), self.timeout)
                return await fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classify() re-raises what it does not know
                kind = wire.classify(exc)
                last = exc
                if (error := wire.final_error(kind, what, exc, self, self._target)) is not None:
                    raise error from exc
                logger.debug("%s: no answer from %s (%s); attempt %d", what, self.url, wire.describe(exc), attempt)
                if attempt < self.retries:
                    self.stats.retries += 1
        assert last is not None
        raise wire.exhausted_error(kind, self.url, self._target, self.retries + 1, last) from last

    async def get_info(self) -> ModelInfo:
        """The served model's labels, threshold, batch limit and preprocessing (read once).

        Raises:
            ServerUnreachableError: no server answered at ``url`` (after retries).
            ModelNotReadyError: the server does not serve the model, or not yet.
        """
        if self._info is None:
            self._info_lock = self._info_lock or asyncio.Lock()
            async with self._info_lock:
                if self._info is None:
                    self._info = await self._load_info()
        return self._info

    async def _load_info(self) -> ModelInfo:
        info = await self._read_model(self.model)
        if self.preprocess == "client":
            if not info.network_model or info.preprocessing is None:
                raise ClientError(
                    f"model {self.model!r} names no 'network_model' and 'preprocessing' in its config parameters; "
                    "use preprocess='server'"
                )
            network_config, network_version = await self._read_config(info.network_model)
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
        return info

    async def _read_model(self, name: str) -> ModelInfo:
        config, version = await self._read_config(name)
        return ModelInfo.from_config(name, config, version=version)

    async def _read_config(self, name: str) -> tuple[dict[str, Any], str]:
        client = self._client()
        kwargs = self._timeout_kwargs()
        if not await self._call("metadata", client.is_model_ready, name, **kwargs):
            raise ModelNotReadyError(f"model {name!r} is not ready at {self.url}")
        if self.protocol == "grpc":
            kwargs["as_json"] = True
        config = await self._call("metadata", client.get_model_config, name, **kwargs)
        metadata = await self._call("metadata", client.get_model_metadata, name, **kwargs)
        return config, newest_version(metadata.get("versions") or [])

    async def detect(self, images: Iterable[ImageInput] | ImageInput, raise_errors: bool | None = None) -> list[Result]:
        """Classify images; one :class:`Result` per input, in order (see :meth:`aigi.client.Detector.detect`)."""
        info = await self.get_info()
        local_spec = info.preprocessing if self.preprocess == "client" else None
        limits = info.preprocessing or PreprocessSpec()
        final: list[Result] = []
        local_failures: set[str] = set()
        for window in windows(as_iterable(images), info.max_batch_size * self.max_in_flight):
            # decoding and preprocessing are CPU work; keep them off the event loop
            items = await asyncio.to_thread(
                lambda window=window: [prepare(image, index, local_spec, limits) for index, image in window]
            )
            local_failures.update(item.source for item in items if item.error)
            chunks = split_chunks(items, info.max_batch_size)
            answered = await asyncio.gather(*(self._run_chunk(chunk) for chunk in chunks))
            final.extend(assemble(items, chunks, list(answered)))
        failures = [result for result in final if result.error]
        self.stats.images += len(final)
        self.stats.image_errors += len(failures)
        if failures and (self.raise_errors if raise_errors is None else raise_errors):
            raise first_error(failures, local_failures)
        return final

    async def _run_chunk(self, chunk: list[Prepared]) -> list[Result]:
        try:
            return await self._infer(chunk)
        except RequestRejectedError as exc:
            self.stats.rejected += 1
            self.stats.split += len(chunk) > 1
            if len(chunk) == 1:
                return [Result(source=chunk[0].source, model=self._target, error=str(exc))]
            singles = await asyncio.gather(*(self._run_chunk([item]) for item in chunk))
            return [result for results in singles for result in results]

    async def _infer(self, chunk: list[Prepared]) -> list[Result]:
        client = self._client()
        inputs, outputs = wire.build_request(
            self._module, [item.payload for item in chunk], client_side=self.preprocess == "client"
        )
        assert self._semaphore is not None

        async def send() -> Any:
            async with self._semaphore:
                self.stats.requests += 1
                return await client.infer(self._target, inputs, outputs=outputs, **self._timeout_kwargs())

        answer = await self._call("infer", send)
        return wire.parse_results(answer, await self.get_info(), self._target, [item.source for item in chunk])

    async def close(self) -> None:
        """Close the connection."""
        client, self._client_obj = self._client_obj, None
        if client is not None:
            await client.close()

    async def __aenter__(self) -> AsyncDetector:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
