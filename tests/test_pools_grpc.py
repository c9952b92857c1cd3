"""PoolService end to end (issue 11): a community pot from creation to a posted grant.

A real TLS server with real keys (tests/served.py). Riverside's coordinator creates a pot
whose grants need two of three approvers (Ben and Cat with their own member tokens, and the
coordinator's key); the surgery gives to it with an ordinary transfer; Ana asks for a grant
through the bank's front-end; the approvers approve with their own credentials; the grant
posts. After each refusal the bank's head is as it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
import pytest
from certs import Pki
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from security_e2e import (
    bank_id,
    call_timeout_seconds,
    head,
    key_id_of,
    open_account,
    refused,
    transfer_request,
)
from served import Served, serving

from ledger.application.verification import verify_bank
from ledger.pool_demo import pool_demo
from ledger.service.bootstrap import KeysFile, demo_bank_id, demo_bank_name
from timebank.ledger.v1 import access_pb2 as apb
from timebank.ledger.v1 import access_pb2_grpc as apb_grpc
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc
from timebank.ledger.v1 import pools_pb2 as ppb
from timebank.ledger.v1 import pools_pb2_grpc as ppb_grpc

kid = "riverside-idp"
Metadata = tuple[tuple[str, str], ...]


@dataclass
class Riverside:
    served: Served
    admin: ppb_grpc.PoolServiceStub  # the coordinator's bank-admin key
    admin_key_id: str
    ledger_admin: pb_grpc.LedgerServiceStub
    app: ppb_grpc.PoolServiceStub  # the front-end's member-app key
    idp: ed25519.Ed25519PrivateKey

    def token(self, member: str) -> Metadata:
        """A member's token, signed by the bank's identity provider."""
        claims = {"sub": member, "aud": bank_id, "exp": int(time.time()) + 300}
        return (("x-member-token", jwt.encode(claims, self.idp, "EdDSA", headers={"kid": kid})),)


@pytest.fixture
def riverside(pki: Pki) -> Iterator[Riverside]:
    with serving(pki) as served:
        admin_token = served.create_bank(bank_id)
        admin_channel = served.channel(admin_token)
        ledger_admin = pb_grpc.LedgerServiceStub(admin_channel)
        access = apb_grpc.AccessServiceStub(admin_channel)
        for member in ("ana", "ben", "cat"):
            open_account(ledger_admin, member)
        open_account(ledger_admin, "surgery", pb.ACCOUNT_KIND_ORGANISATION)
        app = access.IssueApiKey(
            apb.IssueApiKeyRequest(bank_id=bank_id, role=apb.ROLE_MEMBER_APP, label="app"),
            timeout=call_timeout_seconds,
        )
        idp = ed25519.Ed25519PrivateKey.generate()
        pem = idp.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        access.RegisterMemberTokenKey(
            apb.RegisterMemberTokenKeyRequest(
                bank_id=bank_id, kid=kid, public_key_pem=pem.decode()
            ),
            timeout=call_timeout_seconds,
        )
        yield Riverside(
            served=served,
            admin=ppb_grpc.PoolServiceStub(admin_channel),
            admin_key_id=key_id_of(admin_token),
            ledger_admin=ledger_admin,
            app=ppb_grpc.PoolServiceStub(served.channel(app.token)),
            idp=idp,
        )


def pot_policy(admin_key_id: str) -> ppb.PoolPolicy:
    return ppb.PoolPolicy(
        contributors=ppb.CONTRIBUTOR_RULE_ANYONE,
        drawers=ppb.DRAWER_RULE_ANY_MEMBER,
        cap_minutes=120,
        cap_period=ppb.CAP_PERIOD_CALENDAR_MONTH,
        time_zone="Europe/London",
        floor_minutes=60,
        approvers=["member:ben", "member:cat", f"key:{admin_key_id}"],
        approvals_required=2,
        request_expiry_seconds=7 * 24 * 3600,
    )


def create_pot(riverside: Riverside) -> ppb.CreatePoolResponse:
    return riverside.admin.CreatePool(
        ppb.CreatePoolRequest(
            bank_id=bank_id,
            request_id="pot-1",
            pool_account_id="garden-pot",
            policy=pot_policy(riverside.admin_key_id),
            reason="community garden pot, agreed at the March meeting",
        ),
        timeout=call_timeout_seconds,
    )


def decide(
    stub: ppb_grpc.PoolServiceStub, how: str, request_id: str, grant_id: str, md: Metadata = ()
) -> ppb.Grant:
    rpc = {"approve": stub.ApproveGrant, "reject": stub.RejectGrant, "cancel": stub.CancelGrant}
    message = {
        "approve": ppb.ApproveGrantRequest,
        "reject": ppb.RejectGrantRequest,
        "cancel": ppb.CancelGrantRequest,
    }[how](bank_id=bank_id, request_id=request_id, pool_account_id="garden-pot", grant_id=grant_id)
    response = rpc[how](message, metadata=md, timeout=call_timeout_seconds)  # type: ignore[operator]
    grant: ppb.Grant = response.grant
    return grant


def test_a_pot_from_creation_to_a_posted_grant(riverside: Riverside) -> None:
    served = riverside.served
    # The coordinator creates the pot; a retry answers the same.
    created = create_pot(riverside)
    assert created.pool.account.kind == pb.ACCOUNT_KIND_POOL
    assert created.pool.policy.approvals_required == 2
    assert create_pot(riverside) == created
    # The surgery gives five hours with an ordinary transfer.
    riverside.ledger_admin.CreateTransfer(
        transfer_request("give-1", "surgery", "garden-pot", 300), timeout=call_timeout_seconds
    )
    # Ana asks for an hour and a half through the front-end, with her token.
    ask_g1 = ppb.RequestGrantRequest(
        bank_id=bank_id,
        grant_id="g-1",
        pool_account_id="garden-pot",
        member_account_id="ana",
        amount_minutes=90,
        memo="seeds and tools",
    )
    asked = riverside.app.RequestGrant(
        ask_g1, metadata=riverside.token("ana"), timeout=call_timeout_seconds
    ).grant
    assert asked.state == ppb.GRANT_STATE_PENDING
    assert asked.requested_by.endswith("/member:ana")
    pool = riverside.admin.GetPool(
        ppb.GetPoolRequest(bank_id=bank_id, pool_account_id="garden-pot"),
        timeout=call_timeout_seconds,
    ).pool
    assert (pool.open_grant_count, pool.open_grant_minutes) == (1, 90)
    assert pool.account.pending_debit_minutes == 90
    before = head(served)
    # Ana is no approver; nor is the front-end key without an approver's token.
    got = refused(decide, riverside.app, "approve", "a-0", "g-1", riverside.token("ana"))
    assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_GRANT_APPROVER")
    got = refused(decide, riverside.app, "approve", "a-0", "g-1")
    assert got.reason == "NOT_GRANT_APPROVER"
    # Ana's cap this month (120) has 30 minutes left: 40 more is refused.
    more = ppb.RequestGrantRequest(
        bank_id=bank_id,
        grant_id="g-2",
        pool_account_id="garden-pot",
        member_account_id="ana",
        amount_minutes=40,
    )
    got = refused(riverside.app.RequestGrant, more, timeout=call_timeout_seconds)
    assert (got.code, got.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "EXCEEDS_MEMBER_CAP")
    assert got.metadata["available_minutes"] == "30"
    # A front-end key sets no policy.
    got = refused(create_pot, Riverside(**{**riverside.__dict__, "admin": riverside.app}))
    assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    assert head(served) == before
    # Ben sees the request waiting for him, and approves it with his own token.
    waiting = riverside.app.ListRequestsAwaitingApprover(
        ppb.ListRequestsAwaitingApproverRequest(bank_id=bank_id, approver="member:ben"),
        timeout=call_timeout_seconds,
    )
    assert [g.grant_id for g in waiting.grants] == ["g-1"]
    approved = decide(riverside.app, "approve", "a-1", "g-1", riverside.token("ben"))
    assert (approved.state, list(approved.approvals)) == (ppb.GRANT_STATE_PENDING, ["member:ben"])
    # A retry of the open request shows his approval and its position.
    open_retry = riverside.app.RequestGrant(
        ask_g1, metadata=riverside.token("ana"), timeout=call_timeout_seconds
    ).grant
    assert (list(open_retry.approvals), open_retry.position) == (
        ["member:ben"],
        approved.position,
    )
    # His second approval counts once.
    again = decide(riverside.app, "approve", "a-2", "g-1", riverside.token("ben"))
    assert list(again.approvals) == ["member:ben"]
    # The coordinator's key is the second approver: the grant posts.
    posted = decide(riverside.admin, "approve", "a-3", "g-1")
    assert posted.state == ppb.GRANT_STATE_POSTED
    assert list(posted.approvals) == ["member:ben", f"key:{riverside.admin_key_id}"]
    # A retry of the request, decided since, is answered as it stands now.
    retried = riverside.app.RequestGrant(
        ask_g1, metadata=riverside.token("ana"), timeout=call_timeout_seconds
    ).grant
    assert (retried.state, list(retried.approvals), retried.position) == (
        ppb.GRANT_STATE_POSTED,
        list(posted.approvals),
        posted.position,
    )
    assert served.ledger.get_account(bank_id, "ana").balance_minutes == 90
    # The pot's list shows it posted; nothing waits for Cat any more.
    listed = riverside.admin.ListGrantRequests(
        ppb.ListGrantRequestsRequest(
            bank_id=bank_id, pool_account_id="garden-pot", state=ppb.GRANT_STATE_POSTED
        ),
        timeout=call_timeout_seconds,
    )
    assert [(g.grant_id, list(g.approvals)) for g in listed.grants] == [
        ("g-1", list(posted.approvals))
    ]
    waiting = riverside.app.ListRequestsAwaitingApprover(
        ppb.ListRequestsAwaitingApproverRequest(bank_id=bank_id, approver="member:cat"),
        timeout=call_timeout_seconds,
    )
    assert list(waiting.grants) == []
    pool = riverside.admin.GetPool(
        ppb.GetPoolRequest(bank_id=bank_id, pool_account_id="garden-pot"),
        timeout=call_timeout_seconds,
    ).pool
    assert (pool.account.balance_minutes, pool.open_grant_count) == (210, 0)
    # The history verifies from its first event.
    assert verify_bank(served.ledger.store, bank_id).ok


def test_rejections_cancellations_lists_and_bad_input(riverside: Riverside) -> None:
    create_pot(riverside)
    riverside.ledger_admin.CreateTransfer(
        transfer_request("give-1", "surgery", "garden-pot", 600), timeout=call_timeout_seconds
    )
    # The coordinator asks for three grants on members' behalf.
    for number, member in enumerate(("ana", "ben", "cat"), start=1):
        riverside.admin.RequestGrant(
            ppb.RequestGrantRequest(
                bank_id=bank_id,
                grant_id=f"g-{number}",
                pool_account_id="garden-pot",
                member_account_id=member,
                amount_minutes=30,
            ),
            timeout=call_timeout_seconds,
        )
    # Ben and Cat reject Ana's (n - k + 1 = 2 rejections void it); Ben cancels his own.
    decide(riverside.app, "reject", "r-1", "g-1", riverside.token("ben"))
    voided = decide(riverside.app, "reject", "r-2", "g-1", riverside.token("cat"))
    assert voided.state == ppb.GRANT_STATE_VOIDED
    cancelled = decide(riverside.app, "cancel", "c-1", "g-2", riverside.token("ben"))
    assert cancelled.state == ppb.GRANT_STATE_VOIDED
    # The coordinator asked for Cat's, so the coordinator's key may not approve it.
    got = refused(decide, riverside.admin, "approve", "a-1", "g-3")
    assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "OWN_GRANT_REQUEST")
    # The pot's requests, a page of one at a time.
    seen, token = [], ""
    while True:
        page = riverside.admin.ListGrantRequests(
            ppb.ListGrantRequestsRequest(
                bank_id=bank_id, pool_account_id="garden-pot", page_size=1, page_token=token
            ),
            timeout=call_timeout_seconds,
        )
        seen += [(g.grant_id, g.state) for g in page.grants]
        token = page.next_page_token
        if not token:
            break
    assert seen == [
        ("g-1", ppb.GRANT_STATE_VOIDED),
        ("g-2", ppb.GRANT_STATE_VOIDED),
        ("g-3", ppb.GRANT_STATE_PENDING),
    ]
    # Bad input: a clear reason, nothing changed.
    before = head(riverside.served)
    bad = pot_policy(riverside.admin_key_id)
    bad.approvals_required = 4
    got = refused(
        riverside.admin.ChangePoolPolicy,
        ppb.ChangePoolPolicyRequest(
            bank_id=bank_id, request_id="p-2", pool_account_id="garden-pot", policy=bad
        ),
        timeout=call_timeout_seconds,
    )
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_POOL_POLICY")
    got = refused(
        riverside.admin.GetPool,
        ppb.GetPoolRequest(bank_id=bank_id, pool_account_id="ana"),
        timeout=call_timeout_seconds,
    )
    assert (got.code, got.reason) == (grpc.StatusCode.NOT_FOUND, "POOL_NOT_FOUND")
    got = refused(
        riverside.app.ListRequestsAwaitingApprover,
        ppb.ListRequestsAwaitingApproverRequest(bank_id=bank_id, approver="ben"),
        timeout=call_timeout_seconds,
    )
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_APPROVER")
    # Minutes leave the pot only as grants.
    got = refused(
        riverside.ledger_admin.CreateTransfer,
        transfer_request("out-1", "garden-pot", "ana", 10),
        timeout=call_timeout_seconds,
    )
    assert (got.code, got.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "POOL_GRANT_REQUIRED")
    assert head(riverside.served) == before
    assert verify_bank(riverside.served.ledger.store, bank_id).ok


def test_the_pool_demo_walks_a_pot_to_a_posted_grant(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serving(pki, with_views=True) as served:
        # The keys `serve` writes at its first start, as `demo` uses them.
        keys = tmp_path / "timebank-ledger.keys.json"
        admin = served.create_bank(demo_bank_id, demo_bank_name)
        KeysFile(served.operator_token, {demo_bank_id: admin}).write(keys)
        assert pool_demo(served.address, keys, served.pki.ca_path) == 0
        first = capsys.readouterr().out
        assert "awaiting the coordinator: ['demo-pot-grant-ana-seeds']" in first
        assert f"approved by ['key:{key_id_of(admin)}']: posted" in first
        assert "Pool balance 4h 30m, 0 requests open" in first
        # The budget: the grant was drawn from the surgery's and Ben's gifts 5:1.
        assert "  contributed 6h 00m, granted 1h 30m, remaining 4h 30m\n" in first
        assert "  surgery gave 5h 00m: used 1h 15m, left 3h 45m\n" in first
        assert "  ben gave 1h 00m: used 0h 15m, left 0h 45m\n" in first
        assert served.ledger.get_account(demo_bank_id, "ana").balance_minutes == 90
        # Again: the same ids, nothing new about the pot; the grant answers as it was posted.
        assert pool_demo(served.address, keys, served.pki.ca_path) == 0
        again = capsys.readouterr().out
        assert again == first.replace("['demo-pot-grant-ana-seeds']", "[]")
        assert served.ledger.get_account(demo_bank_id, "ana").balance_minutes == 90
        assert verify_bank(served.ledger.store, demo_bank_id).ok
