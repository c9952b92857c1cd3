"""Opaque page tokens and page sizes for paginated lists (AIP-158)."""

from __future__ import annotations

import base64
import binascii

from ledger.domain import limits
from ledger.domain.errors import InvalidInput


def page_size(requested: int) -> int:
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
