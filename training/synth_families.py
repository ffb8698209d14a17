"""Simulated generator families whose traces differ in kind from the periodic upsamplers of :mod:`.synth`.

The four pipelines of :mod:`aigi.training.synth` all print a trace that is periodic on the 8-pixel crop grid. A
detector trained on them alone can get by with one cue (spectral peaks at multiples of 1/8 cycle per pixel) and
call anything without that cue real. The families here leave traces of other kinds, so a leave-one-generator-out
evaluation (:mod:`aigi.training.leave_one_out`) asks whether the detector learned more than one cue:

- ``decoder_nonperiodic``: a decoder that resamples by a fractional factor drawn per image, on a slowly warped
  sampling grid. Its trace is spectral (a roll-off above the latent's Nyquist frequency, noise that lives only
  below it, detail reshaped by a shift-invariant filter) with no grid phase: no peak at the grid frequencies.
- ``diffusion_refine``: pixel-space diffusion in the img2img manner: noise the source part of the way, then a few
  deterministic DDIM-style steps with a fixed smoothing denoiser that pulls towards the image's low frequencies. No
  upsampling anywhere; the trace is the leftover noise, coloured by the repeated denoiser, and the lost fine detail.
- ``inpaint_region``: only a soft-edged blob (10-55% of the image, a third typically) is regenerated, by a 4x
  latent decoder with its own weights, and blended into the untouched source pixels. The trace is local.

These are simulations built from a handful of fixed linear filters and noise; they are not models, and nothing
here is real generator output. The building blocks (convolutions, kernels, the detail gain) are :mod:`.synth`'s.
"""

from __future__ import annotations

import functools
import logging
import zlib
from dataclasses import dataclass

import numpy as np

from aigi.training.synth import (
    DTYPE,
    _area_down,
    _Conv,
    _conv3,
    _detail_gain,
    _kernel,
    _mix,
    _nearest_up2,
    _phase_filter,
    _phase_taps,
    _separable,
    _smoothing_taps,
    _upsample,
)

logger = logging.getLogger(__name__)

# decoder_nonperiodic: the latent is 1/scale of the image, scale drawn per image from this range (never an integer
# grid: the fractional ratio and the warp keep any phase from lining up with the crop grid)
DECODER_SCALE = (2.3, 3.7)
DECODER_WARP_PX = 0.25  # amplitude of the sampling-grid warp, in latent pixels
# diffusion_refine: how far the source is noised (fraction of the cosine schedule) and in how many steps it returns
DIFFUSION_STRENGTH = (0.05, 0.2)
DIFFUSION_STEPS = 4
DIFFUSION_NOISE = 127.5  # unit noise in pixel levels: diffusion models work on [-1, 1]
# inpaint_region: the share of the image the blob is drawn to cover (borders and overlaps make the result 10-55%),
# and the feather of its edge (Gaussian sigma, px)
INPAINT_COVER = (0.15, 0.5)
INPAINT_FEATHER = 3.0


@dataclass(frozen=True)
class FamilyKernels:
    """Fixed weights of one family, derived from its name only (every synth seed shares them)."""

    stages: tuple[_Conv, ...]
    detail: np.ndarray | None = None  # [3, 3, P, P] taps for synth._phase_filter (P = 1: shift-invariant)
    encode: np.ndarray | None = None
    decode: np.ndarray | None = None


def family_kernels(name: str) -> FamilyKernels:
    """The fixed weights of family ``name``.

    Raises:
        KeyError: ``name`` is not one of :data:`aigi.training.synth.FAMILIES`.
    """
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if name == "decoder_nonperiodic":
        encode = np.eye(4, 3) + 0.3 * rng.standard_normal((4, 3))
        decode = np.linalg.pinv(encode) + 0.005 * rng.standard_normal((3, 4))
        stages = tuple(_kernel(rng, _smoothing_taps(rng, 0.75), 0.04, 0.01) for _ in range(2))
        return FamilyKernels(stages, _rolloff_taps(rng), encode.astype(DTYPE), decode.astype(DTYPE))
    if name == "diffusion_refine":
        # the denoiser's smoothing, one 3x3 conv applied at every step
        return FamilyKernels((_kernel(rng, _smoothing_taps(rng, 0.75), 0.04, 0.01),))
    if name == "inpaint_region":
        encode = np.eye(4, 3) + 0.3 * rng.standard_normal((4, 3))
        decode = np.linalg.pinv(encode) + 0.005 * rng.standard_normal((3, 4))
        stages = tuple(_kernel(rng, _smoothing_taps(rng, 0.4), 0.04, 0.01) for _ in range(4))
        return FamilyKernels(stages, _phase_taps(rng, 4), encode.astype(DTYPE), decode.astype(DTYPE))
    raise KeyError(name)


