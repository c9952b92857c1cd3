"""Loading a bank's decision state: its latest snapshot, then the events after it.

Each replayed event's chain hash is recomputed from its stored bytes and compared with the
hash kept for it, continuing from the snapshot's chain head; a mismatch refuses the bank
(HISTORY_DAMAGED) rather than serve a history that does not verify. Loading costs the
bank's accounts and open holds plus the events since the snapshot, whatever its history's
length, and it reads the log in bounded pages.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from ledger.domain import canonical, chain, history
from ledger.domain.batch import Batch
from ledger.domain.errors import HistoryDamaged
from ledger.domain.records import RecordBook
from ledger.domain.state import BankState, SnapshotUnreadable
from ledger.storage.store import LedgerStore, events_per_read_max

log = logging.getLogger(__name__)

# Reads of the log while loading, verifying or replaying a bank stay near this size.
page_bytes_max = 16 * 1024 * 1024


def load_bank(store: LedgerStore, bank_uuid: str) -> BankState:
    """The bank's state as committed (version 0 if the bank does not exist)."""
    snapshot = store.snapshot(bank_uuid)
    state = BankState(bank_uuid=bank_uuid)
    if snapshot is not None:
        try:
            state = BankState.from_snapshot(canonical.decode_trusted(snapshot.state))
        except SnapshotUnreadable as error:
            # A snapshot is a cache of the history: one this code cannot read (an older
            # format) costs a replay from the first event, not the bank. The replayed
            # changes count towards the next snapshot, which replaces it.
            log.warning(
                "snapshot_unreadable bank_uuid=%s version=%s why=%s; replaying the history",
                bank_uuid,
                snapshot.version,
                error,
            )
            catch_up(store, state)
            return state
        if (state.bank_uuid, state.version, state.chain_head) != (
            bank_uuid,
            snapshot.version,
            snapshot.chain_head,
        ):
            raise _damaged(bank_uuid, snapshot.version, "the snapshot does not match its row")
    catch_up(store, state)
    return state


def _pages(store: LedgerStore, bank_uuid: str, version: int) -> Iterator[list[tuple[int, bytes]]]:
    """The events after `version` in pages of at most `page_bytes_max` (or one event).

    One event can hold a whole batch (hundreds of KB), so a page bounded by a count alone
    could be hundreds of MB: each page's count is chosen from the events' stored sizes,
    which the store reads without their bytes.
    """
    while True:
        sizes = store.event_sizes_after(bank_uuid, version, events_per_read_max)
        count = total_bytes = 0
        for size in sizes:
            if count and total_bytes + size > page_bytes_max:
                break
            count, total_bytes = count + 1, total_bytes + size
        page = store.events_after(bank_uuid, version, count) if count else []
        if not page:
            return
        yield page
        version = page[-1][0]


def catch_up(store: LedgerStore, state: BankState) -> int:
    """Apply the committed events after the state's version; returns how many."""
    applied = 0
    for page in _pages(store, state.bank_uuid, state.version):
        hashes = store.chain_hashes(state.bank_uuid, state.version, page[-1][0])
        batch = Batch(state, None, None)
        head = state.chain_head
        for version, stored in page:
            if version != batch.version + 1:
                raise _damaged(state.bank_uuid, batch.version + 1, "that event is missing")
            head = chain.next_hash(head, stored)
            if hashes.get(version) != head:
                raise _damaged(state.bank_uuid, version, "its chain hash does not follow")
            try:
                decoded = history.decode(state.bank_uuid, stored)
            except history.HistoryError as error:
                raise _damaged(state.bank_uuid, version, str(error)) from None
            if decoded.version != version:
                raise _damaged(state.bank_uuid, version, f"its body says {decoded.version}")
            batch.replay(version, decoded.timestamp, decoded.event)
        batch.commit(head)
        applied += len(page)
    return applied


def _damaged(bank_uuid: str, version: int, why: str) -> HistoryDamaged:
    log.error("history_damaged bank_uuid=%s version=%s why=%s", bank_uuid, version, why)
    return HistoryDamaged(
        "HISTORY_DAMAGED",
        f"the stored history of this bank does not verify at position {version}; an operator"
        " must restore it (timebank-ledger verify shows where)",
        metadata={"position": str(version)},
    )


def stored_rows(store: LedgerStore, bank_uuid: str) -> Iterator[tuple[int, bytes, str]]:
    """(version, stored bytes, chain hash kept for it) of every event of a bank, in order,
    read in bounded pages (a hash missing from ledger_chain comes back as "")."""
    for page in _pages(store, bank_uuid, 0):
        hashes = store.chain_hashes(bank_uuid, page[0][0] - 1, page[-1][0])
        for event_version, stored in page:
            yield event_version, stored, hashes.get(event_version, "")


def replay_from_start(store: LedgerStore, bank_uuid: str) -> tuple[BankState, RecordBook]:
    """The bank's state and index records rebuilt from its whole stored history."""
    records = history.empty_records()
    rows = ((version, stored) for version, stored, _ in stored_rows(store, bank_uuid))
    return history.replay(bank_uuid, rows, records), records
