"""The impact figures of the reports projection ("measure what matters", issue 11) on every
store: worked examples whose every number is worked out by hand, the first exchange moving
when the earliest ones are reversed, pages of account months, and random histories whose
figures equal a model's and whose rows are the same built live, in any cut into batches,
and rebuilt from event 1.

The worked example: in March Riverside's members ana, ben and cas, the surgery (an
organisation) and a garden pool open on the 1st; in April dan and eve join on the 2nd.
Exchanges carry service dates, so each counts on a known day.

The rule every figure follows: an exchange is a transfer between two members or
organisations, and only exchanges count in the people-centred figures (active, given and
received, reciprocal, partners, repeats, newcomers, minutes exchanged). A transfer with a
pool counts only in the pool flows; one with a system account in none of the figures.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

import pytest
from conftest import Clock, MakeLedger, ledger_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.application.ledger import Ledger
from ledger.domain import limits
from ledger.domain.commands import (
    CreateBank,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    PostPending,
    ReverseTransfer,
)
from ledger.domain.errors import DomainError, InvalidInput
from projections.db import Row, ViewDatabase, open_views
from projections.impact import IMPACT_TABLES
from projections.impact_queries import (
    AccountImpact,
    ImpactFigures,
    OrganisationFlows,
    PoolFlows,
    accounts_page,
    impact_summary,
    median_hundredths,
)
from projections.reports import REPORT_TABLES, ReportsProjection
from projections.runner import ProjectionRunner

BANK = "riverside"
DEBT_MAX = -limits.limit_minutes_max
APRIL = datetime(2025, 4, 2, 10, 0, tzinfo=UTC)
MONTHS = ("2025-03", "2025-04")


@pytest.fixture
def views(store_url: str) -> Iterator[ViewDatabase]:
    database = open_views(store_url)
    yield database
    database.close()


def snapshot(views: ViewDatabase) -> dict[str, list[Row]]:
    """Every row the reports projection owns (impact tables included), sorted."""
    assert set(IMPACT_TABLES) <= set(REPORT_TABLES)
    return {table: sorted(views.query(f"SELECT * FROM {table}")) for table in REPORT_TABLES}


def all_rows(views: ViewDatabase, first: str, last: str, page_size: int) -> list[AccountImpact]:
    """Every account month of the period, page after page."""
    rows: list[AccountImpact] = []
    token = ""
    while True:
        page, token = accounts_page(views, BANK, first, last, page_size, token)
        rows.extend(page)
        if not token:
            return rows


class Bank:
    """Issues one bank's commands through the ledger."""

    def __init__(self, ledger: Ledger, bank_id: str = BANK) -> None:
        self.ledger, self.bank_id = ledger, bank_id
        ledger.create_bank(CreateBank(bank_id=bank_id, name=bank_id.title()))

    def open(self, *account_ids: str, kind: str = "member") -> None:
        lower = 0 if kind == "pool" else DEBT_MAX
        for account_id in account_ids:
            self.ledger.execute(self.bank_id, OpenAccount(account_id, kind, lower))

    def pay(
        self, transfer_id: str, payer: str, payee: str, minutes: int, day: str, category: str = ""
    ) -> None:
        command = CreateTransfer(transfer_id, payer, payee, minutes, "", category, day)
        self.ledger.execute(self.bank_id, command)

    def hold(self, transfer_id: str, payer: str, payee: str, minutes: int, day: str) -> None:
        command = CreateTransfer(transfer_id, payer, payee, minutes, "", "", day, pending=True)
        self.ledger.execute(self.bank_id, command)

    def post(self, transfer_id: str) -> None:
        self.ledger.execute(self.bank_id, PostPending(f"post-{transfer_id}", transfer_id))

    def reverse(self, transfer_id: str) -> None:
        command = ReverseTransfer(f"undo-{transfer_id}", transfer_id, reason="a mistake")
        self.ledger.execute(self.bank_id, command)


