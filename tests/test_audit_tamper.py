"""Tampering with a bank's stored history, as someone with write access to the database
would, is caught by `timebank-ledger verify` in both its forms, with the right position:
against the store (`verify --bank`) and as an auditor through AuditService (`verify
--server`, TLS, an auditor key). On SQLite and PostgreSQL.

The bank's history (10 events) has signed checkpoints at positions 4, 8 and 10, made by
the audit projection with a key kept in a file. The tampers: a changed amount, a deleted
row, two rows swapped, a row inserted with the whole chain recomputed after it (which only a
signed checkpoint or a head saved earlier can catch), and a forged checkpoint signature.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from certs import Pki
from security_e2e import refusal_of
from served import Served, serving
from stored_rows import Tables

from ledger import cli
from ledger.domain import chain
from ledger.domain.bank import bank_uuid
from ledger.domain.commands import CreateTransfer, CreateTransfers, OpenAccount, PostPending
from ledger.security.roles import Role
from timebank.ledger.v1 import audit_pb2 as apb
from timebank.ledger.v1 import audit_pb2_grpc as apb_grpc

BANK = "riverside"


@dataclass
class World:
    served: Served
    tables: Tables
    url: str
    files: Path
    # The chain hash of every event before any tampering, by position.
    heads: dict[int, str]

    def verify(self, form: str, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
        """Runs `timebank-ledger verify` in one form; (exit code, what it printed)."""
        keys = ["--public-key", str(self.files / "checkpoint-key.pub.pem")]
        if form == "store":
            args = ["verify", "--bank", BANK, *keys, *extra]
        else:
            args = [
                "verify",
                "--server",
                self.served.address,
                "--bank",
                BANK,
                "--ca-file",
                str(self.served.pki.ca_path),
                "--key-file",
                str(self.files / "auditor.key"),
                *keys,
                *extra,
            ]
        capsys.readouterr()
        code = cli.main(args)
        return code, capsys.readouterr().out


@pytest.fixture
def world(
    pki: Pki, durable_store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    monkeypatch.setenv("LEDGER_DATABASE_URL", durable_store_url)
    key_file = tmp_path / "checkpoint-key.pem"
    with serving(
        pki,
        database_url=durable_store_url,
        with_views=True,
        projections="off",
        audit_signing_key_file=str(key_file),
        audit_signing_interval_events=4,
        audit_signing_interval_seconds=0.0,
    ) as served:
        served.create_bank(BANK)
        ledger = served.ledger
        for member in ("ann", "bob", "cat"):
            ledger.execute(BANK, OpenAccount(member, "member", lower_limit_minutes=-600))
        ledger.execute(BANK, CreateTransfer("t1", "ann", "bob", 60, memo="gardening"))
        group = tuple(CreateTransfer(f"g{n}", "bob", "cat", 5 + n) for n in range(3))
        ledger.execute(BANK, CreateTransfers(group, linked=True))
        ledger.execute(BANK, CreateTransfer("p1", "cat", "ann", 30, pending=True))
        ledger.execute(BANK, PostPending("r1", "p1", amount_minutes=20))
        (tmp_path / "auditor.key").write_text(served.key(Role.AUDITOR, BANK))
        assert ledger.get_bank(BANK).position == 10
        # The audit projection verifies the history and signs checkpoints of it.
        assert served.projections is not None
        served.projections.runner("audit").run_until_caught_up()
        signed = [c.position for c in ledger.store.checkpoints_page(str(bank_uuid(BANK)), 0, 100)]
        assert signed == [4, 8, 10]
        # The operator publishes the public key; the auditor keeps it.
        (tmp_path / "checkpoint-key.pub.pem").write_text(ledger.store.checkpoint_keys()[0][1])
        heads = ledger.store.chain_hashes(str(bank_uuid(BANK)), 0, 10)
        yield World(served, Tables(durable_store_url), durable_store_url, tmp_path, heads)


FORMS = ["store", "server"]
Problem = tuple[int, str]


def problems(output: str) -> list[Problem]:
    """(position, reason) of every problem a report printed."""
    return [
        (int(found[1]), found[2]) for found in re.finditer(r"position (\d+): ([A-Z_]+)", output)
    ]


def first_problem(output: str) -> Problem:
    return min(problems(output))


# --------------------------------------------------------------------------- untouched


@pytest.mark.parametrize("form", FORMS)
def test_the_untouched_history_verifies_with_its_checkpoints(
    world: World, form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = world.verify(form, "--expect-head", f"6:{world.heads[6]}", capsys=capsys)
    assert code == 0, output
    assert problems(output) == []
    assert "3 checked, signatures checked; saved heads: 1 checked" in output


# --------------------------------------------------------------------------- the tampers


def change_an_amount(world: World) -> None:
    # Ann's 60 minutes to Bob become 600 in event 6's stored bytes; its hash is left.
    stored = world.tables.stored(BANK, 6)
    world.tables.set_stored(
        BANK, 6, stored.replace(b'"amount_minutes":60', b'"amount_minutes":600')
    )


def delete_a_row(world: World) -> None:
    world.tables.delete_event(BANK, 6)


def swap_two_rows(world: World) -> None:
    sixth, seventh = world.tables.stored(BANK, 6), world.tables.stored(BANK, 7)
    world.tables.set_stored(BANK, 6, seventh)
    world.tables.set_stored(BANK, 7, sixth)


def forge_a_signature(world: World) -> None:
    changed, _ = world.tables.execute(
        "UPDATE ledger_checkpoints SET signature = ? WHERE bank_uuid = ? AND position = 8",
        secrets.token_bytes(64),
        str(bank_uuid(BANK)),
    )
    assert changed == 1


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        pytest.param(change_an_amount, (6, "CHAIN_BROKEN"), id="changed-amount"),
        pytest.param(delete_a_row, (6, "VERSION_GAP"), id="deleted-row"),
        pytest.param(swap_two_rows, (6, "VERSION_GAP"), id="swapped-rows"),
        pytest.param(forge_a_signature, (8, "CHECKPOINT_SIGNATURE_INVALID"), id="forged-signature"),
    ],
)
def test_a_tampered_history_is_reported_at_its_position(
    world: World,
    form: str,
    tamper: Callable[[World], None],
    expected: Problem,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tamper(world)
    code, output = world.verify(form, capsys=capsys)
    assert code == 1, output
    assert first_problem(output) == expected, output


# --------------------------------------------------------------------------- re-chained


def insert_a_row_and_rechain(world: World) -> None:
    """Insert an event at position 6 and move 6..10 up one, rewriting each row's version in
    its bytes and recomputing every chain hash after it, and the bank's row: the history
    then holds together on its own."""
    tables, uuid = world.tables, str(bank_uuid(BANK))
    rows = {version: tables.stored(BANK, version) for version in range(1, 11)}
    # The new event: an account opened at event 5's time.
    fifth = json.loads(rows[5])
    inserted = chain.event_bytes(
        uuid,
        6,
        "AccountOpened",
        datetime.fromisoformat(fifth["timestamp"]),
        {
            "account_id": "mallory",
            "actor": "",
            "actor_label": "",
            "kind": "member",
            "lower_limit_minutes": -600,
            "upper_limit_minutes": None,
        },
    )
    moved = {}
    for version in range(6, 11):
        body = json.loads(rows[version])
        moved[version + 1] = chain.event_bytes(
            uuid,
            version + 1,
            body["type"],
            datetime.fromisoformat(body["timestamp"]),
            body["fields"],
        )
    # Highest first, so no two rows ever share a version.
    for version in range(10, 5, -1):
        changed, _ = tables.execute(
            f"UPDATE {tables.events} SET originator_version = ?, state = ?"
            " WHERE originator_id = ? AND originator_version = ?",
            version + 1,
            moved[version + 1],
            tables.originator_id(BANK),
            version,
        )
        assert changed == 1
    tables.execute(
        f"INSERT INTO {tables.events} (originator_id, originator_version, topic, state)"
        " VALUES (?, ?, ?, ?)",
        tables.originator_id(BANK),
        6,
        "AccountOpened",
        inserted,
    )
    new_rows = {**{v: rows[v] for v in range(1, 6)}, 6: inserted, **moved}
    tables.execute("DELETE FROM ledger_chain WHERE bank_uuid = ? AND version >= 6", uuid)
    head = world.heads[5]
    for version in range(6, 12):
        head = chain.next_hash(head, new_rows[version])
        tables.execute(
            "INSERT INTO ledger_chain (bank_uuid, version, chain_hash) VALUES (?, ?, ?)",
            uuid,
            version,
            head,
        )
    tables.execute(
        "UPDATE ledger_banks SET position = 11, chain_head = ? WHERE bank_uuid = ?", head, uuid
    )


@pytest.mark.parametrize("form", FORMS)
def test_a_row_inserted_with_the_chain_recomputed_is_caught_by_a_checkpoint_or_a_saved_head(
    world: World, form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_a_row_and_rechain(world)

    # The chain holds together: only the signed checkpoints at 8 and 10 disagree with it.
    code, output = world.verify(form, capsys=capsys)
    assert code == 1
    assert problems(output) == [(8, "CHECKPOINT_HEAD_MISMATCH"), (10, "CHECKPOINT_HEAD_MISMATCH")]

    # The attacker deletes the checkpoints too: the history alone now passes...
    world.tables.execute("DELETE FROM ledger_checkpoints WHERE bank_uuid = ?", str(bank_uuid(BANK)))
    code, output = world.verify(form, capsys=capsys)
    assert code == 0, output
    # ...and only a head the auditor saved earlier (at 6) catches it, at 6.
    code, output = world.verify(form, "--expect-head", f"6:{world.heads[6]}", capsys=capsys)
    assert code == 1
    assert first_problem(output) == (6, "EXPECTED_HEAD_MISMATCH"), output


# --------------------------------------------------------------------------- the checkpoint RPCs


def test_checkpoints_and_their_keys_are_read_through_the_audit_service(world: World) -> None:
    audit = apb_grpc.AuditServiceStub(
        world.served.channel((world.files / "auditor.key").read_text())
    )
    # The latest at or before a position; the latest of all.
    assert (
        audit.GetCheckpoint(apb.GetCheckpointRequest(bank_id=BANK, position=9)).checkpoint.position
        == 8
    )
    latest = audit.GetCheckpoint(apb.GetCheckpointRequest(bank_id=BANK)).checkpoint
    assert (latest.position, latest.chain_head) == (10, world.heads[10])
    assert latest.bank_uuid == str(bank_uuid(BANK))
    # Paged in position order.
    first = audit.ListCheckpoints(apb.ListCheckpointsRequest(bank_id=BANK, page_size=2))
    rest = audit.ListCheckpoints(
        apb.ListCheckpointsRequest(bank_id=BANK, page_size=2, page_token=first.next_page_token)
    )
    assert [c.position for c in first.checkpoints] == [4, 8]
    assert ([c.position for c in rest.checkpoints], rest.next_page_token) == ([10], "")
    # The key they were signed with: current, and the one the operator published.
    (key,) = audit.ListCheckpointKeys(apb.ListCheckpointKeysRequest(bank_id=BANK)).keys
    assert key.current
    assert key.algorithm == "Ed25519"
    assert key.public_key_pem == (world.files / "checkpoint-key.pub.pem").read_text()
    assert key.key_id == latest.key_id
    # None before the first.
    with pytest.raises(grpc.RpcError) as refused:
        audit.GetCheckpoint(apb.GetCheckpointRequest(bank_id=BANK, position=3))
    assert refusal_of(refused.value).reason == "CHECKPOINT_NOT_FOUND"
