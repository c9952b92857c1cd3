"""AuditService benchmarks (issue 10): how fast StreamEvents delivers a bank's history to a
client on this machine, how fast the offline verifier checks it, and how long an as-of
query takes, whatever the history's length.

    .venv/bin/python -m load_tests.bench_audit --json load_tests/results_audit.json
    .venv/bin/python -m load_tests.bench_audit --quick            # smaller histories

Histories are made in memory by the domain's own code (one command per batch gives
single-transfer events; a batch of 1,000 gives one grouped event of 1,000 transfers), then
loaded into a fresh PostgreSQL schema through the import path (ledger/application/
history_files.py, which verifies them first). A `timebank-ledger serve` subprocess serves
them (plaintext on loopback, projections off, default settings otherwise); the client is
this process, reading with a sync grpc channel and the generated messages, as an auditor's
script would. The audit projection (balance checkpoints for as-of queries) is run here,
before the queries. CPU is read from /proc for the server, its PostgreSQL backends and this
client.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from ledger import verifier
from ledger.application.history_files import import_bank
from ledger.application.ledger import Ledger
from ledger.config import Settings
from ledger.domain import bank, history
from ledger.domain.bank import bank_uuid
from ledger.domain.batch import Batch
from ledger.domain.commands import Command, CreateBank, CreateTransfer, CreateTransfers, OpenAccount
from ledger.domain.state import BankState
from ledger.security.api_keys import issue_key
from ledger.security.roles import Role
from ledger.service.bootstrap import operator_key_command
from ledger.storage.store import LedgerStore
from load_tests import machine, servers
from projections.registry import ProjectionSet
from timebank.ledger.v1 import audit_pb2 as apb
from timebank.ledger.v1 import audit_pb2_grpc as apb_grpc

postgres_url_default = "postgresql://postgres@127.0.0.1:5432/test"
members = 1000
# Event 1 creates the bank, 2 to 1,001 open its members: transfers start here.
first_transfer_position = members + 2
transfers_per_group = 1000
start_time = datetime(2026, 1, 1, tzinfo=UTC)
grpc_receive_bytes_max = 16 * 1024 * 1024
# A stream of the whole history may take this long at most.
stream_timeout_seconds = 600.0


@dataclass(frozen=True)
class Bank:
    bank_id: str
    events: int
    transfers: int
    grouped: bool


def commands(single_events: int, grouped_events: int) -> Iterator[tuple[Command, ...]]:
    """The batches of one bank's history: each batch becomes one event."""
    chooser = random.Random(7)
    yield (CreateBank(bank_id="", name="Benchmark bank"),)
    for n in range(members):
        yield (OpenAccount(f"m{n}", "member", lower_limit_minutes=-(10**12)),)
    for n in range(single_events):
        payer, payee = chooser.sample(range(members), 2)
        yield (
            CreateTransfer(
                f"t{n}", f"m{payer}", f"m{payee}", 1 + n % 90, memo="help in the garden"
            ),
        )
    for n in range(grouped_events):
        group = []
        for i in range(transfers_per_group):
            payer, payee = chooser.sample(range(members), 2)
            group.append(
                CreateTransfer(f"g{n}-{i}", f"m{payer}", f"m{payee}", 1 + i % 90, memo="shopping")
            )
        yield (CreateTransfers(tuple(group)),)


def write_export(path: Path, bank_id: str, batches: Iterator[tuple[Command, ...]]) -> int:
    """Runs the batches through the domain in memory and writes the events as an export."""
    uuid = str(bank_uuid(bank_id))
    state = BankState(bank_uuid=uuid)
    count = 0
    moment = start_time
    with path.open("wb") as out, tempfile.TemporaryFile() as body_lines:
        head = state.chain_head
        for batch_commands in batches:
            moment += timedelta(milliseconds=5)
            batch = Batch(state, moment, history.empty_records())
            for command in batch_commands:
                if isinstance(command, CreateBank):
                    command = CreateBank(bank_id=bank_id, name=command.name)
                bank.execute(batch, bank_id, command)
            stored = history.encode(batch, head)
            batch.commit(stored[-1].chain_hash)
            head = stored[-1].chain_hash
            for event in stored:
                count += 1
                item = {
                    "type": "event",
                    "position": event.version,
                    "chain_hash": event.chain_hash,
                    "stored": base64.b64encode(event.stored).decode(),
                }
                body_lines.write(json.dumps(item).encode() + b"\n")
        header = {
            "type": "export",
            "format": verifier.EXPORT_FORMAT,
            "history_format": 2,
            "bank": uuid,
            "bank_id": bank_id,
            "position": count,
            "chain_head": head,
            "exported_at": moment.isoformat(),
        }
        out.write(json.dumps(header).encode() + b"\n")
        body_lines.seek(0)
        while chunk := body_lines.read(1 << 20):
            out.write(chunk)
        end = {"type": "end", "events": count, "position": count, "chain_head": head}
        out.write(json.dumps(end).encode() + b"\n")
    return count


