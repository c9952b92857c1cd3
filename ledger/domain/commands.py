"""Write commands: what a caller asked for, validated against the limits before it reaches a bank.

Field names match the protobuf request fields, so an error's `field` names what the caller sent.
Every command is idempotent under its client-chosen id; `content()` is what a retry must repeat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any

from ledger.domain import limits
from ledger.domain.errors import InvalidInput
from ledger.domain.pool_policy import PoolPolicy

ACCOUNT_KINDS = ("member", "organisation", "pool", "system")
# The roles an API key of one bank can have (operator keys belong to the deployment).
BANK_KEY_ROLES = ("bank-admin", "member-app", "auditor", "federation-peer")
KEY_ROLES = ("operator", *BANK_KEY_ROLES)
_id_re = re.compile(limits.id_pattern)
_content_fields: dict[type, tuple[str, ...]] = {}


def check_id(field: str, value: str) -> None:
    if not value:
        raise InvalidInput("FIELD_REQUIRED", f"{field} is required", field=field)
    if len(value) > limits.id_length_max:
        raise InvalidInput(
            "FIELD_TOO_LONG",
            f"{field} is longer than {limits.id_length_max} characters",
            field=field,
        )
    if not _id_re.fullmatch(value):
        raise InvalidInput(
            "INVALID_ID",
            f"{field} may hold only letters, digits and . _ : - and must start with a letter"
            " or digit",
            field=field,
        )


def check_text(field: str, value: str, length_max: int, *, required: bool = False) -> None:
    if required and not value.strip():
        raise InvalidInput("FIELD_REQUIRED", f"{field} is required", field=field)
    if len(value) > length_max:
        raise InvalidInput(
            "FIELD_TOO_LONG", f"{field} is longer than {length_max} characters", field=field
        )
    if any(ord(c) < 32 and c not in "\t\n" for c in value):
        raise InvalidInput("INVALID_CHARACTERS", f"{field} holds control characters", field=field)
    try:
        # Lone surrogates cannot be hashed into the chain or stored as UTF-8.
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(
            "INVALID_CHARACTERS", f"{field} is not valid Unicode text", field=field
        ) from None


def check_actor(actor: str, actor_label: str) -> None:
    check_text("actor", actor, limits.actor_length_max)
    check_text("actor_label", actor_label, limits.actor_length_max)


_date_re = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def check_date(field: str, value: str) -> None:
    """A calendar date written exactly YYYY-MM-DD in ASCII digits (no week dates, no ٢٠٢٤)."""
    bad = InvalidInput("INVALID_DATE", f"{field} must be a date as YYYY-MM-DD", field=field)
    if not _date_re.fullmatch(value):
        raise bad
    try:
        date.fromisoformat(value)
    except ValueError:
        raise bad from None


def check_amount(field: str, amount_minutes: int) -> None:
    if amount_minutes <= 0:
        raise InvalidInput(
            "AMOUNT_NOT_POSITIVE", f"{field} must be a positive number of minutes", field=field
        )
    if amount_minutes > limits.amount_minutes_max:
        raise InvalidInput(
            "AMOUNT_TOO_LARGE",
            f"{field} must be at most {limits.amount_minutes_max} minutes",
            field=field,
        )


def check_limits(lower_limit_minutes: int, upper_limit_minutes: int | None) -> None:
    if not -limits.limit_minutes_max <= lower_limit_minutes <= 0:
        raise InvalidInput(
            "INVALID_LIMIT",
            f"lower_limit_minutes must be between -{limits.limit_minutes_max} and 0",
            field="lower_limit_minutes",
        )
    if upper_limit_minutes is not None and not 0 <= upper_limit_minutes <= limits.limit_minutes_max:
        raise InvalidInput(
            "INVALID_LIMIT",
            f"upper_limit_minutes must be between 0 and {limits.limit_minutes_max}",
            field="upper_limit_minutes",
        )


class Command:
    """Base of every write command."""

    # The field that carries the client-chosen idempotency id.
    id_field: str = ""
    # Fields that are metadata about the call, not content a retry must repeat: who called
    # (`actor`, the authenticated caller) and the label the client gave (`actor_label`).
    not_content: tuple[str, ...] = ("actor", "actor_label")

    def validate(self) -> None:
        raise NotImplementedError

    def content(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.content_fields()}

    @classmethod
    def content_fields(cls) -> tuple[str, ...]:
        # Cached per class: this runs for every transfer on the hot path.
        names = _content_fields.get(cls)
        if names is None:
            names = tuple(
                f.name
                for f in fields(cls)  # type: ignore[arg-type]
                if f.name not in cls.not_content
            )
            _content_fields[cls] = names
        return names


@dataclass(frozen=True, slots=True)
class CreateBank(Command):
    bank_id: str
    name: str
    actor: str = ""
    actor_label: str = ""
    id_field = "bank_id"

    def validate(self) -> None:
        check_id("bank_id", self.bank_id)
        check_text("name", self.name, limits.bank_name_length_max, required=True)
        check_actor(self.actor, self.actor_label)


@dataclass(frozen=True, slots=True)
class OpenAccount(Command):
    account_id: str
    kind: str
    lower_limit_minutes: int = 0
    upper_limit_minutes: int | None = None
    actor: str = ""
    actor_label: str = ""
    id_field = "account_id"

    def validate(self) -> None:
        check_id("account_id", self.account_id)
        if self.kind not in ACCOUNT_KINDS:
            raise InvalidInput(
                "INVALID_ACCOUNT_KIND",
                f"kind must be one of {', '.join(ACCOUNT_KINDS)}",
                field="kind",
            )
        check_limits(self.lower_limit_minutes, self.upper_limit_minutes)
        check_actor(self.actor, self.actor_label)


LIMIT_FIELDS = ("lower_limit_minutes", "upper_limit_minutes")


def check_update_mask(update_mask: tuple[str, ...], names: tuple[str, ...]) -> None:
    """An update mask (AIP-134) names some of `names`, each once, in their order."""
    if not update_mask:
        raise InvalidInput(
            "NOTHING_TO_CHANGE",
            f"the request changes nothing: name one of {', '.join(names)} in update_mask",
            field="update_mask",
        )
    if any(name not in names for name in update_mask) or update_mask != tuple(
        name for name in names if name in update_mask
    ):
        raise InvalidInput(
            "INVALID_UPDATE_MASK",
            f"update_mask may name only {', '.join(names)} (or *), each once",
            field="update_mask",
        )


@dataclass(frozen=True, slots=True)
class ChangeLimits(Command):
    """Sets the limits named in `update_mask` (AIP-134); a limit not named keeps its value
    (and its field here is ignored). By default both are set: upper None means no cap."""

    request_id: str
    account_id: str
    lower_limit_minutes: int = 0
    upper_limit_minutes: int | None = None
    reason: str = ""
    update_mask: tuple[str, ...] = LIMIT_FIELDS
    actor: str = ""
    actor_label: str = ""
    id_field = "request_id"

    def validate(self) -> None:
        check_id("request_id", self.request_id)
        check_id("account_id", self.account_id)
        check_update_mask(self.update_mask, LIMIT_FIELDS)
        check_limits(
            self.lower_limit_minutes if "lower_limit_minutes" in self.update_mask else 0,
            self.upper_limit_minutes if "upper_limit_minutes" in self.update_mask else None,
        )
        check_text("reason", self.reason, limits.reason_length_max)
        check_actor(self.actor, self.actor_label)

    def content(self) -> dict[str, Any]:
        """What a retry must repeat: the limits it sets (those not named are None)."""
        return limits_change_content(
            self.request_id,
            self.account_id,
            self.update_mask,
            self.lower_limit_minutes,
            self.upper_limit_minutes,
            self.reason,
        )


def limits_change_content(
    request_id: str,
    account_id: str,
    update_mask: tuple[str, ...] | list[str],
    lower_limit_minutes: int,
    upper_limit_minutes: int | None,
    reason: str,
) -> dict[str, Any]:
    """The idempotency content of a limits change, from the command or from its event."""
    return {
        "request_id": request_id,
        "account_id": account_id,
        "lower_limit_minutes": (
            lower_limit_minutes if "lower_limit_minutes" in update_mask else None
        ),
        "upper_limit_minutes": (
            upper_limit_minutes if "upper_limit_minutes" in update_mask else None
        ),
        "reason": reason,
        "update_mask": list(update_mask),
    }


METADATA_FIELDS = ("label", "tags")
_tag_key_re = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True, slots=True)
class ChangeAccountMetadata(Command):
    """Sets an account's display label and/or its tags (each replaced whole). None: not
    changed. Tags are (key, value) pairs, one per key. No personal data: see the README."""

    request_id: str
    account_id: str
    label: str | None = None
    tags: tuple[tuple[str, str], ...] | None = None
    actor: str = ""
    actor_label: str = ""
    id_field = "request_id"

    def validate(self) -> None:
        check_id("request_id", self.request_id)
        check_id("account_id", self.account_id)
        if self.label is None and self.tags is None:
            check_update_mask((), METADATA_FIELDS)
        if self.label is not None:
            check_text("label", self.label, limits.account_label_length_max)
        if self.tags is not None:
            check_tags(self.tags)
        check_actor(self.actor, self.actor_label)

    def content(self) -> dict[str, Any]:
        return metadata_change_content(self.request_id, self.account_id, self.label, self.tags)


def metadata_change_content(
    request_id: str,
    account_id: str,
    label: str | None,
    tags: tuple[tuple[str, str], ...] | dict[str, str] | None,
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "account_id": account_id,
        "label": label,
        "tags": None if tags is None else dict(tags),
    }


def check_tags(tags: tuple[tuple[str, str], ...]) -> None:
    if len(tags) > limits.account_tags_max:
        raise InvalidInput(
            "TOO_MANY_TAGS",
            f"an account has at most {limits.account_tags_max} tags",
            field="tags",
        )
    for key, value in tags:
        if not key or len(key) > limits.account_tag_key_length_max or not _tag_key_re.match(key):
            raise InvalidInput(
                "INVALID_TAG_KEY",
                f"a tag key is 1 to {limits.account_tag_key_length_max} characters from a-z,"
                " 0-9 and . _ -, starting with a letter or digit",
                field="tags",
                metadata={"tag": key[: limits.account_tag_key_length_max]},
            )
        check_text("tags", value, limits.account_tag_value_length_max)


STATUS_ACTIONS = ("freeze", "unfreeze", "close")


@dataclass(frozen=True, slots=True)
class ChangeStatus(Command):
    request_id: str
    account_id: str
    action: str
    reason: str = ""
    actor: str = ""
    actor_label: str = ""
    id_field = "request_id"

    def validate(self) -> None:
        check_id("request_id", self.request_id)
        check_id("account_id", self.account_id)
        # Set by the service from the RPC called (FreezeAccount, ...), never by a caller.
        assert self.action in STATUS_ACTIONS, f"unknown status action {self.action!r}"
        check_text("reason", self.reason, limits.reason_length_max)
        check_actor(self.actor, self.actor_label)


@dataclass(frozen=True, slots=True)
class CreateTransfer(Command):
    transfer_id: str
    payer_account_id: str
    payee_account_id: str
    amount_minutes: int
    memo: str = ""
    category: str = ""
    # The day the service was given, ISO 8601 (YYYY-MM-DD); empty if not given.
    service_date: str = ""
    pending: bool = False
    # Pending only: seconds until the hold expires; 0 holds it until posted or voided.
    timeout_seconds: int = 0
    actor: str = ""
    actor_label: str = ""
    # Member consent (see consent.py): whether the call came through a bank's front-end
    # key, and the account a member token the caller presented names, if any.
    via_front_end: bool = False
    member_subject: str | None = None
    id_field = "transfer_id"
    not_content = (*Command.not_content, "via_front_end", "member_subject")

    def validate(self) -> None:
        check_id("transfer_id", self.transfer_id)
        check_id("payer_account_id", self.payer_account_id)
        check_id("payee_account_id", self.payee_account_id)
        if self.payer_account_id == self.payee_account_id:
            raise InvalidInput(
                "SAME_ACCOUNT",
                "payer and payee must be different accounts",
                field="payee_account_id",
            )
        check_amount("amount_minutes", self.amount_minutes)
        check_text("memo", self.memo, limits.memo_length_max)
        check_text("category", self.category, limits.category_length_max)
        check_actor(self.actor, self.actor_label)
        if self.service_date:
            check_date("service_date", self.service_date)
        if not self.pending and self.timeout_seconds:
            raise InvalidInput(
                "TIMEOUT_WITHOUT_PENDING",
                "timeout_seconds applies only to pending transfers",
                field="timeout_seconds",
            )
        if not 0 <= self.timeout_seconds <= limits.pending_timeout_seconds_max:
            raise InvalidInput(
                "INVALID_TIMEOUT",
                f"timeout_seconds must be between 0 and {limits.pending_timeout_seconds_max}",
                field="timeout_seconds",
            )


@dataclass(frozen=True, slots=True)
class CreateTransfers(Command):
    """A batch: linked means all or nothing; otherwise each item stands on its own."""

    items: tuple[CreateTransfer, ...]
    linked: bool = False

    def validate(self) -> None:
        if not self.items:
            raise InvalidInput(
                "BATCH_EMPTY", "a batch needs at least one transfer", field="transfers"
            )
        if len(self.items) > limits.transfers_per_batch_max:
            raise InvalidInput(
                "BATCH_TOO_LARGE",
                f"a batch holds at most {limits.transfers_per_batch_max} transfers",
                field="transfers",
            )


@dataclass(frozen=True, slots=True)
class PostPending(Command):
    request_id: str
    transfer_id: str
    # None posts the full pending amount; less posts part and releases the rest.
    amount_minutes: int | None = None
    actor: str = ""
    actor_label: str = ""
    via_front_end: bool = False
    member_subject: str | None = None
    id_field = "request_id"
    not_content = (*Command.not_content, "via_front_end", "member_subject")

    def validate(self) -> None:
        check_id("request_id", self.request_id)
        check_id("transfer_id", self.transfer_id)
        if self.amount_minutes is not None:
            check_amount("amount_minutes", self.amount_minutes)
        check_actor(self.actor, self.actor_label)


@dataclass(frozen=True, slots=True)
class VoidPending(Command):
    request_id: str
    transfer_id: str
    reason: str = ""
    actor: str = ""
    actor_label: str = ""
    id_field = "request_id"

    def validate(self) -> None:
        check_id("request_id", self.request_id)
        check_id("transfer_id", self.transfer_id)
        check_text("reason", self.reason, limits.reason_length_max)
        check_actor(self.actor, self.actor_label)


@dataclass(frozen=True, slots=True)
class ReverseTransfer(Command):
    transfer_id: str
    reverses_transfer_id: str
    reason: str
    actor: str = ""
    actor_label: str = ""
    id_field = "transfer_id"

    def validate(self) -> None:
        check_id("transfer_id", self.transfer_id)
        check_id("reverses_transfer_id", self.reverses_transfer_id)
        if self.transfer_id == self.reverses_transfer_id:
            raise InvalidInput(
                "SAME_TRANSFER", "a reversal needs its own new transfer_id", field="transfer_id"
            )
        check_text("reason", self.reason, limits.reason_length_max, required=True)
        check_actor(self.actor, self.actor_label)


@dataclass(frozen=True, slots=True)
class IssueApiKey(Command):
    """A new API key of the bank. The key id and the secret's hash are made by the caller
    (the secret itself never reaches the domain); there is no retry: a lost answer means
    issuing another key and revoking the unused one."""

    key_id: str
    role: str
    secret_hash: str
    label: str = ""
    expires_at: datetime | None = None
    actor: str = ""
    actor_label: str = ""
    id_field = "key_id"

    def validate(self) -> None:
        check_id("key_id", self.key_id)
        if self.role not in KEY_ROLES:
            raise InvalidInput(
                "INVALID_ROLE", f"role must be one of {', '.join(KEY_ROLES)}", field="role"
            )
        check_text("label", self.label, limits.key_label_length_max)
        check_actor(self.actor, self.actor_label)


@dataclass(frozen=True, slots=True)
class RevokeApiKey(Command):
    key_id: str
    reason: str = ""
    actor: str = ""
    actor_label: str = ""
    id_field = "key_id"

    def validate(self) -> None:
        check_id("key_id", self.key_id)
        check_text("reason", self.reason, limits.reason_length_max)
        check_actor(self.actor, self.actor_label)


@dataclass(frozen=True, slots=True)
class RegisterMemberTokenKey(Command):
    """A public key of the bank's own identity provider, that member tokens are signed with.
    The service checks and normalises the key (PEM, Ed25519 or P-256) before it gets here."""

    kid: str
    algorithm: str
    public_key_pem: str
    actor: str = ""
    actor_label: str = ""
    id_field = "kid"

    def validate(self) -> None:
        check_text("kid", self.kid, limits.member_token_kid_length_max, required=True)
        if self.algorithm not in limits.member_token_algorithms:
            raise InvalidInput(
                "INVALID_ALGORITHM",
                f"member tokens are signed with {' or '.join(limits.member_token_algorithms)}",
                field="algorithm",
            )
        check_text("public_key_pem", self.public_key_pem, limits.member_token_key_pem_length_max)
        check_actor(self.actor, self.actor_label)


@dataclass(frozen=True, slots=True)
class RemoveMemberTokenKey(Command):
    kid: str
    actor: str = ""
    actor_label: str = ""
    id_field = "kid"

    def validate(self) -> None:
        check_text("kid", self.kid, limits.member_token_kid_length_max, required=True)
        check_actor(self.actor, self.actor_label)


@dataclass(frozen=True, slots=True)
class SetBankPolicy(Command):
    request_id: str
    member_tokens_required: bool
    actor: str = ""
    actor_label: str = ""
    id_field = "request_id"

    def validate(self) -> None:
        check_id("request_id", self.request_id)
        check_actor(self.actor, self.actor_label)


# ----------------------------------------------------------------- pools (issue 11, pools.py)


@dataclass(frozen=True, slots=True)
class CreatePool(Command):
    """Opens an account of kind pool and sets its first policy."""

    request_id: str
    pool_account_id: str
    policy: PoolPolicy
    lower_limit_minutes: int = 0
    upper_limit_minutes: int | None = None
    reason: str = ""
    actor: str = ""
    actor_label: str = ""
    id_field = "request_id"

    def validate(self) -> None:
        check_id("request_id", self.request_id)
        check_id("pool_account_id", self.pool_account_id)
        self.policy.validate()
        check_limits(self.lower_limit_minutes, self.upper_limit_minutes)
        check_text("reason", self.reason, limits.reason_length_max)
        check_actor(self.actor, self.actor_label)

    def content(self) -> dict[str, Any]:
        return {**Command.content(self), "policy": self.policy.to_json()}


@dataclass(frozen=True, slots=True)
class ChangePoolPolicy(Command):
    """Replaces a pool's policy whole; requests already open keep the approvers they had."""

    request_id: str
    pool_account_id: str
    policy: PoolPolicy
    reason: str = ""
    actor: str = ""
    actor_label: str = ""
    id_field = "request_id"

    def validate(self) -> None:
        check_id("request_id", self.request_id)
        check_id("pool_account_id", self.pool_account_id)
        self.policy.validate()
        check_text("reason", self.reason, limits.reason_length_max)
        check_actor(self.actor, self.actor_label)

    def content(self) -> dict[str, Any]:
        return {**Command.content(self), "policy": self.policy.to_json()}


