"""Typed Triton model configurations: dataclasses rendered to ``config.pbtxt`` text, and parsed back.

Configs are data (as in PyTriton): the repository writer builds :class:`TritonModelConfig` objects and
:func:`render_config` turns them into protobuf text format; nobody writes pbtxt by hand.
:func:`parse_config` reads text into Triton's own ``ModelConfig`` protobuf (from ``tritonclient``), and
:func:`config_from_proto` maps that back onto the dataclasses, so a round trip can be checked field by field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aigi.errors import RepositoryError

logger = logging.getLogger(__name__)

DATA_TYPES = (
    "TYPE_BOOL",
    "TYPE_UINT8",
    "TYPE_UINT16",
    "TYPE_UINT32",
    "TYPE_UINT64",
    "TYPE_INT8",
    "TYPE_INT16",
    "TYPE_INT32",
    "TYPE_INT64",
    "TYPE_FP16",
    "TYPE_FP32",
    "TYPE_FP64",
    "TYPE_STRING",
    "TYPE_BF16",
)
INSTANCE_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL")
TIMEOUT_ACTIONS = ("REJECT", "DELAY")


@dataclass
class TensorSpec:
    """One input or output tensor; ``dims`` exclude the batch dimension when the model batches."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    label_filename: str = ""

    def __post_init__(self) -> None:
        if self.data_type not in DATA_TYPES:
            raise ValueError(f"tensor {self.name!r}: unknown data type {self.data_type!r}")
        self.dims = tuple(int(d) for d in self.dims)


# aigi's queue policy for the models with a dynamic batcher (P_preprocess and the network; an ensemble has no queue of
# its own). Without one a flood queues without bound: latency grows for everyone and nothing is ever refused.
# * 64 waiting requests per model: with the default --max-batch 32 and one instance that is two full batches
#   behind the one running; more waiting only adds latency and memory (each queued request holds its image
#   bytes, and in the network's queue 3x224x224 FP32 pixels, 0.6 MB per image), so the 65th is refused at once
#   ("Exceeds maximum queue size", gRPC UNAVAILABLE) and its client can back off or go elsewhere.
# * 10 s in one queue, then REJECT: a request passes two queues (preprocess, network), so at most ~20 s of
#   queueing plus the work stays inside the client's default 30 s timeout. The server answers "timed out" before
#   the client gives up, instead of computing answers nobody is waiting for. A request may ask for a shorter
#   timeout (allow_timeout_override), never a longer one.
DEFAULT_MAX_QUEUE_SIZE = 64
DEFAULT_QUEUE_TIMEOUT_MS = 10_000


@dataclass
class QueuePolicy:
    """Triton's ``ModelQueuePolicy``: how long a request may wait in a model's queue and how many may wait.

    Attributes:
        timeout_action: ``REJECT`` (answer the request with an error) or ``DELAY`` (keep it, behind the others)
            once it has waited ``default_timeout_microseconds``.
        default_timeout_microseconds: the longest wait in the queue before ``timeout_action``; 0 waits forever.
        allow_timeout_override: a request may ask for a *shorter* timeout of its own (never a longer one).
        max_queue_size: requests (not images) allowed to wait; one more is refused at once with "Exceeds maximum
            queue size"; 0 means no limit.
    """

    timeout_action: str = "REJECT"
    default_timeout_microseconds: int = 0
    allow_timeout_override: bool = False
    max_queue_size: int = 0

    def __post_init__(self) -> None:
        if self.timeout_action not in TIMEOUT_ACTIONS:
            raise ValueError(f"unknown timeout action {self.timeout_action!r}")
        if self.default_timeout_microseconds < 0 or self.max_queue_size < 0:
            raise ValueError("queue timeout and max queue size must not be negative")
        self.default_timeout_microseconds = int(self.default_timeout_microseconds)
        self.max_queue_size = int(self.max_queue_size)
        self.allow_timeout_override = bool(self.allow_timeout_override)


@dataclass
class DynamicBatching:
    """Triton's dynamic batcher: a short queue delay lets concurrent requests merge; ``default_queue_policy``
    bounds the queue (``None`` leaves Triton's default: unbounded, no timeout)."""

    max_queue_delay_microseconds: int = 2000
    preferred_batch_size: tuple[int, ...] = ()
    default_queue_policy: QueuePolicy | None = None

    def __post_init__(self) -> None:
        self.preferred_batch_size = tuple(int(b) for b in self.preferred_batch_size)


@dataclass
class InstanceGroup:
    """Where and how many model instances run."""

    kind: str = "KIND_CPU"
    count: int = 1
    gpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in INSTANCE_KINDS:
            raise ValueError(f"unknown instance kind {self.kind!r}")
        self.gpus = tuple(int(g) for g in self.gpus)


@dataclass
class EnsembleStep:
    """One step of an ensemble: ``input_map`` maps the step model's inputs to ensemble tensors, ``output_map``
    maps the step model's outputs to ensemble tensors."""

    model_name: str
    input_map: dict[str, str]
    output_map: dict[str, str]
    model_version: int = -1


