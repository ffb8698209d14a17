"""The slim Triton client of aigi: numpy, Pillow and tritonclient, never torch.

``Detector(url).detect(images)`` returns one :class:`Result` per image; ``AsyncDetector`` is its
asyncio twin. ``url`` may name several replicas (a list, commas, or ``dns:///name:port``), over TLS or not.
Errors come from :mod:`aigi.errors` (``ServerUnreachableError``, ``RequestTimeoutError``, ``ModelNotReadyError``,
``InvalidImageError``, ``RequestRejectedError``, ``SettingsError``).
"""

from aigi.client.async_detector import AsyncDetector
from aigi.client.detector import Detector, DetectorStats
from aigi.client.model_info import ModelInfo
from aigi.client.result import Result
from aigi.errors import (
    ClientError,
    InvalidImageError,
    ModelNotReadyError,
    RequestRejectedError,
    RequestTimeoutError,
    ServerBusyError,
    ServerUnreachableError,
    SettingsError,
)

__all__ = [
    "AsyncDetector",
    "ClientError",
    "Detector",
    "DetectorStats",
    "InvalidImageError",
    "ModelInfo",
    "ModelNotReadyError",
    "RequestRejectedError",
    "RequestTimeoutError",
    "Result",
    "ServerBusyError",
    "ServerUnreachableError",
    "SettingsError",
]