@dataclass(frozen=True, slots=True)
class RequestGrant(Command):
    """A grant from the pool to a member: a pending transfer (its id is `grant_id`)."""

    grant_id: str
    pool_account_id: str
    member_account_id: str
    amount_minutes: int
    memo: str = ""
    category: str = ""
    actor: str = ""
    actor_label: str = ""
    # Member consent, as for CreateTransfer: through a front-end key, with the bank's policy
    # on, a grant to a member needs that member's token (a stolen key alone draws nothing).
    via_front_end: bool = False
    member_subject: str | None = None
    id_field = "grant_id"
    not_content = (*Command.not_content, "via_front_end", "member_subject")

    def validate(self) -> None:
        check_id("grant_id", self.grant_id)
        check_id("pool_account_id", self.pool_account_id)
        check_id("member_account_id", self.member_account_id)
        if self.pool_account_id == self.member_account_id:
            raise InvalidInput(
                "SAME_ACCOUNT", "a pool cannot grant to itself", field="member_account_id"
            )
        check_amount("amount_minutes", self.amount_minutes)
        check_text("memo", self.memo, limits.memo_length_max)
        check_text("category", self.category, limits.category_length_max)
        check_actor(self.actor, self.actor_label)


GRANT_DECISIONS = ("approve", "reject", "cancel")


