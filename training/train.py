"""The training loop: decode once, augment per step, warmup + cosine, keep the best epoch, resume, DDP.

Images are decoded into memory once; every step crops them through the shared preprocessing with a random
grid-aligned origin (see :mod:`aigi.training.augment`). Validation runs after each epoch on center crops;
the best epoch (val accuracy, ties broken by val loss) is what ``RUN_DIR/model.safetensors`` holds. A
resumable state is written to ``RUN_DIR/last`` after every epoch. Under ``torchrun`` each rank trains on
its share of the data and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from aigi.checkpoint import (
    METRICS_FILENAME,
    ArchitectureMeta,
    CheckpointMeta,
    TrainingSummary,
    save_meta,
    write_json_atomic,
)
from aigi.errors import DatasetError, SettingsError
from aigi.labels import labels_for_task, target_index
from aigi.preprocessing import PreprocessSpec
from aigi.training.augment import DEFAULT_AUG_BLUR, DEFAULT_AUG_JPEG, DEFAULT_AUG_RESIZE, AugmentConfig
from aigi.training.data import EpochSampler, ImageDataset, ShardSampler, make_loader
from aigi.training.evaluate import predict_logits
from aigi.training.model import Detector, apply_finetune_mode, build_from_meta, create_detector, save_checkpoint
from aigi.training.presets import get_preset
from aigi.training.resume import read_state, restore_state, save_state

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

RANDOM_INIT_LR = 1e-3
PRETRAINED_LR = 1e-4
AMP_MODES = ("auto", "bf16", "fp16", "off")
# Settings a resumed run may change: they do not alter the result.
RUNTIME_FIELDS = ("resume", "workers", "progress", "stop_after_epochs", "threads", "device")


@dataclass
class TrainConfig:
    """Everything ``aigi train`` takes; stored in ``aigi.json`` and in the resumable state."""

    data: str
    out: str
    model: str = "tiny"
    task: str = "source"
    epochs: int = 12
    finetune: str = "full"
    optimizer: str = "adam"
    lr: float | None = None
    weight_decay: float = 0.0
    clip_grad: float | None = 1.0
    warmup_epochs: float = 1.0
    batch_size: int = 64
    grad_accum: int = 1
    amp: str = "auto"
    grad_checkpointing: str = "auto"
    seed: int = 0
    resume: bool = False
    workers: int = 0
    max_train_images: int | None = None
    aug_flip: bool = False
    aug_contrast: float = 0.0
    aug_jpeg: float = DEFAULT_AUG_JPEG
    aug_blur: float = DEFAULT_AUG_BLUR
    aug_resize: float = DEFAULT_AUG_RESIZE
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    allow_outside_root: bool = False
    stop_after_epochs: int | None = None
    threads: int | None = None
    device: str | None = None
    progress: bool = True

    def resolved_lr(self) -> float:
        """``lr``, or the default for the model source: random-init presets learn at a higher rate."""
        if self.lr is not None:
            return float(self.lr)
        return RANDOM_INIT_LR if get_preset(self.model) is not None else PRETRAINED_LR

    def validate(self) -> None:
        """Raise ``ValueError`` on settings that cannot work."""
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise SettingsError("epochs, batch size and grad accumulation must be at least 1")
        if self.optimizer not in ("adam", "adamw"):
            raise SettingsError(f"optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.amp not in AMP_MODES:
            raise SettingsError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.grad_checkpointing not in ("auto", "on", "off"):
            raise SettingsError(f"grad checkpointing must be auto, on or off, got {self.grad_checkpointing!r}")
        if self.warmup_epochs < 0:
            raise SettingsError("warmup epochs must not be negative")


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(requested: str | None) -> _Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        device = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
        return _Dist(device=device)
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(rank=dist.get_rank(), world_size=world_size, device=device)


def _all_reduce_sum(values: list[float], dist_info: _Dist) -> list[float]:
    if dist_info.world_size == 1:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=dist_info.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        if mode in ("bf16", "fp16"):
            logger.info("mixed precision runs on CUDA only; training in fp32 on %s", device)
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)


def _use_grad_checkpointing(mode: str, source: str, vision_config: dict[str, Any]) -> bool:
    if mode != "auto":
        return mode == "on"
    preset = get_preset(source)
    if preset is not None:
        return preset.gradient_checkpointing
    return int(vision_config.get("num_hidden_layers", 0)) >= 24  # ViT-L and larger


def _enable_grad_checkpointing(vision: PreTrainedModel) -> None:
    kwargs = {"use_reentrant": False}  # the reentrant variant drops gradients when inputs need none (frozen stems)
    if hasattr(vision, "activation_checkpointing_enable"):  # transformers >= 5
        vision.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        vision.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def cosine_with_warmup(total_steps: int, warmup_steps: int):
    """Per-step LR multiplier: linear warmup to 1, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _load_split(index, split: str, progress: bool) -> tuple[list[np.ndarray], list, list]:
    from aigi.training.datasets import decode_samples

    samples = index.split(split)
    if not samples:
        return [], [], []
    return decode_samples(samples, progress=progress)


