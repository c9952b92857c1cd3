"""A bank moves between deployments: `timebank-ledger export` on one, `import` on another
(SQLite to PostgreSQL and back), ending with the same chain head, balances and views; and a
file that does not verify, or a bank that is already there with another history, is refused
with the position, writing nothing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock, _database, ledger_settings

from ledger import cli
from ledger.application.ledger import Ledger
from ledger.domain.bank import bank_uuid
from ledger.domain.commands import (
    ChangeLimits,
    CreateBank,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    PostPending,
    ReverseTransfer,
    VoidPending,
)
from projections import queries, report_queries
from projections.registry import ProjectionSet

BANK = "riverside"
MEMBERS = ("ann", "bob", "cat", "dan")


@dataclass
class Deployment:
    url: str
    ledger: Ledger
    projections: ProjectionSet

    def caught_up(self) -> Deployment:
        for name in self.projections.names:
            self.projections.runner(name).run_until_caught_up()
        return self


@pytest.fixture
def deployments(tmp_path: Path, clock: Clock) -> Iterator[Any]:
    """Opens deployments on fresh databases of a kind ("sqlite" or "postgres")."""
    with ExitStack() as stack:
        ledgers: list[Ledger] = []

        def open_deployment(kind: str, **overrides: Any) -> Deployment:
            folder = tmp_path / f"{kind}-{len(ledgers)}"
            folder.mkdir()
            url = stack.enter_context(_database(kind, folder, ledgers))
            settings = ledger_settings(url, projections="off", **overrides)
            ledger = Ledger(settings, clock=clock)
            ledgers.append(ledger)
            projections = ProjectionSet.open(settings, ledger.store)
            stack.callback(projections.close)
            return Deployment(url, ledger, projections)

        yield open_deployment
        for ledger in ledgers:
            ledger.close()


def everyday_bank(ledger: Ledger, clock: Clock) -> None:
    ledger.create_bank(CreateBank(bank_id=BANK, name="Riverside time bank"))
    for member in MEMBERS:
        ledger.execute(BANK, OpenAccount(member, "member", lower_limit_minutes=-600))
    ledger.execute(
        BANK, CreateTransfer("t1", "ann", "bob", 60, memo="gardening ✿", category="garden")
    )
    ledger.execute(BANK, CreateTransfer("p1", "cat", "dan", 45, pending=True, timeout_seconds=60))
    ledger.execute(BANK, PostPending("r1", "p1", amount_minutes=30))
    ledger.execute(BANK, CreateTransfer("p2", "dan", "ann", 15, pending=True))
    ledger.execute(BANK, VoidPending("r2", "p2", reason="duplicate"))
    ledger.execute(BANK, ReverseTransfer("t2", "t1", reason="wrong member"))
    clock.advance(minutes=5)
    group = tuple(
        CreateTransfer(f"g{n}", MEMBERS[n % 4], MEMBERS[(n + 1) % 4], 1 + n) for n in range(40)
    )
    ledger.execute(BANK, CreateTransfers(group))
    ledger.execute(BANK, ChangeLimits("r3", "bob", lower_limit_minutes=-100))
    ledger.execute(BANK, CreateTransfer("p3", "bob", "cat", 10, pending=True))


def views_of(deployment: Deployment) -> dict[str, Any]:
    views = deployment.projections.views
    accounts = {m: queries.account_summary(views, BANK, m) for m in MEMBERS}
    statements = {m: queries.statement_page(views, BANK, m, 1000, "") for m in MEMBERS}
    return {
        "accounts": accounts,
        "statements": statements,
        "totals": report_queries.bank_totals(views, BANK),
    }


def run(url: str, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setenv("LEDGER_DATABASE_URL", url)
    return cli.main(list(args))


@pytest.mark.parametrize(
    ("source_kind", "target_kind"),
    [
        pytest.param("sqlite", "postgres", marks=pytest.mark.postgres, id="sqlite-to-postgres"),
        pytest.param("postgres", "sqlite", marks=pytest.mark.postgres, id="postgres-to-sqlite"),
    ],
)
def test_a_bank_moves_with_the_same_head_balances_and_views(
    deployments: Any,
    source_kind: str,
    target_kind: str,
    clock: Clock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The source deployment signs checkpoints with its key.
    source = deployments(
        source_kind,
        audit_signing_key_file=str(tmp_path / "source-key.pem"),
        audit_signing_interval_events=5,
    )
    everyday_bank(source.ledger, clock)
    source.caught_up()
    target = deployments(target_kind)
    export_file = tmp_path / "riverside.jsonl"

    # Export on the source, import on the target.
    assert run(source.url, monkeypatch, "export", "--bank", BANK, "--out", str(export_file)) == 0
    assert run(target.url, monkeypatch, "import", str(export_file)) == 0
    printed = capsys.readouterr().out
    assert "events written" in printed
    assert "API keys do not move" in printed

    # The same chain head and position, the same balances, account by account.
    before, after = source.ledger.get_bank(BANK), target.ledger.get_bank(BANK)
    assert (after.position, after.chain_head) == (before.position, before.chain_head)
    for member in MEMBERS:
        assert target.ledger.get_account(BANK, member) == source.ledger.get_account(BANK, member)
    assert target.ledger.get_transfer(BANK, "t2") == source.ledger.get_transfer(BANK, "t2")
    # The same views, once the target's projections have followed the imported events.
    assert views_of(target.caught_up()) == views_of(source)
    # The source's signed checkpoints came along and verify with the source's public key.
    public_key = tmp_path / "source.pub.pem"
    public_key.write_text(source.ledger.store.checkpoint_keys()[0][1])
    assert (
        run(target.url, monkeypatch, "verify", "--bank", BANK, "--public-key", str(public_key)) == 0
    )
    assert "signatures checked" in capsys.readouterr().out
    uuid = str(bank_uuid(BANK))
    assert target.ledger.store.checkpoints_page(
        uuid, 0, 100
    ) == source.ledger.store.checkpoints_page(uuid, 0, 100)

    # Importing again changes nothing; the bank goes on taking writes on the target.
    assert run(target.url, monkeypatch, "import", str(export_file)) == 0
    assert "0 events written" in capsys.readouterr().out
    target.ledger.execute(BANK, CreateTransfer("after-move", "ann", "dan", 5))
    assert target.ledger.get_bank(BANK).position == before.position + 1


# --------------------------------------------------------------------------- refused


def exported(
    deployments: Any, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[bytes]:
    source = deployments("sqlite")
    everyday_bank(source.ledger, clock)
    export_file = tmp_path / "source.jsonl"
    assert run(source.url, monkeypatch, "export", "--bank", BANK, "--out", str(export_file)) == 0
    return export_file.read_bytes().splitlines(keepends=True)


def event_line(lines: list[bytes], position: int) -> int:
    return next(
        n
        for n, line in enumerate(lines)
        if json.loads(line).get("type") == "event" and json.loads(line)["position"] == position
    )


@pytest.mark.parametrize(
    "target_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_truncated_or_altered_file_is_refused_with_the_position(
    deployments: Any,
    target_kind: str,
    clock: Clock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = exported(deployments, clock, tmp_path, monkeypatch)
    target = deployments(target_kind)
    damaged = tmp_path / "damaged.jsonl"

    # Cut after event 9: refused at 10, the first missing event.
    damaged.write_bytes(b"".join(lines[: event_line(lines, 9) + 1]))
    capsys.readouterr()
    assert run(target.url, monkeypatch, "import", str(damaged)) == 1
    assert "refused (position 10)" in capsys.readouterr().err

    # Event 6's amount (Ann's 60 minutes to Bob) changed in its stored bytes: refused at 6.
    altered = list(lines)
    n = event_line(lines, 6)
    item = json.loads(altered[n])
    stored = base64.b64decode(item["stored"]).replace(b'"amount_minutes":60', b'"amount_minutes":6')
    assert stored != base64.b64decode(item["stored"])
    item["stored"] = base64.b64encode(stored).decode()
    altered[n] = json.dumps(item).encode() + b"\n"
    damaged.write_bytes(b"".join(altered))
    assert run(target.url, monkeypatch, "import", str(damaged)) == 1
    assert "refused (position 6)" in capsys.readouterr().err

    # Nothing was written.
    assert target.ledger.store.last_version(str(bank_uuid(BANK))) == 0


def test_a_bank_already_there_with_another_history_is_refused(
    deployments: Any,
    clock: Clock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = exported(deployments, clock, tmp_path, monkeypatch)
    export_file = tmp_path / "source.jsonl"
    target = deployments("sqlite")
    # The target has a bank of the same id, with a history of its own.
    target.ledger.create_bank(CreateBank(bank_id=BANK, name="Another riverside"))
    target.ledger.execute(BANK, OpenAccount("zoe", "member"))
    head = target.ledger.get_bank(BANK)

    capsys.readouterr()
    assert run(target.url, monkeypatch, "import", str(export_file)) == 1
    assert "another history" in capsys.readouterr().err
    assert target.ledger.get_bank(BANK) == head
    assert lines  # the file itself verifies: it is the target that differs


def test_an_import_cut_short_is_continued(
    deployments: Any,
    clock: Clock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ledger.application import history_files

    lines = exported(deployments, clock, tmp_path, monkeypatch)
    export_file = tmp_path / "source.jsonl"
    target = deployments("sqlite")
    # The first import writes chunks of 4 events and stops after the first two.
    monkeypatch.setattr(history_files, "events_per_chunk_max", 4)
    real_write = history_files._write_chunk
    writes: list[int] = []

    def failing_write(*args: Any) -> int:
        if len(writes) == 2:
            raise OSError("the disk is full")
        writes.append(real_write(*args))
        return writes[-1]

    monkeypatch.setattr(history_files, "_write_chunk", failing_write)
    capsys.readouterr()
    assert run(target.url, monkeypatch, "import", str(export_file)) == 1
    assert "the disk is full" in capsys.readouterr().err
    assert target.ledger.store.last_version(str(bank_uuid(BANK))) == 8
    # Run again: it carries on from position 8 and ends where the file does.
    monkeypatch.setattr(history_files, "_write_chunk", real_write)
    assert run(target.url, monkeypatch, "import", str(export_file)) == 0
    end = json.loads(lines[-1])
    assert target.ledger.get_bank(BANK).position == end["position"]
    assert target.ledger.get_bank(BANK).chain_head == end["chain_head"]
