"""``aigi serve``: run the embedded Triton server on a model repository until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from aigi.errors import ServerError
from aigi.triton_image import TRITON_IMAGE

logger = logging.getLogger(__name__)


def docker_command(repo: Path, http_port: int, grpc_port: int, metrics_port: int) -> str:
    """The ``docker run`` line that serves ``repo`` in the Triton container on a GPU host."""
    return (
        f"docker run --gpus all --rm --shm-size=1g "
        f"-p {http_port}:8000 -p {grpc_port}:8001 -p {metrics_port}:8002 "
        f"-v {repo.resolve()}:/models {TRITON_IMAGE} "
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
        "--no-verify",
        action="store_true",
        help="serve even when files differ from the repository's MANIFEST.json (default: refuse a tampered repository)",
    )
    parser.add_argument(
        "--admin-key-file",
        type=Path,
        default=None,
        help=(
            "file holding the key that opens Triton's model-repository, shared-memory, trace and logging APIs "
            "(header aigi-admin-key); created with a random key (mode 0600) when missing. Default: the "
            "AIGI_ADMIN_KEY environment variable, else a random key nobody is told"
        ),
    )
    _add_watchdog_flags(parser)
    parser.add_argument(
        "--print-docker",
        action="store_true",
        help="print the equivalent 'docker run' command for a GPU host and exit (starts nothing)",
    )
    parser.set_defaults(handler=run_serve)
    _register_health(subparsers)


def _register_health(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "health",
        help="send one canary image through a running server; exit 0 when it answers (a liveness probe)",
        description=(
            "Send one small image through the ensemble at URL (Triton's HTTP endpoint) and check the answer. "
            "Unlike /v2/health/ready this fails when a Python model hangs or has crashed. Exit code 0: answered; "
            "1: no or a wrong answer before the deadline. Standard library only, for exec probes in slim images."
        ),
    )
    parser.add_argument("--url", default="127.0.0.1:8000", help="HOST:PORT of Triton's HTTP endpoint")
    parser.add_argument("--model", default="aigi", help="the ensemble to call (default aigi)")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (default 10)")
    parser.set_defaults(handler=run_health)


def run_health(args: argparse.Namespace) -> int:
    """Handler of ``aigi health``: one line, exit 0 when the canary passed."""
    from aigi.health import canary

    result = canary(args.url, args.model, args.timeout)
    verdict = "ok" if result.ok else "FAILED"
    print(f"{verdict} {args.model} at {args.url} in {result.seconds * 1000:.0f} ms: {result.detail}")
    return 0 if result.ok else 1


def _add_watchdog_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "health",
        "Triton's own readiness stays 200 while a Python model hangs or has crashed; aigi sends a canary image "
        "through the ensemble on a timer, restarts the server when it fails, and serves the truth on --health-port "
        "(GET /ready, GET /live).",
    )
    group.add_argument("--health-port", type=int, default=8003, help="port of /ready and /live (default 8003)")
    group.add_argument("--canary-interval", type=float, default=10.0, help="seconds between canaries (default 10)")
    group.add_argument("--canary-timeout", type=float, default=10.0, help="deadline of one canary (default 10 s)")
    group.add_argument(
        "--canary-failures", type=int, default=2, help="canaries failed in a row before a restart (default 2)"
    )
    group.add_argument("--no-watchdog", action="store_true", help="no canary, no restarts, no health port")


def admin_key(key_file: Path | None) -> str | None:
    """The admin key from ``key_file`` (made, 0600, when missing), else ``$AIGI_ADMIN_KEY``, else ``None`` (random).

    Raises:
        ServerError: the file exists but is empty or readable by others.
    """
    if key_file is None:
        return os.environ.get("AIGI_ADMIN_KEY") or None
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(24) + "\n")
    if key_file.stat().st_mode & 0o077:
        raise ServerError(f"{key_file}: the admin key file must not be readable by others (chmod 600 it)")
    key = key_file.read_text().strip()
    if not key:
        raise ServerError(f"{key_file}: the admin key file is empty")
    return key


def exposure_note(host: str) -> str | None:
    """One line on what protects a server bound to a non-loopback address (``None`` on loopback)."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return None
    return (
        f"warning: serving on {host}: inference, metadata and health are open to anyone who reaches these ports; "
        "model loading, shared memory, trace and logging need the aigi-admin-key header; metrics and /ready are "
        "unauthenticated; put TLS and authentication in front (docs/SECURITY.md)"
    )


