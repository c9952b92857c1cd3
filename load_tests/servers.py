"""Servers under test as subprocesses, a fresh PostgreSQL schema for each, and CPU from /proc.

A server listens on 127.0.0.1 port 0 and its port is read from its first log line
(`server_started` for the ledger, `echo_server_started` for the echo server). Its output
goes to a log file, never to a pipe that could fill up and stall it. It is stopped with
SIGTERM, then killed if it has not exited within `stop_timeout_seconds`.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

start_timeout_seconds = 30.0
# The ledger's own shutdown grace is 10 s by default; allow for it, then kill.
stop_timeout_seconds = 20.0
postgres_connect_timeout_seconds = 5
_poll_seconds = 0.05
_clock_ticks_per_second = os.sysconf("SC_CLK_TCK")


@contextmanager
def postgres_schema(database_url: str) -> Iterator[str]:
    """A new empty schema; yields the ledger URL that uses it; drops it (cascade) after."""
    name = f"load_{datetime.now(UTC):%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"
    with psycopg.connect(
        database_url, autocommit=True, connect_timeout=postgres_connect_timeout_seconds
    ) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        separator = "&" if "?" in database_url else "?"
        yield f"{database_url}{separator}schema={name}"
    finally:
        with psycopg.connect(
            database_url, autocommit=True, connect_timeout=postgres_connect_timeout_seconds
        ) as connection:
            connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def postgres_facts(database_url: str) -> dict[str, str]:
    """PostgreSQL's version and the settings that decide commit cost."""
    with psycopg.connect(
        database_url, autocommit=True, connect_timeout=postgres_connect_timeout_seconds
    ) as connection:
        facts = {}
        for setting in ("server_version", "synchronous_commit", "fsync", "wal_sync_method"):
            row = connection.execute(sql.SQL("SHOW {}").format(sql.Identifier(setting))).fetchone()
            facts[setting] = str(row[0]) if row else ""
        return facts


@dataclass(frozen=True)
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def ledger_command() -> list[str]:
    """`timebank-ledger serve` from this interpreter's environment, on any free port."""
    script = Path(sys.executable).parent / "timebank-ledger"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "ledger.cli"]
    return [*base, "serve", "--address", "127.0.0.1:0"]


def echo_command() -> list[str]:
    return [sys.executable, "-m", "load_tests.echo_server", "--address", "127.0.0.1:0"]


@contextmanager
def running(command: list[str], env: Mapping[str, str], log_path: Path) -> Iterator[RunningServer]:
    """Starts the server, waits for its port, yields it, and stops it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
        try:
            port = _wait_for_port(process, log_path)
            yield RunningServer(process, port, log_path)
        finally:
            _stop(process)


def _wait_for_port(process: subprocess.Popen[bytes], log_path: Path) -> int:
    deadline = time.monotonic() + start_timeout_seconds
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            port = _started_port(line)
            if port is not None:
                return port
        if process.poll() is not None:
            break
        time.sleep(_poll_seconds)
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
    raise RuntimeError(f"server did not start (exit code {process.poll()}); log tail:\n{tail}")


def _started_port(line: str) -> int | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not str(record.get("event", "")).endswith("started"):
        return None
    port = record.get("port")
    return port if isinstance(port, int) else None


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(stop_timeout_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(stop_timeout_seconds)


# ------------------------------------------------------------------------- CPU accounting


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far by the server, by PostgreSQL, and by the whole machine."""

    at: float
    server_seconds: float
    postgres_seconds: float
    machine_busy_seconds: float
    machine_steal_seconds: float


def sample_cpu(server_pid: int) -> CpuSample:
    busy, steal = _machine_seconds()
    return CpuSample(
        at=time.monotonic(),
        server_seconds=_process_cpu_seconds(server_pid),
        postgres_seconds=_postgres_cpu_seconds(),
        machine_busy_seconds=busy,
        machine_steal_seconds=steal,
    )


def cpu_percent(before: CpuSample, after: CpuSample, generator_seconds: float) -> dict[str, float]:
    """CPU use between two samples, in percent of one core (200% is both cores of two)."""
    wall = max(after.at - before.at, 1e-9)

    def share(seconds: float) -> float:
        return round(100.0 * seconds / wall, 1)

    server = after.server_seconds - before.server_seconds
    postgres = after.postgres_seconds - before.postgres_seconds
    busy = after.machine_busy_seconds - before.machine_busy_seconds
    return {
        "server": share(server),
        "postgres": share(postgres),
        "generators": share(generator_seconds),
        "machine_busy": share(busy),
        # Everything else: other people's work on a shared machine, and this harness.
        "other": share(max(0.0, busy - server - postgres - generator_seconds)),
        "machine_steal": share(after.machine_steal_seconds - before.machine_steal_seconds),
    }


def _process_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _clock_ticks_per_second


def _postgres_cpu_seconds() -> float:
    """All processes named postgres (backends come and go, so this is approximate)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if "(postgres)" in stat:
            total += _process_cpu_seconds(int(entry.name))
    return total


def _machine_seconds() -> tuple[float, float]:
    """(busy, steal) seconds of all cores since boot, from the first line of /proc/stat."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy / _clock_ticks_per_second, steal / _clock_ticks_per_second
