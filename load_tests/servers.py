"""Servers under test as subprocesses, a fresh PostgreSQL schema for each, and CPU from /proc.

Servers can run from a snapshot of the code taken when the run starts (`snapshot_code`),
so that edits made meanwhile do not change the code under test halfway through a run.
A server listens on 127.0.0.1 port 0 and its port is read from its first log line
(`server_started` for the ledger, `echo_server_started` for the echo server). Its output
goes to a log file, never to a pipe that could fill up and stall it. It is stopped with
SIGTERM, then killed if it has not exited within `stop_timeout_seconds`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

start_timeout_seconds = 30.0
# The packages a server imports from this repository.
snapshot_packages = ("ledger", "projections", "timebank", "load_tests")
# The ledger's own shutdown grace is 10 s by default; allow for it, then kill.
stop_timeout_seconds = 20.0
postgres_connect_timeout_seconds = 5
_poll_seconds = 0.05
_clock_ticks_per_second = os.sysconf("SC_CLK_TCK")


@contextmanager
def postgres_schema(database_url: str) -> Iterator[str]:
    """A new empty schema; yields the ledger URL that uses it; drops it (cascade) after."""
    name = f"load_{datetime.now(UTC):%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"
    create_schema(database_url, name)
    try:
        yield schema_url(database_url, name)
    finally:
        drop_schema(database_url, name)


def schema_url(database_url: str, name: str) -> str:
    """The ledger URL that uses schema `name` of the database."""
    separator = "&" if "?" in database_url else "?"
    return f"{database_url}{separator}schema={name}"


def create_schema(database_url: str, name: str, *, exist_ok: bool = False) -> None:
    statement = "CREATE SCHEMA IF NOT EXISTS {}" if exist_ok else "CREATE SCHEMA {}"
    with psycopg.connect(
        database_url, autocommit=True, connect_timeout=postgres_connect_timeout_seconds
    ) as connection:
        connection.execute(sql.SQL(statement).format(sql.Identifier(name)))


def drop_schema(database_url: str, name: str) -> None:
    """Drops the schema and everything in it, if it exists."""
    with psycopg.connect(
        database_url, autocommit=True, connect_timeout=postgres_connect_timeout_seconds
    ) as connection:
        connection.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


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


def snapshot_code(repository: Path, into: Path) -> str:
    """Copies the packages a server imports, as they are now; returns a digest of the copy.

    Others edit the ledger while a run goes on; servers started from the snapshot all run
    the code as it was when the run began.
    """
    digest = hashlib.sha256()
    for package in snapshot_packages:
        shutil.copytree(
            repository / package,
            into / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            dirs_exist_ok=True,
        )
        for path in sorted((into / package).rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(into)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def commit_code(repository: Path, commit: str, into: Path) -> str:
    """The packages a server imports as they are in `commit` (`git archive`, read-only), with
    the working tree's load_tests/ beside them; returns the full commit id.

    For figures of one commit (before and after a change) while the working tree moves on.
    """
    full = subprocess.run(
        ["git", "-C", str(repository), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    server_packages = [package for package in snapshot_packages if package != "load_tests"]
    archive = subprocess.run(
        ["git", "-C", str(repository), "archive", "--format=tar", full, *server_packages],
        capture_output=True,
        check=True,
    )
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    shutil.copytree(
        repository / "load_tests",
        into / "load_tests",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        dirs_exist_ok=True,
    )
    return full


def ledger_command() -> list[str]:
    """`timebank-ledger serve` from this interpreter's environment, on any free port."""
    script = Path(sys.executable).parent / "timebank-ledger"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "ledger.cli"]
    return [*base, "serve", "--address", "127.0.0.1:0"]


def echo_command() -> list[str]:
    return [sys.executable, "-m", "load_tests.echo_server", "--address", "127.0.0.1:0"]


@contextmanager
def running(
    command: list[str], env: Mapping[str, str], log_path: Path, code: Path | None = None
) -> Iterator[RunningServer]:
    """Starts the server, waits for its port, yields it, and stops it.

    With `code` (a snapshot from `snapshot_code`), the server imports its packages from there.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    code_env = {} if code is None else {"PYTHONPATH": str(code)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **code_env, **env},
            # `python -m` puts the working directory first on sys.path: make it the snapshot.
            cwd=code,
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
    if not isinstance(record, dict) or record.get("event") not in _started_events:
        return None
    port = record.get("port")
    return port if isinstance(port, int) else None


def log_events(log_path: Path) -> dict[str, int]:
    """How often each `level event` appeared in a server's JSON log (start and stop aside)."""
    counts: Counter[str] = Counter()
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            counts["unparsed line"] += 1
            continue
        if isinstance(record, dict):
            event = str(record.get("event", "?"))
            if event not in _lifecycle_events:
                counts[f"{record.get('level', '?')} {event}"] += 1
    return dict(counts)


