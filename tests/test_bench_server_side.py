"""The server-side parts of aigi bench that need no server: Triton's summary percentiles and what they cover, the
clamped split, raw latencies, perf_analyzer's input file, stability settings and comparison, the report's lines.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import struct
import sys
from pathlib import Path

import pytest

from aigi.benchmarks import latency_log, metrics_scrape, perf_analyzer, perf_compare, report, report_server
from aigi.benchmarks.cells import BenchCell, CellTiming, TritonSplit
from aigi.benchmarks.server_percentiles import WINDOW_S, WindowTracker, summary_percentiles
from aigi.benchmarks.timing import InputPool, measure

SUMMARIES = """\
# TYPE nv_inference_queue_summary_us summary
nv_inference_queue_summary_us_count{model="aigi_cpu",version="1"} 40
nv_inference_queue_summary_us{model="aigi_cpu",version="1",quantile="0.5"} 120
nv_inference_queue_summary_us{model="aigi_cpu",version="1",quantile="0.9"} 900
nv_inference_queue_summary_us{model="aigi_cpu",version="1",quantile="0.99"} 4000
nv_inference_queue_summary_us{model="aigi_cpu",version="1",quantile="0.999"} 4100
nv_inference_request_summary_us_count{model="aigi_cpu",version="1"} 40
nv_inference_request_summary_us_count{model="aigi_cpu",version="2"} 3
nv_inference_request_summary_us{model="aigi_cpu",version="2",quantile="0.5"} 1
nv_inference_compute_infer_summary_us{model="aigi_cpu",version="1",quantile="0.5"} 50000
nv_inference_compute_infer_summary_us{model="aigi_cpu",version="1",quantile="0.9"} 61000
nv_inference_compute_infer_summary_us{model="aigi_cpu",version="1",quantile="0.99"} Nan
nv_inference_queue_summary_us{model="aigi",version="1",quantile="0.5"} 0
"""


def _cell(runtime: str = "triton-tensor-grpc-int8", ips: float = 22.1, mean_ms: float = 360.0, **extra) -> BenchCell:
    timing = CellTiming(ips, 28, 224, 10.1, 1, 3, 0, mean_ms, mean_ms, mean_ms, mean_ms, mean_ms, mean_ms)
    family = runtime.split("-")[0]
    cell = BenchCell(runtime, family, "int8", "tensor", "grpc", False, 8, 1, "ok", timing)
    for key, value in extra.items():
        setattr(cell, key, value)
    return cell


def test_summary_percentiles_gives_ms_per_model_and_none_for_an_empty_window_when_triton_exports_summaries() -> None:
    found = summary_percentiles(metrics_scrape.parse_prometheus(SUMMARIES))
    assert found["aigi_cpu"]["queue"] == {"p50_ms": 0.12, "p90_ms": 0.9, "p99_ms": 4.0}
    assert found["aigi_cpu"]["compute_infer"] == {"p50_ms": 50.0, "p90_ms": 61.0, "p99_ms": None}  # NaN: no sample
    assert "request" not in found["aigi_cpu"]  # version 2 has no queue quantiles; version 1 (more requests) is kept
    assert found["aigi"]["queue"]["p50_ms"] == 0.0


def test_window_tracker_names_the_earlier_cells_still_inside_the_sixty_second_window() -> None:
    tracker = WindowTracker()
    tracker.record("m", ["aigi", "aigi_cpu"], "bytes b8 c1", ended_at=100.0)
    tracker.record("m", ["aigi_cpu"], "tensor b8 c1", ended_at=130.0)
    tracker.record("other", ["aigi_cpu"], "elsewhere", ended_at=150.0)
    assert tracker.earlier_cells("m", ["aigi_cpu"], read_at=150.0) == ["bytes b8 c1", "tensor b8 c1"]
    assert tracker.earlier_cells("m", ["aigi_cpu"], read_at=100.0 + WINDOW_S + 1) == ["tensor b8 c1"]
    assert tracker.earlier_cells("m", ["aigi_preprocess"], read_at=150.0) == []
    slept: list[float] = []
    assert tracker.wait_until_clear("nowhere", sleep=slept.append) == 0.0 and slept == []


def test_split_latency_clamps_a_negative_network_time_to_zero_and_keeps_what_it_measured() -> None:
    delta = {
        "aigi_cpu": {
            **dict.fromkeys(metrics_scrape.COUNTERS, 0.0),
            "nv_inference_request_success": 10,
            "nv_inference_count": 80,
            "nv_inference_exec_count": 10,
            "nv_inference_request_duration_us": 4_220_900,
            "nv_inference_compute_infer_duration_us": 4_210_000,
        }
    }
    split = metrics_scrape.split_latency(delta, "aigi_cpu", client_mean_latency_ms=422.0)
    assert split["network_marshal_ms"] == 0.0
    assert split["clamped"] == {"network_marshal_ms": pytest.approx(-0.09)}
    typed = TritonSplit.from_split(split)
    assert typed.to_dict()["clamped"] == split["clamped"]
    assert report_server.split_value(typed, "network_marshal_ms") == "0.00*"
    notes = report_server.clamp_notes([_cell(triton=typed)])
    assert "network_marshal_ms -0.09 ms" in notes[1]


def test_measure_keeps_one_record_per_request_and_latency_log_writes_them_when_streams_run(tmp_path: Path) -> None:
    result = measure(lambda batch: batch, InputPool([0, 1, 2], batch_size=4), concurrency=2, warmup=1, iters=9)
    assert len(result.records) == result.requests == 9
    assert {record.stream for record in result.records} <= {0, 1}
    for stream in (0, 1):  # a stream sends its next request only once the previous one has come back
        mine = [record for record in result.records if record.stream == stream]
        pairs = itertools.pairwise(mine)
        assert all(later.start_s >= earlier.start_s + earlier.latency_s - 1e-9 for earlier, later in pairs)
    name = latency_log.cell_file_name("ort-cpu-int8", 4, 2)
    path = latency_log.write_latencies(tmp_path, name, result.records)
    assert path == tmp_path / "latencies" / "ort-cpu-int8_b4_c2.csv"
    assert path.read_text().splitlines()[0] == "request,stream,start_ms,latency_ms"
    read = latency_log.read_latencies_ms(path)
    assert read.tolist() == pytest.approx([record.latency_s * 1e3 for record in result.records], abs=1e-3)


def test_perf_analyzer_input_file_serializes_each_image_with_its_length_prefix_when_written(tmp_path: Path) -> None:
    images = [b"\xff\xd8\xff\xe0 a jpeg", b"\x89PNG a png"]
    data = json.loads(perf_analyzer.bytes_input_file(images, tmp_path / "images.json").read_text())["data"]
    assert len(data) == 2  # one batch element per entry: perf_analyzer fills -b N from N consecutive entries
    for entry, image in zip(data, images, strict=True):
        raw = base64.b64decode(entry["image"]["b64"])
        assert struct.unpack("<I", raw[:4])[0] == len(image) and raw[4:] == image


def test_perf_analyzer_command_asks_for_count_windows_and_stability_when_built() -> None:
    command = perf_analyzer.build_command("aigi", "h:1", "grpc", 8, 2, "o.csv", window_requests=14)
    flags = dict(zip(command[3::2], command[4::2], strict=False))
    assert command[command.index("--measurement-mode") + 1] == "count_windows"
    assert command[command.index("--measurement-request-count") + 1] == "14"
    assert command[command.index("--stability-percentage") + 1] == str(perf_analyzer.STABILITY_PCT)
    assert command[command.index("--max-trials") + 1] == str(perf_analyzer.MAX_TRIALS)
    assert "--measurement-interval" not in command and flags
    assert perf_analyzer.window_requests(None) == perf_analyzer.MIN_WINDOW_REQUESTS
    assert perf_analyzer.window_requests(28) == 14


UNSTABLE_TOOL = """\
import json, sys
args = sys.argv[1:]
with open(CALLS, "a") as calls:
    calls.write(json.dumps(args) + "\\n")
