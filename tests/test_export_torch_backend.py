"""``aigi export --backend torch``: the checkpoint served by PyTorch through ``aigi serve`` (the wheel's server, CPU),
within 1e-4 of in-process PyTorch, and clear errors for settings it cannot serve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("tritonclient.grpc")

from _export_helpers import make_tiny_checkpoint  # noqa: E402
from _serve_helpers import SERVE_MAX_BATCH, encode  # noqa: E402

from aigi.cli import main  # noqa: E402
from aigi.errors import ExportError, SettingsError  # noqa: E402
from aigi.export.parity import torch_outputs  # noqa: E402
from aigi.export.torch_network import TorchNetSettings, TorchNetwork, batch_buckets  # noqa: E402

PARITY = 1e-4  # the bar: the served network within 1e-4 of PyTorch
OUTPUTS = ("logits", "probs", "p_fake")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def torch_repo(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("torch") / "repo"
    argv = ["-q", "export", "--checkpoint", str(checkpoint), "--repo", str(repo), "--backend", "torch"]
    assert main([*argv, "--max-batch", str(SERVE_MAX_BATCH), "--intra-op-threads", "1"]) == 0
    return repo


@pytest.fixture(scope="module")
def served(torch_repo: Path) -> Iterator[dict]:
    """``aigi serve`` on the torch repository, as a user starts it (free ports): its ready event and admin key."""
    if not os.environ.get("AIGI_TRITON_DIST"):
        pytest.importorskip("pytriton", reason="nvidia-pytriton (the tritonserver binary) is not installed")
    key_file = torch_repo.parent / "admin-key"
    ports = [arg for name in ("http", "grpc", "metrics") for arg in (f"--{name}-port", "0")]
    argv = [sys.executable, "-m", "aigi.cli", "serve", "--repo", str(torch_repo), *ports]
    argv += ["--admin-key-file", str(key_file), "--log-file", str(torch_repo.parent / "tritonserver.log")]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ready = next((json.loads(line) for line in process.stdout if line.startswith("{")), None)
        if ready is None:
            pytest.fail(f"aigi serve exited with {process.wait(timeout=30)}: {process.stderr.read()[-3000:]}")
        yield {**ready, "admin_key": key_file.read_text().strip()}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _images() -> list[bytes]:
    rng = np.random.default_rng(5)
    return [
        encode(rng.integers(0, 256, (180, 200, 3), dtype=np.uint8), "PNG"),
        encode(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8), "JPEG", quality=90),
        encode(rng.integers(0, 256, (240, 240), dtype=np.uint8), "PNG"),
    ]


def _infer_network(url: str, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput("pixel_values", list(pixel_values.shape), "FP32")
        tensor.set_data_from_numpy(pixel_values)
        result = client.infer("aigi_torch", [tensor])
        return {name: result.as_numpy(name) for name in (*OUTPUTS, "label_id")}
    finally:
        client.close()


@pytest.mark.triton
def test_torch_network_matches_pytorch_within_1e4_when_served_by_aigi_serve(served: dict, checkpoint: Path) -> None:
    from aigi.training.model import load_checkpoint

    detector, _ = load_checkpoint(checkpoint)
    pixel_values = np.random.default_rng(0).standard_normal((5, 3, 224, 224), dtype=np.float32)
    reference = torch_outputs(detector, pixel_values)
    answer = _infer_network(served["grpc"], pixel_values)
    for name in OUTPUTS:
        assert answer[name].dtype == np.float32, name
        assert np.abs(answer[name].astype(np.float64) - reference[name]).max() <= PARITY, name
    assert answer["label_id"].dtype == np.int64
    assert np.array_equal(answer["label_id"], reference["label_id"])


@pytest.mark.triton
def test_ensemble_answers_images_within_1e4_of_pytorch_when_network_is_torch(served: dict, checkpoint: Path) -> None:
    from aigi.client.detector import Detector
    from aigi.preprocessing import preprocess_batch
    from aigi.training.model import load_checkpoint

    detector, meta = load_checkpoint(checkpoint)
    images = _images()
    reference = torch_outputs(detector, preprocess_batch(images, meta.preprocessing))
    with Detector(served["grpc"], protocol="grpc", preprocess="server") as client:
        assert client.info.network_model == "aigi_torch"
        results = client.detect(images, raise_errors=True)
    probs = np.array([[result.scores[label] for label in meta.labels] for result in results])
    assert np.abs(probs - reference["probs"]).max() <= PARITY
    assert np.abs(np.array([result.p_fake for result in results]) - reference["p_fake"][:, 0]).max() <= PARITY


@pytest.mark.triton
def test_torch_network_refuses_to_load_when_a_parameter_is_bad(served: dict) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from aigi.server import ADMIN_HEADER

    client = httpclient.InferenceServerClient(served["http"])
    try:
        config = client.get_model_config("aigi_torch")
        config["parameters"]["compile"] = {"string_value": "fastest"}
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("aigi_torch", headers={ADMIN_HEADER: served["admin_key"]}, config=json.dumps(config))
    finally:
        client.close()
    assert "compile must be one of none, default, reduce-overhead, max-autotune, got 'fastest'" in str(refused.value)
    pixel_values = np.zeros((1, 3, 224, 224), np.float32)
    assert _infer_network(served["grpc"], pixel_values)["probs"].shape == (1, 3)  # the loaded version still serves


def test_repository_check_passes_and_manifest_records_torch_when_exported(torch_repo: Path) -> None:
    from aigi.export.repo_check import check_repository
    from aigi.manifest import read_manifest

    report = check_repository(torch_repo)
    assert report.ok, report.problems
    entry = read_manifest(torch_repo)["exports"]["aigi"]
    assert (entry["backend"], entry["network_model"], entry["precision"]) == ("torch", "aigi_torch", "fp32")
    version = torch_repo / "aigi_torch" / "1"
    for name in ("model.py", "network_common.py", "model.safetensors", "aigi.json"):
        assert (version / name).is_file(), name
    ensemble = (torch_repo / "aigi" / "config.pbtxt").read_text()
    assert 'model_name: "aigi_torch"' in ensemble


def test_repository_check_names_the_parameter_when_torch_config_is_bad(torch_repo: Path, tmp_path: Path) -> None:
    import shutil

    from aigi.export.repo_check import check_repository

    repo = Path(shutil.copytree(torch_repo, tmp_path / "repo"))
    config = repo / "aigi_torch" / "config.pbtxt"
    config.write_text(config.read_text().replace('string_value: "fp32"', 'string_value: "int4"'))
    problems = check_repository(repo).problems
    assert any("precision must be one of fp32, bf16, fp16, got 'int4'" in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--precision", "bf16", "--device", "cpu"], "precision bf16 is CUDA autocast and device cpu serves fp32 only"),
        (["--precision", "int8"], "--precision int8 does not apply to --backend torch"),
        (["--intra-op-threads", "-1"], "intra_op_threads must be 0 (default) or more"),
    ],
    ids=["bf16-on-cpu", "int8", "negative-threads"],
)
def test_export_refuses_with_one_line_when_torch_settings_are_bad(
    checkpoint: Path, tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    argv = ["export", "--checkpoint", str(checkpoint), "--repo", str(tmp_path / "repo"), "--backend", "torch"]
    assert main([*argv, *flags]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_export_refuses_torch_flags_when_backend_is_not_torch(checkpoint: Path, tmp_path: Path) -> None:
    from aigi.export.pipeline import ExportOptions, run_export

    options = ExportOptions(checkpoint, tmp_path / "repo", "cpu", device="cuda")
    with pytest.raises(ExportError, match="--device and --compile apply to --backend torch only"):
        run_export(options, echo=lambda _: None, show_progress=False)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"compile": "fastest"}, "compile must be one of"),
        ({"device": "tpu"}, "device must be one of auto, cpu, cuda, got 'tpu'"),
        ({"intra_op_threads": "two"}, "intra_op_threads must be a whole number, got 'two'"),
        ({"precision": "fp16", "device": "cpu"}, "device cpu serves fp32 only"),
    ],
    ids=["compile", "device", "threads", "fp16-on-cpu"],
)
def test_torch_settings_name_the_parameter_when_a_value_is_bad(parameters: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        TorchNetSettings.from_parameters(parameters)


def test_torch_network_refuses_to_load_when_it_needs_a_gpu_the_machine_lacks(checkpoint: Path) -> None:
    with pytest.raises(SettingsError, match="precision bf16 needs a CUDA GPU and PyTorch sees none here"):
        TorchNetwork(checkpoint, TorchNetSettings("auto", "bf16"), max_batch=4, cuda_available=False)
    with pytest.raises(SettingsError, match="device cuda, but PyTorch sees no CUDA GPU here"):
        TorchNetwork(checkpoint, TorchNetSettings("cuda", "fp32"), max_batch=4, cuda_available=False)


def test_batch_buckets_cover_every_size_up_to_max_batch_when_compiled() -> None:
    assert batch_buckets(1) == (1,)
    assert batch_buckets(8) == (1, 2, 4, 8)
    assert batch_buckets(12) == (1, 2, 4, 8, 12)
    for max_batch in (1, 5, 32, 100):
        buckets = batch_buckets(max_batch)
        assert all(any(size <= bucket for bucket in buckets) for size in range(1, max_batch + 1))
        assert max(buckets) == max_batch


@pytest.mark.gpu
def test_export_checks_bf16_on_the_gpu_when_cuda_is_present(checkpoint: Path, tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    repo = tmp_path / "repo"
    argv = ["-q", "export", "--checkpoint", str(checkpoint), "--repo", str(repo), "--backend", "torch"]
    assert main([*argv, "--precision", "bf16", "--max-batch", "4"]) == 0
    step = json.loads((repo / "aigi_export_report.json").read_text())["steps"][0]
    assert step["status"] == "ok" and "on cuda" in step["parity"]["artifact"], step
