"""``aigi data synth``, ``train``, ``eval``, ``explain``: argument parsing only; torch is imported in the handlers."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aigi.training.train import TrainConfig

logger = logging.getLogger(__name__)


def _synth(args: argparse.Namespace) -> int:
    from aigi.training.synth import synthesize

    summary = synthesize(
        args.out,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        test_per_class=args.test_per_class,
        size=args.size,
        seed=args.seed,
        workers=args.workers,
        generators=args.generators,
        progress=not args.quiet,
    )
    counts = summary.get("counts", {})
    total = sum(sum(per_class.values()) for per_class in counts.values())
    print(f"wrote {total} images ({', '.join(summary.get('classes', []))}) to {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from aigi.training.train import train

    if not args.resume and (args.data is None or args.out is None):
        print("aigi train: error: --data and --out are required (only --out with --resume)", file=sys.stderr)
        return 2
    # our own errors (AigiError) become one line in aigi.cli; anything else is a bug
    summary = train(train_config(args))
    print(
        f"trained {summary.epochs_completed}/{summary.epochs} epochs in {summary.time_s or 0:.0f} s "
        f"({summary.images_per_s or 0:.1f} img/s); best epoch {summary.best_epoch}; wrote {args.out}"
    )
    return 0


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` that ``aigi train`` flags ``args`` ask for."""
    from aigi.training.train import TrainConfig

    return TrainConfig(
        data=args.data or "",
        out=args.out,
        model=args.model,
        task=args.task,
        epochs=args.epochs,
        finetune=args.finetune,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        clip_grad=args.clip_grad or None,
        warmup_epochs=args.warmup_epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        amp=args.amp,
        grad_checkpointing=args.grad_checkpointing,
        seed=args.seed,
        resume=args.resume,
        workers=args.workers,
        max_train_images=args.max_train_images,
        aug_flip=args.flip,
        aug_contrast=args.aug_contrast,
        aug_jpeg=args.aug_jpeg,
        aug_blur=args.aug_blur,
        aug_resize=args.aug_resize,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        allow_outside_root=args.allow_outside_root,
        stop_after_epochs=args.stop_after_epochs,
        threads=args.threads,
        device=args.device,
        progress=not args.quiet,
    )


def _eval(args: argparse.Namespace) -> int:
    if args.leave_one_out:
        return _leave_one_out(args)
    if args.checkpoint is None:
        print("aigi eval: error: --checkpoint is required (or --leave-one-out, which trains its own)", file=sys.stderr)
        return 2
    from aigi.training.evaluate import evaluate

    report = evaluate(
        args.checkpoint,
        args.data,
        args.out,
        target_fpr=args.target_fpr,
        robustness=args.robustness,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        allow_outside_root=args.allow_outside_root,
        progress=not args.quiet,
        open_set_keep=args.open_set_keep,
    )
    test = report["test"]
    keys: tuple[str, ...] = ("accuracy", "real_accuracy", "fake_accuracy", "average_precision", "roc_auc")
    keys += ("attribution_accuracy", "attribution_accuracy_fakes")
    summary = {k: round(test[k], 4) for k in keys if test.get(k) is not None}
    summary["threshold"] = round(report["threshold"], 6)
    open_set = report.get("open_set") or {}
    if open_set.get("test"):
        summary["open_set_threshold"] = round(open_set["threshold"], 6)
        summary["test_unknown_share"] = open_set["test"]["unknown_share"]
        summary["attribution_accuracy_named"] = open_set["test"]["attribution_accuracy_named"]
    print(json.dumps(summary))
    if "robustness" in report:
        for name, row in report["robustness"].items():
            print(f"  {name:15s} " + " ".join(f"{k}={v:.4f}" for k, v in row.items() if v is not None))
    print(f"wrote {args.out}/REPORT.md and report.json; threshold stored in {args.checkpoint}/aigi.json")
    return 0


