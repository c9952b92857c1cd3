"""The authenticated caller of the current call, set by the interceptor for the servicer."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ledger.security.roles import Role


@dataclass(frozen=True)
class Caller:
    """Who makes the call: the API key (its role and scope) and the consenting member, if any."""

    key_id: str
    role: Role
    bank_id: str  # "" for the deployment's scope (operator keys)
    member_subject: str | None = None

    @property
    def actor(self) -> str:
        """What events record as their actor: `key:<key id>` or `key:<key id>/member:<sub>`."""
        actor = f"key:{self.key_id}"
        return actor if self.member_subject is None else f"{actor}/member:{self.member_subject}"


_current: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "ledger_caller", default=None
)


def current_caller() -> Caller:
    """The caller of the call being served; only the interceptor (or acting_as) sets one."""
    caller = _current.get()
    assert caller is not None, "no caller: the call did not pass the security interceptor"
    return caller


def context_with(caller: Caller) -> contextvars.Context:
    """A copy of the current context in which current_caller() is `caller`.

    The interceptor runs the servicer in it (`context.run(...)`), and each step of a
    streaming response too, so the caller is visible wherever the servicer's code runs and
    never outlives the call in a reused worker thread.
    """
    context = contextvars.copy_context()
    context.run(_current.set, caller)
    return context


@contextmanager
def acting_as(caller: Caller) -> Iterator[Caller]:
    """Sets the caller for a block: for tools (the CLI acting as the operator) and tests."""
    token = _current.set(caller)
    try:
        yield caller
    finally:
        _current.reset(token)
