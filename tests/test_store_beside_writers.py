"""A process beside a server's writers opens the store without taking table locks.

The projection child, replay, verify and export open the store while a server writes. Had
they created its tables again ("IF NOT EXISTS", fillfactor settings), they would queue for
locks behind a writer's lock on the events table; under load PostgreSQL found the deadlock
and killed the projection child. Here a writer's lock is held open, and the store must open
(with a lock timeout, so a store that did wait fails instead of hanging).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from conftest import postgres_url, require_postgres

from ledger.application.ledger import Ledger
from ledger.config import Settings
from ledger.domain.commands import CreateBank
from ledger.storage.store import LedgerStore


@pytest.fixture
def pg_url() -> Iterator[str]:
    require_postgres()
    base = postgres_url()
    schema = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{base}{'&' if '?' in base else '?'}schema={schema}"
    finally:
        with psycopg.connect(base, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_opening_beside_a_writer_holding_the_events_lock_does_not_wait(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(database_url=pg_url)
    ledger = Ledger(settings)
    try:
        ledger.create_bank(CreateBank(bank_id="riverside", name="Riverside"))
        events_table = ledger.store.dialect.table(ledger.store.recorder.events_table_name)  # type: ignore[attr-defined]
        env = settings.eventsourcing_env()
        with psycopg.connect(postgres_url()) as writer:
            # What a writer's insert holds until it commits.
            writer.execute(f"LOCK TABLE {events_table} IN EXCLUSIVE MODE")
            # Every statement of the stores opened from here gives up after 2 s of waiting
            # for a lock (libpq reads PGOPTIONS for each new connection).
            monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=2000")

            beside = LedgerStore.beside_writers(env)
            try:
                assert beside.recorder.max_notification_id() == 1
            finally:
                beside.close()
            # A store that creates its tables again waits for that lock (and times out).
            with pytest.raises(Exception, match="lock"):
                LedgerStore(env).close()
            writer.rollback()
    finally:
        ledger.close()


def test_on_a_fresh_database_it_creates_the_tables(pg_url: str) -> None:
    env = Settings(database_url=pg_url).eventsourcing_env()
    store = LedgerStore.beside_writers(env)
    try:
        assert store.recorder.max_notification_id() is None
    finally:
        store.close()
