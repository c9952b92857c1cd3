"""Pools (issue 11) in the domain alone: policies, contributions, pledges, grants and approvals.

Each test is a short story told through MemoryBank (tests/domain_harness.py). After every
refused command we check that nothing changed; after every story the bank is what its stored
events alone rebuild, from event 1 and from a snapshot (`check_pool_bank`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from bank_checks import check_replays, loaded
from domain_harness import START, MemoryBank
from test_history_format import sections

from ledger.domain import canonical, pools
from ledger.domain.commands import (
    ChangePoolPolicy,
    Command,
    CreatePool,
    CreateTransfer,
    DecideGrant,
    IssueApiKey,
    OpenAccount,
    PostPending,
    RequestGrant,
    SetBankPolicy,
    VoidPending,
)
from ledger.domain.errors import DomainError, Forbidden, IdConflict, InvalidInput
from ledger.domain.pool_policy import PoolPolicy
from ledger.domain.records import GrantRecord
from ledger.domain.state import BankState, SnapshotUnreadable
from ledger.verifier import Reason, verify

ADMIN = "key:admin1"
ANA = "key:app1/member:ana"
BEN = "key:app1/member:ben"
CAT = "key:app1/member:cat"


def check_pool_bank(memory: MemoryBank) -> None:
    """Replays, snapshot round trip, the verifier, and each pool's floor and open holds."""
    check_replays(memory)
    snapshot = canonical.encode(memory.state.to_snapshot())
    assert loaded(snapshot, []) == memory.state
    report = verify((e.stored, e.chain_hash) for e in memory.stored)
    assert report.ok, report.violations
    for pool in memory.state.pools.values():
        account = memory.state.accounts[pool.account_id]
        held = sum(g.amount_minutes for g in pool.grants.values())
        assert account.pending_debit_minutes >= held
        for grant_id in pool.grants:
            assert grant_id in memory.state.holds


def refused(memory: MemoryBank, command: Command, now: datetime = START) -> DomainError:
    """Run a command that must be refused; check that it changed nothing."""
    before = memory.snapshot()
    with pytest.raises(DomainError) as caught:
        memory.execute(command, now)
    after = memory.snapshot()
    assert after == before
    return caught.value


def bank_with_pool(policy: PoolPolicy, contributed_minutes: int = 600) -> MemoryBank:
    memory = MemoryBank.created()
    memory.execute(IssueApiKey(key_id="admin1", role="bank-admin", secret_hash="0" * 64))
    for account_id in ("ana", "ben", "cat", "dan"):
        memory.execute(OpenAccount(account_id=account_id, kind="member", lower_limit_minutes=-600))
    memory.execute(OpenAccount(account_id="surgery", kind="organisation", lower_limit_minutes=-600))
    memory.execute(
        CreatePool(
            request_id="p1",
            pool_account_id="pot",
            policy=policy,
            reason="community pot",
            actor=ADMIN,
        )
    )
    if contributed_minutes:
        memory.execute(
            CreateTransfer(
                transfer_id="give-1",
                payer_account_id="surgery",
                payee_account_id="pot",
                amount_minutes=contributed_minutes,
            )
        )
    return memory


def grant(memory: MemoryBank, grant_id: str, member: str, minutes: int, **kw: Any) -> Any:
    command = RequestGrant(
        grant_id=grant_id,
        pool_account_id="pot",
        member_account_id=member,
        amount_minutes=minutes,
        actor=kw.pop("actor", f"key:app1/member:{member}"),
    )
    now = kw.pop("now", START)
    return memory.execute(command, now)


def decide(grant_id: str, decision: str, actor: str, request_id: str, **kw: Any) -> DecideGrant:
    return DecideGrant(
        request_id=request_id,
        pool_account_id="pot",
        grant_id=grant_id,
        decision=decision,
        actor=actor,
        **kw,
    )


