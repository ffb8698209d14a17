"""A torch ``Dataset`` over images decoded once into memory, and its epoch-aware sampler.

Each item goes through :func:`aigi.preprocessing.preprocess`, the one preprocessing of aigi: training
items after :func:`aigi.training.augment.augment` (random grid-aligned crop, flip, ...), evaluation items
with the default center crop. Augmentation randomness is drawn from ``(seed, epoch, index)``, so a run
is reproducible whatever the number of loader workers, and a resumed run sees the same crops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from aigi.preprocessing import PreprocessSpec, preprocess
from aigi.training.augment import AugmentConfig, augment

logger = logging.getLogger(__name__)

Transform = Callable[[np.ndarray], np.ndarray]


class ImageDataset(Dataset):
    """Decoded uint8 images plus integer targets, yielding ``(pixel_values [3, S, S] float32, target)``.

    Args:
        images: decoded RGB uint8 arrays.
        targets: class index per image.
        spec: the preprocessing spec of the model.
        augment_config: training augmentation; ``None`` for the evaluation center crop.
        seed: base of the per-item random streams.
        transform: an extra uint8 -> uint8 perturbation applied before preprocessing (robustness tests).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        targets: Sequence[int],
        spec: PreprocessSpec,
        augment_config: AugmentConfig | None = None,
        seed: int = 0,
        transform: Transform | None = None,
    ) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = [int(t) for t in targets]
        self.spec = spec
        self.augment_config = augment_config
        self.seed = int(seed)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        if self.augment_config is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            crop = augment(image, self.spec, rng, self.augment_config)
            pixels = preprocess(crop, self.spec, origin=(0, 0))
        else:
            pixels = preprocess(image, self.spec)
        return torch.from_numpy(pixels), self.targets[index]


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` so even persistent loader workers know the epoch of each item.

    Wraps :class:`torch.utils.data.DistributedSampler` (one replica outside ``torchrun``), which shuffles
    with ``seed + epoch`` and gives each rank its share.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1) -> None:
        # DistributedSampler only takes len() of its dataset, but torch annotates it as Dataset: a range serves
        indices = cast("Dataset[int]", range(size))
        self.inner: DistributedSampler[int] = DistributedSampler(
            indices, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle (and augmentation stream) of ``epoch``."""
        self.epoch = int(epoch)
        self.inner.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, int(index)) for index in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


class ShardSampler(Sampler):
    """Every ``world_size``-th index from ``rank``, in order, without padding (evaluation shards)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(
    dataset: ImageDataset,
    sampler: Sampler,
    batch_size: int,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader for ``dataset``; workers persist across epochs (images are shared copy-on-write by fork)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
