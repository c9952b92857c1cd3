"""LedgerService over gRPC: translate the request, call the Ledger, translate the result.

No rule of the ledger lives here. Every method runs inside `rpc`, which checks the request's
bank id, binds the call's ids to the log lines, and turns refusals into statuses (errors.py).
"""

# Method names are the RPC names of the generated LedgerServiceServicer base class.
# ruff: noqa: N802

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import grpc

from ledger import logs, metrics
from ledger.application.ledger import Ledger
from ledger.application.listing import ListPage
from ledger.domain import commands
from ledger.domain.commands import Command, check_id
from ledger.domain.errors import DomainError, QuotaReached
from ledger.domain.views import AccountView, BatchItemResult, TransferView
from ledger.security.caller import current_caller
from ledger.service import convert, errors
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Request fields bound to every log line of a call, when the request has them.
_logged_ids = ("bank_id", "request_id", "account_id", "transfer_id")


class BankRequest(Protocol):
    """Every request names its bank (but the deployment's own: ListBanks)."""

    @property
    def bank_id(self) -> str: ...


Servicer = TypeVar("Servicer")
Request = TypeVar("Request", bound=BankRequest | pb.ListBanksRequest)
Response = TypeVar("Response")
Method = Callable[[Servicer, Request, grpc.ServicerContext], Response]


def rpc(method: Method[Servicer, Request, Response]) -> Method[Servicer, Request, Response]:
    """Runs a servicer method: checks bank_id, logs and counts the outcome, maps errors."""
    name = method.__name__

    @functools.wraps(method)
    def call(self: Servicer, request: Request, context: grpc.ServicerContext) -> Response:
        ids = {field: getattr(request, field, "") for field in _logged_ids}
        ids["key_id"] = current_caller().key_id
        with logs.bound(rpc=name, **{k: v for k, v in ids.items() if v}):
            started = time.monotonic()
            try:
                if not isinstance(request, pb.ListBanksRequest):
                    check_id("bank_id", request.bank_id)
                response = method(self, request, context)
            except DomainError as error:
                code = errors.status_code(error)
                logs.event(
                    log,
                    "rpc_refused",
                    code=code.name,
                    reason=error.reason,
                    field=error.field,
                    duration_ms=_finished(name, code, started),
                )
                context.abort_with_status(errors.to_status(error))
            except Exception:
                logs.event(
                    log,
                    "rpc_failed",
                    level=logging.ERROR,
                    exc_info=True,
                    duration_ms=_finished(name, grpc.StatusCode.INTERNAL, started),
                )
                context.abort_with_status(errors.internal_status())
            duration_ms = _finished(name, grpc.StatusCode.OK, started)
            logs.event(log, "rpc_ok", level=logging.DEBUG, duration_ms=duration_ms)
            return response

    return call


def _finished(method: str, code: grpc.StatusCode, started: float) -> float:
    """Counts a finished call in the metrics; returns its duration in milliseconds."""
    seconds = time.monotonic() - started
    metrics.rpcs.labels(method=method, code=code.name).inc()
    metrics.rpc_duration.labels(method=method).observe(seconds)
    return round(seconds * 1000, 3)


