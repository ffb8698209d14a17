"""The performance targets a run is judged against, evaluated from its own cells (ratios within one run).

1. Triton serving the INT8 network (tensor path, gRPC) at batch 8 and concurrency 2 reaches at least 2.5x the
   images/s of in-process PyTorch eager FP32 at batch 8, with decision agreement of at least 99%.
2. Triton's tensor path with the FP32 network keeps at least 85% of the images/s of in-process ONNX Runtime
   FP32 at the same batch size (batch 8, one client stream: the same work, one request at a time).
3. The bytes path (encoded images, preprocessed in the server) keeps at least 90% of the tensor path's images/s
   with the INT8 network at batch 8, one client stream: what services send costs little more than raw tensors.

Where both a plain and a shared-memory variant of a Triton runtime ran, the faster one is judged and named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aigi.benchmarks.cells import BenchCell


@dataclass(frozen=True)
class Target:
    """``candidates`` (first that ran wins ties by speed) at ``batch``/``concurrency`` vs ``reference`` at ``batch``."""

    key: str
    description: str
    candidates: tuple[str, ...]
    reference: str
    batch: int
    concurrency: int
    min_ratio: float
    min_decision_agreement: float | None = None


TARGETS: tuple[Target, ...] = (
    Target(
        "triton_int8_vs_torch",
        "Triton INT8 (tensor path, gRPC) at batch 8, concurrency 2 vs PyTorch eager FP32 at batch 8",
        ("triton-tensor-grpc-int8", "triton-tensor-grpc-shm-int8"),
        "torch-eager-fp32",
        batch=8,
        concurrency=2,
        min_ratio=2.5,
        min_decision_agreement=0.99,
    ),
    Target(
        "triton_fp32_vs_ort",
        "Triton FP32 (tensor path, gRPC, one stream) vs in-process ONNX Runtime FP32, batch 8",
        ("triton-tensor-grpc-fp32", "triton-tensor-grpc-shm-fp32"),
        "ort-cpu-fp32",
        batch=8,
        concurrency=1,
        min_ratio=0.85,
    ),
    Target(
        "triton_bytes_vs_tensor_int8",
        "Triton INT8 bytes path (encoded images, server-side preprocessing) vs its tensor path, batch 8, one stream",
        ("triton-bytes-grpc-int8",),
        "triton-tensor-grpc-int8",
        batch=8,
        concurrency=1,
        min_ratio=0.90,
    ),
)


def _cell(cells: Sequence[BenchCell], runtime: str, batch: int, concurrency: int) -> BenchCell | None:
    for cell in cells:
        if cell.ok and cell.key == (runtime, batch, concurrency):
            return cell
    return None


def evaluate_targets(
    cells: Sequence[BenchCell], agreement: dict[str, dict], targets: Sequence[Target] = TARGETS
) -> list[dict[str, Any]]:
    """One verdict per target: ``met`` (True/False, or None when a needed cell did not run), ratio and evidence."""
    verdicts: list[dict[str, Any]] = []
    for target in targets:
        reference = _cell(cells, target.reference, target.batch, 1)
        ran = [c for name in target.candidates if (c := _cell(cells, name, target.batch, target.concurrency))]
        verdict: dict[str, Any] = {
            "key": target.key,
            "description": target.description,
            "min_ratio": target.min_ratio,
            "min_decision_agreement": target.min_decision_agreement,
            "batch": target.batch,
            "concurrency": target.concurrency,
            "reference": target.reference,
            "met": None,
        }
        if reference is None or not ran:
            missing = [target.reference] if reference is None else list(target.candidates)
            verdict["reason"] = f"not measured: no cell for {' or '.join(missing)} at batch {target.batch}"
            verdicts.append(verdict)
            continue
        best = max(ran, key=lambda cell: cell.measured.images_per_s)  # ok cells: all have their timing
        ratio = best.measured.images_per_s / reference.measured.images_per_s
        verdict.update(
            runtime=best.runtime,
            images_per_s=best.measured.images_per_s,
            reference_images_per_s=reference.measured.images_per_s,
            ratio=ratio,
        )
        met = ratio >= target.min_ratio
        if target.min_decision_agreement is not None:
            agreed = agreement.get(best.runtime, {}).get("decision_agreement")
            verdict["decision_agreement"] = agreed
            verdict["agreement_weights"] = agreement.get(best.runtime, {}).get("weights")
            met = met and agreed is not None and agreed >= target.min_decision_agreement
        verdict["met"] = bool(met)
        verdicts.append(verdict)
    return verdicts
