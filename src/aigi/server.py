"""Start and stop a real ``tritonserver``: the one shipped in the ``nvidia-pytriton`` wheel, or an installed one.

The wheel carries Triton with the Python backend only, so on a machine without the Triton
container the CPU repository (``aigi_preprocess`` + ``aigi_cpu`` + the ensemble) is served by it.
In the Triton container, ``tritonserver=/opt/tritonserver`` (``aigi serve --tritonserver``) runs the
container's own binary and backends as they are.
The Python models run in the interpreter whose ``python3`` is first on the server's ``PATH``: this
module puts ``<env>/bin`` there (``env`` defaults to the running interpreter's ``sys.prefix``), so
repositories stay portable and name no environment in their configs.

Typical use::

    with TritonServer("model_repository") as server:   # start() + wait_ready()
        print(server.endpoints["grpc"])

Standard library only (no numpy, no tritonclient), so ``aigi serve`` stays light.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from aigi.errors import ServerError

logger = logging.getLogger(__name__)

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
LOG_TAIL_LINES = 30
# Triton APIs that change the server or reach its host, not the model's answers: loading/unloading models
# (an outage, or code execution through an uploaded Python model), registering shared memory (reads and
# writes other /dev/shm regions), trace and log settings (write files). Callers must send this header.
ADMIN_HEADER = "aigi-admin-key"
# Triton's gRPC frontend expects the restricted-protocol header under this prefix
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
PORT_RETRIES = 3
# A copy of the wheel's server laid out as the wheel has it (``<pack>/pytriton/tritonserver`` beside
# ``<pack>/nvidia_pytriton.libs``; benchmarks/server_pack.py builds one) used instead of the installed wheel's.
TRITON_DIST_ENV = "AIGI_TRITON_DIST"
# The Python environment the Python backend's models run in when TritonServer is given none (default sys.prefix).
TRITON_PYTHON_ENV = "AIGI_TRITON_PYTHON"
# errors a CPU-only host always logs; they say nothing about why a server failed
_HARMLESS = ("CudaDriverHelper", "unable to create stream", "pinned", "NVML", "CUDA driver")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; another process may still take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_tritonserver() -> tuple[Path, Path]:
    """Locate the wheel's Triton distribution and its shared libraries.

    Returns:
        ``(tritonserver_dir, libs_dir)``: ``.../pytriton/tritonserver`` and ``.../nvidia_pytriton.libs``.

    ``$AIGI_TRITON_DIST``, when set, names such a ``tritonserver`` folder elsewhere (a carried copy of the wheel's).

    Raises:
        ServerError: the ``nvidia-pytriton`` wheel is not installed (``pip install 'aigi[serve]'``), or
            ``$AIGI_TRITON_DIST`` names a folder without ``bin/tritonserver``.
    """
    packed = os.environ.get(TRITON_DIST_ENV)
    if packed:
        dist = Path(packed).absolute()
        if not (dist / "bin" / "tritonserver").is_file():
            raise ServerError(f"${TRITON_DIST_ENV}={packed}: no bin/tritonserver there")
        return dist, dist.parent.parent / "nvidia_pytriton.libs"
    # find_spec, not import: importing pytriton is slow and pulls in its own stack
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise ServerError("tritonserver not found: install the serving extra (pip install 'aigi[serve]')")
    package = Path(spec.origin).parent
    dist, libs = package / "tritonserver", package.parent / "nvidia_pytriton.libs"
    if not (dist / "bin" / "tritonserver").is_file():
        raise ServerError(f"the nvidia-pytriton wheel has no tritonserver binary under {dist}")
    return dist, libs


def python_version_of(env: Path) -> str:
    """``major.minor`` of the Python in a virtual environment (the backend stub must match it)."""
    python = env / "bin" / "python3"
    if not python.exists():
        raise ServerError(f"{env}: not a Python environment (no bin/python3)")
    if env.resolve() == Path(sys.prefix).resolve():
        return f"{sys.version_info[0]}.{sys.version_info[1]}"
    out = subprocess.run(
        [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if out.returncode != 0:
        raise ServerError(f"{python} does not run: {out.stderr.strip()[-300:]}")
    return out.stdout.strip()


# folders the dynamic loader searches by default (python_libdir leaves them to it)
_SYSTEM_LIBDIRS = frozenset(
    f"{prefix}/{lib}"
    for prefix in ("", "/usr")
    for lib in ("lib", "lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu")
)


def python_libdir(env: Path) -> Path | None:
    """The folder holding the shared libpython of ``env``'s Python (``None`` when none is found).

    The wheel's backend stub links ``libpython3.X.so.1.0``; left to the loader's default path it can get the
    system's, whose patch release differs from the env's standard library: on a pyenv 3.11.7 beside Debian's 3.11,
    ``import ssl`` in the stub failed with "undefined symbol: _PyModule_Add", so transformers (and with it the torch
    network model) could not load inside Triton.
    """
    candidates: list[Path] = []
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and env.resolve() == Path(sys.prefix).resolve():
        candidates.append(Path(str(libdir)))
    config = env / "pyvenv.cfg"
    if config.is_file():  # a venv: its home is the base interpreter's bin/
        for line in config.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                candidates.append(Path(value.strip()).parent / "lib")
    candidates.append(env / "lib")  # a conda env or a plain installation
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("libpython3*.so*")):
            # the loader searches the system's folders anyway; naming them first would only reorder its search
            return None if str(folder.resolve()) in _SYSTEM_LIBDIRS else folder
    return None


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM the server if its parent dies, so no orphan keeps the ports.

    Linux ties this to the parent *thread*, which is why it is only used when starting from the main thread.
    """
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def model_folders(repo: Path) -> list[str]:
    """Names of the model folders (those holding a ``config.pbtxt``) in a repository.

    Raises:
        ServerError: the repository is missing or holds no model.
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise ServerError(f"model repository {repo} does not exist; create one with 'aigi export'")
    names = sorted(child.name for child in repo.iterdir() if (child / "config.pbtxt").is_file())
    if not names:
        raise ServerError(f"model repository {repo} holds no model (no */config.pbtxt); run 'aigi export' first")
    return names


def installed_tritonserver(root: str | Path) -> Path:
    """Check a Triton install root (``bin/tritonserver``, ``backends/python/triton_python_backend_stub``).

    Raises:
        ServerError: ``root`` lacks the binary or the Python backend's stub (the ``nvidia-pytriton`` wheel's own
            folder lacks the stub: serve it without ``--tritonserver``).
    """
    root = Path(root).absolute()
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"{root} is not a Triton install root (no bin/tritonserver), such as /opt/tritonserver")
    stub = root / "backends" / "python" / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"{root}: no Python backend stub at {stub}; the nvidia-pytriton wheel is served without it")
    return root


def restricted_api_args(admin_key: str) -> list[str]:
    """``tritonserver`` flags that close :data:`RESTRICTED_APIS` on HTTP and gRPC to callers without the key."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]{16,}", admin_key):
        raise ServerError("the admin key must be at least 16 characters of letters, digits, '-' or '_'")
    apis = ",".join(RESTRICTED_APIS)
    return [
        f"--http-restricted-api={apis}:{ADMIN_HEADER}={admin_key}",
        f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={admin_key}",
    ]


