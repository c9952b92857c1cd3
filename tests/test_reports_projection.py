"""The reports projection on every store: its figures equal what the test's commands did.

A Ledger is driven through real commands in two banks: member and pool accounts, immediate
transfers (alone and in a batch), pending transfers posted in full, in part, voided and left
to expire (the test's clock passes their deadline), reversals of an immediate transfer and of
a partial post, categories, and service dates in other months than the one the ledger
records them in. A `Book` notes, beside every command, what it should do to the reports; the
projection, built by a ProjectionRunner, must show exactly that. A rebuild, and replaying the
history in batches of 1, 7 and 1000 events, must give identical rows.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from conftest import Clock, MakeLedger

from ledger.application.ledger import Ledger
from ledger.domain import limits
from ledger.domain.commands import (
    BankCommand,
    ChangeStatus,
    CreateBank,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    PostPending,
    ReverseTransfer,
    VoidPending,
)
from ledger.domain.errors import InvalidInput
from ledger.domain.views import BatchItemResult
from projections.db import Row, ViewDatabase, open_views
from projections.report_queries import (
    AccountCounts,
    AccountMonthRow,
    BankTotals,
    CategoryMonthRow,
    CategoryRow,
    MonthRow,
    account_report,
    active_members,
    bank_totals,
    category_monthly_report,
    category_report,
    monthly_report,
    months_per_report_max,
    report_months,
)
from projections.reports import REPORT_TABLES, ReportsProjection
from projections.runner import ProjectionRunner

BANK = "riverside"
OTHER_BANK = "hillside"
APRIL = datetime(2025, 4, 2, 10, 0, tzinfo=UTC)
DEBT_MAX = -limits.limit_minutes_max
STORY_MONTHS = ("2025-01", "2025-04")


@pytest.fixture
def views(store_url: str) -> Iterator[ViewDatabase]:
    """The view database of the test's store (closed before the store goes away)."""
    database = open_views(store_url)
    yield database
    database.close()


def snapshot(views: ViewDatabase) -> dict[str, list[Row]]:
    """Every row the reports projection owns, sorted the same way on every database."""
    return {table: sorted(views.query(f"SELECT * FROM {table}")) for table in REPORT_TABLES}


def month_now(clock: Clock) -> str:
    return clock().strftime("%Y-%m")


# ----------------------------------------------------------------- what the commands did


@dataclass
class Exchange:
    payer: str
    payee: str
    minutes: int
    category: str
    month: str
    reversed: bool = False


@dataclass(frozen=True)
class Hold:
    payer: str
    payee: str
    minutes: int
    category: str
    service_date: str


