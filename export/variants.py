"""Derived ONNX variants: FP16 for GPUs, INT8 (dynamic) for CPU serving, and ONNX Runtime graph optimizations.

* FP16: weights and matrix products in FP16; LayerNormalization, Softmax, reductions and the probability
  tail (softmax -> ``probs`` -> ``p_fake``) stay FP32; inputs and outputs stay FP32. This is also the graph a
  strongly typed TensorRT network is built from (TensorRT 11 takes precision from the graph, not a flag).
* INT8: ``quantize_dynamic`` of MatMul/Gemm weights; activations are quantized on the fly per batch.
* Graph optimizations: ONNX Runtime's levels are timed on the served graph and the fastest is recommended.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from aigi.errors import ExportError

logger = logging.getLogger(__name__)

# Ops whose FP16 versions lose accuracy (variance, exponentials, normalizers) stay in FP32.
FP16_BLOCKED_OPS = (
    "LayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceL2",
    "ReduceLogSumExp",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Log",
    "Erf",
    "AveragePool",
)
OPT_LEVELS = ("disable", "basic", "extended", "all")


def _tail_nodes(model, start_output: str) -> list[str]:
    """Names of the nodes downstream of tensor ``start_output`` (the probability tail after ``logits``)."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    seen: dict[str, None] = {}
    frontier = [start_output]
    while frontier:
        tensor = frontier.pop()
        for node in consumers.get(tensor, []):
            if node.name not in seen:
                seen[node.name] = None
                frontier.extend(node.output)
    return list(seen)


def make_fp16(src: str | Path, dst: str | Path) -> dict:
    """Write an FP16 copy of an FP32 ONNX graph with FP32 inputs/outputs and FP32 numerics where it matters.

    Returns:
        A summary: blocked op types, nodes kept FP32 by name, count of inserted Casts.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    for index, node in enumerate(model.graph.node):
        if not node.name:  # the node block list matches by name
            node.name = f"{node.op_type}_{index}"
    tail = _tail_nodes(model, "logits")
    casts_before = sum(node.op_type == "Cast" for node in model.graph.node)
    converter_logger = logging.getLogger("onnxruntime.transformers.float16")
    level = converter_logger.level
    # it logs every initializer shared by FP32 and FP16 nodes at length; it inserts the casts itself
    converter_logger.setLevel(logging.WARNING)
    try:
        converted = convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=list(FP16_BLOCKED_OPS),
            node_block_list=tail,
        )
    except Exception as exc:  # noqa: BLE001 - the converter raises bare exceptions
        raise ExportError(f"FP16 conversion of {src} failed: {exc.__class__.__name__}: {exc}") from exc
    finally:
        converter_logger.setLevel(level)
    onnx.save(converted, str(dst))
    casts = sum(node.op_type == "Cast" for node in converted.graph.node) - casts_before
    return {"blocked_ops": list(FP16_BLOCKED_OPS), "fp32_tail_nodes": tail, "casts_added": casts}


def make_int8(src: str | Path, dst: str | Path) -> dict:
    """Write a dynamically quantized INT8 copy (MatMul/Gemm weights as signed INT8) for CPU serving."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    # quantize_dynamic logs an unconditional advice line on the root logger; it is not actionable here
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(
            str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8, per_channel=False
        )
    except Exception as exc:  # noqa: BLE001 - ORT's quantizer raises bare exceptions
        raise ExportError(f"INT8 quantization of {src} failed: {exc.__class__.__name__}: {exc}") from exc
    finally:
        root.setLevel(level)
    return {"weight_type": "QInt8", "ops": ["MatMul", "Gemm"], "mode": "dynamic"}


def _session(path: str | Path, level: str, threads: int):
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[level]
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_optimization_levels(
    path: str | Path, image_size: int, batch: int = 4, repeats: int = 5, threads: int = 0
) -> dict:
    """Median latency of one batch under each ONNX Runtime graph optimization level (CPU).

    Returns:
        ``{"batch", "median_ms": {level: ms}, "best": level, "speedup_vs_disable": x}``. The numbers are a
        quick indication on the export machine, not a benchmark.
    """
    rng = np.random.default_rng(0)
    feed = {"pixel_values": rng.standard_normal((batch, 3, image_size, image_size), dtype=np.float32)}
    medians: dict[str, float] = {}
    for level in OPT_LEVELS:
        session = _session(path, level, threads)
        session.run(None, feed)  # warm-up: first run allocates
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feed)
            samples.append(time.perf_counter() - start)
        medians[level] = float(np.median(samples) * 1e3)
    best = min(medians, key=medians.__getitem__)
    return {
        "batch": batch,
        "median_ms": medians,
        "best": best,
        "speedup_vs_disable": medians["disable"] / medians[best] if medians[best] else 1.0,
    }
