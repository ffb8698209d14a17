"""``aigi bench --url`` and ``aigi fault-check --url``: a Triton server someone else started, any build.

Only the normal inference APIs are used (the admin APIs of such a server may be closed): the endpoints answer
``/v2/health/live`` (HTTP) or ``ServerLive`` (gRPC) and each entry model's config is read with the model-config
endpoint. From the ensemble's config come the labels, the preprocessing, the network model (its ``network_model``
parameter) and the checkpoint's description (its ``aigi_json`` parameter: architecture, for FLOPs); from the
network's config come its ``precision`` and ``max_batch_size``. Each ``--url`` is probed for its protocol; a
protocol not given is looked for where Triton's default layout puts it (HTTP on port P, gRPC on P+1, metrics on
P+2, e.g. 8000/8001/8002). ``--metrics-url`` defaults to ``http://HOST:8002/metrics``; when it cannot be read the
cells still run and their Triton split says why.
"""

from __future__ import annotations

import http.client
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigi.benchmarks.artifacts import ServedRepo
from aigi.benchmarks.runtimes import RuntimeSpec, RuntimeUnavailableError
from aigi.checkpoint import CheckpointMeta
from aigi.client.model_info import ModelInfo, config_parameters
from aigi.errors import AigiError, CheckpointError

logger = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 8002
PROBE_TIMEOUT_S = 3.0
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
IN_PROCESS_REASON = "--url: only the Triton runtimes run against a server started elsewhere (no in-process runtime)"


