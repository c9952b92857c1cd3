"""Random command sequences through MemoryBank: a bank is always what its history says it is.

Commands arrive as writer batches of one to four (so transfers group, and later commands see
earlier ones), the clock moves forwards, backwards and onto deadlines, idle writers expire
holds, retries repeat what succeeded, and snapshots are taken at random steps. After every
step:

- the state replayed from event 1 is the live state (accounts, holds, deadlines), and the
  index records the events imply are the records written live;
- the latest snapshot plus the events after it loads the live state;
- balances sum to zero, and every open hold is a pending transfer record and the accounts'
  pending minutes;
- every stored event's hash is sha256(previous hash || its stored bytes), checked from the
  bytes alone, and the bytes are canonical JSON;
- the independent verifier (ledger/verifier.py), fed the same rows, finds nothing,
  and recomputes the same balances.

LEDGER_PROPERTY_PROFILE=deep runs many more and longer sequences (as tests/test_properties.py).
"""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime, timedelta
from typing import Any, cast

from bank_checks import check_replays, live_deadlines, loaded
from domain_harness import START, MemoryBank
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ledger.domain import canonical
from ledger.domain.commands import (
    ChangeLimits,
    ChangeStatus,
    Command,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    PostPending,
    ReverseTransfer,
    VoidPending,
)
from ledger.domain.errors import DomainError, InvalidInput
from ledger.domain.state import BankState
from ledger.domain.views import AccountView, BatchItemResult, TransferView
from ledger.verifier import Verifier

BANK = "props"
# A small pool of accounts, so that commands keep meeting the same few (some never open).
ACCOUNT_IDS = tuple(f"a{i}" for i in range(5))
T0 = START

# "ci" keeps the whole run to a few seconds; "deep" hunts for much longer.
PROFILES = {
    "ci": settings(
        max_examples=60,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    ),
    "deep": settings(
        max_examples=2000,
        stateful_step_count=80,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    ),
}

lower_limits = st.sampled_from((-300, -3000, -120, 0))
upper_limits = st.sampled_from((None, None, 500, 120, 0))
# Mostly valid amounts; a few that validation must refuse, many that exceed some limit.
amounts = st.integers(min_value=-1, max_value=60)
actors = st.sampled_from(("", "key:admin", "member:a1"))
labels = st.sampled_from(("", "Jo at the desk"))
# Free text beyond ASCII, and text that needs the canonical encoder's slow path (U+E000 up).
memos = st.sampled_from(("", "gardening", "Kuchen für alle \U0001f370", "Zeit \ue000"))
COMMAND_KINDS = (
    "transfer",
    "transfer",
    "hold",
    "hold",
    "post",
    "void",
    "reverse",
    "batch",
    "limits",
    "status",
    "open",
)


def succeeded(result: Any) -> bool:
    """Whether the whole command succeeded (every item of a batch): it may be retried."""
    if isinstance(result, list):
        return all(isinstance(item, BatchItemResult) and item.error is None for item in result)
    return not isinstance(result, DomainError)


def refused(result: Any) -> bool:
    """Whether the command was refused outright (every item of a batch): it changed nothing."""
    if isinstance(result, list):
        return all(isinstance(item, BatchItemResult) and item.error is not None for item in result)
    return isinstance(result, DomainError)


class BankMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.memory = MemoryBank.created(BANK, "Property bank")
        self.now = T0
        self.ids_made = 0
        # The latest snapshot: the version it was taken at and its canonical bytes.
        self.snapshot: tuple[int, bytes] | None = None
        # Commands that succeeded, for retries.
        self.recorded: list[Command] = []
        self.verifier = Verifier(self.memory.state.bank_uuid)
        self.verified = 0
        # Transfer ids drawn for the writer batch being built (later commands may name them).
        self.drawn: list[str] = []

    # ---------------------------------------------------------------- drawing commands

    def fresh(self, prefix: str) -> str:
        self.ids_made += 1
        return f"{prefix}{self.ids_made}"

    def draw_id(self, data: st.DataObject, used: list[str], prefix: str) -> str:
        """Mostly a fresh id (a new command); sometimes one already used (a retry or conflict)."""
        if used and data.draw(st.integers(0, 7), label="reuse an id") == 0:
            return data.draw(st.sampled_from(sorted(used)), label="reused id")
        return self.fresh(prefix)

    def draw_existing(self, data: st.DataObject, wanted: list[str], label: str) -> str:
        """Mostly one of `wanted`, sometimes any transfer id (which the command may refuse)."""
        known = sorted(self.memory.transfers) + self.drawn
        if wanted and data.draw(st.integers(0, 5), label=f"{label}: any") > 0:
            return data.draw(st.sampled_from(sorted(wanted)), label=label)
        return data.draw(st.sampled_from(known or ["nothing"]), label=label)

    def draw_account(self, data: st.DataObject, other_than: str = "") -> str:
        open_ids = [k for k, a in self.memory.state.accounts.items() if a.status == "open"]
        choices = [k for k in open_ids if k != other_than]
        if choices and data.draw(st.integers(0, 5), label="an open account") > 0:
            return data.draw(st.sampled_from(choices), label="account")
        return data.draw(st.sampled_from(ACCOUNT_IDS), label="any account")

    def draw_amount(self, data: st.DataObject, payer_id: str, payee_id: str) -> int:
        """Any amount, or one at a limit's edge (just inside, exactly on it, just past it)."""
        edge = data.draw(st.sampled_from(("any", "payer", "any", "payee")), label="amount at")
        payer = self.memory.state.accounts.get(payer_id)
        payee = self.memory.state.accounts.get(payee_id)
        if edge == "payer" and payer is not None:
            base = payer.debit_exposure_minutes - payer.lower_limit_minutes
        elif edge == "payee" and payee is not None and payee.upper_limit_minutes is not None:
            base = payee.upper_limit_minutes - payee.credit_exposure_minutes
        else:
            return data.draw(amounts, label="amount")
        return max(1, base + data.draw(st.sampled_from((0, 1, -1)), label="from the edge"))

    def draw_transfer(
        self, data: st.DataObject, *, pending: bool, payer: str | None = None
    ) -> CreateTransfer:
        payer = payer or self.draw_account(data)
        payee = self.draw_account(data, other_than=payer)
        transfer_id = self.draw_id(data, sorted(self.memory.transfers), "t")
        self.drawn.append(transfer_id)
        return CreateTransfer(
            transfer_id=transfer_id,
            payer_account_id=payer,
            payee_account_id=payee,
            amount_minutes=self.draw_amount(data, payer, payee),
            memo=data.draw(memos, label="memo"),
            pending=pending,
            timeout_seconds=data.draw(st.sampled_from((0, 1, 30, 600))) if pending else 0,
            actor=data.draw(actors, label="actor"),
            actor_label=data.draw(labels, label="label"),
        )

    def draw_command(self, data: st.DataObject) -> Command:
        kind = data.draw(st.sampled_from(COMMAND_KINDS), label="command")
        state = self.memory.state
        request_ids = sorted(self.memory.requests)
        actor = data.draw(actors, label="actor")
        if kind in ("transfer", "hold"):
            return self.draw_transfer(data, pending=kind == "hold")
        if kind in ("post", "void"):
            transfer_id = self.draw_existing(data, list(state.holds), "held")
            request_id = self.draw_id(data, request_ids, "r")
            if kind == "void":
                return VoidPending(request_id, transfer_id, reason="not needed", actor=actor)
            hold = state.holds.get(transfer_id)
            amount = hold.amount_minutes if hold else 1
            # All of it (None or the amount), part of it, or one minute more than was held.
            minutes = data.draw(st.sampled_from((None, amount, 1, amount - 1, amount + 1)))
            return PostPending(request_id, transfer_id, minutes, actor=actor)
        if kind == "reverse":
            posted = [
                k
                for k, r in self.memory.transfers.items()
                if r.status == "posted" and r.kind != "reversal" and not r.reversed_by_transfer_id
            ]
            reverses = self.draw_existing(data, posted, "posted")
            transfer_id = self.draw_id(data, sorted(self.memory.transfers), "t")
            self.drawn.append(transfer_id)
            return ReverseTransfer(transfer_id, reverses, reason="entered by mistake", actor=actor)
        if kind == "batch":
            return self.draw_batch(data)
        account_id = self.draw_account(data)
        if kind == "limits":
            lower, upper = data.draw(lower_limits), data.draw(upper_limits)
            request_id = self.draw_id(data, request_ids, "r")
            return ChangeLimits(request_id, account_id, lower, upper, "review", actor=actor)
        if kind == "status":
            action = data.draw(st.sampled_from(("freeze", "unfreeze", "close", "unfreeze")))
            request_id = self.draw_id(data, request_ids, "r")
            return ChangeStatus(request_id, account_id, action, actor=actor)
        account_id = data.draw(st.sampled_from(ACCOUNT_IDS), label="new account")
        return OpenAccount(
            account_id,
            data.draw(st.sampled_from(("member", "pool", "system"))),
            data.draw(lower_limits),
            data.draw(upper_limits),
            actor=actor,
        )

    def draw_batch(self, data: st.DataObject) -> CreateTransfers:
        items: list[CreateTransfer] = []
        for _ in range(data.draw(st.integers(1, 3), label="batch size")):
            # Often a chain: each payer spends what the item before paid it.
            chained = bool(items) and data.draw(st.booleans(), label="chained")
            payer = items[-1].payee_account_id if chained else None
            item = self.draw_transfer(data, pending=data.draw(st.booleans()), payer=payer)
            if items and data.draw(st.integers(0, 7), label="an id twice in the batch") == 0:
                item = dataclasses.replace(item, transfer_id=items[0].transfer_id)
            items.append(item)
        return CreateTransfers(tuple(items), linked=data.draw(st.booleans(), label="linked"))

    # ---------------------------------------------------------------- rules

    @initialize(limits=st.lists(st.tuples(lower_limits, upper_limits), min_size=2, max_size=3))
    def open_first_accounts(self, limits: list[tuple[int, int | None]]) -> None:
        for account_id, (lower, upper) in zip(ACCOUNT_IDS, limits, strict=False):
            self.memory.execute(OpenAccount(account_id, "member", lower, upper), self.now)

    @rule(data=st.data(), size=st.integers(1, 4), expire_first=st.booleans())
    def writer_batch(self, data: st.DataObject, size: int, expire_first: bool) -> None:
        # The writer validates each command on the caller's side; only valid ones reach it.
        self.drawn = []
        commands = []
        for _ in range(size):
            command = self.draw_command(data)
            try:
                command.validate()
            except InvalidInput as error:
                event(f"invalid: {error.reason}")
                continue
            commands.append(command)
        if expire_first:
            self.memory.expire(self.now)
        due = any(h.deadline and h.deadline <= self.now for h in self.memory.state.holds.values())
        before = self.unchanged()
        results = self.memory.run(commands, self.now)
        for command, result in zip(commands, results, strict=True):
            event(f"{type(command).__name__}: {'refused' if refused(result) else 'ok'}")
            if succeeded(result):
                self.recorded.append(command)
        if not due and all(refused(result) for result in results):
            # Every command was refused and nothing was due: nothing changed at all.
            assert self.unchanged() == before
        if len(commands) == 1:
            self.check_result(results[0])

    @rule(data=st.data())
    def advance_clock(self, data: st.DataObject) -> None:
        deadlines = sorted(h.deadline for h in self.memory.state.holds.values() if h.deadline)
        to_deadline = bool(deadlines) and data.draw(st.booleans(), label="to a deadline")
        if to_deadline:
            # Just before, exactly at, or just after one: expiry's edge.
            target = data.draw(st.sampled_from(deadlines), label="deadline")
            offset = data.draw(st.sampled_from((0, -1, 1)), label="offset µs")
            self.now = target + timedelta(microseconds=offset)
        else:
            # Mostly forwards; sometimes the clock jumps back (the bank's time must not).
            seconds = data.draw(st.sampled_from((1, 29, 31, 300, 601, -3600)), label="seconds")
            self.now += timedelta(seconds=seconds)

    @rule()
    def idle_writer(self) -> None:
        # An idle writer wakes up and expires what is due.
        self.memory.expire(self.now)

    @rule()
    def take_snapshot(self) -> None:
        state = self.memory.state
        snapshot = canonical.encode(state.to_snapshot())
        # It round-trips through canonical JSON on its own...
        restored = BankState.from_snapshot(canonical.decode(snapshot))
        assert restored == state
        assert live_deadlines(restored) == live_deadlines(state)
        # ...and, from now on, together with the events after it (see the invariant).
        self.snapshot = (state.version, snapshot)

    @rule(data=st.data(), actor=actors, label=labels)
    def retry(self, data: st.DataObject, actor: str, label: str) -> None:
        if not self.recorded:
            return
        # A retry of what succeeded, from any caller, returns it and records nothing.
        command: Any = data.draw(st.sampled_from(self.recorded), label="retried")
        if not isinstance(command, CreateTransfers):
            command = dataclasses.replace(command, actor=actor, actor_label=label)
        self.memory.expire(self.now)
        before = self.unchanged()
        result = self.memory.run([command], self.now)[0]
        assert succeeded(result), result
        assert self.unchanged() == before
        self.check_result(result)

    # ---------------------------------------------------------------- checks

    def unchanged(self) -> tuple[dict[str, Any], list[tuple[datetime, str]]]:
        return self.memory.snapshot(), live_deadlines(self.memory.state)

    def check_result(self, result: Any) -> None:
        """What a command returns is what a read right after it shows."""
        if isinstance(result, AccountView):
            assert result == self.memory.state.accounts[result.account_id].view()
        elif isinstance(result, TransferView):
            assert result == self.memory.transfers[result.transfer_id].view()
        elif isinstance(result, list):
            for item in cast(list[BatchItemResult], result):
                if item.transfer is not None:
                    assert item.transfer == self.memory.transfers[item.transfer.transfer_id].view()

    @invariant()
    def the_bank_is_what_its_history_says(self) -> None:
        memory = self.memory
        # Replay from event 1 (state, deadlines, records), the chain from the bytes alone,
        # canonical bytes, timestamps in order, balances summing to zero.
        check_replays(memory)
        # The latest snapshot and the events after it load the same bank.
        if self.snapshot is not None:
            version, snapshot = self.snapshot
            state = loaded(snapshot, memory.stored[version:])
            assert state == memory.state
            assert live_deadlines(state) == live_deadlines(memory.state)
        self.check_holds()
        self.check_verifier()

    def check_holds(self) -> None:
        """Open holds are the pending transfers, and what the accounts show as pending."""
        state, transfers = self.memory.state, self.memory.transfers
        assert set(state.holds) == {k for k, r in transfers.items() if r.status == "pending"}
        for transfer_id, hold in state.holds.items():
            record = transfers[transfer_id]
            assert (hold.payer_account_id, hold.payee_account_id) == (
                record.payer_account_id,
                record.payee_account_id,
            )
            assert (hold.amount_minutes, hold.deadline) == (record.amount_minutes, record.deadline)
            # No event was recorded at or after an open hold's deadline without expiring it.
            assert state.last_timestamp is not None
            assert hold.deadline is None or hold.deadline > state.last_timestamp
        for account_id, account in state.accounts.items():
            holds = state.holds.values()
            debit = sum(h.amount_minutes for h in holds if h.payer_account_id == account_id)
            credit = sum(h.amount_minutes for h in holds if h.payee_account_id == account_id)
            assert (account.pending_debit_minutes, account.pending_credit_minutes) == (
                debit,
                credit,
            )
        assert state.transfer_count == len(transfers)

    def check_verifier(self) -> None:
        """The independent verifier, fed the new rows, finds nothing and agrees on balances."""
        for stored in self.memory.stored[self.verified :]:
            violations = self.verifier.feed_stored(stored.stored, stored.chain_hash)
            assert violations == [], violations
        self.verified = len(self.memory.stored)
        report = self.verifier.report()
        state = self.memory.state
        assert (report.position, report.chain_head) == (state.version, state.chain_head)
        assert report.balances == {k: a.balance_minutes for k, a in state.accounts.items()}
        assert {k: t.status for k, t in report.transfers.items()} == {
            k: r.status for k, r in self.memory.transfers.items()
        }


BankMachine.TestCase.settings = PROFILES[os.environ.get("LEDGER_PROPERTY_PROFILE", "ci")]
TestBankProperties = BankMachine.TestCase
