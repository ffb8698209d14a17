"""``aigi serve``: run the embedded Triton server on a model repository until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aigi import __version__
from aigi.errors import ServerError, SettingsError
from aigi.triton_image import TRITON_IMAGE

if TYPE_CHECKING:
    from aigi.server import TritonServer

logger = logging.getLogger(__name__)

# the image of deploy/docker: where aigi serve finds the repository, the admin key and Triton, and its ports
CONTAINER_REPO = "/models"
CONTAINER_ADMIN_KEY = "/run/secrets/aigi/admin-key"
CONTAINER_TRITON = "/opt/tritonserver"
CONTAINER_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002, "health": 8003}
CONTAINER_UID = 10001  # the image's non-root user, aigi
# the host's key file --print-docker mounts when --admin-key-file is not given
DEFAULT_ADMIN_KEY_FILE = Path("~/.config/aigi/admin-key")
# stands in for the admin key in a printed command line (a valid key, so the real flag builder accepts it)
_KEY_PLACEHOLDER = "AIGI-ADMIN-KEY-PLACEHOLDER"


def image_name() -> str:
    """The tag of the image ``deploy/docker/Dockerfile`` builds for this version of aigi."""
    return f"aigi-triton:{__version__}"


def container_command() -> list[str]:
    """The argv the image's ENTRYPOINT runs (``deploy/docker/Dockerfile``; a test holds the two equal).

    ``aigi serve`` inside the container: it verifies the repository mounted or baked at ``/models``, reads the
    admin key from the mounted secret, runs the container's own ``tritonserver`` (``--tritonserver``) with only
    the model folders loaded and the restricted APIs closed, and serves ``/ready`` and ``/live`` on 8003. It binds
    0.0.0.0 inside the container; which host address publishes a port is ``docker run -p``'s business.
    """
    return [
        "aigi",
        "serve",
        "--repo",
        CONTAINER_REPO,
        "--host",
        "0.0.0.0",
        *(arg for name, port in CONTAINER_PORTS.items() for arg in (f"--{name}-port", str(port))),
        "--admin-key-file",
        CONTAINER_ADMIN_KEY,
        "--tritonserver",
        CONTAINER_TRITON,
    ]


def container_tritonserver_command(repo: Path) -> list[str]:
    """The ``tritonserver`` command ``aigi serve`` runs in the container when ``repo`` is mounted at ``/models``.

    Built like the real one: :func:`container_command` parsed by this parser, :func:`_server` and
    :meth:`aigi.server.TritonServer.command` (whose model-loading and restriction flags come from
    :func:`aigi.server.serving_args`). The admin key and the per-start shared-memory prefix are shown as
    placeholders.
    """
    parser = argparse.ArgumentParser(prog="aigi")
    register(parser.add_subparsers())
    args = parser.parse_args(container_command()[1:])
    server = _server(args, _KEY_PLACEHOLDER)
    server.repo = repo.resolve()  # which folders load is decided by the repository that will be mounted
    server.ports = {name: CONTAINER_PORTS[name] for name in ("http", "grpc", "metrics")}
    server.shm_prefix = "aigi<pid>-<random>-"
    root = Path(args.tritonserver)
    argv = server.command(root, root / "backends", served_at=args.repo)
    return [arg.replace(_KEY_PLACEHOLDER, f"<key in {CONTAINER_ADMIN_KEY}>") for arg in argv]


def needs_gpu(repo: Path) -> bool:
    """Whether a model of ``repo`` runs on a GPU (``aigi_onnx``, ``aigi_trt``: ``KIND_GPU`` or a TensorRT plan)."""
    for config in repo.glob("*/config.pbtxt"):
        text = "\n".join(line.split("#", 1)[0] for line in config.read_text(errors="replace").splitlines())
        if re.search(r"\bKIND_GPU\b|\btensorrt_plan\b", text):
            return True
    return False


def docker_command(
    repo: Path,
    host: str = "127.0.0.1",
    ports: dict[str, int] | None = None,
    admin_key_file: Path | None = None,
) -> str:
    """The ``docker run`` line that serves ``repo`` with the image of ``deploy/docker`` (:func:`image_name`).

    Args:
        repo: the model repository, mounted read-only at ``/models``.
        host: the host address each port is published on (loopback unless told otherwise).
        ports: host ports by name (``http``, ``grpc``, ``metrics``, ``health``); the container's by default.
        admin_key_file: the key file mounted read-only as the container's admin key (default
            :data:`DEFAULT_ADMIN_KEY_FILE`); the container runs as this user so it can read a 0600 file (as
            the image's non-root user :data:`CONTAINER_UID` when this user is root).
    """
    published = {**CONTAINER_PORTS, **(ports or {})}
    address = f"[{host}]" if ":" in host else host
    key = (admin_key_file or DEFAULT_ADMIN_KEY_FILE).expanduser().absolute()
    parts = ["docker run --rm --init --shm-size=1g"]
    if needs_gpu(repo):
        parts.append("--gpus all")
    if os.getuid() != 0:  # the image's own user (CONTAINER_UID) could not read this user's 0600 key file
        parts.append(f"--user {os.getuid()}:{os.getgid()}")
    parts += [f"-p {address}:{published[name]}:{port}" for name, port in CONTAINER_PORTS.items()]
    parts.append(f"-v {shlex.quote(str(repo.resolve()))}:{CONTAINER_REPO}:ro")
    parts.append(f"--mount type=bind,src={shlex.quote(str(key))},dst={CONTAINER_ADMIN_KEY},readonly")
    parts.append(image_name())
    return " ".join(parts)


def docker_notes(repo: Path, admin_key_file: Path | None = None) -> list[str]:
    """What a reader of ``--print-docker`` needs besides the line: building the image, the key, what will run."""
    build = f"docker build -f deploy/docker/Dockerfile --build-arg TRITON_IMAGE={TRITON_IMAGE} -t {image_name()} ."
    notes = [f"build the image once, from aigi's source tree (deploy/docker/README.md): {build}"]
    key = (admin_key_file or DEFAULT_ADMIN_KEY_FILE).expanduser().absolute()
    if not key.is_file():
        notes.append(
            f"{key} does not exist; create it first (docker would otherwise stop): mkdir -p {key.parent} && "
            f"(umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > {key})"
        )
    if os.getuid() == 0:
        notes.append(f"the container runs as uid {CONTAINER_UID}, not root: chown {CONTAINER_UID} {key}")
    command = shlex.join(container_tritonserver_command(repo))
    notes.append(f"in the container, aigi serve verifies MANIFEST.json, then runs: {command}")
    return notes


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``aigi serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository with Triton (the nvidia-pytriton wheel's server, or --tritonserver DIR)",
        description=(
            "Start a real tritonserver on REPO (as written by 'aigi export'), wait until every model is "
            "loaded, print the endpoints, and serve until Ctrl-C or SIGTERM."
        ),
    )
    parser.add_argument("--repo", required=True, type=Path, help="model repository directory")
    parser.add_argument(
        "--tritonserver",
        type=Path,
        default=None,
        metavar="DIR",
        help=(
            "a Triton install root (bin/tritonserver, backends/), such as /opt/tritonserver in NVIDIA's container: "
            "use its binary and backends as they are (default: the nvidia-pytriton wheel's server)"
        ),
    )
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
    _add_trace_flags(parser)
    parser.add_argument(
        "--print-docker",
        action="store_true",
        help=(
            "print the 'docker run' that serves REPO with the image of deploy/docker (ports published on --host, "
            "the --admin-key-file mounted, --gpus all when a model needs one) and exit; starts nothing"
        ),
    )
    parser.add_argument(
        "--print-triton-image",
        action=_PrintAndExit,
        text=TRITON_IMAGE,
        help="print the pinned Triton image (deploy/docker/Dockerfile's TRITON_IMAGE build argument) and exit",
    )
    parser.set_defaults(handler=run_serve)
    _register_health(subparsers)
    _register_trace(subparsers)


class _PrintAndExit(argparse.Action):
    """A flag that prints ``text`` and exits 0 while parsing, like ``--version`` (so ``--repo`` is not needed)."""

    def __init__(self, option_strings: list[str], dest: str, text: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)
        self.text = text

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None) -> None:
        print(self.text)
        parser.exit()


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


def _register_trace(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trace",
        help="show the requests in a trace file of 'aigi serve --trace-file': each step's queue and compute time",
        description=(
            "Read a Triton trace file written by 'aigi serve --trace-file FILE' (written when the server stops) and "
            "print each traced request's path through the ensemble: total, queue and compute time of the ensemble "
            "and of each step (aigi_preprocess, the network), in milliseconds."
        ),
    )
    parser.add_argument("file", type=Path, help="the trace file")
    parser.add_argument("--last", type=int, default=10, help="show the last N requests (default 10)")
    parser.set_defaults(handler=run_trace)


def run_trace(args: argparse.Namespace) -> int:
    """Handler of ``aigi trace``."""
    from aigi.tracing import format_trace, read_traces

    requests = read_traces(args.file)
    for request in requests[-args.last :]:
        print("\n".join(format_trace(request)))
    print(f"{len(requests)} traced requests in {args.file}", file=sys.stderr)
    return 0


def run_health(args: argparse.Namespace) -> int:
    """Handler of ``aigi health``: one line, exit 0 when the canary passed."""
    from aigi.health import canary

    result = canary(args.url, args.model, args.timeout)
    verdict = "ok" if result.ok else "FAILED"
    print(f"{verdict} {args.model} at {args.url} in {result.seconds * 1000:.0f} ms: {result.detail}")
    return 0 if result.ok else 1


def _add_trace_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "tracing",
        "Triton's own request traces: one JSON record per traced request with the timestamps of every step of the "
        "ensemble (queue, compute input/infer/output of aigi_preprocess and the network), written to --trace-file "
        "when the server stops.",
    )
    group.add_argument("--trace-file", type=Path, default=None, help="write traces here (tracing is off without it)")
    group.add_argument("--trace-rate", type=int, default=1000, help="trace one request in N (default 1000)")
    group.add_argument(
        "--trace-level",
        choices=("TIMESTAMPS", "TENSORS"),
        default="TIMESTAMPS",
        help="TIMESTAMPS (default), or TENSORS to also record tensors (large; never on untrusted traffic)",
    )
    group.add_argument("--trace-count", type=int, default=-1, help="stop after N traces (default -1: no limit)")
    group.add_argument(
        "--exit-timeout",
        type=int,
        default=5,
        help="seconds Triton waits for in-flight requests on SIGTERM (default 5; raise it behind a load balancer)",
    )


def trace_args(file: Path | None, rate: int, level: str, count: int) -> list[str]:
    """Triton's ``--trace-config`` flags for ``aigi serve --trace-file``; none when tracing is off.

    Raises:
        SettingsError: a rate below 1.
    """
    if file is None:
        return []
    if rate < 1:
        raise SettingsError(f"--trace-rate must be at least 1, got {rate}")
    return [
        f"--trace-config=triton,file={Path(file).absolute()}",
        f"--trace-config=rate={rate}",
        f"--trace-config=level={level}",
        f"--trace-config=count={count}",
    ]


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
    try:
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(24) + "\n")
        # group read is allowed: a Kubernetes secret mounted for a non-root pod is 0440, root:fsGroup
        if key_file.stat().st_mode & 0o007:
            raise ServerError(f"{key_file}: the admin key file must not be readable by others (chmod 600 it)")
        key = key_file.read_text().strip()
    except OSError as exc:  # a read-only secret mount that is missing, or a file this user cannot read
        raise ServerError(f"admin key file {key_file}: {exc.strerror or exc}") from exc
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
        return _print_docker(args)
    if not args.no_verify:
        verify_repository(args.repo)
    server = _server(args, admin_key(args.admin_key_file))
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


def _print_docker(args: argparse.Namespace) -> int:
    """``--print-docker``: the ``docker run`` line on stdout, notes (build, key, what will run) on stderr."""
    ports = {"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port, "health": args.health_port}
    notes = docker_notes(args.repo, args.admin_key_file)  # first: a repository without models prints nothing
    print(docker_command(args.repo, args.host, ports, args.admin_key_file))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if warning := exposure_note(args.host):
        print(warning, file=sys.stderr)
    return 0


def _server(args: argparse.Namespace, key: str | None) -> TritonServer:
    """The server ``aigi serve`` runs for these arguments (also what --print-docker shows for the container)."""
    from aigi.server import TritonServer

    return TritonServer(
        args.repo,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        env=args.env,
        host=args.host,
        log_verbose=args.log_verbose,
        log_file=args.log_file,
        admin_key=key,
        tritonserver=args.tritonserver,
        exit_timeout_s=args.exit_timeout,
        extra_args=trace_args(args.trace_file, args.trace_rate, args.trace_level, args.trace_count),
    )


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
