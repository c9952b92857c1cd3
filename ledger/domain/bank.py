"""A time bank: its creation, and the one entry point that runs any command on a batch.

The rules live in small modules, one concern each: accounts.py (opening, limits, status),
metadata.py (labels and tags), transfers.py (new transfers, batches, reversals), holds.py
(post, void, expire), idempotency.py (retries of client-chosen ids), access.py (keys and
policy), consent.py (member tokens) and pools.py (pool policies, grants and approvals).
This module only creates banks and sends each command to its module. Every command checks
everything before it records an event, so a refused command changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from ledger.domain import access, accounts, holds, metadata, pools, transfers
from ledger.domain.batch import Batch
from ledger.domain.commands import (
    ChangeAccountMetadata,
    ChangeLimits,
    ChangePoolPolicy,
    ChangeStatus,
    Command,
    CreateBank,
    CreatePool,
    CreateTransfer,
    CreateTransfers,
    DecideGrant,
    IssueApiKey,
    OpenAccount,
    PostPending,
    RegisterMemberTokenKey,
    RemoveMemberTokenKey,
    RequestGrant,
    ReverseTransfer,
    RevokeApiKey,
    SetBankPolicy,
    VoidPending,
)
from ledger.domain.errors import NotFound
from ledger.domain.events import Event, event_type
from ledger.domain.idempotency import check_retry
from ledger.domain.views import BankView

Result = Any


def bank_uuid(bank_id: str) -> UUID:
    """The id of a bank's history, derived from its client-chosen id."""
    return uuid5(NAMESPACE_URL, f"timebank-ledger:bank:{bank_id}")


def bank_not_found(bank_id: str) -> NotFound:
    return NotFound(
        "BANK_NOT_FOUND",
        f"bank {bank_id!r} does not exist",
        field="bank_id",
        metadata={"bank_id": bank_id},
    )


def create_bank(batch: Batch, command: CreateBank) -> BankView:
    if batch.exists:
        check_retry(command, "CreateBank", {"bank_id": batch.bank_id, "name": batch.name})
        return _bank_view(batch)
    batch.record(
        BankCreated(
            bank_id=command.bank_id,
            name=command.name,
            actor=command.actor,
            actor_label=command.actor_label,
        )
    )
    return _bank_view(batch)


def _bank_view(batch: Batch) -> BankView:
    assert batch.created_at is not None
    return BankView(
        bank_id=batch.bank_id,
        name=batch.name,
        created_at=batch.created_at,
        position=batch.version,
        chain_head="",  # known once the batch is encoded; the writer fills it in
        account_count=batch.account_count,
        transfer_count=batch.transfer_count,
        member_tokens_required=batch.member_tokens_required,
    )


@event_type
@dataclass(frozen=True, slots=True)
class BankCreated(Event):
    TYPE = "BankCreated"
    bank_id: str
    name: str
    actor: str
    actor_label: str

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        batch.create(self.bank_id, self.name, timestamp, self.actor)


_HANDLERS: dict[type[Command], Callable[[Batch, Any], Result]] = {
    CreateBank: create_bank,
    OpenAccount: accounts.open_account,
    ChangeLimits: accounts.change_limits,
    ChangeAccountMetadata: metadata.change_metadata,
    ChangeStatus: accounts.change_status,
    CreateTransfer: transfers.create_transfer,
    CreateTransfers: transfers.create_transfers,
    PostPending: holds.post_pending,
    VoidPending: holds.void_pending,
    ReverseTransfer: transfers.reverse_transfer,
    IssueApiKey: access.issue_api_key,
    RevokeApiKey: access.revoke_api_key,
    RegisterMemberTokenKey: access.register_member_token_key,
    RemoveMemberTokenKey: access.remove_member_token_key,
    SetBankPolicy: access.set_bank_policy,
    CreatePool: pools.create_pool,
    ChangePoolPolicy: pools.change_pool_policy,
    RequestGrant: pools.request_grant,
    DecideGrant: pools.decide_grant,
}


def execute(batch: Batch, bank_id: str, command: Command) -> Result:
    """Run one validated command in the batch; a refusal raises a DomainError, recording nothing."""
    if not batch.exists and not isinstance(command, CreateBank):
        raise bank_not_found(bank_id)
    return _HANDLERS[type(command)](batch, command)


def new_transfer_ids(commands: Iterable[Command]) -> set[str]:
    """The ids of the transfers a run of commands would create."""
    ids: set[str] = set()
    for command in commands:
        if isinstance(command, CreateTransfer | ReverseTransfer):
            ids.add(command.transfer_id)
        elif isinstance(command, CreateTransfers):
            ids.update(item.transfer_id for item in command.items)
        elif isinstance(command, RequestGrant):
            ids.add(command.grant_id)
    return ids


def referenced_ids(commands: Iterable[Command]) -> tuple[set[str], set[str]]:
    """The transfer ids and request ids a run of commands will look up (fetched at once)."""
    transfer_ids: set[str] = set()
    request_ids: set[str] = set()
    for command in commands:
        if isinstance(command, CreateTransfer):
            transfer_ids.add(command.transfer_id)
        elif isinstance(command, CreateTransfers):
            transfer_ids.update(item.transfer_id for item in command.items)
        elif isinstance(command, ReverseTransfer):
            transfer_ids.update((command.transfer_id, command.reverses_transfer_id))
        elif isinstance(command, PostPending | VoidPending):
            transfer_ids.add(command.transfer_id)
            request_ids.add(command.request_id)
        elif isinstance(
            command,
            ChangeLimits
            | ChangeStatus
            | SetBankPolicy
            | ChangeAccountMetadata
            | CreatePool
            | ChangePoolPolicy,
        ):
            request_ids.add(command.request_id)
        elif isinstance(command, RequestGrant):
            transfer_ids.add(command.grant_id)
        elif isinstance(command, DecideGrant):
            transfer_ids.add(command.grant_id)
            request_ids.add(command.request_id)
    return transfer_ids, request_ids
