"""The Ledger facade on every store: memory, SQLite and PostgreSQL run the same stories.

Whatever a test writes, it also checks that the history in the store replays to exactly
what the live Ledger shows, so nothing is kept only in memory.
"""

from __future__ import annotations

import base64
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from conftest import START, Clock, MakeLedger

from ledger.application import loading, pages
from ledger.application.ledger import Ledger
from ledger.domain import history, limits
from ledger.domain.bank import bank_uuid
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
from ledger.domain.errors import (
    DomainError,
    HistoryDamaged,
    IdConflict,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    WriteConflict,
)
from ledger.domain.holds import PendingPosted, PendingVoided
from ledger.domain.transfers import TransfersCreated
from ledger.domain.views import AccountView, BankView, BatchItemResult, TransferView
from ledger.verifier import verify

BANK = "riverside"
# How long a test waits for something the writer will do promptly; never reached when passing.
WAIT_SECONDS = 10.0

# The bank, its accounts in opening order, and each account's transfers newest first.
Snapshot = tuple[BankView, list[AccountView], dict[str, list[TransferView]]]

# ----------------------------------------------------------------- helpers


def create_bank(ledger: Ledger, bank_id: str = BANK) -> BankView:
    return ledger.create_bank(CreateBank(bank_id=bank_id, name="Riverside Time Bank"))


def open_account(
    ledger: Ledger,
    account_id: str,
    lower: int = -600,
    upper: int | None = 600,
    kind: str = "member",
) -> AccountView:
    view = ledger.execute(
        BANK,
        OpenAccount(
            account_id=account_id, kind=kind, lower_limit_minutes=lower, upper_limit_minutes=upper
        ),
    )
    assert isinstance(view, AccountView)
    return view


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


def pay(
    ledger: Ledger, transfer_id: str, payer: str, payee: str, minutes: int, **options: Any
) -> TransferView:
    view = ledger.execute(BANK, payment(transfer_id, payer, payee, minutes, **options))
    assert isinstance(view, TransferView)
    return view


def all_accounts(ledger: Ledger, bank_id: str = BANK, page_size: int = 7) -> list[AccountView]:
    accounts, token = ledger.list_accounts(bank_id, page_size, "")
    while token:
        page, token = ledger.list_accounts(bank_id, page_size, token)
        accounts += page
    return accounts


def all_transfers(
    ledger: Ledger, account_id: str, bank_id: str = BANK, page_size: int = 7
) -> list[TransferView]:
    transfers, token = ledger.list_account_transfers(bank_id, account_id, page_size, "")
    while token:
        page, token = ledger.list_account_transfers(bank_id, account_id, page_size, token)
        transfers += page
    return transfers


def snapshot(ledger: Ledger, bank_id: str = BANK) -> Snapshot:
    """What a caller can read about a bank, through the paginated API."""
    accounts = all_accounts(ledger, bank_id)
    transfers = {a.account_id: all_transfers(ledger, a.account_id, bank_id) for a in accounts}
    return ledger.get_bank(bank_id), accounts, transfers


def replayed(ledger: Ledger, bank_id: str = BANK) -> Snapshot:
    """The same, rebuilt from the events in the store alone (from event 1), not the tables."""
    state, records = loading.replay_from_start(ledger.store, str(bank_uuid(bank_id)))
    accounts = [account.view() for account in state.accounts.values()]
    everything = sorted(
        (records.transfer(transfer_id) for transfer_id in records.created_transfers),
        key=lambda record: -record.number if record else 0,
    )
    transfers = {
        account.account_id: [
            record.view()
            for record in everything
            if record and account.account_id in (record.payer_account_id, record.payee_account_id)
        ]
        for account in accounts
    }
    return state.view(), accounts, transfers


def stored_rows(ledger: Ledger, bank_id: str = BANK) -> list[tuple[int, bytes, str]]:
    """(version, stored bytes, chain hash) of each event of the bank, as the store holds them."""
    return list(loading.stored_rows(ledger.store, str(bank_uuid(bank_id))))


def stored_versions(ledger: Ledger, bank_id: str = BANK) -> list[int]:
    return [version for version, _, _ in stored_rows(ledger, bank_id)]