def verify_repository(repo: Path) -> None:
    """Refuse a repository whose files differ from its ``MANIFEST.json`` (one line per problem, at most five).

    Raises:
        ServerError: the manifest is missing or a file is missing, changed or unexpected.
    """
    from aigi.manifest import verify_manifest

    problems, verified = verify_manifest(repo)
    if problems:
        shown = "; ".join(str(problem) for problem in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ServerError(
            f"{repo}: refusing to serve, files differ from MANIFEST.json: {shown}{more}; "
            "re-export with 'aigi export', or pass --no-verify to serve it anyway"
        )
    logger.info("%s: %d files match MANIFEST.json", repo, verified)


def run_serve(args: argparse.Namespace) -> int:
    """Handler of ``aigi serve``."""
    if args.print_docker:
        print(docker_command(args.repo, args.http_port, args.grpc_port, args.metrics_port))
        print(f"note: {docker_note(args.repo)}", file=sys.stderr)
        return 0
    from aigi.server import TritonServer

    if not args.no_verify:
        verify_repository(args.repo)
    server = TritonServer(
        args.repo,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        env=args.env,
        host=args.host,
        log_verbose=args.log_verbose,
        log_file=args.log_file,
        admin_key=admin_key(args.admin_key_file),
    )
    if note := exposure_note(args.host):
        print(note, file=sys.stderr, flush=True)
    stop = threading.Event()
    previous = _install_stop_handlers(stop)
    try:
        server.start()
        print(f"starting tritonserver on {args.repo} (log: {server.log_file})", file=sys.stderr, flush=True)
        server.wait_ready(args.ready_timeout)
        _print_ready(server)
        _serve_until(stop, server, args)
        print("stopping tritonserver ...", file=sys.stderr, flush=True)
    finally:
        code = server.stop()
        _restore_handlers(previous)
    print(f"tritonserver stopped (exit code {code})", file=sys.stderr)
    return 0


def _serve_until(stop: threading.Event, server: Any, args: argparse.Namespace) -> None:
    """Serve until ``stop``; with the watchdog, a hung or dead server is restarted instead of ending the command.

    Raises:
        ServerError: the server died (without the watchdog), or the watchdog gave up after its restarts.
    """
    if args.no_watchdog:
        while not stop.wait(0.5):
            if not server.running:
                raise ServerError(f"tritonserver exited with code {server.returncode}\n{server.log_tail()}")
        return
    from aigi.health import ensemble_models
    from aigi.watchdog import HealthEndpoint, Watchdog

    model = (ensemble_models(server.repo) or ["aigi"])[0]
    watchdog = Watchdog(
        server,
        model=model,
        interval_s=args.canary_interval,
        timeout_s=args.canary_timeout,
        failures=args.canary_failures,
    )
    watchdog.check_once()  # ready only once a real image has gone through
    endpoint = HealthEndpoint(watchdog, host=args.host, port=args.health_port).start()
    host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    print(f"health  http://{host}:{endpoint.port}/ready  /live  (canary on {model!r})", flush=True)
    watchdog.start()
    try:
        while not stop.wait(0.5):
            if not watchdog.snapshot().live:
                raise ServerError(f"tritonserver does not answer after restarts: {watchdog.snapshot().detail}")
    finally:
        watchdog.stop()
        endpoint.stop()


def _print_ready(server: Any) -> None:
    endpoints = server.endpoints
    print(f"HTTP    {endpoints['http_url']}")
    print(f"gRPC    {endpoints['grpc']}")
    print(f"metrics {endpoints['metrics_url']}")
    for model in server.models():
        print(f"model   {model.get('name')} v{model.get('version', '?')} {model.get('state', '')}")
    print(json.dumps({"event": "ready", "pid": server.pid, **endpoints}), flush=True)
    print("serving; Ctrl-C or SIGTERM stops", file=sys.stderr, flush=True)


def _install_stop_handlers(stop: threading.Event) -> dict[signal.Signals, Any]:
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous  # signals can only be handled in the main thread (tests call main() elsewhere)
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda *_: stop.set())
    return previous


def _restore_handlers(previous: dict[signal.Signals, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
