"""A bank's history as stored, read in bounded chunks: for streams, exports and the audit side.

Each row is an event's version, type, stored bytes (exactly as hashed) and the chain hash
kept for it in ledger_chain ("" if none is kept). Rows come as the store holds them: a
deleted row is a gap, a changed one is changed; judging them is the verifier's job.

Reads are bounded in events (`events_per_chunk_max`) and in bytes (`chunk_bytes_max`): the
number of events read next is worked out from the sizes seen so far (a grouped event holds
up to 1,000 transfers, so counting events alone bounds nothing), and one event larger than
the byte bound comes alone.

Following: within a bank, versions become visible in order. A bank has one writer at a
time, and a writer commits version n + 1 only after it has seen n committed (a commit that
takes a version already taken fails), so no reader sees n + 1 before n, however late a
commit lands. A follower therefore only ever asks for the versions after the last one it
sent, and never skips one (tests/test_audit_stream.py checks it with delayed commits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

from ledger.storage.store import LedgerStore

events_per_chunk_max = 1000
chunk_bytes_max = 1024 * 1024
# Events read first, before any size is known (at most a few MiB of grouped events).
events_first_read = 16


class HistoryRow(NamedTuple):
    """One stored event: its position (version), type, bytes as stored and hashed, and the
    chain hash ledger_chain keeps for it ("" if none is kept)."""

    position: int
    type: str
    stored: bytes
    chain_hash: str


@dataclass(frozen=True, slots=True)
class Chunk:
    rows: list[HistoryRow]
    # The bank's head position as known when the chunk was read (at least its last row's).
    head_position: int


class RowReader:
    """Reads one bank's rows after a position, in bounded chunks."""

    def __init__(self, store: LedgerStore, bank_uuid: str) -> None:
        self._store = store
        self._bank_uuid = bank_uuid
        self._bytes_seen = 0
        self._events_seen = 0

    def read(self, after: int, up_to: int | None = None) -> list[HistoryRow]:
        """The next chunk of rows after `after` (empty: none yet)."""
        limit = self._next_limit()
        page = self._store.history_page(self._bank_uuid, after, up_to, limit)
        size = 0
        for taken, row in enumerate(page):
            size += len(row[2])
            if taken and size > chunk_bytes_max:
                page = page[:taken]
                size -= len(row[2])
                break
        self._bytes_seen += size
        self._events_seen += len(page)
        return [HistoryRow._make(row) for row in page]

    def _next_limit(self) -> int:
        if not self._events_seen:
            return events_first_read
        average = max(1, self._bytes_seen // self._events_seen)
        return max(1, min(events_per_chunk_max, chunk_bytes_max // average))

    def rows(self, after: int = 0, up_to: int | None = None) -> Iterator[HistoryRow]:
        """Every row after `after` (up to `up_to`), as stored, oldest first."""
        while True:
            chunk = self.read(after, up_to)
            if not chunk:
                return
            yield from chunk
            after = chunk[-1].position


def stream_chunks(
    store: LedgerStore,
    bank_uuid: str,
    first: int,
    last: int | None,
    *,
    follow: bool,
    wait_for_more: Callable[[], bool],
) -> Iterator[Chunk]:
    """Chunks of the bank's rows from position `first`: to `last`, or to the last stored event
    when the call starts (without `follow`), or for as long as `wait_for_more()` (called
    whenever there is nothing new) returns True (with `follow`).

    The next chunk is read while the one before is being sent (one read ahead, never more:
    the store works on it while this thread hands the last one to the transport)."""
    assert first >= 1
    reader = RowReader(store, bank_uuid)
    end = last if last is not None or follow else store.last_version(bank_uuid)
    head = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-read") as read_ahead:
        position = first - 1
        pending: Future[list[HistoryRow]] | None = None
        while end is None or position < end:
            rows = pending.result() if pending is not None else reader.read(position, end)
            pending = None
            if not rows:
                if not follow or not wait_for_more():
                    return
                continue
            position = rows[-1].position
            if end is None or position < end:
                pending = read_ahead.submit(reader.read, position, end)
            if position >= head:
                head = max(position, store.position(bank_uuid))
            yield Chunk(rows, head)
