"""The independent verifier: clean histories pass; tampered, gapped or rule-breaking ones do not.

Clean histories are written by a real Ledger and read back as the stored rows an auditor
receives: (stored bytes, chain hash). Tampering is done to those rows, or with SQL to the
real SQLite and PostgreSQL tables, as someone with database access would. Crafted histories
are stored bytes built with `chain.event_bytes` and chained here, so each crafted event
carries a correct hash and the only thing wrong with it is the rule it breaks.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import START, Clock, MakeLedger
from eventsourcing.persistence import StoredEvent as LibraryStoredEvent
from stored_rows import Tables, stored_rows

import ledger.domain.history  # noqa: F401  (registers every event type)
from ledger import verifier as verifier_module
from ledger.application.ledger import Ledger
from ledger.domain import canonical, chain, events
from ledger.domain.accounts import AccountLimitsChanged, AccountOpened, AccountStatusChanged
from ledger.domain.bank import BankCreated, bank_uuid
from ledger.domain.commands import (
    ChangeLimits,
    ChangeStatus,
    Command,
    CreateBank,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    PostPending,
    ReverseTransfer,
    VoidPending,
)
from ledger.domain.errors import DomainError
from ledger.domain.events import Event
from ledger.domain.holds import PendingExpired, PendingPosted, PendingVoided
from ledger.domain.transfers import TransferReversed, TransfersCreated
from ledger.verifier import Reason, RecordedEvent, Report, Verifier, Violation, verify

Row = tuple[bytes, str]
T0 = START
# How long a test waits for the writer to reach a state it reaches promptly (never when passing).
WAIT_SECONDS = 10.0


def everyday_history(ledger: Ledger, clock: Clock) -> None:
    """One of each kind of event, all accepted by the ledger (17 events)."""
    ledger.create_bank(CreateBank(bank_id="b1", name="Riverside time bank"))
    ledger.execute("b1", OpenAccount("ann", "member", lower_limit_minutes=-120))
    ledger.execute("b1", OpenAccount("bob", "member", -120, upper_limit_minutes=600))
    ledger.execute("b1", OpenAccount("pool", "pool", -1000))
    # Ann receives an hour of gardening from Bob (event 5).
    ledger.execute("b1", CreateTransfer("t1", "ann", "bob", 60, memo="gardening ✿"))
    # A pending hold that Bob confirms in part, one that is voided, one that expires.
    ledger.execute("b1", CreateTransfer("t2", "ann", "bob", 30, pending=True))
    ledger.execute("b1", PostPending("r1", "t2", amount_minutes=20))
    ledger.execute("b1", CreateTransfer("t3", "bob", "pool", 15, pending=True))
    ledger.execute("b1", VoidPending("r2", "t3", reason="duplicate"))
    ledger.execute("b1", CreateTransfer("t4", "pool", "ann", 45, pending=True, timeout_seconds=60))
    clock.advance(minutes=5)
    # A linked batch, a reversal, and a limit lowered below Ann's balance (-80 < -50).
    batch = (CreateTransfer("t5", "pool", "bob", 10), CreateTransfer("t6", "pool", "ann", 10))
    ledger.execute("b1", CreateTransfers(batch, linked=True))
    ledger.execute("b1", ReverseTransfer("t7", "t6", reason="wrong member"))
    ledger.execute("b1", ChangeLimits("r3", "ann", lower_limit_minutes=-50))
    ledger.execute("b1", ChangeStatus("r4", "bob", "freeze"))
    ledger.execute("b1", OpenAccount("eve", "member"))
    ledger.execute("b1", ChangeStatus("r5", "eve", "close"))


@pytest.fixture
def memory_ledger(make_ledger: MakeLedger, clock: Clock) -> Ledger:
    """A Ledger on memory:// holding the everyday history of bank b1."""
    ledger = make_ledger("memory://")
    everyday_history(ledger, clock)
    return ledger


@pytest.fixture
def rows(memory_ledger: Ledger) -> list[Row]:
    """The everyday history's stored rows."""
    return stored_rows(memory_ledger, "b1")


def body(row: Row) -> dict[str, Any]:
    """What a stored row says (bank, version, type, timestamp, fields)."""
    parsed: dict[str, Any] = json.loads(row[0])
    return parsed


def reasons(report: Report) -> list[tuple[int, Reason]]:
    return [(v.version, v.reason) for v in report.violations]