_started_events = frozenset(("server_started", "echo_server_started"))
_lifecycle_events = _started_events | {"shutdown_requested", "server_stopped"}


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
    # By process id: the server's child processes (the projection process `serve` starts).
    children_seconds: dict[int, float]
    # By process id: the PostgreSQL backends serving the server, and every postgres process
    # (others' included). Backends come and go between samples.
    backend_seconds: dict[int, float]
    postgres_seconds: dict[int, float]
    machine_busy_seconds: float
    machine_steal_seconds: float


def sample_cpu(server_pid: int, backend_pids: frozenset[int] = frozenset()) -> CpuSample:
    """Now; `backend_pids` are the PostgreSQL backends serving the server (`server_backends`)."""
    busy, steal = _machine_seconds()
    return CpuSample(
        at=time.monotonic(),
        server_seconds=_process_cpu_seconds(server_pid),
        children_seconds={pid: _process_cpu_seconds(pid) for pid in children_of(server_pid)},
        backend_seconds={pid: _process_cpu_seconds(pid) for pid in backend_pids},
        postgres_seconds=_postgres_cpu_seconds(),
        machine_busy_seconds=busy,
        machine_steal_seconds=steal,
    )


def server_backends(server_pid: int, database_url: str) -> frozenset[int]:
    """Process ids of the PostgreSQL backends whose clients are the server's connections.

    Other people's work on a shared database server is not the server's cost: the server's
    TCP connections to PostgreSQL (and its child processes', the projections') are found
    from their sockets, then matched by client port in pg_stat_activity.
    """
    postgres_port = urlsplit(database_url).port or 5432
    ports = set()
    for pid in (server_pid, *children_of(server_pid)):
        ports |= _client_ports(pid, postgres_port)
    if not ports:
        return frozenset()
    with psycopg.connect(
        database_url, autocommit=True, connect_timeout=postgres_connect_timeout_seconds
    ) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)", (sorted(ports),)
        ).fetchall()
    return frozenset(int(row[0]) for row in rows)


def _client_ports(pid: int, remote_port: int) -> set[int]:
    """Local ports of the process's TCP connections to `remote_port` (from /proc)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    except OSError:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes and int(remote.rpartition(":")[2], 16) == remote_port:
                ports.add(int(local.rpartition(":")[2], 16))
    return ports


def cpu_percent(before: CpuSample, after: CpuSample, generator_seconds: float) -> dict[str, float]:
    """CPU use between two samples, in percent of one core (200% is both cores of two)."""
    wall = max(after.at - before.at, 1e-9)

    def share(seconds: float) -> float:
        return round(100.0 * seconds / wall, 1)

    server = after.server_seconds - before.server_seconds
    children = _delta(before.children_seconds, after.children_seconds)
    backends = _delta(before.backend_seconds, after.backend_seconds)
    busy = after.machine_busy_seconds - before.machine_busy_seconds
    return {
        "server": share(server),
        # The projection process `serve` supervises (its own CPU; its backends are in
        # "postgres"): part of the ledger's cost, though not of its request path.
        "projections": share(children),
        "postgres": share(backends),
        "postgres_all": share(_delta(before.postgres_seconds, after.postgres_seconds)),
        "generators": share(generator_seconds),
        "machine_busy": share(busy),
        # Everything else: other people's work on a shared machine, PostgreSQL's background
        # processes (WAL writer...), and this harness.
        "other": share(max(0.0, busy - server - children - backends - generator_seconds)),
        "machine_steal": share(after.machine_steal_seconds - before.machine_steal_seconds),
    }


def _delta(before: dict[int, float], after: dict[int, float]) -> float:
    # A process that exited takes its last interval with it; a new one counts from zero.
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _process_cpu_seconds(pid: int) -> float:
    try:
        return _stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return 0.0


def _stat_cpu_seconds(stat: str) -> float:
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _clock_ticks_per_second


def children_of(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (from /proc)."""
    # Field 4 (the parent's id) is the second after the parenthesised command name.
    return [
        child for child, stat in _process_stats() if int(stat.rpartition(")")[2].split()[1]) == pid
    ]


def _postgres_cpu_seconds() -> dict[int, float]:
    """CPU seconds of each process named postgres."""
    return {pid: _stat_cpu_seconds(stat) for pid, stat in _process_stats() if "(postgres)" in stat}


def _process_stats() -> Iterator[tuple[int, str]]:
    """(process id, /proc/PID/stat text) of every process still there when read."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "stat").read_text()
            except OSError:
                continue  # it ended meanwhile


def _machine_seconds() -> tuple[float, float]:
    """(busy, steal) seconds of all cores since boot, from the first line of /proc/stat."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy / _clock_ticks_per_second, steal / _clock_ticks_per_second
