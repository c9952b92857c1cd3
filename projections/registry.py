"""The projections by name, and the set of runners one process keeps following the log.

    accounts   per-account summaries and statements (projections/accounts.py)
    reports    per-bank totals, zero-sum check, monthly and per-category figures
               (projections/reports.py)
    audit      every invariant re-checked as the log grows, balance checkpoints for as-of
               queries, signed checkpoints of the chain heads (projections/audit.py)
    budgets    per pool and month: contributed, pledged, granted, committed; shares, cap usage

`ProjectionSet` owns one ProjectionRunner per projection over one views database. In
`serve` (LEDGER_PROJECTIONS=in-process) and in `timebank-ledger project` it follows the
log in one background thread: each page of the log is read and decoded once and applied to
every projection in one transaction (each keeps its own position, so one being rebuilt
catches up while the others skip what they have). After every page (and every second when
idle) it exports each projection's position and lag as Prometheus gauges.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from ledger import logs, metrics
from ledger.config import ConfigError, Settings
from ledger.storage.store import LedgerStore
from projections.accounts import AccountsProjection
from projections.audit import AuditProjection
from projections.budgets import BudgetsProjection
from projections.db import ViewDatabase, open_views
from projections.reports import ReportsProjection
from projections.runner import (
    LogPage,
    PositionMovedError,
    Projection,
    ProjectionRunner,
    notifications_per_batch_max,
    read_log_batch,
)

log = logging.getLogger(__name__)

# Each factory gets the store and the settings (the audit projection reads the store's
# history and signs with the settings' key; the others need neither).
projection_factories: Mapping[str, Callable[[LedgerStore, Settings | None], Projection]] = {
    "accounts": lambda store, settings: AccountsProjection(),
    "reports": lambda store, settings: ReportsProjection(),
    "audit": AuditProjection.for_set,
    "budgets": lambda store, settings: BudgetsProjection(),
}
projection_names = tuple(projection_factories)

# How often an idle follower looks for new events.
poll_interval_seconds = 0.02
# How often an idle follower refreshes its lag gauge (a busy one does after every batch).
lag_refresh_interval_seconds = 1.0
# How long a follower pauses after a failed batch (rolled back whole) before trying again.
retry_pause_seconds = 1.0
# How long stop() waits for each follower to finish its batch.
stop_timeout_seconds = 30.0


def make_projection(name: str, store: LedgerStore, settings: Settings | None = None) -> Projection:
    factory = projection_factories.get(name)
    if factory is None:
        raise ConfigError(f"no projection {name!r}; there are {', '.join(projection_names)}")
    return factory(store, settings)


class ProjectionSet:
    """Runners for the named projections over one views database; follows the log on start()."""

    def __init__(
        self,
        store: LedgerStore,
        views: ViewDatabase,
        names: Sequence[str] = projection_names,
        *,
        owns_views: bool = False,
        settings: Settings | None = None,
    ) -> None:
        assert names, "a projection set needs at least one projection"
        self.store = store
        self.views = views
        self._owns_views = owns_views
        self._runners = {
            name: ProjectionRunner(store, views, make_projection(name, store, settings))
            for name in names
        }
        self._stop = threading.Event()
        # Set to make an idle follower look at the log now rather than at its next poll.
        self._wakeup = threading.Event()
        self._threads: list[threading.Thread] = []

    @classmethod
    def open(
        cls, settings: Settings, store: LedgerStore, names: Sequence[str] = projection_names
    ) -> ProjectionSet:
        """The set on the views database of settings (LEDGER_VIEWS_DATABASE_URL or the store's)."""
        views = open_views(settings.views_url)
        try:
            return cls(store, views, names, owns_views=True, settings=settings)
        except BaseException:
            views.close()
            raise

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._runners)

    def runner(self, name: str) -> ProjectionRunner:
        runner = self._runners.get(name)
        assert runner is not None, f"projection {name!r} is not in this set ({self.names})"
        return runner

    # ----------------------------------------------------------------- rebuild

    def rebuild(self, name: str, time_limit_seconds: float) -> int:
        """Drop one projection's rows and apply the whole log again; returns events applied."""
        runner = self.runner(name)
        runner.reset()
        applied = runner.run_until_caught_up(time_limit_seconds)
        self._export_all()
        return applied

    # ----------------------------------------------------------------- following

    def start(self) -> None:
        """Follow the log in one thread for the whole set, until stop()."""
        assert not self._threads, "already started"
        self._stop.clear()
        thread = threading.Thread(target=self._follow, name="projections", daemon=True)
        thread.start()
        self._threads.append(thread)

    def wake(self) -> None:
        """Makes an idle follower look for new events at once (a reader is waiting for one)."""
        self._wakeup.set()

    def refresh_metrics(self) -> None:
        """Exports every projection's position and lag now (the follower does it on its own)."""
        self._export_all()

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        for thread in self._threads:
            thread.join(timeout=stop_timeout_seconds)
        self._threads.clear()

    def close(self) -> None:
        self.stop()
        if self._owns_views:
            self.views.close()

    def step(self) -> int:
        """Read the next page of the log once and apply it to every projection that is behind,
        all in one views transaction; returns how many notifications the page held.

        One read, one decode and one transaction per page instead of one per projection:
        per page, those fixed costs were most of the projection process's CPU at low load.
        """
        runners = list(self._runners.values())
        start = min(runner.position for runner in runners)
        notifications = read_log_batch(self.store, start, notifications_per_batch_max)
        if not notifications:
            for runner in runners:
                runner.idle()
            return 0
        page = LogPage.decode(notifications)
        with self.views.transaction() as cursor:
            applied = [runner for runner in runners if runner.apply_page(cursor, page)]
        for runner in applied:
            runner.committed(page.end)
        return len(notifications)

    def _follow(self) -> None:
        for name in self._runners:
            logs.event(log, "projection_following", projection=name)
        refresh_at = 0.0
        while not self._stop.is_set():
            try:
                applied = self.step()
                if applied or time.monotonic() >= refresh_at:
                    self._export_all()
                    refresh_at = time.monotonic() + lag_refresh_interval_seconds
            except PositionMovedError as moved:
                # Another process follows these projections too: carry on from where it got.
                logs.event(log, "projection_position_moved", level=logging.WARNING, error=moved)
                for runner in self._runners.values():
                    runner.reload_position()
                continue
            except Exception:
                logs.event(log, "projection_batch_failed", level=logging.ERROR, exc_info=True)
                # One projection failing must not hold the others back: each goes on alone
                # (its own transaction) until the next pause.
                self._step_each_alone()
                self._stop.wait(retry_pause_seconds)
                continue
            if applied == 0 and self._wakeup.wait(poll_interval_seconds):
                self._wakeup.clear()
        for name, runner in self._runners.items():
            logs.event(log, "projection_stopped", projection=name, position=runner.position)

    def _step_each_alone(self) -> None:
        for name, runner in self._runners.items():
            try:
                runner.run_once()
            except PositionMovedError:
                runner.reload_position()
            except Exception:
                logs.event(
                    log,
                    "projection_batch_failed",
                    level=logging.ERROR,
                    exc_info=True,
                    projection=name,
                )

    def _export_all(self) -> None:
        head = self.store.recorder.max_notification_id() or 0
        for name, runner in self._runners.items():
            metrics.projection_position.labels(projection=name).set(runner.position)
            metrics.projection_lag.labels(projection=name).set(max(0, head - runner.position))
