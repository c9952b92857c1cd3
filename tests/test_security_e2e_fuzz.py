"""What fuzzing found, each fixed and kept fixed, on the real server (TLS, real keys).

Each test sends what a fuzzer sent: bytes that are no message, a string that is no text, a
body over the size limit, dates and months that only look like dates, a 4 MB bank id,
characters that break log lines; and the discovery calls that used to fail. Each gets a
clear, named answer, changes nothing, and leaves the log bounded and one event per line.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from certs import Pki
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from security_e2e import (
    bank_id,
    call_timeout_seconds,
    head,
    json_log,
    log_lines,
    open_account,
    other_bank_id,
    raw_call,
    refused,
    transfer_request,
)
from served import Served, serving

from ledger import logs
from ledger.config import Settings
from ledger.security.roles import Role
from ledger.service.discovery import reflection_v1_service_name
from timebank.ledger.v1 import access_pb2 as apb
from timebank.ledger.v1 import access_pb2_grpc as apb_grpc
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc
from timebank.ledger.v1 import views_pb2 as vpb
from timebank.ledger.v1 import views_pb2_grpc as vpb_grpc

ledger_service = "timebank.ledger.v1.LedgerService"
our_services = {
    ledger_service,
    "timebank.ledger.v1.LedgerViewService",
    "timebank.ledger.v1.AccessService",
    "timebank.ledger.v1.AuditService",
    "timebank.ledger.v1.PoolService",
}
four_mb = 4_000_000  # under the 4 MiB body limit, so the body is read and the id refused
# A refused call's log lines, all together, stay far below what the client sent.
log_bytes_max = 64 * 1024


@pytest.fixture
def served(pki: Pki) -> Iterator[Served]:
    """The real server with its views; riverside holds ana and ben."""
    with serving(pki, with_views=True) as served:
        admin = pb_grpc.LedgerServiceStub(served.channel(served.create_bank(bank_id)))
        open_account(admin, "ana")
        open_account(admin, "ben")
        yield served


@pytest.fixture
def admin(served: Served) -> grpc.Channel:
    return served.channel(served.key(Role.BANK_ADMIN, bank_id))


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    with json_log("DEBUG") as stream:
        yield stream


def assert_no_trouble_logged(log: io.StringIO) -> None:
    """No traceback, no error, and nothing of gRPC's own 'Exception deserializing'."""
    lines = log_lines(log)
    assert not [line for line in lines if "traceback" in line]
    assert not [line for line in lines if line["level"] in ("error", "critical")]
    assert "deserializ" not in log.getvalue().lower()


# ---------------------------------------------------------------------------------------
# Bodies that are no message
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "body"),
    [
        pytest.param("CreateTransfer", bytes.fromhex("ffffff"), id="corrupt-wire-format"),
        pytest.param("GetBank", bytes.fromhex("0a03eda080"), id="lone-surrogate-in-bank-id"),
    ],
)
def test_an_undecodable_body_is_invalid_argument_logged_once_without_the_body(
    served: Served, admin: grpc.Channel, log: io.StringIO, method: str, body: bytes
) -> None:
    before = head(served)
    got = refused(lambda: raw_call(admin, f"/{ledger_service}/{method}", body))
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
    assert head(served) == before
    # One warning, without the body; no traceback, no error.
    warnings = [line for line in log_lines(log) if line["level"] == "warning"]
    assert [(line["event"], line["reason"]) for line in warnings] == [
        ("call_refused", "MALFORMED_REQUEST")
    ]
    assert warnings[0]["size_bytes"] == len(body)
    assert body.hex() not in log.getvalue()
    assert_no_trouble_logged(log)


