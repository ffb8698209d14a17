"""The label contract, checkpoint metadata and the slim-client promise."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from aigi.checkpoint import ArchitectureMeta, CheckpointMeta, TrainingSummary, load_meta, save_meta
from aigi.errors import CheckpointError, DatasetError
from aigi.labels import labels_for_task, p_fake, target_index, validate_labels
from aigi.preprocessing import PreprocessSpec


def test_labels_for_task_puts_real_first_when_task_is_source() -> None:
    assert labels_for_task(["sd", "real", "gan"], "source") == ["real", "gan", "sd"]
    assert labels_for_task(["sd", "real", "gan"], "binary") == ["real", "fake"]


@pytest.mark.parametrize("names", [["gan", "sd"], ["real"], []])
def test_labels_for_task_raises_dataset_error_when_real_or_fakes_missing(names: list[str]) -> None:
    with pytest.raises(DatasetError):
        labels_for_task(names, "source")


def test_validate_labels_raises_when_real_is_not_first() -> None:
    with pytest.raises(DatasetError, match="label 0"):
        validate_labels(["fake", "real"])


def test_target_index_maps_generators_to_fake_when_labels_are_binary() -> None:
    assert target_index("gan", ["real", "fake"]) == 1
    assert target_index("real", ["real", "fake"]) == 0
    with pytest.raises(DatasetError):
        target_index("unseen", ["real", "gan"])


def test_p_fake_is_one_minus_real_when_probs_have_many_classes() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(p_fake(probs), [0.3, 0.9], atol=1e-6)


def _meta() -> CheckpointMeta:
    return CheckpointMeta(
        architecture=ArchitectureMeta(source="tiny", vision_config={"hidden_size": 8}),
        task="source",
        labels=["real", "gan"],
        preprocessing=PreprocessSpec(size=32),
        threshold=0.42,
    )


def test_checkpoint_meta_round_trips_when_saved_and_loaded(tmp_path) -> None:
    save_meta(tmp_path, _meta())
    loaded = load_meta(tmp_path)
    assert loaded == _meta()


def test_load_meta_raises_checkpoint_error_when_file_is_malformed(tmp_path) -> None:
    (tmp_path / "aigi.json").write_text(json.dumps({"task": "source"}))
    with pytest.raises(CheckpointError, match="malformed"):
        load_meta(tmp_path)
    (tmp_path / "aigi.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_meta(tmp_path)


# An aigi.json "training" section as aigi train writes it (abridged dataset and hyperparameters), in its key order.
TRAINED = {
    "data": "/data/bench",
    "dataset": {"layout": "splits", "root": "/data/bench", "num_samples": 72},
    "images": {"train": 36, "val": 18},
    "skipped_files": 1,
    "skipped": [["/data/bench/train/real/x.png", "not a decodable image"]],
    "hyperparameters": {"data": "/data/bench", "lr": 0.003, "grad_checkpointing_enabled": False},
    "amp": "off",
    "device": "cpu",
    "world_size": 1,
    "parameters": 42467,
    "trainable_parameters": 42467,
    "epochs": 2,
    "completed": True,
    "epochs_completed": 2,
    "best_epoch": 1,
    "time_s": 2.07,
    "images_per_s": 38.92,
    "peak_gpu_memory_mb": None,
}


def _saved_training(tmp_path, training: dict) -> tuple[CheckpointMeta, dict]:
    document = {**_meta().to_dict(), "training": training}
    (tmp_path / "aigi.json").write_text(json.dumps(document))
    meta = load_meta(tmp_path)
    save_meta(tmp_path, meta)
    return meta, json.loads((tmp_path / "aigi.json").read_text())["training"]


def test_training_summary_writes_the_same_json_when_a_trained_summary_is_loaded_and_saved(tmp_path) -> None:
    meta, written = _saved_training(tmp_path, TRAINED)

    assert json.dumps(written) == json.dumps(TRAINED)  # same keys, values and order, nulls included
    summary = meta.training
    assert isinstance(summary, TrainingSummary) and summary.extra == {}
    assert summary.data_dir == "/data/bench" and summary.best_epoch == 1 and summary.completed is True
    assert summary.images == {"train": 36, "val": 18} and summary.peak_gpu_memory_mb is None
    assert TrainingSummary(**TRAINED).to_dict() == TRAINED  # as train.py builds it


def test_training_summary_keeps_unknown_and_mistyped_keys_when_an_old_file_lacks_fields(tmp_path) -> None:
    old = {"data": "/old/data", "epochs": "twelve", "note": "written by another tool", "best_epoch": None}

    meta, written = _saved_training(tmp_path, old)

    assert written == old  # missing keys are not added, unknown and mistyped ones survive
    summary = meta.training
    assert summary.extra == {"epochs": "twelve", "note": "written by another tool"}
    assert summary.epochs is None and summary.best_epoch is None and summary.completed is False
    assert summary.data_dir == "/old/data"


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        ({}, None),
        ({"note": "random initialization"}, None),
        ({"hyperparameters": {"data": "/from/config"}}, "/from/config"),
        ({"dataset": {"root": "/from/index"}}, "/from/index"),
        ({"data": "", "dataset": {"root": "/from/index"}}, "/from/index"),
        ({"data": 3}, None),
        ({"data": "~/bench"}, "HOME/bench"),
    ],
)
def test_training_summary_names_the_data_folder_when_one_is_recorded(
    training: dict, expected: str | None, monkeypatch
) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    expected = expected and expected.replace("HOME", "/home/someone")
    assert TrainingSummary.from_dict(training).data_dir == expected


def test_checkpoint_meta_parses_a_training_dict_when_given_or_assigned_one() -> None:
    meta = CheckpointMeta(**{**vars(_meta()), "training": {"data": "/d", "note": "x"}})
    assert isinstance(meta.training, TrainingSummary) and meta.training.data == "/d"
    meta.training = {"epochs": 3}
    assert meta.training.epochs == 3 and meta.to_dict()["training"] == {"epochs": 3}
    assert _meta().to_dict()["training"] == {}


def test_load_meta_raises_checkpoint_error_when_training_is_not_an_object(tmp_path) -> None:
    (tmp_path / "aigi.json").write_text(json.dumps({**_meta().to_dict(), "training": ["data"]}))
    with pytest.raises(CheckpointError, match="malformed"):
        load_meta(tmp_path)


def test_load_meta_raises_checkpoint_error_when_directory_has_no_meta(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no aigi.json"):
        load_meta(tmp_path)


def test_cli_help_and_preprocessing_import_no_torch_when_loaded_in_fresh_interpreter() -> None:
    # the client's own import is checked in test_client.py
    code = (
        "import sys, io, contextlib\n"
        "import aigi.preprocessing\n"
        "from aigi.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'onnx', 'onnxruntime') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_cli_prints_one_line_hint_when_an_extra_is_missing(monkeypatch, capsys) -> None:
    import aigi.cli as cli

    def handler(args):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    args = parser.parse_args(["eval", "--checkpoint", "x", "--data", "y", "--out", "z"])
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)
    args.handler = handler
    assert cli.main([]) == 2
    assert "pip install 'aigi[training]'" in capsys.readouterr().err
