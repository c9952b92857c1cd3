"""Pending transfers: posting them (in full or in part), voiding them, and expiring them.

A pending transfer holds its amount against the payer's lower limit and the payee's cap
until it resolves, exactly once: posted (the minutes move; posting part releases the rest),
voided (nothing moves) or expired at its deadline. Posting needs no limit check: the hold
already reserved the whole amount.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.domain import pool_rules
from ledger.domain.accounts import check_open, require_account
from ledger.domain.batch import Batch
from ledger.domain.commands import PostPending, VoidPending
from ledger.domain.consent import check_consent
from ledger.domain.errors import PreconditionFailed
from ledger.domain.events import Event, event_type
from ledger.domain.idempotency import earlier_request
from ledger.domain.records import RecordBook, RequestRecord, TransferRecord
from ledger.domain.state import Hold
from ledger.domain.transfers import require_transfer
from ledger.domain.views import TransferView


def post_pending(batch: Batch, command: PostPending) -> TransferView:
    earlier = earlier_request(batch, command)
    transfer = require_transfer(batch, command.transfer_id)
    if earlier is not None:
        return transfer.view()
    hold = _open_hold(batch, transfer)
    pool_rules.check_not_grant(batch, hold)
    for account_id in (hold.payer_account_id, hold.payee_account_id):
        check_open(require_account(batch, account_id))
    check_consent(
        batch,
        require_account(batch, hold.payer_account_id),
        via_front_end=command.via_front_end,
        member_subject=command.member_subject,
    )
    amount = hold.amount_minutes if command.amount_minutes is None else command.amount_minutes
    if amount > hold.amount_minutes:
        raise PreconditionFailed(
            "POST_AMOUNT_EXCEEDS_PENDING",
            f"cannot post {amount} minutes of a pending transfer of {hold.amount_minutes}",
            field="amount_minutes",
            metadata={
                "transfer_id": hold.transfer_id,
                "pending_amount_minutes": str(hold.amount_minutes),
            },
        )
    batch.record(
        PendingPosted(
            request_id=command.request_id,
            transfer_id=command.transfer_id,
            amount_minutes=command.amount_minutes,
            posted_amount_minutes=amount,
            actor=command.actor,
            actor_label=command.actor_label,
        )
    )
    return require_transfer(batch, command.transfer_id).view()


def void_pending(batch: Batch, command: VoidPending) -> TransferView:
    earlier = earlier_request(batch, command)
    transfer = require_transfer(batch, command.transfer_id)
    if earlier is not None:
        return transfer.view()
    pool_rules.check_not_grant(batch, _open_hold(batch, transfer))
    batch.record(
        PendingVoided(
            request_id=command.request_id,
            transfer_id=command.transfer_id,
            reason=command.reason,
            actor=command.actor,
            actor_label=command.actor_label,
        )
    )
    return require_transfer(batch, command.transfer_id).view()


def expire_due(batch: Batch, now: datetime) -> None:
    """Expire every hold whose deadline is at or before `now`, in deadline order."""
    for transfer_id in batch.due_holds(now):
        batch.record(PendingExpired(transfer_id=transfer_id))


def _open_hold(batch: Batch, transfer: TransferRecord) -> Hold:
    """The hold of a transfer that is pending and still unresolved, else the named refusal."""
    metadata = {"transfer_id": transfer.transfer_id}
    if transfer.kind != "pending":
        raise PreconditionFailed(
            "TRANSFER_NOT_PENDING",
            f"transfer {transfer.transfer_id!r} is {transfer.kind}, not pending",
            metadata=metadata,
        )
    hold = batch.hold(transfer.transfer_id)
    if hold is None:
        status = transfer.status
        raise PreconditionFailed(
            "PENDING_TRANSFER_EXPIRED"
            if status == "expired"
            else f"PENDING_TRANSFER_ALREADY_{status.upper()}",
            f"pending transfer {transfer.transfer_id!r} was already {status}",
            metadata={**metadata, "status": status},
        )
    return hold


def _release(
    batch: Batch, transfer_id: str, status: str, version: int, timestamp: datetime
) -> Hold:
    """Drop a resolved transfer's hold from both accounts (used by apply only)."""
    hold = batch.remove_hold(transfer_id)
    pool_rules.grant_released(batch, hold, status, version, timestamp)
    payer = batch.account_for_update(hold.payer_account_id)
    payee = batch.account_for_update(hold.payee_account_id)
    payer.pending_debit_minutes -= hold.amount_minutes
    payee.pending_credit_minutes -= hold.amount_minutes
    payer.touch(timestamp, version)
    payee.touch(timestamp, version)
    return hold


def _resolved_record(
    records: RecordBook, transfer_id: str, status: str, version: int, timestamp: datetime
) -> TransferRecord:
    record = records.transfer(transfer_id)
    assert record is not None, f"{transfer_id} has no record"
    assert record.status == "pending", f"{transfer_id} resolved twice"
    record.status = status
    record.resolved_at = timestamp
    record.position = version
    records.changed(record)
    return record


@event_type
@dataclass(frozen=True, slots=True)
class PendingPosted(Event):
    TYPE = "PendingPosted"
    request_id: str
    transfer_id: str
    # As asked (None: all of it), and what that came to.
    amount_minutes: int | None
    posted_amount_minutes: int
    actor: str
    actor_label: str

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        hold = _release(batch, self.transfer_id, "posted", version, timestamp)
        batch.account_for_update(
            hold.payer_account_id
        ).balance_minutes -= self.posted_amount_minutes
        batch.account_for_update(
            hold.payee_account_id
        ).balance_minutes += self.posted_amount_minutes
        if batch.records is None:
            return
        record = _resolved_record(batch.records, self.transfer_id, "posted", version, timestamp)
        record.posted_amount_minutes = self.posted_amount_minutes
        content = {
            "request_id": self.request_id,
            "transfer_id": self.transfer_id,
            "amount_minutes": self.amount_minutes,
        }
        batch.records.add_request(RequestRecord(self.request_id, "PostPending", content, version))


@event_type
@dataclass(frozen=True, slots=True)
class PendingVoided(Event):
    TYPE = "PendingVoided"
    request_id: str
    transfer_id: str
    reason: str
    actor: str
    actor_label: str

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        _release(batch, self.transfer_id, "voided", version, timestamp)
        if batch.records is None:
            return
        record = _resolved_record(batch.records, self.transfer_id, "voided", version, timestamp)
        record.reason = self.reason
        content = {
            "request_id": self.request_id,
            "transfer_id": self.transfer_id,
            "reason": self.reason,
        }
        batch.records.add_request(RequestRecord(self.request_id, "VoidPending", content, version))


@event_type
@dataclass(frozen=True, slots=True)
class PendingExpired(Event):
    TYPE = "PendingExpired"
    transfer_id: str

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        _release(batch, self.transfer_id, "expired", version, timestamp)
        if batch.records is not None:
            _resolved_record(batch.records, self.transfer_id, "expired", version, timestamp)