TWO_OF_THREE = PoolPolicy(
    cap_minutes=240,
    approvers=("member:ben", "member:cat", f"key:{ADMIN.removeprefix('key:')}"),
    approvals_required=2,
    request_expiry_seconds=3600,
)


def test_a_pool_is_an_account_with_a_policy_recorded_with_actor_and_reason() -> None:
    memory = bank_with_pool(PoolPolicy(cap_minutes=120), contributed_minutes=0)
    pool = memory.state.pools["pot"]
    assert memory.state.accounts["pot"].kind == "pool"
    assert pool.policy.cap_minutes == 120
    (event,) = [e for e in memory.stored if e.type == "PoolPolicySet"]
    fields = canonical.decode(event.stored)["fields"]
    assert (fields["actor"], fields["reason"], fields["action"]) == (
        ADMIN,
        "community pot",
        "create",
    )
    # A retry of the same request answers the same; other content under its id is refused.
    again = CreatePool(
        request_id="p1",
        pool_account_id="pot",
        policy=PoolPolicy(cap_minutes=120),
        reason="community pot",
    )
    assert memory.execute(again).policy.cap_minutes == 120
    other = CreatePool(request_id="p1", pool_account_id="pot", policy=PoolPolicy(cap_minutes=60))
    assert refused(memory, other).reason == "EXISTS_WITH_DIFFERENT_POLICY"
    # A pool opens a new account: an existing id is refused.
    taken = CreatePool(request_id="p2", pool_account_id="ana", policy=PoolPolicy())
    assert refused(memory, taken).reason == "ACCOUNT_ALREADY_EXISTS"
    # Policies name only accounts and keys that exist.
    ghost = PoolPolicy(approvers=("member:ghost",), approvals_required=1)
    change = ChangePoolPolicy(request_id="p3", pool_account_id="pot", policy=ghost)
    assert refused(memory, change).reason == "ACCOUNT_NOT_FOUND"
    no_key = PoolPolicy(approvers=("key:nokey",), approvals_required=1)
    change = ChangePoolPolicy(request_id="p3", pool_account_id="pot", policy=no_key)
    assert refused(memory, change).reason == "API_KEY_NOT_FOUND"
    check_pool_bank(memory)


def test_policies_are_checked_before_anything_is_read() -> None:
    bad = [
        PoolPolicy(contributors="some"),
        PoolPolicy(cap_minutes=-1),
        PoolPolicy(cap_period="rolling_days"),
        PoolPolicy(cap_period="calendar_week", cap_period_days=7),
        PoolPolicy(cap_period="rolling_days", cap_period_days=93),
        PoolPolicy(approvers=("ana",), approvals_required=1),
        PoolPolicy(approvers=("member:ana",), approvals_required=2),
        PoolPolicy(approvers=("member:ana", "member:ana"), approvals_required=1),
        PoolPolicy(drawers="listed", drawer_account_ids=("a", "a")),
        PoolPolicy(request_expiry_seconds=-1),
    ]
    for policy in bad:
        with pytest.raises(InvalidInput) as caught:
            policy.validate()
        assert caught.value.reason == "INVALID_POOL_POLICY", policy
    with pytest.raises(InvalidInput) as caught:
        PoolPolicy(time_zone="Mars/Olympus").validate()
    assert caught.value.reason == "INVALID_TIME_ZONE"
    PoolPolicy(time_zone="Europe/London", cap_period="calendar_week").validate()


