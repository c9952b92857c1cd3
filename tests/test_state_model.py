"""State model v2: decisions in bounded memory, history and look-ups in the store.

What a bank's writer keeps in memory is its accounts and open holds; loading a bank reads its
latest snapshot and the events after it, never the whole history; idle banks are unloaded
and no bank has a thread of its own; loading one bank blocks no other, and reads never wait
for a commit. Nothing here measures time: waits poll with a bounded deadline.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock, MakeLedger
from prometheus_client import REGISTRY

from ledger.application import loading
from ledger.application.ledger import Ledger
from ledger.application.verification import verify_bank
from ledger.domain import canonical
from ledger.domain.bank import bank_uuid
from ledger.domain.commands import CreateBank, CreateTransfer, CreateTransfers, OpenAccount
from ledger.domain.errors import DomainError, IdConflict
from ledger.domain.state import SNAPSHOT_FORMAT, BankState
from ledger.domain.views import TransferView
from ledger.storage.store import Snapshot

BANK = "riverside"
WAIT_SECONDS = 10.0
REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def start_bank(ledger: Ledger, bank_id: str = BANK, members: int = 3) -> list[str]:
    ledger.create_bank(CreateBank(bank_id=bank_id, name=f"Bank {bank_id}"))
    names = [f"m{n}" for n in range(members)]
    for name in names:
        ledger.execute(
            bank_id, OpenAccount(account_id=name, kind="member", lower_limit_minutes=-10_000)
        )
    return names


def pay(ledger: Ledger, transfer_id: str, payer: str, payee: str, minutes: int = 1) -> Any:
    return ledger.execute(
        BANK,
        CreateTransfer(
            transfer_id=transfer_id,
            payer_account_id=payer,
            payee_account_id=payee,
            amount_minutes=minutes,
        ),
    )


class CountingReads:
    """Counts the events a store hands out while loading or catching up banks."""

    def __init__(self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events = 0
        events_after = ledger.store.events_after

        def counted(*args: Any, **kwargs: Any) -> list[tuple[int, bytes]]:
            found = events_after(*args, **kwargs)
            self.events += len(found)
            return found

        monkeypatch.setattr(ledger.store, "events_after", counted)


# ----------------------------------------------------------------- snapshots and loading


def test_loading_reads_the_snapshot_and_the_events_after_it_only(
    durable_store_url: str, make_ledger: MakeLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bank snapshotted every 50 changes records 40 batches of 10 transfers (400 changes).
    writer = make_ledger(durable_store_url, snapshot_interval_events=50)
    names = start_bank(writer)
    for batch in range(40):
        items = tuple(
            CreateTransfer(
                transfer_id=f"t{batch}-{n}",
                payer_account_id=names[n % 3],
                payee_account_id=names[(n + 1) % 3],
                amount_minutes=n + 1,
            )
            for n in range(10)
        )
        writer.execute(BANK, CreateTransfers(items=items))
    # Three more payments follow the last snapshot.
    for n in range(3):
        pay(writer, f"late{n}", "m1", "m2")
    position = writer.get_bank(BANK).position
    # Another Ledger loading the bank to write reads the snapshot and the events after it
    # (three here; at most 50 changes' worth), never the 44 events before them.
    reader = make_ledger(durable_store_url, snapshot_interval_events=50)
    reads = CountingReads(reader, monkeypatch)
    pay(reader, "after", "m0", "m1")
    assert reads.events == 3
    assert reader.get_bank(BANK).position == position + 1
    # What it loaded is what a replay of the whole history from event 1 gives.
    uuid = str(bank_uuid(BANK))
    replayed, _ = loading.replay_from_start(reader.store, uuid)
    assert loading.load_bank(reader.store, uuid) == replayed
    assert verify_bank(reader.store, BANK).ok


def test_a_snapshot_this_code_cannot_read_costs_a_replay_not_the_bank(
    durable_store_url: str, make_ledger: MakeLedger
) -> None:
    writer = make_ledger(durable_store_url, snapshot_interval_events=3)
    names = start_bank(writer)
    for n in range(6):
        pay(writer, f"t{n}", names[n % 3], names[(n + 1) % 3], n + 1)
    uuid = str(bank_uuid(BANK))
    kept = writer.store.snapshot(uuid)
    assert kept is not None
    # A snapshot of an older format (format 1 had no creator, keys or member-token keys),
    # kept as the latest (a later one is kept, an earlier one is not).
    old = canonical.decode(kept.state)
    for field in ("created_by", "api_keys", "member_token_keys", "member_tokens_required"):
        del old[field]
    old["format"] = 1
    writer.store.save_snapshot(
        uuid, kept.version + 1, kept.chain_head, canonical.encode(old), START_TIME
    )
    # A fresh process loads the bank by replaying its history, serves it, and replaces the
    # snapshot it could not read with one it can.
    reader = make_ledger(durable_store_url, snapshot_interval_events=3)
    replayed, _ = loading.replay_from_start(reader.store, uuid)
    assert loading.load_bank(reader.store, uuid) == replayed
    pay(reader, "after", "m0", "m1", 5)
    assert (
        reader.get_account(BANK, "m0").balance_minutes
        == replayed.accounts["m0"].balance_minutes - 5
    )
    # The snapshot is taken after the answer: wait for it.
    wait_until(lambda: canonical.decode(_snapshot(reader, uuid).state)["format"] == SNAPSHOT_FORMAT)
    # Taken when the bank was loaded (the replay counts as changes), at the head then.
    assert _snapshot(reader, uuid).version == kept.version + 1
    replayed_now, _ = loading.replay_from_start(reader.store, uuid)
    renewed = BankState.from_snapshot(canonical.decode(_snapshot(reader, uuid).state))
    assert renewed == replayed
    assert loading.load_bank(reader.store, uuid) == replayed_now
    assert verify_bank(reader.store, BANK).ok


def _snapshot(ledger: Ledger, uuid: str) -> Snapshot:
    found = ledger.store.snapshot(uuid)
    assert found is not None
    return found


def test_loading_reads_the_log_in_pages_bounded_in_bytes(
    durable_store_url: str, make_ledger: MakeLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No snapshot: 12 batches of 50 transfers, one event each, about 20 KB apiece.
    writer = make_ledger(durable_store_url, snapshot_interval_events=10**9)
    names = start_bank(writer)
    for batch in range(12):
        items = tuple(
            CreateTransfer(
                transfer_id=f"t{batch}-{n}",
                payer_account_id=names[n % 3],
                payee_account_id=names[(n + 1) % 3],
                amount_minutes=1,
                memo="x" * 200,
            )
            for n in range(50)
        )
        writer.execute(BANK, CreateTransfers(items=items))
    uuid = str(bank_uuid(BANK))
    sizes = [len(stored) for _, stored in writer.store.events_after(uuid, 0, 1000)]
    limit_bytes = 3 * max(sizes)
    monkeypatch.setattr(loading, "page_bytes_max", limit_bytes)
    pages: list[int] = []
    events_after = writer.store.events_after

    def counted(bank: str, version: int, limit: int) -> list[tuple[int, bytes]]:
        page = events_after(bank, version, limit)
        pages.append(sum(len(stored) for _, stored in page))
        return page

    monkeypatch.setattr(writer.store, "events_after", counted)
    state = loading.load_bank(writer.store, uuid)
    assert state.version == len(sizes)
    assert len(pages) > 3
    assert all(page <= limit_bytes for page in pages)
    monkeypatch.undo()
    replayed, _ = loading.replay_from_start(writer.store, uuid)
    assert state == replayed


def test_a_snapshot_that_differs_from_the_history_is_reported_by_verify(
    durable_store_url: str, make_ledger: MakeLedger
) -> None:
    ledger = make_ledger(durable_store_url, snapshot_interval_events=3)
    start_bank(ledger)
    pay(ledger, "t1", "m0", "m1", 30)
    uuid = str(bank_uuid(BANK))
    kept = ledger.store.snapshot(uuid)
    assert kept is not None
    assert verify_bank(ledger.store, BANK).ok
    # Someone rewrites the snapshot: m0 gets 1,000 minutes it never received.
    state = BankState.from_snapshot(canonical.decode(kept.state))
    state.accounts["m0"].balance_minutes += 1_000
    ledger.store.save_snapshot(
        uuid, kept.version + 1, kept.chain_head, canonical.encode(state.to_snapshot()), START_TIME
    )
    # verify replays the history up to the snapshot's position and names the difference.
    check = verify_bank(ledger.store, BANK)
    assert check.report.ok
    assert not check.ok
    assert "snapshot" in check.problems[0]


START_TIME = Clock()()


def test_verify_on_the_command_line(durable_store_url: str, make_ledger: MakeLedger) -> None:
    environment = {"LEDGER_DATABASE_URL": durable_store_url}
    ledger = make_ledger(durable_store_url)
    start_bank(ledger)
    pay(ledger, "t1", "m0", "m1", 30)
    ledger.close()
    result = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "verify", "--bank", BANK, "--bank", "nowhere"],
        cwd=REPO_ROOT,
        env={**environment, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # The bank verifies; a bank the store does not hold is reported, and the exit code says so.
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"bank {BANK}: 5 events, 1 transfers, 3 accounts; position 5")
    assert lines[1] == "  OK"
    assert lines[2] == "bank nowhere: no history in this store"


# ----------------------------------------------------------------- many banks, bounded memory


def test_no_bank_has_a_thread_and_idle_banks_are_unloaded(
    store_url: str, make_ledger: MakeLedger
) -> None:
    # At most five banks stay resident; a bank idle for a moment is unloaded.
    ledger = make_ledger(store_url, resident_banks_max=5, writer_threads=2, bank_idle_seconds=0.2)
    threads_with_ledger = threading.active_count()
    for number in range(20):
        ledger.create_bank(CreateBank(bank_id=f"b{number}", name=f"Bank {number}"))
        assert ledger.writers.resident_count <= 5
    # Twenty banks, and no thread was started for any of them: the writers run on the pool's
    # two threads (and one watcher), whatever the number of banks.
    assert threading.active_count() == threads_with_ledger
    writer_threads = [t for t in threading.enumerate() if t.name.startswith("writer-")]
    assert len(writer_threads) == 2 + 1
    # Once idle, they are unloaded; each still answers, loaded again on demand.
    wait_until(lambda: ledger.writers.resident_count == 0)
    for number in range(20):
        assert ledger.get_bank(f"b{number}").name == f"Bank {number}"
    ledger.execute("b7", OpenAccount(account_id="ann", kind="member"))
    assert ledger.get_bank("b7").account_count == 1


def test_a_hold_of_a_bank_not_in_memory_expires_at_its_deadline(
    store_url: str, make_ledger: MakeLedger, clock: Clock
) -> None:
    ledger = make_ledger(store_url, bank_idle_seconds=0.05, expiry_sweep_interval_seconds=0.02)
    start_bank(ledger)
    held = ledger.execute(
        BANK,
        CreateTransfer(
            transfer_id="h1",
            payer_account_id="m0",
            payee_account_id="m1",
            amount_minutes=30,
            pending=True,
            timeout_seconds=60,
        ),
    )
    assert isinstance(held, TransferView)
    # The bank goes idle and is unloaded, with its hold still open.
    wait_until(lambda: ledger.writers.resident_count == 0)
    assert ledger.get_transfer(BANK, "h1").status == "pending"
    # At the deadline the sweep finds the due hold in the store and expires it.
    clock.advance(seconds=60)
    wait_until(lambda: ledger.get_transfer(BANK, "h1").status == "expired")
    assert ledger.get_account(BANK, "m0").pending_debit_minutes == 0


# ----------------------------------------------------------------- nobody waits for anybody


def test_loading_one_bank_blocks_no_other(
    store_url: str, make_ledger: MakeLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = make_ledger(store_url, bank_idle_seconds=0.05)
    start_bank(ledger, "slow")
    start_bank(ledger, "quick")
    wait_until(lambda: ledger.writers.resident_count == 0)
    # Loading "slow" is stuck (its snapshot read hangs) ...
    release = threading.Event()
    loading_started = threading.Event()
    snapshot = ledger.store.snapshot
    slow_uuid = str(bank_uuid("slow"))

    def stuck(uuid: str) -> Any:
        if uuid == slow_uuid:
            loading_started.set()
            assert release.wait(WAIT_SECONDS)
        return snapshot(uuid)

    monkeypatch.setattr(ledger.store, "snapshot", stuck)
    answers: dict[str, Any] = {}
    slow = threading.Thread(
        target=lambda: answers.update(
            slow=ledger.execute("slow", OpenAccount(account_id="x", kind="member"))
        )
    )
    slow.start()
    assert loading_started.wait(WAIT_SECONDS)
    # ... while "quick" loads and commits, and "slow" can still be read.
    try:
        ledger.execute("quick", OpenAccount(account_id="x", kind="member"))
        assert ledger.get_bank("quick").account_count == 4
        assert ledger.get_bank("slow").account_count == 3
        assert "slow" not in answers
    finally:
        release.set()
    slow.join(WAIT_SECONDS)
    assert ledger.get_bank("slow").account_count == 4


def test_reads_never_wait_for_a_commit(
    store_url: str, make_ledger: MakeLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = make_ledger(store_url)
    start_bank(ledger)
    pay(ledger, "t1", "m0", "m1", 5)
    # The writer is held inside the commit of a payment...
    insert = ledger.store.recorder.insert_events
    holding, release = threading.Event(), threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        holding.set()
        assert release.wait(WAIT_SECONDS)
        return insert(*args, **kwargs)

    monkeypatch.setattr(ledger.store.recorder, "insert_events", held)
    payer = threading.Thread(target=lambda: pay(ledger, "t2", "m0", "m1", 7))
    payer.start()
    assert holding.wait(WAIT_SECONDS)
    # ... and every read answers at once, with what was committed (not the held payment).
    try:
        assert ledger.get_account(BANK, "m0").balance_minutes == -5
        assert [t.transfer_id for t in ledger.list_account_transfers(BANK, "m0", 10, "")[0]] == [
            "t1"
        ]
        assert ledger.get_bank(BANK).transfer_count == 1
    finally:
        release.set()
    payer.join(WAIT_SECONDS)
    assert ledger.get_account(BANK, "m0").balance_minutes == -12


def test_a_retry_of_an_id_from_long_ago_finds_its_first_write(
    durable_store_url: str, make_ledger: MakeLedger
) -> None:
    # A transfer recorded by a Ledger that has since gone away.
    first = make_ledger(durable_store_url)
    start_bank(first)
    original = pay(first, "long-ago", "m0", "m1", 25)
    position = first.get_bank(BANK).position
    # A new Ledger knows nothing of it in memory: it takes the id as new, the store refuses
    # the commit (the id is taken), and the batch is run again with the id looked up.
    second = make_ledger(durable_store_url)
    conflicts = REGISTRY.get_sample_value("ledger_writer_conflicts_total") or 0.0
    assert pay(second, "long-ago", "m0", "m1", 25) == original
    assert REGISTRY.get_sample_value("ledger_writer_conflicts_total") == conflicts + 1
    # Nothing was recorded twice; other content under that id is refused, naming the field.
    assert second.get_bank(BANK).position == position
    with pytest.raises(IdConflict) as info:
        pay(second, "long-ago", "m0", "m1", 26)
    assert info.value.reason == "EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES"
    assert verify_bank(second.store, BANK).ok


def test_a_retry_from_long_ago_that_todays_balance_would_refuse_gets_its_first_result(
    durable_store_url: str, make_ledger: MakeLedger
) -> None:
    # The payer has since spent down to its limit: decided today, the retried transfer (and
    # the retried batch item) would be refused. A retry is answered from its first write.
    first = make_ledger(durable_store_url)
    start_bank(first)
    original = pay(first, "long-ago", "m0", "m1", 25)
    grouped = first.execute(
        BANK,
        CreateTransfers(
            (
                CreateTransfer("long-ago-item", "m0", "m2", 5),
                CreateTransfer("long-ago-other", "m1", "m2", 5),
            )
        ),
    )
    pay(first, "spend-down", "m0", "m2", 10_000 - 25 - 5)
    position = first.get_bank(BANK).position
    # A new Ledger takes the ids as new; its first decision refuses them on the limit.
    second = make_ledger(durable_store_url)
    assert pay(second, "long-ago", "m0", "m1", 25) == original
    again = second.execute(
        BANK,
        CreateTransfers(
            (
                CreateTransfer("long-ago-item", "m0", "m2", 5),
                CreateTransfer("long-ago-other", "m1", "m2", 5),
            )
        ),
    )
    assert again == grouped
    assert all(item.error is None for item in again)
    # A new transfer over the limit is still refused, and nothing was recorded twice.
    with pytest.raises(DomainError) as refused:
        pay(second, "new-one", "m0", "m1", 1)
    assert refused.value.reason == "EXCEEDS_LOWER_LIMIT"
    assert second.get_bank(BANK).position == position
    assert second.get_account(BANK, "m0").balance_minutes == -10_000
    assert verify_bank(second.store, BANK).ok
