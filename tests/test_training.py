"""``aigi train`` end to end on tiny data, plus the augmentation, data and resume pieces it is built from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _training_helpers import make_easy_dataset, make_tiny_clip_dir  # noqa: E402

from aigi.checkpoint import load_meta  # noqa: E402
from aigi.cli import main  # noqa: E402
from aigi.preprocessing import PreprocessSpec, preprocess  # noqa: E402
from aigi.training.augment import AugmentConfig, augment, random_origin, scale_contrast  # noqa: E402
from aigi.training.data import EpochSampler, ImageDataset  # noqa: E402
from aigi.training.resume import optimizer_from_flat, optimizer_to_flat  # noqa: E402
from aigi.training.train import cosine_with_warmup  # noqa: E402


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_easy_dataset(tmp_path_factory.mktemp("easy") / "data")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clip_dir(tmp_path_factory.mktemp("clip") / "tiny-clip")


def _train(data: Path, out: Path, model: Path | str, *extra: str) -> int:
    argv = ["-q", "train", "--data", str(data), "--out", str(out), "--model", str(model)]
    return main([*argv, "--epochs", "2", "--batch-size", "8", "--lr", "3e-3", *extra])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_same_weights(a: Path, b: Path) -> None:
    left, right = _weights(a), _weights(b)
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


# ----------------------------------------------------------------------------- augmentation and data


def test_random_origin_is_a_grid_multiple_when_image_is_larger_than_crop() -> None:
    spec = PreprocessSpec(size=64, grid=8)
    rng = np.random.default_rng(0)
    origins = {random_origin(101, 150, spec, rng) for _ in range(200)}
    assert all(top % 8 == 0 and left % 8 == 0 for top, left in origins)
    assert max(top for top, _ in origins) <= 101 - 64 and max(left for _, left in origins) <= 150 - 64
    assert len(origins) > 10


def test_augment_returns_a_uint8_crop_of_the_image_when_only_cropping() -> None:
    spec = PreprocessSpec(size=64)
    image = np.random.default_rng(1).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    crop = augment(image, spec, np.random.default_rng(2), AugmentConfig(flip=False))
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    hits = [
        (t, left)
        for t in range(0, 37, 8)
        for left in range(0, 57, 8)
        if np.array_equal(image[t : t + 64, left : left + 64], crop)
    ]
    assert hits, "the crop must sit at a grid-aligned origin of the original image"


def test_augment_changes_pixels_when_jpeg_and_blur_are_certain() -> None:
    spec = PreprocessSpec(size=64)
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    config = AugmentConfig(flip=False, jpeg_prob=1.0, blur_prob=1.0, blur_sigma=(1.0, 2.0))
    out = augment(image, spec, np.random.default_rng(3), config)
    assert out.shape == image.shape and np.abs(out.astype(int) - image).mean() > 5


def test_scale_contrast_keeps_the_mean_and_scales_deviations_when_gain_given() -> None:
    image = np.random.default_rng(4).integers(60, 200, (64, 64, 3), dtype=np.uint8)
    doubled = scale_contrast(image, 2.0)
    assert np.allclose(doubled.mean(axis=(0, 1)), image.mean(axis=(0, 1)), atol=1.0)
    assert doubled.astype(float).std() == pytest.approx(2 * image.astype(float).std(), rel=0.05)
    config = AugmentConfig(contrast_prob=1.0, contrast_gain=(0.5, 0.5))
    halved = augment(image, PreprocessSpec(size=64), np.random.default_rng(0), config)
    assert halved.astype(float).std() == pytest.approx(0.5 * image.astype(float).std(), rel=0.05)


def test_augment_config_raises_when_probability_out_of_range() -> None:
    with pytest.raises(ValueError):
        AugmentConfig(jpeg_prob=1.5)


def test_dataset_items_repeat_within_an_epoch_and_vary_across_epochs_when_augmenting() -> None:
    spec = PreprocessSpec(size=64)
    images = [np.random.default_rng(i).integers(0, 256, (128, 128, 3), dtype=np.uint8) for i in range(2)]
    dataset = ImageDataset(images, [0, 1], spec, AugmentConfig(), seed=5)
    first, again, later = dataset[(0, 1)][0], dataset[(0, 1)][0], dataset[(3, 1)][0]
    assert torch.equal(first, again)
    assert not torch.equal(first, later)
    plain = ImageDataset(images, [0, 1], spec)
    assert np.array_equal(plain[1][0].numpy(), preprocess(images[1], spec))


def test_epoch_sampler_shuffles_per_epoch_and_tags_items_when_epoch_set() -> None:
    sampler = EpochSampler(10, shuffle=True, seed=0)
    sampler.set_epoch(2)
    items = list(sampler)
    assert {epoch for epoch, _ in items} == {2}
    assert sorted(index for _, index in items) == list(range(10))
    sampler.set_epoch(3)
    assert [i for _, i in sampler] != [i for _, i in items]


def test_cosine_with_warmup_rises_then_decays_when_stepped() -> None:
    factor = cosine_with_warmup(total_steps=10, warmup_steps=2)
    values = [factor(step) for step in range(10)]
    assert values[0] == 0.5 and values[1] == 1.0 and values[2] == 1.0
    assert all(a >= b for a, b in zip(values[2:], values[3:], strict=False))
    assert values[-1] < 0.05


def test_optimizer_state_round_trips_when_flattened_for_safetensors() -> None:
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([param], lr=0.1)
    param.sum().backward()
    optimizer.step()
    tensors, rest = optimizer_to_flat(optimizer.state_dict())
    json.dumps(rest)
    restored = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=0.5)
    restored.load_state_dict(optimizer_from_flat(tensors, json.loads(json.dumps(rest))))
    assert restored.param_groups[0]["lr"] == 0.1
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


# ----------------------------------------------------------------------------- aigi train


def test_train_writes_run_directory_when_data_is_valid(easy_data: Path, clip_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _train(easy_data, out, clip_dir) == 0
    for name in (
        "model.safetensors",
        "aigi.json",
        "metrics.json",
        "last/model.safetensors",
        "last/optimizer.safetensors",
    ):
        assert (out / name).is_file(), name
    meta = json.loads((out / "aigi.json").read_text())
    assert meta["labels"] == ["real", "gen_a", "gen_b"] and meta["task"] == "source"
    assert meta["preprocessing"]["size"] == 64
    training = meta["training"]
    assert training["completed"] and training["epochs"] == 2 and training["skipped_files"] == 0
    assert training["images"] == {"train": 36, "val": 18}
    assert training["hyperparameters"]["lr"] == 3e-3 and training["images_per_s"] > 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"train_loss", "val_accuracy", "images_per_s", "lr"} <= set(history[0])
    summary = load_meta(out).training  # typed: what export reads
    assert summary.data_dir == str(easy_data) and summary.extra == {} and summary.epochs_completed == 2
    best = max(history, key=lambda h: (h["val_accuracy"], -h["val_loss"]))  # ties: the earlier epoch stays
    assert summary.best_epoch == best["epoch"] and meta["metrics"]["val_accuracy"] == best["val_accuracy"]


def test_train_beats_chance_when_classes_are_separable(easy_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    # tiny's default rate (1e-3), not the 3e-3 the small local CLIP runs take; no degradations: a blurred or
    # rescaled "real" (fine noise) looks like the smooth fakes here, too much for a 3-epoch budget
    extra = ("--task", "binary", "--epochs", "3", "--batch-size", "12", "--lr", "1e-3")
    extra += ("--no-aug-jpeg", "--no-aug-blur", "--no-aug-resize")
    assert _train(easy_data, out, "tiny", *extra) == 0
    meta = json.loads((out / "aigi.json").read_text())
    assert meta["labels"] == ["real", "fake"] and meta["architecture"]["residual_stem"]
    assert meta["metrics"]["val_accuracy"] >= 0.8  # chance: 2/3 fakes -> 0.67 at best


def test_train_reproduces_weights_when_seed_fixed_whatever_the_workers(
    easy_data: Path, clip_dir: Path, tmp_path: Path
) -> None:
    assert _train(easy_data, tmp_path / "a", clip_dir, "--epochs", "1", "--seed", "3") == 0
    assert _train(easy_data, tmp_path / "b", clip_dir, "--epochs", "1", "--seed", "3", "--workers", "1") == 0
    _assert_same_weights(tmp_path / "a" / "last" / "model.safetensors", tmp_path / "b" / "last" / "model.safetensors")
    assert _train(easy_data, tmp_path / "c", clip_dir, "--epochs", "1", "--seed", "4") == 0
    different = _weights(tmp_path / "c" / "last" / "model.safetensors")
    same = _weights(tmp_path / "a" / "last" / "model.safetensors")
    assert not torch.equal(different["head.weight"], same["head.weight"])


def test_train_resume_ends_like_an_uninterrupted_run_when_stopped_after_one_epoch(
    easy_data: Path, clip_dir: Path, tmp_path: Path
) -> None:
    assert _train(easy_data, tmp_path / "full", clip_dir) == 0
    assert _train(easy_data, tmp_path / "split", clip_dir, "--stop-after-epochs", "1") == 0
    state = json.loads((tmp_path / "split" / "last" / "state.json").read_text())
    assert state["epoch"] == 1
    assert not json.loads((tmp_path / "split" / "aigi.json").read_text())["training"]["completed"]
    assert main(["-q", "train", "--out", str(tmp_path / "split"), "--resume"]) == 0
    _assert_same_weights(
        tmp_path / "full" / "last" / "model.safetensors", tmp_path / "split" / "last" / "model.safetensors"
    )
    _assert_same_weights(tmp_path / "full" / "model.safetensors", tmp_path / "split" / "model.safetensors")
    history = json.loads((tmp_path / "split" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert json.loads((tmp_path / "split" / "aigi.json").read_text())["training"]["completed"]


def test_train_keeps_the_tower_frozen_when_finetune_is_linear(easy_data: Path, clip_dir: Path, tmp_path: Path) -> None:
    assert _train(easy_data, tmp_path / "probe", clip_dir, "--finetune", "linear", "--epochs", "1") == 0
    trained = _weights(tmp_path / "probe" / "last" / "model.safetensors")
    original = _weights(clip_dir / "model.safetensors")
    key = "encoder.layers.1.mlp.fc2.weight"
    assert torch.equal(trained[f"vision.{key}"], original[f"vision_model.{key}"])


def test_train_exits_nonzero_with_one_line_when_dataset_has_a_single_class(
    tmp_path: Path, clip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_easy_dataset(tmp_path / "only-real", classes=("real",))
    code = _train(data, tmp_path / "run", clip_dir)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("aigi train: error:")
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_train_exits_with_model_source_error_when_model_is_unknown(
    easy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _train(easy_data, tmp_path / "run", "no-such-model")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown model" in err[0]


def test_train_exits_nonzero_with_one_line_when_resume_has_no_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["-q", "train", "--out", str(tmp_path / "nothing"), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "nothing to resume" in err[0]


def test_train_runs_two_ranks_and_writes_once_when_launched_with_torchrun(
    easy_data: Path, clip_dir: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "aigi.cli", "-q", "train", "--data", str(easy_data), "--out", str(out), "--model", str(clip_dir)]
    command += ["--epochs", "1", "--batch-size", "8", "--threads", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((out / "aigi.json").read_text())
    assert meta["training"]["world_size"] == 2
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert history[0]["train_images"] == 36 and history[0]["val_accuracy"] is not None


def test_train_subsamples_and_checkpoints_gradients_when_asked(easy_data: Path, clip_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    extra = ("--epochs", "1", "--grad-checkpointing", "on", "--max-train-images", "10", "--optimizer", "adamw")
    assert _train(easy_data, out, clip_dir, *extra) == 0
    training = json.loads((out / "aigi.json").read_text())["training"]
    assert training["hyperparameters"]["grad_checkpointing_enabled"] is True
    assert training["images"]["train"] == 10
