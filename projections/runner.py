"""Follows the event log and keeps one projection's view tables up to date, exactly once.

Each step reads up to `batch_max` notifications after the projection's position (a
`LogPage`, decoded once), applies them all in ONE view-database transaction, and records the
new position (and each bank's latest version) in that same transaction: a crash anywhere
leaves either all of the batch or none of it, so every event is applied exactly once. A
ProjectionSet (registry.py) applies one page to several runners in one transaction the same
way, each from its own position.

Readers of the log never see a later event before an earlier one commits: the event store's
insert takes a table lock in PostgreSQL and SQLite has one writer, so notification ids become
visible in order and a gap left behind is a rolled-back insert, never a late commit.
tests/test_event_log_readers.py checks that with deliberately delayed commits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from ledger.domain.access import deployment_uuid
from ledger.storage.store import LedgerStore
from projections.db import Cursor, ViewDatabase
from projections.events import LogEvent, log_event

log = logging.getLogger(__name__)

notifications_per_batch_max = 1_000
# A batch also stops once its events' stored size passes this (one event always fits): a
# grouped event holds up to 1,000 transfers, so a count of events alone bounds neither the
# memory a batch takes nor the length of its transaction.
batch_bytes_max = 16 * 1024 * 1024
# A batch's first read of the log takes this many notifications; later reads as many as the
# sizes seen so far suggest will fit.
notifications_first_read = 10

_TRACKING_DDL = (
    "CREATE TABLE IF NOT EXISTS projection_positions ("
    " projection TEXT PRIMARY KEY, position BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS projection_bank_versions ("
    " projection TEXT NOT NULL, bank_uuid TEXT NOT NULL, version BIGINT NOT NULL,"
    " PRIMARY KEY (projection, bank_uuid))",
    "CREATE TABLE IF NOT EXISTS projection_schemas ("
    " projection TEXT PRIMARY KEY, schema_version BIGINT NOT NULL)",
)
# A projection without a `schema_version` attribute is at this one.
schema_version_default = 1


class Projection(Protocol):
    """A read model: its tables, and how a batch of events changes them.

    A projection may also name a `schema_version` (an int, default 1): when its tables or
    what it writes into them change, it raises the number, and a views database built by an
    older version is dropped and rebuilt from event 1 the next time a runner starts on it
    (views hold nothing the log cannot give again)."""

    name: str

    def create_tables(self, cursor: Cursor) -> None: ...

    def drop_tables(self, cursor: Cursor) -> None: ...

    def apply(self, cursor: Cursor, events: Sequence[LogEvent]) -> None:
        """Apply events (in log order) inside the transaction."""
        ...


@runtime_checkable
class IdleWork(Protocol):
    """A projection with work to do while the log is idle (it writes no view rows then)."""

    def idle_work_due(self) -> bool: ...

    def idle(self) -> None: ...


@runtime_checkable
class AfterCommit(Protocol):
    """A projection with work for once a batch's transaction has committed (outside it: the
    audit projection writes signed checkpoints to the store, which on SQLite shares the
    views' file and its one write lock)."""

    def committed(self) -> None: ...


class PositionMovedError(Exception):
    """Another runner advanced this projection; this one must reload before going on."""


