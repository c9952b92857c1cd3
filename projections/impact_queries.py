"""Reads of the reports projection's "measure what matters" tables (projections/impact.py).

Beside report_queries.py and with its rules: months are 'YYYY-MM', a period is inclusive and
at most `months_per_report_max` long (InvalidInput otherwise, naming the caller's field),
figures are net of reversals, and each read is one SQL statement, so it sees one consistent
state of the view. There are no floats: shares are in basis points (1/10,000), means and
medians in hundredths, each rounded to the nearest (halves up).

An *exchange* here is a transfer between people: both accounts are members or organisations
(kinds `member`, `organisation`). Only exchanges count in the people-centred figures: minutes
given and received, active and reciprocal members, breadth, repeat pairs, newcomers and the
minutes exchanged. A transfer with a pool on either side (a contribution, a posted pledge, a
grant) counts only in the pool flows (by pool and category); one with a system or clearing
account and no pool counts in none of these figures. So a member who only gives to a pool
and is granted minutes by one is not active, gave nothing and received nothing here.

A member is *active* in a span with an exchange that stands in it; *reciprocal* when over
the span it both gave (was paid, as payee) and received (paid, as payer) minutes in
exchanges; its *breadth* is how many distinct members and organisations it exchanged with. A
*newcomer* of a span is a member whose first standing exchange counts on a day of it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ledger.application import pages
from ledger.domain import limits
from ledger.domain.commands import check_id
from projections.db import Row, ViewDatabase
from projections.report_queries import report_months

organisations_per_report_max = 1_000
pool_flows_per_report_max = 1_000
_token_kind = "impact"
_token_length_max = 4 * (limits.id_length_max + 32) // 3 + 4
# A token continues after (month, account id): "YYYY-MM <id>".
_token_re = re.compile(r"([0-9]{4}-[0-9]{2}) ([A-Za-z0-9][A-Za-z0-9._:-]{0,63})")


@dataclass(frozen=True, slots=True)
class ImpactFigures:
    """A bank's figures over one month, or (month '') over the whole period."""

    month: str
    active_members: int
    reciprocal_members: int
    # Minutes of exchanges (between members and organisations).
    exchanged_minutes: int
    # Minutes of exchanges whose two accounts had one standing before (log order).
    repeat_pair_minutes: int
    # Distinct partners of every active member, added up, and their median.
    partners_total: int
    partners_median_hundredths: int
    newcomers: int
    days_to_first_exchange_median_hundredths: int
    # Paid by organisations to members (help members gave them), and by members to them.
    organisation_to_member_minutes: int
    member_to_organisation_minutes: int
    # Minutes paid into pools and out of them, whoever the other account is.
    pool_in_minutes: int
    pool_out_minutes: int

    @property
    def reciprocal_members_share_basis_points(self) -> int:
        return _ratio(self.reciprocal_members * 10_000, self.active_members)

    @property
    def repeat_pair_minutes_share_basis_points(self) -> int:
        return _ratio(self.repeat_pair_minutes * 10_000, self.exchanged_minutes)

    @property
    def partners_mean_hundredths(self) -> int:
        return _ratio(self.partners_total * 100, self.active_members)


@dataclass(frozen=True, slots=True)
class OrganisationFlows:
    """What one organisation put in (paid to members) and what came back (members paid it)."""

    account_id: str
    to_members_minutes: int
    from_members_minutes: int


@dataclass(frozen=True, slots=True)
class PoolFlows:
    """Minutes into and out of one pool in one category ('' for none) over the period."""

    pool_account_id: str
    category: str
    in_exchanges: int
    in_minutes: int
    out_exchanges: int
    out_minutes: int


@dataclass(frozen=True, slots=True)
class ImpactSummary:
    from_month: str
    to_month: str
    period: ImpactFigures
    months: list[ImpactFigures]
    # Most minutes (to and from members) first, ties by id; at most 1,000.
    organisations: list[OrganisationFlows]
    # By pool, then category; at most 1,000.
    pools: list[PoolFlows]


@dataclass(frozen=True, slots=True)
class AccountImpact:
    """One member's or organisation's month (only months with an exchange that stands):
    its exchanges with members and organisations, never its transfers with pools or system
    accounts."""

    month: str
    account_id: str
    kind: str
    exchanges: int
    given_minutes: int
    received_minutes: int
    partners: int
    # Organisations only (0 for members): paid to members, and paid by members.
    to_members_minutes: int
    from_members_minutes: int
    # Members only ('' and 0 for organisations); first_exchange_on '' if none stands.
    opened_on: str
    first_exchange_on: str
    days_to_first_exchange: int

    @property
    def reciprocal(self) -> bool:
        return self.given_minutes > 0 and self.received_minutes > 0

    @property
    def newcomer(self) -> bool:
        """This month holds the member's first exchange."""
        return self.first_exchange_on[:7] == self.month


