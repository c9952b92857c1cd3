"""The Bank aggregate on its own: every rule, without a store or a writer.

Each test is a short story. After every refused command we check that nothing changed:
the same version, chain head, accounts, transfers and idempotency records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from ledger.domain import chain, limits
from ledger.domain.bank import Bank, ChainBrokenError
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
from ledger.domain.views import AccountView, BatchItemResult, TransferView

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
E = TypeVar("E", bound=DomainError)

# ----------------------------------------------------------------- helpers

# Field changes to make to a command, with the reason the result must carry.
Changes = list[tuple[dict[str, Any], str]]
State = tuple[int, str, tuple[AccountView, ...], tuple[TransferView, ...], tuple[str, ...], int]


def state(bank: Bank) -> State:
    """Everything a command could change."""
    return (
        bank.version,
        bank.chain_head,
        tuple(account.view() for account in bank.accounts.values()),
        tuple(transfer.view() for transfer in bank.transfers.values()),
        tuple(bank.requests),
        len(bank.pending_events),
    )


def run(bank: Bank, command: BankCommand, now: datetime = T0) -> Any:
    """What the Ledger's writer does with a command: validate, execute, then turn what it
    staged into events (the writer does that once per batch, before saving)."""
    command.validate()
    result = bank.execute(command, now)
    bank.flush()
    return result


def refused(
    bank: Bank, command: BankCommand, error_type: type[E], reason: str, now: datetime = T0
) -> E:
    """Run a command that must be refused with `reason`, and check that it changed nothing."""
    before = state(bank)
    with pytest.raises(error_type) as info:
        run(bank, command, now)
    assert info.value.reason == reason, info.value
    assert state(bank) == before
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
    bank: Bank, account_id: str, lower: int = 0, upper: int | None = None
) -> AccountView:
    command = OpenAccount(
        account_id=account_id, kind="member", lower_limit_minutes=lower, upper_limit_minutes=upper
    )
    view = run(bank, command)
    assert isinstance(view, AccountView)
    return view


def pay(
    bank: Bank, transfer_id: str, payer: str, payee: str, minutes: int, **options: Any
) -> TransferView:
    view = run(bank, payment(transfer_id, payer, payee, minutes, **options))
    assert isinstance(view, TransferView)
    return view


def hold(
    bank: Bank, transfer_id: str, payer: str, payee: str, minutes: int, timeout_seconds: int = 0
) -> TransferView:
    return pay(
        bank, transfer_id, payer, payee, minutes, pending=True, timeout_seconds=timeout_seconds
    )


def batch(bank: Bank, *items: CreateTransfer, linked: bool) -> list[BatchItemResult]:
    results = run(bank, CreateTransfers(items=items, linked=linked))
    assert isinstance(results, list)
    return results


def balances(bank: Bank) -> dict[str, int]:
    return {account_id: account.balance_minutes for account_id, account in bank.accounts.items()}


def holds(bank: Bank, account_id: str) -> tuple[int, int]:
    """(pending debit, pending credit) of an account."""
    account = bank.account(account_id)
    return account.pending_debit_minutes, account.pending_credit_minutes


def outcomes(results: Sequence[BatchItemResult]) -> list[str]:
    """The reason of each item's error, or "ok" for an item that was recorded."""
    return [result.error.reason if result.error else "ok" for result in results]


def new_bank() -> Bank:
    return Bank.create(CreateBank(bank_id="riverside", name="Riverside Time Bank"), T0)


@pytest.fixture
def bank() -> Bank:
    """Ann and Bea may each owe 100 minutes and hold at most 100; Cat may not owe."""
    bank = new_bank()
    open_account(bank, "ann", lower=-100, upper=100)
    open_account(bank, "bea", lower=-100, upper=100)
    open_account(bank, "cat", lower=0)
    return bank


# ----------------------------------------------------------------- accounts


def test_open_account_is_idempotent_and_a_changed_retry_names_the_field() -> None:
    bank = new_bank()
    # A new bank has only its creation event.
    assert bank.view().position == 1
    assert bank.view().account_count == 0
    # Ann's account opens as event 2 with her limits and nothing on it.
    ann = open_account(bank, "ann", lower=-600, upper=1200)
    assert (ann.status, ann.kind, ann.balance_minutes, ann.position) == ("open", "member", 0, 2)
    assert (ann.lower_limit_minutes, ann.upper_limit_minutes) == (-600, 1200)
    # The same request again, even from another actor, returns the account and records nothing.
    opening = OpenAccount(
        account_id="ann", kind="member", lower_limit_minutes=-600, upper_limit_minutes=1200
    )
    before = state(bank)
    assert run(bank, dataclasses.replace(opening, actor="someone-else")) == ann
    assert state(bank) == before
    # The same id with a different kind, lower or upper limit is refused, naming the field.
    changes: Changes = [
        ({"kind": "pool"}, "EXISTS_WITH_DIFFERENT_KIND"),
        ({"lower_limit_minutes": -60}, "EXISTS_WITH_DIFFERENT_LOWER_LIMIT_MINUTES"),
        ({"upper_limit_minutes": None}, "EXISTS_WITH_DIFFERENT_UPPER_LIMIT_MINUTES"),
    ]
    for change, reason in changes:
        error = refused(bank, dataclasses.replace(opening, **change), IdConflict, reason)
        assert error.field == next(iter(change))
        assert error.metadata == {"account_id": "ann"}
    # After her limits change, a retry of the opening still matches and shows the account now.
    run(bank, set_limits("l1", "ann", -60))
    assert run(bank, opening).lower_limit_minutes == -60


