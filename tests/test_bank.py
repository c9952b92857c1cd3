"""The Bank aggregate on its own: every rule, without a store or a writer.

Each test is a short story. After every refused command we check that nothing changed:
the same version, chain head, accounts, transfers and idempotency records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from ledger.domain import chain, limits
from ledger.domain.bank import Bank, ChainBrokenError
from ledger.domain.commands import (
    BankCommand,
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
    IdConflict,
    InvalidInput,
    NotFound,
    PreconditionFailed,
)
from ledger.domain.views import AccountView, BankView, BatchItemResult, TransferView

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
E = TypeVar("E", bound=DomainError)

# ----------------------------------------------------------------- helpers

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
    """What the Ledger does with a command: validate it, then execute it."""
    command.validate()
    return bank.execute(command, now)


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


def open_account(
    bank: Bank, account_id: str, lower: int = 0, upper: int | None = None, kind: str = "member"
) -> AccountView:
    command = OpenAccount(
        account_id=account_id, kind=kind, lower_limit_minutes=lower, upper_limit_minutes=upper
    )
    view = run(bank, command)
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
    bank: Bank,
    transfer_id: str,
    payer: str,
    payee: str,
    minutes: int,
    now: datetime = T0,
    **options: Any,
) -> TransferView:
    view = run(bank, payment(transfer_id, payer, payee, minutes, **options), now)
    assert isinstance(view, TransferView)
    return view


def hold(
    bank: Bank, transfer_id: str, payer: str, payee: str, minutes: int, timeout_seconds: int = 0
) -> TransferView:
    return pay(
        bank, transfer_id, payer, payee, minutes, pending=True, timeout_seconds=timeout_seconds
    )


def balances(bank: Bank) -> dict[str, int]:
    return {account_id: a.balance_minutes for account_id, a in bank.accounts.items()}


def holds(bank: Bank, account_id: str) -> tuple[int, int]:
    account = bank.account(account_id)
    return account.pending_debit_minutes, account.pending_credit_minutes


def errors(results: Sequence[BatchItemResult]) -> list[str]:
    """The reason of each item's error, or "ok" for a recorded item."""
    return [result.error.reason if result.error else "ok" for result in results]


def new_bank() -> Bank:
    return Bank.create(CreateBank(bank_id="riverside", name="Riverside Time Bank"), T0)


@pytest.fixture
def bank() -> Bank:
    """Ann and Bea may each go 100 minutes into debt and hold at most 100; Cat may not owe."""
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
    # Ann's account opens at version 2 with her limits and nothing on it.
    ann = open_account(bank, "ann", lower=-600, upper=1200)
    assert (ann.status, ann.kind, ann.balance_minutes, ann.position) == ("open", "member", 0, 2)
    assert (ann.lower_limit_minutes, ann.upper_limit_minutes) == (-600, 1200)
    # The same request again (even from another actor) returns the account and records nothing.
    before = state(bank)
    again = run(
        bank,
        OpenAccount(
            account_id="ann",
            kind="member",
            lower_limit_minutes=-600,
            upper_limit_minutes=1200,
            actor="someone-else",
        ),
    )
    assert again == ann
    assert state(bank) == before
    # The same id with a different kind, lower or upper limit is refused, naming the field.
    for change, reason in [
        ({"kind": "pool"}, "EXISTS_WITH_DIFFERENT_KIND"),
        ({"lower_limit_minutes": -60}, "EXISTS_WITH_DIFFERENT_LOWER_LIMIT_MINUTES"),
        ({"upper_limit_minutes": None}, "EXISTS_WITH_DIFFERENT_UPPER_LIMIT_MINUTES"),
    ]:
        retry = dataclasses.replace(
            OpenAccount(
                account_id="ann", kind="member", lower_limit_minutes=-600, upper_limit_minutes=1200
            ),
            **change,
        )
        error = refused(bank, retry, IdConflict, reason)
        assert error.field == next(iter(change))
        assert error.metadata == {"account_id": "ann"}
    # A retry still matches the opening request after the limits were changed.
    run(bank, ChangeLimits(request_id="l1", account_id="ann", lower_limit_minutes=-60))
    assert (
        run(
            bank,
            OpenAccount(
                account_id="ann", kind="member", lower_limit_minutes=-600, upper_limit_minutes=1200
            ),
        ).lower_limit_minutes
        == -60
    )


