"""Reads of the "reports" projection (projections/reports.py), in plain SQL.

Every function validates its input (raising InvalidInput with the caller's field names) and
returns frozen dataclasses. Each report is one SQL statement, so it sees one consistent
state of the view even while the runner is applying a batch.

Figures are net of reversals: a reversal takes its original's exchange back out of the
original's month, category and accounts. Months are 'YYYY-MM'; a period is inclusive and at
most `months_per_report_max` long. These functions do not check that the bank exists (an
unknown bank has no rows); `bank_totals` returns None for a bank the view has not seen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from ledger.domain.commands import ACCOUNT_KINDS, check_id
from ledger.domain.errors import InvalidInput
from projections.db import Row, ViewDatabase

months_per_report_max = 120
categories_per_report_max = 1_000
category_months_per_report_max = 10_000

ACCOUNT_STATUSES = ("open", "frozen", "closed")
_MEMBER_KIND = "member"
_month_re = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")


@dataclass(frozen=True, slots=True)
class AccountCounts:
    """How many accounts of one kind a bank has, by status."""

    kind: str
    open: int
    frozen: int
    closed: int

    @property
    def total(self) -> int:
        return self.open + self.frozen + self.closed


@dataclass(frozen=True, slots=True)
class BankTotals:
    bank_id: str
    name: str
    created_at: datetime
    # The bank's latest event these figures include, and when it was recorded.
    position: int
    updated_at: datetime
    # Every account kind the ledger knows (and any other kind seen), in a fixed order.
    accounts: tuple[AccountCounts, ...]
    immediate_transfers: int
    pending_transfers: int
    pending_posted: int
    pending_voided: int
    pending_expired: int
    reversals: int
    # Immediate transfers and posted pendings, minus reversals.
    transfers_posted: int
    # Posted minutes (a partial post counts what it posted), net of reversals.
    minutes_exchanged: int
    reversed_minutes: int
    holds_open: int
    holds_open_minutes: int
    # The zero-sum check: the sum of every account's posted balance (must be 0).
    balance_sum_minutes: int
    # Minutes in circulation: the sum of the positive balances.
    circulation_minutes: int

    @property
    def zero_sum_ok(self) -> bool:
        return self.balance_sum_minutes == 0

    @property
    def accounts_total(self) -> int:
        return sum(counts.total for counts in self.accounts)


@dataclass(frozen=True, slots=True)
class MonthRow:
    month: str
    exchanges: int
    minutes: int
    # Member accounts with at least one exchange (net of reversals) in the month.
    active_members: int


@dataclass(frozen=True, slots=True)
class CategoryRow:
    # "" for exchanges recorded without a category.
    category: str
    exchanges: int
    minutes: int


@dataclass(frozen=True, slots=True)
class CategoryMonthRow:
    month: str
    category: str
    exchanges: int
    minutes: int


@dataclass(frozen=True, slots=True)
class AccountMonthRow:
    month: str
    exchanges: int
    # As payee: minutes of help this account gave.
    given_minutes: int
    # As payer: minutes of help this account received.
    received_minutes: int


# ----------------------------------------------------------------- validation


def _month_number(field: str, value: str) -> int:
    match = _month_re.fullmatch(value)
    if match is None or int(match[1]) == 0:
        raise InvalidInput("INVALID_MONTH", f"{field} must be a month as YYYY-MM", field=field)
    return int(match[1]) * 12 + int(match[2]) - 1


def _month_name(number: int) -> str:
    return f"{number // 12:04d}-{number % 12 + 1:02d}"


def report_months(from_month: str, to_month: str) -> list[str]:
    """Every month of the inclusive period, after checking it (InvalidInput if it is bad)."""
    start = _month_number("from_month", from_month)
    end = _month_number("to_month", to_month)
    if end < start:
        raise InvalidInput(
            "INVALID_MONTH_RANGE", "to_month must not be before from_month", field="to_month"
        )
    if end - start + 1 > months_per_report_max:
        raise InvalidInput(
            "MONTH_RANGE_TOO_LARGE",
            f"a report covers at most {months_per_report_max} months",
            field="to_month",
        )
    return [_month_name(number) for number in range(start, end + 1)]


def _check_limit(limit: int, limit_max: int) -> None:
    assert 0 < limit <= limit_max, f"limit {limit} is outside 1..{limit_max}"


# ----------------------------------------------------------------- bank totals


def bank_totals(views: ViewDatabase, bank_id: str) -> BankTotals | None:
    """A bank's totals and zero-sum check; None if the view has not seen the bank."""
    check_id("bank_id", bank_id)
    rows = views.query(
        "SELECT b.name, b.created_at, b.position, b.updated_at, b.immediate_transfers,"
        " b.pending_transfers, b.pending_posted, b.pending_voided, b.pending_expired,"
        " b.reversals, b.posted_minutes, b.reversed_minutes, b.held_minutes,"
        " a.kind, a.status, a.accounts, a.balance_minutes, a.positive_minutes"
        " FROM report_banks b LEFT JOIN ("
        "  SELECT bank_id, kind, status, COUNT(*) AS accounts,"
        "  SUM(balance_minutes) AS balance_minutes,"
        "  SUM(CASE WHEN balance_minutes > 0 THEN balance_minutes ELSE 0 END)"
        "  AS positive_minutes"
        "  FROM report_accounts WHERE bank_id = ? GROUP BY bank_id, kind, status"
        " ) a ON a.bank_id = b.bank_id WHERE b.bank_id = ?",
        (bank_id, bank_id),
    )
    if not rows:
        return None
    first = rows[0]
    (immediate, pending, posted, voided, expired, reversals) = (int(v) for v in first[4:10])
    posted_minutes, reversed_minutes, held_minutes = (int(v) for v in first[10:13])
    counts: dict[tuple[str, str], int] = {}
    balance_sum = circulation = 0
    for row in rows:
        if row[13] is None:
            continue  # a bank without accounts
        assert row[14] in ACCOUNT_STATUSES, f"unknown account status {row[14]!r}"
        counts[(row[13], row[14])] = int(row[15])
        balance_sum += int(row[16])
        circulation += int(row[17])
    return BankTotals(
        bank_id=bank_id,
        name=first[0],
        created_at=datetime.fromisoformat(first[1]),
        position=int(first[2]),
        updated_at=datetime.fromisoformat(first[3]),
        accounts=_account_counts(counts),
        immediate_transfers=immediate,
        pending_transfers=pending,
        pending_posted=posted,
        pending_voided=voided,
        pending_expired=expired,
        reversals=reversals,
        transfers_posted=immediate + posted - reversals,
        minutes_exchanged=posted_minutes - reversed_minutes,
        reversed_minutes=reversed_minutes,
        holds_open=pending - posted - voided - expired,
        holds_open_minutes=held_minutes,
        balance_sum_minutes=balance_sum,
        circulation_minutes=circulation,
    )


