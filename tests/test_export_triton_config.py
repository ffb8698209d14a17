"""Typed Triton configs: built as tritonclient's ModelConfig, written as text, parsed back (no model needed)."""

from __future__ import annotations

import pytest

pytest.importorskip("tritonclient.grpc")

from aigi.checkpoint import ArchitectureMeta, CheckpointMeta  # noqa: E402
from aigi.errors import ExportError, RepositoryError  # noqa: E402
from aigi.export.repo_writer import NetworkArtifacts, RepositorySpec, build_configs  # noqa: E402
from aigi.export.triton_config import (  # noqa: E402
    DynamicBatching,
    QueuePolicy,
    TensorSpec,
    TritonModelConfig,
    config_from_proto,
    parse_config,
    preferred_batch_sizes,
    render_config,
)
from aigi.preprocessing import PreprocessSpec  # noqa: E402


def _meta(labels=("real", "sd", "mj", "dalle")) -> CheckpointMeta:
    return CheckpointMeta(
        architecture=ArchitectureMeta(source="tiny", vision_config={"hidden_size": 8}),
        task="source",
        labels=list(labels),
        preprocessing=PreprocessSpec(size=64),
        threshold=0.35,
    )


def _spec(backend: str, precision: str, **kwargs) -> RepositorySpec:
    return RepositorySpec("det", backend, precision, _meta(), 16, NetworkArtifacts({}), **kwargs)


@pytest.mark.parametrize("backend,precision", [("cpu", "fp32"), ("cpu", "int8"), ("onnx", "fp16"), ("trt", "fp16")])
def test_render_config_round_trips_through_model_config_when_parsed(backend, precision):
    spec = _spec(backend, precision, python_env={"EXECUTION_ENV_PATH": "$$TRITON_MODEL_DIRECTORY/env.tar.gz"})
    for config in build_configs(spec):
        proto = parse_config(render_config(config))
        assert proto.name == config.name
        assert config_from_proto(proto) == config


def test_configs_follow_contract_when_built_for_cpu():
    ensemble, preprocess, network = build_configs(_spec("cpu", "int8", python_env={"EXECUTION_ENV_PATH": "/env"}))
    assert (ensemble.name, preprocess.name, network.name) == ("det", "det_preprocess", "det_cpu")
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == network.max_batch_size == 16
    assert [(t.name, t.data_type, t.dims) for t in ensemble.inputs] == [("image", "TYPE_STRING", (1,))]
    assert ensemble.output("probs").label_filename == "labels.txt" and ensemble.output("probs").dims == (4,)
    assert ensemble.output("p_fake").dims == (1,)
    assert ensemble.parameters["threshold"] == "0.35" and ensemble.parameters["network_model"] == "det_cpu"
    assert [step.model_name for step in ensemble.ensemble_steps] == ["det_preprocess", "det_cpu"]
    assert preprocess.backend == "python" and preprocess.output("pixel_values").dims == (3, 64, 64)
    assert preprocess.parameters["EXECUTION_ENV_PATH"] == "/env"
    assert network.backend == "python" and network.instance_groups[0].kind == "KIND_CPU"
    assert network.parameters["onnx_file"] == "model.onnx" and network.parameters["EXECUTION_ENV_PATH"] == "/env"
    assert [o.name for o in network.outputs] == ["logits", "probs", "p_fake", "label_id"]
    assert network.output("label_id").data_type == ensemble.output("label_id").data_type == "TYPE_INT64"
    assert network.warmups[0].batch_size == 1
    assert network.dynamic_batching.max_queue_delay_microseconds == 2000


def test_configs_use_gpu_instances_when_backend_is_onnx_or_trt():
    onnx_network = build_configs(_spec("onnx", "fp32"))[2]
    trt_network = build_configs(_spec("trt", "fp16"))[2]
    assert onnx_network.backend == "onnxruntime" and onnx_network.instance_groups[0].kind == "KIND_GPU"
    assert trt_network.platform == "tensorrt_plan" and trt_network.default_model_filename == "model.plan"


def test_parameters_survive_round_trip_when_they_need_escaping():
    text = 'quote " backslash \\ newline \n tab \t unicode é ✓'
    config = TritonModelConfig("m", 0, [TensorSpec("x", "TYPE_FP32", ())], [], backend="python", parameters={"p": text})
    proto = parse_config(render_config(config))
    assert proto.parameters["p"].string_value == text
    assert proto.max_batch_size == 0 and list(proto.input[0].dims) == []


def test_parse_config_raises_repository_error_when_text_is_invalid():
    with pytest.raises(RepositoryError, match="not a valid Triton ModelConfig"):
        parse_config('name: "x"\nmax_batch_size: "eight"\n', "x/config.pbtxt")


def test_repository_spec_rejects_precision_when_backend_does_not_offer_it():
    with pytest.raises(ExportError, match="--precision int8 does not apply to --backend trt"):
        _spec("trt", "int8")


def test_tensor_spec_rejects_unknown_type_when_built():
    with pytest.raises(ValueError, match="unknown data type"):
        TensorSpec("x", "FLOAT", (1,))


def test_preferred_batch_sizes_stay_within_max_when_small():
    assert preferred_batch_sizes(32) == (16, 32)
    assert preferred_batch_sizes(1) == (1,)
    assert DynamicBatching(preferred_batch_size=[2]).preferred_batch_size == (2,)


def test_configs_bound_the_queue_when_model_has_a_dynamic_batcher():
    ensemble, preprocess, network = build_configs(_spec("cpu", "fp32", max_queue_size=3, queue_timeout_ms=250))
    assert ensemble.dynamic_batching is None  # ensembles have no scheduler queue
    for config in (preprocess, network):
        text = render_config(config)
        assert (  # REJECT is the enum's zero: protobuf text format leaves it out, and it parses back as REJECT
            "  default_queue_policy {\n"
            "    default_timeout_microseconds: 250000\n"
            "    allow_timeout_override: true\n"
            "    max_queue_size: 3\n"
            "  }\n"
        ) in text
        proto = parse_config(text)
        policy = proto.dynamic_batching.default_queue_policy
        assert (policy.max_queue_size, policy.default_timeout_microseconds, policy.allow_timeout_override) == (
            3,
            250_000,
            True,
        )
        assert config_from_proto(proto).dynamic_batching.default_queue_policy == QueuePolicy("REJECT", 250_000, True, 3)


def test_dynamic_batching_renders_no_queue_policy_when_none_is_set():
    config = TritonModelConfig(
        "m", 4, [TensorSpec("x", "TYPE_FP32", (2,))], [], backend="python", dynamic_batching=DynamicBatching(100, (4,))
    )
    text = render_config(config)
    assert "default_queue_policy" not in text
    assert config_from_proto(parse_config(text)).dynamic_batching == DynamicBatching(100, (4,))


def test_queue_policy_rejects_bad_values_when_built():
    with pytest.raises(ValueError, match="timeout action"):
        QueuePolicy("DROP")
    with pytest.raises(ValueError, match="must not be negative"):
        QueuePolicy(max_queue_size=-1)
    with pytest.raises(ExportError, match="--max-queue-size"):
        _spec("cpu", "fp32", max_queue_size=-1)
