"""The audit projection: it re-checks every bank's history as the log grows, counts and logs
what breaks an invariant, stops signing a bank that breaks one, signs checkpoints every N
events or T seconds, keeps balance checkpoints, and rebuilds to the same rows.

Bad events are put straight into the store, as a bug in the writer (or someone with the
database) would: the ledger's own checks never let them in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import pytest
from conftest import Clock, MakeLedger
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from ledger import verifier
from ledger.application.ledger import Ledger
from ledger.application.signing import CheckpointSigner
from ledger.config import Settings
from ledger.domain import chain
from ledger.domain.bank import bank_uuid
from ledger.domain.commands import CreateBank, CreateTransfer, OpenAccount, ReverseTransfer
from ledger.domain.history import StoredEvent
from ledger.storage.index import IndexWrite
from projections.audit import AuditProjection
from projections.db import SQLiteViews
from projections.runner import ProjectionRunner

BANK = "riverside"


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Audit:
    ledger: Ledger
    views: SQLiteViews
    signer: CheckpointSigner
    ticks: Ticks
    runner: ProjectionRunner

    @property
    def uuid(self) -> str:
        return str(bank_uuid(BANK))

    def signed(self) -> list[int]:
        return [c.position for c in self.ledger.store.checkpoints_page(self.uuid, 0, 1000)]

    def restart(self, **overrides: object) -> None:
        """A new projection object and runner, as after a restart of the process."""
        self.runner = ProjectionRunner(
            self.ledger.store, self.views, projection(self, **overrides), batch_max=3
        )


def projection(audit: Audit | None = None, **overrides: object) -> AuditProjection:
    settings = Settings(
        database_url="memory://",
        audit_checkpoint_interval_events=4,
        audit_signing_interval_events=5,
        audit_signing_interval_seconds=60.0,
        **overrides,  # type: ignore[arg-type]
    )
    assert audit is not None
    return AuditProjection(audit.ledger.store, settings, signer=audit.signer, monotonic=audit.ticks)


@pytest.fixture
def audit(make_ledger: MakeLedger) -> Iterator[Audit]:
    ledger = make_ledger("memory://")
    views = SQLiteViews(":memory:")
    world = Audit(ledger, views, CheckpointSigner(Ed25519PrivateKey.generate()), Ticks(), None)  # type: ignore[arg-type]
    world.restart()
    try:
        yield world
    finally:
        views.close()


def start_bank(ledger: Ledger) -> None:
    ledger.create_bank(CreateBank(bank_id=BANK, name="Riverside"))
    for member in ("ann", "bob"):
        ledger.execute(BANK, OpenAccount(member, "member", lower_limit_minutes=-600))


def append_raw(
    ledger: Ledger, event_type: str, fields: dict[str, object], *, hash_: str | None = None
) -> int:
    """Put one event straight into the store after the bank's head (its chain hash computed,
    unless given): no check of the ledger's sees it."""
    uuid = str(bank_uuid(BANK))
    version, head = ledger.store.head(uuid)
    last = ledger.store.events_after(uuid, version - 1)[0][1]
    moment = datetime.fromisoformat(json.loads(last)["timestamp"])
    stored = chain.event_bytes(uuid, version + 1, event_type, moment, fields)
    chain_hash = hash_ or chain.next_hash(head, stored)
    event = StoredEvent(uuid, version + 1, event_type, moment, stored, chain_hash)
    ledger.store.append(uuid, [event], IndexWrite(chain=[(uuid, version + 1, chain_hash)]))
    return version + 1


def overdraft(transfer_id: str) -> dict[str, object]:
    item = {
        "actor": "",
        "actor_label": "",
        "amount_minutes": 10_000,
        "category": "",
        "deadline": "",
        "memo": "",
        "payee_account_id": "bob",
        "payer_account_id": "ann",
        "pending": False,
        "service_date": "",
        "timeout_seconds": 0,
        "transfer_id": transfer_id,
    }
    return {"transfers": [item]}


