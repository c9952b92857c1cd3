"""Rows of the index tables: records and views to tuples and back, with their columns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ledger.domain import canonical, chain
from ledger.domain.records import (
    AccountMetadataRecord,
    ApiKeyRecord,
    ApiKeyRevocation,
    RequestRecord,
    TransferRecord,
)
from ledger.domain.state import Account, MemberTokenKey
from ledger.domain.views import AccountView, BankView, TransferView
from ledger.storage.sql import Dialect

Row = Mapping[str, Any]

BANK_COLUMNS = (
    "bank_uuid",
    "bank_id",
    "name",
    "created_at",
    "created_by",
    "position",
    "chain_head",
    "account_count",
    "transfer_count",
    "member_tokens_required",
    "updated_at",
)
ACCOUNT_COLUMNS = (
    "bank_uuid",
    "account_id",
    "number",
    "kind",
    "status",
    "lower_limit_minutes",
    "upper_limit_minutes",
    "balance_minutes",
    "pending_debit_minutes",
    "pending_credit_minutes",
    "opened_at",
    "updated_at",
    "position",
)
TRANSFER_COLUMNS = (
    "bank_uuid",
    "transfer_id",
    "number",
    "kind",
    "status",
    "payer_account_id",
    "payee_account_id",
    "amount_minutes",
    "posted_amount_minutes",
    "memo",
    "category",
    "service_date",
    "timeout_seconds",
    "created_at",
    "deadline",
    "resolved_at",
    "reverses_transfer_id",
    "reversed_by_transfer_id",
    "reason",
    "actor",
    "actor_label",
    "created_position",
    "position",
)
REQUEST_COLUMNS = ("bank_uuid", "request_id", "kind", "content", "position")


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else chain.timestamp_text(moment)


def _time_of(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def bank_row(
    bank_uuid: str, view: BankView, created_by: str, updated_at: datetime
) -> tuple[Any, ...]:
    return (
        bank_uuid,
        view.bank_id,
        view.name,
        _time(view.created_at),
        created_by,
        view.position,
        view.chain_head,
        view.account_count,
        view.transfer_count,
        view.member_tokens_required,
        _time(updated_at),
    )


def bank_view_of(row: Row) -> BankView:
    return BankView(
        bank_id=row["bank_id"],
        name=row["name"],
        created_at=datetime.fromisoformat(row["created_at"]),
        position=row["position"],
        chain_head=row["chain_head"],
        account_count=row["account_count"],
        transfer_count=row["transfer_count"],
        member_tokens_required=bool(row["member_tokens_required"]),
    )


def account_row(bank_uuid: str, account: Account) -> tuple[Any, ...]:
    return (
        bank_uuid,
        account.account_id,
        account.number,
        account.kind,
        account.status,
        account.lower_limit_minutes,
        account.upper_limit_minutes,
        account.balance_minutes,
        account.pending_debit_minutes,
        account.pending_credit_minutes,
        _time(account.opened_at),
        _time(account.updated_at),
        account.position,
    )


def account_view_of(row: Row) -> AccountView:
    return AccountView(
        account_id=row["account_id"],
        kind=row["kind"],
        status=row["status"],
        lower_limit_minutes=row["lower_limit_minutes"],
        upper_limit_minutes=row["upper_limit_minutes"],
        balance_minutes=row["balance_minutes"],
        pending_debit_minutes=row["pending_debit_minutes"],
        pending_credit_minutes=row["pending_credit_minutes"],
        opened_at=datetime.fromisoformat(row["opened_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        position=row["position"],
    )


def transfer_row(bank_uuid: str, record: TransferRecord) -> tuple[Any, ...]:
    return (
        bank_uuid,
        record.transfer_id,
        record.number,
        record.kind,
        record.status,
        record.payer_account_id,
        record.payee_account_id,
        record.amount_minutes,
        record.posted_amount_minutes,
        record.memo,
        record.category,
        record.service_date,
        record.timeout_seconds,
        _time(record.created_at),
        _time(record.deadline),
        _time(record.resolved_at),
        record.reverses_transfer_id,
        record.reversed_by_transfer_id,
        record.reason,
        record.actor,
        record.actor_label,
        record.created_position,
        record.position,
    )


def transfer_of(row: Row) -> TransferRecord:
    created_at = datetime.fromisoformat(row["created_at"])
    return TransferRecord(
        transfer_id=row["transfer_id"],
        number=row["number"],
        kind=row["kind"],
        status=row["status"],
        payer_account_id=row["payer_account_id"],
        payee_account_id=row["payee_account_id"],
        amount_minutes=row["amount_minutes"],
        posted_amount_minutes=row["posted_amount_minutes"],
        memo=row["memo"],
        category=row["category"],
        service_date=row["service_date"],
        timeout_seconds=row["timeout_seconds"],
        created_at=created_at,
        deadline=_time_of(row["deadline"]),
        resolved_at=_time_of(row["resolved_at"]),
        reverses_transfer_id=row["reverses_transfer_id"],
        reversed_by_transfer_id=row["reversed_by_transfer_id"],
        reason=row["reason"],
        actor=row["actor"],
        actor_label=row["actor_label"],
        created_position=row["created_position"],
        position=row["position"],
    )


def transfer_view_of(row: Row) -> TransferView:
    """A transfer's view straight from its row (what lists read, many a page)."""
    return TransferView(
        transfer_id=row["transfer_id"],
        kind=row["kind"],
        status=row["status"],
        payer_account_id=row["payer_account_id"],
        payee_account_id=row["payee_account_id"],
        amount_minutes=row["amount_minutes"],
        posted_amount_minutes=row["posted_amount_minutes"],
        memo=row["memo"],
        category=row["category"],
        service_date=row["service_date"],
        created_at=datetime.fromisoformat(row["created_at"]),
        deadline=_time_of(row["deadline"]),
        resolved_at=_time_of(row["resolved_at"]),
        reverses_transfer_id=row["reverses_transfer_id"],
        reversed_by_transfer_id=row["reversed_by_transfer_id"],
        reason=row["reason"],
        actor=row["actor"],
        actor_label=row["actor_label"],
        created_position=row["created_position"],
        position=row["position"],
    )