@dataclass
class WarmupInput:
    """Synthetic data for one input of a warm-up request."""

    data_type: str
    dims: tuple[int, ...]
    random_data: bool = True

    def __post_init__(self) -> None:
        if self.data_type not in DATA_TYPES:
            raise ValueError(f"warm-up input: unknown data type {self.data_type!r}")
        self.dims = tuple(int(d) for d in self.dims)


@dataclass
class ModelWarmup:
    """A request Triton sends before marking the model ready (so the first real request is not slow)."""

    name: str
    batch_size: int
    inputs: dict[str, WarmupInput]
    count: int = 1


@dataclass
class TritonModelConfig:
    """The subset of Triton's ``ModelConfig`` that aigi writes.

    Exactly one of ``platform`` (``ensemble``, ``tensorrt_plan``) and ``backend`` (``python``, ``onnxruntime``)
    is normally set. ``parameters`` values are strings, as Triton stores them.
    """

    name: str
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    platform: str = ""
    backend: str = ""
    default_model_filename: str = ""
    dynamic_batching: DynamicBatching | None = None
    instance_groups: list[InstanceGroup] = field(default_factory=list)
    ensemble_steps: list[EnsembleStep] = field(default_factory=list)
    warmups: list[ModelWarmup] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)

    def input(self, name: str) -> TensorSpec | None:
        """The input called ``name``, or ``None``."""
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        """The output called ``name``, or ``None``."""
        return next((spec for spec in self.outputs if spec.name == name), None)


class _Enum(str):
    """A protobuf enum value: rendered bare, not quoted."""


def _scalar(value: Any) -> str:
    from google.protobuf import text_encoding

    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + text_encoding.CEscape(value, as_utf8=True) + '"'
    raise TypeError(f"cannot render {type(value).__name__} in pbtxt")


# A message is a list of (field, value) pairs; a value is a scalar, a list of scalars (a packed repeated
# field), a message, or a list of messages (written as `field [ {..}, {..} ]`).
Message = list[tuple[str, Any]]


def _is_message(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, tuple) and len(item) == 2 for item in value) and value != []


