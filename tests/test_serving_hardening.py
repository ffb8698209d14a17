"""Hostile callers, hung models and crashes against a real Triton server (issue: hardening the serving path).

Each test starts what it breaks: a server of its own when it kills, stops or restarts something, the shared
session server when it only sends bad input.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _serve_helpers import running_server

from aigi.cli import main
from aigi.client import Detector, Result
from aigi.errors import RequestTimeoutError
from aigi.health import canary
from aigi.server import TritonServer, free_port
from aigi.watchdog import Watchdog

pytestmark = pytest.mark.triton


@pytest.fixture
def own_server(serve_repo: Path) -> Iterator[TritonServer]:
    """A server of this test's own, free to be stopped, killed or restarted."""
    with running_server(serve_repo, exit_timeout_s=2) as server:
        yield server


def _post(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=b"{}", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _http_ready(server: TritonServer) -> int:
    try:
        with urllib.request.urlopen(server.endpoints["http_url"] + "/v2/health/ready", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


# -- finding 1: the model-control API is closed --------------------------------------------------------------


def test_unload_is_refused_and_model_stays_ready_when_caller_has_no_admin_key(triton_server) -> None:
    base = triton_server.endpoints["http_url"]
    assert _post(f"{base}/v2/repository/models/aigi/unload") == 403
    assert _post(f"{base}/v2/repository/models/evil/load") == 403
    assert _post(f"{base}/v2/repository/index") == 403
    assert canary(base).ok  # still serving
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(triton_server.endpoints["grpc"])
    with pytest.raises(InferenceServerException, match="restricted"):
        client.unload_model("aigi")
    with pytest.raises(InferenceServerException, match="restricted"):
        client.register_system_shared_memory("probe", "/probe", 64)
    assert client.is_model_ready("aigi")
    # the key the server was started with opens the repository API (aigi's own commands use it)
    assert _post(f"{base}/v2/repository/index", triton_server.admin_headers) == 200


def test_serve_binds_loopback_and_warns_in_one_line_when_exposed(serve_repo: Path) -> None:
    from aigi.server_commands import exposure_note

    server = TritonServer(serve_repo)
    server.ports = {"http": 1, "grpc": 2, "metrics": 3}
    command = server.command(Path("/dist"), Path("/backends"))
    assert {f"--{kind}-address=127.0.0.1" for kind in ("http", "grpc", "metrics")} <= set(command)
    assert any(arg.startswith("--http-restricted-api=model-repository,shared-memory") for arg in command)
    assert exposure_note("127.0.0.1") is None
    note = exposure_note("0.0.0.0")
    assert note is not None and "\n" not in note and "aigi-admin-key" in note


def test_admin_key_file_is_created_private_and_reused_when_given(tmp_path: Path) -> None:
    from aigi.server_commands import admin_key

    path = tmp_path / "keys" / "admin.key"
    first = admin_key(path)
    assert first and len(first) >= 16
    assert path.stat().st_mode & 0o777 == 0o600
    assert admin_key(path) == first
    path.chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        admin_key(path)


# -- finding 5: health tells the truth ------------------------------------------------------------------------


def test_watchdog_restarts_server_when_preprocessing_stub_hangs_while_triton_says_ready(own_server) -> None:
    watchdog = Watchdog(own_server, interval_s=0.2, timeout_s=3.0, failures=2)
    assert watchdog.check_once() and watchdog.snapshot().ready
    stub = own_server.stub_pids("aigi_preprocess")
    assert len(stub) == 1
    os.kill(stub[0], signal.SIGSTOP)  # a hang: alive, holding its request, answering nothing
    try:
        assert _http_ready(own_server) == 200  # what Triton claims
        assert not canary(own_server.endpoints["http_url"], timeout_s=3.0).ok  # what a caller sees
        assert watchdog.check_once() is False
        state = watchdog.snapshot()
        assert (state.ready, state.state, state.restarts) == (False, "failing", 0)
        assert watchdog.check_once() is True  # second failure in a row: restart, then a canary passes
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stub[0], signal.SIGKILL)
    state = watchdog.snapshot()
    assert (state.ready, state.live, state.state, state.restarts) == (True, True, "serving", 1)
    assert own_server.stub_pids("aigi_preprocess") != stub


def test_watchdog_brings_back_answers_when_preprocessing_stub_is_killed(own_server) -> None:
    watchdog = Watchdog(own_server, interval_s=0.2, timeout_s=3.0, failures=1)
    (stub,) = own_server.stub_pids("aigi_preprocess")
    os.kill(stub, signal.SIGKILL)
    time.sleep(0.5)
    assert _http_ready(own_server) == 200  # Triton still says ready
    assert watchdog.check_once() is True
    assert canary(own_server.endpoints["http_url"]).ok


def test_health_endpoint_reports_not_ready_when_canary_fails_and_ready_after_restart(own_server) -> None:
    from aigi.watchdog import HealthEndpoint

    watchdog = Watchdog(own_server, interval_s=0.2, timeout_s=3.0, failures=3)
    endpoint = HealthEndpoint(watchdog, port=0).start()
    base = f"http://127.0.0.1:{endpoint.port}"

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        assert status("/ready") == 503  # no canary has passed yet
        assert watchdog.check_once()
        assert (status("/ready"), status("/live")) == (200, 200)
        (stub,) = own_server.stub_pids("aigi_preprocess")
        os.kill(stub, signal.SIGSTOP)
        assert not watchdog.check_once()
        assert (status("/ready"), status("/live")) == (503, 200)
        os.kill(stub, signal.SIGKILL)
        watchdog.failures = 1
        assert watchdog.check_once()
        assert status("/ready") == 200
    finally:
        endpoint.stop()


# -- finding 8: the client --------------------------------------------------------------------------------------


def test_detector_answers_every_image_with_default_retries_when_server_is_sigkilled_and_back_in_3_5_s(
    own_server, sample_images
) -> None:
    images = (sample_images * 32)[:64]
    with Detector(own_server.endpoints["grpc"], max_in_flight=2) as detector:
        reference = detector.detect(images)
        assert all(result.ok for result in reference)

        def crash_and_come_back() -> None:
            own_server.kill()
            time.sleep(3.5)
            own_server.restart()

        fault = threading.Thread(target=crash_and_come_back)
        fault.start()
        time.sleep(0.05)
        results = detector.detect(images)
        fault.join()
    assert [result.error for result in results] == [None] * 64
    np.testing.assert_allclose([r.p_fake for r in results], [r.p_fake for r in reference], atol=1e-5)
    assert detector.stats.retries > 0  # the crash was felt, and ridden out


def test_detector_raises_timeout_without_retrying_when_the_deadline_expires(triton_server, sample_images) -> None:
    with Detector(triton_server.endpoints["grpc"], timeout=0.5) as detector:
        detector.info  # noqa: B018 - metadata within the generous deadline first
        detector.timeout = 1e-4
        with pytest.raises(RequestTimeoutError, match="not retried"):
            detector.detect(sample_images[:1])
        assert detector.stats.retries == 0
        assert detector.stats.requests == 1


def test_detector_returns_error_results_when_preparing_one_image_raises_memory_error(
    triton_server, sample_images
) -> None:
    # a 3 TB array view of one byte: copying it raises MemoryError (or the pixel limit refuses it first)
    monster = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=(1_000_000, 1_000_000, 3), strides=(0, 0, 0))
    for preprocess in ("server", "client"):
        with Detector(triton_server.endpoints["grpc"], preprocess=preprocess) as detector:
            results = detector.detect([sample_images[0], monster, sample_images[1]])
        assert [result.ok for result in results] == [True, False, True]
        assert results[1].source == "<array #1>" and results[1].error


