"""Canonical JSON (RFC 8785, the JSON Canonicalization Scheme): the one byte form of every event.

Each event is stored, hashed and exported as exactly these bytes, so anyone holding a stored
row can check its hash with sha256 and a JSON parser. Values are what JSON and the ledger
need: dicts with string keys, lists, strings, booleans, None and integers within
±(2**53 - 1) (the domain's bounds keep every amount and limit far inside that). No event
holds a float (amounts are whole minutes; the verifier's schema checks refuse one).

The fast path is the standard library's C encoder with sorted keys and no whitespace. It
differs from RFC 8785 only in how keys are ordered: Python sorts by code point, RFC 8785 by
UTF-16 code unit, and the two orders disagree only between a character above U+FFFF and one
in U+E000..U+FFFF. Text with no character from U+E000 up is therefore encoded by the fast
path; anything else goes through the `rfc8785` package (a pure-Python reference
implementation), which also checks the integer range.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

# The first character whose presence could make code point and UTF-16 key orders differ.
_FAST_PATH_CHAR_LIMIT = "\ue000"
# The integers JSON (an IEEE 754 double) holds exactly; RFC 8785 refuses any other.
SAFE_INTEGER_MAX = 2**53 - 1


class NotCanonicalError(ValueError):
    """A value that has no canonical JSON form (a float, a lone surrogate, a huge integer)."""


def encode(value: Any) -> bytes:
    """The RFC 8785 canonical JSON bytes of `value` (UTF-8)."""
    _check_values(value)
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as error:
        raise NotCanonicalError(str(error)) from None
    if text.isascii() or max(text) < _FAST_PATH_CHAR_LIMIT:
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate in some string
            raise NotCanonicalError(str(error)) from None
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError, TypeError) as error:
        raise NotCanonicalError(str(error)) from None


def _check_values(value: Any) -> None:
    """NotCanonicalError unless `value` holds only what a history may: objects with string
    keys, arrays, strings, booleans, null and integers within ±(2**53 - 1); no float.

    The standard library's encoder would write a float (`1.0`, not RFC 8785's `1`) and an
    integer of any size, and turn integer keys into strings, so this is checked first. The
    common cases (plain strings, booleans, None and small integers) are tested inline.
    """
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                raise NotCanonicalError(f"object key {key!r} is not a string")
            item_kind = type(item)
            if item_kind is int:
                if not -SAFE_INTEGER_MAX <= item <= SAFE_INTEGER_MAX:
                    raise NotCanonicalError(f"integer {item} is outside ±(2**53 - 1)")
            elif item_kind not in _PLAIN:
                _check_values(item)
    elif kind is list or kind is tuple:
        for item in value:
            if type(item) not in _PLAIN:
                _check_values(item)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, int):
        if not -SAFE_INTEGER_MAX <= value <= SAFE_INTEGER_MAX:
            raise NotCanonicalError(f"integer {value} is outside ±(2**53 - 1)")
    else:
        raise NotCanonicalError(f"{kind.__name__} has no canonical form in this history")


# Values with nothing to check.
_PLAIN = frozenset({str, bool, type(None)})


def _refuse_number(text: str) -> Any:
    raise NotCanonicalError(f"{text} is not an integer")


def decode(data: bytes) -> Any:
    """Parse canonical JSON bytes; NotCanonicalError if they are not exactly canonical.

    Re-encoding and comparing catches every way a row can be valid JSON and still not be
    what was hashed: whitespace, key order, escapes, duplicate keys, number forms.
    """
    try:
        value = json.loads(data, parse_float=_refuse_number, parse_constant=_refuse_number)
    except NotCanonicalError:
        raise
    except (ValueError, RecursionError) as error:  # not JSON, or past the parser's limits
        raise NotCanonicalError(f"not JSON: {error}") from None
    if encode(value) != data:
        raise NotCanonicalError("the bytes are JSON but not in canonical form")
    return value


def decode_trusted(data: bytes) -> Any:
    """Parse bytes this ledger wrote itself (its own store, after the chain was checked)."""
    return json.loads(data)
