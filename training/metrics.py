"""Detection metrics in plain numpy: ROC, ROC AUC, average precision, thresholds, confusion matrices.

Positives are generated images (label 1) scored by ``p_fake``; ties between scores are handled the way
scikit-learn does (one ROC point per distinct score), so the numbers match the literature's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from aigi.errors import SettingsError

logger = logging.getLogger(__name__)


def _check(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    return y, s


def _cumulative_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives when thresholding at each distinct score, from the highest down."""
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last_of_run]
    fps = (last_of_run + 1) - tps
    return tps.astype(np.float64), fps.astype(np.float64), s[last_of_run]


def roc_curve(
    y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score (``is_fake = score >= threshold``).

    Returns:
        ``(fpr, tpr, thresholds)``, starting at ``(0, 0)`` with threshold ``inf``. Rates are ``nan``
        when a class is absent.
    """
    y, s = _check(y_true, scores)
    if y.size == 0:
        return np.array([0.0]), np.array([0.0]), np.array([np.inf])
    tps, fps, thresholds = _cumulative_counts(y, s)
    positives, negatives = tps[-1], fps[-1]
    tpr = np.r_[0.0, tps / positives] if positives else np.full(tps.size + 1, np.nan)
    fpr = np.r_[0.0, fps / negatives] if negatives else np.full(fps.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, thresholds]


def roc_auc(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (trapezoids; a tie counts half); ``nan`` if a class is missing."""
    y, _ = _check(y_true, scores)
    if y.all() or not y.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(y_true, scores)
    return float(np.trapezoid(tpr, fpr) if hasattr(np, "trapezoid") else np.trapz(tpr, fpr))


def average_precision(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Average precision, ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds; ``nan`` with no positives."""
    y, s = _check(y_true, scores)
    if not y.any():
        return float("nan")
    tps, fps, _ = _cumulative_counts(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold_for_fpr(real_scores: Sequence[float] | np.ndarray, target_fpr: float) -> tuple[float, float]:
    """The smallest threshold whose false-positive rate on real images is at most ``target_fpr``.

    A real image is a false positive when ``score >= threshold``. Allowing ``k = floor(target * n)`` of
    ``n`` real scores through, the smallest such threshold lies just above the ``(k+1)``-th highest score.

    Returns:
        ``(threshold, achieved_fpr)``; the threshold is clipped to ``[0, 1]``.

    Raises:
        ValueError: no real scores, or a target outside ``[0, 1]``.
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise SettingsError(f"target FPR must lie in [0, 1], got {target_fpr}")
    s = np.sort(np.asarray(real_scores, dtype=np.float32).ravel())[::-1]
    if s.size == 0:
        raise ValueError("no real images to calibrate a threshold on")
    allowed = int(np.floor(target_fpr * s.size + 1e-9))
    threshold = 0.0
    if allowed < s.size:
        # float32, like the served p_fake, so the stored threshold splits the same scores on every runtime
        threshold = float(np.nextafter(s[allowed], np.float32(np.inf), dtype=np.float32))
    threshold = min(max(threshold, 0.0), 1.0)
    achieved = float(np.mean(s >= np.float32(threshold)))
    return threshold, achieved


def confusion_matrix(true: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Counts ``[n, n]``: rows are true classes, columns predicted ones (indices outside ``[0, n)`` are dropped)."""
    t = np.asarray(true, dtype=np.int64).ravel()
    p = np.asarray(predicted, dtype=np.int64).ravel()
    keep = (t >= 0) & (t < n) & (p >= 0) & (p < n)
    return np.bincount(t[keep] * n + p[keep], minlength=n * n).reshape(n, n)


def safe_mean(values: np.ndarray) -> float | None:
    """Mean of a boolean/number array, or ``None`` when empty (JSON-friendly, no warnings)."""
    values = np.asarray(values)
    return float(values.mean()) if values.size else None


def detection_metrics(is_fake_true: np.ndarray, p_fake: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Accuracy, real and fake accuracy, AP and ROC AUC of the decision ``p_fake >= threshold``."""
    y = np.asarray(is_fake_true).astype(bool)
    s = np.asarray(p_fake, dtype=np.float32)
    decided = s >= np.float32(threshold)
    correct = decided == y

    def finite(value: float) -> float | None:
        return None if np.isnan(value) else value

    return {
        "accuracy": safe_mean(correct),
        "real_accuracy": safe_mean(correct[~y]),
        "fake_accuracy": safe_mean(correct[y]),
        "average_precision": finite(average_precision(y, s)),
        "roc_auc": finite(roc_auc(y, s)),
        "n": int(y.size),
        "n_real": int((~y).sum()),
        "n_fake": int(y.sum()),
    }