def load(store: LedgerStore, work: Path, name: str, singles: int, groups: int) -> dict[str, Any]:
    path = work / f"{name}.jsonl"
    started = time.perf_counter()
    events = write_export(path, name, commands(singles, groups))
    generated = time.perf_counter() - started
    started = time.perf_counter()
    import_bank(store, path, datetime.now(UTC))
    imported = time.perf_counter() - started
    size = path.stat().st_size
    path.unlink()
    return {
        "bank_id": name,
        "events": events,
        "single_transfer_events": singles,
        "grouped_events": groups,
        "export_bytes": size,
        "generate_seconds": round(generated, 1),
        "import_seconds": round(imported, 1),
        "import_events_per_second": round(events / imported),
    }


def stream_once(
    stub: apb_grpc.AuditServiceStub,
    token: str,
    bank_id: str,
    view: int,
    verify: bool,
    transfers_per_event: int,
) -> dict[str, Any]:
    metadata = (("authorization", f"Bearer {token}"),)
    # From the first transfer on: the bank's creation and its accounts are not measured.
    request = apb.StreamEventsRequest(
        bank_id=bank_id,
        from_position=first_transfer_position,
        view=view,  # type: ignore[arg-type]
    )
    checker = verifier.Verifier(verifier.bank_uuid_of(bank_id)) if verify else None
    if checker is not None:
        request.from_position = 1  # a verifier needs the whole history
    events = transfers = chunks = size = 0
    cpu_before = os.times()
    started = time.perf_counter()
    for chunk in stub.StreamEvents(request, metadata=metadata, timeout=stream_timeout_seconds):
        chunks += 1
        for event in chunk.events:
            events += 1
            size += len(event.stored)
            if event.type == "TransfersCreated" and event.position >= first_transfer_position:
                transfers += transfers_per_event
            if checker is not None:
                checker.feed_stored(event.stored, event.chain_hash)
    seconds = time.perf_counter() - started
    cpu_after = os.times()
    client_cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    result: dict[str, Any] = {
        "seconds": round(seconds, 3),
        "events": events,
        "chunks": chunks,
        "megabytes": round(size / 1e6, 1),
        "events_per_second": round(events / seconds),
        "transfers_per_second": round(transfers / seconds),
        "client_cpu_percent": round(100 * client_cpu / seconds),
    }
    if checker is not None:
        report = checker.report()
        assert report.ok, report.violations[:3]
    return result


