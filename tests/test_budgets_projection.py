"""The budgets projection on every store: each pool's figures equal what the commands did.

A Ledger is driven through real commands: pools created with policies, contributions,
pledges posted, voided and left open, grant requests approved, rejected, expired and left
open, reversals of grants and of contributions, a pool whose floor lets it go below zero,
and a contribution made just before midnight UTC that falls in the next month in the
pool's time zone. The figures each story must give are worked out by hand in the test. A
rebuild, replaying in batches of any size, and building while the commands run, must all
give the same rows; the share rule conserves every minute (property tests).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import Clock, MakeLedger, ledger_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.application.ledger import Ledger
from ledger.domain.commands import (
    CreateBank,
    CreatePool,
    CreateTransfer,
    DecideGrant,
    IssueApiKey,
    OpenAccount,
    PostPending,
    RequestGrant,
    ReverseTransfer,
    VoidPending,
)
from ledger.domain.errors import DomainError, InvalidInput
from ledger.domain.pool_policy import PoolPolicy
from projections.budget_queries import (
    BudgetMonth,
    ContributorShare,
    MemberUsage,
    PoolBudget,
    pool_budget,
)
from projections.budget_rows import BUDGET_TABLES
from projections.budget_shares import ShareBook, apportion
from projections.budgets import BudgetsProjection
from projections.db import Cursor, Params, Row, ViewDatabase, open_views
from projections.events import LogEvent, log_event
from projections.runner import ProjectionRunner

BANK = "riverside"
ADMIN = "key:admin1"
MEMBERS = ("ana", "ben", "cat", "dan")


@pytest.fixture
def views(store_url: str) -> Iterator[ViewDatabase]:
    database = open_views(store_url)
    yield database
    database.close()


def snapshot(views: ViewDatabase) -> dict[str, list[Row]]:
    """Every row the budgets projection owns, sorted the same way on every database."""
    return {table: sorted(views.query(f"SELECT * FROM {table}")) for table in BUDGET_TABLES}


class Pot:
    """Commands about the bank's pools, with ids made up as they go."""

    def __init__(self, ledger: Ledger, clock: Clock) -> None:
        self.ledger, self.clock = ledger, clock
        self.count = 0
        ledger.create_bank(CreateBank(bank_id=BANK, name="Riverside"))
        self.run(IssueApiKey(key_id="admin1", role="bank-admin", secret_hash="0" * 64))
        for member in MEMBERS:
            self.run(OpenAccount(account_id=member, kind="member", lower_limit_minutes=-2000))

    def run(self, command: Any) -> Any:
        return self.ledger.execute(BANK, command)

    def new_id(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}-{self.count}"

    def create(self, pool: str, policy: PoolPolicy, lower_limit_minutes: int = 0) -> None:
        self.run(
            CreatePool(
                request_id=f"create-{pool}",
                pool_account_id=pool,
                policy=policy,
                lower_limit_minutes=lower_limit_minutes,
                actor=ADMIN,
            )
        )

    def give(self, pool: str, member: str, minutes: int, *, pledge: bool = False, **kw: Any) -> str:
        transfer_id = self.new_id("pledge" if pledge else "give")
        self.run(CreateTransfer(transfer_id, member, pool, minutes, pending=pledge, **kw))
        return transfer_id

    def ask(self, pool: str, member: str, minutes: int) -> str:
        grant_id = self.new_id("grant")
        self.run(RequestGrant(grant_id, pool, member, minutes, actor=f"key:app1/member:{member}"))
        return grant_id

    def decide(self, pool: str, grant_id: str, decision: str) -> None:
        request_id = self.new_id(decision)
        self.run(DecideGrant(request_id, pool, grant_id, decision, actor=ADMIN))

    def post(self, transfer_id: str) -> None:
        self.run(PostPending(f"post-{transfer_id}", transfer_id, None))

    def void(self, transfer_id: str) -> None:
        self.run(VoidPending(f"void-{transfer_id}", transfer_id))

    def reverse(self, transfer_id: str) -> None:
        self.run(ReverseTransfer(f"undo-{transfer_id}", transfer_id, reason="a mistake"))

    def status(self, transfer_id: str) -> str:
        return self.ledger.get_transfer(BANK, transfer_id).status