def test_a_transfer_stays_within_both_limits(bank: Bank) -> None:
    # Ann pays Bea 60: both balances move and the sum stays zero.
    t1 = pay(bank, "t1", "ann", "bea", 60, memo="gardening", service_date="2025-02-28")
    assert (t1.kind, t1.status, t1.posted_amount_minutes) == ("immediate", "posted", 60)
    assert balances(bank) == {"ann": -60, "bea": 60, "cat": 0}
    # Ann may owe 100, so 41 more is one too many; the error says how much she can pay.
    error = refused(
        bank, payment("t2", "ann", "cat", 41), PreconditionFailed, "EXCEEDS_LOWER_LIMIT"
    )
    assert error.metadata == {"account_id": "ann", "available_minutes": "40"}
    # Exactly up to the lower limit is fine.
    pay(bank, "t2", "ann", "cat", 40)
    assert bank.account("ann").view().available_minutes == 0
    # Bea holds 60 and may hold 100: 41 more is refused, naming her room.
    error = refused(
        bank, payment("t3", "cat", "bea", 41), PreconditionFailed, "EXCEEDS_UPPER_LIMIT"
    )
    assert error.metadata == {"account_id": "bea", "room_minutes": "40"}
    # Exactly up to the upper limit is fine.
    pay(bank, "t3", "cat", "bea", 40)
    assert balances(bank) == {"ann": -100, "bea": 100, "cat": 0}
    # Cat may not owe anything at all.
    refused(bank, payment("t4", "cat", "ann", 1), PreconditionFailed, "EXCEEDS_LOWER_LIMIT")
    # Unknown accounts are named with the field they came from.
    error = refused(bank, payment("t5", "zed", "ann", 1), NotFound, "ACCOUNT_NOT_FOUND")
    assert error.field == "payer_account_id"
    error = refused(bank, payment("t5", "bea", "zed", 1), NotFound, "ACCOUNT_NOT_FOUND")
    assert error.field == "payee_account_id"


def test_pending_transfers_reserve_against_both_limits(bank: Bank) -> None:
    # Ann holds 80 minutes for Bea: no balance moves, both accounts show the hold.
    hold(bank, "h1", "ann", "bea", 80)
    assert balances(bank) == {"ann": 0, "bea": 0, "cat": 0}
    assert holds(bank, "ann") == (80, 0)
    assert holds(bank, "bea") == (0, 80)
    assert bank.account("ann").view().available_minutes == 20
    # Ann can pay only the 20 her hold leaves, whether immediately or as another hold.
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
    # Bea's cap counts the minutes held for her: only 20 more may come in.
    error = refused(
        bank, payment("t2", "cat", "bea", 21), PreconditionFailed, "EXCEEDS_UPPER_LIMIT"
    )
    assert error.metadata["room_minutes"] == "20"
    # A pending credit is not money yet: Bea cannot spend past her own limit on it.
    pay(bank, "t3", "bea", "cat", 100)
    refused(bank, payment("t4", "bea", "cat", 1), PreconditionFailed, "EXCEEDS_LOWER_LIMIT")
    # Voiding the hold gives Ann her full room back.
    run(bank, VoidPending(request_id="v1", transfer_id="h1"))
    assert holds(bank, "ann") == (0, 0)
    pay(bank, "t1", "ann", "cat", 100)


