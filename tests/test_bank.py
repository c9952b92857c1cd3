"""A bank's rules on their own: every rule, without a store or a writer (state model v2).

Each test is a short story told through MemoryBank (tests/domain_harness.py): the domain run
exactly as a writer runs it, with its index records and stored events kept in memory. After
every refused command we check that nothing changed: the same state (accounts, holds,
deadlines), the same transfer and request records, the same stored events. After every story
each bank it made must be what its stored events alone rebuild (see `every_bank_replays`).

Where the old Bank aggregate behaved differently and v2 changed it on purpose, a comment
starting "v2:" says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest
from bank_checks import (
    body,
    check_replays,
    created_ids,
    first_break,
    live_deadlines,
    loaded,
    rebuilt,
)
from domain_harness import START, MemoryBank

from ledger.domain import canonical, chain, events, history, limits
from ledger.domain.bank import execute
from ledger.domain.batch import Batch
from ledger.domain.commands import (
    BankCommand,
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
from ledger.domain.errors import (
    DomainError,
    IdConflict,
    InvalidInput,
    NotFound,
    PreconditionFailed,
)
from ledger.domain.holds import expire_due
from ledger.domain.state import BankState
from ledger.domain.views import AccountView, BankView, BatchItemResult, TransferView
from ledger.verifier import Reason, verify

T0 = START
BANK = "riverside"
E = TypeVar("E", bound=DomainError)

# ----------------------------------------------------------------- helpers

# Field changes to make to a command, with the reason the result must carry.
Changes = list[tuple[dict[str, Any], str]]
# Everything a refused command must leave as it was: state, records, stored events (the
# harness's snapshot) and the deadlines of the open holds (the state's equality skips them).
Unchanged = tuple[dict[str, Any], list[tuple[datetime, str]]]

# The banks the running story made; each must replay to itself when the story ends.
_made: list[MemoryBank] = []


@pytest.fixture(autouse=True)
def every_bank_replays() -> Iterator[None]:
    """After every story, each bank it made is what its stored events alone rebuild."""
    _made.clear()
    yield
    for memory in _made:
        check_replays(memory)
    _made.clear()


def new_bank(name: str = "Riverside Time Bank") -> MemoryBank:
    memory = MemoryBank.created(BANK, name)
    _made.append(memory)
    return memory


@pytest.fixture
def bank() -> MemoryBank:
    """Ann and Bea may each owe 100 minutes and hold at most 100; Cat may not owe."""
    memory = new_bank()
    open_account(memory, "ann", lower=-100, upper=100)
    open_account(memory, "bea", lower=-100, upper=100)
    open_account(memory, "cat", lower=0)
    return memory


def unchanged(memory: MemoryBank) -> Unchanged:
    return memory.snapshot(), live_deadlines(memory.state)


def run(memory: MemoryBank, command: BankCommand | CreateBank, now: datetime = T0) -> Any:
    """What the writer does with a command: validate it, run it as a batch of one, commit."""
    return memory.execute(command, now)


def refused(
    memory: MemoryBank,
    command: BankCommand | CreateBank,
    error_type: type[E],
    reason: str,
    now: datetime = T0,
) -> E:
    """Run a command that must be refused with `reason`, and check that it changed nothing."""
    before = unchanged(memory)
    with pytest.raises(error_type) as info:
        run(memory, command, now)
    assert info.value.reason == reason, info.value
    assert unchanged(memory) == before
    return info.value


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


def status(request_id: str, account_id: str, action: str) -> ChangeStatus:
    return ChangeStatus(request_id=request_id, account_id=account_id, action=action)


def set_limits(
    request_id: str, account_id: str, lower: int, upper: int | None = None, reason: str = ""
) -> ChangeLimits:
    return ChangeLimits(
        request_id=request_id,
        account_id=account_id,
        lower_limit_minutes=lower,
        upper_limit_minutes=upper,
        reason=reason,
    )


def post(request_id: str, transfer_id: str, minutes: int | None = None) -> PostPending:
    return PostPending(request_id=request_id, transfer_id=transfer_id, amount_minutes=minutes)


def void(request_id: str, transfer_id: str, reason: str = "") -> VoidPending:
    return VoidPending(request_id=request_id, transfer_id=transfer_id, reason=reason)


def reversal(transfer_id: str, reverses: str, reason: str = "mistake") -> ReverseTransfer:
    return ReverseTransfer(transfer_id=transfer_id, reverses_transfer_id=reverses, reason=reason)


def open_account(
    memory: MemoryBank, account_id: str, lower: int = 0, upper: int | None = None
) -> AccountView:
    command = OpenAccount(
        account_id=account_id, kind="member", lower_limit_minutes=lower, upper_limit_minutes=upper
    )
    view = run(memory, command)
    assert isinstance(view, AccountView)
    return view


def pay(
    memory: MemoryBank, transfer_id: str, payer: str, payee: str, minutes: int, **options: Any
) -> TransferView:
    view = run(memory, payment(transfer_id, payer, payee, minutes, **options))
    assert isinstance(view, TransferView)
    return view


def hold(
    memory: MemoryBank,
    transfer_id: str,
    payer: str,
    payee: str,
    minutes: int,
    timeout_seconds: int = 0,
) -> TransferView:
    return pay(
        memory, transfer_id, payer, payee, minutes, pending=True, timeout_seconds=timeout_seconds
    )


def run_batch(memory: MemoryBank, *items: CreateTransfer, linked: bool) -> list[BatchItemResult]:
    results = run(memory, CreateTransfers(items=items, linked=linked))
    assert isinstance(results, list)
    return results


def balances(memory: MemoryBank) -> dict[str, int]:
    return {account_id: a.balance_minutes for account_id, a in memory.state.accounts.items()}


def held(memory: MemoryBank, account_id: str) -> tuple[int, int]:
    """(pending debit, pending credit) of an account."""
    account = memory.state.accounts[account_id]
    return account.pending_debit_minutes, account.pending_credit_minutes


def account(memory: MemoryBank, account_id: str) -> AccountView:
    return memory.state.accounts[account_id].view()


def transfer(memory: MemoryBank, transfer_id: str) -> TransferView:
    """The transfer as the index tables hold it (what GetTransfer reads)."""
    return memory.transfers[transfer_id].view()


def account_transfers(memory: MemoryBank, account_id: str) -> list[str]:
    """An account's transfers in the order recorded (the index rows ListAccountTransfers reads:
    one per account of each new transfer, numbered in the bank's order)."""
    records = sorted(memory.transfers.values(), key=lambda record: record.number)
    return [
        record.transfer_id
        for record in records
        if account_id in (record.payer_account_id, record.payee_account_id)
    ]


def outcomes(results: Sequence[BatchItemResult]) -> list[str]:
    """The reason of each item's error, or "ok" for an item that was recorded."""
    return [result.error.reason if result.error else "ok" for result in results]


def event_types(memory: MemoryBank) -> list[str]:
    return [event.type for event in memory.stored]


# ----------------------------------------------------------------- banks


def test_create_bank_is_idempotent_and_a_changed_retry_names_the_field() -> None:
    memory = new_bank()
    # The bank exists at version 1, with only its creation event.
    view = memory.state.view()
    assert (view.bank_id, view.name, view.position, view.created_at) == (
        BANK,
        "Riverside Time Bank",
        1,
        T0,
    )
    # v2: the creation event is named BankCreated (was Created).
    assert event_types(memory) == ["BankCreated"]
    # Creating it again, later and from another caller, answers with the bank and records nothing.
    before = unchanged(memory)
    again = run(
        memory,
        CreateBank(bank_id=BANK, name="Riverside Time Bank", actor="key:2", actor_label="retry"),
        T0 + timedelta(hours=1),
    )
    assert isinstance(again, BankView)
    assert (again.bank_id, again.name, again.position, again.created_at) == (BANK, view.name, 1, T0)
    assert unchanged(memory) == before
    # The same bank id with another name is refused, naming the field.
    error = refused(
        memory, CreateBank(bank_id=BANK, name="Other"), IdConflict, "EXISTS_WITH_DIFFERENT_NAME"
    )
    assert (error.field, error.metadata) == ("name", {"bank_id": BANK})


def test_nothing_happens_in_a_bank_that_does_not_exist() -> None:
    # No bank "nowhere" was ever created.
    memory = MemoryBank("nowhere")
    _made.append(memory)
    # Opening an account there is refused, naming the bank, and nothing is stored.
    error = refused(
        memory, OpenAccount(account_id="ann", kind="member"), NotFound, "BANK_NOT_FOUND"
    )
    assert (error.field, error.metadata) == ("bank_id", {"bank_id": "nowhere"})
    assert memory.stored == []
    assert not memory.state.exists


# ----------------------------------------------------------------- accounts


def test_open_account_is_idempotent_and_a_changed_retry_names_the_field() -> None:
    memory = new_bank()
    # A new bank has only its creation event.
    assert memory.state.view().position == 1
    assert memory.state.view().account_count == 0
    # Ann's account opens as event 2 with her limits and nothing on it.
    ann = open_account(memory, "ann", lower=-600, upper=1200)
    assert (ann.status, ann.kind, ann.balance_minutes, ann.position) == ("open", "member", 0, 2)
    assert (ann.lower_limit_minutes, ann.upper_limit_minutes) == (-600, 1200)
    # The same request again, even from another caller with another label, returns the account
    # and records nothing (actor and actor_label are not part of what a retry must repeat).
    opening = OpenAccount(
        account_id="ann", kind="member", lower_limit_minutes=-600, upper_limit_minutes=1200
    )
    before = unchanged(memory)
    assert run(memory, dataclasses.replace(opening, actor="someone-else", actor_label="x")) == ann
    assert unchanged(memory) == before
    # The same id with a different kind, lower or upper limit is refused, naming the field.
    changes: Changes = [
        ({"kind": "pool"}, "EXISTS_WITH_DIFFERENT_KIND"),
        ({"lower_limit_minutes": -60}, "EXISTS_WITH_DIFFERENT_LOWER_LIMIT_MINUTES"),
        ({"upper_limit_minutes": None}, "EXISTS_WITH_DIFFERENT_UPPER_LIMIT_MINUTES"),
    ]
    for change, reason in changes:
        error = refused(memory, dataclasses.replace(opening, **change), IdConflict, reason)
        assert error.field == next(iter(change))
        assert error.metadata == {"account_id": "ann"}
    # After her limits change, a retry of the opening still matches and shows the account now.
    run(memory, set_limits("l1", "ann", -60))
    assert run(memory, opening).lower_limit_minutes == -60


