"""End to end: a real gRPC server on a free port, an in-memory store, and a real channel.

These tests use the API as a time bank's front-end would, and check what it sees: results,
statuses with their google.rpc details, and balances that do not move after a refusal.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from certs import Pki
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from served import Served, serving

from ledger.application.ledger import Ledger
from ledger.demo import demo
from ledger.domain.views import BankView
from ledger.service.bootstrap import KeysFile, demo_bank_id, demo_bank_name
from ledger.service.server import ledger_service_name
from timebank.ledger.v1 import access_pb2, access_pb2_grpc
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc

repo_root = Path(__file__).resolve().parents[1]
bank_id = "riverside"
# Members may owe up to ten hours.
member_lower_limit_minutes = -600
call_timeout_seconds = 10.0

Books = dict[str, tuple[int, int, int]]


# ---------------------------------------------------------------------------------------
# A server per test, and small helpers that keep the narrative readable
# ---------------------------------------------------------------------------------------


class HandClock:
    """A clock the test moves by hand, so holds expire when the narrative says so."""

    def __init__(self) -> None:
        self.now = datetime(2025, 5, 17, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


# Named apart from conftest's `clock` and `ledger`: here the ledger is a gRPC client.
@pytest.fixture
def hand_clock() -> HandClock:
    return HandClock()


@pytest.fixture
def served(pki: Pki, hand_clock: HandClock) -> Iterator[Served]:
    """A server with TLS and keys on, over an in-memory store, on a free port."""
    with serving(pki, clock=hand_clock) as served:
        yield served


@pytest.fixture
def channel(served: Served) -> grpc.Channel:
    """A channel presenting no key: enough for health and reflection, nothing else."""
    return served.channel()


@pytest.fixture
def operator(served: Served) -> pb_grpc.LedgerServiceStub:
    return pb_grpc.LedgerServiceStub(served.channel(served.operator_token))


@pytest.fixture
def bank(served: Served) -> pb_grpc.LedgerServiceStub:
    """A bank admin's client of a bank with three members: ana, ben and cas."""
    ledger = pb_grpc.LedgerServiceStub(served.channel(served.create_bank(bank_id)))
    for account_id in ("ana", "ben", "cas"):
        open_member(ledger, account_id)
    return ledger


def open_member(ledger: pb_grpc.LedgerServiceStub, account_id: str) -> pb.Account:
    return ledger.OpenAccount(
        pb.OpenAccountRequest(
            bank_id=bank_id,
            account_id=account_id,
            kind=pb.ACCOUNT_KIND_MEMBER,
            lower_limit_minutes=member_lower_limit_minutes,
            actor_label="coordinator",
        ),
        timeout=call_timeout_seconds,
    ).account


def new_transfer(
    transfer_id: str, payer: str, payee: str, minutes: int, *, pending: bool = False
) -> pb.NewTransfer:
    return pb.NewTransfer(
        transfer_id=transfer_id,
        payer_account_id=payer,
        payee_account_id=payee,
        amount_minutes=minutes,
        memo=f"{payee} helped {payer}",
        pending=pending,
    )


def pay(
    ledger: pb_grpc.LedgerServiceStub,
    transfer_id: str,
    payer: str,
    payee: str,
    minutes: int,
    **extra: object,
) -> pb.CreateTransferResponse:
    request = pb.CreateTransferRequest(
        bank_id=bank_id,
        transfer_id=transfer_id,
        payer_account_id=payer,
        payee_account_id=payee,
        amount_minutes=minutes,
        memo=f"{payee} helped {payer}",
        **extra,  # type: ignore[arg-type]  # the remaining CreateTransferRequest fields
    )
    return ledger.CreateTransfer(request, timeout=call_timeout_seconds)


def books(ledger: pb_grpc.LedgerServiceStub, *account_ids: str) -> Books:
    """(balance, pending debit, pending credit) of each account, in minutes."""
    snapshot = {}
    for account_id in account_ids or ("ana", "ben", "cas"):
        account = ledger.GetAccount(
            pb.GetAccountRequest(bank_id=bank_id, account_id=account_id),
            timeout=call_timeout_seconds,
        ).account
        snapshot[account_id] = (
            account.balance_minutes,
            account.pending_debit_minutes,
            account.pending_credit_minutes,
        )
    return snapshot


