"""The writer pool: a bounded number of threads runs the writers of however many banks.

No bank has a thread of its own. A bank's writer is made resident when a command arrives
for it, runs on one of `writer_threads` pool threads while it has work, and is unloaded
after `bank_idle_seconds` without any (and, least recently used first, whenever more than
`resident_banks_max` banks are resident). Loading a bank happens on a pool thread, never
under the pool's lock, so it blocks no other bank. A watcher thread wakes the writers whose
holds reach their deadline, and sweeps the store for banks that are not resident but hold
a pending transfer that is due, so holds expire on time either way.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime

from ledger import metrics
from ledger.application.writer import BankWriter, Clock, Job, Result, stopped_error
from ledger.config import Settings
from ledger.domain.commands import Command
from ledger.domain.errors import Unavailable
from ledger.storage.store import LedgerStore

log = logging.getLogger(__name__)

# Banks the expiry sweep makes resident at most per sweep (more wait for the next one).
swept_banks_per_sweep_max = 100
# How long close() waits for each pool thread to finish its batch.
thread_join_timeout_seconds = 10.0


class Writers:
    """Every resident bank's writer, and the threads that run them."""

    def __init__(self, store: LedgerStore, settings: Settings, clock: Clock) -> None:
        assert settings.writer_threads > 0
        assert settings.resident_banks_max > 0
        self._store = store
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._resident: OrderedDict[str, BankWriter] = OrderedDict()
        self._ready: queue.SimpleQueue[BankWriter | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"writer-{n}", daemon=True)
            for n in range(settings.writer_threads)
        ]
        self._threads.append(threading.Thread(target=self._watch, name="writer-watch", daemon=True))
        for thread in self._threads:
            thread.start()

    # ----------------------------------------------------------------- callers

    def submit(self, bank_id: str, command: Command) -> Result:
        """Queue a validated command for its bank and wait until it is committed or refused."""
        job = Job(command, Future())
        with self._lock:
            if self._stopping.is_set():
                raise stopped_error()
            self._writer_locked(bank_id).enqueue(job)
        try:
            return job.future.result(timeout=self._settings.writer_timeout_seconds)
        except FutureTimeout:
            raise Unavailable(
                "WRITER_TIMEOUT",
                "the write was not confirmed in time; it may still commit, retry with the same id",
            ) from None

    def queued(self, bank_id: str) -> int:
        """Commands waiting for a bank's next batch (0 if it is not resident)."""
        with self._lock:
            writer = self._resident.get(bank_id)
        return writer.queued if writer is not None else 0

    @property
    def resident_count(self) -> int:
        with self._lock:
            return len(self._resident)

    def close(self) -> None:
        """Stop taking work, fail what is queued, let running batches finish."""
        with self._lock:
            self._stopping.set()
            writers = list(self._resident.values())
            self._resident.clear()
        for writer in writers:
            writer.close()
        for _ in range(self._settings.writer_threads):
            self._ready.put(None)
        for thread in self._threads:
            thread.join(timeout=thread_join_timeout_seconds)

    # ----------------------------------------------------------------- residency

    def _writer_locked(self, bank_id: str) -> BankWriter:
        writer = self._resident.get(bank_id)
        if writer is not None:
            self._resident.move_to_end(bank_id)
            return writer
        self._evict_locked(self._settings.resident_banks_max - 1)
        writer = BankWriter(bank_id, self._store, self._settings, self._clock, self._ready.put)
        self._resident[bank_id] = writer
        metrics.writer_resident_banks.set(len(self._resident))
        return writer

    def _evict_locked(self, keep_max: int, idle_before: float | None = None) -> None:
        """Unload idle writers, least recently used first: beyond `keep_max` resident, idle
        since before `idle_before` (monotonic), or of banks that turned out not to exist.
        A busy writer is never unloaded; the pool may then hold more than `keep_max`."""
        for bank_id, writer in list(self._resident.items()):
            over = len(self._resident) > keep_max
            stale = idle_before is not None and writer.last_active < idle_before
            if not (over or stale or not writer.exists):
                if idle_before is None:
                    break  # the rest were used more recently
                continue
            if writer.idle:
                writer.close()
                del self._resident[bank_id]
                metrics.writer_resident_banks.set(len(self._resident))

    # ----------------------------------------------------------------- threads

    def _work(self) -> None:
        while True:
            writer = self._ready.get()
            if writer is None:
                return
            writer.run()

    def _watch(self) -> None:
        """Expire due holds (resident or not) and unload idle banks, until close()."""
        sweep_at = 0.0
        while not self._stopping.wait(self._settings.expiry_interval_seconds):
            try:
                now = self._clock()
                with self._lock:
                    writers = list(self._resident.values())
                for writer in writers:
                    deadline = writer.next_deadline()
                    if deadline is not None and deadline <= now:
                        writer.request_tick()
                if time.monotonic() >= sweep_at:
                    sweep_at = time.monotonic() + self._settings.expiry_sweep_interval_seconds
                    self._sweep(now)
                idle_before = time.monotonic() - self._settings.bank_idle_seconds
                with self._lock:
                    self._evict_locked(self._settings.resident_banks_max, idle_before)
            except Exception:
                log.exception("writer_watch_failed")

    def _sweep(self, now: datetime) -> None:
        """Wake the banks whose pending transfers are due, also those not resident."""
        for bank_id in self._store.due_banks(now, swept_banks_per_sweep_max):
            with self._lock:
                if self._stopping.is_set():
                    return
                writer = self._writer_locked(bank_id)
            writer.request_tick()