def tell_story(ledger: Ledger, clock: Clock, follow: Callable[[], object]) -> None:
    """March and April at Riverside; `follow` lets the projection catch up between steps."""
    bank = Bank(ledger)
    # March 1st: three members, the surgery and the garden pool open.
    bank.open("ana", "ben", "cas")
    bank.open("surgery", kind="organisation")
    bank.open("garden", kind="pool")
    follow()
    # March: ben and ana swap help both ways (t2 will be reversed); the surgery pays cas
    # for two hours; cas gives 40 minutes to the pool; ben pays cas; ana pays the surgery.
    bank.pay("t1", "ben", "ana", 60, "2025-03-03", "gardening")
    bank.pay("t2", "ana", "ben", 30, "2025-03-10")
    bank.pay("t3", "surgery", "cas", 120, "2025-03-05", "care")
    bank.pay("t4", "cas", "garden", 40, "2025-03-06", "garden")
    follow()
    bank.pay("t5", "ben", "cas", 20, "2025-03-20")
    bank.pay("t6", "ana", "surgery", 15, "2025-03-25")
    # April 2nd: dan and eve join.
    clock.set(APRIL)
    bank.open("dan", "eve")
    follow()
    # April: the pool grants dan 25 minutes; dan's first exchange is with ana on the 5th;
    # ben pays ana again (a repeat); cas pays the surgery (a repeat of their pair); eve's
    # only exchange is reversed; dan's hold for cas is posted.
    bank.pay("t7", "garden", "dan", 25, "2025-04-10", "garden")
    bank.pay("t8", "dan", "ana", 50, "2025-04-05")
    bank.pay("t9", "ben", "ana", 45, "2025-04-08")
    bank.pay("t10", "cas", "surgery", 30, "2025-04-09")
    follow()
    bank.pay("t11", "eve", "ben", 10, "2025-04-12")
    bank.hold("h1", "dan", "cas", 40, "2025-04-20")
    bank.post("h1")
    bank.reverse("t11")
    follow()
    # Last, March's t2 is reversed: it was a repeat (t1 stood), so March has none left.
    bank.reverse("t2")
    follow()


def figures(month: str, **values: int) -> ImpactFigures:
    """A month's figures: those given, and 0 for the rest."""
    zeros = ImpactFigures(month, *(0 for _ in range(len(ImpactFigures.__dataclass_fields__) - 1)))
    given: dict[str, Any] = dict(values)
    return replace(zeros, **given)


# Under the rule, cas's 40 minutes to the garden pool (t4) and the pool's 25-minute grant to
# dan (t7) are pool flows only: neither counts as given, received, a partner or an exchange.
MARCH = figures(
    "2025-03",
    # ana, ben and cas; only ana (gave 60, received 15) both gave and received: cas gave 140
    # but paid nobody but the pool, so is not reciprocal.
    active_members=3,
    reciprocal_members=1,
    # t1 60, t3 120, t5 20, t6 15 (t2 was reversed; t4 went to the pool).
    exchanged_minutes=215,
    # t2 was the only repeat, and it was reversed.
    repeat_pair_minutes=0,
    # ana: ben, surgery; ben: ana, cas; cas: surgery, ben (the pool is no partner).
    partners_total=6,
    partners_median_hundredths=200,
    # ana and ben on the 3rd (2 days), cas on the 5th (4 days).
    newcomers=3,
    days_to_first_exchange_median_hundredths=200,
    organisation_to_member_minutes=120,
    member_to_organisation_minutes=15,
    pool_in_minutes=40,
)
APRIL_FIGURES = figures(
    "2025-04",
    # ana, ben, cas, dan (eve's exchange was reversed); only cas gave (40, to dan) and
    # received (paid the surgery 30): dan's 25-minute grant is not given.
    active_members=4,
    reciprocal_members=1,
    # t8 50, t9 45, t10 30, h1 40 (t11 was reversed; t7 came from the pool).
    exchanged_minutes=165,
    # t9 (ana and ben had t1 and t2 standing) and t10 (cas and the surgery had t3).
    repeat_pair_minutes=75,
    # ana: dan, ben; ben: ana; cas: surgery, dan; dan: ana, cas.
    partners_total=7,
    partners_median_hundredths=200,
    # dan, on the 5th, three days after joining; eve has no exchange that stands.
    newcomers=1,
    days_to_first_exchange_median_hundredths=300,
    member_to_organisation_minutes=30,
    pool_out_minutes=25,
)
PERIOD = figures(
    "",
    active_members=4,
    # Over both months ana (gave 155, received 15) and cas (gave 180, received 30); ben and
    # dan only received.
    reciprocal_members=2,
    exchanged_minutes=380,
    repeat_pair_minutes=75,
    # ana 3 (ben, surgery, dan), ben 2 (ana, cas), cas 3 (surgery, ben, dan), dan 2 (ana, cas).
    partners_total=10,
    partners_median_hundredths=250,
    # 2, 2, 4 and 3 days: the median is 2.5.
    newcomers=4,
    days_to_first_exchange_median_hundredths=250,
    organisation_to_member_minutes=120,
    member_to_organisation_minutes=45,
    pool_in_minutes=40,
    pool_out_minutes=25,
)


