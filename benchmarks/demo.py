"""``aigi demo``: the whole product on one CPU machine, end to end, in one command.

Offline benchmark -> train ``tiny`` (source task) -> evaluate with robustness (and explain) -> leave one
generator out (two folds, small budget) -> export a CPU
Triton repository -> start Triton -> classify held-out images through the client -> a short
benchmark -> stop the server -> ``REPORT.md``. Each step runs the same code the CLI runs, shows
its progress, and a failing step stops the demo with one clear line.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigi.errors import AigiError

logger = logging.getLogger(__name__)

SAMPLES_PER_CLASS = 4


class DemoStepError(AigiError):
    """A demo step failed; the message names the step and how to rerun it alone."""


@dataclass
class DemoConfig:
    """Sizes of the demo; the defaults fit a 2-core CPU in well under 15 minutes."""

    out: Path
    train_per_class: int = 300
    val_per_class: int = 80
    test_per_class: int = 120
    epochs: int = 10
    seed: int = 0
    bench_budget_s: float = 150.0
    # leave one generator out: one small model per held-out generator, so the demo holds out one generator of each
    # kind of trace (periodic upsampling, non-periodic decoder) on a reduced budget; `aigi eval --leave-one-out`
    # alone runs every generator
    loo_held_out: str = "gan_tconv,decoder_nonperiodic"
    loo_epochs: int = 3
    loo_max_train_images: int = 1200
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def run(self) -> Path:
        return self.out / "run"

    @property
    def eval_dir(self) -> Path:
        return self.out / "eval"

    @property
    def explain_dir(self) -> Path:
        return self.out / "explain"

    @property
    def loo_dir(self) -> Path:
        return self.out / "leave_one_out"

    @property
    def repo(self) -> Path:
        return self.out / "model_repository"

    @property
    def bench_dir(self) -> Path:
        return self.out / "bench"


def _cli(argv: list[str]) -> None:
    from aigi.cli import main

    code = main(argv)
    if code != 0:
        raise DemoStepError(f"'aigi {' '.join(argv)}' exited with {code}")


def _step(config: DemoConfig, number: int, total: int, title: str, action: Callable[[], Any]) -> Any:
    print(f"\n==> [{number}/{total}] {title}", flush=True)
    started = time.monotonic()
    try:
        result = action()
    except AigiError as exc:
        raise DemoStepError(f"step {number}/{total} ({title}) failed: {exc}") from exc
    seconds = time.monotonic() - started
    config.steps.append({"step": title, "seconds": round(seconds, 1)})
    print(f"    done in {seconds:.1f} s", flush=True)
    return result


def _held_out_samples(config: DemoConfig) -> list[Path]:
    test_root = config.data / "test"
    samples: list[Path] = []
    for label_dir in sorted(p for p in test_root.iterdir() if p.is_dir()):
        samples += sorted(p for p in label_dir.iterdir() if p.is_file())[:SAMPLES_PER_CLASS]
    return samples


def _classify_through_triton(config: DemoConfig) -> dict[str, Any]:
    from aigi.client import Detector
    from aigi.server import TritonServer

    samples = _held_out_samples(config)
    eval_labels = _eval_predictions(config)
    server = TritonServer(config.repo).start().wait_ready()
    try:
        print(f"    Triton ready: {server.endpoints}", flush=True)
        with Detector(server.endpoints["grpc"], protocol="grpc") as detector:
            results = detector.detect(samples)
    finally:
        server.stop()
    rows = []
    for path, result in zip(samples, results, strict=True):
        key = str(path.resolve())
        rows.append(
            {
                "image": f"{path.parent.name}/{path.name}",
                "true": path.parent.name,
                "predicted": result.label,
                "p_fake": result.p_fake,
                "is_fake": result.is_fake,
                "error": result.error,
                "eval_predicted": eval_labels.get(key),
            }
        )
        print(f"    {rows[-1]['image']:<34} -> {result.label or 'ERROR'} p_fake={result.p_fake}", flush=True)
    agree = [row for row in rows if row["eval_predicted"] is not None]
    summary = {
        "rows": rows,
        "n": len(rows),
        "errors": sum(1 for row in rows if row["error"]),
        "correct": sum(1 for row in rows if row["predicted"] == row["true"]),
        "same_as_eval": sum(1 for row in agree if row["predicted"] == row["eval_predicted"]),
        "compared_with_eval": len(agree),
    }
    (config.out / "predictions.json").write_text(json.dumps(summary, indent=2) + "\n")
    _contact_sheet(rows, samples, config.out / "samples.png")
    return summary


def _eval_predictions(config: DemoConfig) -> dict[str, str]:
    path = config.eval_dir / "predictions.jsonl"
    if not path.is_file():
        return {}
    labels = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            # what the server answers: the open-set label ``unknown`` included (older reports: the argmax)
            labels[str(Path(record["path"]).resolve())] = record.get("served", record["predicted"])
    return labels


def _contact_sheet(rows: list[dict[str, Any]], samples: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    columns = SAMPLES_PER_CLASS
    lines = max(1, -(-len(samples) // columns))
    figure, axes = plt.subplots(lines, columns, figsize=(2.6 * columns, 2.8 * lines), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, row, path in zip(axes.ravel(), rows, samples, strict=False):
        with Image.open(path) as image:
            axis.imshow(image.convert("RGB"))
        ok = row["predicted"] == row["true"]
        title = (
            f"{row['image']}\n-> {row['predicted']} (p_fake {row['p_fake']:.2f})"
            if row["p_fake"] is not None
            else row["image"]
        )
        axis.set_title(title, fontsize=7, color="darkgreen" if ok else "darkred")
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    plt.close(figure)


def _relink(markdown: str, prefix: str) -> str:
    """Point a sub-report's relative links at its folder, and push its headings one level down."""
    markdown = re.sub(r"\]\((?!https?:|/)([^)]+)\)", lambda m: f"]({prefix}/{m.group(1)})", markdown)
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", markdown, flags=re.M)


