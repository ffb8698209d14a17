"""Runtimes through a Triton server: the tensor path (network model alone) and the bytes path (the ensemble).

The bytes path is what a service calls: encoded images to the ``aigi`` ensemble through
:class:`aigi.client.Detector` (server-side preprocessing). The tensor path sends already-normalized
``pixel_values`` to the network model (``aigi_cpu``) with tritonclient directly, since the Detector takes
images, not tensors; with ``shm`` the input and output travel through system shared memory, registered
once per client stream, so only a memcpy into the region stays in the timed call.

Each concurrent stream has its own client (and shared-memory regions). gRPC streams come from a free list, so
regions are reused from cell to cell; HTTP clients (gevent-based) only work on the thread that made them, so
every thread makes its own.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aigi.benchmarks.runtimes import BaseRuntime, RuntimeSpec, RuntimeUnavailableError

logger = logging.getLogger(__name__)

_REGION_IDS = itertools.count()


def precheck(spec: RuntimeSpec) -> str | None:
    """tritonclient and a tritonserver binary (the nvidia-pytriton wheel) must be installed."""
    try:
        import tritonclient.grpc  # noqa: F401
        import tritonclient.http  # noqa: F401
    except ImportError as exc:
        return f"tritonclient is not installed ({exc.name})"
    if spec.option("shm"):
        try:
            import tritonclient.utils.shared_memory  # noqa: F401
        except (ImportError, OSError) as exc:
            return f"tritonclient's system shared memory support is unavailable: {exc}"
    from aigi.errors import ServerError
    from aigi.server import find_tritonserver

    try:
        find_tritonserver()
    except ServerError as exc:
        return str(exc)
    return None


class _TritonBase(BaseRuntime):
    concurrent = True
    target: str  # the model the runtime calls, set by each subclass's setup()

    def setup(self) -> None:
        """Start (or reuse) the server for this precision and check the target model answers."""
        from aigi.client.protocol import client_module

        self.served = self.store.triton(self.spec.precision)
        self.protocol = self.spec.option("protocol", "grpc")
        self.module = client_module(self.protocol)
        self.url = self.served.endpoints[self.protocol]

    def memory_root_pid(self) -> int | None:
        """The server process (its Python backend stubs are its children)."""
        return self.served.pid

    def info(self) -> dict[str, Any]:
        """Endpoint, model and repository."""
        return {
            "url": self.url,
            "protocol": self.protocol,
            "model": self.target,
            "repository": str(self.served.repo),
            "intra_op_threads": self.served.intra_op_threads,
        }


@dataclass
class _Stream:
    client: Any
    regions: dict[str, Any] = field(default_factory=dict)


class TritonTensorRuntime(_TritonBase):
    """``pixel_values`` -> the network model; gRPC or HTTP, optionally through system shared memory."""

    def setup(self) -> None:
        """Resolve the network model and prepare the free list of client streams."""
        super().setup()
        self.target = self.served.network_model
        self.shm = bool(self.spec.option("shm"))
        self.classes = self.served.num_labels
        self._free: queue.SimpleQueue[_Stream] = queue.SimpleQueue()
        self._local = threading.local()
        self._streams: list[_Stream] = []
        self._lock = threading.Lock()
        if self.shm:
            import tritonclient.utils.shared_memory as shm_utils

            self._shm = shm_utils
        stream = self._take()
        try:
            if not stream.client.is_model_ready(self.target):
                raise RuntimeUnavailableError(f"model {self.target!r} is not ready at {self.url}")
        finally:
            self._give(stream)

    def _new_stream(self) -> _Stream:
        if self.protocol == "grpc":
            client = self.module.InferenceServerClient(self.url)
        else:
            client = self.module.InferenceServerClient(self.url, connection_timeout=120.0, network_timeout=120.0)
        stream = _Stream(client)
        if self.shm:
            capacity = self.store.max_batch
            size = self.served.image_size
            sizes = {"in": capacity * 3 * size * size * 4, "out": capacity * self.classes * 4}
            for role, byte_size in sizes.items():
                name = f"aigi-bench-{os.getpid()}-{next(_REGION_IDS)}-{role}"
                handle = self._shm.create_shared_memory_region(name, "/" + name, byte_size)
                try:
                    client.register_system_shared_memory(name, "/" + name, byte_size, headers=self.served.admin_headers)
                except Exception:
                    # a server that refuses (restricted API, another host) must not leave the region behind
                    self._shm.destroy_shared_memory_region(handle)
                    for _, kept in stream.regions.values():
                        self._shm.destroy_shared_memory_region(kept)
                    client.close()
                    raise
                stream.regions[role] = (name, handle)
        with self._lock:
            self._streams.append(stream)
        return stream

    def _take(self) -> _Stream:
        if self.protocol == "http":
            stream = getattr(self._local, "stream", None)
            if stream is None:
                stream = self._local.stream = self._new_stream()
            return stream
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return self._new_stream()

    def _give(self, stream: _Stream) -> None:
        if self.protocol != "http":
            self._free.put(stream)

    def run(self, prepared: np.ndarray) -> np.ndarray:
        """One inference request of the whole batch; returns ``probs``."""
        stream = self._take()
        try:
            return self._infer(stream, prepared)
        finally:
            self._give(stream)

    def _infer(self, stream: _Stream, batch: np.ndarray) -> np.ndarray:
        module = self.module
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        tensor = module.InferInput("pixel_values", list(batch.shape), "FP32")
        output = module.InferRequestedOutput("probs")
        if not self.shm:
            tensor.set_data_from_numpy(batch)
            result = stream.client.infer(self.target, [tensor], outputs=[output])
            return result.as_numpy("probs")
        (in_name, in_handle), (out_name, out_handle) = stream.regions["in"], stream.regions["out"]
        self._shm.set_shared_memory_region(in_handle, [batch])
        tensor.set_shared_memory(in_name, batch.nbytes)
        out_bytes = batch.shape[0] * self.classes * 4
        output.set_shared_memory(out_name, out_bytes)
        stream.client.infer(self.target, [tensor], outputs=[output])
        return np.array(self._shm.get_contents_as_numpy(out_handle, np.float32, [batch.shape[0], self.classes]))

    def teardown(self) -> None:
        """Unregister and destroy the shared-memory regions, close the clients."""
        for stream in self._streams:
            for name, handle in stream.regions.values():
                try:
                    stream.client.unregister_system_shared_memory(name, headers=self.served.admin_headers)
                except Exception as exc:  # noqa: BLE001 - the server may already be gone
                    logger.debug("unregistering %s failed: %s", name, exc)
                self._shm.destroy_shared_memory_region(handle)
            try:
                stream.client.close()
            except Exception as exc:  # noqa: BLE001
                logger.debug("closing a client failed: %s", exc)
        self._streams = []

    def triton_view(self) -> tuple[str, str] | None:
        """Metrics endpoint and the network model."""
        return self.served.endpoints["metrics_url"], self.target

    def info(self) -> dict[str, Any]:
        """Adds whether shared memory carries the tensors."""
        return {**super().info(), "shared_memory": "system" if self.shm else None}


class TritonBytesRuntime(_TritonBase):
    """Encoded images -> the ensemble (server-side preprocessing) through :class:`aigi.client.Detector`."""

    input_kind = "bytes"

    def setup(self) -> None:
        """One thread-safe Detector shared by every stream (gRPC shares its channel; HTTP opens one per thread)."""
        super().setup()
        from aigi.client.detector import Detector

        self.target = self.served.ensemble_model
        self.detector = Detector(
            self.url, protocol=self.protocol, model=self.target, preprocess="server", retries=0, max_in_flight=1
        )
        self.labels = self.detector.info.labels

    def run(self, prepared: np.ndarray) -> np.ndarray:
        """``detect`` on the batch's bytes; a per-image error fails the request (it would skew the timing)."""
        results = self.detector.detect(list(prepared), raise_errors=True)
        return np.asarray([[result.scores[label] for label in self.labels] for result in results], dtype=np.float32)

    def teardown(self) -> None:
        """Close the detector."""
        self.detector.close()

    def triton_view(self) -> tuple[str, str] | None:
        """Metrics endpoint and the ensemble."""
        return self.served.endpoints["metrics_url"], self.target