def test_a_transfer_stays_within_both_limits(bank: Bank) -> None:
    # Ann pays Bea 60: both balances move.
    t1 = pay(bank, "t1", "ann", "bea", 60, memo="gardening", service_date="2025-02-28")
    assert (t1.kind, t1.status, t1.posted_amount_minutes) == ("immediate", "posted", 60)
    assert (t1.memo, t1.service_date, t1.created_position) == ("gardening", "2025-02-28", 5)
    assert balances(bank) == {"ann": -60, "bea": 60, "cat": 0}
    # Ann may owe 100, so 41 more is one too many; the error says how much she can pay.
    error = refused(
        bank, payment("t2", "ann", "cat", 41), PreconditionFailed, "EXCEEDS_LOWER_LIMIT"
    )
    assert error.metadata == {"account_id": "ann", "available_minutes": "40"}
    # Exactly up to the lower limit is fine.
    pay(bank, "t2", "ann", "cat", 40)
    assert bank.account("ann").view().available_minutes == 0
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


def test_pending_transfers_reserve_against_both_limits(bank: Bank) -> None:
    # Ann holds 80 minutes for Bea: no balance moves, both accounts show the hold.
    hold(bank, "h1", "ann", "bea", 80)
    assert balances(bank) == {"ann": 0, "bea": 0, "cat": 0}
    assert holds(bank, "ann") == (80, 0)
    assert holds(bank, "bea") == (0, 80)
    assert bank.account("ann").view().available_minutes == 20
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
    # Voiding the hold gives Ann her full room back.
    run(bank, void("v1", "h1"))
    assert holds(bank, "ann") == (0, 0)
    pay(bank, "t1", "ann", "cat", 100)


def test_lowering_a_limit_below_the_balance_only_blocks_further_debits(bank: Bank) -> None:
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
    assert bank.account("bea").balance_minutes == 25
    refused(bank, payment("t5", "cat", "bea", 1), PreconditionFailed, "EXCEEDS_UPPER_LIMIT")
    pay(bank, "t5", "bea", "cat", 20)
    assert balances(bank) == {"ann": -30, "bea": 5, "cat": 25}


def test_change_limits_is_idempotent_per_request_id(bank: Bank) -> None:
    # Ann's lower limit becomes -300.
    command = set_limits("l1", "ann", -300, 100, reason="trusted member")
    view = run(bank, command)
    assert view.lower_limit_minutes == -300
    # The same request again, from another actor, changes nothing.
    before = state(bank)
    assert run(bank, dataclasses.replace(command, actor="another-admin")) == view
    assert state(bank) == before
    # The same request id with other content is refused, naming the first differing field.
    changes: Changes = [
        ({"lower_limit_minutes": -200}, "EXISTS_WITH_DIFFERENT_LOWER_LIMIT_MINUTES"),
        ({"account_id": "bea"}, "EXISTS_WITH_DIFFERENT_ACCOUNT_ID"),
        ({"reason": "other"}, "EXISTS_WITH_DIFFERENT_REASON"),
    ]
    for change, reason in changes:
        refused(bank, dataclasses.replace(command, **change), IdConflict, reason)
    # Request ids are shared by every kind of request: a freeze cannot reuse it.
    refused(bank, status("l1", "ann", "freeze"), IdConflict, "EXISTS_WITH_DIFFERENT_KIND")
    # Limits of an unknown account cannot change.
    refused(bank, set_limits("l2", "zed", 0), NotFound, "ACCOUNT_NOT_FOUND")


def test_freeze_and_unfreeze(bank: Bank) -> None:
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


def test_only_an_empty_account_closes_and_a_closed_one_takes_nothing(bank: Bank) -> None:
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


def test_an_account_with_a_hold_cannot_close(bank: Bank) -> None:
    # Cat, holding 5 minutes, holds them for Ann, whose balance is zero.
    pay(bank, "t1", "bea", "cat", 5)
    hold(bank, "h1", "cat", "ann", 5)
    # Ann cannot close while minutes are held for her.
    refused(bank, status("c1", "ann", "close"), PreconditionFailed, "ACCOUNT_HAS_PENDING")
    # Once the hold is voided, she closes.
    run(bank, void("v1", "h1"))
    assert run(bank, status("c1", "ann", "close")).status == "closed"


# ----------------------------------------------------------------- pending transfers