def test_detector_streams_a_generator_when_given_one(triton_server, sample_images) -> None:
    sent_before_pull: list[int] = []
    detector = Detector(triton_server.endpoints["grpc"], max_in_flight=2)

    def images() -> Iterator[bytes]:
        for index in range(40):
            sent_before_pull.append(detector.stats.requests)
            yield sample_images[index % len(sample_images)]

    with detector:
        results = detector.detect(images())
        window = detector.info.max_batch_size * detector.max_in_flight
    assert len(results) == 40 and all(isinstance(r, Result) and r.ok for r in results)
    # the first window was sent before the images after it were read
    assert sent_before_pull[window - 1] == 0 and sent_before_pull[window] == window // detector.info.max_batch_size


def test_detector_refuses_an_image_over_the_byte_limit_before_sending_it(triton_server, sample_images) -> None:
    with Detector(triton_server.endpoints["grpc"]) as detector:
        limit = detector.info.preprocessing.max_bytes
        results = detector.detect([sample_images[0], b"\x89PNG" + b"\0" * limit])
        assert results[0].ok and "over the limit" in (results[1].error or "")
        assert detector.stats.requests == 1


def test_server_refuses_an_image_over_the_byte_limit_when_a_client_sends_it_anyway(triton_server) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(triton_server.endpoints["grpc"])
    config = client.get_model_config("aigi_preprocess", as_json=True)["config"]
    limit = json.loads(config["parameters"]["preprocessing"]["string_value"])["max_bytes"]
    payload = np.array([[b"\x89PNG\r\n\x1a\n" + b"\0" * limit]], dtype=object)
    tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
    tensor.set_data_from_numpy(payload)
    with pytest.raises(InferenceServerException, match="invalid image: .*over the limit"):
        client.infer("aigi", [tensor])
    assert canary(triton_server.endpoints["http_url"]).ok


