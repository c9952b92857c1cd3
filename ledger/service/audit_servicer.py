"""AuditService over gRPC: a bank's history as stored, balances as of a moment, checkpoints.

Who may call is the policy table's (ledger/security/policy.py); what this adds is the one
narrower rule it declares there: a key whose role is in `audit_follow_only_roles` (a
front-end) may only follow live events, starting near the head.

StreamEvents runs in one gRPC worker thread for as long as it lasts; LEDGER_AUDIT_STREAMS_MAX
of them at most (and never more than half the workers). gRPC's sync server sends a stream's
next message only once the transport took the previous one, and the chunks are read from
the store one at a time as they are sent, so a slow reader holds the server to a few chunks
in flight whatever the history's length (tests/test_audit_stream.py).
"""

# Method names are the RPC names of the generated AuditServiceServicer base class.
# ruff: noqa: N802

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime

import grpc

from ledger import logs, metrics
from ledger.application import pages
from ledger.application.audit_history import HistoryRow, stream_chunks
from ledger.application.ledger import Ledger
from ledger.config import Settings
from ledger.domain.bank import bank_uuid
from ledger.domain.commands import check_id
from ledger.domain.errors import (
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    Overloaded,
    Unavailable,
)
from ledger.security import policy
from ledger.security.caller import current_caller
from ledger.security.quotas import Slots
from ledger.service import convert, errors, view_convert
from ledger.service.servicer import rpc
from ledger.storage.store import StoredCheckpoint
from ledger.verifier import AccountTotals
from projections import audit_queries
from projections.audit_queries import AsOf
from projections.registry import ProjectionSet
from timebank.ledger.v1 import audit_pb2 as pb
from timebank.ledger.v1 import audit_pb2_grpc as pb_grpc
from timebank.ledger.v1 import ledger_pb2

log = logging.getLogger(__name__)

# A FULL event whose stored bytes are larger than this is sent without its `fields`, so
# that the bytes and their decoding together stay well inside one message.
fields_bytes_max = 1024 * 1024
checkpoints_page_max = 1000
_checkpoint_token_kind = "c"
_balances_token_kind = "b"
# Time kept back from the caller's deadline to answer VIEW_NOT_CAUGHT_UP before it expires.
deadline_margin_seconds = 0.05


