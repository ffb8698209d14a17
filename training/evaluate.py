"""Evaluation of a run directory: calibrate on val, score the test split, stress it.

Calibration happens here, on the val split training held out, in two steps from the same val logits: first the
softmax temperature ``T`` (:mod:`aigi.training.calibration`, minimum NLL), then the threshold on the calibrated
``p_fake``. The decision is ``is_fake = p_fake >= threshold`` with ``p_fake = 1 - p(real)`` and
``p = softmax(logits / T)``, exactly what the exported graph serves. The threshold is the smallest one whose
false-positive rate on the val split's real images stays at or under a target; both are written back into the
checkpoint's ``aigi.json`` (``threshold``, ``calibration.temperature``), so the stored pair always matches. The
test split reports the expected calibration error before (``T = 1``) and after. For an attribution model a third
step fits the open-set threshold (:mod:`aigi.training.open_set`) on the same calibrated val probabilities and that
threshold; it is stored as ``open_set`` in ``aigi.json``, served in the graph's ``label_id``, and the test split
reports how many fakes become ``unknown``. Robustness runs repeat the test under JPEG, blur and downscaling applied
to decoded images before the shared preprocessing.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aigi.checkpoint import CheckpointMeta, save_meta
from aigi.errors import DatasetError, SettingsError
from aigi.labels import REAL, p_fake, target_index
from aigi.training.augment import downscale, gaussian_blur, jpeg_compress
from aigi.training.calibration import (
    ECE_BINS,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    binary_nll,
    expected_calibration_error,
    fit_binary_temperature,
    softmax,
)
from aigi.training.metrics import (
    average_precision,
    confusion_matrix,
    detection_metrics,
    roc_auc,
    roc_curve,
    safe_mean,
    threshold_for_fpr,
)
from aigi.training.open_set import DEFAULT_KEEP, fit_open_set, label_names, open_set_labels, open_set_summary

logger = logging.getLogger(__name__)

PREDICTIONS_FILENAME = "predictions.jsonl"
REPORT_FILENAME = "report.json"
# the metrics stored in aigi.json and tabled per perturbation
HEADLINE_KEYS = ("accuracy", "real_accuracy", "fake_accuracy", "average_precision", "roc_auc", "attribution_accuracy")

PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg_q95": lambda image: jpeg_compress(image, 95),
    "jpeg_q75": lambda image: jpeg_compress(image, 75),
    "jpeg_q50": lambda image: jpeg_compress(image, 50),
    "blur_sigma1": lambda image: gaussian_blur(image, 1.0),
    "blur_sigma2": lambda image: gaussian_blur(image, 2.0),
    "downscale_half": lambda image: downscale(image, 0.5),
}


def predict_logits(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "predict",
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` over a loader of ``(pixel_values, target)``; returns float32 logits and int64 targets."""
    from tqdm import tqdm

    model.eval()
    outputs, targets = [], []
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for pixels, target in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            outputs.append(model(pixels.to(device, non_blocking=True)).float().cpu())
            targets.append(target)
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32), np.zeros((0,), dtype=np.int64)
    return torch.cat(outputs).numpy(), torch.cat(targets).numpy().astype(np.int64)


def _true_indices(samples: list, labels: list[str]) -> np.ndarray:
    """Model label index per sample; -1 for a generator the model was not trained to name."""
    indices = []
    for sample in samples:
        try:
            indices.append(target_index(sample.label, labels))
        except DatasetError:
            indices.append(-1)
    return np.asarray(indices, dtype=np.int64)


class _Scorer:
    """Decoded images of one split scored by one model, with an optional perturbation."""

    def __init__(self, detector, spec, device, batch_size: int, workers: int, progress: bool) -> None:
        self.detector, self.spec, self.device = detector, spec, device
        self.batch_size, self.workers, self.progress = batch_size, workers, progress
        self.temperature = 1.0  # set once fitted on val; probs() then gives the served, calibrated probabilities

    def logits(self, images: list[np.ndarray], desc: str, transform=None) -> np.ndarray:
        from aigi.training.data import ImageDataset, ShardSampler, make_loader

        dataset = ImageDataset(images, [0] * len(images), self.spec, transform=transform)
        loader = make_loader(dataset, ShardSampler(len(dataset)), self.batch_size, self.workers)
        logits, _ = predict_logits(self.detector, loader, self.device, progress=self.progress, desc=desc)
        return logits

    def probs(self, images: list[np.ndarray], desc: str, transform=None) -> np.ndarray:
        return softmax(self.logits(images, desc, transform), self.temperature)