def test_a_transfer_stays_within_both_limits(bank: MemoryBank) -> None:
    # Ann pays Bea 60: both balances move.
    t1 = pay(bank, "t1", "ann", "bea", 60, memo="gardening", service_date="2025-02-28")
    assert (t1.kind, t1.status, t1.posted_amount_minutes) == ("immediate", "posted", 60)
    assert (t1.memo, t1.service_date, t1.created_position) == ("gardening", "2025-02-28", 5)
    # v2: an immediate transfer has no resolved_at (the proto keeps it for pending transfers).
    assert (t1.created_at, t1.resolved_at) == (T0, None)
    assert balances(bank) == {"ann": -60, "bea": 60, "cat": 0}
    # Ann may owe 100, so 41 more is one too many; the error says how much she can pay.
    error = refused(
        bank, payment("t2", "ann", "cat", 41), PreconditionFailed, "EXCEEDS_LOWER_LIMIT"
    )
    assert error.metadata == {"account_id": "ann", "available_minutes": "40"}
    # Exactly up to the lower limit is fine.
    pay(bank, "t2", "ann", "cat", 40)
    assert account(bank, "ann").available_minutes == 0
    # Dan may owe a lot, but cannot push Bea past her cap of 100; the error names her room.
    open_account(bank, "dan", lower=-1000)
    error = refused(
        bank, payment("t3", "dan", "bea", 41), PreconditionFailed, "EXCEEDS_UPPER_LIMIT"
    )
    assert error.metadata == {"account_id": "bea", "room_minutes": "40"}
    # Exactly up to the upper limit is fine.
    pay(bank, "t3", "dan", "bea", 40)
    # Cat may not owe: she can pass on her 40 minutes, not 41.
    refused(bank, payment("t4", "cat", "ann", 41), PreconditionFailed, "EXCEEDS_LOWER_LIMIT")
    assert balances(bank) == {"ann": -100, "bea": 100, "cat": 40, "dan": -40}
    # Unknown accounts are named with the field they came from.
    missing = refused(bank, payment("t5", "zed", "ann", 1), NotFound, "ACCOUNT_NOT_FOUND")
    assert (missing.field, missing.metadata) == ("payer_account_id", {"account_id": "zed"})
    missing = refused(bank, payment("t5", "bea", "zed", 1), NotFound, "ACCOUNT_NOT_FOUND")
    assert missing.field == "payee_account_id"


def test_pending_transfers_reserve_against_both_limits(bank: MemoryBank) -> None:
    # Ann holds 80 minutes for Bea: no balance moves, both accounts show the hold.
    hold(bank, "h1", "ann", "bea", 80)
    assert balances(bank) == {"ann": 0, "bea": 0, "cat": 0}
    assert held(bank, "ann") == (80, 0)
    assert held(bank, "bea") == (0, 80)
    assert account(bank, "ann").available_minutes == 20
    # The open hold is in the decision state, with no deadline.
    assert list(bank.state.holds) == ["h1"]
    assert bank.state.holds["h1"].deadline is None
    # Ann can pay only the 20 her hold leaves, whether at once or as another hold.
    error = refused(
        bank, payment("t1", "ann", "cat", 21), PreconditionFailed, "EXCEEDS_LOWER_LIMIT"
    )
    assert error.metadata["available_minutes"] == "20"
    refused(
        bank,
        payment("t1", "ann", "cat", 21, pending=True),
        PreconditionFailed,
        "EXCEEDS_LOWER_LIMIT",
    )
    # Bea's cap counts the minutes held for her: only 20 more may come in, even as a hold.
    open_account(bank, "dan", lower=-1000)
    error = refused(
        bank, payment("t2", "dan", "bea", 21), PreconditionFailed, "EXCEEDS_UPPER_LIMIT"
    )
    assert error.metadata["room_minutes"] == "20"
    refused(
        bank,
        payment("t2", "dan", "bea", 21, pending=True),
        PreconditionFailed,
        "EXCEEDS_UPPER_LIMIT",
    )
    # A pending credit is not money yet: Bea cannot spend it beyond her own limit.
    pay(bank, "t3", "bea", "cat", 100)
    refused(bank, payment("t4", "bea", "cat", 1), PreconditionFailed, "EXCEEDS_LOWER_LIMIT")
    # Voiding the hold gives Ann her full room back, and the hold leaves the decision state.
    run(bank, void("v1", "h1"))
    assert held(bank, "ann") == (0, 0)
    assert bank.state.holds == {}
    pay(bank, "t1", "ann", "cat", 100)


def test_lowering_a_limit_below_the_balance_only_blocks_further_debits(bank: MemoryBank) -> None:
    # Ann owes 50.
    pay(bank, "t1", "ann", "bea", 50)
    # The coordinator tightens Ann's lower limit to -30: allowed, and her balance is untouched.
    ann = run(bank, set_limits("l1", "ann", -30, 100, reason="review"))
    assert (ann.lower_limit_minutes, ann.balance_minutes) == (-30, -50)
    # She can pay nothing more, not even one minute.
    error = refused(bank, payment("t2", "ann", "cat", 1), PreconditionFailed, "EXCEEDS_LOWER_LIMIT")
    assert error.metadata["available_minutes"] == "0"
    # She can still receive; at -25 she may pay 5 but not 6.
    pay(bank, "t3", "bea", "ann", 25)
    refused(bank, payment("t4", "ann", "cat", 6), PreconditionFailed, "EXCEEDS_LOWER_LIMIT")
    pay(bank, "t4", "ann", "cat", 5)
    # Bea holds 25; a cap of 10 is allowed too, and only blocks what would come in.
    run(bank, set_limits("l2", "bea", -100, 10))
    assert bank.state.accounts["bea"].balance_minutes == 25
    refused(bank, payment("t5", "cat", "bea", 1), PreconditionFailed, "EXCEEDS_UPPER_LIMIT")
    pay(bank, "t5", "bea", "cat", 20)
    assert balances(bank) == {"ann": -30, "bea": 5, "cat": 25}


def test_change_limits_is_idempotent_per_request_id(bank: MemoryBank) -> None:
    # Ann's lower limit becomes -300.
    command = set_limits("l1", "ann", -300, 100, reason="trusted member")
    view = run(bank, command)
    assert view.lower_limit_minutes == -300
    # The request id is kept with what it asked for, in the index records.
    assert bank.requests["l1"].kind == "ChangeLimits"
    assert bank.requests["l1"].content == {
        "request_id": "l1",
        "account_id": "ann",
        "lower_limit_minutes": -300,
        "upper_limit_minutes": 100,
        "reason": "trusted member",
        "update_mask": ["lower_limit_minutes", "upper_limit_minutes"],
    }
    # The same request again, from another caller, changes nothing.
    before = unchanged(bank)
    assert run(bank, dataclasses.replace(command, actor="another-admin", actor_label="b")) == view
    assert unchanged(bank) == before
    # The same request id with other content is refused, naming the first differing field.
    changes: Changes = [
        ({"lower_limit_minutes": -200}, "EXISTS_WITH_DIFFERENT_LOWER_LIMIT_MINUTES"),
        ({"account_id": "bea"}, "EXISTS_WITH_DIFFERENT_ACCOUNT_ID"),
        ({"reason": "other"}, "EXISTS_WITH_DIFFERENT_REASON"),
    ]
    for change, reason in changes:
        error = refused(bank, dataclasses.replace(command, **change), IdConflict, reason)
        assert error.metadata == {"request_id": "l1"}
    # Request ids are shared by every kind of request: a freeze cannot reuse it.
    refused(bank, status("l1", "ann", "freeze"), IdConflict, "EXISTS_WITH_DIFFERENT_KIND")
    # Limits of an unknown account cannot change.
    refused(bank, set_limits("l2", "zed", 0), NotFound, "ACCOUNT_NOT_FOUND")


def test_a_limits_change_sets_only_the_limits_its_mask_names(bank: MemoryBank) -> None:
    run(bank, set_limits("l1", "ann", -300, 100))
    # Only the cap: the lower limit stays, and the request is recorded as what it asked.
    cap_only = ChangeLimits(
        "l2", "ann", upper_limit_minutes=50, update_mask=("upper_limit_minutes",)
    )
    view = run(bank, cap_only)
    assert (view.lower_limit_minutes, view.upper_limit_minutes) == (-300, 50)
    assert bank.requests["l2"].content == {
        "request_id": "l2",
        "account_id": "ann",
        "lower_limit_minutes": None,
        "upper_limit_minutes": 50,
        "reason": "",
        "update_mask": ["upper_limit_minutes"],
    }
    # Its retry is answered, whatever it sends for the limit it does not name.
    assert run(bank, dataclasses.replace(cap_only, lower_limit_minutes=-1)) == view
    # The same id naming both limits is another request.
    refused(
        bank,
        dataclasses.replace(cap_only, update_mask=("lower_limit_minutes", "upper_limit_minutes")),
        IdConflict,
        "EXISTS_WITH_DIFFERENT_LOWER_LIMIT_MINUTES",
    )
    # A mask naming nothing, or a field that is not a limit, is bad input.
    for mask, reason in [((), "NOTHING_TO_CHANGE"), (("balance",), "INVALID_UPDATE_MASK")]:
        with pytest.raises(InvalidInput) as info:
            dataclasses.replace(cap_only, request_id="l3", update_mask=mask).validate()
        assert (info.value.reason, info.value.field) == (reason, "update_mask")


def test_freeze_and_unfreeze(bank: MemoryBank) -> None:
    pay(bank, "t1", "ann", "bea", 30)
    hold(bank, "h1", "ann", "bea", 10)
    # The coordinator freezes Bea.
    bea = run(bank, status("s1", "bea", "freeze"))
    assert bea.status == "frozen"
    # A frozen account neither pays nor receives, and a hold towards it cannot be posted.
    refused(bank, payment("t2", "bea", "cat", 1), PreconditionFailed, "ACCOUNT_FROZEN")
    refused(bank, payment("t2", "ann", "bea", 1), PreconditionFailed, "ACCOUNT_FROZEN")
    refused(bank, post("p1", "h1"), PreconditionFailed, "ACCOUNT_FROZEN")
    # Freezing again is refused; so is unfreezing an open account.
    refused(bank, status("s2", "bea", "freeze"), PreconditionFailed, "ACCOUNT_NOT_OPEN")
    refused(bank, status("s2", "ann", "unfreeze"), PreconditionFailed, "ACCOUNT_NOT_FROZEN")
    # A retry of the freeze is answered; the same id for another action is a conflict.
    assert run(bank, status("s1", "bea", "freeze")) == bea
    refused(bank, status("s1", "bea", "close"), IdConflict, "EXISTS_WITH_DIFFERENT_ACTION")
    # Limits of a frozen account may still change.
    assert run(bank, set_limits("l1", "bea", -50, 100)).lower_limit_minutes == -50
    # Unfrozen, Bea's hold can be posted and she trades again.
    assert run(bank, status("s3", "bea", "unfreeze")).status == "open"
    run(bank, post("p1", "h1"))
    pay(bank, "t2", "bea", "cat", 40)
    assert balances(bank) == {"ann": -40, "bea": 0, "cat": 40}