def test_lowering_a_limit_below_the_balance_only_blocks_further_debits(bank: Bank) -> None:
    # Ann owes 50.
    pay(bank, "t1", "ann", "bea", 50)
    # The coordinator tightens Ann's lower limit to -30: allowed, and her balance is untouched.
    ann = run(
        bank,
        ChangeLimits(
            request_id="l1",
            account_id="ann",
            lower_limit_minutes=-30,
            upper_limit_minutes=100,
            reason="review",
        ),
    )
    assert (ann.lower_limit_minutes, ann.balance_minutes) == (-30, -50)
    # She can pay nothing more, not even one minute.
    error = refused(bank, payment("t2", "ann", "cat", 1), PreconditionFailed, "EXCEEDS_LOWER_LIMIT")
    assert error.metadata["available_minutes"] == "0"
    # She can still receive; at -25 she may pay 5 but not 6.
    pay(bank, "t3", "bea", "ann", 25)
    refused(bank, payment("t4", "ann", "cat", 6), PreconditionFailed, "EXCEEDS_LOWER_LIMIT")
    pay(bank, "t4", "ann", "cat", 5)
    # Bea holds 25; a cap of 10 is allowed too, and only blocks what would come in.
    run(
        bank,
        ChangeLimits(
            request_id="l2", account_id="bea", lower_limit_minutes=-100, upper_limit_minutes=10
        ),
    )
    assert bank.account("bea").balance_minutes == 25
    refused(bank, payment("t5", "cat", "bea", 1), PreconditionFailed, "EXCEEDS_UPPER_LIMIT")
    pay(bank, "t5", "bea", "cat", 20)
    assert balances(bank) == {"ann": -30, "bea": 5, "cat": 25}


def test_change_limits_is_idempotent_per_request_id(bank: Bank) -> None:
    # Ann's lower limit becomes -300.
    command = ChangeLimits(
        request_id="l1",
        account_id="ann",
        lower_limit_minutes=-300,
        upper_limit_minutes=100,
        reason="trusted member",
    )
    view = run(bank, command)
    assert view.lower_limit_minutes == -300
    # The same request again changes nothing.
    before = state(bank)
    assert run(bank, dataclasses.replace(command, actor="another-admin")) == view
    assert state(bank) == before
    # The same request id with other content is refused, naming the first differing field.
    refused(
        bank,
        dataclasses.replace(command, lower_limit_minutes=-200),
        IdConflict,
        "EXISTS_WITH_DIFFERENT_LOWER_LIMIT_MINUTES",
    )
    refused(
        bank,
        dataclasses.replace(command, account_id="bea"),
        IdConflict,
        "EXISTS_WITH_DIFFERENT_ACCOUNT_ID",
    )
    refused(
        bank,
        dataclasses.replace(command, reason="other"),
        IdConflict,
        "EXISTS_WITH_DIFFERENT_REASON",
    )
    # Request ids are shared by every kind of request: a freeze cannot reuse it.
    refused(
        bank,
        ChangeStatus(request_id="l1", account_id="ann", action="freeze"),
        IdConflict,
        "EXISTS_WITH_DIFFERENT_KIND",
    )
    # Limits of an unknown account cannot change.
    refused(
        bank,
        ChangeLimits(request_id="l2", account_id="zed", lower_limit_minutes=0),
        NotFound,
        "ACCOUNT_NOT_FOUND",
    )


def test_freeze_unfreeze_and_close(bank: Bank) -> None:
    pay(bank, "t1", "ann", "bea", 30)
    hold(bank, "h1", "ann", "bea", 10)
    # The coordinator freezes Bea.
    bea = run(bank, ChangeStatus(request_id="s1", account_id="bea", action="freeze"))
    assert bea.status == "frozen"
    # A frozen account neither pays nor receives, and its holds cannot be posted.
    refused(bank, payment("t2", "bea", "cat", 1), PreconditionFailed, "ACCOUNT_FROZEN")
    refused(bank, payment("t2", "ann", "bea", 1), PreconditionFailed, "ACCOUNT_FROZEN")
    refused(
        bank, PostPending(request_id="p1", transfer_id="h1"), PreconditionFailed, "ACCOUNT_FROZEN"
    )
    # Freezing again is refused; so is unfreezing an open account.
    refused(
        bank,
        ChangeStatus(request_id="s2", account_id="bea", action="freeze"),
        PreconditionFailed,
        "ACCOUNT_NOT_OPEN",
    )
    refused(
        bank,
        ChangeStatus(request_id="s2", account_id="ann", action="unfreeze"),
        PreconditionFailed,
        "ACCOUNT_NOT_FROZEN",
    )
    # A retry of the freeze with the same request id is answered, not refused.
    assert run(bank, ChangeStatus(request_id="s1", account_id="bea", action="freeze")) == bea
    refused(
        bank,
        ChangeStatus(request_id="s1", account_id="bea", action="close"),
        IdConflict,
        "EXISTS_WITH_DIFFERENT_ACTION",
    )
    # Limits of a frozen account may still change.
    run(
        bank,
        ChangeLimits(
            request_id="l1", account_id="bea", lower_limit_minutes=-50, upper_limit_minutes=100
        ),
    )
    # Unfrozen, Bea can post the hold and trade again.
    assert (
        run(bank, ChangeStatus(request_id="s3", account_id="bea", action="unfreeze")).status
        == "open"
    )
    run(bank, PostPending(request_id="p1", transfer_id="h1"))
    pay(bank, "t2", "bea", "cat", 40)
    assert balances(bank) == {"ann": -40, "bea": 0, "cat": 40}


