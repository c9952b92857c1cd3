"""Access to a bank: its API keys, its identity provider's keys, and its consent policy.

What a key may do is decided at the edge (ledger/security); what is recorded here is who
was given access and when, as events in the bank's own history, so an auditor sees every
key issued and revoked. A key's secret never reaches the domain: the index keeps a hash
of it (records.py), the history only the key's id, role and label. With the policy
`member_tokens_required`, a front-end may debit a member's account only with a token of
that member (consent.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import NAMESPACE_URL, uuid5

from ledger.domain import chain, limits
from ledger.domain.batch import Batch
from ledger.domain.commands import (
    IssueApiKey,
    RegisterMemberTokenKey,
    RemoveMemberTokenKey,
    RevokeApiKey,
    SetBankPolicy,
)
from ledger.domain.errors import IdConflict, InvalidInput, NotFound, QuotaReached
from ledger.domain.events import Event, event_type
from ledger.domain.idempotency import earlier_request
from ledger.domain.records import ApiKeyRecord, ApiKeyRevocation, RequestRecord
from ledger.domain.state import ApiKeyState, MemberTokenKey

# The deployment's own history (operator keys), beside the banks' in the same log.
deployment_uuid = str(uuid5(NAMESPACE_URL, "timebank-ledger:deployment"))


@dataclass(frozen=True, slots=True)
class KeyIssued:
    """What IssueApiKey answers: the key's id and role, and the position it was recorded at."""

    key_id: str
    role: str
    position: int


@dataclass(frozen=True, slots=True)
class BankPolicy:
    member_tokens_required: bool
    position: int


# --------------------------------------------------------------------- API keys


def issue_api_key(batch: Batch, command: IssueApiKey) -> KeyIssued:
    # A bank's keys have a bank's roles; operator keys live in the deployment's history,
    # which has no BankCreated event. (Not `batch.exists`: that only says the history has
    # an event, and the deployment's first operator key is one.)
    is_bank = batch.created_at is not None
    if (command.role == "operator") == is_bank:
        raise InvalidInput(
            "ROLE_OUT_OF_SCOPE",
            "operator keys belong to the deployment, every other role to one bank",
            field="role",
            metadata={"role": command.role},
        )
    if batch.api_key(command.key_id) is not None:
        # Key ids are random (80 bits): this is a caller reusing one, never chance.
        raise IdConflict(
            "EXISTS_WITH_DIFFERENT_SECRET",
            f"key_id {command.key_id!r} already names a key of this bank",
            field="key_id",
            metadata={"key_id": command.key_id},
        )
    if batch.active_api_key_count >= limits.api_keys_per_bank_max:
        raise QuotaReached(
            "API_KEYS_MAX_REACHED",
            f"a bank holds at most {limits.api_keys_per_bank_max} keys that are not revoked;"
            " revoke unused ones first",
            metadata={"api_keys_max": str(limits.api_keys_per_bank_max)},
        )
    expires_at = "" if command.expires_at is None else chain.timestamp_text(command.expires_at)
    version = batch.record(
        ApiKeyIssued(
            key_id=command.key_id,
            role=command.role,
            label=command.label,
            expires_at=expires_at,
            actor=command.actor,
            actor_label=command.actor_label,
        )
    )
    assert batch.records is not None
    batch.records.new_api_keys.append(
        ApiKeyRecord(
            key_id=command.key_id,
            role=command.role,
            secret_hash=command.secret_hash,
            label=command.label,
            created_at=batch.timestamp,
            expires_at=command.expires_at,
            created_by=command.actor,
            position=version,
        )
    )
    return KeyIssued(command.key_id, command.role, version)


@event_type
@dataclass(frozen=True, slots=True)
class ApiKeyIssued(Event):
    TYPE = "ApiKeyIssued"
    key_id: str
    role: str
    label: str
    # ISO 8601, or "" for a key that does not expire.
    expires_at: str
    actor: str
    actor_label: str

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        batch.api_keys[self.key_id] = ApiKeyState(self.role)


