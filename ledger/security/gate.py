"""The decision for one call: who calls, whether they may, and what it holds while it runs.

Plain Python with no gRPC server in it, so the sync interceptor and a future grpc.aio one
share it. The checks run in the order of errors.Reason, cheapest and least revealing first:

    rule -> server slot -> API key -> request rate -> role -> body -> bank scope
         -> member token -> the key's calls in flight
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ledger import logs
from ledger.domain.commands import check_id
from ledger.domain.errors import DomainError
from ledger.security import policy
from ledger.security.api_keys import KeyDirectory, KeyRecord, authenticate, metadata_values
from ledger.security.bodies import RefusedBody
from ledger.security.caller import Caller
from ledger.security.errors import (
    InvalidRequest,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    SecurityError,
    Unauthenticated,
)
from ledger.security.member_tokens import (
    MemberTokenKeySource,
    member_token_header,
    member_token_leeway_seconds_default,
    verify_member_token,
)
from ledger.security.policy import Rule, Scope
from ledger.security.quotas import CallsInFlight, Clock, QuotaSettings, RequestRate, Slots
from ledger.security.roles import Role

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str | bytes]]

# Refusals that a flood produces one of per call are logged at debug, not to drown the log.
_quiet_reasons = frozenset({Reason.QUOTA_EXCEEDED, Reason.SERVER_BUSY})


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Held:
    """What a call holds (slots to give back when it ends); released once, however often asked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._releases: list[Callable[[], None]] = []

    def add(self, release: Callable[[], None]) -> None:
        with self._lock:
            self._releases.append(release)

    def release(self) -> None:
        with self._lock:
            releases, self._releases = self._releases, []
        for release in reversed(releases):
            release()


@dataclass(frozen=True)
class Admission:
    """An admitted call: its caller, and what it holds until release() (idempotent)."""

    caller: Caller
    held: Held

    def release(self) -> None:
        self.held.release()


