"""Where the generator traces are: a per-patch map of what pushes an image's score toward "fake".

The score explained is the fake logit margin ``logit[c] - logit[real]``, ``c`` the image's most likely generated
class (for a binary model, ``logit[fake] - logit[real]``); it is linear in the head's input, so it decomposes.

- **Mean-pooled models** (``tiny``): exact per-patch logits. The pooled vector is ``LN(mean_i h_i)``; a LayerNorm is
  not linear, but its centering is, and its scale is one number per image, so with that shared scale
  ``z_i = gamma * (h_i - mean(h_i)) / sigma(mean_j h_j) + beta`` averages to the pooled vector exactly, and the
  head applied to each ``z_i`` gives per-patch logits whose mean *is* the image's logit (up to float rounding).
  Applying the head to ``LN(h_i)`` per token would not add up.
- **CLS-pooled models** (pretrained CLIP): gradient x input, summed over colour channels and over each patch's
  pixels. Attention rollout was the alternative; it is class-agnostic (it shows where the CLS token looks, not
  whether that pushes toward fake or real), ignores the MLPs and the residual stem, and needs eager attention
  weights the SDPA tower does not return. Gradient x input is signed, specific to the fake score and costs one
  backward pass, which keeps it cheap on a CPU.

Images go through :func:`aigi.preprocessing.preprocess`, the one preprocessing; the overlay is drawn on the crop
recovered from the very ``pixel_values`` the model saw.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aigi.checkpoint import CheckpointMeta
from aigi.errors import InvalidImageError, SettingsError
from aigi.labels import REAL
from aigi.preprocessing import PreprocessSpec, preprocess
from aigi.training.calibration import softmax
from aigi.training.model import Detector

logger = logging.getLogger(__name__)

EXPLANATIONS_FILENAME = "explanations.json"
GRID_FILENAME = "explanations_grid.png"
METHODS = ("auto", "patch-logits", "gradient")
METHOD_HELP = {
    "patch-logits": "head applied to each patch token with the pooled LayerNorm scale (exact: the mean is the logit)",
    "gradient": "gradient x input of the fake logit margin, summed over channels and over each patch",
}
COLOUR_LEGEND = "red: pushes toward fake, blue: toward real (fake logit margin per patch)"


@dataclass
class Explanation:
    """One image's map and prediction.

    Attributes:
        name: output stem (``<name>_heatmap.png``).
        source: the image path.
        label: the true class when known (from a dataset folder), else ``None``.
        probs: softmax over the model's labels.
        p_fake: ``1 - p(real)``.
        fake_class: the generated class whose margin over ``real`` is explained.
        margin: ``logit[fake_class] - logit[real]`` of the whole image.
        scores: ``[grid, grid]`` per-patch contributions to the margin.
        crop: the ``[S, S, 3]`` uint8 crop the model saw.
    """

    name: str
    source: str
    label: str | None
    probs: np.ndarray
    p_fake: float
    fake_class: str
    margin: float
    scores: np.ndarray
    crop: np.ndarray


def resolve_method(detector: Detector, method: str) -> str:
    """``auto`` becomes ``patch-logits`` for mean pooling and ``gradient`` for CLS pooling.

    Raises:
        SettingsError: an unknown method, or ``patch-logits`` asked of a CLS-pooled model.
    """
    if method not in METHODS:
        raise SettingsError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        return "patch-logits" if detector.pooling == "mean" else "gradient"
    if method == "patch-logits" and detector.pooling != "mean":
        raise SettingsError("patch-logits needs a mean-pooled model (e.g. tiny); use --method gradient")
    return method


def _fake_index(logits: torch.Tensor) -> torch.Tensor:
    """Per image, the index of the most likely non-real class (label 0 is always ``real``)."""
    return logits[:, 1:].argmax(dim=1) + 1


def _margin(logits: torch.Tensor, fake_index: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, fake_index[:, None])[:, 0] - logits[:, 0]


def patch_logits(detector: Detector, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch logits ``[B, N, C]`` of a mean-pooled detector and the image logits ``[B, C]``.

    The mean over patches of the per-patch logits equals the image logits exactly (see the module docstring).
    """
    if detector.pooling != "mean":
        raise SettingsError("per-patch logits are exact only for a mean-pooled detector")
    tokens = detector.vision(pixel_values=pixel_values).last_hidden_state[:, 1:]
    norm = detector.vision.post_layernorm
    pooled = tokens.mean(dim=1)
    scale = torch.sqrt(pooled.var(dim=-1, unbiased=False, keepdim=True) + norm.eps)  # [B, 1], shared by all patches
    centered = tokens - tokens.mean(dim=-1, keepdim=True)
    normalized = centered / scale[:, None] * norm.weight + norm.bias
    per_patch = detector.head(normalized)
    return per_patch, detector.head(norm(pooled))


