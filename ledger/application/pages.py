"""Opaque page tokens and page sizes for paginated lists (AIP-158)."""

from __future__ import annotations

import base64
import binascii
import hashlib

from ledger.domain import limits
from ledger.domain.errors import InvalidInput


def page_size(requested: int) -> int:
    """One rule for every list (AIP-158), stated in the protos: 0 means the default, more
    than the maximum means the maximum, and a negative size is INVALID_ARGUMENT."""
    if requested < 0:
        raise InvalidInput("INVALID_PAGE_SIZE", "page_size must not be negative", field="page_size")
    if requested == 0:
        return limits.page_size_default
    return min(requested, limits.page_size_max)


def encode_token(kind: str, position: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{position}".encode()).decode().rstrip("=")


# No position is larger: a token naming one was not made by a list of ours.
_position_max = 2**62


def bad_token() -> InvalidInput:
    return InvalidInput(
        "INVALID_PAGE_TOKEN", "page_token is not one this list returned", field="page_token"
    )


def decode_token(kind: str, token: str) -> int | None:
    """The position a token points at, or None for the first page."""
    if not token:
        return None
    bad = bad_token()
    if len(token) > 64:
        raise bad
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    token_kind, _, number = text.partition(":")
    if token_kind != kind or not (number.isascii() and number.isdigit()):
        raise bad
    position = int(number)
    if position > _position_max:
        raise bad
    return position


# ----------------------------------------------------------------- filtered lists (issue 12)


def bound_kind(kind: str, *request: object) -> str:
    """A token kind bound to a list's filter: a token of the same list with another filter
    is refused (AIP-158: the other fields of the request must stay as they were)."""
    if not any(part is not None for part in request):
        return kind
    digest = hashlib.sha256(repr(request).encode("utf-8")).hexdigest()[:10]
    return f"{kind}{digest}"


# Text cursors (bank ids) are ids: at most limits.id_length_max characters.
_text_token_length_max = 4 * (limits.id_length_max + 16) // 3 + 4


def encode_text_token(kind: str, text: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{text}".encode()).decode().rstrip("=")


def decode_text_token(kind: str, token: str) -> str | None:
    """The id a text token continues after, or None for the first page."""
    if not token:
        return None
    bad = bad_token()
    if len(token) > _text_token_length_max:
        raise bad
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    token_kind, _, after = text.partition(":")
    if token_kind != kind or not after or len(after) > limits.id_length_max:
        raise bad
    return after
