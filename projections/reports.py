"""The "reports" projection: per-bank figures for coordinators and commissioners.

Self-contained: it reads only its own tables (all prefixed `report_`), never another
projection's, since each projection may be at a different position in the log.

Tables (keyed by the client-chosen bank_id, not the aggregate UUID):
- report_banks: one row per bank: name, transfer counters (immediate, pending created, posted,
  voided, expired, reversals), posted and reversed minutes, minutes held by open holds, and the
  bank's latest event applied (position, updated_at).
- report_accounts: kind, status and posted balance of every account; the zero-sum check and
  the minutes in circulation are sums over it.
- report_holds: open pending transfers; what a later post needs (parties, category, date).
- report_transfers: every posted transfer (immediate or posted pending) with the month and
  category it counts in, so a reversal can take it back from the same month and category.
- report_account_months: per account and month: exchanges, minutes given (as payee: the one
  who helped) and received (as payer: the one helped).
- report_category_months: per category and month: exchanges and minutes.
- the "measure what matters" tables (pairs, partners, newcomers, pool flows): see
  projections/impact.py, which every batch applies in the same transaction.

An exchange counts on its service_date if it has one, else on the UTC day of the event that
posted it (for a pending transfer: the post, when the minutes moved), and in that day's
month. A posted pending counts its posted amount. A reversal is not an exchange: it takes the
original's exchange back out of the original's month, category and accounts, so every
figure is net of reversals.

A batch first loads, with a few bulk queries, the holds and posted transfers its events
refer to; every figure is then written back as a delta (`x = x + ?`), so no row is read
back. Counters touched by a batch are written even when their delta is zero, so the rows a
history produces do not depend on how it was cut into batches.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from projections.db import Cursor, insert_rows
from projections.impact import IMPACT_DDL, IMPACT_TABLES, ImpactBatch

_DDL = (
    "CREATE TABLE IF NOT EXISTS report_banks ("
    " bank_uuid TEXT PRIMARY KEY, bank_id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,"
    " created_at TEXT NOT NULL, immediate_transfers BIGINT NOT NULL,"
    " pending_transfers BIGINT NOT NULL, pending_posted BIGINT NOT NULL,"
    " pending_voided BIGINT NOT NULL, pending_expired BIGINT NOT NULL,"
    " reversals BIGINT NOT NULL, posted_minutes BIGINT NOT NULL,"
    " reversed_minutes BIGINT NOT NULL, held_minutes BIGINT NOT NULL,"
    " position BIGINT NOT NULL, updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS report_accounts ("
    " bank_id TEXT NOT NULL, account_id TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,"
    " balance_minutes BIGINT NOT NULL, PRIMARY KEY (bank_id, account_id))",
    "CREATE TABLE IF NOT EXISTS report_holds ("
    " bank_id TEXT NOT NULL, transfer_id TEXT NOT NULL, payer_account_id TEXT NOT NULL,"
    " payee_account_id TEXT NOT NULL, amount_minutes BIGINT NOT NULL, category TEXT NOT NULL,"
    " service_date TEXT NOT NULL, PRIMARY KEY (bank_id, transfer_id))",
    "CREATE TABLE IF NOT EXISTS report_transfers ("
    " bank_id TEXT NOT NULL, transfer_id TEXT NOT NULL, payer_account_id TEXT NOT NULL,"
    " payee_account_id TEXT NOT NULL, amount_minutes BIGINT NOT NULL, category TEXT NOT NULL,"
    " month TEXT NOT NULL, reversed_by_transfer_id TEXT NOT NULL,"
    " PRIMARY KEY (bank_id, transfer_id))",
    "CREATE TABLE IF NOT EXISTS report_account_months ("
    " bank_id TEXT NOT NULL, month TEXT NOT NULL, account_id TEXT NOT NULL,"
    " exchanges BIGINT NOT NULL, given_minutes BIGINT NOT NULL,"
    " received_minutes BIGINT NOT NULL, PRIMARY KEY (bank_id, month, account_id))",
    "CREATE INDEX IF NOT EXISTS report_account_months_by_account"
    " ON report_account_months (bank_id, account_id, month)",
    "CREATE TABLE IF NOT EXISTS report_category_months ("
    " bank_id TEXT NOT NULL, month TEXT NOT NULL, category TEXT NOT NULL,"
    " exchanges BIGINT NOT NULL, minutes BIGINT NOT NULL,"
    " PRIMARY KEY (bank_id, month, category))",
)
# Every table of the projection, in the order a rebuild drops them.
REPORT_TABLES = (
    "report_banks",
    "report_accounts",
    "report_holds",
    "report_transfers",
    "report_account_months",
    "report_category_months",
    *IMPACT_TABLES,
)

# Keys per bulk look-up; each chunk is padded to a power of two so that only a handful of
# distinct statements are ever prepared.
keys_per_lookup_max = 512

_HOLD_COLUMNS = (
    "bank_id",
    "transfer_id",
    "payer_account_id",
    "payee_account_id",
    "amount_minutes",
    "category",
    "service_date",
)
_TRANSFER_COLUMNS = (
    "bank_id",
    "transfer_id",
    "payer_account_id",
    "payee_account_id",
    "amount_minutes",
    "category",
    "month",
    "reversed_by_transfer_id",
)
_HOLD_EVENTS = frozenset({"PendingPosted", "PendingVoided", "PendingExpired"})
_BANK_COUNTERS = (
    "immediate_transfers",
    "pending_transfers",
    "pending_posted",
    "pending_voided",
    "pending_expired",
    "reversals",
    "posted_minutes",
    "reversed_minutes",
    "held_minutes",
)


def day_of(service_date: str, timestamp: datetime) -> str:
    """The day ('YYYY-MM-DD') an exchange counts on: its service date, else the event's (UTC)."""
    if service_date:
        assert len(service_date) == 10, service_date
        return service_date
    moment = timestamp if timestamp.tzinfo is None else timestamp.astimezone(UTC)
    return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