def _account_counts(counts: dict[tuple[str, str], int]) -> tuple[AccountCounts, ...]:
    kinds = list(ACCOUNT_KINDS) + sorted({kind for kind, _ in counts} - set(ACCOUNT_KINDS))
    return tuple(
        AccountCounts(kind, *(counts.get((kind, status), 0) for status in ACCOUNT_STATUSES))
        for kind in kinds
    )


# ----------------------------------------------------------------- periods


def active_members(views: ViewDatabase, bank_id: str, from_month: str, to_month: str) -> int:
    """Member accounts with at least one exchange (net of reversals) in the period."""
    check_id("bank_id", bank_id)
    months = report_months(from_month, to_month)
    rows = views.query(
        "SELECT COUNT(DISTINCT m.account_id) FROM report_account_months m"
        " JOIN report_accounts a ON a.bank_id = m.bank_id AND a.account_id = m.account_id"
        " WHERE m.bank_id = ? AND m.month >= ? AND m.month <= ? AND m.exchanges > 0"
        " AND a.kind = ?",
        (bank_id, months[0], months[-1], _MEMBER_KIND),
    )
    return int(rows[0][0])


def monthly_report(
    views: ViewDatabase, bank_id: str, from_month: str, to_month: str
) -> list[MonthRow]:
    """One row per month of the period (months without exchanges included, as zeros)."""
    check_id("bank_id", bank_id)
    months = report_months(from_month, to_month)
    first, last = months[0], months[-1]
    rows = views.query(
        "SELECT month, 0, SUM(exchanges), SUM(minutes) FROM report_category_months"
        " WHERE bank_id = ? AND month >= ? AND month <= ? GROUP BY month"
        " UNION ALL"
        " SELECT m.month, 1, COUNT(*), 0 FROM report_account_months m"
        " JOIN report_accounts a ON a.bank_id = m.bank_id AND a.account_id = m.account_id"
        " WHERE m.bank_id = ? AND m.month >= ? AND m.month <= ? AND m.exchanges > 0"
        " AND a.kind = ? GROUP BY m.month",
        (bank_id, first, last, bank_id, first, last, _MEMBER_KIND),
    )
    exchanges: dict[str, tuple[int, int]] = {}
    active: dict[str, int] = {}
    for month, part, count, minutes in rows:
        if int(part) == 0:
            exchanges[month] = (int(count), int(minutes))
        else:
            active[month] = int(count)
    return [
        MonthRow(month, *exchanges.get(month, (0, 0)), active.get(month, 0)) for month in months
    ]


