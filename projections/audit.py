"""The "audit" projection: re-checks every bank's history as it is written, keeps balance
checkpoints for as-of queries, and signs checkpoints of the chain heads it has verified.

For each event it follows, the bank's verifier (ledger/verifier.py, the auditors' own)
checks the stored bytes: canonical form, the hash chain recomputed from the bytes and
compared with the hash kept in ledger_chain, versions, timestamps, and every invariant of
SPEC.md after each event. A violation counts in `ledger_audit_violations_total{check}`, the
first of each check per bank is logged (`audit_violation`, with its position) and kept in
`audit_violations`; a bank with a violation gets no more signed checkpoints.

Tables (all prefixed `audit_`, keyed by the bank's history UUID):
- audit_banks: how far each bank is verified (position, recomputed chain head), changes
  since its last balance checkpoint, violations found.
- audit_checkpoints: the verifier's state (accounts with balances, limits and holds; open
  pending transfers) every LEDGER_AUDIT_CHECKPOINT_INTERVAL_EVENTS changes, and never
  closer than the bank's accounts plus open holds: an as-of query reads one of these and
  the events after it (projections/audit_queries.py), whatever the history's length.
- audit_violations: the first violation of each check in each bank.

Signed checkpoints go to the store (ledger_checkpoints): every LEDGER_AUDIT_SIGNING_INTERVAL_
EVENTS events of a bank, or LEDGER_AUDIT_SIGNING_INTERVAL_SECONDS after the first event not
covered yet (checked after each batch and while the log is idle), with the key of
LEDGER_AUDIT_SIGNING_KEY_FILE. They are written once the batch's transaction has committed
(`committed()`: on SQLite the store shares the views' file and its one write lock); a
batch that fails to commit signs nothing, and its retry decides again.

Memory: a bank's whole-history check needs every transfer and request id it has seen (to
catch duplicates and bad reversals), so it is kept for at most LEDGER_AUDIT_RESIDENT_BANKS_
MAX banks; a bank not in memory (or after a restart) is rebuilt from the store, from its
first event, when its next event comes.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ledger import logs, metrics
from ledger.application.audit_history import RowReader
from ledger.application.signing import CheckpointSigner, signer_from_settings
from ledger.config import Settings
from ledger.storage.store import LedgerStore
from ledger.verifier import Verifier, Violation
from projections.db import Cursor, upsert_rows
from projections.events import LogEvent

log = logging.getLogger(__name__)

_DDL = (
    "CREATE TABLE IF NOT EXISTS audit_banks ("
    " bank_uuid TEXT PRIMARY KEY, position BIGINT NOT NULL, chain_head TEXT NOT NULL,"
    " changes_since_checkpoint BIGINT NOT NULL, violations BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_checkpoints ("
    " bank_uuid TEXT NOT NULL, position BIGINT NOT NULL, recorded_at TEXT NOT NULL,"
    " chain_head TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (bank_uuid, position))",
    "CREATE INDEX IF NOT EXISTS audit_checkpoints_by_time"
    " ON audit_checkpoints (bank_uuid, recorded_at)",
    "CREATE TABLE IF NOT EXISTS audit_violations ("
    " bank_uuid TEXT NOT NULL, check_name TEXT NOT NULL, position BIGINT NOT NULL,"
    " detail TEXT NOT NULL, PRIMARY KEY (bank_uuid, check_name))",
)
AUDIT_TABLES = ("audit_banks", "audit_checkpoints", "audit_violations")
_BANK_COLUMNS = (
    ("bank_uuid", "text"),
    ("position", "bigint"),
    ("chain_head", "text"),
    ("changes_since_checkpoint", "bigint"),
    ("violations", "bigint"),
)

# Defaults when no settings are given (tests of the projection alone).
checkpoint_interval_events_default = 1000
resident_banks_max_default = 100
# The longest detail kept per violation.
violation_detail_length_max = 500

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _BankAudit:
    """One bank's verifier, and where its checkpoints stand."""

    verifier: Verifier
    changes_since_checkpoint: int
    violations: int
    # The last position covered by a signed checkpoint, and since when (monotonic seconds)
    # events after it have been waiting for one (None: none waiting).
    signed_position: int
    unsigned_since: float | None
    # The (bank, check) pairs already kept in audit_violations.
    checks_seen: set[str]