def member(month: str, account_id: str, *numbers: int, opened: str, first: str) -> AccountImpact:
    exchanges, given, received, partners = numbers
    days = (date.fromisoformat(first) - date.fromisoformat(opened)).days
    return AccountImpact(
        month, account_id, "member", exchanges, given, received, partners, 0, 0, opened, first, days
    )


def organisation(month: str, *numbers: int) -> AccountImpact:
    exchanges, given, received, partners, to_members, from_members = numbers
    return AccountImpact(
        month,
        "surgery",
        "organisation",
        exchanges,
        given,
        received,
        partners,
        to_members,
        from_members,
        "",
        "",
        0,
    )


MAR1, APR2 = "2025-03-01", "2025-04-02"
ROWS = [
    # month, account: exchanges, given, received, partners
    member("2025-03", "ana", 2, 60, 15, 2, opened=MAR1, first="2025-03-03"),
    member("2025-03", "ben", 2, 0, 80, 2, opened=MAR1, first="2025-03-03"),
    # cas: t3 and t5; t4 (40 to the pool) is not in cas's month.
    member("2025-03", "cas", 2, 140, 0, 2, opened=MAR1, first="2025-03-05"),
    organisation("2025-03", 2, 15, 120, 2, 120, 15),
    member("2025-04", "ana", 2, 95, 0, 2, opened=MAR1, first="2025-03-03"),
    # t11 was counted and taken back: ben's April has t9 alone.
    member("2025-04", "ben", 1, 0, 45, 1, opened=MAR1, first="2025-03-03"),
    member("2025-04", "cas", 2, 40, 30, 2, opened=MAR1, first="2025-03-05"),
    # dan: t8 and h1; the pool's grant (t7) is not in dan's month.
    member("2025-04", "dan", 2, 0, 90, 2, opened=APR2, first="2025-04-05"),
    organisation("2025-04", 1, 30, 0, 1, 0, 30),
]


def check_story(views: ViewDatabase) -> None:
    summary = impact_summary(views, BANK, *MONTHS)
    assert summary.months == [MARCH, APRIL_FIGURES]
    assert summary.period == PERIOD
    assert summary.organisations == [OrganisationFlows("surgery", 120, 45)]
    assert summary.pools == [PoolFlows("garden", "garden", 1, 40, 1, 25)]
    assert all_rows(views, *MONTHS, page_size=0) == ROWS


# ----------------------------------------------------------------- worked examples


