"""The projection runner applies every event exactly once, whatever happens to it.

Each test ends by comparing the view with a clean rebuild (reset, then replay from event 1)
and with the balances the independent verifier recomputes from the raw events. Nothing here
measures time: every wait polls with a bounded deadline and fails if it is reached.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock, MakeLedger
from test_accounts_projection import (
    OpenViews,
    check_views,
    closing_views,
    open_bank,
    snapshot,
    transfer,
)

import projections.runner
from ledger.application.ledger import Ledger
from ledger.domain.bank import bank_uuid
from ledger.domain.commands import (
    BankCommand,
    ChangeLimits,
    ChangeStatus,
    CreateTransfers,
    OpenAccount,
    PostPending,
    ReverseTransfer,
    VoidPending,
)
from ledger.domain.errors import DomainError
from projections.accounts import AccountsProjection
from projections.db import (
    Cursor,
    Params,
    Row,
    ViewDatabase,
    insert_rows,
    select_in,
    upsert_rows,
)
from projections.runner import PositionMovedError, ProjectionRunner

# How long a test waits for something that happens promptly; never reached when passing.
WAIT_SECONDS = 60.0
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def views_opener() -> Iterator[OpenViews]:
    yield from closing_views()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.01)


def rebuilt(runner: ProjectionRunner) -> dict[str, list[Row]]:
    """The view as a clean rebuild from event 1 makes it."""
    runner.reset()
    runner.run_until_caught_up()
    return snapshot(runner.views)


def settle(ledger: Ledger, bank_ids: Sequence[str]) -> None:
    """Make each bank's writer commit whatever expiries are due, so the log stops growing."""
    for bank_id in bank_ids:
        # An idempotent retry records nothing, but the writer expires due holds before it.
        ledger.execute(
            bank_id, OpenAccount(account_id="ann", kind="member", lower_limit_minutes=-600)
        )


def caught_up(runner: ProjectionRunner) -> None:
    wait_until(lambda: runner.lag_events() == 0, f"{runner.projection.name} to catch up")


class RecordingProjection(AccountsProjection):
    """The accounts projection, noting (bank, version) of every event it applied."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, int]] = []

    def apply(self, cursor: Cursor, events: Sequence[Any]) -> None:
        super().apply(cursor, events)
        self.applied.extend((e.bank_uuid, e.version) for e in events)


def assert_each_event_once(
    ledger: Ledger, bank_ids: Sequence[str], *applied_by_runner: list[tuple[str, int]]
) -> None:
    """Between the runners, every event of every bank was applied exactly once, and each
    runner applied its share of a bank's events in version order."""
    everything = [key for applied in applied_by_runner for key in applied]
    assert [key for key, n in Counter(everything).items() if n != 1] == []
    for bank_id in bank_ids:
        uuid = str(bank_uuid(bank_id))
        position = ledger.get_bank(bank_id).position
        assert sorted(v for bank, v in everything if bank == uuid) == list(range(1, position + 1))
        for applied in applied_by_runner:
            versions = [v for bank, v in applied if bank == uuid]
            assert versions == sorted(versions), bank_id


# ----------------------------------------------------------------- a mixed write load


