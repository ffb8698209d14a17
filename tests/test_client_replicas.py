"""The client over several real Triton servers: spreading, failover, restarts, dns:///, TLS and headers.

Two servers on the exported test repository stand for two replicas; a third serves gRPC over mutual TLS and
restricts inference to callers that send a token header (Triton's own ``--grpc-use-ssl-mutual`` and
``--*-restricted-*`` flags). Triton's HTTP endpoint has no TLS of its own, so HTTPS goes through a small
TLS-terminating TCP proxy in front of it, as an ingress would. Certificates are made with the ``openssl`` CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _serve_helpers import SERVE_LABELS, running_server

from aigi.cli import main
from aigi.client import AsyncDetector, Detector, RequestRejectedError, Result, ServerUnreachableError
from aigi.server import TritonServer, free_port

pytestmark = pytest.mark.triton

TOKEN_HEADER = "aigi-token"
TOKEN = "replica-test-token-0123456789"
# Triton's gRPC frontend reads a restricted-protocol header under this prefix; HTTP reads it as it is
HEADERS = {"grpc": {f"triton-grpc-protocol-{TOKEN_HEADER}": TOKEN}, "http": {TOKEN_HEADER: TOKEN}}


# -- servers and certificates -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(serve_repo: Path) -> Iterator[tuple[TritonServer, TritonServer]]:
    """Two servers on the same repository: two replicas of one deployment."""
    with running_server(serve_repo, exit_timeout_s=2) as first, running_server(serve_repo, exit_timeout_s=2) as second:
        yield first, second


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate (PEM files)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not installed")
    folder = tmp_path_factory.mktemp("certs")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    openssl(
        "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=aigi test CA", *ca_ext
    )
    uses = {
        "server": "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth",
        "client": "extendedKeyUsage=clientAuth",
    }
    for who, extensions in uses.items():
        (folder / f"{who}.ext").write_text(extensions + "\nbasicConstraints=CA:FALSE\n")
        openssl("req", *key, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN=aigi test {who}")
        openssl(
            "x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{who}.pem", "-days", "2", "-extfile", f"{who}.ext",
        )  # fmt: skip
    return {name: str(folder / name) for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.fixture(scope="module")
def secured(serve_repo: Path, certs: dict[str, str]) -> Iterator[TritonServer]:
    """A server whose gRPC endpoint takes only mutual TLS, and whose inference needs the token header."""
    tls = [
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={certs['server.pem']}",
        f"--grpc-server-key={certs['server.key']}",
        f"--grpc-root-cert={certs['ca.pem']}",
    ]
    token = [
        f"--http-restricted-api=inference:{TOKEN_HEADER}={TOKEN}",
        f"--grpc-restricted-protocol=inference:{TOKEN_HEADER}={TOKEN}",
    ]
    with running_server(serve_repo, exit_timeout_s=2, extra_args=tls + token) as server:
        yield server


class TLSProxy:
    """A TLS-terminating TCP proxy, as an ingress in front of Triton's HTTP port: TLS outside, plaintext inside.

    With ``client_ca`` it demands a client certificate signed by that CA (mutual TLS).
    """

    def __init__(self, upstream: str, certfile: str, keyfile: str, client_ca: str | None = None) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certfile, keyfile)
        if client_ca:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes_failed = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            outside = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshakes_failed += 1
            conn.close()
            return
        # one thread per connection, both directions: an SSL socket is not read and written from two threads
        with outside, socket.create_connection(self.upstream) as inside, contextlib.suppress(OSError):
            while True:
                ready = [outside] if outside.pending() else select.select([outside, inside], [], [], 60)[0]
                if not ready:
                    return
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (inside if source is outside else outside).sendall(data)

    def close(self) -> None:
        self.listener.close()


def _inferences(server: TritonServer) -> int:
    """Images the server's ensemble has answered since it started (Triton's statistics extension)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.endpoints["http"])
    try:
        stats = client.get_inference_statistics("aigi")
    finally:
        client.close()
    return int(stats["model_stats"][0]["inference_count"])


def _served_since(servers: tuple[TritonServer, ...], before: list[int]) -> list[int]:
    return [_inferences(server) - count for server, count in zip(servers, before, strict=True)]


def _all_ok(results: list[Result]) -> bool:
    return all(result.ok and result.label in SERVE_LABELS for result in results)


