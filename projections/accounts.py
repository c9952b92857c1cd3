"""The "accounts" projection: per-account summaries and statements with running balances.

Tables (all keyed by the client-chosen bank_id, not the aggregate UUID):
- view_banks: bank_uuid -> bank_id and name.
- view_accounts: one row per account: balance, pending in/out, minutes given (as the one who
  helped: credited) and received (as the one helped: debited), exchanges, last activity.
- view_statement_entries: every posted movement on an account, numbered per account (seq)
  with the balance after it; a pending hold appears once it is posted.
- view_open_holds / view_posted_transfers: what a later post, void, expiry or reversal needs.

A batch loads the rows it touches once, changes them in memory, and writes them back with a
few bulk statements, inside the runner's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from projections.db import Cursor, insert_rows, select_in, upsert_rows

_DDL = (
    "CREATE TABLE IF NOT EXISTS view_banks ("
    " bank_uuid TEXT PRIMARY KEY, bank_id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,"
    " created_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS view_accounts ("
    " bank_id TEXT NOT NULL, account_id TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,"
    " lower_limit_minutes BIGINT NOT NULL, upper_limit_minutes BIGINT,"
    " balance_minutes BIGINT NOT NULL, pending_in_minutes BIGINT NOT NULL,"
    " pending_out_minutes BIGINT NOT NULL, given_minutes BIGINT NOT NULL,"
    " received_minutes BIGINT NOT NULL, exchanges BIGINT NOT NULL, entries BIGINT NOT NULL,"
    " opened_at TEXT NOT NULL, last_activity_at TEXT NOT NULL, position BIGINT NOT NULL,"
    " PRIMARY KEY (bank_id, account_id))",
    "CREATE TABLE IF NOT EXISTS view_statement_entries ("
    " bank_id TEXT NOT NULL, account_id TEXT NOT NULL, seq BIGINT NOT NULL,"
    " transfer_id TEXT NOT NULL, kind TEXT NOT NULL, counterparty_account_id TEXT NOT NULL,"
    " amount_minutes BIGINT NOT NULL, balance_minutes BIGINT NOT NULL, memo TEXT NOT NULL,"
    " category TEXT NOT NULL, service_date TEXT NOT NULL, recorded_at TEXT NOT NULL,"
    " position BIGINT NOT NULL, PRIMARY KEY (bank_id, account_id, seq))",
    # A statement as of a position (AuditService) starts at the last entry up to it.
    "CREATE INDEX IF NOT EXISTS view_statement_entries_by_position"
    " ON view_statement_entries (bank_id, account_id, position, seq)",
    "CREATE TABLE IF NOT EXISTS view_open_holds ("
    " bank_id TEXT NOT NULL, transfer_id TEXT NOT NULL, payer_account_id TEXT NOT NULL,"
    " payee_account_id TEXT NOT NULL, amount_minutes BIGINT NOT NULL, memo TEXT NOT NULL,"
    " category TEXT NOT NULL, service_date TEXT NOT NULL, PRIMARY KEY (bank_id, transfer_id))",
)
_TABLES = ("view_banks", "view_accounts", "view_statement_entries", "view_open_holds")

# view_accounts' columns with their types, in AccountRow's order.
_ACCOUNT_TYPES = (
    ("bank_id", "text"),
    ("account_id", "text"),
    ("kind", "text"),
    ("status", "text"),
    ("lower_limit_minutes", "bigint"),
    ("upper_limit_minutes", "bigint"),
    ("balance_minutes", "bigint"),
    ("pending_in_minutes", "bigint"),
    ("pending_out_minutes", "bigint"),
    ("given_minutes", "bigint"),
    ("received_minutes", "bigint"),
    ("exchanges", "bigint"),
    ("entries", "bigint"),
    ("opened_at", "text"),
    ("last_activity_at", "text"),
    ("position", "bigint"),
)
_ACCOUNT_COLUMNS = ", ".join(name for name, _ in _ACCOUNT_TYPES)
_HOLD_COLUMNS = (
    "transfer_id, payer_account_id, payee_account_id, amount_minutes, memo, category, service_date"
)
# view_statement_entries' columns with their types, in the order of a _Batch entry.
_ENTRY_TYPES = (
    ("bank_id", "text"),
    ("account_id", "text"),
    ("seq", "int8"),
    ("transfer_id", "text"),
    ("kind", "text"),
    ("counterparty_account_id", "text"),
    ("amount_minutes", "int8"),
    ("balance_minutes", "int8"),
    ("memo", "text"),
    ("category", "text"),
    ("service_date", "text"),
    ("recorded_at", "text"),
    ("position", "int8"),
)
_HOLD_KEYED_COLUMNS = ("bank_id", *(name.strip() for name in _HOLD_COLUMNS.split(",")))
_RELEASES = frozenset({"PendingPosted", "PendingVoided", "PendingExpired"})


@dataclass(slots=True)
class AccountRow:
    bank_id: str
    account_id: str
    kind: str
    status: str
    lower_limit_minutes: int
    upper_limit_minutes: int | None
    balance_minutes: int
    pending_in_minutes: int
    pending_out_minutes: int
    given_minutes: int
    received_minutes: int
    exchanges: int
    entries: int
    opened_at: str
    last_activity_at: str
    position: int

    def values(self) -> tuple[Any, ...]:
        return (
            self.bank_id,
            self.account_id,
            self.kind,
            self.status,
            self.lower_limit_minutes,
            self.upper_limit_minutes,
            self.balance_minutes,
            self.pending_in_minutes,
            self.pending_out_minutes,
            self.given_minutes,
            self.received_minutes,
            self.exchanges,
            self.entries,
            self.opened_at,
            self.last_activity_at,
            self.position,
        )


@dataclass(slots=True)
class Hold:
    transfer_id: str
    payer_account_id: str
    payee_account_id: str
    amount_minutes: int
    memo: str
    category: str
    service_date: str


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


class _Batch:
    """The rows one batch reads and changes, written back at the end."""

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor
        self.bank_ids: dict[str, str] = {}
        self.accounts: dict[tuple[str, str], AccountRow] = {}
        self.new_banks: list[tuple[Any, ...]] = []
        self.entries: list[tuple[Any, ...]] = []
        # Holds created (a Hold) or released (None) in this batch, and the stored ones loaded.
        self.holds: dict[tuple[str, str], Hold | None] = {}
        self.stored_holds: set[tuple[str, str]] = set()

    def prefetch(self, events: Sequence[Any]) -> None:
        """Load the stored rows the batch will change in a few queries, not one per row."""
        accounts: dict[str, set[str]] = {}  # bank_uuid -> account ids
        releases: dict[str, set[str]] = {}  # bank_uuid -> ids of held transfers resolved
        for event in events:
            name = event.type
            bank_uuid = event.bank_uuid
            if name == "TransfersCreated":
                ids = accounts.setdefault(bank_uuid, set())
                for item in event.transfers:
                    ids.add(item["payer_account_id"])
                    ids.add(item["payee_account_id"])
            elif name == "TransferReversed":
                accounts.setdefault(bank_uuid, set()).update(
                    (event.payer_account_id, event.payee_account_id)
                )
            elif name in ("AccountLimitsChanged", "AccountStatusChanged", "AccountMetadataChanged"):
                accounts.setdefault(bank_uuid, set()).add(event.account_id)
            elif name in _RELEASES:
                releases.setdefault(bank_uuid, set()).add(event.transfer_id)
        # Banks created in this batch are not stored yet, nor is anything of theirs.
        for row in select_in(
            self.cursor,
            "SELECT bank_uuid, bank_id FROM view_banks WHERE",
            (),
            "bank_uuid",
            sorted({*accounts, *releases}),
        ):
            self.bank_ids[str(row[0])] = str(row[1])
        for bank_uuid, transfer_ids in releases.items():
            bank_id = self.bank_ids.get(bank_uuid)
            if bank_id is None:
                continue
            for row in select_in(
                self.cursor,
                f"SELECT {_HOLD_COLUMNS} FROM view_open_holds WHERE bank_id = ? AND",
                (bank_id,),
                "transfer_id",
                sorted(transfer_ids),
            ):
                hold = self.holds[(bank_id, row[0])] = Hold(*row)
                self.stored_holds.add((bank_id, row[0]))
                accounts.setdefault(bank_uuid, set()).update(
                    (hold.payer_account_id, hold.payee_account_id)
                )
        for bank_uuid, account_ids in accounts.items():
            bank_id = self.bank_ids.get(bank_uuid)
            if bank_id is None:
                continue
            for row in select_in(
                self.cursor,
                f"SELECT {_ACCOUNT_COLUMNS} FROM view_accounts WHERE bank_id = ? AND",
                (bank_id,),
                "account_id",
                sorted(account_ids),
            ):
                self.accounts[(bank_id, row[1])] = AccountRow(*row)

    def bank_id(self, bank_uuid: str) -> str:
        bank_id = self.bank_ids.get(bank_uuid)
        if bank_id is None:
            rows = self.cursor.query(
                "SELECT bank_id FROM view_banks WHERE bank_uuid = ?", (bank_uuid,)
            )
            assert rows, f"events of bank {bank_uuid} before its Created event"
            bank_id = self.bank_ids[bank_uuid] = str(rows[0][0])
        return bank_id

    def account(self, bank_id: str, account_id: str) -> AccountRow:
        key = (bank_id, account_id)
        row = self.accounts.get(key)
        if row is None:
            rows = self.cursor.query(
                f"SELECT {_ACCOUNT_COLUMNS} FROM view_accounts"
                " WHERE bank_id = ? AND account_id = ?",
                key,
            )
            assert rows, f"account {account_id} of bank {bank_id} was never opened"
            row = self.accounts[key] = AccountRow(*rows[0])
        return row

    def hold(self, bank_id: str, transfer_id: str) -> Hold:
        key = (bank_id, transfer_id)
        if key not in self.holds:
            rows = self.cursor.query(
                f"SELECT {_HOLD_COLUMNS} FROM view_open_holds"
                " WHERE bank_id = ? AND transfer_id = ?",
                key,
            )
            self.holds[key] = Hold(*rows[0]) if rows else None
            if rows:
                self.stored_holds.add(key)
        hold = self.holds[key]
        assert hold is not None, f"transfer {transfer_id} of bank {bank_id} is not held"
        return hold

    def entry(
        self,
        account: AccountRow,
        *,
        transfer_id: str,
        kind: str,
        counterparty: str,
        amount_minutes: int,
        memo: str,
        category: str,
        service_date: str,
        recorded_at: str,
        position: int,
    ) -> None:
        """A posted movement: change the balance and append a statement line."""
        account.balance_minutes += amount_minutes
        account.entries += 1
        account.last_activity_at = recorded_at
        account.position = position
        self.entries.append(
            (
                account.bank_id,
                account.account_id,
                account.entries,
                transfer_id,
                kind,
                counterparty,
                amount_minutes,
                account.balance_minutes,
                memo,
                category,
                service_date,
                recorded_at,
                position,
            )
        )

    def write(self) -> None:
        cursor = self.cursor
        cursor.executemany(
            "INSERT INTO view_banks (bank_uuid, bank_id, name, created_at) VALUES (?, ?, ?, ?)",
            self.new_banks,
        )
        upsert_rows(
            cursor,
            "view_accounts",
            _ACCOUNT_TYPES,
            ("bank_id", "account_id"),
            [row.values() for row in self.accounts.values()],
        )
        # Statement lines and new holds only ever append (their keys are new): bulk copies.
        insert_rows(
            cursor,
            "view_statement_entries",
            [name for name, _ in _ENTRY_TYPES],
            self.entries,
            [sql_type for _, sql_type in _ENTRY_TYPES],
        )
        cursor.executemany(
            "DELETE FROM view_open_holds WHERE bank_id = ? AND transfer_id = ?",
            [key for key in self.stored_holds if self.holds[key] is None],
        )
        new_holds = [
            (
                bank_id,
                h.transfer_id,
                h.payer_account_id,
                h.payee_account_id,
                h.amount_minutes,
                h.memo,
                h.category,
                h.service_date,
            )
            for (bank_id, transfer_id), h in self.holds.items()
            if h is not None and (bank_id, transfer_id) not in self.stored_holds
        ]
        insert_rows(cursor, "view_open_holds", _HOLD_KEYED_COLUMNS, new_holds)


class AccountsProjection:
    """Summaries and statements of every account of every bank."""

    name = "accounts"

    def create_tables(self, cursor: Cursor) -> None:
        for statement in _DDL:
            cursor.execute(statement)

    def drop_tables(self, cursor: Cursor) -> None:
        for table in _TABLES:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")

    def apply(self, cursor: Cursor, events: Sequence[Any]) -> None:
        batch = _Batch(cursor)
        batch.prefetch(events)
        for event in events:
            handler = getattr(self, f"_on_{event.type}", None)
            if handler is not None:
                handler(batch, event)
        batch.write()

    # ----------------------------------------------------------------- bank and accounts

    def _on_BankCreated(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        bank_uuid = event.bank_uuid
        batch.bank_ids[bank_uuid] = event.bank_id
        batch.new_banks.append((bank_uuid, event.bank_id, event.name, _iso(event.timestamp)))

    def _on_AccountOpened(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        bank_id = batch.bank_id(event.bank_uuid)
        at = _iso(event.timestamp)
        batch.accounts[(bank_id, event.account_id)] = AccountRow(
            bank_id=bank_id,
            account_id=event.account_id,
            kind=event.kind,
            status="open",
            lower_limit_minutes=event.lower_limit_minutes,
            upper_limit_minutes=event.upper_limit_minutes,
            balance_minutes=0,
            pending_in_minutes=0,
            pending_out_minutes=0,
            given_minutes=0,
            received_minutes=0,
            exchanges=0,
            entries=0,
            opened_at=at,
            last_activity_at=at,
            position=event.version,
        )

    def _on_AccountLimitsChanged(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        account = batch.account(batch.bank_id(event.bank_uuid), event.account_id)
        account.lower_limit_minutes = event.lower_limit_minutes
        account.upper_limit_minutes = event.upper_limit_minutes
        account.position = event.version

    def _on_AccountStatusChanged(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        account = batch.account(batch.bank_id(event.bank_uuid), event.account_id)
        account.status = event.status
        account.position = event.version

    def _on_AccountMetadataChanged(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        # The label and tags are the ledger's index's to show (issue 12); the summary only
        # follows the account's position, as the Account message does.
        batch.account(batch.bank_id(event.bank_uuid), event.account_id).position = event.version

    # ----------------------------------------------------------------- transfers

    def _on_TransfersCreated(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        bank_id = batch.bank_id(event.bank_uuid)
        at = _iso(event.timestamp)
        position = event.version
        for item in event.transfers:
            payer = batch.account(bank_id, item["payer_account_id"])
            payee = batch.account(bank_id, item["payee_account_id"])
            amount = item["amount_minutes"]
            if item["pending"]:
                payer.pending_out_minutes += amount
                payee.pending_in_minutes += amount
                for account in (payer, payee):
                    account.last_activity_at, account.position = at, position
                batch.holds[(bank_id, item["transfer_id"])] = Hold(
                    item["transfer_id"],
                    payer.account_id,
                    payee.account_id,
                    amount,
                    item["memo"],
                    item["category"],
                    item["service_date"],
                )
            else:
                self._exchange(
                    batch,
                    payer,
                    payee,
                    amount,
                    item["transfer_id"],
                    "transfer",
                    item["memo"],
                    item["category"],
                    item["service_date"],
                    at,
                    position,
                )

    def _on_PendingPosted(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        bank_id = batch.bank_id(event.bank_uuid)
        hold = self._release(batch, bank_id, event)
        if event.posted_amount_minutes > 0:
            self._exchange(
                batch,
                batch.account(bank_id, hold.payer_account_id),
                batch.account(bank_id, hold.payee_account_id),
                event.posted_amount_minutes,
                hold.transfer_id,
                "posted",
                hold.memo,
                hold.category,
                hold.service_date,
                _iso(event.timestamp),
                event.version,
            )

    def _on_PendingVoided(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        self._release(batch, batch.bank_id(event.bank_uuid), event)

    def _on_PendingExpired(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        self._release(batch, batch.bank_id(event.bank_uuid), event)

    def _on_TransferReversed(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        bank_id = batch.bank_id(event.bank_uuid)
        payer = batch.account(bank_id, event.payer_account_id)
        payee = batch.account(bank_id, event.payee_account_id)
        amount = event.amount_minutes
        at, position = _iso(event.timestamp), event.version
        # A reversal undoes an exchange: it takes back the given/received minutes and the
        # count, rather than counting as help given by the original payer.
        payer.given_minutes -= amount
        payee.received_minutes -= amount
        payer.exchanges -= 1
        payee.exchanges -= 1
        batch.entry(
            payer,
            transfer_id=event.transfer_id,
            kind="reversal",
            counterparty=payee.account_id,
            amount_minutes=-amount,
            memo=event.reason,
            category="",
            service_date="",
            recorded_at=at,
            position=position,
        )
        batch.entry(
            payee,
            transfer_id=event.transfer_id,
            kind="reversal",
            counterparty=payer.account_id,
            amount_minutes=amount,
            memo=event.reason,
            category="",
            service_date="",
            recorded_at=at,
            position=position,
        )

    @staticmethod
    def _release(batch: _Batch, bank_id: str, event: Any) -> Hold:
        hold = batch.hold(bank_id, event.transfer_id)
        batch.holds[(bank_id, event.transfer_id)] = None
        at, position = _iso(event.timestamp), event.version
        payer = batch.account(bank_id, hold.payer_account_id)
        payee = batch.account(bank_id, hold.payee_account_id)
        payer.pending_out_minutes -= hold.amount_minutes
        payee.pending_in_minutes -= hold.amount_minutes
        for account in (payer, payee):
            account.last_activity_at, account.position = at, position
        return hold

    @staticmethod
    def _exchange(
        batch: _Batch,
        payer: AccountRow,
        payee: AccountRow,
        amount: int,
        transfer_id: str,
        kind: str,
        memo: str,
        category: str,
        service_date: str,
        at: str,
        position: int,
    ) -> None:
        payer.received_minutes += amount
        payee.given_minutes += amount
        payer.exchanges += 1
        payee.exchanges += 1
        for account, counterparty, signed in ((payer, payee, -amount), (payee, payer, amount)):
            batch.entry(
                account,
                transfer_id=transfer_id,
                kind=kind,
                counterparty=counterparty.account_id,
                amount_minutes=signed,
                memo=memo,
                category=category,
                service_date=service_date,
                recorded_at=at,
                position=position,
            )
