"""Random command sequences through the Ledger: views match a simple model; invariants hold."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ledger.application import loading
from ledger.application.ledger import Ledger
from ledger.config import Settings
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
from ledger.domain.errors import DomainError, IdConflict, InvalidInput
from ledger.domain.views import AccountView, BatchItemResult, TransferView
from ledger.verifier import GENESIS_HASH, Verifier, verify

BANK = "prop"
# A small pool of accounts, so that commands keep meeting the same few.
ACCOUNT_IDS = tuple(f"a{i}" for i in range(5))
# Ids that may or may not exist (new commands mostly get fresh ids; see `new_id`).
TRANSFER_IDS = tuple(f"t{i}" for i in range(1, 10))
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
# How often (in steps) the whole bank is replayed from the store and compared.
replay_every_steps = 4
# The machine's Ledger snapshots a bank's state this often (in changes), to test loading.
snapshot_every_changes = 7

# "ci" runs in well under a minute and, in a mutation check (rules removed from the Bank one
# at a time), caught each mutant in most runs; LEDGER_PROPERTY_PROFILE=deep hunts for longer.
settings.register_profile(
    "ci",
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("deep", settings.get_profile("ci"), max_examples=3000)

lower_limits = st.sampled_from((-300, -3000, -120, 0))
upper_limits = st.sampled_from((None, None, 500, 120, 0))
# Mostly valid amounts; a few that validation must refuse, many that exceed some limit.
amounts = st.integers(min_value=-1, max_value=60)
actors = st.sampled_from(("", "coordinator"))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


# --------------------------------------------------------------------------- the reference model


class Refused(Exception):
    """The model's prediction that the ledger refuses a command, with the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ModelAccount:
    opened_by: OpenAccount
    lower: int
    upper: int | None
    status: str = "open"
    balance: int = 0
    pending_debit: int = 0
    pending_credit: int = 0


@dataclass
class ModelTransfer:
    created_by: CreateTransfer | ReverseTransfer
    kind: str
    status: str
    payer: str
    payee: str
    amount: int
    created_position: int
    posted: int = 0
    deadline: datetime | None = None
    reversed_by: str = ""


def conflict_reason(command: Command, earlier: Command) -> str | None:
    """The spec's rule for a reused id: the first content field that differs, by name."""
    if type(command) is not type(earlier):
        return "EXISTS_WITH_DIFFERENT_KIND"
    for f in dataclasses.fields(command):  # type: ignore[arg-type]
        if f.name != "actor" and getattr(command, f.name) != getattr(earlier, f.name):
            return f"EXISTS_WITH_DIFFERENT_{f.name.upper()}"
    return None


def validation_reason(command: Command) -> str | None:
    """The few malformed inputs the strategies make; every other field is always valid."""
    if isinstance(command, CreateTransfer):
        if command.payer_account_id == command.payee_account_id:
            return "SAME_ACCOUNT"
        if command.amount_minutes <= 0:
            return "AMOUNT_NOT_POSITIVE"
    if isinstance(command, PostPending) and command.amount_minutes is not None:
        return "AMOUNT_NOT_POSITIVE" if command.amount_minutes <= 0 else None
    if isinstance(command, ReverseTransfer) and command.transfer_id == command.reverses_transfer_id:
        return "SAME_TRANSFER"
    return None