class Writer:
    """One thread's share of a mixed load: every kind of transfer and account change."""

    def __init__(self, ledger: Ledger, clock: Clock, bank_id: str, number: int) -> None:
        self.ledger, self.clock, self.bank_id, self.number = ledger, clock, bank_id, number
        self.rng = random.Random(number)
        self.pending: list[str] = []
        self.posted: list[str] = []
        self.refusals = 0

    def run(self, operations: int) -> None:
        for n in range(operations):
            try:
                self.step(n)
            except DomainError:
                self.refusals += 1

    def step(self, n: int) -> None:
        rng, tid = self.rng, f"w{self.number}-{n}"
        members = ["ann", "bob", "cat", "dan", "eve"]
        payer, payee = rng.sample(members, 2)
        choice = rng.random()
        if choice < 0.30:
            self.execute(transfer(tid, payer, payee, rng.randint(1, 40)))
            self.posted.append(tid)
        elif choice < 0.50:
            timeout = rng.choice([0, 5])
            self.execute(
                transfer(
                    tid, payer, payee, rng.randint(1, 40), pending=True, timeout_seconds=timeout
                )
            )
            self.pending.append(tid)
        elif choice < 0.60 and self.pending:
            held = self.pending.pop(rng.randrange(len(self.pending)))
            self.execute(
                PostPending(
                    request_id=f"post-{tid}", transfer_id=held, amount_minutes=rng.choice([None, 1])
                )
            )
            self.posted.append(held)
        elif choice < 0.65 and self.pending:
            held = self.pending.pop(rng.randrange(len(self.pending)))
            self.execute(VoidPending(request_id=f"void-{tid}", transfer_id=held))
        elif choice < 0.75 and self.posted:
            original = self.posted.pop(rng.randrange(len(self.posted)))
            self.execute(
                ReverseTransfer(
                    transfer_id=f"rev-{tid}", reverses_transfer_id=original, reason="undo"
                )
            )
        elif choice < 0.87:
            pairs = [rng.sample(members, 2) for _ in range(4)]
            items = tuple(
                transfer(f"{tid}-{i}", one, other, rng.randint(1, 30), pending=i == 2)
                for i, (one, other) in enumerate(pairs)
            )
            self.execute(CreateTransfers(items=items, linked=rng.random() < 0.5))
        elif choice < 0.92:
            self.execute(
                ChangeLimits(
                    request_id=f"lim-{tid}",
                    account_id=payer,
                    lower_limit_minutes=-rng.randint(100, 600),
                )
            )
        elif choice < 0.96:
            self.execute(ChangeStatus(request_id=f"frz-{tid}", account_id=payee, action="freeze"))
            self.execute(ChangeStatus(request_id=f"unf-{tid}", account_id=payee, action="unfreeze"))
        else:
            self.clock.advance(seconds=3)  # holds with a 5 s timeout start to expire

    def execute(self, command: BankCommand) -> None:
        self.ledger.execute(self.bank_id, command)


def write_concurrently(
    ledger: Ledger,
    clock: Clock,
    bank_ids: Sequence[str],
    threads: int,
    operations: int,
    round_number: int = 0,
) -> list[Writer]:
    """Run `threads` writers at once; each round of a test needs its own `round_number`."""
    writers = [
        Writer(ledger, clock, bank_ids[n % len(bank_ids)], round_number * 1_000 + n)
        for n in range(threads)
    ]
    running = [threading.Thread(target=w.run, args=(operations,)) for w in writers]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(timeout=WAIT_SECONDS)
        assert not thread.is_alive(), "a writer thread is stuck"
    settle(ledger, bank_ids)
    return writers


def open_banks(ledger: Ledger, bank_ids: Sequence[str]) -> None:
    for bank_id in bank_ids:
        open_bank(ledger, bank_id)


@contextmanager
def following(runner: ProjectionRunner) -> Iterator[ProjectionRunner]:
    runner.start(poll_interval_seconds=0.005)
    try:
        yield runner
    finally:
        runner.stop()


# ----------------------------------------------------------------- crashing mid-batch


class Crash(Exception):
    """Stands for the process dying at a chosen statement."""


class _CrashingCursor:
    def __init__(self, cursor: Cursor, crash_at: str) -> None:
        self._cursor, self._crash_at = cursor, crash_at
        self.statements = 0

    def _before(self, statement: str) -> None:
        self.statements += 1
        if statement.startswith(self._crash_at):
            raise Crash(statement)

    def execute(self, statement: str, params: Params = ()) -> int:
        self._before(statement)
        return self._cursor.execute(statement, params)

    def executemany(self, statement: str, rows: Sequence[Params]) -> None:
        self._before(statement)
        self._cursor.executemany(statement, rows)

    def query(self, statement: str, params: Params = ()) -> list[Row]:
        self._before(statement)
        return self._cursor.query(statement, params)

    def __getattr__(self, name: str) -> Any:
        """The real cursor's optional bulk methods (PostgreSQL's copy_rows, upsert_rows and
        select_any), counted and crashed like the statements they stand for."""
        method = getattr(self._cursor, name)

        def checked(first: str, *args: Any) -> Any:
            self._before(first if first.startswith("SELECT") else f"INSERT INTO {first}")
            return method(first, *args)

        return checked


