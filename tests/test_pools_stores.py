"""Pools through the Ledger on the durable stores: snapshots, reloads, expiry and the pool tables.

A grant request left open in a snapshot is decided by another process that loads the bank
from that snapshot; the pool tables (GetPool and the lists) say what the decision state says;
the loaded state is what a replay from event 1 gives, and the history verifies.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Clock, MakeLedger

from ledger import cli
from ledger.application import loading
from ledger.application.ledger import Ledger
from ledger.application.pool_reads import PoolReads
from ledger.application.verification import verify_bank
from ledger.domain.bank import bank_uuid
from ledger.domain.commands import (
    CreateBank,
    CreatePool,
    CreateTransfer,
    DecideGrant,
    OpenAccount,
    RequestGrant,
)
from ledger.domain.errors import DomainError
from ledger.domain.pool_policy import PoolPolicy
from ledger.domain.records import GrantRecord

BANK = "pools"
POLICY = PoolPolicy(
    cap_minutes=100,
    approvers=("member:ben", "member:cat"),
    approvals_required=2,
    request_expiry_seconds=3600,
)


def reads(ledger: Ledger) -> PoolReads:
    return PoolReads(ledger.store, ledger.get_bank, ledger.get_account)


def test_an_open_request_survives_a_snapshot_and_a_reload(
    durable_store_url: str, make_ledger: MakeLedger, clock: Clock
) -> None:
    writer = make_ledger(durable_store_url, snapshot_interval_events=3)
    writer.create_bank(CreateBank(BANK, "Pools"))
    for member in ("ana", "ben", "cat"):
        writer.execute(BANK, OpenAccount(member, "member", lower_limit_minutes=-300))
    writer.execute(BANK, CreatePool("p1", "pot", POLICY, actor="key:admin"))
    writer.execute(BANK, CreateTransfer("give-1", "cat", "pot", 200))
    # Ana asks; Ben approves; Ana's cap has 20 minutes left while it is open.
    writer.execute(BANK, RequestGrant("g1", "pot", "ana", 80, actor="key:app/member:ana"))
    writer.execute(BANK, DecideGrant("a1", "pot", "g1", "approve", actor="key:app/member:ben"))
    # Another process loads the bank from its snapshot and Cat's approval posts the grant.
    reader = make_ledger(durable_store_url, snapshot_interval_events=3)
    uuid = str(bank_uuid(BANK))
    assert loading.load_bank(reader.store, uuid).pools["pot"].grants["g1"].approvals == (
        "member:ben",
    )
    with pytest.raises(DomainError) as refused:
        reader.execute(BANK, RequestGrant("g2", "pot", "ana", 21, actor="key:app/member:ana"))
    assert refused.value.reason == "EXCEEDS_MEMBER_CAP"
    posted = reader.execute(
        BANK, DecideGrant("a2", "pot", "g1", "approve", actor="key:app/member:cat")
    )
    assert isinstance(posted, GrantRecord)
    assert posted.state == "posted"
    assert reader.get_account(BANK, "ana").balance_minutes == 80
    # A request nobody decides expires at its deadline, and gives Ben's cap back.
    reader.execute(BANK, RequestGrant("g3", "pot", "ben", 100, actor="key:app/member:ben"))
    clock.advance(hours=2)
    reader.execute(BANK, RequestGrant("g4", "pot", "ben", 100, actor="key:app/member:ben"))
    # The tables say what happened.
    pool = reads(reader).pool(BANK, "pot")
    assert (pool.open_grant_count, pool.open_grant_minutes) == (1, 100)
    listed = reads(reader).grant_requests(BANK, "pot", None, 0, "")
    assert [(g.grant_id, g.state) for g in listed.items] == [
        ("g1", "posted"),
        ("g3", "expired"),
        ("g4", "pending"),
    ]
    assert listed.items[0].approvals == ("member:ben", "member:cat")
    awaiting = reads(reader).awaiting(BANK, "member:cat", 0, "")
    assert [g.grant_id for g in awaiting.items] == ["g4"]
    # A retry of a request from long ago, in a fresh process, answers the request as it
    # stands (not EXCEEDS_MEMBER_CAP, though its own minutes now fill Ana's cap).
    later = make_ledger(durable_store_url)
    again = later.execute(BANK, RequestGrant("g1", "pot", "ana", 80, actor="key:app/member:ana"))
    assert isinstance(again, GrantRecord)
    assert again.state == "posted"
    # What a process loads is what a replay from event 1 gives; the history verifies.
    replayed, _ = loading.replay_from_start(reader.store, uuid)
    assert loading.load_bank(reader.store, uuid) == replayed
    assert verify_bank(reader.store, BANK).ok


def test_a_bank_with_a_pool_moves_with_its_pool_tables(
    tmp_path: Path, make_ledger: MakeLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    source_url = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    target_url = f"sqlite:///{tmp_path / 'target.sqlite3'}"
    source = make_ledger(source_url)
    source.create_bank(CreateBank(BANK, "Pools"))
    for member in ("ana", "ben", "cat"):
        source.execute(BANK, OpenAccount(member, "member", lower_limit_minutes=-300))
    source.execute(BANK, CreatePool("p1", "pot", POLICY, actor="key:admin"))
    source.execute(BANK, CreateTransfer("give-1", "cat", "pot", 200))
    source.execute(BANK, RequestGrant("g1", "pot", "ana", 80, actor="key:app/member:ana"))
    source.execute(BANK, DecideGrant("a1", "pot", "g1", "approve", actor="key:app/member:ben"))
    source.execute(BANK, RequestGrant("g2", "pot", "ben", 50, actor="key:app/member:ben"))
    export_file = tmp_path / "pools.jsonl"
    monkeypatch.setenv("LEDGER_DATABASE_URL", source_url)
    assert cli.main(["export", "--bank", BANK, "--out", str(export_file)]) == 0
    monkeypatch.setenv("LEDGER_DATABASE_URL", target_url)
    assert cli.main(["import", str(export_file)]) == 0
    # The target's pool tables are rebuilt from the events: the same pool, the same requests.
    target = make_ledger(target_url)
    assert reads(target).pool(BANK, "pot") == reads(source).pool(BANK, "pot")
    listed = [reads(x).grant_requests(BANK, "pot", None, 0, "").items for x in (source, target)]
    assert listed[0] == listed[1]
    assert [g.approvals for g in listed[1]] == [("member:ben",), ()]
    # The moved bank decides on: Cat's approval posts Ana's grant there.
    posted = target.execute(
        BANK, DecideGrant("a2", "pot", "g1", "approve", actor="key:app/member:cat")
    )
    assert isinstance(posted, GrantRecord)
    assert posted.state == "posted"


def test_requests_awaiting_an_approver_page_by_page(
    durable_store_url: str, make_ledger: MakeLedger
) -> None:
    ledger = make_ledger(durable_store_url)
    ledger.create_bank(CreateBank(BANK, "Pools"))
    for member in ("ana", "ben", "cat"):
        ledger.execute(BANK, OpenAccount(member, "member", lower_limit_minutes=-300))
    ledger.execute(BANK, CreatePool("p1", "pot", POLICY, actor="key:admin"))
    ledger.execute(BANK, CreateTransfer("give-1", "cat", "pot", 300))
    # Four open requests: Cat may decide three (the fourth pays her); Ben has approved one.
    for grant_id, member in (("g1", "ana"), ("g2", "ben"), ("g3", "ana"), ("g4", "cat")):
        ledger.execute(BANK, RequestGrant(grant_id, "pot", member, 10, actor="key:admin"))
    ledger.execute(BANK, DecideGrant("a1", "pot", "g3", "approve", actor="key:app/member:ben"))
    seen, token = [], ""
    while True:
        page = reads(ledger).awaiting(BANK, "member:cat", 1, token)
        seen += [grant.grant_id for grant in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["g1", "g2", "g3"]
    # Ben has decided g3, and g2 pays him.
    assert [g.grant_id for g in reads(ledger).awaiting(BANK, "member:ben", 0, "").items] == [
        "g1",
        "g4",
    ]
    # A token of one approver's list is not another's.
    first = reads(ledger).awaiting(BANK, "member:cat", 1, "")
    with pytest.raises(DomainError) as refused:
        reads(ledger).awaiting(BANK, "member:ben", 1, first.next_page_token)
    assert refused.value.reason == "INVALID_PAGE_TOKEN"
