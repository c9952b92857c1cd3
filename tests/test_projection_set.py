"""A projection set reads each page of the log once and applies it to all its projections.

One transaction per page for the whole set must still apply every event exactly once to
each projection, let one projection that is behind (being rebuilt) catch up while the others
skip what they have, and never let one failing projection hold the others back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from conftest import Clock, MakeLedger
from test_accounts_projection import VIEW_TABLES, OpenViews, closing_views, open_bank
from test_projection_runner import write_concurrently

from projections.db import Cursor, ViewDatabase
from projections.registry import ProjectionSet
from projections.reports import REPORT_TABLES, ReportsProjection
from projections.runner import ProjectionRunner

WAIT_SECONDS = 60.0
NAMES = ("accounts", "reports")


@pytest.fixture
def views_opener() -> Iterator[OpenViews]:
    yield from closing_views()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.01)


def every_row(views: ViewDatabase, names: Sequence[str] = NAMES) -> dict[str, list[Any]]:
    """Every row of the projections and their positions, in a stable order."""
    owned = {"accounts": tuple(VIEW_TABLES), "reports": REPORT_TABLES}
    tables = [table for name in names for table in owned[name]]
    tables += ["projection_positions", "projection_bank_versions"]
    return {table: sorted(views.query(f"SELECT * FROM {table}"), key=repr) for table in tables}


def head(projections: ProjectionSet) -> int:
    return projections.store.recorder.max_notification_id() or 0


def all_caught_up(projections: ProjectionSet) -> bool:
    return all(projections.runner(name).position == head(projections) for name in NAMES)


def step_until_caught_up(projections: ProjectionSet) -> None:
    for _ in range(10_000):
        if projections.step() == 0:
            return
    raise AssertionError("the set never caught up")


def test_following_as_a_set_equals_each_projection_rebuilt_alone(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views_opener: OpenViews
) -> None:
    ledger = make_ledger(store_url)
    banks = ["north", "south"]
    for bank_id in banks:
        open_bank(ledger, bank_id)
    projections = ProjectionSet(ledger.store, views_opener(store_url), NAMES)
    projections.start()
    try:
        write_concurrently(ledger, clock, banks, threads=6, operations=25)
        wait_until(lambda: all_caught_up(projections), "the set to catch up")
    finally:
        projections.stop()
    live = every_row(projections.views)
    assert live["view_accounts"], "the load wrote nothing"
    assert live["report_transfers"], "the load wrote nothing"

    # Each projection dropped and rebuilt on its own, from event 1, gives the same rows.
    for name in NAMES:
        projections.rebuild(name, time_limit_seconds=WAIT_SECONDS)
    assert every_row(projections.views) == live


def test_a_projection_behind_catches_up_while_the_others_keep_what_they_have(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views_opener: OpenViews
) -> None:
    ledger = make_ledger(store_url)
    open_bank(ledger, "north")
    write_concurrently(ledger, clock, ["north"], threads=3, operations=20)
    projections = ProjectionSet(ledger.store, views_opener(store_url), NAMES)
    step_until_caught_up(projections)
    before = every_row(projections.views)
    accounts_position = projections.runner("accounts").position
    assert accounts_position == head(projections)

    # Reports starts again from event 1 inside the set; accounts is at the head already.
    projections.runner("reports").reset()
    steps = 0
    while projections.step():
        steps += 1
        # Had accounts applied a page twice, its balances would no longer match (below).
        assert projections.runner("accounts").position == accounts_position
    assert steps >= 1
    assert projections.runner("reports").position == accounts_position
    assert every_row(projections.views) == before


class Broken(Exception):
    pass


def test_a_failing_projection_does_not_hold_the_others_back(
    store_url: str,
    make_ledger: MakeLedger,
    clock: Clock,
    views_opener: OpenViews,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger = make_ledger(store_url)
    open_bank(ledger, "north")
    projections = ProjectionSet(ledger.store, views_opener(store_url), NAMES)
    step_until_caught_up(projections)
    reports = projections.runner("reports")
    stuck_at = reports.position
    monkeypatch.setattr("projections.registry.retry_pause_seconds", 0.01)

    def broken(cursor: Cursor, events: Sequence[Any]) -> None:
        raise Broken("reports cannot apply")

    monkeypatch.setattr(reports.projection, "apply", broken)
    projections.start()
    try:
        write_concurrently(ledger, clock, ["north"], threads=2, operations=10)
        wait_until(
            lambda: projections.runner("accounts").position == head(projections),
            "accounts to catch up while reports fails",
        )
        assert reports.position == stuck_at
        # Mended, reports catches up from where it stopped.
        monkeypatch.undo()
        wait_until(lambda: all_caught_up(projections), "reports to catch up once mended")
    finally:
        projections.stop()
    live = every_row(projections.views)
    for name in NAMES:
        projections.rebuild(name, time_limit_seconds=WAIT_SECONDS)
    assert every_row(projections.views) == live


class ReportsAtVersion(ReportsProjection):
    def __init__(self, schema_version: int) -> None:
        self.schema_version = schema_version


def test_a_view_built_by_another_schema_version_is_rebuilt_from_event_1(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views_opener: OpenViews
) -> None:
    ledger = make_ledger(store_url)
    open_bank(ledger, "north")
    write_concurrently(ledger, clock, ["north"], threads=2, operations=10)
    views = views_opener(store_url)
    first = ProjectionRunner(ledger.store, views, ReportsAtVersion(1))
    first.run_until_caught_up()
    built = every_row(views, ["reports"])
    # Change a row, as an older version might have written it differently.
    assert views.query("SELECT COUNT(*) FROM report_accounts")[0][0] > 0
    with views.transaction() as cursor:
        cursor.execute("UPDATE report_accounts SET balance_minutes = balance_minutes + 1")

    # The same version starting again keeps the rows and carries on from its position.
    same = ProjectionRunner(ledger.store, views, ReportsAtVersion(1))
    assert same.position == first.position > 0
    assert every_row(views, ["reports"]) != built

    # A new version drops them and starts from event 1, ending with what a rebuild makes.
    newer = ProjectionRunner(ledger.store, views, ReportsAtVersion(2))
    assert newer.position == 0
    newer.run_until_caught_up()
    assert every_row(views, ["reports"]) == built


def test_a_view_built_before_schema_versions_were_recorded_is_rebuilt(
    store_url: str, make_ledger: MakeLedger, clock: Clock, views_opener: OpenViews
) -> None:
    ledger = make_ledger(store_url)
    open_bank(ledger, "north")
    views = views_opener(store_url)
    first = ProjectionRunner(ledger.store, views, ReportsProjection())
    first.run_until_caught_up()
    assert first.position > 0
    with views.transaction() as cursor:
        cursor.execute("DELETE FROM projection_schemas")
    assert ProjectionRunner(ledger.store, views, ReportsProjection()).position == 0