@dataclass
class Refusal:
    """What a client learns from a refused call."""

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    bad_fields: list[str] = field(default_factory=list)
    preconditions: list[tuple[str, str]] = field(default_factory=list)


def refusal(call: Callable[[], object]) -> Refusal:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = raised.value
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    assert status is not None, "every refusal carries a google.rpc.Status"
    result = Refusal(error.code(), error.details() or "", "", "", {})
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            result.reason, result.domain = info.reason, info.domain
            result.metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            result.bad_fields = [violation.field for violation in bad_request.field_violations]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            result.preconditions = [(v.type, v.subject) for v in failure.violations]
    assert result.domain == "timebank-ledger", "every refusal carries an ErrorInfo"
    return result


# ---------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------


def test_health_and_reflection(channel: grpc.Channel) -> None:
    # The server as a whole, and the ledger service by name, report SERVING.
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "timebank.ledger.v1.LedgerService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    # Reflection lists the ledger, health and reflection services, so grpcurl needs no protos.
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {
        service.name
        for response in responses
        for service in response.list_services_response.service
    }
    assert {
        ledger_service_name,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    assert ledger_service_name == "timebank.ledger.v1.LedgerService"


def test_unexpected_failure_is_internal_and_reveals_nothing(pki: Pki) -> None:
    class BrokenLedger(Ledger):
        def get_bank(self, bank_id: str) -> BankView:
            raise RuntimeError("password=hunter2")

    with serving(pki, ledger_class=BrokenLedger) as served:
        ledger = pb_grpc.LedgerServiceStub(served.channel(served.create_bank(bank_id)))
        # A bug inside the ledger becomes INTERNAL with reason INTERNAL; its text stays in the log.
        refused = refusal(lambda: ledger.GetBank(pb.GetBankRequest(bank_id=bank_id)))
        assert refused.code == grpc.StatusCode.INTERNAL
        assert refused.reason == "INTERNAL"
        assert "hunter2" not in refused.message


# ---------------------------------------------------------------------------------------
# A walk through the ledger
# ---------------------------------------------------------------------------------------


def test_walkthrough(served: Served, operator: pb_grpc.LedgerServiceStub) -> None:
    # The operator creates the bank; asking again with the same content returns the same bank.
    created = operator.CreateBank(pb.CreateBankRequest(bank_id=bank_id, name="Riverside Time Bank"))
    assert created.bank.name == "Riverside Time Bank"
    assert created.position == created.bank.position >= 1
    again = operator.CreateBank(pb.CreateBankRequest(bank_id=bank_id, name="Riverside Time Bank"))
    assert again.bank.bank_id == bank_id
    assert again.bank.created_at == created.bank.created_at
    # The operator issues the bank's coordinator a key; the token is shown once.
    access = access_pb2_grpc.AccessServiceStub(served.channel(served.operator_token))
    issued = access.IssueApiKey(
        access_pb2.IssueApiKeyRequest(
            bank_id=bank_id, role=access_pb2.ROLE_BANK_ADMIN, label="coordinator"
        )
    )
    assert issued.token.startswith(f"tbl_{issued.key.key_id}_")
    assert issued.key.created_by.startswith("key:")
    coordinator = f"key:{issued.key.key_id}"
    ledger = pb_grpc.LedgerServiceStub(served.channel(issued.token))

    # Three members join, each allowed to owe ten hours; everyone starts at zero.
    for account_id in ("ana", "ben", "cas"):
        account = open_member(ledger, account_id)
        assert account.kind == pb.ACCOUNT_KIND_MEMBER
        assert account.status == pb.ACCOUNT_STATUS_OPEN
        assert account.available_minutes == 600
        assert not account.HasField("upper_limit_minutes")
    assert books(ledger) == {"ana": (0, 0, 0), "ben": (0, 0, 0), "cas": (0, 0, 0)}

    # Ana helps Ben in the garden for an hour and a half: Ben pays her 90 minutes at once.
    garden_details = {"category": "gardening", "service_date": "2025-05-17"}
    garden = pay(ledger, "garden", "ben", "ana", 90, **garden_details)
    assert garden.transfer.kind == pb.TRANSFER_KIND_IMMEDIATE
    assert garden.transfer.status == pb.TRANSFER_STATUS_POSTED
    assert garden.transfer.posted_amount_minutes == 90
    assert garden.position == garden.transfer.created_position > created.position
    assert books(ledger) == {"ana": (90, 0, 0), "ben": (-90, 0, 0), "cas": (0, 0, 0)}

    # The front-end retries the same request: the first result comes back, nothing moves twice.
    retried = pay(ledger, "garden", "ben", "ana", 90, **garden_details)
    assert retried == garden
    assert books(ledger) == {"ana": (90, 0, 0), "ben": (-90, 0, 0), "cas": (0, 0, 0)}

    # Cas will tutor Ana for two hours; Ana's 120 minutes are held until Cas confirms.
    tutoring = pay(ledger, "tutoring", "ana", "cas", 120, pending=True, timeout_seconds=3600)
    assert tutoring.transfer.kind == pb.TRANSFER_KIND_PENDING
    assert tutoring.transfer.status == pb.TRANSFER_STATUS_PENDING
    assert tutoring.transfer.posted_amount_minutes == 0
    assert tutoring.transfer.HasField("deadline")
    assert not tutoring.transfer.HasField("resolved_at")
    assert books(ledger) == {"ana": (90, 120, 0), "ben": (-90, 0, 0), "cas": (0, 0, 120)}
    ana = ledger.GetAccount(pb.GetAccountRequest(bank_id=bank_id, account_id="ana")).account
    assert ana.available_minutes == 90 - 120 + 600

    # The lesson took one hour: Cas posts 60 minutes and the rest of the hold is released.
    posted = ledger.PostPendingTransfer(
        pb.PostPendingTransferRequest(
            bank_id=bank_id, request_id="tutoring-post", transfer_id="tutoring", amount_minutes=60
        )
    )
    assert posted.transfer.status == pb.TRANSFER_STATUS_POSTED
    assert posted.transfer.amount_minutes == 120
    assert posted.transfer.posted_amount_minutes == 60
    assert posted.transfer.HasField("resolved_at")
    assert posted.position == posted.transfer.position > tutoring.position
    assert books(ledger) == {"ana": (30, 0, 0), "ben": (-90, 0, 0), "cas": (60, 0, 0)}

    # Ben books Cas for a repair, held; the repair is called off and the hold is voided.
    pay(ledger, "repair", "ben", "cas", 45, pending=True)
    assert books(ledger) == {"ana": (30, 0, 0), "ben": (-90, 45, 0), "cas": (60, 0, 45)}
    voided = ledger.VoidPendingTransfer(
        pb.VoidPendingTransferRequest(
            bank_id=bank_id, request_id="repair-void", transfer_id="repair", reason="called off"
        )
    )
    assert voided.transfer.status == pb.TRANSFER_STATUS_VOIDED
    assert voided.transfer.posted_amount_minutes == 0
    assert books(ledger) == {"ana": (30, 0, 0), "ben": (-90, 0, 0), "cas": (60, 0, 0)}

    # The garden hours were recorded against the wrong member: the coordinator reverses them.
    reversal = ledger.ReverseTransfer(
        pb.ReverseTransferRequest(
            bank_id=bank_id,
            transfer_id="garden-undo",
            reverses_transfer_id="garden",
            reason="recorded against the wrong member",
            actor_label="Carla, coordinator",
        )
    )
    assert reversal.transfer.kind == pb.TRANSFER_KIND_REVERSAL
    assert reversal.transfer.reverses_transfer_id == "garden"
    assert reversal.transfer.payer_account_id == "ana"
    assert reversal.transfer.payee_account_id == "ben"
    assert reversal.transfer.amount_minutes == 90
    # The actor is who authenticated, not what the request says; the label is kept beside it.
    assert reversal.transfer.actor == coordinator
    assert reversal.transfer.actor_label == "Carla, coordinator"
    original = ledger.GetTransfer(pb.GetTransferRequest(bank_id=bank_id, transfer_id="garden"))
    assert original.transfer.reversed_by_transfer_id == "garden-undo"
    assert books(ledger) == {"ana": (-60, 0, 0), "ben": (0, 0, 0), "cas": (60, 0, 0)}

    # A linked batch whose second item would take Ana past her limit: nothing is recorded,
    # each item says why, and the balances do not move.
    before = books(ledger)
    linked = ledger.CreateTransfers(
        pb.CreateTransfersRequest(
            bank_id=bank_id,
            transfers=[
                new_transfer("batch-1", "ben", "ana", 30),
                new_transfer("batch-2", "ana", "cas", 1000),
                new_transfer("batch-3", "cas", "ben", 15),
            ],
            linked=True,
        )
    )
    assert [result.WhichOneof("result") for result in linked.results] == ["error"] * 3
    assert [result.error.reason for result in linked.results] == [
        "LINKED_EVENT_FAILED",
        "EXCEEDS_LOWER_LIMIT",
        "LINKED_EVENT_FAILED",
    ]
    assert linked.results[1].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert linked.results[1].error.metadata["account_id"] == "ana"
    assert linked.position == 0
    assert books(ledger) == before
    refused = refusal(
        lambda: ledger.GetTransfer(pb.GetTransferRequest(bank_id=bank_id, transfer_id="batch-1"))
    )
    assert refused.code == grpc.StatusCode.NOT_FOUND

    # The same items, not linked: each stands on its own; only the one over the limit fails.
    independent = ledger.CreateTransfers(
        pb.CreateTransfersRequest(
            bank_id=bank_id,
            transfers=[
                new_transfer("solo-1", "ben", "ana", 30),
                new_transfer("solo-2", "ana", "cas", 1000),
                new_transfer("solo-3", "cas", "ben", 15),
            ],
        )
    )
    assert [result.WhichOneof("result") for result in independent.results] == [
        "transfer",
        "error",
        "transfer",
    ]
    assert [r.transfer.transfer_id for r in independent.results if r.HasField("transfer")] == [
        "solo-1",
        "solo-3",
    ]
    assert independent.results[1].error.reason == "EXCEEDS_LOWER_LIMIT"
    assert independent.position == independent.results[2].transfer.created_position
    assert books(ledger) == {"ana": (-30, 0, 0), "ben": (-15, 0, 0), "cas": (45, 0, 0)}

    # Whatever happened, mutual credit sums to zero.
    assert sum(balance for balance, _, _ in books(ledger).values()) == 0
    summary = ledger.GetBank(pb.GetBankRequest(bank_id=bank_id)).bank
    assert (summary.account_count, summary.transfer_count) == (3, 6)
    assert summary.position == independent.position


def test_account_limits_and_status(bank: pb_grpc.LedgerServiceStub) -> None:
    ledger = bank
    # The coordinator gives Ben a cap of two hours.
    changed = ledger.ChangeAccountLimits(
        pb.ChangeAccountLimitsRequest(
            bank_id=bank_id,
            request_id="ben-cap",
            account_id="ben",
            lower_limit_minutes=-600,
            upper_limit_minutes=120,
            reason="hoarding cap",
        )
    )
    assert changed.account.upper_limit_minutes == 120
    assert changed.position == changed.account.position

    # Ana cannot pay Ben past his cap; nothing moves.
    before = books(ledger)
    refused = refusal(lambda: pay(ledger, "too-much", "ana", "ben", 121))
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.reason == "EXCEEDS_UPPER_LIMIT"
    assert books(ledger) == before

    # Ben's account is frozen: he can neither receive nor pay until it is unfrozen.
    frozen = ledger.FreezeAccount(
        pb.FreezeAccountRequest(bank_id=bank_id, request_id="ben-freeze", account_id="ben")
    )
    assert frozen.account.status == pb.ACCOUNT_STATUS_FROZEN
    refused = refusal(lambda: pay(ledger, "while-frozen", "ana", "ben", 10))
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.reason == "ACCOUNT_FROZEN"
    assert refused.preconditions == [("ACCOUNT_FROZEN", "accounts/ben")]
    assert books(ledger) == before
    unfrozen = ledger.UnfreezeAccount(
        pb.UnfreezeAccountRequest(bank_id=bank_id, request_id="ben-unfreeze", account_id="ben")
    )
    assert unfrozen.account.status == pb.ACCOUNT_STATUS_OPEN
    pay(ledger, "after-thaw", "ana", "ben", 10)

    # Cas leaves the bank; her account is closed for good.
    closed = ledger.CloseAccount(
        pb.CloseAccountRequest(bank_id=bank_id, request_id="cas-close", account_id="cas")
    )
    assert closed.account.status == pb.ACCOUNT_STATUS_CLOSED
    assert books(ledger) == {"ana": (-10, 0, 0), "ben": (10, 0, 0), "cas": (0, 0, 0)}


# ---------------------------------------------------------------------------------------
# Errors, as statuses with google.rpc details
# ---------------------------------------------------------------------------------------


def test_invalid_argument_names_the_field(
    bank: pb_grpc.LedgerServiceStub, operator: pb_grpc.LedgerServiceStub
) -> None:
    ledger = bank
    before = books(ledger)

    # An amount of zero: INVALID_ARGUMENT, a BadRequest naming amount_minutes, an ErrorInfo reason.
    refused = refusal(lambda: pay(ledger, "nothing", "ana", "ben", 0))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.reason == "AMOUNT_NOT_POSITIVE"
    assert refused.bad_fields == ["amount_minutes"]
    assert refused.metadata["field"] == "amount_minutes"
    assert books(ledger) == before

    # An account kind left unspecified is refused with the field's name.
    refused = refusal(
        lambda: ledger.OpenAccount(pb.OpenAccountRequest(bank_id=bank_id, account_id="dee"))
    )
    assert (refused.code, refused.reason, refused.bad_fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_REQUIRED",
        ["kind"],
    )
    # So is a kind number this version does not know.
    refused = refusal(
        lambda: ledger.OpenAccount(
            pb.OpenAccountRequest(bank_id=bank_id, account_id="dee", kind=99)  # type: ignore[arg-type]
        )
    )
    assert (refused.reason, refused.bad_fields) == ("INVALID_ACCOUNT_KIND", ["kind"])

    # A request without a bank, or with a bank id that is not an id.
    refused = refusal(lambda: ledger.GetBank(pb.GetBankRequest()))
    assert (refused.reason, refused.bad_fields) == ("FIELD_REQUIRED", ["bank_id"])
    refused = refusal(lambda: ledger.GetBank(pb.GetBankRequest(bank_id="river side")))
    assert (refused.reason, refused.bad_fields) == ("INVALID_ID", ["bank_id"])

    # A pending timeout on an immediate transfer.
    refused = refusal(lambda: pay(ledger, "odd", "ana", "ben", 10, timeout_seconds=60))
    assert (refused.reason, refused.bad_fields) == ("TIMEOUT_WITHOUT_PENDING", ["timeout_seconds"])

    # A bank needs a name (the operator creates banks).
    refused = refusal(lambda: operator.CreateBank(pb.CreateBankRequest(bank_id="hillside")))
    assert (refused.reason, refused.bad_fields) == ("FIELD_REQUIRED", ["name"])

    # An empty batch.
    refused = refusal(lambda: ledger.CreateTransfers(pb.CreateTransfersRequest(bank_id=bank_id)))
    assert (refused.reason, refused.bad_fields) == ("BATCH_EMPTY", ["transfers"])
    assert books(ledger) == before


def test_not_found(bank: pb_grpc.LedgerServiceStub, served: Served) -> None:
    ledger = bank
    before = books(ledger)

    # Another bank is out of this key's scope, whether it exists or not: nothing leaks.
    refused = refusal(lambda: ledger.GetBank(pb.GetBankRequest(bank_id="atlantis")))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "BANK_OUT_OF_SCOPE",
    )
    # Only the operator, whose scope is every bank, learns that a bank does not exist.
    access = access_pb2_grpc.AccessServiceStub(served.channel(served.operator_token))
    refused = refusal(
        lambda: access.IssueApiKey(
            access_pb2.IssueApiKeyRequest(bank_id="atlantis", role=access_pb2.ROLE_BANK_ADMIN)
        )
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "BANK_NOT_FOUND")
    # An unknown account and transfer are each NOT_FOUND with their own reason.
    refused = refusal(
        lambda: ledger.GetAccount(pb.GetAccountRequest(bank_id=bank_id, account_id="zed"))
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    assert refused.metadata == {"account_id": "zed", "field": "account_id"}
    refused = refusal(
        lambda: ledger.GetTransfer(pb.GetTransferRequest(bank_id=bank_id, transfer_id="t-0"))
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "TRANSFER_NOT_FOUND")

    # Paying an account that does not exist names the field that held its id.
    refused = refusal(lambda: pay(ledger, "to-nobody", "ana", "zed", 10))
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    assert refused.metadata["field"] == "payee_account_id"
    assert books(ledger) == before


def test_failed_precondition_exceeds_lower_limit(bank: pb_grpc.LedgerServiceStub) -> None:
    ledger = bank
    # Ben already owes nine hours.
    pay(ledger, "moving-day", "ben", "ana", 540)
    before = books(ledger)

    # Two more hours would take him past his ten-hour limit: refused, nothing moves.
    refused = refusal(lambda: pay(ledger, "too-far", "ben", "cas", 120))
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.reason == "EXCEEDS_LOWER_LIMIT"
    assert refused.metadata == {"account_id": "ben", "available_minutes": "60"}
    assert refused.preconditions == [("EXCEEDS_LOWER_LIMIT", "accounts/ben")]
    assert books(ledger) == before

    # A hold counts against the limit too.
    refused = refusal(lambda: pay(ledger, "too-far-held", "ben", "cas", 61, pending=True))
    assert refused.reason == "EXCEEDS_LOWER_LIMIT"
    assert books(ledger) == before

    # The refused id was not used up: the same id with an amount that fits is recorded.
    pay(ledger, "too-far", "ben", "cas", 60)
    assert books(ledger) == {"ana": (540, 0, 0), "ben": (-600, 0, 0), "cas": (60, 0, 0)}


def test_already_exists_names_the_differing_field(
    bank: pb_grpc.LedgerServiceStub, operator: pb_grpc.LedgerServiceStub
) -> None:
    ledger = bank
    pay(ledger, "garden", "ben", "ana", 90)
    before = books(ledger)

    # The same transfer id with a different amount is refused, and the reason says which field.
    refused = refusal(lambda: pay(ledger, "garden", "ben", "ana", 80))
    assert refused.code == grpc.StatusCode.ALREADY_EXISTS
    assert refused.reason == "EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES"
    assert refused.metadata == {"transfer_id": "garden", "field": "amount_minutes"}
    assert books(ledger) == before

    # Reopening an account as another kind is refused the same way.
    refused = refusal(
        lambda: ledger.OpenAccount(
            pb.OpenAccountRequest(bank_id=bank_id, account_id="ana", kind=pb.ACCOUNT_KIND_POOL)
        )
    )
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "EXISTS_WITH_DIFFERENT_KIND",
    )

    # So is creating the bank again under another name (as the operator).
    refused = refusal(
        lambda: operator.CreateBank(pb.CreateBankRequest(bank_id=bank_id, name="Another Bank"))
    )
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "EXISTS_WITH_DIFFERENT_NAME",
    )
    assert books(ledger) == before


