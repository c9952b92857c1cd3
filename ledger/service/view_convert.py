"""Pure translation of the read side's results (projections/) into views.proto messages."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from ledger.service.convert import account_kinds, account_statuses, enum_to_proto, timestamp
from projections.impact_queries import (
    AccountImpact,
    ImpactFigures,
    ImpactSummary,
    OrganisationFlows,
    PoolFlows,
)
from projections.queries import AccountSummary, StatementEntry
from projections.reads import BankReport, ImpactPage
from projections.report_queries import AccountCounts, BankTotals, CategoryRow, MonthRow
from timebank.ledger.v1 import views_pb2 as pb

statement_entry_kinds: Mapping[pb.StatementEntryKind.ValueType, str] = {
    pb.STATEMENT_ENTRY_KIND_IMMEDIATE: "transfer",
    pb.STATEMENT_ENTRY_KIND_PENDING_POSTED: "posted",
    pb.STATEMENT_ENTRY_KIND_REVERSAL: "reversal",
}


def account_summary(summary: AccountSummary) -> pb.AccountSummary:
    message = pb.AccountSummary(
        account_id=summary.account_id,
        kind=enum_to_proto(summary.kind, account_kinds),
        status=enum_to_proto(summary.status, account_statuses),
        lower_limit_minutes=summary.lower_limit_minutes,
        balance_minutes=summary.balance_minutes,
        pending_debit_minutes=summary.pending_out_minutes,
        pending_credit_minutes=summary.pending_in_minutes,
        available_minutes=summary.available_minutes,
        given_minutes=summary.given_minutes,
        received_minutes=summary.received_minutes,
        exchanges=summary.exchanges,
        statement_entries=summary.entries,
        opened_at=_iso_timestamp(summary.opened_at),
        last_activity_at=_iso_timestamp(summary.last_activity_at),
        position=summary.position,
    )
    if summary.upper_limit_minutes is not None:
        message.upper_limit_minutes = summary.upper_limit_minutes
    return message


def statement_entry(entry: StatementEntry) -> pb.StatementEntry:
    return pb.StatementEntry(
        seq=entry.seq,
        transfer_id=entry.transfer_id,
        kind=enum_to_proto(entry.kind, statement_entry_kinds),
        counterparty_account_id=entry.counterparty_account_id,
        amount_minutes=entry.amount_minutes,
        balance_minutes=entry.balance_minutes,
        memo=entry.memo,
        category=entry.category,
        service_date=entry.service_date,
        recorded_at=_iso_timestamp(entry.recorded_at),
        position=entry.position,
    )


def bank_report(report: BankReport) -> pb.BankReport:
    return pb.BankReport(
        totals=bank_totals(report.totals),
        from_month=report.from_month,
        to_month=report.to_month,
        active_members=report.active_members,
        months=[_month(row) for row in report.months],
        categories=[_category(row) for row in report.categories],
    )


def bank_totals(totals: BankTotals) -> pb.BankTotals:
    return pb.BankTotals(
        name=totals.name,
        created_at=timestamp(totals.created_at),
        updated_at=timestamp(totals.updated_at),
        accounts=[_account_counts(counts) for counts in totals.accounts],
        immediate_transfers=totals.immediate_transfers,
        pending_transfers=totals.pending_transfers,
        pending_posted=totals.pending_posted,
        pending_voided=totals.pending_voided,
        pending_expired=totals.pending_expired,
        reversals=totals.reversals,
        exchanges=totals.transfers_posted,
        exchanged_minutes=totals.minutes_exchanged,
        reversed_minutes=totals.reversed_minutes,
        open_holds=totals.holds_open,
        open_hold_minutes=totals.holds_open_minutes,
        balance_sum_minutes=totals.balance_sum_minutes,
        zero_sum_ok=totals.zero_sum_ok,
        circulation_minutes=totals.circulation_minutes,
    )


def _account_counts(counts: AccountCounts) -> pb.AccountCounts:
    return pb.AccountCounts(
        kind=enum_to_proto(counts.kind, account_kinds),
        open=counts.open,
        frozen=counts.frozen,
        closed=counts.closed,
    )


def _month(row: MonthRow) -> pb.MonthFigures:
    return pb.MonthFigures(
        month=row.month,
        exchanges=row.exchanges,
        exchanged_minutes=row.minutes,
        active_members=row.active_members,
    )


def _category(row: CategoryRow) -> pb.CategoryFigures:
    return pb.CategoryFigures(
        category=row.category, exchanges=row.exchanges, exchanged_minutes=row.minutes
    )


def impact_page(page: ImpactPage, position: int) -> pb.GetImpactReportResponse:
    response = pb.GetImpactReportResponse(
        accounts=[_account_impact(row) for row in page.accounts],
        next_page_token=page.next_page_token,
        position=position,
    )
    if page.summary is not None:
        response.summary.CopyFrom(_impact_summary(page.summary))
    return response


def _impact_summary(summary: ImpactSummary) -> pb.ImpactSummary:
    return pb.ImpactSummary(
        from_month=summary.from_month,
        to_month=summary.to_month,
        period=_impact_figures(summary.period),
        months=[_impact_figures(month) for month in summary.months],
        organisations=[_organisation_flows(flows) for flows in summary.organisations],
        pools=[_pool_flows(flows) for flows in summary.pools],
    )


def _impact_figures(figures: ImpactFigures) -> pb.ImpactFigures:
    return pb.ImpactFigures(
        month=figures.month,
        active_members=figures.active_members,
        reciprocal_members=figures.reciprocal_members,
        reciprocal_members_share_basis_points=figures.reciprocal_members_share_basis_points,
        exchanged_minutes=figures.exchanged_minutes,
        repeat_pair_minutes=figures.repeat_pair_minutes,
        repeat_pair_minutes_share_basis_points=figures.repeat_pair_minutes_share_basis_points,
        partners=figures.partners_total,
        partners_median_hundredths=figures.partners_median_hundredths,
        partners_mean_hundredths=figures.partners_mean_hundredths,
        newcomers=figures.newcomers,
        days_to_first_exchange_median_hundredths=figures.days_to_first_exchange_median_hundredths,
        organisation_to_member_minutes=figures.organisation_to_member_minutes,
        member_to_organisation_minutes=figures.member_to_organisation_minutes,
        pool_in_minutes=figures.pool_in_minutes,
        pool_out_minutes=figures.pool_out_minutes,
    )


def _organisation_flows(flows: OrganisationFlows) -> pb.OrganisationFlows:
    return pb.OrganisationFlows(
        account_id=flows.account_id,
        to_members_minutes=flows.to_members_minutes,
        from_members_minutes=flows.from_members_minutes,
    )


def _pool_flows(flows: PoolFlows) -> pb.PoolFlows:
    return pb.PoolFlows(
        pool_account_id=flows.pool_account_id,
        category=flows.category,
        in_exchanges=flows.in_exchanges,
        in_minutes=flows.in_minutes,
        out_exchanges=flows.out_exchanges,
        out_minutes=flows.out_minutes,
    )


def _account_impact(row: AccountImpact) -> pb.AccountImpact:
    return pb.AccountImpact(
        month=row.month,
        account_id=row.account_id,
        kind=enum_to_proto(row.kind, account_kinds),
        exchanges=row.exchanges,
        given_minutes=row.given_minutes,
        received_minutes=row.received_minutes,
        partners=row.partners,
        reciprocal=row.reciprocal,
        to_members_minutes=row.to_members_minutes,
        from_members_minutes=row.from_members_minutes,
        newcomer=row.newcomer,
        opened_on=row.opened_on,
        first_exchange_on=row.first_exchange_on,
        days_to_first_exchange=row.days_to_first_exchange,
    )


def _iso_timestamp(text: str) -> Timestamp:
    return timestamp(datetime.fromisoformat(text))
