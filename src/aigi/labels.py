"""The label contract: index 0 is always ``real`` and ``p_fake = 1 - p(real)`` for every model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aigi.errors import DatasetError, SettingsError

REAL = "real"
FAKE = "fake"
# the label of an image that looks generated but matches no known generator well enough (training/open_set.py);
# served as label index len(labels), so no class may carry this name
UNKNOWN = "unknown"
BINARY_LABELS: tuple[str, str] = (REAL, FAKE)
TASKS = ("binary", "source")


def validate_labels(labels: Sequence[str]) -> list[str]:
    """Check a label list against the contract and return it as a list.

    Raises:
        DatasetError: if ``real`` is missing or not first, labels repeat, one is the reserved ``unknown``, or there
            are fewer than two.
    """
    labels = [str(label) for label in labels]
    if REAL not in labels:
        raise DatasetError(f"no '{REAL}' class among labels {labels}: the detector needs real images")
    if labels[0] != REAL:
        raise DatasetError(f"label 0 must be '{REAL}', got {labels}")
    if len(set(labels)) != len(labels):
        raise DatasetError(f"labels repeat: {labels}")
    if UNKNOWN in labels:
        raise DatasetError(f"'{UNKNOWN}' is reserved for open-set attribution and cannot be a class: {labels}")
    if len(labels) < 2:
        raise DatasetError(f"only one class ({labels[0]}): need real images and at least one kind of fake")
    return labels


def labels_for_task(class_names: Sequence[str], task: str) -> list[str]:
    """Order dataset class names into a label list for ``task``.

    ``binary`` gives ``["real", "fake"]``; ``source`` gives ``["real", <generators sorted>]``.
    """
    if task not in TASKS:
        raise SettingsError(f"task must be one of {TASKS}, got {task!r}")
    names = sorted(set(class_names))
    if REAL not in names:
        raise DatasetError(f"no '{REAL}' class among {names}: the detector needs real images")
    fakes = [name for name in names if name != REAL]
    if not fakes:
        raise DatasetError("only the 'real' class was found: need at least one kind of generated image")
    if task == "binary":
        return list(BINARY_LABELS)
    return validate_labels([REAL, *fakes])


def target_index(class_name: str, labels: Sequence[str]) -> int:
    """Index of a dataset class under a label list (any generator maps to ``fake`` in a binary list)."""
    if class_name in labels:
        return list(labels).index(class_name)
    if list(labels) == list(BINARY_LABELS):
        return 0 if class_name == REAL else 1
    raise DatasetError(f"class {class_name!r} is not among the model's labels {list(labels)}")


def p_fake(probs: np.ndarray) -> np.ndarray:
    """Probability that an image is generated: ``1 - p(real)`` along the last axis."""
    probs = np.asarray(probs, dtype=np.float32)
    return 1.0 - probs[..., 0]