@dataclass
class Model:
    """What the ledger should hold, written from the spec as plainly as possible."""

    now: datetime = T0
    position: int = 1  # the bank's Created event
    accounts: dict[str, ModelAccount] = field(default_factory=dict)
    transfers: dict[str, ModelTransfer] = field(default_factory=dict)
    requests: dict[str, Command] = field(default_factory=dict)
    # Every command that was recorded, for retries.
    recorded: list[Command] = field(default_factory=list)
    # The new transfers of one command are recorded as one event (TransfersCreated).
    transfers_event_open: bool = False

    # ---------------------------------------------------------------- dispatch

    def apply(self, command: Command) -> str | None:
        """Predict one single command: None if it succeeds (and record it), else the reason."""
        self.transfers_event_open = False
        return self._apply_one(command)

    def _apply_one(self, command: Command) -> str | None:
        assert not isinstance(command, CreateTransfers)
        reason = validation_reason(command)
        if reason:
            return reason
        handlers: dict[type[Command], Callable[[Any], None]] = {
            OpenAccount: self.open_account,
            ChangeLimits: self.change_limits,
            ChangeStatus: self.change_status,
            CreateTransfer: self.create_transfer,
            PostPending: self.post,
            VoidPending: self.void,
            ReverseTransfer: self.reverse,
        }
        try:
            handlers[type(command)](command)
        except Refused as refused:
            return refused.reason
        return None

    def apply_batch(self, batch: CreateTransfers) -> list[str | None]:
        self.transfers_event_open = False
        if not batch.linked:
            return [self._apply_one(item) for item in batch.items]
        # Linked: run the items on a copy; keep the copy only if every item succeeds.
        trial = copy.deepcopy(self)
        seen: set[str] = set()
        for index, item in enumerate(batch.items):
            # An id twice in the batch is named first, then the item is checked like a single one.
            duplicate = item.transfer_id in seen
            reason = "DUPLICATE_ID_IN_BATCH" if duplicate else trial._apply_one(item)
            seen.add(item.transfer_id)
            if reason is not None:
                return [
                    reason if i == index else "LINKED_EVENT_FAILED" for i in range(len(batch.items))
                ]
        self.__dict__.update(trial.__dict__)
        return [None] * len(batch.items)

    # ---------------------------------------------------------------- helpers

    def _record(self, command: Command) -> None:
        self.position += 1
        self.recorded.append(command)

    def _record_transfer(self, command: CreateTransfer) -> None:
        if not self.transfers_event_open:
            self.position += 1
            self.transfers_event_open = True
        self.recorded.append(command)

    def _earlier(self, command: Command, earlier: Command | None) -> bool:
        """True if this is a retry of what was recorded; Refused if it conflicts."""
        if earlier is None:
            return False
        reason = conflict_reason(command, earlier)
        if reason:
            raise Refused(reason)
        return True

    def _account(self, account_id: str) -> ModelAccount:
        if account_id not in self.accounts:
            raise Refused("ACCOUNT_NOT_FOUND")
        return self.accounts[account_id]

    def _transfer(self, transfer_id: str) -> ModelTransfer:
        if transfer_id not in self.transfers:
            raise Refused("TRANSFER_NOT_FOUND")
        return self.transfers[transfer_id]

    @staticmethod
    def _check_open(account: ModelAccount) -> None:
        if account.status != "open":
            raise Refused("ACCOUNT_CLOSED" if account.status == "closed" else "ACCOUNT_FROZEN")

    @staticmethod
    def _check_limits(payer: ModelAccount, payee: ModelAccount, amount: int) -> None:
        if payer.balance - payer.pending_debit - amount < payer.lower:
            raise Refused("EXCEEDS_LOWER_LIMIT")
        if payee.upper is not None and payee.balance + payee.pending_credit + amount > payee.upper:
            raise Refused("EXCEEDS_UPPER_LIMIT")

    def _release(self, transfer: ModelTransfer, status: str) -> None:
        transfer.status = status
        self.accounts[transfer.payer].pending_debit -= transfer.amount
        self.accounts[transfer.payee].pending_credit -= transfer.amount

    def _move(self, payer: str, payee: str, amount: int) -> None:
        self.accounts[payer].balance -= amount
        self.accounts[payee].balance += amount

    # ---------------------------------------------------------------- accounts

    def open_account(self, command: OpenAccount) -> None:
        existing = self.accounts.get(command.account_id)
        if self._earlier(command, existing.opened_by if existing else None):
            return
        self.accounts[command.account_id] = ModelAccount(
            command, command.lower_limit_minutes, command.upper_limit_minutes
        )
        self._record(command)

    def change_limits(self, command: ChangeLimits) -> None:
        if self._earlier(command, self.requests.get(command.request_id)):
            return
        account = self._account(command.account_id)
        if account.status == "closed":
            raise Refused("ACCOUNT_CLOSED")
        # Lowering below the balance is allowed: it only blocks further debits.
        account.lower, account.upper = command.lower_limit_minutes, command.upper_limit_minutes
        self.requests[command.request_id] = command
        self._record(command)

    def change_status(self, command: ChangeStatus) -> None:
        if self._earlier(command, self.requests.get(command.request_id)):
            return
        account = self._account(command.account_id)
        if account.status == "closed":
            raise Refused("ACCOUNT_CLOSED")
        if command.action == "freeze" and account.status != "open":
            raise Refused("ACCOUNT_NOT_OPEN")
        if command.action == "unfreeze" and account.status != "frozen":
            raise Refused("ACCOUNT_NOT_FROZEN")
        if command.action == "close" and account.balance:
            raise Refused("ACCOUNT_HAS_BALANCE")
        if command.action == "close" and (account.pending_debit or account.pending_credit):
            raise Refused("ACCOUNT_HAS_PENDING")
        account.status = {"freeze": "frozen", "unfreeze": "open", "close": "closed"}[command.action]
        self.requests[command.request_id] = command
        self._record(command)

    # ---------------------------------------------------------------- transfers

    def create_transfer(self, command: CreateTransfer) -> None:
        existing = self.transfers.get(command.transfer_id)
        if self._earlier(command, existing.created_by if existing else None):
            return
        payer = self._account(command.payer_account_id)
        payee = self._account(command.payee_account_id)
        self._check_open(payer)
        self._check_open(payee)
        amount = command.amount_minutes
        self._check_limits(payer, payee, amount)
        self._record_transfer(command)
        transfer = ModelTransfer(
            command,
            kind="pending" if command.pending else "immediate",
            status="pending" if command.pending else "posted",
            payer=command.payer_account_id,
            payee=command.payee_account_id,
            amount=amount,
            created_position=self.position,
        )
        self.transfers[command.transfer_id] = transfer
        if command.pending:
            payer.pending_debit += amount
            payee.pending_credit += amount
            if command.timeout_seconds:
                transfer.deadline = self.now + timedelta(seconds=command.timeout_seconds)
        else:
            transfer.posted = amount
            self._move(transfer.payer, transfer.payee, amount)

    def _check_pending(self, transfer: ModelTransfer) -> None:
        if transfer.kind != "pending":
            raise Refused("TRANSFER_NOT_PENDING")
        if transfer.status == "expired":
            raise Refused("PENDING_TRANSFER_EXPIRED")
        if transfer.status != "pending":
            raise Refused(f"PENDING_TRANSFER_ALREADY_{transfer.status.upper()}")

    def post(self, command: PostPending) -> None:
        if self._earlier(command, self.requests.get(command.request_id)):
            return
        transfer = self._transfer(command.transfer_id)
        self._check_pending(transfer)
        self._check_open(self.accounts[transfer.payer])
        self._check_open(self.accounts[transfer.payee])
        amount = transfer.amount if command.amount_minutes is None else command.amount_minutes
        if amount > transfer.amount:
            raise Refused("POST_AMOUNT_EXCEEDS_PENDING")
        self._release(transfer, "posted")
        transfer.posted = amount
        self._move(transfer.payer, transfer.payee, amount)
        self.requests[command.request_id] = command
        self._record(command)

    def void(self, command: VoidPending) -> None:
        if self._earlier(command, self.requests.get(command.request_id)):
            return
        transfer = self._transfer(command.transfer_id)
        self._check_pending(transfer)
        self._release(transfer, "voided")
        self.requests[command.request_id] = command
        self._record(command)

    def expire_due(self) -> None:
        for transfer in self.transfers.values():
            if transfer.status == "pending" and transfer.deadline and transfer.deadline <= self.now:
                self._release(transfer, "expired")
                self.position += 1
                event("expired")

    def reverse(self, command: ReverseTransfer) -> None:
        existing = self.transfers.get(command.transfer_id)
        if self._earlier(command, existing.created_by if existing else None):
            return
        original = self._transfer(command.reverses_transfer_id)
        if original.kind == "reversal":
            raise Refused("CANNOT_REVERSE_REVERSAL")
        if original.status != "posted":
            raise Refused("TRANSFER_NOT_POSTED")
        if original.reversed_by:
            raise Refused("TRANSFER_ALREADY_REVERSED")
        # The original payee pays the original payer back; frozen is fine, closed is not.
        payer, payee = self.accounts[original.payee], self.accounts[original.payer]
        for account in (payer, payee):
            if account.status == "closed":
                raise Refused("ACCOUNT_CLOSED")
        self._check_limits(payer, payee, original.posted)
        self._record(command)
        self.transfers[command.transfer_id] = ModelTransfer(
            command,
            kind="reversal",
            status="posted",
            payer=original.payee,
            payee=original.payer,
            amount=original.posted,
            created_position=self.position,
            posted=original.posted,
        )
        original.reversed_by = command.transfer_id
        self._move(original.payee, original.payer, original.posted)