def test_worked_example(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views: ViewDatabase
) -> None:
    ledger = make_ledger(store_url)
    runner = ProjectionRunner(ledger.store, views, ReportsProjection())
    tell_story(ledger, clock, runner.run_until_caught_up)
    check_story(views)

    # The shares, means and medians, worked out: 1 of 3 members reciprocal in March is
    # 3,333 basis points; 75 of 165 minutes repeats in April, 4,545 (75 of 380 over the
    # period, 1,974); 2 of 4 reciprocal over the period, 5,000; means of 6/3 partners in
    # March, 7/4 in April and 10/4 over the period.
    summary = impact_summary(views, BANK, *MONTHS)
    march, april = summary.months
    assert march.reciprocal_members_share_basis_points == 3333
    assert april.reciprocal_members_share_basis_points == 2500
    assert april.repeat_pair_minutes_share_basis_points == 4545
    assert summary.period.repeat_pair_minutes_share_basis_points == 1974
    assert summary.period.reciprocal_members_share_basis_points == 5000
    assert (march.partners_mean_hundredths, april.partners_mean_hundredths) == (200, 175)
    assert summary.period.partners_mean_hundredths == 250
    newcomers = [row for row in ROWS if row.newcomer]
    assert [(r.account_id, r.days_to_first_exchange) for r in newcomers] == [
        ("ana", 2),
        ("ben", 2),
        ("cas", 4),
        ("dan", 3),
    ]
    # dan was granted 25 minutes by the pool and paid 90: not reciprocal.
    assert [row.account_id for row in ROWS if row.reciprocal and row.month == "2025-04"] == ["cas"]

    # One month alone, and a month without exchanges, which shows zeros.
    april_only = impact_summary(views, BANK, "2025-04", "2025-04")
    assert april_only.period == replace(APRIL_FIGURES, month="")
    assert april_only.organisations == [OrganisationFlows("surgery", 0, 30)]
    assert april_only.pools == [PoolFlows("garden", "garden", 0, 0, 1, 25)]
    assert impact_summary(views, BANK, "2025-05", "2025-05").months == [figures("2025-05")]
    assert all_rows(views, "2025-05", "2025-06", page_size=10) == []

    # Rebuilt from event 1, the rows are the same, and so are the figures.
    before = snapshot(views)
    runner.reset()
    runner.run_until_caught_up()
    assert snapshot(views) == before
    check_story(views)


def test_built_live_while_commands_run_equals_a_rebuild(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views: ViewDatabase
) -> None:
    # The runner follows the log in its own thread, in small batches, while the story is
    # told; then it is rebuilt in one go and in batches of one.
    ledger = make_ledger(store_url)
    runner = ProjectionRunner(ledger.store, views, ReportsProjection(), batch_max=3)
    runner.start(poll_interval_seconds=0.001)
    try:
        tell_story(ledger, clock, lambda: None)
    finally:
        runner.stop()
    runner.run_until_caught_up()
    check_story(views)
    live = snapshot(views)
    for batch_max in (1000, 1):
        rebuilt = ProjectionRunner(ledger.store, views, ReportsProjection(), batch_max=batch_max)
        rebuilt.reset()
        rebuilt.run_until_caught_up()
        assert snapshot(views) == live


