"""The export pipeline's step runner and statuses (no server, no files), and one step run alone on a tiny checkpoint."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from aigi.errors import ExportError, ParityError
from aigi.export import parity
from aigi.export.pipeline import PIPELINE, STEPS, Step, StepRunner
from aigi.export.report import ExportReport, StepReport, StepStatus


class _Progress:
    """Records what the runner tells the progress bar."""

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.updates = 0

    def set_postfix_str(self, text: str) -> None:
        self.labels.append(text)

    def update(self, count: int) -> None:
        self.updates += count


@pytest.fixture
def lines() -> list[str]:
    """What the runner printed."""
    return []


@pytest.fixture
def runner(lines) -> StepRunner:
    return StepRunner(ExportReport("run", "repo", "aigi", "cpu", "fp32", 8), lines.append, _Progress())


def _parity(max_abs_probs: float, argmax_agreement: float = 1.0) -> parity.ParityResult:
    diffs = dict.fromkeys(parity.OUTPUTS, max_abs_probs)
    return parity.ParityResult("model.onnx", 1e-4, diffs, dict(diffs), argmax_agreement, 1.0, samples=8)


def test_step_status_values_are_the_report_strings_when_serialized():
    assert [status.value for status in StepStatus] == ["ok", "failed", "skipped", "unavailable"]
    assert json.dumps({"status": StepStatus.SKIPPED}) == '{"status": "skipped"}'
    assert f"{StepStatus.OK}" == "ok" and StepStatus.UNAVAILABLE.upper() == "UNAVAILABLE"
    step = StepReport("fp16", "skipped")  # a plain string is accepted and typed
    assert step.status is StepStatus.SKIPPED and step.to_dict()["status"] == "skipped"
    with pytest.raises(ValueError):
        StepReport("fp16", "done")


def test_pipeline_runs_the_six_steps_in_order_when_listed():
    assert STEPS == ("export", "fp16", "int8", "optimize", "trt", "repository")
    assert [step.name for step in PIPELINE] == list(STEPS)


def test_runner_records_ok_step_with_time_line_and_progress_when_it_returns(runner, lines):
    report = runner.run(Step("export", lambda context: StepReport("export", "ok", message=context)), "hello")
    assert report.status is StepStatus.OK and report.message == "hello"
    assert runner.report.steps == [report]
    assert lines == [report.line()] and lines[0].startswith("export     OK ")
    assert runner.progress.labels == ["export"] and runner.progress.updates == 1


def test_runner_records_skipped_step_and_goes_on_when_step_skips(runner, lines):
    def skip(context):
        return StepReport("int8", StepStatus.SKIPPED, message="not needed for this backend")

    report = runner.run(Step("int8", skip, "int8 label"), None)
    assert report.status is StepStatus.SKIPPED and report.parity is None
    assert lines[0].split()[:2] == ["int8", "SKIPPED"] and "not needed for this backend" in lines[0]
    assert runner.progress.labels == ["int8 label"] and runner.progress.updates == 1


def test_runner_records_failed_step_and_raises_export_error_when_step_raises(runner, lines):
    def broken(context):
        raise RuntimeError("converter exploded")

    with pytest.raises(ExportError, match="^export failed: RuntimeError: converter exploded$") as caught:
        runner.run(Step("fp16", broken), None)
    assert isinstance(caught.value.__cause__, RuntimeError)
    [failed] = runner.report.steps
    assert failed.step == "fp16" and failed.status is StepStatus.FAILED
    assert failed.message == "export failed: RuntimeError: converter exploded"
    assert lines == [failed.line()] and " FAILED " in lines[0]
    assert runner.progress.updates == 1


def test_runner_passes_aigi_errors_through_unchanged_when_step_raises_one(runner, lines):
    error = ExportError("Python-backend source for preprocess is missing")

    def broken(context):
        raise error

    with pytest.raises(ExportError) as caught:
        runner.run(Step("repository", broken), None)
    assert caught.value is error
    assert runner.report.steps[0].status is StepStatus.FAILED
    assert runner.report.steps[0].message == "Python-backend source for preprocess is missing"


@pytest.mark.parametrize(
    "result,message",
    [
        (_parity(2e-4), "export: model.onnx differs from PyTorch past tolerance: probs max abs 2.00e-04 > 1e-04"),
        (_parity(1e-5, argmax_agreement=0.875), "export: model.onnx changes decisions against PyTorch"),
    ],
)
def test_runner_raises_parity_error_after_the_line_when_step_returns_failed_check(runner, lines, result, message):
    def check(context):
        return StepReport("export", StepStatus.FAILED, message="torch.onnx opset 17", parity=result)

    with pytest.raises(ParityError, match="^" + re.escape(message)):
        runner.run(Step("export", check), None)
    [failed] = runner.report.steps
    assert failed.parity is result and failed.message == "torch.onnx opset 17"  # the line keeps diffs and message
    assert lines == [failed.line()] and "probs abs" in lines[0]


# ----------------------------------------------------------------------------- one step alone, on a tiny checkpoint


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from _export_helpers import make_image_folder, make_tiny_checkpoint

    from aigi.export.pipeline import ExportOptions, prepare_context, step_fp32

    root = tmp_path_factory.mktemp("alone")
    run, images = make_tiny_checkpoint(root / "run"), make_image_folder(root / "data", corrupt=0)
    options = ExportOptions(run, root / "repo", "cpu", precision="int8", parity_data=images, parity_images=2)
    context = prepare_context(options, root / "staging")
    assert step_fp32(context).status is StepStatus.OK  # what the int8 step reads
    return context


def test_failed_step_reproduces_alone_when_run_on_its_context(context, monkeypatch):
    from aigi.export.pipeline import step_fp16, step_int8

    assert step_fp16(context).status is StepStatus.SKIPPED  # cpu int8 does not need it
    assert step_int8(context).status is StepStatus.OK
    monkeypatch.setitem(parity.TOLERANCES, "int8", 1e-9)
    report = step_int8(context)  # returns its status and diffs; raising is the runner's job
    assert report.status is StepStatus.FAILED and report.artifact == "model.int8.onnx"
    assert 1e-9 < report.parity.max_abs["probs"] < 5e-2
    assert report.parity.failure().startswith("model.int8.onnx differs from PyTorch past tolerance")
    assert np.isfinite(list(report.parity.max_rel.values())).all()
