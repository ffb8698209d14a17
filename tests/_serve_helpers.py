"""Constants and small builders shared by the serving tests (conftest fixtures, test_client, test_predict_cli)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

SERVE_LABELS = ["real", "gan", "diff"]
SERVE_THRESHOLD = 0.4
SERVE_MAX_BATCH = 8


def encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    """Encode pixels as ``fmt`` bytes with Pillow."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims ``width`` x ``height`` pixels (its data is a few bytes)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