def test_contributions_come_from_allowed_contributors_and_grants_are_the_only_way_out() -> None:
    policy = PoolPolicy(contributors="listed", contributor_account_ids=("surgery", "ana"))
    memory = bank_with_pool(policy)
    # Ana may give, also as a pledge (a pending transfer into the pool).
    memory.execute(
        CreateTransfer(
            transfer_id="pledge-1",
            payer_account_id="ana",
            payee_account_id="pot",
            amount_minutes=60,
            pending=True,
        )
    )
    assert memory.state.accounts["pot"].pending_credit_minutes == 60
    memory.execute(PostPending(request_id="post-pledge", transfer_id="pledge-1"))
    assert memory.state.accounts["pot"].balance_minutes == 660
    # Ben is not a contributor.
    gift = CreateTransfer(
        transfer_id="give-2", payer_account_id="ben", payee_account_id="pot", amount_minutes=5
    )
    assert refused(memory, gift).reason == "CONTRIBUTOR_NOT_ALLOWED"
    # Minutes do not leave the pool by an ordinary transfer.
    out = CreateTransfer(
        transfer_id="out-1", payer_account_id="pot", payee_account_id="ben", amount_minutes=5
    )
    assert refused(memory, out).reason == "POOL_GRANT_REQUIRED"
    check_pool_bank(memory)


def test_automatic_grants_within_the_cap_and_the_floor() -> None:
    # k = 0: grants within the cap post at once.
    policy = PoolPolicy(cap_minutes=120, floor_minutes=300)
    memory = bank_with_pool(policy)
    result = grant(memory, "g1", "ana", 90)
    assert isinstance(result, GrantRecord)
    assert result.state == "posted"
    assert memory.state.accounts["ana"].balance_minutes == 90
    # Ana's cap this month has 30 minutes left.
    error = refused(memory, RequestGrant("g2", "pot", "ana", 31, actor=ANA))
    assert error.reason == "EXCEEDS_MEMBER_CAP"
    assert error.metadata["available_minutes"] == "30"
    grant(memory, "g2", "ana", 30)
    # Next month the cap is fresh.
    next_month = START + timedelta(days=31)
    grant(memory, "g3", "ana", 120, now=next_month)
    # Ben, then cat: the pool (600 - 240 = 360) may not go below its floor of 300.
    grant(memory, "g4", "ben", 60, now=next_month)
    error = refused(memory, RequestGrant("g5", "pot", "cat", 1, actor=CAT), next_month)
    assert error.reason == "EXCEEDS_POOL_FLOOR"
    # Only members draw by default: an organisation does not.
    error = refused(memory, RequestGrant("g6", "pot", "surgery", 1, actor=ADMIN), next_month)
    assert error.reason == "DRAWER_NOT_ALLOWED"
    check_pool_bank(memory)


def test_rolling_and_weekly_caps_in_the_pool_time_zone() -> None:
    rolling = PoolPolicy(cap_minutes=60, cap_period="rolling_days", cap_period_days=7)
    memory = bank_with_pool(rolling)
    grant(memory, "g1", "ana", 60)
    assert refused(memory, RequestGrant("g2", "pot", "ana", 1), START + timedelta(days=6))
    grant(memory, "g2", "ana", 60, now=START + timedelta(days=7))
    # A week in Auckland: Sunday 23:30 UTC is already Monday there, a new week.
    weekly = PoolPolicy(cap_minutes=60, cap_period="calendar_week", time_zone="Pacific/Auckland")
    memory = bank_with_pool(weekly)
    saturday = datetime(2025, 3, 1, 9, 0, tzinfo=START.tzinfo)  # Saturday 22:00 in Auckland
    grant(memory, "g1", "ana", 60, now=saturday)
    error = refused(memory, RequestGrant("g2", "pot", "ana", 1), saturday + timedelta(hours=1))
    assert error.reason == "EXCEEDS_MEMBER_CAP"
    monday_there = saturday + timedelta(hours=26)
    grant(memory, "g2", "ana", 60, now=monday_there)
    check_pool_bank(memory)


