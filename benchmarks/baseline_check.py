"""Is the baseline handicapped by the harness? PyTorch eager FP32 timed again in a fresh process, right after its cell.

Every speed-up in a run is divided by ``torch-eager-fp32``'s images/s, measured inside the harness process, which
by then also holds ONNX Runtime sessions, gRPC/HTTP clients and their threads, and has Triton servers running next
to it. So once per run, right after the baseline's cell at one batch size, the same checkpoint, the same input
batches and the same timing rules (:func:`aigi.benchmarks.timing.measure`) run in a fresh Python process
(``python -m aigi.benchmarks.baseline_check``), and both figures go into ``bench.json`` (``baseline_check``) and
the report, with what the harness process held during its cell: threads, sessions, servers alive and the CPU
time those servers used meanwhile. A ratio well below 1 means the harness slowed its own baseline down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

TIMEOUT_S = 600.0


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU seconds the processes ``pids`` have used so far (those gone count 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def process_threads() -> int:
    """Threads of this process now."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def torch_threads() -> dict[str, int]:
    """PyTorch's intra- and inter-op thread counts in this process."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()}


def fresh_process(
    checkpoint: Path, batches: Sequence[np.ndarray], workdir: Path, timing: dict[str, Any]
) -> dict[str, Any]:
    """Time ``torch-eager-fp32`` on ``batches`` in a new Python process; its JSON result (or ``{"error": ...}``).

    Args:
        timing: ``warmup``, ``iters`` or ``duration_s``, and ``min_iters``, as the harness's cells use them.
    """
    inputs = workdir / "baseline_inputs.npy"
    inputs.parent.mkdir(parents=True, exist_ok=True)
    np.save(inputs, np.stack(batches))
    command = [sys.executable, "-m", "aigi.benchmarks.baseline_check", "--checkpoint", str(checkpoint)]
    command += ["--inputs", str(inputs), "--timing", json.dumps(timing)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"the fresh process took over {TIMEOUT_S:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"the fresh process exited with {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def summarize(batch: int, in_harness: float, fresh: dict[str, Any], harness: dict[str, Any]) -> dict[str, Any]:
    """``bench.json``'s ``baseline_check``: both figures, their ratio, and what each process held."""
    fresh_ips = fresh.get("images_per_s")
    return {
        "runtime": "torch-eager-fp32",
        "batch": batch,
        "in_harness_images_per_s": in_harness,
        "fresh_process_images_per_s": fresh_ips,
        "ratio": in_harness / fresh_ips if fresh_ips else None,
        "fresh_process": fresh,
        "harness": harness,
    }


def _measure(checkpoint: Path, inputs: Path, timing: dict[str, Any]) -> dict[str, Any]:
    """The child's work: load the checkpoint as the harness's TorchRuntime does (on the GPU when there is one, the
    input staged there first) and time it."""
    import torch

    from aigi.benchmarks.timing import InputPool, measure
    from aigi.training.model import ExportableDetector, load_checkpoint

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where TorchRuntime runs it too
    detector, _ = load_checkpoint(checkpoint)
    model = ExportableDetector(detector).eval().to(device)
    batches = [torch.from_numpy(np.ascontiguousarray(batch)).to(device) for batch in np.load(inputs)]

    def run(batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            probs = model(batch)[1]  # as TorchRuntime.run reads it; the copy to the host synchronizes the device
        return probs.float().cpu().numpy()

    cpu_at_open: list[float] = []
    result = measure(
        run,
        InputPool(batches, int(batches[0].shape[0])),
        warmup=int(timing.get("warmup", 3)),
        iters=timing.get("iters"),
        duration_s=None if timing.get("iters") else float(timing.get("duration_s", 3.0)),
        min_iters=int(timing.get("min_iters", 5)),
        on_window=lambda: cpu_at_open.append(time.process_time()),
    )
    cpu_s = time.process_time() - cpu_at_open[0]
    summary = result.cell_timing()
    return {
        "images_per_s": summary.images_per_s,
        "requests": summary.requests,
        "p50_ms": summary.p50_ms,
        "mean_ms": summary.mean_ms,
        "cpu_ms_per_request": cpu_s * 1e3 / max(1, summary.requests),
        "process_threads": process_threads(),
        **torch_threads(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aigi.benchmarks.baseline_check``: the fresh process; prints one JSON line."""
    parser = argparse.ArgumentParser(
        prog="python -m aigi.benchmarks.baseline_check",
        description="Time PyTorch eager FP32 on saved input batches in this fresh process (aigi bench runs it).",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="run directory of the baseline's weights")
    parser.add_argument("--inputs", type=Path, required=True, help=".npy of input batches [K, B, 3, S, S]")
    parser.add_argument("--timing", default="{}", help="JSON: warmup, iters or duration_s, min_iters")
    args = parser.parse_args(argv)
    print(json.dumps(_measure(args.checkpoint, args.inputs, json.loads(args.timing))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