def one_approval(**changes: Any) -> PoolPolicy:
    options: dict[str, Any] = {
        "cap_minutes": 120,
        "time_zone": "Europe/London",
        "approvers": (ADMIN,),
        "approvals_required": 1,
        "request_expiry_seconds": 3600,
    }
    options.update(changes)
    return PoolPolicy(**options)


PAID_AT_ONCE = PoolPolicy(time_zone="UTC")


def budget(views: ViewDatabase, pool: str, first: str, last: str, now: datetime) -> PoolBudget:
    found = pool_budget(views, BANK, pool, first, last, now)
    assert found is not None
    return found


def check_shares_hold_the_balance(views: ViewDatabase, ledger: Ledger, pool: str) -> None:
    """Read where it is written: every share is >= 0 and they hold the pool's balance."""
    found = budget(views, pool, "2025-01", "2025-01", datetime(2025, 1, 1, tzinfo=UTC))
    balance = ledger.get_account(BANK, pool).balance_minutes
    assert found.balance_minutes == balance
    lefts = [share.left_minutes for share in found.contributors]
    assert all(left >= 0 for left in lefts)
    assert all(share.used_minutes >= 0 for share in found.contributors)
    assert sum(lefts) - found.beyond_shares_minutes == balance
    assert found.beyond_shares_minutes == max(0, -balance)


# ----------------------------------------------------------------- the stories


def tell_flows(pot: Pot, clock: Clock, follow: Any = None) -> None:
    """January to April of one pot: contributions, pledges and grants of every outcome."""
    step = follow or (lambda: None)
    # January: the pot is created; Ana gives ten hours; Cat is granted 100 minutes.
    clock.set(datetime(2025, 1, 15, 10, tzinfo=UTC))
    pot.create("pot", one_approval())
    pot.give("pot", "ana", 600)
    clock.set(datetime(2025, 1, 20, 10, tzinfo=UTC))
    pot.decide("pot", pot.ask("pot", "cat", 100), "approve")
    step()
    # February: Cat is granted 80 more; Ben pledges an hour and a half.
    clock.set(datetime(2025, 2, 10, 10, tzinfo=UTC))
    pot.decide("pot", pot.ask("pot", "cat", 80), "approve")
    pledge = pot.give("pot", "ben", 90, pledge=True)
    # March: Dan is granted an hour; Ben gives 30 minutes just before midnight UTC on the
    # 31st, which is already April 1st in London (summer time began on March 30th).
    clock.set(datetime(2025, 3, 5, 10, tzinfo=UTC))
    pot.decide("pot", pot.ask("pot", "dan", 60), "approve")
    clock.set(datetime(2025, 3, 31, 23, 30, tzinfo=UTC))
    pot.give("pot", "ben", 30)
    step()
    # April: Ana's 40 is rejected; Cat's 20 expires; Ben's pledge is posted; Dan pledges 25
    # and takes it back; Cat pledges 15 and Dan asks for 50 (both left open).
    clock.set(datetime(2025, 4, 2, 10, tzinfo=UTC))
    pot.decide("pot", pot.ask("pot", "ana", 40), "reject")
    expiring = pot.ask("pot", "cat", 20)
    pot.post(pledge)
    pot.void(pot.give("pot", "dan", 25, pledge=True))
    step()
    clock.advance(hours=2)
    pot.give("pot", "cat", 15, pledge=True)
    pot.ask("pot", "dan", 50)
    assert pot.status(expiring) == "expired"
    step()


