"""``BENCH.md``'s sections on the server side: the server benchmarked with ``--url``, Triton's latency split and
percentiles per model, perf_analyzer's figures beside aigi's, the baseline check, and the embedded plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from aigi.benchmarks.cells import BenchCell
from aigi.benchmarks.perf_compare import TOLERANCE


def num(value: Any, digits: int = 1, suffix: str = "") -> str:
    """A number for a table: ``–`` for none or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value}{suffix}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def server_lines(results: dict[str, Any]) -> list[str]:
    """What ``--url`` benchmarked: the server's endpoints and entry models (nothing without ``--url``)."""
    server = results.get("server")
    if not server:
        return []
    endpoints = ", ".join(f"{key} {value}" for key, value in server["endpoints"].items())
    models = "; ".join(
        f"`{m['entry_model']}` → `{m['network_model']}` ({m['precision']}, max batch {m['max_batch']})"
        for m in server["models"]
    )
    return [
        f"- Server: started elsewhere ({endpoints}); models {models}. Only the Triton runtimes ran; memory is "
        "not measured (the server's processes are not on this machine, or not ours)."
    ]


def baseline_lines(results: dict[str, Any]) -> list[str]:
    """The baseline check: the baseline's images/s in this process and in a fresh one, and what this one held."""
    check = results.get("baseline_check")
    if not check:
        return []
    fresh = check.get("fresh_process") or {}
    if "error" in fresh:
        return [f"- Baseline check ({check['runtime']}, batch {check['batch']}): not measured: {fresh['error']}"]
    harness = check.get("harness") or {}
    held = ", ".join(harness.get("in_process_runtimes_alive") or []) or "nothing else"
    cpu = harness.get("server_cpu_s_during_cell")
    return [
        f"- Baseline check ({check['runtime']}, batch {check['batch']}): {num(check['in_harness_images_per_s'], 2)} "
        f"images/s in this process, {num(check['fresh_process_images_per_s'], 2)} in a fresh process right after "
        f"({num(check.get('ratio'), 2)}x; torch threads {harness.get('torch_threads')} here, "
        f"{fresh.get('torch_threads')} there). During the cell this process held {held} and "
        f"{harness.get('process_threads')} threads; {harness.get('servers_alive')} Triton server(s) were up and "
        f"used {num(cpu, 2)} CPU-s in the {num(harness.get('cell_wall_s'), 1)} s window; CPU per request "
        f"{num(harness.get('cpu_ms_per_request'), 1)} ms here, {num(fresh.get('cpu_ms_per_request'), 1)} ms there."
    ]


SPLIT_COMPONENTS = ("server_request_ms", "queue_ms", "compute_ms", "network_marshal_ms")


def below_zero(split: Any) -> dict[str, float]:
    """The components that measured below zero: clamped when measured, or still negative in an older bench.json."""
    raw = {key: getattr(split, key) for key in SPLIT_COMPONENTS if (getattr(split, key) or 0.0) < 0}
    return {**split.clamped, **raw}


def split_value(split: Any, key: str) -> str:
    """A split component, never negative: one that measured below zero shows as 0, marked ``*``."""
    if key in below_zero(split):
        return num(0.0, 2) + "*"
    return num(getattr(split, key), 2)


def clamp_notes(cells: Sequence[BenchCell]) -> list[str]:
    """One line per component that measured below zero: what it measured."""
    notes = [
        f"{cell.runtime} b{cell.batch} c{cell.concurrency} {key} {value:.2f} ms"
        for cell in cells
        if cell.triton is not None
        for key, value in below_zero(cell.triton).items()
        if "." not in key  # per-model figures are in bench.json only
    ]
    if not notes:
        return []
    return [
        "",
        "\\* measured below zero and shown as 0 ("
        + "; ".join(notes)
        + "): the server's request duration ends after the response is handed to the network, so a client on "
        "the same machine can see its answer a fraction of a millisecond sooner.",
    ]


def _pct_cell(kinds: dict[str, dict[str, float | None]], kind: str, mean: float | None) -> str:
    figures = kinds.get(kind) or {}
    return " · ".join(
        num(value, 2) for value in (mean, figures.get("p50_ms"), figures.get("p90_ms"), figures.get("p99_ms"))
    )


