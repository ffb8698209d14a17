"""The benchmark harness (aigi bench): timing helpers, Prometheus and perf_analyzer parsing, reports, the GPU suite.

The end-to-end runs use the random-init ``tiny`` preset on the CPU and a handful of requests per cell; nothing
asserts on speed, only on what was measured, skipped and written.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigi.benchmarks import metrics_scrape, perf_analyzer
from aigi.benchmarks.flops import vit_gflops
from aigi.benchmarks.runtimes import select_runtimes
from aigi.benchmarks.targets import evaluate_targets
from aigi.benchmarks.timing import InputPool, latency_summary_ms, measure, percentile
from aigi.errors import AigiError

REPO_ROOT = Path(__file__).resolve().parents[1]

PROMETHEUS_SAMPLE = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="aigi",version="1"} 10
nv_inference_request_success{model="aigi_preprocess",version="1"} 10
nv_inference_request_success{model="aigi_cpu",version="1"} 10
nv_inference_request_failure{model="aigi_cpu",version="1"} 0
nv_inference_count{model="aigi_cpu",version="1"} 80
nv_inference_exec_count{model="aigi_cpu",version="1"} 5
nv_inference_exec_count{model="aigi_preprocess",version="1"} 10
nv_inference_count{model="aigi_preprocess",version="1"} 80
nv_inference_request_duration_us{model="aigi",version="1"} 100000
nv_inference_queue_duration_us{model="aigi",version="1"} 60000
nv_inference_compute_infer_duration_us{model="aigi",version="1"} 90000
nv_inference_request_duration_us{model="aigi_cpu",version="1"} 70000
nv_inference_queue_duration_us{model="aigi_cpu",version="1"} 20000
nv_inference_compute_input_duration_us{model="aigi_cpu",version="1"} 1000
nv_inference_compute_infer_duration_us{model="aigi_cpu",version="1"} 45000
nv_inference_compute_output_duration_us{model="aigi_cpu",version="1"} 4000
nv_inference_queue_duration_us{model="aigi_preprocess",version="1"} 5000
nv_inference_compute_infer_duration_us{model="aigi_preprocess",version="1"} 15000
nv_cpu_utilization 0.5
nv_inference_pending_request_count{model="aigi_cpu",version="1",label="with \\"quotes\\""} 0
"""

PERF_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "2,160.4,69,1230,3299,43,4719,5,9,9482,9617,10746,10832\n"
)


