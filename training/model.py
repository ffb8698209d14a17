"""The detector network: a CLIP vision tower (``transformers``) with a linear head.

``create_detector`` builds one from a preset, a Hugging Face id or a local CLIP directory;
``save_checkpoint`` / ``load_checkpoint`` write and read the run-directory contract
(``model.safetensors`` + ``aigi.json``) with no pickle anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from aigi.checkpoint import WEIGHTS_FILENAME, ArchitectureMeta, CheckpointMeta, load_meta, save_meta
from aigi.errors import CheckpointError, ModelSourceError, SettingsError
from aigi.training.open_set import P_FAKE_EPS
from aigi.training.presets import get_preset

if TYPE_CHECKING:
    from transformers import CLIPVisionModel

logger = logging.getLogger(__name__)

FINETUNE_MODES_HELP = "full | linear | last-N (e.g. last-2)"
POOLINGS = ("cls", "mean")


class ResidualPatchEmbedding(nn.Module):
    """CLIP's patch embedding plus a zero-initialized branch that sees a high-pass residual of the input.

    The residual is ``x`` minus its 3x3 box blur, scaled: it carries the high-frequency traces
    (upsampling grids, checkerboards) a randomly initialized ViT learns slowly from RGB alone. The
    branch sees the residual and its magnitude: a trace's sign follows the image content, so a
    linear patch embedding of the signed residual averages it away, while the magnitude at each
    position of the upsampling grid is what tells generators apart. The
    branch starts at zero, so a pretrained tower is unchanged at step 0, and it lives inside the
    network so the served input stays RGB ``pixel_values``.
    """

    def __init__(self, patch_embedding: nn.Conv2d, scale: float) -> None:
        super().__init__()
        self.rgb = patch_embedding
        # a Conv2d's kernel_size and stride are pairs; torch annotates them as tuple[int, ...]
        kernel_h, kernel_w = patch_embedding.kernel_size
        stride_h, stride_w = patch_embedding.stride
        self.residual = nn.Conv2d(
            2 * patch_embedding.in_channels,
            patch_embedding.out_channels,
            kernel_size=(kernel_h, kernel_w),
            stride=(stride_h, stride_w),
            bias=False,
        )
        nn.init.zeros_(self.residual.weight)
        self.scale = float(scale)

    @property
    def weight(self) -> torch.Tensor:
        # transformers reads patch_embedding.weight.dtype to cast its input
        return self.rgb.weight

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        blurred = F.avg_pool2d(pixel_values, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        residual = (pixel_values - blurred) * self.scale
        return self.rgb(pixel_values) + self.residual(torch.cat([residual, residual.abs()], dim=1))


class Detector(nn.Module):
    """CLIP vision tower + linear head; ``forward`` returns logits ``[B, C]``.

    ``temperature`` is the calibration ``T`` from ``aigi.json`` (set by :func:`load_checkpoint`, 1.0 for a new
    network). ``forward`` ignores it (training and evaluation see raw logits); :class:`ExportableDetector`, the
    served graph, divides the logits by it before the softmax. It is not a weight: ``model.safetensors`` never
    holds it. ``threshold`` (the decision threshold) and ``open_set_threshold`` (``None``: no open set) likewise come
    from ``aigi.json`` for the served ``label_id``.
    """

    temperature: float
    threshold: float
    open_set_threshold: float | None

    def __init__(
        self,
        vision: CLIPVisionModel,
        num_labels: int,
        residual_stem: bool,
        residual_scale: float,
        pooling: str = "cls",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise SettingsError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.vision = vision
        self.pooling = pooling
        if residual_stem:
            embeddings = vision.embeddings
            # transformers declares a Conv2d here; the stem stands in for it (it calls the module and reads .weight)
            embeddings.patch_embedding = ResidualPatchEmbedding(  # type: ignore[assignment]
                embeddings.patch_embedding, residual_scale
            )
        self.head = nn.Linear(vision.config.hidden_size, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.temperature = 1.0
        self.threshold = 0.5
        self.open_set_threshold = None

    @property
    def image_size(self) -> int:
        """Input side the tower was built for."""
        size = self.vision.config.image_size
        if size is None or isinstance(size, (list, tuple)):  # transformers allows these; a CLIP tower is square
            raise TypeError(f"the vision tower's image_size must be one int, got {size!r}")
        return int(size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        outputs = self.vision(pixel_values=pixel_values)
        if self.pooling == "mean":
            pooled = self.vision.post_layernorm(outputs.last_hidden_state[:, 1:].mean(dim=1))
        else:
            pooled = outputs.pooler_output
        return self.head(pooled)


class ExportableDetector(nn.Module):
    """Wraps a :class:`Detector` to return ``(logits, probs, p_fake, label_id)``, the network model's outputs on Triton.

    ``logits`` are the network's raw logits; ``probs = softmax(logits / T)`` and ``p_fake = 1 - probs[:, 0]`` are
    calibrated with the temperature ``T`` (``temperature``, else the detector's own, from ``aigi.json``). With
    ``T = 1`` the graph has no division, exactly as before calibration existed.

    ``label_id`` (int64 ``[B, 1]``) is the served label: the argmax of ``probs``, or ``C`` (one past the labels,
    meaning ``unknown``) for an image with ``p_fake >= threshold`` whose known-generator confidence
    ``max_g p(g) / p_fake`` is below the detector's ``open_set_threshold`` (see :mod:`aigi.training.open_set`, whose
    :func:`~aigi.training.open_set.open_set_labels` is the same rule in numpy). Without an open-set threshold, or
    with fewer than two generator classes, it is the plain argmax.
    """

    def __init__(self, detector: Detector, temperature: float | None = None) -> None:
        super().__init__()
        self.detector = detector
        self.temperature = float(getattr(detector, "temperature", 1.0) if temperature is None else temperature)
        if not self.temperature > 0:
            raise SettingsError(f"temperature must be > 0, got {self.temperature}")
        self.threshold = float(getattr(detector, "threshold", 0.5))
        open_set = getattr(detector, "open_set_threshold", None)
        self.open_set_threshold = None if open_set is None else float(open_set)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.detector(pixel_values)
        scaled = logits.float() if self.temperature == 1.0 else logits.float() / self.temperature
        probs = torch.softmax(scaled, dim=-1)
        p_fake = 1.0 - probs[:, :1]
        return logits, probs, p_fake, self._label_id(probs, p_fake)

    def _label_id(self, probs: torch.Tensor, p_fake: torch.Tensor) -> torch.Tensor:
        top = probs.argmax(dim=-1, keepdim=True)
        classes = probs.shape[-1]
        if self.open_set_threshold is None or classes < 3:  # decided at export: no open-set nodes in the graph
            return top
        confidence = probs[:, 1:].amax(dim=-1, keepdim=True) / p_fake.clamp_min(P_FAKE_EPS)
        unknown = (p_fake >= self.threshold) & (confidence < self.open_set_threshold)
        return torch.where(unknown, torch.full_like(top, classes), top)


def _vision_from_config(config_dict: dict[str, Any]) -> CLIPVisionModel:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(**config_dict)
    config._attn_implementation = "sdpa"
    return CLIPVisionModel(config)


def _vision_from_pretrained(source: str) -> CLIPVisionModel:
    from transformers import CLIPVisionModel

    try:
        return CLIPVisionModel.from_pretrained(source, attn_implementation="sdpa")
    except (OSError, ValueError) as exc:
        raise ModelSourceError(
            f"cannot load CLIP weights from {source!r} (not a preset, local CLIP directory, or reachable "
            f"Hugging Face id): {str(exc).splitlines()[0]}"
        ) from exc


def _config_to_dict(config) -> dict:
    keys = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "patch_size",
        "image_size",
        "num_channels",
        "hidden_act",
        "layer_norm_eps",
        "projection_dim",
        "attention_dropout",
        "initializer_range",
        "initializer_factor",
    )
    return {key: getattr(config, key) for key in keys if hasattr(config, key)}


def create_detector(
    source: str,
    num_labels: int,
    residual_stem: bool | None = None,
    residual_scale: float = 4.0,
    seed: int | None = None,
) -> tuple[Detector, ArchitectureMeta]:
    """Build a detector from a preset name, a local CLIP directory or a Hugging Face id.

    Args:
        source: ``tiny``, ``vit-b-32``, ... (random init, offline), a directory with a saved CLIP
            model, or a Hugging Face id such as ``openai/clip-vit-large-patch14``.
        num_labels: classes of the head.
        residual_stem: force the residual branch on or off; the preset decides when ``None``
            (off for pretrained weights, so the method's architecture is unchanged).
        residual_scale: gain of the high-pass residual.
        seed: seeds the random initialization.

    Raises:
        ModelSourceError: ``source`` cannot be resolved.
    """
    if seed is not None:
        torch.manual_seed(seed)
    preset = get_preset(source)
    pooling = "cls"
    if preset is not None:
        vision = _vision_from_config(preset.vision_config_dict())
        use_stem = preset.residual_stem if residual_stem is None else residual_stem
        pooling = preset.pooling
    else:
        path = Path(source)
        if not path.exists() and ("/" not in source or source.startswith((".", "/"))):
            raise ModelSourceError(
                f"unknown model {source!r}: not a preset ({', '.join(_preset_names())}), "
                "an existing directory, or a Hugging Face id (owner/name)"
            )
        vision = _vision_from_pretrained(str(path) if path.exists() else source)
        use_stem = bool(residual_stem)
    arch = ArchitectureMeta(
        source=source,
        vision_config=_config_to_dict(vision.config),
        residual_stem=use_stem,
        residual_scale=residual_scale,
        pooling=pooling,
    )
    return Detector(vision, num_labels, use_stem, residual_scale, pooling), arch


def _preset_names() -> list[str]:
    from aigi.training.presets import PRESETS

    return list(PRESETS)


def build_from_meta(arch: ArchitectureMeta, num_labels: int) -> Detector:
    """Rebuild the (uninitialized) network described by a checkpoint's architecture, offline."""
    vision = _vision_from_config(arch.vision_config)
    return Detector(vision, num_labels, arch.residual_stem, arch.residual_scale, arch.pooling)


def apply_finetune_mode(detector: Detector, mode: str) -> int:
    """Freeze parameters per ``mode`` and return the number left trainable.

    ``full`` trains everything (the method); ``linear`` only the head (a linear probe, as in UnivFD);
    ``last-N`` the last N encoder blocks, the final LayerNorm and the head.
    """
    for parameter in detector.parameters():
        parameter.requires_grad = mode == "full"
    if mode != "full":
        trainable: list[nn.Module] = [detector.head]
        if mode.startswith("last-"):
            try:
                count = int(mode.split("-", 1)[1])
            except ValueError as exc:
                raise SettingsError(f"fine-tune mode must be {FINETUNE_MODES_HELP}, got {mode!r}") from exc
            layers = detector.vision.encoder.layers
            if not 1 <= count <= len(layers):
                raise SettingsError(f"{mode}: the tower has {len(layers)} blocks")
            trainable += [*layers[-count:], detector.vision.post_layernorm]
        elif mode != "linear":
            raise SettingsError(f"fine-tune mode must be {FINETUNE_MODES_HELP}, got {mode!r}")
        for module in trainable:
            for parameter in module.parameters():
                parameter.requires_grad = True
    return sum(p.numel() for p in detector.parameters() if p.requires_grad)


def save_checkpoint(run_dir: str | Path, detector: Detector, meta: CheckpointMeta) -> None:
    """Write ``model.safetensors`` and ``aigi.json`` into ``run_dir``."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in detector.state_dict().items()}
    tmp = run_dir / (WEIGHTS_FILENAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "producer": "aigi"})
    tmp.replace(run_dir / WEIGHTS_FILENAME)
    save_meta(run_dir, meta)


def load_checkpoint(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Detector, CheckpointMeta]:
    """Rebuild a detector from a run directory, in eval mode.

    Raises:
        CheckpointError: files missing, or weights that do not fit the described architecture.
    """
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    meta = load_meta(run_dir)
    weights = run_dir / WEIGHTS_FILENAME
    if not weights.is_file():
        raise CheckpointError(f"{run_dir}: no {WEIGHTS_FILENAME}")
    detector = build_from_meta(meta.architecture, meta.num_labels)
    try:
        detector.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights}: weights do not match aigi.json: {str(exc).splitlines()[0]}") from exc
    detector.temperature = meta.temperature
    detector.threshold = float(meta.threshold)
    detector.open_set_threshold = meta.open_set_threshold
    return detector.to(device).eval(), meta