def created_ids(row: Row) -> list[str]:
    """The transfers a TransfersCreated row created (none for any other event)."""
    parsed = body(row)
    if parsed["type"] != TransfersCreated.TYPE:
        return []
    return [item["transfer_id"] for item in parsed["fields"]["transfers"]]


def version_creating(rows: Sequence[Row], transfer_id: str) -> int:
    """The version of the event that created a transfer."""
    return next(int(body(row)["version"]) for row in rows if transfer_id in created_ids(row))


def with_item(row: Row, index: int, **change: Any) -> bytes:
    """The row's bytes (canonical) with one of its created transfers changed."""
    parsed = body(row)
    parsed["fields"]["transfers"][index].update(change)
    return canonical.encode(parsed)


def rechained(rows: Sequence[Row], start: int) -> list[Row]:
    """The rows with every hash from index `start` on recomputed from the bytes."""
    result = list(rows[:start])
    previous = result[-1][1] if result else chain.GENESIS_HASH
    for stored, _ in rows[start:]:
        previous = chain.next_hash(previous, stored)
        result.append((stored, previous))
    return result


# --------------------------------------------------------------------------- clean histories


def test_clean_history_verifies_and_recomputes_what_the_ledger_shows(
    ledger: Ledger, clock: Clock
) -> None:
    everyday_history(ledger, clock)
    # Read back in small pages, as an auditor's stream would deliver them.
    rows = stored_rows(ledger, "b1", rows_per_page=4)

    report = verify(rows)

    # Nothing is reported, every event was read, and the chain ends where the ledger's does.
    assert report.ok, report.violations
    assert report.violations == ()
    bank = ledger.get_bank("b1")
    assert report.events_checked == len(rows) == bank.position == 17
    assert report.position == bank.position
    assert report.chain_head == bank.chain_head
    assert report.bank_uuid == str(bank_uuid("b1"))
    # Every row's hash follows from its bytes alone (sha256 of the previous hash and them).
    assert rechained(rows, 0) == rows
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
    assert [created_ids(row) for row in rows if len(created_ids(row)) > 1] == [["t5", "t6"]]
    assert {"t5", "t6"} <= report.transfers.keys()


def test_streaming_reports_at_each_step_what_a_whole_run_reports(rows: list[Row]) -> None:
    verifier = Verifier(bank_uuid("b1"))

    # Each row alone breaks nothing, and the position follows the rows.
    for row in rows:
        assert verifier.feed_stored(*row) == []
        assert verifier.report().position == body(row)["version"]

    assert verifier.report() == verify(rows)


def test_a_report_is_a_snapshot(rows: list[Row]) -> None:
    verifier = Verifier()
    for row in rows[:5]:
        verifier.feed_stored(*row)
    early = verifier.report()
    early_ann = dataclasses.replace(early.accounts["ann"])

    for row in rows[5:]:
        verifier.feed_stored(*row)

    # Feeding more events leaves an earlier report as it was.
    assert early.position == 5
    assert early.accounts["ann"] == early_ann
    assert verifier.report().accounts["ann"] != early_ann
    assert verifier.report().position == len(rows)


def test_recorded_events_verify_like_stored_rows(rows: list[Row]) -> None:
    # An auditor who parses each row into a RecordedEvent first gets the same answer.
    records = [RecordedEvent.from_stored(stored, chain_hash) for stored, chain_hash in rows]
    verifier = Verifier()
    for record in records:
        assert verifier.feed(record) == []
    assert all(record.canonical for record in records)
    assert [r.stored for r in records] == [stored for stored, _ in rows]

    assert verifier.report() == verify(rows)


