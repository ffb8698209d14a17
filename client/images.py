"""Turn the client's image inputs into request payloads, one item per image, errors kept per image."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from aigi.errors import InvalidImageError
from aigi.preprocessing import ImageInput, PreprocessSpec, decode_image, preprocess


@dataclass
class Prepared:
    """One image ready to send: ``payload`` is encoded bytes or FP32 ``pixel_values``, or ``error`` says why not."""

    index: int
    source: str
    payload: bytes | np.ndarray | None = None
    error: str | None = None


def source_name(image: ImageInput, index: int) -> str:
    """A name to report an image by: its path, or its kind and position for in-memory inputs."""
    if isinstance(image, (str, Path)):
        return str(image)
    kind = {bytes: "bytes", bytearray: "bytes", memoryview: "bytes", np.ndarray: "array"}.get(type(image))
    if kind is None:
        kind = "PIL" if isinstance(image, Image.Image) else type(image).__name__
    return f"<{kind} #{index}>"


def encode_for_server(image: ImageInput, max_pixels: int) -> bytes:
    """Encoded bytes for server-side preprocessing.

    Files and bytes go as they are, so the server decodes exactly what the user has. PIL images and
    arrays are decoded by :func:`aigi.preprocessing.decode_image` (EXIF orientation, mode) and sent as
    lossless PNG, so both preprocessing paths see the same pixels.
    """
    if isinstance(image, (str, Path)):
        try:
            return Path(image).read_bytes()
        except OSError as exc:
            raise InvalidImageError(f"{image}: cannot read ({exc.strerror or exc})") from exc
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (Image.Image, np.ndarray)):
        buffer = io.BytesIO()
        Image.fromarray(decode_image(image, max_pixels)).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    raise InvalidImageError(f"unsupported image input of type {type(image).__name__}")


def prepare(image: ImageInput, index: int, local_spec: PreprocessSpec | None, max_pixels: int) -> Prepared:
    """Payload for one image: ``pixel_values`` when ``local_spec`` is given (client preprocessing), else bytes."""
    item = Prepared(index=index, source=source_name(image, index))
    try:
        item.payload = preprocess(image, local_spec) if local_spec else encode_for_server(image, max_pixels)
    except InvalidImageError as exc:
        item.error = f"invalid image: {exc}"
    return item
