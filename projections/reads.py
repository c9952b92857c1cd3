"""The read side's use cases: answer from a view that is at least as fresh as the caller asks.

Read-your-writes: a write's response carries the position (in its bank's history) of the
event it committed. A read passing that position as `min_position` waits, bounded by
LEDGER_READ_WAIT_SECONDS and the caller's own deadline, until the view has applied that
event of the bank; if it has not by then, the read fails with VIEW_NOT_CAUGHT_UP (and the
position the view did reach) rather than answer from older rows; if the bank's history
holds no such event, waiting cannot help and it fails with POSITION_NOT_COMMITTED. Every
answer carries the bank's position the view had reached when it was read: the rows reflect
at least that.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar
from uuid import UUID

from ledger import metrics
from ledger.domain.bank import bank_uuid
from ledger.domain.commands import check_id
from ledger.domain.errors import (
    InvalidInput,
    NotFound,
    Overloaded,
    PreconditionFailed,
    Unavailable,
)
from ledger.security.quotas import Slots
from projections import budget_queries, impact_queries, queries, report_queries
from projections.budget_queries import PoolBudget
from projections.impact_queries import AccountImpact, ImpactSummary
from projections.queries import AccountSummary, StatementEntry
from projections.registry import ProjectionSet
from projections.report_queries import BankTotals, CategoryRow, MonthRow
from projections.runner import ProjectionRunner

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Fresh(Generic[T]):
    """A value read from a view, and the bank position the view had reached (at least)."""

    value: T
    position: int


@dataclass(frozen=True, slots=True)
class BankReport:
    """A bank's totals over its whole history and its figures over [from_month, to_month]."""

    totals: BankTotals
    from_month: str
    to_month: str
    active_members: int
    months: list[MonthRow]
    categories: list[CategoryRow]


@dataclass(frozen=True, slots=True)
class ImpactPage:
    """A page of the impact report: the bank's figures (first page only) and account months."""

    summary: ImpactSummary | None
    accounts: list[AccountImpact]
    next_page_token: str


