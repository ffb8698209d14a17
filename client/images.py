"""Turn the client's image inputs into request payloads, one item per image, errors kept per image."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from aigi.errors import InvalidImageError
from aigi.preprocessing import ImageInput, PreprocessSpec, decode_image, preprocess, read_image_bytes

T = TypeVar("T")


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


def encode_for_server(image: ImageInput, limits: PreprocessSpec) -> bytes:
    """Encoded bytes for server-side preprocessing, within the server's per-image byte limit.

    Files and bytes go as they are, so the server decodes exactly what the user has (a file over the limit is
    refused from its size, before it is read). PIL images and arrays are decoded by
    :func:`aigi.preprocessing.decode_image` (EXIF orientation, mode) and sent as lossless PNG, so both
    preprocessing paths see the same pixels.

    Raises:
        InvalidImageError: unreadable, over ``limits.max_bytes`` or ``limits.max_pixels``, or an unsupported type.
    """
    if isinstance(image, (str, Path)):
        return read_image_bytes(image, limits.max_bytes)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (Image.Image, np.ndarray)):
        buffer = io.BytesIO()
        Image.fromarray(decode_image(image, limits.max_pixels)).save(buffer, format="PNG", compress_level=1)
        data = buffer.getvalue()
    else:
        raise InvalidImageError(f"unsupported image input of type {type(image).__name__}")
    if len(data) > limits.max_bytes:
        raise InvalidImageError(f"image is {len(data):,} bytes, over the limit of {limits.max_bytes:,} bytes per image")
    return data


def prepare(image: ImageInput, index: int, local_spec: PreprocessSpec | None, limits: PreprocessSpec) -> Prepared:
    """Payload for one image: ``pixel_values`` when ``local_spec`` is given (client preprocessing), else bytes.

    Never raises: whatever goes wrong with this one image (undecodable, too large, out of memory, an input
    type we do not handle) becomes its ``error``, so it cannot fail the other images of the call.
    """
    item = Prepared(index=index, source=source_name(image, index))
    try:
        item.payload = preprocess(image, local_spec) if local_spec else encode_for_server(image, limits)
    except InvalidImageError as exc:
        item.error = f"invalid image: {exc}"
    except Exception as exc:  # noqa: BLE001 - one image's failure (MemoryError included) is that image's result
        item.error = f"cannot prepare image: {type(exc).__name__}: {exc}"
    return item


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of at most ``size`` consecutive items, read lazily (``itertools.batched`` from Python 3.12 on)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def windows(images: Iterable[ImageInput], size: int) -> Iterator[list[tuple[int, ImageInput]]]:
    """``(index, image)`` pairs in lists of at most ``size``, read lazily: a call holds one window's payloads."""
    return batched(enumerate(images), size)