# -- spreading, failover, restarts -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_detector_spreads_requests_over_both_replicas_when_given_a_list(
    pair, sample_images, protocol: str, flavour: str
) -> None:
    urls = [server.endpoints[protocol] for server in pair]
    before = [_inferences(server) for server in pair]
    images = (sample_images * 8)[:32]  # four requests of eight

    async def run_async() -> list[Result]:
        async with AsyncDetector(urls, protocol=protocol, max_in_flight=2) as detector:
            return await detector.detect(images)

    if flavour == "sync":
        with Detector(urls, protocol=protocol, max_in_flight=2) as detector:
            results = detector.detect(images)
    else:
        results = asyncio.run(run_async())
    assert _all_ok(results)
    deadline = time.monotonic() + 5  # Triton records a request's statistics just after answering it
    while (served := _served_since(pair, before)) and sum(served) < len(images) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(served) == len(images)
    assert all(count > 0 for count in served), served  # both replicas got requests


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_detector_answers_every_image_when_one_replica_is_sigkilled_mid_call_and_uses_it_after_restart(
    pair, sample_images, protocol: str
) -> None:
    victim, survivor = pair
    images = (sample_images * 20)[:96]  # twelve requests, two in flight
    with Detector(
        [victim.endpoints[protocol], survivor.endpoints[protocol]], protocol=protocol, max_in_flight=2
    ) as det:
        reference = det.detect(images)
        assert _all_ok(reference)
        sent_before = det.stats.requests

        def kill_after_two_requests() -> None:
            deadline = time.monotonic() + 30
            while det.stats.requests < sent_before + 2 and time.monotonic() < deadline:
                time.sleep(0.001)
            victim.kill()  # SIGKILL: no draining, requests in flight are cut

        fault = threading.Thread(target=kill_after_two_requests)
        fault.start()
        results = det.detect(images)  # must not raise
        fault.join()
        assert not victim.running
        assert [result.error for result in results] == [None] * len(images)
        np.testing.assert_allclose([r.p_fake for r in results], [r.p_fake for r in reference], atol=1e-5)
        assert det.stats.retries > 0  # requests that found the victim dead went to the survivor

        victim.restart()  # same ports, fresh statistics
        deadline = time.monotonic() + 20
        while _inferences(victim) == 0 and time.monotonic() < deadline:
            assert _all_ok(det.detect(images[:16]))
        assert _inferences(victim) > 0  # back in the rotation once its cool-down ended


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_detector_answers_at_once_without_sleeping_when_one_listed_replica_is_a_dead_port(
    pair, sample_images, protocol: str, monkeypatch
) -> None:
    import aigi.client.detector as detector_module

    slept: list[float] = []
    monkeypatch.setattr(detector_module, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=slept.append))
    dead = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with Detector([dead, pair[0].endpoints[protocol]], protocol=protocol, max_in_flight=2) as detector:
        for _ in range(3):
            assert _all_ok(detector.detect((sample_images * 5)[:24]))
        assert detector.stats.retries >= 1  # the dead one was tried, then skipped
    assert slept == []  # never a backoff while another replica was up
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_dns_target_resolves_the_name_to_replicas_when_given_dns_localhost(pair, sample_images, protocol: str) -> None:
    port = pair[0].ports[protocol]
    target = f"dns:///localhost:{port}"
    with Detector(target, protocol=protocol) as detector:
        assert _all_ok(detector.detect(sample_images))
        # localhost may also resolve to ::1, where nothing listens: that replica is skipped, nothing raises
        assert f"127.0.0.1:{port}" in detector.replicas.addresses

    async def run_async() -> list[Result]:
        async with AsyncDetector(target, protocol=protocol) as detector:
            return await detector.detect(sample_images)

    assert _all_ok(asyncio.run(run_async()))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tls_url_fails_with_a_tls_error_not_plaintext_when_the_server_speaks_plaintext(pair, protocol: str) -> None:
    url = ("https://" if protocol == "http" else "grpcs://") + pair[0].endpoints[protocol]
    started = time.monotonic()
    with Detector(url, protocol=protocol) as detector, pytest.raises(ServerUnreachableError, match="(?i)TLS|SSL"):
        detector.detect([b"x"])
    assert time.monotonic() - started < 10  # a handshake that cannot work is not retried for retry_timeout


# -- TLS and headers --------------------------------------------------------------------------------------------


def _tls(certs: dict[str, str], client_cert: bool = True) -> dict[str, str]:
    options = {"root_certificates": certs["ca.pem"]}
    if client_cert:
        options.update(certificate_chain=certs["client.pem"], private_key=certs["client.key"])
    return options