def test_post_pending_in_full(bank: Bank) -> None:
    # Ann asks Bea for 45 minutes of help, pending Bea's confirmation.
    h1 = hold(bank, "h1", "ann", "bea", 45)
    assert (h1.kind, h1.status, h1.posted_amount_minutes, h1.deadline) == (
        "pending",
        "pending",
        0,
        None,
    )
    # Posting without an amount moves all 45 and drops both holds.
    posted = run(bank, post("p1", "h1"), T0 + timedelta(minutes=5))
    assert (posted.status, posted.posted_amount_minutes) == ("posted", 45)
    assert posted.resolved_at == T0 + timedelta(minutes=5)
    assert balances(bank) == {"ann": -45, "bea": 45, "cat": 0}
    assert holds(bank, "ann") == holds(bank, "bea") == (0, 0)
    # The same post again is answered with the transfer and records nothing.
    before = state(bank)
    assert run(bank, post("p1", "h1")) == posted
    assert state(bank) == before
    # The same request id for a different amount or transfer is refused by name.
    refused(bank, post("p1", "h1", 45), IdConflict, "EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES")
    refused(bank, post("p1", "t9"), IdConflict, "EXISTS_WITH_DIFFERENT_TRANSFER_ID")
    # Posting an unknown transfer names it.
    error = refused(bank, post("p2", "t9"), NotFound, "TRANSFER_NOT_FOUND")
    assert error.field == "transfer_id"


def test_post_pending_in_part_releases_the_rest(bank: Bank) -> None:
    # Ann holds 50 for Bea; only 30 minutes of work were done.
    hold(bank, "h1", "ann", "bea", 50)
    # Posting more than was held is refused.
    error = refused(bank, post("p1", "h1", 51), PreconditionFailed, "POST_AMOUNT_EXCEEDS_PENDING")
    assert error.metadata == {"pending_amount_minutes": "50"}
    # Posting 30 moves 30 and releases the whole hold.
    posted = run(bank, post("p1", "h1", 30))
    assert (posted.amount_minutes, posted.posted_amount_minutes, posted.status) == (
        50,
        30,
        "posted",
    )
    assert balances(bank) == {"ann": -30, "bea": 30, "cat": 0}
    assert holds(bank, "ann") == holds(bank, "bea") == (0, 0)


def test_void_releases_the_hold(bank: Bank) -> None:
    # Ann holds 60 for Bea; Bea declines.
    hold(bank, "h1", "ann", "bea", 60)
    voided = run(bank, void("v1", "h1", reason="not done"))
    # Nothing moved and nothing is held any more.
    assert (voided.status, voided.posted_amount_minutes, voided.resolved_at) == ("voided", 0, T0)
    assert balances(bank) == {"ann": 0, "bea": 0, "cat": 0}
    assert holds(bank, "ann") == holds(bank, "bea") == (0, 0)
    # A retry of the void is answered; another reason under the same id is a conflict.
    assert run(bank, void("v1", "h1", reason="not done")) == voided
    refused(bank, void("v1", "h1", reason="other"), IdConflict, "EXISTS_WITH_DIFFERENT_REASON")
    # Voiding an unknown transfer names it.
    error = refused(bank, void("v2", "nope"), NotFound, "TRANSFER_NOT_FOUND")
    assert error.field == "transfer_id"


def test_a_frozen_account_cannot_post_but_can_void(bank: Bank) -> None:
    hold(bank, "h1", "ann", "bea", 20)
    # Ann is frozen while her hold is open.
    run(bank, status("s1", "ann", "freeze"))
    # Posting is refused; voiding releases the hold.
    refused(bank, post("p1", "h1"), PreconditionFailed, "ACCOUNT_FROZEN")
    assert run(bank, void("v1", "h1")).status == "voided"
    assert holds(bank, "ann") == (0, 0)


def test_a_pending_transfer_expires_at_its_deadline(bank: Bank) -> None:
    # Ann holds 30 for Bea for one minute.
    h1 = hold(bank, "h1", "ann", "bea", 30, timeout_seconds=60)
    deadline = T0 + timedelta(seconds=60)
    assert h1.deadline == deadline
    assert bank.next_deadline() == deadline
    # A microsecond before the deadline it is still pending and nothing is recorded.
    version = bank.version
    bank.expire_due(deadline - timedelta(microseconds=1))
    assert bank.transfer("h1").status == "pending"
    assert bank.version == version
    # At the deadline the next command first expires it, then runs.
    run(bank, OpenAccount(account_id="dan", kind="member"), deadline)
    assert bank.version == version + 2
    expired = bank.transfer("h1").view()
    assert (expired.status, expired.resolved_at, expired.posted_amount_minutes) == (
        "expired",
        deadline,
        0,
    )
    assert holds(bank, "ann") == holds(bank, "bea") == (0, 0)
    assert bank.account("ann").view().available_minutes == 100
    # Expiry happens once: an hour later only the new command is recorded.
    run(bank, OpenAccount(account_id="eve", kind="member"), deadline + timedelta(hours=1))
    assert bank.version == version + 3


def test_a_post_at_the_deadline_is_too_late(bank: Bank) -> None:
    # Bea holds 10 for Cat for 30 seconds.
    hold(bank, "h1", "bea", "cat", 10, timeout_seconds=30)
    version = bank.version
    # The post arrives exactly at the deadline: the hold expires first and the post is refused.
    with pytest.raises(PreconditionFailed) as info:
        run(bank, post("p1", "h1"), T0 + timedelta(seconds=30))
    assert info.value.reason == "PENDING_TRANSFER_EXPIRED"
    # Only the expiry was recorded; the post request was not.
    assert bank.version == version + 1
    assert bank.transfer("h1").status == "expired"
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
    bank: Bank, first: str, second: str, reason: str
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
        bank.expire_due(T0 + timedelta(hours=1))
    resolved = bank.transfer("h1").view()
    assert resolved.status != "pending"
    balances_after = balances(bank)
    # A second resolution under a new request id is refused by name and changes nothing.
    command = post("r2", "h1") if second == "post" else void("r2", "h1")
    error = refused(bank, command, PreconditionFailed, reason, T0 + timedelta(hours=2))
    assert error.metadata == {"transfer_id": "h1", "status": resolved.status}
    assert balances(bank) == balances_after


