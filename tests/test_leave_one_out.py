"""Leave-one-generator-out: the split logic, the per-fold figures, and one real run of ``aigi eval --leave-one-out``.

The end-to-end run trains a very small local CLIP for one epoch per fold on a handful of images, so it checks that
the outputs exist and agree with each other, never how accurate the models are.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _training_helpers import make_easy_dataset, make_tiny_clip_dir  # noqa: E402

from aigi.checkpoint import load_meta  # noqa: E402
from aigi.cli import main  # noqa: E402
from aigi.errors import DatasetError  # noqa: E402
from aigi.labels import REAL  # noqa: E402
from aigi.training import leave_one_out as loo  # noqa: E402
from aigi.training.datasets import DatasetIndex, Sample, index_dataset  # noqa: E402

GENERATORS = ("gen_a", "gen_b", "gen_c")
COUNTS = {"train": 5, "val": 3, "test": 4}


def _index(generators: tuple[str, ...] = GENERATORS) -> DatasetIndex:
    samples = [
        Sample(Path(f"/data/{split}/{label}/{i}.png"), label, split)
        for split, count in COUNTS.items()
        for label in (REAL, *generators)
        for i in range(count)
    ]
    return DatasetIndex(samples, "splits", Path("/data"))


@pytest.mark.parametrize("held_out", GENERATORS)
def test_make_fold_keeps_the_held_out_generator_out_of_train_and_val_when_it_is_held_out(held_out: str) -> None:
    index = _index()

    fold = loo.make_fold(index, held_out)

    others = set(GENERATORS) - {held_out}
    assert {s.label for s in fold.train} == {s.label for s in fold.val} == {REAL, *others}
    assert fold.train == [s for s in index.split("train") if s.label != held_out]
    assert fold.val == [s for s in index.split("val") if s.label != held_out]
    # every held-out test image is tested, with every real test image and nothing else
    assert fold.test == [s for s in index.split("test") if s.label in (REAL, held_out)]
    assert sum(s.label == held_out for s in fold.test) == COUNTS["test"]
    assert fold.known_test == [s for s in index.split("test") if s.label in others]
    # no image crosses splits: the fold only regroups the dataset's own split
    assert all(s.split == "train" for s in fold.train) and all(s.split == "val" for s in fold.val)
    assert all(s.split == "test" for s in fold.test + fold.known_test)


def test_make_folds_gives_one_fold_per_generator_in_label_order_when_none_is_named() -> None:
    folds = loo.make_folds(_index(("gen_c", "gen_a", "gen_b")))

    assert [fold.held_out for fold in folds] == ["gen_a", "gen_b", "gen_c"]
    assert [fold.held_out for fold in loo.make_folds(_index(), ["gen_b"])] == ["gen_b"]


def test_make_fold_raises_dataset_error_when_the_generator_is_not_in_the_data() -> None:
    with pytest.raises(DatasetError, match="'gen_z' is not a generator"):
        loo.make_fold(_index(), "gen_z")


def test_make_fold_raises_dataset_error_when_the_data_has_a_single_generator() -> None:
    with pytest.raises(DatasetError, match="at least two generator classes"):
        loo.make_fold(_index(("fake",)), "fake")


def test_training_manifest_indexes_as_the_data_without_the_held_out_generator_when_read_back(tmp_path: Path) -> None:
    data = make_easy_dataset(
        tmp_path / "data", classes=(REAL, *GENERATORS), per_split={"train": 3, "val": 2, "test": 2}
    )
    index = index_dataset(data)
    fold = loo.make_fold(index, "gen_b")

    manifest = loo.write_training_manifest(fold, tmp_path / "fold" / "train.csv")

    again = index_dataset(manifest, allow_outside_root=True)
    assert again.class_names == [REAL, "gen_a", "gen_c"]
    for split in ("train", "val", "test"):
        expected = {(str(s.path.resolve()), s.label) for s in index.split(split) if s.label != "gen_b"}
        assert {(str(s.path), s.label) for s in again.split(split)} == expected
    with manifest.open() as handle:
        assert all(row["label"] != "gen_b" for row in csv.DictReader(handle))


def test_fold_metrics_counts_unseen_images_at_or_over_the_threshold_when_scored() -> None:
    metrics = loo.fold_metrics(
        threshold=0.5,
        real_scores=np.array([0.1, 0.2, 0.6, 0.3]),
        unseen_scores=np.array([0.5, 0.4, 0.9]),
        known_scores=np.array([0.7, 0.8]),
        known_confidence=(np.array([0.9, 0.8]), np.array([0.85, 0.2, 0.1])),
    )

    assert metrics["unseen_detection"] == pytest.approx(2 / 3)  # 0.5 and 0.9 are at or over 0.5
    assert metrics["test_real_fpr"] == pytest.approx(1 / 4)
    assert metrics["known_detection"] == 1.0
    # unseen vs real pairs ranked right: 0.5 beats 3 of 4 reals, 0.4 beats 3, 0.9 beats 4 -> 10 of 12
    assert metrics["unseen_auroc"] == pytest.approx(10 / 12)
    # known 0.9 beats all 3 unseen, known 0.8 beats 2 of 3 -> 5 of 6
    assert metrics["known_vs_unknown_auroc"] == pytest.approx(5 / 6)
    assert (metrics["n_test_real"], metrics["n_test_unseen"], metrics["n_test_known"]) == (4, 3, 2)


def test_fold_metrics_leaves_known_vs_unknown_empty_when_model_is_binary() -> None:
    metrics = loo.fold_metrics(0.5, np.array([0.1]), np.array([0.9]), np.array([0.8]))

    assert metrics["known_vs_unknown_auroc"] is None and metrics["unseen_auroc"] == 1.0


def test_summarize_reports_the_target_met_only_when_the_mean_detection_reaches_it() -> None:
    folds = [{"unseen_detection": 0.9, "unseen_auroc": 1.0, "known_vs_unknown_auroc": None}, {"unseen_detection": 0.7}]

    summary = loo.summarize(folds, target=0.8)

    assert summary["mean_unseen_detection"] == pytest.approx(0.8) and summary["target_met"] is True
    assert summary["mean_known_vs_unknown_auroc"] is None
    assert loo.summarize(folds, target=0.81)["target_met"] is False


def test_eval_leave_one_out_writes_a_consistent_table_json_and_plot_when_run_end_to_end(tmp_path: Path) -> None:
    data = make_easy_dataset(
        tmp_path / "data", classes=(REAL, *GENERATORS), per_split={"train": 6, "val": 4, "test": 4}
    )
    clip = make_tiny_clip_dir(tmp_path / "clip")
    out = tmp_path / "loo"

    argv = ["-q", "eval", "--leave-one-out", "--data", str(data), "--out", str(out), "--model", str(clip)]
    assert main([*argv, "--epochs", "1", "--batch-size", "8"]) == 0

    document = json.loads((out / loo.JSON_FILENAME).read_text())
    folds = document["folds"]
    assert [fold["held_out"] for fold in folds] == list(GENERATORS)
    table = (out / loo.MARKDOWN_FILENAME).read_text()
    for fold in folds:
        # the fold's model never saw its held-out generator, not even as an untrained label
        assert load_meta(Path(fold["run"])).labels == [REAL, *(g for g in GENERATORS if g != fold["held_out"])]
        assert (fold["n_test_real"], fold["n_test_unseen"], fold["n_test_known"]) == (4, 4, 8)
        # detection rates are shares of the fold's test images (4 unseen, 8 known), as the table reports them
        assert float(fold["unseen_detection"] * 4).is_integer() and float(fold["known_detection"] * 8).is_integer()
        assert fold["unseen_auroc"] is not None and fold["known_vs_unknown_auroc"] is not None
        row = f"| {fold['held_out']} | {fold['unseen_detection']:.3f} | {fold['unseen_auroc']:.3f} |"
        assert row in table
    mean = np.mean([fold["unseen_detection"] for fold in folds])
    assert document["summary"]["mean_unseen_detection"] == pytest.approx(mean)
    assert document["summary"]["target_met"] == (mean >= loo.TARGET_DETECTION)
    assert (out / loo.PLOT_FILENAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--leave-one-out", "--checkpoint", "run"], "--leave-one-out trains its own models"),
        (["--leave-one-out", "--robustness"], "--leave-one-out trains its own models"),
        ([], "--checkpoint is required (or --leave-one-out"),
    ],
)
def test_eval_exits_with_one_line_when_checkpoint_and_leave_one_out_are_misused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["eval", "--data", str(tmp_path), "--out", str(tmp_path / "out"), *extra]) == 2

    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not (tmp_path / "out").exists()