def _emit(message: Message, indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for key, value in message:
        if isinstance(value, _Repeated):
            lines.append(f"{pad}{key} [")
            for position, item in enumerate(value):
                lines.append(f"{pad}  {{")
                lines.extend(_emit(item, indent + 2))
                lines.append(f"{pad}  }}" + ("," if position < len(value) - 1 else ""))
            lines.append(f"{pad}]")
        elif _is_message(value):
            lines.append(f"{pad}{key} {{")
            lines.extend(_emit(value, indent + 1))
            lines.append(f"{pad}}}")
        elif isinstance(value, (list, tuple)):
            lines.append(f"{pad}{key}: [ " + ", ".join(_scalar(v) for v in value) + " ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


class _Repeated(list):
    """A repeated message field."""


def _tensor_message(spec: TensorSpec) -> Message:
    message: Message = [("name", spec.name), ("data_type", _Enum(spec.data_type)), ("dims", list(spec.dims))]
    if spec.label_filename:
        message.append(("label_filename", spec.label_filename))
    return message


def _map_entries(key: str, mapping: dict[str, str]) -> Message:
    return [(key, [("key", k), ("value", v)]) for k, v in mapping.items()]


def _config_message(config: TritonModelConfig) -> Message:
    message: Message = [("name", config.name)]
    if config.platform:
        message.append(("platform", config.platform))
    if config.backend:
        message.append(("backend", config.backend))
    if config.default_model_filename:
        message.append(("default_model_filename", config.default_model_filename))
    message.append(("max_batch_size", config.max_batch_size))
    if config.inputs:
        message.append(("input", _Repeated(_tensor_message(spec) for spec in config.inputs)))
    if config.outputs:
        message.append(("output", _Repeated(_tensor_message(spec) for spec in config.outputs)))
    if config.dynamic_batching is not None:
        batching: Message = []
        if config.dynamic_batching.preferred_batch_size:
            batching.append(("preferred_batch_size", list(config.dynamic_batching.preferred_batch_size)))
        batching.append(("max_queue_delay_microseconds", config.dynamic_batching.max_queue_delay_microseconds))
        policy = config.dynamic_batching.default_queue_policy
        if policy is not None:
            batching.append(
                (
                    "default_queue_policy",
                    [
                        ("timeout_action", _Enum(policy.timeout_action)),
                        ("default_timeout_microseconds", policy.default_timeout_microseconds),
                        ("allow_timeout_override", policy.allow_timeout_override),
                        ("max_queue_size", policy.max_queue_size),
                    ],
                )
            )
        message.append(("dynamic_batching", batching))
    if config.instance_groups:
        groups = _Repeated()
        for group in config.instance_groups:
            entry: Message = [("count", group.count), ("kind", _Enum(group.kind))]
            if group.gpus:
                entry.append(("gpus", list(group.gpus)))
            groups.append(entry)
        message.append(("instance_group", groups))
    if config.ensemble_steps:
        steps = _Repeated()
        for step in config.ensemble_steps:
            entry = [("model_name", step.model_name), ("model_version", step.model_version)]
            entry += _map_entries("input_map", step.input_map)
            entry += _map_entries("output_map", step.output_map)
            steps.append(entry)
        message.append(("ensemble_scheduling", [("step", steps)]))
    if config.warmups:
        warmups = _Repeated()
        for warmup in config.warmups:
            entry = [("name", warmup.name), ("batch_size", warmup.batch_size)]
            for key, data in warmup.inputs.items():
                value: Message = [("data_type", _Enum(data.data_type)), ("dims", list(data.dims))]
                value.append(("random_data", True) if data.random_data else ("zero_data", True))
                entry.append(("inputs", [("key", key), ("value", value)]))
            if warmup.count != 1:
                entry.append(("count", warmup.count))
            warmups.append(entry)
        message.append(("model_warmup", warmups))
    for key, setting in config.parameters.items():
        message.append(("parameters", [("key", key), ("value", [("string_value", str(setting))])]))
    return message


def render_config(config: TritonModelConfig) -> str:
    """The ``config.pbtxt`` text of a config (protobuf text format, Triton's ``ModelConfig``)."""
    header = "# Generated by `aigi export` from typed dataclasses (aigi.export.triton_config); do not edit.\n"
    return header + "\n".join(_emit(_config_message(config), 0)) + "\n"


def parse_config(text: str, source: str = "config.pbtxt") -> Any:
    """Parse ``config.pbtxt`` text into Triton's ``ModelConfig`` protobuf.

    Raises:
        RepositoryError: the text is not a valid ``ModelConfig``.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    proto = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise RepositoryError(f"{source}: not a valid Triton ModelConfig: {exc}") from exc
    return proto


def _enum_name(enum_type: Any, value: int) -> str:
    return enum_type.Name(value)


def _tensor_from_proto(tensor: Any, data_type_enum: Any) -> TensorSpec:
    return TensorSpec(
        name=tensor.name,
        data_type=_enum_name(data_type_enum, tensor.data_type),
        dims=tuple(tensor.dims),
        label_filename=getattr(tensor, "label_filename", ""),
    )


def config_from_proto(proto: Any) -> TritonModelConfig:
    """Map a ``ModelConfig`` protobuf onto :class:`TritonModelConfig` (fields aigi does not use are dropped)."""
    from tritonclient.grpc import model_config_pb2 as pb

    batching = None
    if proto.HasField("dynamic_batching"):
        policy = None
        if proto.dynamic_batching.HasField("default_queue_policy"):
            queue = proto.dynamic_batching.default_queue_policy
            policy = QueuePolicy(
                timeout_action=pb.ModelQueuePolicy.TimeoutAction.Name(queue.timeout_action),
                default_timeout_microseconds=queue.default_timeout_microseconds,
                allow_timeout_override=queue.allow_timeout_override,
                max_queue_size=queue.max_queue_size,
            )
        batching = DynamicBatching(
            max_queue_delay_microseconds=proto.dynamic_batching.max_queue_delay_microseconds,
            preferred_batch_size=tuple(proto.dynamic_batching.preferred_batch_size),
            default_queue_policy=policy,
        )
    groups = [
        InstanceGroup(kind=pb.ModelInstanceGroup.Kind.Name(g.kind), count=g.count, gpus=tuple(g.gpus))
        for g in proto.instance_group
    ]
    steps = [
        EnsembleStep(
            model_name=s.model_name,
            model_version=s.model_version,
            input_map=dict(s.input_map),
            output_map=dict(s.output_map),
        )
        for s in proto.ensemble_scheduling.step
    ]
    warmups = [
        ModelWarmup(
            name=w.name,
            batch_size=w.batch_size,
            inputs={
                key: WarmupInput(
                    data_type=pb.DataType.Name(value.data_type),
                    dims=tuple(value.dims),
                    random_data=value.random_data,
                )
                for key, value in w.inputs.items()
            },
            count=w.count or 1,
        )
        for w in proto.model_warmup
    ]
    return TritonModelConfig(
        name=proto.name,
        max_batch_size=proto.max_batch_size,
        inputs=[_tensor_from_proto(t, pb.DataType) for t in proto.input],
        outputs=[_tensor_from_proto(t, pb.DataType) for t in proto.output],
        platform=proto.platform,
        backend=proto.backend,
        default_model_filename=proto.default_model_filename,
        dynamic_batching=batching,
        instance_groups=groups,
        ensemble_steps=steps,
        warmups=warmups,
        parameters={key: value.string_value for key, value in proto.parameters.items()},
    )


def preferred_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """Preferred sizes for the dynamic batcher: half and full ``max_batch`` (just ``max_batch`` when small)."""
    sizes: Iterable[int] = sorted({max(1, max_batch // 2), max_batch})
    return tuple(size for size in sizes if size > 1) or (max_batch,)