def test_only_pending_transfers_can_be_posted_or_voided(bank: Bank) -> None:
    pay(bank, "t1", "ann", "bea", 10)
    # An immediate transfer is not pending: neither post nor void applies.
    refused(bank, post("p1", "t1"), PreconditionFailed, "TRANSFER_NOT_PENDING")
    refused(bank, void("v1", "t1"), PreconditionFailed, "TRANSFER_NOT_PENDING")
    # Nor is a reversal.
    run(bank, reversal("r1", "t1"))
    refused(bank, void("v1", "r1"), PreconditionFailed, "TRANSFER_NOT_PENDING")


# ----------------------------------------------------------------- reversals


def test_a_reversal_undoes_a_posted_transfer_once(bank: Bank) -> None:
    # Ann pays Bea 40 by mistake.
    t1 = pay(bank, "t1", "ann", "bea", 40, memo="typo")
    # The coordinator reverses it: a new transfer from Bea back to Ann; nothing is edited.
    command = ReverseTransfer(
        transfer_id="r1", reverses_transfer_id="t1", reason="entered twice", actor="coordinator"
    )
    r1 = run(bank, command, T0 + timedelta(minutes=1))
    assert (r1.kind, r1.status, r1.payer_account_id, r1.payee_account_id, r1.amount_minutes) == (
        "reversal",
        "posted",
        "bea",
        "ann",
        40,
    )
    assert (r1.reverses_transfer_id, r1.reason, r1.actor) == ("t1", "entered twice", "coordinator")
    original = bank.transfer("t1").view()
    assert original.reversed_by_transfer_id == "r1"
    assert (original.status, original.amount_minutes, original.memo) == (
        t1.status,
        t1.amount_minutes,
        t1.memo,
    )
    assert balances(bank) == {"ann": 0, "bea": 0, "cat": 0}
    # Both accounts list the original and its reversal.
    assert bank.account("ann").transfer_ids == bank.account("bea").transfer_ids == ["t1", "r1"]
    # The same reversal again is answered; other content under its id is refused.
    before = state(bank)
    assert run(bank, command) == r1
    assert state(bank) == before
    refused(
        bank, dataclasses.replace(command, reason="x"), IdConflict, "EXISTS_WITH_DIFFERENT_REASON"
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


def test_only_posted_transfers_can_be_reversed(bank: Bank) -> None:
    # Three holds: one still pending, one voided, one expired; none of them moved minutes.
    later = T0 + timedelta(seconds=1)
    hold(bank, "h1", "ann", "bea", 10)
    hold(bank, "h2", "ann", "bea", 10)
    run(bank, void("v2", "h2"))
    hold(bank, "h3", "ann", "bea", 10, timeout_seconds=1)
    bank.expire_due(later)
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


def test_a_reversal_obeys_limits_and_closed_accounts(bank: Bank) -> None:
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
    bank: Bank,
) -> None:
    # Ann pays Bea 30 for tutoring.
    command = payment("t1", "ann", "bea", 30, memo="tutoring", category="education")
    t1 = run(bank, command)
    # The same request again, even from another actor, returns the original and records nothing.
    before = state(bank)
    assert run(bank, dataclasses.replace(command, actor="retry-bot")) == t1
    assert state(bank) == before
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
    # A refused transfer records nothing, so its id stays free: after a refusal, it can succeed.
    refused(bank, payment("t2", "cat", "ann", 10), PreconditionFailed, "EXCEEDS_LOWER_LIMIT")
    pay(bank, "t3", "bea", "cat", 10)
    assert pay(bank, "t2", "cat", "ann", 10).status == "posted"


# ----------------------------------------------------------------- batches


def test_a_linked_batch_is_all_or_nothing(bank: Bank) -> None:
    # Three transfers, linked; the last would take Cat below zero.
    items = (
        payment("b1", "ann", "bea", 30),
        payment("b2", "bea", "cat", 20, pending=True),
        payment("b3", "cat", "ann", 5),
    )
    before = state(bank)
    results = batch(bank, *items, linked=True)
    # The failing item carries its own reason, its neighbours LINKED_TRANSFER_FAILED.
    assert outcomes(results) == ["LINKED_TRANSFER_FAILED"] * 2 + ["EXCEEDS_LOWER_LIMIT"]
    assert all(result.transfer is None for result in results)
    assert results[0].error is not None
    assert results[0].error.metadata == {"failed_index": "2"}
    # Nothing at all was recorded.
    assert state(bank) == before
    # Without the failing item the batch is recorded whole, in order.
    results = batch(bank, *items[:2], linked=True)
    assert outcomes(results) == ["ok", "ok"]
    assert [result.transfer.transfer_id for result in results if result.transfer] == ["b1", "b2"]
    assert balances(bank) == {"ann": -30, "bea": 30, "cat": 0}
    assert holds(bank, "bea") == (20, 0)
    # The same batch again returns the same transfers and records nothing.
    before = state(bank)
    assert batch(bank, *items[:2], linked=True) == results
    assert state(bank) == before
    # A linked batch with one item conflicting with a recorded one fails whole.
    conflicting = dataclasses.replace(items[0], amount_minutes=31)
    results = batch(bank, payment("b4", "ann", "cat", 1), conflicting, linked=True)
    assert outcomes(results) == ["LINKED_TRANSFER_FAILED", "EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES"]
    assert state(bank) == before
    # So does one naming an unknown or frozen account.
    run(bank, status("s1", "cat", "freeze"))
    before = state(bank)
    results = batch(
        bank, payment("b4", "ann", "zed", 1), payment("b5", "ann", "cat", 1), linked=True
    )
    assert outcomes(results) == ["ACCOUNT_NOT_FOUND", "LINKED_TRANSFER_FAILED"]
    results = batch(
        bank, payment("b4", "ann", "bea", 1), payment("b5", "ann", "cat", 1), linked=True
    )
    assert outcomes(results) == ["LINKED_TRANSFER_FAILED", "ACCOUNT_FROZEN"]
    assert state(bank) == before