def test_only_an_empty_account_closes_and_a_closed_one_takes_nothing(bank: MemoryBank) -> None:
    pay(bank, "t1", "ann", "bea", 30)
    # Ann owes 30 and Bea holds them: neither can close.
    refused(bank, status("c1", "ann", "close"), PreconditionFailed, "ACCOUNT_HAS_BALANCE")
    refused(bank, status("c1", "bea", "close"), PreconditionFailed, "ACCOUNT_HAS_BALANCE")
    # Bea pays the 30 back: Ann is square and closes.
    pay(bank, "t2", "bea", "ann", 30)
    closed = run(bank, status("c1", "ann", "close"))
    assert closed.status == "closed"
    # A frozen account with a zero balance may close too.
    run(bank, status("f1", "cat", "freeze"))
    assert run(bank, status("c2", "cat", "close")).status == "closed"
    # A closed account pays nothing, receives nothing, and changes no more.
    refused(bank, payment("t3", "ann", "bea", 1), PreconditionFailed, "ACCOUNT_CLOSED")
    refused(bank, payment("t3", "bea", "ann", 1), PreconditionFailed, "ACCOUNT_CLOSED")
    refused(
        bank, payment("t3", "bea", "ann", 1, pending=True), PreconditionFailed, "ACCOUNT_CLOSED"
    )
    for request_id, action in [("s1", "freeze"), ("s2", "unfreeze"), ("s3", "close")]:
        refused(bank, status(request_id, "ann", action), PreconditionFailed, "ACCOUNT_CLOSED")
    refused(bank, set_limits("l1", "ann", -10), PreconditionFailed, "ACCOUNT_CLOSED")
    # The close itself can still be retried.
    assert run(bank, status("c1", "ann", "close")) == closed


def test_an_account_with_a_hold_cannot_close(bank: MemoryBank) -> None:
    # Cat, holding 5 minutes, holds them for Ann, whose balance is zero.
    pay(bank, "t1", "bea", "cat", 5)
    hold(bank, "h1", "cat", "ann", 5)
    # Ann cannot close while minutes are held for her.
    refused(bank, status("c1", "ann", "close"), PreconditionFailed, "ACCOUNT_HAS_PENDING")
    # Once the hold is voided, she closes.
    run(bank, void("v1", "h1"))
    assert run(bank, status("c1", "ann", "close")).status == "closed"


# ----------------------------------------------------------------- pending transfers


def test_post_pending_in_full(bank: MemoryBank) -> None:
    # Ann asks Bea for 45 minutes of help, pending Bea's confirmation.
    h1 = hold(bank, "h1", "ann", "bea", 45)
    assert (h1.kind, h1.status, h1.posted_amount_minutes, h1.deadline, h1.resolved_at) == (
        "pending",
        "pending",
        0,
        None,
        None,
    )
    # Posting without an amount moves all 45 and drops both holds.
    posted = run(bank, post("p1", "h1"), T0 + timedelta(minutes=5))
    assert (posted.status, posted.posted_amount_minutes) == ("posted", 45)
    assert posted.resolved_at == T0 + timedelta(minutes=5)
    assert balances(bank) == {"ann": -45, "bea": 45, "cat": 0}
    assert held(bank, "ann") == held(bank, "bea") == (0, 0)
    assert bank.state.holds == {}
    # The same post again is answered with the transfer and records nothing.
    before = unchanged(bank)
    assert run(bank, post("p1", "h1")) == posted
    assert unchanged(bank) == before
    # The same request id for a different amount or transfer is refused by name.
    refused(bank, post("p1", "h1", 45), IdConflict, "EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES")
    refused(bank, post("p1", "t9"), IdConflict, "EXISTS_WITH_DIFFERENT_TRANSFER_ID")
    # Posting an unknown transfer names it.
    error = refused(bank, post("p2", "t9"), NotFound, "TRANSFER_NOT_FOUND")
    assert error.field == "transfer_id"


def test_post_pending_in_part_releases_the_rest(bank: MemoryBank) -> None:
    # Ann holds 50 for Bea; only 30 minutes of work were done.
    hold(bank, "h1", "ann", "bea", 50)
    # Posting more than was held is refused.
    error = refused(bank, post("p1", "h1", 51), PreconditionFailed, "POST_AMOUNT_EXCEEDS_PENDING")
    # v2: the error names the transfer and the caller's field, not only the amount held.
    assert error.metadata == {"transfer_id": "h1", "pending_amount_minutes": "50"}
    assert error.field == "amount_minutes"
    # Posting 30 moves 30 and releases the whole hold.
    posted = run(bank, post("p1", "h1", 30))
    assert (posted.amount_minutes, posted.posted_amount_minutes, posted.status) == (
        50,
        30,
        "posted",
    )
    assert balances(bank) == {"ann": -30, "bea": 30, "cat": 0}
    assert held(bank, "ann") == held(bank, "bea") == (0, 0)


def test_void_releases_the_hold(bank: MemoryBank) -> None:
    # Ann holds 60 for Bea; Bea declines.
    hold(bank, "h1", "ann", "bea", 60)
    voided = run(bank, void("v1", "h1", reason="not done"))
    # Nothing moved and nothing is held any more.
    assert (voided.status, voided.posted_amount_minutes, voided.resolved_at) == ("voided", 0, T0)
    # v2: the reason given for the void shows on the voided transfer.
    assert voided.reason == "not done"
    assert balances(bank) == {"ann": 0, "bea": 0, "cat": 0}
    assert held(bank, "ann") == held(bank, "bea") == (0, 0)
    # A retry of the void is answered; another reason under the same id is a conflict.
    assert run(bank, void("v1", "h1", reason="not done")) == voided
    refused(bank, void("v1", "h1", reason="other"), IdConflict, "EXISTS_WITH_DIFFERENT_REASON")
    # Voiding an unknown transfer names it.
    error = refused(bank, void("v2", "nope"), NotFound, "TRANSFER_NOT_FOUND")
    assert error.field == "transfer_id"


def test_a_frozen_account_cannot_post_but_can_void(bank: MemoryBank) -> None:
    hold(bank, "h1", "ann", "bea", 20)
    # Ann is frozen while her hold is open.
    run(bank, status("s1", "ann", "freeze"))
    # Posting is refused; voiding releases the hold.
    refused(bank, post("p1", "h1"), PreconditionFailed, "ACCOUNT_FROZEN")
    assert run(bank, void("v1", "h1")).status == "voided"
    assert held(bank, "ann") == (0, 0)


def test_a_pending_transfer_expires_at_its_deadline(bank: MemoryBank) -> None:
    # Ann holds 30 for Bea for one minute.
    h1 = hold(bank, "h1", "ann", "bea", 30, timeout_seconds=60)
    deadline = T0 + timedelta(seconds=60)
    assert h1.deadline == deadline
    assert bank.state.next_deadline() == deadline
    # A microsecond before the deadline it is still pending and nothing is recorded.
    version = bank.state.version
    before = unchanged(bank)
    bank.expire(deadline - timedelta(microseconds=1))
    assert unchanged(bank) == before
    assert transfer(bank, "h1").status == "pending"
    # At the deadline the next command's batch first expires it, then runs.
    run(bank, OpenAccount(account_id="dan", kind="member"), deadline)
    assert bank.state.version == version + 2
    assert event_types(bank)[-2:] == ["PendingExpired", "AccountOpened"]
    expired = transfer(bank, "h1")
    assert (expired.status, expired.resolved_at, expired.posted_amount_minutes) == (
        "expired",
        deadline,
        0,
    )
    assert held(bank, "ann") == held(bank, "bea") == (0, 0)
    assert account(bank, "ann").available_minutes == 100
    # The hold and its deadline are gone from the decision state.
    assert (bank.state.holds, bank.state.deadlines, bank.state.next_deadline()) == ({}, [], None)
    # Expiry happens once: an hour later only the new command is recorded.
    run(bank, OpenAccount(account_id="eve", kind="member"), deadline + timedelta(hours=1))
    assert bank.state.version == version + 3


def test_a_post_at_the_deadline_is_too_late(bank: MemoryBank) -> None:
    # Bea holds 10 for Cat for 30 seconds.
    hold(bank, "h1", "bea", "cat", 10, timeout_seconds=30)
    version = bank.state.version
    # The post arrives exactly at the deadline: the hold expires first and the post is refused.
    with pytest.raises(PreconditionFailed) as info:
        run(bank, post("p1", "h1"), T0 + timedelta(seconds=30))
    assert info.value.reason == "PENDING_TRANSFER_EXPIRED"
    # Only the expiry was recorded; the post request was not.
    assert bank.state.version == version + 1
    assert event_types(bank)[-1] == "PendingExpired"
    assert transfer(bank, "h1").status == "expired"
    assert balances(bank) == {"ann": 0, "bea": 0, "cat": 0}
    assert "p1" not in bank.requests


@pytest.mark.parametrize(
    ("first", "second", "reason"),
    [
        ("post", "post", "PENDING_TRANSFER_ALREADY_POSTED"),
        ("post", "void", "PENDING_TRANSFER_ALREADY_POSTED"),
        ("void", "post", "PENDING_TRANSFER_ALREADY_VOIDED"),
        ("void", "void", "PENDING_TRANSFER_ALREADY_VOIDED"),
        ("expire", "post", "PENDING_TRANSFER_EXPIRED"),
        ("expire", "void", "PENDING_TRANSFER_EXPIRED"),
    ],
)
def test_a_pending_transfer_resolves_at_most_once(
    bank: MemoryBank, first: str, second: str, reason: str
) -> None:
    # Ann holds 40 for Bea for an hour.
    hold(bank, "h1", "ann", "bea", 40, timeout_seconds=3600)
    # It is resolved once: posted or voided within the hour, or left to expire.
    within = T0 + timedelta(minutes=30)
    if first == "post":
        run(bank, post("r1", "h1"), within)
    elif first == "void":
        run(bank, void("r1", "h1"), within)
    else:
        bank.expire(T0 + timedelta(hours=1))
    resolved = transfer(bank, "h1")
    assert resolved.status != "pending"
    balances_after = balances(bank)
    # A second resolution under a new request id is refused by name and changes nothing.
    command = post("r2", "h1") if second == "post" else void("r2", "h1")
    error = refused(bank, command, PreconditionFailed, reason, T0 + timedelta(hours=2))
    assert error.metadata == {"transfer_id": "h1", "status": resolved.status}
    assert balances(bank) == balances_after


def test_only_pending_transfers_can_be_posted_or_voided(bank: MemoryBank) -> None:
    pay(bank, "t1", "ann", "bea", 10)
    # An immediate transfer is not pending: neither post nor void applies.
    refused(bank, post("p1", "t1"), PreconditionFailed, "TRANSFER_NOT_PENDING")
    refused(bank, void("v1", "t1"), PreconditionFailed, "TRANSFER_NOT_PENDING")
    # Nor is a reversal.
    run(bank, reversal("r1", "t1"))
    refused(bank, void("v1", "r1"), PreconditionFailed, "TRANSFER_NOT_PENDING")


# ----------------------------------------------------------------- reversals


