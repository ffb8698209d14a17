"""Open-set attribution: the label ``unknown`` when an image looks generated but no known generator is confident.

An attribution (``--task source``) model names one of the generators it was trained on. An image from a generator
it never saw still has to get some name; open-set attribution withholds it. The confidence of an image is the share
of its fake probability the best known generator holds, ``max_g p(g) / p_fake`` with ``p_fake = 1 - p(real)``
(:func:`known_confidence`, in ``[0, 1]``; 1 when one generator holds all of it). An image the detector flags as fake
(``p_fake >= threshold``, the decision threshold) whose confidence is below the open-set threshold is ``unknown``;
every other image keeps its argmax label (:func:`open_set_labels`, the rule the exported graph's ``label_id``
output serves, see ``aigi.training.model.ExportableDetector``).

The open-set threshold is chosen on val (:func:`fit_unknown_threshold`): the one at which ``keep`` (default 95%) of
val's known fakes that are flagged fake keep their name. A model with fewer than two generator classes (every
binary ``real``/``fake`` model) has no open set: the confidence of its one fake class is always 1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from aigi.errors import SettingsError
from aigi.labels import REAL, UNKNOWN

logger = logging.getLogger(__name__)

DEFAULT_KEEP = 0.95
# p_fake below this is treated as this when dividing: such an image is never flagged fake at a sane threshold
P_FAKE_EPS = 1e-6


def has_open_set(labels: Sequence[str]) -> bool:
    """Whether a label list can have an ``unknown`` answer: ``real`` first plus at least two generators."""
    return len(labels) >= 3 and labels[0] == REAL


def known_confidence(probs: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Per image, the share of ``p_fake`` held by the most likely known generator: ``max_g p(g) / p_fake``.

    Args:
        probs: ``[N, C]`` (calibrated) probabilities, column 0 = ``real``.
        labels: the model's ``C`` labels.

    Returns:
        ``[N]`` float64 confidences in ``[0, 1]``; ``p_fake`` below :data:`P_FAKE_EPS` divides as that value.

    Raises:
        ValueError: ``probs`` is not ``[N, len(labels)]`` with at least two columns.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(labels) or probs.shape[1] < 2:
        raise ValueError(f"probs must be [N, {len(labels)}] for labels {list(labels)}, got shape {probs.shape}")
    fake = 1.0 - probs[:, 0]
    best = probs[:, 1:].max(axis=1) if len(probs) else np.zeros(0)
    return np.clip(best / np.maximum(fake, P_FAKE_EPS), 0.0, 1.0)


def fit_unknown_threshold(
    probs: np.ndarray,
    labels: Sequence[str],
    targets: np.ndarray,
    keep: float = DEFAULT_KEEP,
    *,
    decision_threshold: float | None = None,
) -> float | None:
    """The confidence threshold at which ``keep`` of val's known fakes keep their name (are not ``unknown``).

    The known fakes are the images whose target is a generator among ``labels``; with ``decision_threshold`` only
    those flagged fake (``p_fake >= decision_threshold``, as served) count, since only they can become ``unknown``.
    With their confidences sorted from high to low and ``m = ceil(keep * n)``, the threshold lies halfway between
    the ``m``-th and the next one (the ``m``-th itself when ``m = n`` or they tie), so exactly ``m`` keep their name
    when the confidences differ, and a rounding difference between runtimes does not move an image across it.

    Args:
        probs: ``[N, C]`` val probabilities, calibrated as served.
        labels: the model's labels.
        targets: ``[N]`` true label indices; negative for a class the model does not name.
        keep: the share of known fakes that must keep their name, in ``(0, 1]``.
        decision_threshold: the decision threshold on ``p_fake``; ``None`` counts every known fake.

    Returns:
        The threshold, or ``None`` when there is no open set (fewer than two generators) or no known fake to fit on.

    Raises:
        SettingsError: ``keep`` outside ``(0, 1]``.
        ValueError: ``probs`` and ``labels`` or ``targets`` disagree in shape.
    """
    if not 0.0 < keep <= 1.0:
        raise SettingsError(f"keep must lie in (0, 1], got {keep}")
    if not has_open_set(labels):
        return None
    targets = np.asarray(targets, dtype=np.int64)
    confidence = known_confidence(probs, labels)
    if targets.shape != confidence.shape:
        raise ValueError(f"targets has shape {targets.shape}, probs has {len(confidence)} rows")
    known = (targets >= 1) & (targets < len(labels))
    if decision_threshold is not None:
        known &= _flagged(probs, decision_threshold)
    ranked = np.sort(confidence[known])[::-1]
    if ranked.size == 0:
        logger.warning("no known fake flagged fake in val: no open-set threshold fitted")
        return None
    kept = min(max(math.ceil(keep * ranked.size - 1e-9), 1), ranked.size)
    threshold = ranked[kept - 1]
    if kept < ranked.size:
        threshold = (threshold + ranked[kept]) / 2.0
    return float(threshold)


def _flagged(probs: np.ndarray, decision_threshold: float) -> np.ndarray:
    """``p_fake >= threshold`` compared in float32, as the served graph compares."""
    probs32 = np.asarray(probs, dtype=np.float32)
    return (np.float32(1.0) - probs32[:, 0]) >= np.float32(decision_threshold)


def open_set_labels(
    probs: np.ndarray, labels: Sequence[str], decision_threshold: float, unknown_threshold: float | None
) -> np.ndarray:
    """The served label index per image: the argmax, or ``len(labels)`` (``unknown``) by the open-set rule.

    An image is ``unknown`` when it is flagged fake (``p_fake >= decision_threshold``) and its
    :func:`known_confidence` is below ``unknown_threshold``. ``None`` (no open set) gives the plain argmax.
    """
    probs = np.asarray(probs)
    predicted = probs.argmax(axis=1).astype(np.int64) if len(probs) else np.zeros(0, dtype=np.int64)
    if unknown_threshold is None or not has_open_set(labels):
        return predicted
    unknown = _flagged(probs, decision_threshold) & (known_confidence(probs, labels) < unknown_threshold)
    return np.where(unknown, len(labels), predicted)


def label_names(ids: np.ndarray, labels: Sequence[str]) -> list[str]:
    """Label names of :func:`open_set_labels` indices (``len(labels)`` is :data:`aigi.labels.UNKNOWN`)."""
    names = [*labels, UNKNOWN]
    return [names[int(index)] for index in ids]


def open_set_summary(
    probs: np.ndarray,
    labels: Sequence[str],
    targets: np.ndarray,
    is_fake: np.ndarray,
    decision_threshold: float,
    unknown_threshold: float,
) -> dict[str, Any]:
    """What the open-set rule does to one split's fakes that are flagged fake.

    Returns:
        ``flagged_fakes`` (fakes with ``p_fake >= decision_threshold``), ``unknown`` and ``unknown_share`` among
        them; for those of a generator the model names, ``named`` and ``attribution_accuracy_named`` (correct names
        among the ones not made ``unknown``); for those of a generator it does not name (target negative),
        ``novel_flagged`` and ``novel_unknown_share``. Shares are ``None`` where nothing was counted.
    """
    targets = np.asarray(targets, dtype=np.int64)
    ids = open_set_labels(probs, labels, decision_threshold, unknown_threshold)
    flagged = np.asarray(is_fake, dtype=bool) & _flagged(probs, decision_threshold)
    unknown = ids == len(labels)
    known = flagged & (targets >= 1)
    named = known & ~unknown
    novel = flagged & (targets < 0)
    return {
        "threshold": unknown_threshold,
        "flagged_fakes": int(flagged.sum()),
        "unknown": int((flagged & unknown).sum()),
        "unknown_share": _share(unknown[flagged]),
        "known_flagged": int(known.sum()),
        "known_unknown_share": _share(unknown[known]),
        "named": int(named.sum()),
        "attribution_accuracy_named": _share((ids == targets)[named]),
        "novel_flagged": int(novel.sum()),
        "novel_unknown_share": _share(unknown[novel]),
    }


def _share(mask: np.ndarray) -> float | None:
    return float(np.mean(mask)) if mask.size else None


def fit_open_set(
    probs: np.ndarray, labels: Sequence[str], targets: np.ndarray, decision_threshold: float, keep: float = DEFAULT_KEEP
) -> dict[str, Any]:
    """The ``open_set`` record of ``aigi.json`` fitted on val (see :func:`fit_unknown_threshold`).

    Returns:
        ``{}`` for a model without an open set (fewer than two generators); else ``threshold`` (``None`` when val
        has no known fake flagged fake), ``keep``, ``method``, ``split`` and ``n_val_known_flagged``, the fakes it
        was fitted on.
    """
    if not has_open_set(labels):
        return {}
    targets = np.asarray(targets, dtype=np.int64)
    known = (targets >= 1) & (targets < len(labels))
    flagged = int((known & _flagged(probs, decision_threshold)).sum()) if len(targets) else 0
    threshold = fit_unknown_threshold(probs, labels, targets, keep, decision_threshold=decision_threshold)
    return {
        "threshold": threshold,
        "keep": keep,
        "method": "val_known_keep",
        "split": "val",
        "n_val_known_flagged": flagged,
    }
