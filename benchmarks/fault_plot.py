"""``timeline.png`` of a fault check: images answered and lost per second, each fault marked where it struck.

matplotlib is imported inside :func:`plot_timeline` (the ``training`` extra), so the check runs without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TIMELINE_PNG = "timeline.png"
FAULT_NAMES = {"sigterm": "roll (SIGTERM)", "sigkill": "SIGKILL"}


def plot_timeline(report: dict[str, Any], path: Path) -> Path:
    """Two panels over the seconds of the load: images answered per second (all clients, and what each replica
    served), and images lost / wrong per second; each fault is a vertical line with its name, and the span until
    the replica was ready again is shaded.

    Raises:
        ModuleNotFoundError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    seconds = [second + 0.5 for second in timeline["t_s"]]  # each bin drawn at the middle of its second
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True, height_ratios=(3, 1.4))
    top.plot(seconds, timeline["answered"], color="black", linewidth=2, label="answered (all clients)")
    top.plot(seconds, timeline["refused_invalid"], color="grey", linewidth=1, label="refused as invalid (on purpose)")
    for name, served in timeline["per_replica"].items():
        top.plot(seconds, served, linewidth=1.2, alpha=0.85, label=f"served by {name} (its counter)")
    top.set_ylabel("images / s")
    lost, wrong = timeline["lost"], timeline["wrong"]
    bottom.bar(seconds, lost, width=0.9, color="tab:red", label=f"lost ({sum(lost)} in all)")
    bottom.bar(seconds, wrong, width=0.9, bottom=lost, color="tab:orange", label=f"wrong ({sum(wrong)} in all)")
    bottom.set_ylabel("images / s")
    bottom.set_xlabel("seconds since the load started")
    bottom.set_ylim(0, max(1, *(a + b for a, b in zip(lost, wrong, strict=True))) * 1.15)
    for fault in report["faults"]:
        for axis in (top, bottom):
            axis.axvline(fault["at_s"], color="tab:purple", linestyle="--", linewidth=1)
            axis.axvspan(fault["at_s"], fault["at_s"] + fault["down_s"], color="tab:purple", alpha=0.08)
        top.annotate(
            f"{FAULT_NAMES.get(fault['kind'], fault['kind'])} {fault['replica']}\ndown {fault['down_s']:.1f} s",
            xy=(fault["at_s"], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize=8,
            color="tab:purple",
        )
    replicas = report["replicas"]
    top.set_title(
        f"{replicas} replica{'s' if replicas > 1 else ''}, {report['concurrency']} clients, fault plan "
        f"'{report['fault']}': {report['images_lost']} lost, {report['images_wrong']} wrong "
        f"({'PASS' if report['passed'] else 'FAIL'})"
    )
    for axis in (top, bottom):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