def test_a_reversal_undoes_a_posted_transfer_once(bank: MemoryBank) -> None:
    # Ann pays Bea 40 by mistake.
    t1 = pay(bank, "t1", "ann", "bea", 40, memo="typo")
    # The coordinator reverses it: a new transfer from Bea back to Ann; nothing is edited.
    command = ReverseTransfer(
        transfer_id="r1",
        reverses_transfer_id="t1",
        reason="entered twice",
        actor="coordinator",
        actor_label="Jo at the desk",
    )
    r1 = run(bank, command, T0 + timedelta(minutes=1))
    assert (r1.kind, r1.status, r1.payer_account_id, r1.payee_account_id, r1.amount_minutes) == (
        "reversal",
        "posted",
        "bea",
        "ann",
        40,
    )
    assert (r1.reverses_transfer_id, r1.reason, r1.actor, r1.actor_label) == (
        "t1",
        "entered twice",
        "coordinator",
        "Jo at the desk",
    )
    # v2: a reversal, like an immediate transfer, has no resolved_at.
    assert (r1.created_at, r1.resolved_at) == (T0 + timedelta(minutes=1), None)
    original = transfer(bank, "t1")
    assert original.reversed_by_transfer_id == "r1"
    assert (original.status, original.amount_minutes, original.memo) == (
        t1.status,
        t1.amount_minutes,
        t1.memo,
    )
    # The original's latest change is the reversal's event.
    assert original.position == r1.created_position
    assert balances(bank) == {"ann": 0, "bea": 0, "cat": 0}
    # Both accounts list the original and its reversal.
    assert account_transfers(bank, "ann") == account_transfers(bank, "bea") == ["t1", "r1"]
    # The same reversal again, from another caller, is answered; other content is refused.
    before = unchanged(bank)
    assert run(bank, dataclasses.replace(command, actor="other", actor_label="")) == r1
    assert unchanged(bank) == before
    refused(
        bank, dataclasses.replace(command, reason="x"), IdConflict, "EXISTS_WITH_DIFFERENT_REASON"
    )
    refused(
        bank,
        dataclasses.replace(command, reverses_transfer_id="t2"),
        IdConflict,
        "EXISTS_WITH_DIFFERENT_REVERSES_TRANSFER_ID",
    )
    # A second reversal of t1 is refused, naming the first.
    error = refused(bank, reversal("r2", "t1"), PreconditionFailed, "TRANSFER_ALREADY_REVERSED")
    assert error.metadata == {"transfer_id": "t1", "reversed_by_transfer_id": "r1"}
    # A reversal cannot itself be reversed.
    refused(bank, reversal("r3", "r1"), PreconditionFailed, "CANNOT_REVERSE_REVERSAL")
    # Transfer ids are one namespace: a reversal cannot take a payment's id, nor the other way.
    refused(bank, reversal("t1", "r1"), IdConflict, "EXISTS_WITH_DIFFERENT_KIND")
    refused(bank, payment("r1", "bea", "ann", 40), IdConflict, "EXISTS_WITH_DIFFERENT_KIND")
    # Reversing an unknown transfer names the field.
    missing = refused(bank, reversal("r4", "t9"), NotFound, "TRANSFER_NOT_FOUND")
    assert missing.field == "reverses_transfer_id"


def test_only_posted_transfers_can_be_reversed(bank: MemoryBank) -> None:
    # Three holds: one still pending, one voided, one expired; none of them moved minutes.
    later = T0 + timedelta(seconds=1)
    hold(bank, "h1", "ann", "bea", 10)
    hold(bank, "h2", "ann", "bea", 10)
    run(bank, void("v2", "h2"))
    hold(bank, "h3", "ann", "bea", 10, timeout_seconds=1)
    bank.expire(later)
    for index, transfer_id in enumerate(["h1", "h2", "h3"]):
        refused(
            bank,
            reversal(f"r{index}", transfer_id),
            PreconditionFailed,
            "TRANSFER_NOT_POSTED",
            later,
        )
    # A partly posted hold is reversed by exactly what was posted.
    run(bank, post("p1", "h1", 7), later)
    assert run(bank, reversal("r1", "h1"), later).amount_minutes == 7
    assert balances(bank) == {"ann": 0, "bea": 0, "cat": 0}


def test_a_reversal_obeys_limits_and_closed_accounts(bank: MemoryBank) -> None:
    # Ann pays Bea 100; Bea pays all of it on to Cat.
    pay(bank, "t1", "ann", "bea", 100)
    pay(bank, "t2", "bea", "cat", 100)
    # Bea's limit is tightened to -50: taking the 100 back from her is refused.
    run(bank, set_limits("l1", "bea", -50, 100))
    error = refused(bank, reversal("r1", "t1"), PreconditionFailed, "EXCEEDS_LOWER_LIMIT")
    assert error.metadata == {"account_id": "bea", "available_minutes": "50"}
    # Bea's limit is restored; Cat pays Ann back and Ann's cap becomes 50: now Ann has no room.
    run(bank, set_limits("l2", "bea", -100, 100))
    pay(bank, "t3", "cat", "ann", 100)
    run(bank, set_limits("l3", "ann", -100, 50))
    error = refused(bank, reversal("r1", "t1"), PreconditionFailed, "EXCEEDS_UPPER_LIMIT")
    assert error.metadata == {"account_id": "ann", "room_minutes": "50"}
    # With Ann's cap back at 100, a frozen account does not stop a coordinator's reversal.
    run(bank, set_limits("l4", "ann", -100, 100))
    run(bank, status("s1", "bea", "freeze"))
    assert run(bank, reversal("r1", "t1")).payer_account_id == "bea"
    assert balances(bank) == {"ann": 100, "bea": -100, "cat": 0}
    # A closed account does: Ann pays Cat 30, Cat passes them on and closes.
    run(bank, status("s2", "bea", "unfreeze"))
    pay(bank, "t5", "ann", "cat", 30)
    pay(bank, "t6", "cat", "bea", 30)
    run(bank, status("c1", "cat", "close"))
    refused(bank, reversal("r5", "t5"), PreconditionFailed, "ACCOUNT_CLOSED")


# ----------------------------------------------------------------- transfer idempotency


def test_a_retried_transfer_returns_the_original_and_a_changed_one_names_the_field(
    bank: MemoryBank,
) -> None:
    # Ann pays Bea 30 for tutoring, through a front-end key.
    command = payment(
        "t1", "ann", "bea", 30, memo="tutoring", category="education", actor="key:front"
    )
    t1 = run(bank, command)
    assert (t1.actor, t1.actor_label) == ("key:front", "")
    # The same request again, even from another caller with a label, returns the original
    # (recorded by its first caller) and records nothing.
    before = unchanged(bank)
    assert run(bank, dataclasses.replace(command, actor="retry-bot", actor_label="again")) == t1
    assert unchanged(bank) == before
    # Every content field is compared; the first that differs is named.
    changes: Changes = [
        ({"payer_account_id": "cat"}, "EXISTS_WITH_DIFFERENT_PAYER_ACCOUNT_ID"),
        ({"payee_account_id": "cat"}, "EXISTS_WITH_DIFFERENT_PAYEE_ACCOUNT_ID"),
        ({"amount_minutes": 31}, "EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES"),
        ({"memo": "tutoring!"}, "EXISTS_WITH_DIFFERENT_MEMO"),
        ({"category": "care"}, "EXISTS_WITH_DIFFERENT_CATEGORY"),
        ({"service_date": "2025-02-01"}, "EXISTS_WITH_DIFFERENT_SERVICE_DATE"),
        ({"pending": True}, "EXISTS_WITH_DIFFERENT_PENDING"),
        (
            {"payer_account_id": "cat", "amount_minutes": 1},
            "EXISTS_WITH_DIFFERENT_PAYER_ACCOUNT_ID",
        ),
    ]
    for change, reason in changes:
        error = refused(bank, dataclasses.replace(command, **change), IdConflict, reason)
        assert error.metadata == {"transfer_id": "t1"}
    # A hold's timeout is content too.
    hold(bank, "h1", "ann", "bea", 5, timeout_seconds=60)
    refused(
        bank,
        payment("h1", "ann", "bea", 5, pending=True, timeout_seconds=120),
        IdConflict,
        "EXISTS_WITH_DIFFERENT_TIMEOUT_SECONDS",
    )
    # A refused transfer records nothing, so its id stays free: after a refusal, it can succeed.
    refused(bank, payment("t2", "cat", "ann", 10), PreconditionFailed, "EXCEEDS_LOWER_LIMIT")
    pay(bank, "t3", "bea", "cat", 10)
    assert pay(bank, "t2", "cat", "ann", 10).status == "posted"


def test_the_actor_and_its_label_are_recorded_but_are_not_content(bank: MemoryBank) -> None:
    # A coordinator (authenticated as key:admin, labelled "Jo") holds 10 minutes of Ann's.
    command = payment("h1", "ann", "bea", 10, pending=True, actor="key:admin", actor_label="Jo")
    run(bank, command)
    # The stored event says who recorded it: the authenticated caller and the client's label.
    item = body(bank.stored[-1])["fields"]["transfers"][0]
    assert (item["actor"], item["actor_label"]) == ("key:admin", "Jo")
    # So does the transfer's record.
    assert (transfer(bank, "h1").actor, transfer(bank, "h1").actor_label) == ("key:admin", "Jo")
    # A post and a status change keep theirs in their events too.
    run(bank, PostPending(request_id="p1", transfer_id="h1", actor="key:bea", actor_label="Bea"))
    run(
        bank,
        ChangeStatus(
            request_id="s1", account_id="cat", action="freeze", actor="key:admin", actor_label=""
        ),
    )
    posted, frozen = (body(event)["fields"] for event in bank.stored[-2:])
    assert (posted["actor"], posted["actor_label"]) == ("key:bea", "Bea")
    assert (frozen["actor"], frozen["actor_label"]) == ("key:admin", "")
    # Neither is kept as content of the request ids.
    assert "actor" not in bank.requests["p1"].content
    assert "actor_label" not in bank.requests["s1"].content


# ----------------------------------------------------------------- batches