class CrashingViews:
    """A view database whose transactions fail at the first statement starting `crash_at`."""

    def __init__(self, views: ViewDatabase, crash_at: str) -> None:
        self._views, self._crash_at = views, crash_at
        self.dialect = views.dialect
        self.cursors: list[_CrashingCursor] = []

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._views.transaction() as cursor:
            crashing = _CrashingCursor(cursor, self._crash_at)
            self.cursors.append(crashing)
            yield crashing

    def query(self, statement: str, params: Params = ()) -> list[Row]:
        return self._views.query(statement, params)

    def close(self) -> None:
        self._views.close()


# Statements of one batch, in the order they run: a crash at each leaves part of it written.
CRASH_POINTS = [
    "INSERT INTO view_accounts",  # after the position moved and the banks were inserted
    "INSERT INTO view_statement_entries",  # after every touched account was upserted
    "INSERT INTO view_open_holds",  # after statements and released holds were written
    "INSERT INTO projection_bank_versions",  # after the whole projection, before commit
]


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_a_crash_mid_batch_leaves_nothing_and_a_new_runner_resumes(
    durable_store_url: str,
    make_ledger: MakeLedger,
    clock: Clock,
    views_opener: OpenViews,
    crash_at: str,
) -> None:
    ledger = make_ledger(durable_store_url)
    banks = ["north", "south"]
    open_banks(ledger, banks)
    write_concurrently(ledger, clock, banks, threads=2, operations=15)
    # The view is built up to here.
    views = views_opener(durable_store_url)
    ProjectionRunner(ledger.store, views, AccountsProjection()).run_until_caught_up()
    before = snapshot(views)
    # More is written; the next batch will have to release holds and extend statements.
    write_concurrently(ledger, clock, banks, threads=2, operations=15, round_number=1)

    # A runner dies partway through that batch.
    crashing = CrashingViews(views, crash_at)
    runner = ProjectionRunner(ledger.store, crashing, AccountsProjection())
    with pytest.raises(Crash):
        runner.run_once()
    assert crashing.cursors[-1].statements > 2  # it got well into the batch
    # Nothing of the batch is left: rows, position and bank versions are as before.
    assert snapshot(views) == before
    assert runner.position == runner.stored_position() == before["projection_positions"][0][0]

    # A new runner, on a new connection to the same database, resumes from there.
    views_after = views_opener(durable_store_url)
    resumed = ProjectionRunner(ledger.store, views_after, AccountsProjection())
    assert resumed.position == before["projection_positions"][0][0]
    assert resumed.run_until_caught_up() > 0
    after = snapshot(views_after)
    check_views(ledger, views_after, banks)
    assert after == rebuilt(resumed)


# A runner in its own process that dies (no rollback, no clean-up) inside its transaction.
_DYING_RUNNER = """
import os, sys
from ledger.storage.store import LedgerStore
from ledger.config import eventsourcing_env
from projections.accounts import AccountsProjection
from projections.db import open_views
from projections.runner import ProjectionRunner

url, crash_at = sys.argv[1], sys.argv[2]
views = open_views(url)

class Dying:
    def __init__(self, cursor):
        self.cursor = cursor
    def execute(self, statement, params=()):
        self.die_at(statement)
        return self.cursor.execute(statement, params)
    def executemany(self, statement, rows):
        self.die_at(statement)
        self.cursor.executemany(statement, rows)
    def query(self, statement, params=()):
        return self.cursor.query(statement, params)
    def __getattr__(self, name):
        method = getattr(self.cursor, name)
        def checked(first, *args):
            self.die_at(first if first.startswith("SELECT") else f"INSERT INTO {first}")
            return method(first, *args)
        return checked
    def die_at(self, statement):
        if statement.startswith(crash_at):
            sys.stdout.flush()
            os._exit(17)

class DyingProjection(AccountsProjection):
    def apply(self, cursor, events):
        super().apply(Dying(cursor), events)

runner = ProjectionRunner(LedgerStore(eventsourcing_env(url)), views, DyingProjection())
runner.run_once()
"""