def test_k_of_n_approvals_post_a_grant_and_reserve_it_meanwhile() -> None:
    memory = bank_with_pool(TWO_OF_THREE)
    pending = grant(memory, "g1", "ana", 200)
    assert pending.state == "pending"
    assert pending.approvers == TWO_OF_THREE.approvers
    # The request holds its minutes against the pool and Ana's cap at once.
    assert memory.state.accounts["pot"].pending_debit_minutes == 200
    error = refused(memory, RequestGrant("g2", "pot", "ana", 41, actor=ANA))
    assert error.reason == "EXCEEDS_MEMBER_CAP"
    # Nobody approves their own request, and an account not in the list is no approver.
    assert isinstance(refused(memory, decide("g1", "approve", ANA, "a0")), Forbidden)
    error = refused(memory, decide("g1", "approve", "key:app1/member:dan", "a0"))
    assert error.reason == "NOT_GRANT_APPROVER"
    # A front-end key alone is not a member approver: the member's token is.
    error = refused(memory, decide("g1", "approve", "key:app1", "a0"))
    assert error.reason == "NOT_GRANT_APPROVER"
    # Ben approves; again (another request id) counts once.
    first = memory.execute(decide("g1", "approve", BEN, "a1"))
    assert first.approvals == ("member:ben",)
    again = memory.execute(decide("g1", "approve", BEN, "a2"))
    assert again.approvals == ("member:ben",)
    assert again.state == "pending"
    # The ordinary PostPending and VoidPending cannot go around the approvals.
    error = refused(memory, PostPending(request_id="x1", transfer_id="g1"))
    assert error.reason == "TRANSFER_IS_GRANT"
    error = refused(memory, VoidPending(request_id="x1", transfer_id="g1"))
    assert error.reason == "TRANSFER_IS_GRANT"
    # Ben cannot turn his approval into a rejection.
    error = refused(memory, decide("g1", "reject", BEN, "a3"))
    assert error.reason == "APPROVER_ALREADY_DECIDED"
    # The admin key is the second approver: the grant posts.
    posted = memory.execute(decide("g1", "approve", ADMIN, "a4"))
    assert posted.state == "posted"
    assert posted.approvals == ("member:ben", "key:admin1")
    assert memory.state.accounts["ana"].balance_minutes == 200
    assert memory.state.pools["pot"].grants == {}
    # A retry of the approval that posted it answers; a new decision is refused.
    assert memory.execute(decide("g1", "approve", ADMIN, "a4")).state == "posted"
    error = refused(memory, decide("g1", "approve", CAT, "a5"))
    assert error.reason == "GRANT_NOT_OPEN"
    error = refused(memory, decide("g1", "reject", ADMIN, "a4"))
    assert isinstance(error, IdConflict)
    # The 200 granted still count against Ana's cap of 240.
    assert refused(memory, RequestGrant("g2", "pot", "ana", 41, actor=ANA))
    check_pool_bank(memory)


def test_rejections_void_once_k_approvals_cannot_be_reached() -> None:
    # n = 3, k = 2: the second rejection (n - k + 1) voids; the first does not.
    memory = bank_with_pool(TWO_OF_THREE)
    grant(memory, "g1", "ana", 200)
    after_one = memory.execute(decide("g1", "reject", BEN, "r1", reason="too much"))
    assert (after_one.state, after_one.rejections) == ("pending", ("member:ben",))
    voided = memory.execute(decide("g1", "reject", CAT, "r2", reason="agree"))
    assert voided.state == "voided"
    assert memory.state.accounts["pot"].pending_debit_minutes == 0
    # The reservation went back: Ana may ask for her full cap again.
    grant(memory, "g2", "ana", 240)
    check_pool_bank(memory)


