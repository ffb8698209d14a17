"""Correctness checks of exported artifacts against FP32 PyTorch, with explicit tolerances.

Every variant (FP32 ONNX, FP16 ONNX, INT8 ONNX, TensorRT engine) runs on the same inputs: random
``pixel_values`` at a few batch sizes plus real images through :func:`aigi.preprocessing.preprocess`. For
each output the check reports the max absolute and relative difference and the decision agreement (same argmax,
same side of the threshold on ``p_fake``, same served ``label_id``: the argmax or ``unknown`` by the open-set rule
baked into the graph). It passes when ``probs`` stays within the step's tolerance *and* every agreement reaches
:data:`MIN_AGREEMENT`; on a parity set of fewer than 100 samples that means every decision agrees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from aigi.errors import InvalidImageError
from aigi.preprocessing import PreprocessSpec, preprocess

logger = logging.getLogger(__name__)

OUTPUTS = ("logits", "probs", "p_fake")
# the served label index (int64 [B, 1]); compared by agreement, not by difference. Graphs exported before it existed
# lack it: then it is left out of the check
LABEL_OUTPUT = "label_id"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# Relative differences divide by |reference|, floored so outputs near zero do not explode.
REL_FLOOR = 1e-6
TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2, "trt": 1e-2}
RANDOM_BATCH_SIZES = (1, 7)
# argmax and is_fake agreement with PyTorch a check must reach (the same bar as aigi bench's INT8 target)
MIN_AGREEMENT = 0.99

Outputs = dict[str, np.ndarray]


@dataclass
class ParityBatch:
    """One named input batch, e.g. ``random[7]`` or ``images[8]``."""

    name: str
    pixel_values: np.ndarray


@dataclass
class ParityResult:
    """What one correctness check saw."""

    artifact: str
    tolerance: float
    max_abs: dict[str, float]
    max_rel: dict[str, float]
    argmax_agreement: float
    is_fake_agreement: float
    samples: int
    batches: list[str] = field(default_factory=list)
    min_agreement: float = MIN_AGREEMENT
    # None when either side lacks label_id (a graph exported before it existed): not checked
    label_agreement: float | None = None

    @property
    def passed(self) -> bool:
        """``probs`` within tolerance and every decision agreement at least ``min_agreement``."""
        return self.failure() is None

    def failure(self) -> str | None:
        """Why the check failed (``None`` when it passed)."""
        if not self.max_abs["probs"] <= self.tolerance:  # written so that NaN fails too
            return (
                f"{self.artifact} differs from PyTorch past tolerance: probs max abs "
                f"{self.max_abs['probs']:.2e} > {self.tolerance:.0e}"
            )
        agreements = [self.argmax_agreement, self.is_fake_agreement]
        agreements += [] if self.label_agreement is None else [self.label_agreement]
        if min(agreements) < self.min_agreement:
            return (
                f"{self.artifact} changes decisions against PyTorch: agreement argmax {self.argmax_agreement:.1%}, "
                f"is_fake {self.is_fake_agreement:.1%}{self._label_text()} < {self.min_agreement:.0%} "
                f"(n={self.samples})"
            )
        return None

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {**asdict(self), "passed": self.passed}

    def _label_text(self) -> str:
        return "" if self.label_agreement is None else f", label_id {self.label_agreement:.1%}"

    def summary(self) -> str:
        """One line: the diffs per output and the agreement."""
        diffs = "  ".join(f"{name} abs {self.max_abs[name]:.2e} rel {self.max_rel[name]:.2e}" for name in OUTPUTS)
        return (
            f"{diffs}  (tol probs {self.tolerance:.0e}; agree argmax {self.argmax_agreement:.1%}, "
            f"is_fake {self.is_fake_agreement:.1%}{self._label_text()}; n={self.samples})"
        )


@dataclass
class ImageSample:
    """Real images found for the check and what became of them."""

    pixel_values: np.ndarray
    found: int
    used: list[str]
    corrupt: list[str]


def random_batches(image_size: int, sizes: Sequence[int] = RANDOM_BATCH_SIZES, seed: int = 0) -> list[ParityBatch]:
    """Seeded normal ``pixel_values`` (roughly what normalized images look like) at each batch size."""
    rng = np.random.default_rng(seed)
    return [
        ParityBatch(f"random[{size}]", rng.standard_normal((size, 3, image_size, image_size), dtype=np.float32))
        for size in sizes
    ]


def find_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursively), sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def sample_images(root: str | Path, spec: PreprocessSpec, limit: int = 8) -> ImageSample:
    """Preprocess up to ``limit`` images spread evenly over ``root``'s sorted files (so every class shows up).

    Undecodable files are counted and named in the result, never silently dropped.
    """
    paths = find_images(root)
    picks = paths if len(paths) <= limit else [paths[int(i)] for i in np.linspace(0, len(paths) - 1, limit)]
    arrays: list[np.ndarray] = []
    used: list[str] = []
    corrupt: list[str] = []
    for path in picks:
        try:
            arrays.append(preprocess(path, spec))
            used.append(str(path))
        except InvalidImageError as exc:
            corrupt.append(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
    if corrupt:
        logger.warning("%d of %d parity images could not be decoded (first: %s)", len(corrupt), len(picks), corrupt[0])
    empty = np.zeros((0, 3, spec.size, spec.size), dtype=np.float32)
    return ImageSample(np.stack(arrays) if arrays else empty, len(paths), used, corrupt)


def torch_outputs(detector, pixel_values: np.ndarray, temperature: float | None = None) -> Outputs:
    """FP32 PyTorch outputs (the reference) for one batch, calibrated like the graph, ``label_id`` as int64.

    ``temperature`` defaults to the detector's own (from ``aigi.json``), as :func:`export_onnx` does; the decision
    and open-set thresholds of ``label_id`` are the detector's own.
    """
    import torch

    from aigi.training.model import ExportableDetector

    model = ExportableDetector(detector, temperature).eval()
    with torch.no_grad():
        tensors = model(torch.from_numpy(np.ascontiguousarray(pixel_values)))
    return {
        name: _as_output(tensor.cpu().numpy()) for name, tensor in zip((*OUTPUTS, LABEL_OUTPUT), tensors, strict=True)
    }


def _as_output(value: np.ndarray) -> np.ndarray:
    """Float outputs as float32, integer ones (``label_id``) as int64."""
    value = np.asarray(value)
    return value.astype(np.int64) if np.issubdtype(value.dtype, np.integer) else value.astype(np.float32)


def onnx_runner(path: str | Path, threads: int = 0) -> Callable[[np.ndarray], Outputs]:
    """A function running an ONNX file in ONNX Runtime on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    has_label = LABEL_OUTPUT in {output.name for output in session.get_outputs()}
    names = [*OUTPUTS, LABEL_OUTPUT] if has_label else list(OUTPUTS)

    def run(pixel_values: np.ndarray) -> Outputs:
        values = session.run(names, {"pixel_values": pixel_values})
        return {name: _as_output(value) for name, value in zip(names, values, strict=True)}

    return run


