"""The hash chain over a bank's events: each event's hash covers its content and the hash before it.

Format (version 1), fixed because auditors and federation peers recompute it:

    chain_hash = sha256( bytes.fromhex(previous_chain_hash) || canonical_json(body) ).hexdigest()

where the previous hash of the first event is 64 zeros, and `body` is the JSON object
{"bank": <bank aggregate UUID>, "version": <event number, from 1>, "type": <event class name>,
 "timestamp": <ISO 8601 UTC with microseconds>, "fields": {<the event's own fields>}},
serialised with sorted keys, no whitespace, UTF-8, non-ASCII kept as is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

GENESIS_HASH = "0" * 64


def canonical_body(
    bank_uuid: str, version: int, event_type: str, timestamp: datetime, fields: Mapping[str, Any]
) -> bytes:
    body = {
        "bank": bank_uuid,
        "version": version,
        "type": event_type,
        "timestamp": timestamp.isoformat(timespec="microseconds"),
        "fields": dict(fields),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def next_hash(
    previous_hash: str,
    bank_uuid: str,
    version: int,
    event_type: str,
    timestamp: datetime,
    fields: Mapping[str, Any],
) -> str:
    digest = hashlib.sha256(bytes.fromhex(previous_hash))
    digest.update(canonical_body(bank_uuid, version, event_type, timestamp, fields))
    return digest.hexdigest()
