"""CLI: ``aigi export``, ``aigi repo check`` and ``aigi repo manifest``.

Light at import: ONNX, torch and friends load inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` and ``repo check`` to the ``aigi`` parser."""
    from aigi.export.parity import MIN_AGREEMENT  # light: numpy and the core

    export = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX / TensorRT and write a Triton model repository",
        description="Export a run directory to ONNX (checked against PyTorch), derive FP16 / INT8 / TensorRT "
        "variants as the backend needs, and write a Triton model repository (docs/CONTRACT.md). --backend torch "
        "serves the run directory itself with PyTorch (checked the same way) instead of an ONNX graph.",
    )
    export.add_argument("--checkpoint", required=True, type=Path, help="run directory (model.safetensors + aigi.json)")
    export.add_argument("--repo", type=Path, default=Path("model_repository"), help="model repository to write")
    export.add_argument(
        "--backend",
        required=True,
        choices=("cpu", "onnx", "trt", "torch"),
        help="which network model to serve: cpu (ONNX Runtime in Triton's Python backend, the wheel's server), torch "
        "(the checkpoint run by PyTorch in the Python backend, on a GPU when there is one: the wheel's server on a GPU "
        "workstation), onnx or trt (GPU backends of NVIDIA's Triton container)",
    )
    export.add_argument("--name", default="aigi", help="model name prefix (default: aigi)")
    _network_flags(export)
    _check_flags(export, MIN_AGREEMENT)
    export.add_argument(
        "--python-env",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra parameter for the Python-backend models (e.g. EXECUTION_ENV_PATH=...); repeatable",
    )
    _serving_flags(export)
    export.add_argument(
        "--keep-versions",
        type=int,
        default=2,
        help="versions of the network and preprocessing models Triton keeps loaded (default 2: the current one "
        "and one to roll back to); an export into an existing repository adds the next version",
    )
    export.set_defaults(handler=_export)

    repo = subparsers.add_parser("repo", help="model repository tools")
    repo_sub = repo.add_subparsers(dest="repo_command", metavar="SUBCOMMAND")
    check = repo_sub.add_parser("check", help="check a Triton model repository against its ONNX graphs and manifest")
    check.add_argument("dir", type=Path, help="the model repository")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(handler=_repo_check)
    manifest = repo_sub.add_parser(
        "manifest", help="re-hash every file into MANIFEST.json (after building model.plan with build_engine.sh)"
    )
    manifest.add_argument("dir", type=Path, help="the model repository")
    manifest.set_defaults(handler=_repo_manifest)
    _register_versions(repo_sub)
    repo.set_defaults(handler=lambda args: repo.print_help() or 2)


def _network_flags(parser: argparse.ArgumentParser) -> None:
    """Which network, at which precision, on which device, with which batch limits and threads."""
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16", "int8"),
        help="network precision: cpu fp32|int8 (default fp32), onnx fp32|fp16 (default fp32), trt fp16, torch "
        "fp32|bf16|fp16 (default fp32; bf16/fp16 are CUDA autocast, refused on the CPU)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="--backend torch: where the network runs (default auto: the GPU when PyTorch sees one, else the CPU)",
    )
    parser.add_argument(
        "--compile",
        choices=("none", "default", "reduce-overhead", "max-autotune"),
        default="none",
        help="--backend torch: torch.compile mode (reduce-overhead adds CUDA graphs); each batch size the server "
        "runs is compiled while the model loads, tens of seconds or more (default none: eager PyTorch)",
    )
    parser.add_argument("--max-batch", type=int, default=32, help="max_batch_size and TensorRT profile max")
    parser.add_argument("--opt-batch", type=int, help="TensorRT profile optimum (default: max-batch / 2)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (17+)")
    parser.add_argument("--no-timing", action="store_true", help="skip timing ONNX Runtime's optimization levels")
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="CPU threads of the network model: ONNX Runtime's (cpu) or PyTorch's (torch) (0: their default)",
    )