def test_cancellation_and_expiry_give_the_minutes_back() -> None:
    memory = bank_with_pool(TWO_OF_THREE)
    grant(memory, "g1", "ana", 100)
    # Only the requester, the member or an admin cancels.
    error = refused(memory, decide("g1", "cancel", BEN, "c1"))
    assert error.reason == "NOT_GRANT_REQUESTER"
    cancelled = memory.execute(decide("g1", "cancel", ANA, "c1", reason="not needed"))
    assert cancelled.state == "voided"
    # An admin asks on Ben's behalf; nobody decides it within the hour: it expires.
    grant(memory, "g2", "ben", 240, actor=ADMIN)
    # The admin asked for it, so the admin key may not approve it.
    assert refused(memory, decide("g2", "approve", ADMIN, "a1")).reason == "OWN_GRANT_REQUEST"
    memory.expire(START + timedelta(hours=1))
    assert memory.transfers["g2"].status == "expired"
    assert memory.state.pools["pot"].grants == {}
    assert memory.state.pools["pot"].usage == {}
    error = refused(memory, decide("g2", "approve", CAT, "a2"), START + timedelta(hours=2))
    assert error.reason == "GRANT_NOT_OPEN"
    check_pool_bank(memory)


def test_requests_in_one_batch_cannot_jointly_pass_the_cap_or_the_floor() -> None:
    memory = bank_with_pool(PoolPolicy(cap_minutes=100, floor_minutes=0), contributed_minutes=150)
    results = memory.run(
        [
            RequestGrant("g1", "pot", "ana", 60, actor=ANA),
            RequestGrant("g2", "pot", "ana", 60, actor=ANA),  # past Ana's cap with g1
            RequestGrant("g3", "pot", "ben", 80, actor=BEN),
            RequestGrant("g4", "pot", "cat", 20, actor=CAT),  # past the floor with g1, g3
        ],
        START,
    )
    assert [getattr(r, "reason", getattr(r, "state", None)) for r in results] == [
        "posted",
        "EXCEEDS_MEMBER_CAP",
        "posted",
        "EXCEEDS_POOL_FLOOR",
    ]
    assert memory.state.accounts["pot"].balance_minutes == 10
    check_pool_bank(memory)


def test_snapshots_keep_the_pool_counters() -> None:
    memory = bank_with_pool(TWO_OF_THREE)
    grant(memory, "g1", "ana", 100)
    memory.execute(decide("g1", "approve", BEN, "a1"))
    state = BankState.from_snapshot(canonical.decode(canonical.encode(memory.state.to_snapshot())))
    assert state.pools == memory.state.pools
    assert state.pools["pot"].grants["g1"].approvals == ("member:ben",)
    assert state.pools["pot"].usage == {"ana": {"2025-03-01": 100}}
    check_pool_bank(memory)


def test_a_snapshot_from_before_pools_is_not_read_the_history_is_replayed() -> None:
    memory = bank_with_pool(TWO_OF_THREE)
    old = memory.state.to_snapshot()
    # Format 2 had no pools: this code refuses it (the loader then replays the history).
    del old["pools"]
    old["format"] = 2
    with pytest.raises(SnapshotUnreadable):
        BankState.from_snapshot(old)
    assert memory.replayed() == memory.state


def test_the_verifier_catches_a_ledger_that_forgot_the_cap_or_the_floor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A ledger whose pool rules were dropped (as a bug would) records grants past both...
    monkeypatch.setattr(pools, "_check_cap", lambda *args: None)
    monkeypatch.setattr(pools, "_check_floor", lambda *args: None)
    memory = bank_with_pool(PoolPolicy(cap_minutes=60, floor_minutes=560))
    grant(memory, "g1", "ana", 50)
    grant(memory, "g2", "ana", 50)
    # ...and the verifier, from the stored events alone, says where.
    report = verify((e.stored, e.chain_hash) for e in memory.stored)
    found = [(v.reason, v.version) for v in report.violations]
    versions = [e.version for e in memory.stored if e.type == "GrantsRequested"]
    assert found == [
        (Reason.POOL_FLOOR_BROKEN, versions[0]),
        (Reason.POOL_FLOOR_BROKEN, versions[1]),
        (Reason.POOL_CAP_EXCEEDED, versions[1]),
    ]