# --------------------------------------------------------------------------- retries


def changed_content(command: Command, data: st.DataObject) -> tuple[Command, str]:
    """The same id with one content field changed (kept valid), and the reason that must name it."""
    if isinstance(command, PostPending | VoidPending | ChangeLimits | ChangeStatus) and data.draw(
        st.booleans(), label="as another kind of request"
    ):
        other: Command
        if isinstance(command, VoidPending):
            other = PostPending(command.request_id, command.transfer_id)
        else:
            other = VoidPending(command.request_id, "t0")
        return other, "EXISTS_WITH_DIFFERENT_KIND"
    names = [
        f.name
        for f in dataclasses.fields(cast(Any, command))
        # Not content (who called), the id itself, or fields whose change would make the
        # command invalid before its id is even looked up.
        if f.name
        not in (
            *command.not_content,
            command.id_field,
            "timeout_seconds",
            "pending",
            "service_date",
            # A change of mask changes which limits count: tests/test_bank.py covers it.
            "update_mask",
        )
    ]
    name = data.draw(st.sampled_from(names), label="field to change")
    value = getattr(command, name)
    new_value: object
    if name in ("payer_account_id", "payee_account_id", "account_id"):
        taken = {
            getattr(command, n, "") for n in ("payer_account_id", "payee_account_id", "account_id")
        }
        new_value = next(a for a in (*ACCOUNT_IDS, "zz") if a not in taken)
    elif name in ("transfer_id", "reverses_transfer_id"):
        taken = {getattr(command, n, "") for n in ("transfer_id", "reverses_transfer_id")}
        new_value = next(t for t in TRANSFER_IDS if t not in taken)
    elif name == "lower_limit_minutes":
        new_value = value - 1
    elif name in ("upper_limit_minutes", "amount_minutes"):
        new_value = 1 if value is None else value + 1
    elif name == "action":
        new_value = "close" if value != "close" else "freeze"
    elif name == "kind":
        new_value = "pool" if value != "pool" else "member"
    else:
        assert isinstance(value, str), (name, value)
        new_value = value + "-changed"
    changed: Command = dataclasses.replace(cast(Any, command), **{name: new_value})
    return changed, f"EXISTS_WITH_DIFFERENT_{name.upper()}"


