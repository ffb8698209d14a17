"""The client's I/O-free core (settings, retry decisions, model info, chunking), tested without a server."""

from __future__ import annotations

import inspect
import socket
import ssl
from collections.abc import Callable

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
from aigi.client.protocol import client_kwargs
from aigi.client.replicas import (
    MIN_RESOLVE_GAP_S,
    RESOLVE_EVERY_S,
    Endpoint,
    Replicas,
    addresses_from_addrinfo,
    parse_endpoints,
)
from aigi.client.result import Result
from aigi.client.retry import (
    BUSY,
    MAX_BACKOFF_S,
    NOT_READY,
    REJECTED,
    RETRY,
    TIMEOUT,
    TLS,
    Attempts,
    ModelNotReadyReplyError,
    backoff_delay,
    classify,
)
from aigi.errors import (
    ClientError,
    ModelNotReadyError,
    RequestRejectedError,
    RequestTimeoutError,
    ServerBusyError,
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
        (_server_error("StatusCode.RESOURCE_EXHAUSTED", "Exceeds maximum queue size"), BUSY),
        (_server_error("503"), RETRY),
        (_server_error("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded"), TIMEOUT),
        (_server_error("StatusCode.NOT_FOUND", "Request for unknown model"), NOT_READY),
        (_server_error("400", "Request for unknown model: 'x' has no available versions"), NOT_READY),
        (_server_error("StatusCode.INVALID_ARGUMENT", "invalid image: not a decodable image"), REJECTED),
        (_server_error("500", "preprocessing failed: KeyError"), REJECTED),
        (ConnectionRefusedError(111, "Connection refused"), RETRY),
        (ConnectionResetError(104, "reset"), RETRY),
        (TimeoutError("timed out"), TIMEOUT),
        (ModelNotReadyReplyError("model 'aigi' is not ready"), NOT_READY),
        (_server_error("StatusCode.UNAVAILABLE", "Ssl handshake failed (TSI_PROTOCOL_FAILURE): WRONG_VERSION"), TLS),
        (ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate"), TLS),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), TLS),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), TLS),  # https:// to a plaintext server
        (_server_error("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header 'x'"), REJECTED),
    ],
)
def test_classify_names_the_failure_when_given_each_server_condition(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_classify_reraises_when_the_exception_is_a_bug_not_a_server_condition() -> None:
    with pytest.raises(KeyError):
        classify(KeyError("our bug"))


def test_backoff_delay_doubles_with_jitter_and_caps_at_two_seconds_when_attempts_grow() -> None:
    assert MAX_BACKOFF_S == 2.0  # a server that is back is found within about 2 s
    for attempt, nominal in [(0, 0.2), (1, 0.4), (3, 1.6), (5, 2.0), (9, 2.0), (500, 2.0)]:
        delays = [backoff_delay(attempt, 0.2) for _ in range(200)]
        assert min(delays) >= nominal * 0.5 and max(delays) <= nominal
        assert max(delays) - min(delays) > nominal * 0.1  # jittered, so clients do not retry in lockstep


class Clock:
    """A fake ``time.monotonic()``: waits and calls move it on, nothing sleeps."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now


def _settings(url: str | list[str] = "127.0.0.1:1", **options) -> DetectorSettings:
    return DetectorSettings(url, **{"backoff": 0.2, "timeout": 2.0, **options})


def _drive(
    attempts: Attempts,
    clock: Clock,
    outcome: Callable[[str, float], BaseException | None],
    call_s: float = 0.01,
    log: list[str | float] | None = None,
) -> list[str | float]:
    """Run one call to its end as a detector would, on the fake clock.

    ``outcome(address, now)`` is the exception of a try, or ``None`` for an answer. Returns (and fills ``log`` with)
    an address per try and a number per wait; raises what the attempts raise.
    """
    log = [] if log is None else log
    while (step := attempts.next_step(clock.now)) is not None:
        if step.address is None:
            log.append(step.delay)
            clock.now += step.delay
            continue
        log.append(step.address)
        clock.now += call_s
        error = outcome(step.address, clock.now)
        if error is None:
            attempts.answered()
            return log
        attempts.failed(error, clock.now)
    raise attempts.exhausted()


REFUSED = ConnectionRefusedError(111, "Connection refused")


def _refusing(*dead: str, until: float = float("inf")) -> Callable[[str, float], BaseException | None]:
    """Replicas in ``dead`` refuse connections until ``until``; the others answer."""
    return lambda address, now: REFUSED if address in dead and now < until else None


def _tries(log: list[str | float]) -> list[str]:
    return [entry for entry in log if isinstance(entry, str)]


def _waits(log: list[str | float]) -> list[float]:
    return [entry for entry in log if not isinstance(entry, str)]


def test_attempts_retries_unanswered_calls_then_succeeds_when_the_server_comes_back() -> None:
    settings, clock, retried = _settings(), Clock(), []
    attempts = Attempts(settings, "infer", "aigi", settings.replicas, on_retry=lambda: retried.append(1))
    log = _drive(attempts, clock, _refusing("127.0.0.1:1", until=clock.now + 0.1))
    assert len(_tries(log)) >= 2 and len(retried) == len(_tries(log)) - 1
    assert all(0 < wait <= MAX_BACKOFF_S for wait in _waits(log))  # one replica: wait out its cool-down


def test_attempts_raise_server_unreachable_after_the_count_cap_when_retries_is_set() -> None:
    settings, clock, retried = _settings(retries=2), Clock(), []
    attempts = Attempts(settings, "infer", "aigi", settings.replicas, on_retry=lambda: retried.append(1))
    with pytest.raises(ServerUnreachableError, match="after 3 attempts"):
        _drive(attempts, clock, _refusing("127.0.0.1:1"))
    assert len(retried) == 2  # the last failure is not followed by a retry


def test_attempts_keep_retrying_for_retry_timeout_with_capped_backoff_when_nobody_answers() -> None:
    settings, clock = _settings(retry_timeout=30.0), Clock()
    start = clock.now
    attempts, log = Attempts(settings, "infer", "aigi", settings.replicas), []
    with pytest.raises(ServerUnreachableError, match="no Triton server answered at 127.0.0.1:1 after"):
        _drive(attempts, clock, _refusing("127.0.0.1:1"), log=log)
    assert 30.0 <= clock.now - start <= 30.0 + 0.02  # bounded by time: the last try is made at the deadline
    assert attempts.tries >= 15  # backoff capped at 2 s: the server is probed often enough to be found quickly
    waits = _waits(log)
    assert waits[0] < 0.2 < waits[3] and max(waits) <= MAX_BACKOFF_S  # exponential, then capped


def test_attempts_find_a_restarted_server_within_the_backoff_cap_when_it_was_down_10_s() -> None:
    settings, clock = _settings(), Clock()
    back_at = clock.now + 10.0
    log = _drive(Attempts(settings, "infer", "aigi", settings.replicas), clock, _refusing("127.0.0.1:1", until=back_at))
    assert back_at <= clock.now <= back_at + MAX_BACKOFF_S + 0.1
    assert max(_waits(log)) <= MAX_BACKOFF_S


def test_attempts_move_to_the_next_replica_at_once_when_one_stops_answering() -> None:
    settings, clock = _settings(["a:1", "b:1", "c:1"]), Clock()
    dead = _refusing("a:1")
    logs = [_drive(Attempts(settings, "infer", "aigi", settings.replicas), clock, dead) for _ in range(12)]
    assert all(_waits(log) == [] for log in logs)  # never a wait while another replica is up
    assert all(_tries(log)[-1] in ("b:1", "c:1") for log in logs)
    tries_of_a = sum(_tries(log).count("a:1") for log in logs)
    assert 1 <= tries_of_a <= 3  # after its first failure a:1 sits out its cool-down (12 calls take 0.1 s)
    answered = [_tries(log)[-1] for log in logs]
    assert abs(answered.count("b:1") - answered.count("c:1")) <= 1  # round-robin over the healthy ones


def test_attempts_try_every_other_replica_even_after_retry_timeout_when_one_call_took_it_all() -> None:
    settings, clock = _settings(["a:1", "b:1"], retry_timeout=5.0), Clock()
    slow_refusal = _refusing("a:1")
    log = _drive(Attempts(settings, "infer", "aigi", settings.replicas), clock, slow_refusal, call_s=6.0)
    assert _tries(log)[-1] == "b:1"


def test_attempts_send_once_when_retry_timeout_is_zero_and_the_only_replica_is_dead() -> None:
    settings, clock = _settings(retry_timeout=0.0), Clock()
    attempts = Attempts(settings, "infer", "aigi", settings.replicas)
    with pytest.raises(ServerUnreachableError, match="after 1 attempts"):
        _drive(attempts, clock, _refusing("127.0.0.1:1"))


def test_attempts_raise_timeout_without_retrying_when_the_deadline_expired() -> None:
    settings, clock, retried = _settings(["a:1", "b:1"]), Clock(), []
    attempts = Attempts(settings, "infer", "aigi", settings.replicas, on_retry=lambda: retried.append(1))
    deadline = _server_error("StatusCode.DEADLINE_EXCEEDED")
    with pytest.raises(RequestTimeoutError, match="did not answer within 2 s"):
        _drive(attempts, clock, lambda address, now: deadline)
    assert retried == [] and attempts.tries == 1  # not resent, not even to another replica


def test_attempts_raise_rejected_at_once_and_keep_the_replica_up_when_the_server_refuses_the_input() -> None:
    settings, clock = _settings(), Clock()
    refused = _server_error("StatusCode.INVALID_ARGUMENT", "invalid image")
    with pytest.raises(RequestRejectedError, match="invalid image"):
        _drive(Attempts(settings, "infer", "aigi", settings.replicas), clock, lambda address, now: refused)
    assert not settings.replicas.all_down(clock.now)


def test_attempts_fail_metadata_once_every_replica_said_not_ready_but_retry_inference() -> None:
    not_ready = _server_error("StatusCode.NOT_FOUND", "Request for unknown model")
    settings, clock = _settings(["a:1", "b:1"]), Clock()
    attempts = Attempts(settings, "metadata", "aigi", settings.replicas)
    with pytest.raises(ModelNotReadyError, match="not available at a:1, b:1"):
        _drive(attempts, clock, lambda address, now: not_ready)
    assert attempts.tries == 2  # the other replica was asked first
    settings, clock = _settings(), Clock()
    calls = iter([not_ready, not_ready, None])
    log = _drive(Attempts(settings, "infer", "aigi", settings.replicas), clock, lambda address, now: next(calls))
    assert len(_tries(log)) == 3  # a restarted server answers before its models are loaded


def test_attempts_fail_at_once_on_a_tls_failure_when_no_other_replica_is_left() -> None:
    handshake = _server_error("StatusCode.UNAVAILABLE", "Ssl handshake failed: WRONG_VERSION_NUMBER")
    settings, clock = _settings(["a:1", "b:1"]), Clock()
    log = _drive(
        Attempts(settings, "infer", "aigi", settings.replicas), clock, lambda a, now: handshake if a == "a:1" else None
    )
    assert _tries(log)[-1] == "b:1"
    settings, clock = _settings(), Clock()
    with pytest.raises(ServerUnreachableError, match="TLS with the Triton server at 127.0.0.1:1 failed"):
        _drive(Attempts(settings, "infer", "aigi", settings.replicas), clock, lambda a, now: handshake)
    assert clock.now < 1000.1  # no waiting out retry_timeout: another try would not fix a certificate
    calls = iter([None, handshake, handshake, None])  # answered once, then cut mid-handshake: a restart
    _drive(Attempts(settings, "infer", "aigi", settings.replicas), clock, lambda a, now: next(calls))
    log = _drive(Attempts(settings, "infer", "aigi", settings.replicas), clock, lambda a, now: next(calls))
    assert len(_tries(log)) == 3


def test_attempts_wait_and_then_name_the_dns_failure_when_a_name_never_resolves() -> None:
    settings, clock = _settings("dns:///nowhere.invalid:8001", retry_timeout=3.0), Clock()
    replicas = settings.replicas
    assert replicas.claim_resolve(clock.now) == list(settings.endpoints)
    replicas.resolved({settings.endpoints[0]: OSError("Name or service not known")})
    with pytest.raises(ServerUnreachableError, match="cannot resolve dns:///nowhere.invalid:8001: Name or service"):
        _drive(Attempts(settings, "infer", "aigi", replicas), clock, _refusing())
    assert 3.0 <= clock.now - 1000.0 <= 3.1


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
    assert {"retry_timeout", "ssl", "root_certificates", "private_key", "certificate_chain", "headers"} <= keyword_only
    assert parameters["retry_timeout"].default == 30.0  # rides out a 10 s restart with margin
    assert parameters["retries"].default is None  # no count cap: time bounds the retries
    with pytest.raises(TypeError):
        cls("127.0.0.1:8001", "http")  # protocol is keyword-only


def test_detector_settings_raise_settings_error_when_a_choice_is_unknown() -> None:
    with pytest.raises(SettingsError, match="protocol must be one of"):
        Detector(protocol="carrier-pigeon")
    with pytest.raises(SettingsError, match="preprocess must be one of"):
        DetectorSettings(preprocess="both")
    assert Detector("http://host:8000/", protocol="http").url == "host:8000"


def test_detector_settings_take_one_endpoint_a_list_or_commas_when_given_each() -> None:
    assert Detector("10.0.0.5:8001").url == "10.0.0.5:8001"
    both = Detector(["10.0.0.5:8001", "grpc://10.0.0.6:8001"])
    assert both.url == "10.0.0.5:8001,10.0.0.6:8001" and both.ssl is False
    assert both.replicas.addresses == ["10.0.0.5:8001", "10.0.0.6:8001"]
    assert Detector("a:1, b:2,a:1").replicas.addresses == ["a:1", "b:2"]  # duplicates dropped
    named = Detector("dns:///triton.ns.svc.cluster.local:8001")
    assert named.endpoints == (Endpoint("triton.ns.svc.cluster.local:8001", dns=True),)
    assert named.replicas.addresses == []  # resolved on first use, not in the constructor
    for bad in ["", "dns:///no-port", "dns://8.8.8.8/name:1", "ftp://x:1"]:
        with pytest.raises(SettingsError):
            Detector(bad)
    with pytest.raises(SettingsError, match="grpcs:// URL but the protocol is 'http'"):
        Detector("grpcs://a:1", protocol="http")


def test_detector_settings_turn_tls_on_and_refuse_plaintext_with_it_when_urls_and_ssl_say_so(tmp_path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked until a connection is made")
    assert Detector("https://host:8000", protocol="http").ssl is True  # never silent plaintext
    assert Detector("grpcs://host:8001").ssl is True
    assert Detector("host:8001", root_certificates=str(ca)).ssl is True  # a CA means TLS
    assert Detector("host:8001", ssl=True).ssl is True
    assert Detector("host:8001").ssl is False
    with pytest.raises(SettingsError, match="ssl=True with a plaintext URL"):
        Detector("http://host:8000", protocol="http", ssl=True)
    with pytest.raises(SettingsError, match="certificate option with a plaintext URL"):
        Detector("grpc://host:8001", root_certificates=str(ca))
    with pytest.raises(SettingsError, match="mix plaintext"):
        Detector(["https://a:8000", "http://b:8000"], protocol="http")
    with pytest.raises(SettingsError, match="no such file"):
        Detector("host:8001", root_certificates=str(tmp_path / "missing.pem"))
    with pytest.raises(SettingsError, match="go together"):
        Detector("host:8001", private_key=str(ca))


def test_client_kwargs_carry_tls_files_and_a_short_reconnect_backoff_when_tls_is_on(tmp_path) -> None:
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "key", "cert")}
    for path in files.values():
        path.write_text("x")
    tls = {
        "root_certificates": str(files["ca"]),
        "private_key": str(files["key"]),
        "certificate_chain": str(files["cert"]),
    }
    grpc = client_kwargs(Detector("grpcs://h:1", **tls))
    assert grpc["ssl"] is True and {key: grpc[key] for key in tls} == tls
    assert ("grpc.max_reconnect_backoff_ms", int(MAX_BACKOFF_S * 1000)) in grpc["channel_args"]
    http = client_kwargs(Detector("https://h:1", protocol="http", **tls))
    assert http["ssl"] is True
    assert http["ssl_options"] == {
        "ca_certs": str(files["ca"]),
        "keyfile": str(files["key"]),
        "certfile": str(files["cert"]),
    }
    assert "ssl" not in client_kwargs(Detector("h:1", protocol="http"))


def test_detector_settings_check_headers_and_lowercase_them_for_grpc_when_given() -> None:
    assert Detector("h:1", headers={"X-Token": "s3cret"}).headers == {"x-token": "s3cret"}
    http = Detector("h:1", protocol="http", headers={"X-Token": "s3cret"})
    assert http.headers == {"X-Token": "s3cret"}
    assert http.call_kwargs() == {"headers": {"X-Token": "s3cret"}}
    assert Detector("h:1").call_kwargs() == {"client_timeout": 30.0}
    for bad in [{"X-Token": "a\r\nInjected: 1"}, {"": "x"}, {"X-Token": 3}]:
        with pytest.raises(SettingsError):
            Detector("h:1", headers=bad)


def test_replicas_spread_round_robin_and_skip_one_in_cool_down_when_it_failed() -> None:
    replicas = Replicas(parse_endpoints("a:1,b:1,c:1", "grpc"))
    picks = [replicas.pick(0.0) for _ in range(30)]
    assert sorted(picks.count(address) for address in ("a:1", "b:1", "c:1")) == [10, 10, 10]
    cooldown = replicas.mark_down("b:1", now=1.0, sent_at=0.9, backoff=0.2)
    assert 0.1 <= cooldown <= 0.2
    during = [replicas.pick(1.05) for _ in range(10)]
    assert set(during) == {"a:1", "c:1"}
    assert "b:1" in [replicas.pick(1.0 + cooldown) for _ in range(3)]  # back once the cool-down is over
    assert replicas.pick(0.0, exclude={"a:1", "b:1", "c:1"}) is None


def test_replicas_count_an_outage_once_and_ignore_stale_answers_when_calls_were_in_flight() -> None:
    replicas = Replicas(parse_endpoints("a:1", "grpc"))
    first = replicas.mark_down("a:1", now=5.0, sent_at=4.0, backoff=1.0)
    for _ in range(3):  # the other calls in flight when it died
        assert replicas.mark_down("a:1", now=5.01, sent_at=4.5, backoff=1.0) == 0.0
    state = replicas.state("a:1")
    assert state is not None and state.failures == 1 and state.down_until == 5.0 + first
    assert replicas.all_down(5.01) and replicas.next_up(5.01) == 5.0 + first and replicas.pick(5.01) is None
    assert replicas.soonest() == "a:1"
    replicas.mark_up("a:1", sent_at=4.9)  # an answer to a call sent before it went down says nothing
    assert replicas.all_down(5.01)
    probe = 5.0 + first
    second = replicas.mark_down("a:1", now=probe + 0.01, sent_at=probe, backoff=1.0)
    assert replicas.state("a:1").failures == 2 and 1.0 <= second <= 2.0  # doubled
    replicas.mark_up("a:1", sent_at=probe + second)
    assert not replicas.all_down(probe + second) and replicas.state("a:1").failures == 0


def test_replicas_resolve_every_30_s_or_when_all_failed_and_follow_pods_when_dns_changes() -> None:
    endpoints = parse_endpoints(["dns:///triton:8001", "static:8001"], "grpc")
    name = endpoints[0]
    replicas = Replicas(endpoints)
    assert replicas.claim_resolve(0.0) == [name]
    assert replicas.claim_resolve(0.1) == []  # claimed: one caller resolves
    assert replicas.resolved({name: ["10.0.0.1:8001", "10.0.0.2:8001"]}) == []
    assert replicas.addresses == ["static:8001", "10.0.0.1:8001", "10.0.0.2:8001"]
    assert replicas.claim_resolve(RESOLVE_EVERY_S - 0.1) == []
    replicas.mark_down("10.0.0.2:8001", now=1.0, sent_at=0.5, backoff=0.2)
    assert replicas.claim_resolve(RESOLVE_EVERY_S) == [name]
    gone = replicas.resolved({name: ["10.0.0.2:8001", "10.0.0.3:8001"]})  # a pod left, one came
    assert gone == ["10.0.0.1:8001"]
    assert replicas.addresses == ["static:8001", "10.0.0.2:8001", "10.0.0.3:8001"]
    assert replicas.state("10.0.0.2:8001").failures == 1  # a replica that stays keeps its history
    replicas.resolved({name: OSError("Temporary failure in name resolution")})
    assert "10.0.0.3:8001" in replicas.addresses and "Temporary failure" in replicas.resolve_error
    now = 2 * RESOLVE_EVERY_S
    assert replicas.claim_resolve(now) == [name]
    for address in replicas.addresses:
        replicas.mark_down(address, now=now, sent_at=now, backoff=10.0)
    assert replicas.claim_resolve(now + MIN_RESOLVE_GAP_S / 2) == []  # all failed, but not hammered
    assert replicas.claim_resolve(now + MIN_RESOLVE_GAP_S) == [name]  # all failed: look again early


def test_addresses_from_addrinfo_format_ipv4_and_ipv6_once_each_when_given_getaddrinfo_answers() -> None:
    infos = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.2", 8001)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::1", 8001, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.2", 8001)),
    ]
    assert addresses_from_addrinfo(infos, 8001) == ["10.0.0.2:8001", "[fd00::1]:8001"]
    assert Endpoint("[fd00::1]:8001", dns=True).host_port() == ("fd00::1", 8001)


QUEUE_FULL = InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE")


def test_attempts_moves_to_another_replica_when_one_refuses_with_a_full_queue() -> None:
    settings, clock = _settings(["127.0.0.1:1", "127.0.0.1:2"]), Clock()
    attempts = Attempts(settings, "infer", "aigi", settings.replicas)
    log = _drive(attempts, clock, lambda address, now: QUEUE_FULL if address.endswith(":1") else None)
    assert _tries(log)[-1] == "127.0.0.1:2"  # answered by the replica with room
    assert _waits(log) == []  # no backing off while another replica is up


def test_attempts_raises_server_busy_after_backing_off_when_every_replica_stays_overloaded() -> None:
    settings, clock = _settings(retry_timeout=5.0), Clock()
    attempts = Attempts(settings, "infer", "aigi", settings.replicas)
    start = clock.now
    with pytest.raises(ServerBusyError, match="stayed busy"):
        _drive(attempts, clock, lambda address, now: QUEUE_FULL)
    assert 5.0 <= clock.now - start <= 5.0 + MAX_BACKOFF_S + 0.1  # backed off for the retry time, then gave up
    assert classify(InferenceServerException("Request timeout expired", status="StatusCode.UNAVAILABLE")) == "busy"
