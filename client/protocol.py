"""The wire format both detectors share: settings checks, the tritonclient module, tensors in, results out.

Sync (:mod:`aigi.client.detector`) and asyncio (:mod:`aigi.client.async_detector`) differ only in how
they wait; building requests and reading responses live here, the retry decisions in
:mod:`aigi.client.retry`, where requests go in :mod:`aigi.client.replicas`, the rest of ``detect`` in
:mod:`aigi.client.core`.
"""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from aigi.client.model_info import LABEL_OUTPUT, ModelInfo
from aigi.client.result import Result
from aigi.client.retry import MAX_BACKOFF_S
from aigi.errors import ClientError, SettingsError
from aigi.labels import UNKNOWN

PROTOCOLS = ("grpc", "http")
PREPROCESS_MODES = ("server", "client")
OUTPUTS = ("probs", "p_fake")


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Validate an option against its choices."""
    if value not in choices:
        raise SettingsError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_headers(headers: Mapping[str, str] | None, protocol: str) -> dict[str, str]:
    """Headers sent with every request, checked; gRPC metadata keys are lowercase, so they are lowered for gRPC.

    Raises:
        SettingsError: a name or value that is not a one-line string.
    """
    checked = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not isinstance(value, str) or not name.strip():
            raise SettingsError(f"headers must map names to strings, got {name!r}: {value!r}")
        if any(char in name + value for char in "\r\n\0") or any(char in name for char in " :"):
            raise SettingsError(f"header {name!r} has a character a header cannot carry")
        checked[name.lower() if protocol == "grpc" else name] = value
    return checked


def grpc_channel_args() -> list[tuple[str, Any]]:
    """tritonclient's own gRPC channel options, plus a reconnect backoff capped at :data:`MAX_BACKOFF_S`.

    gRPC's default reconnect backoff grows to 120 s: a channel that lost its server for 10 s would try again
    only some seconds after the server was back, and every call meanwhile fails at once.
    """
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", int(MAX_BACKOFF_S * 1000)),
    ]


def ssl_context(root_certificates: str | None, private_key: str | None, certificate_chain: str | None) -> Any:
    """A client TLS context (for the asyncio HTTP client): the CA file, or the system's, and a client certificate."""
    context = _ssl.create_default_context(cafile=root_certificates)
    if certificate_chain:
        context.load_cert_chain(certfile=certificate_chain, keyfile=private_key)
    return context


def client_kwargs(settings: Any, aio: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``InferenceServerClient`` for a detector: timeouts, TLS, gRPC channel options."""
    tls = {
        "root_certificates": settings.root_certificates,
        "private_key": settings.private_key,
        "certificate_chain": settings.certificate_chain,
    }
    if settings.protocol == "grpc":
        kwargs: dict[str, Any] = {"channel_args": grpc_channel_args()}
        if settings.ssl:
            kwargs.update(ssl=True, **tls)
        return kwargs
    if aio:
        kwargs = {"conn_limit": settings.max_in_flight, "conn_timeout": settings.timeout}
        if settings.ssl:
            kwargs.update(ssl=True, ssl_context=ssl_context(**tls))
        return kwargs
    kwargs = {"connection_timeout": settings.timeout, "network_timeout": settings.timeout}
    if settings.ssl:
        names = {"root_certificates": "ca_certs", "certificate_chain": "certfile", "private_key": "keyfile"}
        kwargs.update(ssl=True, ssl_options={names[key]: value for key, value in tls.items() if value})
    return kwargs


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


def build_request(
    module: ModuleType, payloads: Sequence[bytes | np.ndarray], client_side: bool, label_ids: bool = False
) -> tuple[list, list]:
    """Inputs and requested outputs for one batch: encoded bytes ``[B, 1]`` or ``pixel_values`` ``[B, 3, H, W]``.

    ``label_ids`` also asks for ``label_id`` (only a model that serves it may be asked: see ``ModelInfo.label_ids``).
    """
    if client_side:
        data = np.ascontiguousarray(np.stack(payloads), dtype=np.float32)
        tensor = module.InferInput("pixel_values", list(data.shape), "FP32")
    else:
        data = np.empty((len(payloads), 1), dtype=object)
        data[:, 0] = list(payloads)
        tensor = module.InferInput("image", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    names = [*OUTPUTS, LABEL_OUTPUT] if label_ids else list(OUTPUTS)
    return [tensor], [module.InferRequestedOutput(name) for name in names]


def response_version(result: Any) -> str:
    """The version of the model that answered, from an ``InferResult`` of either protocol."""
    response = result.get_response()
    if isinstance(response, dict):
        return str(response.get("model_version", ""))
    return str(getattr(response, "model_version", ""))


def parse_results(result: Any, info: ModelInfo, model: str, sources: Sequence[str]) -> list[Result]:
    """One :class:`Result` per image of a successful response.

    The label is the served ``label_id`` when the response has it (``len(labels)`` is ``unknown``, with the most
    likely generator in ``closest_known``), else the argmax of ``probs`` (a model exported before ``label_id``).
    """
    probs = np.asarray(result.as_numpy("probs"), dtype=np.float32).reshape(len(sources), -1)
    raw_p_fake = result.as_numpy("p_fake")
    p_fake = 1.0 - probs[:, 0] if raw_p_fake is None else np.asarray(raw_p_fake, dtype=np.float32).reshape(-1)
    if probs.shape[1] != len(info.labels):
        raise ClientError(f"model {model!r} returned {probs.shape[1]} scores for {len(info.labels)} labels")
    version = response_version(result)
    label_ids = _label_ids(result, probs, model, len(info.labels))
    results = []
    for source, row, fake, label_id in zip(sources, probs, p_fake, label_ids, strict=True):
        unknown = label_id == len(info.labels)
        results.append(
            Result(
                source=source,
                label=UNKNOWN if unknown else info.labels[label_id],
                p_fake=float(fake),
                is_fake=bool(fake >= info.threshold),
                scores={label: float(score) for label, score in zip(info.labels, row, strict=True)},
                model=model,
                model_version=version,
                closest_known=info.labels[1 + int(np.argmax(row[1:]))] if unknown else None,
            )
        )
    return results


def _label_ids(result: Any, probs: np.ndarray, model: str, classes: int) -> list[int]:
    """The served ``label_id`` per image (``classes`` meaning ``unknown``), else the argmax of ``probs``.

    Raises:
        ClientError: ``label_id`` has the wrong size or an index past ``unknown``.
    """
    raw = result.as_numpy(LABEL_OUTPUT)
    if raw is None:
        return [int(index) for index in np.argmax(probs, axis=1)]
    ids = np.asarray(raw).reshape(-1).astype(np.int64)
    if ids.shape[0] != probs.shape[0] or ((ids < 0) | (ids > classes)).any():
        raise ClientError(
            f"model {model!r} returned label_id {ids.tolist()} for {probs.shape[0]} images of {classes} labels"
        )
    return ids.tolist()
