"""Constants and small builders shared by the serving tests (conftest fixtures, test_client, test_predict_cli)."""

from __future__ import annotations

import importlib.util
import io
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
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


@contextmanager
def running_server(repo: Path, **options: Any) -> Iterator[Any]:
    """A started and ready :class:`aigi.server.TritonServer` on ``repo``, stopped on exit.

    Skips the test when the ``nvidia-pytriton`` wheel (the ``tritonserver`` binary) is not installed.
    """
    if importlib.util.find_spec("pytriton") is None:
        pytest.skip("nvidia-pytriton (the tritonserver binary) is not installed")
    from aigi.server import TritonServer

    server = TritonServer(repo, **options)
    server.start()
    try:
        server.wait_ready(timeout=180)
        yield server
    finally:
        server.stop()