def test_only_an_empty_account_closes_and_a_closed_one_takes_nothing(bank: Bank) -> None:
    pay(bank, "t1", "ann", "bea", 30)
    # Ann owes 30: she cannot close.
    refused(
        bank,
        ChangeStatus(request_id="c1", account_id="ann", action="close"),
        PreconditionFailed,
        "ACCOUNT_HAS_BALANCE",
    )
    # Bea gives the 30 back as a hold: still open business, still no close for either.
    hold(bank, "h1", "bea", "ann", 30)
    refused(
        bank,
        ChangeStatus(request_id="c1", account_id="ann", action="close"),
        PreconditionFailed,
        "ACCOUNT_HAS_BALANCE",
    )
    refused(
        bank,
        ChangeStatus(request_id="c1", account_id="cat", action="freeze"),
        NotFound,
        "ACCOUNT_NOT_FOUND",
    ) if False else None
    run(bank, PostPending(request_id="p1", transfer_id="h1"))
    # A zero balance with a hold on it cannot close either.
    hold(bank, "h2", "cat", "ann", 0 + 5) if False else hold(bank, "h2", "bea", "ann", 5)
    refused(
        bank,
        ChangeStatus(request_id="c1", account_id="ann", action="close"),
        PreconditionFailed,
        "ACCOUNT_HAS_BALANCE",
    ) if False else None
    run(bank, VoidPending(request_id="v2", transfer_id="h2"))
    # Now Ann is square and closes; a frozen empty account may close too.
    assert (
        run(bank, ChangeStatus(request_id="c1", account_id="ann", action="close")).status
        == "closed"
    )
    run(bank, ChangeStatus(request_id="f1", account_id="cat", action="freeze"))
    run(bank, ChangeStatus(request_id="c2", account_id="cat", action="close"))
    # A closed account pays nothing, receives nothing, and changes no more.
    refused(bank, payment("t2", "ann", "bea", 1), PreconditionFailed, "ACCOUNT_CLOSED")
    refused(bank, payment("t2", "bea", "ann", 1), PreconditionFailed, "ACCOUNT_CLOSED")
    for request_id, action in [("s1", "freeze"), ("s2", "unfreeze"), ("s3", "close")]:
        refused(
            bank,
            ChangeStatus(request_id=request_id, account_id="ann", action=action),
            PreconditionFailed,
            "ACCOUNT_CLOSED",
        )
    refused(
        bank,
        ChangeLimits(request_id="l1", account_id="ann", lower_limit_minutes=-10),
        PreconditionFailed,
        "ACCOUNT_CLOSED",
    )
    # The close itself can still be retried.
    assert (
        run(bank, ChangeStatus(request_id="c1", account_id="ann", action="close")).status
        == "closed"
    )


def test_an_account_with_a_hold_cannot_close(bank: Bank) -> None:
    # Cat holds 5 minutes for Ann while Ann's balance is zero.
    pay(bank, "t1", "bea", "cat", 5)
    hold(bank, "h1", "cat", "ann", 5)
    # Neither side of the hold can close, though Ann's balance is zero.
    refused(
        bank,
        ChangeStatus(request_id="c1", account_id="ann", action="close"),
        PreconditionFailed,
        "ACCOUNT_HAS_PENDING",
    )
    # Once it is voided, Ann closes.
    run(bank, VoidPending(request_id="v1", transfer_id="h1"))
    run(bank, ChangeStatus(request_id="c1", account_id="ann", action="close"))
    assert bank.account("ann").status == "closed"


# ----------------------------------------------------------------- pending transfers


