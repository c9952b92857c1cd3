"""LedgerViewService over gRPC: translate the request, read the views, translate the result.

Runs every method inside the same `rpc` wrapper as LedgerService (bank id check, logs,
metrics, error statuses). A read waiting for its view never outlives the call's deadline.
"""

# Method names are the RPC names of the generated LedgerViewServiceServicer base class.
# ruff: noqa: N802

from __future__ import annotations

import grpc

from ledger.application.ledger import Ledger
from ledger.domain.commands import check_id
from ledger.service import convert, view_convert
from ledger.service.servicer import rpc
from projections.reads import ViewReads
from timebank.ledger.v1 import views_pb2 as pb
from timebank.ledger.v1 import views_pb2_grpc as pb_grpc

# Time kept back from the caller's deadline to send VIEW_NOT_CAUGHT_UP before it expires.
deadline_margin_seconds = 0.05


class LedgerViewServicer(pb_grpc.LedgerViewServiceServicer):
    """The gRPC face of the views."""

    def __init__(self, reads: ViewReads, ledger: Ledger) -> None:
        self._reads = reads
        self._ledger = ledger

    def _check_statement_reader(self, bank_id: str, account_id: str) -> None:
        """A member's summary and statement, with the bank's consent policy on, are read by
        a front-end only with that member's token."""
        check_id("bank_id", bank_id)
        check_id("account_id", account_id)
        by = convert.acting()
        self._ledger.check_statement_reader(
            bank_id, account_id, via_front_end=by.via_front_end, member_subject=by.member_subject
        )

    @rpc
    def GetAccountSummary(
        self, request: pb.GetAccountSummaryRequest, context: grpc.ServicerContext
    ) -> pb.GetAccountSummaryResponse:
        self._check_statement_reader(request.bank_id, request.account_id)
        read = self._reads.account_summary(
            request.bank_id,
            request.account_id,
            min_position=request.min_position,
            wait_seconds_max=_wait_seconds_max(context),
        )
        return pb.GetAccountSummaryResponse(
            account=view_convert.account_summary(read.value), position=read.position
        )

    @rpc
    def ListStatementEntries(
        self, request: pb.ListStatementEntriesRequest, context: grpc.ServicerContext
    ) -> pb.ListStatementEntriesResponse:
        self._check_statement_reader(request.bank_id, request.account_id)
        read = self._reads.statement_page(
            request.bank_id,
            request.account_id,
            request.page_size,
            request.page_token,
            min_position=request.min_position,
            wait_seconds_max=_wait_seconds_max(context),
        )
        entries, next_page_token = read.value
        return pb.ListStatementEntriesResponse(
            entries=[view_convert.statement_entry(entry) for entry in entries],
            next_page_token=next_page_token,
            position=read.position,
        )

    @rpc
    def GetBankReport(
        self, request: pb.GetBankReportRequest, context: grpc.ServicerContext
    ) -> pb.GetBankReportResponse:
        read = self._reads.bank_report(
            request.bank_id,
            request.from_month,
            request.to_month,
            min_position=request.min_position,
            wait_seconds_max=_wait_seconds_max(context),
        )
        return pb.GetBankReportResponse(
            report=view_convert.bank_report(read.value), position=read.position
        )

    @rpc
    def GetImpactReport(
        self, request: pb.GetImpactReportRequest, context: grpc.ServicerContext
    ) -> pb.GetImpactReportResponse:
        read = self._reads.impact_report(
            request.bank_id,
            request.from_month,
            request.to_month,
            request.page_size,
            request.page_token,
            min_position=request.min_position,
            wait_seconds_max=_wait_seconds_max(context),
        )
        return view_convert.impact_page(read.value, read.position)


def _wait_seconds_max(context: grpc.ServicerContext) -> float | None:
    """How long the call may still wait, or None if the caller set no deadline."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return max(0.0, remaining - deadline_margin_seconds)