def test_a_linked_batch_is_all_or_nothing(bank: MemoryBank) -> None:
    # Three transfers, linked; the last would take Cat below zero.
    items = (
        payment("b1", "ann", "bea", 30),
        payment("b2", "bea", "cat", 20, pending=True),
        payment("b3", "cat", "ann", 5),
    )
    before = unchanged(bank)
    results = run_batch(bank, *items, linked=True)
    # The failing item carries its own reason, its neighbours LINKED_EVENT_FAILED.
    assert outcomes(results) == ["LINKED_EVENT_FAILED"] * 2 + ["EXCEEDS_LOWER_LIMIT"]
    assert all(result.transfer is None for result in results)
    assert results[0].error is not None
    # Each neighbour names itself (the PreconditionFailure subject) and the item at fault.
    assert results[0].error.metadata == {
        "transfer_id": "b1",
        "failed_index": "2",
        "failed_transfer_id": "b3",
    }
    # Nothing at all was recorded.
    assert unchanged(bank) == before
    # Without the failing item the batch is recorded whole, in order.
    results = run_batch(bank, *items[:2], linked=True)
    assert outcomes(results) == ["ok", "ok"]
    assert [result.transfer.transfer_id for result in results if result.transfer] == ["b1", "b2"]
    assert balances(bank) == {"ann": -30, "bea": 30, "cat": 0}
    assert held(bank, "bea") == (20, 0)
    # The same batch again returns the same transfers and records nothing.
    before = unchanged(bank)
    assert run_batch(bank, *items[:2], linked=True) == results
    assert unchanged(bank) == before
    # A linked batch with one item conflicting with a recorded one fails whole.
    conflicting = dataclasses.replace(items[0], amount_minutes=31)
    results = run_batch(bank, payment("b4", "ann", "cat", 1), conflicting, linked=True)
    assert outcomes(results) == ["LINKED_EVENT_FAILED", "EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES"]
    assert unchanged(bank) == before
    # So does one naming an unknown or frozen account.
    run(bank, status("s1", "cat", "freeze"))
    before = unchanged(bank)
    results = run_batch(
        bank, payment("b4", "ann", "zed", 1), payment("b5", "ann", "cat", 1), linked=True
    )
    assert outcomes(results) == ["ACCOUNT_NOT_FOUND", "LINKED_EVENT_FAILED"]
    results = run_batch(
        bank, payment("b4", "ann", "bea", 1), payment("b5", "ann", "cat", 1), linked=True
    )
    assert outcomes(results) == ["LINKED_EVENT_FAILED", "ACCOUNT_FROZEN"]
    assert unchanged(bank) == before


def test_a_linked_batch_checks_each_item_against_the_ones_before_it(bank: MemoryBank) -> None:
    # Two payments of 60 each fit Ann's limit alone but not together.
    before = unchanged(bank)
    results = run_batch(
        bank, payment("b1", "ann", "bea", 60), payment("b2", "ann", "cat", 60), linked=True
    )
    assert outcomes(results) == ["LINKED_EVENT_FAILED", "EXCEEDS_LOWER_LIMIT"]
    assert results[1].error is not None
    assert results[1].error.metadata["available_minutes"] == "40"
    assert unchanged(bank) == before
    # A hold for Bea counts against her cap for the items after it.
    open_account(bank, "dan", lower=-1000)
    before = unchanged(bank)
    results = run_batch(
        bank,
        payment("b1", "ann", "bea", 60, pending=True),
        payment("b2", "dan", "bea", 41),
        linked=True,
    )
    assert outcomes(results) == ["LINKED_EVENT_FAILED", "EXCEEDS_UPPER_LIMIT"]
    assert unchanged(bank) == before
    # Minutes received earlier in the batch can be passed on later in it...
    results = run_batch(
        bank, payment("b1", "ann", "cat", 50), payment("b2", "cat", "bea", 50), linked=True
    )
    assert outcomes(results) == ["ok", "ok"]
    assert balances(bank) == {"ann": -50, "bea": 50, "cat": 0, "dan": 0}
    # ...but minutes only held for someone cannot.
    before = unchanged(bank)
    results = run_batch(
        bank,
        payment("b3", "ann", "cat", 10, pending=True),
        payment("b4", "cat", "bea", 10),
        linked=True,
    )
    assert outcomes(results) == ["LINKED_EVENT_FAILED", "EXCEEDS_LOWER_LIMIT"]
    assert unchanged(bank) == before


def test_a_linked_batch_refuses_a_duplicate_id(bank: MemoryBank) -> None:
    before = unchanged(bank)
    # The same transfer id twice in one linked batch is a malformed request.
    results = run_batch(
        bank,
        payment("b1", "ann", "bea", 1),
        payment("b2", "ann", "bea", 2),
        payment("b1", "ann", "bea", 1),
        linked=True,
    )
    assert outcomes(results) == ["LINKED_EVENT_FAILED"] * 2 + ["DUPLICATE_ID_IN_BATCH"]
    error = results[2].error
    assert isinstance(error, InvalidInput)
    assert error.field == "transfer_id"
    # The neighbours say which item failed.
    assert results[0].error is not None
    assert results[0].error.metadata == {
        "transfer_id": "b1",
        "failed_index": "2",
        "failed_transfer_id": "b1",
    }
    assert unchanged(bank) == before


def test_an_independent_batch_gives_each_item_its_own_result(bank: MemoryBank) -> None:
    run(bank, status("s1", "cat", "freeze"))
    version = bank.state.version
    # Six items: fine, over a limit, frozen payee, fine, a retry of the first, a conflicting one.
    results = run_batch(
        bank,
        payment("b1", "ann", "bea", 60),
        payment("b2", "ann", "bea", 41),
        payment("b3", "ann", "cat", 1),
        payment("b4", "ann", "bea", 40),
        payment("b1", "ann", "bea", 60),
        payment("b1", "ann", "bea", 61),
        linked=False,
    )
    assert outcomes(results) == [
        "ok",
        "EXCEEDS_LOWER_LIMIT",
        "ACCOUNT_FROZEN",
        "ok",
        "ok",
        "EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES",
    ]
    # Each item saw the ones before it; the retry returned the first item, not a new transfer.
    assert results[4] == results[0]
    assert balances(bank) == {"ann": -100, "bea": 100, "cat": 0}
    assert sorted(bank.transfers) == ["b1", "b4"]
    # Only the two recorded items are in the history, together in one event.
    assert bank.state.version == version + 1
    assert created_ids(bank.stored[-1:]) == ["b1", "b4"]


# ----------------------------------------------------------------- hash chain


def busy_bank() -> MemoryBank:
    """A bank with one of every event, a group of two transfers among them."""
    memory = new_bank()
    open_account(memory, "ann", lower=-100, upper=100)
    open_account(memory, "bea", lower=-100, upper=100)
    pay(memory, "t1", "ann", "bea", 30, memo="gardening")
    hold(memory, "h1", "ann", "bea", 10)
    run(memory, post("p1", "h1", 5))
    hold(memory, "h2", "ann", "bea", 10)
    run(memory, void("v2", "h2"))
    hold(memory, "h3", "ann", "bea", 10, timeout_seconds=60)
    run(memory, reversal("r1", "t1"), T0 + timedelta(minutes=1))
    run(memory, set_limits("l1", "ann", -50, 100))
    run_batch(memory, payment("b1", "ann", "bea", 5), payment("b2", "bea", "ann", 3), linked=True)
    run(memory, status("s1", "bea", "freeze"))
    return memory


BUSY_EVENT_TYPES = [
    "BankCreated",
    "AccountOpened",
    "AccountOpened",
    "TransfersCreated",
    "TransfersCreated",
    "PendingPosted",
    "TransfersCreated",
    "PendingVoided",
    "TransfersCreated",
    "PendingExpired",
    "TransferReversed",
    "AccountLimitsChanged",
    "TransfersCreated",
    "AccountStatusChanged",
]


def test_replay_rebuilds_the_same_bank_and_chain_head() -> None:
    memory = busy_bank()
    stored = memory.stored
    # v2: types are stored by their registered names (BankCreated, was Created).
    assert event_types(memory) == BUSY_EVENT_TYPES
    # Every created transfer is in the history once, in order; the batch's two share an event.
    assert created_ids(stored) == ["t1", "h1", "h2", "h3", "b1", "b2"]
    assert created_ids(stored[12:13]) == ["b1", "b2"]
    # Replaying the history gives the same accounts, holds, transfers, requests and chain head.
    state, transfers, requests = rebuilt(memory.state.bank_uuid, stored)
    assert (state, transfers, requests) == (memory.state, memory.transfers, memory.requests)
    assert state.view() == memory.state.view()
    assert memory.replayed() == memory.state
    # Each event's hash follows from the one before it and its own stored bytes alone.
    previous = chain.GENESIS_HASH
    for event in stored:
        by_hand = hashlib.sha256(bytes.fromhex(previous) + event.stored).hexdigest()
        assert event.chain_hash == by_hand == chain.next_hash(previous, event.stored)
        previous = event.chain_hash
    assert previous == memory.state.chain_head
    # The independent verifier, reading only (stored bytes, hash) rows, agrees.
    report = verify([(event.stored, event.chain_hash) for event in stored], memory.state.bank_uuid)
    assert report.ok, report
    assert report.chain_head == memory.state.chain_head


def test_the_chain_follows_its_published_format() -> None:
    # Auditors recompute the first hash from the recipe in ledger/domain/chain.py alone.
    memory = new_bank()
    envelope = {
        "bank": memory.state.bank_uuid,
        "version": 1,
        "type": "BankCreated",
        "timestamp": "2025-03-01T09:00:00.000000+00:00",
        "fields": {
            "bank_id": "riverside",
            "name": "Riverside Time Bank",
            "actor": "",
            "actor_label": "",
        },
    }
    text = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.sha256(bytes(32) + text.encode()).hexdigest()
    # v2: what is stored is exactly the bytes that are hashed.
    assert memory.stored[0].stored == text.encode()
    assert memory.state.chain_head == expected
    assert memory.stored[0].chain_hash == expected


def test_event_types_are_registered_under_stable_names() -> None:
    # Every event type the domain records has a name of its own, not a Python class path.
    names = set(events.type_names())
    assert set(BUSY_EVENT_TYPES) <= names
    for name in names:
        event_class = events.type_named(name)
        assert event_class is not None
        assert name == event_class.TYPE
        assert "." not in name
    # A name no one registered reads as nothing.
    assert events.type_named("Created") is None


# A change made to a stored event behind the ledger's back: an edit of what its bytes say.
Edit = Callable[[dict[str, Any]], None]


def envelope_set(**change: Any) -> Edit:
    """Change the envelope (timestamp, type, version...)."""
    return lambda found: found.update(change)


def fields_set(**change: Any) -> Edit:
    """Change the event's own fields."""
    return lambda found: found["fields"].update(change)


def item_set(index: int, **change: Any) -> Edit:
    """Change one transfer inside a TransfersCreated event."""
    return lambda found: found["fields"]["transfers"][index].update(change)


def items_edited(edit: Callable[[list[Any]], list[Any]]) -> Edit:
    """Drop, add or reorder the transfers of a TransfersCreated event."""

    def apply(found: dict[str, Any]) -> None:
        found["fields"]["transfers"] = edit(found["fields"]["transfers"])

    return apply


def altered(event: history.StoredEvent, edit: Edit) -> history.StoredEvent:
    """The row with its bytes edited and re-encoded canonically; its kept hash as it was."""
    found = body(event)
    edit(found)
    return dataclasses.replace(event, stored=canonical.encode(found))


def forge(stored: list[history.StoredEvent], version: int, edit: Edit | None = None) -> None:
    """Change a stored event and recompute its own hash, as a careful forger would."""
    index = version - 1
    event = stored[index] if edit is None else altered(stored[index], edit)
    previous = chain.GENESIS_HASH if index == 0 else stored[index - 1].chain_hash
    stored[index] = dataclasses.replace(event, chain_hash=chain.next_hash(previous, event.stored))


