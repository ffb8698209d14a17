"""The one image preprocessing of aigi, shared by training, evaluation, the Triton server and the client.

Standard library, numpy, Pillow and :mod:`aigi.errors` only (no torch, nothing else from aigi): this file
is copied verbatim into exported model repositories, where the Triton preprocessing model runs it on
untrusted bytes from the network. Decoding turns any supported input (path, bytes, PIL image, uint8
array) into RGB uint8 with EXIF orientation applied; :func:`preprocess` then crops (or resizes small
images up) and normalizes to FP32 ``[3, H, W]``.

Images at least ``size`` pixels on each side are center-cropped, not resized: resizing erases the
upsampling traces a detector reads. Crop origins snap to multiples of ``grid`` so the phase of a
generator's upsampling grid is the same in training, on the server and in the client.

Hostile inputs are bounded:

- Formats: encoded images are opened only as :data:`ALLOWED_FORMATS` (JPEG, including MPO, PNG, WebP,
  BMP, GIF, TIFF); every other format Pillow knows (EPS runs Ghostscript, PSD, ICO, JPEG 2000, ...) is
  refused. PIL images handed over in-process are trusted as they are.
- Bytes: an encoded image over ``max_bytes`` (default :data:`DEFAULT_MAX_BYTES`) is refused; a file's
  size is checked before it is read.
- Pixels: a header claiming more than ``max_pixels`` pixels is refused before any pixel is decoded.
- Work: :func:`preprocess` decides the crop before resizing and converts and resizes only the source
  region under the crop, so memory stays within the decoded source plus a small multiple of the crop,
  however thin the image (a 64000x1 PNG is never upscaled to 14336000x224).
- Errors: anything Pillow raises while reading the bytes becomes :class:`InvalidImageError` with the reason.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from aigi.errors import InvalidImageError, SettingsError

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
RESIZE_POLICIES = ("crop", "resize")
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_ALLOWED_NAMES = "JPEG, PNG, WebP, BMP, GIF, TIFF"
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# rint(x * 255 / 65535) for every 16-bit value, computed as the float64 formula did, so a table lookup
# gives identical bytes without a float64 copy of the image (8 bytes per pixel).
_LUT16 = np.rint(np.arange(65536, dtype=np.float64) * (255.0 / 65535.0)).astype(np.uint8)
_BICUBIC_SUPPORT = 2.0

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
        max_bytes: encoded images (bytes or files) larger than this are refused before decoding; files
            are checked by size before they are read. Checkpoints written before this field get the default.
    """

    size: int = 224
    resize: str = "crop"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    grid: int = 8
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise SettingsError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.size < 1 or self.grid < 1:
            raise SettingsError("size and grid must be positive")
        if self.max_pixels < 1 or self.max_bytes < 1:
            raise SettingsError("max_pixels and max_bytes must be positive")
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


def _over_bytes(name: str, size: int, max_bytes: int) -> InvalidImageError:
    return InvalidImageError(f"{name} is {size:,} bytes, over the limit of {max_bytes:,} bytes per image")