def stored_events(ledger: Ledger, bank_id: str = BANK) -> list[history.DecodedEvent]:
    """The bank's history as the store holds it, decoded."""
    uuid = str(bank_uuid(bank_id))
    return [history.decode(uuid, stored) for _, stored, _ in stored_rows(ledger, bank_id)]


def verified(ledger: Ledger, bank_id: str = BANK) -> bool:
    """Whether the independent verifier accepts the stored rows (bytes and chain hashes)."""
    rows = [(stored, chain_hash) for _, stored, chain_hash in stored_rows(ledger, bank_id)]
    return verify(rows, bank_uuid(bank_id)).ok


def created_ids(events: list[history.DecodedEvent]) -> list[str]:
    """The ids of the transfers these events create (a TransfersCreated holds several)."""
    return [
        item["transfer_id"]
        for decoded in events
        if isinstance(decoded.event, TransfersCreated)
        for item in decoded.event.transfers
    ]


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll until `condition` holds; fail (not hang) if it never does."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


class HeldCommit:
    """Holds the writer inside its next commit until `release` is set, so requests queue up."""

    def __init__(self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
        recorder = ledger.store.recorder
        insert = recorder.insert_events
        self.holding = threading.Event()
        self.release = threading.Event()

        def held(stored_events: Any, **kwargs: Any) -> Any:
            if not self.holding.is_set():
                self.holding.set()
                assert self.release.wait(WAIT_SECONDS), "the test never released the writer"
            return insert(stored_events, **kwargs)

        monkeypatch.setattr(recorder, "insert_events", held)


def balance_of(ledger: Ledger, account_id: str) -> int:
    return ledger.get_account(BANK, account_id).balance_minutes


def outcomes(results: list[BatchItemResult]) -> list[str]:
    return [result.error.reason if result.error else "ok" for result in results]


def refused(
    ledger: Ledger, command: Command, error_type: type[DomainError], reason: str
) -> DomainError:
    """Run a command that must be refused, and check that the bank did not change."""
    before = snapshot(ledger)
    with pytest.raises(error_type) as info:
        ledger.execute(BANK, command)
    assert info.value.reason == reason, info.value
    assert snapshot(ledger) == before
    return info.value


# ----------------------------------------------------------------- every store


class TestLedgerOnEveryStore:
    def test_walkthrough(self, ledger: Ledger, clock: Clock) -> None:
        # The Riverside time bank is created; its history holds one event.
        bank = create_bank(ledger)
        assert (bank.bank_id, bank.position, bank.account_count) == (BANK, 1, 0)
        # Ann and Bea join as members who may owe ten hours; the garden pool may not owe.
        open_account(ledger, "ann")
        open_account(ledger, "bea")
        open_account(ledger, "garden", lower=0, upper=None, kind="pool")
        # Bea mows Ann's lawn: Ann pays her 90 minutes.
        t1 = pay(ledger, "t1", "ann", "bea", 90, memo="lawn", service_date="2025-02-28")
        assert (t1.status, t1.created_at, t1.created_position) == ("posted", START, 5)
        # Ann asks Bea to confirm a 60 minute visit; Bea confirms only 45 of it an hour later.
        h1 = pay(ledger, "h1", "ann", "bea", 60, pending=True, timeout_seconds=86_400)
        assert h1.deadline == START + timedelta(days=1)
        assert ledger.get_account(BANK, "ann").pending_debit_minutes == 60
        clock.advance(hours=1)
        posted = ledger.execute(
            BANK, PostPending(request_id="p1", transfer_id="h1", amount_minutes=45)
        )
        assert (posted.status, posted.posted_amount_minutes) == ("posted", 45)
        # A pledge to the garden is withdrawn.
        pay(ledger, "h2", "bea", "garden", 30, pending=True)
        voided = ledger.execute(BANK, VoidPending(request_id="v1", transfer_id="h2", reason="rain"))
        assert voided.status == "voided"
        # The lawn was entered twice by mistake: the coordinator reverses it.
        r1 = ledger.execute(
            BANK, ReverseTransfer(transfer_id="r1", reverses_transfer_id="t1", reason="twice")
        )
        assert (r1.payer_account_id, r1.payee_account_id, r1.amount_minutes) == ("bea", "ann", 90)
        # Both contribute to the garden in one linked batch.
        results = ledger.execute(
            BANK,
            CreateTransfers(
                items=(payment("g1", "ann", "garden", 20), payment("g2", "bea", "garden", 25)),
                linked=True,
            ),
        )
        assert outcomes(results) == ["ok", "ok"]
        # A linked batch that would take the garden into debt is refused whole.
        results = ledger.execute(
            BANK,
            CreateTransfers(
                items=(payment("g3", "ann", "garden", 5), payment("g4", "garden", "bea", 100)),
                linked=True,
            ),
        )
        assert outcomes(results) == ["LINKED_EVENT_FAILED", "EXCEEDS_LOWER_LIMIT"]
        # Bea's limit is tightened and she is frozen for a while, then unfrozen.
        ledger.execute(
            BANK,
            ChangeLimits(
                request_id="l1", account_id="bea", lower_limit_minutes=-60, upper_limit_minutes=600
            ),
        )
        ledger.execute(BANK, ChangeStatus(request_id="s1", account_id="bea", action="freeze"))
        refused(ledger, payment("t2", "bea", "ann", 1), PreconditionFailed, "ACCOUNT_FROZEN")
        ledger.execute(BANK, ChangeStatus(request_id="s2", account_id="bea", action="unfreeze"))
        # The books: every minute is accounted for and the balances sum to zero.
        balances = {a.account_id: a.balance_minutes for a in all_accounts(ledger)}
        assert balances == {"ann": -65, "bea": 20, "garden": 45}
        assert sum(balances.values()) == 0
        bank = ledger.get_bank(BANK)
        assert (bank.account_count, bank.transfer_count, bank.position) == (3, 6, 14)
        assert [t.transfer_id for t in all_transfers(ledger, "ann")] == ["g1", "r1", "h1", "t1"]
        # The history has one event per change (the batch's two transfers share one), is
        # contiguous, verifies, and replays to the same views.
        events = stored_events(ledger)
        assert [created_ids([event]) for event in events if created_ids([event])] == [
            ["t1"],
            ["h1"],
            ["h2"],
            ["g1", "g2"],
        ]
        assert stored_versions(ledger) == list(range(1, bank.position + 1))
        assert verified(ledger)
        assert replayed(ledger) == snapshot(ledger)

    def test_requests_refused_before_the_writer_change_nothing(self, ledger: Ledger) -> None:
        create_bank(ledger)
        open_account(ledger, "ann")
        # Bad input is refused with the field named, before anything is queued.
        error = refused(ledger, payment("t1", "ann", "ann", 5), InvalidInput, "SAME_ACCOUNT")
        assert error.field == "payee_account_id"
        refused(ledger, payment("t1", "ann", "bea", 0), InvalidInput, "AMOUNT_NOT_POSITIVE")
        # Unknown banks and accounts are named.
        with pytest.raises(NotFound) as info:
            ledger.execute("nowhere", OpenAccount(account_id="ann", kind="member"))
        assert (info.value.reason, info.value.field) == ("BANK_NOT_FOUND", "bank_id")
        with pytest.raises(NotFound) as info:
            ledger.get_account(BANK, "zed")
        assert info.value.reason == "ACCOUNT_NOT_FOUND"
        with pytest.raises(NotFound) as info:
            ledger.get_transfer(BANK, "t404")
        assert info.value.reason == "TRANSFER_NOT_FOUND"
        with pytest.raises(InvalidInput) as bad:
            ledger.get_bank("no spaces")
        assert bad.value.field == "bank_id"
        # A bank that does not exist is not created by asking for it.
        with pytest.raises(NotFound):
            ledger.get_bank("nowhere")
        assert ledger.get_bank(BANK).position == 2

    def test_idempotent_retries_return_the_original(self, ledger: Ledger, clock: Clock) -> None:
        created = create_bank(ledger)
        opened = open_account(ledger, "ann")
        open_account(ledger, "bea")
        first = pay(ledger, "t1", "ann", "bea", 30, memo="soup")
        held = pay(ledger, "h1", "ann", "bea", 10, pending=True)
        limits_request = ChangeLimits(request_id="l1", account_id="ann", lower_limit_minutes=-300)
        ledger.execute(BANK, limits_request)
        batch = CreateTransfers(items=(payment("b1", "bea", "ann", 1),), linked=True)
        batched = ledger.execute(BANK, batch)
        position = ledger.get_bank(BANK).position
        # Later, every request is sent again with the same ids and content (another actor).
        clock.advance(minutes=10)
        assert create_bank(ledger).bank_id == created.bank_id
        # (An account or a limit change is answered with the account as it is now.)
        reopened = ledger.execute(
            BANK,
            OpenAccount(
                account_id="ann",
                kind="member",
                lower_limit_minutes=-600,
                upper_limit_minutes=600,
                actor="retry",
            ),
        )
        assert reopened == ledger.get_account(BANK, "ann")
        assert (reopened.opened_at, reopened.lower_limit_minutes) == (opened.opened_at, -300)
        assert ledger.execute(BANK, limits_request) == reopened
        assert pay(ledger, "t1", "ann", "bea", 30, memo="soup", actor="retry") == first
        assert pay(ledger, "h1", "ann", "bea", 10, pending=True) == held
        assert ledger.execute(BANK, batch) == batched
        # Nothing was recorded twice.
        assert ledger.get_bank(BANK).position == position
        # The same ids with other content are refused, naming what differs.
        with pytest.raises(IdConflict) as info:
            ledger.create_bank(CreateBank(bank_id=BANK, name="Other"))
        assert info.value.reason == "EXISTS_WITH_DIFFERENT_NAME"
        refused(
            ledger,
            payment("t1", "ann", "bea", 31),
            IdConflict,
            "EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES",
        )
        # Posting the hold twice under one request id returns the posted transfer both times.
        posted = ledger.execute(BANK, PostPending(request_id="p1", transfer_id="h1"))
        assert ledger.execute(BANK, PostPending(request_id="p1", transfer_id="h1")) == posted
        assert replayed(ledger) == snapshot(ledger)

    def test_lists_are_paginated_newest_transfers_first(self, ledger: Ledger) -> None:
        create_bank(ledger)
        # Twenty-three members join in order.
        names = [f"m{number:02}" for number in range(23)]
        for name in names:
            open_account(ledger, name)
        # Accounts are listed in opening order, ten to a page.
        page, token = ledger.list_accounts(BANK, 10, "")
        assert [a.account_id for a in page] == names[:10]
        page, token = ledger.list_accounts(BANK, 10, token)
        assert [a.account_id for a in page] == names[10:20]
        page, token = ledger.list_accounts(BANK, 10, token)
        assert ([a.account_id for a in page], token) == (names[20:], "")
        # A page size of 0 means the default, which holds them all here.
        page, token = ledger.list_accounts(BANK, 0, "")
        assert (len(page), token) == (23, "")
        # m00 pays m01 twenty-five times.
        for number in range(1, 26):
            pay(ledger, f"t{number:02}", "m00", "m01", 1)
        # Its statement is newest first, ten to a page.
        statement, token = ledger.list_account_transfers(BANK, "m00", 10, "")
        assert [t.transfer_id for t in statement] == [f"t{n:02}" for n in range(25, 15, -1)]
        # New transfers between pages do not shift the pages still to come.
        pay(ledger, "t26", "m00", "m01", 1)
        statement, token = ledger.list_account_transfers(BANK, "m00", 10, token)
        assert [t.transfer_id for t in statement] == [f"t{n:02}" for n in range(15, 5, -1)]
        statement, token = ledger.list_account_transfers(BANK, "m00", 10, token)
        assert ([t.transfer_id for t in statement], token) == (
            [f"t{n:02}" for n in range(5, 0, -1)],
            "",
        )
        # An account with no transfers has an empty statement.
        assert ledger.list_account_transfers(BANK, "m05", 10, "") == ([], "")

    def test_bad_page_tokens_and_sizes_are_refused(self, ledger: Ledger) -> None:
        create_bank(ledger)
        for name in ("ann", "bea"):
            open_account(ledger, name)
        pay(ledger, "t1", "ann", "bea", 1)
        _, account_token = ledger.list_accounts(BANK, 1, "")
        assert account_token

        def b64(text: str) -> str:
            return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

        bad_tokens = [
            "not a token!",
            b64("t:1"),  # another list's token
            b64("a:3"),  # past the end of the list
            b64("a:-1"),
            b64("a:"),
            b64("a:1") + "A" * 64,  # too long
            b64("a:²"),  # a digit to str.isdigit(), not to int()
        ]
        for token in bad_tokens:
            with pytest.raises(InvalidInput) as info:
                ledger.list_accounts(BANK, 1, token)
            assert (info.value.reason, info.value.field) == ("INVALID_PAGE_TOKEN", "page_token")
        # An account list's token is refused by an account's statement.
        with pytest.raises(InvalidInput) as info:
            ledger.list_account_transfers(BANK, "ann", 1, account_token)
        assert info.value.reason == "INVALID_PAGE_TOKEN"
        # A negative page size is refused.
        with pytest.raises(InvalidInput) as info:
            ledger.list_accounts(BANK, -1, "")
        assert (info.value.reason, info.value.field) == ("INVALID_PAGE_SIZE", "page_size")

    def test_concurrent_writers_keep_every_invariant(self, ledger: Ledger) -> None:
        create_bank(ledger)
        # Ten members with tight limits: each may owe and hold at most 50 minutes.
        members = [f"m{number}" for number in range(10)]
        for member in members:
            open_account(ledger, member, lower=-50, upper=50)
        start_position = ledger.get_bank(BANK).position
        # Eight threads each send 30 transfers between random members; a quarter are holds.
        threads_count, transfers_per_thread = 8, 30
        recorded: list[str] = []
        resolutions: list[str] = []
        refusals: list[str] = []
        unexpected: list[BaseException] = []
        lock = threading.Lock()

        def send(command: Command, answered: list[str]) -> bool:
            try:
                ledger.execute(BANK, command)
            except PreconditionFailed as error:
                with lock:
                    refusals.append(error.reason)
                return False
            except BaseException as error:  # reported by the main thread
                with lock:
                    unexpected.append(error)
                return False
            with lock:
                answered.append(getattr(command, command.id_field))
            return True

        def work(thread: int) -> None:
            rng = random.Random(thread)
            for number in range(transfers_per_thread):
                payer, payee = rng.sample(members, 2)
                minutes = rng.randint(1, 40)
                transfer_id = f"w{thread}-{number}"
                pending = rng.random() < 0.25
                command = payment(transfer_id, payer, payee, minutes, pending=pending)
                if not send(command, recorded) or not pending:
                    continue
                # The thread posts (in full or in part) or voids its hold, or leaves it open.
                choice = rng.random()
                if choice < 0.4:
                    send(
                        PostPending(
                            request_id=f"r-{transfer_id}",
                            transfer_id=transfer_id,
                            amount_minutes=rng.randint(1, minutes),
                        ),
                        resolutions,
                    )
                elif choice < 0.7:
                    send(
                        VoidPending(request_id=f"r-{transfer_id}", transfer_id=transfer_id),
                        resolutions,
                    )

        threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Every transfer got an answer: recorded, or refused for a limit; every resolution
        # of a recorded hold succeeded (a hold's reservation already covers its post).
        assert unexpected == []
        assert len(recorded) + len(refusals) == threads_count * transfers_per_thread
        assert set(refusals) <= {"EXCEEDS_LOWER_LIMIT", "EXCEEDS_UPPER_LIMIT"}
        assert recorded
        assert refusals
        assert resolutions
        # The bank recorded exactly what was answered with success, once each (transfers
        # committed together may share an event; each resolution is an event of its own).
        bank = ledger.get_bank(BANK)
        assert bank.transfer_count == len(recorded)
        events = stored_events(ledger)
        assert sorted(created_ids(events)) == sorted(recorded)
        resolved = [d.event for d in events if isinstance(d.event, PendingPosted | PendingVoided)]
        assert sorted(e.request_id for e in resolved) == sorted(resolutions)
        assert {d.event.TYPE for d in events[start_position:]} <= {
            "TransfersCreated",
            "PendingPosted",
            "PendingVoided",
        }
        assert verified(ledger)
        # Balances sum to zero and no account is past a limit, counting its holds.
        accounts = all_accounts(ledger)
        assert sum(a.balance_minutes for a in accounts) == 0
        assert sum(a.pending_debit_minutes - a.pending_credit_minutes for a in accounts) == 0
        for account in accounts:
            assert account.upper_limit_minutes is not None
            assert account.balance_minutes - account.pending_debit_minutes >= -50, account
            assert account.balance_minutes + account.pending_credit_minutes <= 50, account
        # The history replays to the same state.
        assert stored_versions(ledger) == list(range(1, bank.position + 1))
        assert replayed(ledger) == snapshot(ledger)

    def test_concurrent_transfers_are_committed_in_fewer_events(
        self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        create_bank(ledger)
        for name in ("ann", "bea", "cat"):
            open_account(ledger, name, lower=-100, upper=None)
        start_position = ledger.get_bank(BANK).position
        answers: dict[str, Any] = {}

        def send(name: str, command: Command) -> threading.Thread:
            def call() -> None:
                try:
                    answers[name] = ledger.execute(BANK, command)
                except DomainError as error:
                    answers[name] = error

            thread = threading.Thread(target=call, name=name)
            thread.start()
            return thread

        # The writer is held inside the commit of a first payment...
        held = HeldCommit(ledger, monkeypatch)
        threads = [send("t0", payment("t0", "ann", "bea", 1))]
        assert held.holding.wait(WAIT_SECONDS)
        # ...while forty payments arrive at once from forty threads, with one that Ann cannot
        # afford and a retry of the first.
        members = ["ann", "bea", "cat"]
        for number in range(1, 41):
            payer, payee = members[number % 3], members[(number + 1) % 3]
            threads.append(send(f"t{number}", payment(f"t{number}", payer, payee, number % 5 + 1)))
        threads.append(send("too-much", payment("x1", "ann", "bea", 1_000)))
        threads.append(send("retry", payment("t0", "ann", "bea", 1)))
        wait_until(lambda: ledger.writers.queued(BANK) == len(threads) - 1)
        held.release.set()
        for thread in threads:
            thread.join(WAIT_SECONDS)
            assert not thread.is_alive(), f"{thread.name} got no answer"
        # Every caller got its own answer: the refusal is named, the retry is the original.
        refused_names = {n for n, a in answers.items() if isinstance(a, DomainError)}
        assert refused_names == {"too-much"}
        assert answers["too-much"].reason == "EXCEEDS_LOWER_LIMIT"
        assert answers["retry"] == answers["t0"]
        # Forty-one transfers were recorded, once each, in fewer events than transfers.
        recorded = sorted(f"t{number}" for number in range(41))
        events = stored_events(ledger)[start_position:]
        assert sorted(created_ids(events)) == recorded
        assert len(events) < len(recorded)
        # Each caller was answered with what the bank shows and the history replays to.
        for transfer_id in recorded:
            assert answers[transfer_id] == ledger.get_transfer(BANK, transfer_id)
        accounts = all_accounts(ledger)
        assert sum(a.balance_minutes for a in accounts) == 0
        bank = ledger.get_bank(BANK)
        assert bank.transfer_count == len(recorded)
        assert stored_versions(ledger) == list(range(1, bank.position + 1))
        assert verified(ledger)
        assert replayed(ledger) == snapshot(ledger)

    def test_a_refused_batch_item_in_an_independent_batch_stands_alone(
        self, ledger: Ledger
    ) -> None:
        create_bank(ledger)
        open_account(ledger, "ann", lower=-100)
        open_account(ledger, "bea")
        # Three items, the middle one too large and the last one malformed.
        results = ledger.execute(
            BANK,
            CreateTransfers(
                items=(
                    payment("b1", "ann", "bea", 60),
                    payment("b2", "ann", "bea", 60),
                    payment("b3", "bea", "ann", -5),
                ),
            ),
        )
        assert outcomes(results) == ["ok", "EXCEEDS_LOWER_LIMIT", "AMOUNT_NOT_POSITIVE"]
        assert (balance_of(ledger, "ann"), balance_of(ledger, "bea")) == (-60, 60)
        assert ledger.get_bank(BANK).transfer_count == 1
        assert replayed(ledger) == snapshot(ledger)


# ----------------------------------------------------------------- stores that survive a restart


class TestDurableStores:
    def test_reopening_replays_to_the_same_views_and_chain_head(
        self, durable_store_url: str, make_ledger: MakeLedger, clock: Clock
    ) -> None:
        # A day of activity in one Ledger.
        ledger = make_ledger(durable_store_url)
        create_bank(ledger)
        for name in ("ann", "bea", "cat"):
            open_account(ledger, name)
        pay(ledger, "t1", "ann", "bea", 45, memo="Äpfel pflücken ✓", category="garden")
        pay(ledger, "h1", "bea", "cat", 30, pending=True, timeout_seconds=60)
        pay(ledger, "h2", "cat", "ann", 15, pending=True)
        ledger.execute(BANK, PostPending(request_id="p1", transfer_id="h2", amount_minutes=10))
        ledger.execute(
            BANK, ReverseTransfer(transfer_id="r1", reverses_transfer_id="t1", reason="x")
        )
        ledger.execute(BANK, ChangeStatus(request_id="s1", account_id="cat", action="freeze"))
        # The hold h1 expires when the next command arrives after its deadline.
        clock.advance(seconds=61)
        open_account(ledger, "dan", upper=None)
        assert ledger.get_transfer(BANK, "h1").status == "expired"
        before = snapshot(ledger)
        # A second Ledger on the same database (as after a restart) reads the same bank.
        reopened = make_ledger(durable_store_url)
        assert snapshot(reopened) == before
        assert reopened.get_bank(BANK).chain_head == before[0].chain_head
        # It continues where the first left off, and retries are still recognised.
        assert (
            pay(reopened, "t1", "ann", "bea", 45, memo="Äpfel pflücken ✓", category="garden")
            == before[2]["bea"][-1]
        )
        pay(reopened, "t2", "dan", "bea", 5)
        assert reopened.get_bank(BANK).position == before[0].position + 1

    def test_a_second_ledger_catches_up_before_it_decides(
        self, durable_store_url: str, make_ledger: MakeLedger
    ) -> None:
        # Two Ledgers on one database both hold the bank (as two nodes would without a lease).
        first = make_ledger(durable_store_url)
        create_bank(first)
        open_account(first, "ann")
        open_account(first, "bea")
        second = make_ledger(durable_store_url)
        pay(second, "t0", "ann", "bea", 1)  # the second now holds the bank's state too
        # The first opens an account and records a payment the second never saw.
        open_account(first, "cat")
        pay(first, "t1", "ann", "cat", 10)
        # The second does not decide on its stale copy: it pays cat (whom it did not know)
        # and sees the first's payment in Ann's balance.
        pay(second, "t2", "cat", "ann", 4)
        assert (balance_of(second, "ann"), balance_of(second, "cat")) == (-7, 6)
        # Reads come from the committed tables, so both show the same, whoever wrote.
        assert snapshot(first) == snapshot(second)
        assert stored_versions(first) == list(range(1, 8))
        assert verified(first)
        assert replayed(first) == snapshot(first)

    def test_two_ledgers_racing_on_one_bank_never_fork(
        self, durable_store_url: str, make_ledger: MakeLedger, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first = make_ledger(durable_store_url)
        create_bank(first)
        open_account(first, "ann")
        open_account(first, "bea")
        second = make_ledger(durable_store_url)
        pay(second, "t0", "ann", "bea", 1)
        # The first has decided a payment and is held inside its commit of event 5...
        held = HeldCommit(first, monkeypatch)
        answers: dict[str, Any] = {}
        racer = threading.Thread(
            target=lambda: answers.update(t1=pay(first, "t1", "ann", "bea", 10))
        )
        racer.start()
        assert held.holding.wait(WAIT_SECONDS)
        # ...when the second commits its own payment as event 5.
        t2 = pay(second, "t2", "bea", "ann", 4)
        assert t2.created_position == 5
        # The first's commit then fails on the taken version: it catches up, decides again on
        # the bank as the second left it, and commits as event 6. Nobody was refused.
        held.release.set()
        racer.join(WAIT_SECONDS)
        assert not racer.is_alive()
        assert answers["t1"].created_position == 6
        # The history never forked: versions are contiguous and it verifies and replays.
        assert stored_versions(first) == [1, 2, 3, 4, 5, 6]
        assert verified(first)
        fresh = make_ledger(durable_store_url)
        assert snapshot(fresh) == snapshot(first) == replayed(first)
        assert [t.transfer_id for t in all_transfers(fresh, "ann")] == ["t1", "t2", "t0"]
        assert (balance_of(fresh, "ann"), balance_of(fresh, "bea")) == (-7, 7)

    def test_a_writer_that_keeps_losing_races_is_told_to_retry(
        self, durable_store_url: str, make_ledger: MakeLedger, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first = make_ledger(durable_store_url)
        create_bank(first)
        open_account(first, "ann")
        open_account(first, "bea")
        second = make_ledger(durable_store_url)
        pay(first, "t0", "ann", "bea", 1)
        # Each time the first is about to commit, the second commits first.
        append = first.store.append
        losses: list[str] = []

        def lose_the_race(*args: Any, **kwargs: Any) -> Any:
            if len(losses) < 2:
                losses.append(pay(second, f"s{len(losses)}", "bea", "ann", 1).transfer_id)
            return append(*args, **kwargs)

        monkeypatch.setattr(first.store, "append", lose_the_race)
        # The first catches up and tries once more, loses again, and tells its caller to retry.
        with pytest.raises(WriteConflict) as info:
            pay(first, "t1", "ann", "bea", 10)
        assert info.value.reason == "WRITE_CONFLICT"
        assert losses == ["s0", "s1"]
        # Nothing of its command was stored; the retry with the same id succeeds.
        with pytest.raises(DomainError):
            first.get_transfer(BANK, "t1")
        t1 = pay(first, "t1", "ann", "bea", 10)
        assert t1.created_position == 7
        assert stored_versions(first) == list(range(1, 8))
        assert verified(first)
        assert replayed(first) == snapshot(first) == snapshot(second)

    @pytest.mark.parametrize("damage", ["modify", "delete"])
    def test_a_modified_or_missing_row_is_detected_on_reload(
        self, durable_store_url: str, make_ledger: MakeLedger, damage: str
    ) -> None:
        ledger = make_ledger(durable_store_url)
        create_bank(ledger)
        open_account(ledger, "ann")
        open_account(ledger, "bea")
        pay(ledger, "t1", "ann", "bea", 90)
        pay(ledger, "t2", "bea", "ann", 15)
        # Both SQL recorders name their table; the abstract recorder type does not.
        table = ledger.store.recorder.events_table_name  # type: ignore[attr-defined]
        # Someone edits the stored amount of t1 (event 4) to 9, or deletes that row.
        change_row(durable_store_url, table, 4, damage)
        # A Ledger loading the bank to write refuses the broken history, naming where it
        # breaks, and records nothing on top of it. (Reads serve the committed tables; the
        # chain is checked where a bank is loaded, and by `timebank-ledger verify`.)
        reloaded = make_ledger(durable_store_url)
        with pytest.raises(HistoryDamaged) as info:
            pay(reloaded, "t3", "ann", "bea", 1)
        assert (info.value.reason, info.value.metadata["position"]) == ("HISTORY_DAMAGED", "4")
        assert reloaded.get_bank(BANK).position == 5
        assert not verified(reloaded)


def change_row(database_url: str, table: str, version: int, damage: str) -> None:
    """Modify (amount 90 becomes 9) or delete one stored event, behind the ledger's back."""
    url = urlsplit(database_url)

    def modified(state: bytes) -> bytes:
        assert b'"amount_minutes":90' in state
        return state.replace(b'"amount_minutes":90', b'"amount_minutes":9')

    if url.scheme == "sqlite":
        with sqlite3.connect(url.path[1:]) as connection:
            if damage == "delete":
                connection.execute(f"DELETE FROM {table} WHERE originator_version = ?", (version,))
            else:
                (state,) = connection.execute(
                    f"SELECT state FROM {table} WHERE originator_version = ?", (version,)
                ).fetchone()
                connection.execute(
                    f"UPDATE {table} SET state = ? WHERE originator_version = ?",
                    (modified(state), version),
                )
        return
    schema = parse_qs(url.query)["schema"][0]
    base = database_url.split("?")[0]
    with psycopg.connect(base, autocommit=True) as server:
        target = f'"{schema}"."{table}"'
        if damage == "delete":
            server.execute(f"DELETE FROM {target} WHERE originator_version = %s", (version,))
        else:
            row = server.execute(
                f"SELECT state FROM {target} WHERE originator_version = %s", (version,)
            ).fetchone()
            assert row is not None
            server.execute(
                f"UPDATE {target} SET state = %s WHERE originator_version = %s",
                (modified(bytes(row[0])), version),
            )


# ----------------------------------------------------------------- page sizes


def test_page_sizes_default_and_cap() -> None:
    # 0 asks for the default; anything past the maximum gets the maximum.
    assert pages.page_size(0) == limits.page_size_default
    assert pages.page_size(1) == 1
    assert pages.page_size(limits.page_size_max) == limits.page_size_max
    assert pages.page_size(limits.page_size_max + 1) == limits.page_size_max
    with pytest.raises(InvalidInput):
        pages.page_size(-1)
