"""One error tree for the whole project, rooted in :class:`AigiError`.

The CLI turns any ``AigiError`` into one clear line on stderr and the error's ``exit_code``.
"""

from __future__ import annotations


class AigiError(Exception):
    """Root of every error aigi raises on purpose."""

    exit_code: int = 2


class SettingsError(AigiError, ValueError):
    """An option or setting outside its choices or range (a ``ValueError`` too, so callers may catch either)."""


class InvalidImageError(AigiError, ValueError):
    """Bytes or a file that cannot be decoded as a supported image (corrupt, truncated, oversized, not an image)."""


class DatasetError(AigiError):
    """A dataset that cannot be trained or evaluated on (empty, a single class, no ``real`` class, bad manifest)."""


class CheckpointError(AigiError):
    """A run directory that is missing files or whose ``aigi.json`` does not match the contract."""


class ModelSourceError(AigiError):
    """A ``--model`` that is neither a preset, a local CLIP directory, nor a loadable Hugging Face id."""


class ExportError(AigiError):
    """An export step that failed."""


class ParityError(ExportError):
    """An exported artifact whose outputs differ from PyTorch past the step's tolerance."""


class TensorRTUnavailableError(ExportError):
    """TensorRT or a CUDA GPU is missing, so the engine must be built elsewhere."""

    exit_code = 3


class RepositoryError(AigiError):
    """A Triton model repository that fails its checks."""


class ServerError(AigiError):
    """The Triton server could not be started, or died."""


class ClientError(AigiError):
    """Base of the errors the client library raises."""


class ServerUnreachableError(ClientError, ConnectionError):
    """No Triton server answered at the URL (after retries)."""


class ModelNotReadyError(ClientError):
    """The server answered but the requested model is not loaded or not ready."""


class RequestTimeoutError(ClientError, TimeoutError):
    """The server took the request but did not answer before the deadline; not retried (a retry adds load)."""


class ServerBusyError(ClientError):
    """The server kept refusing requests because its queue was full (or a queued request timed out) until the retry
    time ran out: it is overloaded, not down. Back off, or add replicas."""


class RequestRejectedError(ClientError):
    """The server refused or failed one inference request (for example an undecodable image)."""
