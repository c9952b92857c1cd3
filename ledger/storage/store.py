"""The ledger's store: every bank's event history (the eventsourcing library's recorder) and
the index tables beside it, in one SQLite file or one PostgreSQL schema.

Writes: `append()` commits a batch's stored events and index rows in one transaction.
Reads: the history (events after a position, chain hashes, the latest snapshot) and the
index tables (banks, accounts, transfers, request ids), each one indexed look-up or one
index range scan, from committed rows only: any process serving the store reads the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, InfrastructureFactory
from eventsourcing.persistence import StoredEvent as LibraryStoredEvent
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from eventsourcing.utils import Environment
from psycopg.rows import tuple_row

from ledger.domain import chain
from ledger.domain.history import StoredEvent
from ledger.domain.records import RequestRecord, TransferRecord
from ledger.domain.state import MemberTokenKey
from ledger.domain.views import AccountView, BankView, TransferView
from ledger.storage import rows
from ledger.storage.index import IndexWrite
from ledger.storage.sql import Dialect

# Keys one "IN (...)" look-up names at most on SQLite (PostgreSQL takes one array).
keys_per_lookup_max = 500
# Stored events read from the log per query while loading or catching up a bank.
events_per_read_max = 1_000

_RECORDERS = {
    "eventsourcing.sqlite": "ledger.storage.recorders:LedgerSQLiteRecorder",
    "eventsourcing.postgres": "ledger.storage.recorders:LedgerPostgresRecorder",
}


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    chain_head: str
    state: bytes


def memory_env() -> dict[str, str]:
    """A private in-memory SQLite database (for tests): gone when the store closes."""
    name = f"file:timebank-ledger-{uuid.uuid4().hex}?mode=memory&cache=shared"
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": name}


class LedgerStore:
    """Holds every bank's history and index tables; safe to share between threads."""

    def __init__(self, env: Mapping[str, str]) -> None:
        settings = dict(env)
        module = settings["PERSISTENCE_MODULE"]
        assert module in _RECORDERS, f"no ledger recorder for {module}"
        settings["APPLICATION_RECORDER_TOPIC"] = _RECORDERS[module]
        self._factory = InfrastructureFactory.construct(Environment("ledger", settings))
        self.recorder: ApplicationRecorder = self._factory.application_recorder()
        self.dialect: Dialect = getattr(self.recorder, "dialect")  # noqa: B009
        self._datastore: SQLiteDatastore | PostgresDatastore = getattr(  # noqa: B009
            self.recorder, "datastore"
        )

    @classmethod
    def beside_writers(cls, env: Mapping[str, str]) -> LedgerStore:
        """The store for a process that runs beside a server's writers (the projections,
        a replay, verify, export): its tables are used as they are, not created, unless they
        are not there at all. Creating them again ("IF NOT EXISTS", the fillfactor settings)
        takes table locks that, against a writer's lock on the events table, PostgreSQL
        resolved by killing one of the two (a projection child died that way under load)."""
        store = cls({**env, "CREATE_TABLE": "false"})
        try:
            store.recorder.max_notification_id()
        except Exception:  # no tables yet (a fresh database): this process makes them
            store.close()
            return cls(env)
        return store

    def close(self) -> None:
        self._factory.close()

    # ----------------------------------------------------------------- writes

    def append(self, bank_uuid: str, stored: Sequence[StoredEvent], index: IndexWrite) -> None:
        """Commit a batch: its events and its index rows, all or nothing.

        Raises the library's IntegrityError if another writer committed one of these
        versions (or ids) first.
        """
        originator_id = uuid.UUID(bank_uuid)
        library_events = [
            LibraryStoredEvent(
                originator_id=originator_id,
                originator_version=event.version,
                topic=event.type,
                state=event.stored,
            )
            for event in stored
        ]
        self.recorder.insert_events(library_events, index=index)

    def save_snapshot(
        self, bank_uuid: str, version: int, chain_head: str, state: bytes, taken_at: datetime
    ) -> None:
        """Keep a snapshot of a bank's decision state, unless a later one is kept already."""
        statement = self.dialect.sql(
            f"INSERT INTO {self.dialect.table('ledger_snapshots')}"
            " (bank_uuid, version, chain_head, state, taken_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (bank_uuid) DO UPDATE SET version = excluded.version,"
            " chain_head = excluded.chain_head, state = excluded.state,"
            " taken_at = excluded.taken_at"
            # At the same version too: a snapshot this code could not read is replaced.
            f" WHERE excluded.version >= {self.dialect.table('ledger_snapshots')}.version"
        )
        params = (bank_uuid, version, chain_head, state, chain.timestamp_text(taken_at))
        with self._datastore.transaction(commit=True) as cursor:
            cursor.execute(statement, params)

    # ----------------------------------------------------------------- the history

    def events_after(
        self, bank_uuid: str, version: int, limit: int = events_per_read_max
    ) -> list[tuple[int, bytes]]:
        """(version, stored bytes) of up to `limit` events after `version`, in order."""
        found = self.recorder.select_events(uuid.UUID(bank_uuid), gt=version, limit=limit)
        return [(event.originator_version, bytes(event.state)) for event in found]

    def event_sizes_after(self, bank_uuid: str, version: int, limit: int) -> list[int]:
        """The stored sizes in bytes of up to `limit` events after `version`, in order: read
        from the rows' headers by both databases, without the events' bytes."""
        history_id = uuid.UUID(bank_uuid)
        key: object = history_id if self.dialect.postgres else history_id.hex
        events = self.dialect.table(self.recorder.events_table_name)  # type: ignore[attr-defined]
        found = self._query(
            f"SELECT length(state) AS size_bytes FROM {events}"
            " WHERE originator_id = ? AND originator_version > ?"
            " ORDER BY originator_version LIMIT ?",
            (key, version, limit),
        )
        return [int(row["size_bytes"]) for row in found]

    def position(self, bank_uuid: str) -> int:
        """The version of the bank's latest committed event (0 if it has none)."""
        found = self._query(
            f"SELECT position FROM {self.dialect.table('ledger_banks')} WHERE bank_uuid = ?",
            (bank_uuid,),
        )
        return int(found[0]["position"]) if found else 0

    def chain_hashes(self, bank_uuid: str, after: int, up_to: int) -> dict[int, str]:
        found = self._query(
            f"SELECT version, chain_hash FROM {self.dialect.table('ledger_chain')}"
            " WHERE bank_uuid = ? AND version > ? AND version <= ?",
            (bank_uuid, after, up_to),
        )
        return {row["version"]: row["chain_hash"] for row in found}

    def snapshot(self, bank_uuid: str) -> Snapshot | None:
        found = self._query(
            f"SELECT version, chain_head, state FROM {self.dialect.table('ledger_snapshots')}"
            " WHERE bank_uuid = ?",
            (bank_uuid,),
        )
        if not found:
            return None
        row = found[0]
        return Snapshot(row["version"], row["chain_head"], bytes(row["state"]))

    # ----------------------------------------------------------------- banks and accounts

    def bank(self, bank_uuid: str) -> BankView | None:
        found = self._query(
            f"SELECT * FROM {self.dialect.table('ledger_banks')} WHERE bank_uuid = ?",
            (bank_uuid,),
        )
        return rows.bank_view_of(found[0]) if found else None

    def account(self, bank_uuid: str, account_id: str) -> AccountView | None:
        found = self._query(
            f"SELECT * FROM {self.dialect.table('ledger_accounts')}"
            " WHERE bank_uuid = ? AND account_id = ?",
            (bank_uuid, account_id),
        )
        return rows.account_view_of(found[0]) if found else None

    def accounts_page(
        self, bank_uuid: str, after_number: int, limit: int
    ) -> list[tuple[int, AccountView]]:
        """Accounts in the order they were opened, after the `after_number`th."""
        found = self._query(
            f"SELECT * FROM {self.dialect.table('ledger_accounts')}"
            " WHERE bank_uuid = ? AND number > ? ORDER BY number LIMIT ?",
            (bank_uuid, after_number, limit),
        )
        return [(row["number"], rows.account_view_of(row)) for row in found]

    # ----------------------------------------------------------------- transfers and requests

    def transfer(self, bank_uuid: str, transfer_id: str) -> TransferView | None:
        found = self.transfers(bank_uuid, [transfer_id])
        record = found.get(transfer_id)
        return record.view() if record else None

    def transfers(self, bank_uuid: str, transfer_ids: Iterable[str]) -> dict[str, TransferRecord]:
        found = self._select_in(
            f"SELECT * FROM {self.dialect.table('ledger_transfers')} WHERE bank_uuid = ? AND",
            bank_uuid,
            "transfer_id",
            list(transfer_ids),
        )
        return {row["transfer_id"]: rows.transfer_of(row) for row in found}

    def requests(self, bank_uuid: str, request_ids: Iterable[str]) -> dict[str, RequestRecord]:
        found = self._select_in(
            f"SELECT * FROM {self.dialect.table('ledger_requests')} WHERE bank_uuid = ? AND",
            bank_uuid,
            "request_id",
            list(request_ids),
        )
        return {row["request_id"]: rows.request_of(row) for row in found}

    def account_transfers_page(
        self, bank_uuid: str, account_id: str, before_number: int | None, limit: int
    ) -> list[tuple[int, TransferView]]:
        """An account's transfers, newest first, recorded before the `before_number`th."""
        before = before_number if before_number is not None else 2**62
        found = self._query(
            f"SELECT t.* FROM {self.dialect.table('ledger_account_transfers')} a"
            f" JOIN {self.dialect.table('ledger_transfers')} t"
            " ON t.bank_uuid = a.bank_uuid AND t.transfer_id = a.transfer_id"
            " WHERE a.bank_uuid = ? AND a.account_id = ? AND a.number < ?"
            " ORDER BY a.number DESC LIMIT ?",
            (bank_uuid, account_id, before, limit),
        )
        return [(row["number"], rows.transfer_of(row).view()) for row in found]

    # ----------------------------------------------------------------- access

    def api_key(self, key_id: str) -> rows.StoredApiKey | None:
        found = self._query(
            f"SELECT * FROM {self.dialect.table('ledger_api_keys')} WHERE key_id = ?", (key_id,)
        )
        return rows.api_key_of(found[0]) if found else None

    def api_keys_page(
        self, bank_uuid: str, after_position: int, limit: int
    ) -> list[rows.StoredApiKey]:
        """A bank's (or the deployment's) keys in the order they were issued."""
        found = self._query(
            f"SELECT * FROM {self.dialect.table('ledger_api_keys')}"
            " WHERE bank_uuid = ? AND position > ? ORDER BY position LIMIT ?",
            (bank_uuid, after_position, limit),
        )
        return [rows.api_key_of(row) for row in found]

    def member_token_keys(self, bank_uuid: str) -> list[MemberTokenKey]:
        found = self._query(
            f"SELECT * FROM {self.dialect.table('ledger_member_token_keys')}"
            " WHERE bank_uuid = ? ORDER BY position",
            (bank_uuid,),
        )
        return [rows.member_token_key_of(row) for row in found]

    def banks_created_by(self, actor: str) -> int:
        found = self._query(
            f"SELECT COUNT(*) AS banks FROM {self.dialect.table('ledger_banks')}"
            " WHERE created_by = ?",
            (actor,),
        )
        return int(found[0]["banks"])

    def head(self, bank_uuid: str) -> tuple[int, str]:
        """(version, chain hash) of a history's latest event, from the chain table."""
        found = self._query(
            f"SELECT version, chain_hash FROM {self.dialect.table('ledger_chain')}"
            " WHERE bank_uuid = ? ORDER BY version DESC LIMIT 1",
            (bank_uuid,),
        )
        return (int(found[0]["version"]), str(found[0]["chain_hash"])) if found else (0, "")

    def due_banks(self, now: datetime, limit: int) -> list[str]:
        """Ids of banks holding a pending transfer whose deadline is at or before `now`."""
        found = self._query(
            f"SELECT DISTINCT b.bank_id FROM {self.dialect.table('ledger_transfers')} t"
            f" JOIN {self.dialect.table('ledger_banks')} b ON b.bank_uuid = t.bank_uuid"
            " WHERE t.status = 'pending' AND t.deadline IS NOT NULL AND t.deadline <= ?"
            " LIMIT ?",
            (chain.timestamp_text(now), limit),
        )
        return [row["bank_id"] for row in found]

    # ----------------------------------------------------------------- lists (issue 12)

    def query(self, statement: str, params: Sequence[Any]) -> list[rows.Row]:
        """Committed rows of one statement written with `?` placeholders (lists.py's reads)."""
        return self._query(statement, params)

    # ----------------------------------------------------------------- audit (issue 10)

    def last_version(self, bank_uuid: str) -> int:
        """The version of the bank's last stored event, read from the events themselves
        (not from ledger_banks): what a stream of the history runs to."""
        found = self.recorder.select_events(uuid.UUID(bank_uuid), desc=True, limit=1)
        return found[0].originator_version if found else 0

    def history_page(
        self, bank_uuid: str, after: int, up_to: int | None, limit: int
    ) -> list[tuple[int, str, bytes, str]]:
        """(version, type, stored bytes, chain hash kept in ledger_chain or "") of up to
        `limit` events after `after` (and at most `up_to`), in version order, as stored: a
        gap left by a deleted row stays a gap. One indexed query, rows as tuples."""
        history_id = uuid.UUID(bank_uuid)
        statement = (
            f"SELECT e.originator_version, e.topic, e.state, COALESCE(c.chain_hash, '')"
            f" FROM {self.dialect.table(self.recorder.events_table_name)} e"  # type: ignore[attr-defined]
            f" LEFT JOIN {self.dialect.table('ledger_chain')} c"
            " ON c.bank_uuid = ? AND c.version = e.originator_version"
            " WHERE e.originator_id = ? AND e.originator_version > ?"
            + (" AND e.originator_version <= ?" if up_to is not None else "")
            + " ORDER BY e.originator_version LIMIT ?"
        )
        key: object = history_id if self.dialect.postgres else history_id.hex
        params = (bank_uuid, key, after, *(() if up_to is None else (up_to,)), limit)
        datastore = self._datastore
        if isinstance(datastore, PostgresDatastore):
            with datastore.get_connection() as connection:
                cursor = connection.cursor(row_factory=tuple_row)
                # Binary results: the stored bytes come as they are, not hex-encoded (which
                # doubles what PostgreSQL writes and this process decodes).
                cursor.execute(self.dialect.sql(statement), params, prepare=True, binary=True)
                return cursor.fetchall()
        with datastore.transaction(commit=False) as sqlite_cursor:
            sqlite_cursor.execute(statement, params)
            return [tuple(row) for row in sqlite_cursor.fetchall()]

    def save_checkpoint(self, checkpoint: StoredCheckpoint, public_key_pem: str) -> None:
        """Keep a signed checkpoint (and its key, the first time it signs); one the bank
        already has at that position stays as it is."""
        checkpoints = self.dialect.table("ledger_checkpoints")
        keys = self.dialect.table("ledger_checkpoint_keys")
        with self._datastore.transaction(commit=True) as cursor:
            cursor.execute(
                self.dialect.sql(
                    f"INSERT INTO {keys} (key_id, public_key_pem, first_used_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (key_id) DO NOTHING"
                ),
                (checkpoint.key_id, public_key_pem, checkpoint.signed_at),
            )
            cursor.execute(
                self.dialect.sql(
                    f"INSERT INTO {checkpoints} (bank_uuid, position, chain_head, signed_at,"
                    " key_id, payload, signature) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (bank_uuid, position) DO NOTHING"
                ),
                (
                    checkpoint.bank_uuid,
                    checkpoint.position,
                    checkpoint.chain_head,
                    checkpoint.signed_at,
                    checkpoint.key_id,
                    checkpoint.payload,
                    checkpoint.signature,
                ),
            )

    def checkpoints_page(
        self, bank_uuid: str, after_position: int, limit: int
    ) -> list[StoredCheckpoint]:
        """The bank's signed checkpoints after a position, in position order."""
        found = self._query(
            f"SELECT * FROM {self.dialect.table('ledger_checkpoints')}"
            " WHERE bank_uuid = ? AND position > ? ORDER BY position LIMIT ?",
            (bank_uuid, after_position, limit),
        )
        return [_checkpoint_of(row) for row in found]

    def checkpoint_at_or_before(self, bank_uuid: str, position: int) -> StoredCheckpoint | None:
        found = self._query(
            f"SELECT * FROM {self.dialect.table('ledger_checkpoints')}"
            " WHERE bank_uuid = ? AND position <= ? ORDER BY position DESC LIMIT 1",
            (bank_uuid, position),
        )
        return _checkpoint_of(found[0]) if found else None

    def checkpoint_keys(self) -> list[tuple[str, str, str]]:
        """(key id, public key PEM, first used at) of every key that signed, oldest first."""
        found = self._query(
            f"SELECT key_id, public_key_pem, first_used_at"
            f" FROM {self.dialect.table('ledger_checkpoint_keys')} ORDER BY first_used_at, key_id",
            (),
        )
        return [(row["key_id"], row["public_key_pem"], row["first_used_at"]) for row in found]

    # ----------------------------------------------------------------- internals

    def _query(self, statement: str, params: Sequence[Any]) -> list[rows.Row]:
        datastore = self._datastore
        if isinstance(datastore, PostgresDatastore):
            with datastore.get_connection() as connection:
                found = connection.execute(
                    self.dialect.sql(statement),
                    params,
                    prepare=True,
                )
                return list(found.fetchall())
        with datastore.transaction(commit=False) as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall())

    def _select_in(
        self, select: str, bank_uuid: str, column: str, keys: list[str]
    ) -> list[rows.Row]:
        if not keys:
            return []
        if self.dialect.postgres:
            return self._query(f"{select} {column} = ANY(?)", (bank_uuid, keys))
        found: list[rows.Row] = []
        for start in range(0, len(keys), keys_per_lookup_max):
            chunk = keys[start : start + keys_per_lookup_max]
            marks = ", ".join("?" for _ in chunk)
            found += self._query(f"{select} {column} IN ({marks})", (bank_uuid, *chunk))
        return found


# ----------------------------------------------------------------- audit (issue 10)


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A row of ledger_checkpoints: a signed statement of a bank's chain head."""

    bank_uuid: str
    position: int
    chain_head: str
    signed_at: str
    key_id: str
    payload: bytes
    signature: bytes


def _checkpoint_of(row: rows.Row) -> StoredCheckpoint:
    return StoredCheckpoint(
        bank_uuid=row["bank_uuid"],
        position=int(row["position"]),
        chain_head=row["chain_head"],
        signed_at=row["signed_at"],
        key_id=row["key_id"],
        payload=bytes(row["payload"]),
        signature=bytes(row["signature"]),
    )