def test_pending_transfer_lifecycle(bank: pb_grpc.LedgerServiceStub, hand_clock: HandClock) -> None:
    ledger = bank
    # Ana books Ben for a two-hour move; the hold lapses unless Ben confirms within a day.
    held = pay(ledger, "move", "ana", "ben", 120, pending=True, timeout_seconds=24 * 3600)
    assert held.transfer.deadline.ToDatetime(UTC) == hand_clock.now + timedelta(days=1)
    before = books(ledger)

    # Ben cannot post more than was held; nothing moves.
    refused = refusal(
        lambda: ledger.PostPendingTransfer(
            pb.PostPendingTransferRequest(
                bank_id=bank_id, request_id="move-post", transfer_id="move", amount_minutes=121
            )
        )
    )
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "POST_AMOUNT_EXCEEDS_PENDING",
    )
    assert books(ledger) == before == {"ana": (0, 120, 0), "ben": (0, 0, 120), "cas": (0, 0, 0)}

    # A day and a minute pass without an answer: the hold expires and releases the minutes.
    hand_clock.now += timedelta(days=1, minutes=1)
    expired = wait_for_status(ledger, "move", pb.TRANSFER_STATUS_EXPIRED)
    assert expired.posted_amount_minutes == 0
    assert expired.HasField("resolved_at")
    assert books(ledger) == {"ana": (0, 0, 0), "ben": (0, 0, 0), "cas": (0, 0, 0)}

    # Posting it now is too late; voiding it is too.
    refused = refusal(
        lambda: ledger.PostPendingTransfer(
            pb.PostPendingTransferRequest(
                bank_id=bank_id, request_id="move-post", transfer_id="move"
            )
        )
    )
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PENDING_TRANSFER_EXPIRED",
    )
    assert refused.preconditions == [("PENDING_TRANSFER_EXPIRED", "transfers/move")]
    refused = refusal(
        lambda: ledger.VoidPendingTransfer(
            pb.VoidPendingTransferRequest(
                bank_id=bank_id, request_id="move-void", transfer_id="move"
            )
        )
    )
    assert refused.reason == "PENDING_TRANSFER_EXPIRED"

    # An immediate transfer is not pending, and a reversal cannot itself be reversed.
    pay(ledger, "lunch", "ben", "cas", 30)
    refused = refusal(
        lambda: ledger.VoidPendingTransfer(
            pb.VoidPendingTransferRequest(
                bank_id=bank_id, request_id="lunch-void", transfer_id="lunch"
            )
        )
    )
    assert refused.reason == "TRANSFER_NOT_PENDING"
    ledger.ReverseTransfer(
        pb.ReverseTransferRequest(
            bank_id=bank_id, transfer_id="lunch-undo", reverses_transfer_id="lunch", reason="dup"
        )
    )
    before = books(ledger)
    refused = refusal(
        lambda: ledger.ReverseTransfer(
            pb.ReverseTransferRequest(
                bank_id=bank_id,
                transfer_id="lunch-redo",
                reverses_transfer_id="lunch-undo",
                reason="undo the undo",
            )
        )
    )
    assert refused.reason == "CANNOT_REVERSE_REVERSAL"
    assert books(ledger) == before


