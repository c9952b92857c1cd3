"""A bank's history in its stored form: each event as canonical bytes, chained by sha256.

`encode()` turns the events a batch recorded into what the store keeps (and the hash chain
continues across batches); `decode()` reads a stored event back. The event types are those
registered by the domain's modules, imported here so that every name is known.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.domain import (  # noqa: F401
    access,
    accounts,
    bank,
    canonical,
    chain,
    holds,
    pools,
    transfers,
)
from ledger.domain.batch import Batch
from ledger.domain.events import Event, type_named
from ledger.domain.records import RecordBook
from ledger.domain.state import BankState


class HistoryError(Exception):
    """A stored event cannot be read back, or breaks its bank's hash chain."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event as stored: its place, its type name, its bytes and its chain hash."""

    bank_uuid: str
    version: int
    type: str
    timestamp: datetime
    stored: bytes
    chain_hash: str


@dataclass(frozen=True, slots=True)
class DecodedEvent:
    version: int
    timestamp: datetime
    event: Event


def encode(batch: Batch, previous_hash: str) -> list[StoredEvent]:
    """The stored form of the events a batch recorded, chained after `previous_hash`."""
    stored_events = []
    for version, timestamp, event in batch.events:
        stored = chain.event_bytes(batch.bank_uuid, version, event.TYPE, timestamp, event.fields())
        previous_hash = chain.next_hash(previous_hash, stored)
        stored_events.append(
            StoredEvent(batch.bank_uuid, version, event.TYPE, timestamp, stored, previous_hash)
        )
    return stored_events


def decode(bank_uuid: str, stored: bytes, *, trusted: bool = True) -> DecodedEvent:
    """Read one stored event of the bank back (`trusted`: bytes from this ledger's own store)."""
    try:
        body: Any = canonical.decode_trusted(stored) if trusted else canonical.decode(stored)
        if body["bank"] != bank_uuid:
            raise HistoryError(f"event of bank {body['bank']} in the history of {bank_uuid}")
        event_class = type_named(body["type"])
        if event_class is None:
            raise HistoryError(f"unknown event type {body['type']!r}")
        event = event_class(**body["fields"])
        return DecodedEvent(body["version"], datetime.fromisoformat(body["timestamp"]), event)
    except (KeyError, TypeError, ValueError) as error:
        raise HistoryError(f"stored event cannot be read: {error}") from None


def replay(
    bank_uuid: str, rows: Iterable[tuple[int, bytes]], records: RecordBook | None = None
) -> BankState:
    """A bank's state rebuilt from its stored events alone, from event 1 (the chain head is
    recomputed from the bytes). With `records`, the index records are rebuilt into it too."""
    state = BankState(bank_uuid=bank_uuid)
    batch = Batch(state, None, records)
    head = state.chain_head
    for version, stored in rows:
        decoded = decode(bank_uuid, stored)
        if decoded.version != version:
            raise HistoryError(f"event {version} says it is event {decoded.version}")
        batch.replay(version, decoded.timestamp, decoded.event)
        head = chain.next_hash(head, stored)
    batch.commit(head)
    return state


def empty_records() -> RecordBook:
    """A RecordBook that starts empty (for rebuilding the records from the history)."""
    return RecordBook(lambda ids: {}, lambda ids: {})
