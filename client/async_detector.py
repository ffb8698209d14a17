"""The asyncio twin of :class:`aigi.client.Detector`, on ``tritonclient.grpc.aio`` / ``tritonclient.http.aio``.

Same options, same results, same error handling (retries with backoff, bad images isolated by
re-sending a rejected request image by image); ``await detector.detect(images)``. Create and use
it inside one event loop, and close it (``async with`` or ``await close()``) in that loop. Everything
but the waiting comes from :mod:`aigi.client.core` and :mod:`aigi.client.retry`, as for the sync detector.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any

from aigi.client import protocol as wire
from aigi.client.core import (
    DetectorSettings,
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


class AsyncDetector(DetectorSettings):
    """Detect generated images through a Triton server, with asyncio.

    Args are those of :class:`aigi.client.Detector`; ``max_in_flight`` bounds the requests
    outstanding at once across all concurrent ``detect`` calls of this detector.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
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

    async def _call(self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """Await ``fn``, sleeping and retrying as :class:`aigi.client.retry.Attempts` decides."""
        attempts = Attempts(self, what, self._target, on_retry=lambda: self.count(retries=1))
        for delay in attempts:
            await asyncio.sleep(delay)
            try:
                if what == "metadata":  # aio clients take no deadline for metadata calls
                    return await asyncio.wait_for(fn(*args, **kwargs), self.timeout)
                return await fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - Attempts.failed re-raises what is not a server condition
                attempts.failed(exc)
        raise attempts.exhausted()

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
                    config, version = await self._read_config(self.model)
                    info = ModelInfo.from_config(self.model, config, version=version)
                    if self.preprocess == "client":
                        info = client_side_info(info, *await self._read_config(network_model_of(info)))
                        self._target = info.name
                    self._info = info
        return self._info

    async def _read_config(self, name: str) -> tuple[dict[str, Any], str]:
        client = self._client()
        kwargs = self.timeout_kwargs()
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
        for window in windows(as_iterable(images), self.window(info)):
            # decoding and preprocessing are CPU work; keep them off the event loop
            items = await asyncio.to_thread(prepare_window, window, local_spec, limits)
            local_failures.update(item.source for item in items if item.error)
            chunks = split_chunks(items, info.max_batch_size)
            answered = await asyncio.gather(*(self._run_chunk(chunk) for chunk in chunks))
            final.extend(assemble(items, chunks, list(answered)))
        finish(self, final, local_failures, raise_errors)
        return final

    async def _run_chunk(self, chunk: list[Prepared]) -> list[Result]:
        try:
            return await self._infer(chunk)
        except RequestRejectedError as exc:
            self.count(rejected=1, split=int(len(chunk) > 1))
            if len(chunk) == 1:
                return [rejected_result(chunk[0], self._target, exc)]
            singles = await asyncio.gather(*(self._run_chunk([item]) for item in chunk))
            return [result for results in singles for result in results]

    async def _infer(self, chunk: list[Prepared]) -> list[Result]:
        client = self._client()
        inputs, outputs = wire.build_request(self._module, payloads(chunk), client_side=self.preprocess == "client")
        semaphore = self._semaphore
        assert semaphore is not None, "made with the client"

        async def send() -> Any:
            async with semaphore:
                self.count(requests=1)
                return await client.infer(self._target, inputs, outputs=outputs, **self.timeout_kwargs())

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