def check_flows(views: ViewDatabase) -> None:
    now = datetime(2025, 4, 2, 12, tzinfo=UTC)
    found = budget(views, "pot", "2024-12", "2025-04", now)
    assert found.months == [
        BudgetMonth("2024-12", 0, 0, 0, 0),
        BudgetMonth("2025-01", 600, 100, 0, 0),
        # Ben's pledge was made in February and posted in April: nothing is left of it here.
        BudgetMonth("2025-02", 0, 80, 0, 0),
        BudgetMonth("2025-03", 0, 60, 0, 0),
        # Ben's 30 (London's April) and his posted pledge; Cat's open pledge; Dan's request.
        BudgetMonth("2025-04", 120, 0, 15, 50),
    ]
    assert (found.contributed_minutes, found.granted_minutes) == (720, 240)
    assert (found.balance_minutes, found.committed_minutes) == (480, 50)
    assert (found.pledged_minutes, found.remaining_minutes) == (15, 430)
    # 240 minutes granted in January to March: 80 a month; 430 / 80 months remain.
    assert found.recent_granted_minutes == 240
    assert found.runway_months == pytest.approx(5.375)
    # April's cap: Dan has 50 reserved; Ana's and Cat's gave theirs back.
    assert found.cap_minutes == 120
    assert found.cap_period_first_day.isoformat() == "2025-04-01"
    assert (found.members, found.members_total) == ([MemberUsage("dan", 50, 70)], 1)
    # Every grant posted before Ben gave came from Ana's share.
    assert found.contributors == [
        ContributorShare("ana", 600, 240, 360),
        ContributorShare("ben", 120, 0, 120),
    ]
    assert found.contributors_total == 2
    # Read in March, the cap period is March's and the runway December to February's.
    march = budget(views, "pot", "2025-03", "2025-03", datetime(2025, 3, 20, tzinfo=UTC))
    assert march.members == [MemberUsage("dan", 60, 60)]
    assert march.recent_granted_minutes == 180
    # In February the complete months are November to January.
    february = budget(views, "pot", "2025-02", "2025-02", datetime(2025, 2, 1, tzinfo=UTC))
    assert february.runway_months == pytest.approx(430 * 3 / 100)


def tell_shares(pot: Pot, follow: Any = None) -> None:
    """A pooled personal budget: three members pool part of their balance; grants paid at
    once draw on their shares; a grant and a contribution are reversed."""
    step = follow or (lambda: None)
    pot.create("shared", PAID_AT_ONCE)
    ana = pot.give("shared", "ana", 100)
    pot.give("shared", "ben", 200)
    pot.give("shared", "cat", 50)
    step()
    first = pot.ask("shared", "dan", 100)
    pot.ask("shared", "dan", 7)
    step()
    pot.reverse(first)
    pot.reverse(ana)
    step()


def check_shares(views: ViewDatabase, ledger: Ledger) -> None:
    found = budget(views, "shared", "2025-04", "2025-04", datetime(2025, 4, 2, 13, tzinfo=UTC))
    # 100 from 100:200:50 is 28.57, 57.14, 14.29: 28, 57, 14 and the last minute to the
    # largest remainder (Ana's). 7 from what is left (71:143:36) is 1, 4, 1 and one more to
    # Ana. The first grant's reversal gives back what it took (29, 57, 14); Ana's reversed
    # 100 takes her 98 and 2 more from Ben and Cat (196:49 gives 1.6 and 0.4: Ben's 2).
    assert found.contributors == [
        ContributorShare("ben", 200, 6, 194),
        ContributorShare("cat", 50, 1, 49),
    ]
    assert (found.contributed_minutes, found.granted_minutes, found.balance_minutes) == (
        250,
        7,
        243,
    )
    assert found.months == [BudgetMonth("2025-04", 250, 7, 0, 0)]
    # No cap: usage is shown with nothing left to compare it to.
    assert found.members == [MemberUsage("dan", 107, None)]
    check_shares_hold_the_balance(views, ledger, "shared")