def _check_flags(parser: argparse.ArgumentParser, min_agreement: float) -> None:
    """How the export checks each variant against PyTorch."""
    parser.add_argument(
        "--parity-data",
        type=Path,
        help="dataset folder whose images join the random inputs of the parity checks "
        "(default: the checkpoint's training data, if it still exists)",
    )
    parser.add_argument("--parity-images", type=int, default=8, help="how many real images to check (default 8)")
    parser.add_argument("--all-variants", action="store_true", help="build and check FP16 and INT8 even if not served")
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=min_agreement,
        help="smallest argmax and is_fake agreement with PyTorch on the parity images that a variant may have "
        f"(default {min_agreement}: on fewer than 100 images every decision must agree; lower it for an INT8 "
        "model whose parity images sit near the threshold)",
    )


def _serving_flags(export: argparse.ArgumentParser) -> None:
    """The flags of :class:`aigi.export.settings.ServingSettings` (model_repository/README.md, "Serving settings")."""
    from aigi.export.settings import DEFAULT_MAX_QUEUE_DELAY_US  # light: no protobuf
    from aigi.export.triton_config import DEFAULT_MAX_QUEUE_SIZE, DEFAULT_QUEUE_TIMEOUT_MS

    export.add_argument(
        "--max-queue-size",
        type=int,
        default=DEFAULT_MAX_QUEUE_SIZE,
        help="requests allowed to wait in the queue of P_preprocess and of the network model; one more is refused "
        f"at once with 'Exceeds maximum queue size' (0: no limit; default {DEFAULT_MAX_QUEUE_SIZE})",
    )
    export.add_argument(
        "--queue-timeout-ms",
        type=int,
        default=DEFAULT_QUEUE_TIMEOUT_MS,
        help="longest wait in one of those queues before the request is refused; a request passes two, so keep "
        "twice this under the client's timeout (30 s by default); a request may ask for less, never more "
        f"(0: wait forever; default {DEFAULT_QUEUE_TIMEOUT_MS})",
    )
    export.add_argument(
        "--instances",
        default="",
        metavar="ROLE=N,...",
        help="instance_group count per role, e.g. preprocess=2,network=1 (KIND_CPU for Python/cpu models, KIND_GPU "
        "for onnx/trt; default 1 each)",
    )
    export.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=DEFAULT_MAX_QUEUE_DELAY_US,
        help="how long the dynamic batcher waits for batch-mates "
        f"(default {DEFAULT_MAX_QUEUE_DELAY_US}: a lone request pays at most that)",
    )
    export.add_argument(
        "--preferred-batch-sizes",
        metavar="N,...",
        help="dynamic_batching.preferred_batch_size, e.g. 4,8 (default: half and full --max-batch)",
    )
    export.add_argument(
        "--response-cache",
        action="store_true",
        help="the ensemble answers a repeated request (identical image bytes) from Triton's response cache; the "
        "server must be started with --cache-config local,size=BYTES",
    )
    export.add_argument(
        "--warmup-batch-sizes",
        metavar="N,...",
        help="batch sizes of the warm-up requests of the preprocessing and network models (default: 1 and "
        "--max-batch; an empty value turns warm-up off)",
    )
    export.add_argument(
        "--config-override",
        type=_key_value,
        action="append",
        default=[],
        metavar="MODEL=FILE",
        help="merge a text-format ModelConfig fragment into a generated config (MODEL: ensemble, preprocess, network "
        "or a model name); protobuf merge: scalars replace, repeated fields append (see --override-mode); repeatable",
    )
    export.add_argument(
        "--override-mode",
        choices=("merge", "replace"),
        default="merge",
        help="replace: repeated fields named in an override replace the generated ones instead of appending",
    )


def _serving(args: argparse.Namespace):
    from aigi.export.settings import ServingSettings, parse_instances, parse_sizes, read_override

    def sizes(text: str | None, flag: str) -> tuple[int, ...] | None:
        return None if text is None else parse_sizes(text, flag)

    return ServingSettings(
        instances=parse_instances(args.instances),
        max_queue_delay_us=args.max_queue_delay_us,
        preferred_batch_sizes=sizes(args.preferred_batch_sizes, "--preferred-batch-sizes"),
        response_cache=args.response_cache,
        warmup_batch_sizes=sizes(args.warmup_batch_sizes, "--warmup-batch-sizes"),
        overrides=[read_override(t, f, args.override_mode == "replace") for t, f in args.config_override],
    )


