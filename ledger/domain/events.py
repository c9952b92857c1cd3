"""Events: what happened to a bank, by type name, and how each changes the decision state.

Every event type is a frozen dataclass registered under a stable name (`TYPE`), the name the
history stores; module moves and renames of classes never change it. `apply()` is all that
replaying a history runs: the same method changes the state when a command records the
event and when the event is read back from the store.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from ledger.domain.batch import Batch


class Event:
    """Base of every event type."""

    TYPE: ClassVar[str] = ""
    __slots__ = ()

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        raise NotImplementedError

    def fields(self) -> dict[str, Any]:
        """The event's own fields, as stored (JSON values)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def changes(self) -> int:
        """How many changes it makes (a grouped event: one per item); snapshots count them."""
        return 1


EventClass = TypeVar("EventClass", bound=type[Event])

_types: dict[str, type[Event]] = {}


def event_type(cls: EventClass) -> EventClass:
    """Registers an event class under its TYPE name (a class decorator)."""
    assert cls.TYPE, f"{cls.__name__} has no TYPE"
    assert cls.TYPE not in _types, f"event type {cls.TYPE} registered twice"
    _types[cls.TYPE] = cls
    return cls


def type_named(name: str) -> type[Event] | None:
    return _types.get(name)


def type_names() -> tuple[str, ...]:
    return tuple(_types)