def measure_streams(
    address: str, token: str, banks: list[Bank], repeats: int, server_pid: int, postgres_url: str
) -> list[dict[str, Any]]:
    channel = grpc.insecure_channel(
        address, options=[("grpc.max_receive_message_length", grpc_receive_bytes_max)]
    )
    stub = apb_grpc.AuditServiceStub(channel)
    results = []
    cases = []
    for item in banks:
        cases.append((item, apb.EVENT_VIEW_STORED, False))
        if not item.grouped:
            cases.append((item, apb.EVENT_VIEW_FULL, False))
        cases.append((item, apb.EVENT_VIEW_STORED, True))
    for item, view, verify in cases:
        runs = []
        for _ in range(repeats if not verify else 1):
            backends = servers.server_backends(server_pid, postgres_url)
            before = servers.sample_cpu(server_pid, backends)
            per_event = transfers_per_group if item.grouped else 1
            run = stream_once(stub, token, item.bank_id, view, verify, per_event)
            after = servers.sample_cpu(server_pid, backends)
            run["cpu"] = servers.cpu_percent(before, after, 0.0)
            runs.append(run)
        best = max(runs, key=lambda run: run["events_per_second"])
        results.append(
            {
                "bank_id": item.bank_id,
                "view": "STORED" if view == apb.EVENT_VIEW_STORED else "FULL",
                "verified_by_client": verify,
                "events_per_second_runs": [run["events_per_second"] for run in runs],
                "events_per_second_median": round(
                    statistics.median(run["events_per_second"] for run in runs)
                ),
                "transfers_per_second_median": round(
                    statistics.median(run["transfers_per_second"] for run in runs)
                ),
                "best": best,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    channel.close()
    return results


def measure_as_of(
    address: str, token: str, bank_id: str, head: int, queries: int
) -> dict[str, Any]:
    channel = grpc.insecure_channel(
        address, options=[("grpc.max_receive_message_length", grpc_receive_bytes_max)]
    )
    stub = apb_grpc.AuditServiceStub(channel)
    metadata = (("authorization", f"Bearer {token}"),)
    chooser = random.Random(11)
    timings: dict[str, list[float]] = {
        "position_all_accounts": [],
        "position_one_account": [],
        "time_all_accounts": [],
    }
    for _ in range(queries):
        position = chooser.randint(members + 2, head)
        for kind in timings:
            request = apb.GetBalancesAsOfRequest(bank_id=bank_id, page_size=1000)
            if kind.startswith("time"):
                request.time.FromDatetime(start_time + timedelta(milliseconds=5 * position))
            else:
                request.position = position
            if kind == "position_one_account":
                request.account_id = f"m{chooser.randrange(members)}"
            started = time.perf_counter()
            response = stub.GetBalancesAsOf(request, metadata=metadata, timeout=60)
            timings[kind].append(time.perf_counter() - started)
            assert response.as_of.position > 0
    channel.close()
    return {
        kind: {
            "queries": len(values),
            "p50_ms": round(1000 * statistics.median(values), 1),
            "p95_ms": round(1000 * sorted(values)[int(0.95 * len(values))], 1),
            "max_ms": round(1000 * max(values), 1),
        }
        for kind, values in timings.items()
    }


def auditor_key(settings: Settings, bank_id: str) -> str:
    ledger = Ledger(settings)
    try:
        issued = issue_key(
            Role.AUDITOR, bank_id, label="bench", created_by="bench", now=datetime.now(UTC)
        )
        ledger.execute(bank_id, operator_key_command(issued, "key:bench"))
        return issued.token
    finally:
        ledger.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--postgres", default=os.environ.get("LEDGER_TEST_POSTGRES_URL", postgres_url_default)
    )
    parser.add_argument("--single-events", type=int, default=300_000)
    parser.add_argument("--grouped-events", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="histories a tenth the size")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-audit")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    facts = machine.facts(args.postgres)
    results: dict[str, Any] = {"machine": facts}
    with servers.postgres_schema(args.postgres) as url, tempfile.TemporaryDirectory() as work:
        settings = Settings(database_url=url, projections="off", audit_signing_key_file="off")
        store = LedgerStore(settings.eventsourcing_env())
        try:
            # Two single-transfer banks, one ten times the other (as-of cost vs length),
            # and one of grouped events.
            loads = [
                load(store, Path(work), "singles", args.single_events // scale, 0),
                load(store, Path(work), "singles-small", args.single_events // (10 * scale), 0),
                load(store, Path(work), "grouped", 0, args.grouped_events // scale),
            ]
            results["histories"] = loads
            print(json.dumps(loads), flush=True)
            started = time.perf_counter()
            projections = ProjectionSet.open(settings, store, ["audit"])
            applied = projections.runner("audit").run_until_caught_up(3600)
            projections.close()
            audit_seconds = time.perf_counter() - started
            results["audit_projection"] = {
                "events": applied,
                "seconds": round(audit_seconds, 1),
                "events_per_second": round(applied / audit_seconds),
            }
            print(json.dumps(results["audit_projection"]), flush=True)
        finally:
            store.close()
        tokens = {item["bank_id"]: auditor_key(settings, item["bank_id"]) for item in loads}
        env = {
            "LEDGER_DATABASE_URL": url,
            "LEDGER_PROJECTIONS": "off",
            "LEDGER_METRICS_ADDRESS": "off",
            "LEDGER_BOOTSTRAP_KEYS_FILE": "off",
            "LEDGER_AUDIT_SIGNING_KEY_FILE": "off",
            "LEDGER_LOG_LEVEL": "INFO",
        }
        log_path = args.log_dir / "server.log"
        banks = [
            Bank(item["bank_id"], item["events"], item["events"], item["grouped_events"] > 0)
            for item in loads
        ]
        with servers.running(servers.ledger_command(), env, log_path) as server:
            streams = []
            for item in banks:
                streams += measure_streams(
                    server.address,
                    tokens[item.bank_id],
                    [item],
                    args.repeats,
                    server.pid,
                    args.postgres,
                )
            results["streams"] = streams
            results["as_of"] = {
                item["bank_id"]: measure_as_of(
                    server.address,
                    tokens[item["bank_id"]],
                    item["bank_id"],
                    item["events"],
                    args.queries,
                )
                for item in loads
                if item["grouped_events"] == 0
            }
            print(json.dumps(results["as_of"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
