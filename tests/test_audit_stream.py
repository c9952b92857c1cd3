"""AuditService.StreamEvents through a real server (TLS, real keys): the bytes as stored,
resumable from any position, following live writes without a gap even when commits land
late, bounded for a slow reader, and only for the callers the policy lets in.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from certs import Pki, server_host
from google.protobuf import json_format
from prometheus_client import REGISTRY
from security_e2e import refusal_of
from served import Served, serving
from stored_rows import stored_rows
from test_event_log_readers import _delay_commits

from ledger.application import audit_history
from ledger.domain.commands import (
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    PostPending,
)
from ledger.security.roles import Role
from timebank.ledger.v1 import audit_pb2 as apb
from timebank.ledger.v1 import audit_pb2_grpc as apb_grpc

BANK = "riverside"
# How long a test waits for something the server does promptly (never when it passes).
WAIT_SECONDS = 20.0

Row = tuple[int, bytes, str]


def small_bank(served: Served) -> str:
    """A bank with one of most kinds of event (a group of three transfers among them);
    returns an auditor key of it."""
    served.create_bank(BANK)
    ledger = served.ledger
    for member in ("ann", "bob", "cat"):
        ledger.execute(BANK, OpenAccount(member, "member", lower_limit_minutes=-600))
    ledger.execute(BANK, CreateTransfer("t1", "ann", "bob", 60, memo="gardening ✿"))
    group = tuple(CreateTransfer(f"g{n}", "bob", "cat", 5 + n) for n in range(3))
    ledger.execute(BANK, CreateTransfers(group, linked=True))
    ledger.execute(BANK, CreateTransfer("p1", "cat", "ann", 30, pending=True))
    ledger.execute(BANK, PostPending("r1", "p1", amount_minutes=20))
    return served.key(Role.AUDITOR, BANK)


def big_events(served: Served, events: int, transfers: int, memo_length: int) -> None:
    """Grouped events of `transfers` transfers each, between two accounts with room."""
    ledger = served.ledger
    for account in ("payer", "payee"):
        ledger.execute(BANK, OpenAccount(account, "pool", lower_limit_minutes=-(10**9)))
    for n in range(events):
        batch = tuple(
            CreateTransfer(f"b{n}-{i}", "payer", "payee", 1, memo="m" * memo_length)
            for i in range(transfers)
        )
        ledger.execute(BANK, CreateTransfers(batch, linked=True))


def stub(served: Served, token: str) -> apb_grpc.AuditServiceStub:
    return apb_grpc.AuditServiceStub(served.channel(token))


def streamed(
    audit: apb_grpc.AuditServiceStub, first: int = 0, **options: Any
) -> list[apb.HistoryEvent]:
    request = apb.StreamEventsRequest(bank_id=BANK, from_position=first, **options)
    return [
        event
        for chunk in audit.StreamEvents(request, timeout=WAIT_SECONDS)
        for event in chunk.events
    ]


def rows_of(events: list[apb.HistoryEvent]) -> list[Row]:
    return [(e.position, e.stored, e.chain_hash) for e in events]


def in_store(served: Served) -> list[Row]:
    return [
        (n, stored, chain_hash)
        for n, (stored, chain_hash) in enumerate(stored_rows(served.ledger, BANK), 1)
    ]


# --------------------------------------------------------------------------- the bytes, resumed


def test_the_stream_is_the_stored_rows_and_resumes_from_every_position(pki: Pki) -> None:
    with serving(pki) as served:
        audit = stub(served, small_bank(served))
        history = in_store(served)

        # The whole history: each event's bytes exactly as stored, with its kept hash.
        whole = streamed(audit, view=apb.EVENT_VIEW_STORED)
        assert rows_of(whole) == history
        assert [e.type for e in whole][:2] == ["BankCreated", "ApiKeyIssued"]

        # Resumed from every position (and just past the end), the rest of it, the same.
        for first in range(1, len(history) + 2):
            assert (
                rows_of(streamed(audit, first, view=apb.EVENT_VIEW_STORED)) == history[first - 1 :]
            )
        # A stretch of it, up to a position.
        assert rows_of(streamed(audit, 3, to_position=5)) == history[2:5]


def test_the_full_view_decodes_each_event_for_convenience(pki: Pki) -> None:
    with serving(pki) as served:
        audit = stub(served, small_bank(served))
        for event in streamed(audit):
            body = json.loads(event.stored)
            # The fields as a Struct (numbers as doubles), the time as a Timestamp.
            assert json_format.MessageToDict(event.fields) == json.loads(
                json.dumps(body["fields"]), parse_int=float
            )
            assert event.timestamp.ToDatetime().isoformat() == body["timestamp"][:26]
            assert not event.fields_omitted
        # The STORED view leaves the decoding out.
        assert all(not e.HasField("fields") for e in streamed(audit, view=apb.EVENT_VIEW_STORED))


def test_chunks_are_bounded_in_events_and_bytes(pki: Pki) -> None:
    with serving(pki) as served:
        token = small_bank(served)
        ledger = served.ledger
        big_events(served, events=3, transfers=1000, memo_length=400)
        audit = stub(served, token)
        chunks = list(
            audit.StreamEvents(apb.StreamEventsRequest(bank_id=BANK, view=apb.EVENT_VIEW_STORED))
        )
        for chunk in chunks:
            size = sum(len(e.stored) for e in chunk.events)
            assert 1 <= len(chunk.events) <= audit_history.events_per_chunk_max
            # One event larger than the bound comes alone; otherwise the bound holds.
            assert len(chunk.events) == 1 or size <= audit_history.chunk_bytes_max
        assert sum(len(c.events) for c in chunks) == ledger.get_bank(BANK).position


# --------------------------------------------------------------------------- following


def test_follow_delivers_every_event_once_in_order_under_late_commits(
    pki: Pki, durable_store_url: str
) -> None:
    with serving(pki, database_url=durable_store_url, grpc_workers=8) as served:
        token = small_bank(served)
        ledger = served.ledger
        # Commits are delayed at random, after their rows got their ids, before they land.
        _delay_commits(ledger.store.recorder, seed=11)
        received: list[list[apb.HistoryEvent]] = [[], []]
        calls: list[Any] = []
        cancelled: list[grpc.StatusCode] = []

        def follow(into: list[apb.HistoryEvent], first: int) -> None:
            call = stub(served, token).StreamEvents(
                apb.StreamEventsRequest(bank_id=BANK, from_position=first, follow=True),
                timeout=120,
            )
            calls.append(call)
            try:
                for chunk in call:
                    into.extend(chunk.events)
            except grpc.RpcError as error:
                cancelled.append(error.code())

        # Two followers, one from the start, one from the head as it was.
        start_head = ledger.get_bank(BANK).position
        followers = [
            threading.Thread(target=follow, args=(received[0], 1)),
            threading.Thread(target=follow, args=(received[1], start_head + 1)),
        ]
        for thread in followers:
            thread.start()

        # Writers of the bank, two at once (their commits overlap, and land late).
        def write(prefix: str) -> None:
            for n in range(25):
                payer, payee = ("ann", "bob") if n % 2 else ("bob", "ann")
                ledger.execute(BANK, CreateTransfer(f"{prefix}{n}", payer, payee, 1 + n % 3))

        writers = [threading.Thread(target=write, args=(p,)) for p in ("x", "y")]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        head = ledger.get_bank(BANK).position

        # Both followers get to the head, then the calls are cancelled.
        deadline = time.monotonic() + WAIT_SECONDS
        while any(not r or r[-1].position < head for r in received):
            assert time.monotonic() < deadline, [len(r) for r in received]
            time.sleep(0.01)
        for call in calls:
            call.cancel()
        for thread in followers:
            thread.join(timeout=WAIT_SECONDS)
        assert cancelled == [grpc.StatusCode.CANCELLED] * 2

        # Every event once, in order, with the bytes the store holds.
        history = in_store(served)
        assert rows_of(received[0]) == history
        assert rows_of(received[1]) == history[start_head:]


# --------------------------------------------------------------------------- a slow reader


def events_handed_out() -> float:
    return REGISTRY.get_sample_value("ledger_audit_stream_events_total") or 0.0


def test_a_slow_reader_holds_the_server_to_a_few_chunks(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks, so that the history is many of them: 40 events of about 100 KB.
    monkeypatch.setattr(audit_history, "chunk_bytes_max", 64 * 1024)
    with serving(pki) as served:
        token = small_bank(served)
        ledger = served.ledger
        big_events(served, events=40, transfers=250, memo_length=300)
        total = ledger.get_bank(BANK).position
        # A reader whose window stays small (no bandwidth probing) takes one chunk, then stops.
        slow = grpc.secure_channel(
            served.address,
            grpc.composite_channel_credentials(
                grpc.ssl_channel_credentials(root_certificates=pki.ca.certificate_pem),
                grpc.access_token_call_credentials(token),
            ),
            options=[
                ("grpc.ssl_target_name_override", server_host),
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", 64 * 1024),
            ],
        )
        before = events_handed_out()
        call = apb_grpc.AuditServiceStub(slow).StreamEvents(
            apb.StreamEventsRequest(bank_id=BANK, view=apb.EVENT_VIEW_STORED), timeout=60
        )
        stream: Iterator[apb.StreamEventsResponse] = iter(call)
        taken = len(next(stream).events)

        # The server hands out chunks until the transport pushes back, then waits.
        settled = wait_until_settled(events_handed_out)
        handed = settled - before
        # Most of the history (about 3.4 MB) is still to come; the server holds a few
        # events of 85 KB beyond what was taken, in gRPC's windows, and reads no further.
        assert total - taken >= 35
        assert handed - taken <= 6, (handed, taken, total)

        # Once the reader reads on, it gets the rest, in order.
        rest = [event.position for chunk in stream for event in chunk.events]
        assert rest == list(range(taken + 1, total + 1))
        slow.close()


def wait_until_settled(read: Any, quiet_seconds: float = 0.5) -> float:
    """The value `read()` keeps for `quiet_seconds` (bounded by WAIT_SECONDS)."""
    deadline = time.monotonic() + WAIT_SECONDS
    value, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_seconds:
            return float(value)
    raise AssertionError("the server never stopped handing out chunks")


# --------------------------------------------------------------------------- who may stream


def test_only_the_banks_auditors_and_admins_stream_the_history(pki: Pki) -> None:
    with serving(pki, audit_follow_resume_events_max=3) as served:
        auditor = small_bank(served)
        admin = served.key(Role.BANK_ADMIN, BANK)
        front_end = served.key(Role.MEMBER_APP, BANK)
        served.create_bank("hillside")
        other_auditor = served.key(Role.AUDITOR, "hillside")
        head = served.ledger.get_bank(BANK).position

        # The bank's auditor and admin read the whole history.
        for token in (auditor, admin):
            assert len(streamed(stub(served, token))) == head
        # A front-end may not read the history, nor follow it from far back...
        front = stub(served, front_end)
        for first, follow in ((0, False), (1, True), (head - 3, True)):
            with pytest.raises(grpc.RpcError) as refused:
                streamed(front, first, follow=follow)
            assert (refusal_of(refused.value).code, refusal_of(refused.value).reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "FOLLOW_ONLY",
            )
        # ...but follows live events from near the head.
        call = front.StreamEvents(
            apb.StreamEventsRequest(bank_id=BANK, from_position=head - 2, follow=True), timeout=30
        )
        got = [event.position for event in next(iter(call)).events]
        assert got == [head - 2, head - 1, head]
        call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped
        # Another bank's auditor is refused as if the bank did not exist; so is the operator.
        for token, reason in (
            (other_auditor, "BANK_OUT_OF_SCOPE"),
            (served.operator_token, "ROLE_NOT_ALLOWED"),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                streamed(stub(served, token))
            assert refusal_of(refused.value).code == grpc.StatusCode.PERMISSION_DENIED
            assert refusal_of(refused.value).reason == reason
        # The as-of reads and checkpoints are the auditor's and the admin's only.
        with pytest.raises(grpc.RpcError) as refused:
            front.GetBalancesAsOf(apb.GetBalancesAsOfRequest(bank_id=BANK, position=1))
        assert refusal_of(refused.value).reason == "ROLE_NOT_ALLOWED"


def test_streams_at_once_are_bounded_and_a_cancelled_one_gives_its_slot_back(pki: Pki) -> None:
    with serving(pki, audit_streams_max=1) as served:
        audit = stub(served, small_bank(served))
        first = audit.StreamEvents(apb.StreamEventsRequest(bank_id=BANK, follow=True), timeout=30)
        next(iter(first))
        # A second stream while the first follows: refused, with a reason to retry on.
        with pytest.raises(grpc.RpcError) as refused:
            streamed(audit)
        assert refusal_of(refused.value).code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refusal_of(refused.value).reason == "STREAMS_MAX_REACHED"
        # Cancelled, the first gives its slot back: a new stream is served.
        first.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            try:
                assert streamed(audit)
                break
            except grpc.RpcError as error:
                refusal = refusal_of(error)
            assert refusal.reason == "STREAMS_MAX_REACHED"
            assert time.monotonic() < deadline
            time.sleep(0.02)
