"""Write a benchmark's results: ``bench.json`` (everything), ``BENCH.md`` (the tables) and the PNG plots."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aigi.benchmarks import report_server
from aigi.benchmarks.cells import BenchCell, cells_from_json
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


def _setup_lines(results: dict[str, Any]) -> list[str]:
    """The title and what ran where: machine, architecture, timing rules, memory kinds, GPU peak."""
    config = results["config"]
    model = results["model"]
    lines = [f"# aigi bench: {model['name']}", ""]
    lines += _environment_lines(results["environment"])
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
    return lines + report_server.server_lines(results) + report_server.baseline_lines(results)


def _cell_rows(cells: Sequence[BenchCell], agreement: dict[str, dict], on_gpu: bool) -> list[list[str]]:
    rows = []
    for cell in cells:
        agree = agreement.get(cell.runtime, {})
        timing = cell.timing
        row = [
            cell.runtime,
            str(cell.batch),
            str(cell.concurrency),
            _num(cell.images_per_s),
            _num(timing.p50_ms if timing else None, 2),
            _num(timing.p90_ms if timing else None, 2),
            _num(timing.p99_ms if timing else None, 2),
            _num(cell.peak_mem_mb, 0) + (f" ({cell.mem_kind})" if cell.mem_kind else ""),
            _num(cell.speedup, 2, "x"),
            _pct(agree.get("top1_agreement")),
            _num(agree.get("max_abs_dp_fake"), 4) if agree.get("max_abs_dp_fake") is not None else "–",
        ]
        if on_gpu:
            row += [_num(cell.achieved_tflops, 1), _pct(cell.peak_fraction)]
        rows.append(row)
    return rows


def _results_section(cells: Sequence[BenchCell], agreement: dict[str, dict], on_gpu: bool) -> list[str]:
    """The side-by-side table of every cell that ran."""
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
    table = _table(headers, _cell_rows(cells, agreement, on_gpu)) if cells else ["(no cell ran)"]
    return ["", "## Results", "", *table]


def _triton_section(cells: Sequence[BenchCell]) -> list[str]:
    """Triton's latency split per cell (from its Prometheus counters); nothing when no cell has one."""
    rows = [
        [
            cell.runtime,
            str(cell.batch),
            str(cell.concurrency),
            _num(cell.timing.mean_ms if cell.timing else None, 2),
            report_server.split_value(cell.triton, "network_marshal_ms"),
            report_server.split_value(cell.triton, "queue_ms"),
            report_server.split_value(cell.triton, "compute_ms"),
            _num(cell.triton.avg_server_batch, 1),
        ]
        for cell in cells
        if cell.triton is not None and cell.triton.requests is not None
    ]
    if not rows:
        return report_server.unavailable_lines(cells)
    headers = [
        "runtime",
        "batch",
        "conc",
        "client mean ms",
        "network+marshal ms",
        "queue ms",
        "compute ms",
        "server batch",
    ]
    title = ["", "## Triton's view (Prometheus counters, per client request)", ""]
    return title + _table(headers, rows) + report_server.clamp_notes(cells) + report_server.unavailable_lines(cells)


def _steps_section(cells: Sequence[BenchCell]) -> list[str]:
    """Each model's queue and compute time per request, for cells that went through an ensemble (several models)."""
    rows = [
        [
            cell.runtime,
            str(cell.batch),
            str(cell.concurrency),
            model,
            _num(split.get("queue_ms"), 2),
            _num(split.get("compute_ms"), 2),
            _num(split.get("avg_batch"), 1),
        ]
        for cell in cells
        if cell.triton is not None and len(cell.triton.per_model) > 1
        for model, split in sorted(cell.triton.per_model.items())
    ]
    if not rows:
        return []
    headers = ["runtime", "batch", "conc", "model (ensemble step)", "queue ms", "compute ms", "server batch"]
    note = "Per request of each model, from its own counters: the ensemble's total, then its steps."
    return ["", "## Ensemble steps (where the server's time goes)", "", note, "", *_table(headers, rows)]


