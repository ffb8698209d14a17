"""Leave-one-generator-out: does the detector catch a generator it never saw?

For each generator ``G`` of a dataset, one fold: a model is trained on real images and every generator but ``G``
(train split), its softmax temperature and decision threshold are fitted on the val split without ``G`` exactly as
``aigi eval`` fits them (:func:`aigi.training.evaluate.fit_calibration`: the smallest threshold whose false-positive
rate on val real images stays at or under the target), and it is tested on the test split's real images and ``G``.
Per fold it reports:

- ``unseen_detection``: the share of ``G``'s test images called fake at that threshold, the number that matters
  when a new generator appears after deployment;
- ``unseen_auroc``: ROC AUC of ``p_fake``, real test images against ``G``'s, free of the threshold;
- ``known_vs_unknown_auroc`` (``source`` task): how well the open-set score
  (:func:`aigi.training.open_set.known_confidence`, how sure the model is which known generator made an image)
  ranks the known generators' test images above ``G``'s, i.e. whether the model could tell that ``G`` is new;
- ``known_detection`` and ``test_real_fpr``: the same threshold on the generators it trained on and on the real
  test images, for reference.

The split logic is pure functions over a :class:`~aigi.training.datasets.DatasetIndex`; each fold's training data
is written as a CSV manifest (absolute paths) and trained with :func:`aigi.training.train.train`, the default recipe
apart from the budget (epochs, images) the caller gives.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aigi.errors import DatasetError
from aigi.labels import REAL, p_fake
from aigi.training.augment import DEFAULT_AUG_BLUR, DEFAULT_AUG_JPEG, DEFAULT_AUG_RESIZE
from aigi.training.datasets import DatasetIndex, Sample
from aigi.training.metrics import roc_auc, safe_mean

logger = logging.getLogger(__name__)

JSON_FILENAME = "leave_one_out.json"
MARKDOWN_FILENAME = "LEAVE_ONE_OUT.md"
PLOT_FILENAME = "leave_one_out.png"
MANIFEST_FILENAME = "train_manifest.csv"
TARGET_DETECTION = 0.80  # issue 12: mean unseen-generator detection at the calibrated FPR


@dataclass(frozen=True)
class Fold:
    """The images of one fold: ``held_out`` never appears in ``train`` or ``val``.

    Attributes:
        held_out: the generator left out of training and calibration.
        train, val: real images and every other generator's, from the train and val splits.
        test: the test split's real images and every ``held_out`` test image.
        known_test: the test split's images of the generators trained on (for the known-vs-unknown AUROC).
    """

    held_out: str
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    known_test: list[Sample]


def generator_names(index: DatasetIndex) -> list[str]:
    """The dataset's generator classes (every class but ``real``), in label order."""
    return [name for name in index.class_names if name != REAL]


def make_fold(index: DatasetIndex, held_out: str) -> Fold:
    """The fold that holds out ``held_out`` (see :class:`Fold`).

    Raises:
        DatasetError: ``held_out`` is not a generator of the dataset, the dataset has fewer than two generators
            (training would see no generated image), or the fold lacks real or generated training images or test
            images of ``held_out``.
    """
    generators = generator_names(index)
    if len(generators) < 2:
        raise DatasetError(
            f"{index.root}: leave-one-generator-out needs at least two generator classes, got {generators}"
        )
    if held_out not in generators:
        raise DatasetError(f"{held_out!r} is not a generator of {index.root}; choose from {', '.join(generators)}")
    train = [s for s in index.split("train") if s.label != held_out]
    val = [s for s in index.split("val") if s.label != held_out]
    test_split = index.split("test")
    test = [s for s in test_split if s.label in (REAL, held_out)]
    known_test = [s for s in test_split if s.label not in (REAL, held_out)]
    if not any(s.label == REAL for s in train) or all(s.label == REAL for s in train):
        raise DatasetError(f"{index.root}: holding out {held_out} leaves no real or no generated training image")
    if not any(s.label == held_out for s in test):
        raise DatasetError(f"{index.root}: no test image of {held_out} to test the fold on")
    return Fold(held_out, train, val, test, known_test)


def make_folds(index: DatasetIndex, held_out: Sequence[str] | None = None) -> list[Fold]:
    """One fold per generator of ``held_out`` (default: every generator of the dataset), in that order."""
    return [make_fold(index, name) for name in (held_out or generator_names(index))]