class ProjectionRunner:
    """Runs one projection; safe to stop and restart at any point."""

    def __init__(
        self,
        store: LedgerStore,
        views: ViewDatabase,
        projection: Projection,
        *,
        batch_max: int = notifications_per_batch_max,
    ) -> None:
        assert 0 < batch_max <= notifications_per_batch_max
        self.store = store
        self.views = views
        self.projection = projection
        self.batch_max = batch_max
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.setup()
        self._position = self.stored_position()

    # ----------------------------------------------------------------- set-up and rebuild

    def setup(self) -> None:
        """Create the tables if they are not there; rebuild them if an older schema made them."""
        name = self.projection.name
        wanted = getattr(self.projection, "schema_version", schema_version_default)
        with self.views.transaction() as cursor:
            for statement in _TRACKING_DDL:
                cursor.execute(statement)
            cursor.execute(
                "INSERT INTO projection_positions (projection, position) VALUES (?, 0)"
                " ON CONFLICT (projection) DO NOTHING",
                (name,),
            )
            built = self._built_schema_version(cursor, name)
            if built is not None and built != wanted:
                log.warning(
                    "projection_rebuild_for_schema projection=%s built=%s wanted=%s",
                    name,
                    built,
                    wanted,
                )
                self._clear(cursor)
            self.projection.create_tables(cursor)
            cursor.execute(
                "INSERT INTO projection_schemas (projection, schema_version) VALUES (?, ?)"
                " ON CONFLICT (projection) DO UPDATE SET schema_version = excluded.schema_version",
                (name, wanted),
            )

    def _built_schema_version(self, cursor: Cursor, name: str) -> int | None:
        """The schema version the stored tables were built by; None for none built yet. A
        projection that applied events before schema versions were recorded is at 0."""
        rows = cursor.query(
            "SELECT schema_version FROM projection_schemas WHERE projection = ?", (name,)
        )
        if rows:
            return int(rows[0][0])
        position = cursor.query(
            "SELECT position FROM projection_positions WHERE projection = ?", (name,)
        )
        return 0 if position and int(position[0][0]) > 0 else None

    def _clear(self, cursor: Cursor) -> None:
        self.projection.drop_tables(cursor)
        cursor.execute(
            "UPDATE projection_positions SET position = 0 WHERE projection = ?",
            (self.projection.name,),
        )
        cursor.execute(
            "DELETE FROM projection_bank_versions WHERE projection = ?",
            (self.projection.name,),
        )

    def reset(self) -> None:
        """Drop the projection's rows and position, so the next steps rebuild it from event 1."""
        with self.views.transaction() as cursor:
            self._clear(cursor)
            self.projection.create_tables(cursor)
        self._position = 0

    # ----------------------------------------------------------------- positions

    @property
    def position(self) -> int:
        """The notification id of the last event applied (as this runner last saw it)."""
        return self._position

    def stored_position(self) -> int:
        rows = self.views.query(
            "SELECT position FROM projection_positions WHERE projection = ?",
            (self.projection.name,),
        )
        return int(rows[0][0]) if rows else 0

    def bank_version(self, bank_uuid: UUID) -> int:
        """The latest event of this bank the view has applied (0 if none)."""
        rows = self.views.query(
            "SELECT version FROM projection_bank_versions WHERE projection = ? AND bank_uuid = ?",
            (self.projection.name, str(bank_uuid)),
        )
        return int(rows[0][0]) if rows else 0

    def lag_events(self) -> int:
        """How many notifications the log holds beyond what this projection applied."""
        head = self.store.recorder.max_notification_id() or 0
        return max(0, head - self._position)

    # ----------------------------------------------------------------- running

    def run_once(self) -> int:
        """Apply the next batch, if any; returns how many notifications it applied."""
        notifications = read_log_batch(self.store, self._position, self.batch_max)
        if not notifications:
            self.idle()
            return 0
        page = LogPage.decode(notifications)
        with self.views.transaction() as cursor:
            self.apply_page(cursor, page)
        self.committed(page.end)
        return len(notifications)

    def apply_page(self, cursor: Cursor, page: LogPage) -> bool:
        """Inside the caller's transaction, apply the page's events this projection has not
        yet applied and move its position to the page's end; False if it had them all."""
        start = self._position
        if start >= page.end:
            return False
        events = page.events_after(start)
        moved = cursor.execute(
            "UPDATE projection_positions SET position = ? WHERE projection = ? AND position = ?",
            (page.end, self.projection.name, start),
        )
        if moved != 1:
            raise PositionMovedError(f"projection {self.projection.name!r} is no longer at {start}")
        self.projection.apply(cursor, events)
        self._record_bank_versions(cursor, events)
        return True

    def committed(self, end: int) -> None:
        """The transaction that applied up to `end` has committed: tell whoever waits."""
        if isinstance(self.projection, AfterCommit):
            self.projection.committed()
        self._position = end
        with self._changed:
            self._changed.notify_all()

    def reload_position(self) -> None:
        """Carry on from the stored position (another process moved it)."""
        self._position = self.stored_position()

    def idle(self) -> None:
        """The log has nothing new: let a projection that has work for such times do it
        (the audit projection signs checkpoints of heads that have waited long enough)."""
        projection = self.projection
        if isinstance(projection, IdleWork) and projection.idle_work_due():
            projection.idle()

    def run_until_caught_up(self, time_limit_seconds: float = 300.0) -> int:
        """Apply batches until the log has nothing more (bounded in time); returns the count."""
        deadline = time.monotonic() + time_limit_seconds
        applied = 0
        while time.monotonic() < deadline:
            count = self.run_once()
            if count == 0:
                return applied
            applied += count
        raise TimeoutError(f"projection {self.projection.name!r} did not catch up in time")

    def start(self, poll_interval_seconds: float = 0.02) -> None:
        """Follow the log in a background thread until stop()."""
        assert self._thread is None
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._follow,
            args=(poll_interval_seconds,),
            name=f"projection-{self.projection.name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def wait_for(self, bank_uuid: UUID, version: int, timeout_seconds: float) -> bool:
        """Wait (bounded) until the view holds `version` of the bank; False if it does not yet."""
        deadline = time.monotonic() + timeout_seconds
        while self.bank_version(bank_uuid) < version:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                # Woken by this process's runner; a runner elsewhere is seen by polling.
                self._changed.wait(timeout=min(remaining, 0.05))
        return True

    def _follow(self, poll_interval_seconds: float) -> None:
        while not self._stop.is_set():
            try:
                applied = self.run_once()
            except PositionMovedError:
                log.warning("projection_position_moved projection=%s", self.projection.name)
                self.reload_position()
                continue
            except Exception:
                # A failed batch rolled back entirely; try it again after a pause.
                log.exception("projection_batch_failed projection=%s", self.projection.name)
                self._stop.wait(1.0)
                continue
            if applied == 0:
                self._stop.wait(poll_interval_seconds)

    def _record_bank_versions(self, cursor: Cursor, events: Sequence[LogEvent]) -> None:
        latest: dict[str, int] = {}
        for event in events:
            latest[event.bank_uuid] = event.version
        cursor.executemany(
            "INSERT INTO projection_bank_versions (projection, bank_uuid, version)"
            " VALUES (?, ?, ?) ON CONFLICT (projection, bank_uuid)"
            " DO UPDATE SET version = excluded.version",
            [(self.projection.name, bank, version) for bank, version in latest.items()],
        )