def fit_calibration(
    val_logits: np.ndarray, val_kept: list, labels: list[str], target_fpr: float
) -> tuple[float, dict[str, Any]]:
    """Temperature, then threshold, from the val split's raw logits (see the module docstring).

    The temperature minimizes the real/fake NLL of ``p_fake`` (:func:`fit_binary_temperature`), the quantity the
    threshold and the served decision use.

    Returns:
        The threshold on the calibrated ``p_fake`` and the calibration record for ``aigi.json`` (its
        ``temperature`` is 1.0 when val has no image).
    """
    is_fake = np.asarray([s.label != REAL for s in val_kept], dtype=bool)
    temperature = fit_binary_temperature(val_logits, is_fake)
    val_probs = softmax(val_logits, temperature) if len(val_logits) else np.zeros((0, len(labels)), np.float32)
    threshold, calibration = calibrate(val_probs, ~is_fake, target_fpr)
    calibration["temperature"] = temperature
    calibration["temperature_method"] = "val_binary_nll" if len(val_logits) else "none"
    if len(val_logits):
        calibration["val_binary_nll_before"] = binary_nll(val_logits, is_fake)
        calibration["val_binary_nll_after"] = binary_nll(val_logits, is_fake, temperature)
        if not MIN_TEMPERATURE * 1.01 < temperature < MAX_TEMPERATURE / 1.01:
            logger.warning(
                "the fitted temperature %.3g is at its bound: val is too small or too cleanly separated to "
                "calibrate on",
                temperature,
            )
    return threshold, calibration


def calibration_error(test_logits: np.ndarray, samples: list, temperature: float) -> dict[str, Any]:
    """Expected calibration error of the binary decision on test, at ``T = 1`` and at the fitted ``T``."""
    is_fake = np.asarray([s.label != REAL for s in samples], dtype=bool)
    before = expected_calibration_error(p_fake(softmax(test_logits)), is_fake)
    after = expected_calibration_error(p_fake(softmax(test_logits, temperature)), is_fake)
    return {"bins": ECE_BINS, "temperature": temperature, "test_ece_before": before, "test_ece_after": after}


def calibrate(val_probs: np.ndarray, val_is_real: np.ndarray, target_fpr: float) -> tuple[float, dict[str, Any]]:
    """Threshold and calibration record from val scores (0.5, uncalibrated, when val has no real image)."""
    scores = p_fake(val_probs) if len(val_probs) else np.zeros(0, dtype=np.float32)
    real_scores = scores[val_is_real]
    if real_scores.size == 0:
        logger.warning("no real images in the val split: keeping threshold 0.5, uncalibrated")
        return 0.5, {"method": "none", "reason": "no real images in the val split", "target_fpr": target_fpr}
    threshold, achieved = threshold_for_fpr(real_scores, target_fpr)
    fake_scores = scores[~val_is_real]
    return threshold, {
        "method": "val_real_fpr",
        "split": "val",
        "target_fpr": target_fpr,
        "achieved_fpr": achieved,
        "val_tpr": safe_mean(fake_scores >= np.float32(threshold)),
        "n_val": int(len(scores)),
        "n_val_real": int(real_scores.size),
    }