class Book:
    """Issues a bank's commands and notes what each should do to the reports."""

    def __init__(self, ledger: Ledger, clock: Clock, bank_id: str) -> None:
        self.ledger, self.clock, self.bank_id = ledger, clock, bank_id
        self.accounts: dict[str, list[str]] = {}  # account_id -> [kind, status]
        self.exchanges: dict[str, Exchange] = {}
        self.holds: dict[str, Hold] = {}
        self.counts: Counter[str] = Counter()
        ledger.create_bank(CreateBank(bank_id=bank_id, name=bank_id.title()))
        # When the bank's latest event was recorded: the clock stands still between steps.
        self.updated_at = clock()

    def execute(self, command: BankCommand) -> object:
        self.updated_at = self.clock()
        return self.ledger.execute(self.bank_id, command)

    def month(self, service_date: str) -> str:
        return service_date[:7] if service_date else month_now(self.clock)

    # ------------------------------------------------------------- commands

    def open(self, account_id: str, kind: str = "member", lower_limit: int = DEBT_MAX) -> None:
        self.execute(
            OpenAccount(account_id=account_id, kind=kind, lower_limit_minutes=lower_limit),
        )
        self.accounts[account_id] = [kind, "open"]

    def pay(
        self,
        transfer_id: str,
        payer: str,
        payee: str,
        minutes: int,
        category: str = "",
        service_date: str = "",
    ) -> None:
        self.execute(
            CreateTransfer(transfer_id, payer, payee, minutes, "", category, service_date),
        )
        self._paid(transfer_id, payer, payee, minutes, category, service_date)

    def pay_many(self, items: list[CreateTransfer]) -> None:
        results = self.execute(CreateTransfers(tuple(items)))
        assert isinstance(results, list)
        assert all(isinstance(r, BatchItemResult) and r.error is None for r in results)
        for item in items:
            self._paid(
                item.transfer_id,
                item.payer_account_id,
                item.payee_account_id,
                item.amount_minutes,
                item.category,
                item.service_date,
            )

    def _paid(
        self,
        transfer_id: str,
        payer: str,
        payee: str,
        minutes: int,
        category: str,
        service_date: str,
    ) -> None:
        self.counts["immediate"] += 1
        self.exchanges[transfer_id] = Exchange(
            payer, payee, minutes, category, self.month(service_date)
        )

    def hold(
        self,
        transfer_id: str,
        payer: str,
        payee: str,
        minutes: int,
        category: str = "",
        service_date: str = "",
        timeout_seconds: int = 0,
    ) -> None:
        self.execute(
            CreateTransfer(
                transfer_id,
                payer,
                payee,
                minutes,
                "",
                category,
                service_date,
                pending=True,
                timeout_seconds=timeout_seconds,
            ),
        )
        self.counts["pending"] += 1
        self.holds[transfer_id] = Hold(payer, payee, minutes, category, service_date)

    def post(self, transfer_id: str, minutes: int | None = None) -> None:
        self.execute(self.post_command(transfer_id, minutes))
        self.posted(transfer_id, minutes)

    @staticmethod
    def post_command(transfer_id: str, minutes: int | None = None) -> PostPending:
        return PostPending(f"post-{transfer_id}", transfer_id, minutes)

    def posted(self, transfer_id: str, minutes: int | None = None) -> None:
        hold = self.holds.pop(transfer_id)
        self.counts["posted"] += 1
        # Without a service date, a pending transfer counts in the month it was posted.
        self.exchanges[transfer_id] = Exchange(
            hold.payer,
            hold.payee,
            hold.minutes if minutes is None else minutes,
            hold.category,
            self.month(hold.service_date),
        )

    def void(self, transfer_id: str) -> None:
        self.execute(VoidPending(f"void-{transfer_id}", transfer_id))
        del self.holds[transfer_id]
        self.counts["voided"] += 1

    def expired(self, transfer_id: str) -> None:
        """Note that the ledger expired a hold (the writer does it once its deadline passed)."""
        assert self.ledger.get_transfer(self.bank_id, transfer_id).status == "expired"
        del self.holds[transfer_id]
        self.counts["expired"] += 1

    def reverse(self, transfer_id: str, original_id: str) -> None:
        self.execute(self.reverse_command(transfer_id, original_id))
        self.reversed(original_id)

    @staticmethod
    def reverse_command(transfer_id: str, original_id: str) -> ReverseTransfer:
        return ReverseTransfer(transfer_id, original_id, reason="recorded by mistake")

    def reversed(self, original_id: str) -> None:
        self.exchanges[original_id].reversed = True
        self.counts["reversals"] += 1

    def change_status(self, account_id: str, action: str, status: str) -> None:
        self.execute(ChangeStatus(f"{action}-{account_id}", account_id, action))
        self.accounts[account_id][1] = status

    # ------------------------------------------------------------- what the reports must say

    def kept(self) -> list[Exchange]:
        """The exchanges that stand: posted and not reversed."""
        return [e for e in self.exchanges.values() if not e.reversed]

    def balances(self) -> dict[str, int]:
        balances = dict.fromkeys(self.accounts, 0)
        for e in self.kept():
            balances[e.payer] -= e.minutes
            balances[e.payee] += e.minutes
        return balances

    def totals(self) -> BankTotals:
        bank = self.ledger.get_bank(self.bank_id)
        counts = self.counts
        statuses = Counter((kind, status) for kind, status in self.accounts.values())
        balances = self.balances()
        return BankTotals(
            bank_id=self.bank_id,
            name=bank.name,
            created_at=bank.created_at,
            position=bank.position,
            updated_at=self.updated_at,
            accounts=tuple(
                AccountCounts(kind, *(statuses[(kind, s)] for s in ("open", "frozen", "closed")))
                for kind in ("member", "organisation", "pool", "system")
            ),
            immediate_transfers=counts["immediate"],
            pending_transfers=counts["pending"],
            pending_posted=counts["posted"],
            pending_voided=counts["voided"],
            pending_expired=counts["expired"],
            reversals=counts["reversals"],
            transfers_posted=len(self.kept()),
            minutes_exchanged=sum(e.minutes for e in self.kept()),
            reversed_minutes=sum(e.minutes for e in self.exchanges.values() if e.reversed),
            holds_open=len(self.holds),
            holds_open_minutes=sum(h.minutes for h in self.holds.values()),
            balance_sum_minutes=sum(balances.values()),
            circulation_minutes=sum(b for b in balances.values() if b > 0),
        )

    def active_members(self, first: str, last: str) -> int:
        return len(
            {
                account_id
                for e in self.kept()
                if first <= e.month <= last
                for account_id in (e.payer, e.payee)
                if self.accounts[account_id][0] == "member"
            }
        )

    def monthly(self, first: str, last: str) -> list[MonthRow]:
        return [
            MonthRow(
                month,
                sum(1 for e in self.kept() if e.month == month),
                sum(e.minutes for e in self.kept() if e.month == month),
                self.active_members(month, month),
            )
            for month in report_months(first, last)
        ]

    def categories(self, first: str, last: str) -> list[CategoryRow]:
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for e in self.kept():
            if first <= e.month <= last:
                totals[e.category][0] += 1
                totals[e.category][1] += e.minutes
        rows = [CategoryRow(category, *figures) for category, figures in totals.items()]
        return sorted(rows, key=lambda row: (-row.minutes, row.category))

    def category_months(self, first: str, last: str) -> list[CategoryMonthRow]:
        totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for e in self.kept():
            if first <= e.month <= last:
                totals[(e.month, e.category)][0] += 1
                totals[(e.month, e.category)][1] += e.minutes
        return [CategoryMonthRow(*key, *figures) for key, figures in sorted(totals.items())]

    def account_months(self, account_id: str, first: str, last: str) -> list[AccountMonthRow]:
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for e in self.kept():
            if first <= e.month <= last and account_id in (e.payer, e.payee):
                totals[e.month][0] += 1
                totals[e.month][1 if account_id == e.payee else 2] += e.minutes
        return [AccountMonthRow(month, *figures) for month, figures in sorted(totals.items())]


