"""The ledger's recorders pass the eventsourcing library's own recorder test cases.

`LedgerSQLiteRecorder` and `LedgerPostgresRecorder` extend the library's application
recorders to write the index rows in the events' transaction; whatever they change, the
library's contract (inserts, selects, notification ids without gaps or interleaving, under
concurrent writers) must still hold. Beside that: an index row that cannot be written takes
the events down with it, and the other way round.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import postgres_url, require_postgres
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from eventsourcing.tests.persistence import (
    ApplicationRecorderTestCase,
    NonInterleavingNotificationIDsBaseCase,
)

from ledger.storage.index import IndexWrite
from ledger.storage.recorders import LedgerPostgresRecorder, LedgerSQLiteRecorder


def _join_stray_threads(before: set[threading.Thread]) -> None:
    """The library's concurrency test leaves its reader threads to stop on their own; closing
    the datastore under a reader still in a select crashes SQLite, so wait for them."""
    for thread in set(threading.enumerate()) - before:
        if not thread.daemon:  # the readers; a datastore's own helpers are daemons
            thread.join(timeout=30)


class _SQLite:
    datastore: SQLiteDatastore

    def setUp(self) -> None:
        self._threads = set(threading.enumerate())
        self._path = Path(os.environ.get("TMPDIR", "/tmp")) / f"rec-{uuid.uuid4().hex}.sqlite3"
        self.datastore = SQLiteDatastore(db_name=str(self._path))

    def tearDown(self) -> None:
        _join_stray_threads(self._threads)
        self.datastore.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self._path}{suffix}").unlink(missing_ok=True)

    def create_recorder(self) -> LedgerSQLiteRecorder:
        recorder = LedgerSQLiteRecorder(self.datastore)
        recorder.create_table()
        return recorder


class _Postgres:
    datastore: PostgresDatastore

    def setUp(self) -> None:
        require_postgres()
        self._threads = set(threading.enumerate())
        self._schema = f"rec_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres_url(), autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA "{self._schema}"')
        info = psycopg.conninfo.conninfo_to_dict(postgres_url())
        self.datastore = PostgresDatastore(
            dbname=str(info.get("dbname", "test")),
            host=str(info.get("host", "127.0.0.1")),
            port=str(info.get("port", "5432")),
            user=str(info.get("user", "postgres")),
            password=str(info.get("password", "")),
            schema=self._schema,
            pool_size=12,
        )

    def tearDown(self) -> None:
        _join_stray_threads(self._threads)
        self.datastore.close()
        with psycopg.connect(postgres_url(), autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{self._schema}" CASCADE')

    def create_recorder(self) -> LedgerPostgresRecorder:
        recorder = LedgerPostgresRecorder(self.datastore)
        recorder.create_table()
        return recorder


class TestSQLiteRecorder(_SQLite, ApplicationRecorderTestCase[LedgerSQLiteRecorder]):
    pass


@pytest.mark.postgres
class TestPostgresRecorder(_Postgres, ApplicationRecorderTestCase[LedgerPostgresRecorder]):
    pass


@pytest.mark.postgres
class TestPostgresNotificationIdsDoNotInterleave(_Postgres, NonInterleavingNotificationIDsBaseCase):
    insert_num = 200


def _event(originator_id: uuid.UUID, version: int) -> StoredEvent:
    return StoredEvent(originator_id, version, "TransfersCreated", b'{"x":1}')


def _chain_row(bank: uuid.UUID, version: int) -> tuple[Any, ...]:
    return (str(bank), version, "0" * 64)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_events_and_index_rows_commit_together_or_not_at_all(store: str) -> None:
    kind = _SQLite() if store == "sqlite" else _Postgres()
    kind.setUp()
    try:
        recorder = kind.create_recorder()
        bank = uuid.uuid4()
        # Events and their index rows go in together.
        recorder.insert_events([_event(bank, 1)], index=IndexWrite(chain=[_chain_row(bank, 1)]))
        # An index row that clashes (version 1's chain row again) takes its events down too.
        with pytest.raises(IntegrityError):
            recorder.insert_events([_event(bank, 2)], index=IndexWrite(chain=[_chain_row(bank, 1)]))
        assert [e.originator_version for e in recorder.select_events(bank)] == [1]
        # And an event that clashes takes its index rows down: version 2's chain row is not
        # there, so it can be written by the retry.
        with pytest.raises(IntegrityError):
            recorder.insert_events([_event(bank, 1)], index=IndexWrite(chain=[_chain_row(bank, 2)]))
        recorder.insert_events([_event(bank, 2)], index=IndexWrite(chain=[_chain_row(bank, 2)]))
        assert [e.originator_version for e in recorder.select_events(bank)] == [1, 2]
    finally:
        kind.tearDown()