def _section(path: Path, prefix: str, missing: str) -> str:
    return _relink(path.read_text(), prefix) if path.is_file() else f"_{missing}_\n"


def _explanations(config: DemoConfig) -> str:
    grid = config.explain_dir / "explanations_grid.png"
    if not grid.is_file():
        return "_explanations did not run_\n"
    return (
        "Per test image, each patch's share of the fake logit margin (red: toward fake, blue: toward real); one image "
        "per class, then misclassified ones (red titles). Scores per patch: `explain/explanations.json`.\n\n"
        "![explanations](explain/explanations_grid.png)\n"
    )


def write_report(config: DemoConfig, predictions: dict[str, Any] | None) -> Path:
    """Write ``REPORT.md`` from the step outputs (whatever exists), and return its path."""
    lines = [
        "# aigi demo report",
        "",
        "Everything below was produced by one `make demo` run on this machine (CPU only). The data is the "
        "offline **simulated** benchmark (`aigi data synth`): real photo crops and the same content passed "
        "through simulated generator pipelines. It tests the pipeline; it is not real generator output.",
        "",
        "## Steps",
        "",
        "| step | seconds |",
        "|---|---:|",
        *(f"| {step['step']} | {step['seconds']} |" for step in config.steps),
        "",
        "## Evaluation (held-out test split)",
        "",
        _section(config.eval_dir / "REPORT.md", "eval", "evaluation did not run"),
        "## Generators never seen (`aigi eval --leave-one-out`, demo budget)",
        "",
        _section(config.loo_dir / "LEAVE_ONE_OUT.md", "leave_one_out", "leave one generator out did not run"),
        "## Where the model sees generator traces (`aigi explain`)",
        "",
        _explanations(config),
        "## Sample predictions through Triton (gRPC, server-side preprocessing)",
        "",
    ]
    if predictions:
        lines += [
            f"{predictions['correct']}/{predictions['n']} correct; {predictions['errors']} errors; "
            f"{predictions['same_as_eval']}/{predictions['compared_with_eval']} give the same label as `aigi eval`.",
            "",
            "| image | true | predicted | p_fake | is_fake | aigi eval said |",
            "|---|---|---|---:|---|---|",
        ]
        for row in predictions["rows"]:
            p_fake = "" if row["p_fake"] is None else f"{row['p_fake']:.4f}"
            predicted = row["predicted"] or f"error: {row['error']}"
            lines.append(
                f"| {row['image']} | {row['true']} | {predicted} | {p_fake} | {row['is_fake']} | "
                f"{row['eval_predicted'] or ''} |"
            )
        lines += ["", "![sample predictions](samples.png)", ""]
    else:
        lines += ["_serving did not run_", ""]
    lines += ["## Benchmark", "", _section(config.bench_dir / "BENCH.md", "bench", "the benchmark did not run")]
    report = config.out / "REPORT.md"
    report.write_text("\n".join(lines) + "\n")
    (config.out / "demo.json").write_text(json.dumps({"steps": config.steps}, indent=2) + "\n")
    return report


