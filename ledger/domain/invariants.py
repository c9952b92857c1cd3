"""An independent verifier of a bank's event history: versions, hash chain, the four invariants."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

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
            body = json.loads(stored)
        except (ValueError, RecursionError) as error:  # not JSON, or past the parser's limits
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
        try:
            canonical = canonical_json(body) == stored
        except (ValueError, RecursionError):  # a float, a huge integer, nesting too deep
            canonical = False
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

    @property
    def ok(self) -> bool:
        return self.violation_count == 0

    @property
    def first_bad_version(self) -> int | None:
        return min((v.version for v in self.violations), default=None)


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
    },
    "AccountStatusChanged": {"request_id": (str,), "account_id": (str,), "status": (str,)},
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


def verify(rows: Iterable[tuple[bytes, str]], bank_uuid: UUID | str | None = None) -> Report:
    """Check a whole history given as (stored bytes, chain hash) rows, oldest first."""
    verifier = Verifier(bank_uuid)
    for stored, chain_hash in rows:
        verifier.feed_stored(stored, chain_hash)
    return verifier.report()


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

    def __init__(self, bank_uuid: UUID | str | None = None) -> None:
        self._bank_uuid = str(bank_uuid) if bank_uuid is not None else None
        self._events_checked = 0
        self._position = 0
        # The hash the next event must follow; None after a gap, where it cannot be known.
        self._previous_hash: str | None = GENESIS_HASH
        self._chain_head = ""
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
        }
        # Access: key id -> revoked?, and the member-token keys' ids.
        self._api_keys: dict[str, bool] = {}
        self._member_token_kids: set[str] = set()
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
        self._resolve(step, transfer, "posted")
        transfer.posted_amount_minutes = posted
        self._move(step, transfer.payer_account_id, transfer.payee_account_id, posted)

    def _pending_voided(self, record: RecordedEvent, step: _Step) -> None:
        self._check_request_id(step.version, record.fields["request_id"])
        transfer = self._resolvable(step.version, record.fields["transfer_id"])
        if transfer is not None:
            self._resolve(step, transfer, "voided")

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
        self._resolve(step, transfer, "expired")

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

    def _resolve(self, step: _Step, transfer: TransferTotals, status: str) -> None:
        transfer.status = status
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


def _schema_problem(record: RecordedEvent) -> str:
    """What is missing or mistyped among the fields the verifier reads ("" if nothing)."""
    for name, allowed in _SCHEMAS[record.type].items():
        if name not in record.fields:
            return f"{record.type} has no field {name!r}"
        if type(record.fields[name]) not in allowed:
            return f"{record.type}.{name} is {type(record.fields[name]).__name__}"
    return ""


def _item_problem(item: object) -> str:
    """What is missing or mistyped in one created transfer ("" if nothing)."""
    if not isinstance(item, dict):
        return f"is {type(item).__name__}, not an object"
    for name, allowed in _TRANSFER_ITEM_SCHEMA.items():
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