@dataclass(slots=True)
class _Hold:
    payer_account_id: str
    payee_account_id: str
    amount_minutes: int
    category: str
    service_date: str


@dataclass(slots=True)
class _Posted:
    payer_account_id: str
    payee_account_id: str
    amount_minutes: int
    category: str
    month: str
    reversed_by_transfer_id: str = ""


@dataclass(slots=True)
class _AccountChange:
    """An account touched by the batch: opened in it (kind set), or changed by deltas."""

    kind: str | None = None
    status: str | None = None
    balance_delta_minutes: int = 0


@dataclass(slots=True)
class _BankChange:
    counters: dict[str, int]
    position: int
    updated_at: str


def _padded_chunks(keys: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(keys), keys_per_lookup_max):
        chunk = list(keys[start : start + keys_per_lookup_max])
        size = 1
        while size < len(chunk):
            size *= 2
        yield chunk + [chunk[-1]] * (size - len(chunk))


class _Batch:
    """What one batch reads and changes, written back at the end with bulk statements."""

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor
        self.bank_ids: dict[str, str] = {}
        self.new_banks: list[tuple[Any, ...]] = []
        self.banks: dict[str, _BankChange] = {}
        self.accounts: dict[tuple[str, str], _AccountChange] = {}
        # Holds and posted transfers found in the tables (by the preload) or made by this batch.
        self.stored_holds: dict[tuple[str, str], _Hold] = {}
        self.new_holds: dict[tuple[str, str], _Hold] = {}
        self.released_holds: list[tuple[str, str]] = []
        self.stored_posted: dict[tuple[str, str], _Posted] = {}
        self.new_posted: dict[tuple[str, str], _Posted] = {}
        self.reversed_stored: list[tuple[str, str, str]] = []
        # (bank_id, month, account_id) -> [exchanges, given_minutes, received_minutes]
        self.account_months: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        # (bank_id, month, category) -> [exchanges, minutes]
        self.category_months: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        # Who exchanged with whom, newcomers, organisation and pool flows (projections/impact.py).
        self.impact = ImpactBatch(cursor)

    # ----------------------------------------------------------------- reading

    def bank_id(self, bank_uuid: str) -> str:
        bank_id = self.bank_ids.get(bank_uuid)
        if bank_id is None:
            rows = self.cursor.query(
                "SELECT bank_id FROM report_banks WHERE bank_uuid = ?", (bank_uuid,)
            )
            assert rows, f"events of bank {bank_uuid} before its Created event"
            bank_id = self.bank_ids[bank_uuid] = str(rows[0][0])
        return bank_id

    def preload(self, events: Sequence[Any]) -> None:
        """Load, in bulk, the holds and posted transfers that this batch's events resolve."""
        holds: dict[str, list[str]] = defaultdict(list)
        posted: dict[str, list[str]] = defaultdict(list)
        for event in events:
            name = event.type
            if name == "BankCreated":
                self.bank_ids[event.bank_uuid] = event.bank_id
            elif name in _HOLD_EVENTS:
                holds[self.bank_id(event.bank_uuid)].append(event.transfer_id)
            elif name == "TransferReversed":
                bank_id = self.bank_id(event.bank_uuid)
                posted[bank_id].append(event.reverses_transfer_id)
        for bank_id, transfer_ids in holds.items():
            for row in self._lookup(
                "SELECT transfer_id, payer_account_id, payee_account_id, amount_minutes,"
                " category, service_date FROM report_holds",
                bank_id,
                transfer_ids,
            ):
                self.stored_holds[(bank_id, row[0])] = _Hold(*row[1:])
        for bank_id, transfer_ids in posted.items():
            for row in self._lookup(
                "SELECT transfer_id, payer_account_id, payee_account_id, amount_minutes,"
                " category, month, reversed_by_transfer_id FROM report_transfers",
                bank_id,
                transfer_ids,
            ):
                self.stored_posted[(bank_id, row[0])] = _Posted(*row[1:])

    def _lookup(self, select: str, bank_id: str, transfer_ids: list[str]) -> list[Any]:
        rows: list[Any] = []
        for chunk in _padded_chunks(transfer_ids):
            marks = ", ".join("?" * len(chunk))
            rows.extend(
                self.cursor.query(
                    f"{select} WHERE bank_id = ? AND transfer_id IN ({marks})", (bank_id, *chunk)
                )
            )
        return rows

    # ----------------------------------------------------------------- changing

    def bank(self, event: Any) -> tuple[str, _BankChange]:
        """The bank an event belongs to, marked as changed up to that event."""
        bank_id = self.bank_id(event.bank_uuid)
        change = self.banks.get(bank_id)
        if change is None:
            change = self.banks[bank_id] = _BankChange(dict.fromkeys(_BANK_COUNTERS, 0), 0, "")
        change.position = event.version
        change.updated_at = _iso(event.timestamp)
        return bank_id, change

    def account(self, bank_id: str, account_id: str) -> _AccountChange:
        key = (bank_id, account_id)
        change = self.accounts.get(key)
        if change is None:
            change = self.accounts[key] = _AccountChange()
        return change

    def take_hold(self, bank_id: str, transfer_id: str) -> _Hold:
        key = (bank_id, transfer_id)
        hold = self.new_holds.pop(key, None)
        if hold is None:
            hold = self.stored_holds.pop(key, None)
            assert hold is not None, f"transfer {transfer_id} of bank {bank_id} is not held"
            self.released_holds.append(key)
        return hold

    def posted(self, bank_id: str, transfer_id: str) -> tuple[_Posted, bool]:
        """A posted transfer, and whether it is stored (True) or new in this batch."""
        key = (bank_id, transfer_id)
        found = self.new_posted.get(key)
        if found is not None:
            return found, False
        found = self.stored_posted.get(key)
        assert found is not None, f"transfer {transfer_id} of bank {bank_id} was never posted"
        return found, True

    def count(self, bank_id: str, transfer: _Posted, sign: int) -> None:
        """Add (sign 1) or take back (sign -1) one exchange: balances and monthly figures."""
        assert sign in (1, -1)
        amount = sign * transfer.amount_minutes
        self.account(bank_id, transfer.payer_account_id).balance_delta_minutes -= amount
        self.account(bank_id, transfer.payee_account_id).balance_delta_minutes += amount
        payer = self.account_months[(bank_id, transfer.month, transfer.payer_account_id)]
        payer[0] += sign
        payer[2] += amount
        payee = self.account_months[(bank_id, transfer.month, transfer.payee_account_id)]
        payee[0] += sign
        payee[1] += amount
        category = self.category_months[(bank_id, transfer.month, transfer.category)]
        category[0] += sign
        category[1] += amount

    # ----------------------------------------------------------------- writing

    def write(self) -> None:
        cursor = self.cursor
        cursor.executemany(
            "INSERT INTO report_banks (bank_uuid, bank_id, name, created_at, immediate_transfers,"
            " pending_transfers, pending_posted, pending_voided, pending_expired, reversals,"
            " posted_minutes, reversed_minutes, held_minutes, position, updated_at)"
            " VALUES (?, ?, ?, ?, 0, 0, 0, 0, 0, 0, 0, 0, 0, ?, ?)",
            self.new_banks,
        )
        counters = ", ".join(f"{name} = {name} + ?" for name in _BANK_COUNTERS)
        cursor.executemany(
            f"UPDATE report_banks SET {counters}, position = ?, updated_at = ? WHERE bank_id = ?",
            [
                (*change.counters.values(), change.position, change.updated_at, bank_id)
                for bank_id, change in self.banks.items()
            ],
        )
        self._write_accounts()
        self._write_transfers()
        cursor.executemany(
            "INSERT INTO report_account_months (bank_id, month, account_id, exchanges,"
            " given_minutes, received_minutes) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (bank_id, month, account_id) DO UPDATE SET"
            " exchanges = report_account_months.exchanges + excluded.exchanges,"
            " given_minutes = report_account_months.given_minutes + excluded.given_minutes,"
            " received_minutes = report_account_months.received_minutes"
            " + excluded.received_minutes",
            [(*key, *values) for key, values in self.account_months.items()],
        )
        cursor.executemany(
            "INSERT INTO report_category_months (bank_id, month, category, exchanges, minutes)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (bank_id, month, category) DO UPDATE SET"
            " exchanges = report_category_months.exchanges + excluded.exchanges,"
            " minutes = report_category_months.minutes + excluded.minutes",
            [(*key, *values) for key, values in self.category_months.items()],
        )

    def _write_accounts(self) -> None:
        opened, moved, statuses = [], [], []
        for (bank_id, account_id), change in self.accounts.items():
            if change.kind is not None:
                status = change.status or "open"
                balance = change.balance_delta_minutes
                opened.append((bank_id, account_id, change.kind, status, balance))
                continue
            if change.balance_delta_minutes:
                moved.append((change.balance_delta_minutes, bank_id, account_id))
            if change.status is not None:
                statuses.append((change.status, bank_id, account_id))
        self.cursor.executemany(
            "INSERT INTO report_accounts (bank_id, account_id, kind, status, balance_minutes)"
            " VALUES (?, ?, ?, ?, ?)",
            opened,
        )
        self.cursor.executemany(
            "UPDATE report_accounts SET balance_minutes = balance_minutes + ?"
            " WHERE bank_id = ? AND account_id = ?",
            moved,
        )
        self.cursor.executemany(
            "UPDATE report_accounts SET status = ? WHERE bank_id = ? AND account_id = ?", statuses
        )

    def _write_transfers(self) -> None:
        cursor = self.cursor
        cursor.executemany(
            "DELETE FROM report_holds WHERE bank_id = ? AND transfer_id = ?", self.released_holds
        )
        insert_rows(
            cursor,
            "report_holds",
            _HOLD_COLUMNS,
            [
                (
                    *key,
                    h.payer_account_id,
                    h.payee_account_id,
                    h.amount_minutes,
                    h.category,
                    h.service_date,
                )
                for key, h in self.new_holds.items()
            ],
        )
        insert_rows(
            cursor,
            "report_transfers",
            _TRANSFER_COLUMNS,
            [
                (
                    *key,
                    p.payer_account_id,
                    p.payee_account_id,
                    p.amount_minutes,
                    p.category,
                    p.month,
                    p.reversed_by_transfer_id,
                )
                for key, p in self.new_posted.items()
            ],
        )
        cursor.executemany(
            "UPDATE report_transfers SET reversed_by_transfer_id = ?"
            " WHERE bank_id = ? AND transfer_id = ?",
            self.reversed_stored,
        )