def _evaluate_and_explain(config: DemoConfig) -> None:
    """``aigi eval`` with robustness, then ``aigi explain`` on a few test images for the report's heatmap grid."""
    _cli([
        "eval", "--checkpoint", str(config.run), "--data", str(config.data), "--out", str(config.eval_dir),
        "--robustness",
    ])  # fmt: skip
    _cli([
        "explain", "--checkpoint", str(config.run), "--data", str(config.data), "--split", "test",
        "--per-class", "1", "--out", str(config.explain_dir),
    ])  # fmt: skip


def run_demo(config: DemoConfig) -> Path:
    """Run every step; a failing step raises :class:`DemoStepError` after writing what exists."""
    config.out.mkdir(parents=True, exist_ok=True)
    total = 8
    predictions: dict[str, Any] | None = None
    try:
        if config.data.exists():
            shutil.rmtree(config.data)
        _step(config, 1, total, "build the offline benchmark", lambda: _cli([
            "data", "synth", "--out", str(config.data), "--seed", str(config.seed),
            "--train-per-class", str(config.train_per_class), "--val-per-class", str(config.val_per_class),
            "--test-per-class", str(config.test_per_class),
        ]))  # fmt: skip
        _step(config, 2, total, "train tiny (source task)", lambda: _cli([
            "train", "--data", str(config.data), "--model", "tiny", "--task", "source",
            "--epochs", str(config.epochs), "--seed", str(config.seed), "--out", str(config.run),
        ]))  # fmt: skip
        _step(config, 3, total, "evaluate with robustness", lambda: _evaluate_and_explain(config))
        _step(config, 4, total, "leave one generator out", lambda: _cli([
            "eval", "--leave-one-out", "--data", str(config.data), "--out", str(config.loo_dir), "--model", "tiny",
            "--task", "source", "--epochs", str(config.loo_epochs), "--max-train-images",
            str(config.loo_max_train_images), "--held-out", config.loo_held_out, "--seed", str(config.seed),
        ]))  # fmt: skip
        _step(config, 5, total, "export a CPU Triton repository (INT8)", lambda: _cli([
            "export", "--checkpoint", str(config.run), "--repo", str(config.repo), "--backend", "cpu",
            "--precision", "int8", "--parity-data", str(config.data / "test"),
        ]))  # fmt: skip
        _step(config, 6, total, "check the repository", lambda: _cli(["repo", "check", str(config.repo)]))
        predictions = _step(
            config, 7, total, "serve with Triton and classify held-out images", lambda: _classify_through_triton(config)
        )
        _step(config, 8, total, "short benchmark", lambda: _cli([
            "bench", "--checkpoint", str(config.run), "--model", "tiny", "--quick",
            "--budget", str(config.bench_budget_s), "--repo", str(config.repo), "--out", str(config.bench_dir),
        ]))  # fmt: skip
    finally:
        report = write_report(config, predictions)
        print(f"\nreport: {report}", flush=True)
    return report


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``aigi`` parser."""
    parser = subparsers.add_parser(
        "demo",
        help="run the whole product end to end on this machine and write REPORT.md",
        description="Offline benchmark -> train tiny -> eval with robustness -> export to a CPU Triton repository -> "
        "serve -> classify held-out images through the client -> short benchmark -> REPORT.md.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    parser.add_argument("--epochs", type=int, default=DemoConfig.epochs)
    parser.add_argument("--train-per-class", type=int, default=DemoConfig.train_per_class)
    parser.add_argument("--val-per-class", type=int, default=DemoConfig.val_per_class)
    parser.add_argument("--test-per-class", type=int, default=DemoConfig.test_per_class)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--loo-held-out",
        default=DemoConfig.loo_held_out,
        help="generators the leave-one-out step holds out, one small model each (default: %(default)s)",
    )
    parser.add_argument("--loo-epochs", type=int, default=DemoConfig.loo_epochs, help="epochs per leave-one-out fold")
    parser.add_argument(
        "--loo-max-train-images",
        type=int,
        default=DemoConfig.loo_max_train_images,
        help="training images per leave-one-out fold",
    )
    parser.add_argument("--bench-budget", type=float, default=DemoConfig.bench_budget_s, help="seconds for the bench")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    config = DemoConfig(
        out=args.out,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        test_per_class=args.test_per_class,
        epochs=args.epochs,
        seed=args.seed,
        bench_budget_s=args.bench_budget,
        loo_held_out=args.loo_held_out,
        loo_epochs=args.loo_epochs,
        loo_max_train_images=args.loo_max_train_images,
    )
    run_demo(config)
    return 0
