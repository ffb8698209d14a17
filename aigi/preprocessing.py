"""The one image preprocessing of aigi, shared by training, evaluation, the Triton server and the client.

numpy and Pillow only (no torch), so every stage can import it. Decoding turns any supported input
(path, bytes, PIL image, uint8 array) into an RGB uint8 array with EXIF orientation applied;
:func:`preprocess` then crops (or resizes small images up) and normalizes to FP32 ``[3, H, W]``.

Images at least ``size`` pixels on each side are center-cropped, not resized: resizing erases the
upsampling traces a detector reads. Crop origins snap to multiples of ``grid`` so the phase of a
generator's upsampling grid is the same in training, on the server and in the client.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from aigi.errors import InvalidImageError

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
RESIZE_POLICIES = ("crop", "resize")
DEFAULT_MAX_PIXELS = 64_000_000

ImageInput = str | Path | bytes | bytearray | memoryview | Image.Image | np.ndarray


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw images become ``pixel_values``; stored in every checkpoint's ``aigi.json``.

    Attributes:
        size: side of the square crop fed to the network.
        resize: ``"crop"`` center-crops images at least ``size`` on each side and resizes smaller ones up;
            ``"resize"`` always resizes the shorter side to ``size`` first (the stock CLIP transform).
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel std divided by after subtracting the mean.
        grid: crop origins snap down to multiples of this many pixels.
        max_pixels: images whose header claims more pixels are refused before decoding.
    """

    size: int = 224
    resize: str = "crop"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    grid: int = 8
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.size < 1 or self.grid < 1:
            raise ValueError("size and grid must be positive")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in ``aigi.json``."""
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        """Inverse of :meth:`to_dict`; unknown keys are ignored so newer files still load."""
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


def _open(source: ImageInput) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        return _open_bytes(data, name=str(path))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _open_bytes(bytes(source), name="image bytes")
    raise InvalidImageError(f"unsupported image input of type {type(source).__name__}")


def _open_bytes(data: bytes, name: str) -> Image.Image:
    if not data:
        raise InvalidImageError(f"{name}: empty (0 bytes)")
    try:
        # Pillow refuses the largest bombs itself; decode_image's own pixel limit catches the rest.
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"{name}: refusing to decode: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError(f"{name}: not a decodable image (unknown format)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImageError(f"{name}: not a decodable image ({exc})") from exc


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        wide = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or wide.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(wide * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("P", "PA") or (mode == "L" and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")  # drops alpha, converts CMYK, L, LA, YCbCr
    return np.asarray(image, dtype=np.uint8)


def decode_image(source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode any supported input into an RGB uint8 array ``[H, W, 3]``.

    Applies EXIF orientation; grayscale, palette, CMYK, RGBA and 16-bit images become RGB uint8.
    A uint8 array is taken as already decoded (``[H, W]``, ``[H, W, 1|3|4]``).

    Raises:
        InvalidImageError: empty, corrupt, truncated, not an image, or a header claiming more than
            ``max_pixels`` pixels (checked before any pixel is decoded).
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    image = _open(source)
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidImageError(
            f"image is {width}x{height} pixels, over the limit of {max_pixels:,} pixels; refusing to decode"
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return _to_rgb_uint8(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"corrupt or truncated image ({exc})") from exc


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8:
        raise InvalidImageError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape:
        raise InvalidImageError(f"image arrays must be [H, W], [H, W, 1|3|4]; got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def fit_to_size(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize per the spec's policy so both sides are at least ``spec.size`` (no change for large images under crop)."""
    height, width = rgb.shape[:2]
    short = min(height, width)
    if spec.resize == "crop" and short >= spec.size:
        return rgb
    if spec.resize == "resize" and short == spec.size:
        return rgb
    scale = spec.size / short
    new_w, new_h = max(spec.size, round(width * scale)), max(spec.size, round(height * scale))
    return np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BICUBIC), dtype=np.uint8)


def center_origin(height: int, width: int, spec: PreprocessSpec) -> tuple[int, int]:
    """Top-left corner of the center crop, snapped down to the spec's grid."""
    top = (height - spec.size) // 2 // spec.grid * spec.grid
    left = (width - spec.size) // 2 // spec.grid * spec.grid
    return top, left


def normalize(crop: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 ``[H, W, 3]`` to normalized FP32 ``[3, H, W]``."""
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)
    chw = crop.transpose(2, 0, 1).astype(np.float32)
    return np.ascontiguousarray((chw - mean[:, None, None]) * inv_std[:, None, None])


def preprocess(
    source: ImageInput,
    spec: PreprocessSpec,
    origin: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode, fit, crop and normalize one image into FP32 ``[3, size, size]``.

    Args:
        source: a path, encoded bytes, a PIL image, or a uint8 array.
        spec: the checkpoint's preprocessing spec.
        origin: ``(top, left)`` of the crop after fitting; the grid-snapped center when ``None``.
            Training passes random grid-aligned origins here, so augmentation shares this code.

    Raises:
        InvalidImageError: the input cannot be decoded (see :func:`decode_image`).
    """
    rgb = fit_to_size(decode_image(source, spec.max_pixels), spec)
    height, width = rgb.shape[:2]
    top, left = origin if origin is not None else center_origin(height, width, spec)
    if not (0 <= top <= height - spec.size and 0 <= left <= width - spec.size):
        raise ValueError(f"crop origin {(top, left)} outside a {height}x{width} image for size {spec.size}")
    return normalize(rgb[top : top + spec.size, left : left + spec.size], spec)


def preprocess_batch(sources: Sequence[ImageInput], spec: PreprocessSpec) -> np.ndarray:
    """Preprocess several images into FP32 ``[N, 3, size, size]`` (fails on the first invalid one)."""
    if not sources:
        return np.zeros((0, 3, spec.size, spec.size), dtype=np.float32)
    return np.stack([preprocess(source, spec) for source in sources])