def _subsample(samples: list, limit: int | None, seed: int) -> list:
    if limit is None or limit >= len(samples):
        return samples
    keep = np.sort(np.random.default_rng(seed).permutation(len(samples))[:limit])
    return [samples[i] for i in keep]


def _train_epoch(run: _Run, epoch: int) -> dict[str, float]:
    """One pass over the training loader, stepping the optimizer every ``grad_accum`` batches.

    Returns:
        ``train_loss``, ``train_accuracy``, ``train_images`` (summed over ranks), ``train_time_s``, ``images_per_s``.
    """
    from tqdm import tqdm

    config, dist_info, opt = run.config, run.dist, run.opt
    model, loader = opt.model, run.data.train_loader
    model.train()
    device = dist_info.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    accum = config.grad_accum
    steps = len(loader)
    show = config.progress and dist_info.main
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not show)
    started = time.perf_counter()
    opt.optimizer.zero_grad(set_to_none=True)
    for step, (pixels, targets) in enumerate(loader):
        pixels = pixels.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        update = (step + 1) % accum == 0 or step + 1 == steps
        # model is the DDP wrapper exactly when several ranks run (see _build_optimization)
        if update or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
            sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        else:
            sync = model.no_sync()
        autocast = torch.autocast(device.type, dtype=opt.amp_dtype) if opt.amp_dtype else contextlib.nullcontext()
        with sync:
            with autocast:
                logits = model(pixels)
            loss = F.cross_entropy(logits.float(), targets)
            (opt.scaler.scale(loss / accum) if opt.scaler else loss / accum).backward()
        if update:
            _optimizer_step(opt, config.clip_grad)
        batch = targets.shape[0]
        seen += batch
        loss_sum += loss.detach().double() * batch
        correct += (logits.detach().argmax(dim=1) == targets).sum()
        bar.update()
        if step % 5 == 4 or step + 1 == steps:  # .item() syncs the GPU: not every step
            rate = seen * dist_info.world_size / (time.perf_counter() - started)
            loss_now, acc_now = loss_sum.item() / seen, correct.item() / seen
            bar.set_postfix(loss=f"{loss_now:.3f}", acc=f"{acc_now:.3f}", img_s=f"{rate:.0f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    bar.close()
    totals = _all_reduce_sum([loss_sum.item(), float(correct.item()), float(seen)], dist_info)
    total_loss, total_correct, total_seen = totals
    return {
        "train_loss": total_loss / max(total_seen, 1),
        "train_accuracy": total_correct / max(total_seen, 1),
        "train_images": int(total_seen),
        "train_time_s": elapsed,
        "images_per_s": total_seen / elapsed if elapsed > 0 else 0.0,
    }


def _optimizer_step(opt: _Optimization, clip_grad: float | None) -> None:
    """Clip (after unscaling fp16 gradients), step the optimizer and the LR schedule, clear the gradients."""
    optimizer, scaler = opt.optimizer, opt.scaler
    if clip_grad:
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], clip_grad)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    opt.scheduler.step()


