"""Named CLIP vision architectures, built offline from the published hyperparameters (no download)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """A CLIP vision tower shape plus aigi's defaults for it.

    Attributes:
        name: the preset's CLI name.
        hidden_size, num_layers, num_heads, mlp_size, patch_size, image_size: the ViT shape.
        residual_stem: add the high-pass residual input branch (helps random-init models learn
            upsampling traces; off for presets meant to take pretrained weights).
        pooling: ``cls`` (CLIP's class token, the method) or ``mean`` over patch tokens, which gives a
            randomly initialized model a direct path from every patch's traces to the head.
        gradient_checkpointing: default for training (large presets).
        gflops: forward cost per image at ``image_size`` (2 FLOPs per multiply-accumulate), as published.
    """

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_size: int
    patch_size: int
    image_size: int
    residual_stem: bool = False
    pooling: str = "cls"
    gradient_checkpointing: bool = False
    gflops: float | None = None

    def vision_config_dict(self) -> dict:
        """Keyword arguments for ``transformers.CLIPVisionConfig``."""
        return {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.mlp_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "patch_size": self.patch_size,
            "image_size": self.image_size,
            "num_channels": 3,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
        }


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("tiny", 128, 4, 4, 512, 16, 224, residual_stem=True, pooling="mean"),
        Preset("vit-b-32", 768, 12, 12, 3072, 32, 224, gflops=8.8),
        Preset("vit-b-16", 768, 12, 12, 3072, 16, 224, gflops=35.1),
        Preset("vit-l-14", 1024, 24, 16, 4096, 14, 224, gradient_checkpointing=True, gflops=162.0),
        Preset("vit-l-14-336", 1024, 24, 16, 4096, 14, 336, gradient_checkpointing=True, gflops=381.0),
    )
}


def get_preset(name: str) -> Preset | None:
    """The preset called ``name``, or ``None``."""
    return PRESETS.get(name)
