"""Verifying a bank in the store: its whole history from event 1, its snapshot and its index.

The history is checked by the independent verifier (ledger/verifier.py) from the
stored bytes and chain hashes alone: canonical form, the hash chain, versions, timestamps
and every invariant, and against the signed checkpoints the store keeps and any chain head
the auditor saved. The snapshot a bank loads from must equal the state replayed up to its
position, and the bank's row in the index must name the history's last position and head.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.application import loading
from ledger.domain import canonical, history
from ledger.domain.bank import bank_uuid
from ledger.domain.state import BankState
from ledger.storage.store import LedgerStore
from ledger.verifier import Checkpoint, Report, Verifier

# Signed checkpoints read from the store per query.
checkpoints_per_read = 1000


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
        return self.report.balances_digest


def verify_bank(
    store: LedgerStore,
    bank_id: str,
    *,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    expected_heads: Sequence[tuple[int, str]] = (),
) -> BankCheck:
    """Check a bank's history in the store, with its signed checkpoints (signatures checked
    against `public_keys`, if any) and the chain heads an auditor saved earlier."""
    uuid = str(bank_uuid(bank_id))
    verifier = Verifier(uuid, public_keys=public_keys)
    after = 0
    while page := store.checkpoints_page(uuid, after, checkpoints_per_read):
        for checkpoint in page:
            verifier.add_checkpoint(Checkpoint(checkpoint.payload, checkpoint.signature))
        after = page[-1].position
    for position, chain_head in expected_heads:
        verifier.expect_head(position, chain_head)
    for _, stored, chain_hash in loading.stored_rows(store, uuid):
        verifier.feed_stored(stored, chain_hash)
    verifier.finish()
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