def _validate(model, loader, amp_dtype, dist_info) -> dict[str, float | None]:
    logits, targets = predict_logits(model, loader, dist_info.device, amp_dtype, progress=False)
    if logits.shape[0]:
        log_probs = torch.log_softmax(torch.from_numpy(logits).double(), dim=1)
        loss_sum = float(-log_probs[torch.arange(len(targets)), torch.from_numpy(targets)].sum())
        correct = float((logits.argmax(axis=1) == targets).sum())
    else:
        loss_sum = correct = 0.0
    loss_sum, correct, count = _all_reduce_sum([loss_sum, correct, float(len(targets))], dist_info)
    if count == 0:
        return {"val_loss": None, "val_accuracy": None}
    return {"val_loss": loss_sum / count, "val_accuracy": correct / count}


def _is_better(candidate: dict[str, Any], best: dict[str, Any] | None) -> bool:
    if best is None:
        return True
    if candidate["val_accuracy"] is None:
        return True  # no validation data: the latest epoch wins
    if candidate["val_accuracy"] != best["val_accuracy"]:
        return candidate["val_accuracy"] > best["val_accuracy"]
    return candidate["val_loss"] < best["val_loss"]


def _dataset_summary(index) -> dict[str, Any]:
    try:
        return index.summary()
    except Exception as exc:  # the summary is informative only
        logger.debug("dataset summary unavailable: %s", exc)
        return {}


# ----------------------------------------------------------------------------- what a run is built from


@dataclass
class _Data:
    """The decoded training and validation splits, ready to iterate."""

    index: Any  # the DatasetIndex the splits came from
    labels: list[str]
    train_set: ImageDataset
    val_set: ImageDataset
    sampler: EpochSampler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    skipped: list[tuple[Any, Any]]  # (path, reason) of the files that did not decode, train then val


@dataclass
class _Model:
    """The detector on its device, and how it was built."""

    detector: Detector
    arch: ArchitectureMeta
    spec: PreprocessSpec
    parameters: int  # parameters of the detector
    trainable: int  # parameters the fine-tuning mode trains
    grad_checkpointing: bool


@dataclass
class _Optimization:
    """The module a step runs (the detector, or its DDP wrapper), the optimizer, its schedule and precision."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    lr: float


@dataclass
class TrainingState:
    """How far a run has got; restored by ``--resume`` and saved to ``RUN_DIR/last`` after every epoch.

    Attributes:
        history: one record per epoch run (``epoch``, ``lr``, losses, accuracies, timings).
        best: the record of the best epoch so far (val accuracy, ties broken by val loss), or ``None``.
        start_epoch: epochs already run when this process started.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    start_epoch: int = 0


@dataclass
class _Run:
    """Everything the epoch loop needs, built once by :func:`train`."""

    config: TrainConfig
    out: Path
    dist: _Dist
    data: _Data
    net: _Model
    opt: _Optimization
    summary: TrainingSummary  # what is known before the first epoch; see _summary_now for the progress fields
    state: TrainingState


def train(config: TrainConfig) -> TrainingSummary:
    """Train a detector into ``config.out`` and return the training summary (also in ``aigi.json``).

    Raises:
        DatasetError: the data cannot be trained on (empty, a single class, no real images, nothing decodable).
        ModelSourceError: ``config.model`` cannot be resolved.
        CheckpointError: ``--resume`` without a resumable state.
    """
    out = Path(config.out)
    config, saved = _resolve_config(config, out)
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    dist_info = _setup_distributed(config.device)
    torch.manual_seed(config.seed)
    started = time.perf_counter()

    index, labels, index_train = _index_training_data(config)
    net = _build_model(config, saved, len(labels), dist_info.device)
    data = _prepare_data(config, index, labels, index_train, net.spec, dist_info)
    opt = _build_optimization(config, net.detector, len(data.train_loader), dist_info)
    state = _restore_training_state(out, saved, net.detector, opt, config.epochs)
    run = _Run(config, out, dist_info, data, net, opt, _initial_summary(config, data, net, opt, dist_info), state)
    _log_start(run)
    _run_epochs(run)
    return _finish(run, started).training