if args[args.index("--stability-percentage") + 1] == "25":
    print("Failed to obtain stable measurement within 6 measurement windows for concurrency 2.", file=sys.stderr)
    print("Failed to obtain stable measurement.", file=sys.stderr)
    sys.exit(2)
with open(args[args.index("-f") + 1], "w") as out:
    out.write("Concurrency,Inferences/Second,p50 latency\\n2,24.7,600000\\n")
"""


def test_perf_analyzer_measures_again_with_relaxed_stability_when_a_point_does_not_settle(
    tmp_path: Path, monkeypatch
) -> None:
    from types import SimpleNamespace

    folder = tmp_path / "bin"
    folder.mkdir()
    tool = folder / "perf_analyzer"
    tool.write_text(f"#!{sys.executable}\nCALLS = {str(folder / 'calls.jsonl')!r}\n{UNSTABLE_TOOL}")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    served = SimpleNamespace(endpoints={"grpc": "h:1"}, num_labels=2, admin_headers={})
    runtime = SimpleNamespace(input_kind="tensor", served=served, spec=SimpleNamespace(option={"protocol": "grpc"}.get))
    runtime.triton_view = lambda: ("http://h:2/metrics", "aigi_int8_cpu")
    swept = perf_analyzer.sweep({"triton-tensor-grpc-int8": runtime}, [b"x"], tmp_path / "pa", (8,), (2,), 10.0)
    assert swept["errors"] == []
    (row,) = swept["rows"]
    assert row["images_per_s"] == 24.7 and row["stability_pct"] == perf_analyzer.RELAXED_STABILITY_PCT
    calls = [json.loads(line) for line in (folder / "calls.jsonl").read_text().splitlines()]
    assert [call[call.index("--stability-percentage") + 1] for call in calls] == ["25", "50"]


def test_perf_compare_agrees_within_ten_percent_and_says_why_when_it_does_not() -> None:
    split = TritonSplit(requests=28, server_request_ms=340.0, queue_ms=0.2, compute_ms=330.0, network_marshal_ms=20.0)
    cells = [
        _cell(ips=22.1, mean_ms=360.0, triton=split, client_cpu_ms=30.0),
        _cell("triton-tensor-grpc-fp32", ips=17.0),
    ]
    rows = [
        {"runtime": "triton-tensor-grpc-int8", "batch": 8, "concurrency": 1, "images_per_s": 24.7,
         "client_send_ms": 2.0, "network_server_ms": 3.0, "client_recv_ms": 0.5, "compute_ms": 320.0,
         "stability_pct": 25},
        {"runtime": "triton-tensor-grpc-fp32", "batch": 8, "concurrency": 1, "images_per_s": 17.5},
        {"runtime": "triton-bytes-grpc-int8", "batch": 8, "concurrency": 1, "images_per_s": 30.0},  # no aigi cell
    ]  # fmt: skip
    slow, close = perf_compare.compare(cells, rows, cpu_cores=2)
    assert (close["agree"], close["why"]) == (True, [])
    assert slow["agree"] is False and slow["ratio"] == pytest.approx(22.1 / 24.7)
    assert "aigi's Python client 20.0 ms" in slow["why"][0] and "perf_analyzer 5.5 ms" in slow["why"][0]
    assert any("30.0 ms of CPU per request, on a machine of 2 cores" in why for why in slow["why"])
    assert any("one random tensor" in why for why in slow["why"])
    lines = report_server.comparison_lines({"comparison": [slow, close]})
    assert "| triton-tensor-grpc-int8 | 8 | 1 | 22.1 | 24.7 | 0.89x | **no**: " in "\n".join(lines)


def test_bench_md_carries_both_baseline_figures_when_the_run_checked_its_baseline() -> None:
    committed = Path(__file__).resolve().parents[1] / "benchmarks/results/2026-11-28_cpu-2core_vit-b-32/bench.json"
    results = report.from_json(json.loads(committed.read_text()))
    results["baseline_check"] = {
        "runtime": "torch-eager-fp32",
        "batch": 8,
        "in_harness_images_per_s": 8.1,
        "fresh_process_images_per_s": 9.9,
        "ratio": 8.1 / 9.9,
        "fresh_process": {"torch_threads": 2, "cpu_ms_per_request": 1500.0},
        "harness": {"torch_threads": 2, "servers_alive": 1, "server_cpu_s_during_cell": 0.4, "cell_wall_s": 10.0},
    }
    line = [row for row in report.render_markdown(results).splitlines() if row.startswith("- Baseline check")]
    assert len(line) == 1
    assert "8.10 images/s in this process, 9.90 in a fresh process right after (0.82x" in line[0]
    failed = {**results, "baseline_check": {**results["baseline_check"], "fresh_process": {"error": "exited with 1"}}}
    assert "not measured: exited with 1" in report.render_markdown(failed)
