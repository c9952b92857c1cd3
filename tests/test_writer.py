"""The per-bank writer: batching, failed commits, expiry while idle, and back-pressure.

To control timing without sleeping, the store's `insert_events` is wrapped: a test can hold
the writer inside a commit (so that requests queue up behind it) and make one commit fail,
before or after the rows reach the database.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from conftest import START, Clock, MakeLedger
from eventsourcing.persistence import StoredEvent

from ledger.application import loading
from ledger.application.ledger import Ledger
from ledger.domain import history
from ledger.domain.bank import bank_uuid
from ledger.domain.commands import Command, CreateBank, CreateTransfer, OpenAccount
from ledger.domain.errors import (
    DomainError,
    NotFound,
    Overloaded,
    PreconditionFailed,
    Unavailable,
)
from ledger.domain.transfers import TransfersCreated
from ledger.domain.views import TransferView

BANK = "riverside"
# How long a test waits for something the writer will do promptly; never reached when passing.
WAIT_SECONDS = 10.0


# ----------------------------------------------------------------- helpers


class GatedInsert:
    """Stands in for the recorder's insert_events: can hold a call open, or fail it once."""

    def __init__(self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
        recorder = ledger.store.recorder
        self._insert = recorder.insert_events
        self._lock = threading.Lock()
        self.calls = 0
        # Call numbers (from 1) to hold until `release` is set, and to fail.
        self.hold_calls: set[int] = set()
        self.fail_calls: dict[int, str] = {}  # call -> "before" or "after" the rows are stored
        self.holding = threading.Event()
        self.release = threading.Event()
        self.failed_events: list[StoredEvent] = []
        monkeypatch.setattr(recorder, "insert_events", self)

    def __call__(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        with self._lock:
            self.calls += 1
            call = self.calls
        if call in self.hold_calls:
            self.holding.set()
            assert self.release.wait(WAIT_SECONDS), "the test never released the writer"
        failure = self.fail_calls.get(call)
        if failure is None:
            return self._insert(stored_events, **kwargs)
        self.failed_events.extend(stored_events)
        if failure == "after":
            self._insert(stored_events, **kwargs)
        raise OSError(f"simulated store failure {failure} the insert")


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll until `condition` holds; fail (not hang) if it never does."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def queued(ledger: Ledger) -> int:
    """Requests waiting for the bank's writer."""
    return ledger.writers.queued(BANK)


def payment(
    transfer_id: str, payer: str, payee: str, minutes: int, **options: Any
) -> CreateTransfer:
    return CreateTransfer(
        transfer_id=transfer_id,
        payer_account_id=payer,
        payee_account_id=payee,
        amount_minutes=minutes,
        **options,
    )


def start_bank(ledger: Ledger) -> None:
    """Riverside with Ann and Bea (who may owe ten hours) and Cat (who may not owe)."""
    ledger.create_bank(CreateBank(bank_id=BANK, name="Riverside Time Bank"))
    for account_id, lower in [("ann", -600), ("bea", -600), ("cat", 0)]:
        ledger.execute(
            BANK, OpenAccount(account_id=account_id, kind="member", lower_limit_minutes=lower)
        )


class Callers:
    """Callers on their own threads; each one's answer (a result or an error) is kept by name."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._threads: list[threading.Thread] = []
        self.answers: dict[str, Any] = {}

    def send(self, name: str, command: Command) -> None:
        def call() -> None:
            try:
                self.answers[name] = self._ledger.execute(BANK, command)
            except DomainError as error:
                self.answers[name] = error

        thread = threading.Thread(target=call, name=name)
        self._threads.append(thread)
        thread.start()

    def join(self) -> dict[str, Any]:
        for thread in self._threads:
            thread.join(WAIT_SECONDS)
            assert not thread.is_alive(), f"{thread.name} got no answer"
        self._threads.clear()
        return self.answers


def reason(answer: Any) -> str:
    return answer.reason if isinstance(answer, DomainError) else "ok"


def created_transfer_ids(ledger: Ledger, events: Sequence[StoredEvent]) -> list[str]:
    """The ids of the transfers these stored events create (a TransfersCreated holds several)."""
    uuid = str(bank_uuid(BANK))
    decoded = [history.decode(uuid, bytes(stored.state)) for stored in events]
    return [
        item["transfer_id"]
        for event in decoded
        if isinstance(event.event, TransfersCreated)
        for item in event.event.transfers
    ]


def stored_events(ledger: Ledger) -> list[StoredEvent]:
    return list(ledger.store.recorder.select_events(bank_uuid(BANK)))


def replayed_transfers(ledger: Ledger) -> dict[str, TransferView]:
    """Every transfer as the events in the store alone say it stands (replayed from event 1)."""
    _, records = loading.replay_from_start(ledger.store, str(bank_uuid(BANK)))
    found = {
        transfer_id: records.transfer(transfer_id) for transfer_id in records.created_transfers
    }
    return {transfer_id: record.view() for transfer_id, record in found.items() if record}


def live_transfers(ledger: Ledger) -> dict[str, TransferView]:
    ids = replayed_transfers(ledger)
    return {transfer_id: ledger.get_transfer(BANK, transfer_id) for transfer_id in ids}


# ----------------------------------------------------------------- failed commits


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_failed_commit_answers_no_one_with_success(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    start_bank(ledger)
    gate = GatedInsert(ledger, monkeypatch)
    # The writer is held inside the commit of Ann's first payment...
    gate.hold_calls = {1}
    callers = Callers(ledger)
    callers.send("g1", payment("g1", "ann", "bea", 5))
    assert gate.holding.wait(WAIT_SECONDS)
    # ...while eight more requests queue up behind it: six payments, one that Cat cannot
    # afford, and a retry of the payment being committed.
    batch: dict[str, Command] = {f"t{n}": payment(f"t{n}", "ann", "bea", n) for n in range(1, 7)}
    batch["t7"] = payment("t7", "cat", "ann", 5)
    batch["g1-retry"] = payment("g1", "ann", "bea", 5)
    for name, command in batch.items():
        callers.send(name, command)
    wait_until(lambda: queued(ledger) == len(batch))
    # The next commit, which holds all eight, fails (before or after the rows are written).
    gate.fail_calls = {2: when}
    gate.release.set()
    answers = callers.join()
    # The first payment succeeded; everyone in the failed batch was told to retry, nobody
    # was told success, not even the retry of a payment that had been committed.
    first = answers["g1"]
    assert isinstance(first, TransferView)
    assert {name: reason(answers[name]) for name in batch} == dict.fromkeys(batch, "COMMIT_FAILED")
    assert all(isinstance(answers[name], Unavailable) for name in batch)
    # That batch held exactly the six payments Ann could make (the refusal and the retry
    # record nothing), grouped into one event.
    failed_ids = created_transfer_ids(ledger, gate.failed_events)
    assert sorted(failed_ids) == [f"t{n}" for n in range(1, 7)]
    assert len(gate.failed_events) == 1
    # What the ledger shows now is what the store holds: nothing if the rows never got
    # there; all six if they did, although nobody was told.
    expected_ids = {"g1"} | ({f"t{n}" for n in range(1, 7)} if when == "after" else set())
    assert set(replayed_transfers(ledger)) == expected_ids
    assert live_transfers(ledger) == replayed_transfers(ledger)
    # Everyone retries with the same ids; every retry gets the answer it should have had.
    for name, command in batch.items():
        callers.send(name, command)
    answers = callers.join()
    assert {name: reason(answers[name]) for name in batch} == {
        **dict.fromkeys(batch, "ok"),
        "t7": "EXCEEDS_LOWER_LIMIT",
    }
    assert answers["g1-retry"] == first
    # Nothing was lost or recorded twice, and the books balance.
    created = Counter(created_transfer_ids(ledger, stored_events(ledger)))
    assert created == Counter(["g1", "t1", "t2", "t3", "t4", "t5", "t6"])
    versions = [stored.originator_version for stored in stored_events(ledger)]
    assert versions == list(range(1, len(versions) + 1))
    assert ledger.get_account(BANK, "ann").balance_minutes == -(5 + 1 + 2 + 3 + 4 + 5 + 6)
    assert live_transfers(ledger) == replayed_transfers(ledger)
    for transfer_id in created:
        assert answers[transfer_id] == replayed_transfers(ledger)[transfer_id]


def test_a_refused_command_does_not_fail_its_batch(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    start_bank(ledger)
    gate = GatedInsert(ledger, monkeypatch)
    # The writer is held in a commit while three requests queue behind it.
    gate.hold_calls = {1}
    callers = Callers(ledger)
    callers.send("first", payment("t0", "ann", "bea", 1))
    assert gate.holding.wait(WAIT_SECONDS)
    for name, command in [
        ("ok-1", payment("t1", "ann", "bea", 10)),
        ("refused", payment("t2", "cat", "bea", 11)),
        ("ok-2", payment("t3", "bea", "cat", 10)),
    ]:
        callers.send(name, command)
    wait_until(lambda: queued(ledger) == 3)
    gate.release.set()
    answers = callers.join()
    # Each gets its own answer; the refusal is named and does not touch its neighbours.
    assert {name: reason(answer) for name, answer in answers.items()} == {
        "first": "ok",
        "ok-1": "ok",
        "refused": "EXCEEDS_LOWER_LIMIT",
        "ok-2": "ok",
    }
    assert isinstance(answers["refused"], PreconditionFailed)
    # The three queued requests were committed together, in one write.
    assert gate.calls == 2
    assert sorted(replayed_transfers(ledger)) == ["t0", "t1", "t3"]
    assert ledger.get_account(BANK, "cat").balance_minutes == 10


def test_a_caller_that_stops_waiting_can_retry_and_gets_the_original(
    store_url: str, make_ledger: MakeLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = make_ledger(store_url, writer_timeout_seconds=1.0)
    start_bank(ledger)
    gate = GatedInsert(ledger, monkeypatch)
    # The commit of Ann's payment is slow: the caller gives up before it is confirmed.
    gate.hold_calls = {1}
    try:
        with pytest.raises(Unavailable) as info:
            ledger.execute(BANK, payment("t1", "ann", "bea", 30))
        assert info.value.reason == "WRITER_TIMEOUT"
    finally:
        gate.release.set()
    # The write still completes; a retry with the same id returns it, recorded once.
    wait_until(lambda: "t1" in replayed_transfers(ledger))
    retried = ledger.execute(BANK, payment("t1", "ann", "bea", 30))
    assert retried == replayed_transfers(ledger)["t1"]
    assert created_transfer_ids(ledger, stored_events(ledger)) == ["t1"]


# ----------------------------------------------------------------- expiry while idle


def test_the_idle_writer_expires_a_hold_at_its_deadline(ledger: Ledger, clock: Clock) -> None:
    start_bank(ledger)
    # Ann holds 30 minutes for Bea for one minute, and 20 more with no deadline.
    ledger.execute(BANK, payment("h1", "ann", "bea", 30, pending=True, timeout_seconds=60))
    ledger.execute(BANK, payment("h2", "ann", "bea", 20, pending=True))
    position = ledger.get_bank(BANK).position
    # A second before the deadline, the idle writer wakes several times and leaves it alone.
    clock.advance(seconds=59)
    reads = clock.reads
    wait_until(lambda: clock.reads >= reads + 3)
    assert ledger.get_transfer(BANK, "h1").status == "pending"
    assert ledger.get_bank(BANK).position == position
    # At the deadline the writer expires it without any request arriving.
    clock.advance(seconds=1)
    wait_until(lambda: ledger.get_transfer(BANK, "h1").status == "expired")
    expired = ledger.get_transfer(BANK, "h1")
    assert (expired.resolved_at, expired.posted_amount_minutes) == (
        START + timedelta(seconds=60),
        0,
    )
    # Only h1's hold is released; the hold without a deadline stays, a day later too.
    clock.advance(days=1)
    reads = clock.reads
    wait_until(lambda: clock.reads >= reads + 3)
    ann = ledger.get_account(BANK, "ann")
    assert (ann.pending_debit_minutes, ann.balance_minutes) == (20, 0)
    assert ledger.get_transfer(BANK, "h2").status == "pending"
    # The expiry is one event in the store, which replays to what the ledger shows.
    assert ledger.get_bank(BANK).position == position + 1
    assert live_transfers(ledger) == replayed_transfers(ledger)


def test_an_expiry_whose_commit_fails_is_retried_and_recorded_once(
    ledger: Ledger, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    start_bank(ledger)
    ledger.execute(BANK, payment("h1", "ann", "bea", 30, pending=True, timeout_seconds=60))
    position = ledger.get_bank(BANK).position
    # The first attempt to commit the expiry fails.
    gate = GatedInsert(ledger, monkeypatch)
    gate.fail_calls = {1: "before"}
    clock.advance(seconds=60)
    # The writer tries again on a later wake-up, and the hold expires exactly once.
    wait_until(lambda: ledger.get_transfer(BANK, "h1").status == "expired")
    assert gate.calls == 2
    assert ledger.get_bank(BANK).position == position + 1
    assert ledger.get_account(BANK, "ann").pending_debit_minutes == 0
    assert live_transfers(ledger) == replayed_transfers(ledger)


# ----------------------------------------------------------------- back-pressure


def test_a_full_queue_refuses_new_requests_until_it_drains(
    store_url: str, make_ledger: MakeLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At most two requests may wait for the writer.
    ledger = make_ledger(store_url, writer_queue_max=2)
    start_bank(ledger)
    gate = GatedInsert(ledger, monkeypatch)
    # The writer is held in a commit while two requests fill the queue.
    gate.hold_calls = {1}
    callers = Callers(ledger)
    callers.send("g1", payment("g1", "ann", "bea", 1))
    assert gate.holding.wait(WAIT_SECONDS)
    callers.send("q1", payment("q1", "ann", "bea", 2))
    callers.send("q2", payment("q2", "ann", "bea", 3))
    wait_until(lambda: queued(ledger) == 2)
    # A third is refused at once, as overloaded, and is not queued.
    try:
        with pytest.raises(Overloaded) as info:
            ledger.execute(BANK, payment("x1", "ann", "bea", 4))
        assert info.value.reason == "WRITER_OVERLOADED"
        assert queued(ledger) == 2
    finally:
        gate.release.set()
    # Once the writer catches up, the waiting requests succeed and the refused one never ran.
    answers = callers.join()
    assert {name: reason(answer) for name, answer in answers.items()} == dict.fromkeys(
        ["g1", "q1", "q2"], "ok"
    )
    with pytest.raises(NotFound):
        ledger.get_transfer(BANK, "x1")
    # Retried later with the same id, it goes through.
    assert ledger.execute(BANK, payment("x1", "ann", "bea", 4)).status == "posted"
    assert ledger.get_account(BANK, "ann").balance_minutes == -10
