"""Events as projections read them: straight from the stored bytes (history format v2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.domain import canonical


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One stored event: where it is in the log and in its bank's history, and its fields.

    Fields read as attributes too (`event.account_id`), as projections use them."""

    notification_id: int
    bank_uuid: str
    version: int
    type: str
    timestamp: datetime
    fields: Mapping[str, Any]
    # The event's bytes exactly as stored and hashed (the audit projection checks them).
    stored: bytes = b""

    def __getattr__(self, name: str) -> Any:
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(name) from None


def log_event(notification_id: int, stored: bytes) -> LogEvent:
    """Read a stored event of the log (bytes the ledger wrote, so parsed without re-checking)."""
    data = bytes(stored)
    body = canonical.decode_trusted(data)
    return LogEvent(
        notification_id=notification_id,
        bank_uuid=body["bank"],
        version=body["version"],
        type=body["type"],
        timestamp=datetime.fromisoformat(body["timestamp"]),
        fields=body["fields"],
        stored=data,
    )
