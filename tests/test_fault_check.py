"""The fault check with replicas (``aigi fault-check``): fault plans over replicas, the replica meter, the timeline,
the report and plot, and a real run that kills one replica and rolls another under load and loses nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aigi.benchmarks.commands import FAULT_CHOICES
from aigi.benchmarks.fault_check import FAULT_PLANS, fault_targets
from aigi.benchmarks.fault_timeline import ReplicaMeter, build_timeline
from aigi.cli import main as aigi_main


def test_faults_go_to_the_replicas_in_turn_and_one_server_takes_them_all() -> None:
    assert fault_targets("both", 3) == [("sigterm", 1 / 3, 0), ("sigkill", 2 / 3, 1)]
    assert fault_targets("both", 2) == [("sigterm", 1 / 3, 0), ("sigkill", 2 / 3, 1)]
    assert fault_targets("both", 1) == [("sigterm", 1 / 3, 0), ("sigkill", 2 / 3, 0)]
    assert fault_targets("sigkill", 3) == [("sigkill", 0.5, 0)]
    with pytest.raises(ValueError, match="fault must be one of"):
        fault_targets("sigstop", 1)
    with pytest.raises(ValueError, match="at least 1"):
        fault_targets("both", 0)


def test_the_light_cli_offers_exactly_the_fault_plans_of_the_rules() -> None:
    assert set(FAULT_CHOICES) == set(FAULT_PLANS)


class FakeServer:
    """What the meter reads of a TritonServer: a pid, whether it runs, and its metrics URL."""

    def __init__(self, name: str) -> None:
        self.pid: int | None = 100
        self.running = True
        self.endpoints = {"metrics_url": name}


def test_replica_meter_adds_up_a_restarted_replicas_counter_and_says_when_it_served_again(monkeypatch) -> None:
    clock = iter(float(second) for second in range(100))
    monkeypatch.setattr("aigi.benchmarks.fault_timeline.time.monotonic", lambda: next(clock))
    servers = [FakeServer("a"), FakeServer("b")]
    counters = {"a": 0.0, "b": 0.0}
    meter = ReplicaMeter(servers, "aigi", scrape=lambda url, model: counters[url])
    meter.sample_all()  # t=0, 1: the baseline (0, 0)
    counters.update(a=10.0, b=5.0)
    meter.sample_all()  # t=2, 3
    servers[0].running, servers[0].pid = False, None  # r0 killed: no reading while it is down
    meter.sample(0)
    servers[0].running, servers[0].pid = True, 200  # restarted: a new process, its counter starts again
    counters["a"] = 0.0
    meter.sample(0)  # t=4: same total as before the kill
    counters["a"] = 4.0
    meter.sample(0)  # t=5: served again
    assert meter.totals(since=0.0) == {"r0": 14, "r1": 5}
    assert meter.served_since(0, 3.5) == 5.0
    assert meter.served_since(1, 3.5) is None  # r1 has no reading after 3.5 yet
    assert meter.served(0, 0.0, 2.0) == 10.0


def test_replica_meter_ignores_a_reading_of_a_replica_that_restarted_meanwhile() -> None:
    server = FakeServer("a")

    def scrape(url: str, model: str) -> float:
        server.pid = 300  # restarted while being read: the value may be either process's
        return 99.0

    meter = ReplicaMeter([server], "aigi", scrape=scrape)
    meter.sample(0)
    assert meter.counts[0].totals == []


def test_timeline_bins_calls_per_whole_second_and_each_replicas_readings() -> None:
    events = [(100.2, 3, 1, 0, 0), (100.9, 2, 0, 0, 0), (101.5, 0, 0, 4, 0), (102.1, 1, 0, 0, 1), (103.4, 5, 0, 0, 0)]
    server = FakeServer("a")
    meter = ReplicaMeter([server], "aigi", period=1.0, scrape=lambda url, model: None)
    meter.counts[0].times = [100.0, 101.0, 102.0, 103.0]
    meter.counts[0].totals = [0.0, 10.0, 30.0, 30.0]
    timeline = build_timeline(100.0, 103.6, events, meter)
    assert timeline["t_s"] == [0, 1, 2]  # the partial last second (103-103.6) is left out
    assert timeline["answered"] == [5, 0, 1]
    assert timeline["refused_invalid"] == [1, 0, 0]
    assert timeline["lost"] == [0, 4, 0] and timeline["wrong"] == [0, 0, 1]
    assert timeline["per_replica"] == {"r0": [10, 20, 0]}


def test_longest_gap_runs_from_the_fault_to_the_last_answer_before_the_next() -> None:
    from aigi.benchmarks.load_check import longest_gap

    assert longest_gap([1.0, 5.0, 5.5, 9.0, 20.0], begin=4.0, end=10.0) == 3.5
    assert longest_gap([1.0, 2.0], begin=4.0, end=10.0) is None


def _report(passed: bool = True) -> dict[str, Any]:
    """A fault-check report as the run makes one, with small made-up figures."""
    faults = [
        {"kind": "sigterm", "replica": "r0", "replica_index": 0, "at_s": 2.0, "planned_at_s": 2.0, "exit_code": 0},
        {"kind": "sigkill", "replica": "r1", "replica_index": 1, "at_s": 5.0, "planned_at_s": 4.0, "exit_code": -9},
    ]
    for fault in faults:
        fault.update(
            stop_s=0.5,
            down_s=2.0,
            replica_serving_again_after_s=3.0,
            longest_answer_gap_s=0.2,
            longest_client_wait_s=0.4,
            clients_back_after_s=2.1,
            answered_calls_after=10,
            images_lost_after=0 if passed else 3,
        )
    zeros = [0] * 8
    return {
        "replicas": 2,
        "concurrency": 4,
        "duration_s": 6.0,
        "load_s": 8.0,
        "protocol": "grpc",
        "fault": "both",
        "client_options": {},
        "client_settings": {"retry_timeout": 30.0, "retries": None},
        "reference": {
            "valid_payloads": 12,
            "precision": "fp32",
            "tolerance_p_fake": 1e-4,
            "tolerance_why": "fp32",
            "spread_p_fake": 0.0,
        },
        "faults": faults,
        "per_replica": {
            "r0": {"endpoint": "127.0.0.1:1", "images_served": 30, "faults": ["sigterm"]},
            "r1": {"endpoint": "127.0.0.1:2", "images_served": 10, "faults": ["sigkill"]},
        },
        "timeline": {
            "t_s": list(range(8)),
            "answered": [5] * 8,
            "refused_invalid": zeros,
            "lost": zeros if passed else [0, 0, 0, 0, 0, 3, 0, 0],
            "wrong": zeros,
            "per_replica": {"r0": [3] * 8, "r1": [2] * 8},
        },
        **dict.fromkeys(("requests", "retries", "requests_rejected", "calls", "images_sent", "images_answered"), 40),
        **dict.fromkeys(("images_sent_valid", "images_sent_invalid", "images_refused_invalid", "images_wrong"), 0),
        "images_lost": 0 if passed else 3,
        "max_abs_dp_fake": 0.0,
        "lost_by_reason": {"raised": 0 if passed else 3},
        "calls_raised": {} if passed else {"ServerUnreachableError": 1},
        "latency_per_call": {"p50_ms": 10.0},
        "examples": [],
        "checks": {"no image lost": passed},
        "passed": passed,
    }


def test_report_writes_json_markdown_and_a_timeline_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from aigi.benchmarks.fault_report import write_report

    text = write_report(_report(passed=False), tmp_path)
    assert (tmp_path / "timeline.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "fault_check.json").read_text())["plot"] == "timeline.png"
    assert (tmp_path / "FAULT_CHECK.md").read_text() == text
    assert "**FAIL**" in text and "![" in text
    assert "| roll (SIGTERM, drain, restart) | r0 |" in text and "| crash (SIGKILL, restart) | r1 |" in text
    assert "| r0 | 127.0.0.1:1 | 30 | 75% | sigterm |" in text
    assert "ServerUnreachableError" in text


def test_report_says_so_when_matplotlib_is_missing(tmp_path: Path, monkeypatch) -> None:
    from aigi.benchmarks import fault_plot
    from aigi.benchmarks.fault_report import write_report

    def no_matplotlib(report: dict[str, Any], path: Path) -> Path:
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(fault_plot, "plot_timeline", no_matplotlib)
    text = write_report(_report(), tmp_path)
    assert not (tmp_path / "timeline.png").exists()
    assert "not drawn (matplotlib is not installed)" in text


def test_fault_check_command_refuses_bad_settings_before_starting_anything(tmp_path: Path, capsys) -> None:
    argv = ["fault-check", "--repo", str(tmp_path), "--out", str(tmp_path / "out")]
    assert aigi_main([*argv, "--client-option", "retrys=0"]) == 2
    assert "not a Detector setting: retrys" in capsys.readouterr().err
    assert aigi_main([*argv, "--replicas", "0"]) == 2
    assert "--replicas in [1, 16]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_fault_check_help_names_replicas_faults_and_what_counts_as_lost(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        aigi_main(["fault-check", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for words in ("--replicas", "--fault {sigterm,sigkill,both}", "LOST:", "WRONG:", "timeline.png", "DEFAULT"):
        assert words in out


@pytest.mark.triton
def test_three_replicas_lose_nothing_through_a_roll_and_a_crash(serve_repo: Path, tmp_path: Path) -> None:
    pytest.importorskip("pytriton")
    pytest.importorskip("matplotlib")
    argv = ["fault-check", "--repo", str(serve_repo), "--replicas", "3", "--concurrency", "4", "--duration", "10"]
    code = aigi_main([*argv, "--out", str(tmp_path)])
    report = json.loads((tmp_path / "fault_check.json").read_text())
    assert report["client_options"] == {} and report["client_settings"]["retries"] is None  # the client's defaults
    faults = [(fault["kind"], fault["replica"], fault["exit_code"]) for fault in report["faults"]]
    assert faults == [("sigterm", "r0", 0), ("sigkill", "r1", -9)]
    assert all(fault["replica_serving_again_after_s"] is not None for fault in report["faults"])
    assert report["images_lost"] == 0, (report["lost_by_reason"], report["faults"], report["examples"])
    assert report["images_wrong"] == 0, report["examples"]
    served = {name: entry["images_served"] for name, entry in report["per_replica"].items()}
    assert set(served) == {"r0", "r1", "r2"} and min(served.values()) > 0, served
    assert sum(report["timeline"]["answered"]) > 0 and set(report["timeline"]["per_replica"]) == set(served)
    assert (tmp_path / "timeline.png").stat().st_size > 10_000 and (tmp_path / "FAULT_CHECK.md").is_file()
    assert report["passed"] and code == 0, report["checks"]