def read_image_bytes(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read an encoded image file, refusing it by size before reading it.

    Args:
        path: the file.
        max_bytes: the largest file accepted.

    Raises:
        InvalidImageError: the file cannot be read, or is larger than ``max_bytes``.
    """
    path = Path(path)
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            raise _over_bytes(str(path), size, max_bytes)
        with open(path, "rb") as file:
            # read one byte past the cap: a file that grew after stat, or a device or pipe whose stat
            # size says nothing, is still refused without reading more than the cap
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if len(data) > max_bytes:
        raise _over_bytes(str(path), len(data), max_bytes)
    return data


@contextmanager
def _untrusted(what: str) -> Iterator[None]:
    """Turn whatever Pillow raises on hostile data into :class:`InvalidImageError` saying ``what`` failed."""
    try:
        yield
    except InvalidImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"refusing to decode: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises a dozen types (struct.error, EOFError, ...) on bad data
        reason = str(exc) or "no detail"
        raise InvalidImageError(f"{what} ({exc.__class__.__name__}: {reason})") from exc


def _open(source: ImageInput, max_pixels: int, max_bytes: int) -> Image.Image:
    if isinstance(source, Image.Image):
        return source  # already decoded in-process: trusted, any format
    if isinstance(source, (str, Path)):
        return _open_bytes(read_image_bytes(source, max_bytes), str(source), max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = memoryview(source).nbytes
        if size > max_bytes:
            raise _over_bytes("image", size, max_bytes)
        return _open_bytes(bytes(source), "image bytes", max_pixels)
    raise InvalidImageError(f"unsupported image input of type {type(source).__name__}")


def _over_pixels(width: int, height: int, max_pixels: int) -> InvalidImageError:
    return InvalidImageError(
        f"image is {width}x{height} pixels, over the limit of {max_pixels:,} pixels; refusing to decode"
    )


def _webp_canvas(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` a WebP file's first chunk claims, or ``None`` when it is not a WebP header we know.

    Pillow's WebP plugin hands the bytes to libwebp's animation decoder when it opens the file, and that
    reserves two canvas buffers of 4 bytes per claimed pixel before the size can be checked.
    """
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


def _open_bytes(data: bytes, name: str, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidImageError(f"{name}: empty (0 bytes)")
    canvas = _webp_canvas(data)
    if canvas is not None and canvas[0] * canvas[1] > max_pixels:
        raise _over_pixels(*canvas, max_pixels)
    try:
        # Only the allowed plugins ever parse the bytes. Pillow refuses the largest bombs itself;
        # the pixel limit in _decode_pil catches the rest.
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"{name}: refusing to decode: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise _unidentified(data, name) from exc
    except Exception as exc:  # noqa: BLE001 - a plugin's header parser may raise anything on hostile bytes
        raise InvalidImageError(f"{name}: not a decodable image ({exc.__class__.__name__}: {exc})") from exc


def _corrupt_allowed_format(prefix: bytes) -> str | None:
    """The allowed format whose magic bytes ``prefix`` carries (its header must then be corrupt), if any.

    Only the allowed plugins' byte comparisons run. Other formats are not named: their signatures overlap
    (a TGA file passes the CUR check), so a name would often be wrong.
    """
    Image.init()
    for fmt in ALLOWED_FORMATS:
        accept = Image.OPEN[fmt][1] if fmt in Image.OPEN else None
        try:
            verdict = accept(prefix) if accept is not None else False
        except Exception:  # noqa: BLE001 - a plugin's check failing just means "not this format"
            verdict = False
        if verdict and not isinstance(verdict, str):  # a string is a plugin's "maybe" warning
            return fmt
    return None


def _unidentified(data: bytes, name: str) -> InvalidImageError:
    fmt = _corrupt_allowed_format(data[:16])
    if fmt is not None:
        return InvalidImageError(f"{name}: not a decodable image (corrupt {fmt} header)")
    return InvalidImageError(
        f"{name}: not a decodable image: unknown or unsupported image format (allowed: {_ALLOWED_NAMES})"
    )


def _decode_pil(source: ImageInput, max_pixels: int, max_bytes: int) -> Image.Image:
    """Open, check the claimed size, load and orient; the pixels stay in the file's own mode."""
    image = _open(source, max_pixels, max_bytes)
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise _over_pixels(width, height, max_pixels)
    with _untrusted("corrupt or truncated image"):
        image.load()
        # in place for images opened here (saves a full copy); a caller's PIL image must not change
        ours = not isinstance(source, Image.Image)
        if ours:
            ImageOps.exif_transpose(image, in_place=True)
        else:
            image = ImageOps.exif_transpose(image)
    return image


def _peak(image: Image.Image) -> float:
    """Full-scale value of a wide image: 16-bit modes are 65535, 32-bit ones 65535 only if a pixel exceeds 255.

    Taken over the whole image (not a crop) so a crop converts exactly as the full image would.
    """
    if image.mode.startswith("I;16"):
        return 65535.0
    low_high = image.getextrema()  # one (min, max) pair: wide modes have one band
    highest = low_high[1]
    return 65535.0 if isinstance(highest, (int, float)) and highest > 255 else 255.0


def _wide_to_gray(image: Image.Image, peak: float) -> np.ndarray:
    """16/32-bit gray to uint8 as ``clip(rint(x * 255 / peak), 0, 255)``, without a float64 copy."""
    mode = image.mode
    values = np.asarray(image)
    if mode.startswith("I;16"):
        return _LUT16[values]
    if mode == "I":
        return _LUT16[np.clip(values, 0, 65535)] if peak > 255 else np.clip(values, 0, 255).astype(np.uint8)
    scaled = np.rint(values.astype(np.float32) * np.float32(255.0 / peak))  # mode F
    scaled[np.isnan(scaled)] = 0  # NaN has no byte value; 0 keeps the output defined and finite
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _to_rgb_uint8(image: Image.Image, peak: float | None = None) -> np.ndarray:
    """Pixels of a decoded image as RGB uint8; ``peak`` is the full image's (see :func:`_peak`) when cropped."""
    with _untrusted("cannot convert image to RGB"):
        mode = image.mode
        if mode in _WIDE_MODES:
            gray = _wide_to_gray(image, peak if peak is not None else _peak(image))
            return np.repeat(gray[:, :, None], 3, axis=2)
        if mode in ("P", "PA") or (mode == "L" and "transparency" in image.info):
            image = image.convert("RGBA")
        if image.mode != "RGB":
            image = image.convert("RGB")  # drops alpha, converts CMYK, L, LA, YCbCr
        return np.asarray(image, dtype=np.uint8)


def decode_image(
    source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Decode any supported input into an RGB uint8 array ``[H, W, 3]``.

    Applies EXIF orientation; grayscale, palette, CMYK, RGBA and 16-bit images become RGB uint8.
    A uint8 array is taken as already decoded (``[H, W]``, ``[H, W, 1|3|4]``). Encoded bytes and files
    must be one of :data:`ALLOWED_FORMATS`.

    Args:
        source: a path, encoded bytes, a PIL image, or a uint8 array.
        max_pixels: images whose header claims more pixels are refused before decoding.
        max_bytes: encoded bytes or files larger than this are refused (files before reading them).

    Raises:
        InvalidImageError: empty, corrupt, truncated, not an image, a format outside
            :data:`ALLOWED_FORMATS`, over ``max_bytes``, or a header claiming more than ``max_pixels``
            pixels (checked before any pixel is decoded).
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    return _to_rgb_uint8(_decode_pil(source, max_pixels, max_bytes))


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


def fitted_size(height: int, width: int, spec: PreprocessSpec) -> tuple[int, int]:
    """``(height, width)`` of an image after :func:`fit_to_size`, computed without resizing anything."""
    short = min(height, width)
    if (spec.resize == "crop" and short >= spec.size) or (spec.resize == "resize" and short == spec.size):
        return height, width
    scale = spec.size / short
    return max(spec.size, round(height * scale)), max(spec.size, round(width * scale))


def _bicubic(image: Image.Image, out_w: int, out_h: int, box: tuple[float, float, float, float]) -> Image.Image:
    """Bicubic resize of source ``box`` to ``out_w`` x ``out_h``: a horizontal pass, then a vertical one.

    Pillow 13 picks the order of the two passes per call from the sizes involved, and the order changes
    the result by up to ~20 levels (each pass rounds to uint8), so a full resize and a boxed resize of
    the same region could disagree. Two single-axis calls fix the order (the one Pillow always used
    before 13), so :func:`fit_to_size` and :func:`fit_and_crop` agree, whatever Pillow version runs them.
    """
    x0, y0, x1, y1 = box
    image = image.resize((out_w, image.height), Image.Resampling.BICUBIC, box=(x0, 0, x1, image.height))
    return image.resize((out_w, out_h), Image.Resampling.BICUBIC, box=(0, y0, out_w, y1))


def fit_to_size(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize per the spec's policy so both sides are at least ``spec.size`` (no change for large images under crop).

    This materializes the whole fitted image; :func:`fit_and_crop` gives the same crop with bounded work.
    """
    height, width = rgb.shape[:2]
    new_h, new_w = fitted_size(height, width, spec)
    if (new_h, new_w) == (height, width):
        return rgb
    return np.asarray(_bicubic(Image.fromarray(rgb), new_w, new_h, (0, 0, width, height)), dtype=np.uint8)


def center_origin(height: int, width: int, spec: PreprocessSpec) -> tuple[int, int]:
    """Top-left corner of the center crop, snapped down to the spec's grid."""
    top = (height - spec.size) // 2 // spec.grid * spec.grid
    left = (width - spec.size) // 2 // spec.grid * spec.grid
    return top, left


def _region(image: Image.Image | np.ndarray, box: tuple[int, int, int, int], peak: float | None) -> np.ndarray:
    """RGB uint8 pixels of ``box`` (left, top, right, bottom) of a decoded image, converting only that region."""
    left, top, right, bottom = box
    if isinstance(image, np.ndarray):
        return image[top:bottom, left:right]
    with _untrusted("cannot crop image"):
        cropped = image.crop(box)
    return _to_rgb_uint8(cropped, peak)


def _resized_crop(
    image: Image.Image | np.ndarray, box: tuple[float, float, float, float], size: int, peak: float | None
) -> np.ndarray:
    """The ``size`` x ``size`` bicubic resize of source ``box``, equal to resizing the whole image then cropping.

    Pillow's resample with a box reads the filter's support outside the box, so only the source region
    under the box plus that support (2 output pixels, i.e. ``2 * max(scale, 1)`` source pixels, and one
    more for rounding) is converted and handed to Pillow. Coordinates relative to that small region also
    keep Pillow's float32 box exact enough (a box at y=32000 would be off by ~0.002 pixel).
    """
    width, height = (image.shape[1], image.shape[0]) if isinstance(image, np.ndarray) else image.size
    x0, y0, x1, y1 = box
    margin_x = _BICUBIC_SUPPORT * max((x1 - x0) / size, 1.0) + 1
    margin_y = _BICUBIC_SUPPORT * max((y1 - y0) / size, 1.0) + 1
    left, top = max(0, math.floor(x0 - margin_x)), max(0, math.floor(y0 - margin_y))
    right, bottom = min(width, math.ceil(x1 + margin_x)), min(height, math.ceil(y1 + margin_y))
    region = np.ascontiguousarray(_region(image, (left, top, right, bottom), peak))
    # shifting by whole pixels is exact in floating point, so the filter sees the same coordinates
    shifted = (x0 - left, y0 - top, x1 - left, y1 - top)
    return np.asarray(_bicubic(Image.fromarray(region), size, size, shifted), dtype=np.uint8)


def fit_and_crop(
    image: Image.Image | np.ndarray, spec: PreprocessSpec, origin: tuple[int, int] | None = None
) -> np.ndarray:
    """The ``spec.size`` square uint8 RGB crop that ``fit_to_size`` then cropping would give, with bounded work.

    The crop is decided in fitted coordinates first; then only the source region under it is converted
    to RGB and, when the policy resizes, resampled straight to ``size`` x ``size``. The full fitted image
    is never made, so a thin 64000x1 image costs no more than a square one.

    Args:
        image: a decoded RGB uint8 array ``[H, W, 3]``, or a loaded PIL image in any mode
            :func:`decode_image` converts.
        spec: the checkpoint's preprocessing spec.
        origin: ``(top, left)`` of the crop in fitted coordinates; the grid-snapped center when ``None``.

    Raises:
        ValueError: ``origin`` puts the crop outside the fitted image.
        InvalidImageError: the PIL image cannot be converted to RGB.
    """
    width, height = (image.shape[1], image.shape[0]) if isinstance(image, np.ndarray) else image.size
    new_h, new_w = fitted_size(height, width, spec)
    top, left = origin if origin is not None else center_origin(new_h, new_w, spec)
    size = spec.size
    if not (0 <= top <= new_h - size and 0 <= left <= new_w - size):
        raise ValueError(f"crop origin {(top, left)} outside a {new_h}x{new_w} image for size {size}")
    peak = None
    if isinstance(image, Image.Image) and image.mode in _WIDE_MODES:
        with _untrusted("cannot convert image to RGB"):
            peak = _peak(image)  # over the whole image, before cropping
    if (new_h, new_w) == (height, width):
        return np.ascontiguousarray(_region(image, (left, top, left + size, top + size), peak))
    # the source rectangle that maps onto the crop (exact rationals, rounded once)
    box = (left * width / new_w, top * height / new_h, (left + size) * width / new_w, (top + size) * height / new_h)
    return _resized_crop(image, box, size, peak)


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

    The crop is decided before any resizing and only the pixels under it are converted and resampled
    (see :func:`fit_and_crop`), so the work per image is bounded by the decoded source plus the crop.

    Args:
        source: a path, encoded bytes, a PIL image, or a uint8 array.
        spec: the checkpoint's preprocessing spec (its ``max_pixels`` and ``max_bytes`` limits apply).
        origin: ``(top, left)`` of the crop after fitting; the grid-snapped center when ``None``.
            Training passes random grid-aligned origins here, so augmentation shares this code.

    Raises:
        InvalidImageError: the input cannot be decoded (see :func:`decode_image`).
        ValueError: ``origin`` puts the crop outside the fitted image.
    """
    if isinstance(source, np.ndarray):
        image: Image.Image | np.ndarray = _array_to_rgb(source)
    else:
        image = _decode_pil(source, spec.max_pixels, spec.max_bytes)
    return normalize(fit_and_crop(image, spec, origin), spec)


def preprocess_batch(sources: Sequence[ImageInput], spec: PreprocessSpec) -> np.ndarray:
    """Preprocess several images into FP32 ``[N, 3, size, size]`` (fails on the first invalid one)."""
    if not sources:
        return np.zeros((0, 3, spec.size, spec.size), dtype=np.float32)
    return np.stack([preprocess(source, spec) for source in sources])
