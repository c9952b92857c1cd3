"""The projections in a child process of `serve`, restarted if it dies, stopped with it.

Projections decode and write every event a second time; in the serving process they share
its interpreter (and its one core) with the write path. As a child (`timebank-ledger
project` with the same settings) they have a core of their own, and `serve` stays one
command. The child's metrics go to the port after the server's (or any free port when the
server's is 0), so both can be scraped.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Mapping

from ledger import logs
from ledger.config import Settings, host_port

log = logging.getLogger(__name__)

# A child that dies is started again after this pause (doubled each time it dies young).
restart_pause_seconds = 1.0
restart_pause_seconds_max = 30.0
# A child that ran this long before dying resets the pause.
settled_seconds = 60.0
stop_timeout_seconds = 30.0


def child_metrics_address(address: str) -> str:
    """Where the child serves its metrics: the next port after the server's."""
    parsed = host_port(address)
    if parsed is None:
        return "off"
    host, port = parsed
    return f"{host}:{port + 1 if port else 0}"


class ProjectionProcess:
    """Keeps one `timebank-ledger project` child running until stop()."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] = os.environ) -> None:
        self._environment = {
            **environ,
            "LEDGER_PROJECTIONS": "in-process",
            "LEDGER_METRICS_ADDRESS": child_metrics_address(settings.metrics_address),
        }
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._supervise, name="projections", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(stop_timeout_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(stop_timeout_seconds)
        self._thread.join(stop_timeout_seconds)

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._process.pid if self._process is not None else None

    def _supervise(self) -> None:
        pause = restart_pause_seconds / 2  # doubled before the first restart
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                # The child logs to the same standard error as the server, as JSON lines.
                self._process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "ledger.cli",
                        "project",
                        "--exit-with-parent",
                        str(os.getpid()),
                    ],
                    env=self._environment,
                    stdin=subprocess.DEVNULL,
                )
                process = self._process
            logs.event(log, "projection_process_started", pid=process.pid)
            started = threading.Event()
            ran_long = threading.Timer(settled_seconds, started.set)
            ran_long.start()
            code = process.wait()
            ran_long.cancel()
            if self._stopping.is_set():
                return
            logs.event(
                log, "projection_process_died", level=logging.ERROR, pid=process.pid, code=code
            )
            pause = (
                restart_pause_seconds
                if started.is_set()
                else min(pause * 2, restart_pause_seconds_max)
            )
            self._stopping.wait(pause)
