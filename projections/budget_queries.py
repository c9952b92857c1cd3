"""Reads of the "budgets" projection (projections/budgets.py), in plain SQL.

A pool's budget is read with two statements: its policy (for its time zone and cap), then
every figure in one statement, so the totals, months, cap usage and shares it shows are of
one consistent state of the view even while the runner applies a batch.

Stock figures are as of the view's position: the balance (contributed - granted), pledged
(open pledges), committed (open grant requests), remaining (balance - committed), cap usage
and shares. Flow figures are per calendar month of the pool's time zone over the period
asked for (validated as GetBankReport's), net of reversals. The runway is remaining divided
by the average granted per month over the last three complete months (before the one `now`
falls in, in the pool's time zone); None when nothing was granted in them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from ledger.domain.bank import bank_uuid
from ledger.domain.commands import check_id
from ledger.domain.pool_policy import PoolPolicy
from projections.db import Row, ViewDatabase
from projections.report_queries import report_months

members_per_budget_max = 1_000
contributors_per_budget_max = 1_000
# The runway averages the grants of this many complete months.
runway_months_averaged = 3


@dataclass(frozen=True, slots=True)
class BudgetMonth:
    month: str
    contributed_minutes: int
    granted_minutes: int
    # Pledges made in the month, and grant requests made in it, that are still open.
    pledged_minutes: int
    committed_minutes: int


@dataclass(frozen=True, slots=True)
class MemberUsage:
    account_id: str
    # Granted, or reserved by open requests, in the cap period.
    used_minutes: int
    # What the cap still allows; None: the pool has no cap.
    left_minutes: int | None


@dataclass(frozen=True, slots=True)
class ContributorShare:
    account_id: str
    contributed_minutes: int
    used_minutes: int
    left_minutes: int


@dataclass(frozen=True, slots=True)
class PoolBudget:
    pool_account_id: str
    time_zone: str
    # The day `now` falls on in the pool's time zone (the cap period and runway are its).
    today: date
    contributed_minutes: int
    granted_minutes: int
    balance_minutes: int
    pledged_minutes: int
    committed_minutes: int
    remaining_minutes: int
    # Granted past what the shares held (the pool's debt; budget_shares.py).
    beyond_shares_minutes: int
    recent_granted_minutes: int
    runway_months: float | None
    months: list[BudgetMonth]
    cap_minutes: int | None
    cap_period: str
    cap_period_first_day: date
    # The members with usage in the cap period, most used first (at most
    # members_per_budget_max), and how many there are.
    members: list[MemberUsage]
    members_total: int
    # The contributors, most contributed first (at most contributors_per_budget_max).
    contributors: list[ContributorShare]
    contributors_total: int


def cap_period_first_day(policy: PoolPolicy, today: date) -> date:
    """The first day of the cap period `today` is in (PoolPolicy.in_period's window)."""
    if policy.cap_period == "calendar_month":
        return today.replace(day=1)
    if policy.cap_period == "calendar_week":
        return today - timedelta(days=today.weekday())
    return today - timedelta(days=policy.cap_period_days - 1)


def _month_before(month: str, count: int) -> str:
    number = int(month[:4]) * 12 + int(month[5:7]) - 1 - count
    return f"{number // 12:04d}-{number % 12 + 1:02d}"


def pool_budget(
    views: ViewDatabase,
    bank_id: str,
    pool_account_id: str,
    from_month: str,
    to_month: str,
    now: datetime,
) -> PoolBudget | None:
    """A pool's budget over [from_month, to_month]; None if the view has no such pool."""
    check_id("bank_id", bank_id)
    check_id("pool_account_id", pool_account_id)
    months = report_months(from_month, to_month)
    bank = str(bank_uuid(bank_id))
    found = views.query(
        "SELECT policy FROM budget_pools WHERE bank_uuid = ? AND pool_account_id = ?",
        (bank, pool_account_id),
    )
    if not found:
        return None
    policy = PoolPolicy.of_json(json.loads(found[0][0]))
    today = policy.local_day(now)
    current = f"{today.year:04d}-{today.month:02d}"
    recent = (_month_before(current, runway_months_averaged), _month_before(current, 1))
    first_day = cap_period_first_day(policy, today)
    rows = _figures(views, bank, pool_account_id, months, recent, first_day, today)
    return _budget(pool_account_id, policy, today, months, recent, first_day, rows)


def _figures(
    views: ViewDatabase,
    bank: str,
    pool: str,
    months: list[str],
    recent: tuple[str, str],
    first_day: date,
    today: date,
) -> list[Row]:
    """Every figure in one statement: (part, key, five numbers) rows."""
    pool_key = "bank_uuid = ? AND pool_account_id = ?"
    used = (
        f"SELECT account_id, SUM(minutes) AS used FROM budget_usage WHERE {pool_key}"
        " AND day >= ? AND day <= ? GROUP BY account_id HAVING SUM(minutes) > 0"
    )
    shares = (
        "SELECT account_id, contributed_minutes, left_minutes FROM budget_shares"
        f" WHERE {pool_key} AND (contributed_minutes > 0 OR left_minutes > 0)"
    )
    days = (first_day.isoformat(), today.isoformat())
    return views.query(
        "SELECT 0, '', contributed_minutes, granted_minutes, pledged_minutes,"
        f" committed_minutes, beyond_shares_minutes FROM budget_pools WHERE {pool_key}"
        " UNION ALL"
        " SELECT 1, month, contributed_minutes, granted_minutes, pledged_minutes,"
        f" committed_minutes, 0 FROM budget_months WHERE {pool_key}"
        " AND ((month >= ? AND month <= ?) OR (month >= ? AND month <= ?))"
        " UNION ALL"
        f" SELECT 2, u.account_id, u.used, 0, 0, 0, 0 FROM ({used}"
        " ORDER BY SUM(minutes) DESC, account_id LIMIT ?) u"
        " UNION ALL"
        f" SELECT 3, '', COUNT(*), 0, 0, 0, 0 FROM ({used}) n"
        " UNION ALL"
        " SELECT 4, s.account_id, s.contributed_minutes, s.left_minutes, 0, 0, 0"
        f" FROM ({shares} ORDER BY contributed_minutes DESC, account_id LIMIT ?) s"
        " UNION ALL"
        f" SELECT 5, '', COUNT(*), 0, 0, 0, 0 FROM ({shares}) c",
        (
            *(bank, pool),
            *(bank, pool, months[0], months[-1], *recent),
            *(bank, pool, *days, members_per_budget_max),
            *(bank, pool, *days),
            *(bank, pool, contributors_per_budget_max),
            *(bank, pool),
        ),
    )


def _budget(
    pool: str,
    policy: PoolPolicy,
    today: date,
    months: list[str],
    recent: tuple[str, str],
    first_day: date,
    rows: list[Row],
) -> PoolBudget | None:
    parts: dict[int, list[tuple[str, list[int]]]] = {part: [] for part in range(6)}
    for row in rows:
        parts[int(row[0])].append((str(row[1]), [int(value) for value in row[2:]]))
    if not parts[0]:
        return None  # dropped since its policy was read: the view is being rebuilt
    contributed, granted, pledged, committed, beyond = parts[0][0][1]
    by_month = dict(parts[1])
    recent_granted = sum(
        figures[1] for month, figures in by_month.items() if recent[0] <= month <= recent[1]
    )
    balance = contributed - granted
    remaining = balance - committed
    runway = None
    if recent_granted > 0:
        runway = max(remaining, 0) * runway_months_averaged / recent_granted
    cap = policy.cap_minutes
    members = [
        MemberUsage(account, figures[0], None if cap is None else max(0, cap - figures[0]))
        for account, figures in parts[2]
    ]
    # Ties are ordered by code point, whatever the database's collation.
    members.sort(key=lambda usage: (-usage.used_minutes, usage.account_id))
    contributors = [
        ContributorShare(account, figures[0], figures[0] - figures[1], figures[1])
        for account, figures in parts[4]
    ]
    contributors.sort(key=lambda share: (-share.contributed_minutes, share.account_id))
    return PoolBudget(
        pool_account_id=pool,
        time_zone=policy.time_zone,
        today=today,
        contributed_minutes=contributed,
        granted_minutes=granted,
        balance_minutes=balance,
        pledged_minutes=pledged,
        committed_minutes=committed,
        remaining_minutes=remaining,
        beyond_shares_minutes=beyond,
        recent_granted_minutes=recent_granted,
        runway_months=runway,
        months=[BudgetMonth(month, *by_month.get(month, [0, 0, 0, 0])[:4]) for month in months],
        cap_minutes=cap,
        cap_period=policy.cap_period,
        cap_period_first_day=first_day,
        members=members,
        members_total=parts[3][0][1][0],
        contributors=contributors,
        contributors_total=parts[5][0][1][0],
    )