def wait_for_status(
    ledger: pb_grpc.LedgerServiceStub, transfer_id: str, status: int
) -> pb.Transfer:
    """The transfer once it has the status; the writer expires holds on its own thread."""
    deadline = time.monotonic() + call_timeout_seconds
    while True:
        transfer = ledger.GetTransfer(
            pb.GetTransferRequest(bank_id=bank_id, transfer_id=transfer_id)
        ).transfer
        if transfer.status == status or time.monotonic() > deadline:
            return transfer
        time.sleep(0.01)


def test_batch_items_are_validated(bank: pb_grpc.LedgerServiceStub) -> None:
    ledger = bank
    before = books(ledger)
    # Items that would each be INVALID_ARGUMENT on their own are refused item by item.
    batch = ledger.CreateTransfers(
        pb.CreateTransfersRequest(
            bank_id=bank_id,
            transfers=[
                new_transfer("zero", "ben", "ana", 0),
                new_transfer("self", "ben", "ben", 5),
            ],
        )
    )
    assert [result.error.reason for result in batch.results] == [
        "AMOUNT_NOT_POSITIVE",
        "SAME_ACCOUNT",
    ]
    assert {result.error.code for result in batch.results} == {
        grpc.StatusCode.INVALID_ARGUMENT.value[0]
    }
    assert books(ledger) == before


