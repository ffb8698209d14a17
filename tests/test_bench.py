"""The benchmark harness (aigi bench): timing helpers, Prometheus and perf_analyzer parsing, reports, the GPU suite.

The end-to-end runs use the random-init ``tiny`` preset on the CPU and a handful of requests per cell; nothing
asserts on speed, only on what was measured, skipped and written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigi.benchmarks import metrics_scrape, perf_analyzer, report
from aigi.benchmarks.cells import BenchCell, CellTiming, RequestsMismatch, TritonSplit
from aigi.benchmarks.flops import vit_gflops
from aigi.benchmarks.runtimes import select_runtimes
from aigi.benchmarks.targets import evaluate_targets
from aigi.benchmarks.timing import InputPool, latency_summary_ms, measure, percentile
from aigi.errors import AigiError

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMITTED_RUN = REPO_ROOT / "benchmarks" / "results" / "2026-11-28_cpu-2core_vit-b-32"
# the keys (in order) of an ok cell in bench.json, as every published bench.json has them
OK_CELL_KEYS = [
    "runtime", "family", "precision", "path", "protocol", "shared_memory", "batch", "concurrency",
    "images_per_s", "requests", "images", "wall_s", "warmup", "errors", "p50_ms", "p90_ms", "p99_ms",
    "mean_ms", "min_ms", "max_ms", "status", "peak_mem_mb", "mem_kind", "achieved_tflops", "peak_fraction",
]  # fmt: skip

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
    assert math.isnan(percentile([], 50))  # NaN for no samples
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


def _ok_cell(runtime: str, batch: int, conc: int, ips: float, status: str = "ok") -> BenchCell:
    timing = CellTiming(ips, 4, 4 * batch, 4 * batch / ips, conc, 1, 0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    return BenchCell(runtime, runtime.split("-")[0], "fp32", "tensor", None, False, batch, conc, status, timing)


@pytest.mark.parametrize(
    ("int8_ips", "shm_ips", "agreed", "runtime", "ratio", "met"),
    [
        (30.0, 26.0, 0.995, "triton-tensor-grpc-int8", 3.0, True),
        (30.0, 26.0, 0.9, "triton-tensor-grpc-int8", 3.0, False),  # fast enough, but agreement below 99%
        (30.0, 26.0, None, "triton-tensor-grpc-int8", 3.0, False),  # no agreement measured: not met
        (20.0, 24.0, 0.995, "triton-tensor-grpc-shm-int8", 2.4, False),  # the faster variant is judged; too slow
        (20.0, 25.0, 1.0, "triton-tensor-grpc-shm-int8", 2.5, True),  # exactly the ratio needed
    ],
)
def test_int8_target_is_met_exactly_when_its_cells_reach_the_ratio_and_agreement(
    int8_ips: float, shm_ips: float, agreed: float | None, runtime: str, ratio: float, met: bool
) -> None:
    cells = [
        _ok_cell("torch-eager-fp32", 8, 1, 10.0),
        _ok_cell("torch-eager-fp32", 8, 2, 1000.0),  # the reference is the one-stream cell
        _ok_cell("triton-tensor-grpc-int8", 8, 2, int8_ips),
        _ok_cell("triton-tensor-grpc-int8", 8, 1, 1000.0),  # another concurrency: not the target's cell
        _ok_cell("triton-tensor-grpc-shm-int8", 8, 2, shm_ips),
        _ok_cell("triton-tensor-grpc-shm-int8", 1, 2, 1000.0),  # another batch size
    ]
    agreement = {runtime: {"decision_agreement": agreed, "weights": "checkpoint"}} if agreed is not None else {}
    int8 = evaluate_targets(cells, agreement)[0]
    assert int8["key"] == "triton_int8_vs_torch"
    assert int8["runtime"] == runtime and int8["ratio"] == pytest.approx(ratio)
    assert int8["images_per_s"] == max(int8_ips, shm_ips) and int8["reference_images_per_s"] == 10.0
    assert int8["decision_agreement"] == agreed
    assert int8["met"] is met


def test_fp32_target_judges_one_stream_against_ort_and_ignores_failed_cells() -> None:
    cells = [
        _ok_cell("ort-cpu-fp32", 8, 1, 20.0),
        _ok_cell("triton-tensor-grpc-fp32", 8, 1, 17.0),  # 0.85x: exactly enough
        _ok_cell("triton-tensor-grpc-shm-fp32", 8, 1, 40.0, status="error"),  # failed: never judged
        _ok_cell("triton-tensor-grpc-shm-fp32", 8, 2, 40.0),  # two streams: not this target's cell
    ]
    int8, fp32, _bytes = evaluate_targets(cells, {})
    assert fp32["met"] is True and fp32["runtime"] == "triton-tensor-grpc-fp32"
    assert fp32["ratio"] == pytest.approx(0.85)
    cells[1] = _ok_cell("triton-tensor-grpc-fp32", 8, 1, 16.9)
    assert evaluate_targets(cells, {})[1]["met"] is False
    assert int8["met"] is None and int8["reason"] == "not measured: no cell for torch-eager-fp32 at batch 8"
    cells.append(_ok_cell("torch-eager-fp32", 8, 1, 10.0))
    missing = evaluate_targets(cells, {})[0]
    assert missing["met"] is None and "triton-tensor-grpc-int8 or triton-tensor-grpc-shm-int8" in missing["reason"]


@pytest.mark.parametrize(("bytes_ips", "met"), [(90.0, True), (89.9, False)])
def test_bytes_path_target_needs_ninety_percent_of_the_tensor_path_when_both_ran_one_stream(
    bytes_ips: float, met: bool
) -> None:
    cells = [
        _ok_cell("triton-tensor-grpc-int8", 8, 1, 100.0),
        _ok_cell("triton-bytes-grpc-int8", 8, 1, bytes_ips),
        _ok_cell("triton-bytes-grpc-int8", 8, 2, 500.0),  # two streams: not this target's cell
    ]
    verdict = evaluate_targets(cells, {})[2]
    assert verdict["key"] == "triton_bytes_vs_tensor_int8" and verdict["runtime"] == "triton-bytes-grpc-int8"
    assert verdict["ratio"] == pytest.approx(bytes_ips / 100.0) and verdict["met"] is met


def test_bench_md_shows_each_ensemble_step_when_a_cell_went_through_the_ensemble() -> None:
    run = COMMITTED_RUN.parent / "2026-11-30_cpu-2core_bytes_path"
    text = (run / "BENCH.md").read_text()
    assert "## Ensemble steps" in text
    for model in ("aigi_int8_preprocess", "aigi_int8_cpu"):
        assert f"| triton-bytes-grpc-int8 | 8 | 1 | {model} |" in text
    assert text == report.render_markdown(report.from_json(json.loads((run / "bench.json").read_text())))


# -- cells and reports --------------------------------------------------------------------------------------------


def test_bench_cells_round_trip_every_committed_cell_key_for_key() -> None:
    data = json.loads((COMMITTED_RUN / "bench.json").read_text())
    assert data["cells"]
    for raw in data["cells"]:
        cell = BenchCell.from_dict(raw)
        assert list(cell.to_dict().items()) == list(raw.items())  # same keys, order and values
        assert list(raw)[: len(OK_CELL_KEYS)] == OK_CELL_KEYS
        assert cell.ok and cell.images_per_s == raw["images_per_s"] and cell.timing.p99_ms == raw["p99_ms"]
    triton = [BenchCell.from_dict(raw).triton for raw in data["cells"] if "triton" in raw]
    assert len(triton) == 8 and all(split.compute_ms > 0 and split.avg_server_batch == 8.0 for split in triton)
    assert {model for split in triton for model in split.per_model} == {"aigi_cpu", "aigi_int8_cpu"}


def test_bench_cells_write_failed_cells_and_partial_triton_splits_as_the_harness_always_did() -> None:
    identity = ("ort-cpu-int8", "ort", "int8", "tensor", None, False, 8, 1)
    unprepared = BenchCell(*identity).failed("preparing inputs: ValueError: no")
    assert unprepared.to_dict() == {
        **dict(zip(OK_CELL_KEYS[:8], identity, strict=True)),
        "status": "error",
        "error": "preparing inputs: ValueError: no",
        "speedup": None,
    }
    nan = float("nan")
    timing = CellTiming(nan, 0, 0, 0.5, 1, 3, 2, nan, nan, nan, nan, nan, nan, first_error="RuntimeError: x")
    failed = BenchCell(*identity, timing=timing).failed("RuntimeError: x")
    written = failed.to_dict()
    assert list(written) == [*OK_CELL_KEYS[:14], "first_error", *OK_CELL_KEYS[14:21], "error", "speedup"]
    assert written["first_error"] == written["error"] == "RuntimeError: x"
    again = BenchCell.from_dict(json.loads(json.dumps(written)))
    assert list(again.to_dict()) == list(written) and again.timing.first_error == "RuntimeError: x"
    # the entry model saw no request: an empty split, with the mismatch when the counts disagreed
    assert TritonSplit.from_split({}).to_dict() == {}
    lagging = TritonSplit(requests_mismatch=RequestsMismatch(client=3, server=0.0))
    assert lagging.to_dict() == {"requests_mismatch": {"client": 3, "server": 0.0}}
    assert TritonSplit.from_split(lagging.to_dict()) == lagging


def test_committed_bench_md_is_exactly_what_the_renderer_makes_of_its_bench_json(tmp_path: Path) -> None:
    copy = tmp_path / "bench.json"
    shutil.copy(COMMITTED_RUN / "bench.json", copy)
    assert report.main(["--from", str(copy)]) == 0  # python -m aigi.benchmarks.report --from bench.json
    assert (tmp_path / "BENCH.md").read_text() == (COMMITTED_RUN / "BENCH.md").read_text()
    assert copy.read_bytes() == (COMMITTED_RUN / "bench.json").read_bytes()  # only the Markdown is written


def test_target_row_says_where_agreement_was_measured_when_not_on_the_speed_cells_model() -> None:
    results = report.from_json(json.loads((COMMITTED_RUN / "bench.json").read_text()))
    assert (results["model"]["name"], results["model"]["weights"]) == ("vit-b-32", "random-init")
    assert results["agreement_model"] == {**results["agreement_model"], "architecture": "tiny", "separate": True}
    int8_row = [line for line in report.render_markdown(results).splitlines() if line.startswith("| Triton INT8")]
    assert len(int8_row) == 1
    assert "17.2 images/s on vit-b-32 with random-init weights)" in int8_row[0]
    assert "agreement 100.00% measured on tiny with checkpoint weights (not the speed cells' model)" in int8_row[0]
    fp32_row = [line for line in report.render_markdown(results).splitlines() if line.startswith("| Triton FP32")]
    assert "measured on" not in fp32_row[0]  # that target needs no agreement

    # agreement on the speed cells' own model: the row names no other model
    same = {
        name: {**entry, "separate": False, "weights": "random-init"} for name, entry in results["agreement"].items()
    }
    row = [
        line for line in report.render_markdown({**results, "agreement": same}).splitlines() if "Triton INT8" in line
    ]
    assert "measured on" not in row[0] and " on vit-b-32" not in row[0]
    assert "images/s), agreement 100.00% | **met** |" in row[0]


def test_report_lists_failed_cells_and_writes_them_back_to_bench_json(tmp_path: Path) -> None:
    results = report.from_json(json.loads((COMMITTED_RUN / "bench.json").read_text()))
    broken = BenchCell("ort-cpu-int8", "ort", "int8", "tensor", None, False, 32, 1).failed("preparing inputs: boom")
    results["cells"] = [*results["cells"], broken]
    results["plots"] = []
    markdown = report.render_markdown(results)
    assert "## Skipped or failed\n\n- `ort-cpu-int8` batch 32 conc 1: failed: preparing inputs: boom" in markdown
    assert "| ort-cpu-int8 | 32 |" not in markdown  # failed cells stay out of the results table
    written = report.to_json(results)
    assert written["cells"][-1] == broken.to_dict() and written["cells"][-1]["error"] == "preparing inputs: boom"
    assert (
        json.loads(json.dumps(written))["cells"][:-1] == json.loads((COMMITTED_RUN / "bench.json").read_text())["cells"]
    )


FAKE_PERF_ANALYZER = """\
import json, sys

