"""SUITE.md and suite.json of benchmarks/gpu_suite.sh: per model, each runtime's best cell with its ratio to
PyTorch eager FP32 at the same batch and its fraction of the measured bf16 matmul peak, what was skipped and why,
and the GPU targets (ViT-L/14 at batch 128) as met / not met.

``python -m aigi.benchmarks.suite_report RESULTS OUT STATUS_JSON INSTALL SERVER WALL_S`` (the suite calls it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TARGET_MODEL = "vit-l-14"
TARGET_BATCH = 128
SPEEDUP_TARGET = 6.0  # best runtime's images/s over eager FP32's, same batch
PEAK_TARGET = 0.60  # of the bf16 matmul peak measured in the run
SERVED_TARGET = 0.90  # Triton-served images/s over the same runtime in-process
BASELINE = "torch-eager-fp32"


def _num(value: float | None, fmt: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{fmt}}{suffix}"


def best_cells(cells: list[dict], batch: int | None = None) -> dict[str, dict]:
    """Each runtime's ok cell with the most images/s (at ``batch`` only, when given)."""
    best: dict[str, dict] = {}
    for cell in cells:
        if cell.get("status") != "ok" or (batch is not None and cell["batch"] != batch):
            continue
        if cell["images_per_s"] > best.get(cell["runtime"], {}).get("images_per_s", 0.0):
            best[cell["runtime"]] = cell
    return best


def in_process_twin(name: str, runtimes: dict[str, Any]) -> str | None:
    """The in-process runtime a Triton runtime serves: its ``info['in_process']`` when it names one, else the torch
    runtime of the same precision (autocast before compile; eager for FP32) that ran in this bench."""
    info = (runtimes.get(name) or {}).get("info") or {}
    if info.get("in_process"):
        return str(info["in_process"])
    precision = name.rsplit("-", 1)[-1]
    candidates = [BASELINE] if precision == "fp32" else [f"torch-autocast-{precision}", f"torch-compile-{precision}"]
    return next((c for c in candidates if (runtimes.get(c) or {}).get("status") == "ok"), candidates[0])


def gpu_targets(data: dict) -> list[dict]:
    """The GPU targets judged on one model's ``bench.json`` (cells at :data:`TARGET_BATCH`)."""
    at = best_cells(data["cells"], TARGET_BATCH)
    top = max(at.values(), key=lambda c: c["images_per_s"], default=None)
    if top is None:
        speed = _row(f"best runtime >= {SPEEDUP_TARGET:g}x eager FP32", None, SPEEDUP_TARGET, "no cell at this batch")
        peak = _row(f"best runtime >= {PEAK_TARGET:.0%} of the bf16 matmul peak", None, PEAK_TARGET, "no cell")
    else:
        speedup, fraction = top.get("speedup"), top.get("peak_fraction")
        percent = None if fraction is None else 100 * fraction
        speed = _row(
            f"best runtime >= {SPEEDUP_TARGET:g}x eager FP32",
            speedup,
            SPEEDUP_TARGET,
            f"{top['runtime']}: {_num(speedup, '.2f', 'x')}",
        )
        peak = _row(
            f"best runtime >= {PEAK_TARGET:.0%} of the bf16 matmul peak",
            fraction,
            PEAK_TARGET,
            f"{top['runtime']}: {_num(percent, '.1f', '%')}",
        )
    ratios: list[tuple[float, str]] = []
    for name in (n for n in at if n.startswith("triton-torch-")):
        twin = in_process_twin(name, data["runtimes"])
        if twin in at:
            ratio = at[name]["images_per_s"] / at[twin]["images_per_s"]
            ratios.append((ratio, f"{name} / {twin}: {ratio:.2f}"))
    best = max(ratios, default=(None, "no triton-torch-* cell with its in-process twin at this batch"))
    served = _row(
        f"Triton-served >= {SERVED_TARGET:.0%} of the same runtime in-process", best[0], SERVED_TARGET, best[1]
    )
    return [speed, peak, served]