class AuditProjection:
    name = "audit"

    def __init__(
        self,
        store: LedgerStore | None = None,
        settings: Settings | None = None,
        *,
        signer: CheckpointSigner | None = None,
        clock: Clock = _utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        if settings is not None:
            self._checkpoint_interval = settings.audit_checkpoint_interval_events
            self._sign_interval_events = settings.audit_signing_interval_events
            self._sign_interval_seconds = settings.audit_signing_interval_seconds
            self._resident_max = settings.audit_resident_banks_max
            if signer is None and store is not None:
                signer = signer_from_settings(settings)
        else:
            self._checkpoint_interval = checkpoint_interval_events_default
            self._sign_interval_events = 0
            self._sign_interval_seconds = 0.0
            self._resident_max = resident_banks_max_default
        self._signer = signer if store is not None else None
        self._clock = clock
        self._monotonic = monotonic
        self._banks: OrderedDict[str, _BankAudit] = OrderedDict()
        # Checkpoints decided during a batch, signed once its transaction has committed.
        self._to_sign: list[tuple[str, int, str]] = []

    @classmethod
    def for_set(cls, store: LedgerStore, settings: Settings | None) -> AuditProjection:
        """The projection a ProjectionSet runs (registry.py)."""
        return cls(store, settings)

    # ----------------------------------------------------------------- tables

    def create_tables(self, cursor: Cursor) -> None:
        for statement in _DDL:
            cursor.execute(statement)

    def drop_tables(self, cursor: Cursor) -> None:
        for table in AUDIT_TABLES:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
        self._banks.clear()

    # ----------------------------------------------------------------- following the log

    def apply(self, cursor: Cursor, events: Sequence[LogEvent]) -> None:
        self._to_sign.clear()  # left by a batch that did not commit
        touched: dict[str, _BankAudit] = {}
        kept = self._kept_hashes(events)
        for event in events:
            bank = self._bank(cursor, event.bank_uuid, event.version)
            chain_hash = kept.get((event.bank_uuid, event.version), "")
            self._record(
                cursor, event.bank_uuid, bank, bank.verifier.feed_stored(event.stored, chain_hash)
            )
            bank.changes_since_checkpoint += _changes(event)
            if bank.changes_since_checkpoint >= self._checkpoint_due(bank.verifier):
                self._write_checkpoint(cursor, event.bank_uuid, bank)
            if bank.unsigned_since is None:
                bank.unsigned_since = self._monotonic()
            if (
                self._sign_interval_events
                and bank.verifier.position - bank.signed_position >= self._sign_interval_events
            ):
                self._sign(event.bank_uuid, bank)
            touched[event.bank_uuid] = bank
        for bank_uuid, bank in touched.items():
            self._sign_if_waited(bank_uuid, bank)
        upsert_rows(
            cursor,
            "audit_banks",
            _BANK_COLUMNS,
            ("bank_uuid",),
            [_bank_row(bank_uuid, bank) for bank_uuid, bank in touched.items()],
        )

    def idle_work_due(self) -> bool:
        """Whether a bank's events have waited long enough for a signed checkpoint."""
        if self._signer is None:
            return False
        now = self._monotonic()
        return any(
            bank.unsigned_since is not None
            and now - bank.unsigned_since >= self._sign_interval_seconds
            for bank in self._banks.values()
        )

    def idle(self) -> None:
        """The log is idle: sign the heads of banks whose events have waited long enough."""
        self._to_sign.clear()
        for bank_uuid, bank in list(self._banks.items()):
            self._sign_if_waited(bank_uuid, bank)
        self.committed()

    def committed(self) -> None:
        """The batch's transaction committed: sign what it decided to sign."""
        signer, store = self._signer, self._store
        to_sign, self._to_sign = self._to_sign, []
        if signer is None or store is None:
            return
        for bank_uuid, position, head in to_sign:
            checkpoint = signer.sign(bank_uuid, position, head, self._clock())
            store.save_checkpoint(checkpoint, signer.public_key_pem)
            metrics.audit_checkpoints_signed.inc()
            logs.event(
                log,
                "checkpoint_signed",
                level=logging.DEBUG,
                bank_uuid=bank_uuid,
                position=position,
                key_id=signer.key_id,
            )

    # ----------------------------------------------------------------- the banks' verifiers

    def _bank(self, cursor: Cursor, bank_uuid: str, version: int) -> _BankAudit:
        """The bank's verifier, at the event before `version` (rebuilt if it is not)."""
        bank = self._banks.get(bank_uuid)
        if bank is not None and bank.verifier.position == version - 1:
            self._banks.move_to_end(bank_uuid)
            return bank
        # Not in memory, or out of step with the log (a batch rolled back, another runner
        # went ahead): check the history before this event again, from the store.
        self._banks.pop(bank_uuid, None)
        bank = self._rebuilt(cursor, bank_uuid, version - 1)
        self._banks[bank_uuid] = bank
        while len(self._banks) > self._resident_max:
            evicted_uuid, evicted = self._banks.popitem(last=False)
            if evicted.unsigned_since is not None:
                self._sign(evicted_uuid, evicted)
        return bank

    def _rebuilt(self, cursor: Cursor, bank_uuid: str, up_to: int) -> _BankAudit:
        found = cursor.query(
            "SELECT changes_since_checkpoint, violations FROM audit_banks WHERE bank_uuid = ?",
            (bank_uuid,),
        )
        changes, violations = (int(found[0][0]), int(found[0][1])) if found else (0, 0)
        checks = cursor.query(
            "SELECT check_name FROM audit_violations WHERE bank_uuid = ?", (bank_uuid,)
        )
        verifier = Verifier(bank_uuid)
        signed_position = 0
        if up_to > 0:
            assert self._store is not None, "the audit projection needs the store to catch up"
            for row in RowReader(self._store, bank_uuid).rows(0, up_to):
                verifier.feed_stored(row.stored, row.chain_hash)
            signed = self._store.checkpoint_at_or_before(bank_uuid, up_to)
            signed_position = signed.position if signed is not None else 0
        waiting = self._monotonic() if verifier.position > signed_position else None
        return _BankAudit(
            verifier=verifier,
            changes_since_checkpoint=changes,
            violations=violations,
            signed_position=signed_position,
            unsigned_since=waiting,
            checks_seen={str(row[0]) for row in checks},
        )

    def _kept_hashes(self, events: Sequence[LogEvent]) -> dict[tuple[str, int], str]:
        """The chain hashes ledger_chain keeps for these events (one query per bank)."""
        if self._store is None:
            return {}
        ranges: dict[str, tuple[int, int]] = {}
        for event in events:
            low, high = ranges.get(event.bank_uuid, (event.version, event.version))
            ranges[event.bank_uuid] = (min(low, event.version), max(high, event.version))
        kept: dict[tuple[str, int], str] = {}
        for bank_uuid, (low, high) in ranges.items():
            for version, chain_hash in self._store.chain_hashes(bank_uuid, low - 1, high).items():
                kept[(bank_uuid, version)] = chain_hash
        return kept

    # ----------------------------------------------------------------- violations

    def _record(
        self, cursor: Cursor, bank_uuid: str, bank: _BankAudit, found: list[Violation]
    ) -> None:
        for violation in found:
            bank.violations += 1
            metrics.audit_violations.labels(check=violation.reason.value).inc()
            if violation.reason.value in bank.checks_seen:
                continue
            bank.checks_seen.add(violation.reason.value)
            detail = violation.detail[:violation_detail_length_max]
            cursor.execute(
                "INSERT INTO audit_violations (bank_uuid, check_name, position, detail)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (bank_uuid, check_name) DO NOTHING",
                (bank_uuid, violation.reason.value, violation.version, detail),
            )
            logs.event(
                log,
                "audit_violation",
                level=logging.ERROR,
                bank_uuid=bank_uuid,
                position=violation.version,
                check=violation.reason.value,
                detail=detail,
            )

    # ----------------------------------------------------------------- balance checkpoints

    def _checkpoint_due(self, verifier: Verifier) -> int:
        """Changes after which the next checkpoint is written: the interval, and at least the
        size of the state a checkpoint holds."""
        return max(self._checkpoint_interval, verifier.state_size)

    def _write_checkpoint(self, cursor: Cursor, bank_uuid: str, bank: _BankAudit) -> None:
        verifier = bank.verifier
        state = verifier.state()
        cursor.execute(
            "INSERT INTO audit_checkpoints (bank_uuid, position, recorded_at, chain_head, state)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (bank_uuid, position) DO NOTHING",
            (
                bank_uuid,
                verifier.position,
                state["last_timestamp"],
                state["computed_head"] or state["chain_head"],
                # Plain JSON, in the verifier's order (accounts in the order they opened).
                json.dumps(state, separators=(",", ":"), ensure_ascii=False),
            ),
        )
        bank.changes_since_checkpoint = 0

    # ----------------------------------------------------------------- signed checkpoints

    def _sign_if_waited(self, bank_uuid: str, bank: _BankAudit) -> None:
        waited = bank.unsigned_since
        if waited is not None and self._monotonic() - waited >= self._sign_interval_seconds:
            self._sign(bank_uuid, bank)

    def _sign(self, bank_uuid: str, bank: _BankAudit) -> None:
        """Sign the bank's head as verified here (once the batch commits), unless its
        history broke a check."""
        signer, store, verifier = self._signer, self._store, bank.verifier
        if signer is None or store is None or bank.verifier.position <= bank.signed_position:
            return
        bank.unsigned_since = None
        head = verifier.computed_head
        if verifier.violation_count or head is None:
            logs.event(
                log,
                "checkpoint_not_signed",
                level=logging.WARNING,
                bank_uuid=bank_uuid,
                position=verifier.position,
                violations=verifier.violation_count,
            )
            return
        self._to_sign.append((bank_uuid, verifier.position, head))
        bank.signed_position = verifier.position


def _changes(event: LogEvent) -> int:
    """What an event counts for checkpoints: one, or one per transfer of a grouped event."""
    if event.type == "TransfersCreated":
        transfers: Any = event.fields.get("transfers")
        return len(transfers) if isinstance(transfers, list) else 1
    return 1


def _bank_row(bank_uuid: str, bank: _BankAudit) -> tuple[Any, ...]:
    verifier = bank.verifier
    head = verifier.computed_head or ""
    return (
        bank_uuid,
        verifier.position,
        head,
        bank.changes_since_checkpoint,
        bank.violations,
    )
