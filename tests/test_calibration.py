"""Temperature scaling: the fit, the calibration error, ``aigi.json``'s field, the graph and the served threshold."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _export_helpers import make_tiny_checkpoint  # noqa: E402
from _training_helpers import make_easy_dataset, make_tiny_clip_dir  # noqa: E402

from aigi.checkpoint import CheckpointMeta, load_meta, save_meta  # noqa: E402
from aigi.errors import CheckpointError  # noqa: E402
from aigi.labels import p_fake  # noqa: E402
from aigi.training.calibration import (  # noqa: E402
    expected_calibration_error,
    fit_binary_temperature,
    fit_temperature,
    reliability,
    softmax,
)
from aigi.training.evaluate import calibrate, fit_calibration  # noqa: E402

LABELS = ["real", "gen_a", "gen_b"]


def _synthetic(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``temperature`` times too sharp: labels drawn from ``softmax(true)``, logits ``true * temperature``."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0.0, 2.0, size=(n, len(LABELS)))
    probs = softmax(true).astype(np.float64)
    cumulative = probs.cumsum(axis=1)
    targets = (rng.random((n, 1)) > cumulative).sum(axis=1).clip(max=len(LABELS) - 1)
    return (true * temperature).astype(np.float32), targets.astype(np.int64)


def test_fit_temperature_recovers_known_temperature_when_logits_are_scaled_by_it() -> None:
    logits, targets = _synthetic(20000, 2.5)
    assert fit_temperature(logits, targets) == pytest.approx(2.5, rel=0.05)


def test_fit_binary_temperature_recovers_known_temperature_when_logits_are_scaled_by_it() -> None:
    logits, targets = _synthetic(20000, 2.5, seed=4)
    assert fit_binary_temperature(logits, targets != 0) == pytest.approx(2.5, rel=0.05)


def test_fit_temperature_is_one_when_no_target_is_known() -> None:
    logits, _ = _synthetic(10, 2.0)
    assert fit_temperature(logits, np.full(10, -1)) == 1.0


def test_ece_is_near_zero_when_scores_are_calibrated() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random(200_000)
    is_fake = rng.random(scores.size) < scores
    assert expected_calibration_error(scores, is_fake) < 0.01


def test_ece_is_large_when_scores_are_over_confident() -> None:
    rng = np.random.default_rng(2)
    scores = rng.random(200_000)
    is_fake = rng.random(scores.size) < scores
    sharp = 1.0 / (1.0 + np.exp(-4.0 * np.log(scores / (1.0 - scores))))
    assert expected_calibration_error(sharp, is_fake) > 0.15
    assert reliability(sharp, is_fake).counts.sum() == scores.size


def _meta_dict(run: Path) -> dict:
    return json.loads((run / "aigi.json").read_text())


def test_old_aigi_json_loads_with_temperature_one_when_field_is_absent(tmp_path: Path) -> None:
    from aigi.training.model import load_checkpoint

    run = make_tiny_checkpoint(tmp_path / "run")
    document = _meta_dict(run)
    document.pop("calibration")
    (run / "aigi.json").write_text(json.dumps(document))
    assert load_meta(run).temperature == 1.0
    document["calibration"] = {"method": "val_real_fpr", "target_fpr": 0.05}
    (run / "aigi.json").write_text(json.dumps(document))
    detector, meta = load_checkpoint(run)
    assert meta.temperature == 1.0 and detector.temperature == 1.0


def test_temperature_round_trips_through_aigi_json_when_set(tmp_path: Path) -> None:
    run = make_tiny_checkpoint(tmp_path / "run")
    meta = load_meta(run)
    meta.temperature = 2.5
    save_meta(run, meta)
    assert _meta_dict(run)["calibration"]["temperature"] == 2.5
    assert load_meta(run).temperature == 2.5


@pytest.mark.parametrize("bad", [0, -1.0, "2", float("inf"), True])
def test_aigi_json_is_rejected_when_temperature_is_not_a_positive_number(tmp_path: Path, bad) -> None:
    document = _meta_dict(make_tiny_checkpoint(tmp_path / "run"))
    document["calibration"] = {"temperature": bad}
    with pytest.raises(CheckpointError, match="temperature"):
        CheckpointMeta.from_dict(document)


def test_onnx_graph_matches_calibrated_pytorch_when_temperature_is_not_one(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from aigi.export import parity
    from aigi.export.onnx_export import export_onnx
    from aigi.training.model import load_checkpoint

    run = make_tiny_checkpoint(tmp_path / "run")
    meta = load_meta(run)
    meta.temperature = 2.5
    save_meta(run, meta)
    detector, meta = load_checkpoint(run)
    summary = export_onnx(detector, tmp_path / "model.onnx", image_size=meta.preprocessing.size)
    assert summary["temperature"] == 2.5
    batch = parity.random_batches(meta.preprocessing.size, sizes=(4,))[0].pixel_values
    served = parity.onnx_runner(tmp_path / "model.onnx")(batch)
    reference = parity.torch_outputs(detector, batch)
    with torch.no_grad():
        logits = detector(torch.from_numpy(batch)).numpy()
    calibrated = softmax(logits, 2.5)
    for name in ("logits", "probs", "p_fake"):
        np.testing.assert_allclose(served[name], reference[name], atol=1e-4)
    np.testing.assert_allclose(served["probs"], calibrated, atol=1e-4)
    np.testing.assert_allclose(served["p_fake"][:, 0], p_fake(calibrated), atol=1e-4)
    assert np.abs(served["probs"] - softmax(logits)).max() > 1e-3  # the temperature did change the output


def test_threshold_is_set_on_calibrated_p_fake_when_temperature_is_fitted() -> None:
    logits, targets = _synthetic(4000, 3.0, seed=3)
    samples = [SimpleNamespace(label=LABELS[t]) for t in targets]
    threshold, calibration = fit_calibration(logits, samples, LABELS, target_fpr=0.05)
    temperature = calibration["temperature"]
    assert temperature == pytest.approx(3.0, rel=0.1)
    assert calibration["val_binary_nll_after"] < calibration["val_binary_nll_before"]
    served = p_fake(softmax(logits, temperature))
    is_real = targets == 0
    assert np.mean(served[is_real] >= np.float32(threshold)) == pytest.approx(calibration["achieved_fpr"])
    assert calibration["achieved_fpr"] <= 0.05
    uncalibrated, _ = calibrate(softmax(logits), is_real, 0.05)
    assert abs(uncalibrated - threshold) > 1e-3  # the same rule on raw p_fake would have stored another value


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from aigi.cli import main

    root = tmp_path_factory.mktemp("calibrated")
    data = make_easy_dataset(root / "data")
    clip = make_tiny_clip_dir(root / "clip")
    run, out = root / "run", root / "eval"
    argv = ["-q", "train", "--data", str(data), "--out", str(run), "--model", str(clip)]
    assert main([*argv, "--epochs", "1", "--batch-size", "8", "--lr", "3e-3"]) == 0
    assert main(["-q", "eval", "--checkpoint", str(run), "--data", str(data), "--out", str(out)]) == 0
    return run, out, data


def test_eval_reports_ece_before_and_after_with_reliability_diagram_when_evaluated(evaluated) -> None:
    run, out, _ = evaluated
    report = json.loads((out / "report.json").read_text())
    ece = report["calibration_error"]
    assert ece["bins"] == 15 and 0.0 <= ece["test_ece_before"] <= 1.0 and 0.0 <= ece["test_ece_after"] <= 1.0
    assert ece["temperature"] == report["calibration"]["temperature"] == load_meta(run).temperature
    assert (out / "reliability.png").is_file() and report["files"]["reliability"] == "reliability.png"
    assert "Probability calibration" in (out / "REPORT.md").read_text()


def test_served_graph_reproduces_eval_decisions_when_threshold_is_stored(evaluated, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from aigi.export import parity
    from aigi.export.onnx_export import export_onnx
    from aigi.preprocessing import preprocess
    from aigi.training.model import load_checkpoint

    run, out, _ = evaluated
    detector, meta = load_checkpoint(run)
    export_onnx(detector, tmp_path / "model.onnx", image_size=meta.preprocessing.size)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    pixels = np.stack([preprocess(row["path"], meta.preprocessing) for row in rows])
    served = parity.onnx_runner(tmp_path / "model.onnx")(pixels)["p_fake"][:, 0]
    np.testing.assert_allclose(served, [row["p_fake"] for row in rows], atol=1e-4)
    clear = np.abs(served - meta.threshold) > 1e-4  # a score within the tolerance of the threshold may fall either way
    decided = np.asarray([row["is_fake"] for row in rows])
    assert clear.any() and np.array_equal((served >= np.float32(meta.threshold))[clear], decided[clear])
