"""One bank's writer: its queue of commands and its decision state, run by any pool thread.

A writer has no thread of its own. When commands arrive it asks the pool (writers.py) to run
it; a pool thread then takes what is waiting (at most `writer_batch_max` commands), applies
each to a Batch over the bank's state (a refused command records nothing and does not affect
its neighbours), commits all the batch's events and index rows in one transaction, and only
then answers each caller. At most one pool thread runs a given writer at a time, so each bank
still has exactly one writer in this process.

Before each batch the writer makes sure its state is the committed one: it loads the bank
(snapshot + tail) the first time, and catches up from the store (the events after its
position) whenever the store is ahead: after another process wrote, after a write conflict,
or after a commit whose outcome is unknown. A batch that fails to commit is rolled back, so
the state never holds anything the store does not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from eventsourcing.persistence import IntegrityError

from ledger import metrics
from ledger.application import loading
from ledger.config import Settings
from ledger.domain import bank, canonical, history, holds
from ledger.domain.batch import Batch
from ledger.domain.commands import Command
from ledger.domain.errors import DomainError, Overloaded, Unavailable, WriteConflict
from ledger.domain.records import RecordBook
from ledger.domain.state import BankState
from ledger.domain.views import BankView, BatchItemResult
from ledger.storage.index import index_write
from ledger.storage.store import LedgerStore

log = logging.getLogger(__name__)

Result = Any
Clock = Callable[[], datetime]
# How often a batch whose commit lost a race is tried again on the caught-up state.
conflict_retries_max = 1
# Transfer ids a writer remembers having created, so that a quick retry of one is looked
# up rather than taken as new (and refused by the store, then run again).
recent_transfer_ids_max = 1024


def stopped_error() -> Unavailable:
    return Unavailable("WRITER_STOPPED", "the ledger is shutting down; retry with the same id")


@dataclass(slots=True)
class Job:
    command: Command
    future: Future[Result] = field(default_factory=Future)


class _Conflict(Exception):
    """The store already holds a version this batch tried to commit."""


class _Recheck(Exception):
    """The optimistic attempt refused a command whose id the store already holds."""


class BankWriter:
    """The only code in this process that changes one bank."""

    def __init__(
        self,
        bank_id: str,
        store: LedgerStore,
        settings: Settings,
        clock: Clock,
        schedule: Callable[[BankWriter], None],
    ) -> None:
        self.bank_id = bank_id
        self.bank_uuid = str(bank.bank_uuid(bank_id))
        self._store = store
        self._settings = settings
        self._clock = clock
        self._schedule = schedule
        self._lock = threading.Lock()
        self._jobs: deque[Job] = deque()
        self._scheduled = False
        self._tick_requested = False
        self._closed = False
        self._state: BankState | None = None
        # The last commit's outcome is unknown: catch up before deciding anything.
        self._stale = False
        # Ids of the transfers this writer created last, oldest first (bounded).
        self._recent_ids: OrderedDict[str, None] = OrderedDict()
        self.last_active = time.monotonic()

    # ----------------------------------------------------------------- callers

    def enqueue(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                raise stopped_error()
            if len(self._jobs) >= self._settings.writer_queue_max:
                raise Overloaded(
                    "WRITER_OVERLOADED", "too many requests are waiting for this bank; retry later"
                )
            self._jobs.append(job)
            self._ready_locked()

    def request_tick(self) -> None:
        """Run soon even with nothing queued (to expire holds whose deadline passed)."""
        with self._lock:
            if not self._closed:
                self._tick_requested = True
                self._ready_locked()

    def _ready_locked(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._schedule(self)

    @property
    def queued(self) -> int:
        """Commands waiting for the next batch."""
        with self._lock:
            return len(self._jobs)

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._scheduled and not self._jobs

    @property
    def exists(self) -> bool:
        """Whether the bank was found (False until loaded, and for ids no bank has)."""
        state = self._state
        return state is not None and state.exists

    def next_deadline(self) -> datetime | None:
        state = self._state
        return state.next_deadline() if state is not None else None

    def close(self) -> None:
        """Take no more work; fail what is still queued (a running batch finishes)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs)
            self._jobs.clear()
        for job in jobs:
            _settle(job, stopped_error())

    # ----------------------------------------------------------------- a pool thread

    def run(self) -> None:
        """Process one batch of what is waiting (called by one pool thread at a time)."""
        with self._lock:
            count = min(len(self._jobs), self._settings.writer_batch_max)
            jobs = [self._jobs.popleft() for _ in range(count)]
            self._tick_requested = False
        try:
            self._process(jobs)
        except Exception as error:
            # A bug, not an operating error: the batch was rolled back; nobody waits forever.
            log.exception("writer_batch_crashed bank_id=%s", self.bank_id)
            self._state = None
            for job in jobs:
                _settle(job, error)
        finally:
            self.last_active = time.monotonic()
            with self._lock:
                if (self._jobs or self._tick_requested) and not self._closed:
                    self._schedule(self)
                else:
                    self._scheduled = False

    def _process(self, jobs: list[Job]) -> None:
        # The first attempt is optimistic (new transfer ids are not looked up, the state is
        # taken as current); after a lost race, or a refusal of an id the store turns out
        # to hold (a retry of an old write), the batch is decided again looking everything up.
        careful = False
        conflicts = 0
        while conflicts <= conflict_retries_max:
            try:
                state = self._current_state()
            except DomainError as error:
                for job in jobs:
                    _settle(job, error)
                return
            try:
                self._attempt(state, jobs, careful=careful)
                return
            except DomainError as error:  # the store could not be read or written
                for job in jobs:
                    _settle(job, error)
                return
            except _Recheck:
                careful = True  # nothing was committed, and the state is still current
            except _Conflict:
                # Another writer committed first: catch up and decide again on its state.
                conflicts += 1
                log.warning("writer_conflict bank_id=%s attempt=%s", self.bank_id, conflicts)
                self._stale = True
                careful = True
        conflict = WriteConflict(
            "WRITE_CONFLICT",
            "another writer changed this bank at the same time; retry with the same id",
        )
        for job in jobs:
            _settle(job, conflict)

    def _current_state(self) -> BankState:
        try:
            if self._state is None:
                self._state = loading.load_bank(self._store, self.bank_uuid)
                self._stale = False
                self._maybe_snapshot(self._state)
            elif self._stale:
                loading.catch_up(self._store, self._state)
                self._stale = False
        except DomainError:
            self._state = None
            raise
        except Exception:
            log.exception("writer_load_failed bank_id=%s", self.bank_id)
            self._state = None
            raise Unavailable(
                "STORE_UNAVAILABLE", "the event store cannot be read; retry later"
            ) from None
        return self._state

    def _attempt(self, state: BankState, jobs: list[Job], *, careful: bool) -> None:
        """Decide a batch on the state and commit it. Nothing here asks the store whether the
        state is current: a commit can only succeed on the latest version (the store refuses
        a version taken by another writer), so a batch that commits was decided on the
        current state. A batch that commits nothing is checked against the store's position
        before anyone is answered."""
        now = self._clock()
        records = RecordBook(
            partial(self._store.transfers, self.bank_uuid),
            partial(self._store.requests, self.bank_uuid),
        )
        commands = [job.command for job in jobs]
        assumed: set[str] = set()
        if not careful:
            # Ids of open holds or of transfers made lately (a client retrying a write whose
            # answer it did not wait for) are looked up; other new ids are taken as new.
            assumed = {
                transfer_id
                for transfer_id in bank.new_transfer_ids(commands)
                if transfer_id not in state.holds and transfer_id not in self._recent_ids
            }
            records.assume_new(assumed)
        try:
            records.prefetch(*bank.referenced_ids(commands))
        except Exception:
            log.exception("writer_lookup_failed bank_id=%s", self.bank_id)
            raise Unavailable(
                "STORE_UNAVAILABLE", "the index cannot be read; retry later"
            ) from None
        batch = Batch(state, now, records)
        if jobs:
            metrics.writer_batch_commands.observe(len(jobs))
        try:
            results = self._apply(batch, jobs, now)
            if assumed and self._refused_an_existing_id(jobs, results, assumed):
                raise _Recheck
            if not batch.events and self._store_is_ahead(state):
                raise _Conflict  # decided on a state another writer has moved on from
            self._commit(batch, state)
        except BaseException:
            batch.rollback()
            raise
        self._remember(records.created_transfers)
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, BankView):
                result = state.view()  # with the chain head, known once encoded
            _settle(job, result)
        self._maybe_snapshot(state)

    def _refused_an_existing_id(
        self, jobs: list[Job], results: list[Result], assumed: set[str]
    ) -> bool:
        """Whether a command refused on the optimistic attempt carries an id taken as new
        that the store already holds: a retry of an old write, whose answer is its first
        result (or ALREADY_EXISTS), never a refusal decided on today's balances. The store
        refuses a known id only when the batch commits, so a refused one must be asked."""
        suspects: set[str] = set()
        for job, result in zip(jobs, results, strict=True):
            refused = isinstance(result, DomainError) or (
                isinstance(result, list)
                and any(isinstance(item, BatchItemResult) and item.error for item in result)
            )
            if refused:
                suspects |= bank.new_transfer_ids([job.command]) & assumed
        if not suspects:
            return False
        try:
            return bool(self._store.transfers(self.bank_uuid, sorted(suspects)))
        except Exception:
            log.exception("writer_lookup_failed bank_id=%s", self.bank_id)
            raise Unavailable(
                "STORE_UNAVAILABLE", "the index cannot be read; retry later"
            ) from None

    def _remember(self, transfer_ids: set[str]) -> None:
        recent = self._recent_ids
        for transfer_id in transfer_ids:
            recent[transfer_id] = None
        while len(recent) > recent_transfer_ids_max:
            recent.popitem(last=False)

    def _store_is_ahead(self, state: BankState) -> bool:
        try:
            return self._store.position(self.bank_uuid) > state.version
        except Exception:
            log.exception("writer_lookup_failed bank_id=%s", self.bank_id)
            raise Unavailable(
                "STORE_UNAVAILABLE", "the index cannot be read; retry later"
            ) from None

    def _apply(self, batch: Batch, jobs: list[Job], now: datetime) -> list[Result]:
        holds.expire_due(batch, now)
        results: list[Result] = []
        for job in jobs:
            try:
                results.append(bank.execute(batch, self.bank_id, job.command))
            except DomainError as error:
                results.append(error)
        return results

    def _commit(self, batch: Batch, state: BankState) -> None:
        if not batch.events:
            batch.commit(state.chain_head)
            return
        stored = history.encode(batch, state.chain_head)
        write = index_write(batch, stored)
        started = time.monotonic()
        try:
            self._store.append(self.bank_uuid, stored, write)
        except IntegrityError:
            metrics.writer_conflicts.inc()
            raise _Conflict from None
        except Exception:
            # The commit may or may not have happened: find out before the next decision.
            log.exception("writer_commit_failed bank_id=%s", self.bank_id)
            self._stale = True
            raise Unavailable(
                "COMMIT_FAILED", "the ledger could not commit this write; retry with the same id"
            ) from None
        metrics.commit_duration.observe(time.monotonic() - started)
        batch.commit(stored[-1].chain_hash)

    def _maybe_snapshot(self, state: BankState) -> None:
        if (
            not state.exists
            or state.changes_since_snapshot < self._settings.snapshot_interval_events
        ):
            return
        try:
            data = canonical.encode(state.to_snapshot())
            self._store.save_snapshot(
                state.bank_uuid, state.version, state.chain_head, data, self._clock()
            )
            state.changes_since_snapshot = 0
            metrics.snapshots_taken.inc()
        except Exception:
            # Only loading gets slower without it; the history is untouched.
            log.exception("snapshot_failed bank_id=%s", self.bank_id)


def _settle(job: Job, outcome: Result) -> None:
    if job.future.done():
        return
    if isinstance(outcome, BaseException):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)
