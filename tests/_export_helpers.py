"""Shared helpers for the export tests: a tiny random-init checkpoint and a small image folder (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ["real", "gan", "diffusion"]
THRESHOLD = 0.4


def make_tiny_checkpoint(run_dir: Path, labels: list[str] = LABELS, seed: int = 0) -> Path:
    """Write a random-init ``tiny`` detector as a run directory (model.safetensors + aigi.json)."""
    from aigi.checkpoint import CheckpointMeta
    from aigi.preprocessing import PreprocessSpec
    from aigi.training.model import create_detector, save_checkpoint

    detector, arch = create_detector("tiny", num_labels=len(labels), seed=seed)
    meta = CheckpointMeta(
        architecture=arch,
        task="source",
        labels=list(labels),
        preprocessing=PreprocessSpec(size=224),
        threshold=THRESHOLD,
    )
    save_checkpoint(run_dir, detector, meta)
    return run_dir


def make_image_folder(root: Path, per_class: int = 2, corrupt: int = 1) -> Path:
    """A dataset-like folder: ``real/`` and ``gan/`` PNGs of varied sizes, plus ``corrupt`` undecodable files."""
    rng = np.random.default_rng(0)
    for label in ("real", "gan"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            side = 200 + 40 * index  # one image smaller than 224 (resized up), one larger (cropped)
            pixels = rng.integers(0, 256, (side, side + 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{index}.png")
    for index in range(corrupt):
        (root / "real" / f"broken{index}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root