class HeldInsert:
    """Stands in for the recorder's insert_events: holds the first call until released."""

    def __init__(self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
        recorder = ledger.store.recorder
        self._insert = recorder.insert_events
        self._calls = 0
        self._lock = threading.Lock()
        self.holding = threading.Event()
        self.release = threading.Event()
        monkeypatch.setattr(recorder, "insert_events", self)

    def __call__(self, stored_events: Sequence[LibraryStoredEvent], **kwargs: Any) -> Any:
        with self._lock:
            self._calls += 1
            first = self._calls == 1
        if first:
            self.holding.set()
            assert self.release.wait(WAIT_SECONDS), "the test never released the writer"
        return self._insert(stored_events, **kwargs)


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll until `condition` holds; fail (not hang) if it never does."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def test_history_written_by_concurrent_callers_verifies(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.create_bank(CreateBank(bank_id="b1", name="Busy bank"))
    members = [f"m{i}" for i in range(6)]
    payments = [(f"t{i}", members[i % 6], members[(i * 5 + 1) % 6], 1 + i % 7) for i in range(30)]
    for member in members[:-1]:
        ledger.execute("b1", OpenAccount(member, "member", lower_limit_minutes=-10_000))
    workers = 40
    # The last member's opening is held inside its commit, so that the concurrent requests
    # queue up behind it and are committed together: their new transfers share events.
    held = HeldInsert(ledger, monkeypatch)
    last = OpenAccount(members[-1], "member", lower_limit_minutes=-10_000)
    with ThreadPoolExecutor(max_workers=workers + 1) as pool:
        opened = pool.submit(ledger.execute, "b1", last)
        assert held.holding.wait(WAIT_SECONDS)
        # Each payment twice (a client retrying at once), and some that must be refused.
        commands: list[Command] = [CreateTransfer(t, a, b, n) for t, a, b, n in payments]
        commands *= 2
        commands += [CreateTransfer(f"x{i}", "m0", "nobody", 5) for i in range(5)]
        running = pool.map(lambda c: _outcome(ledger, c), commands)
        wait_until(lambda: ledger.writers.queued("b1") == workers)
        held.release.set()
        outcomes = list(running)
        opened.result()
    rows = stored_rows(ledger, "b1")
    bank = ledger.get_bank("b1")

    # Every payment was recorded once, whichever copy came first; the strangers were refused.
    assert outcomes.count("ACCOUNT_NOT_FOUND") == 5
    assert outcomes.count("ok") == 2 * len(payments)
    report = verify(rows)
    assert report.ok, report.violations
    assert (report.position, report.chain_head) == (bank.position, bank.chain_head)
    expected: dict[str, int] = dict.fromkeys(members, 0)
    for _, payer, payee, amount in payments:
        expected[payer] -= amount
        expected[payee] += amount
    assert report.balances == expected
    assert set(report.transfers) == {t for t, *_ in payments}
    # And the commands really were grouped: fewer events than transfers.
    assert len([row for row in rows if created_ids(row)]) < len(payments)


def _outcome(ledger: Ledger, command: Command) -> str:
    try:
        ledger.execute("b1", command)
    except DomainError as error:
        return error.reason
    return "ok"


# --------------------------------------------------------------------------- the history itself


def test_tampered_row_is_reported_at_its_version(rows: list[Row]) -> None:
    version = version_creating(rows, "t1")
    stored, chain_hash = rows[version - 1]

    # Someone edits the memo of t1 in place (still canonical), leaving its hash as it was.
    rows[version - 1] = (with_item(rows[version - 1], 0, memo="nothing happened"), chain_hash)

    report = verify(rows)
    assert reasons(report) == [(version, Reason.CHAIN_BROKEN)]
    assert report.first_bad_version == version
    assert rows[version - 1][0] != stored


def test_tampered_and_rehashed_row_breaks_the_next_link(rows: list[Row]) -> None:
    version = version_creating(rows, "t1")
    edited = with_item(rows[version - 1], 0, amount_minutes=30)

    # A cleverer edit halves the amount and recomputes that row's own hash...
    rows[version - 1] = (edited, chain.next_hash(rows[version - 2][1], edited))

    # ...so the row after it no longer follows: the first event the chain cannot vouch for.
    report = verify(rows)
    assert reasons(report) == [(version + 1, Reason.CHAIN_BROKEN)]


@pytest.fixture
def durable_history(
    durable_store_url: str, make_ledger: MakeLedger, clock: Clock
) -> tuple[str, Tables]:
    """The everyday history in a SQLite file or a PostgreSQL schema, and SQL on its tables."""
    everyday_history(make_ledger(durable_store_url), clock)
    return durable_store_url, Tables(durable_store_url)


def test_modified_row_is_reported_at_its_version(
    durable_history: tuple[str, Tables], make_ledger: MakeLedger
) -> None:
    url, tables = durable_history
    row = json.loads(tables.stored("b1", 5))
    assert [item["transfer_id"] for item in row["fields"]["transfers"]] == ["t1"]

    # Someone with database access turns t1's 60 minutes into 6 (in canonical form).
    row["fields"]["transfers"][0]["amount_minutes"] = 6
    tables.set_stored("b1", 5, canonical.encode(row))

    # A fresh reader of the store finds the edit at version 5 and nowhere else.
    report = verify(stored_rows(make_ledger(url), "b1"))
    assert reasons(report) == [(5, Reason.CHAIN_BROKEN)]


def test_row_that_is_json_but_not_canonical_is_reported(
    durable_history: tuple[str, Tables], make_ledger: MakeLedger
) -> None:
    url, tables = durable_history
    original = stored_rows(make_ledger(url), "b1")
    stored = tables.stored("b1", 5)

    # The same event rewritten with spaces and indentation: it says the same thing...
    pretty = json.dumps(json.loads(stored), indent=2, ensure_ascii=False).encode()
    assert json.loads(pretty) == json.loads(stored)
    tables.set_stored("b1", 5, pretty)
    # ...and its hash and every later one are recomputed, so the chain itself holds.
    forged = rechained([*original[:4], (pretty, ""), *original[5:]], 4)
    for version in range(5, len(forged) + 1):
        tables.set_chain_hash("b1", version, forged[version - 1][1])

    # The row is still not what the ledger writes: the stored bytes must be the canonical
    # form, or two honest parties could hash the same event differently.
    report = verify(stored_rows(make_ledger(url), "b1"))
    assert reasons(report) == [(5, Reason.NOT_CANONICAL)]


def test_rechaining_everything_after_a_change_is_not_caught_by_the_chain_alone(
    durable_history: tuple[str, Tables], make_ledger: MakeLedger
) -> None:
    url, tables = durable_history
    before = verify(stored_rows(make_ledger(url), "b1"))
    assert before.ok

    # Someone who can write the database turns t1's 60 minutes into 6, recomputes the hash
    # of that row and of every row after it, and the bank's chain head as well.
    row = json.loads(tables.stored("b1", 5))
    row["fields"]["transfers"][0]["amount_minutes"] = 6
    tables.set_stored("b1", 5, canonical.encode(row))
    forged = rechained(stored_rows(make_ledger(url), "b1"), 4)
    for version in range(5, len(forged) + 1):
        tables.set_chain_hash("b1", version, forged[version - 1][1])
    tables.set_chain_head("b1", forged[-1][1])

    # The forged history is consistent: the chain (and every invariant) verifies. A hash
    # chain alone only proves that rows follow each other; what proves these are the rows
    # that were written is a head recorded earlier outside the database: the signed
    # checkpoints of the audit service (SPEC, "Audit"). Against one, the forgery shows.
    fresh = make_ledger(url)
    after = verify(stored_rows(fresh, "b1"))
    assert after.ok, after.violations
    assert after.balances["ann"] == before.balances["ann"] + 54
    assert after.chain_head == fresh.get_bank("b1").chain_head
    assert after.position == before.position
    assert after.chain_head != before.chain_head


def test_missing_row_is_reported_as_a_gap(
    durable_history: tuple[str, Tables], make_ledger: MakeLedger
) -> None:
    url, tables = durable_history

    # Someone deletes event 6 (the pending hold t2).
    tables.delete_event("b1", 6)

    report = verify(stored_rows(make_ledger(url), "b1"))
    # The gap is named at the missing version; what follows from it (t2 unknown when it is
    # posted) is reported too, but the chain is not blamed again for the same gap.
    assert report.first_bad_version == 6
    assert reasons(report)[0] == (6, Reason.VERSION_GAP)
    assert Reason.CHAIN_BROKEN not in {v.reason for v in report.violations}
    assert (7, Reason.UNKNOWN_TRANSFER) in reasons(report)


def test_missing_last_rows_show_as_a_shorter_chain(memory_ledger: Ledger, rows: list[Row]) -> None:
    # Truncation is invisible from inside the history: the auditor compares chain heads.
    report = verify(rows[:-2])

    assert report.ok
    assert report.position == len(rows) - 2
    assert report.chain_head != memory_ledger.get_bank("b1").chain_head


def test_repeated_and_foreign_events_are_not_applied(
    memory_ledger: Ledger, rows: list[Row]
) -> None:
    memory_ledger.create_bank(CreateBank(bank_id="b2", name="Hillside"))
    verifier = Verifier()
    for row in rows[:6]:
        verifier.feed_stored(*row)
    before = verifier.report()

    # Event 5 again, and another bank's first event, change nothing.
    assert [v.reason for v in verifier.feed_stored(*rows[4])] == [Reason.VERSION_OUT_OF_ORDER]
    foreign = stored_rows(memory_ledger, "b2")[0]
    assert [v.reason for v in verifier.feed_stored(*foreign)] == [Reason.WRONG_BANK]
    after = verifier.report()
    assert (after.position, after.balances, after.chain_head) == (
        before.position,
        before.balances,
        before.chain_head,
    )
    # The rest of the history still fits on.
    for row in rows[6:]:
        assert verifier.feed_stored(*row) == []


def test_garbage_is_reported_not_raised(rows: list[Row]) -> None:
    verifier = Verifier()
    for row in rows[:4]:
        verifier.feed_stored(*row)

    # Not an event at all; then an event whose amount is text; then one without a zone.
    assert [v.reason for v in verifier.feed_stored(b"\x00 not an event", rows[4][1])] == [
        Reason.MALFORMED_EVENT
    ]
    assert created_ids(rows[4]) == ["t1"]
    broken = with_item(rows[4], 0, amount_minutes="60")
    found = verifier.feed_stored(broken, rows[4][1])
    assert Reason.MALFORMED_EVENT in {v.reason for v in found}
    naive = body(rows[5])
    naive["timestamp"] = naive["timestamp"].removesuffix("+00:00")
    assert [v.reason for v in verifier.feed_stored(canonical.encode(naive), rows[5][1])] == [
        Reason.MALFORMED_EVENT
    ]
    assert verifier.report().violation_count == 1 + len(found) + 1


def _envelope(fields: bytes) -> bytes:
    """Row bytes of event 5 of bank b1 with `fields` as written (possibly not JSON at all)."""
    bank = str(bank_uuid("b1"))
    return (
        f'{{"bank":"{bank}","fields":'.encode()
        + fields
        + b',"timestamp":"2025-03-01T09:00:00.000000+00:00","type":"TransfersCreated",'
        + b'"version":5}'
    )


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe{}", id="not-utf-8"),
        pytest.param(b"[1,2,3]", id="an-array"),
        pytest.param(b'"an event"', id="a-string"),
        pytest.param(b'{"bank":"x","version":"5"}', id="version-as-text"),
        pytest.param(_envelope(b'{"transfers":[' + b"[" * 100_000), id="nested-past-any-parser"),
        pytest.param(_envelope(b'{"transfers":' + b"[" * 900 + b"]" * 900 + b"}"), id="nested-900"),
        pytest.param(_envelope(b'{"transfers":[' + b"9" * 5_000 + b"]}"), id="5000-digit-integer"),
    ],
)
def test_garbage_rows_are_reported_not_raised(rows: list[Row], stored: bytes) -> None:
    verifier = Verifier()
    for row in rows[:4]:
        verifier.feed_stored(*row)

    # Whatever the row holds, the verifier names it at the next version and carries on.
    found = verifier.feed_stored(stored, rows[4][1])

    assert found
    assert {v.version for v in found} == {5}
    assert verifier.report().violation_count == len(found)