@pytest.mark.parametrize(
    "environment",
    [pytest.param({}, id="default"), pytest.param({"LEDGER_GRPC_MAX_MESSAGE_BYTES": "65536"})],
)
def test_a_body_over_the_message_limit_is_resource_exhausted_with_its_sizes(
    pki: Pki, environment: dict[str, str]
) -> None:
    limit = Settings.from_env(environment).grpc_max_message_bytes
    with serving(pki, grpc_max_message_bytes=limit) as served:
        admin = served.channel(served.create_bank(bank_id))
        before = head(served)
        big = transfer_request("t-1", "ana", "ben", 60, memo="x" * limit).SerializeToString()
        assert len(big) > limit
        got = refused(lambda: raw_call(admin, f"/{ledger_service}/CreateTransfer", big))
        assert (got.code, got.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE")
        assert got.metadata == {"size_bytes": str(len(big)), "size_bytes_max": str(limit)}
        assert got.retry_delay_seconds is None  # the same body will never fit
        assert head(served) == before


# ---------------------------------------------------------------------------------------
# Dates and months that only look like them
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "service_date",
    [
        pytest.param("2024-W01-1", id="iso-week-date"),
        pytest.param("\u0662\u0660\u0662\u0664-01-01", id="arabic-indic-digits"),
        pytest.param("2024-02-30", id="no-such-day"),
    ],
)
def test_a_service_date_is_exactly_yyyy_mm_dd_in_ascii_digits(
    served: Served, admin: grpc.Channel, service_date: str
) -> None:
    ledger = pb_grpc.LedgerServiceStub(admin)
    before = head(served)
    got = refused(
        lambda: ledger.CreateTransfer(
            transfer_request("t-1", "ana", "ben", 60, service_date=service_date),
            timeout=call_timeout_seconds,
        )
    )
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_DATE")
    assert got.metadata["field"] == "service_date"
    assert head(served) == before
    # The same for an item of a batch.
    [result] = ledger.CreateTransfers(
        pb.CreateTransfersRequest(
            bank_id=bank_id,
            transfers=[
                pb.NewTransfer(
                    transfer_id="t-2",
                    payer_account_id="ana",
                    payee_account_id="ben",
                    amount_minutes=60,
                    memo="ben helped ana",
                    service_date=service_date,
                )
            ],
        ),
        timeout=call_timeout_seconds,
    ).results
    assert (result.error.code, result.error.reason, result.error.field) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "INVALID_DATE",
        "service_date",
    )
    assert head(served) == before
    # A date written as it must be is taken.
    ledger.CreateTransfer(
        transfer_request("t-3", "ana", "ben", 60, service_date="2024-01-01"),
        timeout=call_timeout_seconds,
    )


@pytest.mark.parametrize("field", ["from_month", "to_month"])
@pytest.mark.parametrize(
    "month",
    [
        pytest.param("\u0662\u0660\u0662\u0664-01", id="arabic-indic-digits"),
        pytest.param("2024-W01", id="week"),
        pytest.param("2024-1", id="one-digit-month"),
    ],
)
def test_a_report_month_is_exactly_yyyy_mm_in_ascii_digits(
    served: Served, admin: grpc.Channel, field: str, month: str
) -> None:
    views = vpb_grpc.LedgerViewServiceStub(admin)
    request = vpb.GetBankReportRequest(bank_id=bank_id, from_month="2024-01", to_month="2024-12")
    setattr(request, field, month)
    got = refused(views.GetBankReport, request, timeout=call_timeout_seconds)
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MONTH")


# ---------------------------------------------------------------------------------------
# What a client sends, in the log
# ---------------------------------------------------------------------------------------