def test_reversed_first_exchanges_move_the_first_day(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views: ViewDatabase
) -> None:
    ledger = make_ledger(store_url)
    runner = ProjectionRunner(ledger.store, views, ReportsProjection())
    bank = Bank(ledger)
    bank.open("fay", "gus")

    def fay() -> list[tuple[str, str, int, bool]]:
        runner.run_until_caught_up()
        rows = all_rows(views, *MONTHS, page_size=0)
        return [
            (r.month, r.first_exchange_on, r.days_to_first_exchange, r.newcomer)
            for r in rows
            if r.account_id == "fay"
        ]

    # fay's exchanges on March 4th and 9th and April 2nd; the first is on the 4th.
    bank.pay("x1", "gus", "fay", 10, "2025-03-04")
    bank.pay("x2", "fay", "gus", 10, "2025-03-09")
    bank.pay("x3", "gus", "fay", 10, "2025-04-02")
    assert fay() == [("2025-03", "2025-03-04", 3, True), ("2025-04", "2025-03-04", 3, False)]
    # The 4th is reversed: the 9th is the first.
    bank.reverse("x1")
    assert fay() == [("2025-03", "2025-03-09", 8, True), ("2025-04", "2025-03-09", 8, False)]
    # And the 9th: fay is April's newcomer, 32 days after joining.
    bank.reverse("x2")
    assert fay() == [("2025-04", "2025-04-02", 32, True)]
    summary = impact_summary(views, BANK, *MONTHS)
    assert [m.newcomers for m in summary.months] == [0, 2]
    # An exchange dated before the opening counts as 0 days; with none left, fay has no
    # first exchange and is nobody's newcomer.
    bank.pay("x4", "fay", "gus", 5, "2025-02-27")
    assert impact_summary(views, BANK, "2025-02", "2025-02").period.newcomers == 0
    runner.run_until_caught_up()
    assert impact_summary(views, BANK, "2025-02", "2025-02").period.newcomers == 2
    rows = all_rows(views, "2025-02", "2025-02", page_size=0)
    assert [(r.account_id, r.days_to_first_exchange) for r in rows] == [("fay", 0), ("gus", 0)]
    bank.reverse("x3")
    bank.reverse("x4")
    runner.run_until_caught_up()
    firsts = views.query(
        "SELECT account_id, first_exchange_on FROM report_member_firsts WHERE bank_id = ?",
        (BANK,),
    )
    assert sorted(firsts) == [("fay", ""), ("gus", "")]

    # Everything at once in one batch comes out the same.
    before = snapshot(views)
    runner.reset()
    runner.run_until_caught_up()
    assert snapshot(views) == before


def test_transfers_with_pools_and_system_accounts_are_not_exchanges(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views: ViewDatabase
) -> None:
    ledger = make_ledger(store_url)
    runner = ProjectionRunner(ledger.store, views, ReportsProjection())
    bank = Bank(ledger)
    bank.open("ida", "jo")
    bank.open("pot", kind="pool")
    bank.open("fees", kind="system")
    # ida only gives 40 minutes to the pot and is granted 25 from it; she pays the system
    # account 5 and it pays jo 7. Nobody has helped anybody.
    bank.pay("c1", "ida", "pot", 40, "2025-03-04", "garden")
    bank.pay("g1", "pot", "ida", 25, "2025-03-11", "garden")
    bank.pay("s1", "ida", "fees", 5, "2025-03-12")
    bank.pay("s2", "fees", "jo", 7, "2025-03-13")
    runner.run_until_caught_up()
    summary = impact_summary(views, BANK, "2025-03", "2025-03")
    # Not active, not reciprocal, no partner, no newcomer: only the pool flows show, both ways.
    assert summary.period == figures("", pool_in_minutes=40, pool_out_minutes=25)
    assert summary.months == [figures("2025-03", pool_in_minutes=40, pool_out_minutes=25)]
    assert summary.pools == [PoolFlows("pot", "garden", 1, 40, 1, 25)]
    assert summary.organisations == []
    assert all_rows(views, "2025-03", "2025-03", page_size=0) == []
    firsts = views.query(
        "SELECT account_id, first_exchange_on FROM report_member_firsts WHERE bank_id = ?",
        (BANK,),
    )
    assert sorted(firsts) == [("ida", ""), ("jo", "")]

    # jo then helps ida for half an hour: ida's first exchange, and she only received.
    bank.pay("e1", "ida", "jo", 30, "2025-03-20")
    # Taking the grant back changes the pool's flows alone.
    bank.reverse("g1")
    runner.run_until_caught_up()
    summary = impact_summary(views, BANK, "2025-03", "2025-03")
    assert summary.period == figures(
        "",
        active_members=2,
        exchanged_minutes=30,
        partners_total=2,
        partners_median_hundredths=100,
        newcomers=2,
        days_to_first_exchange_median_hundredths=1900,
        pool_in_minutes=40,
    )
    assert summary.pools == [PoolFlows("pot", "garden", 1, 40, 0, 0)]
    assert all_rows(views, "2025-03", "2025-03", page_size=0) == [
        member("2025-03", "ida", 1, 0, 30, 1, opened=MAR1, first="2025-03-20"),
        member("2025-03", "jo", 1, 30, 0, 1, opened=MAR1, first="2025-03-20"),
    ]

    # Rebuilt from event 1, and in batches of one, the rows are the same.
    before = snapshot(views)
    for batch_max in (1000, 1):
        rebuilt = ProjectionRunner(ledger.store, views, ReportsProjection(), batch_max=batch_max)
        rebuilt.reset()
        rebuilt.run_until_caught_up()
        assert snapshot(views) == before


