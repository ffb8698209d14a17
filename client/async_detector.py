"""The asyncio twin of :class:`aigi.client.Detector`, on ``tritonclient.grpc.aio`` / ``tritonclient.http.aio``.

Same options, same results, same error handling (replicas, time-bounded retries with failover and backoff,
bad images isolated by re-sending a rejected request image by image); ``await detector.detect(images)``. Create and use
it inside one event loop, and close it (``async with`` or ``await close()``) in that loop. Everything
but the waiting comes from :mod:`aigi.client.core` and :mod:`aigi.client.retry`, as for the sync detector.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
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
from aigi.client.replicas import Endpoint, addresses_from_addrinfo
from aigi.client.result import Result
from aigi.client.retry import Attempts, ModelNotReadyReplyError
from aigi.errors import RequestRejectedError
from aigi.preprocessing import ImageInput, PreprocessSpec

logger = logging.getLogger(__name__)


class AsyncDetector(DetectorSettings):
    """Detect generated images through Triton servers, with asyncio.

    Args are those of :class:`aigi.client.Detector` (one endpoint or several, ``dns:///`` names, time-bounded
    retries, TLS, headers); ``max_in_flight`` bounds the requests outstanding at once across all concurrent
    ``detect`` calls of this detector.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._module = wire.client_module(self.protocol, aio=True)
        self._clients: dict[str, Any] = {}
        self._retired: list[tuple[float, Any]] = []
        self._semaphore: asyncio.Semaphore | None = None
        self._info: ModelInfo | None = None
        self._info_lock: asyncio.Lock | None = None

    def _client(self, address: str) -> Any:
        # aio clients bind to the running loop, so they are made on first use, inside it
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = self._module.InferenceServerClient(
                address, **wire.client_kwargs(self, aio=True)
            )
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_in_flight)
        return client

    async def _refresh(self) -> None:
        """Resolve the ``dns:///`` names when due, and close the clients of replicas gone long enough ago."""
        now = time.monotonic()
        if self._retired:
            due = [client for since, client in self._retired if now - since > self.timeout + 5]
            self._retired = [(since, client) for since, client in self._retired if now - since <= self.timeout + 5]
            await _close_all(due)
        names = self.replicas.claim_resolve(now)
        if not names:
            return
        loop = asyncio.get_running_loop()
        found: dict[Endpoint, list[str] | BaseException] = {}
        for name in names:
            host, port = name.host_port()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                found[name] = addresses_from_addrinfo(infos, port)
            except OSError as exc:
                found[name] = exc
        for address in self.replicas.resolved(found):
            if address in self._clients:
                self._retired.append((now, self._clients.pop(address)))

    async def _call(self, what: str, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        """Await ``fn(client)`` on a replica, failing over, waiting and retrying as :class:`Attempts` decides."""
        attempts = Attempts(self, what, self._target, self.replicas, on_retry=lambda: self.count(retries=1))
        while True:
            await self._refresh()
            step = attempts.next_step(time.monotonic())
            if step is None:
                raise attempts.exhausted()
            if step.address is None:
                await asyncio.sleep(step.delay)
                continue
            try:
                if what == "metadata":  # aio clients take no deadline for metadata calls
                    result = await asyncio.wait_for(fn(self._client(step.address)), self.timeout)
                else:
                    result = await fn(self._client(step.address))
            except Exception as exc:  # noqa: BLE001 - Attempts.failed re-raises what is not a server condition
                attempts.failed(exc, time.monotonic())
            else:
                attempts.answered()
                return result

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
        kwargs = self.call_kwargs()
        as_json = {"as_json": True} if self.protocol == "grpc" else {}

        async def ready(client: Any) -> bool:
            if not await client.is_model_ready(name, **kwargs):
                raise ModelNotReadyReplyError(f"model {name!r} is not ready")
            return True

        await self._call("metadata", ready)
        config = await self._call("metadata", lambda client: client.get_model_config(name, **kwargs, **as_json))
        metadata = await self._call("metadata", lambda client: client.get_model_metadata(name, **kwargs, **as_json))
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
        info = await self.get_info()
        inputs, outputs = wire.build_request(
            self._module, payloads(chunk), client_side=self.preprocess == "client", label_ids=info.label_ids
        )
        kwargs = self.call_kwargs()

        async def send(client: Any) -> Any:
            semaphore = self._semaphore
            assert semaphore is not None, "made with the first client"
            async with semaphore:
                self.count(requests=1)
                return await client.infer(self._target, inputs, outputs=outputs, **kwargs)

        answer = await self._call("infer", send)
        return wire.parse_results(answer, info, self._target, [item.source for item in chunk])

    async def close(self) -> None:
        """Close the connections."""
        clients = [*self._clients.values(), *(client for _, client in self._retired)]
        self._clients, self._retired = {}, []
        await _close_all(clients)

    async def __aenter__(self) -> AsyncDetector:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def _close_all(clients: list[Any]) -> None:
    for client in clients:
        try:
            await client.close()
        except Exception as exc:  # noqa: BLE001 - closing is best effort
            logger.debug("closing a client failed: %s", exc)