def _leave_one_out(args: argparse.Namespace) -> int:
    from aigi.training.leave_one_out import MARKDOWN_FILENAME, LeaveOneOutConfig, run_leave_one_out

    if args.checkpoint is not None or args.robustness:
        print(
            "aigi eval: error: --leave-one-out trains its own models; drop --checkpoint/--robustness", file=sys.stderr
        )
        return 2
    config = LeaveOneOutConfig(
        model=args.model,
        task=args.task,
        epochs=args.epochs,
        max_train_images=args.max_train_images,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        aug_jpeg=args.aug_jpeg,
        aug_blur=args.aug_blur,
        aug_resize=args.aug_resize,
        target_fpr=args.target_fpr,
        held_out=tuple(args.held_out) if args.held_out else None,
        allow_outside_root=args.allow_outside_root,
        workers=args.workers,
        threads=args.threads,
        device=args.device,
    )
    document = run_leave_one_out(args.data, args.out, config, progress=not args.quiet)
    for fold in document["folds"]:
        values = {k: fold[k] for k in ("unseen_detection", "unseen_auroc", "known_vs_unknown_auroc")}
        print(json.dumps({"held_out": fold["held_out"], **{k: _round(v) for k, v in values.items()}}))
    print(json.dumps({k: _round(v) for k, v in document["summary"].items()}))
    print(f"wrote {args.out}/{MARKDOWN_FILENAME}, leave_one_out.json and leave_one_out.png")
    return 0


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def _explain(args: argparse.Namespace) -> int:
    from aigi.training.explain import explain

    if not args.images and args.data is None:
        print("aigi explain: error: give at least one IMAGE, or --data with a dataset folder", file=sys.stderr)
        return 2
    document = explain(
        args.checkpoint,
        args.images,
        args.out,
        data=args.data,
        split=args.split,
        per_class=args.per_class,
        method=args.method,
        batch_size=args.batch_size,
        device=args.device,
        allow_outside_root=args.allow_outside_root,
    )
    side = "x".join(str(n) for n in document["grid"])
    print(
        f"explained {len(document['images'])} images ({document['method']}, {side} patches); "
        f"wrote {args.out}/explanations.json and {document['grid_png']}"
    )
    return 0


def _open_set_keep(text: str) -> float:
    value = _probability(text)
    if value <= 0.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _name_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return value


