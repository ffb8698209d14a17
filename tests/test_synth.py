"""The offline benchmark: deterministic, disjoint photos per split, shared formats, photo-like generated images."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigi.errors import DatasetError
from aigi.labels import REAL
from aigi.training import synth
from aigi.training.datasets import index_dataset
from aigi.training.synth import synthesize, trivial_feature_baseline

TINY = {"train_per_class": 10, "val_per_class": 2, "test_per_class": 3, "size": 64, "seed": 0, "progress": False}
# Enough images for statistical checks (about 3 s to write): 100 test images per class give 100 real and 400
# generated ones, so the standard error of a balanced accuracy at chance is about 0.028 (see _chance_bound).
STATS = {**TINY, "train_per_class": 60, "val_per_class": 1, "test_per_class": 100}
SIGMAS = 4.0  # a bound of 4 standard errors: a chance result exceeds it with probability ~6e-5


def _chance_bound(n_real: int, n_fake: int) -> float:
    """``SIGMAS`` standard errors of a balanced accuracy when the classifier is at chance.

    Balanced accuracy is the mean of the real and the generated images' accuracies. At chance each is a binomial
    proportion with variance ``q(1 - q) / n <= 1 / (4n)``, so the standard error is at most
    ``0.25 * sqrt(1/n_real + 1/n_fake)``; with ``n`` images split evenly that is the usual ``0.5 / sqrt(n)``.
    """
    return SIGMAS * 0.25 * float(np.sqrt(1 / n_real + 1 / n_fake))


def _hashes(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() for path in root.rglob("*.*")}


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "bench"
    return root, synthesize(root, workers=1, **TINY)


@pytest.fixture(scope="module")
def stats_benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth-stats") / "bench"
    synthesize(root, workers=1, **STATS)
    return root


def test_synthesize_writes_identical_files_when_seed_repeats_across_worker_counts(
    tiny_benchmark: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = tiny_benchmark

    synthesize(tmp_path / "again", workers=2, **TINY)

    assert _hashes(tmp_path / "again") == _hashes(root)


def test_synthesize_changes_images_when_seed_changes(tiny_benchmark: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tiny_benchmark

    synthesize(tmp_path / "other", workers=1, **{**TINY, "seed": 1})

    images = {name: digest for name, digest in _hashes(root).items() if not name.endswith(".json")}
    other = _hashes(tmp_path / "other")
    assert sum(other.get(name) == digest for name, digest in images.items()) == 0


def test_synthesize_builds_real_and_every_generator_when_run(tiny_benchmark: tuple[Path, dict]) -> None:
    root, summary = tiny_benchmark

    index = index_dataset(root)

    assert index.layout == "splits"
    assert index.class_names[0] == REAL and set(index.class_names[1:]) == set(synth.GENERATORS)
    assert len(synth.GENERATORS) == 7 and set(synth.FAMILIES) < set(synth.GENERATORS)
    assert index.counts()["train"] == {label: 10 for label in index.class_names}
    assert index.counts()["test"] == {label: 3 for label in index.class_names}
    assert json.loads((root / "synth.json").read_text()) == summary
    assert set(summary["generators"]) == set(index.class_names[1:])
    assert "not real generator output" in summary["note"]
    assert all(Image.open(path).size == (64, 64) for path in list(root.rglob("*.png"))[:10])


def test_synthesize_draws_splits_from_disjoint_photos_when_run(tiny_benchmark: tuple[Path, dict]) -> None:
    _, summary = tiny_benchmark
    photos = {split: set(names) for split, names in summary["source_photos"].items()}

    assert photos["train"] and photos["val"] and photos["test"]
    assert not photos["train"] & photos["test"]
    assert not photos["train"] & photos["val"]
    assert not photos["val"] & photos["test"]


def test_synthesize_mixes_jpeg_and_png_in_both_classes_when_run(tiny_benchmark: tuple[Path, dict]) -> None:
    root, _ = tiny_benchmark
    real = {path.suffix for path in root.glob(f"*/{REAL}/*")}
    generated = {path.suffix for path in root.glob("*/*/*") if path.parent.name != REAL}

    assert real == {".jpg", ".png"}
    assert generated == {".jpg", ".png"}


def test_generated_image_keeps_source_brightness_and_looks_like_it_when_any_generator_runs() -> None:
    rng = np.random.default_rng(0)
    source = synth._random_crop(rng, synth.PHOTOS_BY_SPLIT["train"][:2], 64)
    for name in synth.GENERATORS:
        generated = synth._match_stats(
            synth._generate(name, synth._generator_kernels(name), source, rng), source, gray=False
        )

        assert generated.shape == source.shape and generated.dtype == np.uint8
        np.testing.assert_allclose(generated.mean(axis=(0, 1)), source.mean(axis=(0, 1)), atol=1.0)
        np.testing.assert_allclose(generated.std(axis=(0, 1)), source.std(axis=(0, 1)), rtol=0.05)
        psnr = 10 * np.log10(255.0**2 / np.mean((generated.astype(float) - source) ** 2))
        assert 24 < psnr < 60, f"{name}: PSNR {psnr:.1f} dB against its source"


def test_generated_classes_match_real_brightness_when_benchmark_is_built(stats_benchmark: Path) -> None:
    def brightness(label: str) -> np.ndarray:
        return np.asarray([np.asarray(Image.open(p).convert("L")).mean() for p in stats_benchmark.glob(f"*/{label}/*")])

    real = brightness(REAL)
    for name in synth.GENERATORS:
        generated = brightness(name)
        # class means differ by sampling alone: bound the difference by SIGMAS standard errors (about 5 grey levels
        # with 161 images a class whose brightness spreads by ~45)
        stderr = np.sqrt(real.var(ddof=1) / real.size + generated.var(ddof=1) / generated.size)
        difference = generated.mean() - real.mean()
        assert abs(difference) <= SIGMAS * stderr, f"{name}: {difference:+.1f} grey levels, standard error {stderr:.1f}"


def test_trivial_feature_baseline_stays_near_chance_when_benchmark_has_enough_test_images(
    stats_benchmark: Path,
) -> None:
    test_counts = index_dataset(stats_benchmark).counts()["test"]
    n_real = test_counts[REAL]
    n_fake = sum(count for label, count in test_counts.items() if label != REAL)
    bound = _chance_bound(n_real, n_fake)  # 100 real, 400 generated: 0.112

    result = trivial_feature_baseline(stats_benchmark)

    assert result["features"] == list(synth.TRIVIAL_FEATURES)
    assert set(result["per_feature_balanced_accuracy"]) == set(synth.TRIVIAL_FEATURES)
    scores = {"logistic": result["logistic_balanced_accuracy"], **result["per_feature_balanced_accuracy"]}
    for name, score in scores.items():
        assert abs(score - 0.5) <= bound, f"{name}: balanced accuracy {score} is beyond chance (0.5 +- {bound:.3f})"


def test_trivial_feature_baseline_exceeds_the_chance_bound_when_format_gives_the_class_away(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, suffix in ((REAL, "jpg"), ("gan", "png")):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(20):
                noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(noise).save(tmp_path / split / label / f"{i:02d}.{suffix}")

    result = trivial_feature_baseline(tmp_path)

    assert result["per_feature_balanced_accuracy"]["is_jpeg"] == 1.0
    assert result["logistic_balanced_accuracy"] == 1.0 > 0.5 + _chance_bound(20, 20)


def test_synthesize_replaces_its_own_files_when_rerun_with_fewer_images(tmp_path: Path) -> None:
    small = {**TINY, "train_per_class": 2, "val_per_class": 1, "test_per_class": 1}
    synthesize(tmp_path, workers=1, **small)
    synthesize(tmp_path, workers=1, **{**small, "train_per_class": 1})

    assert len(list((tmp_path / "train" / REAL).iterdir())) == 1


def test_synthesize_raises_dataset_error_when_folder_holds_other_files(tmp_path: Path) -> None:
    (tmp_path / "train" / REAL).mkdir(parents=True)
    (tmp_path / "train" / REAL / "mine.jpg").write_bytes(b"user data")

    with pytest.raises(DatasetError, match="did not write"):
        synthesize(tmp_path, workers=1, **TINY)
    assert (tmp_path / "train" / REAL / "mine.jpg").exists()


def test_synthesize_writes_the_same_images_of_a_generator_when_only_some_generators_are_built(
    tiny_benchmark: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = tiny_benchmark
    chosen = ["diffusion_refine", "gan_tconv"]

    summary = synthesize(tmp_path, workers=1, generators=chosen, **TINY)

    assert summary["classes"] == [REAL, "gan_tconv", "diffusion_refine"]  # GENERATORS order, not the order given
    assert set(summary["generators"]) == set(chosen)
    full = {name: digest for name, digest in _hashes(root).items() if not name.endswith(".json")}
    subset = {name: digest for name, digest in _hashes(tmp_path).items() if not name.endswith(".json")}
    assert subset == {name: digest for name, digest in full.items() if name.split("/")[1] in summary["classes"]}


def test_synthesize_removes_classes_left_out_when_rerun_with_fewer_generators(tmp_path: Path) -> None:
    small = {**TINY, "train_per_class": 1, "val_per_class": 1, "test_per_class": 1}
    synthesize(tmp_path, workers=1, **small)

    synthesize(tmp_path, workers=1, generators=["inpaint_region"], **small)

    assert {path.name for path in (tmp_path / "train").iterdir()} == {REAL, "inpaint_region"}
    assert index_dataset(tmp_path).class_names == [REAL, "inpaint_region"]


def test_synthesize_raises_dataset_error_when_a_generator_is_unknown(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown generator.*stylegan9"):
        synthesize(tmp_path / "out", workers=1, generators=["gan_tconv", "stylegan9"], **TINY)
    assert not (tmp_path / "out").exists()


def _grid_peak(residuals: list[np.ndarray]) -> float:
    """Largest ratio, over the frequencies of the 8-pixel grid (multiples of 1/8 cycle per pixel in y and x, DC
    excluded), of the residuals' summed power spectrum to the median power of the surrounding 7x7 bins (the centre
    3x3 left out): about 1 where a residual has no periodic component, large at a period that divides 8."""
    power = sum(np.abs(np.fft.fft2(residual - residual.mean())) ** 2 for residual in residuals)
    n = power.shape[0]
    ratios = []
    for ky in range(8):
        for kx in range(8):
            if ky == kx == 0:
                continue
            rows = [(ky * n // 8 + d) % n for d in range(-3, 4)]
            cols = [(kx * n // 8 + d) % n for d in range(-3, 4)]
            block = power[np.ix_(rows, cols)].astype(float)
            centre = block[3, 3]
            block[2:5, 2:5] = np.nan
            ratios.append(centre / np.nanmedian(block))
    return max(ratios)


def _residuals(name: str, count: int = 12, size: int = 64) -> list[np.ndarray]:
    """What the generator added to each of ``count`` train crops (grey levels, channel mean)."""
    rng = np.random.default_rng(0)
    kernels = synth._generator_kernels(name)
    residuals = []
    for _ in range(count):
        source = synth._random_crop(rng, synth.PHOTOS_BY_SPLIT["train"], size)
        generated = synth._match_stats(synth._generate(name, kernels, source, rng), source, gray=synth._is_gray(source))
        residuals.append((generated.astype(float) - source).mean(axis=2))
    return residuals


@pytest.mark.parametrize("name", ["decoder_nonperiodic", "diffusion_refine"])
def test_generated_trace_has_no_grid_peak_when_family_is_not_periodic(name: str) -> None:
    periodic = _grid_peak(_residuals("gan_tconv"))
    other = _grid_peak(_residuals(name))

    assert periodic > 50, f"gan_tconv: grid peak ratio {periodic:.1f}; the periodic reference lost its peak"
    assert other < 6, f"{name}: grid peak ratio {other:.1f}, a periodic trace where none should be"


def test_inpaint_region_changes_one_region_and_keeps_the_rest_when_generated() -> None:
    rng = np.random.default_rng(0)
    changed_shares = []
    for _ in range(8):
        source = synth._random_crop(rng, synth.PHOTOS_BY_SPLIT["train"], 128)
        generated = synth._generate("inpaint_region", synth._generator_kernels("inpaint_region"), source, rng)
        changed = np.abs(generated - source).max(axis=2) > 0.5
        changed_shares.append(changed.mean())
        # the untouched part includes every border: the blob stays around the centre
        assert not changed[0].any() and not changed[-1].any() and not changed[:, 0].any() and not changed[:, -1].any()

    assert min(changed_shares) > 0.1 and max(changed_shares) < 0.8, changed_shares


def test_every_generator_description_says_it_is_simulated_when_listed() -> None:
    for name, description in synth.GENERATORS.items():
        assert description.startswith("simulated "), name


@pytest.mark.parametrize("size", [0, 60, 100000])
def test_synthesize_raises_dataset_error_when_size_is_unusable(tmp_path: Path, size: int) -> None:
    with pytest.raises(DatasetError, match="size"):
        synthesize(tmp_path, workers=1, **{**TINY, "size": size})
