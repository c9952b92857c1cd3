"""PoolService over gRPC (issue 11): translate the request, call the Ledger, translate the result.

Writes go to the bank's writer like every command; reads come from the committed pool tables
(application/pool_reads.py), and budgets from the budgets view (projections/budgets.py) with
read-your-writes by position, as LedgerViewService's reads. Every method runs inside the
same `rpc` wrapper as LedgerService (bank id check, logs, metrics, error statuses). Who may
decide a grant is the domain's rule, from the authenticated caller; the edge only says which
roles may call at all.
"""

# Method names are the RPC names of the generated PoolServiceServicer base class.
# ruff: noqa: N802

from __future__ import annotations

import grpc

from ledger.application.ledger import Ledger
from ledger.application.pool_reads import PoolReads
from ledger.domain.commands import Command, check_id
from ledger.domain.errors import Unavailable
from ledger.domain.pools import PoolView
from ledger.domain.records import GrantRecord
from ledger.service import convert
from ledger.service import pool_convert as to
from ledger.service.servicer import rpc
from ledger.service.view_servicer import _wait_seconds_max as wait_seconds_max
from projections.reads import ViewReads
from projections.report_queries import report_months
from timebank.ledger.v1 import pools_pb2 as pb
from timebank.ledger.v1 import pools_pb2_grpc as pb_grpc


class PoolServicer(pb_grpc.PoolServiceServicer):
    """The gRPC face of the ledger's pools."""

    def __init__(self, ledger: Ledger, views: ViewReads | None = None) -> None:
        self._ledger = ledger
        self._reads = PoolReads(ledger.store, ledger.get_bank, ledger.get_account)
        # None: this server follows no views, and serves no budgets.
        self._views = views

    # Policies

    @rpc
    def CreatePool(
        self, request: pb.CreatePoolRequest, context: grpc.ServicerContext
    ) -> pb.CreatePoolResponse:
        view = self._pool(request.bank_id, to.create_pool(request, convert.acting()))
        return pb.CreatePoolResponse(pool=to.pool(view), position=_position(view))

    @rpc
    def ChangePoolPolicy(
        self, request: pb.ChangePoolPolicyRequest, context: grpc.ServicerContext
    ) -> pb.ChangePoolPolicyResponse:
        view = self._pool(request.bank_id, to.change_pool_policy(request, convert.acting()))
        return pb.ChangePoolPolicyResponse(pool=to.pool(view), position=_position(view))

    # Grants

    @rpc
    def RequestGrant(
        self, request: pb.RequestGrantRequest, context: grpc.ServicerContext
    ) -> pb.RequestGrantResponse:
        grant = self._grant(request.bank_id, to.request_grant(request, convert.acting()))
        return pb.RequestGrantResponse(grant=to.grant(grant), position=grant.position)

    @rpc
    def ApproveGrant(
        self, request: pb.ApproveGrantRequest, context: grpc.ServicerContext
    ) -> pb.ApproveGrantResponse:
        command = to.decide_grant(request, "approve", convert.acting())
        grant = self._grant(request.bank_id, command)
        return pb.ApproveGrantResponse(grant=to.grant(grant), position=grant.position)

    @rpc
    def RejectGrant(
        self, request: pb.RejectGrantRequest, context: grpc.ServicerContext
    ) -> pb.RejectGrantResponse:
        command = to.decide_grant(request, "reject", convert.acting())
        grant = self._grant(request.bank_id, command)
        return pb.RejectGrantResponse(grant=to.grant(grant), position=grant.position)

    @rpc
    def CancelGrant(
        self, request: pb.CancelGrantRequest, context: grpc.ServicerContext
    ) -> pb.CancelGrantResponse:
        command = to.decide_grant(request, "cancel", convert.acting())
        grant = self._grant(request.bank_id, command)
        return pb.CancelGrantResponse(grant=to.grant(grant), position=grant.position)

    # Reads

    @rpc
    def GetPool(
        self, request: pb.GetPoolRequest, context: grpc.ServicerContext
    ) -> pb.GetPoolResponse:
        view = self._reads.pool(request.bank_id, request.pool_account_id)
        return pb.GetPoolResponse(pool=to.pool(view))

    @rpc
    def GetPoolBudget(
        self, request: pb.GetPoolBudgetRequest, context: grpc.ServicerContext
    ) -> pb.GetPoolBudgetResponse:
        if self._views is None:
            # Bad input is refused as it would be with the views (reasons.py's order).
            check_id("pool_account_id", request.pool_account_id)
            report_months(request.from_month, request.to_month)
            raise Unavailable("VIEWS_NOT_SERVED", "this server serves no budgets view")
        read = self._views.pool_budget(
            request.bank_id,
            request.pool_account_id,
            request.from_month,
            request.to_month,
            self._ledger.now(),
            min_position=request.min_position,
            wait_seconds_max=wait_seconds_max(context),
        )
        return pb.GetPoolBudgetResponse(budget=to.pool_budget(read.value), position=read.position)

    @rpc
    def ListGrantRequests(
        self, request: pb.ListGrantRequestsRequest, context: grpc.ServicerContext
    ) -> pb.ListGrantRequestsResponse:
        page = self._reads.grant_requests(
            request.bank_id,
            request.pool_account_id,
            to.grant_state(request.state),
            request.page_size,
            request.page_token,
        )
        return pb.ListGrantRequestsResponse(
            grants=[to.grant(item) for item in page.items], next_page_token=page.next_page_token
        )

    @rpc
    def ListRequestsAwaitingApprover(
        self, request: pb.ListRequestsAwaitingApproverRequest, context: grpc.ServicerContext
    ) -> pb.ListRequestsAwaitingApproverResponse:
        page = self._reads.awaiting(
            request.bank_id, request.approver, request.page_size, request.page_token
        )
        return pb.ListRequestsAwaitingApproverResponse(
            grants=[to.grant(item) for item in page.items], next_page_token=page.next_page_token
        )

    # Each command has exactly one result type.

    def _pool(self, bank_id: str, command: Command) -> PoolView:
        result = self._ledger.execute(bank_id, command)
        assert isinstance(result, PoolView), f"{type(command).__name__} gave {result!r}"
        return result

    def _grant(self, bank_id: str, command: Command) -> GrantRecord:
        result = self._ledger.execute(bank_id, command)
        assert isinstance(result, GrantRecord), f"{type(command).__name__} gave {result!r}"
        if result.complete:
            # What this call recorded: the row just committed holds the same, so no read (a
            # query per grant was a tenth of a busy pool's server time in the profile).
            return result
        # A retry: its decisions since and latest position are in the committed row.
        return self._reads.grant(bank_id, result.grant_id) or result


def _position(view: PoolView) -> int:
    return max(view.policy_position, view.account.position)