DEFAULT_RESPONSE_CACHE_BYTES = 64 * 1024 * 1024
_RESPONSE_CACHE = re.compile(r"^\s*response_cache\s*\{[^}]*enable\s*:\s*true", re.MULTILINE)


def response_cache_args(repo: Path, size_bytes: int) -> list[str]:
    """Triton's local response cache, sized ``size_bytes``, when a model of ``repo`` enables ``response_cache``.

    A config's ``response_cache { enable: true }`` does nothing unless the server starts with a cache: without
    this flag Triton loads the model and silently caches nothing.
    """
    configs = (Path(repo) / name / "config.pbtxt" for name in model_folders(repo))
    if not any(_RESPONSE_CACHE.search(config.read_text(errors="replace")) for config in configs):
        return []
    return [f"--cache-config=local,size={int(size_bytes)}"]


def serving_args(repo: Path, admin_key: str, served_at: str | Path | None = None) -> list[str]:
    """The ``tritonserver`` flags that decide which models load and who may change that; every way aigi starts
    Triton uses them (:meth:`TritonServer.command`, and through it the container's ``aigi serve``).

    Args:
        repo: the repository whose model folders (those holding a ``config.pbtxt``) are loaded, by name.
        admin_key: the key that opens :data:`RESTRICTED_APIS`.
        served_at: the repository's path as the server sees it (a container's ``/models``); ``repo`` by default.

    Raises:
        ServerError: the repository is missing or holds no model, or the key is malformed.
    """
    return [
        f"--model-repository={served_at or repo}",
        # explicit loading of the folders that hold a config: the default repository also keeps
        # source (python_models/) and notes that Triton would otherwise try, and fail, to load
        "--model-control-mode=explicit",
        *(f"--load-model={name}" for name in model_folders(repo)),
        *restricted_api_args(admin_key),
    ]


