"""Deterministic hostile image payloads: small valid files in every allowed format, then mutated.

Shared by the in-process fuzz test (tests/test_preprocessing_hostile.py) and the server-side one, so
both feed the same bytes. Everything is derived from ``seed``: the same call gives the same payloads.
"""

from __future__ import annotations

import functools
import io
import random

import numpy as np
from PIL import Image

MUTATIONS = ("bitflip", "overwrite", "truncate", "header_only", "header_bitflip")
_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


def _gradient(width: int = 40, height: int = 30) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 6 % 256, ys * 8 % 256, (xs + ys) * 3 % 256], axis=2).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@functools.cache
def base_images() -> tuple[tuple[str, bytes], ...]:
    """Small valid files covering the allowed formats and their odd corners (modes, compressions, EXIF)."""
    rgb = Image.fromarray(_gradient())
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: makes exif_transpose parse the EXIF block
    gray16 = Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    images = [
        ("jpeg", _encode(rgb, "JPEG", quality=90)),
        ("jpeg_exif", _encode(rgb, "JPEG", quality=80, exif=exif.tobytes())),
        ("jpeg_progressive", _encode(rgb, "JPEG", progressive=True)),
        ("jpeg_cmyk", _encode(rgb.convert("CMYK"), "JPEG")),
        ("mpo", _encode(frames[0], "MPO", save_all=True, append_images=frames[1:])),
        ("png", _encode(rgb, "PNG")),
        ("png_rgba", _encode(rgb.convert("RGBA"), "PNG")),
        ("png_palette", _encode(palette, "PNG", transparency=0)),
        ("png_gray16", _encode(gray16, "PNG")),
        ("webp_lossy", _encode(rgb, "WEBP", quality=70)),
        ("webp_lossless_rgba", _encode(rgb.convert("RGBA"), "WEBP", lossless=True)),
        ("gif", _encode(palette, "GIF")),
        ("gif_animated", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)),
        ("bmp", _encode(rgb, "BMP")),
        ("bmp_palette", _encode(palette, "BMP")),
        ("tiff", _encode(rgb, "TIFF")),
        ("tiff_deflate", _encode(rgb, "TIFF", compression="tiff_deflate")),
        ("tiff_lzw_exif", _encode(rgb, "TIFF", compression="tiff_lzw", exif=exif.tobytes())),
        ("tiff_packbits_cmyk", _encode(rgb.convert("CMYK"), "TIFF", compression="packbits")),
        ("tiff_gray16", _encode(gray16, "TIFF")),
        ("tiff_int32", _encode(Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.int32) * 300), "TIFF")),
    ]
    return tuple(images)


def _mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    if kind == "truncate":
        return bytes(buffer[: rng.randrange(1, len(buffer))])
    if kind == "header_only":
        return bytes(buffer[: rng.randrange(4, min(96, len(buffer)))])
    # header_bitflip aims at the first 64 bytes, where sizes, modes and offsets live
    span = min(64, len(buffer)) if kind == "header_bitflip" else len(buffer)
    for _ in range(rng.randint(1, 8)):
        position = rng.randrange(span)
        if kind == "overwrite":
            buffer[position] = rng.choice(_INTERESTING) if rng.random() < 0.5 else rng.randrange(256)
        else:
            buffer[position] ^= 1 << rng.randrange(8)
    return bytes(buffer)


def mutated_images(count: int, seed: int) -> list[tuple[str, bytes]]:
    """``count`` deterministic ``(name, payload)`` pairs: every base file in turn, each with one mutation.

    Args:
        count: how many payloads.
        seed: the random seed; the same ``(count, seed)`` always gives the same payloads.

    Returns:
        Pairs like ``("png_gray16-truncate-17", b"...")``; the name says which file and mutation made it.
    """
    rng = random.Random(seed)
    bases = base_images()
    payloads = []
    for index in range(count):
        name, data = bases[index % len(bases)]
        kind = MUTATIONS[(index // len(bases)) % len(MUTATIONS)]
        payloads.append((f"{name}-{kind}-{index}", _mutate(data, kind, rng)))
    return payloads