def revoke_api_key(batch: Batch, command: RevokeApiKey) -> KeyIssued:
    key = batch.api_key(command.key_id)
    if key is None:
        raise NotFound(
            "API_KEY_NOT_FOUND",
            f"key {command.key_id!r} is not a key of this bank",
            field="key_id",
            metadata={"key_id": command.key_id},
        )
    if key.revoked:
        return KeyIssued(command.key_id, key.role, batch.version)  # revoking twice is harmless
    version = batch.record(
        ApiKeyRevoked(
            key_id=command.key_id,
            reason=command.reason,
            actor=command.actor,
            actor_label=command.actor_label,
        )
    )
    return KeyIssued(command.key_id, key.role, version)


@event_type
@dataclass(frozen=True, slots=True)
class ApiKeyRevoked(Event):
    TYPE = "ApiKeyRevoked"
    key_id: str
    reason: str
    actor: str
    actor_label: str

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        key = batch.api_key(self.key_id)
        assert key is not None, f"revoked unknown key {self.key_id}"
        batch.api_keys[self.key_id] = ApiKeyState(key.role, revoked=True)
        if batch.records is not None:
            batch.records.revoked_api_keys.append(
                ApiKeyRevocation(self.key_id, timestamp, self.actor, self.reason, version)
            )


# --------------------------------------------------------------------- member-token keys


def register_member_token_key(batch: Batch, command: RegisterMemberTokenKey) -> MemberTokenKey:
    existing = batch.member_token_keys.get(command.kid)
    if existing is not None:
        if (existing.algorithm, existing.public_key_pem) != (
            command.algorithm,
            command.public_key_pem,
        ):
            raise IdConflict(
                "EXISTS_WITH_DIFFERENT_PUBLIC_KEY",
                f"kid {command.kid!r} already names another key; give a new key a new kid",
                field="public_key_pem",
                metadata={"kid": command.kid},
            )
        return existing
    if len(batch.member_token_keys) >= limits.member_token_keys_per_bank_max:
        raise QuotaReached(
            "MEMBER_TOKEN_KEYS_MAX_REACHED",
            f"a bank registers at most {limits.member_token_keys_per_bank_max} keys;"
            " remove an old one first",
            metadata={"member_token_keys_max": str(limits.member_token_keys_per_bank_max)},
        )
    batch.record(
        MemberTokenKeyRegistered(
            kid=command.kid,
            algorithm=command.algorithm,
            public_key_pem=command.public_key_pem,
            actor=command.actor,
            actor_label=command.actor_label,
        )
    )
    return batch.member_token_keys[command.kid]


@event_type
@dataclass(frozen=True, slots=True)
class MemberTokenKeyRegistered(Event):
    TYPE = "MemberTokenKeyRegistered"
    kid: str
    algorithm: str
    public_key_pem: str
    actor: str
    actor_label: str

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        keys = batch.member_token_keys_for_update()
        keys[self.kid] = MemberTokenKey(
            self.kid, self.algorithm, self.public_key_pem, timestamp, version
        )


def remove_member_token_key(batch: Batch, command: RemoveMemberTokenKey) -> int:
    """Returns the position at which the key is gone (removing a missing key is harmless)."""
    if command.kid not in batch.member_token_keys:
        return batch.version
    return batch.record(
        MemberTokenKeyRemoved(kid=command.kid, actor=command.actor, actor_label=command.actor_label)
    )


@event_type
@dataclass(frozen=True, slots=True)
class MemberTokenKeyRemoved(Event):
    TYPE = "MemberTokenKeyRemoved"
    kid: str
    actor: str
    actor_label: str

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        del batch.member_token_keys_for_update()[self.kid]


# --------------------------------------------------------------------- policy


def set_bank_policy(batch: Batch, command: SetBankPolicy) -> BankPolicy:
    if earlier_request(batch, command) is not None:
        return BankPolicy(batch.member_tokens_required, batch.version)
    version = batch.record(
        BankPolicyChanged(
            request_id=command.request_id,
            member_tokens_required=command.member_tokens_required,
            actor=command.actor,
            actor_label=command.actor_label,
        )
    )
    return BankPolicy(batch.member_tokens_required, version)


@event_type
@dataclass(frozen=True, slots=True)
class BankPolicyChanged(Event):
    TYPE = "BankPolicyChanged"
    request_id: str
    member_tokens_required: bool
    actor: str
    actor_label: str

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        batch.member_tokens_required = self.member_tokens_required
        if batch.records is not None:
            content = {
                "request_id": self.request_id,
                "member_tokens_required": self.member_tokens_required,
            }
            batch.records.add_request(
                RequestRecord(self.request_id, "SetBankPolicy", content, version)
            )
