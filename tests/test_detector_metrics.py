"""What the detector sees, on Triton's /metrics: refusals by reason, sizes and times, verdicts and p_fake.

A fresh server on the session's exported repository (``serve_repo``: the Python models as they are in
``model_repository/python_models``) gets known traffic; the ``aigi_*`` series must move by exactly that much.
"""

from __future__ import annotations

import importlib
import sys
import time
import types
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
from _serve_helpers import SERVE_LABELS, encode, png_claiming, running_server

from aigi.benchmarks.metrics_scrape import Sample, parse_prometheus

REASONS = ("unsupported_format", "too_many_bytes", "too_many_pixels", "corrupt", "other")
PREPROCESS = {"model": "aigi_preprocess", "version": "1"}
NETWORK = {"model": "aigi_cpu", "version": "1"}


def scrape(server: Any) -> list[Sample]:
    # Triton opens its metrics port a moment after HTTP reports ready: wait for it rather than race it
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(server.endpoints["metrics_url"], timeout=10) as response:
                return parse_prometheus(response.read().decode())
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels`` (fails when there is none or several)."""
    found = [s.value for s in samples if s.name == name and labels.items() <= dict(s.labels).items()]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def infer(server: Any, images: list[bytes]) -> tuple[np.ndarray | None, str]:
    """One gRPC request of ``images`` to the ensemble: ``(p_fake, "")`` or ``(None, error message)``."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(server.endpoints["grpc"])
    tensor = grpcclient.InferInput("image", [len(images), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object).reshape(-1, 1))
    try:
        result = client.infer("aigi", [tensor], outputs=[grpcclient.InferRequestedOutput("p_fake")])
    except InferenceServerException as exc:
        return None, str(exc)
    finally:
        client.close()
    return result.as_numpy("p_fake")[:, 0], ""


@pytest.mark.parametrize(
    ("reason", "data"),
    [
        ("unsupported_format", b"these are not the pixels you are looking for\n" * 20),
        ("unsupported_format", b"\x00\x00\x01\x00\x01\x00\x10\x10" + bytes(64)),  # an ICO header: not allowed
        ("corrupt", b""),
        ("corrupt", encode(np.zeros((64, 64, 3), np.uint8), "JPEG")[:200]),
        ("corrupt", b"\x89PNG\r\n\x1a\n" + bytes(40)),
        ("too_many_pixels", png_claiming(50000, 50000)),
        ("too_many_bytes", b"\xff\xd8\xff" + bytes(2048)),
    ],
    ids=["text", "ico", "empty", "truncated-jpeg", "corrupt-png-header", "png-50000x50000", "over-max-bytes"],
)
def test_refusal_reason_names_the_limit_or_fault_when_preprocessing_refuses(
    reason: str, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aigi.errors import InvalidImageError
    from aigi.preprocessing import PreprocessSpec, preprocess

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    monkeypatch.delitem(sys.modules, "aigi.triton_models.preprocess", raising=False)
    model = importlib.import_module("aigi.triton_models.preprocess")
    with pytest.raises(InvalidImageError) as refused:
        preprocess(data, PreprocessSpec(size=32, max_bytes=1024))
    assert model.refusal_reason(str(refused.value)) == reason, str(refused.value)


@pytest.mark.triton
def test_detector_metrics_count_exactly_the_traffic_when_scraped(
    serve_repo: Any, sample_images: list[bytes], bad_images: dict[str, bytes], tmp_path: Any
) -> None:
    with running_server(serve_repo, log_file=tmp_path / "tritonserver.log") as server:
        before = scrape(server)
        for reason in REASONS:  # every series exists before any refusal, so dashboards show 0, not "no data"
            assert value(before, "aigi_images_refused_total", reason=reason, **PREPROCESS) == 0
        for label in SERVE_LABELS:
            value(before, "aigi_verdicts_total", label=label, **NETWORK)

        p_fake, error = infer(server, sample_images)  # 5 good images, one request
        assert p_fake is not None and p_fake.shape == (5,), error
        refusals = {
            "unsupported_format": bad_images["random bytes"],
            "corrupt": bad_images["truncated jpeg"],
            "too_many_pixels": png_claiming(50000, 50000),
            "too_many_bytes": b"\xff\xd8\xff" + bytes(32 * 1024 * 1024),
        }
        for reason, junk in refusals.items():
            answer, error = infer(server, [junk])
            assert answer is None and "invalid image" in error, reason
        after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for reason in REASONS:
        assert delta("aigi_images_refused_total", reason=reason, **PREPROCESS) == (reason in refusals), reason
    for name in ("aigi_preprocess_duration_us", "aigi_image_pixels", "aigi_image_bytes"):
        assert delta(f"{name}_count", **PREPROCESS) == 5, name
    assert delta("aigi_image_bytes_sum", **PREPROCESS) == sum(len(image) for image in sample_images)
    assert delta("aigi_image_pixels_sum", **PREPROCESS) == 180 * 200 + 300 * 260 + 240 * 240 + 230 * 250 + 400 * 320
    assert delta("aigi_image_pixels_bucket", le="65536", **PREPROCESS) == 3  # 180x200, 240x240, 230x250
    assert sum(delta("aigi_verdicts_total", label=label, **NETWORK) for label in SERVE_LABELS) == 5
    assert delta("aigi_p_fake_count", **NETWORK) == 5
    assert delta("aigi_p_fake_sum", **NETWORK) == pytest.approx(float(p_fake.sum()), abs=1e-4)
    assert delta("aigi_p_fake_bucket", le="+Inf", **NETWORK) == 5
    assert delta("aigi_verdicts_total", label="non_finite", **NETWORK) == 0