args = sys.argv[1:]
with open(CALLS, "a") as calls:
    calls.write(json.dumps(args) + "\\n")
if EXIT_CODE:
    print("error: model not ready", file=sys.stderr)
    sys.exit(EXIT_CODE)
header, row = CSV.splitlines()
concurrency = args[args.index("--concurrency-range") + 1].split(":")[0]
with open(args[args.index("-f") + 1], "w") as out:
    out.write(header + "\\n" + concurrency + row[row.index(","):] + "\\n")
"""


def _fake_perf_analyzer(folder: Path, exit_code: int = 0) -> Path:
    """A ``perf_analyzer`` on PATH: records its argv in calls.jsonl, writes PERF_CSV (at the asked concurrency)."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / "perf_analyzer"
    settings = f"CALLS, EXIT_CODE, CSV = {str(folder / 'calls.jsonl')!r}, {exit_code}, {PERF_CSV!r}\n"
    tool.write_text(f"#!{sys.executable}\n{settings}{FAKE_PERF_ANALYZER}")
    tool.chmod(0o755)
    return tool


def _triton_like(name: str, input_kind: str, shm: bool) -> object:
    from types import SimpleNamespace

    options = {"protocol": "grpc", "shm": shm}
    served = SimpleNamespace(endpoints={"grpc": "127.0.0.1:1"}, num_labels=2, admin_headers={"triton-admin-key": "k"})
    return SimpleNamespace(
        name=name,
        input_kind=input_kind,
        served=served,
        spec=SimpleNamespace(option=options.get),
        triton_view=lambda: ("http://127.0.0.1:2/metrics", "aigi" if input_kind == "bytes" else "aigi_cpu"),
    )