def write_training_manifest(fold: Fold, path: str | Path) -> Path:
    """Write the fold's dataset without its held-out generator as a ``path,label,split`` CSV (absolute paths).

    The rows are the fold's train and val images and the known generators' and real test images, so the manifest
    has all three splits and no split is carved anew: it is the dataset with ``held_out`` removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    test_real = [s for s in fold.test if s.label == REAL]
    rows = [(s, "train") for s in fold.train] + [(s, "val") for s in fold.val]
    rows += [(s, "test") for s in test_real + fold.known_test]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows([str(Path(sample.path).resolve()), sample.label, split] for sample, split in rows)
    return path


# ----------------------------------------------------------------------------- scores of one fold


def fold_metrics(
    threshold: float,
    real_scores: np.ndarray,
    unseen_scores: np.ndarray,
    known_scores: np.ndarray,
    known_confidence: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The fold's figures from calibrated ``p_fake`` scores (see the module docstring).

    Args:
        threshold: the decision threshold fitted on val (``is_fake = p_fake >= threshold``).
        real_scores, unseen_scores, known_scores: ``p_fake`` of the real, held-out and known-generator test images.
        known_confidence: the open-set score of the known generators' and of the held-out generator's test images;
            ``None`` (binary models) leaves ``known_vs_unknown_auroc`` at ``None``.
    """
    cut = np.float32(threshold)
    real_scores, unseen_scores = np.asarray(real_scores, np.float32), np.asarray(unseen_scores, np.float32)
    known_scores = np.asarray(known_scores, np.float32)
    labels = np.r_[np.zeros(len(real_scores)), np.ones(len(unseen_scores))]
    metrics: dict[str, Any] = {
        "unseen_detection": safe_mean(unseen_scores >= cut),
        "unseen_auroc": _finite(roc_auc(labels, np.r_[real_scores, unseen_scores])),
        "known_detection": safe_mean(known_scores >= cut),
        "test_real_fpr": safe_mean(real_scores >= cut),
        "known_vs_unknown_auroc": None,
        "n_test_real": len(real_scores),
        "n_test_unseen": len(unseen_scores),
        "n_test_known": len(known_scores),
    }
    if known_confidence is not None:
        known, unseen = (np.asarray(scores, np.float64) for scores in known_confidence)
        is_known = np.r_[np.ones(len(known)), np.zeros(len(unseen))]
        metrics["known_vs_unknown_auroc"] = _finite(roc_auc(is_known, np.r_[known, unseen]))
    return metrics


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def summarize(folds: list[dict[str, Any]], target: float = TARGET_DETECTION) -> dict[str, Any]:
    """Means over folds of the per-fold figures, and whether the mean unseen detection reaches ``target``."""

    def mean(key: str) -> float | None:
        values = [fold[key] for fold in folds if fold.get(key) is not None]
        return float(np.mean(values)) if values else None

    keys = ("unseen_detection", "unseen_auroc", "known_vs_unknown_auroc", "known_detection", "test_real_fpr")
    summary: dict[str, Any] = {f"mean_{key}": mean(key) for key in keys}
    summary["target_unseen_detection"] = target
    detection = summary["mean_unseen_detection"]
    summary["target_met"] = detection is not None and detection >= target
    return summary


# ----------------------------------------------------------------------------- the protocol


@dataclass(frozen=True)
class LeaveOneOutConfig:
    """What ``aigi eval --leave-one-out`` takes: the training budget of every fold and the calibration target.

    Training uses :class:`aigi.training.train.TrainConfig`'s defaults for everything not named here.
    """

    model: str = "tiny"
    task: str = "source"
    epochs: int = 12
    max_train_images: int | None = None
    lr: float | None = None
    batch_size: int = 64
    seed: int = 0
    aug_jpeg: float = DEFAULT_AUG_JPEG
    aug_blur: float = DEFAULT_AUG_BLUR
    aug_resize: float = DEFAULT_AUG_RESIZE
    target_fpr: float = 0.05
    held_out: tuple[str, ...] | None = None  # generators to hold out, one fold each; None: all
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    allow_outside_root: bool = False
    workers: int = 0
    threads: int | None = None
    device: str | None = None


