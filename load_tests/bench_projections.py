"""Benchmarks of issue 4's projections on PostgreSQL: rebuild speed, statement pages, lag.

    .venv/bin/python -m load_tests.bench_projections [--quick] [--repeats 3] [--only rebuild]
        [--lag-runner thread|process|both] [--lag-repeats N] [--lag-load B,S,U ...]

Every part runs in a fresh schema of the `test` database (LEDGER_BENCH_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/test), dropped afterwards. Bounded in time: the default
run takes a few minutes; --quick about one.

(i) Rebuild. Two histories, because "an event" means two different things here:
  A. "grouped": 200,000 transfers written through the Ledger facade as CreateTransfers
     requests of 1,000, so each stored event (one row of the event table) holds 1,000
     transfers; every other one involves one hub account.
  B. "fine-grained": 100,000 events of one change each (immediate and pending transfers,
     posts, voids, reversals), as a lightly loaded unary write path records them: each
     command decided in a Batch of its own by the writer's code (bank.execute,
     history.encode, index_write), then committed 1,000 events per LedgerStore.append for
     speed.
  For each: reset() then run_until_caught_up(), repeated; medians of events/s (stored rows),
  transfers/s and statement rows/s, the CPU time of this process and of the PostgreSQL
  backend serving the views, and the time to only read and decode the log.
(ii) Statement pages: the hub account of history A has 100,000 statement entries; a page of
  100 entries, newest first and deep in the middle, fetched with keyset SQL (and through
  projections.queries.statement_page when that module exists): median and p99.
(iii) Lag: writers at a fixed (open-loop) rate for --lag-seconds while the runner follows,
  in a thread of the writers' process (as inside the server) or in its own process; per
  event, the time from its timestamp (taken as the writer applied it, before its commit) to
  the commit of the view batch that applied it; and the lag in events, sampled.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from ledger.application.ledger import Ledger
from ledger.config import Settings
from ledger.domain import bank, history, holds, limits
from ledger.domain.access import deployment_uuid
from ledger.domain.batch import Batch
from ledger.domain.commands import (
    BankCommand,
    Command,
    CreateBank,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    PostPending,
    ReverseTransfer,
    VoidPending,
)
from ledger.domain.errors import DomainError
from ledger.domain.records import RecordBook, RequestRecord, TransferRecord
from ledger.domain.state import BankState
from ledger.domain.views import BatchItemResult
from ledger.storage.index import ACCOUNT_KEY, TRANSFER_KEY, IndexWrite, index_write
from ledger.storage.rows import ACCOUNT_COLUMNS, TRANSFER_COLUMNS
from ledger.storage.store import LedgerStore
from projections.accounts import AccountsProjection
from projections.db import Cursor, ViewDatabase, open_views
from projections.events import log_event
from projections.runner import ProjectionRunner

nan = math.nan
POSTGRES_URL_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
# Targets of issue 4.
rebuild_events_per_second_min = 50_000
statement_page_ms_max = 10.0
lag_seconds_max = 1.0

page_entries = 100
# Write loads of part (iii): CreateTransfers requests/s, transfers each, unary requests/s.
lag_loads_default = ("20,100,500", "50,100,1000", "100,100,0")
lower_limit_minutes = -limits.limit_minutes_max
categories = ("care", "garden", "transport", "repairs", "teaching", "")
# History B: stored events per LedgerStore.append.
fine_grained_events_per_commit = 1_000


def postgres_url() -> str:
    return os.environ.get("LEDGER_BENCH_POSTGRES_URL", POSTGRES_URL_DEFAULT)


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A database URL on a new schema, dropped afterwards."""
    base = postgres_url()
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{base}{'&' if '?' in base else '?'}schema={schema}"
    finally:
        with psycopg.connect(base, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def settings(url: str) -> Settings:
    return Settings(database_url=url, writer_timeout_seconds=300.0)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def say(text: str) -> None:
    print(text, flush=True)


# ----------------------------------------------------------------- machine


def machine_facts() -> dict[str, str]:
    cpu = "?"
    memory = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) // 1024} MiB"
                break
    except OSError:
        pass
    with psycopg.connect(postgres_url()) as connection:
        row = connection.execute("SHOW server_version").fetchone()
        commit = connection.execute("SHOW synchronous_commit").fetchone()
    commit_hash = subprocess.run(
        ["git", "log", "-1", "--format=%h"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git commit": commit_hash or "?",
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "postgresql": str(row[0]) if row else "?",
        "synchronous_commit": str(commit[0]) if commit else "?",
    }


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ----------------------------------------------------------------- histories


def members(count: int) -> list[str]:
    return [f"m{n}" for n in range(count)]


def open_accounts(ledger: Ledger, bank_id: str, account_ids: Sequence[str]) -> None:
    ledger.create_bank(CreateBank(bank_id=bank_id, name=f"Bench bank {bank_id}"))
    for account_id in account_ids:
        ledger.execute(
            bank_id,
            OpenAccount(
                account_id=account_id, kind="member", lower_limit_minutes=lower_limit_minutes
            ),
        )


@dataclass
class History:
    name: str
    events: int
    transfers: int
    write_seconds: float
    statement_rows: int = 0


def write_grouped_history(ledger: Ledger, transfers: int, hub_every: int) -> History:
    """Transfers through the facade as CreateTransfers of 1,000: one stored event per request."""
    rng = random.Random(1)
    bank_id = "grouped"
    people = members(1_000)
    open_accounts(ledger, bank_id, [*people, "hub"])
    per_request = limits.transfers_per_batch_max
    started = time.perf_counter()
    for request in range(transfers // per_request):
        items = []
        for i in range(per_request):
            payer, payee = rng.sample(people, 2)
            if i % hub_every == 0:
                payer, payee = (payer, "hub") if rng.random() < 0.5 else ("hub", payee)
            items.append(
                CreateTransfer(
                    transfer_id=f"g{request}-{i}",
                    payer_account_id=payer,
                    payee_account_id=payee,
                    amount_minutes=rng.randint(15, 240),
                    memo="an afternoon of help",
                    category=rng.choice(categories),
                    service_date="2025-02-28",
                )
            )
        results: list[BatchItemResult] = ledger.execute(
            bank_id, CreateTransfers(items=tuple(items))
        )
        assert all(r.error is None for r in results), [r.error for r in results if r.error][:3]
    elapsed = time.perf_counter() - started
    # Every row of the log, the bank's creation and 1,001 account openings included.
    events = ledger.get_bank(bank_id).position
    return History("A grouped", events, transfers, elapsed)


def _merged(writes: Sequence[IndexWrite]) -> IndexWrite:
    """The index rows of consecutive batches as one write. New rows are inserted once and
    changed rows written once, each as it stands after the last batch: one upsert statement
    may not change a row twice. Rows that are only ever added are kept in order."""
    assert writes
    assert ACCOUNT_COLUMNS[:2] == ACCOUNT_KEY
    assert TRANSFER_COLUMNS[:2] == TRANSFER_KEY
    merged = IndexWrite(bank=writes[-1].bank[-1:])
    # Keyed by (bank_uuid, id): the rows' first two columns.
    new_accounts: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    accounts: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    new_transfers: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    transfers: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for write in writes:
        for added, changed, new_rows, changed_rows in (
            (new_accounts, accounts, write.new_accounts, write.accounts),
            (new_transfers, transfers, write.new_transfers, write.transfers),
        ):
            for row in new_rows:
                assert row[:2] not in added, f"{row[1]} inserted twice"
                added[row[:2]] = row
            for row in changed_rows:
                # Added earlier in these batches: the insert takes the row as it is now.
                (added if row[:2] in added else changed)[row[:2]] = row
        merged.account_transfers += write.account_transfers
        merged.requests += write.requests
        merged.chain += write.chain
        merged.api_keys += write.api_keys
        merged.api_key_revocations += write.api_key_revocations
        merged.account_metadata += write.account_metadata
        if write.member_token_keys is not None:
            merged.member_token_keys = write.member_token_keys  # replaced whole
    merged.new_accounts = list(new_accounts.values())
    merged.accounts = list(accounts.values())
    merged.new_transfers = list(new_transfers.values())
    merged.transfers = list(transfers.values())
    return merged


class _FineGrainedWriter:
    """One change per event, committed 1,000 events at a time, through the ledger's own code.

    Each command is decided in a Batch of its own, as the bank's writer decides a batch of
    one (writer.py `_attempt`, `_apply`, `_commit`): several commands in one Batch would
    share events (consecutive new transfers join one TransfersCreated). The encoded events
    of 1,000 such batches are then committed by one LedgerStore.append, with their index
    rows merged. The records those batches read (transfers, request ids) come from this
    writer's own copy of what the index tables hold once the events are committed: the
    store has not got the latest ones yet, and one look-up per command would be slow.
    """

    def __init__(self, store: LedgerStore, bank_id: str, people: list[str]) -> None:
        self.store, self.bank_id, self.people = store, bank_id, people
        self.rng = random.Random(2)
        self.state = BankState(bank_uuid=str(bank.bank_uuid(bank_id)))
        self._transfer_records: dict[str, TransferRecord] = {}
        self._request_records: dict[str, RequestRecord] = {}
        # Decided (and in `state`) but not committed to the store yet.
        self._stored: list[history.StoredEvent] = []
        self._writes: list[IndexWrite] = []
        self.run(CreateBank(bank_id=bank_id, name="Bench"))
        for account_id in people:
            self.run(
                OpenAccount(
                    account_id=account_id, kind="member", lower_limit_minutes=lower_limit_minutes
                )
            )
        self.pending: list[str] = []
        self.posted: list[str] = []
        self.transfers = 0

    def _transfers(self, transfer_ids: Iterable[str]) -> dict[str, TransferRecord]:
        # Copies: a batch changes its records in place, and only a committed batch's
        # changes become what the tables hold.
        found = self._transfer_records
        return {i: replace(found[i]) for i in transfer_ids if i in found}

    def _requests(self, request_ids: Iterable[str]) -> dict[str, RequestRecord]:
        found = self._request_records
        return {i: found[i] for i in request_ids if i in found}

    def run(self, command: Command) -> bool:
        """Decide one command in its own batch; False if it was refused (nothing is kept)."""
        command.validate()
        now = datetime.now(UTC)
        records = RecordBook(self._transfers, self._requests)
        records.prefetch(*bank.referenced_ids([command]))
        batch = Batch(self.state, now, records)
        try:
            holds.expire_due(batch, now)
            bank.execute(batch, self.bank_id, command)
        except DomainError:
            # Refused: the batch is dropped whole (a hold due now expires in the next one).
            batch.rollback()
            return False
        stored = history.encode(batch, self.state.chain_head)
        self._writes.append(index_write(batch, stored))
        self._stored += stored
        batch.commit(stored[-1].chain_hash)
        self._transfer_records.update(records.changed_transfers)
        self._request_records.update(records.new_requests)
        if len(self._stored) >= fine_grained_events_per_commit:
            self.flush()
        return True

    def flush(self) -> None:
        """Commit the events decided since the last commit, with their index rows."""
        if self._stored:
            self.store.append(self.state.bank_uuid, self._stored, _merged(self._writes))
            self._stored, self._writes = [], []

    def step(self, n: int) -> None:
        rng = self.rng
        choice = rng.random()
        if choice < 0.12 and self.pending:
            held = self.pending.pop(rng.randrange(len(self.pending)))
            amount = rng.choice([None, 5])
            if self.run(PostPending(request_id=f"p{n}", transfer_id=held, amount_minutes=amount)):
                self.posted.append(held)
        elif choice < 0.16 and self.pending:
            held = self.pending.pop(rng.randrange(len(self.pending)))
            self.run(VoidPending(request_id=f"v{n}", transfer_id=held))
        elif choice < 0.20 and self.posted:
            original = self.posted.pop(rng.randrange(len(self.posted)))
            if self.run(
                ReverseTransfer(transfer_id=f"r{n}", reverses_transfer_id=original, reason="x")
            ):
                self.transfers += 1
        else:
            payer, payee = rng.sample(self.people, 2)
            pending = choice > 0.80
            created = self.run(
                CreateTransfer(
                    transfer_id=f"f{n}",
                    payer_account_id=payer,
                    payee_account_id=payee,
                    amount_minutes=rng.randint(15, 240),
                    memo="an hour of help",
                    category=rng.choice(categories),
                    pending=pending,
                )
            )
            if created:
                (self.pending if pending else self.posted).append(f"f{n}")
                self.transfers += 1


def write_fine_grained_history(store: LedgerStore, events: int) -> History:
    people = members(1_000)
    started = time.perf_counter()
    writer = _FineGrainedWriter(store, "fine", people)
    n = 0
    while writer.state.version < events:
        writer.step(n)
        n += 1
    writer.flush()
    elapsed = time.perf_counter() - started
    return History("B fine-grained", writer.state.version, writer.transfers, elapsed)


# ----------------------------------------------------------------- (i) rebuild


@dataclass
class Rebuild:
    history: History
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    server_cpu_seconds: list[float] = field(default_factory=list)
    read_seconds: list[float] = field(default_factory=list)


def count_rows(views: ViewDatabase, table: str) -> int:
    return int(views.query(f"SELECT count(*) FROM {table}")[0][0])


def backend_cpu_seconds(views: ViewDatabase) -> tuple[int, float]:
    """The PostgreSQL backend serving the views' connection, and the CPU it has used so far.

    A single-threaded rebuild keeps using the pool's one connection; if the pool handed out
    another one, the caller sees a different pid and reports nothing."""
    pid = int(views.query("SELECT pg_backend_pid()")[0][0])
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return pid, float("nan")  # the server is not on this machine
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return pid, ticks / os.sysconf("SC_CLK_TCK")


def read_only_pass(store: LedgerStore) -> float:
    """Seconds to read and decode the whole log in pages, applying nothing."""
    started = time.perf_counter()
    position = 0
    while True:
        page = store.recorder.select_notifications(start=position + 1, limit=1_000)
        if not page:
            break
        for notification in page:
            # As the runner reads the log: the deployment's own history is no bank's.
            if str(notification.originator_id) != deployment_uuid:
                log_event(notification.id, notification.state)
        position = page[-1].id
    return time.perf_counter() - started


def measure_rebuild(
    store: LedgerStore, views: ViewDatabase, history: History, repeats: int
) -> Rebuild:
    result = Rebuild(history)
    runner = ProjectionRunner(store, views, AccountsProjection())
    for _ in range(repeats):
        runner.reset()
        pid, server_started = backend_cpu_seconds(views)
        started, cpu_started = time.perf_counter(), time.process_time()
        applied = runner.run_until_caught_up(time_limit_seconds=1_800)
        result.seconds.append(time.perf_counter() - started)
        result.cpu_seconds.append(time.process_time() - cpu_started)
        pid_after, server_ended = backend_cpu_seconds(views)
        same_backend = pid_after == pid
        result.server_cpu_seconds.append(server_ended - server_started if same_backend else nan)
        assert runner.lag_events() == 0
        assert applied >= history.events, (applied, history.events)
        result.read_seconds.append(read_only_pass(store))
    history.statement_rows = count_rows(views, "view_statement_entries")
    return result


def rebuild_table(rebuilds: list[Rebuild]) -> list[str]:
    lines = [
        "| history | events (rows) | transfers | statement rows | rebuild s: median (runs) "
        "| events/s | transfers/s | statement rows/s | best run events/s "
        "| runner process CPU s | views backend CPU s | read+decode only s |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rebuilds:
        h = r.history
        median = statistics.median(r.seconds)
        best = min(r.seconds)
        lines.append(
            f"| {h.name} | {h.events:,} | {h.transfers:,} | {h.statement_rows:,} "
            f"| {median:.2f} ({', '.join(f'{s:.2f}' for s in r.seconds)}) "
            f"| {h.events / median:,.0f} | {h.transfers / median:,.0f} "
            f"| {h.statement_rows / median:,.0f} | {h.events / best:,.0f} "
            f"| {statistics.median(r.cpu_seconds):.2f} "
            f"| {statistics.median(r.server_cpu_seconds):.2f} "
            f"| {statistics.median(r.read_seconds):.2f} |"
        )
    return lines


# ----------------------------------------------------------------- (ii) statement pages

_PAGE_SQL = (
    "SELECT seq, transfer_id, kind, counterparty_account_id, amount_minutes, balance_minutes,"
    " memo, category, service_date, recorded_at, position FROM view_statement_entries"
    " WHERE bank_id = ? AND account_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
)


def time_calls(call: Callable[[], object], count: int) -> list[float]:
    """Milliseconds of each of `count` calls (after a few warm-up calls)."""
    for _ in range(10):
        call()
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1_000)
    return timings


def measure_pages(views: ViewDatabase, bank_id: str, account_id: str, count: int) -> list[str]:
    entries = int(
        views.query(
            "SELECT entries FROM view_accounts WHERE bank_id = ? AND account_id = ?",
            (bank_id, account_id),
        )[0][0]
    )
    middle = entries // 2
    cases: list[tuple[str, Callable[[], object]]] = []
    for label, below in (("newest", entries + 1), ("middle", middle)):

        def raw(below: int = below) -> object:
            rows = views.query(_PAGE_SQL, (bank_id, account_id, below, page_entries))
            assert len(rows) == page_entries
            return rows

        cases.append((f"keyset SQL, {label} page", raw))
    queries: Any = _optional_queries()
    if queries is not None:
        middle_token = _token_at(queries, views, bank_id, account_id, middle)
        for label, token in (("newest", ""), ("middle", middle_token)):

            def page(token: str = token) -> object:
                rows, _ = queries.statement_page(views, bank_id, account_id, page_entries, token)
                assert len(rows) == page_entries
                return rows

            cases.append((f"queries.statement_page, {label} page", page))
    lines = [
        f"account with {entries:,} statement entries; {count} fetches of {page_entries} entries"
        " per case",
        "",
        "| case | median ms | p99 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for label, call in cases:
        timings = time_calls(call, count)
        lines.append(
            f"| {label} | {statistics.median(timings):.3f} | {percentile(timings, 0.99):.3f} "
            f"| {max(timings):.3f} |"
        )
    plan = views.query("EXPLAIN ANALYZE " + _PAGE_SQL, (bank_id, account_id, middle, page_entries))
    lines += ["", "plan of the middle page:", "", "```", *(str(r[0]) for r in plan), "```"]
    return lines


def _optional_queries() -> Any:
    """projections.queries, if that module exists yet (it is written alongside this one)."""
    try:
        module = importlib.import_module("projections.queries")
    except ImportError:
        return None
    return module if hasattr(module, "statement_page") else None


def _token_at(queries: Any, views: ViewDatabase, bank_id: str, account_id: str, seq: int) -> str:
    """The page token whose page starts just below `seq`, found by paging from the top."""
    token = ""
    while True:
        rows, next_token = queries.statement_page(views, bank_id, account_id, 1_000, token)
        if not next_token or rows[-1].seq <= seq + 1:
            return str(next_token)
        token = next_token


# ----------------------------------------------------------------- (iii) lag


class _TimedProjection(AccountsProjection):
    """The accounts projection, keeping the timestamps of the batch it is applying."""

    def __init__(self) -> None:
        self.batch_timestamps: list[datetime] = []

    def apply(self, cursor: Cursor, events: Sequence[Any]) -> None:
        super().apply(cursor, events)
        self.batch_timestamps = [event.timestamp for event in events]


class _TimedRunner(ProjectionRunner):
    """Notes each applied event's lag: from its timestamp to the commit of its view batch."""

    def __init__(self, store: LedgerStore, views: ViewDatabase) -> None:
        self.timed = _TimedProjection()
        super().__init__(store, views, self.timed)
        self.event_lags_seconds: list[float] = []
        self.batches = 0

    def run_once(self) -> int:
        applied = super().run_once()
        if applied:
            committed = datetime.now(UTC)
            self.event_lags_seconds.extend(
                (committed - t).total_seconds() for t in self.timed.batch_timestamps
            )
            self.batches += 1
        return applied


class _Follower:
    """The runner following the log during part (iii): in this process, or in a child."""

    def __init__(self, url: str, store: LedgerStore, views: ViewDatabase, mode: str) -> None:
        self.mode, self.store, self.views = mode, store, views
        self.runner = _TimedRunner(store, views)
        self.runner.run_until_caught_up(time_limit_seconds=600)
        self.runner.event_lags_seconds.clear()  # the set-up's events are not part of the load
        self.child: subprocess.Popen[str] | None = None
        if mode == "process":
            self.child = subprocess.Popen(
                [sys.executable, "-m", "load_tests.bench_projections", "--follow-child", url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert self.child.stdout is not None
            assert self.child.stdout.readline().strip() == "following"
        else:
            self.runner.start(poll_interval_seconds=0.01)

    def lag_events(self) -> int:
        head = self.store.recorder.max_notification_id() or 0
        return max(0, head - self.runner.stored_position())

    def finish(self) -> tuple[list[float], int]:
        """Stop following; the per-event lags and the number of view batches."""
        if self.child is None:
            self.runner.stop()
            return self.runner.event_lags_seconds, self.runner.batches
        output, _ = self.child.communicate(timeout=120)
        report = json.loads(output)
        return list(report["lags"]), int(report["batches"])


def follow_child(url: str) -> int:
    """Part (iii) in its own process: follow until stdin closes, then report on stdout."""
    store = LedgerStore(env=settings(url).eventsourcing_env())
    views = open_views(url)
    runner = _TimedRunner(store, views)
    runner.start(poll_interval_seconds=0.01)
    print("following", flush=True)
    sys.stdin.read()  # the parent closes it once the view has caught up
    runner.stop()
    print(json.dumps({"lags": runner.event_lags_seconds, "batches": runner.batches}))
    views.close()
    store.close()
    return 0


_RUNNER_PLACES = {"thread": "a thread of the writers' process", "process": "its own process"}


@dataclass
class LagLoad:
    banks: int
    batch_requests_per_second: float
    transfers_per_batch: int
    unary_requests_per_second: float
    seconds: float
    runner_mode: str = "thread"

    @property
    def offered_transfers_per_second(self) -> float:
        return (
            self.batch_requests_per_second * self.transfers_per_batch
            + self.unary_requests_per_second
        )


def _paced(
    rate: float, seconds: float, pool: ThreadPoolExecutor, job: Callable[[int], None]
) -> list[Future[None]]:
    """Submit job(k) at a fixed rate (open loop: a slow job does not delay the next one)."""
    futures: list[Future[None]] = []
    if rate <= 0:
        return futures
    started = time.monotonic()
    k = 0
    while k / rate < seconds:
        delay = started + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        futures.append(pool.submit(job, k))
        k += 1
    return futures


@dataclass
class LagRun:
    """The figures of one run of part (iii), for the summary over repeats."""

    load: LagLoad
    achieved_transfers_per_second: float
    lag_p50_seconds: float
    lag_p99_seconds: float
    lag_max_seconds: float
    lag_events_p99: float
    write_p99_seconds: float
    load_average: str


def lag_summary(runs: list[LagRun]) -> list[str]:
    """One row per load and runner placement: medians over its repeats."""
    groups: dict[tuple[float, str], list[LagRun]] = {}
    for run in runs:
        key = (run.load.offered_transfers_per_second, run.load.runner_mode)
        groups.setdefault(key, []).append(run)
    lines = [
        "| runner | offered transfers/s | achieved (median) | event lag p50 s | p99 s "
        "| max s | p99 of each run | lag events p99 | write request p99 s | runs |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for (offered, mode), group in sorted(groups.items()):

        def median(value: Callable[[LagRun], float], group: list[LagRun] = group) -> float:
            return statistics.median(value(run) for run in group)

        each = ", ".join(f"{run.lag_p99_seconds:.2f}" for run in group)
        lines.append(
            f"| {_RUNNER_PLACES[mode]} | {offered:,.0f} "
            f"| {median(lambda r: r.achieved_transfers_per_second):,.0f} "
            f"| {median(lambda r: r.lag_p50_seconds):.3f} "
            f"| {median(lambda r: r.lag_p99_seconds):.3f} "
            f"| {median(lambda r: r.lag_max_seconds):.3f} | {each} "
            f"| {median(lambda r: r.lag_events_p99):.0f} "
            f"| {median(lambda r: r.write_p99_seconds):.3f} | {len(group)} |"
        )
    return lines


def measure_lag(url: str, load: LagLoad) -> tuple[list[str], LagRun]:
    ledger = Ledger(settings(url))
    views = open_views(url)
    try:
        bank_ids = [f"live-{n}" for n in range(load.banks)]
        people = members(200)
        for bank_id in bank_ids:
            open_accounts(ledger, bank_id, people)
        follower = _Follower(url, ledger.store, views, load.runner_mode)
        errors: list[str] = []
        counts = {"transfers": 0}
        counts_lock = threading.Lock()

        def batch(k: int) -> None:
            rng = random.Random(k)
            items = tuple(
                CreateTransfer(
                    transfer_id=f"b{k}-{i}",
                    payer_account_id=pair[0],
                    payee_account_id=pair[1],
                    amount_minutes=rng.randint(15, 240),
                    category=rng.choice(categories),
                )
                for i, pair in enumerate(
                    rng.sample(people, 2) for _ in range(load.transfers_per_batch)
                )
            )
            submit(bank_ids[k % len(bank_ids)], CreateTransfers(items=items), len(items))

        def unary(k: int) -> None:
            rng = random.Random(-k - 1)
            payer, payee = rng.sample(people, 2)
            command = CreateTransfer(
                transfer_id=f"u{k}",
                payer_account_id=payer,
                payee_account_id=payee,
                amount_minutes=rng.randint(15, 240),
            )
            submit(bank_ids[k % len(bank_ids)], command, 1)

        write_seconds: list[float] = []

        def submit(bank_id: str, command: BankCommand, transfers: int) -> None:
            started = time.perf_counter()
            try:
                ledger.execute(bank_id, command)
            except DomainError as error:
                errors.append(error.reason)
                return
            finally:
                write_seconds.append(time.perf_counter() - started)
            with counts_lock:
                counts["transfers"] += transfers

        samples: list[int] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.05):
                samples.append(follower.lag_events())

        head_before = ledger.store.recorder.max_notification_id() or 0
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=64) as pool:
            pacers = [
                threading.Thread(
                    target=_paced, args=(load.batch_requests_per_second, load.seconds, pool, batch)
                ),
                threading.Thread(
                    target=_paced, args=(load.unary_requests_per_second, load.seconds, pool, unary)
                ),
            ]
            for pacer in pacers:
                pacer.start()
            for pacer in pacers:
                pacer.join()
        written_seconds = time.monotonic() - started
        deadline = time.monotonic() + 120
        while follower.lag_events() > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        catch_up_seconds = time.monotonic() - started - written_seconds
        sampling.set()
        sampler.join()
        lag_at_end = follower.lag_events()
        lags, batches = follower.finish()
        head_after = ledger.store.recorder.max_notification_id() or 0
        lines = [
            f"runner: {_RUNNER_PLACES[load.runner_mode]}",
            f"offered: {load.batch_requests_per_second:g} CreateTransfers/s of "
            f"{load.transfers_per_batch} + {load.unary_requests_per_second:g} unary "
            f"CreateTransfer/s over {load.banks} banks = "
            f"{load.offered_transfers_per_second:,.0f} transfers/s for {load.seconds:g} s",
            f"achieved: {counts['transfers'] / written_seconds:,.0f} transfers/s "
            f"({counts['transfers']:,} transfers in {written_seconds:.1f} s, "
            f"{len(errors)} refused), {head_after - head_before:,} events "
            f"({(head_after - head_before) / written_seconds:,.0f} events/s)",
            f"view batches: {batches:,}; caught up {catch_up_seconds:.2f} s after the writers"
            f" stopped; lag at the end {lag_at_end} events",
            "",
            "| lag | median | p99 | max |",
            "|---|---:|---:|---:|",
            f"| per event, seconds (timestamp to view commit) | {statistics.median(lags):.3f} "
            f"| {percentile(lags, 0.99):.3f} | {max(lags):.3f} |",
            f"| lag in events (log head - view position), every 50 ms ({len(samples)} samples) "
            f"| {statistics.median(samples):.0f} | {percentile(samples, 0.99):.0f} "
            f"| {max(samples)} |",
            f"| for comparison: write request latency, seconds (execute() call to its return) "
            f"| {statistics.median(write_seconds):.3f} | {percentile(write_seconds, 0.99):.3f} "
            f"| {max(write_seconds):.3f} |",
        ]
        run = LagRun(
            load=load,
            achieved_transfers_per_second=counts["transfers"] / written_seconds,
            lag_p50_seconds=statistics.median(lags),
            lag_p99_seconds=percentile(lags, 0.99),
            lag_max_seconds=max(lags),
            lag_events_p99=percentile(samples, 0.99),
            write_p99_seconds=percentile(write_seconds, 0.99),
            load_average=load_average(),
        )
        return lines, run
    finally:
        views.close()
        ledger.close()


# ----------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--transfers", type=int, default=200_000, help="history A transfers")
    parser.add_argument("--events", type=int, default=100_000, help="history B events")
    parser.add_argument("--repeats", type=int, default=3, help="rebuilds per history")
    parser.add_argument("--page-fetches", type=int, default=2_000)
    parser.add_argument("--lag-seconds", type=float, default=20.0)
    parser.add_argument("--lag-banks", type=int, default=4)
    parser.add_argument("--lag-repeats", type=int, default=1, help="runs of each load level")
    parser.add_argument(
        "--lag-load",
        action="append",
        metavar="BATCH_RATE,BATCH_SIZE,UNARY_RATE",
        help="one load level: CreateTransfers requests/s, transfers per request, unary"
        f" CreateTransfer requests/s (repeatable; default {' and '.join(lag_loads_default)})",
    )
    parser.add_argument(
        "--lag-runner",
        choices=("thread", "process", "both"),
        default="thread",
        help="part (iii): the runner in this process (as in the server), its own process, or both",
    )
    parser.add_argument(
        "--only", choices=("rebuild", "pages", "lag"), action="append", help="parts to run"
    )
    parser.add_argument("--follow-child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.follow_child:
        return follow_child(args.follow_child)
    if args.quick:
        args.transfers, args.events, args.repeats = 20_000, 10_000, 1
        args.page_fetches, args.lag_seconds = 200, 3.0
    parts = set(args.only or ("rebuild", "pages", "lag"))
    say("# bench_projections")
    for key, value in machine_facts().items():
        say(f"- {key}: {value}")
    arguments = list(argv if argv is not None else sys.argv[1:])
    say(f"- command: .venv/bin/python -m load_tests.bench_projections {' '.join(arguments)}")
    say(f"- load average at start: {load_average()}")
    if parts & {"rebuild", "pages"}:
        run_rebuild_and_pages(args, parts)
    if "lag" in parts:
        say("\n## (iii) lag while following a sustained write load\n")
        modes = ("thread", "process") if args.lag_runner == "both" else (args.lag_runner,)
        runs: list[LagRun] = []
        # Repeats interleave the loads and placements, so machine noise hits all alike.
        for spec, mode in (
            (spec, mode)
            for _ in range(args.lag_repeats)
            for spec in args.lag_load or lag_loads_default
            for mode in modes
        ):
            batch_rate, batch_size, unary_rate = (float(x) for x in spec.split(","))
            load = LagLoad(
                banks=args.lag_banks,
                batch_requests_per_second=batch_rate,
                transfers_per_batch=int(batch_size),
                unary_requests_per_second=unary_rate,
                seconds=args.lag_seconds,
                runner_mode=mode,
            )
            with fresh_schema() as url:
                lines, run = measure_lag(url, load)
            runs.append(run)
            for line in lines:
                say(line)
            say(f"\nload average: {run.load_average}\n")
        say("### (iii) summary: medians over the repeats\n")
        for line in lag_summary(runs):
            say(line)
        say(f"\ntarget: lag under {lag_seconds_max:g} s")
    say(f"\n- load average at end: {load_average()}")
    return 0


def run_rebuild_and_pages(args: argparse.Namespace, parts: set[str]) -> None:
    rebuilds: list[Rebuild] = []
    page_lines: list[str] = []
    with fresh_schema() as url:
        ledger = Ledger(settings(url))
        views = open_views(url)
        try:
            say(f"\nwriting history A: {args.transfers:,} transfers ...")
            grouped = write_grouped_history(ledger, args.transfers, hub_every=2)
            say(
                f"  {grouped.events:,} events in {grouped.write_seconds:.1f} s "
                f"({grouped.transfers / grouped.write_seconds:,.0f} transfers/s written)"
            )
            rebuilds.append(measure_rebuild(ledger.store, views, grouped, args.repeats))
            if "pages" in parts:
                page_lines = measure_pages(views, "grouped", "hub", args.page_fetches)
        finally:
            views.close()
            ledger.close()
    if "rebuild" in parts:
        with fresh_schema() as url:
            store = LedgerStore(env=settings(url).eventsourcing_env())
            views = open_views(url)
            try:
                say(f"writing history B: {args.events:,} events ...")
                fine = write_fine_grained_history(store, args.events)
                say(f"  {fine.events:,} events in {fine.write_seconds:.1f} s")
                rebuilds.append(measure_rebuild(store, views, fine, args.repeats))
            finally:
                views.close()
                store.close()
        say("\n## (i) rebuild: reset() then run_until_caught_up()\n")
        for line in rebuild_table(rebuilds):
            say(line)
        say(f"\ntarget: >= {rebuild_events_per_second_min:,} events/s")
    if page_lines:
        say("\n## (ii) statement page latency\n")
        for line in page_lines:
            say(line)
        say(f"\ntarget: well under {statement_page_ms_max:g} ms")


if __name__ == "__main__":
    sys.exit(main())
