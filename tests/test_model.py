"""The detector network: presets, checkpoint round trip, fine-tune modes, local CLIP directories, bad sources."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from _training_helpers import make_tiny_clip_dir  # noqa: E402

from aigi.checkpoint import CheckpointMeta  # noqa: E402
from aigi.errors import CheckpointError, ModelSourceError  # noqa: E402
from aigi.preprocessing import PreprocessSpec  # noqa: E402
from aigi.training.model import (  # noqa: E402
    apply_finetune_mode,
    create_detector,
    load_checkpoint,
    save_checkpoint,
)
from aigi.training.presets import PRESETS  # noqa: E402


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clip_dir(tmp_path_factory.mktemp("clip") / "tiny-clip")


def _meta(arch, labels=("real", "gan", "sd")) -> CheckpointMeta:
    return CheckpointMeta(architecture=arch, task="source", labels=list(labels), preprocessing=PreprocessSpec(size=224))


def test_presets_describe_published_vit_shapes_when_listed() -> None:
    assert {"tiny", "vit-b-32", "vit-b-16", "vit-l-14", "vit-l-14-336"} <= set(PRESETS)
    large = PRESETS["vit-l-14"].vision_config_dict()
    assert (large["hidden_size"], large["num_hidden_layers"], large["patch_size"]) == (1024, 24, 14)
    assert PRESETS["vit-l-14"].gradient_checkpointing and not PRESETS["tiny"].gradient_checkpointing
    assert PRESETS["tiny"].residual_stem and not PRESETS["vit-b-16"].residual_stem


def test_create_detector_builds_tiny_with_residual_stem_when_preset_is_tiny() -> None:
    detector, arch = create_detector("tiny", num_labels=5, seed=0)
    assert arch.residual_stem and arch.source == "tiny"
    assert detector.image_size == 224
    assert 0.5e6 < sum(p.numel() for p in detector.parameters()) < 2e6
    with torch.no_grad():
        assert detector(torch.zeros(2, 3, 224, 224)).shape == (2, 5)


def test_checkpoint_round_trip_gives_identical_logits_when_saved_and_loaded(tmp_path: Path) -> None:
    detector, arch = create_detector("tiny", num_labels=3, seed=1)
    with torch.no_grad():  # a non-zero residual branch must survive the trip too
        detector.vision.embeddings.patch_embedding.residual.weight.normal_(std=0.02)
    detector.eval()
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    save_checkpoint(tmp_path, detector, _meta(arch))
    loaded, meta = load_checkpoint(tmp_path)
    with torch.no_grad():
        assert torch.equal(detector(pixels), loaded(pixels))
    assert meta.labels == ["real", "gan", "sd"] and meta.architecture == arch
    assert b"pickle" not in (tmp_path / "model.safetensors").read_bytes()[:200]


def test_load_checkpoint_raises_checkpoint_error_when_weights_missing(tmp_path: Path) -> None:
    detector, arch = create_detector("tiny", num_labels=3, seed=1)
    save_checkpoint(tmp_path, detector, _meta(arch))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def _trainable(detector) -> set[str]:
    return {name for name, p in detector.named_parameters() if p.requires_grad}


def test_apply_finetune_mode_trains_only_the_head_when_linear() -> None:
    detector, _ = create_detector("tiny", num_labels=2, seed=0)
    count = apply_finetune_mode(detector, "linear")
    assert _trainable(detector) == {"head.weight", "head.bias"}
    assert count == detector.head.weight.numel() + detector.head.bias.numel()


def test_apply_finetune_mode_trains_last_blocks_when_last_n() -> None:
    detector, _ = create_detector("tiny", num_labels=2, seed=0)
    apply_finetune_mode(detector, "last-2")
    names = _trainable(detector)
    assert any(n.startswith("vision.encoder.layers.3.") for n in names)
    assert any(n.startswith("vision.encoder.layers.2.") for n in names)
    assert not any(n.startswith("vision.encoder.layers.1.") for n in names)
    assert not any("embeddings" in n for n in names)
    assert any("post_layernorm" in n for n in names) and "head.weight" in names


def test_apply_finetune_mode_trains_everything_when_full() -> None:
    detector, _ = create_detector("tiny", num_labels=2, seed=0)
    apply_finetune_mode(detector, "linear")
    apply_finetune_mode(detector, "full")
    assert all(p.requires_grad for p in detector.parameters())


@pytest.mark.parametrize("mode", ["partial", "last-x", "last-9"])
def test_apply_finetune_mode_raises_value_error_when_mode_is_bad(mode: str) -> None:
    detector, _ = create_detector("tiny", num_labels=2, seed=0)
    with pytest.raises(ValueError):
        apply_finetune_mode(detector, mode)


def test_create_detector_loads_weights_when_source_is_a_local_clip_directory(clip_dir: Path) -> None:
    from safetensors.torch import load_file

    detector, arch = create_detector(str(clip_dir), num_labels=2, seed=0)
    assert detector.image_size == 64 and not arch.residual_stem
    saved = load_file(str(clip_dir / "model.safetensors"))
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"
    assert torch.equal(detector.vision.state_dict()[key.removeprefix("vision_model.")], saved[key])


def test_create_detector_raises_model_source_error_when_model_unknown(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="unknown model"):
        create_detector("no-such-preset", num_labels=2)
    with pytest.raises(ModelSourceError):
        create_detector(str(tmp_path / "missing"), num_labels=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelSourceError):
        create_detector(str(empty), num_labels=2)