def _ratio(numerator: int, denominator: int) -> int:
    """numerator / denominator to the nearest integer (halves up); 0 over nothing."""
    return (2 * numerator + denominator) // (2 * denominator) if denominator else 0


def median_hundredths(histogram: Mapping[int, int]) -> int:
    """The median of values given as value -> how many, times 100; 0 for none."""
    count = sum(histogram.values())
    if count == 0:
        return 0
    wanted = ((count - 1) // 2, count // 2)  # the middle one, or the middle two
    found: list[int] = []
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        while len(found) < 2 and seen > wanted[len(found)]:
            found.append(value)
    return (found[0] + found[1]) * 50


# ----------------------------------------------------------------- the summary

# One statement of parts, each row (part, month, key, key2, n1, n2, n3, n4). `{m}` binds
# (bank, first month, last month), `{d}` (bank, first day, last day). report_partner_months
# holds exchanges between people only, so every member with a row there is active.
_MEMBER_PARTNERS = (
    " FROM report_partner_months p JOIN report_accounts a"
    " ON a.bank_id = p.bank_id AND a.account_id = p.account_id"
    " WHERE p.bank_id = ? AND p.month >= ? AND p.month <= ? AND p.exchanges > 0"
    " AND a.kind = 'member'"
)
_RECIPROCAL = "SUM(CASE WHEN t.g > 0 AND t.r > 0 THEN 1 ELSE 0 END)"
_SUMMARY_PARTS = (
    # 1: active and reciprocal members per month.
    (
        f"SELECT 1, t.month, '', '', COUNT(*), {_RECIPROCAL}, 0, 0 FROM ("
        " SELECT p.month, p.account_id, SUM(p.given_minutes) AS g,"
        f" SUM(p.received_minutes) AS r{_MEMBER_PARTNERS} GROUP BY p.month, p.account_id) t"
        " GROUP BY t.month",
        "m",
    ),
    # 2: the same over the whole period.
    (
        f"SELECT 2, '', '', '', COUNT(*), {_RECIPROCAL}, 0, 0 FROM ("
        " SELECT p.account_id, SUM(p.given_minutes) AS g, SUM(p.received_minutes) AS r"
        f"{_MEMBER_PARTNERS} GROUP BY p.account_id) t",
        "m",
    ),
    # 3: how many members had n partners, per month.
    (
        "SELECT 3, t.month, '', '', t.partners, COUNT(*), 0, 0 FROM ("
        f" SELECT p.month, p.account_id, COUNT(*) AS partners{_MEMBER_PARTNERS}"
        " GROUP BY p.month, p.account_id) t GROUP BY t.month, t.partners",
        "m",
    ),
    # 4: the same over the whole period (a partner of several months counts once).
    (
        "SELECT 4, '', '', '', t.partners, COUNT(*), 0, 0 FROM ("
        " SELECT p.account_id, COUNT(DISTINCT p.partner_account_id) AS partners"
        f"{_MEMBER_PARTNERS} GROUP BY p.account_id) t GROUP BY t.partners",
        "m",
    ),
    # 5: minutes exchanged between people per month, and those of repeats.
    (
        "SELECT 5, month, '', '', minutes, repeat_minutes, 0, 0"
        " FROM report_impact_months WHERE bank_id = ? AND month >= ? AND month <= ?",
        "m",
    ),
    # 6: how many newcomers took n days to their first exchange, per month.
    (
        "SELECT 6, SUBSTR(first_exchange_on, 1, 7), '', '', days_to_first_exchange, COUNT(*),"
        " 0, 0 FROM report_member_firsts"
        " WHERE bank_id = ? AND first_exchange_on >= ? AND first_exchange_on <= ?"
        " GROUP BY SUBSTR(first_exchange_on, 1, 7), days_to_first_exchange",
        "d",
    ),
    # 7: per organisation and month: paid to members, paid by members.
    (
        "SELECT 7, p.month, p.account_id, '', SUM(p.received_minutes), SUM(p.given_minutes),"
        " 0, 0 FROM report_partner_months p"
        " JOIN report_accounts o ON o.bank_id = p.bank_id AND o.account_id = p.account_id"
        " JOIN report_accounts q ON q.bank_id = p.bank_id"
        " AND q.account_id = p.partner_account_id"
        " WHERE p.bank_id = ? AND p.month >= ? AND p.month <= ? AND p.exchanges > 0"
        " AND o.kind = 'organisation' AND q.kind = 'member' GROUP BY p.month, p.account_id",
        "m",
    ),
    # 8: per pool and category over the period (the first 1,000 by pool and category).
    (
        "SELECT 8, '', t.pool_account_id, t.category, t.i, t.im, t.o, t.om FROM ("
        " SELECT pool_account_id, category, SUM(in_exchanges) AS i, SUM(in_minutes) AS im,"
        " SUM(out_exchanges) AS o, SUM(out_minutes) AS om FROM report_pool_months"
        " WHERE bank_id = ? AND month >= ? AND month <= ? GROUP BY pool_account_id, category"
        " HAVING SUM(in_exchanges) > 0 OR SUM(out_exchanges) > 0"
        f" ORDER BY pool_account_id, category LIMIT {pool_flows_per_report_max}) t",
        "m",
    ),
    # 9: minutes into and out of pools per month.
    (
        "SELECT 9, month, '', '', SUM(in_minutes), SUM(out_minutes), 0, 0"
        " FROM report_pool_months WHERE bank_id = ? AND month >= ? AND month <= ?"
        " GROUP BY month",
        "m",
    ),
)
_SUMMARY_SQL = " UNION ALL ".join(sql for sql, _ in _SUMMARY_PARTS)


class _Parts:
    """The summary statement's rows, sorted out by part."""

    def __init__(self, rows: Iterable[Row]) -> None:
        self.members: dict[str, tuple[int, int]] = {}
        self.partners: dict[str, dict[int, int]] = defaultdict(dict)
        self.minutes: dict[str, int] = {}
        self.repeats: dict[str, int] = {}
        self.days: dict[str, dict[int, int]] = defaultdict(dict)
        self.organisations: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
        self.pools: list[PoolFlows] = []
        self.pool_months: dict[str, tuple[int, int]] = {}
        for part, month, key, key2, *numbers in rows:
            n1, n2, n3, n4 = (int(n or 0) for n in numbers)
            part = int(part)
            if part in (1, 2):
                self.members[month] = (n1, n2)
            elif part in (3, 4):
                self.partners[month][n1] = n2
            elif part == 5:
                self.minutes[month] = n1
                self.repeats[month] = n2
            elif part == 6:
                self.days[month][n1] = n2
            elif part == 7:
                self.organisations[month][key] = (n1, n2)
            elif part == 8:
                self.pools.append(PoolFlows(key, key2, n1, n2, n3, n4))
            else:
                self.pool_months[month] = (n1, n2)

    def figures(self, month: str, months: list[str]) -> ImpactFigures:
        """One month's figures; for month '', the whole period's (its months added up)."""
        span = months if month == "" else [month]
        active, reciprocal = self.members.get(month, (0, 0))
        partners = self.partners.get(month, {})
        days: dict[int, int] = defaultdict(int)
        for m in span:
            for value, count in self.days.get(m, {}).items():
                days[value] += count
        flows = [flow for m in span for flow in self.organisations.get(m, {}).values()]
        pools = [self.pool_months.get(m, (0, 0)) for m in span]
        return ImpactFigures(
            month=month,
            active_members=active,
            reciprocal_members=reciprocal,
            exchanged_minutes=sum(self.minutes.get(m, 0) for m in span),
            repeat_pair_minutes=sum(self.repeats.get(m, 0) for m in span),
            partners_total=sum(value * count for value, count in partners.items()),
            partners_median_hundredths=median_hundredths(partners),
            newcomers=sum(days.values()),
            days_to_first_exchange_median_hundredths=median_hundredths(days),
            organisation_to_member_minutes=sum(to for to, _ in flows),
            member_to_organisation_minutes=sum(back for _, back in flows),
            pool_in_minutes=sum(into for into, _ in pools),
            pool_out_minutes=sum(out for _, out in pools),
        )

    def organisation_totals(self) -> list[OrganisationFlows]:
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for by_account in self.organisations.values():
            for account_id, (to, back) in by_account.items():
                totals[account_id][0] += to
                totals[account_id][1] += back
        rows = [OrganisationFlows(account_id, *flows) for account_id, flows in totals.items()]
        rows.sort(key=lambda r: (-(r.to_members_minutes + r.from_members_minutes), r.account_id))
        return rows[:organisations_per_report_max]


def impact_summary(
    views: ViewDatabase, bank_id: str, from_month: str, to_month: str
) -> ImpactSummary:
    """The bank's figures over the period and per month, its organisations' and pools' flows."""
    check_id("bank_id", bank_id)
    months = report_months(from_month, to_month)
    bounds = {
        "m": (bank_id, months[0], months[-1]),
        "d": (bank_id, f"{months[0]}-01", f"{months[-1]}-31"),
    }
    params = [value for _, kind in _SUMMARY_PARTS for value in bounds[kind]]
    parts = _Parts(views.query(_SUMMARY_SQL, params))
    pools = sorted(parts.pools, key=lambda row: (row.pool_account_id, row.category))
    return ImpactSummary(
        from_month=from_month,
        to_month=to_month,
        period=parts.figures("", months),
        months=[parts.figures(month, months) for month in months],
        organisations=parts.organisation_totals(),
        pools=pools,
    )


# ----------------------------------------------------------------- the accounts' months

# report_partner_months holds exchanges between people only: an account month is the sum of
# its rows with partners that stand.
_ACCOUNTS_SQL = (
    "SELECT p.month, p.account_id, a.kind, SUM(p.exchanges), SUM(p.given_minutes),"
    " SUM(p.received_minutes), COUNT(*),"
    " SUM(CASE WHEN a.kind = 'organisation' AND q.kind = 'member'"
    "  THEN p.received_minutes ELSE 0 END),"
    " SUM(CASE WHEN a.kind = 'organisation' AND q.kind = 'member'"
    "  THEN p.given_minutes ELSE 0 END),"
    " f.opened_on, f.first_exchange_on, f.days_to_first_exchange"
    " FROM report_partner_months p"
    " JOIN report_accounts a ON a.bank_id = p.bank_id AND a.account_id = p.account_id"
    " JOIN report_accounts q ON q.bank_id = p.bank_id AND q.account_id = p.partner_account_id"
    " LEFT JOIN report_member_firsts f ON f.bank_id = p.bank_id AND f.account_id = p.account_id"
    " WHERE p.bank_id = ? AND p.month >= ? AND p.month <= ? AND p.exchanges > 0"
    " AND (p.month > ? OR (p.month = ? AND p.account_id > ?))"
    " GROUP BY p.month, p.account_id, a.kind, f.opened_on, f.first_exchange_on,"
    " f.days_to_first_exchange"
    " ORDER BY p.month, p.account_id LIMIT ?"
)


def accounts_cursor(
    from_month: str, to_month: str, page_size: int, page_token: str
) -> tuple[int, tuple[str, str]]:
    """(rows in the page, the (month, account) it starts after); InvalidInput if bad."""
    size = pages.page_size(page_size)
    kind = pages.bound_kind(_token_kind, from_month, to_month)
    if not page_token:
        return size, ("", "")
    bad = pages.bad_token()
    if len(page_token) > _token_length_max:
        raise bad
    try:
        text = base64.urlsafe_b64decode(page_token + "=" * (-len(page_token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    token_kind, _, after = text.partition(":")
    found = _token_re.fullmatch(after)
    if token_kind != kind or found is None:
        raise bad
    return size, (found[1], found[2])


def _next_token(from_month: str, to_month: str, month: str, account_id: str) -> str:
    kind = pages.bound_kind(_token_kind, from_month, to_month)
    text = f"{kind}:{month} {account_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def accounts_page(
    views: ViewDatabase,
    bank_id: str,
    from_month: str,
    to_month: str,
    page_size: int = 0,
    page_token: str = "",
) -> tuple[list[AccountImpact], str]:
    """One page of member and organisation months (by month, then account id) with
    exchanges (with members and organisations) that stand, and the next page's token ('' on
    the last page)."""
    check_id("bank_id", bank_id)
    months = report_months(from_month, to_month)
    size, (after_month, after_account) = accounts_cursor(
        from_month, to_month, page_size, page_token
    )
    # One row more than the page tells whether another page follows.
    rows = views.query(
        _ACCOUNTS_SQL,
        (bank_id, months[0], months[-1], after_month, after_month, after_account, size + 1),
    )
    result = [
        AccountImpact(
            month=row[0],
            account_id=row[1],
            kind=row[2],
            exchanges=int(row[3]),
            given_minutes=int(row[4]),
            received_minutes=int(row[5]),
            partners=int(row[6]),
            to_members_minutes=int(row[7] or 0),
            from_members_minutes=int(row[8] or 0),
            opened_on=row[9] or "",
            first_exchange_on=row[10] or "",
            days_to_first_exchange=int(row[11] or 0),
        )
        for row in rows[:size]
    ]
    if len(rows) <= size:
        return result, ""
    last = result[-1]
    return result, _next_token(from_month, to_month, last.month, last.account_id)
