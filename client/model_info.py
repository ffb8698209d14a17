"""What the client needs to know about a served detector, read from its Triton model config."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from aigi.errors import ClientError
from aigi.labels import REAL
from aigi.preprocessing import PreprocessSpec

logger = logging.getLogger(__name__)

LABEL_OUTPUT = "label_id"  # docs/CONTRACT.md: the served label index, len(labels) meaning ``unknown``


def config_parameters(config: dict[str, Any]) -> dict[str, str]:
    """The ``parameters`` of a model config (as JSON from either protocol) as plain strings."""
    raw = config.get("parameters") or {}
    return {key: str((value or {}).get("string_value", "")) for key, value in raw.items()}


@dataclass(frozen=True)
class ModelInfo:
    """The served detector, from the ensemble's config ``parameters`` (see docs/CONTRACT.md).

    Attributes:
        name: the model the client calls for server-side preprocessing (the ensemble).
        labels: label per output index, ``real`` first.
        threshold: decision threshold on ``p_fake``.
        max_batch_size: the most images one request may carry.
        network_model: the network model (``aigi_cpu``, ``aigi_onnx``, ``aigi_trt``) for client-side preprocessing.
        preprocessing: the checkpoint's preprocessing spec, or ``None`` when the config carries none.
        version: the newest version the server reports for ``name``.
        label_ids: whether the model serves ``label_id`` (the label decided in the graph, ``unknown`` included);
            a repository exported before it existed does not, and the client then names the argmax.
    """

    name: str
    labels: tuple[str, ...]
    threshold: float
    max_batch_size: int
    network_model: str | None
    preprocessing: PreprocessSpec | None
    version: str = ""
    label_ids: bool = False

    @classmethod
    def from_config(cls, name: str, config: dict[str, Any], version: str = "") -> ModelInfo:
        """Build from a model config as returned by ``get_model_config`` (gRPC ``as_json`` or HTTP).

        Raises:
            ClientError: a parameter is present but malformed.
        """
        config = config.get("config", config)  # gRPC wraps the config in {"config": ...}
        params = config_parameters(config)
        try:
            labels = tuple(json.loads(params["labels"])) if params.get("labels") else ()
            threshold = float(params["threshold"]) if params.get("threshold") else 0.5
            spec_text = params.get("preprocessing")
            spec = PreprocessSpec.from_dict(json.loads(spec_text)) if spec_text else None
        except (ValueError, TypeError) as exc:
            raise ClientError(f"model {name!r}: malformed config parameter ({exc})") from exc
        if not labels:
            width = _output_width(config, "probs")
            logger.warning("model %r: config has no 'labels' parameter; naming its %d classes by index", name, width)
            labels = (REAL, *(f"class_{index}" for index in range(1, width)))
        return cls(
            name=name,
            labels=labels,
            threshold=threshold,
            max_batch_size=cls.batch_limit(config),
            network_model=params.get("network_model") or None,
            preprocessing=spec,
            version=version,
            label_ids=serves_label_ids(config),
        )

    @staticmethod
    def batch_limit(config: dict[str, Any]) -> int:
        """Images one request may carry under a model config (1 for a model without batching)."""
        config = config.get("config", config)
        return max(1, int(config.get("max_batch_size", 0) or 1))


def serves_label_ids(config: dict[str, Any]) -> bool:
    """Whether a model config (either protocol's JSON) lists the ``label_id`` output."""
    config = config.get("config", config)
    return any(tensor.get("name") == LABEL_OUTPUT for tensor in config.get("output", []))


def _output_width(config: dict[str, Any], output: str) -> int:
    for tensor in config.get("output", []):
        if tensor.get("name") == output and tensor.get("dims"):
            return int(tensor["dims"][-1])
    return 2
