"""The independent verifier: clean histories pass; tampered, gapped or rule-breaking ones do not."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.domain import Aggregate

from ledger.application.ledger import Ledger
from ledger.application.store import LedgerStore
from ledger.config import Settings
from ledger.domain import chain, invariants
from ledger.domain.bank import Bank, bank_uuid
from ledger.domain.commands import (
    ChangeLimits,
    ChangeStatus,
    CreateBank,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    PostPending,
    ReverseTransfer,
    VoidPending,
)
from ledger.domain.errors import DomainError
from ledger.domain.invariants import Reason, RecordedEvent, Report, Verifier, Violation, verify

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def everyday_history(ledger: Ledger, clock: Clock) -> None:
    """One of each kind of event, all accepted by the ledger."""
    ledger.create_bank(CreateBank(bank_id="b1", name="Riverside time bank"))
    ledger.execute("b1", OpenAccount("ann", "member", lower_limit_minutes=-120))
    ledger.execute("b1", OpenAccount("bob", "member", -120, upper_limit_minutes=600))
    ledger.execute("b1", OpenAccount("pool", "pool", -1000))
    # Ann receives an hour of gardening from Bob.
    ledger.execute("b1", CreateTransfer("t1", "ann", "bob", 60, memo="gardening ✿"))
    # A pending hold that Bob confirms in part, one that is voided, one that expires.
    ledger.execute("b1", CreateTransfer("t2", "ann", "bob", 30, pending=True))
    ledger.execute("b1", PostPending("r1", "t2", amount_minutes=20))
    ledger.execute("b1", CreateTransfer("t3", "bob", "pool", 15, pending=True))
    ledger.execute("b1", VoidPending("r2", "t3", reason="duplicate"))
    ledger.execute("b1", CreateTransfer("t4", "pool", "ann", 45, pending=True, timeout_seconds=60))
    clock.now += timedelta(minutes=5)
    # A linked batch, a reversal, and a limit lowered below Ann's balance (-80 < -50).
    batch = (CreateTransfer("t5", "pool", "bob", 10), CreateTransfer("t6", "pool", "ann", 10))
    ledger.execute("b1", CreateTransfers(batch, linked=True))
    ledger.execute("b1", ReverseTransfer("t7", "t6", reason="wrong member"))
    ledger.execute("b1", ChangeLimits("r3", "ann", lower_limit_minutes=-50))
    ledger.execute("b1", ChangeStatus("r4", "bob", "freeze"))
    ledger.execute("b1", OpenAccount("eve", "member"))
    ledger.execute("b1", ChangeStatus("r5", "eve", "close"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(clock: Clock) -> Iterator[Ledger]:
    ledger = Ledger(Settings(database_url="memory://"), clock=clock)
    yield ledger
    ledger.close()


def stored_events(store: LedgerStore, bank_id: str = "b1") -> list[Any]:
    return list(store.repository.event_store.get(bank_uuid(bank_id)))


def reasons(report: Report) -> list[tuple[int, Reason]]:
    return [(v.version, v.reason) for v in report.violations]


def created_ids(event: Any) -> list[str]:
    """The transfers a TransfersCreated event created (none for any other event)."""
    return [item["transfer_id"] for item in getattr(event, "transfers", [])]


def version_creating(events: list[Any], transfer_id: str) -> int:
    """The version of the event that created a transfer."""
    return next(int(e.originator_version) for e in events if transfer_id in created_ids(e))


def with_item(event: Any, index: int, **change: Any) -> Any:
    """The event with one of its created transfers changed (the hash left as it was)."""
    items = [dict(item) for item in event.transfers]
    items[index].update(change)
    return dataclasses.replace(event, transfers=items)


# --------------------------------------------------------------------------- clean histories


def test_clean_history_verifies_and_recomputes_what_the_ledger_shows(
    ledger: Ledger, clock: Clock
) -> None:
    everyday_history(ledger, clock)
    events = stored_events(ledger.store)

    report = verify(events)

    # Nothing is reported, every event was read, and the chain ends where the ledger's does.
    assert report.ok
    assert report.violations == ()
    bank = ledger.get_bank("b1")
    assert report.events_checked == len(events) == bank.position
    assert report.position == bank.position
    assert report.chain_head == bank.chain_head
    assert report.bank_uuid == str(bank_uuid("b1"))
    # The recomputed accounts equal the ledger's own, and balance to zero.
    views, _ = ledger.list_accounts("b1", 0, "")
    assert report.balances == {v.account_id: v.balance_minutes for v in views}
    assert sum(report.balances.values()) == 0
    for view in views:
        totals = report.accounts[view.account_id]
        assert (totals.status, totals.lower_limit_minutes, totals.upper_limit_minutes) == (
            view.status,
            view.lower_limit_minutes,
            view.upper_limit_minutes,
        )
        assert (totals.pending_debit_minutes, totals.pending_credit_minutes) == (
            view.pending_debit_minutes,
            view.pending_credit_minutes,
        )
    # And so do the transfers: t4 expired when the clock passed its deadline.
    for transfer_id, transfer in report.transfers.items():
        transfer_view = ledger.get_transfer("b1", transfer_id)
        assert (transfer.kind, transfer.status, transfer.posted_amount_minutes) == (
            transfer_view.kind,
            transfer_view.status,
            transfer_view.posted_amount_minutes,
        )
        assert transfer.reversed_by_transfer_id == transfer_view.reversed_by_transfer_id
    assert report.transfers["t4"].status == "expired"
    assert report.accounts["ann"].balance_minutes < report.accounts["ann"].lower_limit_minutes
    # The linked batch was one event of two transfers, and was checked like the rest.
    assert [created_ids(e) for e in events if len(created_ids(e)) > 1] == [["t5", "t6"]]
    assert {"t5", "t6"} <= report.transfers.keys()


def test_streaming_reports_at_each_step_what_a_whole_run_reports(
    ledger: Ledger, clock: Clock
) -> None:
    everyday_history(ledger, clock)
    events = stored_events(ledger.store)
    verifier = Verifier(bank_uuid("b1"))

    # Each event alone breaks nothing, and the position follows the events.
    for event in events:
        assert verifier.feed(event) == []
        assert verifier.report().position == event.originator_version

    assert verifier.report() == verify(events)


def test_a_report_is_a_snapshot(ledger: Ledger, clock: Clock) -> None:
    everyday_history(ledger, clock)
    events = stored_events(ledger.store)
    verifier = Verifier()
    for event in events[:5]:
        verifier.feed(event)
    early = verifier.report()
    early_ann = dataclasses.replace(early.accounts["ann"])

    for event in events[5:]:
        verifier.feed(event)

    # Feeding more events leaves an earlier report as it was.
    assert early.position == 5
    assert early.accounts["ann"] == early_ann
    assert verifier.report().position == len(events)


def test_recorded_events_verify_like_domain_events(ledger: Ledger, clock: Clock) -> None:
    everyday_history(ledger, clock)
    events = stored_events(ledger.store)

    # An auditor receiving plain records (not event objects) gets the same answer.
    records = [RecordedEvent.of(event) for event in events]

    assert verify(records) == verify(events)


def test_history_written_by_concurrent_callers_verifies(clock: Clock) -> None:
    # The writer waits a moment to gather requests, so concurrent commands share a commit
    # and their new transfers share TransfersCreated events.
    ledger = Ledger(Settings(database_url="memory://", writer_batch_wait_seconds=0.2), clock=clock)
    ledger.create_bank(CreateBank(bank_id="b1", name="Busy bank"))
    members = [f"m{i}" for i in range(6)]
    payments = [(f"t{i}", members[i % 6], members[(i * 5 + 1) % 6], 1 + i % 7) for i in range(30)]
    commands: list[Any] = [OpenAccount(m, "member", lower_limit_minutes=-10_000) for m in members]
    with ThreadPoolExecutor(max_workers=40) as pool:
        list(pool.map(lambda c: ledger.execute("b1", c), commands))
        # Each payment twice (a client retrying at once), and some that must be refused.
        commands = [CreateTransfer(t, payer, payee, n) for t, payer, payee, n in payments] * 2
        commands += [CreateTransfer(f"x{i}", "m0", "nobody", 5) for i in range(5)]
        outcomes = list(pool.map(lambda c: _outcome(ledger, c), commands))
    events = stored_events(ledger.store)
    bank = ledger.get_bank("b1")
    ledger.close()

    # Every payment was recorded once, whichever copy came first; the strangers were refused.
    assert outcomes.count("ACCOUNT_NOT_FOUND") == 5
    assert outcomes.count("ok") == 2 * len(payments)
    report = verify(events)
    assert report.ok, report.violations
    assert (report.position, report.chain_head) == (bank.position, bank.chain_head)
    expected: dict[str, int] = dict.fromkeys(members, 0)
    for _, payer, payee, amount in payments:
        expected[payer] -= amount
        expected[payee] += amount
    assert report.balances == expected
    assert set(report.transfers) == {t for t, *_ in payments}
    # And the commands really were grouped: fewer events than transfers.
    assert len([e for e in events if created_ids(e)]) < len(payments)


def _outcome(ledger: Ledger, command: CreateTransfer) -> str:
    try:
        ledger.execute("b1", command)
    except DomainError as error:
        return error.reason
    return "ok"


# --------------------------------------------------------------------------- the history itself


def test_tampered_event_object_is_reported_at_its_version(ledger: Ledger, clock: Clock) -> None:
    everyday_history(ledger, clock)
    events = stored_events(ledger.store)
    version = version_creating(events, "t1")

    # Someone edits the memo of t1 in place, leaving its event's hash as it was.
    events[version - 1] = with_item(events[version - 1], 0, memo="nothing happened")

    report = verify(events)
    assert reasons(report) == [(version, Reason.CHAIN_BROKEN)]
    assert report.first_bad_version == version


def test_tampered_and_rehashed_event_breaks_the_next_link(ledger: Ledger, clock: Clock) -> None:
    everyday_history(ledger, clock)
    events = stored_events(ledger.store)
    version = version_creating(events, "t1")
    edited = with_item(events[version - 1], 0, amount_minutes=30)

    # A cleverer edit halves the amount and recomputes that event's own hash...
    fields = {k: v for k, v in vars(edited).items() if k not in invariants.ENVELOPE_KEYS}
    rehashed = chain.next_hash(
        events[version - 2].chain_hash,
        str(edited.originator_id),
        version,
        "TransfersCreated",
        edited.timestamp,
        fields,
    )
    events[version - 1] = dataclasses.replace(edited, chain_hash=rehashed)

    # ...so the event after it no longer follows: the first event the chain cannot vouch for.
    report = verify(events)
    assert reasons(report) == [(version + 1, Reason.CHAIN_BROKEN)]


def sqlite_history(tmp_path: Path) -> Settings:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    clock = Clock()
    ledger = Ledger(settings, clock=clock)
    everyday_history(ledger, clock)
    ledger.close()
    return settings


def edit_rows(settings: Settings, sql: str, *params: object) -> int:
    path = settings.eventsourcing_env()["SQLITE_DBNAME"]
    with sqlite3.connect(path) as connection:
        changed = connection.execute(sql, params).rowcount
    connection.close()
    return changed


def test_modified_row_is_reported_at_its_version(tmp_path: Path) -> None:
    settings = sqlite_history(tmp_path)
    uuid_hex = bank_uuid("b1").hex
    path = settings.eventsourcing_env()["SQLITE_DBNAME"]
    with sqlite3.connect(path) as connection:
        (state,) = connection.execute(
            "SELECT state FROM stored_events WHERE originator_id = ? AND originator_version = 5",
            (uuid_hex,),
        ).fetchone()
    connection.close()
    body = json.loads(state)
    assert [item["transfer_id"] for item in body["transfers"]] == ["t1"]

    # Someone with database access turns t1's 60 minutes into 6.
    body["transfers"][0]["amount_minutes"] = 6
    changed = edit_rows(
        settings,
        "UPDATE stored_events SET state = ? WHERE originator_id = ? AND originator_version = 5",
        json.dumps(body).encode(),
        uuid_hex,
    )
    assert changed == 1

    # A fresh reader of the store finds the edit at version 5 and nowhere else.
    store = LedgerStore(env=settings.eventsourcing_env())
    report = verify(stored_events(store))
    store.close()
    assert reasons(report) == [(5, Reason.CHAIN_BROKEN)]


def test_missing_row_is_reported_as_a_gap(tmp_path: Path) -> None:
    settings = sqlite_history(tmp_path)

    # Someone deletes event 6 (the pending hold t2).
    changed = edit_rows(
        settings,
        "DELETE FROM stored_events WHERE originator_id = ? AND originator_version = 6",
        bank_uuid("b1").hex,
    )
    assert changed == 1

    store = LedgerStore(env=settings.eventsourcing_env())
    report = verify(stored_events(store))
    store.close()
    # The gap is named at the missing version; what follows from it (t2 unknown when it is
    # posted) is reported too, but the chain is not blamed again for the same gap.
    assert report.first_bad_version == 6
    assert reasons(report)[0] == (6, Reason.VERSION_GAP)
    assert Reason.CHAIN_BROKEN not in {v.reason for v in report.violations}
    assert (7, Reason.UNKNOWN_TRANSFER) in reasons(report)


def test_missing_last_rows_show_as_a_shorter_chain(ledger: Ledger, clock: Clock) -> None:
    everyday_history(ledger, clock)
    events = stored_events(ledger.store)

    # Truncation is invisible from inside the history: the auditor compares chain heads.
    report = verify(events[:-2])

    assert report.ok
    assert report.position == len(events) - 2
    assert report.chain_head != ledger.get_bank("b1").chain_head


def test_repeated_and_foreign_events_are_not_applied(ledger: Ledger, clock: Clock) -> None:
    everyday_history(ledger, clock)
    ledger.create_bank(CreateBank(bank_id="b2", name="Hillside"))
    events = stored_events(ledger.store)
    verifier = Verifier()
    for event in events[:6]:
        verifier.feed(event)
    before = verifier.report()

    # Event 5 again, and another bank's first event, change nothing.
    assert [v.reason for v in verifier.feed(events[4])] == [Reason.VERSION_OUT_OF_ORDER]
    foreign = stored_events(ledger.store, "b2")[0]
    assert [v.reason for v in verifier.feed(foreign)] == [Reason.WRONG_BANK]
    after = verifier.report()
    assert (after.position, after.balances, after.chain_head) == (
        before.position,
        before.balances,
        before.chain_head,
    )
    # The rest of the history still fits on.
    for event in events[6:]:
        assert verifier.feed(event) == []


def test_garbage_is_reported_not_raised(ledger: Ledger, clock: Clock) -> None:
    everyday_history(ledger, clock)
    events = stored_events(ledger.store)
    verifier = Verifier()
    for event in events[:4]:
        verifier.feed(event)

    # Not an event at all; then an event whose amount is text; then one without a zone.
    assert [v.reason for v in verifier.feed(object())] == [Reason.MALFORMED_EVENT]
    assert created_ids(events[4]) == ["t1"]
    broken = with_item(events[4], 0, amount_minutes="60")
    found = verifier.feed(broken)
    assert Reason.MALFORMED_EVENT in {v.reason for v in found}
    naive = dataclasses.replace(events[5], timestamp=T0.replace(tzinfo=None))
    assert [v.reason for v in verifier.feed(naive)] == [Reason.MALFORMED_EVENT]
    assert verifier.report().violation_count == 1 + len(found) + 1


def test_violations_kept_are_bounded(
    ledger: Ledger, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    everyday_history(ledger, clock)
    events = stored_events(ledger.store)
    monkeypatch.setattr(invariants, "violations_kept_max", 3)
    verifier = Verifier()
    verifier.feed(events[0])

    # Ten replays of the first event: all counted, only three kept.
    for _ in range(10):
        verifier.feed(events[0])

    report = verifier.report()
    assert report.violation_count == 10
    assert len(report.violations) == 3
    assert not report.ok


# --------------------------------------------------------------------------- crafted histories


class History:
    """A bank's events: a real prefix from the Bank aggregate, then crafted events on its chain.

    A crafted event carries a correct hash, so the only thing wrong with it is the rule it breaks.
    """

    def __init__(self) -> None:
        self.bank = Bank.create(CreateBank(bank_id="b1", name="Crafted"), T0)
        self.events: list[Any] = []
        self.now = T0

    def run(self, *commands: Any) -> History:
        assert not self.events, "real events come before crafted ones"
        for command in commands:
            self.bank.execute(command, self.now)
        return self

    def craft(self, event_class: type[Aggregate.Event], **fields: Any) -> int:
        if not self.events:
            self.events = list(self.bank.collect_events())
        previous = self.events[-1]
        version = int(previous.originator_version) + 1
        chain_hash = chain.next_hash(
            previous.chain_hash, str(self.bank.id), version, event_class.__name__, self.now, fields
        )
        self.events.append(
            event_class(  # type: ignore[call-arg]
                originator_id=self.bank.id,
                originator_version=version,
                timestamp=self.now,
                chain_hash=chain_hash,
                **fields,
            )
        )
        return version

    def transfer(
        self,
        transfer_id: str,
        payer: str,
        payee: str,
        amount: int,
        *,
        pending: bool = False,
        deadline: datetime | None = None,
    ) -> int:
        """One transfer, alone in its event."""
        return self.group(
            item(transfer_id, payer, payee, amount, pending=pending, deadline=deadline)
        )

    def group(self, *items: Any) -> int:
        """Several transfers (items as the Bank records them, or anything else) in one event."""
        return self.craft(Bank.TransfersCreated, transfers=list(items))

    def post(self, request_id: str, transfer_id: str, amount: int) -> int:
        return self.craft(
            Bank.PendingPosted,
            request_id=request_id,
            transfer_id=transfer_id,
            amount_minutes=amount,
            posted_amount_minutes=amount,
            actor="",
        )

    def void(self, request_id: str, transfer_id: str) -> int:
        return self.craft(
            Bank.PendingVoided, request_id=request_id, transfer_id=transfer_id, reason="", actor=""
        )

    def expire(self, transfer_id: str) -> int:
        return self.craft(Bank.PendingExpired, transfer_id=transfer_id)

    def reverse(self, transfer_id: str, reverses: str, payer: str, payee: str, amount: int) -> int:
        return self.craft(
            Bank.TransferReversed,
            transfer_id=transfer_id,
            reverses_transfer_id=reverses,
            payer_account_id=payer,
            payee_account_id=payee,
            amount_minutes=amount,
            reason="crafted",
            actor="",
        )

    def limits(self, request_id: str, account_id: str, lower: int, upper: int | None) -> int:
        return self.craft(
            Bank.AccountLimitsChanged,
            request_id=request_id,
            account_id=account_id,
            lower_limit_minutes=lower,
            upper_limit_minutes=upper,
            reason="",
            actor="",
        )

    def report(self) -> Report:
        return verify(self.events)


def item(
    transfer_id: str,
    payer: str,
    payee: str,
    amount: int,
    *,
    pending: bool = False,
    deadline: datetime | None = None,
) -> dict[str, Any]:
    """One created transfer as a TransfersCreated event holds it."""
    return {
        "transfer_id": transfer_id,
        "payer_account_id": payer,
        "payee_account_id": payee,
        "amount_minutes": amount,
        "memo": "",
        "category": "",
        "service_date": "",
        "pending": pending,
        "timeout_seconds": 0,
        "actor": "",
        "deadline": deadline.isoformat(timespec="microseconds") if deadline else "",
    }


def members() -> History:
    """Ann may owe 100 minutes; Bob may owe 100 and hold at most 50; the pool has room."""
    return History().run(
        OpenAccount("ann", "member", lower_limit_minutes=-100),
        OpenAccount("bob", "member", lower_limit_minutes=-100, upper_limit_minutes=50),
        OpenAccount("pool", "pool", lower_limit_minutes=-10_000),
    )


def test_crafted_clean_prefix_verifies() -> None:
    history = members()
    version = history.transfer("t1", "ann", "bob", 40)

    # The crafting itself is sound: a legal crafted event reports nothing.
    report = history.report()
    assert report.ok
    assert report.position == version
    assert report.balances == {"ann": -40, "bob": 40, "pool": 0}


Craft = Callable[[History], int]


def _unbalanced(h: History) -> int:
    # Minutes leave Ann for an account the bank never opened.
    return h.transfer("t1", "ann", "ghost", 10)


def _over_lower(h: History) -> int:
    # Ann pays 101 minutes with a lower limit of -100.
    return h.transfer("t1", "ann", "pool", 101)


def _pending_over_lower(h: History) -> int:
    # 60 posted and 41 held: posted-plus-pending goes to -101.
    h.transfer("t1", "ann", "pool", 60)
    return h.transfer("t2", "ann", "pool", 41, pending=True)


def _over_upper(h: History) -> int:
    # Bob may hold 50: 30 posted plus 21 held is 51.
    h.transfer("t1", "ann", "bob", 30)
    return h.transfer("t2", "ann", "bob", 21, pending=True)


def _debit_after_lowering(h: History) -> int:
    # Ann owes 80; her limit is tightened to -50 (allowed), then she pays 1 more.
    h.transfer("t1", "ann", "pool", 80)
    h.limits("r1", "ann", -50, None)
    return h.transfer("t2", "ann", "pool", 1)


def _credit_after_lowering(h: History) -> int:
    # Bob holds 50; his cap is cut to 20 (allowed), then he receives 1 more.
    h.transfer("t1", "ann", "bob", 50)
    h.limits("r1", "bob", -100, 20)
    return h.transfer("t2", "ann", "bob", 1)


def _negative_hold(h: History) -> int:
    return h.transfer("t1", "ann", "bob", -5, pending=True)


def _post_twice(h: History) -> int:
    h.transfer("t1", "ann", "bob", 10, pending=True)
    h.post("r1", "t1", 10)
    return h.post("r2", "t1", 10)


def _void_after_expiry(h: History) -> int:
    h.transfer("t1", "ann", "bob", 10, pending=True, deadline=T0)
    h.expire("t1")
    return h.void("r1", "t1")


def _post_immediate(h: History) -> int:
    h.transfer("t1", "ann", "bob", 10)
    return h.post("r1", "t1", 10)


def _expire_early(h: History) -> int:
    h.transfer("t1", "ann", "bob", 10, pending=True, deadline=T0 + timedelta(hours=1))
    return h.expire("t1")


def _post_more_than_held(h: History) -> int:
    h.transfer("t1", "ann", "bob", 10, pending=True)
    return h.post("r1", "t1", 11)


def _reverse_reversal(h: History) -> int:
    h.transfer("t1", "ann", "bob", 10)
    h.reverse("t2", "t1", "bob", "ann", 10)
    return h.reverse("t3", "t2", "ann", "bob", 10)


def _reverse_twice(h: History) -> int:
    h.transfer("t1", "ann", "bob", 10)
    h.reverse("t2", "t1", "bob", "ann", 10)
    return h.reverse("t3", "t1", "bob", "ann", 10)


def _reverse_voided(h: History) -> int:
    h.transfer("t1", "ann", "bob", 10, pending=True)
    h.void("r1", "t1")
    return h.reverse("t2", "t1", "bob", "ann", 10)


def _reverse_wrong_amount(h: History) -> int:
    h.transfer("t1", "ann", "bob", 10)
    return h.reverse("t2", "t1", "bob", "ann", 9)


def _reused_request_id(h: History) -> int:
    h.transfer("t1", "ann", "bob", 10, pending=True)
    h.transfer("t2", "ann", "bob", 10, pending=True)
    h.void("r1", "t1")
    return h.void("r1", "t2")


def _reused_transfer_id(h: History) -> int:
    h.transfer("t1", "ann", "bob", 10)
    return h.transfer("t1", "ann", "bob", 10)


def _closed_account_moves(h: History) -> int:
    h.craft(
        Bank.AccountStatusChanged,
        request_id="r1",
        account_id="bob",
        action="close",
        status="closed",
        reason="",
        actor="",
    )
    return h.transfer("t1", "ann", "bob", 10)


def _closed_with_balance(h: History) -> int:
    h.transfer("t1", "ann", "bob", 10)
    return h.craft(
        Bank.AccountStatusChanged,
        request_id="r1",
        account_id="bob",
        action="close",
        status="closed",
        reason="",
        actor="",
    )


def _over_lower_in_group(h: History) -> int:
    # 60 and then 41 in one event: the second takes Ann to -101.
    return h.group(item("t1", "ann", "pool", 60), item("t2", "ann", "pool", 41))


def _unknown_account_in_group(h: History) -> int:
    # The second of three transfers pays an account the bank never opened.
    return h.group(
        item("t1", "ann", "bob", 5), item("t2", "bob", "ghost", 5), item("t3", "bob", "ann", 5)
    )


def _reused_transfer_id_in_group(h: History) -> int:
    return h.group(item("t1", "ann", "bob", 10), item("t1", "ann", "bob", 10))


def _closed_account_moves_in_group(h: History) -> int:
    h.craft(
        Bank.AccountStatusChanged,
        request_id="r1",
        account_id="bob",
        action="close",
        status="closed",
        reason="",
        actor="",
    )
    # The pool pays Ann, then Ann pays the closed account, in one event.
    return h.group(item("t1", "pool", "ann", 10), item("t2", "ann", "bob", 10))


@pytest.mark.parametrize(
    ("craft", "expected"),
    [
        pytest.param(
            _unbalanced,
            {Reason.UNKNOWN_ACCOUNT, Reason.BALANCES_DO_NOT_SUM_TO_ZERO},
            id="1-sum-not-zero",
        ),
        pytest.param(_over_lower, {Reason.EXCEEDS_LOWER_LIMIT}, id="2-posted-below-lower"),
        pytest.param(_pending_over_lower, {Reason.EXCEEDS_LOWER_LIMIT}, id="2-pending-below-lower"),
        pytest.param(_over_upper, {Reason.EXCEEDS_UPPER_LIMIT}, id="2-pending-above-upper"),
        pytest.param(
            _debit_after_lowering, {Reason.EXCEEDS_LOWER_LIMIT}, id="2-debit-after-lowered-limit"
        ),
        pytest.param(
            _credit_after_lowering, {Reason.EXCEEDS_UPPER_LIMIT}, id="2-credit-after-lowered-cap"
        ),
        pytest.param(
            _negative_hold,
            {Reason.AMOUNT_NOT_POSITIVE, Reason.NEGATIVE_PENDING},
            id="2-negative-pending",
        ),
        pytest.param(_post_twice, {Reason.PENDING_ALREADY_RESOLVED}, id="3-posted-twice"),
        pytest.param(
            _void_after_expiry, {Reason.PENDING_ALREADY_RESOLVED}, id="3-voided-after-expiry"
        ),
        pytest.param(_post_immediate, {Reason.NOT_A_PENDING_TRANSFER}, id="3-post-immediate"),
        pytest.param(_expire_early, {Reason.EXPIRED_BEFORE_DEADLINE}, id="3-expired-early"),
        pytest.param(_post_more_than_held, {Reason.POSTED_AMOUNT_INVALID}, id="3-post-too-much"),
        pytest.param(_reverse_reversal, {Reason.REVERSAL_OF_REVERSAL}, id="4-reverse-reversal"),
        pytest.param(_reverse_twice, {Reason.REVERSED_TWICE}, id="4-reversed-twice"),
        pytest.param(_reverse_voided, {Reason.REVERSAL_OF_UNPOSTED}, id="4-reverse-voided"),
        pytest.param(_reverse_wrong_amount, {Reason.REVERSAL_MISMATCH}, id="4-reverse-mismatch"),
        pytest.param(_reused_request_id, {Reason.DUPLICATE_REQUEST_ID}, id="ids-request-reused"),
        pytest.param(_reused_transfer_id, {Reason.DUPLICATE_TRANSFER_ID}, id="ids-transfer-reused"),
        pytest.param(
            _closed_account_moves, {Reason.CLOSED_ACCOUNT_CHANGED}, id="closed-account-moves"
        ),
        pytest.param(
            _closed_with_balance, {Reason.CLOSED_ACCOUNT_NOT_EMPTY}, id="closed-with-balance"
        ),
        pytest.param(_over_lower_in_group, {Reason.EXCEEDS_LOWER_LIMIT}, id="group-below-lower"),
        pytest.param(
            _unknown_account_in_group,
            {Reason.UNKNOWN_ACCOUNT, Reason.BALANCES_DO_NOT_SUM_TO_ZERO},
            id="group-sum-not-zero",
        ),
        pytest.param(
            _reused_transfer_id_in_group,
            {Reason.DUPLICATE_TRANSFER_ID},
            id="group-transfer-id-reused",
        ),
        pytest.param(
            _closed_account_moves_in_group,
            {Reason.CLOSED_ACCOUNT_CHANGED},
            id="group-closed-account-moves",
        ),
    ],
)
def test_crafted_violation_is_reported_at_its_version(craft: Craft, expected: set[Reason]) -> None:
    history = members()
    version = craft(history)

    report = history.report()

    # Exactly the broken rule, at the event that broke it; the chain itself is intact.
    assert {v.reason for v in report.violations} == expected
    assert {v.version for v in report.violations} == {version}
    assert all(v.detail for v in report.violations)
    # The verifier carries on: the report still covers the whole history.
    assert report.position == version


def _without(name: str) -> dict[str, Any]:
    return {k: v for k, v in item("t1", "ann", "bob", 10).items() if k != name}


@pytest.mark.parametrize(
    ("transfers", "detail"),
    [
        pytest.param([], "TransfersCreated has no transfers", id="empty"),
        pytest.param("t1", "TransfersCreated.transfers is str", id="not-a-list"),
        pytest.param(["t1"], "transfers[0]: is str, not an object", id="item-not-an-object"),
        pytest.param(
            [_without("transfer_id")], "transfers[0]: has no field 'transfer_id'", id="no-id"
        ),
        pytest.param(
            [_without("payee_account_id")],
            "transfers[0]: has no field 'payee_account_id'",
            id="no-payee",
        ),
        pytest.param(
            [_without("amount_minutes")],
            "transfers[0]: has no field 'amount_minutes'",
            id="no-amount",
        ),
        pytest.param(
            [{**item("t1", "ann", "bob", 10), "amount_minutes": "10"}],
            "transfers[0]: amount_minutes is str",
            id="amount-as-text",
        ),
        pytest.param(
            [{**item("t1", "ann", "bob", 10), "amount_minutes": True}],
            "transfers[0]: amount_minutes is bool",
            id="amount-as-bool",
        ),
        pytest.param(
            [{**item("t1", "ann", "bob", 10), "pending": 0}],
            "transfers[0]: pending is int",
            id="pending-as-int",
        ),
        pytest.param(
            [{**item("t1", "ann", "bob", 10), "deadline": None}],
            "transfers[0]: deadline is NoneType",
            id="deadline-none",
        ),
    ],
)
def test_a_malformed_transfer_group_is_reported_at_its_version(transfers: Any, detail: str) -> None:
    history = members()
    # A sound transfer, then a malformed group on a sound chain, then another sound transfer.
    history.transfer("t0", "ann", "bob", 5)
    version = history.craft(Bank.TransfersCreated, transfers=transfers)
    history.transfer("t9", "ann", "bob", 5)

    report = history.report()

    # The malformed event is named at its own version, with what is wrong with it...
    assert reasons(report) == [(version, Reason.MALFORMED_EVENT)]
    assert report.violations[0].detail == detail
    # ...nothing of it was applied, and the verifier carried on past it.
    assert set(report.transfers) == {"t0", "t9"}
    assert report.balances == {"ann": -10, "bob": 10, "pool": 0}
    assert report.position == version + 1


def test_a_malformed_item_does_not_hide_the_rest_of_its_group() -> None:
    history = members()
    bad = {**item("t2", "ann", "bob", 10), "payee_account_id": None}
    # Three transfers in one event: a sound one, a malformed one, one past Ann's limit.
    version = history.group(
        item("t1", "ann", "bob", 10), bad, item("t3", "ann", "pool", 95, pending=True)
    )

    report = history.report()

    # The malformed item is named by its index; its neighbours are applied and checked.
    assert reasons(report) == [
        (version, Reason.MALFORMED_EVENT),
        (version, Reason.EXCEEDS_LOWER_LIMIT),
    ]
    assert report.violations[0].detail == "transfers[1]: payee_account_id is NoneType"
    assert set(report.transfers) == {"t1", "t3"}
    assert report.accounts["ann"].pending_debit_minutes == 95
    assert report.balances == {"ann": -10, "bob": 10, "pool": 0}


def test_a_limit_broken_inside_a_group_is_reported_though_a_later_item_mends_it() -> None:
    history = members()
    # Ann pays the pool 150 (50 past her limit), then the pool pays her 100 back, in one event.
    version = history.group(item("t1", "ann", "pool", 150), item("t2", "pool", "ann", 100))

    report = history.report()

    # The bank checks each transfer against the balances the ones before it left: the verifier
    # must too, or a group could hide an overdraft that two separate events would show.
    assert reasons(report) == [(version, Reason.EXCEEDS_LOWER_LIMIT)]


def test_lowering_a_limit_below_the_balance_is_not_a_violation() -> None:
    history = members()
    # Ann owes 90 and has 10 held; her limit is tightened to -20, far above both.
    history.transfer("t1", "ann", "pool", 90)
    history.transfer("t2", "ann", "pool", 10, pending=True)
    history.limits("r1", "ann", -20, None)
    # Credits and releases move Ann towards her new limit, which is always allowed.
    history.transfer("t3", "pool", "ann", 5)
    history.void("r2", "t2")

    report = history.report()

    assert report.ok, report.violations
    assert report.accounts["ann"].lower_limit_minutes == -20
    assert report.accounts["ann"].balance_minutes == -85


def test_violation_is_a_value() -> None:
    # Reports compare by value, so an auditor can diff two runs.
    assert Violation(3, Reason.CHAIN_BROKEN, "x") == Violation(3, Reason.CHAIN_BROKEN, "x")
    assert Reason.CHAIN_BROKEN == "CHAIN_BROKEN"
