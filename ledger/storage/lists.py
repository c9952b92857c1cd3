"""The index tables' lists: accounts, transfers and banks, a page at a time (AIP-158).

Every page is one range scan of one index (for an account's transfers by state: two, as
payer and as payee, merged), however long the history: keyset pages, whose token holds the
number (opening or recording order) the next page continues from, never an offset. A filter
that the index scanned does not answer by itself (a category, the exact edges of a time
range, posted-and-not-reversed) is checked on the rows found, on at most
`list_rows_scanned_per_page_max` index entries: a page may then hold fewer items than asked
for, even none, with a token to go on (AIP-158 allows it), and its cost stays bounded.

Which index answers which list is in schema.py (`list_statements`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from ledger.domain import chain, limits
from ledger.domain.views import AccountView, BankView, TransferView
from ledger.storage import rows
from ledger.storage.schema import NOT_PLAINLY_POSTED, TIME_MARK, time_mark_every
from ledger.storage.store import LedgerStore

# A time range's edges are exact to within time_mark_every transfers: a page scans past them.
assert limits.list_rows_scanned_per_page_max > time_mark_every

# Above every number a page can start below (numbers stay inside a signed 64-bit integer).
number_max = 2**62
# What each transfer state is in the tables: its status, and posted ones told apart by
# whether a reversal undid them.
transfer_states = ("pending", "posted", "voided", "expired", "reversed")
_marked_status = {"pending": "pending", "voided": "voided", "expired": "expired"}
_marked_status["reversed"] = "posted"  # in the marked indexes, a posted one was reversed
_SIDE_COLUMNS = {"payer": "payer_account_id", "payee": "payee_account_id"}


@dataclass(frozen=True, slots=True)
class TransferQuery:
    """Which transfers a list holds. None: no filter of that kind."""

    # The account whose transfers (as payer, payee or either) are listed; None: the bank's.
    account_id: str | None = None
    sides: tuple[str, ...] = ("payer", "payee")
    state: str | None = None  # one of transfer_states
    category: str | None = None
    created_from: datetime | None = None  # included
    created_before: datetime | None = None  # excluded

    def __post_init__(self) -> None:
        assert self.state is None or self.state in transfer_states, self.state
        assert self.sides, "a list has at least one side"
        assert set(self.sides) <= set(_SIDE_COLUMNS), self.sides
        if self.account_id is None:
            assert self.sides == ("payer", "payee"), "a bank's list has no side"


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """Items of one page, where the next starts (None: this is the last), and the total."""

    items: list[T]
    next_number: int | None
    total_size: int | None


@dataclass(frozen=True, slots=True)
class _Source:
    """A range scan of one index giving candidate transfer numbers, newest first."""

    where: str  # over ledger_transfers or ledger_account_transfers, with `?` placeholders
    params: tuple[Any, ...]
    table: str  # "ledger_transfers" or "ledger_account_transfers"


class ListReads:
    """The list reads of one store; each a few bounded index scans."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        self._table = store.dialect.table

    # ----------------------------------------------------------------- accounts

    def account(self, bank_uuid: str, account_id: str) -> AccountView | None:
        """One account with its metadata."""
        found = self._store.query(
            f"{self._account_select()} WHERE a.bank_uuid = ? AND a.account_id = ?",
            (bank_uuid, account_id),
        )
        return _account_of(found[0]) if found else None

    def accounts_page(
        self,
        bank_uuid: str,
        *,
        kind: str | None,
        status: str | None,
        after_number: int,
        size: int,
        account_count: int,
        count: bool = True,
    ) -> Page[AccountView]:
        """Accounts in the order they were opened, after the `after_number`th, filtered by
        kind and status (each answered by an index on (bank, kind, status, number))."""
        where, params = "a.bank_uuid = ?", [bank_uuid]
        for column, value in (("kind", kind), ("status", status)):
            if value is not None:
                where += f" AND a.{column} = ?"
                params.append(value)
        found = self._store.query(
            f"{self._account_select()} WHERE {where} AND a.number > ? ORDER BY a.number LIMIT ?",
            (*params, after_number, size + 1),
        )
        items = [_account_of(row) for row in found[:size]]
        more = len(found) > size
        if kind is None and status is None:
            total: int | None = account_count
        elif not count:
            total = None
        elif not more and after_number == 0:
            total = len(items)  # the whole list is this one page
        else:
            total = self._bounded_count(
                f"SELECT 1 FROM {self._table('ledger_accounts')} a WHERE {where}", params
            )
        return Page(items, found[size - 1]["number"] if more else None, total)

    def _account_select(self) -> str:
        return (
            "SELECT a.*, m.label AS metadata_label, m.tags AS metadata_tags"
            f" FROM {self._table('ledger_accounts')} a"
            f" LEFT JOIN {self._table('ledger_account_metadata')} m"
            " ON m.bank_uuid = a.bank_uuid AND m.account_id = a.account_id"
        )

    # ----------------------------------------------------------------- banks

    def banks_page(self, after_bank_id: str, size: int) -> tuple[list[BankView], bool, int | None]:
        """Every bank of the deployment, by bank id, after `after_bank_id`; whether more
        follow; and on the first page, how many there are (if at most
        list_total_size_counted_max)."""
        found = self._store.query(
            f"SELECT * FROM {self._table('ledger_banks')} WHERE bank_id > ?"
            " ORDER BY bank_id LIMIT ?",
            (after_bank_id, size + 1),
        )
        items = [rows.bank_view_of(row) for row in found[:size]]
        total = (
            self._bounded_count(f"SELECT 1 FROM {self._table('ledger_banks')}", [])
            if not after_bank_id
            else None
        )
        return items, len(found) > size, total

    # ----------------------------------------------------------------- transfers

    def transfers_page(
        self,
        bank_uuid: str,
        query: TransferQuery,
        *,
        before_number: int | None,
        size: int,
        transfer_count: int | None = None,
        count: bool = True,
    ) -> Page[TransferView]:
        """Transfers newest first, recorded before the `before_number`th. `total_size` from
        `transfer_count` for the bank's whole list, else (if `count`) a bounded count."""
        lower, upper = self._number_range(bank_uuid, query)
        before = min(number_max if before_number is None else before_number, upper)
        sources = self._sources(bank_uuid, query)
        residual, residual_params = _residual(query)
        budget = size + 1 if not residual else max(limits.list_rows_scanned_per_page_max, size + 1)
        found: list[rows.Row] = []
        frontier = lower
        for source in sources:
            matches = self._matches(
                bank_uuid, source, residual, residual_params, lower, before, budget, size + 1
            )
            found += matches
            if len(matches) > size:
                reached = int(matches[-1]["number"])  # scanned down to its (size+1)th match
            elif residual:
                reached = self._scanned_down_to(source, lower, before, budget)
            else:
                reached = lower  # the whole range was read
            frontier = max(frontier, reached)
        valid = sorted(
            (row for row in found if row["number"] >= frontier),
            key=lambda row: int(row["number"]),
            reverse=True,
        )
        items = [rows.transfer_view_of(row) for row in valid[:size]]
        if len(valid) > size:
            next_number: int | None = int(valid[size - 1]["number"])
        else:
            next_number = frontier if frontier > lower else None
        if query == TransferQuery() and transfer_count is not None:
            total: int | None = transfer_count
        elif not count:
            total = None
        elif next_number is None and before_number is None and lower == 0 and not residual:
            total = len(items)  # the whole list is this one page: counted already
        else:
            total = self._transfer_total(bank_uuid, query)
        return Page(items, next_number, total)

    def _sources(self, bank_uuid: str, query: TransferQuery) -> list[_Source]:
        state = query.state
        if state in _marked_status:
            # Few transfers are pending, voided, expired or reversed: their partial indexes.
            status = _marked_status[state]
            if query.account_id is None:
                return [
                    _Source(
                        f"bank_uuid = ? AND status = ? AND {NOT_PLAINLY_POSTED}",
                        (bank_uuid, status),
                        "ledger_transfers",
                    )
                ]
            return [
                _Source(
                    f"bank_uuid = ? AND {_SIDE_COLUMNS[side]} = ? AND status = ?"
                    f" AND {NOT_PLAINLY_POSTED}",
                    (bank_uuid, query.account_id, status),
                    "ledger_transfers",
                )
                for side in query.sides
            ]
        if query.account_id is None:
            return [_Source("bank_uuid = ?", (bank_uuid,), "ledger_transfers")]
        assert query.sides == ("payer", "payee"), "one side is listed by state only"
        return [
            _Source(
                "bank_uuid = ? AND account_id = ?",
                (bank_uuid, query.account_id),
                "ledger_account_transfers",
            )
        ]

    def _candidates(self, source: _Source, lower: int, before: int) -> tuple[str, list[Any]]:
        statement = (
            f"SELECT number FROM {self._table(source.table)}"
            f" WHERE {source.where} AND number < ? AND number > ? ORDER BY number DESC LIMIT ?"
        )
        return statement, [*source.params, before, lower]

    def _matches(
        self,
        bank_uuid: str,
        source: _Source,
        residual: str,
        residual_params: Sequence[Any],
        lower: int,
        before: int,
        budget: int,
        limit: int,
    ) -> list[rows.Row]:
        candidates, params = self._candidates(source, lower, before)
        return self._store.query(
            f"SELECT t.* FROM ({candidates}) c JOIN {self._table('ledger_transfers')} t"
            f" ON t.bank_uuid = ? AND t.number = c.number{residual}"
            " ORDER BY c.number DESC LIMIT ?",
            (*params, budget, bank_uuid, *residual_params, limit),
        )

    def _scanned_down_to(self, source: _Source, lower: int, before: int, budget: int) -> int:
        """Where a page's scan of `budget` index entries ended (`lower`: the range's end)."""
        candidates, params = self._candidates(source, lower, before)
        found = self._store.query(
            f"SELECT COUNT(*) AS scanned, MIN(number) AS lowest FROM ({candidates}) c",
            (*params, budget),
        )
        scanned = int(found[0]["scanned"])
        return int(found[0]["lowest"]) if scanned >= budget else lower

    def _number_range(self, bank_uuid: str, query: TransferQuery) -> tuple[int, int]:
        """(lower, upper): the transfers in the time range have numbers strictly between,
        found from the time marks (the exact edges are checked on the rows)."""
        lower, upper = 0, number_max
        table = self._table("ledger_transfers")
        marks = f"SELECT number FROM {table} WHERE bank_uuid = ? AND {TIME_MARK}"
        if query.created_from is not None:
            found = self._store.query(
                f"{marks} AND created_at < ? ORDER BY created_at DESC LIMIT 1",
                (bank_uuid, chain.timestamp_text(query.created_from)),
            )
            lower = int(found[0]["number"]) if found else 0
        if query.created_before is not None:
            found = self._store.query(
                f"{marks} AND created_at >= ? ORDER BY created_at LIMIT 1",
                (bank_uuid, chain.timestamp_text(query.created_before)),
            )
            upper = int(found[0]["number"]) if found else number_max
        return lower, upper

    def _transfer_total(self, bank_uuid: str, query: TransferQuery) -> int | None:
        """Exact when cheap: a bounded count of an index's range that needs no check on the
        rows; None otherwise."""
        if _residual(query)[0] or query.created_from or query.created_before:
            return None
        total = 0
        for source in self._sources(bank_uuid, query):
            count = self._bounded_count(
                f"SELECT 1 FROM {self._table(source.table)} WHERE {source.where}", source.params
            )
            if count is None:
                return None
            total += count
        return total

    def _bounded_count(self, select: str, params: Sequence[Any]) -> int | None:
        """How many rows `select` gives, if at most list_total_size_counted_max; else None."""
        cap = limits.list_total_size_counted_max
        found = self._store.query(
            f"SELECT COUNT(*) AS found FROM ({select} LIMIT ?) c", (*params, cap + 1)
        )
        count = int(found[0]["found"])
        return count if count <= cap else None


def _residual(query: TransferQuery) -> tuple[str, list[Any]]:
    """The filters checked on the rows found (" WHERE ..."), and their parameters."""
    terms: list[str] = []
    params: list[Any] = []
    if query.state == "posted":
        terms.append("t.status = 'posted' AND t.reversed_by_transfer_id = ''")
    if query.category is not None:
        terms.append("t.category = ?")
        params.append(query.category)
    if query.created_from is not None:
        terms.append("t.created_at >= ?")
        params.append(chain.timestamp_text(query.created_from))
    if query.created_before is not None:
        terms.append("t.created_at < ?")
        params.append(chain.timestamp_text(query.created_before))
    return (f" WHERE {' AND '.join(terms)}" if terms else ""), params


def _account_of(row: rows.Row) -> AccountView:
    return rows.with_metadata(rows.account_view_of(row), row)
