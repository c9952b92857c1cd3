"""End to end: the read models over gRPC (LedgerViewService), beside the write API.

A real server on a free port writes through LedgerService while projections follow the log
in the same process; reads pass the write's `position` as `min_position`, so they see
their own writes without any sleep. Runs on the in-memory, SQLite and PostgreSQL stores.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import served as served_module
from certs import Pki
from conftest import Clock
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from ledger import cli, metrics
from ledger.config import ConfigError, Settings
from ledger.service.server import view_service_name
from projections import queries
from projections.db import open_views
from projections.registry import ProjectionSet
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc
from timebank.ledger.v1 import views_pb2 as vpb
from timebank.ledger.v1 import views_pb2_grpc as vpb_grpc

bank_id = "riverside"
# Members may owe up to ten hours.
member_lower_limit_minutes = -600
call_timeout_seconds = 10.0
# Long enough for a busy CI machine, short enough that a stuck view fails fast.
read_wait_seconds = 5.0
# When nothing follows the log, how long a read waits before VIEW_NOT_CAUGHT_UP.
short_read_wait_seconds = 0.2


# ---------------------------------------------------------------------------------------
# A server with its projections, and helpers that keep the narrative readable
# ---------------------------------------------------------------------------------------


@dataclass
class Served:
    """A running server's services (as the bank's admin sees them), and its projections."""

    address: str
    ledger: pb_grpc.LedgerServiceStub
    views: vpb_grpc.LedgerViewServiceStub
    projections: ProjectionSet
    channel: grpc.Channel
    server: served_module.Served


@contextmanager
def serving(database_url: str, clock: Clock, pki: Pki, **overrides: Any) -> Iterator[Served]:
    """A started server (TLS and keys on) whose views follow the log (unless
    projections=off), with the bank created and a channel of its admin."""
    options: dict[str, Any] = {
        "database_url": database_url,
        "read_wait_seconds": read_wait_seconds,
    }
    options.update(overrides)
    with served_module.serving(pki, clock=clock, with_views=True, **options) as server:
        admin = server.channel(server.create_bank(bank_id))
        assert server.projections is not None
        yield Served(
            server.address,
            pb_grpc.LedgerServiceStub(admin),
            vpb_grpc.LedgerViewServiceStub(admin),
            server.projections,
            admin,
            server,
        )


@pytest.fixture
def served(store_url: str, clock: Clock, pki: Pki) -> Iterator[Served]:
    with serving(store_url, clock, pki) as served:
        yield served


def open_bank(ledger: pb_grpc.LedgerServiceStub, *members: str) -> int:
    """The bank (created by the operator) with the given members; returns the position of
    the last account opened."""
    position = ledger.GetBank(
        pb.GetBankRequest(bank_id=bank_id), timeout=call_timeout_seconds
    ).bank.position
    for account_id in members:
        position = ledger.OpenAccount(
            pb.OpenAccountRequest(
                bank_id=bank_id,
                account_id=account_id,
                kind=pb.ACCOUNT_KIND_MEMBER,
                lower_limit_minutes=member_lower_limit_minutes,
                actor_label="coordinator",
            ),
            timeout=call_timeout_seconds,
        ).position
    return position


def pay(
    ledger: pb_grpc.LedgerServiceStub,
    transfer_id: str,
    payer: str,
    payee: str,
    minutes: int,
    **extra: Any,
) -> pb.CreateTransferResponse:
    request = pb.CreateTransferRequest(
        bank_id=bank_id,
        transfer_id=transfer_id,
        payer_account_id=payer,
        payee_account_id=payee,
        amount_minutes=minutes,
        memo=f"{payee} helped {payer}",
        **extra,
    )
    return ledger.CreateTransfer(request, timeout=call_timeout_seconds)


def summary(
    views: vpb_grpc.LedgerViewServiceStub, account_id: str, min_position: int = 0
) -> vpb.GetAccountSummaryResponse:
    return views.GetAccountSummary(
        vpb.GetAccountSummaryRequest(
            bank_id=bank_id, account_id=account_id, min_position=min_position
        ),
        timeout=call_timeout_seconds,
    )


def statement(
    views: vpb_grpc.LedgerViewServiceStub,
    account_id: str,
    *,
    page_size: int = 0,
    page_token: str = "",
    min_position: int = 0,
) -> vpb.ListStatementEntriesResponse:
    return views.ListStatementEntries(
        vpb.ListStatementEntriesRequest(
            bank_id=bank_id,
            account_id=account_id,
            page_size=page_size,
            page_token=page_token,
            min_position=min_position,
        ),
        timeout=call_timeout_seconds,
    )


def whole_statement(
    views: vpb_grpc.LedgerViewServiceStub, account_id: str, page_size: int, min_position: int
) -> list[vpb.StatementEntry]:
    entries: list[vpb.StatementEntry] = []
    token = ""
    while True:
        page = statement(
            views, account_id, page_size=page_size, page_token=token, min_position=min_position
        )
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries


def report(
    views: vpb_grpc.LedgerViewServiceStub, from_month: str, to_month: str, min_position: int = 0
) -> vpb.GetBankReportResponse:
    return views.GetBankReport(
        vpb.GetBankReportRequest(
            bank_id=bank_id, from_month=from_month, to_month=to_month, min_position=min_position
        ),
        timeout=call_timeout_seconds,
    )


@dataclass
class Refusal:
    """What a client learns from a refused call."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    bad_fields: list[str] = field(default_factory=list)


