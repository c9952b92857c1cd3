"""Logs stay bounded and one event stays one line, whatever a client sends."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from ledger import logs

# Characters json.dumps(ensure_ascii=False) leaves raw that a reader may take as a line
# break (U+2028, U+2029, U+0085 NEL), a terminal control (U+009B CSI, other C1, DEL) or a
# display trick (bidirectional overrides).
line_breakers = "\u2028\u2029\u0085\u009b\u0080\u009f\u007f\u202e\u2066"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines into a string, as `serve` writes to stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure("DEBUG", stream)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_a_4_mb_value_writes_a_bounded_line(stream: io.StringIO) -> None:
    log = logging.getLogger("test")
    huge = "x" * (4 * 1024 * 1024)
    with logs.bound(bank_id=huge):
        logs.event(log, "call_refused", requested_bank_id=huge, ids=[huge] * 1000)
    written = stream.getvalue()
    assert len(written) < 64 * 1024
    [line] = lines(stream)
    # Cut to the named length, and saying how long it was.
    assert line["bank_id"] == "x" * logs.log_value_length_max + f"…[{len(huge)} chars]"
    assert line["requested_bank_id"] == line["bank_id"]
    ids = line["ids"]
    assert isinstance(ids, list)
    assert len(ids) == logs.log_items_max + 1
    assert ids[-1] == f"… {1000 - logs.log_items_max} more"


def test_line_breaking_and_control_characters_are_escaped(stream: io.StringIO) -> None:
    log = logging.getLogger("test")
    text = f"a{line_breakers}b\n\r\t\x00\x1b[31mred"
    logs.event(log, "odd_text", memo=text)
    written = stream.getvalue()
    # One line, in which none of those characters appears raw...
    assert written.count("\n") == 1
    assert written.splitlines() == [written[:-1]]
    assert not any(character in written for character in line_breakers + "\r\x00\x1b")
    assert "\\u2028" in written
    assert "\\u0085" in written
    assert "\\u009b" in written
    # ...and which reads back as exactly what was logged.
    [line] = lines(stream)
    assert line["memo"] == text


def test_lone_surrogates_neither_break_the_stream_nor_the_line(stream: io.StringIO) -> None:
    log = logging.getLogger("test")
    logs.event(log, "odd_text", bank_id="\udb80x")
    [line] = lines(stream)
    assert line["bank_id"] == "\udb80x"
    stream.getvalue().encode("utf-8")  # would raise with a raw surrogate


def test_messages_tracebacks_and_odd_values_are_bounded(stream: io.StringIO) -> None:
    log = logging.getLogger("test")
    # A library's message quoting a client's value, and an exception carrying it.
    huge = "y" * 1_000_000
    log.warning("Exception calling application: %s", huge)
    try:
        raise ValueError(f"bad bank id {huge}")
    except ValueError:
        log.exception("failed")
    logs.event(
        log,
        "values",
        big_int=10**5000,
        nan=float("nan"),
        body=b"\xff" * 1_000_000,
        nested={"a": {"b": {"c": {"d": {"e": huge}}}}},
    )
    warning, failure, values = lines(stream)
    assert isinstance(warning["event"], str)
    assert len(warning["event"]) < logs.log_message_length_max + 50
    traceback = failure["traceback"]
    assert isinstance(traceback, str)
    assert len(traceback) < logs.log_traceback_length_max + 50
    # The exception's line is there, cut to the message length.
    assert re.search(r"ValueError: bad bank id y+…\[1000024 chars\]$", traceback)
    assert values["big_int"] == "<int of 16610 bits>"
    assert values["nan"] == "nan"  # JSON has no NaN
    assert isinstance(values["body"], str)
    assert len(values["body"]) < logs.log_value_length_max + 50
    assert len(json.dumps(values["nested"])) < logs.log_value_length_max + 100


def test_escape_line_keeps_valid_json_inside_strings_with_backslashes() -> None:
    value = "\\\u2028\\\\\u0085"
    escaped = logs.escape_line(json.dumps({"v": value}, ensure_ascii=False))
    assert json.loads(escaped) == {"v": value}
    assert "\u2028" not in escaped
