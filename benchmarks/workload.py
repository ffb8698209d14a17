"""The images a benchmark runs on, and the rotating pools of distinct input batches built from them.

Images come from ``--images DIR``, else the test split of the checkpoint's training data (when it still
exists), else a small offline benchmark synthesized on the spot (:func:`aigi.training.synth.synthesize`,
test split). They are preprocessed once by :mod:`aigi.preprocessing` (tensor path, in-process runtimes) and
also kept as their encoded file bytes (bytes path: the server decodes exactly those files). Undecodable
files are counted and named, never silently dropped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aigi.checkpoint import CheckpointMeta
from aigi.errors import AigiError, InvalidImageError
from aigi.preprocessing import PreprocessSpec, preprocess

logger = logging.getLogger(__name__)

SYNTH_CLASSES = 5  # real + four simulated generators


@dataclass
class ImageSet:
    """Benchmark images: their files, encoded bytes, and where they came from."""

    paths: list[Path]
    encoded: list[bytes]
    source: str
    found: int
    corrupt: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def tensors(self, spec: PreprocessSpec) -> np.ndarray:
        """All images preprocessed with ``spec``: FP32 ``[N, 3, size, size]``."""
        return np.stack([preprocess(data, spec) for data in self.encoded])

    def summary(self) -> dict:
        """JSON-ready description for the report."""
        return {"source": self.source, "used": len(self.paths), "found": self.found, "corrupt": self.corrupt}


def _spread(paths: list[Path], limit: int) -> list[Path]:
    if len(paths) <= limit:
        return paths
    return [paths[int(i)] for i in np.linspace(0, len(paths) - 1, limit)]


def _load(paths: list[Path], spec: PreprocessSpec, source: str, found: int) -> ImageSet:
    kept, encoded, corrupt = [], [], []
    for path in paths:
        try:
            data = path.read_bytes()
            preprocess(data, spec)  # validates now, so a bad file never reaches a timed call
        except (OSError, InvalidImageError) as exc:
            corrupt.append(f"{path}: {exc}")
            continue
        kept.append(path)
        encoded.append(data)
    if corrupt:
        logger.warning(
            "%d of %d benchmark images could not be decoded (first: %s)", len(corrupt), len(paths), corrupt[0]
        )
    if not kept:
        raise AigiError(f"no decodable benchmark images in {source} ({len(corrupt)} corrupt)")
    return ImageSet(kept, encoded, source, found, corrupt)


def find_benchmark_images(
    images_dir: str | Path | None,
    meta: CheckpointMeta | None,
    count: int,
    spec: PreprocessSpec,
    workdir: str | Path,
) -> ImageSet:
    """Up to ``count`` decodable images, spread evenly over the sorted files (so every class shows up).

    Raises:
        AigiError: ``images_dir`` is given but missing or holds no decodable image.
    """
    from aigi.export.parity import find_images

    if images_dir is not None:
        root = Path(images_dir)
        if not root.exists():
            raise AigiError(f"--images {root}: no such file or folder")
        paths = find_images(root)
        if not paths:
            raise AigiError(f"--images {root}: no image files")
        return _load(_spread(paths, count), spec, str(root), len(paths))
    if meta is not None:
        from aigi.export.pipeline import default_parity_dir

        data = default_parity_dir(meta)
        if data is not None:
            root = data / "test" if (data / "test").is_dir() else data
            paths = find_images(root)
            if paths:
                return _load(_spread(paths, count), spec, f"{root} (the checkpoint's data)", len(paths))
    return synthesize_images(count, spec, workdir)


def synthesize_images(count: int, spec: PreprocessSpec, workdir: str | Path) -> ImageSet:
    """Build a small offline benchmark (test split only) big enough for ``count`` images of side ``spec.size``.

    Without scikit-image (whose photographs the benchmark crops) the images are procedural instead.
    """
    from aigi.export.parity import find_images

    root = Path(workdir) / "synth"
    size = max(256, math.ceil(spec.size / 8) * 8)
    try:
        from aigi.training.synth import synthesize
    except ImportError as exc:
        logger.warning("cannot synthesize the offline benchmark (%s); using procedural images", exc)
        return procedural_images(count, size, spec, root)
    per_class = max(1, math.ceil(count / SYNTH_CLASSES))
    logger.info("synthesizing %d benchmark images (%d px) in %s", per_class * SYNTH_CLASSES, size, root)
    synthesize(root, train_per_class=0, val_per_class=0, test_per_class=per_class, size=size, workers=1, progress=False)
    paths = find_images(root / "test")
    return _load(_spread(paths, count), spec, f"synthesized offline benchmark ({size} px, test split)", len(paths))


def procedural_images(count: int, size: int, spec: PreprocessSpec, root: Path) -> ImageSet:
    """Seeded smooth colour fields plus noise, half PNG and half JPEG: enough to time and compare runtimes."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    grid = np.linspace(0.0, 1.0, size, dtype=np.float32)
    paths = []
    for index in range(count):
        phase = rng.uniform(0, 2 * np.pi, 3)
        freq = rng.uniform(1, 6, 3)
        base = np.stack([np.sin(freq[c] * np.add.outer(grid, grid * (c + 1)) * np.pi + phase[c]) for c in range(3)], -1)
        pixels = np.clip((base * 0.4 + 0.5 + rng.normal(0, 0.05, base.shape)) * 255, 0, 255).astype(np.uint8)
        path = root / f"{index:05d}.{'png' if index % 2 else 'jpg'}"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return _load(paths, spec, f"procedural images ({size} px; scikit-image missing)", len(paths))


def batch_indices(num_images: int, batch: int, pool_batches: int) -> list[list[int]]:
    """Indices of ``pool_batches`` distinct batches of ``batch`` images, cycling through the images."""
    return [[(k * batch + i) % num_images for i in range(batch)] for k in range(pool_batches)]


def tensor_pool(tensors: np.ndarray, batch: int, pool_batches: int) -> list[np.ndarray]:
    """Distinct contiguous FP32 batches for the tensor path."""
    return [np.ascontiguousarray(tensors[idx]) for idx in batch_indices(len(tensors), batch, pool_batches)]


def bytes_pool(encoded: list[bytes], batch: int, pool_batches: int) -> list[np.ndarray]:
    """Distinct batches of encoded images (object arrays of ``bytes``) for the bytes path."""
    pools = []
    for idx in batch_indices(len(encoded), batch, pool_batches):
        array = np.empty(batch, dtype=object)
        array[:] = [encoded[i] for i in idx]
        pools.append(array)
    return pools
