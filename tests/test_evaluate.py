"""``aigi eval``: report files, threshold calibration into ``aigi.json``, robustness, per-image predictions."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _training_helpers import make_easy_dataset, make_tiny_clip_dir  # noqa: E402

from aigi.cli import main  # noqa: E402
from aigi.labels import p_fake  # noqa: E402
from aigi.preprocessing import decode_image, preprocess  # noqa: E402
from aigi.training.evaluate import calibrate, score_split  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    data = make_easy_dataset(root / "data")
    clip = make_tiny_clip_dir(root / "clip")
    run = root / "run"
    argv = ["-q", "train", "--data", str(data), "--out", str(run), "--model", str(clip)]
    assert main([*argv, "--epochs", "2", "--batch-size", "8", "--lr", "3e-3"]) == 0
    return run, data


@pytest.fixture(scope="module")
def evaluated(trained: tuple[Path, Path]) -> tuple[Path, Path, dict]:
    run, data = trained
    out = run / "eval"
    assert main(["-q", "eval", "--checkpoint", str(run), "--data", str(data), "--out", str(out), "--robustness"]) == 0
    return run, out, json.loads((out / "report.json").read_text())


def test_eval_writes_report_plots_and_predictions_when_run_is_evaluated(evaluated) -> None:
    _, out, report = evaluated
    for name in ("report.json", "REPORT.md", "confusion_matrix.png", "roc_curve.png", "robustness.png"):
        assert (out / name).is_file(), name
    test = report["test"]
    assert test["n"] == 18 and test["n_real"] == 6
    assert set(test["per_class"]) == {"real", "gen_a", "gen_b"}
    # the headline metrics are those of the per-image predictions written next to them
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    is_fake = np.asarray([row["label"] != "real" for row in rows])
    correct = np.asarray([row["is_fake"] for row in rows]) == is_fake
    assert test["accuracy"] == pytest.approx(correct.mean())
    assert test["real_accuracy"] == pytest.approx(correct[~is_fake].mean())
    assert test["fake_accuracy"] == pytest.approx(correct[is_fake].mean())
    named = np.asarray([row["predicted"] == row["label"] for row in rows])
    assert test["attribution_accuracy"] == pytest.approx(named.mean())
    scores = np.asarray([row["p_fake"] for row in rows])
    margins = scores[is_fake][:, None] - scores[~is_fake][None, :]  # ROC AUC: P(fake outscores real), ties half
    assert test["roc_auc"] == pytest.approx(np.mean((margins > 0) + 0.5 * (margins == 0)))
    # average precision: the mean, over fakes, of the precision when calling fake every score at least theirs
    precision = [is_fake[scores >= score].mean() for score in scores[is_fake]]
    assert test["average_precision"] == pytest.approx(np.mean(precision))
    matrix = np.asarray(test["confusion_matrix"]["rows_true_cols_predicted"])
    assert matrix.sum() == 18 and np.trace(matrix) == named.sum()
    markdown = (out / "REPORT.md").read_text()
    assert "## Robustness" in markdown and "attribution accuracy" in markdown


def test_eval_stores_threshold_and_calibration_in_aigi_json_when_calibrated_on_val(evaluated) -> None:
    run, _, report = evaluated
    meta = json.loads((run / "aigi.json").read_text())
    assert meta["threshold"] == pytest.approx(report["threshold"])
    calibration = meta["calibration"]
    assert calibration["method"] == "val_real_fpr" and calibration["target_fpr"] == 0.05
    assert calibration["achieved_fpr"] <= 0.05 and calibration["n_val_real"] == 6
    assert meta["metrics"]["test"]["accuracy"] == pytest.approx(report["test"]["accuracy"])


def test_eval_robustness_table_lists_every_perturbation_when_requested(evaluated) -> None:
    _, out, report = evaluated
    table = report["robustness"]
    assert list(table) == ["clean", "jpeg_q95", "jpeg_q75", "jpeg_q50", "blur_sigma1", "blur_sigma2", "downscale_half"]
    metrics = ("accuracy", "real_accuracy", "fake_accuracy", "average_precision", "roc_auc", "attribution_accuracy")
    assert table["clean"] == {key: report["test"][key] for key in metrics}  # the unperturbed row is the test split
    test = report["test"]
    for name, row in table.items():
        assert list(row) == list(metrics), name
        # each row scores all 18 test images: its accuracies count whole images of the split's 18 / 6 real / 12 fake
        for key, n in (("accuracy", test["n"]), ("real_accuracy", test["n_real"]), ("fake_accuracy", test["n_fake"])):
            assert row[key] * n == pytest.approx(round(row[key] * n)), (name, key)
    markdown = (out / "REPORT.md").read_text()
    assert all(f"| {name} |" in markdown for name in table)


def test_eval_predictions_match_the_shared_preprocessing_when_recomputed(evaluated) -> None:
    from aigi.training.model import load_checkpoint

    run, out, report = evaluated
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == report["test"]["n"]
    assert {"path", "label", "predicted", "p_fake", "is_fake", "probs"} <= set(rows[0])
    detector, meta = load_checkpoint(run)
    with torch.inference_mode():
        pixels = torch.from_numpy(preprocess(decode_image(rows[0]["path"]), meta.preprocessing))[None]
        probs = torch.softmax(detector(pixels) / meta.temperature, dim=-1).numpy()  # the served, calibrated probs
    assert float(p_fake(probs)[0]) == pytest.approx(rows[0]["p_fake"], abs=1e-5)
    assert all(row["is_fake"] == (row["p_fake"] >= report["threshold"]) for row in rows)


def test_eval_reports_binary_metrics_without_attribution_when_task_is_binary(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, data = trained
    clip = make_tiny_clip_dir(tmp_path / "clip")
    run = tmp_path / "binary"
    argv = ["-q", "train", "--data", str(data), "--out", str(run), "--model", str(clip), "--task", "binary"]
    assert main([*argv, "--epochs", "1", "--batch-size", "8"]) == 0
    assert main(["-q", "eval", "--checkpoint", str(run), "--data", str(data), "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert "attribution_accuracy" not in report["test"] and "robustness" not in report
    assert report["test"]["confusion_matrix"]["labels"] == ["real", "fake"]


def test_eval_exits_with_one_line_when_checkpoint_is_not_a_run_directory(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["-q", "eval", "--checkpoint", str(tmp_path), "--data", str(trained[1]), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "aigi.json" in err[0]


def test_calibrate_picks_a_threshold_within_target_fpr_when_val_has_real_images() -> None:
    rng = np.random.default_rng(0)
    probs_real = rng.uniform(0.2, 1.0, 200)  # p(real)
    val_probs = np.stack([probs_real, 1 - probs_real], axis=1).astype(np.float32)
    is_real = np.arange(200) < 100
    threshold, record = calibrate(val_probs, is_real, target_fpr=0.1)
    scores = p_fake(val_probs)
    assert np.mean(scores[is_real] >= np.float32(threshold)) <= 0.1
    assert record["achieved_fpr"] == pytest.approx(np.mean(scores[is_real] >= np.float32(threshold)))
    assert record["n_val"] == 200 and record["n_val_real"] == 100


def test_calibrate_keeps_default_threshold_when_val_has_no_real_images() -> None:
    threshold, record = calibrate(np.full((3, 2), 0.5, dtype=np.float32), np.zeros(3, dtype=bool), 0.05)
    assert threshold == 0.5 and record["method"] == "none"


def test_score_split_counts_unknown_generators_as_fake_but_not_in_attribution_when_label_is_new() -> None:
    samples = [SimpleNamespace(path=f"{i}.png", label=label) for i, label in enumerate(["real", "gan", "new_gen"])]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]], dtype=np.float32)
    metrics, _ = score_split(probs, samples, ["real", "gan"], "source", threshold=0.5)
    assert metrics["accuracy"] == 1.0 and metrics["per_class"]["new_gen"]["called_fake"] == 1.0
    assert metrics["attribution_accuracy"] == 1.0 and metrics["attribution_accuracy_fakes"] == 1.0
