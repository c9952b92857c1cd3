"""A bank's long history written straight into a PostgreSQL store, exactly as the ledger writes it.

    .venv/bin/python -m load_tests.state_history 10000000 [--check] [--drop]

One bank (`load-bank`, the load harness's bank id) of 1,000 members (`m00000`...) that may
owe a trillion minutes, holding N immediate transfers between random pairs, grouped 1,000 per
`TransfersCreated` event: the shape a busy ledger's writer records. Every batch goes through
the ledger's own code as its writer runs it (writer.py `_attempt` and `_commit`): a `Batch`
over the bank's state with a RecordBook whose look-ups find nothing (every id is new), the
command run by `bank.execute`, `history.encode` for the stored bytes and the hash chain, and
`index_write` for the index rows. Only the commit differs: rows go in with COPY, 10 batches
per transaction, instead of one `LedgerStore.append` per batch. The upserted index rows (the
bank's row, its accounts) are written once per transaction with the ledger's own statements,
as they stand after its last batch.

`check_identical()` shows that the shortcut changes nothing: it writes the same history
through a real `Ledger` (its clock gives each batch the same time) into a second schema and
compares every table row by row; then `verify_bank` checks the copy and a Ledger writes to it.

Resumable and cached: the schema is named after N (`bench_state_n<N>`), and each transaction
also records, in `bench_state_meta.progress`, the next batch and the bank's decision state
after it; a run that stops resumes there, and a finished schema is reused as it is. Bounded:
at most `chunks_in_flight_max` + 2 chunks of 10,000 transfers (about 20 MB each) exist at
once, whatever N is.
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from ledger.application.ledger import Ledger
from ledger.application.verification import verify_bank
from ledger.config import Settings
from ledger.domain import bank, canonical, history, holds, limits
from ledger.domain.batch import Batch
from ledger.domain.commands import Command, CreateBank, CreateTransfer, CreateTransfers, OpenAccount
from ledger.domain.records import RecordBook
from ledger.domain.state import BankState
from ledger.domain.views import BatchItemResult
from ledger.storage import rows
from ledger.storage import schema as ledger_schema
from ledger.storage.index import IndexWrite, index_write
from ledger.storage.sql import postgres as postgres_dialect
from ledger.storage.store import LedgerStore
from load_tests import workload
from load_tests.servers import create_schema, drop_schema, schema_url

database_url_default = "postgresql://postgres@127.0.0.1:5432/test"
# The load harness's bank (load_tests.run.bank_id), so its scenarios can write to this one.
bank_id_default = "load-bank"
members_default = 1_000
transfers_per_event = limits.transfers_per_event_max
# Batches (events) per COPY transaction: 10,000 transfers, about 20 MB of rows.
batches_per_commit = 10
# Chunks built and waiting for the writer thread, at most (it holds one more).
chunks_in_flight_max = 1
writer_wait_seconds = 1.0
progress_every_seconds = 30.0
meta_schema = "bench_state_meta"
# The commit whose code writes the history (set by bench_state); a cached schema written by
# another commit is refused, since the two may not store the same rows.
code_id_env = "BENCH_STATE_CODE_ID"
schema_prefix = "bench_state_n"
# Where check_identical() writes its two copies of the history (dropped afterwards).
check_schemas = ("bench_state_check_copy", "bench_state_check_ledger")
check_transfers_max = 100_000
memo = "help with the shopping"
category = "errands"
service_date = "2025-05-17"
actor_label = "load-test"

Say = Callable[[str], None]


def say(text: str) -> None:
    print(text, flush=True)


@dataclass(frozen=True)
class HistorySpec:
    """What the bank holds; everything about it follows from these and is deterministic."""

    transfers: int
    members: int = members_default
    bank_id: str = bank_id_default
    seed: int = 1
    # Batch k is stamped start + k seconds: the bank is created at batch 0, member k-1 is
    # opened at batch k, and batch members + 1 + j records transfers 1000 j + 1 to 1000 (j + 1).
    start: datetime = datetime(2025, 1, 1, tzinfo=UTC)

    def __post_init__(self) -> None:
        assert self.transfers >= 0
        assert 2 <= self.members < 100_000, "member ids are m00000 to m99999"

    @property
    def bank_uuid(self) -> str:
        return str(bank.bank_uuid(self.bank_id))

    @property
    def schema(self) -> str:
        return f"{schema_prefix}{self.transfers}"

    @property
    def batches(self) -> int:
        """Batches (and events: each records one) in the whole history."""
        return 1 + self.members + math.ceil(self.transfers / transfers_per_event)

    def time_of(self, index: int) -> datetime:
        return self.start + timedelta(seconds=index)

    def command(self, index: int) -> Command:
        """The command batch `index` runs, as the gRPC layer would have built it."""
        if index == 0:
            return CreateBank(bank_id=self.bank_id, name="Load test", actor_label=actor_label)
        if index <= self.members:
            return OpenAccount(
                account_id=workload.member_id(index - 1),
                kind="member",
                lower_limit_minutes=workload.lower_limit_minutes,
                actor_label=actor_label,
            )
        group = index - self.members - 1
        first = group * transfers_per_event + 1
        last = min(self.transfers, first + transfers_per_event - 1)
        rng = random.Random(self.seed * 1_000_000_007 + group)
        return CreateTransfers(items=tuple(self._transfer(n, rng) for n in range(first, last + 1)))

    def _transfer(self, number: int, rng: random.Random) -> CreateTransfer:
        payer, payee = rng.sample(range(self.members), 2)
        return CreateTransfer(
            transfer_id=f"h{number:09d}",
            payer_account_id=workload.member_id(payer),
            payee_account_id=workload.member_id(payee),
            amount_minutes=rng.randint(1, workload.amount_minutes_max),
            memo=memo,
            category=category,
            service_date=service_date,
            actor_label=actor_label,
        )


def _nothing(ids: Iterable[str]) -> dict[str, Any]:
    """A look-up in index tables that hold nothing yet: every id of the history is new."""
    return {}


def run_batch(
    state: BankState, spec: HistorySpec, index: int
) -> tuple[list[history.StoredEvent], IndexWrite]:
    """Batch `index`, as the bank's writer applies and encodes it; commits it to `state`."""
    command = spec.command(index)
    command.validate()
    now = spec.time_of(index)
    records = RecordBook(_nothing, _nothing)
    records.prefetch(*bank.referenced_ids([command]))
    batch = Batch(state, now, records)
    holds.expire_due(batch, now)
    result = bank.execute(batch, spec.bank_id, command)
    if isinstance(result, list):
        _check_items(result)
    assert len(batch.events) == 1, "each batch of this history records one event"
    stored = history.encode(batch, state.chain_head)
    write = index_write(batch, stored)
    # Every transfer is new: its row is inserted once and never changed afterwards.
    assert len(records.changed_transfers) == len(records.created_transfers)
    batch.commit(stored[-1].chain_hash)
    return stored, write