def test_pages_of_account_months(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views: ViewDatabase
) -> None:
    ledger = make_ledger(store_url)
    runner = ProjectionRunner(ledger.store, views, ReportsProjection())
    tell_story(ledger, clock, runner.run_until_caught_up)

    # Pages of four: 4, 4 and 1 rows; the tokens continue where the page ended.
    page, token = accounts_page(views, BANK, *MONTHS, page_size=4)
    assert page == ROWS[:4]
    assert token
    page, token = accounts_page(views, BANK, *MONTHS, 4, token)
    assert page == ROWS[4:8]
    page, last = accounts_page(views, BANK, *MONTHS, 4, token)
    assert (page, last) == (ROWS[8:], "")
    for size in (1, 2, 9, 1000, 5000):
        assert all_rows(views, *MONTHS, page_size=size) == ROWS

    # A token is bound to its period; a made-up one, a negative size, bad months are refused.
    refused: list[tuple[Callable[[], object], str]] = [
        (lambda: accounts_page(views, BANK, "2025-03", "2025-05", 4, token), "INVALID_PAGE_TOKEN"),
        (lambda: accounts_page(views, BANK, *MONTHS, 4, "bm90LWEtdG9rZW4"), "INVALID_PAGE_TOKEN"),
        (lambda: accounts_page(views, BANK, *MONTHS, 4, "!"), "INVALID_PAGE_TOKEN"),
        (lambda: accounts_page(views, BANK, *MONTHS, -1), "INVALID_PAGE_SIZE"),
        (lambda: accounts_page(views, BANK, "2025-13", "2025-04"), "INVALID_MONTH"),
        (lambda: impact_summary(views, BANK, "2025-04", "2025-03"), "INVALID_MONTH_RANGE"),
        (lambda: impact_summary(views, BANK, "2000-01", "2025-03"), "MONTH_RANGE_TOO_LARGE"),
        (lambda: impact_summary(views, "no spaces", *MONTHS), "INVALID_ID"),
    ]
    for call, reason in refused:
        with pytest.raises(InvalidInput) as error:
            call()
        assert error.value.reason == reason


def test_medians() -> None:
    assert median_hundredths({}) == 0
    assert median_hundredths({3: 1}) == 300
    assert median_hundredths({1: 1, 2: 2, 3: 1}) == 200
    assert median_hundredths({2: 2, 3: 1, 4: 1}) == 250
    assert median_hundredths({0: 1, 7: 1}) == 350


# ----------------------------------------------------------------- random histories

ACCOUNTS = {
    "m0": "member",
    "m1": "member",
    "m2": "member",
    "o0": "organisation",
    "p0": "pool",
    "s0": "system",
}
PEOPLE = frozenset({"member", "organisation"})
DAYS = ("2025-02-27", "2025-03-01", "2025-03-15", "2025-04-01", "")


@dataclass
class Standing:
    payer: str
    payee: str
    minutes: int
    day: str
    repeat: bool