def _export(args: argparse.Namespace) -> int:
    from aigi.export.pipeline import ExportOptions, run_export

    options = ExportOptions(
        checkpoint=args.checkpoint,
        repo=args.repo,
        backend=args.backend,
        name=args.name,
        precision=args.precision,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        opset=args.opset,
        parity_data=args.parity_data,
        parity_images=args.parity_images,
        all_variants=args.all_variants,
        time_optimizations=not args.no_timing,
        python_env=dict(args.python_env) or None,
        intra_op_threads=args.intra_op_threads,
        max_queue_size=args.max_queue_size,
        queue_timeout_ms=args.queue_timeout_ms,
        min_agreement=args.min_agreement,
        serving=_serving(args),
        keep_versions=args.keep_versions,
        device=args.device,
        compile=args.compile,
    )
    report = run_export(options)
    print(f"wrote {args.repo} ({report.backend}, {report.precision}); report: {args.repo}/{args.name}_EXPORT.md")
    return 0


def _repo_check(args: argparse.Namespace) -> int:
    from aigi.export.repo_check import check_repository

    report = check_repository(args.dir)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for note in report.notes:
            print(f"note: {note}")
        for problem in report.problems:
            print(problem, file=sys.stderr)
        print(report.summary())
    return 0 if report.ok else 1


def _repo_manifest(args: argparse.Namespace) -> int:
    from aigi.errors import RepositoryError
    from aigi.manifest import read_manifest, write_manifest

    if not args.dir.is_dir():
        raise RepositoryError(f"{args.dir}: no such repository folder")
    path = write_manifest(args.dir, {})
    print(f"wrote {path} ({len((read_manifest(args.dir) or {}).get('files', {}))} files)")
    return 0


def _register_versions(repo_sub: argparse._SubParsersAction) -> None:
    """``aigi repo versions|rollback|reload`` (aigi.export.versions)."""
    versions = repo_sub.add_parser("versions", help="list the versions of a prefix's models")
    versions.add_argument("dir", type=Path, help="the model repository")
    versions.add_argument("--name", default="aigi", help="model name prefix (default: aigi)")
    versions.add_argument("--json", action="store_true", help="print the versions as JSON")
    versions.set_defaults(handler=_repo_versions)
    rollback = repo_sub.add_parser(
        "rollback", help="retire the newest version into DIR/.retired/ and make the previous one current"
    )
    rollback.add_argument("dir", type=Path, help="the model repository")
    rollback.add_argument("--name", default="aigi", help="model name prefix (default: aigi)")
    rollback.set_defaults(handler=_repo_rollback)
    reload = repo_sub.add_parser(
        "reload", help="make a running server load what the repository now holds (restricted repository API)"
    )
    reload.add_argument("--url", required=True, help="the server's HTTP HOST:PORT")
    reload.add_argument("--admin-key-file", required=True, type=Path, help="file holding the aigi-admin-key value")
    reload.add_argument("--model", default="aigi", help="the ensemble (default: aigi)")
    reload.set_defaults(handler=_repo_reload)


def _repo_versions(args: argparse.Namespace) -> int:
    from aigi.export.versions import list_versions

    rows = list_versions(args.dir, args.name)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'version':>7}  {'state':<9}  {'created':<24}  {'network sha256':<14}  metrics / checkpoint")
    for row in rows:
        hashes = row.get("network_sha256") or {}
        digest = (hashes.get("model.onnx") or hashes.get("model.plan") or hashes.get("model.safetensors") or "")[:12]
        metrics = json.dumps(row.get("metrics") or {}, separators=(",", ":"))[:60]
        print(f"{row['version']:>7}  {row['state']:<9}  {row.get('created', ''):<24}  {digest:<14}  {metrics}")
        print(f"{'':>7}  {'':<9}  {'':<24}  {'':<14}  {row.get('checkpoint', '')}")
    return 0


def _repo_rollback(args: argparse.Namespace) -> int:
    from aigi.export.versions import rollback

    retired, current = rollback(args.dir, args.name)
    print(f"retired version {retired} into {args.dir}/.retired/{args.name}/{retired}; version {current} is current")
    print(f"a running server: aigi repo reload --url HOST:PORT --admin-key-file F --model {args.name}")
    return 0


def _repo_reload(args: argparse.Namespace) -> int:
    from aigi.export.versions import reload

    key = args.admin_key_file.read_text().strip()
    for name, seconds in reload(args.url, key, args.model):
        print(f"loaded {name} ({seconds:.2f} s)")
    return 0