def run_leave_one_out(
    data: str | Path, out: str | Path, config: LeaveOneOutConfig, progress: bool = True
) -> dict[str, Any]:
    """Train and score one fold per held-out generator; write the JSON, Markdown table and plot into ``out``.

    Each fold's model and training manifest stay in ``out/folds/<generator>/``. A line is logged per fold.

    Returns:
        The document written to ``out/leave_one_out.json``: the config, one record per fold, and the summary.

    Raises:
        DatasetError: see :func:`make_fold`; ModelSourceError and the other errors of training.
    """
    from aigi.training.datasets import index_dataset

    out = Path(out)
    index = index_dataset(
        data,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
        allow_outside_root=config.allow_outside_root,
    )
    folds = make_folds(index, config.held_out)
    started = time.perf_counter()
    records = []
    for number, fold in enumerate(folds, start=1):
        logger.info(
            "fold %d/%d: holding out %s; training on %d images (%s)",
            number,
            len(folds),
            fold.held_out,
            min(len(fold.train), config.max_train_images or len(fold.train)),
            ", ".join(sorted({s.label for s in fold.train})),
        )
        fold_started = time.perf_counter()
        run_dir = _train_fold(fold, out / "folds" / fold.held_out, config, progress)
        record = {"held_out": fold.held_out, "run": str(run_dir), **_score_fold(run_dir, fold, config, progress)}
        record["time_s"] = round(time.perf_counter() - fold_started, 1)
        records.append(record)
        logger.info(
            "fold %d/%d: %s unseen: detection %s at threshold %.4f, AUROC %s, known-vs-unknown AUROC %s (%.0f s)",
            number,
            len(folds),
            fold.held_out,
            _fmt(record["unseen_detection"]),
            record["threshold"],
            _fmt(record["unseen_auroc"]),
            _fmt(record["known_vs_unknown_auroc"]),
            record["time_s"],
        )
    document = {
        "data": str(data),
        "protocol": "leave one generator out: train and calibrate without it, test real vs it",
        "config": asdict(config),
        "folds": records,
        "summary": summarize(records),
        "time_s": round(time.perf_counter() - started, 1),
    }
    write_outputs(document, out)
    return document


def _train_fold(fold: Fold, folder: Path, config: LeaveOneOutConfig, progress: bool) -> Path:
    from aigi.training.train import TrainConfig, train

    manifest = write_training_manifest(fold, folder / MANIFEST_FILENAME)
    run_dir = folder / "run"
    train_config = TrainConfig(
        data=str(manifest),
        out=str(run_dir),
        model=config.model,
        task=config.task,
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        seed=config.seed,
        workers=config.workers,
        max_train_images=config.max_train_images,
        aug_jpeg=config.aug_jpeg,
        aug_blur=config.aug_blur,
        aug_resize=config.aug_resize,
        allow_outside_root=True,  # the manifest lists the dataset's files by absolute path
        threads=config.threads,
        device=config.device,
        progress=progress,
    )
    train(train_config)
    return run_dir


def _score_fold(run_dir: Path, fold: Fold, config: LeaveOneOutConfig, progress: bool) -> dict[str, Any]:
    """Calibrate the fold's model on its val split as ``aigi eval`` does, then score the test images."""
    import torch

    from aigi.training.calibration import softmax
    from aigi.training.datasets import decode_samples
    from aigi.training.evaluate import fit_calibration
    from aigi.training.model import load_checkpoint

    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    detector, meta = load_checkpoint(run_dir, device)

    def logits(samples: list[Sample], desc: str) -> tuple[np.ndarray, list[Sample]]:
        images, kept, _ = decode_samples(samples, progress=progress)
        if not images:
            return np.zeros((0, meta.num_labels), np.float32), kept
        return _logits(detector, meta.preprocessing, images, device, config, progress, desc), kept

    val_logits, val_kept = logits(fold.val, "val")
    threshold, calibration = fit_calibration(val_logits, val_kept, meta.labels, config.target_fpr)
    test_logits, test_kept = logits(fold.test + fold.known_test, "test")
    probs = softmax(test_logits, calibration["temperature"])
    labels = np.asarray([s.label for s in test_kept])
    real, unseen = labels == REAL, labels == fold.held_out
    known = ~real & ~unseen
    scores = p_fake(probs)
    confidence = None
    if meta.task == "source":
        from aigi.training.open_set import known_confidence

        confidence = (known_confidence(probs[known], meta.labels), known_confidence(probs[unseen], meta.labels))
    metrics = fold_metrics(threshold, scores[real], scores[unseen], scores[known], confidence)
    val_record = {k: calibration.get(k) for k in ("temperature", "achieved_fpr", "val_tpr", "n_val", "n_val_real")}
    return {"threshold": threshold, **metrics, "calibration": val_record, "labels": list(meta.labels)}


