"""As-of reads: a bank's balances, or an account's statement, as of a position or a time.

Balances: the audit projection's latest checkpoint at or before the moment (the verifier's
state there: accounts with balances, limits and holds, and the open pending transfers),
then the bank's stored events after it, recomputed by the same verifier, up to the moment.
Checkpoints are never further apart than LEDGER_AUDIT_CHECKPOINT_INTERVAL_EVENTS changes (or
the size of the state they hold), so a query costs one checkpoint and a bounded tail,
whatever the history's length. Without a checkpoint (a new bank, or no audit projection) it
recomputes from the first event: the same answer, only slower.

Statements: the accounts projection's statement entries up to the position (each entry
carries the position of the event that posted it), newest first, one index range scan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from ledger.application import pages
from ledger.application.audit_history import RowReader
from ledger.domain import chain
from ledger.domain.errors import InvalidInput, PreconditionFailed
from ledger.storage.store import LedgerStore
from ledger.verifier import AccountTotals, MalformedEventError, RecordedEvent, Verifier
from projections.db import ViewDatabase
from projections.queries import StatementEntry, statement_cursor

_statement_token_kind = "s"


@dataclass(frozen=True, slots=True)
class AsOf:
    """A bank as of a moment: the last event at or before it, and every account then."""

    position: int
    recorded_at: datetime | None
    chain_head: str
    # In the order the accounts were opened.
    accounts: dict[str, AccountTotals]


def balances_as_of(
    store: LedgerStore,
    views: ViewDatabase | None,
    bank_uuid: str,
    *,
    position: int | None = None,
    time: datetime | None = None,
) -> AsOf:
    """The bank as of a position (after its event) or a time (after every event recorded
    then or before). POSITION_NOT_COMMITTED for a position past the bank's last event."""
    assert (position is None) != (time is None), "one of position and time"
    if position is not None:
        if position < 1:
            raise InvalidInput("INVALID_POSITION", "position must be 1 or more", field="position")
        head = store.last_version(bank_uuid)
        if position > head:
            raise PreconditionFailed(
                "POSITION_NOT_COMMITTED",
                f"the bank's history ends at position {head}",
                metadata={"position": str(head), "asked_position": str(position)},
            )
    verifier, after = _checkpoint(views, bank_uuid, position, time)
    for row in RowReader(store, bank_uuid).rows(after, position):
        if time is not None:
            try:
                record = RecordedEvent.from_stored(row.stored, row.chain_hash)
            except MalformedEventError:
                verifier.feed_stored(row.stored, row.chain_hash)
                continue
            if record.timestamp > time:
                break
            verifier.feed(record)
        else:
            verifier.feed_stored(row.stored, row.chain_hash)
    head_hash = verifier.computed_head or chain.GENESIS_HASH
    return AsOf(verifier.position, verifier.last_timestamp, head_hash, verifier.accounts())


def _checkpoint(
    views: ViewDatabase | None, bank_uuid: str, position: int | None, time: datetime | None
) -> tuple[Verifier, int]:
    """A verifier resumed from the latest checkpoint at or before the moment, and its
    position (a fresh verifier at 0 if there is none)."""
    if views is None:
        return Verifier(bank_uuid), 0
    if position is not None:
        found = views.query(
            "SELECT position, state FROM audit_checkpoints WHERE bank_uuid = ? AND position <= ?"
            " ORDER BY position DESC LIMIT 1",
            (bank_uuid, position),
        )
    else:
        assert time is not None
        found = views.query(
            "SELECT position, state FROM audit_checkpoints WHERE bank_uuid = ?"
            " AND recorded_at <= ? ORDER BY recorded_at DESC, position DESC LIMIT 1",
            (bank_uuid, chain.timestamp_text(time)),
        )
    if not found:
        return Verifier(bank_uuid), 0
    checkpoint_position, state = found[0]
    return Verifier.resume(json.loads(state)), int(checkpoint_position)


def statement_as_of(
    views: ViewDatabase,
    bank_id: str,
    account_id: str,
    position: int,
    page_size: int,
    page_token: str,
) -> tuple[list[StatementEntry], str]:
    """A page of the account's statement entries up to `position`, newest first (the
    accounts view must have reached `position` of the bank)."""
    size, below = statement_cursor(page_size, page_token)
    top = views.query(
        "SELECT seq FROM view_statement_entries WHERE bank_id = ? AND account_id = ?"
        " AND position <= ? ORDER BY position DESC, seq DESC LIMIT 1",
        (bank_id, account_id, position),
    )
    if not top:
        return [], ""
    below = min(below, int(top[0][0]) + 1)
    rows = views.query(
        "SELECT seq, transfer_id, kind, counterparty_account_id, amount_minutes,"
        " balance_minutes, memo, category, service_date, recorded_at, position"
        " FROM view_statement_entries WHERE bank_id = ? AND account_id = ? AND seq < ?"
        " ORDER BY seq DESC LIMIT ?",
        (bank_id, account_id, below, size + 1),
    )
    entries = [StatementEntry(*row) for row in rows[:size]]
    more = len(rows) > size
    return entries, pages.encode_token(_statement_token_kind, entries[-1].seq) if more else ""
