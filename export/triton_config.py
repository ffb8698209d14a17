"""Typed Triton model configurations: dataclasses built into Triton's own ``ModelConfig`` message, and parsed back.

Configs are data (as in PyTriton): the repository writer builds :class:`TritonModelConfig` objects,
:func:`to_proto` turns one into Triton's ``ModelConfig`` protobuf (``tritonclient.grpc.model_config_pb2``, generated
from Triton's ``model_config.proto``) in one place, merges any operator :class:`ConfigOverride` into it, and
:func:`render_config` writes it with ``google.protobuf.text_format``; nobody writes pbtxt by hand.
:func:`parse_config` reads text back into a ``ModelConfig`` and :func:`config_from_proto` maps that onto the
dataclasses, so a round trip can be checked field by field.
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
    # a file in the model folder's warmup/ subfolder whose bytes are the input (Triton's input_data_file)
    input_data_file: str = ""

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
    response_cache: bool = False
    # operator fragments merged into the message by to_proto; not part of the config's value
    overrides: list[ConfigOverride] = field(default_factory=list, compare=False)

    def input(self, name: str) -> TensorSpec | None:
        """The input called ``name``, or ``None``."""
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        """The output called ``name``, or ``None``."""
        return next((spec for spec in self.outputs if spec.name == name), None)


@dataclass
class ConfigOverride:
    """An operator's text-format ``ModelConfig`` fragment for one model (``aigi export --config-override``).

    Attributes:
        target: a role (``ensemble``, ``preprocess``, ``network``) or a model name.
        source: where the text came from (a file path), for messages and the export report.
        text: the fragment, protobuf text format.
        replace: repeated fields named in the fragment replace the generated ones instead of being appended to.
    """

    target: str
    source: str
    text: str
    replace: bool = False

    @property
    def sha256(self) -> str:
        """The fragment's sha256 (of its UTF-8 text), recorded in the export report."""
        import hashlib

        return hashlib.sha256(self.text.encode()).hexdigest()


HEADER = "# Generated by `aigi export` from typed dataclasses as a Triton ModelConfig (aigi.export.triton_config).\n"


def _set_tensor(message: Any, spec: TensorSpec) -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    message.name = spec.name
    message.data_type = pb.DataType.Value(spec.data_type)
    message.dims.extend(spec.dims)
    if spec.label_filename:
        message.label_filename = spec.label_filename


def _set_batching(message: Any, batching: DynamicBatching) -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    message.SetInParent()
    message.preferred_batch_size.extend(batching.preferred_batch_size)
    message.max_queue_delay_microseconds = batching.max_queue_delay_microseconds
    policy = batching.default_queue_policy
    if policy is not None:
        queue = message.default_queue_policy
        queue.timeout_action = pb.ModelQueuePolicy.TimeoutAction.Value(policy.timeout_action)
        queue.default_timeout_microseconds = policy.default_timeout_microseconds
        queue.allow_timeout_override = policy.allow_timeout_override
        queue.max_queue_size = policy.max_queue_size


def _set_warmup(message: Any, warmup: ModelWarmup) -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    message.name = warmup.name
    message.batch_size = warmup.batch_size
    for key, data in warmup.inputs.items():
        value = message.inputs[key]
        value.data_type = pb.DataType.Value(data.data_type)
        value.dims.extend(data.dims)
        if data.input_data_file:
            value.input_data_file = data.input_data_file
        elif data.random_data:
            value.random_data = True
        else:
            value.zero_data = True
    if warmup.count != 1:
        message.count = warmup.count


def _set_scheduling(proto: Any, config: TritonModelConfig) -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    if config.dynamic_batching is not None:
        _set_batching(proto.dynamic_batching, config.dynamic_batching)
    for group in config.instance_groups:
        entry = proto.instance_group.add(count=group.count, kind=pb.ModelInstanceGroup.Kind.Value(group.kind))
        entry.gpus.extend(group.gpus)
    for step in config.ensemble_steps:
        entry = proto.ensemble_scheduling.step.add(model_name=step.model_name, model_version=step.model_version)
        entry.input_map.update(step.input_map)
        entry.output_map.update(step.output_map)
    for warmup in config.warmups:
        _set_warmup(proto.model_warmup.add(), warmup)


def to_proto(config: TritonModelConfig) -> Any:
    """Triton's ``ModelConfig`` message for ``config``, with its :attr:`TritonModelConfig.overrides` merged in.

    Raises:
        RepositoryError: an override is not valid ``ModelConfig`` text.
    """
    from tritonclient.grpc import model_config_pb2 as pb

    proto = pb.ModelConfig(
        name=config.name,
        platform=config.platform,
        backend=config.backend,
        default_model_filename=config.default_model_filename,
        max_batch_size=config.max_batch_size,
    )
    for spec in config.inputs:
        _set_tensor(proto.input.add(), spec)
    for spec in config.outputs:
        _set_tensor(proto.output.add(), spec)
    _set_scheduling(proto, config)
    if config.response_cache:
        proto.response_cache.enable = True
    for key, setting in config.parameters.items():
        proto.parameters[key].string_value = str(setting)
    for override in config.overrides:
        proto = apply_override(proto, override)
    return proto


def _clear_replaced(target: Any, fragment: Any) -> None:
    """Clear every repeated field of ``target`` that ``fragment`` sets (maps excepted: they merge by key)."""
    for descriptor, value in fragment.ListFields():
        repeated = descriptor.is_repeated
        is_map = descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry
        if repeated and not is_map:
            target.ClearField(descriptor.name)
        elif descriptor.message_type is not None and not repeated:
            _clear_replaced(getattr(target, descriptor.name), value)


def apply_override(proto: Any, override: ConfigOverride) -> Any:
    """A copy of ``proto`` with ``override`` merged in (``text_format.Merge``: protobuf merge semantics).

    Scalars and enums in the fragment replace the generated ones, sub-messages merge field by field, map
    entries (``parameters``, ``input_map``) replace by key, and repeated fields (``input``, ``instance_group``,
    ``preferred_batch_size``, ``model_warmup``) are *appended to*, unless ``override.replace``: then each repeated
    field the fragment names replaces the generated one.

    Raises:
        RepositoryError: the fragment is not valid ``ModelConfig`` text.
    """
    from google.protobuf import text_format

    merged = type(proto)()
    merged.CopyFrom(proto)
    try:
        if override.replace:
            fragment = type(proto)()
            text_format.Parse(override.text, fragment)
            _clear_replaced(merged, fragment)
        text_format.Merge(override.text, merged)
    except text_format.ParseError as exc:
        raise RepositoryError(f"config override {override.source} ({override.target}): {exc}") from exc
    return merged


def render_config(config: TritonModelConfig) -> str:
    """The ``config.pbtxt`` text of a config: :data:`HEADER` and ``text_format`` of :func:`to_proto`."""
    from google.protobuf import text_format

    notes = "".join(f"# with override {o.source} (sha256 {o.sha256})\n" for o in config.overrides)
    return HEADER + notes + text_format.MessageToString(to_proto(config), as_utf8=True)


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
                    input_data_file=value.input_data_file,
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
        response_cache=proto.response_cache.enable,
    )


def preferred_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """Preferred sizes for the dynamic batcher: half and full ``max_batch`` (just ``max_batch`` when small)."""
    sizes: Iterable[int] = sorted({max(1, max_batch // 2), max_batch})
    return tuple(size for size in sizes if size > 1) or (max_batch,)