# ----------------------------------------------------------------- the story


def tell_story(
    ledger: Ledger, clock: Clock, runner: ProjectionRunner | None = None
) -> tuple[Book, Book]:
    """Two banks' March and April; the runner (if any) follows along between the steps."""

    def follow() -> None:
        if runner is not None:
            runner.run_until_caught_up()

    # March: two banks open their accounts; riverside has five members, an idle one and a pool.
    river = Book(ledger, clock, BANK)
    hill = Book(ledger, clock, OTHER_BANK)
    for member in ("alice", "bob", "carol", "dave", "erin", "frank"):
        river.open(member)
    river.open("garden-pool", kind="pool", lower_limit=0)
    hill.open("xavier")
    hill.open("yusuf")
    follow()

    # Immediate transfers: one for February's gardening, one for today's transport, a
    # contribution to the pool, and a batch of two (one dated in January).
    river.pay("t1", "bob", "alice", 60, "gardening", "2025-02-20")
    river.pay("t2", "carol", "bob", 90, "transport")
    river.pay("t3", "alice", "garden-pool", 30)
    river.pay_many(
        [
            CreateTransfer("t4a", "dave", "carol", 45, "", "gardening", "2025-03-15"),
            CreateTransfer("t4b", "erin", "dave", 120, "", "care", "2025-01-31"),
        ]
    )
    hill.pay("x1", "xavier", "yusuf", 10, "care")
    follow()

    # Holds: one to post in part, one to void, one that expires in an hour, two to post in
    # full, and one still open at the end.
    river.hold("h1", "alice", "erin", 100, "care")
    river.hold("h2", "bob", "dave", 50, "transport", "2025-03-10")
    river.hold("h3", "carol", "alice", 40, "care", timeout_seconds=3600)
    river.hold("h4", "dave", "bob", 25, "gardening", "2025-03-05")
    river.hold("h5", "erin", "carol", 15)
    river.hold("h6", "carol", "dave", 10, "care")

    # Two hours later: h3 has expired (first thing the writer does once it is due) and h2 is
    # voided.
    clock.advance(hours=2)
    river.void("h2")
    river.expired("h3")
    follow()

    # April: h1 is posted in part and h6 in full (both counting in April, when they were
    # posted, as they have no service date), h4 in full (in March, its service date); t2
    # (March) and the partial post are reversed.
    clock.set(APRIL)
    river.post("h1", 70)
    river.post("h4")
    river.post("h6")
    river.reverse("r1", "t2")
    follow()
    river.reverse("r2", "h1")
    river.pay("t5", "bob", "carol", 35, "transport")
    river.pay("g1", "garden-pool", "erin", 20, "gardening")

    # frank leaves without ever exchanging; erin is frozen with her hold still open.
    river.change_status("frank", "close", "closed")
    river.change_status("erin", "freeze", "frozen")
    follow()
    return river, hill