def category_report(
    views: ViewDatabase,
    bank_id: str,
    from_month: str,
    to_month: str,
    *,
    limit: int = categories_per_report_max,
) -> list[CategoryRow]:
    """Exchanges and minutes per category over the period, most minutes first (at most limit)."""
    check_id("bank_id", bank_id)
    _check_limit(limit, categories_per_report_max)
    months = report_months(from_month, to_month)
    rows = views.query(
        "SELECT category, SUM(exchanges), SUM(minutes) FROM report_category_months"
        " WHERE bank_id = ? AND month >= ? AND month <= ? GROUP BY category"
        " HAVING SUM(exchanges) > 0 ORDER BY SUM(minutes) DESC, category LIMIT ?",
        (bank_id, months[0], months[-1], limit),
    )
    result = [CategoryRow(category, int(count), int(minutes)) for category, count, minutes in rows]
    # Ties are ordered by the category's code points, whatever the database's collation.
    result.sort(key=lambda row: (-row.minutes, row.category))
    return result


def category_monthly_report(
    views: ViewDatabase,
    bank_id: str,
    from_month: str,
    to_month: str,
    *,
    limit: int = category_months_per_report_max,
) -> list[CategoryMonthRow]:
    """Exchanges and minutes per month and category (only where there were exchanges)."""
    check_id("bank_id", bank_id)
    _check_limit(limit, category_months_per_report_max)
    months = report_months(from_month, to_month)
    rows = views.query(
        "SELECT month, category, exchanges, minutes FROM report_category_months"
        " WHERE bank_id = ? AND month >= ? AND month <= ? AND exchanges > 0"
        " ORDER BY month, category LIMIT ?",
        (bank_id, months[0], months[-1], limit),
    )
    result = [CategoryMonthRow(row[0], row[1], int(row[2]), int(row[3])) for row in rows]
    result.sort(key=lambda row: (row.month, row.category))
    return result


def account_report(
    views: ViewDatabase, bank_id: str, account_id: str, from_month: str, to_month: str
) -> list[AccountMonthRow]:
    """One account's exchanges and minutes given and received, per month with exchanges."""
    check_id("bank_id", bank_id)
    check_id("account_id", account_id)
    months = report_months(from_month, to_month)
    rows: list[Row] = views.query(
        "SELECT month, exchanges, given_minutes, received_minutes FROM report_account_months"
        " WHERE bank_id = ? AND account_id = ? AND month >= ? AND month <= ?"
        " AND exchanges > 0 ORDER BY month",
        (bank_id, account_id, months[0], months[-1]),
    )
    result = [AccountMonthRow(row[0], int(row[1]), int(row[2]), int(row[3])) for row in rows]
    result.sort(key=lambda row: row.month)
    return result
