"""``aigi explain``: exact per-patch logits for mean pooling, gradient maps for CLS pooling, files and CLI errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _training_helpers import make_easy_dataset  # noqa: E402

from aigi.checkpoint import CheckpointMeta  # noqa: E402
from aigi.cli import main  # noqa: E402
from aigi.preprocessing import PreprocessSpec, preprocess  # noqa: E402
from aigi.training.explain import EXPLANATIONS_FILENAME, GRID_FILENAME, patch_logits, score_patches  # noqa: E402
from aigi.training.model import build_from_meta, create_detector, save_checkpoint  # noqa: E402

LABELS = ["real", "gen_a", "gen_b"]


def _checkpoint(run: Path, pooling: str = "mean", labels: list[str] = LABELS) -> Path:
    detector, arch = create_detector("tiny", num_labels=len(labels), seed=5)
    if pooling != arch.pooling:
        arch = dataclasses.replace(arch, pooling=pooling)
        torch.manual_seed(5)
        detector = build_from_meta(arch, len(labels))
    with torch.no_grad():  # a non-zero residual stem and head, so every term of the map is exercised
        detector.vision.embeddings.patch_embedding.residual.weight.normal_(std=0.02)
        detector.head.weight.normal_(std=0.5)
        detector.head.bias.normal_(std=0.1)
    meta = CheckpointMeta(arch, "source", labels, PreprocessSpec(size=224), threshold=0.5)
    save_checkpoint(run, detector, meta)
    return run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_easy_dataset(tmp_path_factory.mktemp("data"), per_split={"test": 3}, size=232)


def test_patch_logits_average_to_the_model_logits_when_pooling_is_mean() -> None:
    detector, _ = create_detector("tiny", num_labels=3, seed=2)
    with torch.no_grad():
        detector.head.weight.normal_(std=0.5)
        detector.vision.embeddings.patch_embedding.residual.weight.normal_(std=0.02)
    detector.eval()
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        per_patch, logits = patch_logits(detector, pixels)
        expected = detector(pixels)
    assert per_patch.shape == (2, (224 // 16) ** 2, 3)
    assert torch.allclose(per_patch.mean(dim=1), expected, atol=1e-5)
    assert torch.allclose(logits, expected, atol=1e-5)
    scores, numpy_logits = score_patches(detector, pixels, "auto")
    fake = numpy_logits[:, 1:].argmax(axis=1) + 1
    margin = numpy_logits[np.arange(2), fake] - numpy_logits[:, 0]
    assert scores.shape == (2, 14, 14) and np.allclose(scores.mean(axis=(1, 2)), margin, atol=1e-5)


def test_explain_writes_heatmaps_json_and_grid_with_224_over_patch_cells_when_given_images_and_data(
    tmp_path: Path, dataset: Path
) -> None:
    run = _checkpoint(tmp_path / "run")
    image = dataset / "test" / "real" / "000.png"
    out = tmp_path / "explain"
    code = main(["explain", str(image), "--checkpoint", str(run), "--out", str(out), "--data", str(dataset)]
                + ["--per-class", "1"])  # fmt: skip
    assert code == 0
    document = json.loads((out / EXPLANATIONS_FILENAME).read_text())
    assert document["method"] == "patch-logits" and document["grid"] == [14, 14]
    records = document["images"]
    assert records[0]["name"] == "000" and records[0]["label"] is None
    assert {r["label"] for r in records[1:]} >= {"real", "gen_a", "gen_b"}
    for record in records:
        assert (out / record["heatmap"]).is_file()
        scores = np.asarray(record["scores"])
        assert scores.shape == (14, 14) and np.isfinite(scores).all()
        assert abs(scores.mean() - record["margin"]) < 1e-4  # exact decomposition, up to the JSON's rounding
        assert record["p_fake"] == pytest.approx(1.0 - record["probs"]["real"], abs=1e-5)
    assert (out / GRID_FILENAME).is_file()


def test_gradient_map_is_finite_and_patch_sized_when_the_model_pools_the_cls_token(
    tmp_path: Path, dataset: Path
) -> None:
    run = _checkpoint(tmp_path / "run", pooling="cls")
    images = [str(dataset / "test" / "gen_a" / "000.png"), str(dataset / "test" / "real" / "001.png")]
    out = tmp_path / "explain"
    assert main(["explain", *images, "--checkpoint", str(run), "--out", str(out)]) == 0
    document = json.loads((out / EXPLANATIONS_FILENAME).read_text())
    assert document["method"] == "gradient" and document["pooling"] == "cls"
    for record in document["images"]:
        scores = np.asarray(record["scores"])
        assert scores.shape == (14, 14) and np.isfinite(scores).all() and np.abs(scores).max() > 0
        assert (out / record["heatmap"]).is_file()


def test_heatmap_crop_is_exactly_what_the_model_sees_when_inverted_from_pixel_values(dataset: Path) -> None:
    from aigi.preprocessing import decode_image, fit_and_crop
    from aigi.training.explain import crop_from_pixels

    spec = PreprocessSpec(size=224)
    path = dataset / "test" / "gen_b" / "002.png"
    assert np.array_equal(crop_from_pixels(preprocess(path, spec), spec), fit_and_crop(decode_image(path), spec))


def test_explain_fails_in_one_line_when_an_image_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _checkpoint(tmp_path / "run")
    missing = tmp_path / "nope.png"
    code = main(["explain", str(missing), "--checkpoint", str(run), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "nope.png" in err and "no such image file" in err
    assert not (tmp_path / "out").exists()


def test_patch_logits_method_is_refused_in_one_line_when_the_model_pools_the_cls_token(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    run = _checkpoint(tmp_path / "run", pooling="cls", labels=["real", "fake"])
    image = str(dataset / "test" / "real" / "000.png")
    code = main(["explain", image, "--checkpoint", str(run), "--out", str(tmp_path / "o"), "--method", "patch-logits"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "mean-pooled" in err
