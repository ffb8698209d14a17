"""Dataset indexing: every supported layout, stratified splits, skipped files counted, one-line errors."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigi.errors import DatasetError
from aigi.training import commands
from aigi.training.datasets import Sample, decode_samples, index_dataset


def _image(path: Path, seed: int = 0, size: tuple[int, int] = (16, 16), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def _images(folder: Path, count: int, ext: str = "png") -> list[Path]:
    return [_image(folder / f"{i:03d}.{ext}", seed=i) for i in range(count)]


def _assignment(index) -> dict[str, str | None]:
    return {str(sample.path): sample.split for sample in index.samples}


def test_index_dataset_keeps_split_folders_when_layout_has_splits(tmp_path: Path) -> None:
    for split, count in (("train", 4), ("val", 2), ("test", 3)):
        for label in ("real", "gan", "sd"):
            _images(tmp_path / split / label, count)

    index = index_dataset(tmp_path)

    assert index.layout == "splits"
    assert index.class_names == ["real", "gan", "sd"]
    assert index.counts() == {
        "train": {"real": 4, "gan": 4, "sd": 4},
        "val": {"real": 2, "gan": 2, "sd": 2},
        "test": {"real": 3, "gan": 3, "sd": 3},
    }
    assert all(sample.path.parent.parent.name == sample.split for sample in index.samples)


def test_index_dataset_labels_single_fake_folder_when_splits_hold_real_and_fake(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        _images(tmp_path / split / "Real", 2)
        _images(tmp_path / split / "fake", 2)

    index = index_dataset(tmp_path)

    assert index.class_names == ["real", "fake"]
    assert {len(index.split(name)) for name in ("train", "val", "test")} == {4}


def test_index_dataset_turns_val_into_test_when_only_train_and_val_exist(tmp_path: Path) -> None:
    for label in ("real", "fake"):
        _images(tmp_path / "train" / label, 10)
        _images(tmp_path / "val" / label, 3)

    index = index_dataset(tmp_path, val_fraction=0.2)

    assert index.counts() == {
        "train": {"real": 8, "fake": 8},
        "val": {"real": 2, "fake": 2},
        "test": {"real": 3, "fake": 3},
    }
    assert all(sample.path.parent.parent.name == "val" for sample in index.split("test"))


def test_index_dataset_splits_every_class_into_every_split_when_folders_have_no_splits(tmp_path: Path) -> None:
    for label, count in (("real", 20), ("gan", 7), ("ldm", 3)):
        _images(tmp_path / label, count)

    index = index_dataset(tmp_path, val_fraction=0.2, test_fraction=0.2)

    assert index.layout == "folders"
    counts = index.counts()
    for split in ("train", "val", "test"):
        assert set(counts[split]) == {"real", "gan", "ldm"}
    assert counts["val"]["real"] == 4 and counts["test"]["real"] == 4 and counts["train"]["real"] == 12
    assert sum(sum(per.values()) for per in counts.values()) == 30


def test_index_dataset_split_is_deterministic_when_seed_is_fixed(tmp_path: Path) -> None:
    for label in ("real", "fake"):
        _images(tmp_path / label, 30)

    first = _assignment(index_dataset(tmp_path, seed=3))
    again = _assignment(index_dataset(tmp_path, seed=3))
    other = _assignment(index_dataset(tmp_path, seed=4))

    assert first == again
    assert first != other


def test_index_dataset_puts_everything_in_test_when_fractions_ask_for_it(tmp_path: Path) -> None:
    for label in ("real", "fake"):
        _images(tmp_path / label, 5)

    index = index_dataset(tmp_path, val_fraction=0.0, test_fraction=1.0)

    assert index.counts() == {"test": {"real": 5, "fake": 5}}


def test_index_dataset_labels_fakes_by_generator_when_forensynths_has_generator_folders(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for category in ("airplane", "cat"):
            _images(tmp_path / split / category / "0_real", 2)
            _images(tmp_path / split / category / "1_fake", 2)
    for generator, category in (("progan", "airplane"), ("stylegan", "car")):
        _images(tmp_path / "test" / generator / category / "0_real", 2)
        _images(tmp_path / "test" / generator / category / "1_fake", 2)
    _images(tmp_path / "test" / "deepfake" / "0_real", 2)
    _images(tmp_path / "test" / "deepfake" / "1_fake", 2)

    index = index_dataset(tmp_path)

    assert index.layout == "forensynths"
    counts = index.counts()
    assert counts["train"] == {"real": 4, "fake": 4}
    assert counts["val"] == {"real": 4, "fake": 4}
    assert counts["test"] == {"real": 6, "deepfake": 2, "progan": 2, "stylegan": 2}


def test_index_dataset_splits_forensynths_when_it_has_no_split_folders(tmp_path: Path) -> None:
    for category in ("airplane", "bird"):
        _images(tmp_path / category / "0_real", 10)
        _images(tmp_path / category / "1_fake", 10)

    index = index_dataset(tmp_path)

    assert index.class_names == ["real", "fake"]
    assert set(index.counts()) == {"train", "val", "test"}


def test_index_dataset_uses_genimage_val_as_test_when_layout_is_genimage(tmp_path: Path) -> None:
    for generator in ("sdv14", "midjourney"):
        subset = tmp_path / generator / f"imagenet_{generator}"
        _images(subset / "train" / "ai", 10)
        _images(subset / "train" / "nature", 10)
        _images(subset / "val" / "ai", 3)
        _images(subset / "val" / "nature", 3)

    index = index_dataset(tmp_path)

    assert index.layout == "genimage"
    assert index.class_names == ["real", "midjourney", "sdv14"]
    assert index.counts()["test"] == {"real": 6, "midjourney": 3, "sdv14": 3}
    assert index.counts()["val"] == {"real": 2, "midjourney": 1, "sdv14": 1}
    assert all(sample.path.parent.parent.name == "val" for sample in index.split("test"))


def test_index_dataset_reads_splits_when_manifest_has_split_column(tmp_path: Path) -> None:
    rows = ["path,label,split"]
    for split in ("train", "val", "test"):
        for label in ("real", "fake"):
            for i in range(2):
                name = f"img/{split}_{label}_{i}.png"
                _image(tmp_path / name, seed=i)
                rows.append(f"{name},{label},{split}")
    manifest = tmp_path / "data.csv"
    manifest.write_text("\n".join(rows) + "\n")

    index = index_dataset(manifest)

    assert index.layout == "manifest"
    assert index.counts() == {split: {"real": 2, "fake": 2} for split in ("train", "val", "test")}
    assert all(sample.path.is_absolute() or sample.path.exists() for sample in index.samples)


def test_index_dataset_splits_by_class_when_manifest_has_no_split_column(tmp_path: Path) -> None:
    rows = ["path,label"]
    for label in ("real", "gan"):
        for i in range(10):
            _image(tmp_path / label / f"{i}.jpg", seed=i, fmt="JPEG")
            rows.append(f"{label}/{i}.jpg,{label}")
    rows.append("gan/missing.png,gan")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")

    index = index_dataset(tmp_path / "m.csv")

    assert set(index.counts()) == {"train", "val", "test"}
    assert index.summary()["skipped"] == {"count": 1, "reasons": {"listed in the manifest but missing": 1}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,class\na.png,real\n", "header"),
        ("path,label\na.png\n", "expected 2 fields"),
        ("path,label,split\na.png,real,holdout\n", "split must be"),
        ("", "empty manifest"),
    ],
)
def test_index_dataset_raises_dataset_error_when_manifest_is_malformed(tmp_path: Path, text: str, message: str) -> None:
    _image(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(text)

    with pytest.raises(DatasetError, match=message) as caught:
        index_dataset(tmp_path / "m.csv")
    assert "\n" not in str(caught.value)


def test_index_dataset_counts_skipped_files_when_folder_has_junk(tmp_path: Path, caplog) -> None:
    for label in ("real", "fake"):
        _images(tmp_path / label, 4)
    (tmp_path / "real" / "empty.png").write_bytes(b"")
    (tmp_path / "fake" / "notes.txt").write_text("not an image")
    _image(tmp_path / "stray.png")
    (tmp_path / "README.md").write_text("dataset notes live at the root and are not data")

    with caplog.at_level(logging.WARNING, logger="aigi.training.datasets"):
        index = index_dataset(tmp_path)

    assert len(index.samples) == 8
    assert index.summary()["skipped"] == {
        "count": 3,
        "reasons": {"empty file (0 bytes)": 1, "not an image extension": 1, "not inside a class folder": 1},
    }
    assert "empty.png" in caplog.text and "notes.txt" in caplog.text


def test_decode_samples_reports_failures_when_files_are_corrupt(tmp_path: Path, caplog) -> None:
    good = _image(tmp_path / "good.png", size=(40, 24))
    whole = _image(tmp_path / "whole.jpg", size=(64, 64), fmt="JPEG").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole[: len(whole) // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"definitely not a png")
    samples = [Sample(path, "real", "test") for path in (good, truncated, garbage)]

    with caplog.at_level(logging.WARNING, logger="aigi.training.datasets"):
        images, decoded, failed = decode_samples(samples, progress=False)

    assert [sample.path for sample in decoded] == [good]
    assert images[0].shape == (24, 40, 3) and images[0].dtype == np.uint8
    assert [path for path, _ in failed] == [str(truncated), str(garbage)]
    assert all(reason for _, reason in failed)
    assert "truncated.jpg" in caplog.text


def test_decode_samples_crops_on_grid_without_resizing_when_max_side_is_set(tmp_path: Path) -> None:
    path = _image(tmp_path / "big.png", size=(100, 60))
    original = np.asarray(Image.open(path).convert("RGB"))

    images, _, _ = decode_samples([Sample(path, "real", "test")], max_side=48, progress=False)

    # offsets (60-48)//2=6 -> 0 and (100-48)//2=26 -> 24 on the 8-pixel grid
    np.testing.assert_array_equal(images[0], original[0:48, 24:72])


def test_index_dataset_raises_dataset_error_when_path_is_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        index_dataset(tmp_path / "nowhere")


def test_index_dataset_raises_dataset_error_when_folder_is_empty(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        index_dataset(tmp_path)


def test_index_dataset_raises_dataset_error_when_only_junk_is_found(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="1 empty file"):
        index_dataset(tmp_path)


def test_index_dataset_raises_dataset_error_when_real_class_is_missing(tmp_path: Path) -> None:
    _images(tmp_path / "gan", 3)
    _images(tmp_path / "ldm", 3)
    with pytest.raises(DatasetError, match="no 'real' class"):
        index_dataset(tmp_path)


def test_index_dataset_raises_dataset_error_when_only_one_class_exists(tmp_path: Path) -> None:
    _images(tmp_path / "real", 3)
    with pytest.raises(DatasetError, match="only the 'real' class"):
        index_dataset(tmp_path)


def test_summary_reports_layout_counts_and_skips_when_indexed(tmp_path: Path) -> None:
    for label in ("real", "fake"):
        _images(tmp_path / "train" / label, 3)
        _images(tmp_path / "test" / label, 2)

    summary = index_dataset(tmp_path).summary()

    assert summary["layout"] == "splits"
    assert summary["class_names"] == ["real", "fake"]
    assert summary["num_samples"] == 10
    assert summary["counts"]["test"] == {"real": 2, "fake": 2}
    assert sum(summary["counts"]["val"].values()) == 2  # carved out of train
    assert summary["skipped"] == {"count": 0, "reasons": {}}


def _labelled(index) -> list[tuple[str, str]]:
    return sorted((str(sample.path), sample.label) for sample in index.samples)


def _expected(root: Path, counts: dict[str, int]) -> list[tuple[str, str]]:
    return sorted((str(root / label / f"{i:03d}.png"), label) for label, count in counts.items() for i in range(count))


def test_index_dataset_indexes_each_file_once_with_its_label_when_a_symlink_points_back_to_the_root(
    tmp_path: Path, caplog
) -> None:
    _images(tmp_path / "real", 3)
    _images(tmp_path / "fake", 2)
    (tmp_path / "real" / "up").symlink_to("..", target_is_directory=True)

    with caplog.at_level(logging.WARNING, logger="aigi.training.datasets"):
        index = index_dataset(tmp_path, val_fraction=0.0, test_fraction=1.0)

    assert _labelled(index) == _expected(tmp_path, {"real": 3, "fake": 2})
    warnings = [record.getMessage() for record in caplog.records if "symlinked folders" in record.getMessage()]
    assert len(warnings) == 1 and "skipped 1 symlinked folders" in warnings[0]


@pytest.mark.timeout(30)
def test_index_dataset_terminates_and_indexes_each_file_once_when_symlinks_form_a_cycle(tmp_path: Path) -> None:
    _images(tmp_path / "real", 3)
    _images(tmp_path / "fake", 3)
    (tmp_path / "real" / "loop").symlink_to("../fake", target_is_directory=True)
    (tmp_path / "fake" / "loop").symlink_to("../real", target_is_directory=True)

    index = index_dataset(tmp_path, val_fraction=0.0, test_fraction=1.0)

    assert _labelled(index) == _expected(tmp_path, {"real": 3, "fake": 3})


def test_index_dataset_follows_outside_links_once_when_a_dataset_is_assembled_from_symlinks(tmp_path: Path) -> None:
    pool = tmp_path / "mnt" / "coco"
    _images(pool, 3)
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (root / "train" / "real").symlink_to(pool, target_is_directory=True)  # a folder link out of the root
    (root / "train" / "real2").symlink_to(pool, target_is_directory=True)  # the same folder a second time
    _images(root / "train" / "fake", 2)
    (root / "train" / "fake" / "outside.png").symlink_to(_image(tmp_path / "elsewhere.png", seed=9))
    (root / "train" / "gan").mkdir()
    (root / "train" / "gan" / "dup.png").symlink_to("../fake/000.png")  # a second name for an indexed image

    index = index_dataset(root, val_fraction=0.0)

    fakes = [*(root / "train" / "fake" / f"{i:03d}.png" for i in range(2)), root / "train" / "fake" / "outside.png"]
    assert _labelled(index) == sorted(
        [(str(root / "train" / "real" / f"{i:03d}.png"), "real") for i in range(3)]
        + [(str(path), "fake") for path in fakes]
    )


def _manifest_with(tmp_path: Path, extra_row: str) -> Path:
    root = tmp_path / "dataset"
    rows = ["path,label"]
    for label in ("real", "fake"):
        for i in range(3):
            _image(root / label / f"{i}.png", seed=i)
            rows.append(f"{label}/{i}.png,{label}")
    rows.append(extra_row)
    manifest = root / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_index_dataset_raises_dataset_error_when_manifest_row_resolves_outside_its_folder(
    tmp_path: Path, kind: str
) -> None:
    outside = _image(tmp_path / "outside.png", seed=7)
    if kind == "symlink":
        (tmp_path / "dataset").mkdir()
        (tmp_path / "dataset" / "link").symlink_to(tmp_path, target_is_directory=True)
    row = {"dotdot": "../outside.png", "absolute": str(outside), "symlink": "link/outside.png"}[kind]
    manifest = _manifest_with(tmp_path, f"{row},fake")

    with pytest.raises(DatasetError, match=r"m\.csv:8: .*outside.png.* resolves outside") as caught:
        index_dataset(manifest)
    assert "\n" not in str(caught.value) and "allow_outside_root" in str(caught.value)

    index = index_dataset(manifest, allow_outside_root=True)
    assert len(index.samples) == 7
    assert os.path.realpath(outside) in {os.path.realpath(sample.path) for sample in index.samples}


@pytest.mark.parametrize("command", ["train", "eval"])
def test_cli_accepts_allow_outside_root_when_train_or_eval_is_given_the_flag(command: str) -> None:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    base = ["--data", "d.csv", "--out", "o"] + (["--checkpoint", "run"] if command == "eval" else [])

    assert parser.parse_args([command, *base, "--allow-outside-root"]).allow_outside_root is True
    assert parser.parse_args([command, *base]).allow_outside_root is False