class LedgerServicer(pb_grpc.LedgerServiceServicer):
    """The gRPC face of a Ledger."""

    def __init__(self, ledger: Ledger, banks_per_operator_key_max: int) -> None:
        self._ledger = ledger
        self._banks_per_key_max = banks_per_operator_key_max
        # Counting a key's banks and creating one more is one step: without it, concurrent
        # CreateBank calls of one key all see the count below the cap and all create a bank.
        # Banks are created rarely, so one lock for every key costs nothing.
        self._creating_bank = threading.Lock()

    # Banks

    @rpc
    def CreateBank(
        self, request: pb.CreateBankRequest, context: grpc.ServicerContext
    ) -> pb.CreateBankResponse:
        command = convert.create_bank(request, convert.acting())
        with self._creating_bank:
            self._check_banks_quota(command)
            view = self._ledger.create_bank(command)
        return pb.CreateBankResponse(bank=convert.bank(view), position=view.position)

    @rpc
    def GetBank(
        self, request: pb.GetBankRequest, context: grpc.ServicerContext
    ) -> pb.GetBankResponse:
        view = self._ledger.get_bank(request.bank_id)
        return pb.GetBankResponse(bank=convert.bank(view))

    # Accounts

    @rpc
    def OpenAccount(
        self, request: pb.OpenAccountRequest, context: grpc.ServicerContext
    ) -> pb.OpenAccountResponse:
        view = self._account(request.bank_id, convert.open_account(request, convert.acting()))
        return pb.OpenAccountResponse(account=convert.account(view), position=view.position)

    @rpc
    def GetAccount(
        self, request: pb.GetAccountRequest, context: grpc.ServicerContext
    ) -> pb.GetAccountResponse:
        by = convert.acting()
        self._ledger.check_statement_reader(
            request.bank_id,
            request.account_id,
            via_front_end=by.via_front_end,
            member_subject=by.member_subject,
        )
        view = self._ledger.get_account(request.bank_id, request.account_id)
        return pb.GetAccountResponse(account=convert.account(view))

    @rpc
    def ListAccounts(
        self, request: pb.ListAccountsRequest, context: grpc.ServicerContext
    ) -> pb.ListAccountsResponse:
        page = self._ledger.lists.accounts(
            request.bank_id,
            request.page_size,
            request.page_token,
            kind=convert.optional_enum(
                "kind", request.kind, convert.account_kinds, "INVALID_ACCOUNT_KIND"
            ),
            status=convert.optional_enum(
                "status", request.status, convert.account_statuses, "INVALID_ACCOUNT_STATUS"
            ),
        )
        response = pb.ListAccountsResponse(
            accounts=[convert.account(view) for view in page.items],
            next_page_token=page.next_page_token,
        )
        if page.total_size is not None:
            response.total_size = page.total_size
        return response

    @rpc
    def ChangeAccountLimits(
        self, request: pb.ChangeAccountLimitsRequest, context: grpc.ServicerContext
    ) -> pb.ChangeAccountLimitsResponse:
        view = self._account(request.bank_id, convert.change_limits(request, convert.acting()))
        return pb.ChangeAccountLimitsResponse(account=convert.account(view), position=view.position)

    @rpc
    def FreezeAccount(
        self, request: pb.FreezeAccountRequest, context: grpc.ServicerContext
    ) -> pb.FreezeAccountResponse:
        view = self._account(
            request.bank_id, convert.change_status(request, "freeze", convert.acting())
        )
        return pb.FreezeAccountResponse(account=convert.account(view), position=view.position)

    @rpc
    def UnfreezeAccount(
        self, request: pb.UnfreezeAccountRequest, context: grpc.ServicerContext
    ) -> pb.UnfreezeAccountResponse:
        view = self._account(
            request.bank_id, convert.change_status(request, "unfreeze", convert.acting())
        )
        return pb.UnfreezeAccountResponse(account=convert.account(view), position=view.position)

    @rpc
    def CloseAccount(
        self, request: pb.CloseAccountRequest, context: grpc.ServicerContext
    ) -> pb.CloseAccountResponse:
        view = self._account(
            request.bank_id, convert.change_status(request, "close", convert.acting())
        )
        return pb.CloseAccountResponse(account=convert.account(view), position=view.position)

    # Transfers

    @rpc
    def CreateTransfer(
        self, request: pb.CreateTransferRequest, context: grpc.ServicerContext
    ) -> pb.CreateTransferResponse:
        view = self._transfer(request.bank_id, convert.create_transfer(request, convert.acting()))
        return pb.CreateTransferResponse(
            transfer=convert.transfer(view), position=view.created_position
        )

    @rpc
    def CreateTransfers(
        self, request: pb.CreateTransfersRequest, context: grpc.ServicerContext
    ) -> pb.CreateTransfersResponse:
        results = self._batch(request.bank_id, convert.create_transfers(request, convert.acting()))
        positions = [result.transfer.created_position for result in results if result.transfer]
        return pb.CreateTransfersResponse(
            results=convert.transfer_results(results), position=max(positions, default=0)
        )

    @rpc
    def PostPendingTransfer(
        self, request: pb.PostPendingTransferRequest, context: grpc.ServicerContext
    ) -> pb.PostPendingTransferResponse:
        view = self._transfer(request.bank_id, convert.post_pending(request, convert.acting()))
        return pb.PostPendingTransferResponse(
            transfer=convert.transfer(view), position=view.position
        )

    @rpc
    def VoidPendingTransfer(
        self, request: pb.VoidPendingTransferRequest, context: grpc.ServicerContext
    ) -> pb.VoidPendingTransferResponse:
        view = self._transfer(request.bank_id, convert.void_pending(request, convert.acting()))
        return pb.VoidPendingTransferResponse(
            transfer=convert.transfer(view), position=view.position
        )

    @rpc
    def ReverseTransfer(
        self, request: pb.ReverseTransferRequest, context: grpc.ServicerContext
    ) -> pb.ReverseTransferResponse:
        view = self._transfer(request.bank_id, convert.reverse_transfer(request, convert.acting()))
        return pb.ReverseTransferResponse(
            transfer=convert.transfer(view), position=view.created_position
        )

    @rpc
    def GetTransfer(
        self, request: pb.GetTransferRequest, context: grpc.ServicerContext
    ) -> pb.GetTransferResponse:
        view = self._ledger.get_transfer(request.bank_id, request.transfer_id)
        by = convert.acting()
        self._ledger.check_transfer_reader(
            request.bank_id, view, via_front_end=by.via_front_end, member_subject=by.member_subject
        )
        return pb.GetTransferResponse(transfer=convert.transfer(view))

    @rpc
    def ListAccountTransfers(
        self, request: pb.ListAccountTransfersRequest, context: grpc.ServicerContext
    ) -> pb.ListAccountTransfersResponse:
        page = self._ledger.lists.account_transfers(
            request.bank_id,
            request.account_id,
            request.page_size,
            request.page_token,
            convert.transfer_filter(request.filter),
            check_reader=self._statement_reader(request.bank_id, request.account_id),
        )
        return _transfers_page(pb.ListAccountTransfersResponse(), page)

    # Lists and metadata for front-ends and coordinators (issue 12)

    @rpc
    def ListPendingTransfers(
        self, request: pb.ListPendingTransfersRequest, context: grpc.ServicerContext
    ) -> pb.ListPendingTransfersResponse:
        page = self._ledger.lists.pending_transfers(
            request.bank_id,
            request.account_id,
            request.page_size,
            request.page_token,
            convert.pending_side(request.side),
            check_reader=self._statement_reader(request.bank_id, request.account_id),
        )
        return _transfers_page(pb.ListPendingTransfersResponse(), page)

    @rpc
    def ListTransfers(
        self, request: pb.ListTransfersRequest, context: grpc.ServicerContext
    ) -> pb.ListTransfersResponse:
        page = self._ledger.lists.bank_transfers(
            request.bank_id,
            request.page_size,
            request.page_token,
            convert.transfer_filter(request.filter),
        )
        return _transfers_page(pb.ListTransfersResponse(), page)

    @rpc
    def ChangeAccountMetadata(
        self, request: pb.ChangeAccountMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ChangeAccountMetadataResponse:
        view = self._account(request.bank_id, convert.change_metadata(request, convert.acting()))
        return pb.ChangeAccountMetadataResponse(
            account=convert.account(view), position=view.position
        )

    @rpc
    def ListBanks(
        self, request: pb.ListBanksRequest, context: grpc.ServicerContext
    ) -> pb.ListBanksResponse:
        page = self._ledger.lists.banks(request.page_size, request.page_token)
        response = pb.ListBanksResponse(
            banks=[
                pb.BankEntry(
                    bank_id=view.bank_id,
                    name=view.name,
                    created_at=convert.timestamp(view.created_at),
                )
                for view in page.items
            ],
            next_page_token=page.next_page_token,
        )
        if page.total_size is not None:
            response.total_size = page.total_size
        return response

    def _statement_reader(self, bank_id: str, account_id: str) -> Callable[[], None]:
        """Member consent for a member-scoped list, run once the request is known valid."""
        by = convert.acting()
        return functools.partial(
            self._ledger.check_statement_reader,
            bank_id,
            account_id,
            via_front_end=by.via_front_end,
            member_subject=by.member_subject,
        )

    def _check_banks_quota(self, command: commands.CreateBank) -> None:
        """An operator key creates at most so many banks (a retry of one is not a new one)."""
        command.validate()
        if self._ledger.banks_created_by(command.actor) < self._banks_per_key_max:
            return
        try:
            self._ledger.get_bank(command.bank_id)
        except DomainError:
            raise QuotaReached(
                "BANKS_MAX_REACHED",
                f"this operator key has created {self._banks_per_key_max} banks, as many as"
                " one key may",
                metadata={"banks_max": str(self._banks_per_key_max)},
            ) from None

    # The Ledger returns one of three result types; each command has exactly one.

    def _account(self, bank_id: str, command: Command) -> AccountView:
        result = self._ledger.execute(bank_id, command)
        assert isinstance(result, AccountView), f"{type(command).__name__} gave {result!r}"
        # Labels and tags are not the writer's: read as committed (issue 12).
        return self._ledger.with_metadata(bank_id, result)

    def _transfer(self, bank_id: str, command: Command) -> TransferView:
        result = self._ledger.execute(bank_id, command)
        assert isinstance(result, TransferView), f"{type(command).__name__} gave {result!r}"
        return result

    def _batch(self, bank_id: str, command: Command) -> list[BatchItemResult]:
        result = self._ledger.execute(bank_id, command)
        assert isinstance(result, list), f"{type(command).__name__} gave {result!r}"
        return result


TransfersResponse = TypeVar(
    "TransfersResponse",
    pb.ListAccountTransfersResponse,
    pb.ListPendingTransfersResponse,
    pb.ListTransfersResponse,
)


def _transfers_page(response: TransfersResponse, page: ListPage[TransferView]) -> TransfersResponse:
    response.transfers.extend(convert.transfer(view) for view in page.items)
    response.next_page_token = page.next_page_token
    if page.total_size is not None:
        response.total_size = page.total_size
    return response
