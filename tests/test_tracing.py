"""Request tracing: ``aigi serve --trace-file`` has Triton record each step of the ensemble; ``aigi trace`` reads it."""

from __future__ import annotations

from pathlib import Path

import pytest
from _serve_helpers import running_server

from aigi.cli import main
from aigi.errors import SettingsError
from aigi.health import canary
from aigi.server_commands import trace_args
from aigi.tracing import read_traces


def test_trace_args_are_empty_when_tracing_is_off_and_refuse_a_rate_below_one(tmp_path: Path) -> None:
    assert trace_args(None, 1000, "TIMESTAMPS", -1) == []
    flags = trace_args(tmp_path / "t.json", 10, "TIMESTAMPS", 5)
    assert flags == [
        f"--trace-config=triton,file={tmp_path / 't.json'}",
        "--trace-config=rate=10",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=count=5",
    ]
    with pytest.raises(SettingsError):
        trace_args(tmp_path / "t.json", 0, "TIMESTAMPS", -1)


@pytest.mark.triton
def test_trace_shows_each_step_of_the_ensemble_when_every_request_is_traced(serve_repo, tmp_path, capsys) -> None:
    trace = tmp_path / "trace.json"
    with running_server(serve_repo, extra_args=trace_args(trace, 1, "TIMESTAMPS", -1)) as server:
        for _ in range(2):
            assert canary(server.endpoints["http_url"]).ok
    requests = read_traces(trace)  # Triton writes the file when it stops
    assert [request.model for request in requests] == ["aigi", "aigi"]
    steps = requests[0].steps
    assert [step.model for step in steps] == ["aigi_preprocess", "aigi_cpu"]
    for step in steps:
        assert step.total_ms is not None and step.queue_ms is not None and step.compute_ms is not None
        assert 0 <= step.queue_ms <= step.total_ms and 0 < step.compute_ms <= step.total_ms
    assert requests[0].total_ms is not None and requests[0].total_ms >= sum(s.compute_ms or 0 for s in steps)
    assert main(["trace", str(trace), "--last", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("aigi v1") and lines[1].startswith("  aigi_preprocess v1")
    assert lines[2].startswith("  aigi_cpu v1")
