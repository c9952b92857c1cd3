"""A bank's history as an auditor receives it, and as someone with database access sees it.

`stored_rows()` reads a real Ledger's history back as (stored bytes, chain hash) rows,
oldest first, the way the writer reads it (events and hashes in bounded pages), so a test
can hand them to the verifier, tamper with them, or compare them with the documented
format. `Tables` runs SQL straight on a durable store's tables (SQLite file or PostgreSQL
schema), to tamper with the real rows or to run the queries docs/history-format.md shows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from ledger.application.ledger import Ledger
from ledger.config import eventsourcing_env
from ledger.domain.bank import bank_uuid
from ledger.storage.store import events_per_read_max


def stored_rows(
    ledger: Ledger, bank_id: str, *, rows_per_page: int = events_per_read_max
) -> list[tuple[bytes, str]]:
    """Every stored event of the bank with the chain hash kept for it in `ledger_chain`.

    A row whose hash is missing from `ledger_chain` comes back with "" (which no chain
    follows), so a deleted hash is reported by the verifier instead of hiding the row.
    """
    assert rows_per_page > 0
    history_id = str(bank_uuid(bank_id))
    rows: list[tuple[bytes, str]] = []
    version = 0
    while True:
        page = ledger.store.events_after(history_id, version, rows_per_page)
        if not page:
            return rows
        hashes = ledger.store.chain_hashes(history_id, version, page[-1][0])
        rows += [(stored, hashes.get(event_version, "")) for event_version, stored in page]
        version = page[-1][0]
        if len(page) < rows_per_page:
            return rows


class Tables:
    """SQL straight on a durable store's tables, as someone with database access would."""

    def __init__(self, database_url: str) -> None:
        self._env = eventsourcing_env(database_url)
        self.postgres = self._env["PERSISTENCE_MODULE"] == "eventsourcing.postgres"
        # The library names the events table by its recorder: see docs/history-format.md.
        self.events = "ledger_events"

    def originator_id(self, bank_id: str) -> object:
        """How the events table spells the bank's history id (uuid, or 32 hex digits)."""
        return bank_uuid(bank_id) if self.postgres else bank_uuid(bank_id).hex

    def execute(self, statement: str, *params: object) -> tuple[int, list[tuple[Any, ...]]]:
        """Run one statement (with ? placeholders) and commit; (rows changed, rows returned)."""
        with self.cursor() as cursor:
            cursor.execute(statement.replace("?", "%s") if self.postgres else statement, params)
            found = list(cursor.fetchall()) if cursor.description else []
            return cursor.rowcount, found

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        """A DB-API cursor on the store's database (its own placeholders), committed after."""
        if self.postgres:
            env = self._env
            with psycopg.connect(
                host=env["POSTGRES_HOST"],
                port=int(env["POSTGRES_PORT"]),
                dbname=env["POSTGRES_DBNAME"],
                user=env["POSTGRES_USER"],
                autocommit=True,
                options=f"-c search_path={env['POSTGRES_SCHEMA']}",
            ) as postgres:
                yield postgres.cursor()
            return
        connection = sqlite3.connect(self._env["SQLITE_DBNAME"])
        try:
            with connection:
                yield connection.cursor()
        finally:
            connection.close()

    # ----------------------------------------------------------------- one row at a time

    def stored(self, bank_id: str, version: int) -> bytes:
        _, found = self.execute(
            f"SELECT state FROM {self.events} WHERE originator_id = ? AND originator_version = ?",
            self.originator_id(bank_id),
            version,
        )
        return bytes(found[0][0])

    def set_stored(self, bank_id: str, version: int, stored: bytes) -> None:
        changed, _ = self.execute(
            f"UPDATE {self.events} SET state = ?"
            " WHERE originator_id = ? AND originator_version = ?",
            stored,
            self.originator_id(bank_id),
            version,
        )
        assert changed == 1

    def delete_event(self, bank_id: str, version: int) -> None:
        changed, _ = self.execute(
            f"DELETE FROM {self.events} WHERE originator_id = ? AND originator_version = ?",
            self.originator_id(bank_id),
            version,
        )
        assert changed == 1

    def set_chain_hash(self, bank_id: str, version: int, chain_hash: str) -> None:
        changed, _ = self.execute(
            "UPDATE ledger_chain SET chain_hash = ? WHERE bank_uuid = ? AND version = ?",
            chain_hash,
            str(bank_uuid(bank_id)),
            version,
        )
        assert changed == 1

    def set_chain_head(self, bank_id: str, chain_head: str) -> None:
        changed, _ = self.execute(
            "UPDATE ledger_banks SET chain_head = ? WHERE bank_uuid = ?",
            chain_head,
            str(bank_uuid(bank_id)),
        )
        assert changed == 1
