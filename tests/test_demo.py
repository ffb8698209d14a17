"""``aigi demo``: the whole product end to end, run for real at its smallest size, and its failure path.

The real run uses 2 images per class and split, one epoch and a 10 s benchmark budget: every step (synth, train,
eval with robustness, INT8 export, repo check, Triton serving through the client, bench) runs its real code.
It takes about 35-45 s on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aigi.benchmarks import demo
from aigi.errors import AigiError
from aigi.labels import REAL, UNKNOWN
from aigi.training.synth import GENERATORS

STEPS = [
    "build the offline benchmark",
    "train tiny (source task)",
    "evaluate with robustness",
    "leave one generator out",
    "export a CPU Triton repository (INT8)",
    "check the repository",
    "serve with Triton and classify held-out images",
    "short benchmark",
]
PER_CLASS = 2


def _planned_cells(bench: dict) -> int:
    """Cells a bench run plans: every batch size per runtime that ran, every concurrency for Triton's."""
    config = bench["config"]
    ran = [name for name, entry in bench["runtimes"].items() if entry["status"] == "ok"]
    streams = {name: len(config["concurrency"]) if name.startswith("triton-") else 1 for name in ran}
    return sum(len(config["batch_sizes"]) * count for count in streams.values())


@pytest.mark.triton
def test_demo_runs_every_step_for_real_and_reports_them_when_sized_small(tmp_path: Path) -> None:
    pytest.importorskip("pytriton")
    from aigi.checkpoint import load_meta
    from aigi.cli import main

    out = tmp_path / "demo"
    sizes = ["--train-per-class", "2", "--val-per-class", "2", "--test-per-class", str(PER_CLASS)]
    assert (
        main(["-q", "demo", "--out", str(out), *sizes, "--epochs", "1", "--loo-epochs", "1", "--bench-budget", "10"])
        == 0
    )

    steps = json.loads((out / "demo.json").read_text())["steps"]
    assert [step["step"] for step in steps] == STEPS

    meta = load_meta(out / "run")
    labels = list(meta.labels)
    assert meta.task == "source" and labels[0] == REAL and sorted(labels[1:]) == sorted(GENERATORS)
    test_images = {path.parent.name: [] for path in (out / "data" / "test").glob("*/*")}
    for path in (out / "data" / "test").glob("*/*"):
        test_images[path.parent.name].append(path)
    assert sorted(test_images) == sorted(labels)
    assert all(len(paths) == PER_CLASS for paths in test_images.values())
    assert (out / "eval" / "REPORT.md").is_file() and (out / "eval" / "predictions.jsonl").is_file()
    loo = json.loads((out / "leave_one_out" / "leave_one_out.json").read_text())
    assert sorted(fold["held_out"] for fold in loo["folds"]) == ["decoder_nonperiodic", "gan_tconv"]
    assert "## Generators never seen" in (out / "REPORT.md").read_text()
    assert {"aigi", "aigi_preprocess", "aigi_cpu"} <= {p.name for p in (out / "model_repository").iterdir()}

    # every held-out sample went through Triton and came back with a label of the checkpoint
    predictions = json.loads((out / "predictions.json").read_text())
    rows = predictions["rows"]
    assert predictions["n"] == len(rows) == len(labels) * PER_CLASS and predictions["errors"] == 0
    for row in rows:
        # a served label is one of the checkpoint's, or the open-set answer for a fake no known generator explains
        assert row["error"] is None and row["predicted"] in [*labels, UNKNOWN] and 0.0 <= row["p_fake"] <= 1.0
        assert row["true"] == row["image"].split("/")[0] and row["eval_predicted"] in [*labels, UNKNOWN]
    assert predictions["correct"] == sum(row["predicted"] == row["true"] for row in rows)
    assert predictions["compared_with_eval"] == len(rows)
    assert predictions["same_as_eval"] == sum(row["predicted"] == row["eval_predicted"] for row in rows)
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the short benchmark: the trained checkpoint, the exported INT8 repository served, every cell accounted for
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert (bench["model"]["name"], bench["model"]["weights"]) == ("tiny", "checkpoint")
    assert bench["images"]["source"] == f"{out / 'data' / 'test'} (the checkpoint's data)"
    assert bench["runtimes"]["triton-tensor-grpc-int8"]["status"] == "ok"
    ran = {name for name, entry in bench["runtimes"].items() if entry["status"] == "ok"}
    assert set(bench["agreement"]) == ran
    assert bench["cells"] and all(cell["status"] == "ok" for cell in bench["cells"])
    assert len(bench["cells"]) + len(bench["skipped_cells"]) == _planned_cells(bench)

    report = (out / "REPORT.md").read_text()
    for heading in ("## Steps", "## Evaluation (held-out test split)", "## Sample predictions through Triton"):
        assert heading in report
    assert "## Benchmark\n\n## aigi bench: tiny" in report and "### Results" in report  # pushed one level down
    assert f"{predictions['correct']}/{len(rows)} correct; 0 errors" in report
    assert "did not run_" not in report
    assert "](eval/" in report  # the evaluation's own links point into its folder


def test_demo_stops_at_a_failing_step_names_it_and_still_writes_the_report(tmp_path: Path, monkeypatch) -> None:
    ran: list[str] = []

    def fake_cli(argv: list[str]) -> None:
        ran.append(argv[0])
        if argv[0] == "train":
            raise AigiError("no GPU and no patience")
        if argv[0] == "data":
            (tmp_path / "demo" / "data" / "test").mkdir(parents=True)

    monkeypatch.setattr(demo, "_cli", fake_cli)
    config = demo.DemoConfig(out=tmp_path / "demo")
    with pytest.raises(demo.DemoStepError, match=r"step 2/8 \(train tiny \(source task\)\) failed: no GPU"):
        demo.run_demo(config)
    assert ran == ["data", "train"]  # nothing after the failing step ran
    assert [step["step"] for step in json.loads((config.out / "demo.json").read_text())["steps"]] == STEPS[:1]
    report = (config.out / "REPORT.md").read_text()
    for missing in (
        "_evaluation did not run_",
        "_leave one generator out did not run_",
        "_serving did not run_",
        "_the benchmark did not run_",
    ):
        assert missing in report