def _agreement_section(agreement: dict[str, dict], note: str | None = None) -> list[str]:
    """Agreement of every runtime with PyTorch eager FP32, and on which images, weights and architecture."""
    if not agreement:
        return ["", "## Agreement with PyTorch eager FP32", "", f"Agreement {note}."] if note else []
    first = next(iter(agreement.values()))
    intro = (
        f"On {first.get('images')} benchmark images ({first.get('source')}), weights: {first.get('weights')}, "
        f"architecture {first.get('architecture')}"
        + (" (the checkpoint's, measured separately from the speed cells)." if first.get("separate") else ".")
    )
    rows = [
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
    ]
    headers = ["runtime", "images", "top-1 agreement", "decision agreement", "max abs Δp_fake", "mean abs Δp_fake"]
    return ["", "## Agreement with PyTorch eager FP32", "", intro, "", *_table(headers, rows)]


def _perf_analyzer_section(pa: dict[str, Any] | None) -> list[str]:
    """perf_analyzer's rows, or why it was skipped; nothing when it was not asked for."""
    if not pa:
        return []
    lines = ["", "## perf_analyzer", ""]
    if pa.get("skipped"):
        return [*lines, f"Skipped: {pa['skipped']}"]
    rows = [
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
    ]
    headers = ["model", "batch", "conc", "images/s", "p50 ms", "p90 ms", "p99 ms", "queue ms", "compute ms"]
    lines += _table(headers, rows)
    lines += [f"- error: {error}" for error in pa.get("errors", [])]
    return lines + report_server.comparison_lines(pa)


def agreement_site(results: dict[str, Any], runtime: str) -> str | None:
    """Where ``runtime``'s agreement was measured when that is not the speed cells' model, else ``None``.

    ``agreement[runtime]`` records the architecture and weights agreement ran on (``separate`` when it was built
    again on the checkpoint's architecture); ``model`` records those of the speed cells.
    """
    entry = results.get("agreement", {}).get(runtime) or {}
    if "architecture" not in entry:
        return None
    if not entry.get("separate") and entry.get("weights") == results["model"].get("weights"):
        return None
    return f"{entry['architecture']} with {entry.get('weights')} weights"