def _check_items(results: Sequence[BatchItemResult]) -> None:
    refused = [item.error for item in results if item.error is not None]
    assert not refused, f"the generated history refused a transfer: {refused[0]}"


# ----------------------------------------------------------------- chunks of rows

# The tables COPY fills, with the columns the ledger's own inserts name.
_copied_columns: dict[str, tuple[str, ...]] = {
    "ledger_transfers": rows.TRANSFER_COLUMNS,
    "ledger_account_transfers": ("bank_uuid", "account_id", "number", "transfer_id"),
    "ledger_requests": rows.REQUEST_COLUMNS,
    "ledger_chain": ("bank_uuid", "version", "chain_hash"),
}
_event_columns = ("originator_id", "originator_version", "topic", "state")


@dataclass
class Chunk:
    """The rows of consecutive batches, and where the history stands after them."""

    copied: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    # Upserted tables: the last row written for a key is what the table ends up holding.
    bank: list[tuple[Any, ...]] = field(default_factory=list)
    accounts: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    next_batch: int = 0
    transfers: int = 0
    # The bank's decision state after the chunk, for a run that resumes there.
    state: bytes = b""

    def add(self, stored: Sequence[history.StoredEvent], write: IndexWrite, events: str) -> None:
        self.copied.setdefault(events, []).extend(
            (uuid.UUID(e.bank_uuid), e.version, e.type, e.stored) for e in stored
        )
        by_table = {
            "ledger_transfers": write.transfers,
            "ledger_account_transfers": write.account_transfers,
            "ledger_requests": write.requests,
            "ledger_chain": write.chain,
        }
        for table, table_rows in by_table.items():
            self.copied.setdefault(table, []).extend(table_rows)
        self.transfers += len(write.transfers)
        self.bank = write.bank[-1:]
        for row in write.accounts:
            self.accounts[row[1]] = row


