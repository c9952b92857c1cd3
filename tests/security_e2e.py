"""What the end-to-end security tests share: reading refusals, a bank's head, the JSON log.

A refusal is read as a client reads it: the status code, then the google.rpc.Status in the
trailers with its ErrorInfo (always present, in our domain) and RetryInfo (when a retry may
succeed). `head()` reads a bank's position and chain head straight from the store, so a
test can say "nothing changed" after a refused call without asking the server.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from served import Served

from ledger import logs
from ledger.service.errors import error_domain
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc

call_timeout_seconds = 10.0
# A safety net for polling another thread's progress; never asserted on.
poll_seconds_max = 10.0
poll_interval_seconds = 0.005
bank_id = "riverside"
other_bank_id = "hillside"
# Members may owe up to ten hours.
member_lower_limit_minutes = -600


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    message: str
    retry_delay_seconds: float | None
    # The whole google.rpc.Status as sent, to compare two answers byte for byte.
    status_bytes: bytes


def refusal_of(error: grpc.RpcError) -> Refusal:
    """The refusal a failed call ended with; every refusal carries exactly one ErrorInfo."""
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    assert status is not None, f"{error.code()} {error.details()!r} has no google.rpc.Status"
    infos = []
    retry_delay_seconds = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_delay_seconds = retry.retry_delay.ToTimedelta().total_seconds()
    assert len(infos) == 1, f"{error.code()} {error.details()!r}: ErrorInfo {infos}"
    [info] = infos
    assert info.domain == error_domain
    return Refusal(
        code=error.code(),
        reason=info.reason,
        metadata=dict(info.metadata),
        message=status.message,
        retry_delay_seconds=retry_delay_seconds,
        status_bytes=status.SerializeToString(),
    )


def refused(call: Callable[..., object], *args: Any, **kwargs: Any) -> Refusal:
    """The refusal of `call(*args, **kwargs)`, which must fail."""
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, **kwargs)
    return refusal_of(raised.value)


def head(served: Served, bank: str = bank_id) -> tuple[int, str]:
    """The bank's position and chain head, as stored."""
    view = served.ledger.get_bank(bank)
    return view.position, view.chain_head


def key_id_of(token: str) -> str:
    """The public key id of a token `tbl_<key id>_<secret>`."""
    prefix, key_id, _secret = token.split("_")
    assert prefix == "tbl", token
    return key_id


def ledger_stub(served: Served, token: str) -> pb_grpc.LedgerServiceStub:
    return pb_grpc.LedgerServiceStub(served.channel(token))


def open_account(
    ledger: pb_grpc.LedgerServiceStub,
    account_id: str,
    kind: pb.AccountKind.ValueType = pb.ACCOUNT_KIND_MEMBER,
    bank: str = bank_id,
) -> int:
    """Opens an account that may owe ten hours; returns the position of the event."""
    return ledger.OpenAccount(
        pb.OpenAccountRequest(
            bank_id=bank,
            account_id=account_id,
            kind=kind,
            lower_limit_minutes=member_lower_limit_minutes,
            actor_label="coordinator",
        ),
        timeout=call_timeout_seconds,
    ).position


def transfer_request(
    transfer_id: str, payer: str, payee: str, minutes: int, **extra: Any
) -> pb.CreateTransferRequest:
    fields: dict[str, Any] = {"memo": f"{payee} helped {payer}", **extra}
    return pb.CreateTransferRequest(
        bank_id=bank_id,
        transfer_id=transfer_id,
        payer_account_id=payer,
        payee_account_id=payee,
        amount_minutes=minutes,
        **fields,
    )


def balance(served: Served, account_id: str, bank: str = bank_id) -> int:
    return served.ledger.get_account(bank, account_id).balance_minutes


def raw_call(
    channel: grpc.Channel,
    method: str,
    body: bytes,
    metadata: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """Calls `method` with `body` as it is, no serializer in the way; returns the raw answer."""
    # No serializers: the body goes as it is, the answer comes back as bytes.
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method, None, None)
    return call(body, metadata=metadata, timeout=call_timeout_seconds)


def poll(condition: Callable[[], bool], what: str) -> None:
    """Waits (bounded) until `condition()` holds: for another thread, never for the clock."""
    deadline = time.monotonic() + poll_seconds_max
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(poll_interval_seconds)


@contextmanager
def json_log(level: str = "DEBUG") -> Iterator[io.StringIO]:
    """The root logger writing JSON lines into a string, as `serve` writes them to stderr."""
    root = logging.getLogger()
    handlers, previous_level = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure(level, stream)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(previous_level)


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every event written, each on exactly one line (no character in it breaks a line)."""
    text = stream.getvalue()
    # str.splitlines() also breaks at U+2028, U+0085 and friends: none may be left raw.
    assert text.splitlines() == text.split("\n")[:-1], "an event was split over lines"
    return [json.loads(line) for line in text.splitlines()]