def test_a_member_approver_does_not_decide_a_grant_that_pays_them() -> None:
    # Ben is an approver and a member: a request for Ben is not his to decide, even when
    # the front-end asked for it on his behalf.
    policy = PoolPolicy(approvers=("member:ben", "member:cat"), approvals_required=1)
    memory = bank_with_pool(policy)
    grant(memory, "g1", "ben", 30, actor="key:app1")
    error = refused(memory, decide("g1", "approve", BEN, "a1"))
    assert (type(error), error.reason) == (Forbidden, "OWN_GRANT_REQUEST")
    # Cat may; one approval of one needed: it posts.
    assert memory.execute(decide("g1", "approve", CAT, "a1")).state == "posted"
    check_pool_bank(memory)


def test_with_member_consent_on_a_front_end_draws_for_a_member_only_with_their_token() -> None:
    memory = bank_with_pool(PoolPolicy(cap_minutes=120))
    memory.execute(SetBankPolicy(request_id="consent", member_tokens_required=True))
    # The front-end key alone (stolen, say) draws nothing for Ana.
    alone = RequestGrant("g1", "pot", "ana", 30, actor="key:app1", via_front_end=True)
    error = refused(memory, alone)
    assert (error.reason, error.metadata["account_id"]) == ("MEMBER_TOKEN_REQUIRED", "ana")
    # Nor with Ben's token.
    bens = RequestGrant("g1", "pot", "ana", 30, actor=BEN, via_front_end=True, member_subject="ben")
    assert refused(memory, bens).reason == "MEMBER_TOKEN_REQUIRED"
    # With Ana's, or through a coordinator's key, it does.
    anas = RequestGrant("g1", "pot", "ana", 30, actor=ANA, via_front_end=True, member_subject="ana")
    assert memory.execute(anas).state == "posted"
    assert memory.execute(RequestGrant("g2", "pot", "ben", 30, actor=ADMIN)).state == "posted"
    check_pool_bank(memory)


def test_a_batch_of_grants_and_gifts_is_two_stored_events_whatever_its_size() -> None:
    memory = bank_with_pool(TWO_OF_THREE, contributed_minutes=150)
    stored_before = len(memory.stored)
    commands: list[Command] = []
    for n in range(10):
        member = ("ana", "dan")[n % 2]
        commands.append(RequestGrant(f"g{n}", "pot", member, 10, actor=f"key:app1/member:{member}"))
        commands.append(CreateTransfer(f"gift-{n}", "surgery", "pot", 5))
    results = memory.run(commands, START)
    assert not [r for r in results if isinstance(r, DomainError)]

    # The transfers in arrival order in one event, the requests in one event after it.
    new = memory.stored[stored_before:]
    assert [e.type for e in new] == ["TransfersCreated", "GrantsRequested"]
    transfers = canonical.decode(new[0].stored)["fields"]["transfers"]
    arrival = [i for n in range(10) for i in (f"g{n}", f"gift-{n}")]
    assert [t["transfer_id"] for t in transfers] == arrival
    requests = canonical.decode(new[1].stored)["fields"]["grants"]
    assert [r["grant_id"] for r in requests] == [f"g{n}" for n in range(10)]
    assert sorted(sections()["Each request in `grants`"]) == sorted(requests[0])

    # Each open request keeps its own transfer's number, replayed or live.
    numbers = {t.transfer_id: t.number for t in memory.transfers.values()}
    assert {g.grant_id: g.number for g in memory.state.pools["pot"].grants.values()} == {
        f"g{n}": numbers[f"g{n}"] for n in range(10)
    }
    # Replayed from the two events, the verifier, snapshots: all as live.
    check_pool_bank(memory)
    # An approval later posts its grant, and the verifier still follows.
    memory.execute(decide("g3", "approve", BEN, "a1"))
    memory.execute(decide("g3", "approve", CAT, "a2"))
    assert memory.state.accounts["dan"].balance_minutes == 10
    check_pool_bank(memory)