class Model:
    """What the figures must be, worked out from the transfers that stand: the people-centred
    figures from those between members and organisations, the pool flows from those with
    the pool; those with the system account count in neither."""

    def __init__(self, opened_on: str) -> None:
        self.opened_on = opened_on
        self.exchanges: dict[str, Standing] = {}
        self.pairs: dict[frozenset[str], int] = defaultdict(int)

    def exchanged(self, transfer_id: str, payer: str, payee: str, minutes: int, day: str) -> None:
        pair = frozenset((payer, payee))
        repeat = self.pairs[pair] > 0
        self.exchanges[transfer_id] = Standing(payer, payee, minutes, day, repeat)
        self.pairs[pair] += 1

    def reversed(self, transfer_id: str) -> None:
        gone = self.exchanges.pop(transfer_id)
        self.pairs[frozenset((gone.payer, gone.payee))] -= 1

    def in_span(self, months: list[str]) -> list[Standing]:
        return [e for e in self.exchanges.values() if e.day[:7] in months]

    @staticmethod
    def between_people(e: Standing) -> bool:
        return ACCOUNTS[e.payer] in PEOPLE and ACCOUNTS[e.payee] in PEOPLE

    def first_days(self) -> dict[str, str]:
        firsts: dict[str, str] = {}
        for e in filter(self.between_people, self.exchanges.values()):
            for account_id in (e.payer, e.payee):
                if ACCOUNTS[account_id] == "member":
                    firsts[account_id] = min(firsts.get(account_id, e.day), e.day)
        return firsts

    def figures(self, month: str, months: list[str]) -> ImpactFigures:
        span = self.in_span(months)
        people = [e for e in span if self.between_people(e)]
        given: dict[str, int] = defaultdict(int)
        received: dict[str, int] = defaultdict(int)
        partners: dict[str, set[str]] = defaultdict(set)
        for e in people:
            given[e.payee] += e.minutes
            received[e.payer] += e.minutes
            partners[e.payer].add(e.payee)
            partners[e.payee].add(e.payer)
        members = [a for a in partners if ACCOUNTS[a] == "member"]
        histogram: dict[int, int] = defaultdict(int)
        for account_id in members:
            histogram[len(partners[account_id])] += 1
        days: dict[int, int] = defaultdict(int)
        opened = date.fromisoformat(self.opened_on)
        for first in self.first_days().values():
            if first[:7] in months:
                days[max(0, (date.fromisoformat(first) - opened).days)] += 1

        def between(payer_kind: str, payee_kind: str) -> int:
            return sum(
                e.minutes
                for e in span
                if (ACCOUNTS[e.payer], ACCOUNTS[e.payee]) == (payer_kind, payee_kind)
            )

        return ImpactFigures(
            month=month,
            active_members=len(members),
            reciprocal_members=sum(1 for a in members if given[a] and received[a]),
            exchanged_minutes=sum(e.minutes for e in people),
            repeat_pair_minutes=sum(e.minutes for e in people if e.repeat),
            partners_total=sum(len(partners[a]) for a in members),
            partners_median_hundredths=median_hundredths(histogram),
            newcomers=sum(days.values()),
            days_to_first_exchange_median_hundredths=median_hundredths(days),
            organisation_to_member_minutes=between("organisation", "member"),
            member_to_organisation_minutes=between("member", "organisation"),
            pool_in_minutes=sum(e.minutes for e in span if ACCOUNTS[e.payee] == "pool"),
            pool_out_minutes=sum(e.minutes for e in span if ACCOUNTS[e.payer] == "pool"),
        )

    def rows(self, months: list[str]) -> list[AccountImpact]:
        """The member and organisation months, by month and account."""
        firsts = self.first_days()
        rows: list[AccountImpact] = []
        for month in months:
            numbers: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
            partners: dict[str, set[str]] = defaultdict(set)
            for e in filter(self.between_people, self.in_span([month])):
                payer, payee = numbers[e.payer], numbers[e.payee]
                payer[0] += 1
                payer[2] += e.minutes
                payee[0] += 1
                payee[1] += e.minutes
                partners[e.payer].add(e.payee)
                partners[e.payee].add(e.payer)
                if (ACCOUNTS[e.payer], ACCOUNTS[e.payee]) == ("organisation", "member"):
                    payer[3] += e.minutes
                if (ACCOUNTS[e.payer], ACCOUNTS[e.payee]) == ("member", "organisation"):
                    payee[4] += e.minutes
            for account_id in sorted(numbers):
                exchanges, given, received, to_members, from_members = numbers[account_id]
                kind = ACCOUNTS[account_id]
                opened, first, days = "", "", 0
                if kind == "member":
                    opened, first = self.opened_on, firsts[account_id]
                    days = max(0, (date.fromisoformat(first) - date.fromisoformat(opened)).days)
                rows.append(
                    AccountImpact(
                        month,
                        account_id,
                        kind,
                        exchanges,
                        given,
                        received,
                        len(partners[account_id]),
                        to_members,
                        from_members,
                        opened,
                        first,
                        days,
                    )
                )
        return rows