def test_grpc_mutual_tls_and_a_token_header_reach_the_server_when_both_are_given(secured, certs, sample_images) -> None:
    url = "grpcs://" + secured.endpoints["grpc"]
    with Detector(url, headers=HEADERS["grpc"], **_tls(certs)) as detector:
        assert _all_ok(detector.detect(sample_images))

    async def run_async() -> list[Result]:
        async with AsyncDetector(url, headers=HEADERS["grpc"], **_tls(certs)) as detector:
            return await detector.detect(sample_images)

    assert _all_ok(asyncio.run(run_async()))
    # the header is what opens inference: without it, over the same TLS, every image is refused
    with Detector(url, **_tls(certs)) as detector:
        refused = detector.detect(sample_images[:2])
        assert all("restricted" in (result.error or "") for result in refused)
        with pytest.raises(RequestRejectedError, match=TOKEN_HEADER):
            detector.detect(sample_images[:1], raise_errors=True)


def test_grpc_tls_fails_when_the_ca_or_the_client_certificate_is_missing(secured, certs) -> None:
    url = "grpcs://" + secured.endpoints["grpc"]
    started = time.monotonic()
    with Detector(url, headers=HEADERS["grpc"]) as detector, pytest.raises(ServerUnreachableError, match="TLS"):
        detector.info  # noqa: B018 - the system CAs do not know the test CA: the handshake fails, not retried
    assert time.monotonic() - started < 10
    # Triton closes the connection of a client without a certificate; gRPC reports only a closed socket
    with (
        Detector(url, retry_timeout=1, **_tls(certs, client_cert=False)) as detector,
        pytest.raises(ServerUnreachableError, match="no Triton server answered"),
    ):
        detector.info  # noqa: B018
    with pytest.raises(ServerUnreachableError):  # and plaintext gets nowhere with a TLS endpoint
        Detector(secured.endpoints["grpc"], retry_timeout=1).info  # noqa: B018


def test_https_through_a_tls_proxy_carries_mutual_tls_and_the_token_header_when_protocol_is_http(
    secured, certs, sample_images
) -> None:
    proxy = TLSProxy(secured.endpoints["http"], certs["server.pem"], certs["server.key"], client_ca=certs["ca.pem"])
    url = f"https://127.0.0.1:{proxy.port}"
    try:
        with Detector(url, protocol="http", headers=HEADERS["http"], **_tls(certs)) as detector:
            assert _all_ok(detector.detect(sample_images))

        async def run_async() -> list[Result]:
            async with AsyncDetector(url, protocol="http", headers=HEADERS["http"], **_tls(certs)) as detector:
                return await detector.detect(sample_images)

        assert _all_ok(asyncio.run(run_async()))
        with Detector(url, protocol="http", **_tls(certs)) as detector:
            assert all("restricted" in (result.error or "") for result in detector.detect(sample_images[:2]))
        failed_before = proxy.handshakes_failed
        with (
            Detector(url, protocol="http", headers=HEADERS["http"]) as detector,
            pytest.raises(ServerUnreachableError, match="TLS .* failed: .*certificate verify failed"),
        ):
            detector.info  # noqa: B018 - the system CAs do not know the test CA
        deadline = time.monotonic() + 5  # the proxy's thread sees the aborted handshake a moment later
        while proxy.handshakes_failed == failed_before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.handshakes_failed > failed_before  # refused at the handshake: nothing went out in plaintext
    finally:
        proxy.close()


def test_predict_cli_classifies_over_mutual_tls_with_a_header_when_given_the_tls_options(
    secured, certs, sample_images, tmp_path, capsys
) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(sample_images[0])
    dead = f"127.0.0.1:{free_port()}"
    argv = ["predict", "--url", f"{dead},{secured.endpoints['grpc']}", "--ssl", "--ca", certs["ca.pem"]]
    argv += ["--cert", certs["client.pem"], "--key", certs["client.key"], "--json", str(image)]
    header = f"--header=triton-grpc-protocol-{TOKEN_HEADER}={TOKEN}"
    assert main([*argv, header]) == 0, capsys.readouterr().err
    out = capsys.readouterr()
    assert '"error": null' in out.out and "1 images: " in out.err
    assert main(argv) == 1  # without the header the image is refused
    assert "restricted" in capsys.readouterr().out
