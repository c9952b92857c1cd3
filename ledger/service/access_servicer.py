"""AccessService over gRPC: a bank's API keys, member-token keys and consent policy.

Who may call which RPC is the policy table's (ledger/security/policy.py); what this adds
is which roles a caller may hand out: an operator issues and revokes bank-admin keys, a
bank admin its bank's member-app and auditor keys. A key's token is made here, shown in the
response once, and only its hash goes on (ledger/security/api_keys.py).
"""

# Method names are the RPC names of the generated AccessServiceServicer base class.
# ruff: noqa: N802

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import grpc

from ledger.application.ledger import Ledger
from ledger.domain import commands
from ledger.domain.access import BankPolicy, KeyIssued
from ledger.domain.errors import Forbidden, InvalidInput, NotFound
from ledger.domain.state import MemberTokenKey
from ledger.security import api_keys, member_tokens
from ledger.security.caller import current_caller
from ledger.security.roles import Role
from ledger.service import convert
from ledger.service.identity import StoreIdentities
from ledger.service.servicer import rpc
from ledger.storage.rows import StoredApiKey
from timebank.ledger.v1 import access_pb2 as pb
from timebank.ledger.v1 import access_pb2_grpc as pb_grpc

roles: Mapping[pb.Role.ValueType, Role] = {
    pb.ROLE_OPERATOR: Role.OPERATOR,
    pb.ROLE_BANK_ADMIN: Role.BANK_ADMIN,
    pb.ROLE_MEMBER_APP: Role.MEMBER_APP,
    pb.ROLE_AUDITOR: Role.AUDITOR,
    pb.ROLE_FEDERATION_PEER: Role.FEDERATION_PEER,
}
# The roles each caller may issue and revoke keys of.
_hands_out: Mapping[Role, frozenset[Role]] = {
    Role.OPERATOR: frozenset({Role.BANK_ADMIN}),
    Role.BANK_ADMIN: frozenset({Role.MEMBER_APP, Role.AUDITOR}),
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AccessServicer(pb_grpc.AccessServiceServicer):
    """The gRPC face of a bank's access set-up."""

    def __init__(
        self,
        ledger: Ledger,
        identities: StoreIdentities,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._ledger = ledger
        self._identities = identities
        self._clock = clock

    # ----------------------------------------------------------------- API keys

    @rpc
    def IssueApiKey(
        self, request: pb.IssueApiKeyRequest, context: grpc.ServicerContext
    ) -> pb.IssueApiKeyResponse:
        role = _role_from_proto(request.role)
        _check_hands_out(role)
        by = convert.acting()
        expires_at = _expires_at(request)
        # Checked here so the error names the field; issue_key() only refuses a past expiry.
        commands.check_text("label", request.label, api_keys.key_label_length_max)
        try:
            issued = api_keys.issue_key(
                role,
                request.bank_id,
                label=request.label,
                created_by=by.actor,
                now=self._clock(),
                expires_at=expires_at,
            )
        except ValueError as error:
            raise InvalidInput("INVALID_KEY", str(error), field="expires_at") from None
        result = self._ledger.execute(
            request.bank_id,
            commands.IssueApiKey(
                key_id=issued.record.key_id,
                role=role.value,
                secret_hash=issued.record.secret_hash,
                label=request.label,
                expires_at=expires_at,
                actor=by.actor,
                actor_label=request.actor_label,
            ),
        )
        assert isinstance(result, KeyIssued)
        return pb.IssueApiKeyResponse(
            key=self._key_message(request.bank_id, result.key_id),
            token=issued.token,
            position=result.position,
        )

    @rpc
    def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: grpc.ServicerContext
    ) -> pb.RevokeApiKeyResponse:
        commands.check_id("key_id", request.key_id)
        stored = self._stored_key(request.bank_id, request.key_id)
        _check_hands_out(Role(stored.role))
        by = convert.acting()
        result = self._ledger.execute(
            request.bank_id,
            commands.RevokeApiKey(
                key_id=request.key_id,
                reason=request.reason,
                actor=by.actor,
                actor_label=request.actor_label,
            ),
        )
        assert isinstance(result, KeyIssued)
        self._identities.forget_key(request.key_id)
        return pb.RevokeApiKeyResponse(
            key=self._key_message(request.bank_id, request.key_id), position=result.position
        )

    @rpc
    def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: grpc.ServicerContext
    ) -> pb.ListApiKeysResponse:
        keys, next_page_token = self._ledger.api_keys(
            request.bank_id, request.page_size, request.page_token
        )
        return pb.ListApiKeysResponse(
            keys=[api_key_message(key) for key in keys], next_page_token=next_page_token
        )

    # ----------------------------------------------------------------- member-token keys

    @rpc
    def RegisterMemberTokenKey(
        self, request: pb.RegisterMemberTokenKeyRequest, context: grpc.ServicerContext
    ) -> pb.RegisterMemberTokenKeyResponse:
        by = convert.acting()
        key = _parse_public_key(request)
        result = self._ledger.execute(
            request.bank_id,
            commands.RegisterMemberTokenKey(
                kid=key.kid,
                algorithm=key.algorithm,
                public_key_pem=key.pem,
                actor=by.actor,
                actor_label=request.actor_label,
            ),
        )
        assert isinstance(result, MemberTokenKey)
        self._identities.forget_member_keys(request.bank_id)
        return pb.RegisterMemberTokenKeyResponse(key=member_token_key_message(result))

    @rpc
    def RemoveMemberTokenKey(
        self, request: pb.RemoveMemberTokenKeyRequest, context: grpc.ServicerContext
    ) -> pb.RemoveMemberTokenKeyResponse:
        by = convert.acting()
        position = self._ledger.execute(
            request.bank_id,
            commands.RemoveMemberTokenKey(
                kid=request.kid, actor=by.actor, actor_label=request.actor_label
            ),
        )
        assert isinstance(position, int)
        self._identities.forget_member_keys(request.bank_id)
        return pb.RemoveMemberTokenKeyResponse(position=position)

    @rpc
    def ListMemberTokenKeys(
        self, request: pb.ListMemberTokenKeysRequest, context: grpc.ServicerContext
    ) -> pb.ListMemberTokenKeysResponse:
        self._ledger.get_bank(request.bank_id)
        keys = self._ledger.member_token_keys(request.bank_id)
        return pb.ListMemberTokenKeysResponse(keys=[member_token_key_message(k) for k in keys])

    # ----------------------------------------------------------------- policy

    @rpc
    def SetBankPolicy(
        self, request: pb.SetBankPolicyRequest, context: grpc.ServicerContext
    ) -> pb.SetBankPolicyResponse:
        by = convert.acting()
        result = self._ledger.execute(
            request.bank_id,
            commands.SetBankPolicy(
                request_id=request.request_id,
                member_tokens_required=request.policy.member_tokens_required,
                actor=by.actor,
                actor_label=request.actor_label,
            ),
        )
        assert isinstance(result, BankPolicy)
        return pb.SetBankPolicyResponse(
            policy=pb.BankPolicy(member_tokens_required=result.member_tokens_required),
            position=result.position,
        )

    # ----------------------------------------------------------------- internals

    def _stored_key(self, bank_id: str, key_id: str) -> StoredApiKey:
        stored = self._ledger.api_key(key_id)
        if stored is None or stored.bank_id != bank_id:
            raise NotFound(
                "API_KEY_NOT_FOUND",
                f"key {key_id!r} is not a key of this bank",
                field="key_id",
                metadata={"key_id": key_id},
            )
        return stored

    def _key_message(self, bank_id: str, key_id: str) -> pb.ApiKey:
        return api_key_message(self._stored_key(bank_id, key_id))


