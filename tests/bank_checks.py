"""Checks shared by the domain tests: what a bank's stored history and decision state must satisfy.

All of them look at a MemoryBank (tests/domain_harness.py) from the outside: the chain is
recomputed from the stored bytes with hashlib alone, the state is rebuilt from the stored
events (from event 1, or from a snapshot and the events after it) and compared with the live
one, deadlines heap included.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from domain_harness import MemoryBank

from ledger.domain import canonical, chain, history
from ledger.domain.batch import Batch
from ledger.domain.records import RecordBook, RequestRecord, TransferRecord
from ledger.domain.state import BankState

GENESIS = bytes(32)


def body(event: history.StoredEvent) -> dict[str, Any]:
    """What a stored event's bytes say, read with a JSON parser alone."""
    found = json.loads(event.stored)
    assert isinstance(found, dict)
    return found


def created_ids(events: Iterable[history.StoredEvent]) -> list[str]:
    """The ids of the transfers these events created, in order (a group holds several)."""
    return [
        item["transfer_id"]
        for event in events
        if event.type == "TransfersCreated"
        for item in body(event)["fields"]["transfers"]
    ]


def first_break(events: Sequence[history.StoredEvent]) -> int | None:
    """The version of the first row whose kept hash is not sha256(previous hash || its stored
    bytes), or whose bytes do not say the version it is stored at; None if all verify.

    This is what the writer's loader does before it applies a row (HISTORY_DAMAGED otherwise),
    with nothing but hashlib and a JSON parser.
    """
    previous = GENESIS
    for event in events:
        expected = hashlib.sha256(previous + event.stored).hexdigest()
        if event.chain_hash != expected or body(event).get("version") != event.version:
            return event.version
        previous = bytes.fromhex(event.chain_hash)
    return None


def check_history(memory: MemoryBank) -> None:
    """Every stored row verifies from its bytes alone, in order, and reads back as stored."""
    stored = memory.stored
    assert [event.version for event in stored] == list(range(1, len(stored) + 1))
    assert first_break(stored) is None
    assert (stored[-1].chain_hash if stored else chain.GENESIS_HASH) == memory.state.chain_head
    previous_time: datetime | None = None
    for event in stored:
        # The bytes are exactly canonical JSON (the strict decoder re-encodes and compares)...
        found = canonical.decode(event.stored)
        # ...and say what the row says: bank, version, type and time.
        assert (found["bank"], found["version"], found["type"]) == (
            memory.state.bank_uuid,
            event.version,
            event.type,
        )
        assert found["timestamp"] == chain.timestamp_text(event.timestamp)
        # A bank's timestamps never go backwards.
        assert previous_time is None or event.timestamp >= previous_time
        previous_time = event.timestamp


def live_deadlines(state: BankState) -> list[tuple[datetime, str]]:
    """The deadlines heap without the stale entries of holds that are resolved already."""
    return sorted(entry for entry in state.deadlines if entry[1] in state.holds)


def check_deadlines(state: BankState) -> None:
    """Every open hold with a deadline is in the heap exactly once (stale entries aside)."""
    wanted = sorted((h.deadline, h.transfer_id) for h in state.holds.values() if h.deadline)
    assert live_deadlines(state) == wanted


def loaded(snapshot: bytes, tail: Iterable[history.StoredEvent]) -> BankState:
    """What the writer loads: a snapshot's state, then the events after it, whose chain
    continues from the snapshot's head."""
    state = BankState.from_snapshot(canonical.decode(snapshot))
    batch = Batch(state, None, None)
    head = state.chain_head
    for event in tail:
        head = chain.next_hash(head, event.stored)
        assert head == event.chain_hash, f"event {event.version} does not follow the snapshot"
        decoded = history.decode(state.bank_uuid, event.stored)
        batch.replay(event.version, decoded.timestamp, decoded.event)
    batch.commit(head)
    return state


def rebuilt(
    bank_uuid: str, events: Iterable[history.StoredEvent]
) -> tuple[BankState, dict[str, TransferRecord], dict[str, RequestRecord]]:
    """The state and the index records that the stored events alone imply, from event 1.

    The events are applied with an empty RecordBook, so every record they create or change
    is what they say (the chain is not checked here: see `first_break`).
    """
    state = BankState(bank_uuid=bank_uuid)
    records = RecordBook(lambda ids: {}, lambda ids: {})
    batch = Batch(state, None, records)
    head = state.chain_head
    for event in events:
        decoded = history.decode(bank_uuid, event.stored)
        batch.replay(event.version, decoded.timestamp, decoded.event)
        head = event.chain_hash
    batch.commit(head)
    return state, dict(records.changed_transfers), dict(records.new_requests)


def check_replays(memory: MemoryBank) -> None:
    """The live state and records are what the stored history alone rebuilds, and hold together."""
    check_history(memory)
    check_deadlines(memory.state)
    replayed = memory.replayed()
    assert replayed == memory.state
    # The index records written live are the ones the events imply.
    state, transfers, requests = rebuilt(memory.state.bank_uuid, memory.stored)
    assert (state, transfers, requests) == (memory.state, memory.transfers, memory.requests)
    assert live_deadlines(replayed) == live_deadlines(memory.state)
    if memory.state.exists:
        assert replayed.view() == memory.state.view()
    # Invariant 1: within a bank, the sum of all balances is zero.
    assert sum(a.balance_minutes for a in memory.state.accounts.values()) == 0