def score_split(
    probs: np.ndarray, samples: list, labels: list[str], task: str, threshold: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics of one scored split, and the arrays the report plots (ROC, confusion matrix)."""
    scores = p_fake(probs)
    is_fake = np.asarray([s.label != REAL for s in samples], dtype=bool)
    decided = scores >= np.float32(threshold)
    metrics: dict[str, Any] = detection_metrics(is_fake, scores, threshold)
    metrics["accuracy_at_0.5"] = safe_mean((scores >= np.float32(0.5)) == is_fake)
    classes = np.asarray([s.label for s in samples])
    per_class: dict[str, Any] = {}
    for name in sorted(set(classes.tolist()), key=lambda n: (n != REAL, n)):
        mask = classes == name
        entry: dict[str, Any] = {"n": int(mask.sum())}
        if name == REAL:
            entry["called_real"] = safe_mean(~decided[mask])
        else:
            entry["called_fake"] = safe_mean(decided[mask])
            pair = mask | ~is_fake
            ap, auc = average_precision(is_fake[pair], scores[pair]), roc_auc(is_fake[pair], scores[pair])
            entry["average_precision"] = None if np.isnan(ap) else ap
            entry["roc_auc"] = None if np.isnan(auc) else auc
        per_class[name] = entry
    metrics["per_class"] = per_class
    true_idx = _true_indices(samples, labels)
    predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    if task == "source":
        known = true_idx >= 0
        metrics["attribution_accuracy"] = safe_mean((predicted == true_idx)[known])
        metrics["attribution_accuracy_fakes"] = safe_mean((predicted == true_idx)[known & is_fake])
        matrix = confusion_matrix(true_idx, predicted, len(labels))
    else:
        matrix = confusion_matrix(true_idx, decided.astype(np.int64), len(labels))
    fpr, tpr, _ = roc_curve(is_fake, scores)
    plots = {"confusion": matrix, "roc": (fpr, tpr), "predicted": predicted, "p_fake": scores, "decided": decided}
    plots["is_fake"] = is_fake
    metrics["confusion_matrix"] = {"labels": list(labels), "rows_true_cols_predicted": matrix.tolist()}
    return metrics, plots


def _index_settings(meta: CheckpointMeta) -> dict[str, Any]:
    """The split settings the run was trained with, so val and test are the same images training held out."""
    hyper = meta.training.hyperparameters
    return {
        "val_fraction": float(hyper.get("val_fraction", 0.1)),
        "test_fraction": float(hyper.get("test_fraction", 0.1)),
        "seed": int(hyper.get("seed", 0)),
    }


def _decode(index, split: str, progress: bool) -> tuple[list[np.ndarray], list, list]:
    from aigi.training.datasets import decode_samples

    samples = index.split(split)
    if not samples:
        return [], [], []
    return decode_samples(samples, progress=progress)


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    target_fpr: float = 0.05,
    robustness: bool = False,
    batch_size: int = 64,
    workers: int = 0,
    device: str | None = None,
    allow_outside_root: bool = False,
    progress: bool = True,
    open_set_keep: float = DEFAULT_KEEP,
) -> dict[str, Any]:
    """Evaluate a run directory on a dataset, write the report to ``out`` and the threshold into ``aigi.json``.

    ``open_set_keep`` is the share of val's known fakes that keep their name when the open-set threshold of an
    attribution model is fitted (see :mod:`aigi.training.open_set`).

    Returns:
        The report (as written to ``out/report.json``).

    Raises:
        CheckpointError: ``checkpoint`` is not a run directory.
        DatasetError: the data has no test images, or nothing decodable.
    """
    from aigi.training.datasets import index_dataset
    from aigi.training.model import load_checkpoint
    from aigi.training.report import write_report

    if not 0.0 <= target_fpr <= 1.0:
        raise SettingsError(f"target FPR must lie in [0, 1], got {target_fpr}")
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    detector, meta = load_checkpoint(checkpoint, torch_device)
    index = index_dataset(data, **_index_settings(meta), allow_outside_root=allow_outside_root)
    val_images, val_kept, val_skipped = _decode(index, "val", progress)
    test_images, test_kept, test_skipped = _decode(index, "test", progress)
    if not test_images:
        raise DatasetError(f"{data}: no decodable test images to evaluate on")
    scorer = _Scorer(detector, meta.preprocessing, torch_device, batch_size, workers, progress)

    val_logits = scorer.logits(val_images, "val") if val_images else np.zeros((0, meta.num_labels), np.float32)
    threshold, calibration = fit_calibration(val_logits, val_kept, meta.labels, target_fpr)
    scorer.temperature = calibration["temperature"]
    val_probs = softmax(val_logits, scorer.temperature) if len(val_logits) else val_logits
    open_set = fit_open_set(val_probs, meta.labels, _true_indices(val_kept, meta.labels), threshold, open_set_keep)

    test_logits = scorer.logits(test_images, "test")
    test_probs = softmax(test_logits, scorer.temperature)
    test_metrics, plots = score_split(test_probs, test_kept, meta.labels, meta.task, threshold)
    plots["uncalibrated_p_fake"] = p_fake(softmax(test_logits))
    open_set_report, plots["served"] = _open_set_test(open_set, test_probs, test_kept, meta.labels, threshold)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "task": meta.task,
        "labels": list(meta.labels),
        "threshold": threshold,
        "calibration": calibration,
        "calibration_error": calibration_error(test_logits, test_kept, scorer.temperature),
        "open_set": open_set_report,
        "test": test_metrics,
        "skipped_files": len(val_skipped) + len(test_skipped) + len(getattr(index, "skipped", []) or []),
        "skipped": [[str(p), str(r)] for p, r in (val_skipped + test_skipped)[:50]],
    }
    if robustness:
        report["robustness"] = _robustness(scorer, test_images, test_kept, meta, threshold, test_metrics)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_predictions(out / PREDICTIONS_FILENAME, test_kept, test_probs, plots, meta.labels)
    report["files"] = write_report(report, plots, out)
    (out / REPORT_FILENAME).write_text(json.dumps(report, indent=2) + "\n")

    meta.open_set = open_set
    _store_calibration(checkpoint, meta, threshold, calibration, test_metrics)
    _log_test(test_metrics, threshold, out)
    return report


def _open_set_test(
    open_set: dict[str, Any], probs: np.ndarray, samples: list, labels: list[str], threshold: float
) -> tuple[dict[str, Any] | None, list[str]]:
    """The served label of each test image, and the fitted open-set record plus what it does to the test split's
    fakes (``None`` without an open set) for the report."""
    served = label_names(open_set_labels(probs, labels, threshold, open_set.get("threshold")), labels)
    if not open_set:
        return None, served
    if open_set.get("threshold") is None:
        logger.warning("no known fake of val is flagged fake: this model keeps naming every fake (no open set)")
        return {**open_set, "test": None}, served
    is_fake = np.asarray([s.label != REAL for s in samples], dtype=bool)
    test = open_set_summary(probs, labels, _true_indices(samples, labels), is_fake, threshold, open_set["threshold"])
    logger.info(
        "open set: threshold %.4f (%.0f%% of val's known fakes keep their name); test: %d of %d flagged fakes "
        "unknown, attribution accuracy among named %s",
        open_set["threshold"],
        100 * open_set["keep"],
        test["unknown"],
        test["flagged_fakes"],
        "n/a" if test["attribution_accuracy_named"] is None else f"{test['attribution_accuracy_named']:.4f}",
    )
    return {**open_set, "test": test}, served


def _store_calibration(
    checkpoint: str | Path, meta: CheckpointMeta, threshold: float, calibration: dict[str, Any], test: dict[str, Any]
) -> None:
    """Write the threshold, its calibration record (temperature included) and headline test metrics into ``aigi.json``.

    Threshold and temperature come from the same val logits and are saved together, so the served ``p_fake`` (the
    graph divides the logits by this temperature) is the one the threshold was set on.
    """
    meta.threshold = threshold
    meta.calibration = calibration
    meta.metrics = {**meta.metrics, "test": {k: test[k] for k in HEADLINE_KEYS if k in test}}
    save_meta(checkpoint, meta)


def _log_test(test_metrics: dict[str, Any], threshold: float, out: Path) -> None:
    logger.info(
        "test: accuracy %.4f (real %.4f, fake %.4f), AP %.4f, AUC %.4f%s; threshold %.4f; wrote %s",
        test_metrics["accuracy"] or 0.0,
        test_metrics["real_accuracy"] or 0.0,
        test_metrics["fake_accuracy"] or 0.0,
        test_metrics["average_precision"] or 0.0,
        test_metrics["roc_auc"] or 0.0,
        f", attribution {test_metrics['attribution_accuracy']:.4f}" if test_metrics.get("attribution_accuracy") else "",
        threshold,
        out,
    )


def _robustness(scorer: _Scorer, images, samples, meta, threshold: float, clean: dict[str, Any]) -> dict[str, Any]:
    table = {"clean": {k: clean.get(k) for k in HEADLINE_KEYS if k in clean}}
    for name, transform in PERTURBATIONS.items():
        probs = scorer.probs(images, name, transform=transform)
        metrics, _ = score_split(probs, samples, meta.labels, meta.task, threshold)
        table[name] = {k: metrics.get(k) for k in HEADLINE_KEYS if k in metrics}
    return table


def _write_predictions(path: Path, samples, probs: np.ndarray, plots: dict[str, Any], labels: list[str]) -> None:
    with path.open("w") as handle:
        for i, sample in enumerate(samples):
            row = {
                "path": str(sample.path),
                "label": sample.label,
                "predicted": labels[int(plots["predicted"][i])],
                "served": plots["served"][i],
                "p_fake": float(plots["p_fake"][i]),
                "is_fake": bool(plots["decided"][i]),
                "probs": [float(v) for v in probs[i]],
            }
            handle.write(json.dumps(row) + "\n")
