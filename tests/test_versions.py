"""Model versions: export adds the next version, rollback retires it, and a live update loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _export_helpers import make_tiny_checkpoint

from aigi.cli import main
from aigi.errors import ExportError
from aigi.manifest import read_manifest, verify_manifest

EXPORT_FLAGS = ["--backend", "cpu", "--max-batch", "8", "--no-timing", "--intra-op-threads", "1"]
MODELS = ("aigi", "aigi_preprocess", "aigi_cpu")


def _export(checkpoint: Path, repo: Path, *extra: str) -> None:
    assert main(["export", "--checkpoint", str(checkpoint), "--repo", str(repo), *EXPORT_FLAGS, *extra]) == 0


def _versions(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("version_runs")
    return make_tiny_checkpoint(root / "v1", seed=0), make_tiny_checkpoint(root / "v2", seed=1)


def test_export_adds_version_2_and_keeps_version_1_untouched_when_the_repository_exists(checkpoints, tmp_path) -> None:
    repo = tmp_path / "repo"
    _export(checkpoints[0], repo)
    onnx_v1 = (repo / "aigi_cpu" / "1" / "model.onnx").read_bytes()
    _export(checkpoints[1], repo, "--keep-versions", "3")
    for model in MODELS:
        assert _versions(repo / model) == ["1", "2"]
    assert (repo / "aigi_cpu" / "1" / "model.onnx").read_bytes() == onnx_v1
    assert (repo / "aigi_cpu" / "2" / "model.onnx").read_bytes() != onnx_v1
    ensemble = (repo / "aigi" / "config.pbtxt").read_text()
    assert ensemble.count("model_version: 2") == 2 and "latest { num_versions: 1 }" in ensemble
    assert "latest { num_versions: 3 }" in (repo / "aigi_cpu" / "config.pbtxt").read_text()
    assert verify_manifest(repo)[0] == []
    entry = (read_manifest(repo) or {})["exports"]["aigi"]
    assert entry["version"] == 2 and sorted(entry["versions"]) == ["1", "2"]
    assert entry["versions"]["1"]["checkpoint"] == str(checkpoints[0].absolute())


def test_rollback_retires_the_newest_version_and_restores_the_previous_config_when_two_exist(
    checkpoints, tmp_path, capsys
) -> None:
    repo = tmp_path / "repo"
    _export(checkpoints[0], repo)
    config_v1 = (repo / "aigi" / "config.pbtxt").read_text()
    _export(checkpoints[1], repo)
    assert main(["repo", "rollback", str(repo)]) == 0
    for model in MODELS:
        assert _versions(repo / model) == ["1"]
        assert (repo / ".retired" / "aigi" / "2" / model).is_dir()
    assert (repo / "aigi" / "config.pbtxt").read_text() == config_v1
    assert verify_manifest(repo)[0] == []
    capsys.readouterr()
    assert main(["repo", "versions", str(repo), "--json"]) == 0
    states = {row["version"]: row["state"] for row in json.loads(capsys.readouterr().out)}
    assert states == {1: "current", 2: "retired"}
    _export(checkpoints[1], repo)  # a retired number is never reused
    assert _versions(repo / "aigi_cpu") == ["1", "3"]
    assert main(["repo", "check", str(repo)]) == 0


def test_rollback_refuses_when_only_one_version_exists(checkpoints, tmp_path) -> None:
    from aigi.errors import RepositoryError
    from aigi.export.versions import rollback

    repo = tmp_path / "repo"
    _export(checkpoints[0], repo)
    with pytest.raises(RepositoryError, match="nothing to roll back to"):
        rollback(repo)


def test_export_refuses_a_new_version_and_leaves_the_repository_when_the_labels_differ(tmp_path) -> None:
    pytest.importorskip("torch")
    from aigi.export.pipeline import ExportOptions, run_export

    repo = tmp_path / "repo"
    _export(make_tiny_checkpoint(tmp_path / "three", seed=0), repo)
    before = (repo / "MANIFEST.json").read_text()
    other = make_tiny_checkpoint(tmp_path / "two", labels=["real", "fake"], seed=1)
    options = ExportOptions(other, repo, "cpu", max_batch=8, time_optimizations=False)
    with pytest.raises(ExportError, match="labels differ"):
        run_export(options, echo=lambda _: None, show_progress=False)
    assert _versions(repo / "aigi_cpu") == ["1"] and (repo / "MANIFEST.json").read_text() == before
    assert verify_manifest(repo)[0] == []


@pytest.mark.triton
def test_live_update_loses_nothing_and_tags_every_answer_with_its_version_when_clients_keep_calling(
    checkpoints, tmp_path
) -> None:
    pytest.importorskip("pytriton")
    from aigi.benchmarks.update_check import UpdateSettings, run_update_check

    result = run_update_check(UpdateSettings(*checkpoints, clients=4, duration_s=10.0, images=8), tmp_path)
    assert result["lost"] == result["wrong"] == result["stale_v1_after_switch"] == result["unknown_version"] == 0
    assert result["answered_by_version"].get("1", 0) > 0 and result["answered_by_version"].get("2", 0) > 0
    assert result["reference"]["payloads_differing_v1_v2"] > 0  # the two versions really answer differently
    assert result["ready_after_switch"]["aigi"] == ["2"]
    assert result["passed"]


@pytest.mark.triton
def test_repo_reload_serves_the_new_version_and_rollback_the_old_when_the_admin_key_is_right(
    checkpoints, tmp_path, sample_images, capsys
) -> None:
    from _serve_helpers import running_server

    from aigi.client.detector import Detector

    repo = tmp_path / "repo"
    _export(checkpoints[0], repo)
    with running_server(repo) as server:
        key_file, wrong = tmp_path / "admin.key", tmp_path / "wrong.key"
        key_file.write_text(server.admin_key + "\n")
        wrong.write_text("not-the-admin-key-at-all\n")
        reload_argv = ["repo", "reload", "--url", server.endpoints["http"], "--admin-key-file"]

        def served_version() -> str:
            with Detector(server.endpoints["grpc"], protocol="grpc") as detector:
                return detector.detect(sample_images[:1])[0].model_version

        _export(checkpoints[1], repo)
        assert served_version() == "1"  # written, not loaded
        assert main([*reload_argv, str(wrong)]) != 0
        assert served_version() == "1"
        assert main([*reload_argv, str(key_file)]) == 0
        assert served_version() == "2"
        assert main(["repo", "rollback", str(repo)]) == 0
        assert main([*reload_argv, str(key_file)]) == 0
        assert served_version() == "1"
    assert "loaded aigi" in capsys.readouterr().out
