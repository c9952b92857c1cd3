"""Tenant isolation, end to end: every RPC of every service, with every kind of credential.

One real server (TLS, keys in its store, the views on) holds two banks, riverside and
hillside. Each RPC that the generated code declares (health and reflection aside, they are
public) is called with a minimal request naming riverside, once per credential: none, a
revoked key, an expired key, each role of hillside, each role of riverside, the operator.
What each call must answer comes from the policy table, not from this file: a refusal is
UNAUTHENTICATED or PERMISSION_DENIED with the reason the table implies, and changes
nothing; an admitted call gets past the edge, whatever the servicer then makes of the
minimal request. A new RPC is covered as soon as its code is generated.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from certs import Pki
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from security_e2e import (
    Refusal,
    bank_id,
    call_timeout_seconds,
    head,
    key_id_of,
    other_bank_id,
    refusal_of,
)
from served import Served, serving

from ledger.domain.commands import IssueApiKey
from ledger.security import policy
from ledger.security.api_keys import hash_secret, key_id_bytes, secret_bytes, token_prefix
from ledger.security.errors import Reason
from ledger.security.policy import Scope
from ledger.security.roles import Role
from timebank.ledger.v1 import access_pb2, access_pb2_grpc
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc

# A bank no one created: a key of another bank must not tell it from one that exists.
missing_bank_id = "nowhere"
bank_roles = (Role.BANK_ADMIN, Role.MEMBER_APP, Role.AUDITOR, Role.FEDERATION_PEER)
methods = policy.service_method_descriptors()
# Reasons only the edge gives: an admitted call never ends with one of them.
edge_reasons = frozenset(reason.value for reason in Reason) - {
    Reason.READS_WAITING_MAX_REACHED.value  # the read side's, not the edge's
}


@dataclass(frozen=True)
class Credential:
    """A way of calling: a key (or none), its role and bank, or why it cannot authenticate."""

    name: str
    token: str | None
    role: Role | None = None
    key_bank_id: str = ""
    # Set for keys that never get as far as their role: missing, revoked, expired.
    unauthenticated: Reason | None = None


Outcome = tuple[grpc.StatusCode, Reason] | None  # None: admitted


def expected(method: str, credential: Credential, target_bank_id: str) -> Outcome:
    """What the policy table says a call of `method` naming `target_bank_id` must get."""
    rule = policy.rule_for(method)
    if rule is None:  # denied by default, before anything else is looked at
        return grpc.StatusCode.PERMISSION_DENIED, Reason.METHOD_NOT_ALLOWED
    assert rule.scope is not Scope.PUBLIC, f"{method} is one of ours, not public"
    if credential.unauthenticated is not None:
        return grpc.StatusCode.UNAUTHENTICATED, credential.unauthenticated
    assert credential.role is not None
    if credential.role not in rule.roles:
        return grpc.StatusCode.PERMISSION_DENIED, Reason.ROLE_NOT_ALLOWED
    if rule.scope is Scope.DEPLOYMENT or credential.role is Role.OPERATOR:
        # Deployment-wide rules hold operators only; an operator's scope holds every bank.
        return None
    if credential.key_bank_id != target_bank_id:
        return grpc.StatusCode.PERMISSION_DENIED, Reason.BANK_OUT_OF_SCOPE
    return None


@dataclass
class World:
    served: Served
    credentials: list[Credential]
    channels: dict[str, grpc.Channel]


def expired_key(served: Served, bank: str) -> str:
    """A bank-admin key that expired an hour ago, recorded as an admin would issue it."""
    key_id = _base32(key_id_bytes)
    secret = _base32(secret_bytes)
    served.ledger.execute(
        bank,
        IssueApiKey(
            key_id=key_id,
            role=Role.BANK_ADMIN.value,
            secret_hash=hash_secret(key_id, secret),
            label="expired",
            expires_at=datetime.now(UTC) - timedelta(hours=1),
            actor="key:test",
        ),
    )
    return f"{token_prefix}{key_id}_{secret}"


def _base32(length_bytes: int) -> str:
    return base64.b32encode(secrets.token_bytes(length_bytes)).decode().rstrip("=").lower()


@pytest.fixture(scope="module")
def world(pki: Pki) -> Iterator[World]:
    """riverside and hillside, a key of every role of each, and the odd keys."""
    with serving(pki, with_views=True) as served:
        served.create_bank(bank_id)
        served.create_bank(other_bank_id, "Hillside Time Bank")
        # A riverside admin key, revoked by the operator through AccessService.
        revoked = served.key(Role.BANK_ADMIN, bank_id, label="to revoke")
        access = access_pb2_grpc.AccessServiceStub(served.channel(served.operator_token))
        access.RevokeApiKey(
            access_pb2.RevokeApiKeyRequest(
                bank_id=bank_id, key_id=key_id_of(revoked), reason="leaked"
            ),
            timeout=call_timeout_seconds,
        )
        credentials = [
            Credential("no key", None, unauthenticated=Reason.API_KEY_MISSING),
            Credential("revoked key", revoked, unauthenticated=Reason.API_KEY_REVOKED),
            Credential(
                "expired key",
                expired_key(served, bank_id),
                unauthenticated=Reason.API_KEY_EXPIRED,
            ),
            *(
                Credential(f"{bank} {role.value}", served.key(role, bank), role, bank)
                for bank in (other_bank_id, bank_id)
                for role in bank_roles
            ),
            Credential("operator", served.operator_token, Role.OPERATOR),
        ]
        channels = {c.name: served.channel(c.token) for c in credentials}
        yield World(served, credentials, channels)


def call(channel: grpc.Channel, method: str, target_bank_id: str) -> grpc.RpcError | None:
    """Calls `method` with a minimal request naming the bank; the error it ended with, if any."""
    descriptor: MethodDescriptor = methods[method]
    request = message_factory.GetMessageClass(descriptor.input_type)()
    if policy.bank_id_field in descriptor.input_type.fields_by_name:
        setattr(request, policy.bank_id_field, target_bank_id)
    body = request.SerializeToString()
    try:
        if descriptor.client_streaming and descriptor.server_streaming:
            list(
                channel.stream_stream(method, None, None)(
                    iter([body]), timeout=call_timeout_seconds
                )
            )
        elif descriptor.client_streaming:
            channel.stream_unary(method, None, None)(iter([body]), timeout=call_timeout_seconds)
        elif descriptor.server_streaming:
            list(channel.unary_stream(method, None, None)(body, timeout=call_timeout_seconds))
        else:
            channel.unary_unary(method, None, None)(body, timeout=call_timeout_seconds)
    except grpc.RpcError as error:
        return error
    return None


def test_every_rpc_is_in_the_isolation_table() -> None:
    # Our three services are all there (the table below would be empty without them).
    services = {method.split("/")[1] for method in methods}
    assert services >= {
        "timebank.ledger.v1.LedgerService",
        "timebank.ledger.v1.LedgerViewService",
        "timebank.ledger.v1.AccessService",
    }


@pytest.mark.parametrize("method", sorted(methods))
def test_each_credential_gets_what_the_table_says_and_a_refusal_changes_nothing(
    world: World, method: str
) -> None:
    wrong: list[str] = []
    for credential in world.credentials:
        before = head(world.served)
        outcome = expected(method, credential, bank_id)
        error = call(world.channels[credential.name], method, bank_id)
        got = None if error is None else refusal_of(error)
        if outcome is None:
            # Admitted: past the edge. The servicer may well refuse a minimal request, but
            # with a reason of its own, and never by failing.
            if got is not None and (
                got.reason in edge_reasons
                or got.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL)
            ):
                wrong.append(f"{credential.name}: admitted, yet {got.code.name} {got.reason}")
            continue
        if got is None:
            wrong.append(f"{credential.name}: must be {outcome[0].name} {outcome[1]}, got OK")
            continue
        if (got.code, got.reason) != (outcome[0], outcome[1].value):
            wrong.append(f"{credential.name}: must be {outcome}, got {got.code.name} {got.reason}")
        # Refused: the bank is exactly as it was.
        if head(world.served) != before:
            wrong.append(f"{credential.name}: refused, yet riverside's head moved")
    assert wrong == []


def _foreign_bank(credential: Credential) -> str:
    """A bank that exists and is not the credential's own."""
    return other_bank_id if credential.key_bank_id == bank_id else bank_id


