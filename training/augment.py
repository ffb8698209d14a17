"""Training augmentation and robustness perturbations, on decoded uint8 arrays before the shared preprocessing.

Crop origins are random but multiples of the spec's grid, so the phase of a generator's upsampling grid
inside the crop is the one the served center crop sees. Flips, rescaling, blur and JPEG re-compression are
applied to the grid-aligned crop itself, so the JPEG block grid lines up with it and a flip never shifts the
phase (flipping a whole image of odd width would). The degradations (rescale, blur, JPEG, in the order an
image meets them on its way to a user) default to off here; :class:`aigi.training.train.TrainConfig` turns
them on for the default recipe.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from aigi.errors import SettingsError
from aigi.preprocessing import PreprocessSpec, fit_and_crop, fitted_size

logger = logging.getLogger(__name__)

# The default recipe (TrainConfig, ``aigi train``) degrades training crops the way images are degraded on
# their way to a user; probabilities, chosen from the measurements in README.md ("Robust by default").
DEFAULT_AUG_JPEG = 0.3
DEFAULT_AUG_BLUR = 0.3
DEFAULT_AUG_RESIZE = 0.3


@dataclass(frozen=True)
class AugmentConfig:
    """What training augmentation does.

    Attributes:
        flip: random horizontal flip (probability 0.5). Off by default: a flip mirrors a generator's
            phase pattern on the upsampling grid into one no generator produced, which slows learning.
        contrast_prob: probability of scaling the contrast around the per-channel mean by a gain drawn
            log-uniformly from ``contrast_gain``; it keeps the traces' pattern but takes away absolute
            contrast, which otherwise becomes a shortcut (low-contrast real photos look generated).
        contrast_gain: gain range.
        jpeg_prob: probability of JPEG re-compression at a quality drawn from ``jpeg_quality``.
        jpeg_quality: inclusive quality range.
        blur_prob: probability of a Gaussian blur with sigma drawn from ``blur_sigma``.
        blur_sigma: sigma range in pixels.
        resize_prob: probability of rescaling by a factor drawn uniformly from ``resize_scale`` and back to
            the crop's size (bicubic both ways), as a downscaled image that the preprocessing upscales again.
        resize_scale: factor range (below 1: information is lost, as when a platform shrinks an upload).
    """

    flip: bool = False
    contrast_prob: float = 0.0
    contrast_gain: tuple[float, float] = (0.5, 2.0)
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 100)
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    resize_prob: float = 0.0
    resize_scale: tuple[float, float] = (0.4, 1.0)

    def __post_init__(self) -> None:
        for name in ("contrast_prob", "jpeg_prob", "blur_prob", "resize_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SettingsError(f"{name} must lie in [0, 1], got {value}")
        if not 0.0 < self.resize_scale[0] <= self.resize_scale[1]:
            raise SettingsError(f"resize_scale must be a range of positive factors, got {self.resize_scale}")


def jpeg_compress(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode as JPEG at ``quality`` and decode again (uint8 RGB in, uint8 RGB out)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels (Pillow's ``GaussianBlur`` radius is the sigma)."""
    if sigma <= 0:
        return image
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=float(sigma))), dtype=np.uint8)


def scale_contrast(image: np.ndarray, gain: float) -> np.ndarray:
    """Scale each channel's deviations from its mean by ``gain`` (rounded, clipped to uint8)."""
    pixels = image.astype(np.float32)
    mean = pixels.mean(axis=(0, 1), keepdims=True)
    return np.clip(np.rint((pixels - mean) * gain + mean), 0, 255).astype(np.uint8)


def downscale(image: np.ndarray, factor: float) -> np.ndarray:
    """Resize both sides by ``factor`` (bicubic), at least one pixel each."""
    height, width = image.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC), dtype=np.uint8)


def rescale(image: np.ndarray, factor: float) -> np.ndarray:
    """Resize by ``factor`` (bicubic) and back to the original size: the detail a resize loses, same shape out."""
    height, width = image.shape[:2]
    if factor == 1.0:
        return image
    resized = downscale(image, factor)
    return np.asarray(Image.fromarray(resized).resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)


def random_rescale(image: np.ndarray, rng: np.random.Generator, scale: tuple[float, float]) -> np.ndarray:
    """:func:`rescale` by a factor drawn uniformly from ``scale`` with ``rng``."""
    return rescale(image, float(rng.uniform(*scale)))


def random_origin(height: int, width: int, spec: PreprocessSpec, rng: np.random.Generator) -> tuple[int, int]:
    """A random ``(top, left)`` for a ``spec.size`` crop, both multiples of ``spec.grid``."""
    top_steps = (height - spec.size) // spec.grid
    left_steps = (width - spec.size) // spec.grid
    if top_steps < 0 or left_steps < 0:
        raise ValueError(f"a {height}x{width} image is smaller than the {spec.size} crop; fit it first")
    return int(rng.integers(top_steps + 1)) * spec.grid, int(rng.integers(left_steps + 1)) * spec.grid


def augment(image: np.ndarray, spec: PreprocessSpec, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """A randomly augmented ``spec.size`` square crop of a decoded image, still uint8.

    Feed the result to :func:`aigi.preprocessing.preprocess` (it is already the crop, so the center
    origin is ``(0, 0)``).
    """
    # the crop is decided in fitted coordinates, then only it is resampled: a thin image costs no more than a square one
    origin = random_origin(*fitted_size(image.shape[0], image.shape[1], spec), spec, rng)
    crop = fit_and_crop(image, spec, origin)
    if config.flip and rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.ascontiguousarray(crop)
    if config.contrast_prob and rng.random() < config.contrast_prob:
        low, high = np.log(config.contrast_gain[0]), np.log(config.contrast_gain[1])
        crop = scale_contrast(crop, float(np.exp(rng.uniform(low, high))))
    if config.resize_prob and rng.random() < config.resize_prob:
        crop = random_rescale(crop, rng, config.resize_scale)
    if config.blur_prob and rng.random() < config.blur_prob:
        crop = gaussian_blur(crop, float(rng.uniform(*config.blur_sigma)))
    if config.jpeg_prob and rng.random() < config.jpeg_prob:
        crop = jpeg_compress(crop, int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1)))
    return crop
