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


class NotCanonicalError(ValueError):
    """A value that has no canonical JSON form (a float, a lone surrogate, a huge integer)."""


def encode(value: Any) -> bytes:
    """The RFC 8785 canonical JSON bytes of `value` (UTF-8)."""
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


def decode(data: bytes) -> Any:
    """Parse canonical JSON bytes; NotCanonicalError if they are not exactly canonical.

    Re-encoding and comparing catches every way a row can be valid JSON and still not be
    what was hashed: whitespace, key order, escapes, duplicate keys, number forms.
    """
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NotCanonicalError(f"not JSON: {error}") from None
    if encode(value) != data:
        raise NotCanonicalError("the bytes are JSON but not in canonical form")
    return value


def decode_trusted(data: bytes) -> Any:
    """Parse bytes this ledger wrote itself (its own store, after the chain was checked)."""
    return json.loads(data)
