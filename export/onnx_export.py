"""Export a detector to ONNX: ``pixel_values`` [B,3,H,W] -> ``logits``, ``probs`` [B,C], ``p_fake`` [B,1], ``label_id``.

``probs`` and ``p_fake`` are calibrated inside the graph: the logits are divided by the checkpoint's temperature
(``aigi.json``'s ``calibration.temperature``, carried by the loaded detector) before the softmax, so every runtime
built from this graph (ONNX Runtime, Triton, TensorRT) serves the probabilities the stored threshold was set on.
``label_id`` (INT64 [B,1]) is the served label, decided in the graph too: the argmax of ``probs``, or ``C``
(``unknown``) by the open-set rule when ``aigi.json`` holds an ``open_set.threshold`` (see
``aigi.training.model.ExportableDetector`` and ``aigi.training.open_set``).

The TorchScript-based exporter (``dynamo=False``) is tried first: it is fast, robust for the CLIP tower and, at
opset 17 or newer, keeps every LayerNorm as one ``LayerNormalization`` node (which TensorRT and the FP16 pass
need to see whole). The ``torch.export``-based exporter is the fallback.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path

from aigi.errors import ExportError

logger = logging.getLogger(__name__)

INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("logits", "probs", "p_fake", "label_id")
DEFAULT_OPSET = 17
MIN_OPSET = 17


def export_onnx(
    detector, path: str | Path, image_size: int, opset: int = DEFAULT_OPSET, temperature: float | None = None
) -> dict:
    """Write ``detector`` (a :class:`aigi.training.model.Detector`) as an FP32 ONNX graph with a dynamic batch axis.

    Args:
        detector: the network, in eval mode, on the CPU.
        path: the ``.onnx`` file to write.
        image_size: side of the square input.
        opset: ONNX opset, at least 17 (LayerNormalization).
        temperature: the softmax temperature baked into ``probs`` and ``p_fake``; ``None`` takes the detector's
            own (``load_checkpoint`` sets it from ``aigi.json``; 1.0 for a fresh network).

    Returns:
        A small summary: ``exporter`` used, ``opset``, ``temperature``, ``threshold`` and ``open_set_threshold``
        (the decision and open-set thresholds baked into ``label_id``), node counts by op type.

    Raises:
        ExportError: both exporters failed, or the graph lacks the contract's tensors.
    """
    import torch

    from aigi.training.model import ExportableDetector

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: LayerNorm needs opset {MIN_OPSET}+ to stay one node")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = ExportableDetector(detector, temperature).eval().cpu()
    example = torch.randn(2, 3, image_size, image_size)
    dynamic_axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    errors: list[str] = []
    exporter = ""
    for dynamo in (False, True):
        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                # the tracer's warnings are about Python branches on static shapes, which is what we want
                warnings.simplefilter("ignore")
                kwargs: dict = {
                    "input_names": [INPUT_NAME],
                    "output_names": list(OUTPUT_NAMES),
                    "opset_version": opset,
                    "dynamo": dynamo,
                }
                if dynamo:
                    kwargs["dynamic_shapes"] = {"pixel_values": {0: torch.export.Dim("batch", min=1, max=4096)}}
                    kwargs["external_data"] = False
                else:
                    kwargs["dynamic_axes"] = dynamic_axes
                    kwargs["do_constant_folding"] = True
                torch.onnx.export(model, (example,), str(path), **kwargs)
            exporter = "torch.export (dynamo)" if dynamo else "torchscript"
            break
        except Exception as exc:  # noqa: BLE001 - fall back to the other exporter, then report both
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {exc.__class__.__name__}: {str(exc)[:300]}")
            logger.warning("ONNX export with dynamo=%s failed: %s", dynamo, errors[-1])
    if not exporter:
        raise ExportError("ONNX export failed with both exporters: " + " | ".join(errors))
    summary = check_graph(path)
    summary.update(
        {
            "exporter": exporter,
            "opset": opset,
            "temperature": model.temperature,
            "threshold": model.threshold,
            "open_set_threshold": model.open_set_threshold,
        }
    )
    return summary


def check_graph(path: str | Path) -> dict:
    """Check an exported graph's tensors against the contract and count its ops.

    Raises:
        ExportError: wrong input/output names, no dynamic batch axis, or a model ONNX cannot validate.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: invalid ONNX graph: {str(exc).splitlines()[0]}") from exc
    inputs = [value.name for value in model.graph.input]
    outputs = [value.name for value in model.graph.output]
    if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
        raise ExportError(
            f"{path}: graph has inputs {inputs} and outputs {outputs}, expected {INPUT_NAME} -> {OUTPUT_NAMES}"
        )
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    if batch_dim.HasField("dim_value"):
        raise ExportError(f"{path}: batch axis is fixed at {batch_dim.dim_value}, expected a dynamic axis")
    ops = Counter(node.op_type for node in model.graph.node)
    if not ops.get("LayerNormalization"):
        logger.warning("%s: no LayerNormalization node; LayerNorm was decomposed (FP16 will be less accurate)", path)
    return {"nodes": sum(ops.values()), "layer_norm_nodes": ops.get("LayerNormalization", 0), "ops": dict(ops)}
