"""Structured logs: one JSON object per line, a constant event name plus key=value fields.

    log = logging.getLogger(__name__)
    with logs.bound(rpc="CreateTransfer", bank_id="riverside"):
        logs.event(log, "rpc_refused", reason="EXCEEDS_LOWER_LIMIT")

prints `{"time": ..., "level": "info", "logger": ..., "event": "rpc_refused",
"rpc": "CreateTransfer", "bank_id": "riverside", "reason": "EXCEEDS_LOWER_LIMIT"}`.
Fields bound with `bound()` are added to every line logged inside the block, in this thread.

What is logged may come from a client, so it is bounded and kept on one line: a value is
cut to `log_value_length_max` characters (a message to `log_message_length_max`, a
traceback to `log_traceback_length_max`), collections to `log_items_max` items, and
characters that could end or disguise a line (U+2028, U+2029, C1 controls such as U+0085
and U+009B, DEL, bidirectional overrides, lone surrogates) are written as \\uXXXX escapes,
which json.dumps(ensure_ascii=False) leaves raw.
"""

from __future__ import annotations

import json
import logging
import math
import re
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

log_value_length_max = 512
log_message_length_max = 4096
log_traceback_length_max = 16_384
log_items_max = 32  # of a list or dict logged as a value
_log_nesting_max = 4  # deeper structures are logged as their (cut) text
_int_bits_max = 256  # str() of a huge int is slow (and refused past 4300 digits)

# Characters JSON may carry raw that a reader could take as a line break or a display
# control: DEL and C1 controls, U+061C, LRM/RLM, U+2028/U+2029, bidirectional embeddings,
# overrides and isolates, and lone surrogates (which no UTF-8 stream can even encode).
_unsafe_re = re.compile(r"[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")

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
            "event": _cut(record.getMessage(), log_message_length_max),
        }
        fields: dict[str, object] = {**_bound_fields.get(), **getattr(record, "fields", {})}
        fields.update(
            (key, value)
            for key, value in vars(record).items()
            if key not in _record_attributes and key != "fields"
        )
        line.update(
            (_cut(key, log_value_length_max), bounded(value)) for key, value in fields.items()
        )
        if record.exc_info:
            # Each line is cut (an exception's message may quote a huge value); then, if
            # still too long, the start goes: the end holds the exception itself.
            text = "\n".join(
                _cut(part, log_message_length_max)
                for part in self.formatException(record.exc_info).split("\n")
            )
            line["traceback"] = _cut_start(text, log_traceback_length_max)
        return escape_line(json.dumps(line, default=str, ensure_ascii=False))


def bounded(value: object, depth: int = 0) -> object:
    """`value` as logged: text cut to log_value_length_max, collections to log_items_max."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no NaN or Infinity
    if isinstance(value, int):
        bits = value.bit_length()
        return value if bits <= _int_bits_max else f"<int of {bits} bits>"
    if isinstance(value, str):
        return _cut(value, log_value_length_max)
    if depth < _log_nesting_max:
        if isinstance(value, Mapping):
            items = list(value.items())
            bounded_items = {
                _cut(str(key), log_value_length_max): bounded(item, depth + 1)
                for key, item in items[:log_items_max]
            }
            if len(items) > log_items_max:
                bounded_items["…"] = f"{len(items) - log_items_max} more"
            return bounded_items
        if isinstance(value, list | tuple | set | frozenset):
            elements = [bounded(item, depth + 1) for item in list(value)[:log_items_max]]
            if len(value) > log_items_max:
                elements.append(f"… {len(value) - log_items_max} more")
            return elements
    return _cut(_text(value), log_value_length_max)


def escape_line(text: str) -> str:
    """JSON text with every character that could break or disguise a line as a \\u escape.

    Safe on any JSON text: outside strings JSON is ASCII, and inside them \\uXXXX reads back
    as the same character.
    """
    return _unsafe_re.sub(lambda match: f"\\u{ord(match[0]):04x}", text)


def _cut(text: str, length_max: int) -> str:
    if len(text) <= length_max:
        return text
    return f"{text[:length_max]}…[{len(text)} chars]"


def _cut_start(text: str, length_max: int) -> str:
    if len(text) <= length_max:
        return text
    return f"[{len(text)} chars]…{text[-length_max:]}"


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        # Not decoded whole: a 4 MB body must not become a 4 MB string first.
        return repr(bytes(value[: log_value_length_max + 1]))
    try:
        return str(value)
    except Exception as error:  # a broken __str__ must not lose the log line
        return f"<{type(value).__name__}: str() failed: {type(error).__name__}>"


def configure(level: str, stream: TextIO | None = None) -> None:
    """Sends every log record, ours and the libraries', to stream as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
