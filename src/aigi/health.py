"""Is the detector answering? A canary inference, not Triton's readiness flag.

Triton's ``/v2/health/ready`` says every model is loaded; it says nothing about whether a Python-backend
model can still answer. A preprocessing stub that hangs (an endless decode, a stopped process) or that
crashed and was not restarted leaves it at 200. :func:`canary` sends one small real image through the
ensemble over HTTP, with a deadline, and checks the answer; ``aigi serve``'s watchdog and ``aigi health``
(a Kubernetes exec probe) both use it, so every health signal aigi gives is the same one.

Standard library only: the probe runs in slim containers and must not pay for numpy or tritonclient.
"""

from __future__ import annotations

import json
import math
import re
import struct
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

CANARY_SIDE = 64
DEFAULT_CANARY_TIMEOUT_S = 10.0
_ENSEMBLE = re.compile(r'^\s*platform\s*:\s*"ensemble"', re.MULTILINE)


@dataclass(frozen=True)
class CanaryResult:
    """One canary inference.

    Attributes:
        ok: the model answered with a probability in [0, 1] before the deadline.
        seconds: how long the call took.
        detail: ``p_fake=...`` when ok, else why it failed, in one line.
    """

    ok: bool
    seconds: float
    detail: str


def canary_png(side: int = CANARY_SIDE) -> bytes:
    """A small valid RGB PNG (a colour gradient), written with the standard library."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    rows = b"".join(
        b"\0" + bytes(channel for x in range(side) for channel in (x * 4 % 256, y * 4 % 256, (x + y) * 2 % 256))
        for y in range(side)
    )
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _infer_request(http_url: str, model: str, image: bytes, timeout_s: float) -> urllib.request.Request:
    """A KServe v2 inference request with the image as a binary BYTES tensor (JSON cannot carry raw bytes)."""
    tensor = struct.pack("<I", len(image)) + image
    header = {
        "inputs": [
            {"name": "image", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(tensor)}}
        ],
        "outputs": [{"name": "p_fake", "parameters": {"binary_data": False}}],
        "parameters": {"timeout": int(timeout_s * 1e6)},
    }
    head = json.dumps(header).encode()
    return urllib.request.Request(
        f"{http_url.rstrip('/')}/v2/models/{model}/infer",
        data=head + tensor,
        method="POST",
        headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))},
    )


def _p_fake(body: bytes) -> float:
    outputs = {output["name"]: output for output in json.loads(body).get("outputs", [])}
    return float(outputs["p_fake"]["data"][0])


def canary(
    http_url: str, model: str = "aigi", timeout_s: float = DEFAULT_CANARY_TIMEOUT_S, image: bytes | None = None
) -> CanaryResult:
    """Send one small image through ``model`` and check the answer.

    Args:
        http_url: the server's HTTP endpoint, such as ``http://127.0.0.1:8000``.
        model: the ensemble that services call.
        timeout_s: the deadline for the whole call; a hung model fails here instead of hanging the probe.
        image: encoded image bytes; :func:`canary_png` when ``None``.

    Returns:
        A :class:`CanaryResult`; never raises for a server that misbehaves.
    """
    if "://" not in http_url:
        http_url = f"http://{http_url}"
    request = _infer_request(http_url, model, image or canary_png(), timeout_s)
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            value = _p_fake(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", "replace").strip()
        return CanaryResult(False, time.monotonic() - start, f"HTTP {exc.code}: {detail}")
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:  # timeout, refused, a bad answer
        return CanaryResult(False, time.monotonic() - start, f"{type(exc).__name__}: {exc}")
    elapsed = time.monotonic() - start
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        return CanaryResult(False, elapsed, f"p_fake={value!r} is not a probability")
    return CanaryResult(True, elapsed, f"p_fake={value:.6f}")


def ensemble_models(repo: str | Path) -> list[str]:
    """Names of the ensembles in a repository (the models a service, and so the canary, calls)."""
    configs = sorted(Path(repo).glob("*/config.pbtxt"))
    return [config.parent.name for config in configs if _ENSEMBLE.search(config.read_text(errors="replace"))]
