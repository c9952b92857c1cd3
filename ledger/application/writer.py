"""One bank's single writer: applies queued commands in order and commits each batch as one save.

Callers on many threads submit commands; one thread per bank takes what is waiting (at most
`writer_batch_max`), applies each command to the in-memory Bank (a refused command records
nothing and does not affect its neighbours), saves all resulting events in one transaction,
and only then answers each caller. If the save fails, nobody is told success: the writer
reloads the bank from the store and every caller in that batch gets a retryable error.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from ledger.application.store import LedgerStore
from ledger.config import Settings
from ledger.domain.bank import Bank
from ledger.domain.commands import BankCommand
from ledger.domain.errors import DomainError, Overloaded, Unavailable, WriteConflict

log = logging.getLogger(__name__)

Result = Any
T = TypeVar("T")
Clock = Callable[[], datetime]


@dataclass(slots=True)
class _Job:
    command: BankCommand
    future: Future[Result] = field(default_factory=Future)


class BankWriter:
    """The only thread in this process that changes one bank."""

    def __init__(self, store: LedgerStore, bank: Bank, settings: Settings, clock: Clock) -> None:
        self._store = store
        self._bank_uuid: UUID = bank.id
        self._bank: Bank | None = bank
        self._settings = settings
        self._clock = clock
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=settings.writer_queue_max)
        # Held while a batch is applied and committed, so readers never see uncommitted state.
        self._state_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"writer-{bank.created_by.bank_id}", daemon=True
        )
        self._thread.start()

    # ----------------------------------------------------------------- callers

    def submit(self, command: BankCommand) -> Result:
        """Queue a validated command and wait until it is committed (or refused)."""
        if self._stopping.is_set():
            raise Unavailable(
                "WRITER_STOPPED", "the ledger is shutting down; retry with the same id"
            )
        job = _Job(command)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(
                "WRITER_OVERLOADED", "too many requests are waiting for this bank; retry later"
            ) from None
        try:
            return job.future.result(timeout=self._settings.writer_timeout_seconds)
        except FutureTimeout:
            raise Unavailable(
                "WRITER_TIMEOUT",
                "the write was not confirmed in time; it may still commit, retry with the same id",
            ) from None

    def read(self, reader: Callable[[Bank], T]) -> T:
        """Run `reader` on the committed state of the bank."""
        with self._state_lock:
            return reader(self._loaded())

    def close(self) -> None:
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1.0)
        self._thread.join(timeout=self._settings.writer_timeout_seconds)
        self._fail_waiting(
            Unavailable("WRITER_STOPPED", "the ledger is shutting down; retry with the same id")
        )

    # ----------------------------------------------------------------- the writer thread

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                first = self._queue.get(timeout=self._idle_wait_seconds())
            except queue.Empty:
                self._process([])  # nothing waiting: only expire what is due
                continue
            if first is None:
                break
            jobs = self._gather(first)
            self._process(jobs)

    def _gather(self, first: _Job) -> list[_Job]:
        """The first job and what follows it, up to the batch maximum and the batch wait."""
        jobs = [first]
        wait_until = time.monotonic() + self._settings.writer_batch_wait_seconds
        while len(jobs) < self._settings.writer_batch_max:
            remaining = wait_until - time.monotonic()
            try:
                job = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if job is None:
                self._stopping.set()
                break
            jobs.append(job)
        return jobs

    def _idle_wait_seconds(self) -> float:
        wait = self._settings.expiry_interval_seconds
        bank = self._bank
        deadline = bank.next_deadline() if bank is not None else None
        if deadline is not None:
            wait = min(wait, max(0.0, (deadline - self._clock()).total_seconds()))
        return max(wait, 0.001)

    def _process(self, jobs: list[_Job]) -> None:
        with self._state_lock:
            try:
                bank = self._loaded()
                results = self._apply(bank, jobs)
                bank.flush()
                if bank.pending_events:
                    self._store.save(bank)
            except Unavailable as error:
                self._fail(jobs, error)
                return
            except IntegrityError:
                self._bank = None  # another writer committed first; reload before the next batch
                log.warning("writer_conflict bank=%s", self._bank_uuid)
                self._fail(
                    jobs,
                    WriteConflict(
                        "WRITE_CONFLICT",
                        "another writer changed this bank at the same time; retry with the same id",
                    ),
                )
                return
            except Exception:
                self._bank = None  # state may hold events that were never committed
                log.exception("writer_commit_failed bank=%s", self._bank_uuid)
                self._fail(
                    jobs,
                    Unavailable(
                        "COMMIT_FAILED",
                        "the ledger could not commit this write; retry with the same id",
                    ),
                )
                return
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, DomainError):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    def _apply(self, bank: Bank, jobs: list[_Job]) -> list[Result]:
        now = self._clock()
        bank.expire_due(now)
        results: list[Result] = []
        for job in jobs:
            try:
                results.append(bank.execute(job.command, now))
            except DomainError as error:
                results.append(error)
        return results

    def _loaded(self) -> Bank:
        if self._bank is None:
            try:
                self._bank = self._store.repository.get(self._bank_uuid)
            except Exception:
                log.exception("writer_reload_failed bank=%s", self._bank_uuid)
                raise Unavailable(
                    "STORE_UNAVAILABLE", "the event store cannot be read; retry later"
                ) from None
        return self._bank

    @staticmethod
    def _fail(jobs: list[_Job], error: DomainError) -> None:
        for job in jobs:
            job.future.set_exception(error)

    def _fail_waiting(self, error: DomainError) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.future.set_exception(error)
