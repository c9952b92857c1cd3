"""Balances as of any moment: GetBalancesAsOf (a checkpoint of the audit projection plus the
events after it) equals what the offline verifier recomputes from the stream's prefix, for
random positions and times of a random history; statements as of a moment end with the
same balance.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import grpc
import pytest
from certs import Pki
from conftest import Clock
from hypothesis import given, settings
from hypothesis import strategies as st
from security_e2e import refusal_of
from served import Served, serving

from ledger import verifier
from ledger.domain.commands import (
    ChangeLimits,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    PostPending,
    VoidPending,
)
from ledger.domain.errors import DomainError
from ledger.security.roles import Role
from timebank.ledger.v1 import audit_pb2 as apb
from timebank.ledger.v1 import audit_pb2_grpc as apb_grpc

BANK = "riverside"
MEMBERS = ("ann", "bob", "cat", "dan", "eve", "fay")


def random_history(served: Served, clock: Clock, seed: int, commands: int) -> None:
    """Transfers, groups, holds posted or voided, limits changed, the clock moving on."""
    chooser = random.Random(seed)
    ledger = served.ledger
    for member in MEMBERS:
        ledger.execute(BANK, OpenAccount(member, "member", lower_limit_minutes=-300))
    open_holds: list[str] = []
    for n in range(commands):
        clock.advance(seconds=chooser.choice([0, 0, 1, 30, 600]))
        payer, payee = chooser.sample(MEMBERS, 2)
        amount = chooser.randint(1, 60)
        roll = chooser.random()
        try:
            if roll < 0.45:
                ledger.execute(BANK, CreateTransfer(f"t{n}", payer, payee, amount))
            elif roll < 0.6:
                pairs = [chooser.sample(MEMBERS, 2) for _ in range(chooser.randint(2, 6))]
                group = tuple(
                    CreateTransfer(f"t{n}-{i}", one, other, chooser.randint(1, 9))
                    for i, (one, other) in enumerate(pairs)
                )
                ledger.execute(BANK, CreateTransfers(group))
            elif roll < 0.75:
                ledger.execute(BANK, CreateTransfer(f"t{n}", payer, payee, amount, pending=True))
                open_holds.append(f"t{n}")
            elif roll < 0.9 and open_holds:
                hold = open_holds.pop(chooser.randrange(len(open_holds)))
                if chooser.random() < 0.6:
                    ledger.execute(BANK, PostPending(f"r{n}", hold))
                else:
                    ledger.execute(BANK, VoidPending(f"r{n}", hold))
            else:
                ledger.execute(
                    BANK, ChangeLimits(f"r{n}", payer, lower_limit_minutes=-chooser.randint(0, 400))
                )
        except DomainError:
            pass  # over a limit: refused, nothing recorded


def prefix_balances(
    history: list[apb.HistoryEvent], *, position: int | None = None, time: datetime | None = None
) -> tuple[int, dict[str, int]]:
    """What the verifier recomputes from the stream's events up to the moment."""
    checker = verifier.Verifier(verifier.bank_uuid_of(BANK))
    for event in history:
        if position is not None and event.position > position:
            break
        if time is not None and event.timestamp.ToDatetime().replace(tzinfo=time.tzinfo) > time:
            break
        checker.feed_stored(event.stored, event.chain_hash)
    report = checker.report()
    assert report.ok, report.violations
    return report.position, dict(report.balances)


def answered(audit: apb_grpc.AuditServiceStub, **moment: object) -> tuple[int, dict[str, int]]:
    balances: dict[str, int] = {}
    token = ""
    while True:
        response = audit.GetBalancesAsOf(
            apb.GetBalancesAsOfRequest(bank_id=BANK, page_size=4, page_token=token, **moment)  # type: ignore[arg-type]
        )
        balances |= {b.account_id: b.balance_minutes for b in response.balances}
        token = response.next_page_token
        if not token:
            assert response.account_count == len(balances)
            return response.as_of.position, balances