def tamper(version: int, edit: Edit, name: str, reason: Reason = Reason.CHAIN_BROKEN) -> Any:
    """A tampering case: which event, the edit, and what the verifier names it."""
    return pytest.param(version, edit, reason, id=name)


@pytest.mark.parametrize(
    ("version", "edit", "reason"),
    [
        tamper(1, fields_set(name="Other Bank"), "bank-name"),
        tamper(2, fields_set(lower_limit_minutes=-10_000), "account-limit"),
        tamper(4, item_set(0, amount_minutes=3), "transfer-amount"),
        tamper(4, item_set(0, payee_account_id="ann"), "transfer-payee"),
        tamper(4, item_set(0, memo="weeding"), "transfer-memo"),
        tamper(6, fields_set(posted_amount_minutes=10), "posted-amount"),
        tamper(9, item_set(0, deadline=""), "deadline"),
        tamper(11, fields_set(reason="fraud"), "reversal-reason"),
        tamper(12, fields_set(upper_limit_minutes=None), "changed-limit"),
        tamper(13, item_set(1, amount_minutes=30), "group-second-amount"),
        tamper(13, items_edited(lambda items: items[:1]), "group-item-dropped"),
        tamper(13, items_edited(lambda items: items[::-1]), "group-items-swapped"),
        tamper(
            13,
            items_edited(lambda items: [*items, {**items[1], "transfer_id": "b3"}]),
            "group-item-added",
        ),
        tamper(14, fields_set(actor="mallory"), "status-actor"),
        tamper(14, fields_set(actor_label="Mallory"), "status-actor-label"),
        tamper(5, envelope_set(timestamp="2025-03-02T09:00:00.000000+00:00"), "timestamp"),
        tamper(8, envelope_set(type="PendingExpired"), "event-type"),
        # A row that says it is another version, or another bank's, is named for that first.
        tamper(3, envelope_set(version=4), "version", Reason.VERSION_GAP),
        tamper(7, envelope_set(bank=str(uuid.UUID(int=0))), "other-bank", Reason.WRONG_BANK),
    ],
)
def test_tampering_with_a_stored_event_breaks_the_chain(
    version: int, edit: Edit, reason: Reason
) -> None:
    memory = busy_bank()
    stored = list(memory.stored)
    # One stored event's bytes are changed (a field, or one transfer inside a group) and
    # written back in canonical form, so only the chain can tell.
    stored[version - 1] = altered(stored[version - 1], edit)
    assert stored[version - 1].stored != memory.stored[version - 1].stored
    assert canonical.decode(stored[version - 1].stored) == body(stored[version - 1])
    # Its kept hash no longer follows from its bytes: the history does not verify there
    # (the writer's loader refuses such a bank with HISTORY_DAMAGED).
    assert first_break(stored) == version
    # The independent verifier, reading the same rows, reports the same position first.
    report = verify([(event.stored, event.chain_hash) for event in stored], memory.state.bank_uuid)
    assert report.first_bad_version == version
    assert reason in {v.reason for v in report.violations if v.version == version}


def test_a_changed_chain_hash_or_a_row_that_is_not_canonical_breaks_the_chain() -> None:
    memory = busy_bank()
    # The hash kept for event 7 is overwritten: the chain breaks at 7.
    stored = list(memory.stored)
    stored[6] = dataclasses.replace(stored[6], chain_hash="0" * 64)
    assert first_break(stored) == 7
    # Event 7's bytes are rewritten as the same JSON with spaces: the same values, other bytes.
    stored = list(memory.stored)
    spaced = json.dumps(body(stored[6]), indent=1).encode()
    stored[6] = dataclasses.replace(stored[6], stored=spaced)
    assert json.loads(spaced) == body(memory.stored[6])
    assert first_break(stored) == 7
    # The strict decoder refuses such a row on its own.
    with pytest.raises(canonical.NotCanonicalError):
        canonical.decode(spaced)


def test_a_missing_inserted_or_reordered_event_breaks_the_chain() -> None:
    memory = busy_bank()
    stored = memory.stored
    # An event removed from the middle is detected at the next one.
    assert first_break(stored[:4] + stored[5:]) == 6
    # So are two events swapped: event 5 no longer follows event 3.
    assert first_break([*stored[:3], stored[4], stored[3], *stored[5:]]) == 5
    # And an event stored twice.
    assert first_break([*stored[:5], stored[4], *stored[5:]]) == 5
    # The untouched history verifies.
    assert first_break(stored) is None


def test_a_forger_who_rewrites_hashes_is_caught_by_the_next_event_or_the_head() -> None:
    memory = busy_bank()
    published_head = memory.state.chain_head
    stored = list(memory.stored)
    # Someone raises t1's amount inside its event and recomputes that event's own hash.
    forge(stored, 4, item_set(0, amount_minutes=300))
    # The forged event passes its own check, and would replay to a t1 of 300...
    assert first_break(stored[:4]) is None
    _, transfers, _ = rebuilt(memory.state.bank_uuid, stored[:4])
    assert transfers["t1"].amount_minutes == 300
    # ...but the next event no longer follows it.
    assert first_break(stored) == 5
    # Rewriting every later hash too verifies, but ends at a head other than the published one.
    for version in range(5, len(stored) + 1):
        forge(stored, version)
    assert first_break(stored) is None
    assert stored[-1].chain_hash != published_head


def test_timestamps_never_go_backwards(bank: MemoryBank) -> None:
    # The clock jumps back an hour between two payments.
    first = pay(bank, "t1", "ann", "bea", 1)
    second = run(bank, payment("t2", "ann", "bea", 1), T0 - timedelta(hours=1))
    # The second event keeps the time of the first, so the history stays in order.
    assert second.created_at == first.created_at == T0
    assert bank.stored[-1].timestamp == bank.state.last_timestamp == T0
    # A hold made while the clock is behind counts its timeout from the bank's time.
    yesterday = T0 - timedelta(days=1)
    h1 = run(bank, payment("h1", "ann", "bea", 1, pending=True, timeout_seconds=60), yesterday)
    assert h1.deadline == T0 + timedelta(seconds=60)
    # The history replays to the same chain head.
    assert bank.replayed().chain_head == bank.state.chain_head


# ----------------------------------------------------------------- grouped transfers


def test_transfers_in_a_row_become_one_event_that_replays_to_the_same_bank(
    bank: MemoryBank,
) -> None:
    version = bank.state.version
    t1_command = payment("t1", "ann", "bea", 60, memo="soup", service_date="2025-02-28")
    # One writer batch: Ann pays Bea 60; then tries to pay Cat 41; Bea holds 20 minutes for
    # Cat for a minute; then an independent batch of two, with a retry of t1 in the middle.
    t1, refusal, h1, items = bank.run(
        [
            t1_command,
            payment("t2", "ann", "cat", 41),
            payment("h1", "bea", "cat", 20, pending=True, timeout_seconds=60),
            CreateTransfers(
                items=(payment("b1", "bea", "ann", 10), t1_command, payment("b2", "ann", "cat", 5)),
                linked=False,
            ),
        ],
        T0,
    )
    assert isinstance(t1, TransferView)
    assert isinstance(h1, TransferView)
    # The second command was checked against the first: Ann could pay only 40 more.
    assert isinstance(refusal, PreconditionFailed)
    assert (refusal.reason, refusal.metadata["available_minutes"]) == ("EXCEEDS_LOWER_LIMIT", "40")
    # The retry inside the batch returned t1 and recorded nothing more.
    assert outcomes(items) == ["ok", "ok", "ok"]
    assert items[1].transfer == t1
    # The four new transfers are one event, at one version and one time.
    assert bank.state.version == version + 1
    event = bank.stored[-1]
    assert (event.type, event.version, event.timestamp) == ("TransfersCreated", version + 1, T0)
    assert created_ids([event]) == ["t1", "h1", "b1", "b2"]
    # Each item holds the transfer's own fields, who sent it and its deadline.
    assert body(event)["fields"]["transfers"][1] == {
        "transfer_id": "h1",
        "payer_account_id": "bea",
        "payee_account_id": "cat",
        "amount_minutes": 20,
        "memo": "",
        "category": "",
        "service_date": "",
        "pending": True,
        "timeout_seconds": 60,
        "actor": "",
        "actor_label": "",
        "deadline": "2025-03-01T09:01:00.000000+00:00",
    }
    # All four were created at the event's version; callers were answered with exactly that.
    for transfer_id in ("t1", "h1", "b1", "b2"):
        assert bank.transfers[transfer_id].created_position == version + 1
    assert (transfer(bank, "t1"), transfer(bank, "h1")) == (t1, h1)
    # The refused payment left nothing behind.
    assert "t2" not in bank.transfers
    assert balances(bank) == {"ann": -55, "bea": 50, "cat": 5}
    # A batch with nothing to do records nothing.
    before = unchanged(bank)
    assert bank.run([], T0) == []
    assert unchanged(bank) == before
    # Replaying the history gives the same bank and the same next deadline.
    replayed = bank.replayed()
    assert replayed == bank.state
    assert replayed.next_deadline() == bank.state.next_deadline() == T0 + timedelta(minutes=1)


def test_a_group_ends_at_another_event_at_a_new_moment_and_at_its_maximum(
    bank: MemoryBank,
) -> None:
    start = len(bank.stored)
    # A payment, a limit change, another payment, in one batch: three events, in command order.
    bank.run(
        [
            payment("t1", "ann", "bea", 1),
            set_limits("l1", "ann", -90, 100),
            payment("t2", "ann", "bea", 1),
        ],
        T0,
    )
    new = bank.stored[start:]
    assert [event.type for event in new] == [
        "TransfersCreated",
        "AccountLimitsChanged",
        "TransfersCreated",
    ]
    assert [created_ids([event]) for event in new] == [["t1"], [], ["t2"]]
    # v2: a batch has one time, so a group never spans batches: a payment now and two a
    # second later are two batches and two events.
    start = len(bank.stored)
    later = T0 + timedelta(seconds=1)
    bank.run([payment("t3", "ann", "bea", 1)], T0)
    bank.run([payment("t4", "bea", "ann", 1), payment("t5", "bea", "ann", 1)], later)
    new = bank.stored[start:]
    assert [created_ids([event]) for event in new] == [["t3"], ["t4", "t5"]]
    assert [event.timestamp for event in new] == [T0, later]
    assert bank.transfers["t4"].created_at == later
    # One more than the maximum in one batch, back and forth between Ann and Bea: the group
    # closes when it is full; the last one starts the next group.
    start = len(bank.stored)
    version = bank.state.version
    maximum = limits.transfers_per_event_max
    commands = [
        payment(f"m{number}", *(("ann", "bea") if number % 2 else ("bea", "ann")), 1)
        for number in range(maximum + 1)
    ]
    results = bank.run(commands, later)
    assert not any(isinstance(result, DomainError) for result in results)
    new = bank.stored[start:]
    assert [len(body(event)["fields"]["transfers"]) for event in new] == [maximum, 1]
    assert bank.transfers[f"m{maximum - 1}"].created_position == version + 1
    assert bank.transfers[f"m{maximum}"].created_position == version + 2
    # The whole history is contiguous (and replays to the same bank: see every_bank_replays).
    assert [event.version for event in bank.stored] == list(range(1, bank.state.version + 1))