@pytest.mark.parametrize(
    "chain_hash",
    [pytest.param("", id="missing"), pytest.param("zz" * 32, id="not-hex")],
)
def test_a_hash_that_is_not_a_hash_is_a_broken_chain(rows: list[Row], chain_hash: str) -> None:
    rows[4] = (rows[4][0], chain_hash)

    report = verify(rows)

    # Reported at its own version; the next row cannot be checked against it (its previous
    # hash is unknown), and nothing else is blamed.
    assert reasons(report) == [(5, Reason.CHAIN_BROKEN)]
    assert report.position == len(rows)


def test_violations_kept_are_bounded(rows: list[Row], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verifier_module, "violations_kept_max", 3)
    verifier = Verifier()
    verifier.feed_stored(*rows[0])

    # Ten replays of the first event: all counted, only three kept.
    for _ in range(10):
        verifier.feed_stored(*rows[0])

    report = verifier.report()
    assert report.violation_count == 10
    assert len(report.violations) == 3
    assert not report.ok


# --------------------------------------------------------------------------- crafted histories


class History:
    """A bank's stored rows, crafted: any event type, any fields, chained correctly.

    `record()` stores a real event (the domain's own type and fields); `craft()` stores
    whatever it is given, so the verifier can be shown what the ledger would never write.
    """

    def __init__(self, bank_id: str = "b1") -> None:
        self.bank_uuid = str(bank_uuid(bank_id))
        self.rows: list[Row] = []
        self.now = T0
        self.record(BankCreated(bank_id=bank_id, name="Crafted", actor="", actor_label=""))

    def craft(self, event_type: str, **fields: Any) -> int:
        version = len(self.rows) + 1
        stored = chain.event_bytes(self.bank_uuid, version, event_type, self.now, fields)
        return self.append(stored)

    def append(self, stored: bytes) -> int:
        """Store these exact bytes as the next row, with the hash that follows from them."""
        previous = self.rows[-1][1] if self.rows else chain.GENESIS_HASH
        self.rows.append((stored, chain.next_hash(previous, stored)))
        return len(self.rows)

    def record(self, event: Event) -> int:
        return self.craft(event.TYPE, **event.fields())

    def open(self, account_id: str, kind: str, lower: int, upper: int | None = None) -> int:
        return self.record(
            AccountOpened(
                account_id=account_id,
                kind=kind,
                lower_limit_minutes=lower,
                upper_limit_minutes=upper,
                actor="",
                actor_label="",
            )
        )

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
        """Several transfers (items as the ledger records them, or anything else) in one event."""
        return self.craft(TransfersCreated.TYPE, transfers=list(items))

    def post(self, request_id: str, transfer_id: str, amount: int) -> int:
        return self.record(
            PendingPosted(
                request_id=request_id,
                transfer_id=transfer_id,
                amount_minutes=amount,
                posted_amount_minutes=amount,
                actor="",
                actor_label="",
            )
        )

    def void(self, request_id: str, transfer_id: str) -> int:
        return self.record(
            PendingVoided(
                request_id=request_id, transfer_id=transfer_id, reason="", actor="", actor_label=""
            )
        )

    def expire(self, transfer_id: str) -> int:
        return self.record(PendingExpired(transfer_id=transfer_id))

    def reverse(self, transfer_id: str, reverses: str, payer: str, payee: str, amount: int) -> int:
        return self.record(
            TransferReversed(
                transfer_id=transfer_id,
                reverses_transfer_id=reverses,
                payer_account_id=payer,
                payee_account_id=payee,
                amount_minutes=amount,
                reason="crafted",
                actor="",
                actor_label="",
            )
        )

    def limits(self, request_id: str, account_id: str, lower: int, upper: int | None) -> int:
        return self.record(
            AccountLimitsChanged(
                request_id=request_id,
                account_id=account_id,
                lower_limit_minutes=lower,
                upper_limit_minutes=upper,
                update_mask=["lower_limit_minutes", "upper_limit_minutes"],
                reason="",
                actor="",
                actor_label="",
            )
        )

    def close(self, request_id: str, account_id: str) -> int:
        return self.record(
            AccountStatusChanged(
                request_id=request_id,
                account_id=account_id,
                action="close",
                status="closed",
                reason="",
                actor="",
                actor_label="",
            )
        )

    def report(self) -> Report:
        return verify(self.rows)


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
        "actor_label": "",
        "deadline": chain.timestamp_text(deadline) if deadline else "",
    }


