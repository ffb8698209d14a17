"""The slim client (aigi.client) against a real Triton server serving the exported tiny detector."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys

import numpy as np
import pytest
from _serve_helpers import SERVE_LABELS, SERVE_MAX_BATCH, SERVE_THRESHOLD
from PIL import Image

from aigi.client import (
    AsyncDetector,
    Detector,
    InvalidImageError,
    ModelNotReadyError,
    RequestRejectedError,
    Result,
    ServerUnreachableError,
)
from aigi.server import free_port

FP32_TOLERANCE = 1e-4


def _url(server, protocol: str) -> str:
    return server.endpoints[protocol]


def _assert_matches_reference(results: list[Result], expected: np.ndarray) -> None:
    assert all(result.ok for result in results), [result.error for result in results]
    probs = np.array([[result.scores[label] for label in SERVE_LABELS] for result in results])
    np.testing.assert_allclose(probs, expected, atol=FP32_TOLERANCE, rtol=0)
    np.testing.assert_allclose([r.p_fake for r in results], 1.0 - expected[:, 0], atol=FP32_TOLERANCE, rtol=0)
    for result, row in zip(results, expected, strict=True):
        assert result.label == SERVE_LABELS[int(np.argmax(row))]
        assert result.is_fake == (result.p_fake >= SERVE_THRESHOLD)


@pytest.mark.triton
@pytest.mark.parametrize("preprocess", ["server", "client"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_detector_matches_pytorch_within_fp32_tolerance_when_called_over_each_protocol_and_path(
    triton_server, reference_probs, sample_images, protocol: str, preprocess: str
) -> None:
    # more images than max_batch_size, so the call spans several requests in flight
    images = (sample_images * 4)[: SERVE_MAX_BATCH + 3]
    with Detector(_url(triton_server, protocol), protocol=protocol, preprocess=preprocess, max_in_flight=2) as det:
        results = det.detect(images)
        assert det.info.labels == tuple(SERVE_LABELS)
        assert det.info.threshold == SERVE_THRESHOLD
        assert det.info.max_batch_size == SERVE_MAX_BATCH
        assert det.stats.requests == 2
    _assert_matches_reference(results, reference_probs(images))
    expected_model = "aigi" if preprocess == "server" else "aigi_cpu"
    assert {(r.model, r.model_version) for r in results} == {(expected_model, "1")}


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_detector_matches_pytorch_when_calls_run_concurrently(
    triton_server, reference_probs, sample_images, protocol: str
) -> None:
    async def run() -> list[list[Result]]:
        async with AsyncDetector(_url(triton_server, protocol), protocol=protocol, max_in_flight=3) as detector:
            return await asyncio.gather(*(detector.detect(sample_images[i:]) for i in range(3)))

    for offset, results in enumerate(asyncio.run(run())):
        _assert_matches_reference(results, reference_probs(sample_images[offset:]))


@pytest.mark.triton
def test_detector_accepts_paths_pil_images_and_arrays_when_mixed(
    triton_server, reference_probs, sample_images, tmp_path
) -> None:
    path = tmp_path / "image.jpg"
    path.write_bytes(sample_images[1])
    pil = Image.open(io.BytesIO(sample_images[0]))
    array = np.asarray(Image.open(io.BytesIO(sample_images[4])).convert("RGB"))
    with Detector(_url(triton_server, "grpc")) as detector:
        results = detector.detect([path, pil, array])
    assert results[0].source == str(path)
    assert [r.source for r in results[1:]] == ["<PIL #1>", "<array #2>"]
    _assert_matches_reference(results, reference_probs([sample_images[1], sample_images[0], sample_images[4]]))


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_classification_extension_returns_labels_when_class_count_is_requested(
    triton_server, sample_images, protocol: str
) -> None:
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    client = module.InferenceServerClient(_url(triton_server, protocol))
    tensor = module.InferInput("image", [2, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[sample_images[0]], [sample_images[1]]], dtype=object))
    answer = client.infer("aigi", [tensor], outputs=[module.InferRequestedOutput("probs", class_count=3)])
    rows = answer.as_numpy("probs")
    assert rows.shape == (2, 3)
    for row in rows:
        entries = [entry.decode().split(":") for entry in row]  # "score:index:label", best first
        assert {label for _, _, label in entries} == set(SERVE_LABELS)
        assert all(SERVE_LABELS[int(index)] == label for _, index, label in entries)
        scores = [float(score) for score, _, _ in entries]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_detector_isolates_bad_images_when_a_batch_mixes_them_with_good_ones(
    triton_server, reference_probs, sample_images, bad_images, protocol: str
) -> None:
    good = sample_images[:3]
    images = [good[0], *bad_images.values(), good[1], good[2]]
    with Detector(_url(triton_server, protocol), protocol=protocol) as detector:
        results = detector.detect(images)
        assert detector.stats.split >= 1  # the mixed request was rejected whole, then re-sent image by image
        after = detector.detect([good[0]])  # the server keeps answering
    failed = {name: result for name, result in zip(bad_images, results[1:-2], strict=True)}
    for name, result in failed.items():
        assert result.error and "invalid image" in result.error, (name, result)
        assert result.label is None and result.p_fake is None
    assert "refusing to decode" in failed["png claiming 50000x50000"].error
    assert "empty" in failed["empty"].error
    assert "truncated" in failed["truncated jpeg"].error
    _assert_matches_reference([results[0], results[-2], results[-1]], reference_probs(good))
    _assert_matches_reference(after, reference_probs([good[0]]))


@pytest.mark.triton
def test_server_answers_next_request_when_each_bad_input_is_sent_alone(
    triton_server, sample_images, bad_images
) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(_url(triton_server, "grpc"))

    def send(payload: bytes):
        tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[payload]], dtype=object))
        return client.infer("aigi", [tensor])

    for name, payload in bad_images.items():
        with pytest.raises(InferenceServerException, match="invalid image"):
            send(payload)
        assert send(sample_images[0]).as_numpy("probs").shape == (1, 3), name
    assert client.is_server_live() and client.is_model_ready("aigi")


@pytest.mark.triton
def test_detect_raises_when_raise_errors_is_set_and_an_image_is_bad(triton_server, sample_images) -> None:
    url = _url(triton_server, "grpc")
    with Detector(url, raise_errors=True) as detector, pytest.raises(RequestRejectedError, match="invalid image"):
        detector.detect([sample_images[0], b"junk"])
    with Detector(url, preprocess="client") as detector, pytest.raises(InvalidImageError, match="empty"):
        detector.detect([sample_images[0], b""], raise_errors=True)


@pytest.mark.triton
def test_client_preprocessing_reports_bad_images_locally_when_they_cannot_be_decoded(
    triton_server, sample_images, bad_images
) -> None:
    with Detector(_url(triton_server, "http"), protocol="http", preprocess="client") as detector:
        results = detector.detect([*bad_images.values(), sample_images[0]])
        assert detector.stats.rejected == 0  # nothing bad reached the server
    assert [result.ok for result in results] == [False] * len(bad_images) + [True]


@pytest.mark.triton
def test_detector_raises_model_not_ready_when_model_is_unknown(triton_server) -> None:
    with Detector(_url(triton_server, "grpc"), model="no_such_model") as detector, pytest.raises(ModelNotReadyError):
        detector.detect([b"x"])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_detector_retries_then_raises_server_unreachable_when_port_is_dead(protocol: str) -> None:
    detector = Detector(f"127.0.0.1:{free_port()}", protocol=protocol, retries=2, backoff=0.01, timeout=5)
    with detector, pytest.raises(ServerUnreachableError, match="after 3 attempts"):
        detector.detect([b"x"])
    assert detector.stats.retries == 2


def test_async_detector_raises_server_unreachable_when_port_is_dead() -> None:
    async def run() -> None:
        async with AsyncDetector(f"127.0.0.1:{free_port()}", retries=1, backoff=0.01, timeout=5) as detector:
            await detector.detect([b"x"])

    with pytest.raises(ServerUnreachableError):
        asyncio.run(run())


def test_client_import_loads_no_torch_when_imported_in_fresh_interpreter() -> None:
    code = (
        "import sys, aigi.client, aigi.client.commands\n"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