def check_reports(views: ViewDatabase, river: Book, hill: Book) -> None:
    """Every report of both banks equals what the books expect."""
    first, last = STORY_MONTHS
    for book in (river, hill):
        bank_id = book.bank_id
        assert bank_totals(views, bank_id) == book.totals()
        assert monthly_report(views, bank_id, first, last) == book.monthly(first, last)
        assert active_members(views, bank_id, first, last) == book.active_members(first, last)
        assert category_report(views, bank_id, first, last) == book.categories(first, last)
        assert category_monthly_report(views, bank_id, first, last) == book.category_months(
            first, last
        )
        for account_id in book.accounts:
            assert account_report(views, bank_id, account_id, first, last) == (
                book.account_months(account_id, first, last)
            )
        # The ledger's own balances agree with the view's zero-sum figures.
        balances = [
            book.ledger.get_account(bank_id, account_id).balance_minutes
            for account_id in book.accounts
        ]
        totals = bank_totals(views, bank_id)
        assert totals is not None
        assert (totals.balance_sum_minutes, totals.circulation_minutes) == (
            sum(balances),
            sum(b for b in balances if b > 0),
        )


# ----------------------------------------------------------------- tests


def test_reports_agree_with_the_commands(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views: ViewDatabase
) -> None:
    # The projection follows the story as it happens.
    ledger = make_ledger(store_url)
    runner = ProjectionRunner(ledger.store, views, ReportsProjection())
    river, hill = tell_story(ledger, clock, runner)
    check_reports(views, river, hill)

    # The same figures worked out by hand, so the book itself is checked too.
    totals = bank_totals(views, BANK)
    assert totals is not None
    assert totals.accounts[:3] == (
        AccountCounts("member", open=4, frozen=1, closed=1),
        AccountCounts("organisation", open=0, frozen=0, closed=0),
        AccountCounts("pool", open=1, frozen=0, closed=0),
    )
    assert totals.accounts_total == 7
    # Seven immediate and three posted pendings, two of them reversed.
    assert (totals.immediate_transfers, totals.pending_posted, totals.reversals) == (7, 3, 2)
    assert (totals.transfers_posted, totals.minutes_exchanged) == (8, 345)
    assert (totals.reversed_minutes, totals.pending_voided, totals.pending_expired) == (160, 1, 1)
    assert (totals.holds_open, totals.holds_open_minutes) == (1, 15)
    # alice 30, bob -70, carol 70, dave 60, erin -100, pool 10, frank 0.
    assert (totals.balance_sum_minutes, totals.circulation_minutes) == (0, 170)
    assert totals.zero_sum_ok
    assert monthly_report(views, BANK, "2024-12", "2025-05") == [
        MonthRow("2024-12", 0, 0, 0),
        MonthRow("2025-01", 1, 120, 2),  # t4b
        MonthRow("2025-02", 1, 60, 2),  # t1
        MonthRow("2025-03", 3, 100, 4),  # t3, t4a, h4 (t2 reversed)
        MonthRow("2025-04", 3, 65, 4),  # t5, g1, h6 (h1 reversed: alice is not active)
        MonthRow("2025-05", 0, 0, 0),
    ]
    assert active_members(views, BANK, *STORY_MONTHS) == 5
    assert active_members(views, BANK, "2025-04", "2025-04") == 4
    assert category_report(views, BANK, *STORY_MONTHS) == [
        CategoryRow("gardening", 4, 150),
        CategoryRow("care", 2, 130),
        CategoryRow("transport", 1, 35),
        CategoryRow("", 1, 30),
    ]
    assert category_report(views, BANK, *STORY_MONTHS, limit=2) == [
        CategoryRow("gardening", 4, 150),
        CategoryRow("care", 2, 130),
    ]
    # bob gave 25 in March (h4); the 90 he gave for t2 was reversed.
    assert account_report(views, BANK, "bob", *STORY_MONTHS) == [
        AccountMonthRow("2025-02", 1, 0, 60),
        AccountMonthRow("2025-03", 1, 25, 0),
        AccountMonthRow("2025-04", 1, 0, 35),
    ]
    hill_totals = bank_totals(views, OTHER_BANK)
    assert hill_totals is not None
    assert (hill_totals.transfers_posted, hill_totals.minutes_exchanged) == (1, 10)

    # A rebuild from event 1 drops everything and gives identical rows.
    before = snapshot(views)
    runner.reset()
    assert bank_totals(views, BANK) is None
    assert runner.run_until_caught_up() > 0
    assert snapshot(views) == before
    check_reports(views, river, hill)


