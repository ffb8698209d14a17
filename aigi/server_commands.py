"""``aigi serve``: run the embedded Triton server on a model repository until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from aigi.errors import ServerError

logger = logging.getLogger(__name__)

# used only when the export helper's constant cannot be imported
FALLBACK_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:26.06-py3"


def triton_image() -> str:
    """The Triton container tag the export stage pins (``aigi.export.tensorrt_build.TRITON_IMAGE``)."""
    try:
        from aigi.export.tensorrt_build import TRITON_IMAGE
    except ImportError:
        return FALLBACK_TRITON_IMAGE
    return str(TRITON_IMAGE)


def docker_command(repo: Path, http_port: int, grpc_port: int, metrics_port: int) -> str:
    """The ``docker run`` line that serves ``repo`` in the Triton container on a GPU host."""
    return (
        f"docker run --gpus all --rm --shm-size=1g "
        f"-p {http_port}:8000 -p {grpc_port}:8001 -p {metrics_port}:8002 "
        f"-v {repo.resolve()}:/models {triton_image()} "
        "tritonserver --model-repository=/models"
    )


def docker_note(repo: Path) -> str:
    """What the stock image lacks for this repository's Python-backend models."""
    needs = ["Pillow (for the *_preprocess model)"]
    if any(path.is_dir() and path.name.endswith("_cpu") for path in repo.glob("*")):
        needs.append("onnxruntime (for the *_cpu model; on a GPU host prefer 'aigi export --backend onnx|trt')")
    return "the container's python3 needs " + " and ".join(needs) + ": pip install them in a derived image"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``aigi serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository with the Triton server from the nvidia-pytriton wheel",
        description=(
            "Start a real tritonserver on REPO (as written by 'aigi export'), wait until every model is "
            "loaded, print the endpoints, and serve until Ctrl-C or SIGTERM."
        ),
    )
    parser.add_argument("--repo", required=True, type=Path, help="model repository directory")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000; 0 picks a free one)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001; 0 picks a free one)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="metrics port (default 8002; 0 picks one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the server)")
    parser.add_argument(
        "--env", type=Path, default=None, help="Python environment the models run in (default: this one)"
    )
    parser.add_argument("--log-verbose", type=int, default=0, help="Triton's --log-verbose level")
    parser.add_argument("--log-file", type=Path, default=None, help="write the server log here")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for the models to load")
    parser.add_argument(
        "--print-docker",
        action="store_true",
        help="print the equivalent 'docker run' command for a GPU host and exit (starts nothing)",
    )
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Handler of ``aigi serve``."""
    if args.print_docker:
        print(docker_command(args.repo, args.http_port, args.grpc_port, args.metrics_port))
        print(f"note: {docker_note(args.repo)}", file=sys.stderr)
        return 0
    from aigi.server import TritonServer

    server = TritonServer(
        args.repo,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        env=args.env,
        host=args.host,
        log_verbose=args.log_verbose,
        log_file=args.log_file,
    )
    stop = threading.Event()
    previous = _install_stop_handlers(stop)
    try:
        server.start()
        print(f"starting tritonserver on {args.repo} (log: {server.log_file})", file=sys.stderr, flush=True)
        server.wait_ready(args.ready_timeout)
        _print_ready(server)
        while not stop.wait(0.5):
            if not server.running:
                raise ServerError(f"tritonserver exited with code {server.returncode}\n{server.log_tail()}")
        print("stopping tritonserver ...", file=sys.stderr, flush=True)
    finally:
        code = server.stop()
        _restore_handlers(previous)
    print(f"tritonserver stopped (exit code {code})", file=sys.stderr)
    return 0


def _print_ready(server: Any) -> None:
    endpoints = server.endpoints
    print(f"HTTP    {endpoints['http_url']}")
    print(f"gRPC    {endpoints['grpc']}")
    print(f"metrics {endpoints['metrics_url']}")
    for model in server.models():
        print(f"model   {model.get('name')} v{model.get('version', '?')} {model.get('state', '')}")
    print(json.dumps({"event": "ready", "pid": server.pid, **endpoints}), flush=True)
    print("serving; Ctrl-C or SIGTERM stops", file=sys.stderr, flush=True)


def _install_stop_handlers(stop: threading.Event) -> dict[int, Any]:
    previous = {}
    if threading.current_thread() is not threading.main_thread():
        return previous  # signals can only be handled in the main thread (tests call main() elsewhere)
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda *_: stop.set())
    return previous


def _restore_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
