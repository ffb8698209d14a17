"""Serving settings of an export (``aigi export`` flags): instances, batching, response cache, warm-up, overrides.

:class:`ServingSettings` carries what the operator chose; :mod:`aigi.export.repo_writer` turns it into the
configs. Defaults, and what each costs, are in model_repository/README.md ("Serving settings").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aigi.errors import ExportError
from aigi.export.triton_config import ConfigOverride

ROLES = ("ensemble", "preprocess", "network")
INSTANCE_ROLES = ("preprocess", "network")  # the ensemble runs no instances of its own
# One instance of each: on the CPU backend the network's instance already uses every core (ONNX Runtime's intra-op
# threads) and preprocessing is a few percent of its time (README: "Serving settings"); on a GPU backend raise
# preprocess (--instances preprocess=2) when decoding, not the GPU, is the bottleneck.
DEFAULT_INSTANCES = {"preprocess": 1, "network": 1}
# The dynamic batcher waits this long for batch-mates: a lone request pays at most 2 ms, far below one network pass.
DEFAULT_MAX_QUEUE_DELAY_US = 2000
OVERRIDE_MODES = ("merge", "replace")


def parse_instances(text: str) -> dict[str, int]:
    """``preprocess=2,network=1`` -> ``{"preprocess": 2, "network": 1}`` (roles left out keep their default).

    Raises:
        ExportError: an unknown role or a count below 1.
    """
    counts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        role, sep, count = item.partition("=")
        if not sep or role not in INSTANCE_ROLES:
            raise ExportError(f"--instances: expected ROLE=COUNT with ROLE in {INSTANCE_ROLES}, got {item!r}")
        if not count.isdigit() or int(count) < 1:
            raise ExportError(f"--instances {role}: the count must be a whole number of at least 1, got {count!r}")
        counts[role] = int(count)
    return counts


def parse_sizes(text: str, flag: str) -> tuple[int, ...]:
    """``4,8`` -> ``(4, 8)``; an empty text is ``()``.

    Raises:
        ExportError: something other than positive whole numbers.
    """
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not all(item.isdigit() and int(item) >= 1 for item in items):
        raise ExportError(f"{flag}: expected batch sizes like 4,8 (whole numbers of at least 1), got {text!r}")
    return tuple(sorted({int(item) for item in items}))


def read_override(target: str, path: str | Path, replace: bool = False) -> ConfigOverride:
    """The override for ``target`` read from ``path`` (``--config-override MODEL=FILE``).

    Raises:
        ExportError: the file cannot be read.
    """
    try:
        text = Path(path).read_bytes().decode()  # bytes as they are, so the sha256 is the file's
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"--config-override {target}={path}: cannot read it ({exc})") from exc
    return ConfigOverride(target=target, source=str(path), text=text, replace=replace)


@dataclass
class ServingSettings:
    """How the exported models are served.

    Attributes:
        instances: instance_group count per role (``preprocess``, ``network``).
        max_queue_delay_us: how long the dynamic batcher waits for batch-mates.
        preferred_batch_sizes: dynamic_batching.preferred_batch_size; ``None``: half and full max batch.
        response_cache: the ensemble answers an identical request (same image bytes) from Triton's cache; the
            server needs ``--cache-config local,size=BYTES``.
        warmup_batch_sizes: batch sizes of the warm-up requests of the preprocessing and network models; ``None``:
            1 and the max batch; ``()``: no warm-up.
        overrides: operator fragments merged into the generated configs.
    """

    instances: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_INSTANCES))
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    preferred_batch_sizes: tuple[int, ...] | None = None
    response_cache: bool = False
    warmup_batch_sizes: tuple[int, ...] | None = None
    overrides: list[ConfigOverride] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.instances = {**DEFAULT_INSTANCES, **self.instances}
        if self.max_queue_delay_us < 0:
            raise ExportError(f"--max-queue-delay-us must be 0 or more, got {self.max_queue_delay_us}")

    def validate(self, max_batch: int, names: dict[str, str]) -> None:
        """Check the settings against ``--max-batch`` and the model names of the export.

        Raises:
            ExportError: a batch size above ``max_batch``, or an override for a model the export does not write.
        """
        for flag, sizes in (
            ("--preferred-batch-sizes", self.preferred_batch_sizes),
            ("--warmup-batch-sizes", self.warmup_batch_sizes),
        ):
            if sizes and max(sizes) > max_batch:
                raise ExportError(f"{flag} {list(sizes)}: every size must be at most --max-batch ({max_batch})")
        for override in self.overrides:
            if override.target not in ROLES and override.target not in names.values():
                raise ExportError(
                    f"--config-override {override.target}={override.source}: no such model; use a role "
                    f"({', '.join(ROLES)}) or one of {', '.join(sorted(names.values()))}"
                )

    def overrides_for(self, role: str, name: str) -> list[ConfigOverride]:
        """The overrides aimed at ``role`` or at the model called ``name``, in the order given."""
        return [override for override in self.overrides if override.target in (role, name)]

    def override_digests(self) -> list[dict[str, str]]:
        """For the export report: target, file and sha256 of each override."""
        return [{"target": o.target, "file": o.source, "sha256": o.sha256} for o in self.overrides]