def _window_cell(window: dict[str, Any] | None) -> str:
    if not window:
        return "–"
    if "error" in window:
        return window["error"]
    earlier = window.get("earlier_cells") or []
    return "this cell" if not earlier else f"+ {len(earlier)} earlier cell{'s' if len(earlier) > 1 else ''}"


def percentiles_section(cells: Sequence[BenchCell]) -> list[str]:
    """Triton's queue and compute time per model: the mean over the cell and the p50/p90/p99 of its summaries."""
    rows = []
    for cell in cells:
        split = cell.triton
        if split is None or not split.server_percentiles:
            continue
        for model, kinds in sorted(split.server_percentiles.items()):
            own = split.per_model.get(model, {})
            rows.append(
                [
                    cell.runtime,
                    str(cell.batch),
                    str(cell.concurrency),
                    model,
                    _pct_cell(kinds, "queue", own.get("queue_ms")),
                    _pct_cell(kinds, "compute_infer", own.get("compute_infer_ms")),
                    _pct_cell(kinds, "request", own.get("request_ms")),
                    _window_cell(split.percentiles_window),
                ]
            )
    if not rows:
        return []
    headers = ["runtime", "batch", "conc", "model", "queue ms", "compute (infer) ms", "request ms", "quantiles cover"]
    note = (
        "Each figure is *mean · p50 · p90 · p99* per request of that model (an ensemble's steps on their own rows). "
        "Means are exact over the cell (counter differences). Percentiles are Triton's summary quantiles read right "
        "after the cell: Triton computes them over a sliding window of 48-60 s, so they cover this cell's requests "
        "(warm-up included; of a cell longer than 48 s only its last part) and, where marked, those of earlier "
        "cells on the same model less than 60 s before (named in `bench.json`, `triton.percentiles_window`), or of "
        "other clients of a shared server."
    )
    return ["", "## Server-side percentiles (Triton's summaries, per model)", "", note, "", *table(headers, rows)]


def unavailable_lines(cells: Sequence[BenchCell]) -> list[str]:
    """Triton cells whose server split could not be read, and why."""
    lines = [
        f"- `{cell.runtime}` batch {cell.batch} conc {cell.concurrency}: no server-side split: "
        f"{cell.triton.unavailable}"
        for cell in cells
        if cell.triton is not None and cell.triton.unavailable
    ]
    return ["", *lines] if lines else []


def comparison_lines(pa: dict[str, Any]) -> list[str]:
    """aigi's images/s beside perf_analyzer's for the same cells, and why they differ where they do."""
    entries = pa.get("comparison") or []
    if not entries:
        return []
    rows = [
        [
            entry["runtime"],
            str(entry["batch"]),
            str(entry["concurrency"]),
            num(entry["aigi_images_per_s"]),
            num(entry["perf_analyzer_images_per_s"]),
            num(entry["ratio"], 2, "x"),
            "yes" if entry["agree"] else "**no**: " + "; ".join(entry["why"]),
        ]
        for entry in entries
    ]
    headers = [
        "runtime",
        "batch",
        "conc",
        "aigi images/s",
        "perf_analyzer images/s",
        "ratio",
        f"within {TOLERANCE:.0%}",
    ]
    return [
        "",
        f"aigi's cells beside perf_analyzer's (they must agree within {TOLERANCE:.0%}):",
        "",
        *table(headers, rows),
    ]


PLOT_TITLES = {
    "throughput_vs_batch.png": "throughput vs batch size",
    "latency_vs_concurrency.png": "latency vs concurrency",
    "latency_cdf.png": "latency CDF per cell",
    "latency_split.png": "where the time goes: network, queue, compute",
    "throughput_vs_latency.png": "throughput vs latency across concurrency",
}


def plots_section(results: dict[str, Any], json_name: str) -> list[str]:
    """The plots the run drew, embedded, and where the raw numbers are."""
    plots = results.get("plots", [])
    raw = any(
        (cell.latencies_file if isinstance(cell, BenchCell) else cell.get("latencies_file"))
        for cell in results.get("cells", [])
    )
    where = f"Raw numbers: {json_name}" + (
        "; every request's latency: `latencies/<runtime>_b<batch>_c<conc>.csv` (one row per request)." if raw else "."
    )
    if not plots:
        return ["", f"Plots: none. {where}", ""]
    lines = ["", "## Plots", ""]
    for name in plots:
        lines += [f"![{PLOT_TITLES.get(name, name)}]({name})", ""]
    return [*lines, where, ""]