# --------------------------------------------------------------------------- comparing


def account_row(view: AccountView) -> tuple[object, ...]:
    return (
        view.kind,
        view.status,
        view.lower_limit_minutes,
        view.upper_limit_minutes,
        view.balance_minutes,
        view.pending_debit_minutes,
        view.pending_credit_minutes,
    )


def model_account_row(account: ModelAccount) -> tuple[object, ...]:
    return (
        account.opened_by.kind,
        account.status,
        account.lower,
        account.upper,
        account.balance,
        account.pending_debit,
        account.pending_credit,
    )


def transfer_row(view: TransferView) -> tuple[object, ...]:
    return (
        view.kind,
        view.status,
        view.payer_account_id,
        view.payee_account_id,
        view.amount_minutes,
        view.posted_amount_minutes,
        view.reversed_by_transfer_id,
        view.created_position,
        view.deadline,
    )


def model_transfer_row(transfer: ModelTransfer) -> tuple[object, ...]:
    return (
        transfer.kind,
        transfer.status,
        transfer.payer,
        transfer.payee,
        transfer.amount,
        transfer.posted,
        transfer.reversed_by,
        transfer.created_position,
        transfer.deadline,
    )


# --------------------------------------------------------------------------- the machine


class LedgerMachine(RuleBasedStateMachine):
    """One bank driven through the Ledger facade on the in-memory store."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        # Snapshots every few changes, so that loads from snapshot + tail are checked too.
        self.ledger = Ledger(
            Settings(database_url="memory://", snapshot_interval_events=snapshot_every_changes),
            clock=self.clock,
        )
        self.ledger.create_bank(CreateBank(bank_id=BANK, name="Property bank"))
        self.model = Model()
        self.verifier = Verifier(bank_uuid(BANK))
        self.steps = 0
        self.ids_made = 0

    def teardown(self) -> None:
        # With --hypothesis-show-statistics: how long the runs were, and (see run()) what
        # the commands did, to check that the strategies reach the interesting cases.
        event(f"steps: {self.steps // 10 * 10}+")
        self.ledger.close()

    # ---------------------------------------------------------------- running commands

    def position(self) -> int:
        return self.ledger.get_bank(BANK).position

    def run(self, command: Command) -> None:
        """Submit one command; its outcome must be the model's, and a refusal changes nothing."""
        before = self.position()
        expected = self.model.apply(command)
        event(f"{type(command).__name__}: {expected or 'ok'}")
        result = self.attempt(command)
        if isinstance(result, DomainError):
            assert result.reason == expected, f"{command}: ledger said {result}, model {expected}"
            assert isinstance(result, IdConflict) == expected.startswith("EXISTS_WITH_DIFFERENT_")
            assert self.position() == before, "a refused command changed the bank"
            return
        assert expected is None, f"{command}: ledger accepted it, the model expected {expected}"
        self.check_result(result)

    def attempt(self, command: Command) -> object:
        """The command's result, or the named error that refused it."""
        try:
            return self.ledger.execute(BANK, command)
        except DomainError as error:
            return error

    def check_result(self, result: object) -> None:
        """What a command returns is what a read right after it shows."""
        if isinstance(result, AccountView):
            assert result == self.ledger.get_account(BANK, result.account_id)
        else:
            assert isinstance(result, TransferView)
            assert result == self.ledger.get_transfer(BANK, result.transfer_id)

    # ---------------------------------------------------------------- rules

    def pick(self, data: st.DataObject, known: Iterable[str], pool: tuple[str, ...]) -> str:
        """Mostly an id that exists (or one the command can succeed on); sometimes any id."""
        existing = sorted(known)
        if existing and data.draw(st.integers(0, 7), label="existing id") > 0:
            return data.draw(st.sampled_from(existing))
        return data.draw(st.sampled_from(pool))

    def new_id(self, data: st.DataObject, used: Iterable[str], prefix: str) -> str:
        """Mostly a fresh id (a new command); sometimes one already used (a retry or a conflict)."""
        earlier = sorted(used)
        if earlier and data.draw(st.integers(0, 7), label="reuse an id") == 0:
            return data.draw(st.sampled_from(earlier))
        self.ids_made += 1
        return f"{prefix}{self.ids_made}"

    def transfers_where(self, wanted: Callable[[ModelTransfer], bool]) -> list[str]:
        """Transfers a command can succeed on, or all of them if there are none."""
        return [k for k, t in self.model.transfers.items() if wanted(t)] or list(
            self.model.transfers
        )

    def draw_transfer(
        self, data: st.DataObject, *, pending: bool, payer: str | None = None
    ) -> CreateTransfer:
        open_ids = [k for k, a in self.model.accounts.items() if a.status == "open"]
        payer = payer or self.pick(data, open_ids or self.model.accounts, ACCOUNT_IDS)
        # Mostly someone else (an account paying itself is refused before anything else).
        payee = self.pick(data, (set(open_ids) or set(self.model.accounts)) - {payer}, ACCOUNT_IDS)
        return CreateTransfer(
            transfer_id=self.new_id(data, self.model.transfers, "t"),
            payer_account_id=payer,
            payee_account_id=payee,
            amount_minutes=self.draw_amount(data, payer, payee),
            memo=data.draw(st.sampled_from(("", "gardening")), label="memo"),
            pending=pending,
            # Only a pending transfer may carry a timeout.
            timeout_seconds=data.draw(st.sampled_from((0, 30, 600))) if pending else 0,
            actor=data.draw(actors, label="actor"),
        )

    def draw_amount(self, data: st.DataObject, payer_id: str, payee_id: str) -> int:
        """Any amount, or one at a limit's edge (just inside, exactly on it, just past it)."""
        edge = data.draw(st.sampled_from(("any", "payer", "any", "payee")), label="amount at")
        payer, payee = self.model.accounts.get(payer_id), self.model.accounts.get(payee_id)
        if edge == "payer" and payer is not None:
            base = payer.balance - payer.pending_debit - payer.lower
        elif edge == "payee" and payee is not None and payee.upper is not None:
            base = payee.upper - payee.balance - payee.pending_credit
        else:
            return data.draw(amounts, label="amount")
        return max(1, base + data.draw(st.sampled_from((0, 1, -1)), label="from the edge"))

    @initialize(limits=st.lists(st.tuples(lower_limits, upper_limits), min_size=2, max_size=3))
    def open_first_accounts(self, limits: list[tuple[int, int | None]]) -> None:
        for account_id, (lower, upper) in zip(ACCOUNT_IDS, limits, strict=False):
            self.run(OpenAccount(account_id, "member", lower, upper))

    @rule(
        account_id=st.sampled_from(ACCOUNT_IDS),
        kind=st.sampled_from(("member", "pool", "system")),
        lower=lower_limits,
        upper=upper_limits,
        actor=actors,
    )
    def open_account(
        self, account_id: str, kind: str, lower: int, upper: int | None, actor: str
    ) -> None:
        self.run(OpenAccount(account_id, kind, lower, upper, actor=actor))

    @rule(data=st.data())
    def transfer(self, data: st.DataObject) -> None:
        self.run(self.draw_transfer(data, pending=False))

    @rule(data=st.data())
    def hold(self, data: st.DataObject) -> None:
        self.run(self.draw_transfer(data, pending=True))

    @precondition(lambda self: any(t.status == "pending" for t in self.model.transfers.values()))
    @rule(data=st.data())
    def post(self, data: st.DataObject) -> None:
        pending = self.transfers_where(lambda t: t.status == "pending")
        transfer_id = self.pick(data, pending, TRANSFER_IDS)
        held = (
            self.model.transfers[transfer_id].amount if transfer_id in self.model.transfers else 1
        )
        # All of it (None or the amount), part of it, or one minute more than was held.
        amount = data.draw(st.sampled_from((None, held, 1, held - 1, held + 1)), label="amount")
        request_id = self.new_id(data, self.model.requests, "r")
        self.run(PostPending(request_id, transfer_id, amount))

    @precondition(lambda self: any(t.status == "pending" for t in self.model.transfers.values()))
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        pending = self.transfers_where(lambda t: t.status == "pending")
        transfer_id = self.pick(data, pending, TRANSFER_IDS)
        request_id = self.new_id(data, self.model.requests, "r")
        self.run(VoidPending(request_id, transfer_id, reason="not needed"))

    @rule(data=st.data())
    def advance_clock(self, data: st.DataObject) -> None:
        deadlines = sorted(
            t.deadline
            for t in self.model.transfers.values()
            if t.deadline and t.status == "pending"
        )
        if len(deadlines) > 0 and data.draw(st.booleans(), label="to a deadline"):
            # Just before, exactly at, or just after one: expiry's edge.
            target = data.draw(st.sampled_from(deadlines), label="deadline")
            target += timedelta(seconds=data.draw(st.sampled_from((0, -1, 1)), label="offset"))
            seconds = max(1, int((target - self.clock.now).total_seconds()))
        else:
            seconds = data.draw(st.sampled_from((1, 29, 31, 300, 601)), label="seconds")
        self.clock.now += timedelta(seconds=seconds)
        self.model.now = self.clock.now
        self.model.expire_due()
        # The writer expires due holds before its next command (or on its own when idle):
        # an idempotent retry makes that happen now, so reads below are deterministic.
        opened = next(iter(self.model.accounts.values())).opened_by
        self.ledger.execute(BANK, opened)

    @rule(data=st.data(), lower=lower_limits, upper=upper_limits)
    def change_limits(self, data: st.DataObject, lower: int, upper: int | None) -> None:
        account_id = self.pick(data, self.model.accounts, ACCOUNT_IDS)
        request_id = self.new_id(data, self.model.requests, "r")
        self.run(ChangeLimits(request_id, account_id, lower, upper, reason="review"))

    @rule(data=st.data(), action=st.sampled_from(("freeze", "close", "unfreeze")))
    def change_status(self, data: st.DataObject, action: str) -> None:
        account_id = self.pick(data, self.model.accounts, ACCOUNT_IDS)
        account = self.model.accounts.get(account_id)
        if account and account.status == "frozen" and data.draw(st.booleans(), label="thaw"):
            action = "unfreeze"  # keeps enough accounts open for transfers to succeed
        request_id = self.new_id(data, self.model.requests, "r")
        self.run(ChangeStatus(request_id, account_id, action))

    @precondition(lambda self: self.model.transfers)
    @rule(data=st.data())
    def reverse(self, data: st.DataObject) -> None:
        posted = self.transfers_where(lambda t: t.status == "posted" and t.kind != "reversal")
        reverses = self.pick(data, posted, TRANSFER_IDS)
        transfer_id = self.new_id(data, self.model.transfers, "t")
        self.run(ReverseTransfer(transfer_id, reverses, reason="entered by mistake"))

    @rule(data=st.data(), size=st.integers(min_value=1, max_value=3), linked=st.booleans())
    def batch(self, data: st.DataObject, size: int, linked: bool) -> None:
        items: list[CreateTransfer] = []
        for _ in range(size):
            # Often a chain: each payer spends what the item before paid it.
            chained = bool(items) and data.draw(st.booleans(), label="chained")
            payer = items[-1].payee_account_id if chained else None
            pending = data.draw(st.booleans(), label="pending")
            item = self.draw_transfer(data, pending=pending, payer=payer)
            if items and data.draw(st.integers(0, 7), label="an id twice in the batch") == 0:
                item = dataclasses.replace(item, transfer_id=items[0].transfer_id)
            items.append(item)
        command = CreateTransfers(tuple(items), linked)
        before = self.position()
        expected = self.model.apply_batch(command)
        event(f"{'linked' if linked else 'independent'} batch: {sorted(set(map(str, expected)))}")
        results: list[BatchItemResult] = self.ledger.execute(BANK, command)
        got = [result.error.reason if result.error else None for result in results]
        assert got == expected, f"{command}: ledger said {got}, model {expected}"
        for result in results:
            if result.transfer is not None:
                self.check_result(result.transfer)
        if all(reason is not None for reason in expected):
            assert self.position() == before, "a refused batch changed the bank"

    @precondition(lambda self: self.model.recorded)
    @rule(data=st.data(), actor=actors)
    def retry_same(self, data: st.DataObject, actor: str) -> None:
        # A retry with the same id and content (the actor is not content) returns the same thing.
        command = data.draw(st.sampled_from(self.model.recorded), label="retried")
        before = self.position()
        self.run(dataclasses.replace(cast(Any, command), actor=actor))
        assert self.position() == before, "a retry recorded something"

    @precondition(lambda self: self.model.recorded)
    @rule(data=st.data())
    def retry_different(self, data: st.DataObject) -> None:
        # The same id with different content is refused, naming the field that differs.
        original = data.draw(st.sampled_from(self.model.recorded), label="retried")
        command, reason = changed_content(original, data)
        before = self.position()
        with pytest.raises(IdConflict) as refused:
            self.ledger.execute(BANK, command)
        assert refused.value.reason == reason
        assert self.position() == before, "a conflicting retry changed the bank"
        # The model reads the rule the same way (and, refusing, changes nothing either).
        assert self.model.apply(command) == reason

    # ---------------------------------------------------------------- invariants

    @invariant()
    def everything_agrees(self) -> None:
        # In this order: the verifier catches up before the replay compares against it.
        self.check_views_match_the_model()
        self.check_stored_events_verify()
        self.steps += 1
        if self.steps % replay_every_steps == 0:
            self.check_replay_gives_the_same_bank()

    def check_views_match_the_model(self) -> None:
        assert self.ledger.get_bank(BANK).position == self.model.position
        views, _ = self.ledger.list_accounts(BANK, 0, "")
        assert {v.account_id: account_row(v) for v in views} == {
            k: model_account_row(a) for k, a in self.model.accounts.items()
        }
        assert [v.account_id for v in views] == list(self.model.accounts), "opening order"
        transfers = {k: self.ledger.get_transfer(BANK, k) for k in self.model.transfers}
        assert {k: transfer_row(v) for k, v in transfers.items()} == {
            k: model_transfer_row(t) for k, t in self.model.transfers.items()
        }

    def check_stored_events_verify(self) -> None:
        # Feed the verifier what was stored since it last looked: nothing may be reported.
        uuid = str(bank_uuid(BANK))
        after = self.verifier.report().position
        previous = self.verifier.report().chain_head or GENESIS_HASH
        rows = self.ledger.store.events_after(uuid, after, limit=1_000)
        hashes = self.ledger.store.chain_hashes(uuid, after, after + len(rows))
        for version, stored in rows:
            # Each row's hash follows from its stored bytes with sha256 alone.
            assert hashes[version] == hashlib.sha256(bytes.fromhex(previous) + stored).hexdigest()
            previous = hashes[version]
            violations = self.verifier.feed_stored(stored, hashes[version])
            assert violations == [], violations
        report = self.verifier.report()
        assert report.position == self.model.position
        assert report.chain_head == self.ledger.get_bank(BANK).chain_head
        # The verifier's own recomputation agrees with the model too.
        assert report.balances == {k: a.balance for k, a in self.model.accounts.items()}
        for account_id, account in self.model.accounts.items():
            totals = report.accounts[account_id]
            assert (totals.pending_debit_minutes, totals.pending_credit_minutes, totals.status) == (
                account.pending_debit,
                account.pending_credit,
                account.status,
            )
        assert {k: t.status for k, t in report.transfers.items()} == {
            k: t.status for k, t in self.model.transfers.items()
        }

    def check_replay_gives_the_same_bank(self) -> None:
        # A bank rebuilt from the stored events alone (state and index records) shows exactly
        # what the ledger's tables show.
        uuid = str(bank_uuid(BANK))
        replayed, records = loading.replay_from_start(self.ledger.store, uuid)
        assert replayed.view() == self.ledger.get_bank(BANK)
        for account_id in self.model.accounts:
            assert replayed.accounts[account_id].view() == self.ledger.get_account(BANK, account_id)
        for transfer_id in self.model.transfers:
            record = records.transfer(transfer_id)
            assert record is not None
            assert record.view() == self.ledger.get_transfer(BANK, transfer_id)
        # Loading from the latest snapshot and the events after it gives the same state.
        assert loading.load_bank(self.ledger.store, uuid) == replayed
        # And a verifier run over the whole history from scratch agrees with the streaming one.
        everything = [(stored, h) for _, stored, h in loading.stored_rows(self.ledger.store, uuid)]
        assert verify(everything, uuid) == self.verifier.report()


