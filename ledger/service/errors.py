"""The one place where domain errors become gRPC statuses with google.rpc details (AIP-193).

Every status carries an ErrorInfo whose reason is the domain error's UPPER_SNAKE reason and
whose metadata holds the error's facts (and the field at fault, if any). INVALID_ARGUMENT
adds a BadRequest field violation; FAILED_PRECONDITION adds a PreconditionFailure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ledger.domain import errors

error_domain = "timebank-ledger"

_codes: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.IdConflict: grpc.StatusCode.ALREADY_EXISTS,
    errors.WriteConflict: grpc.StatusCode.ABORTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.HistoryDamaged: grpc.StatusCode.DATA_LOSS,
    errors.Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    errors.QuotaReached: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

# Metadata keys that name the resource a failed precondition is about, and its collection.
_subjects = (("account_id", "accounts"), ("transfer_id", "transfers"), ("bank_id", "banks"))


def status_code(error: errors.DomainError) -> grpc.StatusCode:
    """The status code of a domain error; a class without its own entry maps as its base."""
    for kind in type(error).__mro__:
        if kind in _codes:
            return _codes[kind]
    raise AssertionError(f"no status code for {type(error).__name__}")


def code_number(code: grpc.StatusCode) -> int:
    """The google.rpc.Code number of a status code (9 for FAILED_PRECONDITION)."""
    number = code.value[0]
    assert isinstance(number, int)
    return number


def to_status(error: errors.DomainError) -> grpc.Status:
    """The status (code, message and details) a refused call ends with."""
    code = status_code(error)
    details: list[Message] = [error_info(error)]
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        details.append(_bad_request(error))
    elif code is grpc.StatusCode.FAILED_PRECONDITION:
        details.append(_precondition_failure(error))
    return _status(code, error.message, details)


def internal_status() -> grpc.Status:
    """The status of a call that failed unexpectedly: no internals are revealed."""
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=error_domain)
    return _status(grpc.StatusCode.INTERNAL, "internal error; it has been logged", [info])


def refusal_status(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    *,
    metadata: Mapping[str, str] | None = None,
    retry_delay_seconds: float | None = None,
) -> grpc.Status:
    """A status with an ErrorInfo for a refusal that is not a domain error (the security
    interceptor's), and a RetryInfo when a retry after `retry_delay_seconds` may succeed."""
    details: list[Message] = [
        error_details_pb2.ErrorInfo(reason=reason, domain=error_domain, metadata=metadata or {})
    ]
    if retry_delay_seconds is not None:
        delay = duration_pb2.Duration()
        # Rounded up: a client that waits exactly this long must not be refused again.
        delay.FromNanoseconds(math.ceil(retry_delay_seconds * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    return _status(code, message, details)


def error_info(error: errors.DomainError) -> error_details_pb2.ErrorInfo:
    metadata = dict(error.metadata)
    if error.field:
        metadata["field"] = error.field
    return error_details_pb2.ErrorInfo(reason=error.reason, domain=error_domain, metadata=metadata)


def _bad_request(error: errors.DomainError) -> error_details_pb2.BadRequest:
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=error.field or "", description=error.message, reason=error.reason
    )
    return error_details_pb2.BadRequest(field_violations=[violation])


def _precondition_failure(error: errors.DomainError) -> error_details_pb2.PreconditionFailure:
    subject = next(
        (
            f"{collection}/{error.metadata[key]}"
            for key, collection in _subjects
            if key in error.metadata
        ),
        "",
    )
    violation = error_details_pb2.PreconditionFailure.Violation(
        type=error.reason, subject=subject, description=error.message
    )
    return error_details_pb2.PreconditionFailure(violations=[violation])


def _status(code: grpc.StatusCode, message: str, details: list[Message]) -> grpc.Status:
    packed = []
    for detail in details:
        envelope = any_pb2.Any()
        envelope.Pack(detail)
        packed.append(envelope)
    return rpc_status.to_status(
        status_pb2.Status(code=code_number(code), message=message, details=packed)
    )