def test_batch_size_is_bounded(bank: pb_grpc.LedgerServiceStub) -> None:
    ledger = bank
    before = books(ledger)
    # A batch of 1,001 transfers is refused whole; nothing is recorded.
    too_many = [new_transfer(f"t-{n}", "ben", "ana", 1) for n in range(1001)]
    refused = refusal(
        lambda: ledger.CreateTransfers(
            pb.CreateTransfersRequest(bank_id=bank_id, transfers=too_many)
        )
    )
    assert (refused.code, refused.reason, refused.bad_fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "BATCH_TOO_LARGE",
        ["transfers"],
    )
    assert books(ledger) == before


# ---------------------------------------------------------------------------------------
# Pagination
# ---------------------------------------------------------------------------------------


def test_list_accounts_in_pages(bank: pb_grpc.LedgerServiceStub) -> None:
    ledger = bank
    # Four more members join, seven in all.
    for account_id in ("dee", "eli", "fay", "gus"):
        open_member(ledger, account_id)

    # Pages of three: 3 + 3 + 1, in the order the accounts were opened, the last without a token.
    seen, token, pages = [], "", 0
    while True:
        page = ledger.ListAccounts(
            pb.ListAccountsRequest(bank_id=bank_id, page_size=3, page_token=token)
        )
        seen += [account.account_id for account in page.accounts]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == ["ana", "ben", "cas", "dee", "eli", "fay", "gus"]

    # No page size means the default page, which holds them all.
    everyone = ledger.ListAccounts(pb.ListAccountsRequest(bank_id=bank_id))
    assert len(everyone.accounts) == 7
    assert everyone.next_page_token == ""

    # A negative page size or a made-up token is INVALID_ARGUMENT on that field.
    refused = refusal(
        lambda: ledger.ListAccounts(pb.ListAccountsRequest(bank_id=bank_id, page_size=-1))
    )
    assert (refused.code, refused.bad_fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_size"])
    refused = refusal(
        lambda: ledger.ListAccounts(pb.ListAccountsRequest(bank_id=bank_id, page_token="bogus"))
    )
    assert (refused.code, refused.bad_fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])