def split_endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (an ``http://`` or ``grpc://`` prefix and a trailing ``/`` are allowed) as ``(host, port)``.

    Raises:
        AigiError: not ``HOST:PORT``.
    """
    bare = text.strip().split("://", 1)[-1].rstrip("/")
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise AigiError(f"--url {text!r}: expected HOST:PORT (e.g. 127.0.0.1:8001)")
    return host, int(port)


def _http_live(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{endpoint}/v2/health/live", timeout=PROBE_TIMEOUT_S) as response:  # noqa: S310
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException):  # a gRPC port answers HTTP/2
        return False


def _grpc_live(endpoint: str) -> bool:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(endpoint)
    try:
        return bool(client.is_server_live(client_timeout=PROBE_TIMEOUT_S))
    except Exception:  # noqa: BLE001 - any failure means "not a gRPC endpoint"
        return False
    finally:
        client.close()


def probe(endpoint: str) -> str | None:
    """``http`` or ``grpc``: the protocol a live Triton answers on at ``endpoint``; ``None`` when neither does."""
    if _http_live(endpoint):
        return "http"
    return "grpc" if _grpc_live(endpoint) else None


def resolve_endpoints(urls: list[str], metrics_url: str | None = None) -> dict[str, str]:
    """The server's ``grpc`` and ``http`` endpoints (those found) and its ``metrics_url``.

    Raises:
        AigiError: no given endpoint answers as a live Triton server.
    """
    found: dict[str, str] = {}
    for url in urls:
        host, port = split_endpoint(url)
        endpoint = f"{host}:{port}"
        protocol = probe(endpoint)
        if protocol is None:
            raise AigiError(f"--url {url}: no live Triton server answers there (HTTP or gRPC)")
        found.setdefault(protocol, endpoint)
    host, port = split_endpoint(next(iter(found.values())))
    neighbours = {"grpc": f"{host}:{port + 1}", "http": f"{host}:{port - 1}"}  # Triton's default layout
    for protocol, endpoint in neighbours.items():
        if protocol not in found and probe(endpoint) == protocol:
            found[protocol] = endpoint
    found["metrics_url"] = metrics_url or f"http://{host}:{DEFAULT_METRICS_PORT}/metrics"
    return found


@dataclass
class RemoteServer:
    """What the runtimes and the load check need of a server: its endpoints; no process of ours, no admin key."""

    endpoints: dict[str, str]
    pid: int | None = None
    running: bool = True
    admin_headers: dict[str, str] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        """Whether it runs on this machine (system shared memory needs that)."""
        hosts = {split_endpoint(self.endpoints[key])[0] for key in ("grpc", "http") if key in self.endpoints}
        return bool(hosts) and hosts <= set(LOCAL_HOSTS)


def model_config(server: RemoteServer, model: str) -> dict[str, Any]:
    """A model's config through the normal model-config endpoint (HTTP when known, else gRPC).

    Raises:
        AigiError: the server does not serve ``model``.
    """
    try:
        if "http" in server.endpoints:
            import tritonclient.http as httpclient

            client: Any = httpclient.InferenceServerClient(server.endpoints["http"])
            try:
                return client.get_model_config(model)
            finally:
                client.close()
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(server.endpoints["grpc"])
        try:
            return client.get_model_config(model, as_json=True).get("config", {})
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - tritonclient raises its own exception types
        raise AigiError(f"the server has no model {model!r} it will describe: {str(exc).splitlines()[0]}") from exc


@dataclass
class ServedModel:
    """One entry model of the server: what the runtimes call and what the report says about it."""

    entry: str
    network: str
    precision: str
    max_batch: int
    meta: CheckpointMeta
    info: ModelInfo

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for ``bench.json``."""
        return {
            "entry_model": self.entry,
            "network_model": self.network,
            "precision": self.precision,
            "max_batch": self.max_batch,
            "architecture": self.meta.architecture.source,
            "labels": list(self.info.labels),
        }


def read_served_model(server: RemoteServer, entry: str) -> ServedModel:
    """Read an entry model (the ensemble) and its network model from their configs.

    Raises:
        AigiError: a model is missing, or the ensemble carries no aigi description (not an ``aigi export``).
    """
    config = model_config(server, entry)
    info = ModelInfo.from_config(entry, config)
    params = config_parameters(config)
    try:
        meta = CheckpointMeta.from_dict(json.loads(params["aigi_json"]))
    except (KeyError, ValueError, CheckpointError) as exc:
        raise AigiError(f"model {entry!r} has no usable aigi_json parameter: not an 'aigi export' ensemble") from exc
    network = info.network_model or f"{entry}_cpu"
    network_config = model_config(server, network)
    precision = config_parameters(network_config).get("precision") or "fp32"
    batch = min(ModelInfo.batch_limit(config), ModelInfo.batch_limit(network_config))
    return ServedModel(entry, network, precision, batch, meta, info)


class RemoteStore:
    """Stands in for :class:`aigi.benchmarks.artifacts.ArtifactStore` with a server started elsewhere: the
    Triton runtimes ask it for the served repository of their precision; nothing is built or started."""

    weights = "served"
    export_seconds = 0.0

    def __init__(self, server: RemoteServer, models: list[ServedModel], max_batch: int) -> None:
        self.server = server
        self.models = {model.precision: model for model in models}
        first = models[0]
        self.meta = first.meta
        self.max_batch = max(model.max_batch for model in models)
        self.wanted_batch = int(max_batch)
        self.checkpoint = Path(f"served:{first.entry}")

    @property
    def image_size(self) -> int:
        """Side of the served network's input."""
        return int(self.meta.preprocessing.size)

    def triton(self, precision: str) -> ServedRepo:
        """The served models of ``precision``.

        Raises:
            RuntimeUnavailableError: no entry model of that precision was named, or the run's batches do not fit.
        """
        model = self.models.get(precision)
        if model is None:
            have = ", ".join(f"{m.entry}: {p}" for p, m in self.models.items())
            raise RuntimeUnavailableError(f"the server serves no {precision} network among --served-model ({have})")
        if self.wanted_batch > model.max_batch:
            raise RuntimeUnavailableError(
                f"{model.entry} takes at most {model.max_batch} images a request; the run sends {self.wanted_batch}"
            )
        return ServedRepo(
            server=self.server,
            repo=Path(f"served:{model.entry}"),
            ensemble_model=model.entry,
            network_model=model.network,
            num_labels=len(model.info.labels),
            image_size=self.image_size,
            intra_op_threads=None,
        )

    def close(self) -> None:
        """Nothing to stop: the server is not ours."""

    def describe(self) -> dict[str, Any]:
        """The server and its models, for ``bench.json``."""
        return {
            "started_elsewhere": True,
            "endpoints": dict(self.server.endpoints),
            "models": [model.describe() for model in self.models.values()],
        }


def unavailable_reason(spec: RuntimeSpec, server: RemoteServer) -> str | None:
    """Why a runtime cannot run against the remote server before trying (wrong family, protocol or host)."""
    if spec.family != "triton":
        return IN_PROCESS_REASON
    protocol = spec.option("protocol", "grpc")
    if protocol not in server.endpoints:
        return f"--url: no {protocol} endpoint found (give it with --url HOST:PORT)"
    if spec.option("shm") and not server.local:
        return "system shared memory needs the server on this machine"
    return None


def connect(urls: list[str], metrics_url: str | None, entries: list[str], max_batch: int) -> RemoteStore:
    """Probe the endpoints, read every entry model and build the store the Triton runtimes use.

    Raises:
        AigiError: no live server, or an entry model that is missing or not an aigi export.
    """
    server = RemoteServer(resolve_endpoints(urls, metrics_url))
    models = [read_served_model(server, entry) for entry in entries]
    logger.info("server %s: %s", server.endpoints, [model.describe() for model in models])
    return RemoteStore(server, models, max_batch)