def _write_images(root: Path, count: int = 6) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels = rng.integers(0, 256, (232 + 8 * index, 240, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{index}.{'png' if index % 2 else 'jpg'}")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    return root


def _run_cli(argv: list[str]) -> int:
    from aigi.cli import main

    return main(argv)


# -- timing -------------------------------------------------------------------------------------------------------


def test_percentile_and_summary_match_numpy_when_given_latencies() -> None:
    values = [0.010, 0.020, 0.030, 0.040, 0.100]
    assert percentile(values, 50) == pytest.approx(0.030)
    assert percentile([], 50) != percentile([], 50)  # NaN for no samples
    summary = latency_summary_ms(values)
    assert summary["p50_ms"] == pytest.approx(30.0)
    assert summary["p90_ms"] == pytest.approx(float(np.percentile(np.array(values) * 1e3, 90)))
    assert summary["p99_ms"] <= summary["max_ms"] == pytest.approx(100.0)
    assert summary["mean_ms"] == pytest.approx(40.0)


def test_measure_counts_requests_and_rotates_inputs_when_streams_run_concurrently() -> None:
    seen: dict[int, list[int]] = {}
    lock = threading.Lock()

    def call(batch: int) -> int:
        with lock:
            seen.setdefault(threading.get_ident(), []).append(batch)
        time.sleep(0.001)
        return batch

    opened = []
    result = measure(
        call,
        InputPool([0, 1, 2, 3], batch_size=8),
        concurrency=2,
        warmup=2,
        iters=20,
        on_window=lambda: opened.append(1),
    )
    assert result.requests == 20 and result.images == 160 and result.errors == 0
    assert result.concurrency == 2 and opened == [1]
    assert result.images_per_s > 0 and result.wall_s > 0
    for sequence in seen.values():
        assert len(set(sequence)) > 1, "each stream must cycle through several batches"
        assert all(a != b for a, b in zip(sequence, sequence[1:], strict=False)), "no batch twice in a row"
    assert sum(len(s) for s in seen.values()) == 20 + 2 * 2  # warm-up calls ran but were not counted


def test_measure_reports_errors_when_calls_raise() -> None:
    def call(batch: int) -> None:
        if batch == 1:
            raise ValueError("bad batch")

    result = measure(call, InputPool([0, 1], batch_size=1), warmup=0, iters=6)
    assert result.requests == 3 and result.errors == 3
    assert "ValueError: bad batch" in result.first_error


def test_measure_gives_up_when_a_stream_hangs() -> None:
    release = threading.Event()
    calls = []

    def call(batch: int) -> None:
        calls.append(batch)
        if len(calls) > 2:
            release.wait()  # hangs until the test ends

    try:
        result = measure(call, InputPool([0, 1], batch_size=1), warmup=1, duration_s=0.05, min_iters=50, timeout_s=0.5)
        assert result.errors >= 1 and "still busy" in result.first_error
        hung_warmup = measure(lambda b: release.wait(), InputPool([0, 1], 1), warmup=1, iters=1, timeout_s=0.3)
        assert hung_warmup.requests == 0 and "warm-up still busy" in hung_warmup.first_error
    finally:
        release.set()


# -- parsers and small helpers ------------------------------------------------------------------------------------


def test_parse_prometheus_reads_labels_and_counters_when_given_triton_metrics() -> None:
    samples = metrics_scrape.parse_prometheus(PROMETHEUS_SAMPLE)
    assert any(s.name == "nv_cpu_utilization" and s.value == 0.5 for s in samples)
    quoted = [s for s in samples if s.name == "nv_inference_pending_request_count"][0]
    assert quoted.label("label") == 'with "quotes"'
    counters = metrics_scrape.model_counters(samples)
    assert set(counters) == {"aigi", "aigi_preprocess", "aigi_cpu"}
    assert counters["aigi_cpu"]["nv_inference_count"] == 80


def test_split_latency_divides_server_time_per_client_request_when_ensemble_called() -> None:
    after = metrics_scrape.model_counters(metrics_scrape.parse_prometheus(PROMETHEUS_SAMPLE))
    delta = metrics_scrape.counter_delta({}, after)
    split = metrics_scrape.split_latency(delta, "aigi", client_mean_latency_ms=12.0)
    assert split["requests"] == 10
    assert split["server_request_ms"] == pytest.approx(10.0)
    assert split["network_marshal_ms"] == pytest.approx(2.0)
    # the ensemble's own counters summarize its steps: queue and compute come from the steps only
    assert split["queue_ms"] == pytest.approx((20000 + 5000) / 10 / 1e3)
    assert split["compute_ms"] == pytest.approx((1000 + 45000 + 4000 + 15000) / 10 / 1e3)
    assert split["per_model"]["aigi_cpu"]["avg_batch"] == pytest.approx(16.0)
    assert metrics_scrape.split_latency(delta, "other_model", 1.0) == {}
    assert metrics_scrape.counter_delta(after, after) == {}


def test_perf_analyzer_csv_becomes_report_rows_when_parsed() -> None:
    (row,) = perf_analyzer.parse_csv(PERF_CSV, "aigi_cpu", batch=8)
    assert row["concurrency"] == 2 and row["batch"] == 8
    assert row["images_per_s"] == pytest.approx(160.4)
    assert row["p50_ms"] == pytest.approx(9.482) and row["p99_ms"] == pytest.approx(10.832)
    assert row["queue_ms"] == pytest.approx(3.299)
    assert row["compute_ms"] == pytest.approx((43 + 4719 + 5) / 1e3)
    command = perf_analyzer.build_command(
        "aigi_cpu", "127.0.0.1:8001", "grpc", 8, 2, "out.csv", shared_memory=True, output_bytes=64
    )
    assert command[:3] == ["perf_analyzer", "-m", "aigi_cpu"]
    assert "--concurrency-range" in command and "2:2" in command and "system" in command


def test_vit_gflops_matches_published_figures_when_given_presets() -> None:
    from aigi.training.presets import PRESETS

    for name in ("vit-b-32", "vit-b-16", "vit-l-14"):
        preset = PRESETS[name]
        assert vit_gflops(preset.vision_config_dict()) == pytest.approx(preset.gflops, rel=0.02), name


def test_select_runtimes_matches_patterns_and_refuses_unknown_names() -> None:
    names = [spec.name for spec in select_runtimes("ort-cpu-*,torch-eager-fp32")]
    assert names == ["torch-eager-fp32", "ort-cpu-fp32", "ort-cpu-int8"]
    assert len(select_runtimes(None)) == len(select_runtimes("all")) > 10
    with pytest.raises(AigiError, match="matches no runtime"):
        select_runtimes("tensorflow-*")


def test_targets_report_ratio_and_verdict_when_cells_ran() -> None:
    def cell(runtime: str, batch: int, conc: int, ips: float) -> dict:
        return {"runtime": runtime, "batch": batch, "concurrency": conc, "images_per_s": ips, "status": "ok"}

    cells = [
        cell("torch-eager-fp32", 8, 1, 10.0),
        cell("triton-tensor-grpc-int8", 8, 2, 30.0),
        cell("triton-tensor-grpc-shm-int8", 8, 2, 26.0),
        cell("ort-cpu-fp32", 8, 1, 20.0),
    ]
    int8, fp32 = evaluate_targets(cells, {"triton-tensor-grpc-int8": {"decision_agreement": 0.995}})
    assert int8["met"] is True and int8["ratio"] == pytest.approx(3.0)
    assert int8["runtime"] == "triton-tensor-grpc-int8"
    assert fp32["met"] is None and "not measured" in fp32["reason"]
    low_agreement = evaluate_targets(cells, {"triton-tensor-grpc-int8": {"decision_agreement": 0.9}})[0]
    assert low_agreement["met"] is False


# -- end to end ---------------------------------------------------------------------------------------------------


def test_bench_writes_json_markdown_and_plots_when_run_quick_on_tiny_with_torch_and_ort(tmp_path: Path) -> None:
    images = _write_images(tmp_path / "images")
    out = tmp_path / "out"
    argv = ["-q", "bench", "--model", "tiny", "--runtimes", "torch-*,ort-*", "--quick", "--batch-sizes", "1,2"]
    argv += ["--iters", "2", "--images", str(images), "--agreement-images", "6", "--out", str(out)]
    assert _run_cli(argv) == 0

    results = json.loads((out / "bench.json").read_text())
    ok = {(c["runtime"], c["batch"], c["concurrency"]) for c in results["cells"] if c["status"] == "ok"}
    in_process = ("torch-eager-fp32", "ort-cpu-fp32", "ort-cpu-int8")
    assert ok == {(name, batch, 1) for name in in_process for batch in (1, 2)}
    for cell in results["cells"]:
        assert cell["requests"] == 2 and cell["p50_ms"] > 0 and cell["mem_kind"] == "rss" and cell["peak_mem_mb"] > 0
    baseline = [c for c in results["cells"] if c["runtime"] == "torch-eager-fp32"]
    assert all(c["speedup"] == pytest.approx(1.0) for c in baseline)

    runtimes = results["runtimes"]
    assert {name for name, entry in runtimes.items() if entry["status"] == "ok"} == set(in_process)
    assert runtimes["torch-autocast-bf16"]["reason"] == "needs a CUDA GPU (none visible)"
    assert "CUDAExecutionProvider" in runtimes["ort-cuda-fp32"]["reason"]
    assert "triton-tensor-grpc-fp32" not in runtimes  # not selected, so not listed

    agreement = results["agreement"]
    assert agreement["ort-cpu-fp32"]["top1_agreement"] == 1.0 and agreement["ort-cpu-fp32"]["images"] == 6
    assert agreement["ort-cpu-fp32"]["max_abs_dp_fake"] < 1e-4
    assert agreement["ort-cpu-int8"]["weights"] == "random-init"
    assert results["images"]["used"] == 6 and len(results["images"]["corrupt"]) == 1

    env = results["environment"]
    assert env["cpu"] and env["cpu_cores_logical"] >= 1 and "torch" in env["libraries"]
    assert results["model"]["gflops_source"] == "analytic" and results["model"]["gflops"] > 0
    assert [t["met"] for t in results["targets"]] == [None, None]

    markdown = (out / "BENCH.md").read_text()
    for heading in ("## Results", "## Agreement with PyTorch eager FP32", "## Targets", "## Skipped or failed"):
        assert heading in markdown
    assert "`torch-compile-bf16`: skipped: needs a CUDA GPU" in markdown
    for name in ("throughput_vs_batch.png", "latency_vs_concurrency.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_computes_agreement_on_the_checkpoint_architecture_when_model_differs(tmp_path: Path) -> None:
    from aigi.checkpoint import CheckpointMeta
    from aigi.preprocessing import PreprocessSpec
    from aigi.training.model import create_detector, save_checkpoint

    # same tower as the tiny preset but without its residual stem: a different architecture
    detector, arch = create_detector("tiny", num_labels=2, residual_stem=False, seed=3)
    meta = CheckpointMeta(arch, "binary", ["real", "fake"], PreprocessSpec(size=224), threshold=0.5)
    save_checkpoint(tmp_path / "run", detector, meta)
    out = tmp_path / "out"
    argv = ["-q", "bench", "--model", "tiny", "--checkpoint", str(tmp_path / "run"), "--runtimes"]
    argv += ["torch-eager-fp32,ort-cpu-fp32", "--batch-sizes", "1", "--iters", "2", "--warmup", "1"]
    argv += ["--images", str(_write_images(tmp_path / "images", 4)), "--out", str(out)]
    assert _run_cli(argv) == 0

    results = json.loads((out / "bench.json").read_text())
    assert results["model"]["weights"] == "random-init"
    assert results["agreement_model"]["separate"] is True
    assert results["agreement_model"]["weights"] == "checkpoint"
    entry = results["agreement"]["ort-cpu-fp32"]
    assert entry["separate"] is True and entry["weights"] == "checkpoint" and entry["top1_agreement"] == 1.0
    assert "measured separately" in (out / "BENCH.md").read_text()


def test_bench_fails_with_one_line_when_model_is_not_a_preset(tmp_path: Path, capsys) -> None:
    assert _run_cli(["bench", "--model", "resnet-50", "--out", str(tmp_path)]) != 0
    assert "is not a preset" in capsys.readouterr().err


def test_bench_lists_runtimes_as_skipped_when_the_time_budget_is_spent(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["-q", "bench", "--model", "tiny", "--runtimes", "torch-eager-fp32,ort-cpu-fp32", "--budget", "0"]
    argv += ["--images", str(_write_images(tmp_path / "images", 2)), "--out", str(out)]
    assert _run_cli(argv) == 0
    results = json.loads((out / "bench.json").read_text())
    assert results["cells"] == [] and results["agreement"] == {}
    assert {entry["reason"] for entry in results["runtimes"].values()} == {"time budget of 0 s spent"}
    assert "(no cell ran)" in (out / "BENCH.md").read_text()


def test_bench_list_names_every_runtime_with_its_availability_when_asked(capsys) -> None:
    from aigi.benchmarks.runtimes import RUNTIME_NAMES

    assert _run_cli(["bench", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(RUNTIME_NAMES)
    assert all(" available" in line or " unavailable: " in line for line in lines)


def test_gpu_suite_exits_zero_and_writes_skipped_json_when_no_gpu(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    smi = fake_bin / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'No devices were found' >&2\nexit 6\n")
    smi.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "benchmarks/gpu_suite.sh", str(tmp_path / "out")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU found" in lines[0]
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert skipped["skipped"] is True and "no device" in skipped["reason"]


@pytest.mark.triton
def test_bench_splits_triton_latency_and_agrees_when_serving_the_exported_repo(
    tmp_path: Path, serve_repo: Path, serve_checkpoint: Path
) -> None:
    pytest.importorskip("pytriton")
    out = tmp_path / "out"
    runtimes = "torch-eager-fp32,ort-cpu-fp32,triton-tensor-grpc-fp32,triton-tensor-grpc-shm-fp32,"
    runtimes += "triton-bytes-http-fp32,triton-tensor-grpc-int8"
    argv = ["-q", "bench", "--checkpoint", str(serve_checkpoint), "--repo", str(serve_repo), "--runtimes", runtimes]
    argv += ["--batch-sizes", "1,8", "--concurrency", "1,2", "--iters", "3", "--warmup", "1", "--perf-analyzer"]
    argv += ["--images", str(_write_images(tmp_path / "images", 8)), "--agreement-images", "8", "--out", str(out)]
    assert _run_cli(argv) == 0

    results = json.loads((out / "bench.json").read_text())
    assert results["runtimes"]["triton-tensor-grpc-int8"]["status"] == "skipped"
    assert "int8" in results["runtimes"]["triton-tensor-grpc-int8"]["reason"]
    cells = {(c["runtime"], c["batch"], c["concurrency"]): c for c in results["cells"]}
    for name in ("triton-tensor-grpc-fp32", "triton-tensor-grpc-shm-fp32", "triton-bytes-http-fp32"):
        for batch in (1, 8):
            for conc in (1, 2):
                cell = cells[(name, batch, conc)]
                assert cell["status"] == "ok" and cell["requests"] == 3 and cell["mem_kind"] == "rss-server"
                split = cell["triton"]
                assert split["requests"] >= 3 and split["compute_ms"] > 0 and split["queue_ms"] >= 0
        assert results["agreement"][name]["top1_agreement"] == 1.0
        assert results["agreement"][name]["max_abs_dp_fake"] < 1e-4
    assert ("ort-cpu-fp32", 8, 2) not in cells  # in-process runtimes run one stream
    fp32_target = [t for t in results["targets"] if t["key"] == "triton_fp32_vs_ort"][0]
    assert fp32_target["ratio"] > 0 and fp32_target["met"] in (True, False)
    if perf_analyzer.perf_analyzer_missing():
        assert results["perf_analyzer"] == {"skipped": perf_analyzer.MISSING}
    markdown = (out / "BENCH.md").read_text()
    assert "## Triton's view" in markdown and "network+marshal ms" in markdown