def _resolve_config(config: TrainConfig, out: Path) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The config to run, and the resumable state when resuming.

    On ``--resume`` the config saved in ``out/last`` is used, with this invocation's :data:`RUNTIME_FIELDS`.
    """
    if not config.resume:
        return config, None
    saved = read_state(out)
    runtime = {name: getattr(config, name) for name in RUNTIME_FIELDS}
    known = {f.name for f in fields(TrainConfig)}
    # a state from before --aug-resize existed trained without it: resuming must not switch it on
    stored = {"aug_resize": 0.0, **saved["config"]}
    return TrainConfig(**{**{k: v for k, v in stored.items() if k in known}, **runtime}), saved


def _index_training_data(config: TrainConfig) -> tuple[Any, list[str], list]:
    """Index ``config.data``; returns the index, the model's labels and the (subsampled) training samples."""
    from aigi.training.datasets import index_dataset

    index = index_dataset(
        config.data,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
        allow_outside_root=config.allow_outside_root,
    )
    labels = labels_for_task(index.class_names, config.task)
    index_train = _subsample(index.split("train"), config.max_train_images, config.seed)
    if not index_train:
        raise DatasetError(f"{config.data}: no training images")
    return index, labels, index_train


def _build_model(config: TrainConfig, saved: dict[str, Any] | None, num_labels: int, device: torch.device) -> _Model:
    """Create the detector (or rebuild the saved architecture), set its fine-tuning mode and move it to ``device``."""
    if saved is not None:
        arch = ArchitectureMeta(**saved["architecture"])
        detector = build_from_meta(arch, num_labels)
    else:
        detector, arch = create_detector(config.model, num_labels, seed=config.seed)
    spec = PreprocessSpec(size=detector.image_size)
    trainable = apply_finetune_mode(detector, config.finetune)
    grad_ckpt = _use_grad_checkpointing(config.grad_checkpointing, config.model, arch.vision_config)
    if grad_ckpt:
        _enable_grad_checkpointing(detector.vision)
    detector.to(device)
    parameters = sum(p.numel() for p in detector.parameters())
    return _Model(detector, arch, spec, parameters, trainable, grad_ckpt)


def _prepare_data(
    config: TrainConfig, index: Any, labels: list[str], index_train: list, spec: PreprocessSpec, dist_info: _Dist
) -> _Data:
    """Decode the training and validation images once and wrap them in this rank's loaders.

    Raises:
        DatasetError: no training image decodes, or the decoded ones hold a single class.
    """
    from aigi.training.datasets import decode_samples

    progress = config.progress and dist_info.main
    train_images, train_kept, train_skipped = decode_samples(index_train, progress=progress)
    val_images, val_kept, val_skipped = _load_split(index, "val", progress)
    if not train_images:
        raise DatasetError(f"{config.data}: none of the {len(index_train)} training images could be decoded")
    train_targets = [target_index(s.label, labels) for s in train_kept]
    if len(set(train_targets)) < 2:
        raise DatasetError(f"{config.data}: the training split holds a single class; need real and generated images")
    val_targets = [target_index(s.label, labels) for s in val_kept]

    augment_config = AugmentConfig(
        flip=config.aug_flip,
        contrast_prob=config.aug_contrast,
        jpeg_prob=config.aug_jpeg,
        blur_prob=config.aug_blur,
        resize_prob=config.aug_resize,
    )
    train_set = ImageDataset(train_images, train_targets, spec, augment_config, seed=config.seed)
    val_set = ImageDataset(val_images, val_targets, spec)
    sampler = EpochSampler(
        len(train_set), shuffle=True, seed=config.seed, rank=dist_info.rank, world_size=dist_info.world_size
    )
    pin = dist_info.device.type == "cuda"
    train_loader = make_loader(train_set, sampler, config.batch_size, config.workers, pin)
    val_loader = make_loader(
        val_set, ShardSampler(len(val_set), dist_info.rank, dist_info.world_size), config.batch_size, 0, pin
    )
    skipped = train_skipped + val_skipped
    return _Data(index, labels, train_set, val_set, sampler, train_loader, val_loader, skipped)