def test_a_full_batch_of_transfers_after_another_fills_one_event_and_starts_the_next(
    bank: MemoryBank,
) -> None:
    # One payment, then a batch of the most transfers a batch may hold, in one writer batch.
    maximum = limits.transfers_per_event_max
    items = tuple(
        payment(f"b{number}", *(("ann", "bea") if number % 2 else ("bea", "ann")), 1)
        for number in range(limits.transfers_per_batch_max)
    )
    start = len(bank.stored)
    bank.run([payment("t0", "ann", "bea", 1), CreateTransfers(items=items, linked=True)], T0)
    # No event holds more than the maximum: the group fills, and the rest starts the next one.
    sizes = [len(body(event)["fields"]["transfers"]) for event in bank.stored[start:]]
    assert max(sizes) <= maximum
    assert sum(sizes) == limits.transfers_per_batch_max + 1
    assert sizes[0] == maximum


# ----------------------------------------------------------------- the decision state


def varied_bank() -> MemoryBank:
    """A bank whose state holds one of everything a snapshot must keep."""
    # Its name needs the encoder's slow path (a character from U+E000 up) and some umlauts.
    memory = new_bank("Zeitbank Süd \U0001f570\ufe0f")
    open_account(memory, "ann", lower=-100, upper=100)
    open_account(memory, "bea", lower=-100)
    open_account(memory, "cat", lower=0, upper=50)
    open_account(memory, "dan", lower=-10)
    # Ann pays Bea, with a memo beyond ASCII.
    pay(memory, "t1", "ann", "bea", 30, memo="Kuchen für alle \U0001f370")
    # Open holds with and without a deadline, and one that resolved (a stale deadline entry).
    hold(memory, "h1", "ann", "bea", 10)
    hold(memory, "h2", "bea", "cat", 5, timeout_seconds=3600)
    hold(memory, "h3", "ann", "cat", 5, timeout_seconds=60)
    hold(memory, "h4", "ann", "cat", 1, timeout_seconds=30)
    run(memory, void("v4", "h4"))
    # Changed limits, a frozen account with holds, a closed one.
    run(memory, set_limits("l1", "ann", -200, 300, reason="trusted"))
    run(memory, status("s1", "bea", "freeze"))
    run(memory, status("c1", "dan", "close"))
    return memory


def texts(value: Any) -> set[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, dict):
        return set(value) | {text for item in value.values() for text in texts(item)}
    if isinstance(value, list):
        return {text for item in value for text in texts(item)}
    return {value} if isinstance(value, str) else set()


def test_a_snapshot_round_trips_through_canonical_json() -> None:
    memory = varied_bank()
    state = memory.state
    # The snapshot of the decision state is canonical JSON...
    snapshot = canonical.encode(state.to_snapshot())
    # ...which the strict decoder reads back into the same state, deadlines included.
    restored = BankState.from_snapshot(canonical.decode(snapshot))
    assert restored == state
    assert restored.view() == state.view()
    assert live_deadlines(restored) == live_deadlines(state)
    # The restored heap holds only the open holds' deadlines, earliest first.
    assert restored.next_deadline() == T0 + timedelta(seconds=60)
    assert sorted(restored.deadlines) == [
        (T0 + timedelta(seconds=60), "h3"),
        (T0 + timedelta(hours=1), "h2"),
    ]
    # It keeps the accounts in opening order, with what they were opened with and are now.
    assert list(restored.accounts) == ["ann", "bea", "cat", "dan"]
    ann = restored.accounts["ann"]
    assert (ann.lower_limit_minutes, ann.upper_limit_minutes) == (-200, 300)
    assert (ann.opened_lower_limit_minutes, ann.opened_upper_limit_minutes) == (-100, 100)
    assert restored.accounts["bea"].upper_limit_minutes is None
    statuses = [a.status for a in restored.accounts.values()]
    assert statuses == ["open", "frozen", "open", "closed"]
    assert restored.holds["h1"].deadline is None
    # Only the decision state: the open holds, and no closed transfer or request id anywhere.
    found = json.loads(snapshot)
    assert [item["transfer_id"] for item in found["holds"]] == ["h1", "h2", "h3"]
    assert {"t1", "h4", "v4", "l1", "s1", "c1"}.isdisjoint(texts(found))
    # Encoding the restored state gives the same bytes again.
    assert canonical.encode(restored.to_snapshot()) == snapshot


def test_a_snapshot_and_the_events_after_it_load_the_same_bank() -> None:
    memory = varied_bank()
    # A snapshot is taken at this point of the history.
    at = memory.state.version
    snapshot = canonical.encode(memory.state.to_snapshot())
    # Then the bank goes on: Bea thaws, h3 expires, h2 is posted in part, t1 is reversed,
    # a new account opens, and a linked batch records a hold with a deadline.
    run(memory, status("s2", "bea", "unfreeze"))
    memory.expire(T0 + timedelta(seconds=60))
    run(memory, post("p2", "h2", 3), T0 + timedelta(minutes=2))
    run(memory, reversal("r1", "t1"), T0 + timedelta(minutes=2))
    open_account(memory, "eve", lower=-50)
    run_batch(
        memory,
        payment("b1", "eve", "cat", 5, pending=True, timeout_seconds=600),
        payment("b2", "bea", "eve", 20),
        linked=True,
    )
    # Loading the snapshot and only the events after it gives the bank replayed from event 1.
    state = loaded(snapshot, memory.stored[at:])
    assert state == memory.state == memory.replayed()
    assert live_deadlines(state) == live_deadlines(memory.state)
    assert state.view() == memory.state.view()
    # A bank restored that way carries on exactly as the live one: h1 is posted on both.
    restored = MemoryBank(BANK)
    restored.state = state
    restored.transfers = {k: dataclasses.replace(r) for k, r in memory.transfers.items()}
    restored.requests = dict(memory.requests)
    restored.stored = list(memory.stored)
    _made.append(restored)
    later = T0 + timedelta(hours=2)
    assert run(restored, post("p1", "h1"), later) == run(memory, post("p1", "h1"), later)
    assert restored.stored == memory.stored
    assert restored.state == memory.state


def test_a_rolled_back_batch_leaves_the_bank_exactly_as_it_was(bank: MemoryBank) -> None:
    # Ann holds 30 minutes for Bea for a minute and 5 for Cat with no deadline; Bea pays Cat 10.
    hold(bank, "h1", "ann", "bea", 30, timeout_seconds=60)
    hold(bank, "h2", "ann", "cat", 5)
    pay(bank, "t0", "bea", "cat", 10)
    deadline = T0 + timedelta(seconds=60)
    before = unchanged(bank)
    # A minute later a writer batch starts: it expires h1 (its deadline leaves the heap)...
    records = bank.record_book()
    unit = Batch(bank.state, deadline, records)
    expire_due(unit, deadline)
    assert bank.state.deadlines == []
    # ...and runs one of every kind of command, each seeing the ones before it (t1 and h3,
    # new transfers in a row, share one event).
    commands: list[BankCommand] = [
        OpenAccount(account_id="dan", kind="member", lower_limit_minutes=-20),
        payment("t1", "dan", "ann", 20),
        payment("h3", "ann", "bea", 7, pending=True, timeout_seconds=30),
        post("p2", "h2", 4),
        void("v3", "h3"),
        reversal("r0", "t0"),
        set_limits("l1", "ann", -10, 100),
        status("s1", "cat", "freeze"),
    ]
    for command in commands:
        command.validate()
        execute(unit, BANK, command)
    # In the batch, Ann was paid 20 by Dan and posted 4 to Cat; h1 and h2 are no longer held.
    ann = unit.account("ann")
    assert ann is not None
    assert ann.balance_minutes == 20 - 4
    assert (unit.hold("h1"), unit.hold("h2")) == (None, None)
    assert [event.TYPE for _, _, event in unit.events] == [
        "PendingExpired",
        "AccountOpened",
        "TransfersCreated",
        "PendingPosted",
        "PendingVoided",
        "TransferReversed",
        "AccountLimitsChanged",
        "AccountStatusChanged",
    ]
    # While it runs, the bank's own state and records are untouched: the batch works on copies.
    assert bank.state.accounts["ann"].balance_minutes == 0
    assert "dan" not in bank.state.accounts
    assert set(bank.state.holds) == {"h1", "h2"}
    assert (bank.transfers["h2"].status, "t1" in bank.transfers) == ("pending", False)
    # The writer encodes its events, but the commit fails: the batch is rolled back.
    history.encode(unit, bank.state.chain_head)
    unit.rollback()
    # The state, records, stored events and deadlines are exactly as they were.
    assert unchanged(bank) == before
    assert bank.state.next_deadline() == deadline
    # h1's deadline, popped by the rolled-back batch, is still there: the next batch expires it.
    bank.expire(deadline)
    assert transfer(bank, "h1").status == "expired"
    assert event_types(bank)[-1] == "PendingExpired"
    # The same commands then succeed in a batch that commits.
    results = bank.run(commands, deadline)
    assert not any(isinstance(result, DomainError) for result in results)
    assert balances(bank) == {"ann": 16, "bea": 0, "cat": 4, "dan": -20}
    # Rolling back a batch that was committed, or one that did nothing, changes nothing.
    after = unchanged(bank)
    unit = Batch(bank.state, deadline, bank.record_book())
    unit.commit(bank.state.chain_head)
    unit.rollback()
    Batch(bank.state, deadline, None).rollback()
    assert unchanged(bank) == after


# ----------------------------------------------------------------- command validation

TRANSFER = payment("t1", "ann", "bea", 90)
HOLD = dataclasses.replace(TRANSFER, pending=True, timeout_seconds=3600)
# Any: dataclasses.replace() cannot be typed over a union of command classes.
VALID: dict[str, Any] = {
    "bank": CreateBank(bank_id="riverside", name="Riverside"),
    "open": OpenAccount(account_id="ann", kind="member", lower_limit_minutes=-60),
    "limits": set_limits("l1", "ann", -60, 600),
    "status": status("s1", "ann", "freeze"),
    "transfer": TRANSFER,
    "batch": CreateTransfers(items=(TRANSFER,), linked=True),
    "post": post("p1", "t1", 30),
    "void": void("v1", "t1"),
    "reverse": reversal("r1", "t1"),
}
# (command, text field, its length maximum, whether it is required)
TEXT_FIELDS = [
    ("bank", "name", limits.bank_name_length_max, True),
    ("limits", "reason", limits.reason_length_max, False),
    ("status", "reason", limits.reason_length_max, False),
    ("transfer", "memo", limits.memo_length_max, False),
    ("transfer", "category", limits.category_length_max, False),
    ("void", "reason", limits.reason_length_max, False),
    ("reverse", "reason", limits.reason_length_max, True),
] + [
    # Every command but a batch (whose items carry their own) names its caller and a label.
    (name, field, limits.actor_length_max, False)
    for name in ("bank", "open", "limits", "status", "transfer", "post", "void", "reverse")
    for field in ("actor", "actor_label")
]
LIMIT_MAX = limits.limit_minutes_max
AMOUNT_MAX = limits.amount_minutes_max
TIMEOUT_MAX = limits.pending_timeout_seconds_max