def tell_debt(pot: Pot) -> None:
    """A pool allowed 5 hours below zero grants past its shares; minutes coming in repay."""
    pot.create("fund", PoolPolicy(floor_minutes=-300), lower_limit_minutes=-300)
    pot.give("fund", "ana", 60)
    grant = pot.ask("fund", "dan", 100)
    pot.give("fund", "ben", 30)
    pot.reverse(grant)


def check_debt(views: ViewDatabase, ledger: Ledger) -> None:
    found = budget(views, "fund", "2025-04", "2025-04", datetime(2025, 4, 2, 13, tzinfo=UTC))
    # The grant took Ana's 60 and 40 beyond; Ben's 30 repaid 30 of those. Its reversal
    # repaid the last 10, gave Ana back her 60, and Ben the 30 his gift had used.
    assert found.beyond_shares_minutes == 0
    assert found.contributors == [
        ContributorShare("ana", 60, 0, 60),
        ContributorShare("ben", 30, 0, 30),
    ]
    check_shares_hold_the_balance(views, ledger, "fund")


def tell_all(ledger: Ledger, clock: Clock, runner: ProjectionRunner | None = None) -> Pot:
    def follow() -> None:
        if runner is not None:
            runner.run_until_caught_up()

    # Event times never go back: the bank opens before the first story starts.
    clock.set(datetime(2025, 1, 15, 9, tzinfo=UTC))
    pot = Pot(ledger, clock)
    tell_flows(pot, clock, follow)
    # The other stories are told on April 2nd, after the first.
    tell_shares(pot, follow)
    tell_debt(pot)
    follow()
    return pot


def check_all(views: ViewDatabase, ledger: Ledger) -> None:
    check_flows(views)
    check_shares(views, ledger)
    check_debt(views, ledger)
    check_shares_hold_the_balance(views, ledger, "pot")


# ----------------------------------------------------------------- tests


def test_budgets_agree_with_the_commands(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views: ViewDatabase
) -> None:
    # The projection follows the stories as they happen.
    ledger = make_ledger(store_url)
    runner = ProjectionRunner(ledger.store, views, BudgetsProjection())
    tell_all(ledger, clock, runner)
    check_all(views, ledger)
    # Nothing is left open that the story settled.
    holds = views.query("SELECT transfer_id, kind, amount_minutes FROM budget_holds")
    assert sorted(row[1:] for row in holds) == [("grant", 50), ("pledge", 15)]

    # A rebuild from event 1 drops everything and gives identical rows.
    before = snapshot(views)
    runner.reset()
    assert pool_budget(views, BANK, "pot", "2025-01", "2025-01", clock()) is None
    assert runner.run_until_caught_up() > 0
    assert snapshot(views) == before


def test_built_live_while_commands_run_equals_a_rebuild(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views: ViewDatabase
) -> None:
    # The runner follows the log in its own thread while the stories are told.
    ledger = make_ledger(store_url)
    runner = ProjectionRunner(ledger.store, views, BudgetsProjection(), batch_max=5)
    runner.start(poll_interval_seconds=0.001)
    try:
        tell_all(ledger, clock)
    finally:
        runner.stop()
    runner.run_until_caught_up()
    check_all(views, ledger)

    # Rebuilt in one go from event 1, and in batches of 1 and 7, the rows are the same.
    live = snapshot(views)
    for batch_max in (1000, 1, 7):
        rebuilt = ProjectionRunner(ledger.store, views, BudgetsProjection(), batch_max=batch_max)
        rebuilt.reset()
        rebuilt.run_until_caught_up()
        assert snapshot(views) == live


class CountingCursor:
    """A cursor that counts the statements a projection sends through it."""

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor
        self.statements: list[str] = []

    def execute(self, statement: str, params: Params = ()) -> int:
        self.statements.append(statement)
        return self.cursor.execute(statement, params)

    def executemany(self, statement: str, rows: Sequence[Params]) -> None:
        self.statements.append(statement)
        self.cursor.executemany(statement, rows)

    def query(self, statement: str, params: Params = ()) -> list[Row]:
        self.statements.append(statement)
        return self.cursor.query(statement, params)