def test_built_live_while_commands_run_equals_a_rebuild(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views: ViewDatabase
) -> None:
    # The runner follows the log in its own thread while the story is being told.
    ledger = make_ledger(store_url)
    runner = ProjectionRunner(ledger.store, views, ReportsProjection(), batch_max=5)
    runner.start(poll_interval_seconds=0.001)
    try:
        river, hill = tell_story(ledger, clock)
    finally:
        runner.stop()
    runner.run_until_caught_up()
    check_reports(views, river, hill)

    # Rebuilt in one go from event 1, the rows are the same.
    live = snapshot(views)
    runner.reset()
    runner.run_until_caught_up()
    assert snapshot(views) == live


def test_any_cut_of_the_history_into_batches_gives_the_same_rows(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views: ViewDatabase
) -> None:
    # The whole story first, then the projection built from scratch three times.
    ledger = make_ledger(store_url)
    river, hill = tell_story(ledger, clock)
    snapshots = []
    for batch_max in (1, 7, 1000):
        runner = ProjectionRunner(ledger.store, views, ReportsProjection(), batch_max=batch_max)
        runner.reset()
        runner.run_until_caught_up()
        check_reports(views, river, hill)
        snapshots.append(snapshot(views))
    assert snapshots[0] == snapshots[1] == snapshots[2]


def test_batches_of_many_holds_and_reversals(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views: ViewDatabase
) -> None:
    # More holds to post and transfers to reverse than one bulk look-up takes.
    count = 600
    ledger = make_ledger(store_url)
    book = Book(ledger, clock, BANK)
    for member in ("ann", "ben"):
        book.open(member)
    runner = ProjectionRunner(ledger.store, views, ReportsProjection())
    book.pay_many(
        [
            CreateTransfer(f"t{n}", "ann", "ben", n + 1, "", f"c{n % 3}", "2025-02-01")
            for n in range(count)
        ]
    )
    results = ledger.execute(
        BANK,
        CreateTransfers(
            tuple(
                CreateTransfer(f"h{n}", "ben", "ann", 2 * n + 1, "", "", "", pending=True)
                for n in range(count)
            )
        ),
    )
    assert isinstance(results, list)
    assert all(r.error is None for r in results)
    for n in range(count):
        book.counts["pending"] += 1
        book.holds[f"h{n}"] = Hold("ben", "ann", 2 * n + 1, "", "")
    runner.run_until_caught_up()

    # Post every hold (a third of them in part), then reverse half of the immediate
    # transfers and half of the posts: sent in parallel, so the writer commits many together.
    posts = {f"h{n}": n + 1 if n % 3 == 0 else None for n in range(count)}
    reversals = {f"r{n}": f"t{n}" if n % 2 == 0 else f"h{n}" for n in range(count)}
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda item: ledger.execute(BANK, Book.post_command(*item)), posts.items()))
        assert runner.run_until_caught_up() == count  # every post in one batch
        list(
            pool.map(
                lambda item: ledger.execute(BANK, Book.reverse_command(*item)), reversals.items()
            )
        )
    for transfer_id, minutes in posts.items():
        book.posted(transfer_id, minutes)
    for original_id in reversals.values():
        book.reversed(original_id)
    assert runner.run_until_caught_up() == count  # every reversal in one batch

    assert bank_totals(views, BANK) == book.totals()
    assert monthly_report(views, BANK, "2025-02", "2025-03") == book.monthly("2025-02", "2025-03")
    assert category_report(views, BANK, "2025-02", "2025-03") == book.categories(
        "2025-02", "2025-03"
    )
    totals = bank_totals(views, BANK)
    assert totals is not None
    assert totals.transfers_posted == count
    assert totals.zero_sum_ok