@pytest.mark.parametrize("method", sorted(methods))
def test_no_key_tells_a_bank_that_exists_from_one_that_does_not(world: World, method: str) -> None:
    # Every credential but the operator's (whose scope is the deployment) asks about a bank
    # that is not its own: once one that exists, once one that does not.
    heads = {bank: head(world.served, bank) for bank in (bank_id, other_bank_id)}
    for credential in world.credentials:
        if credential.role is Role.OPERATOR:
            continue
        existing = _foreign_bank(credential)
        answers: list[Refusal] = []
        for target in (existing, missing_bank_id):
            error = call(world.channels[credential.name], method, target)
            assert error is not None, f"{credential.name} got an answer about {target}"
            answers.append(refusal_of(error))
        there, not_there = answers
        assert there.code in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
        ), f"{credential.name}: {there}"
        # The same status, message and details, byte for byte.
        assert there == not_there, credential.name
        assert expected(method, credential, existing) == expected(
            method, credential, missing_bank_id
        )
        assert (there.code, there.reason) == _as_pair(expected(method, credential, existing))
    assert {bank: head(world.served, bank) for bank in heads} == heads


def _as_pair(outcome: Outcome) -> tuple[grpc.StatusCode, str]:
    assert outcome is not None
    return outcome[0], outcome[1].value


