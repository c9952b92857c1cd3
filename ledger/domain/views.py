"""Immutable snapshots of accounts and transfers, handed to callers as results."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.domain.errors import DomainError


def available_minutes(
    balance_minutes: int, pending_debit_minutes: int, lower_limit_minutes: int
) -> int:
    """How many more minutes an account may pay now; 0 while its balance is past its limit."""
    return max(0, balance_minutes - pending_debit_minutes - lower_limit_minutes)


@dataclass(frozen=True, slots=True)
class BankView:
    bank_id: str
    name: str
    created_at: datetime
    # Number of events in the bank's history; the position of its last event.
    position: int
    chain_head: str
    account_count: int
    transfer_count: int
    # The bank's consent policy: debits of members through front-end keys need their token.
    member_tokens_required: bool = False


@dataclass(frozen=True, slots=True)
class AccountView:
    account_id: str
    kind: str
    status: str
    lower_limit_minutes: int
    upper_limit_minutes: int | None
    # Balance = minutes received - minutes paid; posted only.
    balance_minutes: int
    pending_debit_minutes: int
    pending_credit_minutes: int
    opened_at: datetime
    updated_at: datetime
    # Position (event number in the bank's history) of the last change to this account.
    position: int
    # Metadata (metadata.py): not decision state, so the index fills it in on reads.
    label: str = ""
    tags: tuple[tuple[str, str], ...] = ()  # (key, value), sorted by key

    @property
    def available_minutes(self) -> int:
        """How many more minutes this account may pay now, given its lower limit and holds.

        Never negative: after a limit was lowered below the balance, it is 0 until the
        balance is back within the limit.
        """
        return available_minutes(
            self.balance_minutes, self.pending_debit_minutes, self.lower_limit_minutes
        )


@dataclass(frozen=True, slots=True)
class TransferView:
    transfer_id: str
    # immediate, pending or reversal
    kind: str
    # posted, pending, voided or expired
    status: str
    payer_account_id: str
    payee_account_id: str
    amount_minutes: int
    # What was actually moved: the amount once posted, 0 while pending or after void/expiry.
    posted_amount_minutes: int
    memo: str
    category: str
    service_date: str
    created_at: datetime
    deadline: datetime | None
    resolved_at: datetime | None
    reverses_transfer_id: str
    reversed_by_transfer_id: str
    reason: str
    # Who recorded it: the authenticated caller, and the label the client gave.
    actor: str
    actor_label: str
    # Position of the event that created the transfer, and of its latest change.
    created_position: int
    position: int


@dataclass(frozen=True, slots=True)
class BatchItemResult:
    """One item of a batch: the transfer, or the named error that refused it."""

    transfer: TransferView | None
    error: DomainError | None
