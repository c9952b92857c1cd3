"""Mutable in-memory state of accounts and transfers inside one bank aggregate."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ledger.domain.commands import CreateTransfer, OpenAccount, ReverseTransfer
from ledger.domain.views import AccountView, TransferView


@dataclass(slots=True)
class AccountState:
    opened_by: OpenAccount
    lower_limit_minutes: int
    upper_limit_minutes: int | None
    opened_at: datetime
    updated_at: datetime
    position: int
    status: str = "open"
    # Balance = minutes received - minutes paid (posted only).
    balance_minutes: int = 0
    pending_debit_minutes: int = 0
    pending_credit_minutes: int = 0
    # Ids of the transfers this account took part in, oldest first.
    transfer_ids: list[str] = field(default_factory=list)

    @property
    def account_id(self) -> str:
        return self.opened_by.account_id

    @property
    def debit_exposure_minutes(self) -> int:
        """The balance if every pending debit posts and no pending credit does."""
        return self.balance_minutes - self.pending_debit_minutes

    @property
    def credit_exposure_minutes(self) -> int:
        """The balance if every pending credit posts and no pending debit does."""
        return self.balance_minutes + self.pending_credit_minutes

    def view(self) -> AccountView:
        return AccountView(
            account_id=self.account_id,
            kind=self.opened_by.kind,
            status=self.status,
            lower_limit_minutes=self.lower_limit_minutes,
            upper_limit_minutes=self.upper_limit_minutes,
            balance_minutes=self.balance_minutes,
            pending_debit_minutes=self.pending_debit_minutes,
            pending_credit_minutes=self.pending_credit_minutes,
            opened_at=self.opened_at,
            updated_at=self.updated_at,
            position=self.position,
        )


@dataclass(slots=True)
class TransferState:
    # The command that created it: what an idempotent retry must repeat.
    created_by: CreateTransfer | ReverseTransfer
    kind: str
    status: str
    payer_account_id: str
    payee_account_id: str
    amount_minutes: int
    created_at: datetime
    created_position: int
    position: int
    deadline: datetime | None = None
    posted_amount_minutes: int = 0
    resolved_at: datetime | None = None
    reversed_by_transfer_id: str = ""

    @property
    def transfer_id(self) -> str:
        return self.created_by.transfer_id

    def view(self) -> TransferView:
        origin = self.created_by
        if isinstance(origin, CreateTransfer):
            memo, category, service_date, reverses, reason = (
                origin.memo,
                origin.category,
                origin.service_date,
                "",
                "",
            )
        else:
            memo, category, service_date = "", "", ""
            reverses, reason = origin.reverses_transfer_id, origin.reason
        return TransferView(
            transfer_id=self.transfer_id,
            kind=self.kind,
            status=self.status,
            payer_account_id=self.payer_account_id,
            payee_account_id=self.payee_account_id,
            amount_minutes=self.amount_minutes,
            posted_amount_minutes=self.posted_amount_minutes,
            memo=memo,
            category=category,
            service_date=service_date,
            created_at=self.created_at,
            deadline=self.deadline,
            resolved_at=self.resolved_at,
            reverses_transfer_id=reverses,
            reversed_by_transfer_id=self.reversed_by_transfer_id,
            reason=reason,
            actor=origin.actor,
            created_position=self.created_position,
            position=self.position,
        )
