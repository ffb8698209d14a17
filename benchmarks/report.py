"""Write a benchmark's results: ``bench.json`` (everything), ``BENCH.md`` (the tables) and the PNG plots."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aigi.checkpoint import write_json_atomic

logger = logging.getLogger(__name__)

JSON_NAME = "bench.json"
MARKDOWN_NAME = "BENCH.md"


def _num(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _pct(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _environment_lines(env: dict) -> list[str]:
    gpu = env.get("gpu")
    libs = ", ".join(f"{name} {version}" for name, version in env.get("libraries", {}).items())
    lines = [
        f"- CPU: {env.get('cpu')} ({env.get('cpu_cores_usable')} usable of {env.get('cpu_cores_logical')} cores), "
        f"{env.get('memory_gb')} GiB RAM; torch threads {env.get('torch_threads')}",
        "- GPU: "
        + (
            f"{gpu['name']} ({gpu['memory_gb']} GiB, sm {gpu['compute_capability']}), driver {gpu.get('driver')}, "
            f"CUDA {gpu.get('cuda')}"
            if gpu
            else "none"
        ),
        f"- Libraries: {libs}",
        f"- Python {env.get('python')} on {env.get('platform')}; {env.get('timestamp')}",
    ]
    return lines


def _cell_rows(cells: Sequence[dict], agreement: dict[str, dict], on_gpu: bool) -> list[list[str]]:
    rows = []
    for cell in cells:
        agree = agreement.get(cell["runtime"], {})
        row = [
            cell["runtime"],
            str(cell["batch"]),
            str(cell["concurrency"]),
            _num(cell.get("images_per_s")),
            _num(cell.get("p50_ms"), 2),
            _num(cell.get("p90_ms"), 2),
            _num(cell.get("p99_ms"), 2),
            _num(cell.get("peak_mem_mb"), 0) + (f" ({cell['mem_kind']})" if cell.get("mem_kind") else ""),
            _num(cell.get("speedup"), 2, "x"),
            _pct(agree.get("top1_agreement")),
            _num(agree.get("max_abs_dp_fake"), 4) if agree.get("max_abs_dp_fake") is not None else "–",
        ]
        if on_gpu:
            row += [_num(cell.get("achieved_tflops"), 1), _pct(cell.get("peak_fraction"))]
        rows.append(row)
    return rows


def render_markdown(results: dict[str, Any]) -> str:
    """``BENCH.md``: setup, the side-by-side table, Triton's latency split, agreement, targets, skips."""
    env = results["environment"]
    config = results["config"]
    model = results["model"]
    on_gpu = bool(env.get("gpu"))
    cells = [cell for cell in results["cells"] if cell.get("status") == "ok"]
    agreement = results.get("agreement", {})
    lines = [f"# aigi bench: {model['name']}", ""]
    lines += _environment_lines(env)
    lines += [
        f"- Architecture: {model['name']} ({model['weights']}), {model['gflops']:.2f} GFLOPs/image "
        f"({model['gflops_source']}), input {model['image_size']} px",
        f"- Timing: warm-up {config['warmup']} calls per stream excluded; "
        + (
            f"{config['iters']} requests per cell"
            if config.get("iters")
            else f"≥ {config['duration_s']} s and ≥ {config['min_iters']} requests per cell"
        )
        + f"; inputs rotated over {config['pool_batches']} distinct batches; cells interleaved by batch size; "
        "speed-up = images/s ÷ torch-eager-fp32 images/s at the same batch size in this run.",
        "- Peak memory: `rss` = peak resident memory of this process during the cell (every in-process runtime "
        "of the run is loaded in it); `rss-server` = peak resident memory of the Triton server's process tree "
        "(every served model); `gpu` = device memory attributable to the runtime (what its set-up took plus its "
        "peak growth during the cell).",
    ]
    peak = results.get("gpu_peak")
    if peak:
        lines.append(
            f"- GPU matmul peak measured in this run: {peak['tflops']:.0f} TFLOP/s ({peak['dtype']}, {peak['size']}³)"
        )
    lines += ["", "## Results", ""]
    headers = [
        "runtime",
        "batch",
        "conc",
        "images/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "peak MiB",
        "speed-up",
        "top-1 agree",
        "max abs Δp_fake",
    ]
    if on_gpu:
        headers += ["TFLOP/s", "of peak"]
    lines += _table(headers, _cell_rows(cells, agreement, on_gpu)) if cells else ["(no cell ran)"]
    split_rows = [
        [
            cell["runtime"],
            str(cell["batch"]),
            str(cell["concurrency"]),
            _num(cell.get("mean_ms"), 2),
            _num(cell["triton"].get("network_marshal_ms"), 2),
            _num(cell["triton"].get("queue_ms"), 2),
            _num(cell["triton"].get("compute_ms"), 2),
            _num(cell["triton"].get("avg_server_batch"), 1),
        ]
        for cell in cells
        if cell.get("triton")
    ]
    if split_rows:
        lines += ["", "## Triton's view (Prometheus counters, per client request)", ""]
        lines += _table(
            [
                "runtime",
                "batch",
                "conc",
                "client mean ms",
                "network+marshal ms",
                "queue ms",
                "compute ms",
                "server batch",
            ],
            split_rows,
        )
    if agreement:
        lines += ["", "## Agreement with PyTorch eager FP32", ""]
        first = next(iter(agreement.values()))
        lines.append(
            f"On {first.get('images')} benchmark images ({first.get('source')}), weights: {first.get('weights')}, "
            f"architecture {first.get('architecture')}"
            + (" (the checkpoint's, measured separately from the speed cells)." if first.get("separate") else ".")
        )
        lines.append("")
        lines += _table(
            ["runtime", "images", "top-1 agreement", "decision agreement", "max abs Δp_fake", "mean abs Δp_fake"],
            [
                [
                    name,
                    _num(entry.get("images")),
                    _pct(entry.get("top1_agreement"), 2),
                    _pct(entry.get("decision_agreement"), 2),
                    _num(entry.get("max_abs_dp_fake"), 5),
                    _num(entry.get("mean_abs_dp_fake"), 5),
                ]
                if "error" not in entry
                else [name, "–", "–", "–", "–", f"error: {entry['error']}"]
                for name, entry in agreement.items()
            ],
        )
    if results.get("perf_analyzer"):
        lines += ["", "## perf_analyzer", ""]
        pa = results["perf_analyzer"]
        if pa.get("skipped"):
            lines.append(f"Skipped: {pa['skipped']}")
        else:
            lines += _table(
                ["model", "batch", "conc", "images/s", "p50 ms", "p90 ms", "p99 ms", "queue ms", "compute ms"],
                [
                    [
                        row["model"],
                        str(row["batch"]),
                        str(row["concurrency"]),
                        _num(row.get("images_per_s")),
                        _num(row.get("p50_ms"), 2),
                        _num(row.get("p90_ms"), 2),
                        _num(row.get("p99_ms"), 2),
                        _num(row.get("queue_ms"), 2),
                        _num(row.get("compute_ms"), 2),
                    ]
                    for row in pa.get("rows", [])
                ],
            )
            for error in pa.get("errors", []):
                lines.append(f"- error: {error}")
    lines += ["", "## Targets", ""]
    lines += _table(
        ["target", "needed", "measured", "verdict"],
        [
            [
                verdict["description"],
                f"≥ {verdict['min_ratio']}x"
                + (
                    f", agreement ≥ {_pct(verdict['min_decision_agreement'], 0)}"
                    if verdict.get("min_decision_agreement")
                    else ""
                ),
                (
                    f"{verdict['ratio']:.2f}x ({verdict['runtime']} {verdict['images_per_s']:.1f} vs "
                    f"{verdict['reference']} {verdict['reference_images_per_s']:.1f} images/s)"
                    + (
                        f", agreement {_pct(verdict.get('decision_agreement'), 2)}"
                        if verdict.get("min_decision_agreement")
                        else ""
                    )
                )
                if verdict.get("ratio") is not None
                else verdict.get("reason", "not measured"),
                {True: "**met**", False: "**not met**", None: "not measured"}[verdict["met"]],
            ]
            for verdict in results.get("targets", [])
        ],
    )
    skipped = [(name, entry) for name, entry in results.get("runtimes", {}).items() if entry["status"] != "ok"]
    failed = [cell for cell in results["cells"] if cell.get("status") != "ok"]
    if skipped or failed or results.get("skipped_cells"):
        lines += ["", "## Skipped or failed", ""]
        lines += [f"- `{name}`: {entry['status']}: {entry.get('reason')}" for name, entry in skipped]
        for cell in failed:
            lines.append(
                f"- `{cell['runtime']}` batch {cell['batch']} conc {cell['concurrency']}: failed: {cell.get('error')}"
            )
        for cell in results.get("skipped_cells", []):
            lines.append(f"- `{cell['runtime']}` batch {cell['batch']} conc {cell['concurrency']}: {cell['reason']}")
    lines += ["", f"Plots: {', '.join(results.get('plots', [])) or 'none'}. Raw numbers: {JSON_NAME}.", ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, results: dict[str, Any]) -> dict[str, Path]:
    """Write ``bench.json``, the plots and ``BENCH.md`` into ``out_dir``; return their paths."""
    from aigi.benchmarks.plots import plot_latency_vs_concurrency, plot_throughput_vs_batch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    cells = [cell for cell in results["cells"] if cell.get("status") == "ok"]
    title = results["model"]["name"]
    for key, plot in (("throughput", plot_throughput_vs_batch), ("latency", plot_latency_vs_concurrency)):
        path = plot(cells, out, title)
        if path is not None:
            paths[key] = path
    results["plots"] = [path.name for path in paths.values()]
    write_json_atomic(out / JSON_NAME, json.loads(json.dumps(results, default=str)))
    paths["json"] = out / JSON_NAME
    (out / MARKDOWN_NAME).write_text(render_markdown(results))
    paths["markdown"] = out / MARKDOWN_NAME
    return paths
