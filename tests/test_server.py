"""The embedded Triton server (aigi.server, aigi serve) and the Python-backend models it serves."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from aigi.errors import ServerError
from aigi.server import TritonServer, free_port
from aigi.server_commands import docker_command, image_name


def _grpc(server):
    import tritonclient.grpc as grpcclient

    return grpcclient, grpcclient.InferenceServerClient(server.endpoints["grpc"])


@pytest.mark.triton
def test_triton_server_reports_ready_models_and_endpoints_when_started_on_exported_repo(triton_server) -> None:
    states = {model["name"]: model.get("state") for model in triton_server.models()}
    assert states == {"aigi": "READY", "aigi_preprocess": "READY", "aigi_cpu": "READY"}
    endpoints = triton_server.endpoints
    assert endpoints["grpc"] == f"127.0.0.1:{triton_server.ports['grpc']}"
    assert endpoints["http_url"] == f"http://127.0.0.1:{triton_server.ports['http']}"
    assert triton_server.running


def _preprocess_counts(client) -> tuple[int, int]:
    stats = client.get_inference_statistics("aigi_preprocess", as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def _send_together(grpcclient, client, payloads: dict[str, bytes]) -> dict[str, object]:
    outcomes: dict[str, object] = {}
    done = threading.Event()

    def callback(tag: str):
        def record(result, error) -> None:
            outcomes[tag] = error if error is not None else result.as_numpy("pixel_values")
            if len(outcomes) == len(payloads):
                done.set()

        return record

    for tag, payload in payloads.items():  # sent back to back so the dynamic batcher can merge them
        tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[payload]], dtype=object))
        client.async_infer("aigi_preprocess", [tensor], callback(tag))
    assert done.wait(60)
    return outcomes


@pytest.mark.triton
def test_preprocess_model_fails_only_the_bad_request_when_requests_share_a_batch(triton_server, sample_images) -> None:
    grpcclient, client = _grpc(triton_server)
    payloads = {"good1": sample_images[0], "bad": b"definitely not an image", "good2": sample_images[1]}
    for _ in range(10):  # the batcher merges requests that arrive within its 2 ms window; try until it did
        before = _preprocess_counts(client)
        outcomes = _send_together(grpcclient, client, payloads)
        after = _preprocess_counts(client)
        inferences, executions = after[0] - before[0], after[1] - before[1]
        if executions < inferences:
            break
    assert executions < inferences, "the three requests were never executed together"
    assert "invalid image" in outcomes["bad"].message()
    for tag in ("good1", "good2"):
        assert outcomes[tag].shape == (1, 3, 224, 224)
        assert outcomes[tag].dtype == np.float32


@pytest.mark.triton
def test_network_model_batches_concurrent_requests_when_sent_at_once(triton_server) -> None:
    grpcclient, client = _grpc(triton_server)
    before = client.get_inference_statistics("aigi_cpu", as_json=True)["model_stats"][0]
    pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    pending = []
    for _ in range(24):
        tensor = grpcclient.InferInput("pixel_values", [1, 3, 224, 224], "FP32")
        tensor.set_data_from_numpy(pixels)
        pending.append(client.async_infer("aigi_cpu", [tensor], lambda result, error: None))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = client.get_inference_statistics("aigi_cpu", as_json=True)["model_stats"][0]
        inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
        if inferences >= 24:
            break
        time.sleep(0.05)
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    assert inferences == 24
    assert executions < inferences, f"{inferences} inferences ran in {executions} executions: no batching"


@pytest.mark.triton
def test_triton_server_raises_server_error_with_log_when_a_model_fails_to_load(serve_repo, tmp_path) -> None:
    broken = tmp_path / "repo"
    shutil.copytree(serve_repo, broken)
    (broken / "aigi_cpu" / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    server = TritonServer(broken)
    server.start()
    try:
        with pytest.raises(ServerError, match="exited with code") as caught:
            server.wait_ready(timeout=120)
    finally:
        server.stop()
    assert "aigi_cpu" in str(caught.value)
    assert not server.running


def test_triton_server_raises_server_error_when_repo_is_missing(tmp_path) -> None:
    with pytest.raises(ServerError, match="does not exist"):
        TritonServer(tmp_path / "nowhere").start()


@pytest.mark.triton
def test_triton_server_raises_server_error_when_a_fixed_port_is_taken(triton_server, serve_repo) -> None:
    server = TritonServer(serve_repo, grpc_port=triton_server.ports["grpc"])
    server.start()
    try:
        with pytest.raises(ServerError, match="already in use"):
            server.wait_ready(timeout=120)
    finally:
        server.stop()


def test_print_docker_names_the_aigi_image_the_repo_and_the_ports_when_asked(tmp_path, capsys) -> None:
    from aigi.cli import main

    (tmp_path / "aigi").mkdir()
    (tmp_path / "aigi" / "config.pbtxt").write_text('platform: "ensemble"\n')
    assert main(["serve", "--repo", str(tmp_path), "--http-port", "9000", "--print-docker"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == docker_command(tmp_path, "127.0.0.1", {"http": 9000})
    assert f"-v {tmp_path.resolve()}:/models:ro" in line and "-p 127.0.0.1:9000:8000" in line
    assert line.startswith("docker run ") and line.endswith(f" {image_name()}")


@pytest.mark.triton
def test_serve_command_prints_endpoints_reports_ready_health_and_stops_cleanly_when_sent_sigterm(serve_repo) -> None:
    ports = [free_port() for _ in range(4)]
    command = [sys.executable, "-m", "aigi.cli", "serve", "--repo", str(serve_repo)]
    command += ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    command += ["--health-port", str(ports[3])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        lines = []
        for line in process.stdout:  # blocks until the server is ready and canaried (or the command fails)
            lines.append(line)
            if line.startswith("health "):
                break
        ready = json.loads(next(line for line in lines if line.startswith("{")))
        assert ready["event"] == "ready"
        assert ready["grpc"] == f"127.0.0.1:{ports[1]}"
        assert any(line.startswith("model   aigi ") for line in lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[3]}/ready", timeout=5) as response:
            health = json.loads(response.read())
        assert health["ready"] is True and health["state"] == "serving"
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "tritonserver stopped (exit code 0)" in stderr
    with pytest.raises(OSError):  # nothing listens on the gRPC port any more
        socket.create_connection(("127.0.0.1", ports[1]), timeout=1).close()


@pytest.mark.triton
def test_restart_serves_again_on_the_same_ports_when_the_server_was_running(serve_repo) -> None:
    from aigi.health import canary

    with TritonServer(serve_repo, exit_timeout_s=2) as server:
        ports, pid = dict(server.ports), server.pid
        server.restart()
        assert server.ports == ports and server.pid != pid
        assert canary(server.endpoints["http_url"]).ok


@pytest.mark.triton
def test_wait_ready_picks_fresh_ports_when_an_auto_picked_port_is_taken_before_triton_binds_it(
    serve_repo, monkeypatch
) -> None:
    import aigi.server

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    taken = squatter.getsockname()[1]
    handed_out: list[int] = []
    real_free_port = aigi.server.free_port

    def racy_free_port(host: str = "127.0.0.1") -> int:
        port = taken if not handed_out else real_free_port(host)  # the first pick loses the race
        handed_out.append(port)
        return port

    monkeypatch.setattr(aigi.server, "free_port", racy_free_port)
    try:
        with TritonServer(serve_repo) as server:
            assert taken not in server.ports.values()
            assert len(handed_out) > 3  # three ports picked, then picked again after the lost race
    finally:
        squatter.close()