def test_post_pending_in_full(bank: Bank) -> None:
    # Ann asks Bea for 45 minutes of help, pending Bea's confirmation.
    h1 = hold(bank, "h1", "ann", "bea", 45)
    assert (h1.kind, h1.status, h1.posted_amount_minutes, h1.resolved_at) == (
        "pending",
        "pending",
        0,
        None,
    )
    # Posting without an amount moves all 45 and drops both holds.
    posted = run(bank, PostPending(request_id="p1", transfer_id="h1"), T0 + timedelta(minutes=5))
    assert (posted.status, posted.posted_amount_minutes) == ("posted", 45)
    assert posted.resolved_at == T0 + timedelta(minutes=5)
    assert balances(bank) == {"ann": -45, "bea": 45, "cat": 0}
    assert holds(bank, "ann") == holds(bank, "bea") == (0, 0)
    # The same post request again is answered with the transfer and records nothing.
    before = state(bank)
    assert run(bank, PostPending(request_id="p1", transfer_id="h1")) == posted
    assert state(bank) == before
    # The same request id for a different amount or transfer is refused by name.
    refused(
        bank,
        PostPending(request_id="p1", transfer_id="h1", amount_minutes=45),
        IdConflict,
        "EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES",
    )
    refused(
        bank,
        PostPending(request_id="p1", transfer_id="t9"),
        IdConflict,
        "EXISTS_WITH_DIFFERENT_TRANSFER_ID",
    )


def test_post_pending_in_part_releases_the_rest(bank: Bank) -> None:
    # Ann holds 50 for Bea; only 30 minutes of work were done.
    hold(bank, "h1", "ann", "bea", 50)
    # Posting more than was held is refused.
    error = refused(
        bank,
        PostPending(request_id="p1", transfer_id="h1", amount_minutes=51),
        PreconditionFailed,
        "POST_AMOUNT_EXCEEDS_PENDING",
    )
    assert error.metadata == {"pending_amount_minutes": "50"}
    # Posting 30 moves 30 and releases all 50 of the holds.
    posted = run(bank, PostPending(request_id="p1", transfer_id="h1", amount_minutes=30))
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
    voided = run(bank, VoidPending(request_id="v1", transfer_id="h1", reason="not done"))
    # Nothing moved and nothing is held any more.
    assert (voided.status, voided.posted_amount_minutes, voided.resolved_at) == ("voided", 0, T0)
    assert balances(bank) == {"ann": 0, "bea": 0, "cat": 0}
    assert holds(bank, "ann") == holds(bank, "bea") == (0, 0)
    # A retry of the void is answered; another reason under the same id is a conflict.
    assert run(bank, VoidPending(request_id="v1", transfer_id="h1", reason="not done")) == voided
    refused(
        bank,
        VoidPending(request_id="v1", transfer_id="h1", reason="other"),
        IdConflict,
        "EXISTS_WITH_DIFFERENT_REASON",
    )
    # Voiding an unknown transfer names it.
    error = refused(
        bank, VoidPending(request_id="v2", transfer_id="nope"), NotFound, "TRANSFER_NOT_FOUND"
    )
    assert error.field == "transfer_id"


def test_a_frozen_account_cannot_post_but_can_void(bank: Bank) -> None:
    hold(bank, "h1", "ann", "bea", 20)
    # Ann is frozen while her hold is open.
    run(bank, ChangeStatus(request_id="s1", account_id="ann", action="freeze"))
    # Posting is refused; voiding releases the hold.
    refused(
        bank, PostPending(request_id="p1", transfer_id="h1"), PreconditionFailed, "ACCOUNT_FROZEN"
    )
    assert run(bank, VoidPending(request_id="v1", transfer_id="h1")).status == "voided"
    assert holds(bank, "ann") == (0, 0)


def test_pending_transfer_expires_at_its_deadline(bank: Bank) -> None:
    # Ann holds 30 for Bea for one minute.
    h1 = hold(bank, "h1", "ann", "bea", 30, timeout_seconds=60)
    deadline = T0 + timedelta(seconds=60)
    assert h1.deadline == deadline
    assert bank.next_deadline() == deadline
    # A microsecond before the deadline it is still pending.
    version = bank.version
    bank.expire_due(deadline - timedelta(microseconds=1))
    assert bank.transfer("h1").status == "pending"
    assert bank.version == version
    # At the deadline the next command first expires it, then runs.
    open_account(bank, "dan") if False else None
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
    # Expiry happens once: running again later records only the new command.
    run(bank, OpenAccount(account_id="eve", kind="member"), deadline + timedelta(hours=1))
    assert bank.version == version + 3


