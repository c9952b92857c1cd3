"""Named refusals at the edge, each with its status code and one UPPER_SNAKE reason."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import ClassVar

import grpc


class Reason(StrEnum):
    """Every reason the edge refuses a call with, in the order the checks run."""

    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"  # the method has no rule: denied by default
    SERVER_BUSY = "SERVER_BUSY"  # the server has as many calls in flight as it admits
    API_KEY_MISSING = "API_KEY_MISSING"
    API_KEY_MALFORMED = "API_KEY_MALFORMED"
    API_KEY_INVALID = "API_KEY_INVALID"  # unknown key id or wrong secret, told apart to no one
    API_KEY_REVOKED = "API_KEY_REVOKED"
    API_KEY_EXPIRED = "API_KEY_EXPIRED"
    # The key's request rate here; its calls in flight are checked last, once the call is
    # known to be admissible, so a refused call never holds one of them.
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    ROLE_NOT_ALLOWED = "ROLE_NOT_ALLOWED"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"  # the body is not a valid message of its type
    BANK_OUT_OF_SCOPE = "BANK_OUT_OF_SCOPE"
    MEMBER_TOKEN_NOT_APPLICABLE = "MEMBER_TOKEN_NOT_APPLICABLE"  # on a deployment-wide call
    MEMBER_TOKEN_MALFORMED = "MEMBER_TOKEN_MALFORMED"
    MEMBER_TOKEN_ALGORITHM_NOT_ALLOWED = "MEMBER_TOKEN_ALGORITHM_NOT_ALLOWED"
    MEMBER_TOKEN_UNKNOWN_KEY = "MEMBER_TOKEN_UNKNOWN_KEY"
    MEMBER_TOKEN_BAD_SIGNATURE = "MEMBER_TOKEN_BAD_SIGNATURE"
    MEMBER_TOKEN_WRONG_BANK = "MEMBER_TOKEN_WRONG_BANK"
    MEMBER_TOKEN_EXPIRED = "MEMBER_TOKEN_EXPIRED"
    MEMBER_TOKEN_NOT_YET_VALID = "MEMBER_TOKEN_NOT_YET_VALID"
    MEMBER_TOKEN_LIFETIME_TOO_LONG = "MEMBER_TOKEN_LIFETIME_TOO_LONG"
    # Raised by the read side, not the interceptor: too many reads wait for min_position.
    READS_WAITING_MAX_REACHED = "READS_WAITING_MAX_REACHED"


class SecurityError(Exception):
    """A call refused at the edge; nothing was read or changed.

    `metadata` goes to the client in the ErrorInfo; `log_fields` only to the log (they may
    hold what the client sent, which is never echoed back).
    """

    code: ClassVar[grpc.StatusCode]

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        retry_delay_seconds: float | None = None,
        log_fields: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_delay_seconds = retry_delay_seconds
        self.log_fields: dict[str, object] = dict(log_fields or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason.value!r}, {self.message!r})"


class Unauthenticated(SecurityError):
    """No credential, or one that does not prove who the caller is."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(SecurityError):
    """The caller is known but may not make this call (never NOT_FOUND: nothing leaks)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class InvalidRequest(SecurityError):
    """The request cannot be read as what the method takes."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(SecurityError):
    """A quota or size limit; `retry_delay_seconds` says when a retry may succeed, if ever."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
