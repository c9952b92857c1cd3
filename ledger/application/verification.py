"""Verifying a bank in the store: its whole history from event 1, its snapshot and its index.

The history is checked by the independent verifier (ledger/domain/invariants.py) from the
stored bytes and chain hashes alone: canonical form, the hash chain, versions, timestamps
and every invariant. The snapshot a bank loads from must equal the state replayed up to its
position, and the bank's row in the index must name the history's last position and head.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field

from ledger.application import loading
from ledger.domain import canonical, history
from ledger.domain.bank import bank_uuid
from ledger.domain.invariants import Report, Verifier
from ledger.domain.state import BankState
from ledger.storage.store import LedgerStore


@dataclass(frozen=True, slots=True)
class BankCheck:
    bank_id: str
    report: Report
    # What else does not agree with the history (the snapshot, the bank's index row).
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.problems

    @property
    def balances_digest(self) -> str:
        """sha256 of the balances as canonical JSON: two parties compare one short string."""
        return hashlib.sha256(canonical.encode(dict(self.report.balances))).hexdigest()


def verify_bank(store: LedgerStore, bank_id: str) -> BankCheck:
    uuid = str(bank_uuid(bank_id))
    verifier = Verifier(uuid)
    for _, stored, chain_hash in loading.stored_rows(store, uuid):
        verifier.feed_stored(stored, chain_hash)
    report = verifier.report()
    problems = []
    snapshot = store.snapshot(uuid)
    if snapshot is not None:
        problem = _snapshot_problem(store, uuid, snapshot.version, snapshot.state)
        if problem:
            problems.append(problem)
    row = store.bank(uuid)
    if report.position and row is None:
        problems.append("the bank has events but no row in ledger_banks")
    elif row is not None and (row.position, row.chain_head) != (report.position, report.chain_head):
        problems.append(
            f"ledger_banks says position {row.position} head {row.chain_head[:12]}..., the"
            f" history ends at {report.position} head {report.chain_head[:12]}..."
        )
    return BankCheck(bank_id, report, problems)


def _snapshot_problem(store: LedgerStore, uuid: str, version: int, data: bytes) -> str:
    rows = itertools.takewhile(
        lambda row: row[0] <= version,
        ((event_version, stored) for event_version, stored, _ in loading.stored_rows(store, uuid)),
    )
    try:
        replayed = history.replay(uuid, rows)
        kept = BankState.from_snapshot(canonical.decode(data))
    except (history.HistoryError, canonical.NotCanonicalError, KeyError, TypeError) as error:
        return f"the snapshot at position {version} cannot be checked: {error}"
    if replayed.version != version:
        return f"the snapshot is at position {version}; the history has {replayed.version}"
    if kept != replayed:
        return f"the snapshot at position {version} differs from the history replayed to it"
    return ""
