"""The client's I/O-free core (settings, retry decisions, model info, chunking), tested without a server."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from aigi.client import AsyncDetector, Detector
from aigi.client.core import (
    DetectorSettings,
    as_iterable,
    assemble,
    client_side_info,
    network_model_of,
    newest_version,
    split_chunks,
)
from aigi.client.images import Prepared
from aigi.client.model_info import ModelInfo
from aigi.client.result import Result
from aigi.client.retry import (
    NOT_READY,
    REJECTED,
    RETRY,
    TIMEOUT,
    Attempts,
    backoff_delay,
    classify,
)
from aigi.errors import (
    ClientError,
    ModelNotReadyError,
    RequestRejectedError,
    RequestTimeoutError,
    ServerUnreachableError,
    SettingsError,
)
from aigi.preprocessing import PreprocessSpec

ENSEMBLE_CONFIG = {
    "config": {
        "name": "aigi",
        "max_batch_size": 16,
        "parameters": {
            "labels": {"string_value": '["real", "gan", "diff"]'},
            "threshold": {"string_value": "0.4"},
            "network_model": {"string_value": "aigi_cpu"},
            "preprocessing": {"string_value": '{"size": 224, "max_bytes": 1000}'},
        },
    }
}


def _server_error(status: str, message: str = "boom") -> InferenceServerException:
    return InferenceServerException(message, status=status)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_server_error("StatusCode.UNAVAILABLE", "failed to connect to all addresses"), RETRY),
        (_server_error("StatusCode.RESOURCE_EXHAUSTED", "Exceeds maximum queue size"), RETRY),
        (_server_error("503"), RETRY),
        (_server_error("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded"), TIMEOUT),
        (_server_error("StatusCode.NOT_FOUND", "Request for unknown model"), NOT_READY),
        (_server_error("400", "Request for unknown model: 'x' has no available versions"), NOT_READY),
        (_server_error("StatusCode.INVALID_ARGUMENT", "invalid image: not a decodable image"), REJECTED),
        (_server_error("500", "preprocessing failed: KeyError"), REJECTED),
        (ConnectionRefusedError(111, "Connection refused"), RETRY),
        (ConnectionResetError(104, "reset"), RETRY),
        (TimeoutError("timed out"), TIMEOUT),
    ],
)
def test_classify_names_the_failure_when_given_each_server_condition(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_classify_reraises_when_the_exception_is_a_bug_not_a_server_condition() -> None:
    with pytest.raises(KeyError):
        classify(KeyError("our bug"))


def test_backoff_delay_doubles_with_jitter_and_caps_when_attempts_grow() -> None:
    for attempt, nominal in [(0, 0.2), (1, 0.4), (3, 1.6), (5, 5.0), (9, 5.0)]:
        delays = [backoff_delay(attempt, 0.2) for _ in range(200)]
        assert min(delays) >= nominal * 0.5 and max(delays) <= nominal
        assert max(delays) - min(delays) > nominal * 0.1  # jittered, so clients do not retry in lockstep


def _settings(retries: int = 3) -> DetectorSettings:
    return DetectorSettings("127.0.0.1:1", retries=retries, backoff=0.01, timeout=2.0)


def _run(attempts: Attempts, failures: list[BaseException]) -> int:
    """Drive ``attempts`` with a call that fails with ``failures`` in turn, then succeeds; returns the tries."""
    tries = 0
    for _ in attempts:
        tries += 1
        if failures:
            attempts.failed(failures.pop(0))
            continue
        return tries
    raise attempts.exhausted()


def test_attempts_retries_unanswered_calls_then_succeeds_when_the_server_comes_back() -> None:
    retried: list[int] = []
    attempts = Attempts(_settings(), "infer", "aigi", on_retry=lambda: retried.append(1))
    refused = ConnectionRefusedError(111, "refused")
    assert _run(attempts, [refused, refused]) == 3
    assert len(retried) == 2


def test_attempts_raises_server_unreachable_after_every_try_when_nobody_answers() -> None:
    retried: list[int] = []
    attempts = Attempts(_settings(retries=2), "infer", "aigi", on_retry=lambda: retried.append(1))
    with pytest.raises(ServerUnreachableError, match="after 3 attempts"):
        _run(attempts, [ConnectionRefusedError(111, "refused")] * 5)
    assert len(retried) == 2  # the last failure is not followed by a retry


def test_attempts_raises_timeout_without_retrying_when_the_deadline_expired() -> None:
    retried: list[int] = []
    attempts = Attempts(_settings(), "infer", "aigi", on_retry=lambda: retried.append(1))
    with pytest.raises(RequestTimeoutError, match="did not answer within 2 s"):
        _run(attempts, [_server_error("StatusCode.DEADLINE_EXCEEDED")])
    assert retried == []


def test_attempts_raises_rejected_at_once_when_the_server_refuses_the_input() -> None:
    with pytest.raises(RequestRejectedError, match="invalid image"):
        _run(Attempts(_settings(), "infer", "aigi"), [_server_error("StatusCode.INVALID_ARGUMENT", "invalid image")])


def test_attempts_fails_metadata_at_once_but_retries_inference_when_the_model_is_not_ready() -> None:
    not_ready = _server_error("StatusCode.NOT_FOUND", "Request for unknown model")
    with pytest.raises(ModelNotReadyError):
        _run(Attempts(_settings(), "metadata", "aigi"), [not_ready])
    assert _run(Attempts(_settings(), "infer", "aigi"), [not_ready, not_ready]) == 3  # a restarted server loads


def test_model_info_reads_labels_threshold_batch_and_spec_when_given_an_ensemble_config() -> None:
    info = ModelInfo.from_config("aigi", ENSEMBLE_CONFIG, version="3")
    assert info.labels == ("real", "gan", "diff")
    assert (info.threshold, info.max_batch_size, info.network_model, info.version) == (0.4, 16, "aigi_cpu", "3")
    assert info.preprocessing == PreprocessSpec(size=224, max_bytes=1000)
    # HTTP returns the config unwrapped; the same info comes out
    assert ModelInfo.from_config("aigi", ENSEMBLE_CONFIG["config"], version="3") == info


def test_client_side_info_targets_the_network_with_the_smaller_batch_when_preprocessing_locally() -> None:
    info = ModelInfo.from_config("aigi", ENSEMBLE_CONFIG)
    local = client_side_info(info, {"max_batch_size": 8}, "2")
    assert (local.name, local.max_batch_size, local.version, local.labels) == ("aigi_cpu", 8, "2", info.labels)
    bare = ModelInfo.from_config("other", {"max_batch_size": 4, "parameters": {}})
    with pytest.raises(ClientError, match="use preprocess='server'"):
        network_model_of(bare)


def test_newest_version_compares_numbers_when_versions_have_different_lengths() -> None:
    assert newest_version(["2", "10", "9"]) == "10"
    assert newest_version([]) == ""


def test_split_and_assemble_keep_input_order_when_some_images_failed_locally() -> None:
    items = [Prepared(index=i, source=f"img{i}", payload=b"x") for i in range(5)]
    items[1].payload, items[1].error = None, "invalid image: junk"
    chunks = split_chunks(items, 3)
    assert [[item.index for item in chunk] for chunk in chunks] == [[0, 2, 3], [4]]
    answered = [[Result(source=item.source, label="real") for item in chunk] for chunk in chunks]
    results = assemble(items, chunks, answered)
    assert [result.source for result in results] == [f"img{i}" for i in range(5)]
    assert [result.error for result in results] == [None, "invalid image: junk", None, None, None]


def test_as_iterable_wraps_one_image_and_keeps_collections_when_given_either() -> None:
    array = np.zeros((4, 4, 3), np.uint8)
    for single in ("a.png", b"bytes", array):
        assert list(as_iterable(single))[0] is single
    images = ["a.png", "b.png"]
    assert as_iterable(images) is images


@pytest.mark.parametrize("cls", [Detector, AsyncDetector])
def test_detector_signature_spells_out_keyword_only_settings_when_inspected(cls: type) -> None:
    parameters = inspect.signature(cls).parameters
    assert list(parameters)[:2] == ["url", "protocol"]
    assert parameters["url"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    keyword_only = {name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert {"protocol", "model", "preprocess", "timeout", "retries", "backoff", "max_in_flight"} <= keyword_only
    assert parameters["retries"].default == 8
    with pytest.raises(TypeError):
        cls("127.0.0.1:8001", "http")  # protocol is keyword-only


def test_detector_settings_raise_settings_error_when_a_choice_is_unknown() -> None:
    with pytest.raises(SettingsError, match="protocol must be one of"):
        Detector(protocol="carrier-pigeon")
    with pytest.raises(SettingsError, match="preprocess must be one of"):
        DetectorSettings(preprocess="both")
    assert Detector("http://host:8000/", protocol="http").url == "host:8000"
