"""Moving a bank between deployments: export its history to a file, import it elsewhere.

An export (format in ledger/verifier.py) holds the bank's stored rows exactly as stored
and hashed, the signed checkpoints and the public keys that signed them: everything an
auditor needs to verify it, and everything another deployment needs to take the bank over.
It holds no API key: keys are the deployment's credentials and do not move (the new
deployment's operator issues the bank's first admin key there).

An import verifies the whole file first (ledger/verifier.py: chain, every invariant,
checkpoints) and refuses it, with the first bad position, if anything is wrong. It refuses a
bank that exists already with another history; one whose history is a prefix of the file's
(an import cut short, or an earlier export) is continued from where it stands. The events
are then written exactly as they are in the file, in chunks of at most `events_per_chunk_max`
events: each chunk is replayed through a Batch with a RecordBook, so the index rows
(accounts, transfers, request ids, chain hashes) are rebuilt from the history by the same
code that writes them live, and committed with the chunk's events. The views follow the
log as they always do. The bank ends with the same chain head, balances and views.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger import verifier
from ledger.application import loading
from ledger.application.audit_history import RowReader
from ledger.domain import canonical, chain, history
from ledger.domain.bank import bank_uuid
from ledger.domain.batch import Batch
from ledger.domain.errors import NotFound
from ledger.domain.records import RecordBook
from ledger.domain.state import BankState
from ledger.storage.index import index_write
from ledger.storage.store import LedgerStore, StoredCheckpoint

# Events written per transaction at most, and their stored bytes at most (one event always
# fits): a grouped event holds up to 1,000 transfers.
events_per_chunk_max = 1000
chunk_bytes_max = 16 * 1024 * 1024
checkpoints_per_read = 1000


# ----------------------------------------------------------------- export


@dataclass(frozen=True, slots=True)
class Exported:
    bank_id: str
    events: int
    position: int
    chain_head: str
    checkpoints: int


def export_bank(store: LedgerStore, bank_id: str, out: IO[bytes], now: datetime) -> Exported:
    """Write the bank's history, up to its head when the export starts, as an export file."""
    uuid = str(bank_uuid(bank_id))
    position = store.last_version(uuid)
    if position == 0:
        raise NotFound("BANK_NOT_FOUND", f"bank {bank_id!r} has no history in this store")
    chain_head = store.chain_hashes(uuid, position - 1, position).get(position, "")
    _line(
        out,
        {
            "type": "export",
            "format": verifier.EXPORT_FORMAT,
            "history_format": verifier.EXPORT_HISTORY_FORMAT,
            "bank": uuid,
            "bank_id": bank_id,
            "position": position,
            "chain_head": chain_head,
            "exported_at": chain.timestamp_text(now),
        },
    )
    for key_id, pem, _ in store.checkpoint_keys():
        _line(out, {"type": "checkpoint_key", "key_id": key_id, "public_key_pem": pem})
    checkpoints = 0
    for checkpoint in _checkpoints(store, uuid, position):
        checkpoints += 1
        _line(
            out,
            {
                "type": "checkpoint",
                "payload": _b64(checkpoint.payload),
                "signature": _b64(checkpoint.signature),
            },
        )
    events = 0
    for row in RowReader(store, uuid).rows(0, position):
        events += 1
        _line(
            out,
            {
                "type": "event",
                "position": row.position,
                "chain_hash": row.chain_hash,
                "stored": _b64(row.stored),
            },
        )
    _line(out, {"type": "end", "events": events, "position": position, "chain_head": chain_head})
    return Exported(bank_id, events, position, chain_head, checkpoints)


def _checkpoints(store: LedgerStore, uuid: str, up_to: int) -> Iterator[StoredCheckpoint]:
    after = 0
    while True:
        page = store.checkpoints_page(uuid, after, checkpoints_per_read)
        for checkpoint in page:
            if checkpoint.position > up_to:
                return
            yield checkpoint
        if len(page) < checkpoints_per_read:
            return
        after = page[-1].position