def test_a_batch_without_pool_events_sends_no_statement(
    make_ledger: MakeLedger, clock: Clock
) -> None:
    ledger = make_ledger("memory://")
    views = open_views("memory://")
    projection = BudgetsProjection()
    pot = Pot(ledger, clock)
    pot.create("pot", PAID_AT_ONCE)
    pot.give("pot", "ana", 60)
    runner = ProjectionRunner(ledger.store, views, projection)
    runner.run_until_caught_up()
    # Members pay each other, hold and release minutes: nothing about the pool.
    pot.run(CreateTransfer("t1", "ana", "ben", 30))
    pot.void(pot.give("cat", "dan", 10, pledge=True))
    events = [event for event in _log_events(ledger) if event.notification_id > runner.position]
    assert len(events) == 3
    with views.transaction() as cursor:
        counting = CountingCursor(cursor)
        projection.apply(counting, events)
    assert counting.statements == []
    # A gift to the pool in the next batch is one read of the pool and a handful of writes.
    projection.committed()
    pot.give("pot", "ben", 5)
    with views.transaction() as cursor:
        counting = CountingCursor(cursor)
        projection.apply(counting, _log_events(ledger)[-1:])
    reads = [s for s in counting.statements if s.startswith("SELECT")]
    assert len(reads) == 1
    views.close()


def _log_events(ledger: Ledger) -> list[LogEvent]:
    notifications = ledger.store.recorder.select_notifications(start=1, limit=1000)
    return [log_event(n.id, n.state) for n in notifications]


def test_budget_reads_check_their_input(views: ViewDatabase) -> None:
    with views.transaction() as cursor:
        BudgetsProjection().create_tables(cursor)
    now = datetime(2025, 3, 1, tzinfo=UTC)
    for first, last, reason, field in (
        ("2025-13", "2025-06", "INVALID_MONTH", "from_month"),
        ("2025-01", "", "INVALID_MONTH", "to_month"),
        ("2025-06", "2025-05", "INVALID_MONTH_RANGE", "to_month"),
        ("2015-12", "2025-12", "MONTH_RANGE_TOO_LARGE", "to_month"),
    ):
        with pytest.raises(InvalidInput) as error:
            pool_budget(views, BANK, "pot", first, last, now)
        assert (error.value.reason, error.value.field) == (reason, field)
    with pytest.raises(InvalidInput) as error:
        pool_budget(views, BANK, "no spaces", "2025-01", "2025-01", now)
    assert error.value.field == "pool_account_id"
    assert pool_budget(views, BANK, "pot", "2025-01", "2025-01", now) is None


# ----------------------------------------------------------------- properties


def test_apportion_by_largest_remainder_with_ties_by_account_id() -> None:
    assert apportion(100, {"ana": 100, "ben": 200, "cat": 50}) == {"ana": 29, "ben": 57, "cat": 14}
    # Equal remainders: the lower account id gets the minute.
    assert apportion(1, {"ben": 1, "ana": 1}) == {"ana": 1}
    assert apportion(2, {"ben": 1, "ana": 1, "cat": 1}) == {"ana": 1, "ben": 1}
    assert apportion(0, {"ana": 5}) == {}
    assert apportion(5, {"ana": 5}) == {"ana": 5}


Operation = tuple[str, int, int]
operations = st.lists(
    st.tuples(
        st.sampled_from(["give", "grant", "undo_grant", "undo_give"]),
        st.integers(0, 4),
        st.integers(1, 500),
    ),
    max_size=60,
)