def test_list_account_transfers_newest_first(bank: pb_grpc.LedgerServiceStub) -> None:
    ledger = bank
    # Ana helps Ben five times; Cas's exchange with Ben is not Ana's business.
    for number in range(1, 6):
        pay(ledger, f"help-{number}", "ben", "ana", 10 * number)
    pay(ledger, "other", "ben", "cas", 5)

    # Ana's statement in pages of two, newest first: 5 4 | 3 2 | 1.
    seen, token, pages = [], "", 0
    while True:
        page = ledger.ListAccountTransfers(
            pb.ListAccountTransfersRequest(
                bank_id=bank_id, account_id="ana", page_size=2, page_token=token
            )
        )
        seen += [transfer.transfer_id for transfer in page.transfers]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == ["help-5", "help-4", "help-3", "help-2", "help-1"]

    # Ben's statement holds all six, the newest first.
    bens = ledger.ListAccountTransfers(
        pb.ListAccountTransfersRequest(bank_id=bank_id, account_id="ben")
    )
    assert [transfer.transfer_id for transfer in bens.transfers][:2] == ["other", "help-5"]
    assert len(bens.transfers) == 6

    # An unknown account has no statement.
    refused = refusal(
        lambda: ledger.ListAccountTransfers(
            pb.ListAccountTransfersRequest(bank_id=bank_id, account_id="zed")
        )
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


# ---------------------------------------------------------------------------------------
# The demo client
# ---------------------------------------------------------------------------------------


def test_demo_prints_the_same_twice(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The keys `serve` writes at its first start: the operator's, and the demo bank's admin.
    keys = tmp_path / "timebank-ledger.keys.json"
    admin = served.create_bank(demo_bank_id, demo_bank_name)
    KeysFile(served.operator_token, {demo_bank_id: admin}).write(keys)
    assert keys.stat().st_mode & 0o777 == 0o600
    # The first run records the members and the garden hours (over TLS, with the keys).
    assert demo(served.address, keys, served.pki.ca_path) == 0
    first = capsys.readouterr().out
    assert "ben paid ana 1h 30m for help in the garden" in first
    assert "+1h 30m" in first
    assert "-1h 30m" in first
    # The second run sends the same ids: nothing new is recorded and it prints the same.
    assert demo(served.address, keys, served.pki.ca_path) == 0
    assert capsys.readouterr().out == first


# ---------------------------------------------------------------------------------------
# Generated code
# ---------------------------------------------------------------------------------------


def test_committed_generated_code_matches_the_protos() -> None:
    # Regenerating from protos/ into a scratch directory gives exactly the committed files.
    result = subprocess.run(
        [sys.executable, "-m", "ledger.tools.gen_protos", "--check"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