@dataclass(frozen=True, slots=True)
class DecideGrant(Command):
    """An approval, a rejection (by an approver) or a cancellation of an open grant request.
    Who decides is the authenticated caller (`actor`), never a field of the request."""

    request_id: str
    pool_account_id: str
    grant_id: str
    decision: str
    reason: str = ""
    actor: str = ""
    actor_label: str = ""
    # Cancel only: a bank-admin key may cancel any request (set by the service, not content).
    by_admin: bool = False
    id_field = "request_id"
    not_content = (*Command.not_content, "by_admin")

    def validate(self) -> None:
        check_id("request_id", self.request_id)
        check_id("pool_account_id", self.pool_account_id)
        check_id("grant_id", self.grant_id)
        # Set by the service from the RPC called (ApproveGrant, ...), never by a caller.
        assert self.decision in GRANT_DECISIONS, f"unknown decision {self.decision!r}"
        check_text("reason", self.reason, limits.reason_length_max)
        check_actor(self.actor, self.actor_label)


BankCommand = (
    OpenAccount
    | ChangeLimits
    | ChangeAccountMetadata
    | ChangeStatus
    | CreateTransfer
    | CreateTransfers
    | PostPending
    | VoidPending
    | ReverseTransfer
    | IssueApiKey
    | RevokeApiKey
    | RegisterMemberTokenKey
    | RemoveMemberTokenKey
    | SetBankPolicy
    | CreatePool
    | ChangePoolPolicy
    | RequestGrant
    | DecideGrant
)