def violations(check: str) -> float:
    return REGISTRY.get_sample_value("ledger_audit_violations_total", {"check": check}) or 0.0


# --------------------------------------------------------------------------- clean histories


def test_a_clean_history_is_signed_every_n_events_and_checkpointed(audit: Audit) -> None:
    start_bank(audit.ledger)
    for n in range(9):
        audit.ledger.execute(BANK, CreateTransfer(f"t{n}", "ann", "bob", 5))
    audit.runner.run_until_caught_up()
    # 12 events: signed at 5 and 10 (every 5 events); the tail waits for its time.
    assert audit.signed() == [5, 10]
    rows = audit.views.query("SELECT position, violations FROM audit_banks")
    assert rows == [(12, 0)]
    assert audit.views.query("SELECT COUNT(*) FROM audit_violations") == [(0,)]
    # Balance checkpoints every 4 changes, each the verifier's state at its position.
    positions = [
        row[0]
        for row in audit.views.query("SELECT position FROM audit_checkpoints ORDER BY position")
    ]
    assert positions == [4, 8, 12]


def test_a_tail_waiting_t_seconds_is_signed_while_the_log_is_idle(audit: Audit) -> None:
    start_bank(audit.ledger)
    audit.ledger.execute(BANK, CreateTransfer("t1", "ann", "bob", 5))
    audit.runner.run_until_caught_up()
    assert audit.signed() == []
    # Not yet: 59 seconds after the first unsigned event.
    audit.ticks.now += 59
    assert audit.runner.run_once() == 0
    assert audit.signed() == []
    # At 60 seconds, the idle log's next look signs the head.
    audit.ticks.now += 1
    assert audit.runner.run_once() == 0
    assert audit.signed() == [audit.ledger.get_bank(BANK).position]
    # Signed once: nothing more until new events come.
    audit.ticks.now += 600
    audit.runner.run_once()
    assert len(audit.signed()) == 1


def test_the_projection_rebuilds_to_the_same_rows(audit: Audit) -> None:
    start_bank(audit.ledger)
    for n in range(11):
        audit.ledger.execute(BANK, CreateTransfer(f"t{n}", "ann", "bob", 5 + n))
    audit.ledger.execute(BANK, ReverseTransfer("back", "t3", reason="mistake"))
    audit.runner.run_until_caught_up()
    tables = ("audit_banks", "audit_checkpoints", "audit_violations")
    live = {table: audit.views.query(f"SELECT * FROM {table} ORDER BY 1, 2") for table in tables}
    audit.runner.reset()
    audit.runner.run_until_caught_up()
    assert {
        table: audit.views.query(f"SELECT * FROM {table} ORDER BY 1, 2") for table in tables
    } == live


def test_after_a_restart_the_check_goes_on_from_the_store(audit: Audit) -> None:
    start_bank(audit.ledger)
    audit.ledger.execute(BANK, CreateTransfer("t1", "ann", "bob", 30))
    audit.runner.run_until_caught_up()
    # A new process: its verifier is rebuilt from the stored history at the next event, so a
    # reversal of a transfer from before the restart is checked against the real one.
    audit.restart()
    audit.ledger.execute(BANK, ReverseTransfer("back", "t1", reason="mistake"))
    audit.runner.run_until_caught_up()
    assert audit.views.query("SELECT violations FROM audit_banks") == [(0,)]
    # And one that reverses it again is caught.
    audit.restart()
    position = append_raw(
        audit.ledger,
        "TransferReversed",
        {
            "actor": "",
            "actor_label": "",
            "amount_minutes": 30,
            "payee_account_id": "ann",
            "payer_account_id": "bob",
            "reason": "again",
            "reverses_transfer_id": "t1",
            "transfer_id": "back-again",
        },
    )
    audit.runner.run_until_caught_up()
    assert audit.views.query("SELECT check_name, position FROM audit_violations") == [
        ("REVERSED_TWICE", position)
    ]