def request_row(bank_uuid: str, record: RequestRecord) -> tuple[Any, ...]:
    content = canonical.encode(dict(record.content)).decode("utf-8")
    return (bank_uuid, record.request_id, record.kind, content, record.position)


def request_of(row: Row) -> RequestRecord:
    return RequestRecord(
        request_id=row["request_id"],
        kind=row["kind"],
        content=canonical.decode_trusted(row["content"].encode("utf-8")),
        position=row["position"],
    )


API_KEY_COLUMNS = (
    "key_id",
    "bank_uuid",
    "bank_id",
    "role",
    "secret_hash",
    "label",
    "created_at",
    "expires_at",
    "created_by",
    "revoked_at",
    "revoked_by",
    "revoke_reason",
    "position",
)
MEMBER_TOKEN_KEY_COLUMNS = (
    "bank_uuid",
    "kid",
    "algorithm",
    "public_key_pem",
    "registered_at",
    "position",
)


def api_key_row(bank_uuid: str, bank_id: str, record: ApiKeyRecord) -> tuple[Any, ...]:
    return (
        record.key_id,
        bank_uuid,
        bank_id,
        record.role,
        record.secret_hash,
        record.label,
        _time(record.created_at),
        _time(record.expires_at),
        record.created_by,
        None,
        "",
        "",
        record.position,
    )


def api_key_revocation_row(revocation: ApiKeyRevocation) -> tuple[Any, ...]:
    return (
        _time(revocation.revoked_at),
        revocation.revoked_by,
        revocation.reason,
        revocation.key_id,
    )


def member_token_key_row(bank_uuid: str, key: MemberTokenKey) -> tuple[Any, ...]:
    return (
        bank_uuid,
        key.kid,
        key.algorithm,
        key.public_key_pem,
        _time(key.registered_at),
        key.position,
    )


@dataclass(frozen=True, slots=True)
class StoredApiKey:
    """An API key's row: what authenticating a call and listing a bank's keys read."""

    key_id: str
    bank_id: str
    role: str
    secret_hash: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    created_by: str
    revoked_at: datetime | None
    revoked_by: str
    revoke_reason: str
    position: int


def api_key_of(row: Row) -> StoredApiKey:
    return StoredApiKey(
        key_id=row["key_id"],
        bank_id=row["bank_id"],
        role=row["role"],
        secret_hash=row["secret_hash"],
        label=row["label"],
        created_at=datetime.fromisoformat(row["created_at"]),
        expires_at=_time_of(row["expires_at"]),
        created_by=row["created_by"],
        revoked_at=_time_of(row["revoked_at"]),
        revoked_by=row["revoked_by"],
        revoke_reason=row["revoke_reason"],
        position=row["position"],
    )


def member_token_key_of(row: Row) -> MemberTokenKey:
    return MemberTokenKey(
        kid=row["kid"],
        algorithm=row["algorithm"],
        public_key_pem=row["public_key_pem"],
        registered_at=datetime.fromisoformat(row["registered_at"]),
        position=row["position"],
    )


# ----------------------------------------------------------------- account metadata (issue 12)


def account_metadata_row(bank_uuid: str, change: AccountMetadataRecord) -> tuple[Any, ...]:
    """(bank_uuid, account_id, label or None, tags as canonical JSON or None, position)."""
    tags = None if change.tags is None else canonical.encode(dict(change.tags)).decode("utf-8")
    return (bank_uuid, change.account_id, change.label, tags, change.position)


def account_metadata_upsert(dialect: Dialect) -> str:
    """Writes what a change sets; NULL (not set by it) leaves the stored value."""
    table = dialect.table("ledger_account_metadata")
    return dialect.sql(
        f"INSERT INTO {table} (bank_uuid, account_id, label, tags, position)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (bank_uuid, account_id) DO UPDATE SET"
        f" label = COALESCE(excluded.label, {table}.label),"
        f" tags = COALESCE(excluded.tags, {table}.tags), position = excluded.position"
    )


def with_metadata(view: AccountView, row: Row) -> AccountView:
    """The account view with the label and tags of a row joined from the metadata table."""
    label, tags = row["metadata_label"], row["metadata_tags"]
    if label is None and tags is None:
        return view
    pairs = sorted(canonical.decode_trusted(tags.encode("utf-8")).items()) if tags else []
    return replace(view, label=label or "", tags=tuple(pairs))
