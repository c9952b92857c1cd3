"""The eventsourcing library's recorders, extended to write the index rows with the events.

`insert_events(stored_events, index=IndexWrite)` commits the events and the index rows in
one transaction, through the hook the library's process recorders use for tracking rows
(`_insert_events`), so the table lock, notification ids and gap-free ordering of the
library's recorders stay exactly as they are. They pass the library's recorder test cases
(tests/test_recorders.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL

from ledger.storage import schema, sql
from ledger.storage.index import IndexWrite

# The events table, on SQLite as on PostgreSQL (where the library names it after the store).
events_table = "ledger_events"


class LedgerSQLiteRecorder(SQLiteApplicationRecorder):
    """SQLite: the events and the index tables in one database file."""

    dialect = sql.SQLITE

    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"):
        # The library's SQLite factory names the table stored_events whatever the
        # application; the ledger's table has one name on every store.
        super().__init__(datastore, events_table)

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *schema.statements("", "BLOB")]

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        notification_ids = super()._insert_events(c, stored_events, **kwargs)
        index: IndexWrite | None = kwargs.get("index")
        if index is not None:
            index.write(c, self.dialect)
        return notification_ids


class LedgerPostgresRecorder(PostgresApplicationRecorder):
    """PostgreSQL: the index tables live in the events' schema."""

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        self.dialect = sql.postgres(datastore.schema)
        for statement in schema.statements(self.dialect.prefix, "BYTEA"):
            # Our own fixed DDL, no input in it; the library keeps Composed statements.
            self.sql_create_statements.append(SQL(statement).format())

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        super()._insert_events(curs, stored_events, **kwargs)
        index: IndexWrite | None = kwargs.get("index")
        if index is not None:
            index.write(curs, self.dialect)
