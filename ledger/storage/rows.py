"""Rows of the index tables: records and views to tuples and back, with their columns."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ledger.domain import canonical, chain
from ledger.domain.records import RequestRecord, TransferRecord
from ledger.domain.state import Account
from ledger.domain.views import AccountView, BankView

Row = Mapping[str, Any]

BANK_COLUMNS = (
    "bank_uuid",
    "bank_id",
    "name",
    "created_at",
    "position",
    "chain_head",
    "account_count",
    "transfer_count",
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


def bank_row(bank_uuid: str, view: BankView, updated_at: datetime) -> tuple[Any, ...]:
    return (
        bank_uuid,
        view.bank_id,
        view.name,
        _time(view.created_at),
        view.position,
        view.chain_head,
        view.account_count,
        view.transfer_count,
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
