"""Agreement of each runtime's outputs with FP32 PyTorch eager on the same benchmark images.

Top-1 agreement (same argmax), decision agreement (same side of the checkpoint's threshold on ``p_fake``),
and the max and mean absolute difference of ``p_fake = 1 - p(real)``. Two ways to get there: on the
runtimes already set up for the speed cells (same architecture), or by building each runtime again on the
checkpoint's own architecture, one at a time (when the speed cells ran another preset).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from aigi.benchmarks.lifecycle import setup_runtime, teardown
from aigi.benchmarks.runtimes import BASELINE, BaseRuntime, spec_by_name
from aigi.labels import p_fake

if TYPE_CHECKING:
    from aigi.benchmarks.artifacts import ArtifactStore
    from aigi.benchmarks.workload import ImageSet

logger = logging.getLogger(__name__)


def agreement_stats(reference: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    """Compare ``probs`` ``[N, C]`` with the reference probabilities of the same images.

    Raises:
        ValueError: the shapes differ.
    """
    reference = np.asarray(reference, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if reference.shape != probs.shape:
        raise ValueError(f"outputs of shape {probs.shape} cannot be compared with reference {reference.shape}")
    ref_fake, fake = p_fake(reference), p_fake(probs)
    diff = np.abs(ref_fake - fake)
    return {
        "images": int(len(reference)),
        "top1_agreement": float(np.mean(reference.argmax(axis=1) == probs.argmax(axis=1))),
        "decision_agreement": float(np.mean((ref_fake >= threshold) == (fake >= threshold))),
        "max_abs_dp_fake": float(diff.max(initial=0.0)),
        "mean_abs_dp_fake": float(diff.mean()) if diff.size else 0.0,
        "threshold": float(threshold),
    }


def collect_probs(runtime: Any, inputs: np.ndarray, batch: int) -> np.ndarray:
    """Run all ``inputs`` through ``runtime`` in batches of ``batch``; probabilities ``[N, C]`` in input order."""
    outputs = []
    for start in range(0, len(inputs), batch):
        prepared = runtime.prepare(inputs[start : start + batch])
        outputs.append(np.asarray(runtime.run(prepared), dtype=np.float32))
    return np.concatenate(outputs, axis=0)


def _inputs(runtime: BaseRuntime, tensors: np.ndarray, images: ImageSet) -> np.ndarray:
    if runtime.input_kind != "bytes":
        return tensors
    encoded = np.empty(len(images.encoded), dtype=object)
    encoded[:] = images.encoded
    return encoded


def _compare(runtimes: dict[str, BaseRuntime], reference: np.ndarray, tensors, images, batch, threshold, extra):
    results = {}
    for name, runtime in runtimes.items():
        try:
            probs = collect_probs(runtime, _inputs(runtime, tensors, images), batch)
            results[name] = {**agreement_stats(reference, probs, threshold), **extra}
        except Exception as exc:  # noqa: BLE001 - reported per runtime
            logger.warning("agreement of %s failed: %s", name, exc)
            results[name] = {"error": f"{exc.__class__.__name__}: {exc}", **extra}
    return results


def _context(store: ArtifactStore, images: ImageSet, separate: bool) -> dict[str, Any]:
    return {
        "weights": store.weights,
        "architecture": store.meta.architecture.source,
        "source": images.source,
        "separate": separate,
    }


def _reference(store: ArtifactStore, tensors: np.ndarray, batch: int, ready: BaseRuntime | None) -> np.ndarray | None:
    if ready is not None:
        return collect_probs(ready, tensors, batch)
    runtime, reason, _ = setup_runtime(spec_by_name(BASELINE), store)
    if runtime is None:
        logger.warning("no FP32 PyTorch reference (%s): agreement not computed", reason)
        return None
    try:
        return collect_probs(runtime, tensors, batch)
    finally:
        teardown(runtime)


def agreement_on(
    runtimes: dict[str, BaseRuntime], store: ArtifactStore, images: ImageSet, batch: int
) -> dict[str, dict]:
    """Agreement of runtimes already set up on ``store`` (the speed cells' architecture)."""
    tensors = images.tensors(store.meta.preprocessing)
    reference = _reference(store, tensors, batch, runtimes.get(BASELINE))
    if reference is None:
        return {}
    extra = _context(store, images, separate=False)
    return _compare(runtimes, reference, tensors, images, batch, store.meta.threshold, extra)


def agreement_rebuilt(
    names: list[str],
    store: ArtifactStore,
    images: ImageSet,
    batch: int,
    out_of_time: Callable[[], str | None] = lambda: None,
    progress: bool = True,
) -> dict[str, dict]:
    """Agreement on the checkpoint's architecture: each named runtime is built again on ``store``, one at a time.

    Args:
        names: runtimes that ran in the speed cells.
        store: the checkpoint's artifacts (its servers are stopped at the end).
        images: the benchmark images.
        batch: images per request.
        out_of_time: returns a reason to stop (the run's time budget), or ``None``.
        progress: show a tqdm bar.
    """
    from tqdm import tqdm

    tensors = images.tensors(store.meta.preprocessing)
    reference = _reference(store, tensors, batch, None)
    if reference is None:
        return {}
    extra = _context(store, images, separate=True)
    results: dict[str, dict] = {}
    # Triton first: its export writes the ONNX files in-process ONNX Runtime then loads
    ordered = sorted(names, key=lambda name: spec_by_name(name).family != "triton")
    try:
        for name in tqdm(ordered, desc="agreement", unit="runtime", disable=not progress, file=sys.stderr):
            stop = out_of_time()
            if stop:
                results[name] = {"error": stop, **extra}
                continue
            runtime, reason, _ = setup_runtime(spec_by_name(name), store)
            if runtime is None:
                results[name] = {"error": reason, **extra}
                continue
            try:
                results.update(
                    _compare({name: runtime}, reference, tensors, images, batch, store.meta.threshold, extra)
                )
            finally:
                teardown(runtime)
    finally:
        store.close()
    return {name: results[name] for name in names if name in results}