@given(operations)
@settings(max_examples=300, deadline=None)
def test_the_share_rule_conserves_every_minute(steps: list[Operation]) -> None:
    book = ShareBook(0, {})
    balance = 0
    gifts: list[tuple[str, int]] = []
    grants: list[tuple[int, dict[str, int]]] = []
    for kind, who, minutes in steps:
        account = f"m{who}"
        if kind == "give":
            book.contribute(account, minutes)
            gifts.append((account, minutes))
            balance += minutes
        elif kind == "grant":
            takes = book.draw(minutes)
            assert sum(takes.values()) <= minutes
            grants.append((minutes, takes))
            balance -= minutes
        elif kind == "undo_grant" and grants:
            granted, takes = grants.pop(who % len(grants))
            book.give_back(granted, takes)
            balance += granted
        elif kind == "undo_give" and gifts:
            account, given = gifts.pop(who % len(gifts))
            book.withdraw(account, given)
            balance -= given
        lefts = [book.left_minutes(a) for a in book.accounts()]
        assert all(left >= 0 for left in lefts)
        assert all(book.used_minutes(a) >= 0 for a in book.accounts())
        # Sum of what is left == contributed - granted (the balance), beyond it the debt.
        assert sum(lefts) - book.beyond_shares_minutes == balance
        assert book.beyond_shares_minutes == max(0, -balance)
        contributed = sum(book.contributed_minutes(a) for a in book.accounts())
        assert contributed == sum(given for _, given in gifts)


pool_commands = st.lists(
    st.tuples(
        st.sampled_from(["give", "pledge", "ask", "approve", "reject", "post", "void", "undo"]),
        st.integers(0, 3),
        st.integers(1, 90),
    ),
    min_size=1,
    max_size=30,
)


@given(pool_commands, st.lists(st.integers(1, 12), min_size=1, max_size=3))
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_history_cut_into_any_batches_gives_the_same_rows(
    commands: list[tuple[str, int, int]], cuts: list[int]
) -> None:
    clock = Clock()
    ledger = Ledger(ledger_settings("memory://"), clock=clock)
    views = open_views("memory://")
    try:
        pot = Pot(ledger, clock)
        pot.create("pot", one_approval(cap_minutes=None, floor_minutes=-200), -200)
        _play(pot, clock, commands)
        # Requests past their deadline expire when the writer next runs (its sweeper may do
        # it at any moment): a retry makes it expire them now, so the log stops growing.
        pot.run(OpenAccount(account_id=MEMBERS[0], kind="member", lower_limit_minutes=-2000))
        rows = []
        for batch_max in (1000, *cuts):
            runner = ProjectionRunner(ledger.store, views, BudgetsProjection(), batch_max=batch_max)
            runner.reset()
            runner.run_until_caught_up()
            rows.append(snapshot(views))
            check_shares_hold_the_balance(views, ledger, "pot")
        assert all(found == rows[0] for found in rows)
    finally:
        views.close()
        ledger.close()


def _play(pot: Pot, clock: Clock, commands: list[tuple[str, int, int]]) -> None:
    """Runs the commands that make sense at that point; refused ones are skipped."""
    pledges: list[str] = []
    asked: list[str] = []
    posted: list[str] = []
    for kind, who, minutes in commands:
        member = MEMBERS[who]
        clock.advance(days=9)  # across months
        try:
            if kind == "give":
                posted.append(pot.give("pot", member, minutes))
            elif kind == "pledge":
                pledges.append(pot.give("pot", member, minutes, pledge=True))
            elif kind == "ask":
                asked.append(pot.ask("pot", member, minutes))
            elif kind in ("approve", "reject") and asked:
                grant = asked.pop(who % len(asked))
                pot.decide("pot", grant, kind)
                if kind == "approve":
                    posted.append(grant)
            elif kind in ("post", "void") and pledges:
                pledge = pledges.pop(who % len(pledges))
                if kind == "post":
                    pot.post(pledge)
                    posted.append(pledge)
                else:
                    pot.void(pledge)
            elif kind == "undo" and posted:
                pot.reverse(posted.pop(who % len(posted)))
        except DomainError:
            pass  # refused (the floor, a limit): the history goes on without it