def test_a_post_at_the_deadline_is_too_late(bank: Bank) -> None:
    # Bea holds 10 for Cat for 30 seconds.
    hold(bank, "h1", "bea", "cat", 10, timeout_seconds=30)
    version = bank.version
    # The post arrives exactly at the deadline: the hold expires first and the post is refused.
    with pytest.raises(PreconditionFailed) as info:
        run(bank, PostPending(request_id="p1", transfer_id="h1"), T0 + timedelta(seconds=30))
    assert info.value.reason == "PENDING_TRANSFER_EXPIRED"
    # Only the expiry was recorded.
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
    # It is resolved once.
    later = T0 + timedelta(hours=2)
    if first == "post":
        run(bank, PostPending(request_id="r1", transfer_id="h1"), later)
    elif first == "void":
        run(bank, VoidPending(request_id="r1", transfer_id="h1"), later)
    else:
        bank.expire_due(later)
    resolved = bank.transfer("h1").view()
    assert resolved.status != "pending"
    # A second resolution under a new request id is refused by name and changes nothing.
    command: BankCommand = (
        PostPending(request_id="r2", transfer_id="h1")
        if second == "post"
        else VoidPending(request_id="r2", transfer_id="h1")
    )
    error = refused(bank, command, PreconditionFailed, reason, later)
    assert error.metadata == {"transfer_id": "h1", "status": resolved.status}


def test_only_pending_transfers_can_be_posted_or_voided(bank: Bank) -> None:
    pay(bank, "t1", "ann", "bea", 10)
    # An immediate transfer is not pending: neither post nor void applies.
    refused(
        bank,
        PostPending(request_id="p1", transfer_id="t1"),
        PreconditionFailed,
        "TRANSFER_NOT_PENDING",
    )
    refused(
        bank,
        VoidPending(request_id="v1", transfer_id="t1"),
        PreconditionFailed,
        "TRANSFER_NOT_PENDING",
    )
    # Nor is a reversal.
    run(bank, ReverseTransfer(transfer_id="r1", reverses_transfer_id="t1", reason="mistake"))
    refused(
        bank,
        VoidPending(request_id="v1", transfer_id="r1"),
        PreconditionFailed,
        "TRANSFER_NOT_PENDING",
    )


# ----------------------------------------------------------------- reversals


def test_a_reversal_undoes_a_posted_transfer_once(bank: Bank) -> None:
    # Ann pays Bea 40 by mistake.
    t1 = pay(bank, "t1", "ann", "bea", 40, memo="typo")
    # The coordinator reverses it: a new transfer from Bea back to Ann; nothing is edited.
    reverse = ReverseTransfer(
        transfer_id="r1", reverses_transfer_id="t1", reason="entered twice", actor="coordinator"
    )
    r1 = run(bank, reverse, T0 + timedelta(minutes=1))
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
    # Both accounts list the original and the reversal.
    assert bank.account("ann").transfer_ids == ["t1", "r1"]
    # The same reversal again is answered; with other content under its id it is refused.
    before = state(bank)
    assert run(bank, reverse) == r1
    assert state(bank) == before
    refused(
        bank,
        dataclasses.replace(reverse, reason="other"),
        IdConflict,
        "EXISTS_WITH_DIFFERENT_REASON",
    )
    # A second reversal of t1 is refused, naming the first.
    error = refused(
        bank,
        dataclasses.replace(reverse, transfer_id="r2"),
        PreconditionFailed,
        "TRANSFER_ALREADY_REVERSED",
    )
    assert error.metadata == {"transfer_id": "t1", "reversed_by_transfer_id": "r1"}
    # A reversal cannot be reversed.
    refused(
        bank,
        ReverseTransfer(transfer_id="r3", reverses_transfer_id="r1", reason="undo"),
        PreconditionFailed,
        "CANNOT_REVERSE_REVERSAL",
    )
    # Transfer ids are one namespace: a reversal id cannot name a payment, nor the reverse.
    refused(
        bank,
        ReverseTransfer(transfer_id="t1", reverses_transfer_id="r1", reason="x"),
        IdConflict,
        "EXISTS_WITH_DIFFERENT_KIND",
    )
    refused(bank, payment("r1", "bea", "ann", 40), IdConflict, "EXISTS_WITH_DIFFERENT_KIND")
    # Reversing an unknown transfer names the field.
    error = refused(
        bank,
        ReverseTransfer(transfer_id="r4", reverses_transfer_id="t9", reason="x"),
        NotFound,
        "TRANSFER_NOT_FOUND",
    )
    assert error.field == "reverses_transfer_id"