@dataclass(frozen=True, slots=True)
class LogPage:
    """Notifications read from the log once, decoded once, for every projection that needs
    them (several projections at different positions share one page)."""

    # The bank events, in log order (the deployment's own history is no bank's).
    events: list[LogEvent]
    # The notification id of the page's last notification: where its readers end up.
    end: int

    @classmethod
    def decode(cls, notifications: Sequence[Any]) -> LogPage:
        events = [
            log_event(n.id, n.state)
            for n in notifications
            if str(n.originator_id) != deployment_uuid
        ]
        return cls(events, notifications[-1].id)

    def events_after(self, position: int) -> list[LogEvent]:
        if not self.events or self.events[0].notification_id > position:
            return self.events
        return [event for event in self.events if event.notification_id > position]


def read_log_batch(store: LedgerStore, position: int, batch_max: int) -> list[Any]:
    """The notifications after `position`: at most batch_max, and no more than fit in
    batch_bytes_max (but at least one)."""
    batch: list[Any] = []
    size = 0
    start = position + 1
    wanted = min(notifications_first_read, batch_max)
    while True:
        page = store.recorder.select_notifications(start=start, limit=wanted)
        for notification in page:
            if batch and size + len(notification.state) > batch_bytes_max:
                return batch
            size += len(notification.state)
            batch.append(notification)
        remaining = batch_max - len(batch)
        if len(page) < wanted or remaining == 0:
            return batch
        start = page[-1].id + 1
        fitting = (batch_bytes_max - size) * len(batch) // max(size, 1)
        wanted = max(1, min(remaining, fitting))
