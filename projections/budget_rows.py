"""The rows of the "budgets" projection (projections/budgets.py): its tables, and what one
batch reads of them in bulk and writes back, every figure as a delta (`x = x + ?`).

Counters a batch touches are written even when their delta is zero, so the rows a history
produces do not depend on how it was cut into batches; a hold or a posted transfer made and
settled within one batch never reaches its table.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from projections.budget_shares import ShareBook
from projections.db import Cursor, insert_rows, select_in

DDL = (
    "CREATE TABLE IF NOT EXISTS budget_pools ("
    " bank_uuid TEXT NOT NULL, pool_account_id TEXT NOT NULL, policy TEXT NOT NULL,"
    " time_zone TEXT NOT NULL, contributed_minutes BIGINT NOT NULL,"
    " granted_minutes BIGINT NOT NULL, pledged_minutes BIGINT NOT NULL,"
    " committed_minutes BIGINT NOT NULL, beyond_shares_minutes BIGINT NOT NULL,"
    " PRIMARY KEY (bank_uuid, pool_account_id))",
    "CREATE TABLE IF NOT EXISTS budget_months ("
    " bank_uuid TEXT NOT NULL, pool_account_id TEXT NOT NULL, month TEXT NOT NULL,"
    " contributed_minutes BIGINT NOT NULL, granted_minutes BIGINT NOT NULL,"
    " pledged_minutes BIGINT NOT NULL, committed_minutes BIGINT NOT NULL,"
    " PRIMARY KEY (bank_uuid, pool_account_id, month))",
    "CREATE TABLE IF NOT EXISTS budget_shares ("
    " bank_uuid TEXT NOT NULL, pool_account_id TEXT NOT NULL, account_id TEXT NOT NULL,"
    " contributed_minutes BIGINT NOT NULL, left_minutes BIGINT NOT NULL,"
    " PRIMARY KEY (bank_uuid, pool_account_id, account_id))",
    "CREATE TABLE IF NOT EXISTS budget_usage ("
    " bank_uuid TEXT NOT NULL, pool_account_id TEXT NOT NULL, day TEXT NOT NULL,"
    " account_id TEXT NOT NULL, minutes BIGINT NOT NULL,"
    " PRIMARY KEY (bank_uuid, pool_account_id, day, account_id))",
    "CREATE TABLE IF NOT EXISTS budget_holds ("
    " bank_uuid TEXT NOT NULL, transfer_id TEXT NOT NULL, pool_account_id TEXT NOT NULL,"
    " kind TEXT NOT NULL, account_id TEXT NOT NULL, amount_minutes BIGINT NOT NULL,"
    " month TEXT NOT NULL, day TEXT NOT NULL,"
    " PRIMARY KEY (bank_uuid, transfer_id, pool_account_id))",
    "CREATE TABLE IF NOT EXISTS budget_posted ("
    " bank_uuid TEXT NOT NULL, transfer_id TEXT NOT NULL, pool_account_id TEXT NOT NULL,"
    " kind TEXT NOT NULL, account_id TEXT NOT NULL, amount_minutes BIGINT NOT NULL,"
    " month TEXT NOT NULL, PRIMARY KEY (bank_uuid, transfer_id, pool_account_id))",
    "CREATE TABLE IF NOT EXISTS budget_takes ("
    " bank_uuid TEXT NOT NULL, transfer_id TEXT NOT NULL, pool_account_id TEXT NOT NULL,"
    " account_id TEXT NOT NULL, minutes BIGINT NOT NULL,"
    " PRIMARY KEY (bank_uuid, transfer_id, pool_account_id, account_id))",
)
# Every table of the projection, in the order a rebuild drops them.
BUDGET_TABLES = (
    "budget_pools",
    "budget_months",
    "budget_shares",
    "budget_usage",
    "budget_holds",
    "budget_posted",
    "budget_takes",
)
POOL_COUNTERS = (
    "contributed_minutes",
    "granted_minutes",
    "pledged_minutes",
    "committed_minutes",
)
# Kinds of budget_holds and budget_posted rows.
PLEDGE, GRANT, CONTRIBUTION = "pledge", "grant", "contribution"

_HOLD_COLUMNS = (
    "bank_uuid",
    "transfer_id",
    "pool_account_id",
    "kind",
    "account_id",
    "amount_minutes",
    "month",
    "day",
)
_POSTED_COLUMNS = (
    "bank_uuid",
    "transfer_id",
    "pool_account_id",
    "kind",
    "account_id",
    "amount_minutes",
    "month",
)
_TAKE_COLUMNS = ("bank_uuid", "transfer_id", "pool_account_id", "account_id", "minutes")

PoolKey = tuple[str, str]  # (bank_uuid, pool_account_id)


# ----------------------------------------------------------------- one batch's changes


@dataclass(frozen=True, slots=True)
class Step:
    """An event that concerns a pool, with what the first pass learned about it."""

    kind: str  # policy, contribution, pledge, grant, resolve, reverse
    event: Any
    pool_account_id: str = ""
    # contribution and pledge: the transfer item; grant: the grant item; resolve: ((pool,
    # kind, time zone), ...); reverse: the pools touched
    detail: Any = None
    month: str = ""


@dataclass(slots=True)
class Hold:
    kind: str
    account_id: str
    amount_minutes: int
    month: str
    day: str


@dataclass(slots=True)
class Posted:
    kind: str
    account_id: str
    amount_minutes: int
    month: str


@dataclass(slots=True)
class PoolChange:
    book: ShareBook
    stored_beyond_minutes: int
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(POOL_COUNTERS, 0))
    policy: tuple[str, str] | None = None  # (policy JSON, time zone) when set by the batch
    new: bool = False


class BudgetBatch:
    """What one batch of pool steps reads and changes, written back with bulk statements."""

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor
        self.pools: dict[PoolKey, PoolChange] = {}
        self.stored_holds: dict[tuple[str, str, str], Hold] = {}
        self.new_holds: dict[tuple[str, str, str], Hold] = {}
        self.released_holds: list[tuple[str, str, str]] = []
        self.stored_posted: dict[tuple[str, str, str], Posted] = {}
        self.new_posted: dict[tuple[str, str, str], Posted] = {}
        self.reversed_posted: list[tuple[str, str, str]] = []
        # What grants took from each share: of stored grants being reversed, and of new ones.
        self.stored_takes: dict[tuple[str, str, str], dict[str, int]] = defaultdict(dict)
        self.new_takes: dict[tuple[str, str, str], dict[str, int]] = {}
        # (bank_uuid, pool, month) -> counter deltas, in POOL_COUNTERS order.
        self.months: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        # (bank_uuid, pool, day, member) -> minutes delta
        self.usage: dict[tuple[str, str, str, str], int] = defaultdict(int)

    # ----------------------------------------------------------------- reading

    def preload(self, steps: Sequence[Step]) -> None:
        """Load, in bulk, every row this batch's steps read."""
        resolved: dict[str, list[str]] = defaultdict(list)
        reversed_ids: dict[str, list[str]] = defaultdict(list)
        touched: set[PoolKey] = set()
        drawing: set[PoolKey] = set()
        created: set[PoolKey] = set()
        for step in steps:
            bank = step.event.bank_uuid
            key = (bank, step.pool_account_id)
            if step.kind == "policy" and step.event.action == "create":
                created.add(key)
            elif step.kind in ("policy", "contribution", "pledge", "grant"):
                touched.add(key)
                if step.kind == "grant" and step.detail["approvals_required"] == 0:
                    drawing.add(key)
            elif step.kind == "resolve":
                resolved[bank].append(step.event.transfer_id)
                for pool, kind, _ in step.detail:
                    touched.add((bank, pool))
                    if kind == GRANT and step.event.type == "PendingPosted":
                        drawing.add((bank, pool))
            elif step.kind == "reverse":
                reversed_ids[bank].append(step.event.reverses_transfer_id)
                for pool in step.detail:
                    touched.add((bank, pool))
                    drawing.add((bank, pool))
        self._load_holds(resolved)
        self._load_posted(reversed_ids)
        self._load_pools(touched - created, drawing)
        for key in created:
            self.pools[key] = PoolChange(ShareBook(0, {}), 0, new=True)

    def _load_holds(self, transfer_ids: dict[str, list[str]]) -> None:
        for bank, ids in transfer_ids.items():
            for row in select_in(
                self.cursor,
                "SELECT transfer_id, pool_account_id, kind, account_id, amount_minutes, month,"
                " day FROM budget_holds WHERE bank_uuid = ? AND",
                (bank,),
                "transfer_id",
                sorted(set(ids)),
            ):
                self.stored_holds[(bank, row[0], row[1])] = Hold(
                    row[2], row[3], int(row[4]), row[5], row[6]
                )

    def _load_posted(self, transfer_ids: dict[str, list[str]]) -> None:
        for bank, ids in transfer_ids.items():
            keys = sorted(set(ids))
            for row in select_in(
                self.cursor,
                "SELECT transfer_id, pool_account_id, kind, account_id, amount_minutes, month"
                " FROM budget_posted WHERE bank_uuid = ? AND",
                (bank,),
                "transfer_id",
                keys,
            ):
                self.stored_posted[(bank, row[0], row[1])] = Posted(
                    row[2], row[3], int(row[4]), row[5]
                )
            for row in select_in(
                self.cursor,
                "SELECT transfer_id, pool_account_id, account_id, minutes"
                " FROM budget_takes WHERE bank_uuid = ? AND",
                (bank,),
                "transfer_id",
                keys,
            ):
                self.stored_takes[(bank, row[0], row[1])][row[2]] = int(row[3])

    def _load_pools(self, keys: set[PoolKey], drawing: set[PoolKey]) -> None:
        by_bank: dict[str, list[str]] = defaultdict(list)
        for bank, pool in keys:
            by_bank[bank].append(pool)
        for bank, pools in by_bank.items():
            beyond = {
                row[0]: int(row[1])
                for row in select_in(
                    self.cursor,
                    "SELECT pool_account_id, beyond_shares_minutes FROM budget_pools"
                    " WHERE bank_uuid = ? AND",
                    (bank,),
                    "pool_account_id",
                    sorted(pools),
                )
            }
            shares: dict[str, dict[str, tuple[int, int]]] = {
                pool: {} for pool in pools if (bank, pool) in drawing
            }
            for row in select_in(
                self.cursor,
                "SELECT pool_account_id, account_id, contributed_minutes, left_minutes"
                " FROM budget_shares WHERE bank_uuid = ? AND",
                (bank,),
                "pool_account_id",
                sorted(shares),
            ):
                shares[row[0]][row[1]] = (int(row[2]), int(row[3]))
            for pool in pools:
                assert pool in beyond, f"pool {pool} of bank {bank} is not in budget_pools"
                book = ShareBook(beyond[pool], shares.get(pool))
                self.pools[(bank, pool)] = PoolChange(book, beyond[pool])

    # ----------------------------------------------------------------- changing

    def count(self, key: PoolKey, month: str, counter: str, minutes: int) -> None:
        self.pools[key].counters[counter] += minutes
        self.months[(*key, month)][POOL_COUNTERS.index(counter)] += minutes

    def add_hold(self, bank: str, transfer_id: str, pool: str, hold: Hold) -> None:
        key = (bank, transfer_id, pool)
        assert key not in self.new_holds, f"hold {transfer_id} of pool {pool} made twice"
        self.new_holds[key] = hold

    def take_hold(self, bank: str, transfer_id: str, pool: str) -> Hold:
        key = (bank, transfer_id, pool)
        hold = self.new_holds.pop(key, None)
        if hold is None:
            hold = self.stored_holds.pop(key, None)
            assert hold is not None, f"transfer {transfer_id} is no open hold of pool {pool}"
            self.released_holds.append(key)
        return hold

    def post(self, bank: str, transfer_id: str, pool: str, posted: Posted) -> None:
        key = (bank, transfer_id, pool)
        assert key not in self.new_posted, f"transfer {transfer_id} posted twice to {pool}"
        self.new_posted[key] = posted

    def take_posted(self, bank: str, transfer_id: str, pool: str) -> tuple[Posted, dict[str, int]]:
        """A posted contribution or grant being reversed, and what it took from the shares."""
        key = (bank, transfer_id, pool)
        posted = self.new_posted.pop(key, None)
        if posted is not None:
            return posted, self.new_takes.pop(key, {})
        posted = self.stored_posted.pop(key, None)
        assert posted is not None, f"transfer {transfer_id} was never posted to {pool}"
        self.reversed_posted.append(key)
        return posted, self.stored_takes.pop(key, {})

    # ----------------------------------------------------------------- writing

    def write(self) -> None:
        self._write_pools()
        cursor = self.cursor
        cursor.executemany(
            "INSERT INTO budget_months (bank_uuid, pool_account_id, month, contributed_minutes,"
            " granted_minutes, pledged_minutes, committed_minutes) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (bank_uuid, pool_account_id, month) DO UPDATE SET "
            + ", ".join(f"{c} = budget_months.{c} + excluded.{c}" for c in POOL_COUNTERS),
            [(*key, *deltas) for key, deltas in self.months.items()],
        )
        cursor.executemany(
            "INSERT INTO budget_usage (bank_uuid, pool_account_id, day, account_id, minutes)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (bank_uuid, pool_account_id, day, account_id)"
            " DO UPDATE SET minutes = budget_usage.minutes + excluded.minutes",
            [(*key, minutes) for key, minutes in self.usage.items()],
        )
        cursor.executemany(
            "INSERT INTO budget_shares (bank_uuid, pool_account_id, account_id,"
            " contributed_minutes, left_minutes) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (bank_uuid, pool_account_id, account_id) DO UPDATE SET"
            " contributed_minutes = budget_shares.contributed_minutes"
            " + excluded.contributed_minutes,"
            " left_minutes = budget_shares.left_minutes + excluded.left_minutes",
            [
                (*key, account_id, *change)
                for key, pool in self.pools.items()
                for account_id, change in pool.book.changes.items()
            ],
        )
        self._write_rows()

    def _write_pools(self) -> None:
        cursor = self.cursor
        cursor.executemany(
            "INSERT INTO budget_pools (bank_uuid, pool_account_id, policy, time_zone,"
            " contributed_minutes, granted_minutes, pledged_minutes, committed_minutes,"
            " beyond_shares_minutes) VALUES (?, ?, ?, ?, 0, 0, 0, 0, 0)",
            [(*key, *pool.policy) for key, pool in self.pools.items() if pool.new and pool.policy],
        )
        cursor.executemany(
            "UPDATE budget_pools SET policy = ?, time_zone = ?"
            " WHERE bank_uuid = ? AND pool_account_id = ?",
            [(*pool.policy, *key) for key, pool in self.pools.items() if pool.policy],
        )
        counters = ", ".join(f"{c} = {c} + ?" for c in (*POOL_COUNTERS, "beyond_shares_minutes"))
        cursor.executemany(
            f"UPDATE budget_pools SET {counters} WHERE bank_uuid = ? AND pool_account_id = ?",
            [
                (
                    *pool.counters.values(),
                    pool.book.beyond_shares_minutes - pool.stored_beyond_minutes,
                    *key,
                )
                for key, pool in self.pools.items()
            ],
        )

    def _write_rows(self) -> None:
        cursor = self.cursor
        cursor.executemany(
            "DELETE FROM budget_holds WHERE bank_uuid = ? AND transfer_id = ?"
            " AND pool_account_id = ?",
            self.released_holds,
        )
        insert_rows(
            cursor,
            "budget_holds",
            _HOLD_COLUMNS,
            [
                (*key, h.kind, h.account_id, h.amount_minutes, h.month, h.day)
                for key, h in self.new_holds.items()
            ],
        )
        for table in ("budget_posted", "budget_takes"):
            cursor.executemany(
                f"DELETE FROM {table} WHERE bank_uuid = ? AND transfer_id = ?"
                " AND pool_account_id = ?",
                self.reversed_posted,
            )
        insert_rows(
            cursor,
            "budget_posted",
            _POSTED_COLUMNS,
            [
                (*key, p.kind, p.account_id, p.amount_minutes, p.month)
                for key, p in self.new_posted.items()
            ],
        )
        insert_rows(
            cursor,
            "budget_takes",
            _TAKE_COLUMNS,
            [
                (*key, account_id, minutes)
                for key, takes in self.new_takes.items()
                for account_id, minutes in takes.items()
            ],
        )
