"""CLI: ``aigi bench`` and ``aigi fault-check``. Light at import: torch, ONNX Runtime and tritonclient load inside
the handlers."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, TypedDict

logger = logging.getLogger(__name__)


class Sweep(TypedDict, total=False):
    """The sweep settings of a :class:`~aigi.benchmarks.harness.BenchConfig` set by ``--quick`` or a flag."""

    batch_sizes: tuple[int, ...]
    concurrency: tuple[int, ...]
    duration_s: float
    iters: int
    min_iters: int
    warmup: int
    pool_batches: int
    agreement_images: int


QUICK: Sweep = {
    "batch_sizes": (1, 8),
    "concurrency": (1, 2),
    "duration_s": 1.0,
    "min_iters": 3,
    "warmup": 1,
    "pool_batches": 2,
    "agreement_images": 32,
}


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and ``fault-check`` to the ``aigi`` parser."""
    _register_bench(subparsers)
    check = subparsers.add_parser(
        "fault-check",
        help="serve N replicas, load them with concurrent clients, kill and roll them: nothing may be lost",
        description=FAULT_CHECK_DESCRIPTION,
        epilog=FAULT_CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_fault_check_arguments(check)
    check.set_defaults(handler=_fault_check)
    from aigi.benchmarks.update_check import register as register_update_check  # light: stdlib at import

    register_update_check(subparsers)


def _register_bench(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="benchmark every runtime on this machine side by side (speed, memory, agreement)",
        description="Run one workload through every available runtime (PyTorch eager/autocast/compile, ONNX Runtime "
        "FP32/INT8, TensorRT, Triton tensor and bytes paths over gRPC and HTTP), sweeping batch size and client "
        "concurrency. Writes bench.json, BENCH.md and PNG plots into --out.",
    )
    bench.add_argument(
        "--model", help="architecture preset for the speed cells (default: the checkpoint's, else vit-b-32)"
    )
    bench.add_argument(
        "--checkpoint",
        type=Path,
        help="run directory; its weights give the agreement numbers (on its own architecture when --model differs)",
    )
    bench.add_argument("--runtimes", help="comma-separated names or patterns (e.g. 'torch-*,ort-cpu-*'); default all")
    bench.add_argument("--exclude", help="runtimes to leave out (names or patterns), listed as skipped")
    bench.add_argument("--exclude-reason", default="excluded (--exclude)", help="reason the report gives for them")
    bench.add_argument("--batch-sizes", type=_int_list, help="default 1,8,32")
    bench.add_argument("--concurrency", type=_int_list, help="client streams for server runtimes; default 1,2,4")
    bench.add_argument("--duration", type=float, help="seconds per cell (at least --min-iters requests); default 3")
    bench.add_argument("--iters", type=int, help="exactly this many requests per cell instead of --duration")
    bench.add_argument("--min-iters", type=int, help="fewest requests per cell in --duration mode; default 5")
    bench.add_argument("--warmup", type=int, help="untimed calls per stream before each cell; default 3")
    bench.add_argument("--pool-batches", type=int, help="distinct input batches cycled per cell; default 4")
    bench.add_argument("--agreement-images", type=int, help="images for agreement with FP32 PyTorch; default 128")
    bench.add_argument(
        "--images",
        type=Path,
        help="benchmark images (default: the checkpoint's test data, else a synthesized offline set)",
    )
    bench.add_argument(
        "--repo",
        type=Path,
        action="append",
        default=[],
        help="serve this exported repository for the Triton cells instead of exporting one (repeatable)",
    )
    bench.add_argument(
        "--triton-threads",
        type=int,
        default=0,
        help="intra-op threads of the served aigi_cpu model when exporting (0: ONNX Runtime's default)",
    )
    bench.add_argument(
        "--budget", type=float, help="seconds for the whole run; cells left when it is spent are listed as skipped"
    )
    bench.add_argument(
        "--perf-analyzer",
        action="store_true",
        help="also drive perf_analyzer on the Triton models (skipped with a message when it is not installed)",
    )
    _add_remote_arguments(bench)
    bench.add_argument(
        "--clean-percentiles",
        action="store_true",
        help="before each Triton cell, wait until earlier requests have left Triton's 60 s summary window, so each "
        "cell's server-side p50/p90/p99 cover that cell alone (adds up to 60 s per Triton cell)",
    )
    bench.add_argument(
        "--no-baseline-check",
        action="store_true",
        help="skip timing torch-eager-fp32 again in a fresh process after its cell (the report's baseline check)",
    )
    bench.add_argument("--quick", action="store_true", help="a short sweep: batch 1,8, concurrency 1,2, 1 s cells")
    bench.add_argument("--workdir", type=Path, help="keep exports and engines here (default: a temporary folder)")
    bench.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder (default runs/bench)")
    bench.add_argument("--list", action="store_true", help="list the runtimes and whether this machine has them")
    bench.set_defaults(handler=_bench)


def _comma_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return values


def _add_remote_arguments(bench: argparse.ArgumentParser) -> None:
    """``--url``, ``--metrics-url`` and ``--served-model``: benchmark a Triton server started elsewhere."""
    bench.add_argument(
        "--url",
        type=_comma_list,
        action="extend",
        default=[],
        metavar="HOST:PORT",
        help="benchmark a Triton server already running elsewhere (any build: a container, a Kubernetes Service) "
        "instead of exporting and starting one: its HTTP and/or gRPC endpoint (comma-separated or repeated; the "
        "other protocol is looked for on Triton's default neighbouring port). Only the Triton runtimes run; "
        "agreement needs --checkpoint (the weights it serves)",
    )
    bench.add_argument(
        "--metrics-url",
        help="with --url: the server's Prometheus endpoint (default http://HOST:8002/metrics); when it cannot be "
        "read the cells still run and the report says why there is no server-side split",
    )
    bench.add_argument(
        "--served-model",
        type=_comma_list,
        default=["aigi"],
        metavar="NAME[,NAME]",
        help="with --url: the entry models (ensembles) to call, e.g. aigi,aigi_int8; each one's network precision "
        "decides which runtimes run (default aigi)",
    )


def _list_runtimes() -> int:
    from aigi.benchmarks.runtimes import RUNTIMES

    for spec in RUNTIMES:
        reason = spec.precheck()
        print(f"{spec.name:<30} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0


def _sweep(args: argparse.Namespace) -> Sweep:
    """``--quick``'s settings (when given), overridden by each sweep flag given; BenchConfig's defaults for the rest."""
    sweep = QUICK.copy() if args.quick else Sweep()
    if args.batch_sizes is not None:
        sweep["batch_sizes"] = args.batch_sizes
    if args.concurrency is not None:
        sweep["concurrency"] = args.concurrency
    if args.duration is not None:
        sweep["duration_s"] = args.duration
    if args.iters is not None:
        sweep["iters"] = args.iters
    if args.min_iters is not None:
        sweep["min_iters"] = args.min_iters
    if args.warmup is not None:
        sweep["warmup"] = args.warmup
    if args.pool_batches is not None:
        sweep["pool_batches"] = args.pool_batches
    if args.agreement_images is not None:
        sweep["agreement_images"] = args.agreement_images
    return sweep


def _bench(args: argparse.Namespace) -> int:
    from aigi.benchmarks.harness import BenchConfig, run_bench
    from aigi.benchmarks.report import JSON_NAME, MARKDOWN_NAME

    if args.list:
        return _list_runtimes()
    config = BenchConfig(
        out=args.out,
        model=args.model,
        checkpoint=args.checkpoint,
        runtimes=args.runtimes,
        exclude=args.exclude,
        exclude_reason=args.exclude_reason,
        images=args.images,
        repos=list(args.repo),
        triton_threads=args.triton_threads,
        budget_s=args.budget,
        perf_analyzer=args.perf_analyzer,
        workdir=args.workdir,
        urls=list(args.url),
        metrics_url=args.metrics_url,
        served_models=tuple(args.served_model),
        baseline_check=not args.no_baseline_check,
        clean_percentiles=args.clean_percentiles,
        **_sweep(args),
    )
    results = run_bench(config)
    ok = [cell for cell in results["cells"] if cell.ok]
    skipped = [name for name, entry in results["runtimes"].items() if entry["status"] != "ok"]
    print(
        f"{len(ok)} cells over {len(results['runtimes']) - len(skipped)} runtimes"
        + (f"; skipped: {', '.join(skipped)}" if skipped else "")
    )
    for verdict in results.get("targets", []):
        state = {True: "met", False: "NOT met", None: "not measured"}[verdict["met"]]
        ratio = f" ({verdict['ratio']:.2f}x)" if verdict.get("ratio") is not None else ""
        print(f"target {verdict['key']}: {state}{ratio}")
    print(f"wrote {args.out / JSON_NAME}, {args.out / MARKDOWN_NAME} and plots")
    return 0


# -- aigi fault-check -----------------------------------------------------------------------------------

# the plans of aigi.benchmarks.fault_check.FAULT_PLANS (a test keeps the two equal; this module stays light)
FAULT_CHOICES = {
    "sigterm": "graceful stop (a roll: SIGTERM, drain, restart) at 1/2",
    "sigkill": "crash (SIGKILL, restart) at 1/2",
    "both": "SIGTERM at 1/3, SIGKILL at 2/3 (with replicas: the roll on r0, the crash on r1)",
}
FAULT_CHECK_DESCRIPTION = """\
Serve --replicas Triton servers of one model repository on 127.0.0.1 (free ports each), record a reference answer
(label, p_fake) for every valid image on a healthy replica, then run --concurrency client threads, each with its own
aigi.client.Detector given every replica's endpoint and the client's DEFAULT settings (retries, timeouts: what a user
gets), sending calls of 1-6 images (~5% invalid on purpose) for --duration seconds while the replicas are hit by
--fault, one fault at a time, each followed by a restart on the same ports. The load goes on past the last restart."""
FAULT_CHECK_EPILOG = """\
Faults go to the replicas in turn: the i-th fault of the plan hits replica i mod --replicas (one server takes all).
  sigterm = a roll: SIGTERM, Triton drains in-flight requests, the process exits, it is restarted
  sigkill = a crash: SIGKILL, in-flight requests die with it, it is restarted
LOST: an image whose call raised, one missing from the results, a valid image with an error,
      an invalid image (empty, junk, truncated) with a verdict or a non-"invalid image" error.
WRONG: a verdict whose label or p_fake differs from the reference (tolerance from the served precision).
Writes OUT/fault_check.json (figures, faults, per-second timeline, per-replica traffic), OUT/FAULT_CHECK.md and
OUT/timeline.png (needs matplotlib; skipped with a note without it).
Exit status: 0 nothing lost or wrong and every check passed, 1 otherwise, 2 the check could not run.
Example: aigi fault-check --repo model_repository --replicas 3 --concurrency 16 --duration 60 --out runs/fault"""


def _client_option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def add_fault_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``aigi fault-check`` (and of its alias ``python -m aigi.benchmarks.load_check``)."""
    parser.add_argument(
        "--repo", type=Path, help="model repository (aigi export --backend cpu) to serve; this or --url"
    )
    parser.add_argument(
        "--url",
        type=_comma_list,
        action="extend",
        default=[],
        metavar="HOST:PORT",
        help="load a Triton server already running elsewhere instead (its HTTP and gRPC endpoints, comma-separated "
        "or repeated; the other one is looked for on Triton's default neighbouring port): no fault is injected "
        "(the server is not ours to kill), every answer is still checked",
    )
    parser.add_argument(
        "--metrics-url", help="with --url: the server's Prometheus endpoint (default http://HOST:8002/metrics)"
    )
    parser.add_argument("--replicas", type=int, default=1, help="Triton servers of --repo to start (default 1)")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads (default 16)")
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds of load (default 60), extended past the last restart"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for fault_check.json, FAULT_CHECK.md, plot")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="client protocol (default grpc)")
    parser.add_argument(
        "--fault",
        choices=tuple(FAULT_CHOICES),
        default=None,
        help="; ".join(f"{name}: {what}" for name, what in FAULT_CHOICES.items())
        + " (default both; with --url none can be injected)",
    )
    parser.add_argument("--max-calls", type=int, default=100_000, help="upper bound on detect() calls")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images and of each client's picks")
    parser.add_argument(
        "--client-option",
        type=_client_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one Detector setting (e.g. retries=0), only to show that the check can fail; the report "
        "says so (repeatable; VALUE is read as JSON, else as a string)",
    )


def _fault_check(args: argparse.Namespace) -> int:
    from aigi.benchmarks.load_check import execute

    return execute(args)
