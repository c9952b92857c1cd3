"""Transfers: recording them (one, or a batch linked or not) and reversing them.

A transfer moves minutes from the payer (who received help) to the payee (who gave it):
immediate transfers post at once; pending ones hold the amount against both accounts'
limits until posted, voided or expired (holds.py). New transfers recorded together share
one `TransfersCreated` event (up to `transfers_per_event_max`), so a batch of commands costs
one event, one row and one hash. A reversal is a new transfer that moves a posted transfer's
minutes back; nothing is ever edited or deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ledger.domain import chain, limits, pool_rules
from ledger.domain.accounts import check_not_closed, check_open, require_account
from ledger.domain.batch import Batch
from ledger.domain.commands import CreateTransfer, CreateTransfers, ReverseTransfer
from ledger.domain.consent import check_consent
from ledger.domain.errors import DomainError, InvalidInput, NotFound, PreconditionFailed
from ledger.domain.events import Event, event_type
from ledger.domain.idempotency import check_retry
from ledger.domain.overlay import LimitOverlay
from ledger.domain.records import TransferRecord
from ledger.domain.state import Hold
from ledger.domain.views import BatchItemResult, TransferView


def require_transfer(batch: Batch, transfer_id: str, field: str = "transfer_id") -> TransferRecord:
    assert batch.records is not None
    record = batch.records.transfer(transfer_id)
    if record is None:
        raise NotFound(
            "TRANSFER_NOT_FOUND",
            f"transfer {transfer_id!r} does not exist in this bank",
            field=field,
            metadata={"transfer_id": transfer_id},
        )
    return record


def _earlier_transfer(
    batch: Batch, command: CreateTransfer | ReverseTransfer
) -> TransferView | None:
    """The transfer an earlier use of the id created, if the command repeats it exactly."""
    assert batch.records is not None
    earlier = batch.records.transfer(command.transfer_id)
    if earlier is None:
        return None
    check_retry(command, *earlier.creation_content())
    return earlier.view()


# --------------------------------------------------------------------- new transfers


def create_transfer(batch: Batch, command: CreateTransfer) -> TransferView:
    earlier = _earlier_transfer(batch, command)
    if earlier is not None:
        return earlier
    _check_transfer(batch, command, LimitOverlay())
    return _record_new(batch, command)


def create_transfers(batch: Batch, command: CreateTransfers) -> list[BatchItemResult]:
    if command.linked:
        return _create_linked(batch, command.items)
    results = []
    for item in command.items:
        try:
            item.validate()
            results.append(BatchItemResult(create_transfer(batch, item), None))
        except DomainError as error:
            results.append(BatchItemResult(None, error))
    return results


def _create_linked(batch: Batch, items: tuple[CreateTransfer, ...]) -> list[BatchItemResult]:
    """All or nothing: check every item against the balances the earlier items leave."""
    overlay = LimitOverlay()
    earlier: list[TransferView | None] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        try:
            if item.transfer_id in seen:
                raise InvalidInput(
                    "DUPLICATE_ID_IN_BATCH",
                    f"transfer_id {item.transfer_id!r} appears twice in this linked batch",
                    field="transfer_id",
                )
            seen.add(item.transfer_id)
            item.validate()
            found = _earlier_transfer(batch, item)
            if found is None:
                _check_transfer(batch, item, overlay)
            earlier.append(found)
        except DomainError as error:
            return _linked_failure(items, index, error)
    return [
        BatchItemResult(found or _record_new(batch, item), None)
        for item, found in zip(items, earlier, strict=True)
    ]


def _linked_failure(
    items: tuple[CreateTransfer, ...], failed_index: int, error: DomainError
) -> list[BatchItemResult]:
    """The refused item keeps its own error; every other item fails with LINKED_EVENT_FAILED
    (TigerBeetle's name, as the proto documents it), naming itself and the item at fault."""
    return [
        BatchItemResult(
            None,
            error
            if index == failed_index
            else PreconditionFailed(
                "LINKED_EVENT_FAILED",
                f"transfer {item.transfer_id!r} not recorded: item {failed_index} of this"
                " linked batch was refused",
                metadata={
                    "transfer_id": item.transfer_id,
                    "failed_index": str(failed_index),
                    "failed_transfer_id": items[failed_index].transfer_id,
                },
            ),
        )
        for index, item in enumerate(items)
    ]


def _check_transfer(batch: Batch, command: CreateTransfer, overlay: LimitOverlay) -> None:
    payer = require_account(batch, command.payer_account_id, "payer_account_id")
    payee = require_account(batch, command.payee_account_id, "payee_account_id")
    for account in (payer, payee):
        check_open(account)
    pool_rules.check_transfer(batch, payer, payee)
    check_consent(
        batch, payer, via_front_end=command.via_front_end, member_subject=command.member_subject
    )
    overlay.check_and_add(payer, payee, command.amount_minutes, pending=command.pending)


def _record_new(batch: Batch, command: CreateTransfer) -> TransferView:
    deadline = (
        batch.timestamp + timedelta(seconds=command.timeout_seconds)
        if command.pending and command.timeout_seconds
        else None
    )
    item: dict[str, Any] = command.content()
    item["actor"] = command.actor
    item["actor_label"] = command.actor_label
    item["deadline"] = "" if deadline is None else chain.timestamp_text(deadline)
    group = _open_group(batch)
    if group is not None:
        # Joins the batch's open group: same event, same version, same timestamp.
        version, event = group
        event.transfers.append(item)
        batch.changes += 1
        apply_new_transfer(batch, item, version, batch.timestamp)
    else:
        batch.record(TransfersCreated(transfers=[item]))
    assert batch.records is not None
    return require_transfer(batch, command.transfer_id).view()


# For other modules that record a transfer they checked themselves (pools.py: grants).
record_new = _record_new


def _open_group(batch: Batch) -> tuple[int, TransfersCreated] | None:
    """The batch's TransfersCreated event a new transfer may join, with its version: the last
    event, or the one before it when the last is the group of grant requests that follows
    it (pools.py). Either way nothing but grants follows the transfers, and applying a grant
    request needs only its own transfer, so replaying the two events gives the same state."""
    events = batch.events
    for back in (1, 2):
        if len(events) < back:
            return None
        version, _, event = events[-back]
        if isinstance(event, TransfersCreated):
            if len(event.transfers) < limits.transfers_per_event_max:
                return version, event
            return None
        if back == 1 and type(event).TYPE != "GrantsRequested":
            return None
    return None


@event_type
@dataclass(frozen=True, slots=True)
class TransfersCreated(Event):
    """New transfers recorded together. Each item: the CreateTransfer fields (transfer_id,
    payer_account_id, payee_account_id, amount_minutes, memo, category, service_date, pending,
    timeout_seconds), actor, actor_label and deadline (ISO 8601, or "" for none)."""

    TYPE = "TransfersCreated"
    transfers: list[dict[str, Any]]

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        # The numbers of this group's transfers, for the grant requests that may follow.
        batch.group_transfer_numbers.clear()
        for item in self.transfers:
            apply_new_transfer(batch, item, version, timestamp)

    def changes(self) -> int:
        return len(self.transfers)


def apply_new_transfer(
    batch: Batch, item: dict[str, Any], version: int, timestamp: datetime
) -> None:
    """One new transfer's effect: a hold (pending) or a posting (immediate)."""
    amount = item["amount_minutes"]
    payer = batch.account_for_update(item["payer_account_id"])
    payee = batch.account_for_update(item["payee_account_id"])
    payer.touch(timestamp, version)
    payee.touch(timestamp, version)
    deadline = datetime.fromisoformat(item["deadline"]) if item["deadline"] else None
    if item["pending"]:
        payer.pending_debit_minutes += amount
        payee.pending_credit_minutes += amount
        batch.add_hold(
            Hold(item["transfer_id"], payer.account_id, payee.account_id, amount, deadline)
        )
    else:
        payer.balance_minutes -= amount
        payee.balance_minutes += amount
    number = batch.next_transfer_number()
    batch.group_transfer_numbers[item["transfer_id"]] = number
    if batch.records is None:
        return
    batch.records.add_transfer(
        TransferRecord(
            transfer_id=item["transfer_id"],
            number=number,
            kind="pending" if item["pending"] else "immediate",
            status="pending" if item["pending"] else "posted",
            payer_account_id=payer.account_id,
            payee_account_id=payee.account_id,
            amount_minutes=amount,
            posted_amount_minutes=0 if item["pending"] else amount,
            memo=item["memo"],
            category=item["category"],
            service_date=item["service_date"],
            timeout_seconds=item["timeout_seconds"],
            created_at=timestamp,
            deadline=deadline,
            # Immediate transfers are never "resolved": resolved_at is for pending ones.
            resolved_at=None,
            reverses_transfer_id="",
            reversed_by_transfer_id="",
            reason="",
            actor=item["actor"],
            actor_label=item["actor_label"],
            created_position=version,
            position=version,
        )
    )


# --------------------------------------------------------------------- reversals


def reverse_transfer(batch: Batch, command: ReverseTransfer) -> TransferView:
    earlier = _earlier_transfer(batch, command)
    if earlier is not None:
        return earlier
    original = require_transfer(batch, command.reverses_transfer_id, "reverses_transfer_id")
    _check_reversible(original)
    # The reversal moves the posted minutes back: the original payee pays the original payer.
    payer = require_account(batch, original.payee_account_id)
    payee = require_account(batch, original.payer_account_id)
    for account in (payer, payee):
        # A coordinator may reverse on a frozen account; a closed one takes nothing.
        check_not_closed(account)
    LimitOverlay().check_and_add(payer, payee, original.posted_amount_minutes, pending=False)
    batch.record(
        TransferReversed(
            transfer_id=command.transfer_id,
            reverses_transfer_id=command.reverses_transfer_id,
            payer_account_id=payer.account_id,
            payee_account_id=payee.account_id,
            amount_minutes=original.posted_amount_minutes,
            reason=command.reason,
            actor=command.actor,
            actor_label=command.actor_label,
        )
    )
    return require_transfer(batch, command.transfer_id).view()


def _check_reversible(original: TransferRecord) -> None:
    metadata = {"transfer_id": original.transfer_id}
    if original.kind == "reversal":
        raise PreconditionFailed(
            "CANNOT_REVERSE_REVERSAL", "a reversal cannot itself be reversed", metadata=metadata
        )
    if original.status != "posted":
        raise PreconditionFailed(
            "TRANSFER_NOT_POSTED",
            f"transfer {original.transfer_id!r} is {original.status}, not posted",
            metadata=metadata,
        )
    if original.reversed_by_transfer_id:
        raise PreconditionFailed(
            "TRANSFER_ALREADY_REVERSED",
            f"transfer {original.transfer_id!r} was already reversed",
            metadata={**metadata, "reversed_by_transfer_id": original.reversed_by_transfer_id},
        )


@event_type
@dataclass(frozen=True, slots=True)
class TransferReversed(Event):
    TYPE = "TransferReversed"
    transfer_id: str
    reverses_transfer_id: str
    payer_account_id: str
    payee_account_id: str
    amount_minutes: int
    reason: str
    actor: str
    actor_label: str

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        payer = batch.account_for_update(self.payer_account_id)
        payee = batch.account_for_update(self.payee_account_id)
        payer.balance_minutes -= self.amount_minutes
        payee.balance_minutes += self.amount_minutes
        payer.touch(timestamp, version)
        payee.touch(timestamp, version)
        number = batch.next_transfer_number()
        if batch.records is None:
            return
        original = batch.records.transfer(self.reverses_transfer_id)
        assert original is not None, f"reversal of unknown {self.reverses_transfer_id}"
        original.reversed_by_transfer_id = self.transfer_id
        original.position = version
        batch.records.changed(original)
        batch.records.add_transfer(
            TransferRecord(
                transfer_id=self.transfer_id,
                number=number,
                kind="reversal",
                status="posted",
                payer_account_id=self.payer_account_id,
                payee_account_id=self.payee_account_id,
                amount_minutes=self.amount_minutes,
                posted_amount_minutes=self.amount_minutes,
                memo="",
                category="",
                service_date="",
                timeout_seconds=0,
                created_at=timestamp,
                deadline=None,
                resolved_at=None,
                reverses_transfer_id=self.reverses_transfer_id,
                reversed_by_transfer_id="",
                reason=self.reason,
                actor=self.actor,
                actor_label=self.actor_label,
                created_position=version,
                position=version,
            )
        )
