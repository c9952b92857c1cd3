"""Structured logs: one JSON object per line, a constant event name plus key=value fields.

    log = logging.getLogger(__name__)
    with logs.bound(rpc="CreateTransfer", bank_id="riverside"):
        logs.event(log, "rpc_refused", reason="EXCEEDS_LOWER_LIMIT")

prints `{"time": ..., "level": "info", "logger": ..., "event": "rpc_refused",
"rpc": "CreateTransfer", "bank_id": "riverside", "reason": "EXCEEDS_LOWER_LIMIT"}`.
Fields bound with `bound()` are added to every line logged inside the block, in this thread.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TextIO

_bound_fields: ContextVar[Mapping[str, object]] = ContextVar(
    "log_bound_fields", default=MappingProxyType({})
)

# Attributes every LogRecord has; anything else passed as `extra` is a field of the event.
_record_attributes = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    """Adds fields to every line logged inside the block (the request id of a call, say)."""
    token = _bound_fields.set({**_bound_fields.get(), **fields})
    try:
        yield
    finally:
        _bound_fields.reset(token)


def event(
    logger: logging.Logger,
    name: str,
    *,
    level: int = logging.INFO,
    exc_info: bool = False,
    **fields: object,
) -> None:
    """Logs the constant event `name` with key=value fields."""
    logger.log(level, name, exc_info=exc_info, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, event, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(_bound_fields.get())
        line.update(getattr(record, "fields", {}))
        line.update(
            (key, value)
            for key, value in vars(record).items()
            if key not in _record_attributes and key != "fields"
        )
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(level: str, stream: TextIO | None = None) -> None:
    """Sends every log record, ours and the libraries', to stream as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
