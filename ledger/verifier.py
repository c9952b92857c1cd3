"""The offline verifier of a bank's history: a reference implementation for auditors.

Everything an auditor needs to check a bank without trusting the ledger's server or its
database is here, in one module that imports nothing of the project: the standard library,
`cryptography` (Ed25519 signatures of checkpoints) and, for the gRPC form only, the
generated messages of `timebank/ledger/v1/audit.proto`. docs/verifier.md walks through it
for anyone writing one in another language; docs/history-format.md defines the bytes.

From the stored rows alone (each event's bytes exactly as hashed, and the chain hash kept
for it) it checks, event by event:

- the history (invariant 4): versions 1, 2, 3, ... with none missing, repeated or out of
  order; each row's bytes are the canonical JSON (RFC 8785) of what they hold; each chain
  hash is sha256(previous hash || bytes); timestamps never go backwards;
- every balance and hold, recomputed from the events' fields (nothing read from a view);
- invariants 1 to 3 after every event (and after every transfer of a grouped event):
  balances sum to zero, posted and posted-plus-pending balances within limits, a pending
  transfer resolves at most once; and the references events make (accounts, transfers,
  reversals, request ids, keys);
- signed checkpoints: each signature (Ed25519, by a public key the auditor was given, named
  by its key id) over the canonical JSON of {bank, position, chain_head, time, key_id}, and
  that the history recomputed here has that chain head at that position; likewise any chain
  head the auditor saved earlier (`--expect-head POSITION:HASH`). Someone who can rewrite
  the database can recompute the whole chain; only a signature they cannot make, or a head
  kept elsewhere, catches that.

Use: `Verifier(bank_uuid, public_keys=...)`, then `add_checkpoint()` / `expect_head()`,
`feed_stored(bytes, chain_hash)` for each row oldest first, `finish()`, `report()`. Or one
of the sources: `verify_export(path)` (a file written by `timebank-ledger export`) and
`verify_server(channel, bank_id, api_key)` (AuditService over any gRPC channel; the caller
makes the channel, with TLS, so this module needs no gRPC runtime of its own). Run as
`python -m ledger.verifier --file EXPORT [--public-key PEM]... [--expect-head P:HASH]...`.

A problem in the data is reported with its position (the event's version), never raised;
after a problem the verifier carries on, so one bad row does not hide the next.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import hashlib
import json
import re
import sys
import types
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# A corrupt history could break every event; keep the first ones and count the rest.
violations_kept_max: Final = 1_000

_hash_re = re.compile(r"^[0-9a-f]{64}$")
# The previous hash of a bank's first event.
GENESIS_HASH: Final = "0" * 64


class Reason(StrEnum):
    """Why an event is reported, grouped by what it breaks."""

    # Invariant 4: the history is complete, in order, unmodified and hash-chained.
    MALFORMED_EVENT = "MALFORMED_EVENT"
    NOT_CANONICAL = "NOT_CANONICAL"
    WRONG_BANK = "WRONG_BANK"
    VERSION_GAP = "VERSION_GAP"
    VERSION_OUT_OF_ORDER = "VERSION_OUT_OF_ORDER"
    CHAIN_BROKEN = "CHAIN_BROKEN"
    TIMESTAMP_WENT_BACKWARDS = "TIMESTAMP_WENT_BACKWARDS"
    UNKNOWN_EVENT_TYPE = "UNKNOWN_EVENT_TYPE"
    # The content refers to things that exist, once, with sensible amounts.
    NOT_CREATED_FIRST = "NOT_CREATED_FIRST"
    CREATED_TWICE = "CREATED_TWICE"
    DUPLICATE_ACCOUNT = "DUPLICATE_ACCOUNT"
    DUPLICATE_TRANSFER_ID = "DUPLICATE_TRANSFER_ID"
    DUPLICATE_REQUEST_ID = "DUPLICATE_REQUEST_ID"
    UNKNOWN_ACCOUNT = "UNKNOWN_ACCOUNT"
    UNKNOWN_TRANSFER = "UNKNOWN_TRANSFER"
    SAME_ACCOUNT = "SAME_ACCOUNT"
    AMOUNT_NOT_POSITIVE = "AMOUNT_NOT_POSITIVE"
    INVALID_LIMIT = "INVALID_LIMIT"
    INVALID_STATUS = "INVALID_STATUS"
    CLOSED_ACCOUNT_NOT_EMPTY = "CLOSED_ACCOUNT_NOT_EMPTY"
    CLOSED_ACCOUNT_CHANGED = "CLOSED_ACCOUNT_CHANGED"
    # Invariant 1: within a bank, the sum of all balances is zero.
    BALANCES_DO_NOT_SUM_TO_ZERO = "BALANCES_DO_NOT_SUM_TO_ZERO"
    # Invariant 2: posted and posted-plus-pending balances within limits.
    NEGATIVE_PENDING = "NEGATIVE_PENDING"
    EXCEEDS_LOWER_LIMIT = "EXCEEDS_LOWER_LIMIT"
    EXCEEDS_UPPER_LIMIT = "EXCEEDS_UPPER_LIMIT"
    # Invariant 3: a pending transfer resolves at most once, as its terms allow.
    NOT_A_PENDING_TRANSFER = "NOT_A_PENDING_TRANSFER"
    PENDING_ALREADY_RESOLVED = "PENDING_ALREADY_RESOLVED"
    POSTED_AMOUNT_INVALID = "POSTED_AMOUNT_INVALID"
    EXPIRED_BEFORE_DEADLINE = "EXPIRED_BEFORE_DEADLINE"
    # Reversals undo one posted, non-reversal transfer, at most once, exactly.
    REVERSAL_OF_REVERSAL = "REVERSAL_OF_REVERSAL"
    REVERSAL_OF_UNPOSTED = "REVERSAL_OF_UNPOSTED"
    REVERSED_TWICE = "REVERSED_TWICE"
    REVERSAL_MISMATCH = "REVERSAL_MISMATCH"
    # Access events name keys that exist, once.
    DUPLICATE_KEY = "DUPLICATE_KEY"
    UNKNOWN_KEY = "UNKNOWN_KEY"
    KEY_REVOKED_TWICE = "KEY_REVOKED_TWICE"
    # Pools: each grant within the policy in force when it was requested.
    POOL_FLOOR_BROKEN = "POOL_FLOOR_BROKEN"
    POOL_CAP_EXCEEDED = "POOL_CAP_EXCEEDED"
    # Signed checkpoints and saved heads: what the history must hold at their position.
    CHECKPOINT_SIGNATURE_INVALID = "CHECKPOINT_SIGNATURE_INVALID"
    CHECKPOINT_KEY_UNKNOWN = "CHECKPOINT_KEY_UNKNOWN"
    CHECKPOINT_MALFORMED = "CHECKPOINT_MALFORMED"
    CHECKPOINT_HEAD_MISMATCH = "CHECKPOINT_HEAD_MISMATCH"
    EXPECTED_HEAD_MISMATCH = "EXPECTED_HEAD_MISMATCH"
    # The history ends before a checkpoint or saved head (rows missing at its end).
    HISTORY_ENDS_EARLY = "HISTORY_ENDS_EARLY"
    # A source (an export file, a stream) that is not what it should be.
    SOURCE_MALFORMED = "SOURCE_MALFORMED"


@dataclass(frozen=True, slots=True)
class Violation:
    version: int
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One stored event as the verifier reads it: its bytes, the hash kept for it, and what
    the bytes say (bank, version, type, timestamp, fields)."""

    bank_uuid: str
    version: int
    type: str
    timestamp: datetime
    chain_hash: str
    fields: Mapping[str, Any]
    stored: bytes
    # Whether `stored` is exactly the canonical JSON of what it holds.
    canonical: bool = True

    @classmethod
    def from_stored(cls, stored: bytes, chain_hash: str) -> RecordedEvent:
        """Read a stored row: its bytes and its chain hash. MalformedEventError if the bytes
        are not an event (not JSON, or without a usable bank, version or timestamp)."""
        try:
            text = bytes(stored).decode("utf-8")
            body = _decoder.decode(text)
        except (ValueError, RecursionError) as error:  # not UTF-8 JSON, or past the parser's limits
            raise MalformedEventError(f"not JSON: {error}") from None
        if not isinstance(body, dict):
            raise MalformedEventError("the event is not a JSON object")
        bank, version, kind = body.get("bank"), body.get("version"), body.get("type")
        timestamp_text, fields = body.get("timestamp"), body.get("fields")
        if not isinstance(bank, str):
            raise MalformedEventError(f"bank {bank!r} is not a UUID")
        if type(version) is not int:
            raise MalformedEventError(f"version {version!r} is not an integer")
        if not isinstance(kind, str) or not isinstance(fields, dict):
            raise MalformedEventError(f"event {version} has no type or no fields")
        try:
            timestamp = datetime.fromisoformat(str(timestamp_text))
        except ValueError:
            raise MalformedEventError(f"timestamp {timestamp_text!r} is not ISO 8601") from None
        if timestamp.utcoffset() is None:
            raise MalformedEventError(f"timestamp {timestamp_text!r} has no time zone")
        if timestamp.utcoffset() or timestamp.isoformat(timespec="microseconds") != timestamp_text:
            raise MalformedEventError(
                f"timestamp {timestamp_text!r} is not UTC as 2026-01-31T12:00:00.000000+00:00"
            )
        canonical = _is_canonical(body, text)
        return cls(
            bank_uuid=bank,
            version=version,
            type=kind,
            timestamp=timestamp,
            chain_hash=chain_hash,
            fields=fields,
            stored=bytes(stored),
            canonical=canonical,
        )


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON with the standard library alone (keys in UTF-16 order)."""
    return _canonical_text(value).encode("utf-8")


class _NotANumberOfOurs:
    """What a float, NaN or infinity parses to: the history holds none, and no encoder
    below can write one, so a row holding one is never found canonical."""

    def __init__(self, text: str) -> None:
        self.text = text


_decoder = json.JSONDecoder(parse_float=_NotANumberOfOurs, parse_constant=_NotANumberOfOurs)
# Below this character, sorting keys by code point (Python) and by UTF-16 code unit
# (RFC 8785) agree: they differ only between U+E000..U+FFFF and characters past U+FFFF.
_same_key_order_below = "\ue000"
# A run of this many digits may be an integer past ±(2**53 - 1), which RFC 8785 refuses.
_long_digits = re.compile(r"[0-9]{16}")


def _is_canonical(body: Any, text: str) -> bool:
    """Whether `text` (a row's bytes, decoded) is exactly the RFC 8785 form of `body`, parsed
    from it. The standard library's encoder (keys sorted, no spaces, UTF-8 kept) escapes what
    RFC 8785 escapes the way it does; it is used unless a character from U+E000 up could
    make its key order differ, or a long run of digits could be an integer too large, and the
    encoder above (UTF-16 order, integer range checked) is used then."""
    try:
        if (text.isascii() or max(text) < _same_key_order_below) and not _long_digits.search(text):
            fast = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            return fast == text
        return canonical_json(body) == text.encode("utf-8")
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
        # A float, nesting too deep, a lone surrogate: no canonical form.
        return False


def _canonical_text(value: Any) -> str:
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: str(item[0]).encode("utf-16-be"))
        inner = ",".join(f"{_canonical_text(str(k))}:{_canonical_text(v)}" for k, v in items)
        return "{" + inner + "}"
    if isinstance(value, list):
        return "[" + ",".join(_canonical_text(v) for v in value) + "]"
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        if abs(value) > 2**53 - 1:
            raise ValueError(f"integer {value} is outside JSON's safe range")
        return str(value)
    raise ValueError(f"{type(value).__name__} has no canonical form in this history")


class MalformedEventError(ValueError):
    """An event's envelope (bank, version, timestamp, hash) cannot be read."""


@dataclass(slots=True)
class AccountTotals:
    """An account as recomputed from the events alone."""

    kind: str
    status: str
    lower_limit_minutes: int
    upper_limit_minutes: int | None
    balance_minutes: int = 0
    pending_debit_minutes: int = 0
    pending_credit_minutes: int = 0
    # The exposures when the limits were last set (0 at opening). A limit change never
    # rewrites history: an account already past a new limit may stay there, only no further.
    debit_exposure_at_limit_change_minutes: int = 0
    credit_exposure_at_limit_change_minutes: int = 0

    @property
    def debit_exposure_minutes(self) -> int:
        return self.balance_minutes - self.pending_debit_minutes

    @property
    def credit_exposure_minutes(self) -> int:
        return self.balance_minutes + self.pending_credit_minutes


@dataclass(slots=True)
class TransferTotals:
    """A transfer as recomputed from the events alone."""

    kind: str  # immediate, pending or reversal
    status: str  # pending, posted, voided or expired
    payer_account_id: str
    payee_account_id: str
    amount_minutes: int
    posted_amount_minutes: int
    deadline: datetime | None = None
    reverses_transfer_id: str = ""
    reversed_by_transfer_id: str = ""


@dataclass(frozen=True, slots=True)
class Report:
    bank_uuid: str
    events_checked: int
    # Version of the last event accepted in order, and the chain hash it carries.
    position: int
    chain_head: str
    balances: Mapping[str, int]
    accounts: Mapping[str, AccountTotals]
    transfers: Mapping[str, TransferTotals]
    # The first `violations_kept_max` violations, in the order found; `violation_count` counts all.
    violations: tuple[Violation, ...]
    violation_count: int
    # Signed checkpoints and saved heads compared with the history (and whether the
    # checkpoints' signatures were checked: only with public keys given).
    checkpoints_checked: int = 0
    signatures_checked: bool = False
    heads_checked: int = 0
    # The last event's timestamp as written in the history ("" before the first).
    last_event_at: str = ""

    @property
    def ok(self) -> bool:
        return self.violation_count == 0

    @property
    def first_bad_version(self) -> int | None:
        return min((v.version for v in self.violations), default=None)

    @property
    def balances_digest(self) -> str:
        """sha256 of the balances as canonical JSON: two parties compare one short string."""
        return balances_digest(self.balances)

    def summary(self) -> list[str]:
        """The short report: what was checked and where it ends, or each problem found."""
        lines = [
            f"bank {self.bank_uuid}: {self.events_checked} events, {len(self.transfers)}"
            f" transfers, {len(self.accounts)} accounts",
            f"final head: position {self.position} chain hash {self.chain_head or '-'}",
            f"balances digest: {self.balances_digest}",
            f"checkpoints: {self.checkpoints_checked} checked, signatures "
            + ("checked" if self.signatures_checked else "NOT checked (no public key given)")
            + f"; saved heads: {self.heads_checked} checked",
        ]
        for violation in sorted(self.violations, key=lambda v: v.version):
            lines.append(f"position {violation.version}: {violation.reason} {violation.detail}")
        if self.violation_count > len(self.violations):
            lines.append(f"... and {self.violation_count - len(self.violations)} more")
        first = self.first_bad_version
        lines.append("OK" if self.ok else f"FAILED: first bad position {first}")
        return lines


def balances_digest(balances: Mapping[str, int]) -> str:
    """sha256 (hex) of {account id: balance} as canonical JSON."""
    return hashlib.sha256(canonical_json(dict(balances))).hexdigest()


# The fields the verifier reads from each event type, with their exact types.
_SCHEMAS: Final[Mapping[str, Mapping[str, tuple[type, ...]]]] = {
    "BankCreated": {"bank_id": (str,)},
    "AccountOpened": {
        "account_id": (str,),
        "kind": (str,),
        "lower_limit_minutes": (int,),
        "upper_limit_minutes": (int, types.NoneType),
    },
    "AccountLimitsChanged": {
        "request_id": (str,),
        "account_id": (str,),
        "lower_limit_minutes": (int,),
        "upper_limit_minutes": (int, types.NoneType),
        "update_mask": (list,),
    },
    "AccountStatusChanged": {"request_id": (str,), "account_id": (str,), "status": (str,)},
    # An account's label and tags (issue 12): they move no minutes.
    "AccountMetadataChanged": {
        "request_id": (str,),
        "account_id": (str,),
        "label": (str, types.NoneType),
        "tags": (dict, types.NoneType),
    },
    "TransfersCreated": {"transfers": (list,)},
    "PendingPosted": {"request_id": (str,), "transfer_id": (str,), "posted_amount_minutes": (int,)},
    "PendingVoided": {"request_id": (str,), "transfer_id": (str,)},
    "PendingExpired": {"transfer_id": (str,)},
    "TransferReversed": {
        "transfer_id": (str,),
        "reverses_transfer_id": (str,),
        "payer_account_id": (str,),
        "payee_account_id": (str,),
        "amount_minutes": (int,),
    },
    # Access: who was given a key, and the bank's consent policy. They move no minutes.
    "ApiKeyIssued": {"key_id": (str,), "role": (str,)},
    "ApiKeyRevoked": {"key_id": (str,)},
    "MemberTokenKeyRegistered": {"kid": (str,), "algorithm": (str,), "public_key_pem": (str,)},
    "MemberTokenKeyRemoved": {"kid": (str,)},
    "BankPolicyChanged": {"request_id": (str,), "member_tokens_required": (bool,)},
    # Pools (issue 11): a policy, and grant requests with their decisions. The minutes move
    # in the transfer and hold events around them; these only say what the transfer is.
    "PoolPolicySet": {"request_id": (str,), "pool_account_id": (str,), "policy": (dict,)},
    # Its items follow _GRANT_ITEM_SCHEMA.
    "GrantsRequested": {"grants": (list,)},
    # request_id is "" when the decision settles the request (its hold event has the id).
    "GrantApproved": {"request_id": (str,), "grant_id": (str,), "approver": (str,)},
    "GrantRejected": {"request_id": (str,), "grant_id": (str,), "approver": (str,)},
}

# Each item of a TransfersCreated event.
_TRANSFER_ITEM_SCHEMA: Final[Mapping[str, tuple[type, ...]]] = {
    "transfer_id": (str,),
    "payer_account_id": (str,),
    "payee_account_id": (str,),
    "amount_minutes": (int,),
    "pending": (bool,),
    "deadline": (str,),
}
# Each item of a GrantsRequested event.
_GRANT_ITEM_SCHEMA: Final[Mapping[str, tuple[type, ...]]] = {
    "grant_id": (str,),
    "pool_account_id": (str,),
    "member_account_id": (str,),
    "amount_minutes": (int,),
    "period_day": (str,),
}


def verify(rows: Iterable[tuple[bytes, str]], bank_uuid: UUID | str | None = None) -> Report:
    """Check a whole history given as (stored bytes, chain hash) rows, oldest first."""
    verifier = Verifier(bank_uuid)
    for stored, chain_hash in rows:
        verifier.feed_stored(stored, chain_hash)
    return verifier.report()


# --------------------------------------------------------------------------- signed checkpoints

# What a checkpoint's payload says it is (so its signature can never pass for anything else).
CHECKPOINT_TYPE: Final = "Checkpoint"
_CHECKPOINT_FIELDS: Final = {
    "bank": str,
    "chain_head": str,
    "key_id": str,
    "position": int,
    "time": str,
    "type": str,
}


def checkpoint_payload(
    bank_uuid: str, position: int, chain_head: str, time: str, key_id: str
) -> bytes:
    """The bytes a checkpoint's Ed25519 signature covers: canonical JSON of its fields."""
    return canonical_json(
        {
            "bank": bank_uuid,
            "chain_head": chain_head,
            "key_id": key_id,
            "position": position,
            "time": time,
            "type": CHECKPOINT_TYPE,
        }
    )


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """A signing key's id: the first 16 hex digits of sha256 of its raw 32 bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo); ValueError if it is not one."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def public_keys_by_id(pems: Iterable[bytes]) -> dict[str, Ed25519PublicKey]:
    keys = [load_public_key(pem) for pem in pems]
    return {key_id_of(key): key for key in keys}


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed checkpoint: the exact bytes signed, and the 64-byte Ed25519 signature."""

    payload: bytes
    signature: bytes

    def fields(self) -> dict[str, Any]:
        """What the payload says; ValueError unless it is a canonical checkpoint payload."""
        try:
            body = json.loads(self.payload)
        except (ValueError, RecursionError) as error:
            raise ValueError(f"the payload is not JSON: {error}") from None
        if not isinstance(body, dict) or set(body) != set(_CHECKPOINT_FIELDS):
            raise ValueError(f"the payload has not exactly the fields {sorted(_CHECKPOINT_FIELDS)}")
        for name, kind in _CHECKPOINT_FIELDS.items():
            if type(body[name]) is not kind:
                raise ValueError(f"the payload's {name} is not a {kind.__name__}")
        if body["type"] != CHECKPOINT_TYPE or canonical_json(body) != self.payload:
            raise ValueError("the payload is not a canonical checkpoint")
        return body


@dataclass(frozen=True, slots=True)
class _Expected:
    """A chain head the history must have at a position, and who says so."""

    chain_head: str
    reason: Reason
    source: str


@dataclass(slots=True)
class _Step:
    """What one event did, collected while it is applied and checked afterwards."""

    version: int
    touched: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    # (account, reason) of the limits already reported: a group is checked after each transfer.
    limits_reported: set[tuple[str, Reason]] = field(default_factory=set)


class Verifier:
    """Feed a bank's events in order, from version 1; ask for a report at any point.

    Nothing here reads the Bank aggregate: balances, holds, limits, statuses and the chain are
    recomputed from the events' own fields. A problem in the data is reported, never raised;
    after a problem the verifier carries on, so one bad row does not hide the next.
    """

    def __init__(
        self,
        bank_uuid: UUID | str | None = None,
        *,
        public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    ) -> None:
        self._bank_uuid = str(bank_uuid) if bank_uuid is not None else None
        # Checkpoint signatures are checked against these (key id -> key), if any are given.
        self._public_keys = dict(public_keys or {})
        self._events_checked = 0
        self._position = 0
        # The hash the next event must follow; None after a gap, where it cannot be known.
        self._previous_hash: str | None = GENESIS_HASH
        # The head as stored (the last row's chain hash), and as recomputed from the bytes
        # (None once a gap leaves it unknowable): checkpoints are compared with the latter.
        self._chain_head = ""
        self._computed_head: str | None = GENESIS_HASH
        # Heads the history must have at given positions (checkpoints, saved heads).
        self._expected: dict[int, list[_Expected]] = {}
        self._checkpoints_checked = 0
        self._heads_checked = 0
        self._last_timestamp: datetime | None = None
        self._created = False
        self._accounts: dict[str, AccountTotals] = {}
        self._transfers: dict[str, TransferTotals] = {}
        self._request_ids: set[str] = set()
        self._balance_sum_minutes = 0
        self._violations: list[Violation] = []
        self._violation_count = 0
        self._new: list[Violation] = []
        self._handlers: dict[str, Callable[[RecordedEvent, _Step], None]] = {
            "BankCreated": self._created_event,
            "AccountOpened": self._account_opened,
            "AccountLimitsChanged": self._limits_changed,
            "AccountStatusChanged": self._status_changed,
            "AccountMetadataChanged": self._metadata_changed,
            "TransfersCreated": self._transfers_created,
            "PendingPosted": self._pending_posted,
            "PendingVoided": self._pending_voided,
            "PendingExpired": self._pending_expired,
            "TransferReversed": self._transfer_reversed,
            "ApiKeyIssued": self._key_issued,
            "ApiKeyRevoked": self._key_revoked,
            "MemberTokenKeyRegistered": self._member_token_key_registered,
            "MemberTokenKeyRemoved": self._member_token_key_removed,
            "BankPolicyChanged": self._policy_changed,
            "PoolPolicySet": self._pool_policy_set,
            "GrantsRequested": self._grants_requested,
            "GrantApproved": self._grant_decided,
            "GrantRejected": self._grant_decided,
        }
        # Access: key id -> revoked?, and the member-token keys' ids.
        self._api_keys: dict[str, bool] = {}
        self._member_token_kids: set[str] = set()
        # Ids of the pending transfers not resolved yet.
        self._open_holds: set[str] = set()
        # Pools: each one's policy in force; per (pool, member), its grants (day, grant id).
        self._pool_policies: dict[str, Mapping[str, Any]] = {}
        self._member_grants: dict[tuple[str, str], list[tuple[date, str]]] = {}
        assert set(self._handlers) == set(_SCHEMAS), "every event type needs a schema and a handler"

    # ----------------------------------------------------------------- the stream

    def feed(self, record: RecordedEvent) -> list[Violation]:
        """Check the next stored event; returns what it broke."""
        self._new = []
        self._events_checked += 1
        if self._in_order(record):
            self._check_chain(record)
            self._check_timestamp(record)
            self._apply(record)
            self._check_expected(record.version)
        return self._new

    def report(self) -> Report:
        """Everything recomputed so far (copies: feeding more events does not change it)."""
        return Report(
            bank_uuid=self._bank_uuid or "",
            events_checked=self._events_checked,
            position=self._position,
            chain_head=self._chain_head,
            balances={k: a.balance_minutes for k, a in self._accounts.items()},
            accounts={k: dataclasses.replace(a) for k, a in self._accounts.items()},
            transfers={k: dataclasses.replace(t) for k, t in self._transfers.items()},
            violations=tuple(self._violations),
            violation_count=self._violation_count,
            checkpoints_checked=self._checkpoints_checked,
            signatures_checked=bool(self._public_keys),
            heads_checked=self._heads_checked,
            last_event_at=_time_text(self._last_timestamp),
        )

    @property
    def position(self) -> int:
        """The version of the last event fed in order (0 before the first)."""
        return self._position

    @property
    def computed_head(self) -> str | None:
        """The chain head recomputed from the bytes (None if a gap made it unknowable)."""
        return self._computed_head

    @property
    def violation_count(self) -> int:
        return self._violation_count

    def accounts(self) -> dict[str, AccountTotals]:
        """Every account as recomputed so far (copies), in the order they were opened."""
        return {k: dataclasses.replace(a) for k, a in self._accounts.items()}

    @property
    def state_size(self) -> int:
        """How many accounts and open holds `state()` holds."""
        return len(self._accounts) + len(self._open_holds)

    @property
    def last_timestamp(self) -> datetime | None:
        return self._last_timestamp

    # ----------------------------------------------------------------- checkpoints and heads

    def add_checkpoint(self, checkpoint: Checkpoint) -> list[Violation]:
        """Check a signed checkpoint's signature now, and its chain head when the history
        reaches its position. Give every checkpoint before feeding the events it covers."""
        self._new = []
        try:
            f = checkpoint.fields()
        except ValueError as error:
            self._report(0, Reason.CHECKPOINT_MALFORMED, str(error))
            return self._new
        position, key_id = f["position"], f["key_id"]
        source = f"checkpoint signed by key {key_id} at {f['time']}"
        assert self._bank_uuid is not None, "name the bank before giving checkpoints"
        if f["bank"] != self._bank_uuid or position < 1 or not _hash_re.match(f["chain_head"]):
            self._report(position, Reason.CHECKPOINT_MALFORMED, f"{source}: not of this history")
            return self._new
        assert position > self._position, "checkpoints are given before the events they cover"
        if self._public_keys:
            key = self._public_keys.get(key_id)
            if key is None:
                self._report(position, Reason.CHECKPOINT_KEY_UNKNOWN, f"{source}: unknown key")
                return self._new
            try:
                key.verify(checkpoint.signature, checkpoint.payload)
            except InvalidSignature:
                self._report(
                    position, Reason.CHECKPOINT_SIGNATURE_INVALID, f"{source}: bad signature"
                )
                return self._new
        self._expected.setdefault(position, []).append(
            _Expected(f["chain_head"], Reason.CHECKPOINT_HEAD_MISMATCH, source)
        )
        return self._new

    def expect_head(self, position: int, chain_head: str, source: str = "a saved head") -> None:
        """The history must have this chain head at this position (a head kept earlier)."""
        assert position > self._position, "saved heads are given before the events they cover"
        self._expected.setdefault(position, []).append(
            _Expected(chain_head.lower(), Reason.EXPECTED_HEAD_MISMATCH, source)
        )

    def finish(self) -> list[Violation]:
        """The history has ended: a checkpoint or saved head past its end means rows are
        missing from it (reported at the first missing position)."""
        self._new = []
        for position in sorted(self._expected):
            for expected in self._expected[position]:
                self._report(
                    self._position + 1,
                    Reason.HISTORY_ENDS_EARLY,
                    f"the history ends at position {self._position}, but {expected.source}"
                    f" names position {position}",
                )
        self._expected.clear()
        return self._new

    def check_source_head(self, position: int, chain_head: str, source: str) -> None:
        """The source (an export's header) says where the history ends: it must have this
        head there, now if it is there already, or when it gets there."""
        self._new = []
        self._expected.setdefault(position, []).append(
            _Expected(chain_head.lower(), Reason.SOURCE_MALFORMED, source)
        )
        if position <= self._position:
            self._check_expected(position)

    def report_source_problem(self, detail: str) -> None:
        """The source itself is wrong (a line that is no event, a missing end): reported at
        the position after the last event read."""
        self._new = []
        self._report(self._position + 1, Reason.SOURCE_MALFORMED, detail)

    # ----------------------------------------------------------------- resuming

    def state(self) -> dict[str, Any]:
        """What the next events need to recompute balances (JSON values): the accounts and
        the open pending transfers, not the transfers closed before. A verifier resumed from
        it recomputes every balance and hold exactly, but cannot check references to
        transfers or request ids older than it (duplicates, reversals of them)."""
        return {
            "bank": self._bank_uuid,
            "position": self._position,
            "previous_hash": self._previous_hash,
            "chain_head": self._chain_head,
            "computed_head": self._computed_head,
            "last_timestamp": _time_text(self._last_timestamp),
            "created": self._created,
            "balance_sum_minutes": self._balance_sum_minutes,
            "accounts": {k: _fields_of(a, _ACCOUNT_FIELDS) for k, a in self._accounts.items()},
            "holds": {
                k: {**_fields_of(t, _TRANSFER_FIELDS), "deadline": _time_text(t.deadline)}
                for k in sorted(self._open_holds)
                for t in (self._transfers[k],)
            },
            "api_keys": dict(self._api_keys),
            "member_token_kids": sorted(self._member_token_kids),
        }

    @classmethod
    def resume(cls, state: Mapping[str, Any]) -> Verifier:
        """A verifier that goes on from `state()` (events fed must follow its position)."""
        verifier = cls(state["bank"])
        verifier._position = state["position"]
        verifier._previous_hash = state["previous_hash"]
        verifier._chain_head = state["chain_head"]
        verifier._computed_head = state["computed_head"]
        verifier._last_timestamp = _time_of(state["last_timestamp"])
        verifier._created = state["created"]
        verifier._balance_sum_minutes = state["balance_sum_minutes"]
        verifier._accounts = {k: AccountTotals(**a) for k, a in state["accounts"].items()}
        verifier._transfers = {
            k: TransferTotals(**{**t, "deadline": _time_of(t["deadline"])})
            for k, t in state["holds"].items()
        }
        verifier._open_holds = set(verifier._transfers)
        verifier._api_keys = dict(state["api_keys"])
        verifier._member_token_kids = set(state["member_token_kids"])
        return verifier

    def _check_expected(self, version: int) -> None:
        head = self._computed_head if self._computed_head is not None else self._chain_head
        for expected in self._expected.pop(version, []):
            if expected.reason is Reason.CHECKPOINT_HEAD_MISMATCH:
                self._checkpoints_checked += 1
            elif expected.reason is Reason.EXPECTED_HEAD_MISMATCH:
                self._heads_checked += 1
            if expected.chain_head != head:
                self._report(
                    version,
                    expected.reason,
                    f"{expected.source} says the chain head here is {expected.chain_head[:12]}...,"
                    f" the history has {head[:12]}...",
                )

    # ----------------------------------------------------------------- invariant 4: the history

    def _in_order(self, record: RecordedEvent) -> bool:
        """Versions run 1, 2, 3, ... within one bank; a stale or foreign event is not applied."""
        if self._bank_uuid is None:
            self._bank_uuid = record.bank_uuid
        if record.bank_uuid != self._bank_uuid:
            self._report(record.version, Reason.WRONG_BANK, f"event of bank {record.bank_uuid}")
            return False
        expected = self._position + 1
        if record.version < expected:
            self._report(
                record.version,
                Reason.VERSION_OUT_OF_ORDER,
                f"version {record.version} arrived after version {self._position}",
            )
            return False
        if record.version > expected:
            missing = (
                f"{expected}"
                if record.version == expected + 1
                else f"{expected}..{record.version - 1}"
            )
            self._report(expected, Reason.VERSION_GAP, f"event(s) {missing} missing")
            # The hash this event follows is in the missing events: the gap explains the break.
            self._previous_hash = None
            self._computed_head = None
        self._position = record.version
        return True

    def feed_stored(self, stored: bytes, chain_hash: str) -> list[Violation]:
        """Check the next stored row (its bytes and the chain hash kept for it)."""
        try:
            record = RecordedEvent.from_stored(stored, chain_hash)
        except MalformedEventError as error:
            self._new = []
            self._events_checked += 1
            # Not counted as a version: if it was one, the next event shows the gap.
            self._report(self._position + 1, Reason.MALFORMED_EVENT, str(error))
            return self._new
        return self.feed(record)

    def _check_chain(self, record: RecordedEvent) -> None:
        """The hash covers the stored bytes exactly: sha256(previous hash || bytes)."""
        previous = self._previous_hash
        self._chain_head = record.chain_hash
        self._previous_hash = record.chain_hash if _hash_re.match(record.chain_hash) else None
        computed = self._computed_head
        self._computed_head = (
            None
            if computed is None
            else hashlib.sha256(bytes.fromhex(computed) + record.stored).hexdigest()
        )
        if not record.canonical:
            self._report(
                record.version,
                Reason.NOT_CANONICAL,
                "the stored bytes are not the canonical JSON (RFC 8785) of what they hold",
            )
        if previous is None:
            return
        expected = hashlib.sha256(bytes.fromhex(previous) + record.stored).hexdigest()
        if expected != record.chain_hash:
            self._report(
                record.version,
                Reason.CHAIN_BROKEN,
                f"stored hash {record.chain_hash[:12]}... does not follow from the bytes and "
                f"the previous hash (expected {expected[:12]}...)",
            )

    def _check_timestamp(self, record: RecordedEvent) -> None:
        if self._last_timestamp is not None and record.timestamp < self._last_timestamp:
            self._report(
                record.version,
                Reason.TIMESTAMP_WENT_BACKWARDS,
                f"{record.timestamp.isoformat()} is before {self._last_timestamp.isoformat()}",
            )
        else:
            self._last_timestamp = record.timestamp

    # ----------------------------------------------------------------- applying and checking

    def _apply(self, record: RecordedEvent) -> None:
        handler = self._handlers.get(record.type)
        if handler is None:
            self._report(record.version, Reason.UNKNOWN_EVENT_TYPE, f"event type {record.type!r}")
            return
        problem = _schema_problem(record)
        if problem:
            self._report(record.version, Reason.MALFORMED_EVENT, problem)
            return
        if not self._created and record.type != "BankCreated":
            self._report(record.version, Reason.NOT_CREATED_FIRST, "the bank has no Created event")
            self._created = True  # said once; the rest of the history is still checked
        step = _Step(record.version)
        balance_sum_before = self._balance_sum_minutes
        handler(record, step)
        for account_id in sorted(step.touched):
            self._check_limits(step, account_id)
        # Invariant 1, reported where the sum changed (not again at every later event).
        if self._balance_sum_minutes != balance_sum_before and self._balance_sum_minutes != 0:
            self._report(
                step.version,
                Reason.BALANCES_DO_NOT_SUM_TO_ZERO,
                f"balances sum to {self._balance_sum_minutes} minutes",
            )

    def _check_limits(self, step: _Step, account_id: str) -> None:
        """Invariant 2 for one account, with the carve-out for limits changed under it."""
        account = self._accounts[account_id]
        if account.pending_debit_minutes < 0 or account.pending_credit_minutes < 0:
            self._report_limit(
                step,
                account_id,
                Reason.NEGATIVE_PENDING,
                f"account {account_id!r} has pending debits {account.pending_debit_minutes} and "
                f"credits {account.pending_credit_minutes}",
            )
        floor = min(account.lower_limit_minutes, account.debit_exposure_at_limit_change_minutes)
        if account.debit_exposure_minutes < floor:
            self._report_limit(
                step,
                account_id,
                Reason.EXCEEDS_LOWER_LIMIT,
                f"account {account_id!r}: balance minus pending debits is "
                f"{account.debit_exposure_minutes}, below {floor}",
            )
        if account.upper_limit_minutes is None:
            return
        ceiling = max(account.upper_limit_minutes, account.credit_exposure_at_limit_change_minutes)
        if account.credit_exposure_minutes > ceiling:
            self._report_limit(
                step,
                account_id,
                Reason.EXCEEDS_UPPER_LIMIT,
                f"account {account_id!r}: balance plus pending credits is "
                f"{account.credit_exposure_minutes}, above {ceiling}",
            )

    def _report_limit(self, step: _Step, account_id: str, reason: Reason, detail: str) -> None:
        """Report a limit once per account and event, however often the event crosses it."""
        if (account_id, reason) not in step.limits_reported:
            step.limits_reported.add((account_id, reason))
            self._report(step.version, reason, detail)

    # ----------------------------------------------------------------- bank and accounts

    def _created_event(self, record: RecordedEvent, step: _Step) -> None:
        if self._created:
            self._report(step.version, Reason.CREATED_TWICE, "the bank was already created")
        elif record.version != 1:
            self._report(step.version, Reason.NOT_CREATED_FIRST, "Created is not event 1")
        self._created = True

    def _account_opened(self, record: RecordedEvent, step: _Step) -> None:
        f = record.fields
        account_id = f["account_id"]
        if account_id in self._accounts:
            self._report(
                step.version, Reason.DUPLICATE_ACCOUNT, f"account {account_id!r} opened twice"
            )
            return
        self._check_limit_values(step.version, f["lower_limit_minutes"], f["upper_limit_minutes"])
        self._accounts[account_id] = AccountTotals(
            kind=f["kind"],
            status="open",
            lower_limit_minutes=f["lower_limit_minutes"],
            upper_limit_minutes=f["upper_limit_minutes"],
        )
        step.touched.add(account_id)

    def _limits_changed(self, record: RecordedEvent, step: _Step) -> None:
        f = record.fields
        self._check_request_id(step.version, f["request_id"])
        account = self._touch(step, f["account_id"])
        if account is None:
            return
        self._check_limit_values(step.version, f["lower_limit_minutes"], f["upper_limit_minutes"])
        account.lower_limit_minutes = f["lower_limit_minutes"]
        account.upper_limit_minutes = f["upper_limit_minutes"]
        account.debit_exposure_at_limit_change_minutes = account.debit_exposure_minutes
        account.credit_exposure_at_limit_change_minutes = account.credit_exposure_minutes

    def _metadata_changed(self, record: RecordedEvent, step: _Step) -> None:
        f = record.fields
        self._check_request_id(step.version, f["request_id"])
        self._touch(step, f["account_id"])

    def _status_changed(self, record: RecordedEvent, step: _Step) -> None:
        f = record.fields
        self._check_request_id(step.version, f["request_id"])
        account = self._touch(step, f["account_id"])
        if account is None:
            return
        status = f["status"]
        if status not in ("open", "frozen", "closed"):
            self._report(step.version, Reason.INVALID_STATUS, f"status {status!r}")
            return
        if status == "closed" and (
            account.balance_minutes
            or account.pending_debit_minutes
            or account.pending_credit_minutes
        ):
            self._report(
                step.version,
                Reason.CLOSED_ACCOUNT_NOT_EMPTY,
                f"account {f['account_id']!r} closed with balance {account.balance_minutes} "
                f"or pending minutes",
            )
        account.status = status

    # ----------------------------------------------------------------- transfers

    def _transfers_created(self, record: RecordedEvent, step: _Step) -> None:
        items = record.fields["transfers"]
        if not items:
            self._report(step.version, Reason.MALFORMED_EVENT, "TransfersCreated has no transfers")
        for index, item in enumerate(items):
            problem = _item_problem(item)
            if problem:
                self._report(step.version, Reason.MALFORMED_EVENT, f"transfers[{index}]: {problem}")
            else:
                self._transfer_created(item, step)
                # The bank checks each transfer against the balances the ones before it left;
                # checking only the end of the event would let a later item hide an overdraft.
                legs = {item["payer_account_id"], item["payee_account_id"]} & step.touched
                for account_id in sorted(legs):
                    self._check_limits(step, account_id)

    def _transfer_created(self, f: Mapping[str, Any], step: _Step) -> None:
        transfer_id, amount = f["transfer_id"], f["amount_minutes"]
        if not self._new_transfer_id(step.version, transfer_id):
            return
        deadline = _parse_deadline(f["deadline"])
        if isinstance(deadline, str):
            self._report(step.version, Reason.MALFORMED_EVENT, deadline)
            deadline = None
        self._check_legs(step.version, f["payer_account_id"], f["payee_account_id"], amount)
        pending = f["pending"]
        self._transfers[transfer_id] = TransferTotals(
            kind="pending" if pending else "immediate",
            status="pending" if pending else "posted",
            payer_account_id=f["payer_account_id"],
            payee_account_id=f["payee_account_id"],
            amount_minutes=amount,
            posted_amount_minutes=0 if pending else amount,
            deadline=deadline,
        )
        if pending:
            self._hold(step, self._transfers[transfer_id], amount)
            self._open_holds.add(transfer_id)
        else:
            self._move(step, f["payer_account_id"], f["payee_account_id"], amount)

    def _pending_posted(self, record: RecordedEvent, step: _Step) -> None:
        f = record.fields
        self._check_request_id(step.version, f["request_id"])
        transfer = self._resolvable(step.version, f["transfer_id"])
        if transfer is None:
            return
        posted = f["posted_amount_minutes"]
        if not 0 < posted <= transfer.amount_minutes:
            self._report(
                step.version,
                Reason.POSTED_AMOUNT_INVALID,
                f"posted {posted} of a pending transfer of {transfer.amount_minutes} minutes",
            )
        self._resolve(step, f["transfer_id"], transfer, "posted")
        transfer.posted_amount_minutes = posted
        self._move(step, transfer.payer_account_id, transfer.payee_account_id, posted)

    def _pending_voided(self, record: RecordedEvent, step: _Step) -> None:
        self._check_request_id(step.version, record.fields["request_id"])
        transfer = self._resolvable(step.version, record.fields["transfer_id"])
        if transfer is not None:
            self._resolve(step, record.fields["transfer_id"], transfer, "voided")

    def _pending_expired(self, record: RecordedEvent, step: _Step) -> None:
        transfer = self._resolvable(step.version, record.fields["transfer_id"])
        if transfer is None:
            return
        if transfer.deadline is None or record.timestamp < transfer.deadline:
            self._report(
                step.version,
                Reason.EXPIRED_BEFORE_DEADLINE,
                f"transfer {record.fields['transfer_id']!r} expired at "
                f"{record.timestamp.isoformat()}, its deadline is "
                f"{transfer.deadline.isoformat() if transfer.deadline else 'none'}",
            )
        self._resolve(step, record.fields["transfer_id"], transfer, "expired")

    def _transfer_reversed(self, record: RecordedEvent, step: _Step) -> None:
        f = record.fields
        transfer_id, amount = f["transfer_id"], f["amount_minutes"]
        payer_id, payee_id = f["payer_account_id"], f["payee_account_id"]
        if not self._new_transfer_id(step.version, transfer_id):
            return
        original = self._transfers.get(f["reverses_transfer_id"])
        if original is None:
            self._report(
                step.version,
                Reason.UNKNOWN_TRANSFER,
                f"reverses unknown {f['reverses_transfer_id']!r}",
            )
        else:
            self._check_reversible(step.version, original, f)
            if not original.reversed_by_transfer_id:
                original.reversed_by_transfer_id = transfer_id
        self._check_legs(step.version, payer_id, payee_id, amount)
        self._transfers[transfer_id] = TransferTotals(
            kind="reversal",
            status="posted",
            payer_account_id=payer_id,
            payee_account_id=payee_id,
            amount_minutes=amount,
            posted_amount_minutes=amount,
            reverses_transfer_id=f["reverses_transfer_id"],
        )
        self._move(step, payer_id, payee_id, amount)

    def _check_reversible(
        self, version: int, original: TransferTotals, f: Mapping[str, Any]
    ) -> None:
        """Reversals: only of a posted non-reversal, at most once, moving exactly what it moved."""
        reverses = f["reverses_transfer_id"]
        undoes = (f["payer_account_id"], f["payee_account_id"], f["amount_minutes"]) == (
            original.payee_account_id,
            original.payer_account_id,
            original.posted_amount_minutes,
        )
        if original.kind == "reversal":
            self._report(version, Reason.REVERSAL_OF_REVERSAL, f"{reverses!r} is itself a reversal")
        elif original.status != "posted":
            self._report(version, Reason.REVERSAL_OF_UNPOSTED, f"{reverses!r} is {original.status}")
        elif original.reversed_by_transfer_id:
            self._report(
                version,
                Reason.REVERSED_TWICE,
                f"{reverses!r} was already reversed by {original.reversed_by_transfer_id!r}",
            )
        elif not undoes:
            self._report(
                version,
                Reason.REVERSAL_MISMATCH,
                f"does not move {original.posted_amount_minutes} minutes from "
                f"{original.payee_account_id!r} back to {original.payer_account_id!r}",
            )

    # ----------------------------------------------------------------- access

    def _key_issued(self, record: RecordedEvent, step: _Step) -> None:
        key_id = record.fields["key_id"]
        if key_id in self._api_keys:
            self._report(step.version, Reason.DUPLICATE_KEY, f"key {key_id!r} issued twice")
        self._api_keys[key_id] = False

    def _key_revoked(self, record: RecordedEvent, step: _Step) -> None:
        key_id = record.fields["key_id"]
        if key_id not in self._api_keys:
            self._report(step.version, Reason.UNKNOWN_KEY, f"key {key_id!r} was never issued")
        elif self._api_keys[key_id]:
            self._report(step.version, Reason.KEY_REVOKED_TWICE, f"key {key_id!r}")
        self._api_keys[key_id] = True

    def _member_token_key_registered(self, record: RecordedEvent, step: _Step) -> None:
        kid = record.fields["kid"]
        if kid in self._member_token_kids:
            self._report(step.version, Reason.DUPLICATE_KEY, f"member-token key {kid!r}")
        self._member_token_kids.add(kid)

    def _member_token_key_removed(self, record: RecordedEvent, step: _Step) -> None:
        kid = record.fields["kid"]
        if kid not in self._member_token_kids:
            self._report(step.version, Reason.UNKNOWN_KEY, f"member-token key {kid!r}")
        self._member_token_kids.discard(kid)

    def _policy_changed(self, record: RecordedEvent, step: _Step) -> None:
        self._check_request_id(step.version, record.fields["request_id"])

    def _pool_policy_set(self, record: RecordedEvent, step: _Step) -> None:
        self._check_request_id(step.version, record.fields["request_id"])
        pool_id = record.fields["pool_account_id"]
        account = self._accounts.get(pool_id)
        if account is None:
            self._report(step.version, Reason.UNKNOWN_ACCOUNT, f"pool {pool_id!r}")
        elif account.kind != "pool":
            self._report(step.version, Reason.MALFORMED_EVENT, f"{pool_id!r} is not a pool")
        else:
            self._pool_policies[pool_id] = record.fields["policy"]

    def _grants_requested(self, record: RecordedEvent, step: _Step) -> None:
        items = record.fields["grants"]
        if not items:
            self._report(step.version, Reason.MALFORMED_EVENT, "GrantsRequested has no grants")
        for index, item in enumerate(items):
            problem = _item_problem(item, _GRANT_ITEM_SCHEMA)
            if problem:
                self._report(step.version, Reason.MALFORMED_EVENT, f"grants[{index}]: {problem}")
            else:
                self._grant_requested(item, step)

    def _grant_requested(self, f: Mapping[str, Any], step: _Step) -> None:
        """A grant names the transfer recorded for it: out of its pool, to its member."""
        transfer = self._transfers.get(f["grant_id"])
        if transfer is None:
            self._report(step.version, Reason.UNKNOWN_TRANSFER, f"grant {f['grant_id']!r}")
        elif (transfer.payer_account_id, transfer.payee_account_id, transfer.amount_minutes) != (
            f["pool_account_id"],
            f["member_account_id"],
            f["amount_minutes"],
        ):
            self._report(
                step.version,
                Reason.MALFORMED_EVENT,
                f"grant {f['grant_id']!r} does not match its transfer",
            )
        else:
            self._check_grant(f, step)

    def _check_grant(self, f: Mapping[str, Any], step: _Step) -> None:
        """The pool's balance less its pending grants is at or above the floor, and the
        member's grants (pending or posted) in the cap's period within the cap. Checked
        after the event holding the grants' transfers: floors and caps hold after every
        event (the bank checks each request on the state the ones before it left)."""
        policy = self._pool_policies.get(f["pool_account_id"], {})
        pool = self._accounts.get(f["pool_account_id"])
        try:
            day = date.fromisoformat(f["period_day"])
            floor, cap = policy["floor_minutes"], policy["cap_minutes"]
            period, days = policy["cap_period"], policy["cap_period_days"]
        except (KeyError, TypeError, ValueError):
            self._report(step.version, Reason.MALFORMED_EVENT, "grant without a readable policy")
            return
        if pool is None:
            return  # reported with its transfer
        if pool.debit_exposure_minutes < floor:
            self._report(
                step.version,
                Reason.POOL_FLOOR_BROKEN,
                f"grant {f['grant_id']!r} takes the pool to {pool.debit_exposure_minutes}"
                f" minutes, below its floor of {floor}",
            )
        grants = self._member_grants.setdefault((f["pool_account_id"], f["member_account_id"]), [])
        # Days older than any period (92 days at most) never count again.
        grants[:] = [(d, g) for d, g in grants if (day - d).days < 92]
        grants.append((day, f["grant_id"]))
        if cap is None:
            return
        used = sum(
            self._transfers[grant_id].amount_minutes
            for grant_day, grant_id in grants
            if self._transfers[grant_id].status in ("pending", "posted")
            and _in_period(period, days, grant_day, day)
        )
        if used > cap:
            self._report(
                step.version,
                Reason.POOL_CAP_EXCEEDED,
                f"grant {f['grant_id']!r} takes {f['member_account_id']!r} to {used} minutes"
                f" in its period, past the cap of {cap}",
            )

    def _grant_decided(self, record: RecordedEvent, step: _Step) -> None:
        if record.fields["request_id"]:
            self._check_request_id(step.version, record.fields["request_id"])
        # Only an open request is decided.
        self._resolvable(step.version, record.fields["grant_id"])

    # ----------------------------------------------------------------- small steps

    def _resolvable(self, version: int, transfer_id: str) -> TransferTotals | None:
        """Invariant 3: only a pending transfer that is still pending may be resolved."""
        transfer = self._transfers.get(transfer_id)
        if transfer is None:
            self._report(version, Reason.UNKNOWN_TRANSFER, f"transfer {transfer_id!r}")
        elif transfer.kind != "pending":
            self._report(
                version,
                Reason.NOT_A_PENDING_TRANSFER,
                f"transfer {transfer_id!r} is {transfer.kind}",
            )
        elif transfer.status != "pending":
            self._report(
                version,
                Reason.PENDING_ALREADY_RESOLVED,
                f"transfer {transfer_id!r} was already {transfer.status}",
            )
        else:
            return transfer
        return None

    def _hold(self, step: _Step, transfer: TransferTotals, amount_minutes: int) -> None:
        payer = self._touch(step, transfer.payer_account_id)
        payee = self._touch(step, transfer.payee_account_id)
        if payer is not None:
            payer.pending_debit_minutes += amount_minutes
        if payee is not None:
            payee.pending_credit_minutes += amount_minutes

    def _resolve(
        self, step: _Step, transfer_id: str, transfer: TransferTotals, status: str
    ) -> None:
        transfer.status = status
        self._open_holds.discard(transfer_id)
        self._hold(step, transfer, -transfer.amount_minutes)

    def _move(self, step: _Step, payer_id: str, payee_id: str, amount_minutes: int) -> None:
        """Post both legs; a leg on an unknown account is lost, which unbalances the bank."""
        payer = self._touch(step, payer_id)
        payee = self._touch(step, payee_id)
        if payer is not None:
            payer.balance_minutes -= amount_minutes
            self._balance_sum_minutes -= amount_minutes
        if payee is not None:
            payee.balance_minutes += amount_minutes
            self._balance_sum_minutes += amount_minutes

    def _touch(self, step: _Step, account_id: str) -> AccountTotals | None:
        """The account an event changes; reported if it does not exist or is closed."""
        account = self._accounts.get(account_id)
        if account is None:
            if account_id not in step.unknown:
                self._report(step.version, Reason.UNKNOWN_ACCOUNT, f"account {account_id!r}")
                step.unknown.add(account_id)
            return None
        if account.status == "closed" and account_id not in step.touched:
            self._report(
                step.version, Reason.CLOSED_ACCOUNT_CHANGED, f"account {account_id!r} is closed"
            )
        step.touched.add(account_id)
        return account

    def _check_legs(self, version: int, payer_id: str, payee_id: str, amount_minutes: int) -> None:
        if payer_id == payee_id:
            self._report(version, Reason.SAME_ACCOUNT, f"account {payer_id!r} pays itself")
        if amount_minutes <= 0:
            self._report(version, Reason.AMOUNT_NOT_POSITIVE, f"amount {amount_minutes} minutes")

    def _check_limit_values(self, version: int, lower: int, upper: int | None) -> None:
        if lower > 0 or (upper is not None and upper < 0):
            self._report(version, Reason.INVALID_LIMIT, f"limits {lower}..{upper}")

    def _new_transfer_id(self, version: int, transfer_id: str) -> bool:
        if transfer_id in self._transfers:
            self._report(
                version, Reason.DUPLICATE_TRANSFER_ID, f"transfer {transfer_id!r} recorded twice"
            )
            return False
        return True

    def _check_request_id(self, version: int, request_id: str) -> None:
        if request_id in self._request_ids:
            self._report(
                version, Reason.DUPLICATE_REQUEST_ID, f"request {request_id!r} recorded twice"
            )
        self._request_ids.add(request_id)

    def _report(self, version: int, reason: Reason, detail: str) -> None:
        violation = Violation(version, reason, detail)
        self._new.append(violation)
        self._violation_count += 1
        if len(self._violations) < violations_kept_max:
            self._violations.append(violation)


def _in_period(period: str, days: int, day: date, today: date) -> bool:
    """Whether a grant made on `day` counts against a cap on `today` (pools)."""
    if day > today:
        return False
    if period == "calendar_month":
        return (day.year, day.month) == (today.year, today.month)
    if period == "calendar_week":
        return today - timedelta(days=today.weekday()) <= day
    return (today - day).days < days


def _schema_problem(record: RecordedEvent) -> str:
    """What is missing or mistyped among the fields the verifier reads ("" if nothing)."""
    for name, allowed in _SCHEMAS[record.type].items():
        if name not in record.fields:
            return f"{record.type} has no field {name!r}"
        if type(record.fields[name]) not in allowed:
            return f"{record.type}.{name} is {type(record.fields[name]).__name__}"
    return ""


def _item_problem(
    item: object, schema: Mapping[str, tuple[type, ...]] = _TRANSFER_ITEM_SCHEMA
) -> str:
    """What is missing or mistyped in one item of a grouped event ("" if nothing)."""
    if not isinstance(item, dict):
        return f"is {type(item).__name__}, not an object"
    for name, allowed in schema.items():
        if name not in item:
            return f"has no field {name!r}"
        if type(item[name]) not in allowed:
            return f"{name} is {type(item[name]).__name__}"
    return ""


def _parse_deadline(text: str) -> datetime | str | None:
    """The deadline, None if there is none, or a description of why it cannot be read."""
    if not text:
        return None
    try:
        deadline = datetime.fromisoformat(text)
    except ValueError:
        return f"deadline {text!r} is not an ISO 8601 time"
    if deadline.utcoffset() is None:
        return f"deadline {text!r} has no time zone"
    return deadline


_ACCOUNT_FIELDS: Final = tuple(f.name for f in dataclasses.fields(AccountTotals))
_TRANSFER_FIELDS: Final = tuple(f.name for f in dataclasses.fields(TransferTotals))


def _fields_of(item: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(item, name) for name in names}


def _time_text(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat(timespec="microseconds")


def _time_of(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


# --------------------------------------------------------------------------- sources

# An export file (`timebank-ledger export`): JSON lines, in this order:
#   {"type": "export", "format": "timebank-ledger-export", "history_format": 2, "bank": uuid,
#    "bank_id": id, "position": n, "chain_head": hash, "exported_at": time}
#   {"type": "checkpoint_key", "key_id": id, "public_key_pem": pem}           (any number)
#   {"type": "checkpoint", "payload": base64, "signature": base64}           (any number)
#   {"type": "event", "position": n, "chain_hash": hash, "stored": base64}  (1, 2, ... n)
#   {"type": "end", "events": n, "position": n, "chain_head": hash}
# `stored` is the event's bytes exactly as stored and hashed, in base64 (RFC 4648).
EXPORT_FORMAT: Final = "timebank-ledger-export"
EXPORT_HISTORY_FORMAT: Final = 2


@dataclass(frozen=True, slots=True)
class ExportHeader:
    bank_uuid: str
    bank_id: str
    position: int
    chain_head: str
    # The signing keys the file carries (key id -> public key PEM): what the exporting
    # server said it signs with. Not to be trusted on their own: pin keys out of band.
    checkpoint_keys: Mapping[str, bytes]


class ExportError(ValueError):
    """The file is not an export (or not one this verifier reads)."""


def read_export(lines: Iterable[bytes]) -> tuple[ExportHeader, list[Checkpoint], Iterator[Any]]:
    """The header, the checkpoints and an iterator of the remaining parsed lines."""
    items = (_export_line(number, line) for number, line in enumerate(lines, 1))
    header_line = next(items, None)
    if (
        not isinstance(header_line, dict)
        or header_line.get("type") != "export"
        or header_line.get("format") != EXPORT_FORMAT
    ):
        raise ExportError("the file does not start with a timebank-ledger export header")
    if header_line.get("history_format") != EXPORT_HISTORY_FORMAT:
        raise ExportError(f"history format {header_line.get('history_format')!r} is not 2")
    keys: dict[str, bytes] = {}
    checkpoints: list[Checkpoint] = []
    rest: Any = None
    for item in items:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "checkpoint_key":
            keys[str(item["key_id"])] = str(item["public_key_pem"]).encode()
        elif kind == "checkpoint":
            checkpoints.append(Checkpoint(_b64(item.get("payload")), _b64(item.get("signature"))))
        else:
            rest = item
            break
    header = ExportHeader(
        bank_uuid=str(header_line.get("bank")),
        bank_id=str(header_line.get("bank_id")),
        position=int(header_line.get("position", 0)),
        chain_head=str(header_line.get("chain_head")),
        checkpoint_keys=keys,
    )
    remaining = items if rest is None else _chain_one(rest, items)
    return header, checkpoints, remaining


def _chain_one(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _export_line(number: int, line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return {"type": "unreadable", "line": number}


def _b64(value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        return b""


def verify_export_lines(
    lines: Iterable[bytes],
    *,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    expected_heads: Sequence[tuple[int, str]] = (),
) -> tuple[ExportHeader, Report]:
    """Verify an export read line by line; ExportError if it is not an export at all."""
    header, checkpoints, items = read_export(lines)
    verifier = Verifier(header.bank_uuid, public_keys=public_keys)
    for checkpoint in checkpoints:
        verifier.add_checkpoint(checkpoint)
    for position, chain_head in expected_heads:
        verifier.expect_head(position, chain_head)
    ended = False
    for item in items:
        kind = item.get("type") if isinstance(item, dict) else None
        if ended:
            verifier.report_source_problem("the file goes on after its end line")
            break
        if kind == "event":
            verifier.feed_stored(_b64(item.get("stored")), str(item.get("chain_hash", "")))
        elif kind == "end":
            ended = True
            if (item.get("position"), item.get("chain_head")) != (
                header.position,
                header.chain_head,
            ):
                verifier.report_source_problem("the end line does not match the header")
        else:
            verifier.report_source_problem(f"a line that is not an event: {str(item)[:80]}")
    if not ended:
        verifier.report_source_problem("the file ends without its end line (truncated?)")
    # The header names the head the exporting server had: the file must end there.
    if header.position != verifier.position and header.position < verifier.position:
        verifier.report_source_problem(f"the header says the history ends at {header.position}")
    elif header.position:
        verifier.check_source_head(header.position, header.chain_head, "the file's header")
    verifier.finish()
    return header, verifier.report()


def verify_export(
    path: Path,
    *,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    expected_heads: Sequence[tuple[int, str]] = (),
) -> tuple[ExportHeader, Report]:
    with path.open("rb") as lines:
        return verify_export_lines(lines, public_keys=public_keys, expected_heads=expected_heads)


class Channel(Protocol):
    """What this module needs of a gRPC channel (grpc.Channel has it)."""

    def unary_unary(
        self, method: str, request_serializer: Any, response_deserializer: Any
    ) -> Any: ...

    def unary_stream(
        self, method: str, request_serializer: Any, response_deserializer: Any
    ) -> Any: ...


_audit_service: Final = "/timebank.ledger.v1.AuditService/"
# Checkpoints asked for per page; the server's own cap may be lower.
checkpoints_per_page: Final = 1000


def verify_server(
    channel: Channel,
    bank_id: str,
    api_key: str,
    *,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    expected_heads: Sequence[tuple[int, str]] = (),
    timeout_seconds: float | None = None,
) -> Report:
    """Verify a bank through AuditService: every signed checkpoint (ListCheckpoints), then
    the whole history (StreamEvents, stored bytes only, up to the head when it starts)."""
    from timebank.ledger.v1 import audit_pb2  # the generated messages only: no gRPC runtime

    metadata = (("authorization", f"Bearer {api_key}"),)
    list_checkpoints = channel.unary_unary(
        _audit_service + "ListCheckpoints",
        request_serializer=audit_pb2.ListCheckpointsRequest.SerializeToString,
        response_deserializer=audit_pb2.ListCheckpointsResponse.FromString,
    )
    stream_events = channel.unary_stream(
        _audit_service + "StreamEvents",
        request_serializer=audit_pb2.StreamEventsRequest.SerializeToString,
        response_deserializer=audit_pb2.StreamEventsResponse.FromString,
    )
    checkpoints: list[Checkpoint] = []
    token = ""
    while True:
        page = list_checkpoints(
            audit_pb2.ListCheckpointsRequest(
                bank_id=bank_id, page_size=checkpoints_per_page, page_token=token
            ),
            metadata=metadata,
            timeout=timeout_seconds,
        )
        checkpoints += [Checkpoint(c.payload, c.signature) for c in page.checkpoints]
        token = page.next_page_token
        if not token:
            break
    verifier = Verifier(bank_uuid_of(bank_id), public_keys=public_keys)
    for checkpoint in checkpoints:
        verifier.add_checkpoint(checkpoint)
    for position, chain_head in expected_heads:
        verifier.expect_head(position, chain_head)
    request = audit_pb2.StreamEventsRequest(
        bank_id=bank_id, from_position=1, view=audit_pb2.EVENT_VIEW_STORED
    )
    for chunk in stream_events(request, metadata=metadata, timeout=timeout_seconds):
        for event in chunk.events:
            verifier.feed_stored(event.stored, event.chain_hash)
    verifier.finish()
    return verifier.report()


def bank_uuid_of(bank_id: str) -> str:
    """A bank's history id: uuid5(NAMESPACE_URL, "timebank-ledger:bank:" + bank id)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"timebank-ledger:bank:{bank_id}"))


# --------------------------------------------------------------------------- command line


def parse_expected_head(text: str) -> tuple[int, str]:
    """POSITION:HASH, as `--expect-head` takes it."""
    position, _, chain_head = text.partition(":")
    if not position.isdigit() or int(position) < 1 or not _hash_re.match(chain_head.lower()):
        raise ValueError(f"{text!r} is not POSITION:HASH (a position and 64 hex digits)")
    return int(position), chain_head.lower()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ledger.verifier --file EXPORT`: prints the report; exit 1 if it fails."""
    parser = argparse.ArgumentParser(prog="verifier", description="Verify a bank's export.")
    parser.add_argument("--file", type=Path, required=True, help="a timebank-ledger export")
    parser.add_argument(
        "--public-key", type=Path, action="append", default=[], help="PEM; repeatable"
    )
    parser.add_argument(
        "--expect-head", action="append", default=[], metavar="POSITION:HASH", help="repeatable"
    )
    args = parser.parse_args(argv)
    try:
        keys = public_keys_by_id(path.read_bytes() for path in args.public_key)
        heads = [parse_expected_head(text) for text in args.expect_head]
        _, report = verify_export(args.file, public_keys=keys, expected_heads=heads)
    except (OSError, ValueError) as error:
        print(f"verifier: {error}", file=sys.stderr)
        return 2
    print("\n".join(report.summary()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