def _line(out: IO[bytes], item: Mapping[str, Any]) -> None:
    out.write(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ----------------------------------------------------------------- import


class ImportRefused(Exception):
    """The file does not verify, or the bank exists here with another history."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


@dataclass(frozen=True, slots=True)
class Imported:
    bank_id: str
    # Events written now (0: the bank was here already with exactly this history).
    events_written: int
    position: int
    chain_head: str
    report: verifier.Report


def import_bank(
    store: LedgerStore,
    path: Path,
    now: datetime,
    *,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
) -> Imported:
    """Verify the export at `path`, then write its bank into the store (see the module's
    docstring). Checkpoint signatures are checked against `public_keys` if given, else
    against the keys the file carries (which proves only that the file is consistent)."""
    with path.open("rb") as lines:
        header, checkpoints, _ = verifier.read_export(lines)
    keys = public_keys or verifier.public_keys_by_id(header.checkpoint_keys.values())
    _, report = verifier.verify_export(path, public_keys=keys)
    if not report.ok:
        first = report.first_bad_version
        reasons = "; ".join(
            f"position {v.version}: {v.reason} {v.detail}" for v in report.violations[:5]
        )
        raise ImportRefused(f"the file does not verify: {reasons}", first)
    uuid = header.bank_uuid
    if str(bank_uuid(header.bank_id)) != uuid:
        raise ImportRefused(f"bank id {header.bank_id!r} does not name history {uuid}")
    with path.open("rb") as lines:
        _, _, items = verifier.read_export(lines)
        rows = (
            (int(item["position"]), base64.b64decode(item["stored"]), str(item["chain_hash"]))
            for item in items
            if item.get("type") == "event"
        )
        written, state = _write_history(store, uuid, rows)
    for checkpoint in checkpoints:
        fields = checkpoint.fields()
        pem = header.checkpoint_keys.get(fields["key_id"], b"").decode()
        store.save_checkpoint(
            StoredCheckpoint(
                bank_uuid=uuid,
                position=fields["position"],
                chain_head=fields["chain_head"],
                signed_at=fields["time"],
                key_id=fields["key_id"],
                payload=checkpoint.payload,
                signature=checkpoint.signature,
            ),
            pem,
        )
    data = canonical.encode(state.to_snapshot())
    store.save_snapshot(uuid, state.version, state.chain_head, data, now)
    return Imported(header.bank_id, written, state.version, state.chain_head, report)


def _write_history(
    store: LedgerStore, uuid: str, rows: Iterable[tuple[int, bytes, str]]
) -> tuple[int, BankState]:
    """Write the rows after what the store holds of this bank; returns how many, and the
    bank's state at the end. The bank's history here must be the file's up to where it
    ends (the same chain hash there)."""
    here = store.last_version(uuid)
    here_head = store.chain_hashes(uuid, here - 1, here).get(here, "") if here else ""
    state = loading.load_bank(store, uuid) if here else BankState(bank_uuid=uuid)
    written = 0
    matched = here == 0
    chunk: list[tuple[int, bytes, str]] = []
    size = 0
    for position, stored, chain_hash in rows:
        if position <= here:
            if position == here:
                if chain_hash != here_head:
                    raise ImportRefused(
                        f"this deployment holds the bank with another history (position {here}"
                        " has another chain hash)",
                        here,
                    )
                matched = True
            continue
        if chunk and (len(chunk) >= events_per_chunk_max or size + len(stored) > chunk_bytes_max):
            written += _write_chunk(store, state, chunk)
            chunk, size = [], 0
        chunk.append((position, stored, chain_hash))
        size += len(stored)
    if not matched:
        raise ImportRefused(
            f"this deployment holds the bank with a longer history ({here} events)", here
        )
    if chunk:
        written += _write_chunk(store, state, chunk)
    return written, state


def _write_chunk(store: LedgerStore, state: BankState, chunk: list[tuple[int, bytes, str]]) -> int:
    """Replay a chunk of rows through a Batch (rebuilding their index rows) and commit it."""
    uuid = state.bank_uuid
    records = RecordBook(partial(store.transfers, uuid), partial(store.requests, uuid))
    decoded = [(position, history.decode(uuid, stored)) for position, stored, _ in chunk]
    created, referenced, requests = _ids(event.event.fields() for _, event in decoded)
    records.assume_new(created)
    records.prefetch(referenced, requests)
    batch = Batch(state, None, records)
    stored_events = []
    for (position, event), (_, stored, chain_hash) in zip(decoded, chunk, strict=True):
        batch.replay(position, event.timestamp, event.event)
        stored_events.append(
            history.StoredEvent(
                uuid, position, event.event.TYPE, event.timestamp, stored, chain_hash
            )
        )
    try:
        store.append(uuid, stored_events, index_write(batch, stored_events))
    except BaseException:
        batch.rollback()
        raise
    batch.commit(stored_events[-1].chain_hash)
    return len(chunk)


def _ids(bodies: Iterable[Mapping[str, Any]]) -> tuple[set[str], set[str], set[str]]:
    """(transfer ids created, transfer ids referred to, request ids) in events' fields."""
    created: set[str] = set()
    referenced: set[str] = set()
    requests: set[str] = set()
    for fields in bodies:
        for item in fields.get("transfers") or ():
            created.add(item["transfer_id"])
        if "reverses_transfer_id" in fields:
            created.add(fields["transfer_id"])
            referenced.add(fields["reverses_transfer_id"])
        elif "transfer_id" in fields:
            referenced.add(fields["transfer_id"])
        if "request_id" in fields:
            requests.add(fields["request_id"])
    return created, referenced - created, requests