def _alive(proc_file: Path) -> bool:
    """Whether the process of a ``/proc/PID/...`` path still runs (a zombie, dead and awaiting its reaper, does not)."""
    try:
        return (proc_file.parent / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class TritonServer:
    """One ``tritonserver`` process serving a model repository, bound to 127.0.0.1 by default.

    Args:
        repo: the model repository (for example written by ``aigi export``).
        http_port, grpc_port, metrics_port: ports to listen on; ``None`` or ``0`` picks a free one.
        env: the Python environment the Python-backend models run in (its ``bin`` goes first on
            ``PATH``; it needs numpy<2, Pillow, onnxruntime and aigi); defaults to ``$AIGI_TRITON_PYTHON``, else
            ``sys.prefix``.
        host: address every endpoint binds to; ``0.0.0.0`` exposes the server to the network.
        log_verbose: Triton's ``--log-verbose`` level.
        log_file: where the server's stdout and stderr go (appended); a new file in the temp folder when ``None``.
        exit_timeout_s: how long Triton waits for in-flight requests when stopping.
        extra_args: more ``tritonserver`` flags, passed through.
        admin_key: the value of the ``aigi-admin-key`` header that Triton's restricted APIs
            (:data:`RESTRICTED_APIS`) require; a random secret when ``None``. Read it back from
            :attr:`admin_headers`.
        tritonserver: a Triton install root (``bin/tritonserver``, ``backends/``), such as ``/opt/tritonserver``
            in NVIDIA's container: its binary and backends are used as they are (its Python backend stub already
            matches its ``python3``). ``None``: the ``nvidia-pytriton`` wheel's server, with a copy of its backends
            and the stub for ``env``'s Python.
        response_cache_bytes: size of Triton's local response cache, started only when a model enables
            ``response_cache`` (``aigi export --response-cache``).
    """

    def __init__(
        self,
        repo: str | Path,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        env: str | Path | None = None,
        host: str = "127.0.0.1",
        log_verbose: int = 0,
        log_file: str | Path | None = None,
        exit_timeout_s: int = 5,
        extra_args: list[str] | None = None,
        admin_key: str | None = None,
        tritonserver: str | Path | None = None,
        response_cache_bytes: int = DEFAULT_RESPONSE_CACHE_BYTES,
    ) -> None:
        self.repo = Path(repo).resolve()
        self.tritonserver = Path(tritonserver).absolute() if tritonserver else None
        self.response_cache_bytes = int(response_cache_bytes)
        self.admin_key = admin_key or secrets.token_urlsafe(24)
        self.env = Path(env or os.environ.get(TRITON_PYTHON_ENV) or sys.prefix).absolute()
        self.host = host
        self.log_verbose = int(log_verbose)
        self.exit_timeout_s = int(exit_timeout_s)
        self.extra_args = list(extra_args or [])
        self._requested = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.ports: dict[str, int] = {}
        self._log_file_arg = Path(log_file) if log_file else None
        self.log_file: Path | None = None
        self._workdir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._log_handle: BinaryIO | None = None
        self._log_offset = 0
        self.shm_prefix = ""
        self.started_at = 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> TritonServer:
        """Launch the process (does not wait for readiness; see :meth:`wait_ready`).

        Raises:
            ServerError: the repository is missing, the binary is not installed, or the server is running.
        """
        if self.running:
            raise ServerError(f"server already running (pid {self.pid})")
        if not self.repo.is_dir():
            raise ServerError(f"model repository {self.repo} does not exist")
        libs: Path | None = None
        if self.tritonserver is not None:
            dist = installed_tritonserver(self.tritonserver)
            backends = dist / "backends"
        else:
            dist, libs = find_tritonserver()
            backends = self._wheel_backends(dist)
        self.shm_prefix = f"aigi{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        # outside the work directory, so the log outlives the server for post-mortems
        default_log = Path(tempfile.gettempdir()) / f"aigi-tritonserver-{self.shm_prefix.rstrip('-')}.log"
        self.log_file = self._log_file_arg or default_log
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.ports = {name: port or free_port(self.host) for name, port in self._requested.items()}
        cmd = self.command(dist, backends)
        logger.debug("starting %s", " ".join(cmd))
        self._log_handle = open(self.log_file, "ab")  # noqa: SIM115 - lives as long as the process
        self._log_offset = self._log_handle.tell()  # a reused log file: read only this run's lines
        self.started_at = time.monotonic()
        self._proc = subprocess.Popen(
            cmd,
            env=self._environment(libs),
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # own process group: a Ctrl-C in the terminal reaches us, and we stop the server ourselves
            start_new_session=True,
            preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
        )
        return self

    def _wheel_backends(self, dist: Path) -> Path:
        """A copy of the wheel's backends with the Python backend stub for ``env``'s Python (the wheel's lacks it)."""
        stub = dist / "python_backend_stubs" / python_version_of(self.env) / "triton_python_backend_stub"
        if not stub.is_file():
            raise ServerError(f"no Python backend stub for {self.env} at {stub}")
        self._workdir = Path(tempfile.mkdtemp(prefix="aigi-triton-"))
        # the wheel's backend dir lacks the stub and is read-only in spirit: work on a copy
        backends = self._workdir / "backends"
        shutil.copytree(dist / "backends", backends, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
        return backends

    def command(self, dist: Path, backends: Path, served_at: str | Path | None = None) -> list[str]:
        """The ``tritonserver`` command line for this server.

        Args:
            dist: the Triton install root (``bin/tritonserver``, ``caches/``).
            backends: the backend directory Triton loads backends from.
            served_at: the repository's path as the server sees it (a container's ``/models``); :attr:`repo`'s
                model folders decide what loads either way.
        """
        return [
            str(dist / "bin" / "tritonserver"),
            *serving_args(self.repo, self.admin_key, served_at),
            f"--backend-directory={backends}",
            f"--cache-directory={dist / 'caches'}",
            *response_cache_args(self.repo, self.response_cache_bytes),
            f"--http-port={self.ports['http']}",
            f"--grpc-port={self.ports['grpc']}",
            f"--metrics-port={self.ports['metrics']}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            # the wheel is a CPU laptop server; an installed Triton (the container) reports its GPUs
            f"--allow-gpu-metrics={'true' if self.tritonserver else 'false'}",
            # p50/p90/p99 per model on /metrics (nv_inference_*_summary_us), for dashboards and aigi bench
            "--metrics-config=summary_latencies=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--strict-readiness=true",
            f"--log-verbose={self.log_verbose}",
            # regions in /dev/shm are named after this prefix; two servers sharing one collide
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,shm-growth-byte-size=1048576",
            *self.extra_args,
        ]

    def _environment(self, libs: Path | None) -> dict[str, str]:
        env = os.environ.copy()
        if libs is not None:
            # the copied libtriton_python.so lost its $ORIGIN-relative RPATH to the wheel's libraries; the stub
            # links libpython3.X, which must be the env's own (python_libdir)
            found = python_libdir(self.env)
            paths = (str(libs), str(found) if found else "", env.get("LD_LIBRARY_PATH", ""))
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)
        # the backend stub embeds the python3 first on PATH; that is how models find numpy and aigi
        env["PATH"] = os.pathsep.join(p for p in (str(self.env / "bin"), env.get("PATH", "")) if p)
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        return env

    def wait_ready(self, timeout: float = 120.0) -> TritonServer:
        """Block until ``/v2/health/ready`` answers 200.

        Raises:
            ServerError: the process exited (a model failed to load, a port was taken) or ``timeout`` passed;
                the message carries the last lines of the server log.
        """
        if self._proc is None:
            raise ServerError("server not started")
        url = f"{self.endpoints['http_url']}/v2/health/ready"
        deadline = time.monotonic() + timeout
        port_retries = PORT_RETRIES
        while True:
            code = self._proc.poll()
            if code is not None and port_retries > 0 and self._lost_port_race():
                # a port picked free was taken before Triton bound it: pick again
                port_retries -= 1
                logger.warning("a port was taken before tritonserver bound it; retrying on fresh ports")
                self._cleanup()
                self.start()
                url = f"{self.endpoints['http_url']}/v2/health/ready"
                continue
            if code is not None:
                self._cleanup()
                why = self._failure_summary()
                raise ServerError(f"tritonserver exited with code {code} before it was ready{why}\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        logger.info("tritonserver ready in %.1f s", time.monotonic() - self.started_at)
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"tritonserver not ready after {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.1)

    def _lost_port_race(self) -> bool:
        auto_picked = {self.ports[name] for name, port in self._requested.items() if not port}
        taken = {int(port) for port in re.findall(r":(\d+)' already in use", self._read_log(200))}
        return bool(taken) and taken <= auto_picked

    def stop(self, timeout: float | None = None) -> int | None:
        """Ask the server to shut down (SIGTERM), wait, then kill it if it lingers; idempotent.

        Returns:
            The process's exit code, or ``None`` when it was never started.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout if timeout is not None else self.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                logger.warning("tritonserver (pid %d) did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()
        self._cleanup()
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the server process (a crash, an OOM kill), with no chance to drain; for fault checks.

        Only ``tritonserver`` itself is killed, as the kernel's OOM killer would; its Python backend stubs
        notice their parent is gone and exit on their own.

        Returns:
            The process's exit code (``-9``), or ``None`` when it was never started.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._cleanup()
        return proc.returncode

    def restart(self, timeout: float = 120.0) -> TritonServer:
        """Stop (or reap a killed process), then start again on the same ports and wait until ready."""
        self.stop()
        self._requested = dict(self.ports)
        return self.start().wait_ready(timeout)

    def _cleanup(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if self.shm_prefix and not self.running:
            self._reap_stubs()
            # a graceful stop removes these; a killed server leaves them behind (the prefix is ours alone)
            for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
                region.unlink(missing_ok=True)

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- state -----------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Process id of the server, when started."""
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit code once the process has ended."""
        return self._proc.poll() if self._proc else None

    def stub_pids(self, model: str | None = None) -> list[int]:
        """Process ids of this server's Python-backend stubs (of ``model`` only, when given); Linux only.

        Stubs are found by this server's shared-memory prefix on their command line, so they are found even
        after the server died and they were re-parented.
        """
        if not self.shm_prefix:
            return []
        found = []
        for cmdline_file in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                cmdline = cmdline_file.read_bytes().split(b"\0")
            except OSError:
                continue  # the process ended while we looked
            prefix = self.shm_prefix.encode()
            if not cmdline[0].endswith(b"python_backend_stub") or not any(prefix in part for part in cmdline):
                continue
            if (model is None or any(f"/{model}/".encode() in part for part in cmdline)) and _alive(cmdline_file):
                found.append(int(cmdline_file.parent.name))
        return sorted(found)

    def _reap_stubs(self) -> None:
        """SIGKILL stubs that outlived the server: a hung stub survives a graceful stop, and no stub notices a
        SIGKILLed parent; each keeps its model's memory until killed."""
        for pid in self.stub_pids():
            try:
                os.kill(pid, signal.SIGKILL)
                logger.debug("killed stub %d left behind by the server", pid)
            except ProcessLookupError:
                continue
            # an orphan is re-parented to PID 1: in a container that is `aigi serve` itself, so reap it here
            # or it stays a zombie (elsewhere it is not our child and init reaps it)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        deadline = time.monotonic() + 10  # SIGKILL is not instant on a loaded machine; return once they are gone
        while self.stub_pids() and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def admin_headers(self) -> dict[str, str]:
        """Headers that open Triton's restricted APIs (model repository, shared memory, trace, logging).

        Both spellings: HTTP reads ``aigi-admin-key``, gRPC ``triton-grpc-protocol-aigi-admin-key``; the other
        protocol ignores the header it does not expect, so one dict serves both clients.
        """
        return {ADMIN_HEADER: self.admin_key, GRPC_HEADER_PREFIX + ADMIN_HEADER: self.admin_key}

    @property
    def endpoints(self) -> dict[str, str]:
        """``http``, ``grpc``, ``metrics`` as ``host:port``, plus ``http_url`` and ``metrics_url``."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return {
            "http": f"{host}:{self.ports['http']}",
            "grpc": f"{host}:{self.ports['grpc']}",
            "metrics": f"{host}:{self.ports['metrics']}",
            "http_url": f"http://{host}:{self.ports['http']}",
            "metrics_url": f"http://{host}:{self.ports['metrics']}/metrics",
        }

    def models(self) -> list[dict[str, str]]:
        """The repository index: ``name``, ``version`` and ``state`` of every model the server knows."""
        request = urllib.request.Request(
            f"{self.endpoints['http_url']}/v2/repository/index", data=b"{}", method="POST", headers=self.admin_headers
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return list(json.loads(response.read()))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ServerError(f"cannot read the model index from {self.endpoints['http']}: {exc}") from exc

    def _read_log(self, lines: int) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        with open(self.log_file, "rb") as handle:
            handle.seek(self._log_offset)
            tail = collections.deque(handle, maxlen=lines)
        return b"".join(tail).decode("utf-8", "replace").rstrip()

    def _failure_summary(self) -> str:
        """``: <why>`` from the log's own words (a model that failed to load, a port in use), or ``""``."""
        text = self._read_log(400)
        reasons = [
            f"model '{name}' failed to load: {why.split(chr(92) + 'n')[0].strip()}"
            for name, why in re.findall(r"failed to load '([^']+)' version \d+: (.*)", text)
        ]
        reasons += re.findall(r"failed to start \w+ service: [^\"]*", text)
        return (": " + "; ".join(dict.fromkeys(reasons))) if reasons else ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The server's error lines (Triton prefixes them with ``E``) or else its last lines, for messages."""
        text = self._read_log(400)
        if not text:
            return "(no server log)"
        errors = [
            line
            for line in text.splitlines()
            if line[:1] == "E" and line[1:5].isdigit() and not any(noise in line for noise in _HARMLESS)
        ]
        shown = errors[-lines:] if errors else text.splitlines()[-lines:]
        return f"--- {'errors' if errors else 'last lines'} of {self.log_file} ---\n" + "\n".join(shown)
