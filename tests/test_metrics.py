"""numpy AP / ROC AUC / threshold selection against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from aigi.training.metrics import (
    average_precision,
    confusion_matrix,
    detection_metrics,
    roc_auc,
    roc_curve,
    threshold_for_fpr,
)


def test_roc_auc_and_ap_match_hand_computed_when_scores_are_distinct() -> None:
    # the scikit-learn documentation example: AUC 0.75, AP 0.8333
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert roc_auc(y, s) == pytest.approx(0.75)
    assert average_precision(y, s) == pytest.approx(5 / 6)


def test_roc_auc_counts_ties_half_when_scores_tie() -> None:
    # pairs (pos, neg): (0.5, 0.5) tie = 0.5, the other three ordered = 1 -> 3.5 / 4
    y, s = [0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]
    assert roc_auc(y, s) == pytest.approx(0.875)
    # thresholds 0.9 -> P 1, R 0.5; 0.5 -> P 2/3, R 1
    assert average_precision(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_metrics_are_perfect_or_reversed_when_classes_separate() -> None:
    y = np.array([0] * 5 + [1] * 5)
    s = np.linspace(0, 1, 10)
    assert roc_auc(y, s) == 1.0
    assert average_precision(y, s) == 1.0
    assert roc_auc(y, 1 - s) == 0.0


def test_roc_curve_starts_at_origin_and_ends_at_one_when_both_classes_present() -> None:
    fpr, tpr, thresholds = roc_curve([0, 1, 1, 0], [0.2, 0.9, 0.6, 0.7])
    assert (fpr[0], tpr[0], thresholds[0]) == (0.0, 0.0, np.inf)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # by hand, scores descending 0.9 (fake), 0.7 (real), 0.6 (fake), 0.2 (real): one point per threshold
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thresholds[1:].tolist() == pytest.approx([0.9, 0.7, 0.6, 0.2])


def test_metrics_return_nan_when_a_class_is_missing() -> None:
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))
    assert np.isnan(average_precision([0, 0], [0.2, 0.3]))


def test_threshold_for_fpr_is_just_above_the_allowed_real_scores_when_target_is_5_percent() -> None:
    real = np.arange(20, dtype=np.float32) / 20  # 0.00 .. 0.95
    threshold, achieved = threshold_for_fpr(real, 0.05)
    assert 0.9 < threshold <= 0.95
    assert achieved == pytest.approx(0.05)
    assert np.mean(real >= np.float32(threshold)) <= 0.05
    # smallest: one ulp lower lets a second real image through
    lower = np.nextafter(np.float32(threshold), np.float32(0))
    assert np.mean(real >= lower) > 0.05


# target 0: just above the highest real score (one float32 ulp); target 1: everything passes, threshold 0
@pytest.mark.parametrize(
    ("target", "expected_fpr", "expected_threshold"),
    [(0.0, 0.0, float(np.nextafter(np.float32(0.7), np.float32(1)))), (1.0, 1.0, 0.0)],
)
def test_threshold_for_fpr_handles_extremes_when_target_is_zero_or_one(
    target: float, expected_fpr: float, expected_threshold: float
) -> None:
    real = np.array([0.1, 0.5, 0.7], dtype=np.float32)
    threshold, achieved = threshold_for_fpr(real, target)
    assert threshold == expected_threshold
    assert achieved == expected_fpr
    assert np.mean(real >= np.float32(threshold)) == expected_fpr  # the rate the threshold really gives


def test_threshold_for_fpr_raises_when_no_real_scores() -> None:
    with pytest.raises(ValueError, match="no real"):
        threshold_for_fpr([], 0.05)


def test_confusion_matrix_counts_rows_true_columns_predicted_when_given_indices() -> None:
    matrix = confusion_matrix([0, 0, 1, 2, 2, -1], [0, 1, 1, 2, 0, 0], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_detection_metrics_splits_real_and_fake_accuracy_when_threshold_given() -> None:
    is_fake = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p_fake = np.array([0.1, 0.2, 0.3, 0.8, 0.4, 0.7, 0.9, 0.95])
    metrics = detection_metrics(is_fake, p_fake, threshold=0.5)
    assert metrics["real_accuracy"] == 0.75
    assert metrics["fake_accuracy"] == 0.75
    assert metrics["accuracy"] == 0.75
    assert (metrics["n"], metrics["n_real"], metrics["n_fake"]) == (8, 4, 4)
    # by hand: of the 16 (fake, real) pairs only (0.4, 0.8) and (0.7, 0.8) are misordered -> 14 / 16
    assert metrics["roc_auc"] == pytest.approx(14 / 16)
    # fakes rank 1, 2, 4, 5 by score: precision 1, 1, 3/4, 4/5 at recall 1/4 .. 1
    assert metrics["average_precision"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 5) / 4)


def test_detection_metrics_gives_none_not_nan_when_a_class_is_missing() -> None:
    metrics = detection_metrics(np.array([0, 0, 0]), np.array([0.2, 0.6, 0.9]), threshold=0.5)
    assert metrics["roc_auc"] is None and metrics["average_precision"] is None
    assert metrics["fake_accuracy"] is None and metrics["real_accuracy"] == pytest.approx(1 / 3)