def members() -> History:
    """Ann may owe 100 minutes; Bob may owe 100 and hold at most 50; the pool has room."""
    history = History()
    history.open("ann", "member", -100)
    history.open("bob", "member", -100, 50)
    history.open("pool", "pool", -10_000)
    return history


def test_crafted_clean_prefix_verifies() -> None:
    history = members()
    version = history.transfer("t1", "ann", "bob", 40)

    # The crafting itself is sound: a legal crafted event reports nothing.
    report = history.report()
    assert report.ok, report.violations
    assert report.position == version
    assert report.balances == {"ann": -40, "bob": 40, "pool": 0}


def test_a_crafted_transfer_is_what_the_ledger_records(make_ledger: MakeLedger) -> None:
    # The crafted item has exactly the keys of a transfer the ledger itself records.
    ledger = make_ledger("memory://")
    ledger.create_bank(CreateBank(bank_id="b1", name="Crafted"))
    ledger.execute("b1", OpenAccount("ann", "member", -100))
    ledger.execute("b1", OpenAccount("bob", "member", -100))
    ledger.execute("b1", CreateTransfer("t1", "ann", "bob", 40))
    recorded = body(stored_rows(ledger, "b1")[-1])["fields"]["transfers"][0]

    assert recorded == item("t1", "ann", "bob", 40)


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
    h.close("r1", "bob")
    return h.transfer("t1", "ann", "bob", 10)