class ReportsProjection:
    """Bank totals, the zero-sum check, and exchanges per month, account and category."""

    name = "reports"
    # 2: the "measure what matters" tables (impact.py); a view built by 1 is rebuilt.
    # 3: those tables count only exchanges between members and organisations (transfers with
    # pools are pool flows alone), and report_impact_months counts their minutes.
    schema_version = 3

    def create_tables(self, cursor: Cursor) -> None:
        for statement in (*_DDL, *IMPACT_DDL):
            cursor.execute(statement)

    def drop_tables(self, cursor: Cursor) -> None:
        for table in REPORT_TABLES:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")

    def apply(self, cursor: Cursor, events: Sequence[Any]) -> None:
        batch = _Batch(cursor)
        batch.preload(events)
        for event in events:
            handler = getattr(self, f"_on_{event.type}", None)
            if handler is not None:
                handler(batch, event)
            else:
                # An event these reports do not measure still moves the bank's position.
                batch.bank(event)
        batch.write()
        batch.impact.write()

    # ----------------------------------------------------------------- bank and accounts

    def _on_BankCreated(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        bank_uuid = event.bank_uuid
        batch.bank_ids[bank_uuid] = event.bank_id
        at = _iso(event.timestamp)
        batch.new_banks.append((bank_uuid, event.bank_id, event.name, at, event.version, at))

    def _on_AccountOpened(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        bank_id, _ = batch.bank(event)
        key = (bank_id, event.account_id)
        assert key not in batch.accounts, f"account {event.account_id} opened twice"
        batch.accounts[key] = _AccountChange(kind=event.kind, status="open")
        batch.impact.opened(bank_id, event.account_id, event.kind, day_of("", event.timestamp))

    def _on_AccountStatusChanged(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        bank_id, _ = batch.bank(event)
        batch.account(bank_id, event.account_id).status = event.status

    # ----------------------------------------------------------------- transfers

    def _on_TransfersCreated(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        bank_id, bank = batch.bank(event)
        for item in event.transfers:
            key = (bank_id, item["transfer_id"])
            amount = item["amount_minutes"]
            if item["pending"]:
                bank.counters["pending_transfers"] += 1
                bank.counters["held_minutes"] += amount
                batch.new_holds[key] = _Hold(
                    item["payer_account_id"],
                    item["payee_account_id"],
                    amount,
                    item["category"],
                    item["service_date"],
                )
                continue
            bank.counters["immediate_transfers"] += 1
            day = day_of(item["service_date"], event.timestamp)
            posted = _Posted(
                item["payer_account_id"],
                item["payee_account_id"],
                amount,
                item["category"],
                day[:7],
            )
            self._exchange(batch, bank, key, posted, day)

    def _on_PendingPosted(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        bank_id, bank = batch.bank(event)
        hold = batch.take_hold(bank_id, event.transfer_id)
        assert 0 < event.posted_amount_minutes <= hold.amount_minutes, event.transfer_id
        bank.counters["pending_posted"] += 1
        bank.counters["held_minutes"] -= hold.amount_minutes
        day = day_of(hold.service_date, event.timestamp)
        posted = _Posted(
            hold.payer_account_id,
            hold.payee_account_id,
            event.posted_amount_minutes,
            hold.category,
            day[:7],
        )
        self._exchange(batch, bank, (bank_id, event.transfer_id), posted, day)

    def _on_PendingVoided(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        self._release(batch, event, "pending_voided")

    def _on_PendingExpired(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        self._release(batch, event, "pending_expired")

    def _on_TransferReversed(self, batch: _Batch, event: Any) -> None:  # noqa: N802
        bank_id, bank = batch.bank(event)
        original, stored = batch.posted(bank_id, event.reverses_transfer_id)
        # The reversal moves the original's posted minutes back, between the same two accounts.
        assert not original.reversed_by_transfer_id, f"{event.reverses_transfer_id} reversed twice"
        assert (event.payer_account_id, event.payee_account_id, event.amount_minutes) == (
            original.payee_account_id,
            original.payer_account_id,
            original.amount_minutes,
        ), f"reversal {event.transfer_id} does not mirror {event.reverses_transfer_id}"
        original.reversed_by_transfer_id = event.transfer_id
        if stored:
            batch.reversed_stored.append((event.transfer_id, bank_id, event.reverses_transfer_id))
        bank.counters["reversals"] += 1
        bank.counters["reversed_minutes"] += original.amount_minutes
        batch.count(bank_id, original, sign=-1)
        batch.impact.reversed(
            bank_id,
            event.reverses_transfer_id,
            original.payer_account_id,
            original.payee_account_id,
            original.amount_minutes,
            original.category,
            original.month,
        )

    @staticmethod
    def _exchange(
        batch: _Batch, bank: _BankChange, key: tuple[str, str], posted: _Posted, day: str
    ) -> None:
        assert key not in batch.new_posted, f"transfer {key[1]} posted twice"
        batch.new_posted[key] = posted
        bank.counters["posted_minutes"] += posted.amount_minutes
        batch.count(key[0], posted, sign=1)
        batch.impact.exchanged(
            key[0],
            key[1],
            posted.payer_account_id,
            posted.payee_account_id,
            posted.amount_minutes,
            posted.category,
            day,
        )

    @staticmethod
    def _release(batch: _Batch, event: Any, counter: str) -> None:
        bank_id, bank = batch.bank(event)
        hold = batch.take_hold(bank_id, event.transfer_id)
        bank.counters[counter] += 1
        bank.counters["held_minutes"] -= hold.amount_minutes
