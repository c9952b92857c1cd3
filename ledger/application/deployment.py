"""The deployment's own history: operator keys issued and revoked, hash-chained like a bank's.

Operator keys belong to no bank, so their events go to a history of their own (the id
`deployment_uuid`), in the same table, format and chain as the banks'. Writes are rare (an
operator's key now and then), so there is no writer for it: each write replays the few
events there are, records one, and commits it; losing a race to another process is
retried on the fresh history.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from eventsourcing.persistence import IntegrityError

from ledger.application import loading
from ledger.domain import access, history
from ledger.domain.batch import Batch
from ledger.domain.commands import IssueApiKey, RevokeApiKey
from ledger.domain.records import RecordBook
from ledger.storage.index import access_write
from ledger.storage.store import LedgerStore

deployment_uuid = access.deployment_uuid
# Races lost to other processes writing the deployment's history before giving up.
attempts_max = 5


def issue_operator_key(store: LedgerStore, command: IssueApiKey, now: datetime) -> int:
    """Records a new operator key; returns the position of its event."""
    command.validate()
    return _write(store, lambda batch: access.issue_api_key(batch, command).position, now)


def revoke_operator_key(store: LedgerStore, command: RevokeApiKey, now: datetime) -> int:
    command.validate()
    return _write(store, lambda batch: access.revoke_api_key(batch, command).position, now)


def _write(store: LedgerStore, decide: Callable[[Batch], int], now: datetime) -> int:
    for _ in range(attempts_max):
        rows = ((v, stored) for v, stored, _ in loading.stored_rows(store, deployment_uuid))
        state = history.replay(deployment_uuid, rows)
        batch = Batch(state, now, RecordBook(lambda ids: {}, lambda ids: {}))
        position = decide(batch)
        if not batch.events:
            return position
        stored = history.encode(batch, state.chain_head)
        try:
            store.append(deployment_uuid, stored, access_write(deployment_uuid, batch, stored))
        except IntegrityError:
            continue  # another process wrote first: decide again on what it wrote
        return position
    raise RuntimeError("the deployment's history kept changing under this write")