def _add_degradations(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--aug-jpeg/--aug-blur/--aug-resize P`` and ``--no-aug-...`` (P = 0): the default recipe has all three on."""
    from aigi.training.augment import DEFAULT_AUG_BLUR, DEFAULT_AUG_JPEG, DEFAULT_AUG_RESIZE

    degradations = (
        ("jpeg", DEFAULT_AUG_JPEG, "JPEG re-compression at quality 30-100"),
        ("blur", DEFAULT_AUG_BLUR, "Gaussian blur with sigma 0-3 px"),
        ("resize", DEFAULT_AUG_RESIZE, "rescaling by 0.4-1x and back to size (bicubic)"),
    )
    for name, default, what in degradations:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            f"--aug-{name}", type=_probability, default=default, help=f"probability of {what} (default {default})"
        )
        group.add_argument(
            f"--no-aug-{name}", dest=f"aug_{name}", action="store_const", const=0.0, help=f"same as --aug-{name} 0"
        )


def _add_synth(data_sub) -> None:
    parser = data_sub.add_parser("synth", help="build the offline real-vs-generated benchmark (no download)")
    parser.add_argument("--out", required=True, help="output folder (train/val/test/<label>/...)")
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=150)
    parser.add_argument("--size", type=int, default=256, help="image side, a multiple of 8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument(
        "--generators",
        type=_name_list,
        default=None,
        metavar="A,B,...",
        help="comma-separated simulated generators to build (default: all seven: gan_tconv, upsample_nearest, "
        "upsample_bilinear, ldm_autoencoder with periodic traces; decoder_nonperiodic, diffusion_refine with none; "
        "inpaint_region, one region only); a generator's images are the same whichever others are built",
    )
    parser.set_defaults(handler=_synth)


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a CLIP detector on a dataset folder",
        description="Train a detector into a run directory (model.safetensors + aigi.json + metrics.json).",
    )
    parser.add_argument("--data", help="dataset folder (class subfolders, optionally under train/val/test)")
    parser.add_argument("--out", help="run directory to write")
    parser.add_argument("--model", default="tiny", help="preset (tiny, vit-b-32, ...), local CLIP directory or HF id")
    parser.add_argument("--task", choices=("binary", "source"), default="source")
    parser.add_argument("--epochs", type=_positive_int, default=12)
    parser.add_argument("--finetune", default="full", help="full | linear | last-N (e.g. last-2)")
    parser.add_argument("--optimizer", choices=("adam", "adamw"), default="adam")
    parser.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default 1e-3 for presets, 1e-4 for pretrained)"
    )
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    parser.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warmup, then cosine decay per step")
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="per device")
    parser.add_argument("--grad-accum", type=_positive_int, default=1, help="batches per optimizer step")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto", help="CUDA only")
    parser.add_argument("--grad-checkpointing", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes (0: in the main process)")
    parser.add_argument("--max-train-images", type=_positive_int, default=None, help="subsample for quick runs")
    _add_degradations(parser)
    parser.add_argument(
        "--aug-contrast", type=_probability, default=0.0, help="probability of a random contrast gain (0.5x-2x)"
    )
    parser.add_argument(
        "--flip",
        action="store_true",
        help="random horizontal flips (off by default: a flip mirrors each generator's periodic trace)",
    )
    parser.add_argument("--val-fraction", type=float, default=0.1, help="for datasets without a val folder")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="for datasets without a test folder")
    _add_allow_outside_root(parser)
    parser.add_argument(
        "--stop-after-epochs", type=_positive_int, default=None, help="stop after N epochs of this invocation"
    )
    parser.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.set_defaults(handler=_train)


def _add_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a run directory; calibrate its threshold on val",
        description="Score the test split, pick the threshold on val for a target FPR and store it in aigi.json. "
        "With --leave-one-out: for each generator, train a model without it, calibrate on val without it and "
        "test real images against it (leave_one_out.json, LEAVE_ONE_OUT.md, leave_one_out.png).",
    )
    parser.add_argument(
        "--checkpoint", default=None, help="run directory from 'aigi train' (required unless --leave-one-out)"
    )
    parser.add_argument("--data", required=True, help="dataset folder")
    parser.add_argument("--out", required=True, help="report directory")
    parser.add_argument("--target-fpr", type=_probability, default=0.05, help="false-positive rate on val real images")
    parser.add_argument("--robustness", action="store_true", help="repeat the test under JPEG, blur and downscaling")
    parser.add_argument(
        "--open-set-keep",
        type=_open_set_keep,
        default=0.95,
        help="attribution models: share of val's known fakes (those flagged fake) that keep their generator's name; "
        "a flagged fake less confident than the threshold this picks is served as 'unknown' (default 0.95)",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default=None)
    _add_allow_outside_root(parser)
    _add_leave_one_out(parser)
    parser.set_defaults(handler=_eval)


def _add_leave_one_out(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "leave one generator out",
        "--leave-one-out trains one model per held-out generator (the 'aigi train' recipe, with the budget below), "
        "fits temperature and threshold on val without that generator, and reports its detection rate at that "
        "threshold, AUROC real vs it, and (source task) the known-vs-unknown AUROC of the open-set score",
    )
    group.add_argument("--leave-one-out", action="store_true", help="run the protocol instead of evaluating a run")
    group.add_argument("--model", default="tiny", help="preset, local CLIP directory or HF id (default tiny)")
    group.add_argument("--task", choices=("binary", "source"), default="source")
    group.add_argument("--epochs", type=_positive_int, default=12, help="epochs per fold (default 12)")
    group.add_argument(
        "--max-train-images", type=_positive_int, default=None, help="subsample each fold's training images"
    )
    group.add_argument("--lr", type=float, default=None, help="peak learning rate (default: as 'aigi train')")
    group.add_argument("--seed", type=int, default=0)
    _add_degradations(group)
    group.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    group.add_argument(
        "--held-out",
        type=_name_list,
        default=None,
        metavar="A,B,...",
        help="generators to hold out, one fold each (default: every generator of the data)",
    )


def _add_explain(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="heatmaps of where a run directory's detector sees generator traces",
        description="Per image, a per-patch map of the fake logit margin over the crop the model sees "
        "(<name>_heatmap.png), explanations.json and a grid PNG. Mean-pooled models (tiny): exact per-patch "
        "logits; CLS-pooled CLIP: gradient x input per patch.",
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files to explain")
    parser.add_argument("--checkpoint", required=True, help="run directory from 'aigi train'")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--data", default=None, help="dataset folder: add labelled images (and misclassified ones)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test", help="split of --data")
    parser.add_argument("--per-class", type=_positive_int, default=2, help="images per class from --data")
    parser.add_argument("--method", choices=("auto", "patch-logits", "gradient"), default="auto")
    parser.add_argument("--batch-size", type=_positive_int, default=16)
    parser.add_argument("--device", default=None, help="torch device (default cpu)")
    _add_allow_outside_root(parser)
    parser.set_defaults(handler=_explain)


def _add_allow_outside_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="let a CSV manifest list files outside its own folder (absolute paths, '..', symlinks leading out); "
        "refused by default",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data synth``, ``train``, ``eval`` and ``explain`` to the ``aigi`` parser."""
    data = subparsers.add_parser("data", help="datasets: build the offline benchmark")
    data_sub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    _add_synth(data_sub)
    _add_train(subparsers)
    _add_eval(subparsers)
    _add_explain(subparsers)
