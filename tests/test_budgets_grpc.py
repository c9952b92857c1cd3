"""PoolService.GetPoolBudget end to end: a pooled personal budget read over real TLS gRPC.

A real server (tests/served.py) with its projections following the log, on the in-memory,
SQLite and PostgreSQL stores. Ana and Ben pool part of their balance into a pot; Dan is
granted from it at once (no approvals); the budget read with the grant's position shows
it, with each contributor's share. The bank's admin, its front-end and its auditor read
the same budget; bad months, a negative position, an unknown pool, the operator and
another bank's key are refused with their reasons; a server without views says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from certs import Pki
from conftest import Clock
from security_e2e import (
    bank_id,
    call_timeout_seconds,
    other_bank_id,
    refused,
    transfer_request,
)
from served import Served, serving

from ledger.security.roles import Role
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc
from timebank.ledger.v1 import pools_pb2 as ppb
from timebank.ledger.v1 import pools_pb2_grpc as ppb_grpc

read_wait_seconds = 5.0


@dataclass
class Pooled:
    served: Served
    ledger: pb_grpc.LedgerServiceStub  # the bank admin's
    pools: ppb_grpc.PoolServiceStub  # the bank admin's
    position: int  # of the grant


def open_member(ledger: pb_grpc.LedgerServiceStub, account_id: str) -> None:
    ledger.OpenAccount(
        pb.OpenAccountRequest(
            bank_id=bank_id,
            account_id=account_id,
            kind=pb.ACCOUNT_KIND_MEMBER,
            lower_limit_minutes=-600,
        ),
        timeout=call_timeout_seconds,
    )


@pytest.fixture
def pooled(store_url: str, clock: Clock, pki: Pki) -> Iterator[Pooled]:
    with serving(
        pki,
        clock=clock,
        with_views=True,
        database_url=store_url,
        read_wait_seconds=read_wait_seconds,
    ) as served:
        admin = served.channel(served.create_bank(bank_id))
        ledger = pb_grpc.LedgerServiceStub(admin)
        pools = ppb_grpc.PoolServiceStub(admin)
        for member in ("ana", "ben", "dan"):
            open_member(ledger, member)
        # A pot paid out at once (no approvers), with a cap of two hours a month.
        pools.CreatePool(
            ppb.CreatePoolRequest(
                bank_id=bank_id,
                request_id="pot-1",
                pool_account_id="pot",
                policy=ppb.PoolPolicy(
                    contributors=ppb.CONTRIBUTOR_RULE_ANYONE,
                    drawers=ppb.DRAWER_RULE_ANY_MEMBER,
                    cap_minutes=120,
                    cap_period=ppb.CAP_PERIOD_CALENDAR_MONTH,
                    time_zone="Europe/London",
                ),
                reason="ana and ben pool part of their balance",
            ),
            timeout=call_timeout_seconds,
        )
        # Ana gives an hour and forty minutes, Ben twice that; Dan is granted an hour and a
        # half, drawn from them 1:2.
        for transfer_id, member, minutes in (("give-ana", "ana", 100), ("give-ben", "ben", 200)):
            ledger.CreateTransfer(
                transfer_request(transfer_id, member, "pot", minutes),
                timeout=call_timeout_seconds,
            )
        granted = pools.RequestGrant(
            ppb.RequestGrantRequest(
                bank_id=bank_id,
                grant_id="g-1",
                pool_account_id="pot",
                member_account_id="dan",
                amount_minutes=90,
            ),
            timeout=call_timeout_seconds,
        )
        assert granted.grant.state == ppb.GRANT_STATE_POSTED
        yield Pooled(served, ledger, pools, granted.position)


def budget_request(**fields: object) -> ppb.GetPoolBudgetRequest:
    values: dict[str, object] = {
        "bank_id": bank_id,
        "pool_account_id": "pot",
        "from_month": "2025-02",
        "to_month": "2025-03",
    }
    values.update(fields)
    return ppb.GetPoolBudgetRequest(**values)  # type: ignore[arg-type]


def test_a_pooled_budget_read_with_its_writes_position(pooled: Pooled) -> None:
    # Read with the grant's position: the view has applied it, whatever its lag.
    response = pooled.pools.GetPoolBudget(
        budget_request(min_position=pooled.position), timeout=call_timeout_seconds
    )
    assert response.position >= pooled.position
    budget = response.budget
    assert (budget.pool_account_id, budget.time_zone, budget.as_of_day) == (
        "pot",
        "Europe/London",
        "2025-03-01",
    )
    assert (budget.contributed_minutes, budget.granted_minutes) == (300, 90)
    assert (budget.balance_minutes, budget.remaining_minutes) == (210, 210)
    assert (budget.pledged_minutes, budget.committed_minutes) == (0, 0)
    # Nothing was granted in December to February: no runway to speak of.
    assert not budget.HasField("runway_months")
    assert budget.recent_granted_minutes == 0
    assert [(m.month, m.contributed_minutes, m.granted_minutes) for m in budget.months] == [
        ("2025-02", 0, 0),
        ("2025-03", 300, 90),
    ]
    # Dan's cap this month: 90 used, 30 left.
    assert budget.cap_minutes == 120
    assert budget.cap_period == ppb.CAP_PERIOD_CALENDAR_MONTH
    assert budget.cap_period_first_day == "2025-03-01"
    assert [(u.member_account_id, u.used_minutes, u.cap_left_minutes) for u in budget.members] == [
        ("dan", 90, 30)
    ]
    # Each contributor's share: what they gave, what the grant used of it, what is left.
    assert [
        (s.contributor_account_id, s.contributed_minutes, s.used_minutes, s.left_minutes)
        for s in budget.contributors
    ] == [("ben", 200, 60, 140), ("ana", 100, 30, 70)]
    assert (budget.members_total, budget.contributors_total) == (1, 2)

    # The front-end and the auditor read the same budget (their keys' events move the
    # bank's position on, not the pot's figures).
    served = pooled.served
    for role in (Role.MEMBER_APP, Role.AUDITOR):
        stub = ppb_grpc.PoolServiceStub(served.channel(served.key(role, bank_id)))
        read = stub.GetPoolBudget(budget_request(), timeout=call_timeout_seconds)
        assert read.budget == budget


def test_bad_input_unknown_pools_and_other_callers_are_refused(pooled: Pooled) -> None:
    pools = pooled.pools
    # Months as GetBankReport's: the field named, nothing read.
    for fields, reason in (
        ({"from_month": "2025-13"}, "INVALID_MONTH"),
        ({"to_month": ""}, "INVALID_MONTH"),
        ({"from_month": "2025-04"}, "INVALID_MONTH_RANGE"),
        ({"from_month": "2015-01"}, "MONTH_RANGE_TOO_LARGE"),
        ({"pool_account_id": "no spaces"}, "INVALID_ID"),
        ({"min_position": -1}, "INVALID_MIN_POSITION"),
    ):
        got = refused(pools.GetPoolBudget, budget_request(**fields), timeout=call_timeout_seconds)
        assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), fields
    # A pool the bank does not have, and an account that is no pool.
    for account_id in ("nowhere", "ana"):
        got = refused(
            pools.GetPoolBudget,
            budget_request(pool_account_id=account_id),
            timeout=call_timeout_seconds,
        )
        assert (got.code, got.reason) == (grpc.StatusCode.NOT_FOUND, "POOL_NOT_FOUND")
    # A position the bank has not reached yet.
    got = refused(
        pools.GetPoolBudget,
        budget_request(min_position=pooled.position + 1_000),
        timeout=call_timeout_seconds,
    )
    assert (got.code, got.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "POSITION_NOT_COMMITTED")
    # The operator reads no bank's data; another bank's admin not this one's.
    served = pooled.served
    operator = ppb_grpc.PoolServiceStub(served.channel(served.operator_token))
    got = refused(operator.GetPoolBudget, budget_request(), timeout=call_timeout_seconds)
    assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    other = served.create_bank(other_bank_id, "Hillside")
    stranger = ppb_grpc.PoolServiceStub(served.channel(other))
    got = refused(stranger.GetPoolBudget, budget_request(), timeout=call_timeout_seconds)
    assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "BANK_OUT_OF_SCOPE")


def test_a_server_without_views_says_it_serves_no_budgets(pki: Pki) -> None:
    with serving(pki) as served:
        pools = ppb_grpc.PoolServiceStub(served.channel(served.create_bank(bank_id)))
        got = refused(pools.GetPoolBudget, budget_request(), timeout=call_timeout_seconds)
        assert (got.code, got.reason) == (grpc.StatusCode.UNAVAILABLE, "VIEWS_NOT_SERVED")
        # Bad input is still bad input.
        got = refused(
            pools.GetPoolBudget, budget_request(to_month="2025"), timeout=call_timeout_seconds
        )
        assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MONTH")
