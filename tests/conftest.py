"""Shared fixtures: the three stores, a controllable clock, and Ledgers built on them.

`store_url` runs a test on the in-memory, SQLite and PostgreSQL stores; `durable_store_url`
only on the two that survive a restart. PostgreSQL tests get a fresh schema each, dropped
afterwards. Without a reachable server they are skipped, unless LEDGER_TEST_REQUIRE_POSTGRES=1
(as in CI), where they fail instead.
"""

from __future__ import annotations

import functools
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from certs import Pki, make_pki

from ledger.application.ledger import Ledger
from ledger.config import Settings

POSTGRES_URL_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRES_CONNECT_TIMEOUT_SECONDS = 3

# Small enough that a stuck writer fails a test quickly, large enough for a slow CI database.
WRITER_TIMEOUT_SECONDS = 10.0
# The idle writer wakes this often to expire pending transfers.
EXPIRY_INTERVAL_SECONDS = 0.01

START = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)

STORE_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]
DURABLE_STORE_KINDS = STORE_KINDS[1:]


class Clock:
    """A UTC clock that stands still until a test sets or advances it; safe across threads.

    It counts how often it was read, so a test can wait until a writer has looked at it.
    """

    def __init__(self, start: datetime = START) -> None:
        assert start.tzinfo is not None, "the ledger works in aware UTC datetimes"
        self._now = start
        self._lock = threading.Lock()
        self.reads = 0

    def __call__(self) -> datetime:
        with self._lock:
            self.reads += 1
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds, **delta)
            return self._now


MakeLedger = Callable[..., Ledger]


def postgres_url() -> str:
    return os.environ.get("LEDGER_TEST_POSTGRES_URL", POSTGRES_URL_DEFAULT)


@functools.cache
def _postgres_unreachable() -> str:
    """Why PostgreSQL cannot be used, or "" if it can (asked once per test run)."""
    try:
        with psycopg.connect(postgres_url(), connect_timeout=POSTGRES_CONNECT_TIMEOUT_SECONDS):
            return ""
    except psycopg.Error as error:
        return f"{type(error).__name__}: {' '.join(str(error).split())}"


def require_postgres() -> None:
    problem = _postgres_unreachable()
    if not problem:
        return
    message = f"PostgreSQL at {postgres_url()} is not reachable ({problem})"
    if os.environ.get("LEDGER_TEST_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{message}; LEDGER_TEST_REQUIRE_POSTGRES=1 requires it", pytrace=False)
    pytest.skip(f"{message}; set LEDGER_TEST_POSTGRES_URL to run the postgres tests")


def close_all(ledgers: list[Ledger]) -> None:
    while ledgers:
        ledgers.pop().close()


@contextmanager
def _database(kind: str, tmp_path: Path, ledgers: list[Ledger]) -> Iterator[str]:
    """A database URL for one test; every Ledger opened on it is closed before it goes away."""
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path.resolve() / 'ledger.sqlite3'}"
    else:
        require_postgres()
        base = postgres_url()
        schema = f"test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(base, autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{base}{'&' if '?' in base else '?'}schema={schema}"
        finally:
            close_all(ledgers)
            with psycopg.connect(base, autocommit=True) as connection:
                connection.execute(f'DROP SCHEMA "{schema}" CASCADE')
    close_all(ledgers)


@pytest.fixture
def open_ledgers() -> Iterator[list[Ledger]]:
    """Every Ledger a test opened; each is closed when the test ends."""
    ledgers: list[Ledger] = []
    yield ledgers
    close_all(ledgers)


@pytest.fixture(params=STORE_KINDS)
def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, open_ledgers: list[Ledger]
) -> Iterator[str]:
    with _database(request.param, tmp_path, open_ledgers) as url:
        yield url


@pytest.fixture(params=DURABLE_STORE_KINDS)
def durable_store_url(
    request: pytest.FixtureRequest, tmp_path: Path, open_ledgers: list[Ledger]
) -> Iterator[str]:
    with _database(request.param, tmp_path, open_ledgers) as url:
        yield url


@pytest.fixture
def clock() -> Clock:
    return Clock()


def ledger_settings(database_url: str, **overrides: Any) -> Settings:
    settings: dict[str, Any] = {
        "database_url": database_url,
        "writer_timeout_seconds": WRITER_TIMEOUT_SECONDS,
        "expiry_interval_seconds": EXPIRY_INTERVAL_SECONDS,
    }
    settings.update(overrides)
    return Settings(**settings)


@pytest.fixture
def make_ledger(open_ledgers: list[Ledger], clock: Clock) -> MakeLedger:
    """Open a Ledger on a URL with test settings (overridable by keyword) and the test clock."""

    def make(database_url: str, **overrides: Any) -> Ledger:
        ledger = Ledger(ledger_settings(database_url, **overrides), clock=clock)
        open_ledgers.append(ledger)
        return ledger

    return make


@pytest.fixture
def ledger(store_url: str, make_ledger: MakeLedger) -> Ledger:
    return make_ledger(store_url)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with a server certificate for 127.0.0.1 and localhost, and client ones."""
    return make_pki(tmp_path_factory.mktemp("pki"))