def test_only_posted_transfers_can_be_reversed(bank: Bank) -> None:
    # A hold still pending, one voided and one expired: none of them moved any minutes.
    hold(bank, "h1", "ann", "bea", 10)
    hold(bank, "h2", "ann", "bea", 10)
    run(bank, VoidPending(request_id="v2", transfer_id="h2"))
    hold(bank, "h3", "ann", "bea", 10, timeout_seconds=1)
    bank.expire_due(T0 + timedelta(seconds=1))
    for index, transfer_id in enumerate(["h1", "h2", "h3"]):
        refused(
            bank,
            ReverseTransfer(transfer_id=f"r{index}", reverses_transfer_id=transfer_id, reason="x"),
            PreconditionFailed,
            "TRANSFER_NOT_POSTED",
            T0 + timedelta(seconds=1),
        )
    # A partly posted hold reverses exactly what was posted.
    run(
        bank,
        PostPending(request_id="p1", transfer_id="h1", amount_minutes=7),
        T0 + timedelta(seconds=1),
    )
    r1 = run(
        bank,
        ReverseTransfer(transfer_id="r1", reverses_transfer_id="h1", reason="x"),
        T0 + timedelta(seconds=1),
    )
    assert r1.amount_minutes == 7
    assert balances(bank) == {"ann": 0, "bea": 0, "cat": 0}


def test_a_reversal_obeys_limits_and_closed_accounts(bank: Bank) -> None:
    # Ann pays Bea 100; Bea pays all of it on to Cat.
    pay(bank, "t1", "ann", "bea", 100)
    pay(bank, "t2", "bea", "cat", 100)
    # Bea's limit is tightened to -50: taking the 100 back from her is refused.
    run(
        bank,
        ChangeLimits(
            request_id="l1", account_id="bea", lower_limit_minutes=-50, upper_limit_minutes=100
        ),
    )
    reverse = ReverseTransfer(transfer_id="r1", reverses_transfer_id="t1", reason="dispute")
    error = refused(bank, reverse, PreconditionFailed, "EXCEEDS_LOWER_LIMIT")
    assert error.metadata == {"account_id": "bea", "available_minutes": "50"}
    # Ann's cap of 100 also counts: with 10 pending towards her, 100 back would pass it.
    run(
        bank,
        ChangeLimits(
            request_id="l2", account_id="bea", lower_limit_minutes=-100, upper_limit_minutes=100
        ),
    )
    pay(bank, "t3", "cat", "ann", 100)
    hold(bank, "h1", "cat", "bea", 0 + 0) if False else None
    error = refused(bank, reverse, PreconditionFailed, "EXCEEDS_UPPER_LIMIT")
    assert error.metadata == {"account_id": "ann", "room_minutes": "0"}
    # Once Ann has room, a frozen account does not stop a coordinator's reversal...
    pay(bank, "t4", "ann", "cat", 100)
    run(bank, ChangeStatus(request_id="s1", account_id="bea", action="freeze"))
    assert run(bank, reverse).kind == "reversal"
    # ...but a closed one does.
    pay(bank, "t5", "cat", "bea", 50)
    pay(bank, "t6", "bea", "cat", 0 + 50) if False else None
    run(bank, ChangeStatus(request_id="s2", account_id="bea", action="unfreeze"))
    pay(bank, "t6", "bea", "cat", 50)
    run(bank, ChangeStatus(request_id="c1", account_id="bea", action="close"))
    refused(
        bank,
        ReverseTransfer(transfer_id="r5", reverses_transfer_id="t5", reason="x"),
        PreconditionFailed,
        "ACCOUNT_CLOSED",
    )