class Gate:
    """Admits or refuses calls by the policy table, the stored keys and the quotas."""

    def __init__(
        self,
        *,
        keys: KeyDirectory,
        member_token_keys: MemberTokenKeySource,
        quotas: QuotaSettings | None = None,
        calls_in_flight: Slots | None = None,
        table: Mapping[str, Rule] = policy.rules,
        now: Callable[[], datetime] = _utc_now,
        monotonic: Clock = time.monotonic,
        member_token_leeway_seconds: float = member_token_leeway_seconds_default,
    ) -> None:
        quotas = quotas or QuotaSettings()
        self._keys = keys
        self._member_token_keys = member_token_keys
        self._table = table
        self._now = now
        self._leeway_seconds = member_token_leeway_seconds
        self._server_slots = calls_in_flight
        self._busy_retry_delay_seconds = quotas.busy_retry_delay_seconds
        self._rate = RequestRate.from_settings(quotas, monotonic)
        self._key_calls = CallsInFlight.from_settings(quotas)

    def rule_for(self, method: str) -> Rule | None:
        return policy.rule_for(method, self._table)

    def refuse_method(self, method: str) -> SecurityError:
        """The refusal of a method without a rule (deny by default), logged."""
        error = PermissionDenied(Reason.METHOD_NOT_ALLOWED, f"method {method} is not allowed")
        self._log_refusal(method, error, None)
        return error

    def refuse_body(self, method: str, body: RefusedBody) -> SecurityError:
        """The refusal of a public method's body that could not be read, logged."""
        error = body.error()
        self._log_refusal(method, error, None)
        return error

    def admit(self, method: str, rule: Rule, metadata: Metadata, request: object) -> Admission:
        """The admission of a call to a method with a non-public rule, or a SecurityError."""
        assert rule.scope is not Scope.PUBLIC
        held = Held()  # given back at once if the call is refused
        record: KeyRecord | None = None
        try:
            self._take_server_slot(held)
            now = self._now()
            record = authenticate(self._keys, metadata, now)
            self._take_request(record)
            _check_role(rule, record)
            if isinstance(request, RefusedBody):
                raise request.error()
            _check_scope(rule, record, request)
            subject = self._member_subject(rule, record, metadata, now)
            self._take_key_call(record, held)
        except SecurityError as error:
            held.release()
            self._log_refusal(method, error, record)
            raise
        except DomainError as error:  # a bank_id that is not an id
            held.release()
            logs.event(
                log,
                "call_refused",
                method=method,
                code="INVALID_ARGUMENT",
                reason=error.reason,
                key_id=record.key_id if record else None,
            )
            raise
        caller = Caller(record.key_id, record.role, record.bank_id, subject)
        return Admission(caller, held)

    def _take_server_slot(self, held: Held) -> None:
        if self._server_slots is None:
            return
        slots = self._server_slots
        if not slots.try_acquire():
            raise ResourceExhausted(
                Reason.SERVER_BUSY,
                "the server is serving as many calls as it admits; retry shortly",
                metadata={"slots": slots.name, "slots_max": str(slots.slots_max)},
                retry_delay_seconds=self._busy_retry_delay_seconds,
            )
        held.add(slots.release)

    def _take_request(self, record: KeyRecord) -> None:
        decision = self._rate.try_take(record.key_id)
        if not decision.admitted:
            raise ResourceExhausted(
                Reason.QUOTA_EXCEEDED,
                "this API key is over its request rate; retry after the delay given",
                metadata={"quota": "requests_per_second"},
                retry_delay_seconds=decision.retry_delay_seconds,
            )

    def _take_key_call(self, record: KeyRecord, held: Held) -> None:
        key_id = record.key_id
        decision = self._key_calls.try_acquire(key_id)
        if not decision.admitted:
            raise ResourceExhausted(
                Reason.QUOTA_EXCEEDED,
                "this API key has as many calls in flight as it may; retry after the delay given",
                metadata={"quota": "calls_in_flight"},
                retry_delay_seconds=decision.retry_delay_seconds,
            )
        held.add(lambda: self._key_calls.release(key_id))

    def _member_subject(
        self, rule: Rule, record: KeyRecord, metadata: Metadata, now: datetime
    ) -> str | None:
        tokens = metadata_values(metadata, member_token_header)
        if not tokens:
            return None
        if len(tokens) > 1:
            raise Unauthenticated(
                Reason.MEMBER_TOKEN_MALFORMED, f"more than one {member_token_header} value"
            )
        if rule.scope is not Scope.BANK:
            raise InvalidRequest(
                Reason.MEMBER_TOKEN_NOT_APPLICABLE,
                f"{member_token_header} is for calls on a bank's data, not deployment-wide ones",
            )
        # The scope check passed: the key's bank is the request's.
        keys = self._member_token_keys.member_token_keys(record.bank_id)
        return verify_member_token(tokens[0], record.bank_id, keys, now, self._leeway_seconds)

    def _log_refusal(self, method: str, error: SecurityError, record: KeyRecord | None) -> None:
        if error.reason is Reason.MALFORMED_REQUEST:
            level = logging.WARNING
        elif error.reason in _quiet_reasons:
            level = logging.DEBUG
        else:
            level = logging.INFO
        fields: dict[str, Any] = {
            "method": method,
            "code": error.code.name,
            "reason": error.reason.value,
            "key_id": record.key_id if record else None,
            **error.log_fields,
        }
        logs.event(log, "call_refused", level=level, **fields)


def _check_role(rule: Rule, record: KeyRecord) -> None:
    if record.role not in rule.roles:
        raise PermissionDenied(
            Reason.ROLE_NOT_ALLOWED,
            f"{record.role.with_article} key may not make this call",
            metadata={"role": record.role.value},
        )


def _check_scope(rule: Rule, record: KeyRecord, request: object) -> None:
    """The key's scope covers the request's; the same answer whether another bank exists
    or not, and before anything is looked up, so no caller learns about other banks."""
    if rule.scope is Scope.DEPLOYMENT:
        in_scope, requested = record.bank_id == "", None
    elif record.role is Role.OPERATOR:
        # Let in by the role check: an operator's scope (the deployment) holds every bank.
        check_id(policy.bank_id_field, getattr(request, policy.bank_id_field, ""))
        in_scope, requested = True, None
    else:
        requested = getattr(request, policy.bank_id_field, None)
        # The policy test checks every BANK-scoped request type has this field.
        assert isinstance(requested, str), f"{type(request).__name__} has no bank_id string"
        # A bank_id that is not an id is bad input, whoever asks: it names no bank at all.
        check_id(policy.bank_id_field, requested)
        in_scope = record.bank_id != "" and requested == record.bank_id
    if not in_scope:
        raise PermissionDenied(
            Reason.BANK_OUT_OF_SCOPE,
            "this API key is not scoped to the bank the request names",
            log_fields={"key_bank_id": record.bank_id, "requested_bank_id": requested},
        )
