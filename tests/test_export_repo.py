"""`aigi export` end to end on a tiny checkpoint, and `aigi repo check` on what it writes (CPU, about a minute)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")
pytest.importorskip("tritonclient.grpc")

from _export_helpers import LABELS, make_image_folder, make_tiny_checkpoint  # noqa: E402

from aigi.cli import main  # noqa: E402
from aigi.errors import ExportError  # noqa: E402
from aigi.export import parity, repo_writer  # noqa: E402
from aigi.export.pipeline import STEPS  # noqa: E402
from aigi.export.repo_check import check_repository  # noqa: E402
from aigi.export.tensorrt_build import TRITON_IMAGE, tensorrt_missing  # noqa: E402
from aigi.manifest import read_manifest, verify_manifest  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "data")


@pytest.fixture(scope="module")
def cpu_repo(tmp_path_factory, checkpoint, images) -> Path:
    """One CPU export shared by the checks (FP32, real images in the parity inputs, ORT levels timed)."""
    repo = tmp_path_factory.mktemp("cpu") / "repo"
    code = main(
        ["-q", "export", "--checkpoint", str(checkpoint), "--repo", str(repo), "--backend", "cpu"]
        + ["--parity-data", str(images), "--max-batch", "8"]
    )
    assert code == 0
    return repo


@pytest.fixture
def cpu_copy(cpu_repo, tmp_path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(cpu_repo, tmp_path / "repo"))


def _export(checkpoint: Path, repo: Path, *extra: str) -> int:
    return main(["-q", "export", "--checkpoint", str(checkpoint), "--repo", str(repo), "--no-timing", *extra])


def _snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


def test_export_writes_contract_layout_when_backend_is_cpu(cpu_repo):
    for relative in (
        "MANIFEST.json",
        "aigi/config.pbtxt",
        "aigi/labels.txt",
        "aigi_preprocess/config.pbtxt",
        "aigi_preprocess/1/model.py",
        "aigi_cpu/config.pbtxt",
        "aigi_cpu/1/model.py",
        "aigi_cpu/1/model.onnx",
        "aigi_export_report.json",
        "aigi_EXPORT.md",
    ):
        assert (cpu_repo / relative).is_file(), relative
    assert (cpu_repo / "aigi" / "1").is_dir()
    assert (cpu_repo / "aigi" / "labels.txt").read_text().split() == LABELS
    manifest = read_manifest(cpu_repo)
    assert manifest["exports"]["aigi"]["backend"] == "cpu"
    assert "aigi_cpu/1/model.onnx" in manifest["files"]


def test_export_report_records_parity_and_corrupt_images_when_parity_data_given(cpu_repo):
    report = json.loads((cpu_repo / "aigi_export_report.json").read_text())
    steps = {step["step"]: step for step in report["steps"]}
    assert {name: step["status"] for name, step in steps.items()} == {
        "export": "ok",
        "fp16": "skipped",
        "int8": "skipped",
        "optimize": "ok",
        "trt": "skipped",
        "repository": "ok",
    }
    assert list(steps) == list(STEPS)
    assert steps["export"]["parity"]["max_abs"]["probs"] <= 1e-4
    assert steps["export"]["parity"]["samples"] == 1 + 7 + 4
    assert steps["export"]["parity"]["argmax_agreement"] == steps["export"]["parity"]["is_fake_agreement"] == 1.0
    assert steps["export"]["parity"]["min_agreement"] == parity.MIN_AGREEMENT
    assert steps["export"]["parity"]["passed"] is True
    assert steps["optimize"]["details"]["timing"]["chosen"] in ("disable", "basic", "extended", "all")
    assert len(report["parity_inputs"]["images_used"]) == 4
    assert len(report["parity_inputs"]["corrupt"]) == 1  # counted and named, not silently dropped
    markdown = (cpu_repo / "aigi_EXPORT.md").read_text()
    assert "| export | ok |" in markdown and "| fp16 | skipped |" in markdown
    assert "argmax and is_fake agreement with PyTorch at least 99%" in markdown


def test_repo_check_accepts_repository_when_backend_is_cpu(cpu_repo, capsys):
    assert main(["repo", "check", str(cpu_repo)]) == 0
    out = capsys.readouterr().out
    assert "OK: 3 models (aigi, aigi_cpu, aigi_preprocess)" in out


def test_repo_check_prints_json_when_asked(cpu_repo, capsys):
    assert main(["repo", "check", str(cpu_repo), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True and result["problems"] == [] and result["files_verified"] > 5


def test_repo_check_accepts_repository_when_backend_is_onnx_with_name_prefix(cpu_copy, checkpoint, capsys):
    assert _export(checkpoint, cpu_copy, "--backend", "onnx", "--name", "det", "--precision", "fp16") == 0
    assert (cpu_copy / "det_onnx" / "1" / "model.onnx").is_file()
    report = check_repository(cpu_copy)
    assert report.ok, report.problems
    assert {"aigi", "aigi_cpu", "det", "det_onnx", "det_preprocess"} <= set(report.models)
    assert set(read_manifest(cpu_copy)["exports"]) == {"aigi", "det"}
    assert 'backend: "onnxruntime"' in (cpu_copy / "det_onnx" / "config.pbtxt").read_text()


def test_export_replaces_network_model_when_backend_changes(cpu_copy, checkpoint):
    assert _export(checkpoint, cpu_copy, "--backend", "onnx") == 0
    assert not (cpu_copy / "aigi_cpu").exists()
    assert (cpu_copy / "aigi_onnx" / "2" / "model.onnx").is_file()  # a new lineage; version numbers go on
    assert check_repository(cpu_copy).ok


def test_repo_check_reports_wrong_tensor_name_when_config_is_edited(cpu_copy, capsys):
    config = cpu_copy / "aigi_cpu" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "logits"', 'name: "logitz"'))
    assert main(["repo", "check", str(cpu_copy)]) == 1
    err = capsys.readouterr().err
    assert "aigi_cpu/1/model.onnx: output 'logitz' is not among the outputs of model.onnx" in err
    assert "aigi_cpu/config.pbtxt: sha256 differs from MANIFEST.json" in err


def test_repo_check_reports_label_count_mismatch_when_labels_file_grows(cpu_copy):
    labels = cpu_copy / "aigi" / "labels.txt"
    labels.write_text(labels.read_text() + "extra\n")
    problems = check_repository(cpu_copy).problems
    assert "aigi/labels.txt: 4 labels but output 'probs' has 3 values" in problems


def test_repo_check_reports_missing_version_folder_when_removed(cpu_copy):
    shutil.rmtree(cpu_copy / "aigi" / "1")
    problems = check_repository(cpu_copy).problems
    assert "aigi: no version folder (expected aigi/1/)" in problems


def test_repo_check_reports_tampered_artifact_when_bytes_change(cpu_copy):
    onnx_file = cpu_copy / "aigi_cpu" / "1" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a weight tensor: same size, still a valid graph
    onnx_file.write_bytes(bytes(data))
    problems = check_repository(cpu_copy).problems
    assert problems == ["aigi_cpu/1/model.onnx: sha256 differs from MANIFEST.json (modified after export)"]


def test_repo_check_reports_missing_artifact_when_deleted(cpu_copy):
    (cpu_copy / "aigi_cpu" / "1" / "model.onnx").unlink()
    problems = check_repository(cpu_copy).problems
    assert "aigi_cpu/1/model.onnx: missing (parameter onnx_file)" in problems
    assert "aigi_cpu/1/model.onnx: listed in MANIFEST.json but missing" in problems


def test_repo_check_reports_unknown_step_model_when_ensemble_points_nowhere(cpu_copy):
    shutil.rmtree(cpu_copy / "aigi_preprocess")
    problems = check_repository(cpu_copy).problems
    assert any("step 1 (aigi_preprocess): model 'aigi_preprocess' is not in the repository" in p for p in problems)


def test_repo_check_exits_nonzero_when_folder_is_missing(tmp_path, capsys):
    assert main(["repo", "check", str(tmp_path / "nope")]) == 2
    assert "no such repository folder" in capsys.readouterr().err


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT and a GPU are present: the engine would be built")
def test_export_trt_exits_3_and_leaves_build_script_when_tensorrt_missing(checkpoint, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert _export(checkpoint, repo, "--backend", "trt", "--max-batch", "16") == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT engine not built" in err[0] and "build_engine.sh" in err[0]
    version = repo / "aigi_trt" / "1"
    assert (repo / "aigi_trt" / "config.pbtxt").is_file()
    assert (version / "model.fp16.onnx").is_file()
    assert not (version / "model.plan").exists()
    script = (version / "build_engine.sh").read_text()
    assert TRITON_IMAGE in script and "--stronglyTyped" in script
    assert "--minShapes=pixel_values:1x3x224x224" in script and "--maxShapes=pixel_values:16x3x224x224" in script
    assert "--timingCacheFile=" in script
    report = json.loads((repo / "aigi_export_report.json").read_text())
    statuses = [(step["step"], step["status"]) for step in report["steps"]]
    assert statuses == [
        ("export", "ok"),
        ("fp16", "ok"),
        ("int8", "skipped"),
        ("optimize", "skipped"),
        ("trt", "unavailable"),
        ("repository", "ok"),
    ]
    assert report["steps"][-1]["message"].endswith("; model.plan to be built")
    problems = check_repository(repo).problems
    assert problems == ["aigi_trt/1/model.plan: missing (tensorrt_plan artifact)"]
    pending = check_repository(repo, pending=["aigi_trt/1/model.plan"])  # what the export's own check expects
    assert pending.ok and "aigi_trt/1/model.plan: not built yet (tensorrt_plan artifact)" in pending.notes
    # what build_engine.sh adds later is sealed into the manifest by `aigi repo manifest`
    (version / "model.plan").write_bytes(b"engine bytes")
    assert "aigi_trt/1/model.plan: not listed in MANIFEST.json (unexpected file)" in check_repository(repo).problems
    assert main(["repo", "manifest", str(repo)]) == 0
    assert check_repository(repo).ok


def test_failed_export_leaves_previous_repository_intact_when_a_late_step_fails(
    cpu_copy, checkpoint, monkeypatch, capsys
):
    before = _snapshot(cpu_copy)

    def missing(kind: str):
        raise ExportError(f"Python-backend source for {kind} is missing")

    monkeypatch.setattr(repo_writer, "python_model_source", missing)
    assert _export(checkpoint, cpu_copy, "--backend", "onnx") == 2
    assert "Python-backend source for preprocess is missing" in capsys.readouterr().err
    assert _snapshot(cpu_copy) == before
    assert verify_manifest(cpu_copy)[0] == []
    assert [p.name for p in cpu_copy.parent.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_export_raises_parity_error_and_writes_nothing_when_tolerance_is_exceeded(
    checkpoint, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(parity.TOLERANCES, "fp32", -1.0)
    repo = tmp_path / "repo"
    assert _export(checkpoint, repo, "--backend", "cpu") == 2
    captured = capsys.readouterr()
    assert "export: model.onnx differs from PyTorch past tolerance" in captured.err
    failed = [line for line in captured.out.splitlines() if line.startswith("export ")]
    assert len(failed) == 1 and " FAILED " in failed[0] and "probs abs" in failed[0]  # the line shows the diffs
    assert not repo.exists() or not any(repo.iterdir())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_fails_and_writes_nothing_when_decision_agreement_is_too_low(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(parity, "MIN_AGREEMENT", 1.01)  # unreachable: every check's agreement falls short
    repo = tmp_path / "repo"
    assert _export(checkpoint, repo, "--backend", "cpu") == 2
    captured = capsys.readouterr()
    assert "export: model.onnx changes decisions against PyTorch: agreement argmax 100.0%" in captured.err
    assert [line.split()[:2] for line in captured.out.splitlines()] == [["export", "FAILED"]]
    assert not repo.exists() or not any(repo.iterdir())


def test_export_rejects_precision_when_backend_lacks_it(checkpoint, tmp_path, capsys):
    assert _export(checkpoint, tmp_path / "repo", "--backend", "cpu", "--precision", "fp16") == 2
    assert "--precision fp16 does not apply to --backend cpu" in capsys.readouterr().err


def test_python_model_source_fails_clearly_when_file_is_missing(monkeypatch):
    monkeypatch.setitem(repo_writer.PYTHON_MODEL_SOURCES, "cpu", "no_such_model.py")
    with pytest.raises(ExportError, match="no_such_model.py .* is missing"):
        repo_writer.python_model_source("cpu")
    assert repo_writer.python_model_source("preprocess").name == "preprocess.py"


def test_default_parity_dir_uses_training_data_when_it_still_exists(checkpoint, images, tmp_path):
    from aigi.checkpoint import load_meta
    from aigi.export.pipeline import default_parity_dir

    meta = load_meta(checkpoint)
    meta.training = {"data": str(images), "epochs": 1}
    assert default_parity_dir(meta) == images
    meta.training = {"data": str(tmp_path / "gone")}
    assert default_parity_dir(meta) is None


# ----------------------------------------------------------------------------- manifest covers bytecode (finding 11)


def test_export_blocks_bytecode_caches_when_model_folder_holds_python(cpu_repo, tmp_path):
    blockers = ["aigi_cpu/1/__pycache__", "aigi_preprocess/1/__pycache__", "aigi_preprocess/1/aigi/__pycache__"]
    listed = read_manifest(cpu_repo)["files"]
    assert sorted(name for name in listed if name.endswith("__pycache__")) == blockers
    for relative in blockers:
        assert (cpu_repo / relative).is_file()  # a file, not a folder: Python can neither write nor read caches
    copy = Path(shutil.copytree(cpu_repo, tmp_path / "repo"))
    folder = copy / "aigi_preprocess" / "1"
    code = "import sys; sys.dont_write_bytecode = False; import aigi.preprocessing as p; print(p.__file__)"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(folder)!r}); {code}"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert result.stdout.strip() == str(folder / "aigi" / "preprocessing.py")  # the sealed copy was imported
    assert verify_manifest(copy)[0] == []  # and left no bytecode behind


def test_repo_check_reports_planted_bytecode_when_pycache_is_added(cpu_copy, capsys):
    # Python would run a matching __pycache__/*.pyc instead of model.py or the sealed aigi/preprocessing.py
    planted = [
        "aigi_preprocess/1/__pycache__/model.cpython-311.pyc",
        "aigi_preprocess/1/aigi/__pycache__/preprocessing.cpython-311.pyc",
        "aigi_cpu/1/stray.pyc",
    ]
    for relative in planted:
        folder = (cpu_copy / relative).parent
        if folder.is_file():  # the sealed blocker has to go first
            folder.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        (cpu_copy / relative).write_bytes(b"\xa7\r\r\n planted bytecode")
    problems, _ = verify_manifest(cpu_copy)
    assert sorted(str(p) for p in problems) == sorted(
        [f"{relative}: not listed in MANIFEST.json (unexpected file)" for relative in planted]
        + [
            "aigi_preprocess/1/__pycache__: listed in MANIFEST.json but missing",
            "aigi_preprocess/1/aigi/__pycache__: listed in MANIFEST.json but missing",
        ]
    )
    assert main(["repo", "check", str(cpu_copy)]) == 1
    err = capsys.readouterr().err
    assert "aigi_preprocess/1/__pycache__/model.cpython-311.pyc: not listed in MANIFEST.json" in err


def test_manifest_seals_every_file_of_model_folders_when_written(cpu_copy):
    blocker = cpu_copy / "aigi_preprocess" / "1" / "__pycache__"
    blocker.unlink()
    blocker.mkdir()
    pyc = blocker / "model.cpython-311.pyc"
    pyc.write_bytes(b"bytecode present when sealed")
    assert main(["repo", "manifest", str(cpu_copy)]) == 0
    assert "aigi_preprocess/1/__pycache__/model.cpython-311.pyc" in read_manifest(cpu_copy)["files"]
    assert verify_manifest(cpu_copy)[0] == []
    pyc.write_bytes(b"bytecode swapped after sealing")
    assert [str(p) for p in verify_manifest(cpu_copy)[0]] == [
        "aigi_preprocess/1/__pycache__/model.cpython-311.pyc: size 30 differs from MANIFEST.json (28)"
    ]


def test_repo_check_reports_linked_folder_when_model_folder_links_elsewhere(cpu_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "preprocessing.py").write_text("raise SystemExit('not the sealed copy')\n")
    (cpu_copy / "aigi_preprocess" / "1" / "extra").symlink_to(elsewhere, target_is_directory=True)
    problems = [str(p) for p in verify_manifest(cpu_copy)[0]]
    assert problems == ["aigi_preprocess/1/extra: link to a folder; MANIFEST.json cannot cover it"]


# ----------------------------------------------------------------------------- queue policy (finding 4)


def test_export_writes_queue_policy_when_model_has_dynamic_batcher(cpu_repo):
    from aigi.export.triton_config import DEFAULT_MAX_QUEUE_SIZE, DEFAULT_QUEUE_TIMEOUT_MS, parse_config

    for name in ("aigi_preprocess", "aigi_cpu"):
        text = (cpu_repo / name / "config.pbtxt").read_text()
        assert "default_queue_policy {" in text, name
        policy = parse_config(text).dynamic_batching.default_queue_policy
        assert policy.timeout_action == policy.REJECT  # the enum's zero: text format leaves it out
        assert policy.max_queue_size == DEFAULT_MAX_QUEUE_SIZE == 64
        assert policy.default_timeout_microseconds == DEFAULT_QUEUE_TIMEOUT_MS * 1000 == 10_000_000
        assert policy.allow_timeout_override is True
    ensemble = parse_config((cpu_repo / "aigi" / "config.pbtxt").read_text())
    assert not ensemble.HasField("dynamic_batching")  # an ensemble has no scheduler queue


def test_export_writes_no_queue_policy_when_both_limits_are_off(checkpoint, tmp_path):
    # with any default_queue_policy Triton 2.51's batcher held ~1 request in 10 for ~510 ms: 0/0 must remove it
    repo = tmp_path / "repo"
    assert _export(checkpoint, repo, "--backend", "cpu", "--max-queue-size", "0", "--queue-timeout-ms", "0") == 0
    for name in ("aigi_preprocess", "aigi_cpu"):
        text = (repo / name / "config.pbtxt").read_text()
        assert "dynamic_batching {" in text and "default_queue_policy" not in text, name


def test_export_rejects_negative_queue_settings_when_given(checkpoint, tmp_path, capsys):
    assert _export(checkpoint, tmp_path / "repo", "--backend", "cpu", "--max-queue-size", "-1") == 2
    assert "--max-queue-size must be 0 (no limit) or more" in capsys.readouterr().err
    assert _export(checkpoint, tmp_path / "repo", "--backend", "cpu", "--queue-timeout-ms", "-5") == 2
    assert "--queue-timeout-ms must be 0 (no timeout) or more" in capsys.readouterr().err


# ----------------------------------------------------------------------------- no local paths served (finding 11)


def test_export_serves_no_local_path_when_checkpoint_records_training_folders(tmp_path, images):
    import socket

    from aigi.checkpoint import load_meta, save_meta

    run = make_tiny_checkpoint(tmp_path / "secret-run-folder" / "run")
    data = Path(shutil.copytree(images, tmp_path / "secret-training-data")).resolve()
    meta = load_meta(run)
    meta.architecture.source = str(tmp_path / "local-clip-weights")
    meta.training = {
        "data": str(data),
        "dataset": {"layout": "folders", "root": str(data), "num_samples": 5, "class_names": ["gan", "real"]},
        "skipped": [[str(data / "real" / "broken0.png"), "not a decodable image"]],
        "hyperparameters": {"data": str(data), "out": str(run), "model": "tiny", "lr": 1e-3},
        "device": f"cuda:0@{socket.gethostname()}",
        "epochs": 1,
        "epochs_completed": 1,
        "images": {"train": 4, "val": 1},
    }
    meta.calibration = {"method": "fpr", "target_fpr": 0.05, "val_data": str(data)}
    meta.metrics = {"val_accuracy": 0.5, "report": str(run / "eval" / "report.json")}
    save_meta(run, meta)
    repo = tmp_path / "served" / "repo"
    assert _export(run, repo, "--backend", "cpu") == 0  # parity data defaults to training.data: it is used

    configs = {p.relative_to(repo).as_posix(): p.read_text() for p in sorted(repo.glob("*/config.pbtxt"))}
    assert set(configs) == {"aigi/config.pbtxt", "aigi_cpu/config.pbtxt", "aigi_preprocess/config.pbtxt"}
    parts = {part for part in data.parts if part != "/"}  # tmp, pytest-of-USER, pytest-N, the test's folder...
    parts |= {"secret-run-folder", "local-clip-weights", socket.gethostname()}
    for name, text in configs.items():
        assert "/" not in text and "\\\\" not in text, name  # no path of any kind
        for part in sorted(parts):
            assert part not in text, f"{name} contains {part!r}"
    from aigi.checkpoint import CheckpointMeta
    from aigi.export.triton_config import parse_config

    served = json.loads(parse_config(configs["aigi/config.pbtxt"]).parameters["aigi_json"].string_value)
    public = CheckpointMeta.from_dict(served)  # still a valid aigi.json
    assert public.labels == LABELS and public.threshold == pytest.approx(0.4)
    assert served["architecture"]["source"] == repo_writer.PATH_REMOVED
    assert served["training"] == {
        "dataset": {"layout": "folders", "num_samples": 5, "class_names": ["gan", "real"]},
        "epochs": 1,
        "epochs_completed": 1,
        "images": {"train": 4, "val": 1},
    }
    assert served["calibration"] == {"method": "fpr", "target_fpr": 0.05, "val_data": repo_writer.PATH_REMOVED}
    assert served["metrics"] == {"val_accuracy": 0.5, "report": repo_writer.PATH_REMOVED}


def test_public_meta_keeps_preset_and_hub_sources_when_not_local():
    meta = {"labels": ["real", "gan"], "architecture": {"source": "tiny", "vision_config": {"hidden_act": "gelu"}}}
    assert repo_writer.public_meta(meta)["architecture"]["source"] == "tiny"
    meta["architecture"]["source"] = "openai/clip-vit-base-patch32"
    assert repo_writer.public_meta(meta)["architecture"]["source"] == "openai/clip-vit-base-patch32"
    for local in ("/data/models/clip", "~/clip", "./clip", "C:\\models\\clip", "runs/2024/clip", "my-clip"):
        meta["architecture"]["source"] = local
        assert repo_writer.public_meta(meta)["architecture"]["source"] == repo_writer.PATH_REMOVED, local
    assert repo_writer.public_meta({"hostinfo": "x", "task": "/abs"}) == {"task": repo_writer.PATH_REMOVED}


def test_repo_check_accepts_override_when_it_keeps_the_contract(checkpoint, tmp_path, capsys):
    import hashlib

    from aigi.export.triton_config import parse_config

    override = tmp_path / "preprocess.pbtxt"
    override.write_text(
        "instance_group [ { count: 3 kind: KIND_CPU } ]\ndynamic_batching { preferred_batch_size: 2 }\n"
    )
    repo = tmp_path / "repo"
    argv = ["--repo", str(repo), "--backend", "cpu", "--max-batch", "4", "--override-mode", "replace"]
    assert _export(checkpoint, repo, *argv, "--config-override", f"preprocess={override}") == 0
    proto = parse_config((repo / "aigi_preprocess" / "config.pbtxt").read_text())
    assert [g.count for g in proto.instance_group] == [3]
    assert list(proto.dynamic_batching.preferred_batch_size) == [2]
    assert main(["repo", "check", str(repo)]) == 0
    report = json.loads((repo / "aigi_export_report.json").read_text())
    repository = next(step for step in report["steps"] if step["step"] == "repository")
    assert repository["details"]["config_overrides"] == [
        {"target": "preprocess", "file": str(override), "sha256": hashlib.sha256(override.read_bytes()).hexdigest()}
    ]


@pytest.mark.parametrize(
    "target,text,problem",
    [
        (
            "preprocess",
            'output [ { name: "pixels" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]',
            "input_map value 'pixel_values' is not produced",
        ),
        (
            "network",
            'input [ { name: "pixel_values" data_type: TYPE_FP32 dims: [ 3, 112, 112 ] } ]',
            "has dims [3, 112, 112] but model.onnx has [3, 224, 224]",
        ),
        ("ensemble", 'input [ { name: "image" data_type: TYPE_STRING dims: [ 2 ] } ]', "breaks docs/CONTRACT.md"),
    ],
)
def test_export_refuses_override_when_it_breaks_the_contract(checkpoint, tmp_path, capsys, target, text, problem):
    override = tmp_path / "bad.pbtxt"
    override.write_text(text)
    repo = tmp_path / "repo"
    argv = ["--repo", str(repo), "--backend", "cpu", "--max-batch", "4", "--override-mode", "replace"]
    assert _export(checkpoint, repo, *argv, "--config-override", f"{target}={override}") != 0
    err = capsys.readouterr().err
    assert "fails its check" in err and problem in err and f"config overrides applied: {target}=" in err
    assert not repo.exists()