def test_a_4_mb_bank_id_on_refused_calls_writes_a_bounded_log(
    served: Served, log: io.StringIO
) -> None:
    huge = "x" * four_mb
    served.create_bank(other_bank_id, "Hillside Time Bank")
    callers: dict[str, grpc.Channel] = {
        "stranger": served.channel(),
        "another bank's front-end": served.channel(served.key(Role.MEMBER_APP, other_bank_id)),
        "riverside's auditor": served.channel(served.key(Role.AUDITOR, bank_id)),
        "operator": served.channel(served.operator_token),
    }
    expected = {
        "stranger": (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING"),
        "another bank's front-end": (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_TOO_LONG"),
        "riverside's auditor": (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_TOO_LONG"),
        "operator": (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"),
    }
    before = head(served)
    for name, channel in callers.items():
        got = refused(
            pb_grpc.LedgerServiceStub(channel).GetAccount,
            pb.GetAccountRequest(bank_id=huge, account_id="ana"),
            timeout=call_timeout_seconds,
        )
        assert (got.code, got.reason) == expected[name], name
        assert len(got.status_bytes) < 1024, "the answer does not echo the id"
    # The operator's own calls read the id too (its scope is every bank).
    access = apb_grpc.AccessServiceStub(callers["operator"])
    got = refused(
        access.ListApiKeys, apb.ListApiKeysRequest(bank_id=huge), timeout=call_timeout_seconds
    )
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_TOO_LONG")
    # A new bank's id is the operator's to choose: it passes the edge, the servicer refuses
    # it, and the refusal is logged with the id bound to the line, cut short.
    operator = pb_grpc.LedgerServiceStub(callers["operator"])
    got = refused(
        lambda: operator.CreateBank(
            pb.CreateBankRequest(bank_id=huge, name="Huge"), timeout=call_timeout_seconds
        )
    )
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_TOO_LONG")
    assert len(got.status_bytes) < 1024
    assert head(served) == before
    # Six refusals of 4 MB each: the log holds a few kilobytes.
    assert len(log.getvalue().encode()) < log_bytes_max
    [logged] = [line for line in log_lines(log) if line["event"] == "rpc_refused"]
    assert logged["bank_id"] == "x" * logs.log_value_length_max + f"…[{four_mb} chars]"


def test_line_breaking_characters_in_logged_text_stay_escaped_on_one_line(
    served: Served, admin: grpc.Channel, log: io.StringIO
) -> None:
    ledger = pb_grpc.LedgerServiceStub(admin)
    # An account id and a transfer id (both logged with the refusal) that try to end the
    # line and start a forged one.
    forged = '"}\n{"level": "error", "event": "forged"}'
    account_id = f"ana\u2028{forged}\u0085x\u009b31m"
    transfer_id = f"t\u0085\u2028\u009b{forged}"
    got = refused(
        lambda: ledger.GetAccount(
            pb.GetAccountRequest(bank_id=bank_id, account_id=account_id),
            timeout=call_timeout_seconds,
        )
    )
    assert got.reason == "INVALID_ID"
    got = refused(
        lambda: ledger.GetTransfer(
            pb.GetTransferRequest(bank_id=bank_id, transfer_id=transfer_id),
            timeout=call_timeout_seconds,
        )
    )
    assert got.reason == "INVALID_ID"
    text = log.getvalue()
    for character in ("\u2028", "\u0085", "\u009b"):
        assert character not in text
        assert f"\\u{ord(character):04x}" in text
    # One event per line; read back, each id is exactly what was sent.
    refusals = [line for line in log_lines(log) if line["event"] == "rpc_refused"]
    assert [line.get("account_id") or line.get("transfer_id") for line in refusals] == [
        account_id,
        transfer_id,
    ]
    assert not [line for line in log_lines(log) if line["event"] == "forged"]


# ---------------------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------------------


def test_health_list_answers_and_logs_no_traceback(served: Served, log: io.StringIO) -> None:
    health = health_pb2_grpc.HealthStub(served.channel())
    statuses = health.List(health_pb2.HealthListRequest(), timeout=call_timeout_seconds).statuses
    serving_status = health_pb2.HealthCheckResponse.SERVING
    assert {name: answer.status for name, answer in statuses.items()} == {
        "": serving_status,
        **dict.fromkeys(our_services, serving_status),
    }
    assert_no_trouble_logged(log)


def listed_services(responses: Any) -> set[str]:
    [response] = list(responses)
    return {service.name for service in response.list_services_response.service}


def test_reflection_v1_and_v1alpha_both_list_our_services(served: Served, log: io.StringIO) -> None:
    channel = served.channel()
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    v1alpha = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([request]), timeout=call_timeout_seconds
    )
    # v1 is wire-identical to v1alpha: the same messages under another package name.
    v1 = channel.stream_stream(
        f"/{reflection_v1_service_name}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(iter([request]), timeout=call_timeout_seconds)
    for responses in (v1alpha, v1):
        assert our_services <= listed_services(responses)
    assert_no_trouble_logged(log)
