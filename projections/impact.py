"""The reports projection's "measure what matters" tables (issue 11), applied in its batches.

The reports projection (projections/reports.py) tells this part of every exchange it counts
and every reversal it takes back, in log order, with the month it counts in. This part sorts
them by the kinds of the two accounts:

- between *people* (both accounts of kind member or organisation): an exchange of service.
  Only these count in the people-centred figures: minutes given and received, active and
  reciprocal members, breadth, repeat pairs, newcomers' first exchange, and the minutes
  exchanged those shares are relative to;
- with a pool on either side (contributions, pledges posted, grants): only a pool flow;
- anything else (with a system or clearing account, and no pool): none of these tables.

and keeps, in the same transaction:

- report_pairs: per pair of people (lower id, higher id): exchanges between them that stand
  (posted, not reversed), in either direction. An exchange is a *repeat* when its pair
  already had one standing when it was posted ("before" is the log's order, not the service
  date's).
- report_exchange_facts: per exchange between people, the day it counts on and whether it
  was a repeat, so a reversal takes back exactly what the exchange added.
- report_partner_months: per month, member or organisation account, and partner (a member or
  organisation): exchanges, minutes given (as payee) and received (as payer). Given,
  received, reciprocity, breadth (distinct partners) and the flows between organisations and
  members are sums over it.
- report_impact_months: per month: exchanges between people and their minutes, and those of
  them that were repeats.
- report_member_days: per member and day: exchanges with people (the days a first exchange
  may move to when the earliest is reversed).
- report_member_firsts: per member: the day the account was opened (UTC), the day of its
  first standing exchange with people ('' if none) and the days between (0 if the exchange
  is dated before the opening).
- report_pool_months: per month, pool and category: transfers and minutes in and out, whoever
  the other account is.

Like the rest of the projection, a batch loads what it needs with a few bulk queries at its
end (kinds and first days of the accounts, pairs, facts of the exchanges reversed), replays
its exchanges in order in memory, and writes deltas. Every row touched is written even with
a zero delta, so the rows do not depend on how the history was cut into batches; a reversal
is sorted by the kinds of the original's accounts, so every figure is net of reversals.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TypeVar

from projections.db import Cursor, add_rows, insert_rows, select_in, upsert_rows

IMPACT_DDL = (
    "CREATE TABLE IF NOT EXISTS report_pairs ("
    " bank_id TEXT NOT NULL, lower_account_id TEXT NOT NULL, higher_account_id TEXT NOT NULL,"
    " exchanges BIGINT NOT NULL, PRIMARY KEY (bank_id, lower_account_id, higher_account_id))",
    "CREATE TABLE IF NOT EXISTS report_exchange_facts ("
    " bank_id TEXT NOT NULL, transfer_id TEXT NOT NULL, day TEXT NOT NULL,"
    " repeat_pair BIGINT NOT NULL, PRIMARY KEY (bank_id, transfer_id))",
    "CREATE TABLE IF NOT EXISTS report_partner_months ("
    " bank_id TEXT NOT NULL, month TEXT NOT NULL, account_id TEXT NOT NULL,"
    " partner_account_id TEXT NOT NULL, exchanges BIGINT NOT NULL,"
    " given_minutes BIGINT NOT NULL, received_minutes BIGINT NOT NULL,"
    " PRIMARY KEY (bank_id, month, account_id, partner_account_id))",
    "CREATE TABLE IF NOT EXISTS report_impact_months ("
    " bank_id TEXT NOT NULL, month TEXT NOT NULL, exchanges BIGINT NOT NULL,"
    " minutes BIGINT NOT NULL, repeat_exchanges BIGINT NOT NULL,"
    " repeat_minutes BIGINT NOT NULL, PRIMARY KEY (bank_id, month))",
    "CREATE TABLE IF NOT EXISTS report_member_days ("
    " bank_id TEXT NOT NULL, account_id TEXT NOT NULL, day TEXT NOT NULL,"
    " exchanges BIGINT NOT NULL, PRIMARY KEY (bank_id, account_id, day))",
    "CREATE TABLE IF NOT EXISTS report_member_firsts ("
    " bank_id TEXT NOT NULL, account_id TEXT NOT NULL, opened_on TEXT NOT NULL,"
    " first_exchange_on TEXT NOT NULL, days_to_first_exchange BIGINT NOT NULL,"
    " PRIMARY KEY (bank_id, account_id))",
    "CREATE INDEX IF NOT EXISTS report_member_firsts_by_day"
    " ON report_member_firsts (bank_id, first_exchange_on)",
    "CREATE TABLE IF NOT EXISTS report_pool_months ("
    " bank_id TEXT NOT NULL, month TEXT NOT NULL, pool_account_id TEXT NOT NULL,"
    " category TEXT NOT NULL, in_exchanges BIGINT NOT NULL, in_minutes BIGINT NOT NULL,"
    " out_exchanges BIGINT NOT NULL, out_minutes BIGINT NOT NULL,"
    " PRIMARY KEY (bank_id, month, pool_account_id, category))",
)
# The delta-written tables' keys and counters, as (name, SQL type), in their rows' order.
_TEXT = "text"
_PAIR_KEY = (("bank_id", _TEXT), ("lower_account_id", _TEXT), ("higher_account_id", _TEXT))
_PARTNER_KEY = (
    ("bank_id", _TEXT),
    ("month", _TEXT),
    ("account_id", _TEXT),
    ("partner_account_id", _TEXT),
)
_PARTNER_COUNTERS = ("exchanges", "given_minutes", "received_minutes")
_MONTH_KEY = (("bank_id", _TEXT), ("month", _TEXT))
_IMPACT_COUNTERS = ("exchanges", "minutes", "repeat_exchanges", "repeat_minutes")
_POOL_KEY = (("bank_id", _TEXT), ("month", _TEXT), ("pool_account_id", _TEXT), ("category", _TEXT))
_POOL_COUNTERS = ("in_exchanges", "in_minutes", "out_exchanges", "out_minutes")
_DAY_KEY = (("bank_id", _TEXT), ("account_id", _TEXT), ("day", _TEXT))
IMPACT_TABLES = (
    "report_pairs",
    "report_exchange_facts",
    "report_partner_months",
    "report_impact_months",
    "report_member_days",
    "report_member_firsts",
    "report_pool_months",
)

MEMBER = "member"
ORGANISATION = "organisation"
POOL = "pool"
# People: the kinds whose transfers with each other are exchanges of service, the only ones
# the people-centred figures count.
PEOPLE_KINDS = frozenset({MEMBER, ORGANISATION})

# Pairs per bulk look-up (two parameters each); chunks are padded to a power of two so
# only a handful of distinct statements are ever prepared.
pairs_per_lookup_max = 256

T = TypeVar("T")

_FIRSTS_COLUMNS = (
    ("bank_id", "text"),
    ("account_id", "text"),
    ("opened_on", "text"),
    ("first_exchange_on", "text"),
    ("days_to_first_exchange", "bigint"),
)


@dataclass(slots=True)
class _Exchange:
    """An exchange counted (sign 1) or taken back by a reversal (sign -1), in log order."""

    sign: int
    bank_id: str
    transfer_id: str
    payer_account_id: str
    payee_account_id: str
    amount_minutes: int
    category: str
    month: str
    # Known for an exchange; for a reversal, read from the exchange's facts.
    day: str = ""


@dataclass(slots=True)
class _Member:
    """A member's first standing exchange, as the batch changes it."""

    opened_on: str
    first_exchange_on: str
    stored: bool
    changed: bool = False
    # Its earliest exchange was reversed: read the new first day back from the days table.
    recount: bool = False