def compare(
    artifact: str,
    references: Sequence[Outputs],
    candidates: Sequence[Outputs],
    tolerance: float,
    threshold: float,
    batch_names: Sequence[str] = (),
) -> ParityResult:
    """Max abs/rel difference per output and decision agreement of ``candidates`` against ``references``.

    ``label_id`` agreement counts the batches where both sides have that output (a graph exported before it
    existed has none). The result passes when ``probs`` is within ``tolerance`` and every agreement reaches
    :data:`MIN_AGREEMENT`.
    """
    max_abs = dict.fromkeys(OUTPUTS, 0.0)
    max_rel = dict.fromkeys(OUTPUTS, 0.0)
    argmax_same = fake_same = samples = label_same = label_samples = 0
    for reference, candidate in zip(references, candidates, strict=True):
        for name in OUTPUTS:
            ref, got = reference[name], candidate[name]
            if ref.shape != got.shape:
                raise ValueError(f"{artifact}: output {name} has shape {got.shape}, PyTorch gives {ref.shape}")
            diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
            if diff.size:
                max_abs[name] = max(max_abs[name], float(diff.max()))
                max_rel[name] = max(max_rel[name], float((diff / np.maximum(np.abs(ref), REL_FLOOR)).max()))
        argmax_same += int((reference["probs"].argmax(-1) == candidate["probs"].argmax(-1)).sum())
        fake_same += int(((reference["p_fake"][:, 0] >= threshold) == (candidate["p_fake"][:, 0] >= threshold)).sum())
        samples += len(reference["probs"])
        if LABEL_OUTPUT in reference and LABEL_OUTPUT in candidate:
            label_same += int((reference[LABEL_OUTPUT].reshape(-1) == candidate[LABEL_OUTPUT].reshape(-1)).sum())
            label_samples += len(reference["probs"])
    return ParityResult(
        artifact=artifact,
        tolerance=tolerance,
        max_abs=max_abs,
        max_rel=max_rel,
        argmax_agreement=argmax_same / samples if samples else 1.0,
        is_fake_agreement=fake_same / samples if samples else 1.0,
        samples=samples,
        batches=list(batch_names),
        min_agreement=MIN_AGREEMENT,
        label_agreement=label_same / label_samples if label_samples else None,
    )


def check(
    artifact: str,
    run: Callable[[np.ndarray], Outputs],
    batches: Sequence[ParityBatch],
    references: Sequence[Outputs],
    tolerance: float,
    threshold: float,
) -> ParityResult:
    """Run ``run`` on every batch and compare with the PyTorch ``references`` (see :func:`compare`)."""
    candidates = [run(batch.pixel_values) for batch in batches]
    return compare(artifact, references, candidates, tolerance, threshold, [batch.name for batch in batches])