def _closed_with_balance(h: History) -> int:
    h.transfer("t1", "ann", "bob", 10)
    return h.close("r1", "bob")


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
    h.close("r1", "bob")
    # The pool pays Ann, then Ann pays the closed account, in one event.
    return h.group(item("t1", "pool", "ann", 10), item("t2", "ann", "bob", 10))


def _unknown_type(h: History) -> int:
    # A type name this format does not have (the verifier knows every one it has).
    return h.craft("AccountRenamed", account_id="ann", name="Annie")


def _created_twice(h: History) -> int:
    return h.record(BankCreated(bank_id="b1", name="Again", actor="", actor_label=""))


def _timestamp_backwards(h: History) -> int:
    h.now = T0 + timedelta(minutes=1)
    h.transfer("t1", "ann", "bob", 10)
    h.now = T0
    return h.transfer("t2", "ann", "bob", 10)


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
        pytest.param(_unknown_type, {Reason.UNKNOWN_EVENT_TYPE}, id="history-unknown-type"),
        pytest.param(_created_twice, {Reason.CREATED_TWICE}, id="history-created-twice"),
        pytest.param(
            _timestamp_backwards, {Reason.TIMESTAMP_WENT_BACKWARDS}, id="history-time-backwards"
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


@pytest.mark.parametrize("event_type", events.type_names())
def test_the_verifier_knows_every_event_type_the_ledger_writes(event_type: str) -> None:
    history = members()
    # An event of the type with none of its fields: malformed, but never of an unknown type,
    # or every history holding one would be reported although the ledger wrote it.
    version = history.craft(event_type)

    report = history.report()

    assert (version, Reason.MALFORMED_EVENT) in reasons(report)
    assert (version, Reason.UNKNOWN_EVENT_TYPE) not in reasons(report)


def _canonical_t1() -> dict[str, Any]:
    """The body of a sound transfer event at version 5 of the crafted members' bank."""
    history = members()
    history.transfer("t1", "ann", "bob", 10)
    return body(history.rows[-1])


@pytest.mark.parametrize(
    ("stored", "also"),
    [
        pytest.param(
            json.dumps(_canonical_t1(), ensure_ascii=False).encode(), set(), id="whitespace"
        ),
        pytest.param(
            json.dumps(
                dict(reversed(_canonical_t1().items())), separators=(",", ":"), ensure_ascii=False
            ).encode(),
            set(),
            id="key-order",
        ),
        pytest.param(
            canonical.encode(_canonical_t1()).replace(b'"memo":""', b'"memo":"\\u0041"'),
            set(),
            id="escaped-letter",
        ),
        pytest.param(
            canonical.encode(_canonical_t1()).replace(b'"memo":""', b'"memo":"","memo":""'),
            set(),
            id="duplicate-key",
        ),
        pytest.param(
            canonical.encode(_canonical_t1()).replace(
                b'"timeout_seconds":0', b'"timeout_seconds":9007199254740993'
            ),
            set(),
            id="integer-past-2-53",
        ),
        pytest.param(
            canonical.encode(_canonical_t1()).replace(
                b'"amount_minutes":10', b'"amount_minutes":10.0'
            ),
            {Reason.MALFORMED_EVENT},
            id="float-amount",
        ),
    ],
)
def test_a_row_that_is_json_but_not_canonical_is_reported(stored: bytes, also: set[Reason]) -> None:
    history = members()
    # Valid JSON, saying what a sound event says (or nearly), hashed as it is: the chain holds.
    assert json.loads(stored)["version"] == 5
    version = history.append(stored)
    history.transfer("t2", "ann", "bob", 5)

    report = history.report()

    # Not the bytes the format prescribes: named at its version, and only there.
    assert {v.reason for v in report.violations} == {Reason.NOT_CANONICAL} | also
    assert {v.version for v in report.violations} == {version}
    assert report.position == version + 1


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
    version = history.craft(TransfersCreated.TYPE, transfers=transfers)
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
    assert report.balances["ann"] == -85


def test_violation_is_a_value() -> None:
    # Reports compare by value, so an auditor can diff two runs.
    assert Violation(3, Reason.CHAIN_BROKEN, "x") == Violation(3, Reason.CHAIN_BROKEN, "x")
    assert Reason.CHAIN_BROKEN == "CHAIN_BROKEN"
