"""Serving settings of `aigi export`: configs built as ModelConfig messages, the flags, overrides, real warm-up."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc")

from aigi.checkpoint import ArchitectureMeta, CheckpointMeta  # noqa: E402
from aigi.cli import build_parser  # noqa: E402
from aigi.errors import ExportError, RepositoryError  # noqa: E402
from aigi.export.commands import _serving  # noqa: E402
from aigi.export.repo_writer import NetworkArtifacts, RepositorySpec, build_configs, warmup_image  # noqa: E402
from aigi.export.settings import ServingSettings, parse_instances, parse_sizes, read_override  # noqa: E402
from aigi.export.triton_config import HEADER, ConfigOverride, parse_config, render_config, to_proto  # noqa: E402
from aigi.preprocessing import PreprocessSpec  # noqa: E402


def _meta() -> CheckpointMeta:
    return CheckpointMeta(
        architecture=ArchitectureMeta(source="tiny", vision_config={"hidden_size": 8}),
        task="source",
        labels=["real", "fake"],
        preprocessing=PreprocessSpec(size=64),
        threshold=0.5,
    )


def _configs(backend: str = "cpu", precision: str = "fp32", **serving):
    spec = RepositorySpec(
        "det", backend, precision, _meta(), 8, NetworkArtifacts({}), serving=ServingSettings(**serving)
    )
    return build_configs(spec)


def _serving_from(*argv: str) -> ServingSettings:
    args = build_parser().parse_args(["export", "--checkpoint", "run", "--backend", "cpu", *argv])
    return _serving(args)


@pytest.mark.parametrize("backend,precision", [("cpu", "fp32"), ("onnx", "fp16"), ("trt", "fp16")])
def test_written_config_is_text_format_of_model_config_when_rendered(backend, precision):
    from google.protobuf import text_format

    for config in _configs(backend, precision, response_cache=True):
        text = render_config(config)
        proto = parse_config(text)
        assert text == HEADER + text_format.MessageToString(proto, as_utf8=True)
        assert proto == to_proto(config)


def test_serving_flags_show_up_in_configs_when_given():
    serving = _serving_from(
        "--instances",
        "preprocess=2,network=3",
        "--max-queue-delay-us",
        "500",
        "--preferred-batch-sizes",
        "4,8",
        "--response-cache",
        "--warmup-batch-sizes",
        "1,2,8",
    )
    ensemble, preprocess, network = (to_proto(c) for c in _configs(**serving.__dict__))
    assert ensemble.response_cache.enable and not preprocess.response_cache.enable
    assert [(g.count, g.kind) for g in preprocess.instance_group] == [(2, 2)]  # KIND_CPU
    assert [g.count for g in network.instance_group] == [3]
    for proto in (preprocess, network):
        assert proto.dynamic_batching.max_queue_delay_microseconds == 500
        assert list(proto.dynamic_batching.preferred_batch_size) == [4, 8]
        assert [w.batch_size for w in proto.model_warmup] == [1, 2, 8]
    assert {w.inputs["image"].input_data_file for w in preprocess.model_warmup} == {"image.png"}
    assert all(w.inputs["pixel_values"].random_data for w in network.model_warmup)


def test_serving_defaults_keep_todays_configs_when_no_flag_is_given():
    ensemble, preprocess, network = (to_proto(c) for c in _configs(**_serving_from().__dict__))
    assert not ensemble.HasField("response_cache") and not ensemble.model_warmup
    assert [g.count for g in preprocess.instance_group] == [g.count for g in network.instance_group] == [1]
    assert network.dynamic_batching.max_queue_delay_microseconds == 2000
    assert list(network.dynamic_batching.preferred_batch_size) == [4, 8]
    assert [w.batch_size for w in network.model_warmup] == [w.batch_size for w in preprocess.model_warmup] == [1, 8]
    gpu = to_proto(_configs("onnx", "fp32", instances={"network": 2})[2])
    assert [(g.count, g.kind) for g in gpu.instance_group] == [(2, 1)]  # KIND_GPU
    assert not to_proto(_configs(warmup_batch_sizes=())[2]).model_warmup


def test_serving_flags_are_refused_when_malformed():
    with pytest.raises(ExportError, match="--instances"):
        parse_instances("ensemble=2")
    with pytest.raises(ExportError, match="at least 1"):
        parse_instances("network=0")
    with pytest.raises(ExportError, match="--preferred-batch-sizes"):
        parse_sizes("4,x", "--preferred-batch-sizes")
    with pytest.raises(ExportError, match="at most --max-batch"):
        _configs(preferred_batch_sizes=(16,))
    with pytest.raises(ExportError, match="--max-queue-delay-us"):
        ServingSettings(max_queue_delay_us=-1)


def test_override_merges_scalars_and_appends_repeated_fields_when_mode_is_merge():
    text = 'dynamic_batching { max_queue_delay_microseconds: 100 preferred_batch_size: 2 }\nparameters { key: "x" '
    text += 'value { string_value: "1" } }\ninstance_group { count: 1 kind: KIND_CPU }\n'
    override = ConfigOverride("preprocess", "ops.pbtxt", text)
    _, preprocess, network = _configs(overrides=[override])
    proto = to_proto(preprocess)
    assert proto.dynamic_batching.max_queue_delay_microseconds == 100
    assert list(proto.dynamic_batching.preferred_batch_size) == [4, 8, 2]
    assert [g.count for g in proto.instance_group] == [1, 1]
    assert proto.parameters["x"].string_value == "1" and "preprocessing" in proto.parameters
    assert "# with override ops.pbtxt (sha256 " + override.sha256 in render_config(preprocess)
    assert to_proto(network).dynamic_batching.max_queue_delay_microseconds == 2000  # aimed at preprocess only


def test_override_replaces_repeated_fields_when_mode_is_replace():
    text = "dynamic_batching { preferred_batch_size: 2 }\ninstance_group { count: 4 kind: KIND_CPU }\n"
    _, _, network = _configs(overrides=[ConfigOverride("det_cpu", "ops.pbtxt", text, replace=True)])
    proto = to_proto(network)
    assert list(proto.dynamic_batching.preferred_batch_size) == [2]
    assert [g.count for g in proto.instance_group] == [4]
    assert proto.dynamic_batching.max_queue_delay_microseconds == 2000  # untouched scalars stay
    assert proto.dynamic_batching.default_queue_policy.max_queue_size == 64


def test_override_is_refused_when_it_names_no_model_or_is_not_model_config(tmp_path):
    with pytest.raises(ExportError, match="no such model"):
        _configs(overrides=[ConfigOverride("det_onnx", "ops.pbtxt", "max_batch_size: 4")])
    bad = _configs(overrides=[ConfigOverride("ensemble", "ops.pbtxt", "max_batch: 4")])[0]
    with pytest.raises(RepositoryError, match=r"config override ops.pbtxt \(ensemble\)"):
        render_config(bad)
    with pytest.raises(ExportError, match="cannot read"):
        read_override("network", tmp_path / "missing.pbtxt")


def test_read_override_records_sha256_of_the_file_when_read(tmp_path):
    import hashlib

    path = tmp_path / "ops.pbtxt"
    path.write_bytes(b"max_batch_size: 4\r\n")
    override = read_override("network", path, replace=True)
    assert override.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and override.replace


def test_warmup_image_is_serialized_as_one_bytes_element_when_written():
    from io import BytesIO

    from PIL import Image

    data = warmup_image(64)
    (length,) = struct.unpack("<I", data[:4])
    assert length == len(data) - 4  # Triton reads TYPE_STRING warm-up files as length-prefixed elements
    assert Image.open(BytesIO(data[4:])).size == (64, 64)


@pytest.mark.triton
def test_server_warms_up_every_instance_at_each_batch_size_when_exported_with_warmup(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from _export_helpers import make_tiny_checkpoint
    from _serve_helpers import running_server

    from aigi.cli import main

    repo = tmp_path / "repo"
    argv = ["-q", "export", "--checkpoint", str(make_tiny_checkpoint(tmp_path / "run")), "--repo", str(repo)]
    argv += ["--backend", "cpu", "--max-batch", "4", "--no-timing", "--intra-op-threads", "1"]
    assert main([*argv, "--instances", "preprocess=2", "--warmup-batch-sizes", "1,2,4"]) == 0
    assert (repo / "aigi_preprocess" / "warmup" / "image.png").is_file()
    log = tmp_path / "tritonserver.log"
    with running_server(repo, log_file=log, log_verbose=1) as server:
        assert len(server.stub_pids("aigi_preprocess")) == 2
    text = log.read_text()
    for instance in ("aigi_preprocess_0_0", "aigi_preprocess_0_1"):
        for size in (1, 2, 4):  # the encoded PNG decoded by each instance (a failed decode fails the load)
            assert f"instance {instance} is running warmup sample 'image_batch_{size}'" in text
    for size in (1, 2, 4):
        assert f"instance aigi_cpu_0_0 is running warmup sample 'random_batch_{size}'" in text
    assert "failed to run warmup" not in text


@pytest.mark.triton
def test_server_answers_repeated_image_from_cache_when_exported_with_response_cache(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    import urllib.request

    from _export_helpers import make_tiny_checkpoint
    from _serve_helpers import running_server

    from aigi.cli import main
    from aigi.health import canary

    repo = tmp_path / "repo"
    argv = ["-q", "export", "--checkpoint", str(make_tiny_checkpoint(tmp_path / "run")), "--repo", str(repo)]
    argv += ["--backend", "cpu", "--max-batch", "4", "--no-timing", "--intra-op-threads", "1", "--response-cache"]
    assert main(argv) == 0
    with running_server(repo) as server:
        assert any(arg.startswith("--cache-config=local,size=") for arg in server.command(Path("/d"), Path("/b")))
        answers = [canary(server.endpoints["http_url"]) for _ in range(3)]  # the same image bytes three times
        with urllib.request.urlopen(server.endpoints["metrics_url"], timeout=10) as response:
            metrics = response.read().decode()
    assert all(answer.ok for answer in answers) and len({answer.detail for answer in answers}) == 1
    hits = [line for line in metrics.splitlines() if line.startswith('nv_cache_num_hits_per_model{model="aigi"')]
    assert hits and float(hits[0].split()[-1]) == 2.0  # the first answer was computed, the next two came from cache
