"""The load and fault check (aigi.benchmarks.load_check, alias of ``aigi fault-check``) on one server: it must
pass when nothing is lost, and be able to fail. Replicas: tests/test_fault_check.py.

The real runs serve the session's tiny exported repository (``serve_repo`` in conftest.py) with their own
server, since the check kills and restarts it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aigi.benchmarks.fault_check import Reference, Tally, tolerance_for
from aigi.client.result import Result


def _reference() -> Reference:
    return Reference(
        labels=["real", "gan"],
        p_fake=[0.3, 0.7],
        margins=[0.4, 0.4],
        precision="fp32",
        tolerance=1e-4,
        tolerance_why="",
        spread=0.0,
    )


def test_tally_counts_each_kind_of_outcome_when_a_call_returns() -> None:
    tally = Tally()
    picks = [(True, 0), (True, 1), (True, 0), (False, 0), (False, 1), (False, 2)]
    results = [
        Result("a", label="real", p_fake=0.30003),  # within 1e-4 of the reference
        Result("b", label="gan", p_fake=0.701),  # 1e-3 off: wrong
        Result("c", error="model 'aigi' rejected the request: stub unhealthy"),  # a valid image refused: lost
        Result("d", error="model 'aigi' rejected the request: invalid image: cannot identify image file"),
        Result("e", label="real", p_fake=0.2),  # an invalid payload with a verdict: lost
        Result("f", error="model 'aigi' rejected the request: server is stopping"),  # not refused as invalid: lost
    ]
    tally.begin(picks)
    tally.returned(picks, results, _reference())
    assert (tally.sent, tally.answered, tally.wrong, tally.refused) == (6, 1, 1, 1)
    assert tally.lost == {
        "raised": 0,
        "missing": 0,
        "valid_refused": 1,
        "invalid_answered": 1,
        "invalid_other_error": 1,
    }
    assert tally.lost_total == 3 and tally.unaccounted == 0
    assert tally.max_dp_fake == pytest.approx(1e-3)


def test_tally_counts_a_same_p_fake_with_another_label_as_wrong() -> None:
    tally = Tally()
    tally.begin([(True, 1)])
    tally.returned([(True, 1)], [Result("a", label="real", p_fake=0.7)], _reference())
    assert tally.wrong == 1 and tally.answered == 0


def test_tally_loses_every_image_of_a_call_that_raised_missing_results_and_unfinished_calls() -> None:
    tally = Tally()
    tally.begin([(True, 0), (False, 1)])
    tally.raised([(True, 0), (False, 1)], ConnectionError("no server"))
    tally.begin([(True, 0), (True, 1), (True, 1)])
    tally.returned([(True, 0), (True, 1), (True, 1)], [Result("a", label="real", p_fake=0.3)], _reference())
    tally.begin([(True, 0)] * 4)  # a call that never came back
    assert tally.lost["raised"] == 2 and tally.lost["missing"] == 2 and tally.unaccounted == 4
    assert tally.lost_total == 8 and tally.answered == 1
    assert tally.raised_by_type == {"ConnectionError": 1}


def test_tolerance_follows_the_served_precision() -> None:
    assert tolerance_for("fp32")[0] == 1e-4
    assert tolerance_for("int8")[0] > tolerance_for("fp32")[0]
    assert tolerance_for("mystery")[0] == 1e-4  # unknown precision: the strict one


@pytest.mark.triton
def test_load_check_loses_nothing_with_client_defaults_through_sigterm_and_sigkill(
    serve_repo: Path, tmp_path: Path
) -> None:
    pytest.importorskip("pytriton")
    from aigi.benchmarks.load_check import main

    argv = ["--repo", str(serve_repo), "--concurrency", "4", "--duration", "8", "--fault", "both"]
    code = main([*argv, "--out", str(tmp_path)])
    report = json.loads((tmp_path / "fault_check.json").read_text())
    assert (tmp_path / "FAULT_CHECK.md").is_file()
    assert report["client_options"] == {}  # the client's own defaults
    assert report["replicas"] == 1 and list(report["per_replica"]) == ["r0"]
    assert [(fault["kind"], fault["replica"]) for fault in report["faults"]] == [("sigterm", "r0"), ("sigkill", "r0")]
    assert report["faults"][1]["exit_code"] == -9
    assert report["images_sent"] > 0 and report["images_answered"] > 0 and report["images_refused_invalid"] > 0
    assert report["images_lost"] == 0, (report["lost_by_reason"], report["faults"], report["examples"])
    assert report["images_wrong"] == 0, report["examples"]
    assert report["passed"] and code == 0, report["checks"]


@pytest.mark.triton
def test_load_check_fails_and_counts_lost_images_when_the_client_cannot_ride_out_a_crash(
    serve_repo: Path, tmp_path: Path
) -> None:
    pytest.importorskip("pytriton")
    from aigi.benchmarks.load_check import main

    argv = ["--repo", str(serve_repo), "--concurrency", "4", "--duration", "5", "--fault", "sigkill"]
    code = main([*argv, "--client-option", "retries=0", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "fault_check.json").read_text())
    assert [fault["kind"] for fault in report["faults"]] == ["sigkill"]
    assert report["client_options"] == {"retries": 0} and report["client_settings"]["retries"] == 0
    assert report["images_lost"] > 0 and report["lost_by_reason"]["raised"] > 0
    assert report["faults"][0]["images_lost_after"] > 0 and sum(report["timeline"]["lost"]) > 0
    assert report["images_wrong"] == 0
    assert not report["checks"]["no image lost"] and report["passed"] is False and code == 1
    assert "**FAIL**" in (tmp_path / "FAULT_CHECK.md").read_text()


@pytest.mark.slow
@pytest.mark.triton
def test_load_check_loses_nothing_over_http_with_two_replicas_and_more_clients(
    serve_repo: Path, tmp_path: Path
) -> None:
    pytest.importorskip("pytriton")
    from aigi.benchmarks.load_check import main

    argv = ["--repo", str(serve_repo), "--concurrency", "8", "--duration", "20", "--protocol", "http"]
    code = main([*argv, "--replicas", "2", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "fault_check.json").read_text())
    assert [fault["kind"] for fault in report["faults"]] == ["sigterm", "sigkill"]
    assert report["images_lost"] == 0, (report["lost_by_reason"], report["faults"], report["examples"])
    assert report["images_wrong"] == 0, report["examples"]
    assert report["passed"] and code == 0, report["checks"]
