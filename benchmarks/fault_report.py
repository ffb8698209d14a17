"""The fault check's report: ``fault_check.json``, ``FAULT_CHECK.md`` and ``timeline.png`` from its figures.

:mod:`aigi.benchmarks.load_check` runs the check and hands its report (a JSON-ready dict) to :func:`write_report`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aigi.checkpoint import write_json_atomic

logger = logging.getLogger(__name__)

JSON_NAME = "fault_check.json"
MARKDOWN_NAME = "FAULT_CHECK.md"
MEASURES = (
    "images_sent",
    "images_answered",
    "images_refused_invalid",
    "images_lost",
    "images_wrong",
    "images_sent_valid",
    "images_sent_invalid",
    "calls",
    "requests",
    "retries",
    "requests_rejected",
    "max_abs_dp_fake",
)
FAULT_NAMES = {"sigterm": "roll (SIGTERM, drain, restart)", "sigkill": "crash (SIGKILL, restart)"}


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds (empty when there are no values)."""
    if not values:
        return {}
    array = np.asarray(values) * 1000.0
    summary = {f"p{q}_ms": float(np.percentile(array, q)) for q in (50, 90, 99)}
    summary["max_ms"] = float(array.max())
    return summary


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _header(report: dict[str, Any]) -> list[str]:
    settings = report["client_settings"]
    reference = report["reference"]
    overrides = report["client_options"]
    replicas = report["replicas"]
    return [
        "# Fault check",
        "",
        f"{replicas} replica{'s' if replicas > 1 else ''} of one repository, {report['concurrency']} client threads "
        f"(each a `Detector` given every replica's endpoint), {report['duration_s']:g} s planned "
        f"({report['load_s']:g} s of load), {report['protocol']}, fault plan `{report['fault']}`. "
        f"Result: **{'PASS' if report['passed'] else 'FAIL'}**.",
        "",
        "Client: "
        + ", ".join(f"{key}={value}" for key, value in settings.items())
        + "; "
        + (f"**overridden for this run: {overrides}**" if overrides else "the client's defaults")
        + ".",
        "",
        f"Reference: {reference['valid_payloads']} valid images answered by the healthy replica r0; served precision "
        f"{reference['precision']}, tolerance |dp_fake| <= {reference['tolerance_p_fake']:g} "
        f"({reference['tolerance_why']}); batched vs alone spread {reference['spread_p_fake']:.2g}.",
    ]


def _fault_table(report: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "| fault | replica | at | planned at | exit code | process gone after | down (signal to ready) "
        "| replica serving again after | longest gap with no answer | longest wait of one client "
        "| answered calls after | images lost after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for record in report["faults"]:
        lines.append(
            f"| {FAULT_NAMES.get(record['kind'], record['kind'])} | {record['replica']} | {record['at_s']:.2f} s "
            f"| {record['planned_at_s']:.2f} s | {record['exit_code']} | {record['stop_s']:.2f} s "
            f"| {record['down_s']:.2f} s | {_seconds(record['replica_serving_again_after_s'])} "
            f"| {_seconds(record['longest_answer_gap_s'])} | {_seconds(record['longest_client_wait_s'])} "
            f"| {record['answered_calls_after']} | {record['images_lost_after']} |"
        )
    lines += [
        "",
        "Times run from the signal. *Replica serving again*: its own counter (read every 0.5 s) first grew after the "
        "restart. *Longest gap with no answer*: the longest stretch, from the signal to the next fault (or the end), "
        "in which no client got a verdict: the outage as the service saw it. *Longest wait of one client*: the same "
        "for each client thread alone (its own calls, latency included), the worst of them. "
        "`clients_back_after_s` in the JSON: signal until every client had a verdict after the restart.",
    ]
    return lines


def _replica_table(report: dict[str, Any]) -> list[str]:
    lines = ["", "| replica | gRPC endpoint | images served (its counter) | share | faults |", "|---|---|---|---|---|"]
    total = sum(entry["images_served"] for entry in report["per_replica"].values()) or 1
    for name, entry in report["per_replica"].items():
        lines.append(
            f"| {name} | {entry['endpoint']} | {entry['images_served']} | {entry['images_served'] / total:.0%} "
            f"| {', '.join(entry['faults']) or '-'} |"
        )
    lines += [
        "",
        "Served counts are Triton's `nv_inference_count` of the called model, a lower bound (a killed replica's last "
        "half second is not read); the lost/wrong accounting is the clients' own.",
    ]
    return lines


def markdown(report: dict[str, Any]) -> str:
    """``FAULT_CHECK.md`` text."""
    lines = _header(report) + _fault_table(report) + _replica_table(report)
    lines += ["", "| measure | value |", "|---|---|"]
    for key in MEASURES:
        value = report[key]
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append(f"| {key.replace('_', ' ')} | {shown} |")
    for key, value in report["latency_per_call"].items():
        lines.append(f"| latency {key.replace('_ms', '')} per call | {value:.1f} ms |")
    lines += ["", "| check | result |", "|---|---|"]
    lines += [f"| {name} | {'pass' if ok else 'FAIL'} |" for name, ok in report["checks"].items()]
    lost = {reason: count for reason, count in report["lost_by_reason"].items() if count}
    if lost or report["calls_raised"]:
        lines += ["", f"Lost images by reason: {lost}; calls that raised, by exception: {report['calls_raised']}."]
    if report["examples"]:
        lines += ["", "First problems seen:", ""] + [f"- {example}" for example in report["examples"]]
    plot = report.get("plot")
    if plot and plot.endswith(".png"):
        lines += ["", f"![answers and losses per second, faults marked]({plot})"]
    elif plot:
        lines += ["", f"Timeline plot: {plot}."]
    lines += ["", f"Per-second figures (answered, refused, lost, wrong, per replica): `timeline` in `{JSON_NAME}`."]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> str:
    """Write ``timeline.png`` (when matplotlib is there), ``fault_check.json`` and ``FAULT_CHECK.md`` into ``out``;
    returns the Markdown text. ``report["plot"]`` says what became of the plot."""
    from aigi.benchmarks.fault_plot import TIMELINE_PNG, plot_timeline

    out.mkdir(parents=True, exist_ok=True)
    try:
        plot_timeline(report, out / TIMELINE_PNG)
        report["plot"] = TIMELINE_PNG
    except ModuleNotFoundError as exc:
        logger.warning("no timeline plot: %s", exc)
        report["plot"] = f"not drawn ({exc.name or 'matplotlib'} is not installed)"
    write_json_atomic(out / JSON_NAME, report)
    text = markdown(report)
    (out / MARKDOWN_NAME).write_text(text)
    return text
