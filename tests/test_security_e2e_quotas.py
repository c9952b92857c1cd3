"""Quotas, end to end: per-key rate and calls in flight, reads waiting, banks per operator key.

Every test counts calls, never time. The token bucket is given a rate so low that it does
not refill while a test runs, so its burst is exactly how many calls get through. Calls
are held in flight by reads waiting for a view that does not move (projections off);
the `ledger_reads_waiting` gauge says when they wait, and catching the views up by hand
lets them go.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from certs import Pki
from prometheus_client import REGISTRY
from security_e2e import (
    Refusal,
    bank_id,
    call_timeout_seconds,
    head,
    ledger_stub,
    open_account,
    poll,
    refusal_of,
    refused,
)
from served import Served, serving

from ledger.domain.errors import NotFound
from ledger.security.roles import Role
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc
from timebank.ledger.v1 import views_pb2 as vpb
from timebank.ledger.v1 import views_pb2_grpc as vpb_grpc

# No refill to speak of while a test runs: one request every 1,000 s.
slow_requests_per_second = 0.001
burst_max = 3
reads_waiting_max = 4
calls_in_flight_max = 2
# The regression: this many reads waiting at once used to hold every admitted slot.
flood_reads = 400
flood_concurrency = 20
# Long enough that no read gives up before the test lets it go.
long_read_wait_seconds = 10.0
long_call_timeout_seconds = 30.0


def get_bank(stub: pb_grpc.LedgerServiceStub) -> pb.Bank:
    return stub.GetBank(pb.GetBankRequest(bank_id=bank_id), timeout=call_timeout_seconds).bank


def reads_waiting() -> float:
    value = REGISTRY.get_sample_value("ledger_reads_waiting")
    assert value is not None
    return value


def report_request(position: int) -> vpb.GetBankReportRequest:
    """A report that must reflect `position`: with the views stopped, it waits."""
    return vpb.GetBankReportRequest(
        bank_id=bank_id, from_month="2025-01", to_month="2025-12", min_position=position
    )


def catch_up_views(served: Served) -> None:
    assert served.projections is not None
    for name in served.projections.names:
        served.projections.runner(name).run_until_caught_up(long_call_timeout_seconds)


@contextmanager
def stopped_views(pki: Pki, **overrides: Any) -> Iterator[Served]:
    """A server whose views serve reads but follow the log only when the test says so."""
    with serving(
        pki,
        with_views=True,
        projections="off",
        read_wait_seconds=long_read_wait_seconds,
        reads_waiting_max=reads_waiting_max,
        grpc_workers=reads_waiting_max + 4,
        **overrides,
    ) as served:
        yield served


def test_a_key_over_its_request_rate_is_refused_with_a_retry_delay(pki: Pki) -> None:
    with serving(
        pki, key_requests_per_second=slow_requests_per_second, key_request_burst_max=burst_max
    ) as served:
        admin_token = served.create_bank(bank_id)
        app = ledger_stub(served, served.key(Role.MEMBER_APP, bank_id))
        # The front-end's burst gets through...
        for _ in range(burst_max):
            get_bank(app)
        # ... the next call is refused, and told how long to wait.
        before = head(served)
        got = refused(lambda: open_account(app, "ana"))
        assert (got.code, got.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
        assert got.metadata == {"quota": "requests_per_second"}
        assert got.retry_delay_seconds is not None
        assert got.retry_delay_seconds > 0
        assert head(served) == before
        # Another key has a bucket of its own.
        admin = ledger_stub(served, admin_token)
        for _ in range(burst_max):
            get_bank(admin)
        assert refused(lambda: get_bank(admin)).reason == "QUOTA_EXCEEDED"


def test_a_key_with_its_calls_in_flight_is_refused_until_one_ends(pki: Pki) -> None:
    with stopped_views(pki, key_calls_in_flight_max=calls_in_flight_max) as served:
        admin = ledger_stub(served, served.create_bank(bank_id))
        auditor_channel = served.channel(served.key(Role.AUDITOR, bank_id))
        views = vpb_grpc.LedgerViewServiceStub(auditor_channel)
        auditor = pb_grpc.LedgerServiceStub(auditor_channel)
        position = head(served)[0]
        baseline = reads_waiting()
        # The auditor's key holds as many calls as it may, each waiting for the views.
        waiting = [
            views.GetBankReport.future(report_request(position), timeout=long_call_timeout_seconds)
            for _ in range(calls_in_flight_max)
        ]
        poll(lambda: reads_waiting() == baseline + calls_in_flight_max, "the reads to wait")
        # One more of its calls, any call, is refused at once, with a delay to retry after.
        got = refused(lambda: get_bank(auditor))
        assert (got.code, got.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
        assert got.metadata == {"quota": "calls_in_flight"}
        assert got.retry_delay_seconds is not None
        assert got.retry_delay_seconds > 0
        # Another key is not held up.
        assert get_bank(admin).bank_id == bank_id
        # Once the views catch up, the reads answer and the key is free again.
        catch_up_views(served)
        for call in waiting:
            assert call.result(timeout=long_call_timeout_seconds).report.totals is not None
        assert get_bank(auditor).bank_id == bank_id
        assert reads_waiting() == baseline


@pytest.fixture
def stopped(pki: Pki) -> Iterator[Served]:
    with stopped_views(pki) as served:
        yield served


def test_reads_waiting_for_a_position_are_bounded_and_lock_no_one_out(stopped: Served) -> None:
    served = stopped
    admin = ledger_stub(served, served.create_bank(bank_id))
    open_account(admin, "ana")
    open_account(admin, "ben")
    position = head(served)[0]
    app_channel = served.channel(served.key(Role.MEMBER_APP, bank_id))
    views = vpb_grpc.LedgerViewServiceStub(app_channel)
    baseline = reads_waiting()
    # The front-end sends as many reads as may wait for a position the views never reach.
    waiting = [
        views.GetBankReport.future(report_request(position), timeout=long_call_timeout_seconds)
        for _ in range(reads_waiting_max)
    ]
    poll(lambda: reads_waiting() == baseline + reads_waiting_max, "the reads to wait")
    # Hundreds more such reads are each refused at once, none waits.
    refusals: list[Refusal] = []
    for start in range(0, flood_reads - reads_waiting_max, flood_concurrency):
        batch = [
            views.GetBankReport.future(report_request(position), timeout=call_timeout_seconds)
            for _ in range(min(flood_concurrency, flood_reads - reads_waiting_max - start))
        ]
        for call in batch:
            with pytest.raises(grpc.RpcError) as raised:
                call.result(timeout=call_timeout_seconds)
            refusals.append(refusal_of(raised.value))
    assert len(refusals) == flood_reads - reads_waiting_max
    assert {(got.code, got.reason) for got in refusals} == {
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "READS_WAITING_MAX_REACHED")
    }
    assert refusals[0].metadata["reads_waiting_max"] == str(reads_waiting_max)
    assert reads_waiting() == baseline + reads_waiting_max
    # Everyone else is still served: the same front-end's other calls, and the admin's.
    app = pb_grpc.LedgerServiceStub(app_channel)
    assert get_bank(app).account_count == 2
    admin.CreateTransfer(
        pb.CreateTransferRequest(
            bank_id=bank_id,
            transfer_id="t-1",
            payer_account_id="ana",
            payee_account_id="ben",
            amount_minutes=60,
            memo="ben helped ana",
        ),
        timeout=call_timeout_seconds,
    )
    # The views catch up: the reads that waited answer.
    catch_up_views(served)
    for call in waiting:
        assert call.result(timeout=long_call_timeout_seconds).report.totals is not None
    assert reads_waiting() == baseline


def test_an_operator_key_creates_a_bounded_number_of_banks(pki: Pki) -> None:
    with serving(pki, banks_per_operator_key_max=2) as served:
        operator = ledger_stub(served, served.operator_token)

        def create(bank: str) -> pb.CreateBankResponse:
            return operator.CreateBank(
                pb.CreateBankRequest(bank_id=bank, name=f"{bank} time bank"),
                timeout=call_timeout_seconds,
            )

        create("riverside")
        create("hillside")
        # The third bank is refused...
        got = refused(lambda: create("lakeside"))
        assert (got.code, got.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BANKS_MAX_REACHED")
        assert got.metadata == {"banks_max": "2"}
        with pytest.raises(NotFound):
            served.ledger.get_bank("lakeside")
        # ... while a retry of one it created still answers, with the same bank.
        retried = create("riverside")
        assert retried.bank.bank_id == "riverside"
        assert retried.position == served.ledger.get_bank("riverside").position


def test_concurrent_bank_creations_of_one_key_stay_within_its_cap(pki: Pki) -> None:
    banks_max = 2
    with serving(pki, banks_per_operator_key_max=banks_max, grpc_workers=16) as served:
        operator = ledger_stub(served, served.operator_token)
        # Twelve new banks asked for at once: counting and creating are one step, so exactly
        # as many as the cap allows are created, however the calls interleave.
        calls = [
            operator.CreateBank.future(
                pb.CreateBankRequest(bank_id=f"bank-{number}", name="A time bank"),
                timeout=call_timeout_seconds,
            )
            for number in range(12)
        ]
        outcomes = []
        for call in calls:
            try:
                call.result()
                outcomes.append("OK")
            except grpc.RpcError as error:
                outcomes.append(refusal_of(error).reason)
        assert sorted(outcomes) == ["BANKS_MAX_REACHED"] * 10 + ["OK"] * banks_max
