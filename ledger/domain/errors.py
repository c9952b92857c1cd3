"""Named domain errors: each carries an UPPER_SNAKE reason a caller can act on."""

from __future__ import annotations

from collections.abc import Mapping


class DomainError(Exception):
    """An expected, named refusal; nothing was changed."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        field: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field
        self.metadata: dict[str, str] = dict(metadata or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, DomainError)
            and (other.reason, other.message, other.field, other.metadata)
            == (self.reason, self.message, self.field, self.metadata)
        )

    def __hash__(self) -> int:
        return hash((type(self), self.reason, self.message))


class InvalidInput(DomainError):
    """The request itself is malformed or out of bounds (INVALID_ARGUMENT)."""


class NotFound(DomainError):
    """A named bank, account or transfer does not exist (NOT_FOUND)."""


class PreconditionFailed(DomainError):
    """The request is well formed but the ledger's state refuses it (FAILED_PRECONDITION)."""


class IdConflict(DomainError):
    """A client id was reused with different content (ALREADY_EXISTS)."""


class WriteConflict(DomainError):
    """Another writer committed to the same bank first (ABORTED); retry with the same id."""


class Unavailable(DomainError):
    """The commit failed or the writer takes no work (UNAVAILABLE); retry with the same id."""


class Overloaded(DomainError):
    """Too much work is queued for this bank (RESOURCE_EXHAUSTED); retry later."""


class Forbidden(DomainError):
    """The caller's role may not do this (PERMISSION_DENIED)."""


class ConsentRequired(Forbidden):
    """The caller may not do this to a member's account without that member's token
    (PERMISSION_DENIED)."""


class QuotaReached(DomainError):
    """A bound on what a bank or a key may hold was reached (RESOURCE_EXHAUSTED)."""


class HistoryDamaged(DomainError):
    """A bank's stored history does not verify (DATA_LOSS); an operator must look at it."""
