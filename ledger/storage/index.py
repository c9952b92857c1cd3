"""What one batch writes to the index tables, in the same transaction as its events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from operator import itemgetter
from typing import Any, Protocol

from ledger.domain.batch import Batch
from ledger.domain.history import StoredEvent
from ledger.domain.views import BankView
from ledger.storage import bulk, pool_rows, rows
from ledger.storage.sql import Dialect

Params = Sequence[Any]


ACCOUNT_TRANSFER_COLUMNS = ("bank_uuid", "account_id", "number", "transfer_id")
CHAIN_COLUMNS = ("bank_uuid", "version", "chain_hash")
ACCOUNT_KEY = ("bank_uuid", "account_id")
TRANSFER_KEY = ("bank_uuid", "transfer_id")
# What a change to an open account can touch: its number, kind and opening never change.
ACCOUNT_CHANGE_COLUMNS = tuple(
    c for c in rows.ACCOUNT_COLUMNS if c not in ("number", "kind", "opened_at")
)
_account_change = itemgetter(*(rows.ACCOUNT_COLUMNS.index(c) for c in ACCOUNT_CHANGE_COLUMNS))


class WriteCursor(Protocol):
    def execute(self, statement: Any, params: Any) -> Any: ...

    def executemany(self, statement: Any, params_seq: Any) -> Any: ...


@cache
def _upsert(dialect: Dialect, table: str, columns: Sequence[str], keys: Sequence[str]) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
    return dialect.sql(
        f"INSERT INTO {dialect.table(table)} ({', '.join(columns)})"
        f" VALUES ({', '.join('?' for _ in columns)})"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    )


@cache
def _insert(dialect: Dialect, table: str, columns: Sequence[str]) -> str:
    return dialect.sql(
        f"INSERT INTO {dialect.table(table)} ({', '.join(columns)})"
        f" VALUES ({', '.join('?' for _ in columns)})"
    )


@dataclass(slots=True)
class IndexWrite:
    """Rows for each index table; upserts where a row changes, inserts where it is new."""

    bank: list[tuple[Any, ...]] = field(default_factory=list)
    # Accounts opened by the batch, and accounts that were open before it and changed.
    new_accounts: list[tuple[Any, ...]] = field(default_factory=list)
    accounts: list[tuple[Any, ...]] = field(default_factory=list)
    # New transfers are inserted, never upserted: an id used before fails the commit.
    new_transfers: list[tuple[Any, ...]] = field(default_factory=list)
    transfers: list[tuple[Any, ...]] = field(default_factory=list)
    account_transfers: list[tuple[Any, ...]] = field(default_factory=list)
    requests: list[tuple[Any, ...]] = field(default_factory=list)
    chain: list[tuple[Any, ...]] = field(default_factory=list)
    api_keys: list[tuple[Any, ...]] = field(default_factory=list)
    api_key_revocations: list[tuple[Any, ...]] = field(default_factory=list)
    # (bank_uuid, the bank's member-token keys now) when they changed: replaced whole.
    member_token_keys: tuple[str, list[tuple[Any, ...]]] | None = None
    # Account metadata changes, in order (issue 12): only what each change sets is written.
    account_metadata: list[tuple[Any, ...]] = field(default_factory=list)
    # Pools whose state changed, and grant requests as they stand (issue 11): upserts.
    pools: list[tuple[Any, ...]] = field(default_factory=list)
    pool_grants: list[tuple[Any, ...]] = field(default_factory=list)

    def write(self, cursor: WriteCursor, dialect: Dialect) -> None:
        bank_key, account_key, transfer_key = ("bank_uuid",), ACCOUNT_KEY, TRANSFER_KEY
        # (table, columns, the keys of an upsert or () for an insert, rows)
        tables: list[tuple[str, tuple[str, ...], tuple[str, ...], list[tuple[Any, ...]]]] = [
            ("ledger_banks", rows.BANK_COLUMNS, bank_key, self.bank),
            ("ledger_accounts", rows.ACCOUNT_COLUMNS, (), self.new_accounts),
            ("ledger_transfers", rows.TRANSFER_COLUMNS, (), self.new_transfers),
            ("ledger_transfers", rows.TRANSFER_COLUMNS, transfer_key, self.transfers),
            ("ledger_account_transfers", ACCOUNT_TRANSFER_COLUMNS, (), self.account_transfers),
            ("ledger_requests", rows.REQUEST_COLUMNS, (), self.requests),
            ("ledger_chain", CHAIN_COLUMNS, (), self.chain),
            ("ledger_api_keys", rows.API_KEY_COLUMNS, (), self.api_keys),
        ]
        if dialect.postgres:
            for table, columns, keys, table_rows in tables:
                if table_rows:
                    statement = bulk.insert_statement(dialect, table, columns, keys)
                    cursor.execute(statement, bulk.rows_json(table_rows))
            if self.accounts:
                changes = [_account_change(row) for row in self.accounts]
                statement = bulk.update_statement(
                    dialect, "ledger_accounts", ACCOUNT_CHANGE_COLUMNS, account_key
                )
                cursor.execute(statement, bulk.rows_json(changes))
        else:
            tables.append(("ledger_accounts", rows.ACCOUNT_COLUMNS, account_key, self.accounts))
            for table, columns, keys, table_rows in tables:
                if not table_rows:
                    continue
                if keys:
                    cursor.executemany(_upsert(dialect, table, columns, keys), table_rows)
                else:
                    cursor.executemany(_insert(dialect, table, columns), table_rows)
        # Rare changes, row by row.
        statements: list[tuple[str, list[tuple[Any, ...]]]] = [
            (
                dialect.sql(
                    f"UPDATE {dialect.table('ledger_api_keys')} SET revoked_at = ?,"
                    " revoked_by = ?, revoke_reason = ? WHERE key_id = ?"
                ),
                self.api_key_revocations,
            ),
        ]
        if self.member_token_keys is not None:
            bank_uuid, token_keys = self.member_token_keys
            table = dialect.table("ledger_member_token_keys")
            cursor.executemany(
                dialect.sql(f"DELETE FROM {table} WHERE bank_uuid = ?"), [(bank_uuid,)]
            )
            insert = _insert(dialect, "ledger_member_token_keys", rows.MEMBER_TOKEN_KEY_COLUMNS)
            statements.append((insert, token_keys))
        if self.account_metadata:
            statements.append((rows.account_metadata_upsert(dialect), self.account_metadata))
        if self.pools:
            statements.append((_pool_upsert(dialect), self.pools))
        if self.pool_grants:
            statements.append((_pool_grant_upsert(dialect), self.pool_grants))
        for statement, params in statements:
            if params:
                cursor.executemany(statement, params)


@cache
def _pool_upsert(dialect: Dialect) -> str:
    return pool_rows.upsert(dialect, "ledger_pools", pool_rows.POOL_COLUMNS, ACCOUNT_KEY)


@cache
def _pool_grant_upsert(dialect: Dialect) -> str:
    keys = ("bank_uuid", "grant_id")
    return pool_rows.upsert(dialect, "ledger_pool_grants", pool_rows.GRANT_COLUMNS, keys)


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
        member_tokens_required=batch.member_tokens_required,
    )
    write = IndexWrite()
    write.bank.append(rows.bank_row(bank_uuid, view, batch.created_by, batch.timestamp))
    opened_before = batch.state.accounts
    for account in batch.changed_accounts():
        rows_of = write.accounts if account.account_id in opened_before else write.new_accounts
        rows_of.append(rows.account_row(bank_uuid, account))
    records = batch.records
    for transfer_id, record in records.changed_transfers.items():
        rows_of = (
            write.new_transfers if transfer_id in records.created_transfers else write.transfers
        )
        rows_of.append(rows.transfer_row(bank_uuid, record))
    for transfer_id in records.created_transfers:
        record = records.changed_transfers[transfer_id]
        for account_id in (record.payer_account_id, record.payee_account_id):
            write.account_transfers.append((bank_uuid, account_id, record.number, transfer_id))
    write.requests = [rows.request_row(bank_uuid, r) for r in records.new_requests.values()]
    write.chain = [(bank_uuid, e.version, e.chain_hash) for e in stored]
    write.api_keys = [rows.api_key_row(bank_uuid, batch.bank_id, k) for k in records.new_api_keys]
    write.api_key_revocations = [
        rows.api_key_revocation_row(revocation) for revocation in records.revoked_api_keys
    ]
    if batch.member_token_keys_changed:
        keys = [rows.member_token_key_row(bank_uuid, k) for k in batch.member_token_keys.values()]
        write.member_token_keys = (bank_uuid, keys)
    write.account_metadata = [
        rows.account_metadata_row(bank_uuid, change) for change in records.metadata_changes
    ]
    write.pools = [pool_rows.pool_row(bank_uuid, pool) for pool in batch.changed_pools()]
    write.pool_grants = [
        pool_rows.grant_row(bank_uuid, grant) for grant in records.grant_changes.values()
    ]
    return write


def access_write(bank_uuid: str, batch: Batch, stored: Sequence[StoredEvent]) -> IndexWrite:
    """The rows of a batch of the deployment's own history (operator keys): no bank row."""
    assert batch.records is not None
    write = IndexWrite()
    write.chain = [(bank_uuid, e.version, e.chain_hash) for e in stored]
    write.api_keys = [rows.api_key_row(bank_uuid, "", k) for k in batch.records.new_api_keys]
    write.api_key_revocations = [
        rows.api_key_revocation_row(revocation) for revocation in batch.records.revoked_api_keys
    ]
    return write