def generate_family(name: str, kernels: FamilyKernels, source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Regenerate ``source`` (``[H, W, 3]`` uint8) through family ``name``; returns ``[H, W, 3]`` float.

    Raises:
        KeyError: ``name`` is not one of :data:`aigi.training.synth.FAMILIES`.
    """
    x = source.transpose(2, 0, 1).astype(DTYPE, order="C")
    if name == "decoder_nonperiodic":
        out = _decoder_nonperiodic(kernels, x, rng)
    elif name == "diffusion_refine":
        out = _diffusion_refine(kernels, x, rng)
    elif name == "inpaint_region":
        out = _inpaint_region(kernels, x, rng)
    else:
        raise KeyError(name)
    return out.transpose(1, 2, 0)


# ----------------------------------------------------------------------------- resampling without a grid


def _keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _resample_matrix(n_in: int, coords: np.ndarray) -> np.ndarray:
    """Rows of cubic weights sampling an ``n_in`` signal at ``coords`` (input pixel units, pixel centres at
    integers), the kernel stretched by the step between samples when it exceeds one (antialiasing), rows normalized
    so borders keep their level."""
    step = max(1.0, float(np.abs(np.diff(coords)).mean()) if len(coords) > 1 else 1.0)
    weights = _keys_cubic((np.arange(n_in)[None, :] - coords[:, None]) / step)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(DTYPE)


def _fractional_pair(n: int, scale: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Down (``[m, n]``) and up (``[n, m]``) resampling matrices for ``n -> m = round(n / scale) -> n`` whose
    sampling grid has a random sub-pixel offset and a slow sinusoidal warp, so no phase repeats."""
    m = max(4, round(n / scale))
    ratio = n / m
    offset = rng.uniform(-0.5, 0.5)
    down = _resample_matrix(n, (np.arange(m) + 0.5) * ratio - 0.5 + offset * ratio)
    wavelength, phase = rng.uniform(17.0, 53.0), rng.uniform(0, 2 * np.pi)
    warp = DECODER_WARP_PX * np.sin(2 * np.pi * np.arange(n) / wavelength + phase)
    up = _resample_matrix(m, (np.arange(n) + 0.5) / ratio - 0.5 - offset + warp)
    return down, up


@functools.lru_cache(maxsize=16)
def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """Shift-invariant Gaussian blur of an ``n`` signal as a matrix, rows normalized at the borders."""
    distance = np.arange(n)[None, :] - np.arange(n)[:, None]
    weights = np.exp(-0.5 * (distance / sigma) ** 2) * (np.abs(distance) <= 4 * sigma)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(DTYPE)


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return _separable(x, _gaussian_matrix(x.shape[1], sigma), _gaussian_matrix(x.shape[2], sigma))


def _rolloff_taps(rng: np.random.Generator) -> np.ndarray:
    """3x3 shift-invariant taps (a single phase) that damp the highest frequencies: identity plus part of a
    Laplacian (a blur), jittered as a learned output layer would be."""
    laplacian = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    taps = np.eye(3)[1][:, None] * np.eye(3)[1][None, :] + 0.07 * laplacian + 0.02 * rng.standard_normal((3, 3))
    return taps[:, :, None, None].astype(DTYPE)


def _shared_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    # one noise map for all channels: colour noise would make colourfulness a shortcut (see synth._generate)
    return sigma * rng.standard_normal(shape[1:], dtype=DTYPE)


# ----------------------------------------------------------------------------- the families


def _decoder_nonperiodic(kernels: FamilyKernels, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fractional-ratio latent decoder on a warped grid; detail through a shift-invariant roll-off filter."""
    if kernels.encode is None or kernels.decode is None or kernels.detail is None:
        raise ValueError("decoder_nonperiodic: kernels lack the latent mixes or the detail filter")
    scale = rng.uniform(*DECODER_SCALE)
    down_y, up_y = _fractional_pair(x.shape[1], scale, rng)
    down_x, up_x = _fractional_pair(x.shape[2], scale, rng)
    low = _separable(x, down_y, down_x)
    latent = _mix(low + _shared_noise(rng, low.shape, rng.uniform(1.0, 3.0)), kernels.encode)
    decoded = _mix(latent, kernels.decode)
    for stage in kernels.stages:
        decoded = _conv3(decoded, stage)
    up = _separable(decoded, up_y, up_x)
    detail = _phase_filter(x - _separable(low, up_y, up_x), kernels.detail)
    # the roll-off filter takes energy out of the detail: the gain may give it back (up to 2x) at lower frequencies
    return up + _detail_gain(up, detail, x, bounds=(0.5, 2.0)) * detail


def _cosine_alpha_bar(t: float) -> float:
    return float(np.cos(0.5 * np.pi * t) ** 2)


def _diffusion_refine(kernels: FamilyKernels, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SDEdit-style img2img: noise to ``strength``, then deterministic DDIM steps with a smoothing denoiser.

    The denoiser's estimate of the clean image is the source's low frequencies (a Gaussian blur) plus the noisy
    residual, shrunk by a Wiener-like gain for the step's noise level and smoothed by its 3x3 conv: what it cannot
    tell from noise it damps, and the noise it lets through stays in the image, coloured by the smoothing. The
    result's high-frequency energy is brought back to the source's by a gain, so the leftover noise stays visible.
    """
    strength = rng.uniform(*DIFFUSION_STRENGTH)
    content = _gaussian_blur(x, 1.5)
    detail_var = float(np.var(x - content)) + 1.0
    times = strength * np.linspace(1.0, 0.0, DIFFUSION_STEPS + 1) ** 2  # finer steps at low noise, as samplers do
    alpha = _cosine_alpha_bar(times[0])
    noise = _shared_noise(rng, x.shape, DIFFUSION_NOISE)
    x_t = np.sqrt(alpha) * x + np.sqrt(1 - alpha) * noise
    estimate = content
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        alpha, alpha_next = _cosine_alpha_bar(t), _cosine_alpha_bar(t_next)
        residual = x_t / np.sqrt(alpha) - content
        noise_var = (1 - alpha) / alpha * DIFFUSION_NOISE**2
        shrunk = residual * (detail_var / (detail_var + noise_var))
        estimate = content + _conv3(shrunk, kernels.stages[0])
        predicted_noise = (x_t - np.sqrt(alpha) * estimate) / np.sqrt(1 - alpha)
        x_t = np.sqrt(alpha_next) * estimate + np.sqrt(1 - alpha_next) * predicted_noise
    generated = estimate - content
    return content + _detail_gain(content, generated, x, bounds=(0.5, 2.0)) * generated


def _blob_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A union of one to three ellipses around the centre covering about :data:`INPAINT_COVER`, feathered, kept
    clear of the borders (so the center crop the detector sees holds most of it)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(DTYPE)
    target = rng.uniform(*INPAINT_COVER)
    count = int(rng.integers(1, 4))
    margin = 3 * INPAINT_FEATHER
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(count):
        cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
        # overlapping ellipses cover less than their sum: size each for more than its share of the target
        ry, rx = np.sqrt(1.5 * target / (count * np.pi)) * np.array([height, width]) * rng.uniform(0.75, 1.33, size=2)
        ry = min(ry, cy - margin, height - cy - margin)
        rx = min(rx, cx - margin, width - cx - margin)
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    soft = _gaussian_blur(mask[None].astype(DTYPE), INPAINT_FEATHER)
    return np.clip(soft, 0.0, 1.0)


def _inpaint_region(kernels: FamilyKernels, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Regenerate a blob through a 4x latent decoder (own weights, period-4 output layer); keep the rest."""
    if kernels.encode is None or kernels.decode is None or kernels.detail is None:
        raise ValueError("inpaint_region: kernels lack the latent mixes or the output layer")
    sigma = rng.uniform(1.0, 3.0)
    low = _area_down(x, 4)
    up = _mix(_mix(low + _shared_noise(rng, low.shape, sigma), kernels.encode), kernels.decode)
    for first, second in zip(kernels.stages[::2], kernels.stages[1::2], strict=True):
        up = _nearest_up2(up)
        up = _conv3(_conv3(up + _shared_noise(rng, up.shape, sigma), first), second)
    detail = _phase_filter(x - _upsample(low, 4, "cubic"), kernels.detail)
    generated = up + _detail_gain(up, detail, x) * detail
    mask = _blob_mask(x.shape[1], x.shape[2], rng)
    return mask * generated + (1.0 - mask) * x