@dataclass(frozen=True)
class Pay:
    payer: str
    payee: str
    minutes: int
    category: str
    day: str


@dataclass(frozen=True)
class Reverse:
    # Which of the exchanges that stand (in id order, modulo how many there are).
    index: int


@dataclass(frozen=True)
class Cut:
    """The projection applies a batch (of up to three events) here."""


accounts = st.sampled_from(sorted(ACCOUNTS))
steps = st.lists(
    st.one_of(
        st.builds(
            Pay,
            accounts,
            accounts,
            st.integers(1, 30),
            st.sampled_from(("", "care", "garden")),
            st.sampled_from(DAYS),
        ),
        st.builds(Reverse, st.integers(0, 50)),
        st.just(Cut()),
    ),
    max_size=40,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=steps)
def test_random_histories_match_the_model_in_any_cut(steps: list[Pay | Reverse | Cut]) -> None:
    clock = Clock(datetime(2025, 3, 1, 9, 0, tzinfo=UTC))
    ledger = Ledger(ledger_settings("memory://"), clock=clock)
    views = open_views("memory://")
    try:
        bank = Bank(ledger)
        for account_id, kind in ACCOUNTS.items():
            bank.open(account_id, kind=kind)
        # The pool starts with something to pay out.
        bank.pay("seed", "o0", "p0", 500, "2025-03-01")
        model = Model("2025-03-01")
        model.exchanged("seed", "o0", "p0", 500, "2025-03-01")
        runner = ProjectionRunner(ledger.store, views, ReportsProjection(), batch_max=3)
        numbered = 0
        for step in steps:
            if isinstance(step, Cut):
                runner.run_once()
            elif isinstance(step, Pay):
                if step.payer == step.payee:
                    continue
                numbered += 1
                transfer_id = f"t{numbered}"
                item = CreateTransfer(
                    transfer_id, step.payer, step.payee, step.minutes, "", step.category, step.day
                )
                results = ledger.execute(BANK, CreateTransfers((item,)))
                assert isinstance(results, list)
                if results[0].error is not None:
                    continue  # the pool had too little left: nothing was recorded
                # Without a service date it counts on the day the clock says.
                day = step.day or "2025-03-01"
                model.exchanged(transfer_id, step.payer, step.payee, step.minutes, day)
            else:
                standing = sorted(t for t in model.exchanges if t != "seed")
                if not standing:
                    continue
                transfer_id = standing[step.index % len(standing)]
                try:
                    bank.reverse(transfer_id)
                except DomainError:
                    continue  # taking a contribution back would overdraw the pool
                model.reversed(transfer_id)
        runner.run_until_caught_up()

        months = ["2025-02", "2025-03", "2025-04"]
        summary = impact_summary(views, BANK, months[0], months[-1])
        assert summary.period == model.figures("", months)
        assert summary.months == [model.figures(month, [month]) for month in months]
        assert all_rows(views, months[0], months[-1], page_size=3) == model.rows(months)
        live = snapshot(views)
        rebuilt = ProjectionRunner(ledger.store, views, ReportsProjection())
        rebuilt.reset()
        rebuilt.run_until_caught_up()
        assert snapshot(views) == live
    finally:
        views.close()
        ledger.close()
