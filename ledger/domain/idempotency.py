"""Idempotency: a retry of a client-chosen id returns the first result; other content is refused.

Every write carries an id that is unique within its bank and kept forever (account, transfer
and request ids, and bank ids). A command whose id was used before is compared, field by
field, with the content recorded the first time; the first field that differs is named in
the ALREADY_EXISTS reason (EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES, ...), as TigerBeetle's
`exists_with_different_*` results do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ledger.domain.batch import Batch
from ledger.domain.commands import Command
from ledger.domain.errors import IdConflict
from ledger.domain.records import RequestRecord


def first_difference(command: Command, kind: str, content: Mapping[str, Any]) -> str | None:
    """The first content field in which `command` differs from what was recorded, or None."""
    if kind != type(command).__name__:
        return "kind"
    for name, value in command.content().items():
        if content.get(name) != value:
            return name
    return None


def check_retry(command: Command, kind: str, content: Mapping[str, Any]) -> None:
    """Refuse a reused id whose content differs from the first use (ALREADY_EXISTS)."""
    differing = first_difference(command, kind, content)
    if differing is None:
        return
    id_field = command.id_field
    id_value = getattr(command, id_field)
    raise IdConflict(
        f"EXISTS_WITH_DIFFERENT_{differing.upper()}",
        f"{id_field} {id_value!r} was already used with a different {differing}",
        field=differing,
        metadata={id_field: id_value},
    )


def earlier_request(batch: Batch, command: Command) -> RequestRecord | None:
    """The record of an earlier use of the command's request_id, if it was the same command."""
    assert batch.records is not None, "commands run with the records at hand"
    request_id = getattr(command, "request_id")  # noqa: B009 - every request command has one
    earlier = batch.records.request(request_id)
    if earlier is not None:
        check_retry(command, earlier.kind, earlier.content)
    return earlier