def test_a_linked_batch_checks_each_item_against_the_ones_before_it(bank: Bank) -> None:
    # Two payments of 60 each fit Ann's limit alone but not together.
    before = state(bank)
    results = batch(
        bank, payment("b1", "ann", "bea", 60), payment("b2", "ann", "cat", 60), linked=True
    )
    assert outcomes(results) == ["LINKED_TRANSFER_FAILED", "EXCEEDS_LOWER_LIMIT"]
    assert results[1].error is not None
    assert results[1].error.metadata["available_minutes"] == "40"
    # A hold for Bea counts against her cap for the items after it.
    open_account(bank, "dan", lower=-1000)
    before = state(bank)
    results = batch(
        bank,
        payment("b1", "ann", "bea", 60, pending=True),
        payment("b2", "dan", "bea", 41),
        linked=True,
    )
    assert outcomes(results) == ["LINKED_TRANSFER_FAILED", "EXCEEDS_UPPER_LIMIT"]
    assert state(bank) == before
    # Minutes received earlier in the batch can be passed on later in it...
    results = batch(
        bank, payment("b1", "ann", "cat", 50), payment("b2", "cat", "bea", 50), linked=True
    )
    assert outcomes(results) == ["ok", "ok"]
    assert balances(bank) == {"ann": -50, "bea": 50, "cat": 0, "dan": 0}
    # ...but minutes only held for someone cannot.
    before = state(bank)
    results = batch(
        bank,
        payment("b3", "ann", "cat", 10, pending=True),
        payment("b4", "cat", "bea", 10),
        linked=True,
    )
    assert outcomes(results) == ["LINKED_TRANSFER_FAILED", "EXCEEDS_LOWER_LIMIT"]
    assert state(bank) == before


def test_a_linked_batch_refuses_a_duplicate_id(bank: Bank) -> None:
    before = state(bank)
    # The same transfer id twice in one linked batch is a malformed request.
    results = batch(
        bank,
        payment("b1", "ann", "bea", 1),
        payment("b2", "ann", "bea", 2),
        payment("b1", "ann", "bea", 1),
        linked=True,
    )
    assert outcomes(results) == ["LINKED_TRANSFER_FAILED"] * 2 + ["DUPLICATE_ID_IN_BATCH"]
    error = results[2].error
    assert isinstance(error, InvalidInput)
    assert error.field == "transfer_id"
    # The neighbours say which item failed.
    assert results[0].error is not None
    assert results[0].error.metadata == {"failed_index": "2"}
    assert state(bank) == before