def streams_max(settings: Settings) -> int:
    """Streams served at once: the setting, and never more than half the gRPC workers."""
    return max(1, min(settings.audit_streams_max, settings.grpc_workers // 2))


class AuditServicer(pb_grpc.AuditServiceServicer):
    """The gRPC face of a bank's history for auditors (and of its live events)."""

    def __init__(
        self, ledger: Ledger, settings: Settings, projections: ProjectionSet | None
    ) -> None:
        self._ledger = ledger
        self._store = ledger.store
        self._projections = projections
        self._views = (
            projections.views if projections is not None and "audit" in projections.names else None
        )
        self._poll_seconds = settings.audit_follow_poll_seconds
        self._resume_events_max = settings.audit_follow_resume_events_max
        self._read_wait_seconds = settings.read_wait_seconds
        self._streams = Slots("audit_streams", streams_max(settings))

    # ----------------------------------------------------------------- the history

    def StreamEvents(
        self, request: pb.StreamEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamEventsResponse]:
        ended = threading.Event()
        with logs.bound(rpc="StreamEvents", bank_id=request.bank_id):
            try:
                first, last = self._admit_stream(request)
            except DomainError as error:
                _refuse(context, "StreamEvents", error)
            release = _Release(self._streams)
            context.add_callback(ended.set)
            context.add_callback(release)
            metrics.audit_streams.inc()
        return self._stream(request, context, first, last, ended, release)

    def _stream(
        self,
        request: pb.StreamEventsRequest,
        context: grpc.ServicerContext,
        first: int,
        last: int | None,
        ended: threading.Event,
        release: _Release,
    ) -> Iterator[pb.StreamEventsResponse]:
        full = request.view != pb.EVENT_VIEW_STORED

        def wait_for_more() -> bool:
            return not ended.wait(self._poll_seconds) and context.is_active()

        try:
            uuid = str(bank_uuid(request.bank_id))
            for chunk in stream_chunks(
                self._store, uuid, first, last, follow=request.follow, wait_for_more=wait_for_more
            ):
                response = _response(chunk.rows, chunk.head_position, full)
                metrics.audit_stream_events.inc(len(chunk.rows))
                yield response
        except Exception:
            if context.is_active():
                logs.event(log, "stream_failed", level=logging.ERROR, exc_info=True)
                context.abort_with_status(errors.internal_status())
        finally:
            release()

    def _admit_stream(self, request: pb.StreamEventsRequest) -> tuple[int, int | None]:
        """(first, last) positions of a stream this caller may have; a DomainError if not."""
        check_id("bank_id", request.bank_id)
        if request.from_position < 0:
            raise InvalidInput(
                "INVALID_POSITION", "from_position must not be negative", field="from_position"
            )
        first = max(1, request.from_position)
        last = request.to_position if request.HasField("to_position") else None
        if last is not None and last < first:
            raise InvalidInput(
                "INVALID_POSITION", "to_position is before from_position", field="to_position"
            )
        head = self._ledger.get_bank(request.bank_id).position
        if current_caller().role in policy.audit_follow_only_roles:
            behind = head + 1 - first
            if not request.follow or behind > self._resume_events_max:
                raise Forbidden(
                    "FOLLOW_ONLY",
                    f"{current_caller().role.with_article} key may only follow live events:"
                    f" `follow`, from at most {self._resume_events_max} events behind the head",
                    metadata={"head_position": str(head)},
                )
        if not self._streams.try_acquire():
            raise Overloaded(
                "STREAMS_MAX_REACHED",
                "the server streams to as many callers as it may; retry shortly",
                metadata={"streams_max": str(self._streams.slots_max)},
            )
        return first, last

    # ----------------------------------------------------------------- as of a moment

    @rpc
    def GetBalancesAsOf(
        self, request: pb.GetBalancesAsOfRequest, context: grpc.ServicerContext
    ) -> pb.GetBalancesAsOfResponse:
        as_of = self._as_of(request)
        accounts = list(as_of.accounts.items())
        if request.account_id:
            check_id("account_id", request.account_id)
            found = as_of.accounts.get(request.account_id)
            if found is None:
                raise _account_not_found(request.account_id, as_of.position)
            chosen, token = [(request.account_id, found)], ""
        else:
            size = pages.page_size(request.page_size)
            start = pages.decode_token(_balances_token_kind, request.page_token) or 0
            if start > len(accounts):
                raise pages.bad_token()
            chosen = accounts[start : start + size]
            more = start + size < len(accounts)
            token = pages.encode_token(_balances_token_kind, start + size) if more else ""
        return pb.GetBalancesAsOfResponse(
            as_of=_point(as_of),
            balances=[_balance(account_id, totals) for account_id, totals in chosen],
            next_page_token=token,
            account_count=len(accounts),
        )

    @rpc
    def ListStatementEntriesAsOf(
        self, request: pb.ListStatementEntriesAsOfRequest, context: grpc.ServicerContext
    ) -> pb.ListStatementEntriesAsOfResponse:
        check_id("account_id", request.account_id)
        as_of = self._as_of(request)
        if request.account_id not in as_of.accounts:
            raise _account_not_found(request.account_id, as_of.position)
        projections = self._projections
        if projections is None or "accounts" not in projections.names:
            raise Unavailable("VIEWS_NOT_SERVED", "this server serves no statements view")
        uuid = bank_uuid(request.bank_id)
        wait = self._read_wait_seconds
        remaining = context.time_remaining()
        if remaining is not None:
            wait = max(0.0, min(wait, remaining - deadline_margin_seconds))
        runner = projections.runner("accounts")
        if not runner.wait_for(uuid, as_of.position, wait):
            raise Unavailable(
                "VIEW_NOT_CAUGHT_UP",
                "the statements view has not reached that moment yet; retry",
                metadata={
                    "position": str(runner.bank_version(uuid)),
                    "min_position": str(as_of.position),
                    "projection": "accounts",
                    "bank_id": request.bank_id,
                },
            )
        entries, token = audit_queries.statement_as_of(
            projections.views,
            request.bank_id,
            request.account_id,
            as_of.position,
            request.page_size,
            request.page_token,
        )
        return pb.ListStatementEntriesAsOfResponse(
            as_of=_point(as_of),
            entries=[view_convert.statement_entry(entry) for entry in entries],
            next_page_token=token,
        )

    def _as_of(
        self, request: pb.GetBalancesAsOfRequest | pb.ListStatementEntriesAsOfRequest
    ) -> AsOf:
        uuid = str(bank_uuid(request.bank_id))
        self._ledger.get_bank(request.bank_id)  # NOT_FOUND before anything else
        moment = request.WhichOneof("as_of")
        if moment == "position":
            return audit_queries.balances_as_of(
                self._store, self._views, uuid, position=request.position
            )
        if moment == "time":
            time = request.time.ToDatetime(tzinfo=UTC)
            return audit_queries.balances_as_of(self._store, self._views, uuid, time=time)
        raise InvalidInput(
            "AS_OF_REQUIRED", "give a position or a time to read as of", field="as_of"
        )

    # ----------------------------------------------------------------- checkpoints

    @rpc
    def GetCheckpoint(
        self, request: pb.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.GetCheckpointResponse:
        if request.position < 0:
            raise InvalidInput(
                "INVALID_POSITION", "position must not be negative", field="position"
            )
        self._ledger.get_bank(request.bank_id)
        position = request.position or 2**62
        found = self._store.checkpoint_at_or_before(str(bank_uuid(request.bank_id)), position)
        if found is None:
            raise NotFound(
                "CHECKPOINT_NOT_FOUND", "no signed checkpoint of this bank at or before that"
            )
        return pb.GetCheckpointResponse(checkpoint=_checkpoint(found))

    @rpc
    def ListCheckpoints(
        self, request: pb.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> pb.ListCheckpointsResponse:
        self._ledger.get_bank(request.bank_id)
        size = min(pages.page_size(request.page_size), checkpoints_page_max)
        after = pages.decode_token(_checkpoint_token_kind, request.page_token) or 0
        found = self._store.checkpoints_page(str(bank_uuid(request.bank_id)), after, size + 1)
        more = len(found) > size
        token = pages.encode_token(_checkpoint_token_kind, found[size - 1].position) if more else ""
        return pb.ListCheckpointsResponse(
            checkpoints=[_checkpoint(row) for row in found[:size]], next_page_token=token
        )

    @rpc
    def ListCheckpointKeys(
        self, request: pb.ListCheckpointKeysRequest, context: grpc.ServicerContext
    ) -> pb.ListCheckpointKeysResponse:
        uuid = str(bank_uuid(request.bank_id))
        self._ledger.get_bank(request.bank_id)
        latest = self._store.checkpoint_at_or_before(uuid, 2**62)
        keys = [
            pb.CheckpointKey(
                key_id=key_id,
                algorithm="Ed25519",
                public_key_pem=pem,
                first_used_at=convert.timestamp(datetime.fromisoformat(first_used_at)),
                current=latest is not None and latest.key_id == key_id,
            )
            for key_id, pem, first_used_at in reversed(self._store.checkpoint_keys())
        ]
        keys.sort(key=lambda key: not key.current)
        return pb.ListCheckpointKeysResponse(keys=keys)


class _Release:
    """Gives a stream's slot back once, whichever of the call's end or the stream's comes
    first."""

    def __init__(self, slots: Slots) -> None:
        self._slots = slots
        self._lock = threading.Lock()
        self._done = False

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._slots.release()
        metrics.audit_streams.dec()


def _refuse(context: grpc.ServicerContext, method: str, error: DomainError) -> None:
    code = errors.status_code(error)
    logs.event(log, "rpc_refused", code=code.name, reason=error.reason, field=error.field)
    metrics.rpcs.labels(method=method, code=code.name).inc()
    context.abort_with_status(errors.to_status(error))


def _response(rows: list[HistoryRow], head_position: int, full: bool) -> pb.StreamEventsResponse:
    """A chunk as sent: each event made in place in the message (no copies)."""
    response = pb.StreamEventsResponse(head_position=head_position)
    add = response.events.add
    for row in rows:
        event = add(
            position=row.position, type=row.type, chain_hash=row.chain_hash, stored=row.stored
        )
        if full:
            _decode_into(event, row.stored)
    return response


def _decode_into(event: pb.HistoryEvent, stored: bytes) -> None:
    """The FULL view's convenience decoding: the event's time and its fields."""
    try:
        body = json.loads(stored)
        event.timestamp.FromDatetime(datetime.fromisoformat(body["timestamp"]))
        if len(stored) <= fields_bytes_max:
            event.fields.update(body["fields"])
        else:
            event.fields_omitted = True
    except (ValueError, KeyError, TypeError, AttributeError):
        # Not an event as the ledger writes them: the stored bytes say what there is.
        event.ClearField("fields")
        event.fields_omitted = True


# Kinds and statuses as the history writes them; a kind this API has no value for yet
# (readers accept new kinds as text) is UNSPECIFIED.
_kinds: Mapping[str, ledger_pb2.AccountKind.ValueType] = {
    name: number for number, name in convert.account_kinds.items()
}
_statuses: Mapping[str, ledger_pb2.AccountStatus.ValueType] = {
    name: number for number, name in convert.account_statuses.items()
}


def _balance(account_id: str, totals: AccountTotals) -> pb.AccountBalance:
    balance = pb.AccountBalance(
        account_id=account_id,
        kind=_kinds.get(totals.kind, ledger_pb2.ACCOUNT_KIND_UNSPECIFIED),
        status=_statuses.get(totals.status, ledger_pb2.ACCOUNT_STATUS_UNSPECIFIED),
        balance_minutes=totals.balance_minutes,
        pending_debit_minutes=totals.pending_debit_minutes,
        pending_credit_minutes=totals.pending_credit_minutes,
        lower_limit_minutes=totals.lower_limit_minutes,
    )
    if totals.upper_limit_minutes is not None:
        balance.upper_limit_minutes = totals.upper_limit_minutes
    return balance


def _point(as_of: AsOf) -> pb.AsOfPoint:
    point = pb.AsOfPoint(position=as_of.position, chain_head=as_of.chain_head)
    if as_of.recorded_at is not None:
        point.recorded_at.CopyFrom(convert.timestamp(as_of.recorded_at))
    return point


def _checkpoint(row: StoredCheckpoint) -> pb.SignedCheckpoint:
    return pb.SignedCheckpoint(
        bank_uuid=row.bank_uuid,
        position=row.position,
        chain_head=row.chain_head,
        time=row.signed_at,
        key_id=row.key_id,
        payload=row.payload,
        signature=row.signature,
    )


def _account_not_found(account_id: str, position: int) -> NotFound:
    return NotFound(
        "ACCOUNT_NOT_FOUND",
        f"account {account_id!r} did not exist at position {position}",
        field="account_id",
        metadata={"account_id": account_id, "position": str(position)},
    )
