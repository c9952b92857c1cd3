"""Accounts: opening them, changing their limits and status; the rules and the events.

An account has a lower limit (<= 0: how far into debt it may go) and an optional upper limit
(>= 0: a cap on hoarding). Lowering a limit below the balance is allowed: history is never
rewritten, the limit only blocks further debits. Frozen accounts neither pay nor receive
(a coordinator may still reverse on them); a closed account takes nothing, ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.domain.batch import Batch
from ledger.domain.commands import (
    ChangeLimits,
    ChangeStatus,
    OpenAccount,
    limits_change_content,
)
from ledger.domain.errors import NotFound, PreconditionFailed
from ledger.domain.events import Event, event_type
from ledger.domain.idempotency import check_retry, earlier_request
from ledger.domain.records import RequestRecord
from ledger.domain.state import Account
from ledger.domain.views import AccountView

# What each status action makes of an account.
_STATUS_AFTER = {"freeze": "frozen", "unfreeze": "open", "close": "closed"}


def require_account(batch: Batch, account_id: str, field: str = "account_id") -> Account:
    account = batch.account(account_id)
    if account is None:
        raise NotFound(
            "ACCOUNT_NOT_FOUND",
            f"account {account_id!r} does not exist in this bank",
            field=field,
            metadata={"account_id": account_id},
        )
    return account


def status_error(reason: str, account: Account, message: str) -> PreconditionFailed:
    return PreconditionFailed(
        reason,
        f"account {account.account_id!r}: {message}",
        metadata={"account_id": account.account_id, "status": account.status},
    )


def check_open(account: Account) -> None:
    """Only an open account pays or receives."""
    if account.status != "open":
        reason = "ACCOUNT_CLOSED" if account.status == "closed" else "ACCOUNT_FROZEN"
        raise status_error(reason, account, f"the account is {account.status}")


def check_not_closed(account: Account) -> None:
    if account.status == "closed":
        raise status_error("ACCOUNT_CLOSED", account, "the account is closed")


# --------------------------------------------------------------------- opening


def open_account(batch: Batch, command: OpenAccount) -> AccountView:
    existing = batch.account(command.account_id)
    if existing is not None:
        check_retry(command, "OpenAccount", _opening_content(existing))
        return existing.view()
    batch.record(
        AccountOpened(
            account_id=command.account_id,
            kind=command.kind,
            lower_limit_minutes=command.lower_limit_minutes,
            upper_limit_minutes=command.upper_limit_minutes,
            actor=command.actor,
            actor_label=command.actor_label,
        )
    )
    return require_account(batch, command.account_id).view()


def _opening_content(account: Account) -> dict[str, object]:
    return {
        "account_id": account.account_id,
        "kind": account.kind,
        "lower_limit_minutes": account.opened_lower_limit_minutes,
        "upper_limit_minutes": account.opened_upper_limit_minutes,
    }


@event_type
@dataclass(frozen=True, slots=True)
class AccountOpened(Event):
    TYPE = "AccountOpened"
    account_id: str
    kind: str
    lower_limit_minutes: int
    upper_limit_minutes: int | None
    actor: str
    actor_label: str

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        batch.add_account(
            Account(
                account_id=self.account_id,
                number=batch.account_count + 1,
                kind=self.kind,
                status="open",
                lower_limit_minutes=self.lower_limit_minutes,
                upper_limit_minutes=self.upper_limit_minutes,
                opened_lower_limit_minutes=self.lower_limit_minutes,
                opened_upper_limit_minutes=self.upper_limit_minutes,
                opened_at=timestamp,
                updated_at=timestamp,
                position=version,
            )
        )


# --------------------------------------------------------------------- limits


def change_limits(batch: Batch, command: ChangeLimits) -> AccountView:
    earlier = earlier_request(batch, command)
    account = require_account(batch, command.account_id)
    if earlier is not None:
        return account.view()
    check_not_closed(account)
    # Only the limits the update mask names change (AIP-134); the event holds both limits as
    # they are after it. Lowering a limit below the balance is allowed: it only blocks debits.
    mask = command.update_mask
    batch.record(
        AccountLimitsChanged(
            request_id=command.request_id,
            account_id=command.account_id,
            lower_limit_minutes=(
                command.lower_limit_minutes
                if "lower_limit_minutes" in mask
                else account.lower_limit_minutes
            ),
            upper_limit_minutes=(
                command.upper_limit_minutes
                if "upper_limit_minutes" in mask
                else account.upper_limit_minutes
            ),
            update_mask=list(mask),
            reason=command.reason,
            actor=command.actor,
            actor_label=command.actor_label,
        )
    )
    return require_account(batch, command.account_id).view()


@event_type
@dataclass(frozen=True, slots=True)
class AccountLimitsChanged(Event):
    """The account's limits after the change; `update_mask` names the ones it set."""

    TYPE = "AccountLimitsChanged"
    request_id: str
    account_id: str
    lower_limit_minutes: int
    upper_limit_minutes: int | None
    update_mask: list[str]
    reason: str
    actor: str
    actor_label: str

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        account = batch.account_for_update(self.account_id)
        account.lower_limit_minutes = self.lower_limit_minutes
        account.upper_limit_minutes = self.upper_limit_minutes
        account.touch(timestamp, version)
        if batch.records is not None:
            content = limits_change_content(
                self.request_id,
                self.account_id,
                self.update_mask,
                self.lower_limit_minutes,
                self.upper_limit_minutes,
                self.reason,
            )
            batch.records.add_request(
                RequestRecord(self.request_id, "ChangeLimits", content, version)
            )


# --------------------------------------------------------------------- status


def change_status(batch: Batch, command: ChangeStatus) -> AccountView:
    earlier = earlier_request(batch, command)
    account = require_account(batch, command.account_id)
    if earlier is not None:
        return account.view()
    check_not_closed(account)
    if command.action == "freeze" and account.status != "open":
        raise status_error("ACCOUNT_NOT_OPEN", account, "only an open account can be frozen")
    if command.action == "unfreeze" and account.status != "frozen":
        raise status_error("ACCOUNT_NOT_FROZEN", account, "the account is not frozen")
    if command.action == "close":
        _check_closable(account)
    batch.record(
        AccountStatusChanged(
            request_id=command.request_id,
            account_id=command.account_id,
            action=command.action,
            status=_STATUS_AFTER[command.action],
            reason=command.reason,
            actor=command.actor,
            actor_label=command.actor_label,
        )
    )
    return require_account(batch, command.account_id).view()


def _check_closable(account: Account) -> None:
    if account.balance_minutes != 0:
        raise status_error(
            "ACCOUNT_HAS_BALANCE", account, "only an account with a zero balance can be closed"
        )
    if account.pending_debit_minutes or account.pending_credit_minutes:
        raise status_error(
            "ACCOUNT_HAS_PENDING",
            account,
            "the account has pending transfers; post or void them first",
        )


@event_type
@dataclass(frozen=True, slots=True)
class AccountStatusChanged(Event):
    TYPE = "AccountStatusChanged"
    request_id: str
    account_id: str
    action: str
    status: str
    reason: str
    actor: str
    actor_label: str

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        account = batch.account_for_update(self.account_id)
        account.status = self.status
        account.touch(timestamp, version)
        if batch.records is not None:
            content = {
                "request_id": self.request_id,
                "account_id": self.account_id,
                "action": self.action,
                "reason": self.reason,
            }
            batch.records.add_request(
                RequestRecord(self.request_id, "ChangeStatus", content, version)
            )
