"""``aigi bench --url`` and ``aigi fault-check --url`` against a Triton server started separately (the session's
``triton_server``, the tiny export of conftest.py): the Triton runtimes run, the in-process ones are skipped with a
reason, every request's latency is kept, Triton's per-model percentiles are reported, and the plots are drawn.
Nothing asserts on speed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from aigi.benchmarks.remote import IN_PROCESS_REASON

RUNTIMES = ("triton-tensor-grpc-fp32", "triton-bytes-http-fp32")
PLOTS = ("latency_cdf.png", "latency_split.png", "throughput_vs_latency.png", "throughput_vs_batch.png")


def _bench(argv: list[str]) -> int:
    from aigi.cli import main

    return main(["-q", "bench", *argv])


def _endpoints(server) -> list[str]:
    return ["--url", f"{server.endpoints['grpc']},{server.endpoints['http']}"]


@pytest.mark.triton
def test_bench_url_measures_a_server_started_elsewhere_with_percentiles_raw_latencies_and_plots(
    triton_server, serve_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = [*_endpoints(triton_server), "--metrics-url", triton_server.endpoints["metrics_url"]]
    argv += ["--runtimes", ",".join(RUNTIMES) + ",torch-eager-fp32", "--batch-sizes", "1,4", "--concurrency", "1,2"]
    argv += ["--iters", "3", "--warmup", "1", "--agreement-images", "8", "--checkpoint", str(serve_checkpoint)]
    assert _bench([*argv, "--out", str(out)]) == 0

    results = json.loads((out / "bench.json").read_text())
    assert results["server"]["started_elsewhere"] is True
    assert results["server"]["models"][0]["entry_model"] == "aigi"
    assert results["runtimes"]["torch-eager-fp32"] == {"status": "skipped", "reason": IN_PROCESS_REASON}
    cells = {(c["runtime"], c["batch"], c["concurrency"]): c for c in results["cells"]}
    assert set(cells) == {(name, b, c) for name in RUNTIMES for b in (1, 4) for c in (1, 2)}
    for key, cell in cells.items():
        assert cell["status"] == "ok" and cell["requests"] == 3 and cell["peak_mem_mb"] is None, key
        with (out / cell["latencies_file"]).open() as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == cell["requests"], key  # one row per measured request
        assert {int(row["stream"]) for row in rows} <= set(range(key[2]))
        split = cell["triton"]
        assert split["network_marshal_ms"] >= 0 and split["queue_ms"] >= 0 and split["compute_ms"] > 0
        percentiles = split["server_percentiles"]
        assert set(percentiles) == ({"aigi", "aigi_preprocess", "aigi_cpu"} if "bytes" in key[0] else {"aigi_cpu"})
        p50, p99 = (percentiles["aigi_cpu"]["compute_infer"][q] for q in ("p50_ms", "p99_ms"))
        assert 0 < p50 <= p99
    assert results["agreement"]["triton-tensor-grpc-fp32"]["top1_agreement"] == 1.0  # PyTorch on --checkpoint

    markdown = (out / "BENCH.md").read_text()
    assert "- Server: started elsewhere" in markdown
    assert "## Server-side percentiles (Triton's summaries, per model)" in markdown
    assert "| triton-bytes-http-fp32 | 4 | 2 | aigi_preprocess |" in markdown
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in markdown  # embedded


@pytest.mark.triton
def test_bench_url_still_runs_the_cells_and_says_why_when_the_metrics_cannot_be_read(
    triton_server, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = [*_endpoints(triton_server), "--metrics-url", "http://127.0.0.1:9/metrics", "--runtimes", RUNTIMES[0]]
    argv += ["--batch-sizes", "1", "--concurrency", "1", "--iters", "2", "--warmup", "1", "--out", str(out)]
    assert _bench(argv) == 0
    (cell,) = json.loads((out / "bench.json").read_text())["cells"]
    assert cell["status"] == "ok" and "could not be read" in cell["triton"]["unavailable"]
    assert (
        "no server-side split: metrics at http://127.0.0.1:9/metrics could not be read"
        in (out / "BENCH.md").read_text()
    )


@pytest.mark.triton
def test_fault_check_url_loads_a_server_started_elsewhere_and_loses_nothing(triton_server, tmp_path: Path) -> None:
    from aigi.benchmarks.load_check import main

    argv = [*_endpoints(triton_server), "--metrics-url", triton_server.endpoints["metrics_url"]]
    code = main([*argv, "--concurrency", "2", "--duration", "2", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "fault_check.json").read_text())
    assert report["fault"] == "none" and report["faults"] == []
    assert report["images_answered"] > 0 and report["images_lost"] == 0 and report["images_wrong"] == 0
    assert report["metrics_read"] is True and report["per_replica"]["r0"]["images_served"] > 0
    assert "answers after every fault" not in report["checks"]
    assert report["passed"] and code == 0, report["checks"]


def test_fault_check_refuses_faults_and_replicas_when_the_server_is_not_ours(tmp_path: Path, capsys) -> None:
    from aigi.benchmarks.load_check import main

    base = ["--url", "127.0.0.1:9", "--out", str(tmp_path)]
    assert main([*base, "--fault", "sigkill"]) != 0
    assert "not ours to kill" in capsys.readouterr().err
    assert main(["--out", str(tmp_path)]) != 0
    assert "give --repo" in capsys.readouterr().err
