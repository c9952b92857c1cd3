"""What one batch writes to the index tables, in the same transaction as its events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ledger.domain.batch import Batch
from ledger.domain.history import StoredEvent
from ledger.domain.views import BankView
from ledger.storage import rows
from ledger.storage.sql import Dialect

Params = Sequence[Any]


class WriteCursor(Protocol):
    def executemany(self, statement: Any, params_seq: Any) -> Any: ...


def _upsert(dialect: Dialect, table: str, columns: Sequence[str], keys: Sequence[str]) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
    return dialect.sql(
        f"INSERT INTO {dialect.table(table)} ({', '.join(columns)})"
        f" VALUES ({', '.join('?' for _ in columns)})"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    )


def _insert(dialect: Dialect, table: str, columns: Sequence[str]) -> str:
    return dialect.sql(
        f"INSERT INTO {dialect.table(table)} ({', '.join(columns)})"
        f" VALUES ({', '.join('?' for _ in columns)})"
    )


@dataclass(slots=True)
class IndexWrite:
    """Rows for each index table; upserts where a row changes, inserts where it is new."""

    bank: list[tuple[Any, ...]] = field(default_factory=list)
    accounts: list[tuple[Any, ...]] = field(default_factory=list)
    transfers: list[tuple[Any, ...]] = field(default_factory=list)
    account_transfers: list[tuple[Any, ...]] = field(default_factory=list)
    requests: list[tuple[Any, ...]] = field(default_factory=list)
    chain: list[tuple[Any, ...]] = field(default_factory=list)

    def write(self, cursor: WriteCursor, dialect: Dialect) -> None:
        statements = (
            (_upsert(dialect, "ledger_banks", rows.BANK_COLUMNS, ("bank_uuid",)), self.bank),
            (
                _upsert(
                    dialect, "ledger_accounts", rows.ACCOUNT_COLUMNS, ("bank_uuid", "account_id")
                ),
                self.accounts,
            ),
            (
                _upsert(
                    dialect, "ledger_transfers", rows.TRANSFER_COLUMNS, ("bank_uuid", "transfer_id")
                ),
                self.transfers,
            ),
            (
                _insert(
                    dialect,
                    "ledger_account_transfers",
                    ("bank_uuid", "account_id", "number", "transfer_id"),
                ),
                self.account_transfers,
            ),
            (_insert(dialect, "ledger_requests", rows.REQUEST_COLUMNS), self.requests),
            (
                _insert(dialect, "ledger_chain", ("bank_uuid", "version", "chain_hash")),
                self.chain,
            ),
        )
        for statement, params in statements:
            if params:
                cursor.executemany(statement, params)


def index_write(batch: Batch, stored: Sequence[StoredEvent]) -> IndexWrite:
    """The index rows of a batch about to be committed with its stored events."""
    assert stored, "a batch with nothing to store writes no rows"
    assert batch.records is not None
    assert batch.created_at is not None
    bank_uuid = batch.bank_uuid
    view = BankView(
        bank_id=batch.bank_id,
        name=batch.name,
        created_at=batch.created_at,
        position=batch.version,
        chain_head=stored[-1].chain_hash,
        account_count=batch.account_count,
        transfer_count=batch.transfer_count,
    )
    write = IndexWrite()
    write.bank.append(rows.bank_row(bank_uuid, view, batch.timestamp))
    write.accounts = [rows.account_row(bank_uuid, a) for a in batch.changed_accounts()]
    records = batch.records
    write.transfers = [rows.transfer_row(bank_uuid, r) for r in records.changed_transfers.values()]
    for transfer_id in records.created_transfers:
        record = records.changed_transfers[transfer_id]
        for account_id in (record.payer_account_id, record.payee_account_id):
            write.account_transfers.append((bank_uuid, account_id, record.number, transfer_id))
    write.requests = [rows.request_row(bank_uuid, r) for r in records.new_requests.values()]
    write.chain = [(bank_uuid, e.version, e.chain_hash) for e in stored]
    return write
