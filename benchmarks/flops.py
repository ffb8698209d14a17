"""FLOPs per image of a CLIP ViT, and the GPU's matrix-multiply peak measured in the same run.

FLOPs count 2 per multiply-accumulate, as the published figures do (ViT-B/32 at 224 px: 8.8 GFLOPs).
The analytic count covers patch embedding (plus the residual stem's second convolution), every encoder
block's projections, attention products and MLP; LayerNorms, softmax and the head are negligible.
"""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger(__name__)


def vit_gflops(vision_config: dict[str, Any], residual_stem: bool = False) -> float:
    """Forward GFLOPs per image of a CLIP vision tower described by ``CLIPVisionConfig`` keys.

    Args:
        vision_config: ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``, ``patch_size``, ``image_size``.
        residual_stem: the checkpoint adds a second patch-embedding convolution on the high-pass residual.
    """
    width = int(vision_config["hidden_size"])
    mlp = int(vision_config["intermediate_size"])
    layers = int(vision_config["num_hidden_layers"])
    patch = int(vision_config["patch_size"])
    size = int(vision_config["image_size"])
    channels = int(vision_config.get("num_channels", 3))
    patches = (size // patch) ** 2
    tokens = patches + 1
    embed_macs = patches * channels * patch * patch * width * (2 if residual_stem else 1)
    block_macs = tokens * (4 * width * width + 2 * width * mlp) + 2 * tokens * tokens * width
    return 2.0 * (embed_macs + layers * block_macs) / 1e9


def gflops_per_image(preset_gflops: float | None, vision_config: dict[str, Any], residual_stem: bool) -> dict:
    """The published figure when the preset has one, else the analytic count; both are recorded."""
    analytic = vit_gflops(vision_config, residual_stem)
    if preset_gflops:
        return {"gflops": float(preset_gflops), "source": "preset", "analytic_gflops": analytic}
    return {"gflops": analytic, "source": "analytic", "analytic_gflops": analytic}


def measure_matmul_peak(size: int = 8192, iters: int = 30, dtype_name: str = "bfloat16") -> dict[str, Any] | None:
    """Achieved TFLOP/s of a large square matrix product on the first CUDA GPU; ``None`` without a GPU.

    The best of several timed bursts, each synchronized with CUDA events, after a warm-up, so the figure
    is the sustained dense peak this GPU reaches today (clocks, power cap), not the datasheet's.
    """
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    for _ in range(5):
        torch.matmul(a, b)
    torch.cuda.synchronize()
    best = 0.0
    started = time.perf_counter()
    for _ in range(5):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(iters):
            torch.matmul(a, b)
        end.record()
        end.synchronize()
        seconds = begin.elapsed_time(end) / 1e3
        best = max(best, 2.0 * size**3 * iters / seconds / 1e12)
    del a, b
    torch.cuda.empty_cache()
    logger.info("measured %s matmul peak: %.0f TFLOP/s", dtype_name, best)
    return {
        "tflops": best,
        "dtype": dtype_name,
        "size": size,
        "iters": iters,
        "seconds": time.perf_counter() - started,
    }