def test_the_stranger_of_issue_8_gets_nowhere_with_well_formed_requests(pki: Pki) -> None:
    """What a stranger once did to riverside, now with another bank's admin key and with
    riverside's own front-end key (the bank requires members' consent): every step that
    would change riverside is refused, and riverside stays exactly as it was."""
    with serving(pki) as served:
        admin_channel = served.channel(served.create_bank(bank_id))
        riverside = pb_grpc.LedgerServiceStub(admin_channel)
        access_pb2_grpc.AccessServiceStub(admin_channel).SetBankPolicy(
            access_pb2.SetBankPolicyRequest(
                bank_id=bank_id,
                request_id="consent-on",
                policy=access_pb2.BankPolicy(member_tokens_required=True),
            ),
            timeout=call_timeout_seconds,
        )
        for account in ("victim", "mallory"):
            riverside.OpenAccount(
                pb.OpenAccountRequest(
                    bank_id=bank_id,
                    account_id=account,
                    kind=pb.ACCOUNT_KIND_MEMBER,
                    lower_limit_minutes=-600,
                ),
                timeout=call_timeout_seconds,
            )
        riverside.CreateTransfer(
            pb.CreateTransferRequest(
                bank_id=bank_id,
                transfer_id="t-1",
                payer_account_id="mallory",
                payee_account_id="victim",
                amount_minutes=60,
                memo="victim helped mallory",
            ),
            timeout=call_timeout_seconds,
        )
        served.create_bank(other_bank_id, "Hillside Time Bank")
        hillside_admin = served.key(Role.BANK_ADMIN, other_bank_id)
        front_end = served.key(Role.MEMBER_APP, bank_id)
        attacks: list[tuple[str, Any]] = [
            (
                "ChangeAccountLimits",
                pb.ChangeAccountLimitsRequest(
                    bank_id=bank_id,
                    request_id="r-1",
                    account_id="victim",
                    lower_limit_minutes=-1_000_000,
                ),
            ),
            (
                "CreateTransfer",
                pb.CreateTransferRequest(
                    bank_id=bank_id,
                    transfer_id="t-2",
                    payer_account_id="victim",
                    payee_account_id="mallory",
                    amount_minutes=600,
                    memo="mallory helped victim",
                ),
            ),
            ("ReverseTransfer", pb.ReverseTransferRequest(bank_id=bank_id, transfer_id="t-1")),
            (
                "FreezeAccount",
                pb.FreezeAccountRequest(bank_id=bank_id, request_id="r-2", account_id="victim"),
            ),
            (
                "CloseAccount",
                pb.CloseAccountRequest(bank_id=bank_id, request_id="r-3", account_id="victim"),
            ),
            ("GetAccount", pb.GetAccountRequest(bank_id=bank_id, account_id="victim")),
            ("ListAccounts", pb.ListAccountsRequest(bank_id=bank_id)),
            (
                "CreateBank",
                pb.CreateBankRequest(bank_id="spam-bank", name="Spam"),
            ),
        ]
        before = head(served)
        balances = {a: served.ledger.get_account(bank_id, a) for a in ("victim", "mallory")}
        for token in (hillside_admin, front_end):
            channel = served.channel(token)
            for name, request in attacks:
                method = f"/timebank.ledger.v1.LedgerService/{name}"
                holder = _holder(token, hillside_admin, front_end)
                edge = expected(method, holder, bank_id)
                want = None if edge is None else (edge[0], edge[1].value)
                if want is None and name in ("CreateTransfer", "GetAccount"):
                    # Past the edge, the front-end debits no member, and reads no member's
                    # account, without that member's token.
                    want = (grpc.StatusCode.PERMISSION_DENIED, "MEMBER_TOKEN_REQUIRED")
                error = call_with(channel, method, request)
                if want is None:  # the front-end reads its own bank
                    assert error is None, f"{holder.name}: {name}"
                else:
                    assert error is not None, f"{holder.name}: {name} went through"
                    got = refusal_of(error)
                    assert (got.code, got.reason) == want, f"{holder.name}: {name}"
                assert head(served) == before, f"{holder.name}: {name}"
        assert {a: served.ledger.get_account(bank_id, a) for a in balances} == balances


def _holder(token: str, hillside_admin: str, front_end: str) -> Credential:
    if token == hillside_admin:
        return Credential("hillside admin", token, Role.BANK_ADMIN, other_bank_id)
    assert token == front_end
    return Credential("riverside front-end", token, Role.MEMBER_APP, bank_id)


def call_with(channel: grpc.Channel, method: str, request: Any) -> grpc.RpcError | None:
    try:
        channel.unary_unary(method, None, None)(
            request.SerializeToString(), timeout=call_timeout_seconds
        )
    except grpc.RpcError as error:
        return error
    return None
