"""What the client returns for each image."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Result:
    """The detector's verdict on one image, or why there is none.

    Attributes:
        source: the image's name: its path, or ``<bytes #i>``, ``<PIL #i>``, ``<array #i>`` for in-memory inputs.
        label: the served label: the most likely one (``real`` or a generator / ``fake``), or ``unknown`` when the
            image looks generated but no known generator is confident enough (open-set attribution, decided by the
            served model); ``None`` when ``error`` is set.
        p_fake: probability that the image is generated, ``1 - p(real)``.
        is_fake: ``p_fake >= threshold``, the model's decision threshold from its config.
        scores: probability per label.
        model: the Triton model that answered (the ensemble, or the network model with client preprocessing).
        model_version: the version of that model that answered.
        error: why this image has no result (undecodable, rejected by the server); ``None`` on success.
        closest_known: when ``label`` is ``unknown``, the known generator with the highest probability (the name the
            model would have given); ``None`` otherwise.
    """

    source: str
    label: str | None = None
    p_fake: float | None = None
    is_fake: bool | None = None
    scores: dict[str, float] = field(default_factory=dict)
    model: str = ""
    model_version: str = ""
    error: str | None = None
    closest_known: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the image got a verdict."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)