# -- finding 7: a few hundred mutated files through the server --------------------------------------------------


def test_server_answers_every_mutated_image_with_a_verdict_or_invalid_image_when_fuzzed(triton_server) -> None:
    from _fuzz_images import mutated_images

    cases = mutated_images(240, seed=7)
    with Detector(triton_server.endpoints["grpc"], max_in_flight=2) as detector:
        results = detector.detect([payload for _, payload in cases])
    assert len(results) == len(cases)
    unexpected = [
        (name, result.error)
        for (name, _), result in zip(cases, results, strict=True)
        if result.error and "invalid image: " not in result.error
    ]
    assert unexpected == []
    assert any(result.ok for result in results) and any(result.error for result in results)
    assert canary(triton_server.endpoints["http_url"]).ok


# -- finding 11: artifacts ---------------------------------------------------------------------------------------


def test_serve_refuses_in_one_line_when_a_repository_file_was_tampered(
    serve_repo: Path, tmp_path: Path, capsys
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(serve_repo, repo)
    model = repo / "aigi_preprocess" / "1" / "model.py"
    model.write_text(model.read_text() + "\nimport os  # planted\n")
    code = main(["serve", "--repo", str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "MANIFEST.json" in err[0] and "aigi_preprocess/1/model.py" in err[0]


def test_serve_refuses_when_a_bytecode_file_was_planted_in_a_model_folder(serve_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(serve_repo, repo)
    planted = (
        repo / "aigi_preprocess" / "1" / "__pycache__" / f"model.cpython-{sys.version_info[0]}{sys.version_info[1]}.pyc"
    )
    planted.parent.unlink()  # the sealed blocker file, replaced by a folder holding bytecode
    planted.parent.mkdir()
    planted.write_bytes(b"not really bytecode")
    assert main(["serve", "--repo", str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]) == 2


def test_serve_leaves_repository_verifiable_when_it_has_served(serve_repo: Path, tmp_path: Path) -> None:
    from aigi.manifest import verify_manifest

    repo = tmp_path / "repo"
    shutil.copytree(serve_repo, repo)
    assert verify_manifest(repo)[0] == []
    with TritonServer(repo) as server:
        assert canary(server.endpoints["http_url"]).ok
    assert verify_manifest(repo)[0] == []  # no bytecode written next to the sealed sources


def test_health_command_exits_zero_when_ensemble_answers_and_one_when_nothing_listens(triton_server, capsys) -> None:
    assert main(["health", "--url", triton_server.endpoints["http"]]) == 0
    assert capsys.readouterr().out.startswith("ok aigi at ")
    assert main(["health", "--url", f"127.0.0.1:{free_port()}", "--timeout", "2"]) == 1
    assert capsys.readouterr().out.startswith("FAILED aigi at ")


def test_invalid_image_answers_http_400_and_grpc_invalid_argument_when_bytes_are_junk(triton_server) -> None:
    result = canary(triton_server.endpoints["http_url"], image=b"this is not an image")
    assert not result.ok and result.detail.startswith("HTTP 400: ") and "invalid image: " in result.detail
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"junk"]], dtype=object))
    with pytest.raises(InferenceServerException) as raised:
        grpcclient.InferenceServerClient(triton_server.endpoints["grpc"]).infer("aigi", [tensor])
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"


@pytest.mark.parametrize("ending", ["kill", "stop"])
def test_server_leaves_no_stub_process_when_it_is_killed_or_stopped(serve_repo: Path, ending: str) -> None:
    server = TritonServer(serve_repo, exit_timeout_s=2)
    with server:
        stubs = server.stub_pids()
        assert len(stubs) == 2  # aigi_preprocess and aigi_cpu
        if ending == "stop":
            os.kill(server.stub_pids("aigi_preprocess")[0], signal.SIGSTOP)  # a hung stub outlives a graceful stop
        getattr(server, ending)()
    deadline = time.monotonic() + 30  # a SIGKILL lands at once, but a loaded machine may take a while to show it
    while (server.stub_pids() or any(_running(pid) for pid in stubs)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.stub_pids() == []
    assert [pid for pid in stubs if _running(pid)] == []


def _running(pid: int) -> bool:
    """Whether a process still runs (a zombie, dead and waiting for init to reap it, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