def test_many_banks_with_few_in_memory_are_checked_alike(audit: Audit) -> None:
    audit.restart(audit_resident_banks_max=1)
    for bank in ("b1", "b2", "b3"):
        audit.ledger.create_bank(CreateBank(bank_id=bank, name=bank))
        for member in ("ann", "bob"):
            audit.ledger.execute(bank, OpenAccount(member, "member", lower_limit_minutes=-600))
    for n in range(6):
        for bank in ("b1", "b2", "b3"):
            audit.ledger.execute(bank, CreateTransfer(f"t{n}", "ann", "bob", 5))
    audit.runner.run_until_caught_up()
    rows = audit.views.query("SELECT position, violations FROM audit_banks ORDER BY bank_uuid")
    assert rows == [(9, 0)] * 3


# --------------------------------------------------------------------------- violations


def test_a_violation_is_counted_logged_once_kept_and_stops_signing(
    audit: Audit, caplog: pytest.LogCaptureFixture
) -> None:
    start_bank(audit.ledger)
    for n in range(3):
        audit.ledger.execute(BANK, CreateTransfer(f"t{n}", "ann", "bob", 5))
    audit.runner.run_until_caught_up()
    before = violations("EXCEEDS_LOWER_LIMIT")
    # Two overdrafts of Ann's, past her limit, written around the ledger's checks.
    first = append_raw(audit.ledger, "TransfersCreated", overdraft("x1"))
    append_raw(audit.ledger, "TransfersCreated", overdraft("x2"))
    # Later events leave Ann alone (each event that touched her would be reported again:
    # she stays past her limit).
    audit.ledger.execute(BANK, OpenAccount("cat", "member"))
    for n in range(5):
        audit.ledger.execute(BANK, CreateTransfer(f"later{n}", "bob", "cat", 1))

    with caplog.at_level(logging.WARNING, logger="projections.audit"):
        audit.runner.run_until_caught_up()
        audit.ticks.now += 3600
        audit.runner.run_once()

    # Both counted, by check, with no id in the labels.
    assert violations("EXCEEDS_LOWER_LIMIT") - before == 2
    # The first position logged once for that check, and kept.
    logged = [r for r in caplog.records if r.getMessage() == "audit_violation"]
    assert [(r.fields["check"], r.fields["position"]) for r in logged] == [  # type: ignore[attr-defined]
        ("EXCEEDS_LOWER_LIMIT", first)
    ]
    assert audit.views.query("SELECT check_name, position FROM audit_violations") == [
        ("EXCEEDS_LOWER_LIMIT", first)
    ]
    # Nothing at or after the violation is signed; the refusal to sign is logged.
    assert all(position < first for position in audit.signed())
    assert any(r.getMessage() == "checkpoint_not_signed" for r in caplog.records)


def test_a_chain_hash_that_does_not_follow_is_a_violation(audit: Audit) -> None:
    start_bank(audit.ledger)
    audit.runner.run_until_caught_up()
    before = violations("CHAIN_BROKEN")
    position = append_raw(
        audit.ledger,
        "TransfersCreated",
        {"transfers": overdraft("x1")["transfers"]},
        hash_="0" * 64,
    )
    audit.runner.run_until_caught_up()
    assert violations("CHAIN_BROKEN") - before == 1
    assert ("CHAIN_BROKEN", position) in audit.views.query(
        "SELECT check_name, position FROM audit_violations"
    )


def test_the_clock_of_signatures_is_the_wall_clock(audit: Audit, clock: Clock) -> None:
    # (The signed time is the server's, not the events': a checkpoint says when it was seen.)
    start_bank(audit.ledger)
    for n in range(3):
        audit.ledger.execute(BANK, CreateTransfer(f"t{n}", "ann", "bob", 1))
    audit.runner.run_until_caught_up()
    (checkpoint,) = audit.ledger.store.checkpoints_page(audit.uuid, 0, 10)
    fields = verifier.Checkpoint(checkpoint.payload, checkpoint.signature).fields()
    assert fields["time"] == checkpoint.signed_at
    assert datetime.fromisoformat(fields["time"]) > clock()
