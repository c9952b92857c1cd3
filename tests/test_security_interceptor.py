"""The security interceptor on a real gRPC server, called over a real channel.

The server holds small fake servicers built on the real generated request and response
classes, behind SecurityInterceptor, with health and reflection as `serve` registers them.
Each test calls as a front-end, an admin, an auditor, an operator or a stranger would, and
checks the status and its google.rpc details; the fake servicers record who they saw.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from ledger import logs
from ledger.security import policy
from ledger.security.api_keys import InMemoryKeyDirectory, issue_key
from ledger.security.caller import Caller, acting_as, context_with, current_caller
from ledger.security.errors import Reason
from ledger.security.gate import Gate
from ledger.security.interceptor import SecurityInterceptor
from ledger.security.member_tokens import StaticMemberTokenKeys, key_from_pem
from ledger.security.policy import Rule, Scope
from ledger.security.quotas import QuotaSettings, Slots
from ledger.security.roles import Role
from ledger.service.discovery import enable_discovery
from timebank.ledger.v1 import ledger_pb2 as pb

wait_seconds_max = 10.0  # a safety net for waits on other threads; never asserted
ledger_service = "timebank.ledger.v1.LedgerService"
stream_service = "timebank.ledger.v1.TestStreamService"
get_bank = f"/{ledger_service}/GetBank"
create_bank = f"/{ledger_service}/CreateBank"
freeze_account = f"/{ledger_service}/FreezeAccount"
get_account = f"/{ledger_service}/GetAccount"  # blocks until the test lets it go
drop_bank = f"/{ledger_service}/DropBank"  # served, but in no rule
follow = f"/{stream_service}/Follow"  # a response stream of three
upload = f"/{stream_service}/Upload"  # a request stream: its bank scope cannot be read
request_bytes_max = 4096  # small, so a test can go past it cheaply
start = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


class WallClock:
    def __init__(self) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class Monotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    channel: grpc.Channel
    keys: InMemoryKeyDirectory
    tokens: dict[str, str]  # name -> bearer token
    wall: WallClock
    monotonic: Monotonic
    idp: ed25519.Ed25519PrivateKey  # riverside's identity provider
    seen: list[Caller] = field(default_factory=list)  # callers the servicers saw
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def call(
        self,
        method: str,
        request: Any,
        key: str | None = None,
        *,
        member_token: str | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        """Calls with raw bytes (a message is serialized first) as key `key`."""
        body = request if isinstance(request, bytes) else request.SerializeToString()
        extra = list(metadata)
        if key is not None:
            extra.append(("authorization", f"Bearer {self.tokens[key]}"))
        if member_token is not None:
            extra.append(("x-member-token", member_token))
        response: bytes = self.channel.unary_unary(method, None, None)(
            body, metadata=tuple(extra), timeout=wait_seconds_max
        )
        return response

    def member_token(self, subject: str, bank_id: str = "riverside", **claims: Any) -> str:
        payload = {
            "sub": subject,
            "aud": bank_id,
            "exp": int((self.wall.now + timedelta(minutes=5)).timestamp()),
            **claims,
        }
        return jwt.encode(payload, self.idp, algorithm="EdDSA", headers={"kid": "idp-1"})


@dataclass
class Refusal:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    retry_delay_seconds: float | None


def refusal(call: Callable[[], object]) -> Refusal:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = raised.value
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    assert status is not None, "every refusal carries a google.rpc.Status"
    result = Refusal(error.code(), "", {}, None)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "timebank-ledger"
            result.reason, result.metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            result.retry_delay_seconds = retry.retry_delay.ToTimedelta().total_seconds()
    assert result.reason, "every refusal carries an ErrorInfo"
    return result


def ledger_handlers(harness: Harness) -> grpc.GenericRpcHandler[Any, Any]:
    """A fake LedgerService: each method records its caller and echoes the bank."""

    def bank(request: Any, _context: grpc.ServicerContext) -> pb.GetBankResponse:
        harness.seen.append(current_caller())
        return pb.GetBankResponse(bank=pb.Bank(bank_id=request.bank_id))

    def blocking(request: pb.GetAccountRequest, _context: grpc.ServicerContext) -> Any:
        harness.seen.append(current_caller())
        harness.entered.set()
        harness.release.wait(wait_seconds_max)
        return pb.GetAccountResponse()

    def unary(request_type: Any, behavior: Callable[..., Any]) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=request_type.FromString,
            response_serializer=lambda response: response.SerializeToString(),
        )

    return grpc.method_handlers_generic_handler(
        ledger_service,
        {
            "GetBank": unary(pb.GetBankRequest, bank),
            "CreateBank": unary(pb.CreateBankRequest, bank),
            "FreezeAccount": unary(pb.FreezeAccountRequest, bank),
            "GetAccount": unary(pb.GetAccountRequest, blocking),
            "DropBank": unary(pb.GetBankRequest, bank),
        },
    )


def stream_handlers(harness: Harness) -> grpc.GenericRpcHandler[Any, Any]:
    """A response stream, as the audit stream will be: every step sees the caller."""

    def responses(request: pb.GetBankRequest, _context: grpc.ServicerContext) -> Iterator[Any]:
        for _ in range(3):
            harness.seen.append(current_caller())
            yield pb.GetBankResponse(bank=pb.Bank(bank_id=request.bank_id))
            if harness.entered.is_set():  # the test holds the stream open here
                harness.release.wait(wait_seconds_max)

    def count(requests: Iterator[Any], _context: grpc.ServicerContext) -> pb.GetBankResponse:
        harness.seen.append(current_caller())
        return pb.GetBankResponse()

    handler = grpc.unary_stream_rpc_method_handler(
        responses,
        request_deserializer=pb.GetBankRequest.FromString,
        response_serializer=pb.GetBankResponse.SerializeToString,
    )
    uploads = grpc.stream_unary_rpc_method_handler(
        count,
        request_deserializer=pb.GetBankRequest.FromString,
        response_serializer=pb.GetBankResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(
        stream_service, {"Follow": handler, "Upload": uploads}
    )


@contextmanager
def serving(
    quotas: QuotaSettings | None = None, calls_in_flight: Slots | None = None
) -> Iterator[Harness]:
    keys = InMemoryKeyDirectory()
    wall, monotonic = WallClock(), Monotonic()
    tokens: dict[str, str] = {}
    for name, role, bank_id in (
        ("operator", Role.OPERATOR, ""),
        ("admin", Role.BANK_ADMIN, "riverside"),
        ("front-end", Role.MEMBER_APP, "riverside"),
        ("auditor", Role.AUDITOR, "riverside"),
        ("peer", Role.FEDERATION_PEER, "riverside"),
        ("hillside-admin", Role.BANK_ADMIN, "hillside"),
        ("hillside-front-end", Role.MEMBER_APP, "hillside"),
        ("hillside-auditor", Role.AUDITOR, "hillside"),
        ("revoked", Role.BANK_ADMIN, "riverside"),
        ("expiring", Role.BANK_ADMIN, "riverside"),
    ):
        expires_at = start + timedelta(hours=1) if name == "expiring" else None
        issued = issue_key(
            role, bank_id, label=name, created_by="test", now=start, expires_at=expires_at
        )
        keys.add(issued.record)
        tokens[name] = issued.token
        if name == "revoked":
            keys.revoke(issued.record.key_id, start)
    idp = ed25519.Ed25519PrivateKey.generate()
    idp_pem = idp.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    member_keys = StaticMemberTokenKeys({"riverside": [key_from_pem("idp-1", idp_pem.decode())]})
    table = {**policy.rules, follow: policy.rules[get_bank], upload: policy.rules[get_bank]}
    gate = Gate(
        keys=keys,
        member_token_keys=member_keys,
        quotas=quotas,
        calls_in_flight=calls_in_flight,
        table=table,
        now=wall,
        monotonic=monotonic,
    )
    server = grpc.server(
        ThreadPoolExecutor(max_workers=8),
        interceptors=[SecurityInterceptor(gate, request_bytes_max)],
        # gRPC's own limit is a backstop above the interceptor's.
        options=[("grpc.max_receive_message_length", 4 * request_bytes_max)],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        harness = Harness(channel, keys, tokens, wall, monotonic, idp)
        server.add_generic_rpc_handlers((ledger_handlers(harness), stream_handlers(harness)))
        enable_discovery(server, [ledger_service])
        server.start()
        try:
            yield harness
        finally:
            harness.release.set()
            server.stop(grace=None)


@pytest.fixture
def harness() -> Iterator[Harness]:
    with serving() as harness:
        yield harness


def get(bank_id: str = "riverside") -> pb.GetBankRequest:
    return pb.GetBankRequest(bank_id=bank_id)


# ---------------------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------------------


def test_a_call_without_a_key_is_unauthenticated(harness: Harness) -> None:
    refused = refusal(lambda: harness.call(get_bank, get()))
    assert refused.code is grpc.StatusCode.UNAUTHENTICATED
    assert refused.reason == Reason.API_KEY_MISSING
    assert harness.seen == []


def test_bad_revoked_and_expired_keys_each_have_their_reason(harness: Harness) -> None:
    harness.tokens["garbage"] = "not-a-key"
    harness.tokens["unknown"] = issue_key(
        Role.BANK_ADMIN, "riverside", label="", created_by="test", now=start
    ).token
    harness.wall.now = start + timedelta(hours=2)  # past the expiring key's hour
    for key, reason in (
        ("garbage", Reason.API_KEY_MALFORMED),
        ("unknown", Reason.API_KEY_INVALID),
        ("revoked", Reason.API_KEY_REVOKED),
        ("expiring", Reason.API_KEY_EXPIRED),
    ):
        refused = refusal(lambda key=key: harness.call(get_bank, get(), key))  # type: ignore[misc]
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason), key
    assert harness.seen == []


# ---------------------------------------------------------------------------------------
# Roles and scope
# ---------------------------------------------------------------------------------------


def test_each_role_of_the_bank_reads_it_and_the_servicer_sees_the_caller(
    harness: Harness,
) -> None:
    for key, role in (
        ("admin", Role.BANK_ADMIN),
        ("front-end", Role.MEMBER_APP),
        ("auditor", Role.AUDITOR),
    ):
        answer = pb.GetBankResponse.FromString(harness.call(get_bank, get(), key))
        assert answer.bank.bank_id == "riverside"
        caller = harness.seen[-1]
        assert (caller.role, caller.bank_id, caller.member_subject) == (role, "riverside", None)
        assert caller.actor == f"key:{caller.key_id}"
        assert harness.tokens[key].startswith(f"tbl_{caller.key_id}_")


def test_another_banks_keys_are_out_of_scope_whether_the_bank_exists_or_not(
    harness: Harness,
) -> None:
    for key in ("hillside-admin", "hillside-front-end", "hillside-auditor"):
        for bank_id in ("riverside", "no-such-bank"):
            refused = refusal(lambda: harness.call(get_bank, get(bank_id), key))  # noqa: B023
            assert refused.code is grpc.StatusCode.PERMISSION_DENIED
            assert refused.reason == Reason.BANK_OUT_OF_SCOPE
            assert refused.metadata == {}  # nothing about either bank comes back
        # A bank_id that is no id at all names no bank: bad input, the same for every key.
        refused = refusal(lambda: harness.call(get_bank, get(""), key))  # noqa: B023
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "FIELD_REQUIRED",
        )
        assert refused.metadata == {"field": "bank_id"}
    assert harness.seen == []


def test_roles_are_held_to_the_table(harness: Harness) -> None:
    freeze = pb.FreezeAccountRequest(bank_id="riverside", account_id="ann")
    # The front-end and the auditor may not freeze; the admin may.
    for key in ("front-end", "auditor", "peer", "operator"):
        refused = refusal(lambda: harness.call(freeze_account, freeze, key))  # noqa: B023
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            Reason.ROLE_NOT_ALLOWED,
        )
    harness.call(freeze_account, freeze, "admin")
    # The federation peer and the operator read no bank data.
    for key in ("peer", "operator"):
        assert refusal(lambda: harness.call(get_bank, get(), key)).reason == (  # noqa: B023
            Reason.ROLE_NOT_ALLOWED
        )
    assert [caller.role for caller in harness.seen] == [Role.BANK_ADMIN]


def test_only_the_operator_creates_banks_without_any_bank_scope(harness: Harness) -> None:
    new_bank = pb.CreateBankRequest(bank_id="lakeside", name="Lakeside")
    harness.call(create_bank, new_bank, "operator")
    assert harness.seen[-1].role is Role.OPERATOR
    assert harness.seen[-1].bank_id == ""
    for key in ("admin", "hillside-admin", "front-end"):
        refused = refusal(lambda: harness.call(create_bank, new_bank, key))  # noqa: B023
        assert refused.reason == Reason.ROLE_NOT_ALLOWED


def test_a_served_method_without_a_rule_is_denied_and_an_unknown_one_unimplemented(
    harness: Harness,
) -> None:
    refused = refusal(lambda: harness.call(drop_bank, get(), "admin"))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.METHOD_NOT_ALLOWED,
    )
    with pytest.raises(grpc.RpcError) as raised:
        harness.call(f"/{ledger_service}/NoSuchMethod", get(), "admin")
    assert isinstance(raised.value, grpc.Call)
    assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert harness.seen == []


def test_a_request_stream_with_a_bank_rule_is_denied(harness: Harness) -> None:
    # Its bank scope would be in messages not yet read: the interceptor refuses to guess.
    metadata = (("authorization", f"Bearer {harness.tokens['admin']}"),)
    uploader = harness.channel.stream_unary(upload, None, None)
    refused = refusal(lambda: uploader(iter([get().SerializeToString()]), metadata=metadata))
    assert refused.reason == Reason.METHOD_NOT_ALLOWED
    assert harness.seen == []


# ---------------------------------------------------------------------------------------
# Bodies
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(bytes.fromhex("ffffff"), id="corrupt-wire-format"),
        pytest.param(bytes.fromhex("0a03eda080"), id="lone-surrogate-in-bank-id"),
    ],
)
def test_an_undecodable_body_is_invalid_argument_logged_once_without_the_body(
    harness: Harness, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    refused = refusal(lambda: harness.call(get_bank, body, "admin"))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.MALFORMED_REQUEST,
    )
    # One warning, no traceback, no error from gRPC; the body appears nowhere in the log.
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert [record.getMessage() for record in warnings] == ["call_refused"]
    assert not warnings[0].exc_info
    formatted = [logs.JsonFormatter().format(record) for record in caplog.records]
    assert all(body.hex() not in line and "\\udb" not in line for line in formatted)
    assert all("deserializ" not in line.lower() for line in formatted)
    fields = warnings[0].__dict__["fields"]
    assert fields["size_bytes"] == len(body)
    assert fields["reason"] == "MALFORMED_REQUEST"
    # The same for a public method: health checking.
    refused = refusal(lambda: harness.call("/grpc.health.v1.Health/Check", body))
    assert refused.reason == Reason.MALFORMED_REQUEST
    assert harness.seen == []


def test_an_undecodable_body_from_a_stranger_is_unauthenticated_first(harness: Harness) -> None:
    refused = refusal(lambda: harness.call(get_bank, bytes.fromhex("ffffff")))
    assert refused.reason == Reason.API_KEY_MISSING


def test_a_body_over_the_limit_is_resource_exhausted_with_its_size(harness: Harness) -> None:
    big = pb.GetBankRequest(bank_id="x" * request_bytes_max)
    refused = refusal(lambda: harness.call(get_bank, big, "admin"))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.MESSAGE_TOO_LARGE,
    )
    assert refused.metadata == {
        "size_bytes": str(big.ByteSize()),
        "size_bytes_max": str(request_bytes_max),
    }
    assert refused.retry_delay_seconds is None  # retrying the same body will not help
    # At the limit itself the body is read (and then the bank_id is refused as too long).
    at_limit = pb.GetBankRequest(bank_id="x" * (request_bytes_max - 3))
    assert at_limit.ByteSize() == request_bytes_max
    assert refusal(lambda: harness.call(get_bank, at_limit, "admin")).reason == "FIELD_TOO_LONG"


# ---------------------------------------------------------------------------------------
# Member tokens
# ---------------------------------------------------------------------------------------


def test_a_member_token_puts_its_subject_into_the_caller(harness: Harness) -> None:
    harness.call(get_bank, get(), "front-end", member_token=harness.member_token("ann"))
    caller = harness.seen[-1]
    assert caller.member_subject == "ann"
    assert caller.actor == f"key:{caller.key_id}/member:ann"


def test_bad_member_tokens_are_refused_by_name(harness: Harness) -> None:
    other_idp = ed25519.Ed25519PrivateKey.generate()
    unregistered = jwt.encode(
        {"sub": "ann", "aud": "riverside", "exp": int((start + timedelta(minutes=5)).timestamp())},
        other_idp,
        algorithm="EdDSA",
        headers={"kid": "idp-other"},
    )
    for token, reason in (
        (harness.member_token("ann", "hillside"), Reason.MEMBER_TOKEN_WRONG_BANK),
        (harness.member_token("ann", exp=int(start.timestamp()) - 60), Reason.MEMBER_TOKEN_EXPIRED),
        (unregistered, Reason.MEMBER_TOKEN_UNKNOWN_KEY),
        ("garbage", Reason.MEMBER_TOKEN_MALFORMED),
    ):
        refused = refusal(
            lambda token=token: harness.call(get_bank, get(), "front-end", member_token=token)  # type: ignore[misc]
        )
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)
    # Two tokens at once are ambiguous.
    token = harness.member_token("ann")
    twice = (("x-member-token", token), ("x-member-token", token))
    refused = refusal(lambda: harness.call(get_bank, get(), "front-end", metadata=twice))
    assert refused.reason == Reason.MEMBER_TOKEN_MALFORMED
    # A member token on a deployment-wide call has no bank to be checked against.
    new_bank = pb.CreateBankRequest(bank_id="lakeside")
    refused = refusal(lambda: harness.call(create_bank, new_bank, "operator", member_token=token))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.MEMBER_TOKEN_NOT_APPLICABLE,
    )
    assert harness.seen == []


def test_a_member_token_of_another_bank_with_its_own_key_is_still_out_of_scope(
    harness: Harness,
) -> None:
    # A hillside key with a (riverside) token for riverside: the key's scope decides first.
    token = harness.member_token("ann")
    refused = refusal(
        lambda: harness.call(get_bank, get(), "hillside-front-end", member_token=token)
    )
    assert refused.reason == Reason.BANK_OUT_OF_SCOPE


# ---------------------------------------------------------------------------------------
# Quotas
# ---------------------------------------------------------------------------------------


def test_a_key_over_its_rate_is_told_when_to_retry() -> None:
    quotas = QuotaSettings(key_requests_per_second=2.0, key_request_burst_max=2)
    with serving(quotas) as harness:
        harness.call(get_bank, get(), "admin")
        harness.call(get_bank, get(), "admin")
        refused = refusal(lambda: harness.call(get_bank, get(), "admin"))
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            Reason.QUOTA_EXCEEDED,
        )
        assert refused.metadata == {"quota": "requests_per_second"}
        assert refused.retry_delay_seconds == pytest.approx(0.5)
        # Another key is not held back; after the delay this one may call again.
        harness.call(get_bank, get(), "auditor")
        harness.monotonic.now += 0.5
        harness.call(get_bank, get(), "admin")
        # Refused calls count too: a key cannot probe for free.
        assert refusal(lambda: harness.call(get_bank, get("hillside"), "admin")).reason == (
            Reason.QUOTA_EXCEEDED
        )


def test_a_key_with_as_many_calls_in_flight_as_allowed_waits_for_one_to_end() -> None:
    quotas = QuotaSettings(key_calls_in_flight_max=1)
    with serving(quotas) as harness:
        request = pb.GetAccountRequest(bank_id="riverside", account_id="ann")
        first = harness.channel.unary_unary(get_account, None, None).future(
            request.SerializeToString(),
            metadata=(("authorization", f"Bearer {harness.tokens['admin']}"),),
            timeout=wait_seconds_max,
        )
        assert harness.entered.wait(wait_seconds_max)
        # While it runs, the same key gets no second call; another key does.
        refused = refusal(lambda: harness.call(get_bank, get(), "admin"))
        assert (refused.reason, refused.metadata) == (
            Reason.QUOTA_EXCEEDED,
            {"quota": "calls_in_flight"},
        )
        assert refused.retry_delay_seconds == QuotaSettings().busy_retry_delay_seconds
        harness.call(get_bank, get(), "auditor")
        # The first call ends: the key's slot is free again.
        harness.release.set()
        first.result(timeout=wait_seconds_max)
        harness.call(get_bank, get(), "admin")


def test_the_server_wide_slots_refuse_with_server_busy() -> None:
    with serving(calls_in_flight=Slots("calls_in_flight", 1)) as harness:
        request = pb.GetAccountRequest(bank_id="riverside", account_id="ann")
        first = harness.channel.unary_unary(get_account, None, None).future(
            request.SerializeToString(),
            metadata=(("authorization", f"Bearer {harness.tokens['admin']}"),),
            timeout=wait_seconds_max,
        )
        assert harness.entered.wait(wait_seconds_max)
        refused = refusal(lambda: harness.call(get_bank, get(), "auditor"))
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            Reason.SERVER_BUSY,
        )
        assert refused.retry_delay_seconds is not None
        # Public methods are never held back: the load balancer still sees health.
        health = health_pb2_grpc.HealthStub(harness.channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        harness.release.set()
        first.result(timeout=wait_seconds_max)
        harness.call(get_bank, get(), "auditor")


# ---------------------------------------------------------------------------------------
# Streams and the caller's context
# ---------------------------------------------------------------------------------------


def test_every_step_of_a_response_stream_sees_the_caller_and_frees_its_slot() -> None:
    with serving(QuotaSettings(key_calls_in_flight_max=1)) as harness:
        metadata = (("authorization", f"Bearer {harness.tokens['auditor']}"),)
        stream = harness.channel.unary_stream(follow, None, None)
        responses = list(stream(get().SerializeToString(), metadata=metadata))
        assert len(responses) == 3
        assert len(harness.seen) == 3
        assert {caller.role for caller in harness.seen} == {Role.AUDITOR}
        # The stream is over, so its one slot is free for the next call.
        assert len(list(stream(get().SerializeToString(), metadata=metadata))) == 3
        # A stranger's stream is refused before it starts.
        refused = refusal(lambda: list(stream(get().SerializeToString())))
        assert refused.reason == Reason.API_KEY_MISSING


def test_a_cancelled_stream_gives_its_slot_back() -> None:
    with serving(QuotaSettings(key_calls_in_flight_max=1)) as harness:
        metadata = (("authorization", f"Bearer {harness.tokens['auditor']}"),)
        harness.entered.set()  # the stream pauses after its first response
        follower = harness.channel.unary_stream(follow, None, None)
        call = follower(get().SerializeToString(), metadata=metadata)
        next(iter(call))
        assert refusal(lambda: harness.call(get_bank, get(), "auditor")).reason == (
            Reason.QUOTA_EXCEEDED
        )
        call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped
        harness.release.set()
        # The server notices the cancellation on its own time: poll, never time it.
        deadline = threading.Event()
        timer = threading.Timer(wait_seconds_max, deadline.set)
        timer.start()
        try:
            while not deadline.is_set():
                try:
                    harness.call(get_bank, get(), "auditor")
                    break
                except grpc.RpcError:
                    deadline.wait(0.01)
            else:
                pytest.fail("the cancelled stream kept its slot")
        finally:
            timer.cancel()


def test_the_caller_is_set_only_inside_its_context() -> None:
    caller = Caller("k1", Role.AUDITOR, "riverside")
    context = context_with(caller)
    assert context.run(current_caller) == caller
    # Outside it, no caller: current_caller() refuses to make one up.
    with pytest.raises(AssertionError, match="interceptor"):
        current_caller()
    with acting_as(caller):
        assert current_caller() == caller
    with pytest.raises(AssertionError):
        current_caller()


# ---------------------------------------------------------------------------------------
# Public methods
# ---------------------------------------------------------------------------------------


def test_health_and_reflection_need_no_key_and_watch_still_streams(harness: Harness) -> None:
    health = health_pb2_grpc.HealthStub(harness.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=ledger_service)).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    assert ledger_service in health.List(health_pb2.HealthListRequest()).statuses
    watch = health.Watch(health_pb2.HealthCheckRequest(service=ledger_service))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    reflection = reflection_pb2_grpc.ServerReflectionStub(harness.channel)
    answers = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {service.name for service in next(answers).list_services_response.service}
    assert ledger_service in names


def test_a_garbage_message_in_a_reflection_stream_is_malformed(harness: Harness) -> None:
    stream = harness.channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", None, None
    )
    refused = refusal(lambda: list(stream(iter([bytes.fromhex("ffffff")]))))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.MALFORMED_REQUEST,
    )


def test_a_public_rule_never_carries_roles() -> None:
    with pytest.raises(AssertionError):
        Rule(frozenset({Role.AUDITOR}), Scope.PUBLIC)
    with pytest.raises(AssertionError):
        Rule(frozenset({Role.BANK_ADMIN}), Scope.DEPLOYMENT)