def test_report_periods_are_checked(views: ViewDatabase) -> None:
    # A view database with the projection's tables but no events.
    with views.transaction() as cursor:
        ReportsProjection().create_tables(cursor)

    # Malformed months name the field they came from.
    for bad in ("2025-13", "2025-00", "2025-1", "25-01", "0000-01", "2025-01-01", " 2025-01", ""):
        with pytest.raises(InvalidInput) as error:
            monthly_report(views, BANK, bad, "2025-06")
        assert (error.value.reason, error.value.field) == ("INVALID_MONTH", "from_month")
        with pytest.raises(InvalidInput) as error:
            active_members(views, BANK, "2025-01", bad)
        assert (error.value.reason, error.value.field) == ("INVALID_MONTH", "to_month")

    # A period ends no earlier than it starts, and spans at most ten years.
    with pytest.raises(InvalidInput) as error:
        category_report(views, BANK, "2025-06", "2025-05")
    assert (error.value.reason, error.value.field) == ("INVALID_MONTH_RANGE", "to_month")
    assert len(report_months("2016-01", "2025-12")) == months_per_report_max
    with pytest.raises(InvalidInput) as error:
        category_monthly_report(views, BANK, "2015-12", "2025-12")
    assert (error.value.reason, error.value.field) == ("MONTH_RANGE_TOO_LARGE", "to_month")
    assert report_months("2024-11", "2025-02") == ["2024-11", "2024-12", "2025-01", "2025-02"]

    # Bank and account ids follow the ledger's rules; an unknown bank has no totals.
    with pytest.raises(InvalidInput) as error:
        bank_totals(views, "no spaces")
    assert error.value.field == "bank_id"
    with pytest.raises(InvalidInput) as error:
        account_report(views, BANK, "", "2025-01", "2025-01")
    assert error.value.field == "account_id"
    assert bank_totals(views, "nobody") is None
    assert monthly_report(views, "nobody", "2025-01", "2025-02") == [
        MonthRow("2025-01", 0, 0, 0),
        MonthRow("2025-02", 0, 0, 0),
    ]
    assert active_members(views, "nobody", "2025-01", "2025-02") == 0
    assert category_report(views, "nobody", "2025-01", "2025-02") == []


def test_months_follow_the_utc_calendar(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views: ViewDatabase
) -> None:
    # A transfer recorded one microsecond before midnight UTC at the end of March counts in
    # March, the next in April; a service date wins over either.
    ledger = make_ledger(store_url)
    book = Book(ledger, clock, BANK)
    book.open("ann")
    book.open("ben")
    clock.set(datetime(2025, 3, 31, 23, 59, 59, 999_999, tzinfo=UTC))
    book.pay("late-march", "ann", "ben", 10)
    clock.set(datetime(2025, 4, 1, tzinfo=UTC))
    book.pay("early-april", "ann", "ben", 20)
    book.pay("dated", "ann", "ben", 40, service_date="2024-12-31")
    ProjectionRunner(ledger.store, views, ReportsProjection()).run_until_caught_up()
    assert [(r.month, r.minutes) for r in monthly_report(views, BANK, "2024-12", "2025-04")] == [
        ("2024-12", 40),
        ("2025-01", 0),
        ("2025-02", 0),
        ("2025-03", 10),
        ("2025-04", 20),
    ]
