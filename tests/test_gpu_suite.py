"""benchmarks/gpu_suite.sh end to end on the CPU (SUITE_ALLOW_CPU=1), with its Triton cells served from a server
pack built here, and the suite's GPU targets judged from bench.json cells."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aigi.benchmarks import server_pack, suite_report
from aigi.benchmarks.runtimes import RUNTIME_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
SHORT_SWEEP = "--batch-sizes 1,4 --concurrency 1,2 --duration 0.3 --min-iters 3 --warmup 1 --agreement-images 8"


@pytest.mark.triton
def test_gpu_suite_reports_each_runtime_or_its_skip_reason_when_run_on_cpu_with_a_server_pack(tmp_path: Path) -> None:
    if importlib.util.find_spec("pytriton") is None:
        pytest.skip("nvidia-pytriton not installed: no server to pack")
    pack = tmp_path / "pack"
    server_pack.build_pack(pack, f"{sys.version_info[0]}.{sys.version_info[1]}", wheels=False)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "SUITE_ALLOW_CPU": "1",
        "SUITE_NO_PIP": "1",  # never re-install the developer's venv; the suite's shim is exercised instead
        "SUITE_SERVER_PACK": str(pack),
        "SUITE_MODELS": "tiny",
        "SUITE_BUDGETS": "60",
        "SUITE_ARGS": SHORT_SWEEP,
    }
    done = subprocess.run(
        ["bash", "benchmarks/gpu_suite.sh", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    log = (out / "tiny" / "bench.log").read_text() if (out / "tiny" / "bench.log").is_file() else ""
    assert done.returncode == 0, done.stdout + done.stderr
    suite = json.loads((out / "suite.json").read_text())
    tiny = suite["models"]["tiny"]
    assert tiny["status"]["status"] == "ok", log[-3000:]
    assert suite["server"].startswith("pack") and "FAILED" not in suite["server"], suite["server"]
    assert "torch-eager-fp32" in tiny["best"] and "triton-tensor-grpc-fp32" in tiny["best"], tiny["skipped"]
    assert tiny["best"]["torch-eager-fp32"]["speedup"] == pytest.approx(1.0)
    for name in RUNTIME_NAMES:  # every registered runtime, triton-torch-* included when there: measured or skipped
        assert name in tiny["best"] or tiny["skipped"].get(name), f"{name}: neither measured nor skipped with a reason"
    assert "INT8 and HTTP" in tiny["skipped"]["triton-tensor-grpc-int8"]
    markdown = (out / "SUITE.md").read_text()
    assert "| x eager FP32 (same batch) | of bf16 matmul peak |" in markdown
    assert "Triton server: pack" in markdown


def test_gpu_targets_judge_the_best_runtime_and_the_served_twin_when_cells_are_at_batch_128() -> None:
    def cell(runtime: str, images_per_s: float, speedup: float, fraction: float, batch: int = 128) -> dict:
        return {
            "runtime": runtime,
            "status": "ok",
            "batch": batch,
            "images_per_s": images_per_s,
            "speedup": speedup,
            "peak_fraction": fraction,
        }

    data = {
        "cells": [
            cell("torch-eager-fp32", 100.0, 1.0, 0.1),
            cell("torch-compile-bf16", 700.0, 7.0, 0.65),
            cell("torch-autocast-bf16", 500.0, 5.0, 0.45),
            cell("triton-torch-grpc-bf16", 460.0, 4.6, 0.42),
            cell("triton-torch-grpc-bf16", 9999.0, 99.0, 0.99, batch=32),  # another batch: not judged
        ],
        "runtimes": {name: {"status": "ok"} for name in ("torch-autocast-bf16", "torch-compile-bf16")},
    }
    speed, peak, served = suite_report.gpu_targets(data)
    assert (speed["met"], speed["value"]) == (True, 7.0) and "torch-compile-bf16" in speed["detail"]
    assert (peak["met"], peak["value"]) == (True, 0.65)
    assert served["met"] is True and served["value"] == pytest.approx(0.92)
    assert "triton-torch-grpc-bf16 / torch-autocast-bf16" in served["detail"]


def test_gpu_targets_are_not_measured_when_no_cell_ran_at_batch_128() -> None:
    verdicts = suite_report.gpu_targets({"cells": [], "runtimes": {}})
    assert [v["met"] for v in verdicts] == [None, None, None]
