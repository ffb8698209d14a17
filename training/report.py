"""The human half of an evaluation: ``REPORT.md`` tables and PNG plots (confusion matrix, ROC, reliability,
robustness)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MARKDOWN_FILENAME = "REPORT.md"
CONFUSION_PNG = "confusion_matrix.png"
ROC_PNG = "roc_curve.png"
ROBUSTNESS_PNG = "robustness.png"
RELIABILITY_PNG = "reliability.png"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def markdown(report: dict[str, Any]) -> str:
    """Render an evaluation report (see :func:`aigi.training.evaluate.evaluate`) as Markdown.

    Sections: the run and calibration, the test split's metrics, per-class rates, the confusion matrix, the
    robustness table when present, and links to the plots named in ``report["files"]``.
    """
    test = report["test"]
    lines = _overview(report)
    lines += ["## Test split", ""] + _table(["metric", "value"], _metric_rows(test))
    if "calibration_error" in report:
        lines += _calibration_error_lines(report["calibration_error"])
    lines += ["## Per class", ""] + _per_class_table(test["per_class"])
    lines += ["## Confusion matrix (rows: true, columns: predicted)", ""] + _confusion_table(test["confusion_matrix"])
    if "robustness" in report:
        lines += ["## Robustness (test split, same threshold)", ""] + _robustness_table(report["robustness"])
    files = report.get("files", {})
    if files:
        lines += ["## Plots", ""] + [f"![{name}]({path})" for name, path in files.items() if path.endswith(".png")]
        lines.append("")
    return "\n".join(lines)


def _overview(report: dict[str, Any]) -> list[str]:
    cal = report["calibration"]
    calibrated = (
        f", target FPR {cal['target_fpr']:.3f} on {cal['n_val_real']} val real images, "
        f"achieved {cal['achieved_fpr']:.3f}"
        if cal.get("method") == "val_real_fpr"
        else ""
    )
    return [
        "# aigi evaluation",
        "",
        f"- checkpoint: `{report['checkpoint']}`",
        f"- data: `{report['data']}`",
        f"- task: {report['task']}; labels: {', '.join(report['labels'])}",
        f"- threshold: {report['threshold']:.6f} (is_fake = p_fake >= threshold), calibration: {cal.get('method')}"
        + calibrated,
        f"- skipped (undecodable) files: {report['skipped_files']}",
        "",
    ]


def _calibration_error_lines(ece: dict[str, Any]) -> list[str]:
    header = f"## Probability calibration (test, ECE over {ece['bins']} equal-width bins of p_fake)"
    rows = [
        ["uncalibrated (T = 1)", _num(ece["test_ece_before"])],
        [f"temperature-scaled (T = {ece['temperature']:.4g}, fitted on val)", _num(ece["test_ece_after"])],
    ]
    return [header, ""] + _table(["probabilities", "ECE"], rows)


def _metric_rows(test: dict[str, Any]) -> list[list[str]]:
    rows = [
        ["accuracy", _pct(test["accuracy"])],
        ["accuracy at threshold 0.5", _pct(test.get("accuracy_at_0.5"))],
        ["real accuracy", _pct(test["real_accuracy"])],
        ["fake accuracy", _pct(test["fake_accuracy"])],
        ["average precision", _num(test["average_precision"])],
        ["ROC AUC", _num(test["roc_auc"])],
    ]
    if "attribution_accuracy" in test:
        rows += [
            ["attribution accuracy (all)", _pct(test["attribution_accuracy"])],
            ["attribution accuracy (fakes)", _pct(test["attribution_accuracy_fakes"])],
        ]
    rows.append(["images (real / fake)", f"{test['n']} ({test['n_real']} / {test['n_fake']})"])
    return rows


def _per_class_table(per_class: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for name, entry in per_class.items():
        if "called_real" in entry:
            rows.append([name, str(entry["n"]), f"called real {_pct(entry['called_real'])}", "", ""])
        else:
            called = f"called fake {_pct(entry['called_fake'])}"
            rows.append([name, str(entry["n"]), called, _num(entry["average_precision"]), _num(entry["roc_auc"])])
    return _table(["class", "n", "accuracy", "AP vs real", "AUC vs real"], rows)


def _confusion_table(matrix: dict[str, Any]) -> list[str]:
    labels = matrix["labels"]
    rows = matrix["rows_true_cols_predicted"]
    body = [[label, *map(str, row)] for label, row in zip(labels, rows, strict=True)]
    return _table(["true \\ predicted", *labels], body)


def _robustness_table(table: dict[str, dict[str, Any]]) -> list[str]:
    header = ["condition", "accuracy", "real acc", "fake acc", "AP", "AUC"]
    has_attr = any("attribution_accuracy" in row for row in table.values())
    if has_attr:
        header.append("attribution")
    body = []
    for name, row in table.items():
        cells = [name, _pct(row.get("accuracy")), _pct(row.get("real_accuracy")), _pct(row.get("fake_accuracy"))]
        cells += [_num(row.get("average_precision")), _num(row.get("roc_auc"))]
        if has_attr:
            cells.append(_pct(row.get("attribution_accuracy")))
        body.append(cells)
    return _table(header, body)


def _plot_confusion(matrix: np.ndarray, labels: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.0 * len(labels) + 2))
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float | None, threshold_fpr: float | None, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC {auc:.4f}" if auc is not None else "ROC")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    if threshold_fpr is not None:
        ax.axvline(threshold_fpr, linestyle="--", color="red", label=f"target FPR {threshold_fpr:.2f}")
    ax.set_xlabel("false positive rate (real called fake)")
    ax.set_ylabel("true positive rate (fake called fake)")
    ax.set_title("ROC (test)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_robustness(table: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    names = list(table)
    metrics = [m for m in ("accuracy", "average_precision", "attribution_accuracy") if m in table[names[0]]]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 3, 4))
    width = 0.8 / len(metrics)
    for k, metric in enumerate(metrics):
        values = [table[name].get(metric) or 0.0 for name in names]
        ax.bar(np.arange(len(names)) + (k - (len(metrics) - 1) / 2) * width, values, width, label=metric)
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title("Robustness (test)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_reliability(plots: dict[str, Any], temperature: float, path: Path) -> None:
    from aigi.training.calibration import plot_reliability, reliability

    curves = {"uncalibrated": reliability(plots["uncalibrated_p_fake"], plots["is_fake"])}
    curves[f"served, T = {temperature:.4g}"] = reliability(plots["p_fake"], plots["is_fake"])
    plot_reliability(curves, path)


def write_report(report: dict[str, Any], plots: dict[str, Any], out: str | Path) -> dict[str, str]:
    """Write ``REPORT.md`` and the PNGs into ``out``; returns ``{name: file name}`` (also stored in the report)."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"confusion_matrix": CONFUSION_PNG, "roc_curve": ROC_PNG}
    _plot_confusion(np.asarray(plots["confusion"]), list(report["labels"]), out / CONFUSION_PNG)
    fpr, tpr = plots["roc"]
    target = report["calibration"].get("target_fpr")
    _plot_roc(fpr, tpr, report["test"]["roc_auc"], target, out / ROC_PNG)
    if "calibration_error" in report and "uncalibrated_p_fake" in plots:
        _plot_reliability(plots, report["calibration_error"]["temperature"], out / RELIABILITY_PNG)
        files["reliability"] = RELIABILITY_PNG
    if "robustness" in report:
        _plot_robustness(report["robustness"], out / ROBUSTNESS_PNG)
        files["robustness"] = ROBUSTNESS_PNG
    files["markdown"] = MARKDOWN_FILENAME
    (out / MARKDOWN_FILENAME).write_text(markdown({**report, "files": files}))
    return files