@pytest.mark.parametrize("crash_at", CRASH_POINTS[1:3])
def test_a_runner_process_killed_mid_batch_leaves_nothing(
    durable_store_url: str,
    make_ledger: MakeLedger,
    clock: Clock,
    views_opener: OpenViews,
    crash_at: str,
) -> None:
    ledger = make_ledger(durable_store_url)
    banks = ["north", "south"]
    open_banks(ledger, banks)
    write_concurrently(ledger, clock, banks, threads=2, operations=10)
    views = views_opener(durable_store_url)
    runner = ProjectionRunner(ledger.store, views, AccountsProjection())
    runner.run_until_caught_up()
    before = snapshot(views)
    write_concurrently(ledger, clock, banks, threads=2, operations=10, round_number=1)

    # Another process starts the next batch and exits abruptly halfway through it.
    child = subprocess.run(
        [sys.executable, "-c", _DYING_RUNNER, durable_store_url, crash_at],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        check=False,
    )
    assert child.returncode == 17, child.stderr
    # The database kept none of it.
    assert snapshot(views) == before
    # This process's runner carries on from the same position and ends at a clean rebuild.
    assert runner.stored_position() == runner.position
    runner.run_until_caught_up()
    check_views(ledger, views, banks)
    assert snapshot(views) == rebuilt(runner)


# ----------------------------------------------------------------- restart and rebuild


def test_a_restarted_runner_resumes_where_it_stopped(
    durable_store_url: str, make_ledger: MakeLedger, clock: Clock, views_opener: OpenViews
) -> None:
    ledger = make_ledger(durable_store_url)
    banks = ["north", "south", "east"]
    open_banks(ledger, banks)
    write_concurrently(ledger, clock, banks, threads=3, operations=20)
    head = ledger.store.recorder.max_notification_id()
    assert head is not None

    # A runner applies a few small batches, then stops.
    before_restart = RecordingProjection()
    first = ProjectionRunner(
        ledger.store, views_opener(durable_store_url), before_restart, batch_max=3
    )
    assert [first.run_once() for _ in range(4)] == [3, 3, 3, 3]
    assert 0 < first.position < head
    first.views.close()

    # After a "restart" a new runner on a new connection starts from the stored position.
    projection = RecordingProjection()
    views = views_opener(durable_store_url)
    second = ProjectionRunner(ledger.store, views, projection, batch_max=3)
    assert second.position == first.position
    second.run_until_caught_up()
    assert second.position == head
    # Between them, every event was applied once; the view equals a one-shot build.
    assert_each_event_once(ledger, banks, before_restart.applied, projection.applied)
    check_views(ledger, views, banks)
    assert snapshot(views) == rebuilt(
        ProjectionRunner(ledger.store, views, AccountsProjection(), batch_max=1_000)
    )


def test_a_rebuild_equals_the_view_built_live_under_concurrent_writes(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views_opener: OpenViews
) -> None:
    ledger = make_ledger(store_url)
    banks = ["north", "south"]
    open_banks(ledger, banks)
    views = views_opener(store_url)
    projection = RecordingProjection()
    runner = ProjectionRunner(ledger.store, views, projection, batch_max=50)

    # The runner follows the log while eight threads write every kind of change.
    with following(runner):
        writers = write_concurrently(ledger, clock, banks, threads=8, operations=30)
        caught_up(runner)
    assert runner.lag_events() == 0
    live = snapshot(views)

    # The writers did get through (refusals are part of the mix, not the whole of it).
    assert sum(w.refusals for w in writers) < 8 * 30 // 2
    assert_each_event_once(ledger, banks, projection.applied)
    check_views(ledger, views, banks)
    # Dropped and rebuilt from the events, the view is the same, row for row.
    assert rebuilt(runner) == live