def test_perf_analyzer_sweep_reports_a_row_per_point_when_the_tool_is_on_path(tmp_path: Path, monkeypatch) -> None:
    _fake_perf_analyzer(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert perf_analyzer.perf_analyzer_missing() is None
    runtimes = {
        "triton-tensor-grpc-shm-fp32": _triton_like("triton-tensor-grpc-shm-fp32", "tensor", shm=True),
        "triton-bytes-grpc-fp32": _triton_like("triton-bytes-grpc-fp32", "bytes", shm=False),
        "ort-cpu-fp32": type("InProcess", (), {"triton_view": lambda self: None})(),  # not served: left out
    }
    swept = perf_analyzer.sweep(runtimes, [b"\x89PNG one", b"two"], tmp_path / "pa", (1, 8), (1, 2), 0.5)
    assert swept["errors"] == []
    points = [(row["runtime"], row["model"], row["batch"], row["concurrency"]) for row in swept["rows"]]
    assert points == [
        (name, model, batch, conc)
        for name, model in (("triton-tensor-grpc-shm-fp32", "aigi_cpu"), ("triton-bytes-grpc-fp32", "aigi"))
        for batch in (1, 8)
        for conc in (1, 2)
    ]
    assert all(
        row["images_per_s"] == pytest.approx(160.4) and row["p99_ms"] == pytest.approx(10.832) for row in swept["rows"]
    )
    calls = [json.loads(line) for line in (tmp_path / "bin" / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 8 and all(call[call.index("--measurement-mode") + 1] == "count_windows" for call in calls)
    shm_calls, bytes_calls = calls[:4], calls[4:]
    assert all("--shared-memory" in call and "triton-admin-key:k" in call for call in shm_calls)
    assert all(call[call.index("--input-data") + 1] == "random" for call in shm_calls)
    assert all(call[call.index("--input-data") + 1].endswith("images.json") for call in bytes_calls)
    assert not any("--shared-memory" in call for call in bytes_calls)


def test_perf_analyzer_sweep_says_why_when_the_tool_fails_or_is_absent(tmp_path: Path, monkeypatch) -> None:
    _fake_perf_analyzer(tmp_path / "bin", exit_code=3)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    runtimes = {"triton-tensor-grpc-fp32": _triton_like("triton-tensor-grpc-fp32", "tensor", shm=False)}
    failed = perf_analyzer.sweep(runtimes, [b"x"], tmp_path / "pa", (8,), (2,), 1.0)
    assert failed == {
        "rows": [],
        "errors": ["triton-tensor-grpc-fp32 b8 c2: perf_analyzer exited with 3: error: model not ready"],
    }
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert perf_analyzer.perf_analyzer_missing() == perf_analyzer.MISSING
    assert perf_analyzer.sweep(runtimes, [b"x"], tmp_path / "pa2", (8,), (2,), 1.0) == {
        "skipped": perf_analyzer.MISSING
    }
    assert not (tmp_path / "pa2").exists()


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
        # bench.json's published cell format, then what it gained: CPU per request and the raw latencies' file
        assert list(cell) == [*OK_CELL_KEYS, "speedup", "client_cpu_ms", "latencies_file"]
        assert len((out / cell["latencies_file"]).read_text().splitlines()) == 1 + cell["requests"]
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
    assert [t["met"] for t in results["targets"]] == [None, None, None]

    # the baseline timed again in a fresh process right after its cell (the sweep has no batch 8: its smallest)
    check = results["baseline_check"]
    assert check["batch"] == 1 and check["in_harness_images_per_s"] > 0 and check["fresh_process_images_per_s"] > 0
    assert check["harness"]["in_process_runtimes_alive"] == sorted(in_process)

    markdown = (out / "BENCH.md").read_text()
    for heading in ("## Results", "## Agreement with PyTorch eager FP32", "## Targets", "## Skipped or failed"):
        assert heading in markdown
    assert "`torch-compile-bf16`: skipped: needs a CUDA GPU" in markdown
    assert "- Baseline check (torch-eager-fp32, batch 1): " in markdown
    for name in ("throughput_vs_batch.png", "latency_vs_concurrency.png", "latency_cdf.png", "latency_split.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in markdown


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
    from aigi.benchmarks.runtimes import RUNTIME_NAMES, RUNTIMES

    assert _run_cli(["bench", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(RUNTIME_NAMES)
    for line, spec in zip(lines, RUNTIMES, strict=True):
        reason = spec.precheck()
        assert line.split(maxsplit=1)[1] == ("available" if reason is None else f"unavailable: {reason}"), line
    assert "torch-eager-fp32" in [line.split()[0] for line in lines if line.endswith(" available")]


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
    markdown = (out / "BENCH.md").read_text()
    assert "## Triton's view" in markdown and "network+marshal ms" in markdown

    # the verdicts follow from these cells: FP32 Triton (the faster variant, one stream) over ORT at batch 8
    int8_target, fp32_target, _bytes_target = results["targets"]
    served = {
        name: cells[(name, 8, 1)]["images_per_s"] for name in ("triton-tensor-grpc-fp32", "triton-tensor-grpc-shm-fp32")
    }
    best = max(served, key=served.__getitem__)
    ratio = served[best] / cells[("ort-cpu-fp32", 8, 1)]["images_per_s"]
    assert fp32_target["runtime"] == best and fp32_target["ratio"] == pytest.approx(ratio)
    assert fp32_target["met"] is (ratio >= 0.85)
    fp32_row = [line for line in markdown.splitlines() if line.startswith("| Triton FP32")][0]
    assert fp32_row.endswith("| **met** |" if ratio >= 0.85 else "| **not met** |")
    assert int8_target["met"] is None and "not measured" in int8_target["reason"]  # the INT8 runtime was skipped

    served_names = ("triton-tensor-grpc-fp32", "triton-tensor-grpc-shm-fp32", "triton-bytes-http-fp32")
    if perf_analyzer.perf_analyzer_missing():
        assert shutil.which("perf_analyzer") is None
        assert results["perf_analyzer"] == {"skipped": perf_analyzer.MISSING}
        assert f"## perf_analyzer\n\nSkipped: {perf_analyzer.MISSING}" in markdown
    else:
        rows = results["perf_analyzer"]["rows"]
        assert results["perf_analyzer"]["errors"] == []
        assert {(row["runtime"], row["batch"], row["concurrency"]) for row in rows} == {
            (name, batch, conc) for name in served_names for batch in (1, 8) for conc in (1, 2)
        }
        assert all(row["images_per_s"] > 0 and row["p50_ms"] > 0 for row in rows)
        assert "## perf_analyzer\n\n| model | batch |" in markdown


def test_bytes_path_has_an_int8_grpc_runtime_when_selected() -> None:
    from aigi.benchmarks.runtimes import select_runtimes

    chosen = {spec.name: spec for spec in select_runtimes("triton-bytes-*")}
    spec = chosen["triton-bytes-grpc-int8"]
    assert (spec.family, spec.precision, spec.option("protocol")) == ("triton", "int8", "grpc")
    assert spec.builder == "triton_runtimes:TritonBytesRuntime"  # the same path as its FP32 sibling, INT8 network