def _build_optimization(
    config: TrainConfig, detector: torch.nn.Module, loader_batches: int, dist_info: _Dist
) -> _Optimization:
    """Wrap the detector for DDP when several ranks run, and set up optimizer, warmup + cosine schedule and AMP."""
    model = detector
    if dist_info.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            detector, device_ids=[dist_info.device.index] if dist_info.device.type == "cuda" else None
        )
    params = [p for p in detector.parameters() if p.requires_grad]
    lr = config.resolved_lr()
    optimizer_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_cls(params, lr=lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(loader_batches / config.grad_accum)
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(config.epochs * steps_per_epoch, warmup_steps)
    )
    amp_dtype = _amp_dtype(config.amp, dist_info.device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return _Optimization(model, optimizer, scheduler, scaler, amp_dtype, lr)


def _restore_training_state(
    out: Path, saved: dict[str, Any] | None, detector: torch.nn.Module, opt: _Optimization, epochs: int
) -> TrainingState:
    """A fresh state, or (resuming) the saved weights, optimizer, schedule, scaler, RNGs and history."""
    if saved is None:
        return TrainingState()
    document = restore_state(out, detector, opt.optimizer, opt.scheduler, opt.scaler)
    state = TrainingState(document["history"], document["best"], int(document["epoch"]))
    logger.info("resuming %s after epoch %d of %d", out, state.start_epoch, epochs)
    return state


def _initial_summary(
    config: TrainConfig, data: _Data, net: _Model, opt: _Optimization, dist_info: _Dist
) -> TrainingSummary:
    """The parts of the training summary known before the first epoch."""
    index_skipped = getattr(data.index, "skipped", []) or []
    return TrainingSummary(
        data=str(config.data),
        dataset=_dataset_summary(data.index),
        images={"train": len(data.train_set), "val": len(data.val_set)},
        skipped_files=len(data.skipped) + len(index_skipped),
        skipped=[[str(p), str(r)] for p, r in data.skipped[:50]],
        hyperparameters={**asdict(config), "lr": opt.lr, "grad_checkpointing_enabled": net.grad_checkpointing},
        amp=str(opt.amp_dtype).replace("torch.", "") if opt.amp_dtype else "off",
        device=str(dist_info.device),
        world_size=dist_info.world_size,
        parameters=net.parameters,
        trainable_parameters=net.trainable,
        epochs=config.epochs,
    )


def _log_start(run: _Run) -> None:
    config, net = run.config, run.net
    logger.info(
        "training %s (%s, %.2fM params, %.2fM trainable) on %d images (%d val), %d classes, lr %.1e, %s, %d rank(s)",
        config.model,
        config.finetune,
        net.parameters / 1e6,
        net.trainable / 1e6,
        len(run.data.train_set),
        len(run.data.val_set),
        len(run.data.labels),
        run.opt.lr,
        run.dist.device,
        run.dist.world_size,
    )


# ----------------------------------------------------------------------------- the epoch loop


def _run_epochs(run: _Run) -> None:
    """Train from ``run.state.start_epoch`` to ``epochs`` (or ``stop_after_epochs`` more), saving after each."""
    config, state = run.config, run.state
    stop_at = config.epochs
    if config.stop_after_epochs is not None:
        stop_at = min(config.epochs, state.start_epoch + config.stop_after_epochs)
    for epoch in range(state.start_epoch, stop_at):
        record = _run_epoch(run, epoch)
        state.history.append(record)
        improved = _is_better(record, state.best)
        if improved:
            state.best = dict(record)
        logger.info(
            "epoch %d/%d: train loss %.4f acc %.4f | val loss %s acc %s | %.1f img/s | %.0f s%s",
            epoch + 1,
            config.epochs,
            record["train_loss"],
            record["train_accuracy"],
            _fmt(record["val_loss"]),
            _fmt(record["val_accuracy"]),
            record["images_per_s"],
            record["epoch_time_s"],
            " (best)" if improved else "",
        )
        if run.dist.main:
            _save_progress(run, epoch, improved)


def _run_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """Train one epoch and validate; returns the epoch's record for the history."""
    epoch_started = time.perf_counter()
    run.data.sampler.set_epoch(epoch)
    device = run.dist.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    record: dict[str, Any] = {"epoch": epoch + 1, "lr": run.opt.optimizer.param_groups[0]["lr"]}
    record.update(_train_epoch(run, epoch))
    record.update(_validate(run.net.detector, run.data.val_loader, run.opt.amp_dtype, run.dist))
    record["peak_gpu_memory_mb"] = _peak_memory_mb(device)
    record["epoch_time_s"] = time.perf_counter() - epoch_started
    return record


def _save_progress(run: _Run, epoch: int, improved: bool) -> None:
    """Rank 0 after an epoch: the checkpoint if it improved, the resumable state and ``metrics.json``."""
    state = run.state
    if improved:
        save_checkpoint(run.out, run.net.detector, _make_meta(run, done=False))
    payload = {
        "epoch": epoch + 1,
        "config": asdict(run.config),
        "architecture": asdict(run.net.arch),
        "labels": run.data.labels,
        "history": state.history,
        "best": state.best,
    }
    save_state(run.out, run.net.detector, run.opt.optimizer, run.opt.scheduler, run.opt.scaler, payload)
    if state.best is None:  # cannot happen: _run_epochs sets it before saving, as any first epoch beats None
        raise RuntimeError(f"{run.out}: no best epoch recorded after epoch {epoch + 1}")
    write_json_atomic(run.out / METRICS_FILENAME, {"history": state.history, "best_epoch": state.best["epoch"]})


def _summary_now(run: _Run, done: bool) -> TrainingSummary:
    """The training summary with the progress so far: epochs run, best epoch, time, throughput, GPU memory."""
    history, best = run.state.history, run.state.best
    elapsed = sum(h["epoch_time_s"] for h in history)
    train_time = sum(h["train_time_s"] for h in history)
    images = sum(h["train_images"] for h in history)
    peaks = [h["peak_gpu_memory_mb"] for h in history if h.get("peak_gpu_memory_mb") is not None]
    return replace(
        run.summary,
        completed=done,
        epochs_completed=len(history),
        best_epoch=best["epoch"] if best else None,
        time_s=round(elapsed, 2),
        images_per_s=round(images / train_time, 2) if train_time else None,
        peak_gpu_memory_mb=max(peaks) if peaks else None,
    )


def _make_meta(run: _Run, done: bool) -> CheckpointMeta:
    """``aigi.json`` for the best epoch so far."""
    best = run.state.best
    metrics = {k: best[k] for k in ("val_accuracy", "val_loss", "train_accuracy", "train_loss")} if best else {}
    return CheckpointMeta(
        architecture=run.net.arch,
        task=run.config.task,
        labels=run.data.labels,
        preprocessing=run.net.spec,
        training=_summary_now(run, done),
        metrics=metrics,
    )


def _finish(run: _Run, started: float) -> CheckpointMeta:
    """Write the final ``aigi.json`` (rank 0), leave the process group, log the outcome; returns the metadata."""
    done = len(run.state.history) >= run.config.epochs
    meta = _make_meta(run, done)
    if run.dist.main:
        save_meta(run.out, meta)
    if run.dist.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    best = run.state.best
    logger.info(
        "%s after %d/%d epochs in %.0f s: best epoch %s, val accuracy %s; wrote %s",
        "finished" if done else "stopped",
        len(run.state.history),
        run.config.epochs,
        time.perf_counter() - started,
        meta.training.best_epoch,
        _fmt(best["val_accuracy"] if best else None),
        run.out,
    )
    return meta


def _peak_memory_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
