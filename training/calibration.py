"""Probability calibration: temperature scaling fitted on val, and the calibration error that measures it.

Temperature scaling divides the logits by one scalar ``T > 0`` before the softmax. It keeps every image's argmax
and, for a binary model, the order of the ``p_fake`` scores (so AP and AUC); for an attribution model ``p_fake``
sums several classes and the order may move slightly. What it changes is how far the probabilities can be trusted
as probabilities. ``T`` minimizes the negative log-likelihood of the val split's labels (:func:`fit_temperature`
class-wise; :func:`fit_binary_temperature` real/fake on ``p_fake``, what ``aigi eval`` fits), found by a log-spaced
grid over ``[MIN_TEMPERATURE, MAX_TEMPERATURE]`` refined by golden-section search on ``log T``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ECE_BINS = 15
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float64, returned as float32."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    if scaled.size == 0:
        return scaled.astype(np.float32)
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def _log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    top = scaled.max(axis=1, keepdims=True)
    return scaled - (top + np.log(np.exp(scaled - top).sum(axis=1, keepdims=True)))


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``targets`` (class indices) under ``softmax(logits / temperature)``."""
    log_probs = _log_softmax(logits, temperature)
    return float(-np.mean(log_probs[np.arange(len(log_probs)), np.asarray(targets, dtype=np.int64)]))


def binary_nll(logits: np.ndarray, is_fake: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the real/fake truth under ``p_fake = 1 - softmax(logits / temperature)[0]``.

    ``log p_fake`` is the log-sum-exp of the fake classes' log-probabilities, so it stays exact when ``p_fake`` is
    within float precision of 1.
    """
    log_probs = _log_softmax(logits, temperature)
    log_real = log_probs[:, 0]
    fakes = log_probs[:, 1:]
    top = fakes.max(axis=1)
    log_fake = top + np.log(np.exp(fakes - top[:, None]).sum(axis=1))
    truth = np.asarray(is_fake, dtype=bool)
    return float(-np.mean(np.where(truth, log_fake, log_real)))


def _minimize_on_log_scale(objective: Callable[[float], float], low: float, high: float) -> float:
    """The minimizer of ``objective`` over ``[low, high]``: a log-spaced grid, then golden section around its best."""
    grid = np.linspace(math.log(low), math.log(high), 41)
    values = [objective(math.exp(x)) for x in grid]
    best = int(np.argmin(values))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = objective(math.exp(c)), objective(math.exp(d))
    while b - a > 1e-6:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = objective(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = objective(math.exp(d))
    return float(f"{math.exp((a + b) / 2):.6g}")


def fit_temperature(
    logits: np.ndarray, targets: np.ndarray, low: float = MIN_TEMPERATURE, high: float = MAX_TEMPERATURE
) -> float:
    """The temperature in ``[low, high]`` that minimizes the NLL of ``targets`` (class indices) under the logits.

    Samples whose target is negative (a class the model does not name) are left out. With no usable sample, or
    fewer than two classes, the answer is 1.0 (no calibration).

    Args:
        logits: ``[N, C]`` raw logits.
        targets: ``[N]`` class indices.
        low: smallest temperature considered.
        high: largest temperature considered.

    Returns:
        The fitted temperature, rounded to 6 significant digits so ``aigi.json`` stays readable.
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    keep = targets >= 0
    if not keep.any() or logits.ndim != 2 or logits.shape[1] < 2:
        return 1.0
    return _minimize_on_log_scale(lambda t: nll(logits[keep], targets[keep], t), low, high)


def fit_binary_temperature(
    logits: np.ndarray, is_fake: np.ndarray, low: float = MIN_TEMPERATURE, high: float = MAX_TEMPERATURE
) -> float:
    """The temperature in ``[low, high]`` that minimizes the real/fake NLL of ``p_fake`` (see :func:`binary_nll`).

    This is the one ``aigi eval`` fits: the served decision and its threshold are on ``p_fake``. For a binary model
    it equals :func:`fit_temperature`; for an attribution model it calibrates the sum of the generator classes,
    which the class-wise NLL does not target. Every val image counts, generators the model does not name included.
    With no image, or fewer than two classes, the answer is 1.0.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) == 0 or logits.ndim != 2 or logits.shape[1] < 2:
        return 1.0
    return _minimize_on_log_scale(lambda t: binary_nll(logits, is_fake, t), low, high)


@dataclass
class Reliability:
    """Equal-width bins of ``p_fake``: per bin the count, the mean score and the observed share of fakes.

    Attributes:
        edges: ``bins + 1`` bin edges over ``[0, 1]``.
        counts: images per bin.
        confidence: mean ``p_fake`` per bin (NaN for an empty bin).
        accuracy: share of fakes per bin (NaN for an empty bin).
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean of ``|accuracy - confidence|`` over the bins."""
        total = int(self.counts.sum())
        if total == 0:
            return float("nan")
        used = self.counts > 0
        gaps = np.abs(self.accuracy[used] - self.confidence[used])
        return float((self.counts[used] * gaps).sum() / total)


def reliability(p_fake: np.ndarray, is_fake: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """Bin ``p_fake`` into ``bins`` equal-width bins (the last one closed) against the true ``is_fake``."""
    scores = np.clip(np.asarray(p_fake, dtype=np.float64), 0.0, 1.0)
    truth = np.asarray(is_fake, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.minimum((scores * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=scores, minlength=bins) / counts
        accuracy = np.bincount(index, weights=truth, minlength=bins) / counts
    return Reliability(edges, counts, confidence, accuracy)


def expected_calibration_error(p_fake: np.ndarray, is_fake: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the binary real/fake decision: ``bins`` equal-width bins on ``p_fake`` (NaN with no image)."""
    return reliability(p_fake, is_fake, bins).ece


def plot_reliability(curves: dict[str, Reliability], path: str | Path, title: str = "Reliability (test)") -> None:
    """Draw a reliability diagram (observed share of fakes against mean ``p_fake`` per bin), one line per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    for name, curve in curves.items():
        used = curve.counts > 0
        ax.plot(curve.confidence[used], curve.accuracy[used], marker="o", label=f"{name} (ECE {curve.ece:.4f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean p_fake in bin")
    ax.set_ylabel("share of fakes in bin")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