class ViewReads:
    """Reads of the views of one ProjectionSet."""

    def __init__(
        self, projections: ProjectionSet, read_wait_seconds: float, waiting: Slots | None = None
    ) -> None:
        assert read_wait_seconds >= 0
        self._projections = projections
        self._read_wait_seconds = read_wait_seconds
        # Reads waiting for min_position at once are bounded: each holds a server thread.
        self._waiting = waiting

    def account_summary(
        self,
        bank_id: str,
        account_id: str,
        *,
        min_position: int = 0,
        wait_seconds_max: float | None = None,
    ) -> Fresh[AccountSummary]:
        check_id("bank_id", bank_id)
        check_id("account_id", account_id)
        position = self._position("accounts", bank_id, min_position, wait_seconds_max)
        return Fresh(self._summary(bank_id, account_id, position), position)

    def statement_page(
        self,
        bank_id: str,
        account_id: str,
        page_size: int,
        page_token: str,
        *,
        min_position: int = 0,
        wait_seconds_max: float | None = None,
    ) -> Fresh[tuple[list[StatementEntry], str]]:
        """A page of the account's statement, newest first, and the next page's token."""
        check_id("bank_id", bank_id)
        check_id("account_id", account_id)
        queries.statement_cursor(page_size, page_token)  # refuse bad paging before waiting
        position = self._position("accounts", bank_id, min_position, wait_seconds_max)
        self._summary(bank_id, account_id, position)
        views = self._projections.views
        return Fresh(
            queries.statement_page(views, bank_id, account_id, page_size, page_token), position
        )

    def bank_report(
        self,
        bank_id: str,
        from_month: str,
        to_month: str,
        *,
        min_position: int = 0,
        wait_seconds_max: float | None = None,
    ) -> Fresh[BankReport]:
        check_id("bank_id", bank_id)
        report_queries.report_months(from_month, to_month)  # refuse a bad period before waiting
        position = self._position("reports", bank_id, min_position, wait_seconds_max)
        views = self._projections.views
        totals = report_queries.bank_totals(views, bank_id)
        assert totals is not None, f"the reports view is at {position} of {bank_id} without it"
        report = BankReport(
            totals=totals,
            from_month=from_month,
            to_month=to_month,
            active_members=report_queries.active_members(views, bank_id, from_month, to_month),
            months=report_queries.monthly_report(views, bank_id, from_month, to_month),
            categories=report_queries.category_report(views, bank_id, from_month, to_month),
        )
        return Fresh(report, position)

    def impact_report(
        self,
        bank_id: str,
        from_month: str,
        to_month: str,
        page_size: int = 0,
        page_token: str = "",
        *,
        min_position: int = 0,
        wait_seconds_max: float | None = None,
    ) -> Fresh[ImpactPage]:
        """The "measure what matters" figures (issue 11): the bank's on the first page, and
        a page of its members' and organisations' months."""
        check_id("bank_id", bank_id)
        # Refuse a bad period or page before waiting.
        report_queries.report_months(from_month, to_month)
        impact_queries.accounts_cursor(from_month, to_month, page_size, page_token)
        position = self._position("reports", bank_id, min_position, wait_seconds_max)
        views = self._projections.views
        summary = None
        if not page_token:
            summary = impact_queries.impact_summary(views, bank_id, from_month, to_month)
        accounts, next_page_token = impact_queries.accounts_page(
            views, bank_id, from_month, to_month, page_size, page_token
        )
        return Fresh(ImpactPage(summary, accounts, next_page_token), position)

    def pool_budget(
        self,
        bank_id: str,
        pool_account_id: str,
        from_month: str,
        to_month: str,
        now: datetime,
        *,
        min_position: int = 0,
        wait_seconds_max: float | None = None,
    ) -> Fresh[PoolBudget]:
        """A pool's budget (projections/budget_queries.py); `now` says which cap period and
        which complete months the runway is of."""
        check_id("bank_id", bank_id)
        check_id("pool_account_id", pool_account_id)
        report_queries.report_months(from_month, to_month)  # refuse a bad period before waiting
        if "budgets" not in self._projections.names:
            raise Unavailable("VIEWS_NOT_SERVED", "this server serves no budgets view")
        position = self._position("budgets", bank_id, min_position, wait_seconds_max)
        budget = budget_queries.pool_budget(
            self._projections.views, bank_id, pool_account_id, from_month, to_month, now
        )
        if budget is None:
            raise NotFound(
                "POOL_NOT_FOUND",
                f"pool {pool_account_id!r} does not exist in bank {bank_id!r}"
                f" (as of position {position})",
                field="pool_account_id",
                metadata={"account_id": pool_account_id, "position": str(position)},
            )
        return Fresh(budget, position)

    # ----------------------------------------------------------------- internals

    def _summary(self, bank_id: str, account_id: str, position: int) -> AccountSummary:
        summary = queries.account_summary(self._projections.views, bank_id, account_id)
        if summary is None:
            raise NotFound(
                "ACCOUNT_NOT_FOUND",
                f"account {account_id!r} does not exist in bank {bank_id!r}"
                f" (as of position {position})",
                field="account_id",
                metadata={"bank_id": bank_id, "account_id": account_id, "position": str(position)},
            )
        return summary

    def _position(
        self, projection: str, bank_id: str, min_position: int, wait_seconds_max: float | None
    ) -> int:
        """The bank's position in the view, once it is at least min_position (bounded wait)."""
        if min_position < 0:
            raise InvalidInput(
                "INVALID_MIN_POSITION", "min_position must not be negative", field="min_position"
            )
        runner = self._projections.runner(projection)
        bank = bank_uuid(bank_id)
        if min_position > 0:
            wait_seconds = self._read_wait_seconds
            if wait_seconds_max is not None:
                wait_seconds = max(0.0, min(wait_seconds, wait_seconds_max))
            self._projections.wake()
            if not self._wait(runner, bank, min_position, wait_seconds):
                self._check_committed(bank_id, min_position)
                reached = runner.bank_version(bank)
                raise Unavailable(
                    "VIEW_NOT_CAUGHT_UP",
                    f"the {projection} view of bank {bank_id!r} has reached position {reached},"
                    f" not yet {min_position}; retry shortly",
                    metadata={
                        "projection": projection,
                        "bank_id": bank_id,
                        "position": str(reached),
                        "min_position": str(min_position),
                    },
                )
        # Read before the rows: they reflect at least this position, maybe a later one.
        position = runner.bank_version(bank)
        if position == 0:
            raise NotFound(
                "BANK_NOT_FOUND",
                f"bank {bank_id!r} does not exist (as far as the {projection} view has seen)",
                field="bank_id",
                metadata={"bank_id": bank_id, "position": "0"},
            )
        return position

    def _wait(
        self, runner: ProjectionRunner, bank: UUID, min_position: int, wait_seconds: float
    ) -> bool:
        if runner.bank_version(bank) >= min_position:
            return True  # there already: no need to hold a waiting slot
        waiting = self._waiting
        if waiting is not None and not waiting.try_acquire():
            raise Overloaded(
                "READS_WAITING_MAX_REACHED",
                f"{waiting.slots_max} reads are already waiting for views to catch up;"
                " retry shortly",
                metadata={"reads_waiting_max": str(waiting.slots_max)},
            )
        metrics.reads_waiting.inc()
        try:
            return runner.wait_for(bank, min_position, wait_seconds)
        finally:
            metrics.reads_waiting.dec()
            if waiting is not None:
                waiting.release()

    def _check_committed(self, bank_id: str, position: int) -> None:
        """Refuses a position the bank's history does not hold: waiting would not help."""
        recorder = self._projections.store.recorder
        bank = bank_uuid(bank_id)
        if recorder.select_events(bank, gt=position - 1, lte=position, limit=1):
            return
        if not recorder.select_events(bank, limit=1):
            raise NotFound(
                "BANK_NOT_FOUND",
                f"bank {bank_id!r} does not exist",
                field="bank_id",
                metadata={"bank_id": bank_id, "position": "0"},
            )
        raise PreconditionFailed(
            "POSITION_NOT_COMMITTED",
            f"bank {bank_id!r} has no event at position {position}; pass the position"
            " a write response returned",
            field="min_position",
            metadata={"bank_id": bank_id, "min_position": str(position)},
        )
