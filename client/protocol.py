"""The wire format both detectors share: settings checks, the tritonclient module, tensors in, results out.

Sync (:mod:`aigi.client.detector`) and asyncio (:mod:`aigi.client.async_detector`) differ only in how
they wait; building requests and reading responses live here, the retry decisions in
:mod:`aigi.client.retry`, the rest of ``detect`` in :mod:`aigi.client.core`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from aigi.client.model_info import ModelInfo
from aigi.client.result import Result
from aigi.errors import ClientError, SettingsError

PROTOCOLS = ("grpc", "http")
PREPROCESS_MODES = ("server", "client")
OUTPUTS = ("probs", "p_fake")


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Validate an option against its choices."""
    if value not in choices:
        raise SettingsError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def normalize_url(url: str) -> str:
    """``host:port`` as tritonclient wants it (a scheme such as ``http://`` is dropped)."""
    url = url.strip()
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme) :]
    return url.rstrip("/")


def client_module(protocol: str, aio: bool = False) -> ModuleType:
    """The tritonclient module for a protocol (imported here, so picking one never loads the other)."""
    check_choice("protocol", protocol, PROTOCOLS)
    if protocol == "grpc":
        if aio:
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.grpc as module
    elif aio:
        import tritonclient.http.aio as module
    else:
        import tritonclient.http as module
    return module


def build_request(module: ModuleType, payloads: Sequence[bytes | np.ndarray], client_side: bool) -> tuple[list, list]:
    """Inputs and requested outputs for one batch: encoded bytes ``[B, 1]`` or ``pixel_values`` ``[B, 3, H, W]``."""
    if client_side:
        data = np.ascontiguousarray(np.stack(payloads), dtype=np.float32)
        tensor = module.InferInput("pixel_values", list(data.shape), "FP32")
    else:
        data = np.empty((len(payloads), 1), dtype=object)
        data[:, 0] = list(payloads)
        tensor = module.InferInput("image", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return [tensor], [module.InferRequestedOutput(name) for name in OUTPUTS]


def response_version(result: Any) -> str:
    """The version of the model that answered, from an ``InferResult`` of either protocol."""
    response = result.get_response()
    if isinstance(response, dict):
        return str(response.get("model_version", ""))
    return str(getattr(response, "model_version", ""))


def parse_results(result: Any, info: ModelInfo, model: str, sources: Sequence[str]) -> list[Result]:
    """One :class:`Result` per image of a successful response."""
    probs = np.asarray(result.as_numpy("probs"), dtype=np.float32).reshape(len(sources), -1)
    raw_p_fake = result.as_numpy("p_fake")
    p_fake = 1.0 - probs[:, 0] if raw_p_fake is None else np.asarray(raw_p_fake, dtype=np.float32).reshape(-1)
    if probs.shape[1] != len(info.labels):
        raise ClientError(f"model {model!r} returned {probs.shape[1]} scores for {len(info.labels)} labels")
    version = response_version(result)
    results = []
    for source, row, fake in zip(sources, probs, p_fake, strict=True):
        results.append(
            Result(
                source=source,
                label=info.labels[int(np.argmax(row))],
                p_fake=float(fake),
                is_fake=bool(fake >= info.threshold),
                scores={label: float(score) for label, score in zip(info.labels, row, strict=True)},
                model=model,
                model_version=version,
            )
        )
    return results