class CopyWriter:
    """Commits chunks with COPY into one schema; one transaction per chunk."""

    def __init__(self, database_url: str, schema: str, events_table: str) -> None:
        self._schema = schema
        self._dialect = postgres_dialect(schema)
        self._connection = psycopg.connect(database_url)
        # Commits need not wait for the WAL flush: what is stored is the same either way.
        self._connection.execute("SET synchronous_commit = off")
        self._connection.commit()
        self._columns = {events_table: _event_columns, **_copied_columns}
        self._types = {table: self._column_types(table, cs) for table, cs in self._columns.items()}
        self.committed_transfers = 0

    def _column_types(self, table: str, columns: Sequence[str]) -> list[str]:
        found = self._connection.execute(
            "SELECT column_name, udt_name FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s",
            (self._schema, table),
        ).fetchall()
        self._connection.commit()
        types = {str(name): str(udt) for name, udt in found}
        return [types[column] for column in columns]

    def write(self, chunk: Chunk, progress: Sequence[Any]) -> None:
        with self._connection.transaction(), self._connection.cursor() as cursor:
            for table, table_rows in chunk.copied.items():
                if table_rows:
                    self._copy(cursor, table, table_rows)
            upserts = IndexWrite(bank=chunk.bank, accounts=list(chunk.accounts.values()))
            upserts.write(cursor, self._dialect)
            cursor.execute(_progress_upsert, progress)
        self.committed_transfers += chunk.transfers

    def _copy(self, cursor: psycopg.Cursor[Any], table: str, rows: list[tuple[Any, ...]]) -> None:
        statement = sql.SQL("COPY {}.{} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(self._schema),
            sql.Identifier(table),
            sql.SQL(", ").join(sql.Identifier(column) for column in self._columns[table]),
        )
        with cursor.copy(statement) as copy:
            copy.set_types(self._types[table])
            for row in rows:
                copy.write_row(row)

    def close(self) -> None:
        self._connection.close()


class BackgroundWriter:
    """Runs a CopyWriter in its own thread, so PostgreSQL works while the next chunk is built."""

    def __init__(self, writer: CopyWriter) -> None:
        self.writer = writer
        self._queue: queue.Queue[tuple[Chunk, Sequence[Any]] | None] = queue.Queue(
            chunks_in_flight_max
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="copy-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                self.writer.write(*item)
        except BaseException as error:  # handed to the producer, which re-raises it
            self._error = error

    def put(self, chunk: Chunk, progress: Sequence[Any]) -> None:
        while True:
            self._raise_error()
            try:
                self._queue.put((chunk, progress), timeout=writer_wait_seconds)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=writer_wait_seconds)
                break
            except queue.Full:
                self._raise_error()
        self._thread.join()
        self.writer.close()
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError("the COPY writer failed") from self._error


# ----------------------------------------------------------------- progress (resumable)