def test_balances_as_of_any_moment_equal_the_verifiers_from_the_streams_prefix(pki: Pki) -> None:
    clock = Clock()
    with serving(
        pki, clock=clock, with_views=True, projections="off", audit_checkpoint_interval_events=5
    ) as served:
        served.create_bank(BANK)
        random_history(served, clock, seed=3, commands=120)
        # The auditor's key is an event of the bank too: issue it before the views catch up,
        # or the newest position would be one no view has applied.
        auditor_key = served.key(Role.AUDITOR, BANK)
        assert served.projections is not None
        for name in ("audit", "accounts"):
            served.projections.runner(name).run_until_caught_up()
        checkpoints = served.projections.views.query("SELECT COUNT(*) FROM audit_checkpoints")
        assert checkpoints[0][0] >= 10  # the answers below mostly start from a checkpoint
        audit = apb_grpc.AuditServiceStub(served.channel(auditor_key))
        history = [
            event
            for chunk in audit.StreamEvents(apb.StreamEventsRequest(bank_id=BANK))
            for event in chunk.events
        ]
        head = history[-1].position
        first_time = history[0].timestamp.ToDatetime()
        last_time = history[-1].timestamp.ToDatetime()
        span_seconds = (last_time - first_time).total_seconds()

        @settings(max_examples=60, deadline=None, database=None)
        @given(st.integers(1, head))
        def by_position(position: int) -> None:
            assert answered(audit, position=position) == prefix_balances(history, position=position)

        @settings(max_examples=60, deadline=None, database=None)
        @given(st.floats(-60, span_seconds + 60, allow_nan=False))
        def by_time(offset_seconds: float) -> None:
            moment = (first_time + timedelta(seconds=offset_seconds)).replace(tzinfo=clock().tzinfo)
            asked = apb.GetBalancesAsOfRequest().time
            asked.FromDatetime(moment)
            assert answered(audit, time=asked) == prefix_balances(history, time=moment)

        # Events 1 and 2 create the bank and its admin key; 3 to 8 open the members.
        opened = 2 + len(MEMBERS)

        @settings(max_examples=30, deadline=None, database=None)
        @given(st.integers(opened, head), st.sampled_from(MEMBERS))
        def statement(position: int, member: str) -> None:
            response = audit.ListStatementEntriesAsOf(
                apb.ListStatementEntriesAsOfRequest(
                    bank_id=BANK, account_id=member, position=position, page_size=1
                )
            )
            balance = prefix_balances(history, position=position)[1].get(member)
            newest = response.entries[0].balance_minutes if response.entries else 0
            assert response.as_of.position == position
            assert newest == balance
            assert all(entry.position <= position for entry in response.entries)

        by_position()
        by_time()
        statement()

        # One account alone; one that did not exist yet; a position past the head.
        one = audit.GetBalancesAsOf(
            apb.GetBalancesAsOfRequest(bank_id=BANK, position=head, account_id="ann")
        )
        assert [b.account_id for b in one.balances] == ["ann"]
        with pytest.raises(grpc.RpcError) as refused:
            audit.GetBalancesAsOf(
                apb.GetBalancesAsOfRequest(bank_id=BANK, position=2, account_id="ann")
            )
        assert (refusal_of(refused.value).code, refusal_of(refused.value).reason) == (
            grpc.StatusCode.NOT_FOUND,
            "ACCOUNT_NOT_FOUND",
        )
        with pytest.raises(grpc.RpcError) as refused:
            audit.GetBalancesAsOf(apb.GetBalancesAsOfRequest(bank_id=BANK, position=head + 1))
        assert refusal_of(refused.value).reason == "POSITION_NOT_COMMITTED"
        with pytest.raises(grpc.RpcError) as refused:
            audit.GetBalancesAsOf(apb.GetBalancesAsOfRequest(bank_id=BANK))
        assert refusal_of(refused.value).reason == "AS_OF_REQUIRED"
