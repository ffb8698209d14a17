"""Small datasets and a tiny local CLIP directory for the training, evaluation and model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SMALL_IMAGE = 72  # a little above the tiny CLIP's 64 px input, so random crops have room
SPLITS = ("train", "val", "test")


def write_easy_image(path: Path, label: str, rng: np.random.Generator, size: int = SMALL_IMAGE) -> None:
    """``real``: fine-grained noise; every other class: a smooth 8x-upsampled image (blocky, low-frequency)."""
    if label == "real":
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    else:
        offset = {"gen_a": 40, "gen_b": 160}.get(label, 100)
        low = rng.integers(offset, offset + 60, size=(size // 8, size // 8, 3), dtype=np.uint8)
        pixels = np.repeat(np.repeat(low, 8, axis=0), 8, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_easy_dataset(
    root: Path,
    classes: tuple[str, ...] = ("real", "gen_a", "gen_b"),
    per_split: dict[str, int] | None = None,
    seed: int = 0,
    size: int = SMALL_IMAGE,
) -> Path:
    """A separable dataset under ``root/{train,val,test}/<class>/NNN.png``."""
    per_split = per_split or {"train": 12, "val": 6, "test": 6}
    rng = np.random.default_rng(seed)
    for split, count in per_split.items():
        for label in classes:
            for i in range(count):
                write_easy_image(root / split / label / f"{i:03d}.png", label, rng, size)
    return root


def make_tiny_clip_dir(path: Path) -> Path:
    """A randomly initialized, very small ``CLIPModel`` saved with ``save_pretrained`` (64 px input)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 64,
            "max_position_embeddings": 16,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(path)
    return path
