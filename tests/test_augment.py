"""The degradations of the default training recipe: the resize degradation, and the flags that turn each off."""

from __future__ import annotations

import numpy as np
import pytest

from aigi.cli import build_parser
from aigi.errors import SettingsError
from aigi.preprocessing import PreprocessSpec
from aigi.training.augment import AugmentConfig, augment, random_rescale, rescale

DEGRADATIONS = ("aug_jpeg", "aug_blur", "aug_resize")


def _image(seed: int = 0, shape: tuple[int, int, int] = (64, 48, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_rescale_keeps_shape_and_dtype_and_loses_detail_when_factor_below_one() -> None:
    image = _image()
    out = rescale(image, 0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    # noise has all its energy at high frequencies: a half-size round trip takes most of it away
    assert out.astype(float).std() < 0.8 * image.astype(float).std()
    assert np.array_equal(rescale(image, 1.0), image)


def test_random_rescale_is_deterministic_when_seeded() -> None:
    image = _image(1)
    first = random_rescale(image, np.random.default_rng(7), (0.4, 1.0))
    again = random_rescale(image, np.random.default_rng(7), (0.4, 1.0))
    other = random_rescale(image, np.random.default_rng(8), (0.4, 1.0))
    assert first.shape == image.shape and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_augment_rescales_the_crop_when_resize_is_certain() -> None:
    spec = PreprocessSpec(size=64)
    image = _image(2, (64, 64, 3))
    config = AugmentConfig(resize_prob=1.0, resize_scale=(0.5, 0.5))
    out = augment(image, spec, np.random.default_rng(3), config)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert np.array_equal(out, rescale(image, 0.5))
    assert np.array_equal(augment(image, spec, np.random.default_rng(3), AugmentConfig()), image)


@pytest.mark.parametrize("bad", [{"resize_prob": -0.1}, {"resize_scale": (0.0, 1.0)}, {"resize_scale": (0.9, 0.5)}])
def test_augment_config_raises_when_resize_settings_are_invalid(bad: dict) -> None:
    with pytest.raises(SettingsError):
        AugmentConfig(**bad)


def _config(*flags: str):
    pytest.importorskip("torch")
    from aigi.training.commands import train_config

    return train_config(build_parser().parse_args(["train", "--data", "d", "--out", "o", *flags]))


def test_default_recipe_has_every_degradation_on() -> None:
    pytest.importorskip("torch")
    from aigi.training.train import TrainConfig

    default = TrainConfig(data="d", out="o")
    assert all(getattr(default, name) > 0 for name in DEGRADATIONS)
    from_cli = _config()
    assert all(getattr(from_cli, name) == getattr(default, name) for name in DEGRADATIONS)


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_each_no_aug_flag_turns_off_only_its_degradation(name: str) -> None:
    default = _config()
    off = _config("--no-" + name.replace("_", "-"))
    assert getattr(off, name) == 0.0
    assert all(getattr(off, other) == getattr(default, other) for other in DEGRADATIONS if other != name)


def test_aug_probability_flags_still_set_the_probability() -> None:
    config = _config("--aug-jpeg", "0.1", "--aug-blur", "0", "--aug-resize", "1")
    assert (config.aug_jpeg, config.aug_blur, config.aug_resize) == (0.1, 0.0, 1.0)
    with pytest.raises(SystemExit):
        _config("--aug-jpeg", "0.1", "--no-aug-jpeg")
