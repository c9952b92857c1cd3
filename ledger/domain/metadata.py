"""Account metadata: a display label and a few key/value tags, changed by events.

Metadata helps a bank's front-end show and sort accounts; no rule of the ledger reads it,
so it is not decision state: the bank's writer keeps none of it in memory, and the index
table `ledger_account_metadata` holds each account's current label and tags. The history
is immutable, so metadata must never hold personal data (names, health details): a bank
puts an id there that its own front-end resolves (see the README).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.domain.accounts import check_not_closed, require_account
from ledger.domain.batch import Batch
from ledger.domain.commands import ChangeAccountMetadata, metadata_change_content
from ledger.domain.events import Event, event_type
from ledger.domain.idempotency import earlier_request
from ledger.domain.records import AccountMetadataRecord, RequestRecord
from ledger.domain.views import AccountView


def change_metadata(batch: Batch, command: ChangeAccountMetadata) -> AccountView:
    """Records the change; the view returned has no metadata (the Ledger reads it back)."""
    earlier = earlier_request(batch, command)
    account = require_account(batch, command.account_id)
    if earlier is not None:
        return account.view()
    check_not_closed(account)
    batch.record(
        AccountMetadataChanged(
            request_id=command.request_id,
            account_id=command.account_id,
            label=command.label,
            tags=None if command.tags is None else dict(command.tags),
            actor=command.actor,
            actor_label=command.actor_label,
        )
    )
    return require_account(batch, command.account_id).view()


@event_type
@dataclass(frozen=True, slots=True)
class AccountMetadataChanged(Event):
    """The label and tags set (each replaced whole); None: that one is not changed."""

    TYPE = "AccountMetadataChanged"
    request_id: str
    account_id: str
    label: str | None
    tags: dict[str, str] | None
    actor: str
    actor_label: str

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        batch.account_for_update(self.account_id).touch(timestamp, version)
        if batch.records is None:
            return
        batch.records.metadata_changes.append(
            AccountMetadataRecord(self.account_id, self.label, self.tags, version)
        )
        content = metadata_change_content(self.request_id, self.account_id, self.label, self.tags)
        batch.records.add_request(
            RequestRecord(self.request_id, "ChangeAccountMetadata", content, version)
        )