def _target_row(verdict: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """One target: what it needs, what was measured (and on which model, when agreement ran elsewhere)."""
    wants_agreement = bool(verdict.get("min_decision_agreement"))
    needed = f"≥ {verdict['min_ratio']}x" + (
        f", agreement ≥ {_pct(verdict['min_decision_agreement'], 0)}" if wants_agreement else ""
    )
    if verdict.get("ratio") is None:
        measured = verdict.get("reason", "not measured")
    else:
        site = agreement_site(results, verdict["runtime"]) if wants_agreement else None
        model = results["model"]
        measured = (
            f"{verdict['ratio']:.2f}x ({verdict['runtime']} {verdict['images_per_s']:.1f} vs "
            f"{verdict['reference']} {verdict['reference_images_per_s']:.1f} images/s"
            + (f" on {model['name']} with {model['weights']} weights" if site else "")
            + ")"
        )
        if wants_agreement:
            measured += f", agreement {_pct(verdict.get('decision_agreement'), 2)}"
            measured += f" measured on {site} (not the speed cells' model)" if site else ""
    verdict_text = {True: "**met**", False: "**not met**", None: "not measured"}[verdict["met"]]
    return [verdict["description"], needed, measured, verdict_text]


def _targets_section(results: dict[str, Any]) -> list[str]:
    rows = [_target_row(verdict, results) for verdict in results.get("targets", [])]
    return ["", "## Targets", "", *_table(["target", "needed", "measured", "verdict"], rows)]


def _skipped_section(results: dict[str, Any], cells: Sequence[BenchCell]) -> list[str]:
    """Runtimes that did not run, cells that failed and cells left out; nothing when everything ran."""
    skipped = [(name, entry) for name, entry in results.get("runtimes", {}).items() if entry["status"] != "ok"]
    failed = [cell for cell in cells if not cell.ok]
    left_out = results.get("skipped_cells", [])
    if not (skipped or failed or left_out):
        return []
    lines = ["", "## Skipped or failed", ""]
    lines += [f"- `{name}`: {entry['status']}: {entry.get('reason')}" for name, entry in skipped]
    lines += [f"- `{cell.runtime}` batch {cell.batch} conc {cell.concurrency}: failed: {cell.error}" for cell in failed]
    lines += [
        f"- `{cell['runtime']}` batch {cell['batch']} conc {cell['concurrency']}: {cell['reason']}" for cell in left_out
    ]
    return lines


def _typed_cells(results: dict[str, Any]) -> list[BenchCell]:
    """The run's cells, typed (a results dict read back from ``bench.json`` holds plain dicts)."""
    return [cell if isinstance(cell, BenchCell) else BenchCell.from_dict(cell) for cell in results["cells"]]


def render_markdown(results: dict[str, Any]) -> str:
    """``BENCH.md``: setup, the side-by-side table, Triton's latency split, agreement, targets, skips."""
    all_cells = _typed_cells(results)
    cells = [cell for cell in all_cells if cell.ok]
    agreement = results.get("agreement", {})
    lines = _setup_lines(results)
    lines += _results_section(cells, agreement, on_gpu=bool(results["environment"].get("gpu")))
    lines += _triton_section([cell for cell in all_cells if cell.ok])
    lines += _steps_section(cells)
    lines += report_server.percentiles_section(cells)
    lines += _agreement_section(agreement, results.get("agreement_note"))
    lines += _perf_analyzer_section(results.get("perf_analyzer"))
    lines += _targets_section(results)
    lines += _skipped_section(results, all_cells)
    lines += report_server.plots_section(results, JSON_NAME)
    return "\n".join(lines)


def to_json(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` as ``bench.json`` holds it: cells as plain dicts, anything else JSON cannot hold as text."""
    plain = {**results, "cells": [cell.to_dict() for cell in _typed_cells(results)]}
    return json.loads(json.dumps(plain, default=str))


def from_json(data: dict[str, Any]) -> dict[str, Any]:
    """A ``bench.json``'s content as the results dict the renderer takes (cells typed)."""
    return {**data, "cells": cells_from_json(data["cells"])}


def write_report(out_dir: str | Path, results: dict[str, Any]) -> dict[str, Path]:
    """Write ``bench.json``, the plots and ``BENCH.md`` into ``out_dir``; return their paths."""
    from aigi.benchmarks import latency_plots
    from aigi.benchmarks.plots import plot_latency_vs_concurrency, plot_throughput_vs_batch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    cells = [cell for cell in _typed_cells(results) if cell.ok]
    title = results["model"]["name"]
    plots = {
        "throughput": plot_throughput_vs_batch,
        "latency": plot_latency_vs_concurrency,
        "cdf": latency_plots.plot_latency_cdf,
        "split": latency_plots.plot_latency_split,
        "throughput_latency": latency_plots.plot_throughput_vs_latency,
    }
    for key, plot in plots.items():
        path = plot(cells, out, title)
        if path is not None:
            paths[key] = path
    results["plots"] = [path.name for path in paths.values()]
    write_json_atomic(out / JSON_NAME, to_json(results))
    paths["json"] = out / JSON_NAME
    (out / MARKDOWN_NAME).write_text(render_markdown(results))
    paths["markdown"] = out / MARKDOWN_NAME
    return paths


def rerender(bench_json: str | Path, markdown: str | Path | None = None, retarget: bool = False) -> Path:
    """Write ``BENCH.md`` again from an existing ``bench.json`` (next to it unless ``markdown`` names a file).

    Only the Markdown is rendered: ``bench.json`` and the plots are left as they are, unless ``retarget`` asks to
    judge the run's cells against today's targets (:data:`aigi.benchmarks.targets.TARGETS`), which then are
    written into ``bench.json`` too.
    """
    from aigi.benchmarks.targets import evaluate_targets

    source = Path(bench_json)
    target = Path(markdown) if markdown is not None else source.with_name(MARKDOWN_NAME)
    results = from_json(json.loads(source.read_text()))
    if retarget:
        results["targets"] = evaluate_targets(results["cells"], results.get("agreement", {}))
        source.write_text(json.dumps(to_json(results), indent=2) + "\n")
    target.write_text(render_markdown(results))
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aigi.benchmarks.report --from bench.json [--out BENCH.md]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m aigi.benchmarks.report",
        description="Render BENCH.md again from an existing bench.json with this version's renderer.",
    )
    parser.add_argument("--from", dest="source", type=Path, required=True, help="the run's bench.json")
    parser.add_argument("--out", type=Path, help=f"Markdown file to write (default: {MARKDOWN_NAME} beside it)")
    parser.add_argument(
        "--retarget", action="store_true", help="judge the cells against today's targets (rewrites bench.json's)"
    )
    args = parser.parse_args(argv)
    print(f"wrote {rerender(args.source, args.out, args.retarget)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