def test_an_independent_batch_gives_each_item_its_own_result(bank: Bank) -> None:
    run(bank, status("s1", "cat", "freeze"))
    before = state(bank)
    # Six items: fine, over a limit, frozen payee, fine, a retry of the first, a conflicting one.
    results = batch(
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
    assert bank.version == before[0] + 1
    assert created_ids(bank.pending_events[-1:]) == ["b1", "b4"]


# ----------------------------------------------------------------- hash chain


# Keys of an event that are not its own fields (the chain covers the timestamp separately).
ENVELOPE_KEYS = frozenset(
    {"originator_id", "originator_version", "timestamp", "originator_topic", "chain_hash"}
)


def history(bank: Bank) -> list[Any]:
    """The events a store would hold for this bank (Bank events: dataclasses with a hash)."""
    return list(bank.collect_events())


def created_ids(events: Sequence[Any]) -> list[str]:
    """The ids of the transfers created by these events, in order (a group holds several)."""
    return [
        item["transfer_id"]
        for event in events
        if isinstance(event, Bank.TransfersCreated)
        for item in event.transfers
    ]


def replay(events: Sequence[Any]) -> Bank:
    """What the repository does when it loads a bank."""
    aggregate: Any = None
    for event in events:
        aggregate = event.mutate(aggregate)
    assert isinstance(aggregate, Bank)
    return aggregate


def busy_bank() -> tuple[Bank, State]:
    """A bank with one of every event, a group of two transfers among them, and its state."""
    bank = new_bank()
    open_account(bank, "ann", lower=-100, upper=100)
    open_account(bank, "bea", lower=-100, upper=100)
    pay(bank, "t1", "ann", "bea", 30, memo="gardening")
    hold(bank, "h1", "ann", "bea", 10)
    run(bank, post("p1", "h1", 5))
    hold(bank, "h2", "ann", "bea", 10)
    run(bank, void("v2", "h2"))
    hold(bank, "h3", "ann", "bea", 10, timeout_seconds=60)
    run(bank, reversal("r1", "t1"), T0 + timedelta(minutes=1))
    run(bank, set_limits("l1", "ann", -50, 100))
    batch(bank, payment("b1", "ann", "bea", 5), payment("b2", "bea", "ann", 3), linked=True)
    run(bank, status("s1", "bea", "freeze"))
    return bank, state(bank)


def test_replay_rebuilds_the_same_bank_and_chain_head() -> None:
    bank, before = busy_bank()
    events = history(bank)
    assert [type(event).__name__ for event in events] == [
        "Created",
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
    # Every created transfer is in the history once, in order; the batch's two share an event.
    assert created_ids(events) == ["t1", "h1", "h2", "h3", "b1", "b2"]
    assert created_ids(events[12:13]) == ["b1", "b2"]
    # Replaying the history gives the same accounts, transfers, requests and chain head.
    replayed = replay(events)
    assert state(replayed)[:5] == before[:5]
    assert replayed.view() == bank.view()
    # Each event's hash follows from the one before it and its own content.
    previous = chain.GENESIS_HASH
    for event in events:
        fields = {key: value for key, value in vars(event).items() if key not in ENVELOPE_KEYS}
        assert event.chain_hash == chain.next_hash(
            previous,
            str(event.originator_id),
            event.originator_version,
            type(event).__name__,
            event.timestamp,
            fields,
        )
        previous = event.chain_hash
    assert previous == bank.chain_head


def test_the_chain_follows_its_published_format() -> None:
    # Auditors recompute the first hash from the recipe in ledger/domain/chain.py alone.
    bank = new_bank()
    body = {
        "bank": str(bank.id),
        "version": 1,
        "type": "Created",
        "timestamp": "2025-03-01T09:00:00.000000+00:00",
        "fields": {"bank_id": "riverside", "name": "Riverside Time Bank", "actor": ""},
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.sha256(bytes(32) + canonical.encode()).hexdigest()
    assert bank.chain_head == expected
    assert history(bank)[0].chain_hash == expected


# A change made to a stored event behind the ledger's back.
Tamper = Callable[[Any], Any]


def changed(**change: Any) -> Tamper:
    """Change the event's own fields (or its timestamp or hash)."""
    return lambda event: dataclasses.replace(event, **change)


def item_changed(index: int, **change: Any) -> Tamper:
    """Change one transfer inside a TransfersCreated event."""

    def tamper(event: Any) -> Any:
        items = [dict(item) for item in event.transfers]
        items[index].update(change)
        return dataclasses.replace(event, transfers=items)

    return tamper


def items_changed(edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> Tamper:
    """Drop, add or reorder the transfers of a TransfersCreated event."""
    return lambda event: dataclasses.replace(event, transfers=edit(list(event.transfers)))


@pytest.mark.parametrize(
    ("position", "tamper"),
    [
        pytest.param(0, changed(name="Other Bank"), id="bank-name"),
        pytest.param(1, changed(lower_limit_minutes=-10_000), id="account-limit"),
        pytest.param(3, item_changed(0, amount_minutes=3), id="transfer-amount"),
        pytest.param(3, item_changed(0, payee_account_id="ann"), id="transfer-payee"),
        pytest.param(3, item_changed(0, memo="weeding"), id="transfer-memo"),
        pytest.param(5, changed(posted_amount_minutes=10), id="posted-amount"),
        pytest.param(8, item_changed(0, deadline=""), id="deadline"),
        pytest.param(10, changed(reason="fraud"), id="reversal-reason"),
        pytest.param(11, changed(upper_limit_minutes=None), id="changed-limit"),
        pytest.param(12, item_changed(1, amount_minutes=30), id="group-second-amount"),
        pytest.param(12, items_changed(lambda items: items[:1]), id="group-item-dropped"),
        pytest.param(12, items_changed(lambda items: items[::-1]), id="group-items-swapped"),
        pytest.param(
            12,
            items_changed(lambda items: [*items, {**items[1], "transfer_id": "b3"}]),
            id="group-item-added",
        ),
        pytest.param(13, changed(actor="mallory"), id="status-actor"),
        pytest.param(4, changed(timestamp=T0 + timedelta(days=1)), id="timestamp"),
        pytest.param(6, changed(chain_hash="0" * 64), id="chain-hash"),
    ],
)
def test_tampering_with_a_stored_event_breaks_the_chain(position: int, tamper: Tamper) -> None:
    bank, _ = busy_bank()
    events = history(bank)
    # One stored event is changed: a field, or one transfer inside a group.
    events[position] = tamper(events[position])
    # Replaying the history refuses it.
    with pytest.raises(ChainBrokenError, match=f"event {position + 1} of bank"):
        replay(events)


def test_a_missing_or_reordered_event_breaks_the_chain() -> None:
    bank, _ = busy_bank()
    events = history(bank)
    # An event removed from the middle is detected at the next one.
    with pytest.raises(ChainBrokenError):
        replay(events[:4] + events[5:])
    # So are two events swapped.
    with pytest.raises(ChainBrokenError):
        replay([*events[:3], events[4], events[3], *events[5:]])


def forge(events: list[Any], position: int, **change: Any) -> None:
    """Change a stored event and recompute its own hash, as a careful forger would."""
    forged = dataclasses.replace(events[position], **change)
    previous = chain.GENESIS_HASH if position == 0 else events[position - 1].chain_hash
    fields = {key: value for key, value in vars(forged).items() if key not in ENVELOPE_KEYS}
    events[position] = dataclasses.replace(
        forged,
        chain_hash=chain.next_hash(
            previous,
            str(forged.originator_id),
            forged.originator_version,
            type(forged).__name__,
            forged.timestamp,
            fields,
        ),
    )


def test_a_forger_who_rewrites_hashes_is_caught_by_the_next_event_or_the_head() -> None:
    bank, _ = busy_bank()
    published_head = bank.chain_head
    events = history(bank)
    # Someone raises t1's amount inside its event and recomputes that event's own hash.
    forge(events, 3, transfers=[{**events[3].transfers[0], "amount_minutes": 300}])
    # The forged event passes its own check...
    assert replay(events[:4]).transfer("t1").amount_minutes == 300
    # ...but the next event no longer follows it.
    with pytest.raises(ChainBrokenError, match="event 5 of bank"):
        replay(events)
    # Rewriting every later hash too replays, but ends at a head other than the published one.
    for position in range(4, len(events)):
        forge(events, position)
    assert replay(events).chain_head != published_head


def test_timestamps_never_go_backwards(bank: Bank) -> None:
    # The clock jumps back an hour between two payments.
    first = pay(bank, "t1", "ann", "bea", 1)
    second = run(bank, payment("t2", "ann", "bea", 1), T0 - timedelta(hours=1))
    # The second event keeps the time of the first, so the history stays in order.
    assert second.created_at == first.created_at == T0
    assert replay(history(bank)).chain_head == bank.chain_head


# ----------------------------------------------------------------- grouped transfers


def stage(bank: Bank, command: BankCommand, now: datetime = T0) -> Any:
    """What the writer does with each command of a batch: validate and execute, no flush yet."""
    command.validate()
    return bank.execute(command, now)


def test_transfers_in_a_row_become_one_event_that_replays_to_the_same_bank(bank: Bank) -> None:
    version, head = bank.version, bank.chain_head
    pending_before = len(bank.pending_events)
    # Ann pays Bea 60 minutes; the bank shows it at once, but no event is recorded yet.
    t1 = stage(bank, payment("t1", "ann", "bea", 60, memo="soup", service_date="2025-02-28"))
    assert balances(bank) == {"ann": -60, "bea": 60, "cat": 0}
    assert (bank.version, bank.chain_head, len(bank.pending_events)) == (
        version,
        head,
        pending_before,
    )
    # The next command is checked against it: Ann cannot pay 41 more, and nothing changes.
    before = state(bank)
    with pytest.raises(PreconditionFailed) as info:
        stage(bank, payment("t2", "ann", "cat", 41))
    assert info.value.reason == "EXCEEDS_LOWER_LIMIT"
    assert state(bank) == before
    # Bea holds 20 minutes for Cat for a minute; then an independent batch of two, with a retry
    # of t1 in the middle that returns it and records nothing.
    h1 = stage(bank, payment("h1", "bea", "cat", 20, pending=True, timeout_seconds=60))
    results = stage(
        bank,
        CreateTransfers(
            items=(
                payment("b1", "bea", "ann", 10),
                payment("t1", "ann", "bea", 60, memo="soup", service_date="2025-02-28"),
                payment("b2", "ann", "cat", 5),
            ),
            linked=False,
        ),
    )
    assert outcomes(results) == ["ok", "ok", "ok"]
    assert results[1].transfer == t1
    # Still no event, until the writer flushes: then the four transfers are one event.
    assert bank.version == version
    bank.flush()
    assert bank.version == version + 1
    assert len(bank.pending_events) == pending_before + 1
    event = bank.pending_events[-1]
    assert isinstance(event, Bank.TransfersCreated)
    assert (event.originator_version, event.timestamp) == (version + 1, T0)
    assert created_ids([event]) == ["t1", "h1", "b1", "b2"]
    # Each item holds the transfer's own fields and its deadline.
    assert event.transfers[1] == {
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
        "deadline": "2025-03-01T09:01:00.000000+00:00",
    }
    # All four were created at the event's version; callers were answered with exactly that.
    for transfer_id in ("t1", "h1", "b1", "b2"):
        assert bank.transfer(transfer_id).created_position == version + 1
    assert (bank.transfer("t1").view(), bank.transfer("h1").view()) == (t1, h1)
    # A second flush has nothing to record.
    after = state(bank)
    bank.flush()
    assert state(bank) == after
    # Replaying the history gives the same accounts, transfers and chain head.
    replayed = replay(history(bank))
    assert state(replayed)[:5] == after[:5]
    assert replayed.view() == bank.view()
    assert replayed.next_deadline() == bank.next_deadline() == T0 + timedelta(minutes=1)


def test_a_group_ends_at_another_event_at_a_new_moment_and_at_its_maximum(bank: Bank) -> None:
    events = history(bank)
    # A payment, a limit change, another payment, all at once: three events, in command order.
    stage(bank, payment("t1", "ann", "bea", 1))
    stage(bank, set_limits("l1", "ann", -90, 100))
    stage(bank, payment("t2", "ann", "bea", 1))
    new = history(bank)
    assert [type(event).__name__ for event in new] == [
        "TransfersCreated",
        "AccountLimitsChanged",
        "TransfersCreated",
    ]
    assert [created_ids([event]) for event in new] == [["t1"], [], ["t2"]]
    events += new
    # A payment now and two a second later: one event has one timestamp, so two events.
    later = T0 + timedelta(seconds=1)
    stage(bank, payment("t3", "ann", "bea", 1))
    stage(bank, payment("t4", "bea", "ann", 1), later)
    stage(bank, payment("t5", "bea", "ann", 1), later)
    new = history(bank)
    assert [created_ids([event]) for event in new] == [["t3"], ["t4", "t5"]]
    assert [event.timestamp for event in new] == [T0, later]
    assert bank.transfer("t4").created_at == later
    events += new
    # One more than the maximum, back and forth between Ann and Bea: the group closes itself
    # when it is full, without waiting for a flush; the last one starts the next group.
    version = bank.version
    maximum = limits.transfers_per_event_max
    for number in range(maximum + 1):
        payer, payee = ("ann", "bea") if number % 2 else ("bea", "ann")
        stage(bank, payment(f"m{number}", payer, payee, 1), later)
        if number == maximum - 1:
            assert bank.version == version + 1
    new = history(bank)
    assert [len(event.transfers) for event in new] == [maximum, 1]
    assert bank.transfer(f"m{maximum - 1}").created_position == version + 1
    assert bank.transfer(f"m{maximum}").created_position == version + 2
    events += new
    # The whole history is contiguous and replays to the same bank.
    assert [event.originator_version for event in events] == list(range(1, bank.version + 1))
    replayed = replay(events)
    assert state(replayed)[:5] == state(bank)[:5]
    assert replayed.chain_head == bank.chain_head


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
    ("bank", "actor", limits.actor_length_max, False),
    ("open", "actor", limits.actor_length_max, False),
    ("limits", "reason", limits.reason_length_max, False),
    ("limits", "actor", limits.actor_length_max, False),
    ("status", "reason", limits.reason_length_max, False),
    ("status", "actor", limits.actor_length_max, False),
    ("transfer", "memo", limits.memo_length_max, False),
    ("transfer", "category", limits.category_length_max, False),
    ("transfer", "actor", limits.actor_length_max, False),
    ("post", "actor", limits.actor_length_max, False),
    ("void", "reason", limits.reason_length_max, False),
    ("void", "actor", limits.actor_length_max, False),
    ("reverse", "reason", limits.reason_length_max, True),
    ("reverse", "actor", limits.actor_length_max, False),
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
    for value in ("2025-02-30", "20250301", "2025-3-1", "yesterday", "2025-03-01T10:00"):
        cases.append(
            pytest.param(
                "transfer", {"service_date": value}, "service_date", "INVALID_DATE", id="date"
            )
        )
    cases += [
        pytest.param("open", {"kind": "admin"}, "kind", "INVALID_ACCOUNT_KIND", id="kind"),
        pytest.param("open", {"kind": ""}, "kind", "INVALID_ACCOUNT_KIND", id="kind"),
        pytest.param("status", {"action": "delete"}, "action", "INVALID_ACTION", id="action"),
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


def test_batch_items_are_validated_one_by_one(bank: Bank) -> None:
    # Ann may owe 100 and owes it all to Cat, who may owe nothing.
    pay(bank, "t1", "ann", "cat", 100)
    before = state(bank)
    # An item of -50 "from Cat to Ann" would really be Ann paying Cat past her limit.
    sneaky = payment("b1", "cat", "ann", -50)
    fine = payment("b2", "cat", "bea", 10)
    # In a linked batch the bad item fails the batch, with its own reason and field.
    results = batch(bank, fine, sneaky, linked=True)
    assert outcomes(results) == ["LINKED_TRANSFER_FAILED", "AMOUNT_NOT_POSITIVE"]
    error = results[1].error
    assert isinstance(error, InvalidInput)
    assert error.field == "amount_minutes"
    assert state(bank) == before
    # In an independent batch only the bad item is refused; its neighbour is recorded.
    results = batch(bank, sneaky, fine, dataclasses.replace(fine, transfer_id=""), linked=False)
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
        ("open", {"lower_limit_minutes": -LIMIT_MAX, "upper_limit_minutes": LIMIT_MAX}),
        ("open", {"lower_limit_minutes": 0, "upper_limit_minutes": 0}),
        ("open", {"kind": "pool"}),
        ("open", {"kind": "system"}),
        ("limits", {"lower_limit_minutes": -LIMIT_MAX, "upper_limit_minutes": None}),
        ("limits", {"reason": "r" * limits.reason_length_max}),
        ("status", {"action": "close"}),
        ("transfer", {"amount_minutes": AMOUNT_MAX}),
        ("transfer", {"memo": MEMO_WITH_BREAKS.ljust(limits.memo_length_max, "m")}),
        ("transfer", {"category": "c" * limits.category_length_max}),
        ("transfer", {"service_date": "2024-02-29"}),
        ("transfer", {"pending": True, "timeout_seconds": TIMEOUT_MAX}),
        ("transfer", {"transfer_id": "t" * limits.id_length_max}),
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