def refusal(call: Callable[[], object]) -> Refusal:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = raised.value
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    assert status is not None, "every refusal carries a google.rpc.Status"
    result = Refusal(error.code(), error.details() or "")
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "timebank-ledger"
            result.reason, result.metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            result.bad_fields = [violation.field for violation in bad_request.field_violations]
    assert result.reason, "every refusal carries an ErrorInfo"
    return result


def sample(name: str, **labels: str) -> float:
    """A metric's current value in the default registry (0 if it has no sample yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------------------------------
# Read-your-writes
# ---------------------------------------------------------------------------------------


def test_reads_see_the_write_they_name(served: Served) -> None:
    ledger, views = served.ledger, served.views
    # A bank with three members; a read naming the last opening sees all three, at zero.
    opened = open_bank(ledger, "ana", "ben", "cas")
    for account_id in ("ana", "ben", "cas"):
        read = summary(views, account_id, min_position=opened)
        assert read.position >= opened
        assert read.account.balance_minutes == 0
        assert read.account.available_minutes == -member_lower_limit_minutes
        assert read.account.kind == pb.ACCOUNT_KIND_MEMBER
        assert read.account.status == pb.ACCOUNT_STATUS_OPEN
        assert read.account.statement_entries == 0

    # Ana helps Ben in the garden: the very next read, naming the write, shows it.
    garden = pay(ledger, "garden", "ben", "ana", 90, category="gardening")
    ana = summary(views, "ana", min_position=garden.position)
    assert ana.position >= garden.position
    assert (ana.account.balance_minutes, ana.account.given_minutes) == (90, 0 + 90)
    assert (ana.account.received_minutes, ana.account.exchanges) == (0, 1)
    assert ana.account.position == garden.position
    ben = summary(views, "ben", min_position=garden.position)
    assert (ben.account.balance_minutes, ben.account.received_minutes) == (-90, 90)
    assert ben.account.available_minutes == -90 - member_lower_limit_minutes

    # Cas will tutor Ana for two hours, held until confirmed: the hold shows at once.
    tutoring = pay(ledger, "tutoring", "ana", "cas", 120, pending=True)
    ana = summary(views, "ana", min_position=tutoring.position)
    assert (ana.account.balance_minutes, ana.account.pending_debit_minutes) == (90, 120)
    assert ana.account.available_minutes == 90 - 120 - member_lower_limit_minutes
    cas = summary(views, "cas", min_position=tutoring.position)
    assert (cas.account.balance_minutes, cas.account.pending_credit_minutes) == (0, 120)

    # Cas posts one hour of it; the rest of the hold is released.
    posted = ledger.PostPendingTransfer(
        pb.PostPendingTransferRequest(
            bank_id=bank_id, request_id="tutoring-post", transfer_id="tutoring", amount_minutes=60
        ),
        timeout=call_timeout_seconds,
    )
    cas = summary(views, "cas", min_position=posted.position)
    assert (cas.account.balance_minutes, cas.account.pending_credit_minutes) == (60, 0)
    assert (cas.account.given_minutes, cas.account.exchanges) == (60, 1)

    # The garden hours are reversed: given, received and exchanges are taken back.
    reversed_ = ledger.ReverseTransfer(
        pb.ReverseTransferRequest(
            bank_id=bank_id,
            transfer_id="garden-undo",
            reverses_transfer_id="garden",
            reason="recorded against the wrong member",
        ),
        timeout=call_timeout_seconds,
    )
    ana = summary(views, "ana", min_position=reversed_.position)
    assert (ana.account.balance_minutes, ana.account.given_minutes) == (-60, 0)
    assert (ana.account.received_minutes, ana.account.exchanges) == (60, 1)

    # The views agree with the write side's own balances, and the books sum to zero.
    balances = {}
    for account_id in ("ana", "ben", "cas"):
        written = ledger.GetAccount(
            pb.GetAccountRequest(bank_id=bank_id, account_id=account_id),
            timeout=call_timeout_seconds,
        ).account
        read_account = summary(views, account_id, min_position=reversed_.position).account
        assert read_account.balance_minutes == written.balance_minutes
        assert read_account.pending_debit_minutes == written.pending_debit_minutes
        assert read_account.pending_credit_minutes == written.pending_credit_minutes
        assert read_account.available_minutes == written.available_minutes
        balances[account_id] = read_account.balance_minutes
    assert balances == {"ana": -60, "ben": 0, "cas": 60}


def test_statement_pages_newest_first_with_running_balances(served: Served) -> None:
    ledger, views = served.ledger, served.views
    open_bank(ledger, "ana", "ben")
    # Seven exchanges between Ana and Ben, in both directions.
    amounts = [30, -15, 45, 60, -20, 10, -5]  # positive: Ben paid Ana
    position = 0
    for number, amount in enumerate(amounts, start=1):
        payer, payee = ("ben", "ana") if amount > 0 else ("ana", "ben")
        position = pay(ledger, f"t{number}", payer, payee, abs(amount)).position

    # Ana's statement in pages of three: 3, 3, then 1, newest first.
    pages = []
    token = ""
    while True:
        page = statement(views, "ana", page_size=3, page_token=token, min_position=position)
        assert page.position >= position
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
    assert [len(page.entries) for page in pages] == [3, 3, 1]
    entries = [entry for page in pages for entry in page.entries]
    assert [entry.seq for entry in entries] == [7, 6, 5, 4, 3, 2, 1]
    assert [entry.transfer_id for entry in entries] == [f"t{n}" for n in range(7, 0, -1)]

    # Each entry carries the signed amount and the balance right after it.
    running, expected = 0, []
    for amount in amounts:
        running += amount
        expected.append((amount, running))
    assert [(e.amount_minutes, e.balance_minutes) for e in reversed(entries)] == expected
    assert all(e.kind == vpb.STATEMENT_ENTRY_KIND_IMMEDIATE for e in entries)
    assert {e.counterparty_account_id for e in entries} == {"ben"}
    assert entries[0].position == position

    # Ben's statement mirrors Ana's.
    ben = whole_statement(views, "ben", page_size=1000, min_position=position)
    assert [e.amount_minutes for e in ben] == [-e.amount_minutes for e in entries]
    assert [e.balance_minutes for e in ben] == [-e.balance_minutes for e in entries]

    # A new exchange arrives while a client is paging: the next page neither repeats nor
    # skips an entry, and the new one is at the top of a fresh first page.
    first = statement(views, "ana", page_size=3, min_position=position)
    late = pay(ledger, "t8", "ben", "ana", 5)
    second = statement(
        views, "ana", page_size=3, page_token=first.next_page_token, min_position=late.position
    )
    assert [e.seq for e in second.entries] == [4, 3, 2]
    top = statement(views, "ana", page_size=1, min_position=late.position)
    assert [(e.seq, e.balance_minutes) for e in top.entries] == [(8, running + 5)]

    # Page size 0 gives the default page (50): everything here, with no next token.
    everything = statement(views, "ana", min_position=late.position)
    assert len(everything.entries) == 8
    assert everything.next_page_token == ""


def test_pending_posts_and_reversals_in_the_statement(served: Served) -> None:
    ledger, views = served.ledger, served.views
    open_bank(ledger, "ana", "cas")
    # A hold is not an entry; posting it (in part) is; a void never is.
    pay(ledger, "lesson", "ana", "cas", 120, pending=True)
    pay(ledger, "repair", "ana", "cas", 45, pending=True)
    post = ledger.PostPendingTransfer(
        pb.PostPendingTransferRequest(
            bank_id=bank_id, request_id="lesson-post", transfer_id="lesson", amount_minutes=60
        ),
        timeout=call_timeout_seconds,
    )
    void = ledger.VoidPendingTransfer(
        pb.VoidPendingTransferRequest(
            bank_id=bank_id, request_id="repair-void", transfer_id="repair", reason="called off"
        ),
        timeout=call_timeout_seconds,
    )
    undo = ledger.ReverseTransfer(
        pb.ReverseTransferRequest(
            bank_id=bank_id, transfer_id="lesson-undo", reverses_transfer_id="lesson", reason="no"
        ),
        timeout=call_timeout_seconds,
    )
    assert undo.position > void.position > post.position
    cas = whole_statement(views, "cas", page_size=10, min_position=undo.position)
    assert [(e.transfer_id, e.kind, e.amount_minutes, e.balance_minutes) for e in cas] == [
        ("lesson-undo", vpb.STATEMENT_ENTRY_KIND_REVERSAL, -60, 0),
        ("lesson", vpb.STATEMENT_ENTRY_KIND_PENDING_POSTED, 60, 60),
    ]
    assert cas[0].memo == "no"
    assert cas[1].position == post.position
    # Nothing is held any more, and the account's numbers net out.
    account = summary(views, "cas", min_position=undo.position).account
    assert (account.balance_minutes, account.pending_credit_minutes) == (0, 0)
    assert (account.given_minutes, account.exchanges, account.statement_entries) == (0, 0, 2)


def test_bank_report(served: Served) -> None:
    ledger, views = served.ledger, served.views
    open_bank(ledger, "ana", "ben", "cas", "dan")
    # Three exchanges in May in two categories, one in June without a category.
    pay(ledger, "g1", "ben", "ana", 90, category="gardening", service_date="2025-05-03")
    pay(ledger, "g2", "cas", "ana", 30, category="gardening", service_date="2025-05-20")
    pay(ledger, "t1", "ana", "ben", 60, category="tutoring", service_date="2025-05-21")
    pay(ledger, "x1", "ben", "cas", 15, service_date="2025-06-02")
    held = pay(ledger, "h1", "cas", "ben", 40, pending=True, service_date="2025-06-09")

    read = report(views, "2025-04", "2025-06", min_position=held.position)
    assert read.position >= held.position
    totals = read.report.totals
    # The books sum to zero; 195 minutes changed hands in four exchanges; 40 are held.
    assert (totals.balance_sum_minutes, totals.zero_sum_ok) == (0, True)
    assert (totals.exchanges, totals.exchanged_minutes) == (4, 195)
    assert (totals.open_holds, totals.open_hold_minutes) == (1, 40)
    assert totals.name == "Riverside Time Bank"
    members = [counts for counts in totals.accounts if counts.kind == pb.ACCOUNT_KIND_MEMBER]
    assert [(c.open, c.frozen, c.closed) for c in members] == [(4, 0, 0)]
    # Dan took part in nothing: three members were active in the period.
    assert read.report.active_members == 3
    assert [
        (m.month, m.exchanges, m.exchanged_minutes, m.active_members) for m in read.report.months
    ] == [
        ("2025-04", 0, 0, 0),
        ("2025-05", 3, 180, 3),
        ("2025-06", 1, 15, 2),
    ]
    assert [(c.category, c.exchanges, c.exchanged_minutes) for c in read.report.categories] == [
        ("gardening", 2, 120),
        ("tutoring", 1, 60),
        ("", 1, 15),
    ]

    # A bad period is refused before any waiting, naming the field.
    refused = refusal(lambda: report(views, "2025-13", "2025-06"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MONTH")
    assert refused.bad_fields == ["from_month"]
    refused = refusal(lambda: report(views, "2025-06", "2025-04"))
    assert refused.reason == "INVALID_MONTH_RANGE"
    refused = refusal(lambda: report(views, "2000-01", "2025-04"))
    assert refused.reason == "MONTH_RANGE_TOO_LARGE"


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


def test_errors(served: Served) -> None:
    ledger, views = served.ledger, served.views
    opened = open_bank(ledger, "ana")
    summary(views, "ana", min_position=opened)  # the view has seen the bank

    # An account the bank never opened, and another bank.
    refused = refusal(lambda: summary(views, "zed"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    assert refused.metadata["account_id"] == "zed"
    assert int(refused.metadata["position"]) >= opened
    refused = refusal(lambda: statement(views, "zed"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    # Another bank, existing or not, is out of this key's scope: nothing about it leaks.
    refused = refusal(
        lambda: views.GetAccountSummary(
            vpb.GetAccountSummaryRequest(bank_id="nowhere", account_id="ana")
        )
    )
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "BANK_OUT_OF_SCOPE",
    )
    refused = refusal(
        lambda: views.GetBankReport(
            vpb.GetBankReportRequest(bank_id="nowhere", from_month="2025-01", to_month="2025-02")
        )
    )
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "BANK_OUT_OF_SCOPE",
    )

    # Bad input names its field: page token, page size, min_position, ids.
    bad: list[tuple[Callable[[], object], str, str]] = [
        (
            lambda: statement(views, "ana", page_token="not-a-token"),
            "INVALID_PAGE_TOKEN",
            "page_token",
        ),
        (lambda: statement(views, "ana", page_size=-1), "INVALID_PAGE_SIZE", "page_size"),
        (lambda: summary(views, "ana", min_position=-1), "INVALID_MIN_POSITION", "min_position"),
        (lambda: summary(views, ""), "FIELD_REQUIRED", "account_id"),
        (
            lambda: views.GetAccountSummary(vpb.GetAccountSummaryRequest(account_id="ana")),
            "FIELD_REQUIRED",
            "bank_id",
        ),
    ]
    for call, reason, field_name in bad:
        refused = refusal(call)
        assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
        assert refused.bad_fields == [field_name]
    # A well-formed token of another list is not a statement token.
    refused = refusal(lambda: statement(views, "ana", page_token="YTox"))  # "a:1"
    assert refused.reason == "INVALID_PAGE_TOKEN"

    # Refusals are counted by method and code; no id appears in any label.
    before = sample("ledger_rpc_total", method="GetAccountSummary", code="NOT_FOUND")
    refusal(lambda: summary(views, "zed"))
    after = sample("ledger_rpc_total", method="GetAccountSummary", code="NOT_FOUND")
    assert after == before + 1


def test_health_and_reflection_list_the_view_service(served: Served) -> None:
    health = health_pb2_grpc.HealthStub(served.channel)
    response = health.Check(health_pb2.HealthCheckRequest(service=view_service_name))
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {view_service_name, "timebank.ledger.v1.LedgerService"} <= names
    assert view_service_name == "timebank.ledger.v1.LedgerViewService"


# ---------------------------------------------------------------------------------------
# When the views are behind
# ---------------------------------------------------------------------------------------


def test_view_not_caught_up_when_nothing_follows_the_log(
    store_url: str, clock: Clock, pki: Pki
) -> None:
    # The server serves views but leaves following the log to another process, which is
    # not running: the views stay empty.
    with serving(
        store_url, clock, pki, projections="off", read_wait_seconds=short_read_wait_seconds
    ) as served:
        ledger, views = served.ledger, served.views
        opened = open_bank(ledger, "ana", "ben")
        garden = pay(ledger, "garden", "ben", "ana", 90)

        # A read naming the write waits briefly, then says the view is not there yet,
        # and where it is; it never answers from the older rows.
        started = time.monotonic()
        refused = refusal(lambda: summary(views, "ana", min_position=garden.position))
        assert time.monotonic() - started >= short_read_wait_seconds
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "VIEW_NOT_CAUGHT_UP")
        assert refused.metadata == {
            "projection": "accounts",
            "bank_id": bank_id,
            "position": "0",
            "min_position": str(garden.position),
        }
        refused = refusal(lambda: report(views, "2025-01", "2025-12", min_position=opened))
        assert (refused.reason, refused.metadata["projection"]) == ("VIEW_NOT_CAUGHT_UP", "reports")
        # A position the bank never reached is refused, not waited for forever; another bank
        # is refused before anything waits.
        refused = refusal(lambda: summary(views, "ana", min_position=garden.position + 100))
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "POSITION_NOT_COMMITTED",
        )
        refused = refusal(
            lambda: views.GetAccountSummary(
                vpb.GetAccountSummaryRequest(bank_id="nowhere", account_id="ana", min_position=1)
            )
        )
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "BANK_OUT_OF_SCOPE",
        )
        # Without min_position the caller asked for no freshness: the view has not seen the
        # bank at all, and says so.
        refused = refusal(lambda: summary(views, "ana"))
        assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "BANK_NOT_FOUND")

        # The lag gauge shows how far behind the views are: every event in the log, the
        # bank's and the one before them (the operator key the test server starts with).
        served.projections.refresh_metrics()
        others = 1
        assert served.projections.store.recorder.max_notification_id() == garden.position + others
        lag = sample("ledger_projection_lag_events", projection="accounts")
        assert lag == garden.position + others
        assert sample("ledger_projection_position", projection="accounts") == 0

        # The accounts view catches up by part of the log: reads up to there work, a read
        # beyond still waits and fails.
        runner = served.projections.runner("accounts")
        runner.batch_max = opened + others
        runner.run_once()
        assert summary(views, "ana", min_position=opened).account.balance_minutes == 0
        refused = refusal(lambda: summary(views, "ana", min_position=garden.position))
        assert refused.metadata["position"] == str(opened)

        # Once it has caught up, the lag is zero and the write is there.
        runner.run_until_caught_up()
        served.projections.refresh_metrics()
        assert sample("ledger_projection_lag_events", projection="accounts") == 0
        assert (
            sample("ledger_projection_position", projection="accounts") == garden.position + others
        )
        read = summary(views, "ana", min_position=garden.position)
        assert (read.position, read.account.balance_minutes) == (garden.position, 90)


def test_read_wait_never_outlives_the_callers_deadline(clock: Clock, pki: Pki) -> None:
    with serving("memory://", clock, pki, projections="off", read_wait_seconds=10.0) as served:
        opened = open_bank(served.ledger, "ana")
        # The server would wait ten seconds; the caller allows one: it hears UNAVAILABLE
        # with the reason in time, not DEADLINE_EXCEEDED.
        request = vpb.GetAccountSummaryRequest(
            bank_id=bank_id, account_id="ana", min_position=opened
        )
        started = time.monotonic()
        refused = refusal(lambda: served.views.GetAccountSummary(request, timeout=1.0))
        assert time.monotonic() - started < 1.0
        assert refused.reason == "VIEW_NOT_CAUGHT_UP"


def test_lag_gauge_follows_the_runner_and_metrics_are_exported(clock: Clock, pki: Pki) -> None:
    exporter = metrics.start_exporter("127.0.0.1:0")
    assert exporter is not None
    try:
        with serving("memory://", clock, pki) as served:
            # After a write that a read has seen, the follower's gauges reach the log's head.
            position = open_bank(served.ledger, "ana")
            summary(served.views, "ana", min_position=position)
            head = served.projections.store.recorder.max_notification_id()
            deadline = time.monotonic() + read_wait_seconds
            while sample("ledger_projection_position", projection="accounts") != head:
                assert time.monotonic() < deadline, "the follower never exported its position"
                time.sleep(0.01)
            assert sample("ledger_projection_lag_events", projection="accounts") == 0

            # Prometheus scrapes the gauges and the call counters from the exporter.
            with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics") as page:
                text = page.read().decode()
            assert 'ledger_projection_lag_events{projection="accounts"} 0.0' in text
            assert 'ledger_projection_lag_events{projection="reports"}' in text
            assert 'ledger_rpc_total{code="OK",method="GetAccountSummary"}' in text
            assert "ledger_rpc_duration_seconds_bucket" in text
            assert bank_id not in text  # no id is ever a label
    finally:
        exporter.close()


def test_metrics_address_setting() -> None:
    assert Settings(metrics_address="off").metrics_address == "off"
    assert metrics.start_exporter("") is None
    assert metrics.start_exporter("off") is None
    with pytest.raises(ConfigError):
        Settings(metrics_address="9464")
    with pytest.raises(ConfigError):
        Settings(read_wait_seconds=11)
    with pytest.raises(ConfigError):
        Settings(projections="sometimes")
    environ = {"LEDGER_PROJECTIONS": "OFF", "LEDGER_READ_WAIT_SECONDS": "0.5"}
    settings = Settings.from_env(environ)
    assert (settings.projections, settings.read_wait_seconds) == ("off", 0.5)
    assert settings.views_url == settings.database_url
    settings = Settings.from_env({"LEDGER_VIEWS_DATABASE_URL": "sqlite:///views.sqlite3"})
    assert settings.views_url == "sqlite:///views.sqlite3"


# ---------------------------------------------------------------------------------------
# The command line: replay and project
# ---------------------------------------------------------------------------------------


def view_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every view table (and the positions), in a canonical order."""
    with sqlite3.connect(path) as connection:
        tables = [
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND (name LIKE 'view%' OR name LIKE 'report%' OR name LIKE 'projection%')"
            )
        ]
        return {
            table: sorted(connection.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for table in sorted(tables)
        }


def test_replay_rebuilds_identical_rows(
    tmp_path: Path,
    clock: Clock,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "ledger.sqlite3"
    url = f"sqlite:///{path}"
    # A history built live: exchanges, holds posted, voided and expired, a reversal.
    with serving(url, clock, pki) as served:
        ledger = served.ledger
        open_bank(ledger, "ana", "ben", "cas")
        for number in range(30):
            payer, payee = [("ben", "ana"), ("ana", "cas"), ("cas", "ben")][number % 3]
            pay(ledger, f"t{number}", payer, payee, 5 + number, category=f"c{number % 4}")
        pay(ledger, "hold", "ana", "ben", 50, pending=True)
        pay(ledger, "lapse", "ana", "cas", 20, pending=True, timeout_seconds=60)
        ledger.PostPendingTransfer(
            pb.PostPendingTransferRequest(bank_id=bank_id, request_id="p", transfer_id="hold"),
            timeout=call_timeout_seconds,
        )
        last = ledger.ReverseTransfer(
            pb.ReverseTransferRequest(
                bank_id=bank_id, transfer_id="undo", reverses_transfer_id="t3", reason="typo"
            ),
            timeout=call_timeout_seconds,
        ).position
        clock.advance(120)  # the second hold expires; wait for its event to reach the views
        deadline = time.monotonic() + read_wait_seconds
        while not (position := summary(served.views, "cas").position) > last:
            assert time.monotonic() < deadline, "the hold never expired"
            time.sleep(0.01)
        assert (
            summary(served.views, "cas", min_position=position).account.pending_credit_minutes == 0
        )
        report(served.views, "2025-01", "2025-12", min_position=position)
    live = view_rows(path)
    assert live["view_statement_entries"]
    assert live["report_category_months"]

    # Each projection is dropped and rebuilt from event 1 by the command line.
    monkeypatch.setenv("LEDGER_DATABASE_URL", url)
    for name in ("accounts", "reports"):
        assert cli.main(["replay", "--projection", name]) == 0
        output = capsys.readouterr().out
        assert f"replayed projection {name}: " in output
        assert "events applied" in output
        assert "events/s" in output
    # The rebuilt rows are the live rows, to the last byte.
    assert view_rows(path) == live

    # An unknown projection, or a store that lives only in one process, is refused.
    assert cli.main(["replay", "--projection", "nonsense"]) == 2
    assert "no projection 'nonsense'" in capsys.readouterr().err
    monkeypatch.setenv("LEDGER_DATABASE_URL", "memory://")
    assert cli.main(["replay", "--projection", "accounts"]) == 2


def test_project_follows_the_log_until_stopped(tmp_path: Path, clock: Clock, pki: Pki) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    settings = Settings(database_url=url, metrics_address="off", projections="off")
    # A server whose views are followed by a separate `project` (here in a thread).
    with serving(url, clock, pki, projections="off") as served:
        stopping = threading.Event()
        result: list[int] = []
        follower = threading.Thread(
            target=lambda: result.append(cli.project(settings, ["accounts"], stopping))
        )
        follower.start()
        try:
            # Reads naming a write see it once `project` has applied it.
            opened = open_bank(served.ledger, "ana", "ben")
            garden = pay(served.ledger, "garden", "ben", "ana", 90)
            read = summary(served.views, "ana", min_position=garden.position)
            assert (read.position, read.account.balance_minutes) == (garden.position, 90)
            assert opened < garden.position
        finally:
            stopping.set()
            follower.join(timeout=30)
        assert result == [0]
    # The reports projection was not asked for: its view is still empty.
    views = open_views(url)
    try:
        assert queries.account_summary(views, bank_id, "ben") is not None
        assert views.query("SELECT COUNT(*) FROM report_banks") == [(0,)]
    finally:
        views.close()