@dataclass(slots=True)
class _Loaded:
    kinds: dict[tuple[str, str], str] = field(default_factory=dict)
    members: dict[tuple[str, str], _Member] = field(default_factory=dict)
    pairs: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # (bank_id, transfer_id) -> (day, repeat)
    facts: dict[tuple[str, str], tuple[str, bool]] = field(default_factory=dict)


def days_between(opened_on: str, first_exchange_on: str) -> int:
    """Whole days from the opening to the first exchange; 0 for an exchange dated earlier."""
    if not first_exchange_on:
        return 0
    elapsed = date.fromisoformat(first_exchange_on) - date.fromisoformat(opened_on)
    return max(0, elapsed.days)


def _padded(items: Sequence[T], size_max: int) -> Iterable[list[T]]:
    for start in range(0, len(items), size_max):
        chunk = list(items[start : start + size_max])
        size = 1
        while size < len(chunk):
            size *= 2
        yield chunk + [chunk[-1]] * (size - len(chunk))


class ImpactBatch:
    """What one batch of the reports projection adds to the impact tables."""

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor
        self.exchanges: list[_Exchange] = []
        # Accounts opened in the batch: (bank_id, account_id) -> (kind, day opened).
        self.opened_accounts: dict[tuple[str, str], tuple[str, str]] = {}
        self.loaded = _Loaded()
        self.pair_deltas: dict[tuple[str, str, str], int] = defaultdict(int)
        self.new_facts: dict[tuple[str, str], tuple[str, bool]] = {}
        # (bank_id, month, account_id, partner) -> [exchanges, given_minutes, received_minutes]
        self.partner_months: dict[tuple[str, str, str, str], list[int]] = defaultdict(
            lambda: [0, 0, 0]
        )
        # (bank_id, month) -> [exchanges, minutes, repeat_exchanges, repeat_minutes]
        self.impact_months: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        # (bank_id, account_id, day) -> exchanges
        self.member_days: dict[tuple[str, str, str], int] = defaultdict(int)
        # (bank_id, month, pool, category) -> [in_exchanges, in_minutes, out_exchanges, out_..]
        self.pool_months: dict[tuple[str, str, str, str], list[int]] = defaultdict(
            lambda: [0, 0, 0, 0]
        )

    # ----------------------------------------------------------------- told by the reports

    def opened(self, bank_id: str, account_id: str, kind: str, day: str) -> None:
        self.opened_accounts[(bank_id, account_id)] = (kind, day)

    def exchanged(
        self,
        bank_id: str,
        transfer_id: str,
        payer_account_id: str,
        payee_account_id: str,
        amount_minutes: int,
        category: str,
        day: str,
    ) -> None:
        self.exchanges.append(
            _Exchange(
                1,
                bank_id,
                transfer_id,
                payer_account_id,
                payee_account_id,
                amount_minutes,
                category,
                day[:7],
                day,
            )
        )

    def reversed(
        self,
        bank_id: str,
        transfer_id: str,
        payer_account_id: str,
        payee_account_id: str,
        amount_minutes: int,
        category: str,
        month: str,
    ) -> None:
        """The exchange `transfer_id` (with its own payer and payee) was reversed."""
        self.exchanges.append(
            _Exchange(
                -1,
                bank_id,
                transfer_id,
                payer_account_id,
                payee_account_id,
                amount_minutes,
                category,
                month,
            )
        )

    # ----------------------------------------------------------------- at the batch's end

    def write(self) -> None:
        self._load()
        for exchange in self.exchanges:
            self._count(exchange)
        self._write()

    def _load(self) -> None:
        """Bulk look-ups, per bank: kinds and first days; then, for the exchanges between
        people, pairs and the facts of those reversed."""
        loaded = self.loaded
        for (bank_id, account_id), (kind, day) in self.opened_accounts.items():
            loaded.kinds[(bank_id, account_id)] = kind
            if kind == MEMBER:
                loaded.members[(bank_id, account_id)] = _Member(day, "", stored=False)
        accounts: dict[str, set[str]] = defaultdict(set)
        for e in self.exchanges:
            for account_id in (e.payer_account_id, e.payee_account_id):
                if (e.bank_id, account_id) not in loaded.kinds:
                    accounts[e.bank_id].add(account_id)
        for bank_id, ids in accounts.items():
            self._load_accounts(bank_id, sorted(ids))
        pairs: dict[str, set[tuple[str, str]]] = defaultdict(set)
        reversed_ids: dict[str, list[str]] = defaultdict(list)
        # A reversal of an exchange counted in this batch finds its facts in memory.
        counted = {(e.bank_id, e.transfer_id) for e in self.exchanges if e.sign > 0}
        for e in self.exchanges:
            if not self._between_people(e):
                continue
            pairs[e.bank_id].add(_pair(e.payer_account_id, e.payee_account_id))
            if e.sign < 0 and (e.bank_id, e.transfer_id) not in counted:
                reversed_ids[e.bank_id].append(e.transfer_id)
        for bank_id, keys in pairs.items():
            self._load_pairs(bank_id, sorted(keys))
        for bank_id, transfer_ids in reversed_ids.items():
            rows = select_in(
                self.cursor,
                "SELECT transfer_id, day, repeat_pair FROM report_exchange_facts"
                " WHERE bank_id = ? AND",
                (bank_id,),
                "transfer_id",
                transfer_ids,
            )
            for transfer_id, day, repeat in rows:
                loaded.facts[(bank_id, transfer_id)] = (day, bool(repeat))

    def _load_accounts(self, bank_id: str, account_ids: list[str]) -> None:
        rows = select_in(
            self.cursor,
            "SELECT a.account_id, a.kind, f.opened_on, f.first_exchange_on"
            " FROM report_accounts a LEFT JOIN report_member_firsts f"
            " ON f.bank_id = a.bank_id AND f.account_id = a.account_id WHERE a.bank_id = ? AND",
            (bank_id,),
            "a.account_id",
            account_ids,
        )
        for account_id, kind, opened_on, first_exchange_on in rows:
            key = (bank_id, account_id)
            self.loaded.kinds[key] = kind
            if kind == MEMBER:
                assert opened_on is not None, f"member {account_id} of {bank_id} has no first row"
                self.loaded.members[key] = _Member(opened_on, first_exchange_on, stored=True)

    def _load_pairs(self, bank_id: str, keys: list[tuple[str, str]]) -> None:
        for chunk in _padded(keys, pairs_per_lookup_max):
            values = ", ".join("(?, ?)" for _ in chunk)
            rows = self.cursor.query(
                "SELECT lower_account_id, higher_account_id, exchanges FROM report_pairs"
                " WHERE bank_id = ? AND (lower_account_id, higher_account_id)"
                f" IN (VALUES {values})",
                (bank_id, *(account_id for pair in chunk for account_id in pair)),
            )
            for lower, higher, exchanges in rows:
                self.loaded.pairs[(bank_id, lower, higher)] = int(exchanges)

    # ----------------------------------------------------------------- one exchange

    def _count(self, e: _Exchange) -> None:
        bank_id, sign = e.bank_id, e.sign
        amount = sign * e.amount_minutes
        payer_kind = self._kind(bank_id, e.payer_account_id)
        payee_kind = self._kind(bank_id, e.payee_account_id)
        if payer_kind == POOL:
            flows = self.pool_months[(bank_id, e.month, e.payer_account_id, e.category)]
            flows[2] += sign
            flows[3] += amount
        if payee_kind == POOL:
            flows = self.pool_months[(bank_id, e.month, e.payee_account_id, e.category)]
            flows[0] += sign
            flows[1] += amount
        if payer_kind in PEOPLE_KINDS and payee_kind in PEOPLE_KINDS:
            self._count_between_people(e, amount)

    def _count_between_people(self, e: _Exchange, amount: int) -> None:
        """An exchange of service between two members or organisations, or its reversal."""
        bank_id, sign = e.bank_id, e.sign
        pair = (bank_id, *_pair(e.payer_account_id, e.payee_account_id))
        standing = self.loaded.pairs.get(pair, 0) + self.pair_deltas[pair]
        key = (bank_id, e.transfer_id)
        if sign > 0:
            repeat = standing > 0
            assert key not in self.new_facts, f"transfer {e.transfer_id} counted twice"
            self.new_facts[key] = (e.day, repeat)
        else:
            found = self.new_facts.get(key) or self.loaded.facts.get(key)
            assert found is not None, f"no facts of reversed transfer {e.transfer_id} of {bank_id}"
            e.day, repeat = found
            assert e.day[:7] == e.month, f"transfer {e.transfer_id} counted in two months"
            assert standing > 0, f"pair of {e.transfer_id} has nothing standing to reverse"
        self.pair_deltas[pair] += sign
        month = self.impact_months[(bank_id, e.month)]
        month[0] += sign
        month[1] += amount
        if repeat:
            month[2] += sign
            month[3] += amount
        row = self.partner_months[(bank_id, e.month, e.payer_account_id, e.payee_account_id)]
        row[0] += sign
        row[2] += amount
        row = self.partner_months[(bank_id, e.month, e.payee_account_id, e.payer_account_id)]
        row[0] += sign
        row[1] += amount
        for account_id in (e.payer_account_id, e.payee_account_id):
            if self._kind(bank_id, account_id) == MEMBER:
                self._member_day(bank_id, account_id, e.day, sign)

    def _between_people(self, e: _Exchange) -> bool:
        return (
            self._kind(e.bank_id, e.payer_account_id) in PEOPLE_KINDS
            and self._kind(e.bank_id, e.payee_account_id) in PEOPLE_KINDS
        )

    def _kind(self, bank_id: str, account_id: str) -> str:
        kind = self.loaded.kinds.get((bank_id, account_id))
        assert kind is not None, f"account {account_id} of {bank_id} exchanged before it opened"
        return kind

    def _member_day(self, bank_id: str, account_id: str, day: str, sign: int) -> None:
        self.member_days[(bank_id, account_id, day)] += sign
        member = self.loaded.members[(bank_id, account_id)]
        if member.recount:
            return  # the days table decides, once this batch's days are in it
        if sign > 0 and (not member.first_exchange_on or day < member.first_exchange_on):
            member.first_exchange_on = day
            member.changed = True
        elif sign < 0 and day == member.first_exchange_on:
            # Another exchange may stand on that day or later: only the days table knows.
            member.recount = member.changed = True

    # ----------------------------------------------------------------- writing

    def _write(self) -> None:
        cursor = self.cursor
        add_rows(
            cursor,
            "report_pairs",
            (*_PAIR_KEY, ("exchanges", "bigint")),
            [name for name, _ in _PAIR_KEY],
            [(*key, delta) for key, delta in self.pair_deltas.items()],
        )
        insert_rows(
            cursor,
            "report_exchange_facts",
            ("bank_id", "transfer_id", "day", "repeat_pair"),
            [(*key, day, int(repeat)) for key, (day, repeat) in self.new_facts.items()],
            ("text", "text", "text", "bigint"),
        )
        for table, key, counters, rows in (
            ("report_partner_months", _PARTNER_KEY, _PARTNER_COUNTERS, self.partner_months),
            ("report_impact_months", _MONTH_KEY, _IMPACT_COUNTERS, self.impact_months),
            ("report_pool_months", _POOL_KEY, _POOL_COUNTERS, self.pool_months),
        ):
            add_rows(
                cursor,
                table,
                (*key, *((name, "bigint") for name in counters)),
                [name for name, _ in key],
                [(*k, *values) for k, values in rows.items()],
            )
        add_rows(
            cursor,
            "report_member_days",
            (*_DAY_KEY, ("exchanges", "bigint")),
            [name for name, _ in _DAY_KEY],
            [(*key, delta) for key, delta in self.member_days.items()],
        )
        self._write_members()

    def _write_members(self) -> None:
        members = self.loaded.members
        recount: dict[str, list[str]] = defaultdict(list)
        for (bank_id, account_id), member in members.items():
            if member.recount:
                recount[bank_id].append(account_id)
                member.first_exchange_on = ""
        for bank_id, account_ids in recount.items():
            for account_id, day in self._first_days(bank_id, sorted(account_ids)):
                members[(bank_id, account_id)].first_exchange_on = day
        rows = [
            (
                bank_id,
                account_id,
                m.opened_on,
                m.first_exchange_on,
                days_between(m.opened_on, m.first_exchange_on),
            )
            for (bank_id, account_id), m in members.items()
            if m.changed or not m.stored
        ]
        upsert_rows(self.cursor, "report_member_firsts", _FIRSTS_COLUMNS, _KEY, rows)

    def _first_days(self, bank_id: str, account_ids: list[str]) -> list[tuple[str, str]]:
        """After this batch's days are written: each member's earliest day on which an
        exchange stands (members with none are left out)."""
        found: list[tuple[str, str]] = []
        for chunk in _padded(account_ids, pairs_per_lookup_max):
            marks = ", ".join("?" for _ in chunk)
            found.extend(
                self.cursor.query(
                    "SELECT account_id, MIN(day) FROM report_member_days"
                    f" WHERE bank_id = ? AND exchanges > 0 AND account_id IN ({marks})"
                    " GROUP BY account_id",
                    (bank_id, *chunk),
                )
            )
        return found


_KEY = ("bank_id", "account_id")


def _pair(first: str, second: str) -> tuple[str, str]:
    assert first != second, f"an exchange of {first} with itself"
    return (first, second) if first < second else (second, first)