_progress_table = sql.SQL("{}.progress").format(sql.Identifier(meta_schema))
_progress_upsert = sql.SQL(
    "INSERT INTO {} (schema_name, bank_uuid, next_batch, batches, complete, state, code,"
    " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, now()) ON CONFLICT (schema_name) DO"
    " UPDATE SET bank_uuid = excluded.bank_uuid, next_batch = excluded.next_batch,"
    " batches = excluded.batches, complete = excluded.complete, state = excluded.state,"
    " code = excluded.code, updated_at = excluded.updated_at"
).format(_progress_table)


def code_id() -> str:
    return os.environ.get(code_id_env, "unknown")


@dataclass(frozen=True)
class Progress:
    next_batch: int
    complete: bool
    state: BankState | None
    code: str


def _ensure_meta(database_url: str) -> None:
    create_schema(database_url, meta_schema, exist_ok=True)
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (schema_name TEXT PRIMARY KEY,"
                " bank_uuid TEXT NOT NULL, next_batch BIGINT NOT NULL, batches BIGINT NOT NULL,"
                " complete BOOLEAN NOT NULL, state BYTEA NOT NULL,"
                " updated_at TIMESTAMPTZ NOT NULL)"
            ).format(_progress_table)
        )
        connection.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS code TEXT").format(_progress_table)
        )


def read_progress(database_url: str, schema: str) -> Progress | None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        row = connection.execute(
            sql.SQL(
                "SELECT next_batch, complete, state, code FROM {} WHERE schema_name = %s"
            ).format(_progress_table),
            (schema,),
        ).fetchone()
    if row is None:
        return None
    data = bytes(row[2])
    state = BankState.from_snapshot(canonical.decode_trusted(data)) if data else None
    return Progress(int(row[0]), bool(row[1]), state, str(row[3] or "unknown"))