def invalid_cases() -> list[Any]:
    cases = []
    for name, command in VALID.items():
        for field in (f.name for f in dataclasses.fields(command) if f.name.endswith("_id")):
            for value, reason, label in [
                ("", "FIELD_REQUIRED", "empty"),
                ("a" * (limits.id_length_max + 1), "FIELD_TOO_LONG", "long"),
                ("-leading-dash", "INVALID_ID", "dash"),
                ("with space", "INVALID_ID", "space"),
                ("slash/inside", "INVALID_ID", "slash"),
                ("ümlaut", "INVALID_ID", "non-ascii"),
            ]:
                cases.append(
                    pytest.param(name, {field: value}, field, reason, id=f"{name}-{field}-{label}")
                )
    for name, field, length_max, required in TEXT_FIELDS:
        cases.append(
            pytest.param(
                name, {field: "x" * (length_max + 1)}, field, "FIELD_TOO_LONG", id=f"{name}-{field}"
            )
        )
        cases.append(
            pytest.param(
                name, {field: "bell\x07"}, field, "INVALID_CHARACTERS", id=f"{name}-{field}"
            )
        )
        # A lone surrogate cannot be stored as UTF-8, nor hashed into the chain.
        cases.append(
            pytest.param(
                name, {field: "half \ud800"}, field, "INVALID_CHARACTERS", id=f"{name}-{field}"
            )
        )
        if required:
            for blank in ("", "   "):
                cases.append(
                    pytest.param(
                        name, {field: blank}, field, "FIELD_REQUIRED", id=f"{name}-{field}"
                    )
                )
    for name in ("open", "limits"):
        for field, bad_limit in [
            ("lower_limit_minutes", 1),
            ("lower_limit_minutes", -LIMIT_MAX - 1),
            ("upper_limit_minutes", -1),
            ("upper_limit_minutes", LIMIT_MAX + 1),
        ]:
            cases.append(
                pytest.param(name, {field: bad_limit}, field, "INVALID_LIMIT", id=f"{name}-{field}")
            )
    for name, field in [("transfer", "amount_minutes"), ("post", "amount_minutes")]:
        for bad_amount, reason in [
            (0, "AMOUNT_NOT_POSITIVE"),
            (-1, "AMOUNT_NOT_POSITIVE"),
            (AMOUNT_MAX + 1, "AMOUNT_TOO_LARGE"),
        ]:
            cases.append(
                pytest.param(name, {field: bad_amount}, field, reason, id=f"{name}-{field}")
            )
    for value in (
        "2025-02-30",
        "20250301",
        "2025-3-1",
        "yesterday",
        "2025-03-01T10:00",
        "٢٠٢٥-03-01",
    ):
        cases.append(
            pytest.param(
                "transfer", {"service_date": value}, "service_date", "INVALID_DATE", id="date"
            )
        )
    cases += [
        pytest.param("open", {"kind": "admin"}, "kind", "INVALID_ACCOUNT_KIND", id="kind"),
        pytest.param("open", {"kind": ""}, "kind", "INVALID_ACCOUNT_KIND", id="kind"),
        pytest.param(
            "transfer",
            {"payee_account_id": "ann"},
            "payee_account_id",
            "SAME_ACCOUNT",
            id="same-account",
        ),
        pytest.param(
            "transfer",
            {"timeout_seconds": 60},
            "timeout_seconds",
            "TIMEOUT_WITHOUT_PENDING",
            id="timeout-not-pending",
        ),
        pytest.param(
            "transfer",
            {"pending": True, "timeout_seconds": -1},
            "timeout_seconds",
            "INVALID_TIMEOUT",
            id="timeout",
        ),
        pytest.param(
            "transfer",
            {"pending": True, "timeout_seconds": TIMEOUT_MAX + 1},
            "timeout_seconds",
            "INVALID_TIMEOUT",
            id="timeout",
        ),
        pytest.param(
            "reverse",
            {"reverses_transfer_id": "r1"},
            "transfer_id",
            "SAME_TRANSFER",
            id="same-transfer",
        ),
        pytest.param("batch", {"items": ()}, "transfers", "BATCH_EMPTY", id="batch"),
        pytest.param(
            "batch",
            {"items": (TRANSFER,) * (limits.transfers_per_batch_max + 1)},
            "transfers",
            "BATCH_TOO_LARGE",
            id="batch",
        ),
    ]
    return cases


@pytest.mark.parametrize(("name", "change", "field", "reason"), invalid_cases())
def test_a_command_out_of_bounds_is_refused_naming_the_field(
    name: str, change: dict[str, Any], field: str, reason: str
) -> None:
    # The command, valid as it stands, is given one bad value.
    command = dataclasses.replace(VALID[name], **change)
    # Validation refuses it with a named reason and the caller's field name.
    with pytest.raises(InvalidInput) as info:
        command.validate()
    assert (info.value.reason, info.value.field) == (reason, field)


def test_a_status_action_is_the_services_to_set() -> None:
    # FreezeAccount, UnfreezeAccount and CloseAccount set the action; no caller sends one,
    # so an unknown action is a programmer's error, not a reason a client can be sent.
    with pytest.raises(AssertionError):
        dataclasses.replace(VALID["status"], action="delete").validate()


def test_batch_items_are_validated_one_by_one(bank: MemoryBank) -> None:
    # Ann may owe 100 and owes it all to Cat, who may owe nothing.
    pay(bank, "t1", "ann", "cat", 100)
    before = unchanged(bank)
    # An item of -50 "from Cat to Ann" would really be Ann paying Cat past her limit.
    sneaky = payment("b1", "cat", "ann", -50)
    fine = payment("b2", "cat", "bea", 10)
    # In a linked batch the bad item fails the batch, with its own reason and field.
    results = run_batch(bank, fine, sneaky, linked=True)
    assert outcomes(results) == ["LINKED_EVENT_FAILED", "AMOUNT_NOT_POSITIVE"]
    error = results[1].error
    assert isinstance(error, InvalidInput)
    assert error.field == "amount_minutes"
    assert unchanged(bank) == before
    # In an independent batch only the bad item is refused; its neighbour is recorded.
    results = run_batch(bank, sneaky, fine, dataclasses.replace(fine, transfer_id=""), linked=False)
    assert outcomes(results) == ["AMOUNT_NOT_POSITIVE", "ok", "FIELD_REQUIRED"]
    assert balances(bank) == {"ann": -100, "bea": 10, "cat": 90}
    assert sorted(bank.transfers) == ["b2", "t1"]


@pytest.mark.parametrize("name", ["bank", "open", "transfer", "post", "reverse"])
def test_an_id_cannot_end_with_a_newline(name: str) -> None:
    # An id with a trailing newline would break logs, page tokens and URLs.
    command = VALID[name]
    field = next(f.name for f in dataclasses.fields(command) if f.name.endswith("_id"))
    with pytest.raises(InvalidInput) as info:
        dataclasses.replace(command, **{field: "ann\n"}).validate()
    assert (info.value.reason, info.value.field) == ("INVALID_ID", field)


# Tabs and line breaks are allowed in free text; other control characters are not.
MEMO_WITH_BREAKS = "line one\n\tline two "


def boundary_cases() -> list[Any]:
    changes: list[tuple[str, dict[str, Any]]] = [
        ("bank", {"bank_id": "A" + "a-._:9" * 10 + "bcd"}),
        ("bank", {"name": "n" * limits.bank_name_length_max}),
        ("bank", {"actor": "a" * limits.actor_length_max}),
        ("bank", {"actor_label": "a" * limits.actor_length_max}),
        ("open", {"lower_limit_minutes": -LIMIT_MAX, "upper_limit_minutes": LIMIT_MAX}),
        ("open", {"lower_limit_minutes": 0, "upper_limit_minutes": 0}),
        ("open", {"kind": "pool"}),
        ("open", {"kind": "system"}),
        ("limits", {"lower_limit_minutes": -LIMIT_MAX, "upper_limit_minutes": None}),
        ("limits", {"reason": "r" * limits.reason_length_max}),
        ("status", {"action": "close"}),
        ("transfer", {"amount_minutes": AMOUNT_MAX}),
        ("transfer", {"memo": MEMO_WITH_BREAKS.ljust(limits.memo_length_max, "m")}),
        ("transfer", {"memo": "Kuchen für alle \U0001f370"}),
        ("transfer", {"category": "c" * limits.category_length_max}),
        ("transfer", {"service_date": "2024-02-29"}),
        ("transfer", {"pending": True, "timeout_seconds": TIMEOUT_MAX}),
        ("transfer", {"transfer_id": "t" * limits.id_length_max}),
        ("transfer", {"actor_label": "Jo at the desk"}),
        ("post", {"amount_minutes": AMOUNT_MAX}),
        ("post", {"amount_minutes": None}),
        ("batch", {"items": (TRANSFER,) * limits.transfers_per_batch_max}),
        ("batch", {"items": (HOLD,)}),
        ("reverse", {"reason": "r" * limits.reason_length_max}),
    ]
    return [
        pytest.param(dataclasses.replace(VALID[name], **change), id=f"{name}-{next(iter(change))}")
        for name, change in changes
    ]


@pytest.mark.parametrize("command", boundary_cases())
def test_a_command_at_its_bounds_is_valid(command: BankCommand | CreateBank) -> None:
    # Every maximum and minimum itself is allowed.
    command.validate()


def test_the_largest_amounts_and_limits_are_stored_and_hashed_exactly() -> None:
    memory = new_bank()
    # Two accounts at the widest limits; one pays the other the largest amount, twice.
    open_account(memory, "ann", lower=-LIMIT_MAX, upper=LIMIT_MAX)
    open_account(memory, "bea", lower=-LIMIT_MAX, upper=LIMIT_MAX)
    pay(memory, "t1", "ann", "bea", AMOUNT_MAX)
    pay(memory, "t2", "ann", "bea", AMOUNT_MAX)
    # The numbers come back from the stored bytes exactly (they are far inside 2**53).
    assert body(memory.stored[1])["fields"]["lower_limit_minutes"] == -LIMIT_MAX
    assert balances(memory) == {"ann": -2 * AMOUNT_MAX, "bea": 2 * AMOUNT_MAX}
    assert LIMIT_MAX + AMOUNT_MAX < 2**53
