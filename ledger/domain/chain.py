"""The hash chain over a bank's events (history format v2): each hash covers the stored bytes.

    stored bytes = canonical JSON (RFC 8785) of
                   {"bank": <bank UUID>, "version": <1, 2, ...>, "type": <event type name>,
                    "timestamp": <ISO 8601 UTC, microseconds>, "fields": {<the event's fields>}}
    chain_hash   = sha256( bytes.fromhex(previous chain_hash) || stored bytes ).hexdigest()

with 64 zeros as the previous hash of event 1. The bytes hashed are the bytes stored, so a row
can be checked with sha256 and a JSON parser alone (docs/history-format.md).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ledger.domain import canonical

FORMAT_VERSION = 2
GENESIS_HASH = "0" * 64


# A batch writes the same moment on every row it records (7% of a batch's writer time in
# the py-spy profile of load_tests/RESULTS.md): the last few are kept.
@functools.lru_cache(maxsize=64)
def timestamp_text(moment: datetime) -> str:
    """How an event's time is written: ISO 8601 in UTC with microseconds and +00:00."""
    offset = moment.utcoffset()
    assert offset is not None, f"{moment!r} has no time zone"
    assert not offset, f"{moment!r} is not UTC"
    return moment.isoformat(timespec="microseconds")


def event_bytes(
    bank_uuid: str, version: int, event_type: str, timestamp: datetime, fields: Mapping[str, Any]
) -> bytes:
    """The stored (and hashed) bytes of one event."""
    body = {
        "bank": bank_uuid,
        "version": version,
        "type": event_type,
        "timestamp": timestamp_text(timestamp),
        "fields": fields,
    }
    return canonical.encode(body)


def next_hash(previous_hash: str, stored: bytes) -> str:
    """The chain hash of an event whose stored bytes are `stored`, after `previous_hash`."""
    digest = hashlib.sha256(bytes.fromhex(previous_hash))
    digest.update(stored)
    return digest.hexdigest()