def test_a_batch_is_bounded_by_the_size_of_its_events(
    durable_store_url: str,
    make_ledger: MakeLedger,
    views_opener: OpenViews,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger = make_ledger(durable_store_url)
    open_bank(ledger, "north")
    small = ledger.get_bank("north").position
    # Five requests of 200 transfers: each becomes one large event.
    for request in range(5):
        pairs = [("ann", "bob"), ("bob", "ann")] * 100
        items = tuple(transfer(f"t{request}-{i}", *pair, 1) for i, pair in enumerate(pairs))
        results = ledger.execute("north", CreateTransfers(items=items))
        assert all(result.error is None for result in results)
    notifications = ledger.store.recorder.select_notifications(start=1, limit=1_000)
    large = max(len(n.state) for n in notifications)
    # A batch may hold about two and a half large events.
    monkeypatch.setattr(projections.runner, "batch_bytes_max", large * 5 // 2)
    views = views_opener(durable_store_url)
    runner = ProjectionRunner(ledger.store, views, AccountsProjection())

    # The small events fit in one batch with the first large ones; then two at a time.
    assert runner.run_once() == small + 2
    assert [runner.run_once() for _ in range(3)] == [2, 1, 0]
    check_views(ledger, views, ["north"])


# ----------------------------------------------------------------- late commits


def _delay_commits(recorder: Any, seed: int, delay_seconds_max: float) -> None:
    """Sleep inside each insert transaction, after its ids are assigned and before commit."""
    chooser = random.Random(seed)
    lock = threading.Lock()
    fetch_ids = recorder._fetch_ids_after_insert_events

    def delayed(curs: Any, stored_events: Sequence[Any], **kwargs: Any) -> Any:
        ids = fetch_ids(curs, stored_events, **kwargs)
        with lock:
            delay = chooser.uniform(0, delay_seconds_max)
        time.sleep(delay)
        return ids

    recorder._fetch_ids_after_insert_events = delayed


@pytest.mark.postgres
@pytest.mark.parametrize("durable_store_url", ["postgres"], indirect=True)
def test_the_runner_never_skips_a_late_commit(
    durable_store_url: str, make_ledger: MakeLedger, clock: Clock, views_opener: OpenViews
) -> None:
    ledger = make_ledger(durable_store_url)
    banks = [f"bank-{n}" for n in range(4)]
    open_banks(ledger, banks)
    views = views_opener(durable_store_url)
    projection = RecordingProjection()
    runner = ProjectionRunner(ledger.store, views, projection, batch_max=20)
    # Commits are held back at random after their rows were given notification ids.
    _delay_commits(ledger.store.recorder, seed=11, delay_seconds_max=0.02)

    with following(runner):
        write_concurrently(ledger, clock, banks, threads=8, operations=25)
        caught_up(runner)
    live = snapshot(views)

    # Every event of every bank was applied once and in order: none was passed over.
    assert_each_event_once(ledger, banks, projection.applied)
    check_views(ledger, views, banks)
    assert rebuilt(runner) == live


# ----------------------------------------------------------------- two runners


def test_two_runners_on_one_projection_never_apply_an_event_twice(
    durable_store_url: str, make_ledger: MakeLedger, clock: Clock, views_opener: OpenViews
) -> None:
    ledger = make_ledger(durable_store_url)
    banks = ["north", "south"]
    open_banks(ledger, banks)
    write_concurrently(ledger, clock, banks, threads=2, operations=10)
    projections = [RecordingProjection(), RecordingProjection()]
    first, second = (
        ProjectionRunner(ledger.store, views_opener(durable_store_url), projection, batch_max=5)
        for projection in projections
    )

    # Both start at 0; once the first has moved on, the second's batch is refused whole.
    first.run_once()
    before = snapshot(first.views)
    with pytest.raises(PositionMovedError):
        second.run_once()
    assert snapshot(first.views) == before

    # Both then follow the log at once, while more is written.
    with following(first), following(second):
        write_concurrently(ledger, clock, banks, threads=4, operations=20, round_number=1)
        wait_until(
            lambda: first.stored_position() == ledger.store.recorder.max_notification_id(),
            "the runners to catch up",
        )
    assert_each_event_once(ledger, banks, *(p.applied for p in projections))
    check_views(ledger, first.views, banks)
    assert snapshot(first.views) == rebuilt(first)


# ----------------------------------------------------------------- bulk writes


def test_bulk_helpers_do_the_same_on_both_databases(
    durable_store_url: str, views_opener: OpenViews
) -> None:
    views = views_opener(durable_store_url)
    columns = (("k", "text"), ("n", "bigint"), ("note", "text"), ("maybe", "bigint"))
    awkward = "tab\there, line\nbreak, back\\slash, quote ' \" and a % sign"
    keys = [f"key-{n:04}" for n in range(1_234)]
    with views.transaction() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bulk_test")
        cursor.execute(
            "CREATE TABLE bulk_test (k TEXT PRIMARY KEY, n BIGINT NOT NULL, note TEXT NOT NULL,"
            " maybe BIGINT)"
        )
        # Appended in bulk (COPY on PostgreSQL), awkward text and NULLs included.
        insert_rows(
            cursor,
            "bulk_test",
            [name for name, _ in columns],
            [(key, 1, awkward, None) for key in keys[:1_000]],
            [sql_type for _, sql_type in columns],
        )
        # Upserted twice in the same transaction, overlapping what is there.
        upsert_rows(cursor, "bulk_test", columns, ("k",), [(k, 2, "two", 2) for k in keys[900:]])
        upsert_rows(
            cursor, "bulk_test", columns, ("k",), [(k, 3, awkward, None) for k in keys[1_200:]]
        )
        # Looked up by more keys than one IN list takes.
        found = select_in(cursor, "SELECT k, n FROM bulk_test WHERE", (), "k", keys[::2])
    assert sorted(found) == sorted(
        (k, 1 if i < 900 else 2 if i < 1_200 else 3) for i, k in enumerate(keys) if i % 2 == 0
    )
    rows = views.query("SELECT k, n, note, maybe FROM bulk_test ORDER BY k")
    assert len(rows) == len(keys)
    assert rows[0] == (keys[0], 1, awkward, None)
    assert rows[950] == (keys[950], 2, "two", 2)
    assert rows[-1] == (keys[-1], 3, awkward, None)
    with views.transaction() as cursor:
        cursor.execute("DROP TABLE bulk_test")


# ----------------------------------------------------------------- read-your-writes


def test_wait_for_a_bank_version(
    store_url: str, make_ledger: MakeLedger, views_opener: OpenViews
) -> None:
    ledger = make_ledger(store_url)
    open_bank(ledger, "north")
    ledger.execute("north", transfer("t1", "ann", "bob", 10))
    uuid = bank_uuid("north")
    version = ledger.get_bank("north").position
    runner = ProjectionRunner(ledger.store, views_opener(store_url), AccountsProjection())

    # Not applied yet: the wait gives up at its timeout.
    assert runner.wait_for(uuid, version, timeout_seconds=0.05) is False
    # Applied: it answers at once, for that version and any earlier one.
    runner.run_until_caught_up()
    assert runner.wait_for(uuid, version, timeout_seconds=0) is True
    assert runner.wait_for(uuid, 1, timeout_seconds=0) is True

    with following(runner):
        # A write made while the runner follows is waited for until it is applied.
        ledger.execute("north", transfer("t2", "bob", "ann", 5))
        written = ledger.get_bank("north").position
        assert runner.wait_for(uuid, written, timeout_seconds=WAIT_SECONDS) is True
        assert runner.bank_version(uuid) >= written
        # A version not written yet, or a bank that does not exist, is not reached.
        assert runner.wait_for(uuid, written + 1, timeout_seconds=0.05) is False
        assert runner.wait_for(bank_uuid("nowhere"), 1, timeout_seconds=0.05) is False