LedgerMachine.TestCase.settings = settings.get_profile(
    os.environ.get("LEDGER_PROPERTY_PROFILE", "ci")
)
TestLedgerProperties = LedgerMachine.TestCase


# --------------------------------------------------------------------------- regressions


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    ledger = Ledger(Settings(database_url="memory://"), clock=Clock())
    ledger.create_bank(CreateBank(bank_id=BANK, name="Regression bank"))
    ledger.execute(BANK, OpenAccount("a0", "member", lower_limit_minutes=0))
    ledger.execute(BANK, OpenAccount("a1", "member", lower_limit_minutes=0))
    yield ledger
    ledger.close()


@pytest.mark.parametrize("linked", [False, True])
@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (CreateTransfer("t0", "a0", "a1", -10), "AMOUNT_NOT_POSITIVE"),
        (CreateTransfer("t0", "a0", "a0", 10), "SAME_ACCOUNT"),
    ],
)
def test_batch_items_are_validated_like_single_transfers(
    ledger: Ledger, item: CreateTransfer, reason: str, linked: bool
) -> None:
    before = ledger.get_bank(BANK)

    # A batch item the single-transfer call would refuse (here: a negative amount that would
    # take a1 below its lower limit of 0, or an account paying itself).
    results = ledger.execute(BANK, CreateTransfers((item,), linked=linked))

    # It is refused with the same reason, and nothing is recorded.
    assert [r.error.reason if r.error else None for r in results] == [reason]
    assert ledger.get_bank(BANK) == before
    assert ledger.get_account(BANK, "a1").balance_minutes == 0


@pytest.mark.parametrize(
    "command",
    [
        CreateTransfer("t0", "a0", "a1", 5, memo="caf\udce9"),
        ChangeLimits("r0", "a0", -60, reason="\ud800"),
        OpenAccount("a2", "member", actor="\udfff"),
    ],
)
def test_text_that_is_not_unicode_is_refused_before_it_reaches_the_bank(
    ledger: Ledger, command: Command
) -> None:
    before = ledger.get_bank(BANK)

    # A lone surrogate (what a Python caller gets from bytes decoded with surrogateescape,
    # or from JSON such as "\\ud800") cannot be encoded as UTF-8 for the chain hash or the store.
    with pytest.raises(InvalidInput) as refused:
        ledger.execute(BANK, command)

    # It is refused as malformed input, not as a failed commit that a client would retry
    # forever and that fails every other command in the same writer batch.
    assert refused.value.reason == "INVALID_CHARACTERS"
    assert ledger.get_bank(BANK) == before