def _logits(detector, spec, images, device, config: LeaveOneOutConfig, progress: bool, desc: str) -> np.ndarray:
    from aigi.training.data import ImageDataset, ShardSampler, make_loader
    from aigi.training.evaluate import predict_logits

    dataset = ImageDataset(images, [0] * len(images), spec)
    loader = make_loader(dataset, ShardSampler(len(dataset)), config.batch_size, config.workers)
    return predict_logits(detector, loader, device, progress=progress, desc=desc)[0]


# ----------------------------------------------------------------------------- outputs


def write_outputs(document: dict[str, Any], out: str | Path) -> dict[str, str]:
    """Write ``leave_one_out.json``, ``LEAVE_ONE_OUT.md`` and ``leave_one_out.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": JSON_FILENAME, "markdown": MARKDOWN_FILENAME, "plot": PLOT_FILENAME}
    document["files"] = files
    plot(document, out / PLOT_FILENAME)
    (out / MARKDOWN_FILENAME).write_text(markdown(document))
    (out / JSON_FILENAME).write_text(json.dumps(document, indent=2) + "\n")
    return files


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(document: dict[str, Any]) -> str:
    """The leave-one-generator-out table (one row per held-out generator, then the means) as Markdown."""
    config, summary = document["config"], document["summary"]
    lines = [
        "# Leave one generator out",
        "",
        f"- data: `{document['data']}`; model `{config['model']}`, task {config['task']}, {config['epochs']} epoch(s), "
        f"training images per fold: {config['max_train_images'] or 'all'}, degradation probabilities JPEG "
        f"{config['aug_jpeg']}, blur {config['aug_blur']}, resize {config['aug_resize']}, seed {config['seed']}",
        f"- per fold: trained and calibrated (temperature, then the threshold for FPR {config['target_fpr']:.3f} on "
        "val real images) without the generator; tested on real test images and the generator's",
        f"- target: mean unseen detection >= {summary['target_unseen_detection']:.2f}: "
        f"**{'met' if summary['target_met'] else 'not met'}**",
        "",
        "| held-out generator | unseen detection | AUROC real vs unseen | known-vs-unknown AUROC | known detection "
        "| test real FPR | threshold |",
        "|---|---|---|---|---|---|---|",
    ]
    for fold in document["folds"]:
        cells = [fold[k] for k in ("unseen_detection", "unseen_auroc", "known_vs_unknown_auroc", "known_detection")]
        cells.append(fold["test_real_fpr"])
        lines.append(f"| {fold['held_out']} | " + " | ".join(map(_fmt, cells)) + f" | {fold['threshold']:.4f} |")
    means = [summary[f"mean_{k}"] for k in ("unseen_detection", "unseen_auroc", "known_vs_unknown_auroc")]
    means += [summary["mean_known_detection"], summary["mean_test_real_fpr"]]
    lines.append("| **mean** | " + " | ".join(f"**{_fmt(value)}**" for value in means) + " | |")
    lines += ["", f"![leave one generator out]({PLOT_FILENAME})", ""]
    return "\n".join(lines)


def plot(document: dict[str, Any], path: str | Path) -> None:
    """Bars per held-out generator: unseen detection, AUROC and known-vs-unknown AUROC, with the target line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folds = document["folds"]
    names = [fold["held_out"] for fold in folds]
    series = {
        "unseen detection (at the val threshold)": "unseen_detection",
        "AUROC real vs unseen": "unseen_auroc",
        "known-vs-unknown AUROC": "known_vs_unknown_auroc",
    }
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 3.5, 4.2))
    width = 0.8 / len(series)
    for k, (label, key) in enumerate(series.items()):
        values = [fold[key] if fold[key] is not None else 0.0 for fold in folds]
        ax.bar(np.arange(len(names)) + (k - (len(series) - 1) / 2) * width, values, width, label=label)
    target = document["summary"]["target_unseen_detection"]
    ax.axhline(target, linestyle="--", color="red", linewidth=1, label=f"target detection {target:.2f}")
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("held-out generator")
    ax.set_ylabel("share / AUROC")
    ax.set_title(f"Leave one generator out (target FPR {document['config']['target_fpr']:.2f} on val real)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