def _forget_progress(database_url: str, schema: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        exists = connection.execute("SELECT to_regclass(%s)", (f"{meta_schema}.progress",))
        found = exists.fetchone()
        if found is not None and found[0] is not None:
            connection.execute(
                sql.SQL("DELETE FROM {} WHERE schema_name = %s").format(_progress_table),
                (schema,),
            )


# ----------------------------------------------------------------- generating


@dataclass(frozen=True)
class Generated:
    """A bank's history in the store, and its decision state at the history's last event."""

    spec: HistorySpec
    schema: str
    url: str
    state: BankState
    seconds: float
    # Reused as a previous run left it (no batch written now).
    cached: bool
    events_table: str


def generate(
    database_url: str, spec: HistorySpec, schema: str | None = None, out: Say = say
) -> Generated:
    """The bank's history in `schema` (default spec.schema): written, resumed or reused."""
    name = schema or spec.schema
    started = time.monotonic()
    _ensure_meta(database_url)
    create_schema(database_url, name, exist_ok=True)
    url = schema_url(database_url, name)
    store = LedgerStore(Settings(database_url=url).eventsourcing_env())  # creates the tables
    try:
        events_table = str(getattr(store.recorder, "events_table_name"))  # noqa: B009
        progress = read_progress(database_url, name)
        position = store.position(spec.bank_uuid)
    finally:
        store.close()
    if progress is not None and progress.code != code_id():
        raise RuntimeError(
            f"schema {name} was written by the code of {progress.code}, this is {code_id()}:"
            f" drop it (python -m load_tests.state_history {spec.transfers} --drop)"
        )
    if progress is not None and progress.complete and progress.state is not None:
        out(f"{name}: {spec.transfers:,} transfers already generated (cached), head {position}")
        return Generated(spec, name, url, progress.state, 0.0, True, events_table)
    state = progress.state if progress is not None else None
    state = state or BankState(bank_uuid=spec.bank_uuid)
    next_batch = progress.next_batch if progress is not None else 0
    if position != state.version:
        raise RuntimeError(
            f"schema {name} holds bank position {position}, its generator stopped at"
            f" {state.version}: drop it (python -m load_tests.state_history {spec.transfers}"
            " --drop) and generate again"
        )
    writer = BackgroundWriter(CopyWriter(database_url, name, events_table))
    try:
        _write_batches(spec, name, state, next_batch, writer, events_table, out)
    finally:
        writer.close()
    _vacuum(database_url, name, [events_table, *ledger_schema.TABLES], out)
    seconds = time.monotonic() - started
    out(f"{name}: {spec.transfers:,} transfers generated in {seconds:,.0f} s")
    return Generated(spec, name, url, state, seconds, False, events_table)


def _write_batches(
    spec: HistorySpec,
    schema: str,
    state: BankState,
    next_batch: int,
    writer: BackgroundWriter,
    events_table: str,
    out: Say,
) -> None:
    started = last_said = time.monotonic()
    first_transfers = state.transfer_count
    for chunk_start in range(next_batch, spec.batches, batches_per_commit):
        chunk = Chunk()
        chunk_end = min(spec.batches, chunk_start + batches_per_commit)
        for index in range(chunk_start, chunk_end):
            stored, write = run_batch(state, spec, index)
            chunk.add(stored, write, events_table)
        chunk.next_batch = chunk_end
        snapshot = canonical.encode(state.to_snapshot())
        complete = chunk_end == spec.batches
        progress = (schema, spec.bank_uuid, chunk_end, spec.batches, complete, snapshot, code_id())
        writer.put(chunk, progress)
        now = time.monotonic()
        if now - last_said >= progress_every_seconds:
            last_said = now
            done = state.transfer_count - first_transfers
            rate = done / (now - started)
            left = (spec.transfers - state.transfer_count) / rate if rate else math.nan
            out(
                f"{schema}: {state.transfer_count:,} of {spec.transfers:,} transfers"
                f" ({writer.writer.committed_transfers + first_transfers:,} committed),"
                f" {rate:,.0f}/s, about {left / 60:,.1f} min left"
            )


def _vacuum(database_url: str, schema: str, tables: Sequence[str], out: Say) -> None:
    """VACUUM ANALYZE, as autovacuum would have done to a store that grew over months."""
    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as connection:
        for table in tables:
            connection.execute(
                sql.SQL("VACUUM (ANALYZE) {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
            )
    out(f"{schema}: VACUUM ANALYZE in {time.monotonic() - started:,.1f} s")


def drop(database_url: str, schema: str) -> None:
    """Drops a generated schema and forgets its progress."""
    drop_schema(database_url, schema)
    _forget_progress(database_url, schema)


def generated_schemas(database_url: str) -> list[str]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        found = connection.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench\\_state\\_%'"
            " ORDER BY nspname"
        ).fetchall()
    return [str(row[0]) for row in found]


# ----------------------------------------------------------------- the same through a Ledger


class SettableClock:
    """A clock that says what it is told (each batch of the history gets its own time)."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


def write_through_ledger(url: str, spec: HistorySpec) -> None:
    """The same history, one command per commit through a real Ledger (slow: for checks)."""
    clock = SettableClock(spec.start)
    # Snapshots are not part of what the generator writes: none is taken here.
    settings = Settings(database_url=url, snapshot_interval_events=10**15)
    ledger = Ledger(settings, clock=clock)
    try:
        for index in range(spec.batches):
            clock.moment = spec.time_of(index)
            command = spec.command(index)
            if isinstance(command, CreateBank):
                ledger.create_bank(command)
                continue
            result = ledger.execute(spec.bank_id, command)
            if isinstance(result, list):
                _check_items(result)
    finally:
        ledger.close()


def table_digests(database_url: str, schema: str, events_table: str) -> dict[str, list[Any]]:
    """Per table: [rows, md5 of every row's text in order] (the event log without its
    notification ids, which are compared on their own)."""
    digests: dict[str, list[Any]] = {}
    with psycopg.connect(database_url, autocommit=True) as connection:
        for table in (events_table, *ledger_schema.TABLES):
            found = connection.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s"
                " AND table_name = %s AND column_name <> 'notification_id'"
                " ORDER BY ordinal_position",
                (schema, table),
            ).fetchall()
            columns = sql.SQL(", ").join(sql.Identifier(str(row[0])) for row in found)
            query = sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(r, E'\\n' ORDER BY r), ''))"
                " FROM (SELECT ROW({})::text AS r FROM {}.{}) s"
            ).format(columns, sql.Identifier(schema), sql.Identifier(table))
            row = connection.execute(query).fetchone()
            assert row is not None
            digests[table] = [int(row[0]), str(row[1])]
        ids = connection.execute(
            sql.SQL(
                "SELECT md5(string_agg(notification_id || ':' || originator_version, ','"
                " ORDER BY notification_id)) FROM {}.{}"
            ).format(sql.Identifier(schema), sql.Identifier(events_table))
        ).fetchone()
        digests["notification_ids"] = [0, str(ids[0] if ids else "")]
    return digests


def check_identical(database_url: str, transfers: int, out: Say = say) -> dict[str, Any]:
    """Writes the history with COPY and through a Ledger, compares every table, verifies the
    copy with verify_bank and has a Ledger write to it. Both schemas are dropped after."""
    assert transfers <= check_transfers_max, "the Ledger path commits one command at a time"
    spec = HistorySpec(transfers)
    copy_schema, ledger_schema_name = check_schemas
    for name in check_schemas:
        drop(database_url, name)
    try:
        copied = generate(database_url, spec, copy_schema, out)
        started = time.monotonic()
        create_schema(database_url, ledger_schema_name)
        write_through_ledger(schema_url(database_url, ledger_schema_name), spec)
        out(f"{ledger_schema_name}: written through a Ledger in {time.monotonic() - started:.1f} s")
        ours = table_digests(database_url, copy_schema, copied.events_table)
        theirs = table_digests(database_url, ledger_schema_name, copied.events_table)
        differing = sorted(table for table in ours if ours[table] != theirs[table])
        result: dict[str, Any] = {"transfers": transfers, "tables": ours, "differing": differing}
        result |= _verify_and_write(copied)
    finally:
        for name in check_schemas:
            drop(database_url, name)
    out(
        f"check at {transfers:,} transfers: tables that differ from the Ledger's:"
        f" {differing or 'none'}"
        f"; verify_bank ok={result['verify_ok']} ({result['verify_problems']});"
        f" a Ledger then wrote transfer at position {result['written_position']}"
        f"; verify after that ok={result['verify_after_write_ok']}"
    )
    return result


def _verify_and_write(generated: Generated) -> dict[str, Any]:
    spec = generated.spec
    ledger = Ledger(Settings(database_url=generated.url))
    try:
        check = verify_bank(ledger.store, spec.bank_id)
        written = ledger.execute(
            spec.bank_id,
            CreateTransfer(
                transfer_id="after-generation",
                payer_account_id=workload.member_id(0),
                payee_account_id=workload.member_id(1),
                amount_minutes=30,
                memo=memo,
            ),
        )
        after = verify_bank(ledger.store, spec.bank_id)
    finally:
        ledger.close()
    return {
        "verify_ok": check.ok,
        "verify_position": check.report.position,
        "verify_problems": [*check.problems, *map(str, check.report.violations)][:5],
        "written_position": getattr(written, "created_position", None),
        "verify_after_write_ok": after.ok,
    }


# ----------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.state_history", description=__doc__.splitlines()[0]
    )
    parser.add_argument("transfers", type=int, help="transfers in the bank's history")
    parser.add_argument("--database-url", default=database_url_default)
    parser.add_argument(
        "--check", action="store_true", help="compare with a Ledger's writing (N <= 100,000)"
    )
    parser.add_argument("--drop", action="store_true", help="drop the schema of N transfers")
    args = parser.parse_args(argv)
    spec = HistorySpec(args.transfers)
    if args.drop:
        drop(args.database_url, spec.schema)
        say(f"dropped {spec.schema}")
    elif args.check:
        result = check_identical(args.database_url, args.transfers)
        return 0 if not result["differing"] and result["verify_ok"] else 1
    else:
        generate(args.database_url, spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