def _patch_scores(detector: Detector, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        per_patch, logits = patch_logits(detector, pixel_values)
        index = _fake_index(logits)
        gathered = per_patch.gather(2, index[:, None, None].expand(-1, per_patch.shape[1], 1))[..., 0]
        return gathered - per_patch[..., 0], logits


def _gradient_scores(detector: Detector, pixel_values: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = pixel_values.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = detector(inputs)
        margin = _margin(logits, _fake_index(logits.detach()))
        (grad,) = torch.autograd.grad(margin.sum(), inputs)
    saliency = (grad * inputs).sum(dim=1).detach()  # [B, H, W]
    batch, height, width = saliency.shape
    grid = saliency.reshape(batch, height // patch, patch, width // patch, patch).sum(dim=(2, 4))
    return grid.reshape(batch, -1), logits.detach()


def patch_grid(detector: Detector) -> tuple[int, int]:
    """``(patch size, patches per side)`` of the detector's input."""
    patch = detector.vision.config.patch_size
    if not isinstance(patch, int):  # transformers allows pairs; a CLIP tower's patches are square
        raise TypeError(f"the vision tower's patch_size must be one int, got {patch!r}")
    return patch, detector.image_size // patch


def score_patches(detector: Detector, pixel_values: torch.Tensor, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch scores ``[B, g, g]`` of the fake margin, and the image logits ``[B, C]`` (float32 numpy)."""
    method = resolve_method(detector, method)
    patch, side = patch_grid(detector)
    if method == "patch-logits":
        scores, logits = _patch_scores(detector, pixel_values)
    else:
        scores, logits = _gradient_scores(detector, pixel_values, patch)
    return scores.reshape(-1, side, side).float().cpu().numpy(), logits.float().cpu().numpy()


def crop_from_pixels(pixel_values: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Invert the normalization: the uint8 ``[S, S, 3]`` crop that produced ``pixel_values`` (exact after rounding)."""
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None] * 255.0
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None] * 255.0
    return np.clip(np.rint(pixel_values * std + mean), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def explain_images(
    detector: Detector,
    meta: CheckpointMeta,
    items: Sequence[tuple[str, Path, str | None]],
    method: str = "auto",
    batch_size: int = 16,
) -> list[Explanation]:
    """Explain ``(name, path, true label or None)`` items; the model must already be on its device, in eval mode.

    Raises:
        InvalidImageError: a file is missing or cannot be decoded.
    """
    device = next(detector.parameters()).device
    explanations: list[Explanation] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        pixels = np.stack([preprocess(path, meta.preprocessing) for _, path, _ in chunk])
        scores, logits = score_patches(detector, torch.from_numpy(pixels).to(device), method)
        probs = softmax(logits, meta.temperature).astype(np.float32)  # calibrated, as the server answers
        for i, (name, path, label) in enumerate(chunk):
            fake = int(np.argmax(logits[i, 1:])) + 1
            explanations.append(
                Explanation(
                    name=name,
                    source=str(path),
                    label=label,
                    probs=probs[i],
                    p_fake=float(1.0 - probs[i, 0]),
                    fake_class=meta.labels[fake],
                    margin=float(logits[i, fake] - logits[i, 0]),
                    scores=scores[i],
                    crop=crop_from_pixels(pixels[i], meta.preprocessing),
                )
            )
    return explanations


def _unique_names(paths: Sequence[Path], prefixes: Sequence[str | None]) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for path, prefix in zip(paths, prefixes, strict=True):
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{prefix}_{path.stem}" if prefix else path.stem)
        name, n = base, 1
        while name in seen:
            n += 1
            name = f"{base}-{n}"
        seen.add(name)
        names.append(name)
    return names


def check_images(images: Sequence[str | Path]) -> list[Path]:
    """The image paths, after checking each is a file (before the model is loaded).

    Raises:
        InvalidImageError: a path that is not a file.
    """
    paths = [Path(image) for image in images]
    for path in paths:
        if not path.is_file():
            raise InvalidImageError(f"{path}: no such image file")
    return paths


def dataset_items(
    meta: CheckpointMeta, data: str | Path, split: str, per_class: int, allow_outside_root: bool = False
) -> list[tuple[Path, str]]:
    """Candidate ``(path, label)`` pairs from a dataset split: up to ``4 * per_class`` (at least 16) per class.

    More than ``per_class`` are taken so the selection can show misclassified images, not only the first ones.

    Raises:
        DatasetError: the split has no images.
    """
    from aigi.errors import DatasetError
    from aigi.training.datasets import index_dataset
    from aigi.training.evaluate import _index_settings

    index = index_dataset(data, **_index_settings(meta), allow_outside_root=allow_outside_root)
    samples = index.split(split)
    if not samples:
        raise DatasetError(f"{data}: no images in the {split!r} split")
    limit = max(4 * per_class, 16)
    taken: dict[str, int] = {}
    items: list[tuple[Path, str]] = []
    for sample in samples:
        if taken.get(sample.label, 0) < limit:
            taken[sample.label] = taken.get(sample.label, 0) + 1
            items.append((Path(sample.path), sample.label))
    return items


def is_misclassified(explanation: Explanation, threshold: float) -> bool | None:
    """Whether the real/fake decision at ``threshold`` is wrong; ``None`` without a true label."""
    if explanation.label is None:
        return None
    return (explanation.label != REAL) != (explanation.p_fake >= threshold)


def select_for_grid(explanations: list[Explanation], per_class: int, threshold: float) -> list[Explanation]:
    """``per_class`` of each true class (real first), then up to ``per_class`` misclassified ones not yet shown."""
    chosen: list[Explanation] = []
    labels = sorted({e.label for e in explanations if e.label is not None}, key=lambda n: (n != REAL, n))
    for label in labels:
        chosen += [e for e in explanations if e.label == label][:per_class]
    wrong = [e for e in explanations if is_misclassified(e, threshold) and e not in chosen]
    return chosen + wrong[:per_class]


def _title(explanation: Explanation, threshold: float) -> tuple[str, str]:
    verdict = "fake" if explanation.p_fake >= threshold else "real"
    truth = f"true {explanation.label}, " if explanation.label is not None else ""
    wrong = is_misclassified(explanation, threshold)
    colour = "black" if wrong is None else "darkred" if wrong else "darkgreen"
    return f"{explanation.name}\n{truth}called {verdict} (p_fake {explanation.p_fake:.2f})", colour


def _overlay(axis, explanation: Explanation, limit: float | None = None):
    """Draw the crop and its map (nearest-neighbour patches, diverging colours centred on 0); return the image."""
    size = explanation.crop.shape[0]
    bound = limit or float(np.abs(explanation.scores).max()) or 1.0
    axis.imshow(explanation.crop)
    mapped = axis.imshow(
        explanation.scores, cmap="bwr", vmin=-bound, vmax=bound, alpha=0.5, extent=(0, size, size, 0),
        interpolation="nearest",
    )  # fmt: skip
    axis.axis("off")
    return mapped


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_heatmap(explanation: Explanation, threshold: float, path: Path) -> None:
    """``<name>_heatmap.png``: the crop the model saw with its map overlaid and a labelled colour bar."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 4.4))
    mapped = _overlay(axis, explanation)
    title, colour = _title(explanation, threshold)
    axis.set_title(title, fontsize=8, color=colour)
    bar = figure.colorbar(mapped, ax=axis, fraction=0.046, pad=0.04)
    bar.set_label("logit margin per patch\nred: toward fake, blue: toward real", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_grid(explanations: list[Explanation], threshold: float, path: Path, columns: int = 4) -> None:
    """A grid of overlays, each scaled to its own largest |score|, titled green when right and red when wrong."""
    plt = _pyplot()
    rows = max(1, -(-len(explanations) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.7 * columns, 2.9 * rows + 0.4), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, explanation in zip(axes.ravel(), explanations, strict=False):
        _overlay(axis, explanation)
        title, colour = _title(explanation, threshold)
        axis.set_title(title, fontsize=6, color=colour)
    figure.suptitle(COLOUR_LEGEND, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _record(explanation: Explanation, meta: CheckpointMeta) -> dict[str, Any]:
    return {
        "name": explanation.name,
        "image": explanation.source,
        "heatmap": f"{explanation.name}_heatmap.png",
        "label": explanation.label,
        "p_fake": explanation.p_fake,
        "is_fake": bool(explanation.p_fake >= meta.threshold),
        "predicted": meta.labels[int(np.argmax(explanation.probs))],
        "probs": {label: float(p) for label, p in zip(meta.labels, explanation.probs, strict=True)},
        "fake_class": explanation.fake_class,
        "margin": explanation.margin,
        "scores": np.round(explanation.scores.astype(np.float64), 6).tolist(),
    }


def explain(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "test",
    per_class: int = 2,
    method: str = "auto",
    batch_size: int = 16,
    device: str | None = None,
    allow_outside_root: bool = False,
) -> dict[str, Any]:
    """Write ``<name>_heatmap.png`` per image, ``explanations.json`` and ``explanations_grid.png`` into ``out``.

    Args:
        checkpoint: run directory.
        images: image files to explain (true label unknown).
        out: output folder.
        data: a dataset folder; ``per_class`` images of each class of ``split`` and up to ``per_class``
            misclassified ones are added, with their true labels.
        split: the dataset split to draw from.
        per_class: images per class (and misclassified) from ``data``.
        method: ``auto`` (by the model's pooling), ``patch-logits`` or ``gradient``.
        batch_size: images per forward (and backward) pass.
        device: torch device; the CPU by default, where this is cheap.
        allow_outside_root: let a CSV manifest list files outside its folder.

    Returns:
        The document written to ``explanations.json``.

    Raises:
        InvalidImageError: an image is missing or cannot be decoded.
        SettingsError: no image and no dataset, or a method the model cannot use.
    """
    from aigi.training.model import load_checkpoint

    paths = check_images(images)
    if not paths and data is None:
        raise SettingsError("give at least one image, or --data with a dataset folder")
    detector, meta = load_checkpoint(checkpoint, device or "cpu")
    resolved = resolve_method(detector, method)
    labelled = dataset_items(meta, data, split, per_class, allow_outside_root) if data is not None else []
    all_paths = paths + [path for path, _ in labelled]
    names = _unique_names(all_paths, [None] * len(paths) + [label for _, label in labelled])
    items: list[tuple[str, Path, str | None]] = [(name, path, None) for name, path in zip(names, paths, strict=False)]
    items += [(name, path, label) for name, (path, label) in zip(names[len(paths) :], labelled, strict=True)]
    explanations = explain_images(detector, meta, items, resolved, batch_size)
    shown = explanations[: len(paths)]
    if labelled:
        shown += select_for_grid(explanations[len(paths) :], per_class, meta.threshold)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for explanation in shown:
        write_heatmap(explanation, meta.threshold, out / f"{explanation.name}_heatmap.png")
    write_grid(shown, meta.threshold, out / GRID_FILENAME)
    patch, side = patch_grid(detector)
    document = {
        "checkpoint": str(checkpoint),
        "method": resolved,
        "method_description": METHOD_HELP[resolved],
        "pooling": detector.pooling,
        "score": "logit[fake_class] - logit[real] per patch; positive (red) pushes toward fake",
        "patch_size": patch,
        "grid": [side, side],
        "threshold": meta.threshold,
        "labels": list(meta.labels),
        "grid_png": GRID_FILENAME,
        "images": [_record(explanation, meta) for explanation in shown],
    }
    (out / EXPLANATIONS_FILENAME).write_text(json.dumps(document, indent=2) + "\n")
    return document