def _role_from_proto(number: int) -> Role:
    if number == 0:
        raise InvalidInput("FIELD_REQUIRED", "role is required", field="role")
    for known, role in roles.items():
        if known == number:
            return role
    raise InvalidInput("INVALID_ROLE", f"role {number} is not a known value", field="role")


def _expires_at(request: pb.IssueApiKeyRequest) -> datetime | None:
    if not request.HasField("expires_at"):
        return None
    try:
        return request.expires_at.ToDatetime(UTC)
    except ValueError:  # seconds or nanos out of the Timestamp's range
        raise InvalidInput(
            "INVALID_TIMESTAMP",
            "expires_at is not a valid timestamp (years 1 to 9999, nanos below 10^9)",
            field="expires_at",
        ) from None


def _check_hands_out(role: Role) -> None:
    caller = current_caller()
    if role not in _hands_out.get(caller.role, frozenset()):
        raise Forbidden(
            "ROLE_NOT_ALLOWED",
            f"{caller.role.with_article} key may not issue or revoke {role.value} keys",
            field="role",
            metadata={"role": role.value},
        )


def _parse_public_key(request: pb.RegisterMemberTokenKeyRequest) -> member_tokens.MemberTokenKey:
    kind = request.WhichOneof("public_key")
    try:
        if kind == "public_key_pem":
            return member_tokens.key_from_pem(request.kid, request.public_key_pem)
        if kind == "jwk_json":
            if len(request.jwk_json) > member_tokens.member_token_key_pem_length_max:
                raise ValueError("a JWK has at most 4096 characters")
            return member_tokens.key_from_jwk(request.jwk_json, request.kid or None)
    except ValueError as error:
        raise InvalidInput("INVALID_PUBLIC_KEY", str(error), field=kind or "public_key") from None
    raise InvalidInput(
        "FIELD_REQUIRED", "public_key_pem or jwk_json is required", field="public_key_pem"
    )


def api_key_message(key: StoredApiKey) -> pb.ApiKey:
    message = pb.ApiKey(
        key_id=key.key_id,
        role=next(number for number, role in roles.items() if role.value == key.role),
        bank_id=key.bank_id,
        label=key.label,
        created_at=convert.timestamp(key.created_at),
        created_by=key.created_by,
        revoked_by=key.revoked_by,
        revoke_reason=key.revoke_reason,
        position=key.position,
    )
    if key.expires_at is not None:
        message.expires_at.CopyFrom(convert.timestamp(key.expires_at))
    if key.revoked_at is not None:
        message.revoked_at.CopyFrom(convert.timestamp(key.revoked_at))
    return message


def member_token_key_message(key: MemberTokenKey) -> pb.MemberTokenKey:
    return pb.MemberTokenKey(
        kid=key.kid,
        algorithm=key.algorithm,
        public_key_pem=key.public_key_pem,
        registered_at=convert.timestamp(key.registered_at),
        position=key.position,
    )