def _row(target: str, value: float | None, threshold: float, detail: str) -> dict:
    met = None if value is None else bool(value >= threshold)
    return {"target": target, "value": value, "threshold": threshold, "met": met, "detail": detail}


def model_section(model: str, entry: dict, results: Path) -> tuple[list[str], dict]:
    """One model's lines of SUITE.md and its part of suite.json."""
    lines = [f"## {model}: {entry['status']} ({entry['seconds']} s of {entry['budget_s']} s)", ""]
    bench = results / model / "bench.json"
    if not bench.is_file():
        return [*lines, "No results written.", ""], {"status": entry}
    data = json.loads(bench.read_text())
    best = best_cells(data["cells"])
    lines += [
        "| runtime | best images/s | batch | conc | p50 ms | x eager FP32 (same batch) | of bf16 matmul peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, cell in best.items():
        frac = cell.get("peak_fraction")
        lines.append(
            f"| {name} | {cell['images_per_s']:.1f} | {cell['batch']} | {cell['concurrency']} | {cell['p50_ms']:.2f}"
            f" | {_num(cell.get('speedup'), '.2f', 'x')} | {_num(None if frac is None else 100 * frac, '.1f', '%')} |"
        )
    skipped = {n: e.get("reason") for n, e in data["runtimes"].items() if e.get("status") != "ok"}
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"`{n}` ({r})" for n, r in skipped.items())]
    if data.get("skipped_cells"):
        lines.append(f"{len(data['skipped_cells'])} cells left out when the time budget ran out.")
    part: dict[str, Any] = {"status": entry, "best": best, "skipped": skipped, "gpu_peak": data.get("gpu_peak")}
    if model == TARGET_MODEL:
        part["targets"] = gpu_targets(data)
        lines += ["", f"Targets (batch {TARGET_BATCH}):", "", "| target | result | verdict |", "|---|---|---|"]
        verdict = {True: "met", False: "NOT met", None: "not measured"}
        lines += [f"| {t['target']} | {t['detail']} | {verdict[t['met']]} |" for t in part["targets"]]
    return [*lines, "", f"Full table: {model}/BENCH.md", ""], part


def environment_line(results: Path, models: list[str]) -> str:
    """The GPU, its measured peak and the library versions, from the first model that wrote a bench.json."""
    for model in models:
        bench = results / model / "bench.json"
        if bench.is_file():
            data = json.loads(bench.read_text())
            env, peak = data["environment"], data.get("gpu_peak") or {}
            gpu, libs = env.get("gpu") or {}, env.get("libraries") or {}
            return (
                f"GPU: {gpu.get('name')} (driver {gpu.get('driver')}, CUDA {gpu.get('cuda')}); measured bf16 matmul"
                f" peak {_num(peak.get('tflops'), '.0f', ' TFLOP/s')}; torch {libs.get('torch')}, onnxruntime"
                f" {libs.get('onnxruntime')}, numpy {libs.get('numpy')}."
            )
    return "No model wrote results."


def write_suite(results: Path, out: Path, status: dict, install: str, server: str, wall_s: int) -> str:
    """Write ``out/SUITE.md`` and ``out/suite.json``; returns the markdown."""
    lines = ["# aigi GPU suite", "", environment_line(results, list(status)), ""]
    lines += [f"Installed: {install}. Triton server: {server}. Total wall time: {wall_s} s.", ""]
    suite: dict[str, Any] = {"install": install, "server": server, "wall_s": wall_s, "models": {}}
    for model, entry in status.items():
        section, part = model_section(model, entry, results)
        lines += section
        suite["models"][model] = part
    text = "\n".join(lines) + "\n"
    (out / "SUITE.md").write_text(text)
    (out / "suite.json").write_text(json.dumps(suite, indent=2, default=str) + "\n")
    return text


if __name__ == "__main__":
    results_dir, out_dir, status_json, install_text, server_text, wall = sys.argv[1:7]
    print(write_suite(Path(results_dir), Path(out_dir), json.loads(status_json), install_text, server_text, int(wall)))
