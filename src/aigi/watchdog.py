"""``aigi serve``'s watchdog: a canary inference on a timer, a restart when it fails, and the truth on a port.

The watchdog owns one :class:`aigi.server.TritonServer`. Every ``interval_s`` it runs
:func:`aigi.health.canary`; after ``failures`` failures in a row (or when the process died) it reports
not-ready and restarts the server on the same ports, because a hung Python stub is not something Triton
recovers from by itself. :class:`HealthEndpoint` serves what the watchdog knows:

- ``GET /ready`` 200 only while the last canary passed (a load balancer's readiness probe);
- ``GET /live`` 200 unless the server could not be brought back after ``max_restarts`` tries in a row
  (a liveness probe: then the supervisor, such as the kubelet, restarts the whole pod);
- both answer a JSON body with the state, the last canary's detail and the restart count.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aigi.errors import ServerError
from aigi.health import DEFAULT_CANARY_TIMEOUT_S, canary

logger = logging.getLogger(__name__)


@dataclass
class HealthState:
    """What the watchdog knows, as the health endpoint reports it.

    Attributes:
        ready: the last canary passed and no restart is under way.
        live: the server is up, or a restart may still bring it back.
        state: ``starting``, ``serving``, ``failing``, ``restarting`` or ``dead``.
        detail: the last canary's result or the last restart error, in one line.
        restarts: restarts done since start.
        consecutive_failures: canaries failed in a row.
        last_ok_age_s: seconds since the last canary passed (``None`` before the first).
    """

    ready: bool = False
    live: bool = True
    state: str = "starting"
    detail: str = ""
    restarts: int = 0
    consecutive_failures: int = 0
    last_ok_age_s: float | None = None


class Watchdog:
    """Canary the server on a timer and restart it when it stops answering.

    Args:
        server: a started :class:`aigi.server.TritonServer` (``restart()`` and ``running`` are used).
        model: the ensemble the canary calls.
        interval_s: seconds between canaries.
        timeout_s: deadline of one canary.
        failures: canaries failed in a row before a restart.
        max_restarts: failed restarts in a row before the watchdog gives up and reports not-live.
    """

    def __init__(
        self,
        server: Any,
        *,
        model: str = "aigi",
        interval_s: float = 10.0,
        timeout_s: float = DEFAULT_CANARY_TIMEOUT_S,
        failures: int = 2,
        max_restarts: int = 3,
    ) -> None:
        self.server = server
        self.model = model
        self.interval_s = float(interval_s)
        self.timeout_s = float(timeout_s)
        self.failures = max(1, int(failures))
        self.max_restarts = max(1, int(max_restarts))
        self._state = HealthState()
        self._last_ok_at: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> HealthState:
        """A copy of the current state (thread-safe)."""
        with self._lock:
            state = HealthState(**asdict(self._state))
            last_ok = self._last_ok_at
        state.last_ok_age_s = None if last_ok is None else round(time.monotonic() - last_ok, 3)
        return state

    def _set(self, **changes: Any) -> None:
        with self._lock:
            before = self._state.state
            for key, value in changes.items():
                setattr(self._state, key, value)
            after = self._state.state
        if after != before:
            logger.warning("health: %s -> %s (%s)", before, after, changes.get("detail", ""))

    def check_once(self) -> bool:
        """Run one canary (restarting the server when it has failed often enough); True when it passed."""
        if not self.server.running:
            self._set(ready=False, state="failing", detail=f"tritonserver exited with code {self.server.returncode}")
            return self._restart()
        if self._canary_passed():
            return True
        if self.snapshot().consecutive_failures >= self.failures:
            return self._restart()
        return False

    def _canary_passed(self) -> bool:
        """One canary, recorded in the state."""
        result = canary(self.server.endpoints["http_url"], self.model, self.timeout_s)
        if result.ok:
            with self._lock:
                self._last_ok_at = time.monotonic()
            self._set(ready=True, live=True, state="serving", detail=result.detail, consecutive_failures=0)
            return True
        failed = self.snapshot().consecutive_failures + 1
        self._set(ready=False, state="failing", detail=f"canary failed: {result.detail}", consecutive_failures=failed)
        logger.warning("canary %d/%d failed in %.1f s: %s", failed, self.failures, result.seconds, result.detail)
        return False

    def _restart(self) -> bool:
        """Restart the server up to ``max_restarts`` times; False (and not-live) when it will not come back."""
        for attempt in range(1, self.max_restarts + 1):
            self._set(ready=False, state="restarting", detail=f"restart {attempt}/{self.max_restarts}")
            try:
                self.server.restart(timeout=max(60.0, self.timeout_s * 6))
            except ServerError as exc:
                logger.error("restart %d/%d failed: %s", attempt, self.max_restarts, str(exc).splitlines()[0])
                continue
            with self._lock:
                self._state.restarts += 1
                self._state.consecutive_failures = 0
            if self._canary_passed():
                return True
        self._set(ready=False, live=False, state="dead", detail=f"not answering after {self.max_restarts} restarts")
        return False

    def start(self) -> Watchdog:
        """Run :meth:`check_once` every ``interval_s`` in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="aigi-watchdog", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self.snapshot().live:
                return  # gave up: the supervisor restarts the process
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - the watchdog must outlive its own bugs; say it loudly
                logger.exception("watchdog check failed")

    def stop(self) -> None:
        """Stop the timer thread (the server is left as it is)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s * 2 + 120)


class HealthEndpoint:
    """``/ready`` and ``/live`` on a small HTTP server of their own, from a :class:`Watchdog`'s state.

    Args:
        watchdog: where the state comes from.
        host: address to bind (the server's host).
        port: port to listen on; ``0`` picks a free one (read :attr:`port`).
    """

    def __init__(self, watchdog: Watchdog, host: str = "127.0.0.1", port: int = 8003) -> None:
        handler = _handler_for(watchdog)
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="aigi-health", daemon=True)

    def start(self) -> HealthEndpoint:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler_for(watchdog: Watchdog) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
            state = watchdog.snapshot()
            checks = {"/ready": state.ready, "/live": state.live}
            if self.path not in checks:
                self._answer(404, {"error": "unknown path; use /ready or /live"})
                return
            self._answer(200 if checks[self.path] else 503, asdict(state))

        def _answer(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            logger.debug("health %s", format % args)

    return Handler
