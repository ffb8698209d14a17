"""Setting runtimes up and tearing them down without letting one failure sink the run."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aigi.benchmarks.runtimes import BaseRuntime, RuntimeSpec, RuntimeUnavailableError
from aigi.errors import AigiError

if TYPE_CHECKING:
    from aigi.benchmarks.artifacts import ArtifactStore

logger = logging.getLogger(__name__)


def memory_probe(runtime: BaseRuntime):
    """The probe a cell of ``runtime`` reads: GPU memory, or the RSS of this process or of the server's tree."""
    from aigi.benchmarks.memory import default_probe

    return default_probe(runtime.on_gpu, runtime.memory_root_pid())


def setup_runtime(spec: RuntimeSpec, store: ArtifactStore) -> tuple[BaseRuntime | None, str | None, float]:
    """Build and set up one runtime; ``(runtime, None, static MiB)`` or ``(None, reason, 0)``.

    The static footprint (device memory the set-up took) is measured for GPU runtimes only: on the CPU a
    delta of resident memory says little once the allocator recycles memory freed by earlier work.
    """
    runtime = spec.build(store)
    try:
        probe = memory_probe(runtime) if runtime.on_gpu else None
        before = probe.current_mb() if probe else 0.0
        runtime.setup()
        return runtime, None, max(0.0, probe.current_mb() - before) if probe else 0.0
    except RuntimeUnavailableError as exc:
        return None, str(exc), 0.0
    except AigiError as exc:
        return None, f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}", 0.0
    except Exception as exc:  # noqa: BLE001 - one runtime failing must not sink the run
        logger.debug("set-up of %s failed", spec.name, exc_info=True)
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return None, f"set-up failed: {exc.__class__.__name__}: {first_line}", 0.0


def safe_info(runtime: BaseRuntime) -> dict[str, Any]:
    """``runtime.info()``, or the error it raised (info is decoration)."""
    try:
        return runtime.info()
    except Exception as exc:  # noqa: BLE001
        return {"error": str(exc)}


def teardown(runtime: BaseRuntime) -> None:
    """``runtime.teardown()``, logging rather than raising a failure."""
    try:
        runtime.teardown()
    except Exception as exc:  # noqa: BLE001 - teardown is best effort
        logger.warning("teardown of %s failed: %s", runtime.name, exc)
