"""Benchmarks of issue 7's state model: loading a bank, writing to a long history, idle banks.

    .venv/bin/python -m load_tests.bench_state [all|check|generate|load|throughput|idle|drop]
        [--sizes 10000,100000,1000000,10000000] [--repeats 3] [--code COMMIT|worktree]
        [--keep] [--json FILE]

On PostgreSQL (--database-url, default postgresql://postgres@127.0.0.1:5432/test), each bank
in its own schema, written by load_tests.state_history (cached by schema name; `drop` or the
end of `all` without --keep drops them):

- generate: only writes the histories of --sizes (cached; 10^7 takes about 20 minutes).
- check: the 10^4 history written with COPY equals, table by table, the one a real Ledger
  writes; verify_bank passes on it and a Ledger can then write to it.
- load: for each size N, in a fresh child process per measurement (load_tests.state_child),
  the time of `load_bank` and the resident memory it adds, without a snapshot (the whole
  history is the tail: "before") and with a snapshot at the head ("after"); and the time from
  a cold process to the first committed CreateTransfer through a Ledger, both ways.
  Medians of --repeats; a "before" measurement that takes over `slow_seconds` is not repeated.
- throughput: the uniform CreateTransfer scenario of load_tests.run (peak, then p99 at half
  of it) against a server started on a pre-filled bank of 10^4 and of the largest size,
  alternately, --repeats times; projections off (a server started on 10^7 transfers would
  otherwise spend the run projecting them); each 10^4 run gets a freshly generated bank.
- idle: one server; 10,000 banks created over gRPC (2 accounts and 1 transfer each), then
  idle; its threads and RSS after one bank, right after the 10,000, and once
  LEDGER_BANK_IDLE_SECONDS (5 here) has passed; RSS per idle bank over the one-bank baseline.

Every process that is measured runs the code of one commit (--code COMMIT, default HEAD:
`git archive` of its ledger/, projections/ and timebank/, with the working tree's
load_tests/), or a copy of the working tree (--code worktree), taken when the run starts:
others edit the working tree and commit meanwhile. A generated schema is cached by name, so
a run must use the commit that generated it (or drop it first). The run re-executes itself
from that copy. Figures are printed as they come; --json writes them all, with the machine
and the other sessions' CPU share.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg
from psycopg import sql

from ledger.application import loading
from ledger.config import Settings
from ledger.domain import canonical
from ledger.domain.state import BankState
from ledger.storage.store import LedgerStore
from load_tests import machine, profiling, run
from load_tests.servers import (
    RunningServer,
    commit_code,
    cpu_percent,
    ledger_command,
    postgres_schema,
    running,
    sample_cpu,
    server_backends,
    snapshot_code,
)
from load_tests.state_history import (
    Generated,
    HistorySpec,
    check_identical,
    code_id_env,
    drop,
    generate,
    generated_schemas,
    say,
)
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc

# Targets of issue 7.
load_seconds_max = 1.0
load_flat_ratio_max = 1.2  # "flat": the largest size loads within 20% of the smallest
# "Within 20% of each other": the long history's peak at least 80% of the short one's, its
# p99 at most 120% of it.
throughput_ratio_min = 0.8
p99_ratio_max = 1.2
idle_bank_bytes_max = 50 * 1024

sizes_default = (10**4, 10**5, 10**6, 10**7)
repeats_default = 3
# A "before" measurement slower than this is taken once (it is minutes, not a close call).
slow_seconds = 60.0
child_timeout_seconds = 3600.0
small_transfers = 10**4

idle_banks_default = 10_000
idle_seconds = 5.0
# After the idle time: one watcher interval (expiry_interval_seconds, 1 s) and some slack.
idle_wait_seconds = idle_seconds + 3.0
# CPU of the idle server is sampled over this long.
idle_cpu_seconds = 10.0
setup_in_flight_max = 64
setup_call_timeout_seconds = 30.0
idle_lower_limit_minutes = -600
# Concurrent reads that make the server start all its gRPC worker threads before the baseline.
warm_up_calls = 2_000

code_env = "BENCH_STATE_CODE"
facts_env = "BENCH_STATE_FACTS"


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.1f} MiB"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


# ----------------------------------------------------------------- the code under test


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(machine.repository), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def take_code(into: Path, source: str) -> dict[str, Any]:
    """Copies the code every measured process runs; returns what it is.

    `source` is "worktree" or a commit (HEAD, c1510c2...): `git archive` of it (read-only),
    with the working tree's load_tests/ beside it.
    """
    head = _git("rev-parse", "HEAD")
    if source == "worktree":
        into.mkdir(parents=True, exist_ok=True)
        digest = snapshot_code(machine.repository, into)
        return {"code": "working tree copy", "head": head, "digest": digest}
    commit = commit_code(machine.repository, source, into)
    return {
        "code": f"git archive {commit[:7]} + working-tree load_tests",
        "commit": commit,
        "head": head,
    }


def reexec_from_code(argv: Sequence[str], options: argparse.Namespace) -> None:
    """Takes the code and the machine facts, then runs this command again from the copy."""
    log_dir: Path = options.log_dir
    code = log_dir / "code"
    facts = machine.facts(options.database_url)
    facts["code_under_test"] = take_code(code, options.code)
    facts_path = log_dir / "machine.json"
    facts_path.write_text(json.dumps(facts, indent=2, default=str))
    env = {
        **os.environ,
        code_env: str(code),
        facts_env: str(facts_path),
        code_id_env: str(facts["code_under_test"].get("commit", "worktree")),
        "PYTHONPATH": str(code),
    }
    # The same command, with the paths the copy cannot work out for itself (last flag wins).
    pinned = [*argv, "--log-dir", str(log_dir.resolve())]
    if options.json is not None:
        pinned += ["--json", str(options.json.resolve())]
    os.chdir(code)
    os.execve(sys.executable, [sys.executable, "-m", "load_tests.bench_state", *pinned], env)


# ----------------------------------------------------------------- snapshots


def delete_snapshot(database_url: str, generated: Generated) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DELETE FROM {}.ledger_snapshots WHERE bank_uuid = %s").format(
                sql.Identifier(generated.schema)
            ),
            (generated.spec.bank_uuid,),
        )


def save_head_snapshot(database_url: str, generated: Generated) -> int:
    """A snapshot at the bank's current head, as the writer takes one: the generator's state,
    caught up with the events written since (cold writes), then to_snapshot -> canonical
    encode -> save_snapshot. Returns its version."""
    delete_snapshot(database_url, generated)
    store = LedgerStore(Settings(database_url=generated.url).eventsourcing_env())
    try:
        state = BankState.from_snapshot(generated.state.to_snapshot())
        loading.catch_up(store, state)
        data = canonical.encode(state.to_snapshot())
        store.save_snapshot(
            state.bank_uuid, state.version, state.chain_head, data, datetime.now(UTC)
        )
    finally:
        store.close()
    return state.version


# ----------------------------------------------------------------- child processes


def run_child(args: Sequence[str]) -> dict[str, Any]:
    """Runs load_tests.state_child in a fresh interpreter; its one JSON line."""
    command = [sys.executable, "-m", "load_tests.state_child", *args]
    if args[0] == "first-write":
        command.append(repr(time.time()))
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=child_timeout_seconds, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def repeated(
    label: str, repeats: int, once: Callable[[], dict[str, Any]], *, may_be_slow: bool
) -> list[dict[str, Any]]:
    results = []
    for index in range(repeats):
        result = once()
        results.append(result)
        say(f"  {label} #{index + 1}: {describe(result)}")
        if may_be_slow and result["seconds"] > slow_seconds and index + 1 < repeats:
            say(f"  {label}: over {slow_seconds:.0f} s, not repeated")
            break
    return results


def describe(result: dict[str, Any]) -> str:
    cpu = result.get("cpu_percent", {})
    others = f"others {cpu.get('other', math.nan):.0f}% of a core"
    if "rss_growth_bytes" in result:
        return (
            f"{result['seconds']:.3f} s, tail {result['tail_events']:,} events,"
            f" RSS +{mib(result['rss_growth_bytes'])} (peak +{mib(result['peak_growth_bytes'])},"
            f" after malloc_trim +{mib(result['trimmed_growth_bytes'])}),"
            f" PostgreSQL backend {cpu.get('postgres', math.nan):.0f}%, {others}"
        )
    timed_out = result.get("caller_timed_out_seconds")
    if timed_out is not None:
        others += f"; the caller got WRITER_TIMEOUT at {timed_out:.1f} s"
    return (
        f"{result['seconds']:.3f} s from spawn to commit (interpreter"
        f" {result['interpreter_seconds']:.3f}, imports {result['imports_seconds']:.3f}, Ledger"
        f" open {result['ledger_open_seconds']:.3f}, load + first commit"
        f" {result['first_commit_seconds']:.3f}), {others}"
    )


def summary_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("seconds", "rss_growth_bytes", "peak_growth_bytes", "trimmed_growth_bytes")
    summary: dict[str, Any] = {"n": len(results)}
    for key in (*keys, "first_commit_seconds", "ledger_open_seconds", "imports_seconds"):
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            summary[key] = median(values)
    others = [r["cpu_percent"].get("other", math.nan) for r in results if "cpu_percent" in r]
    summary["others_percent_max"] = max(others, default=math.nan)
    summary["others_percent_median"] = median(others)
    return summary


# ----------------------------------------------------------------- part 2: loading


def measure_loads(options: argparse.Namespace, generated: Generated) -> dict[str, Any]:
    """Before (no snapshot) and after (snapshot at the head): load_bank, then a cold first
    write. Leaves the bank with a snapshot at its head."""
    base, spec = options.database_url, generated.spec
    load_args = ["load", generated.url, base, spec.bank_uuid]
    write_args = ["first-write", generated.url, base, spec.bank_id]
    say(f"N = {spec.transfers:,}: loading without a snapshot (the whole history is the tail)")
    delete_snapshot(base, generated)
    before = repeated(
        "load, no snapshot", options.repeats, lambda: run_child(load_args), may_be_slow=True
    )
    version = save_head_snapshot(base, generated)
    say(f"N = {spec.transfers:,}: snapshot saved at the head (position {version:,})")
    after = repeated(
        "load, snapshot", options.repeats, lambda: run_child(load_args), may_be_slow=False
    )
    write_after = repeated(
        "first write, snapshot", options.repeats, lambda: run_child(write_args), may_be_slow=False
    )

    def write_without_snapshot() -> dict[str, Any]:
        # The writer snapshots on loading a long tail; remove that before each measurement.
        delete_snapshot(base, generated)
        return run_child(write_args)

    write_before = repeated(
        "first write, no snapshot", options.repeats, write_without_snapshot, may_be_slow=True
    )
    save_head_snapshot(base, generated)
    return {
        "transfers": spec.transfers,
        "events": spec.batches,
        "schema": generated.schema,
        "generation_seconds": generated.seconds,
        "generation_cached": generated.cached,
        "load_before": {"runs": before, **summary_of(before)},
        "load_after": {"runs": after, **summary_of(after)},
        "first_write_after": {"runs": write_after, **summary_of(write_after)},
        "first_write_before": {"runs": write_before, **summary_of(write_before)},
    }


def load_targets(loads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not loads:
        return []
    after = [(item["transfers"], item["load_after"]["seconds"]) for item in loads]
    slowest = max(seconds for _, seconds in after)
    smallest, largest = after[0][1], after[-1][1]
    ratio = largest / smallest if smallest else math.inf
    return [
        {
            "target": "load with a snapshot, every size",
            "measured": ", ".join(f"{n:,}: {s * 1000:.0f} ms" for n, s in after),
            "wanted": f"< {load_seconds_max:.0f} s",
            "met": slowest < load_seconds_max,
        },
        {
            "target": f"flat from {after[0][0]:,} to {after[-1][0]:,}",
            "measured": f"{largest * 1000:.0f} / {smallest * 1000:.0f} ms = {ratio:.2f}x",
            "wanted": f"<= {load_flat_ratio_max:.1f}x",
            "met": ratio <= load_flat_ratio_max,
        },
    ]


# ----------------------------------------------------------------- part 3: throughput


def measure_throughput(options: argparse.Namespace, large: Generated) -> dict[str, Any]:
    """Uniform CreateTransfer on 10^4 vs `large` transfers already stored, interleaved."""
    code = Path(os.environ[code_env]) if code_env in os.environ else None
    run_options = run.parse_args(
        [
            "--scenarios",
            "uniform",
            "--log-dir",
            str(options.log_dir / "throughput"),
            "--no-snapshot",
        ]
    )
    run_options = dataclasses.replace(run_options, code=code)
    scenario = dataclasses.replace(
        run.scenarios["uniform"], server_env={"LEDGER_PROJECTIONS": "off"}
    )
    assert large.spec.bank_id == run.bank_id, "the harness writes to its own bank id"
    assert large.spec.members == run_options.accounts, "and to its members"
    runs: dict[str, list[dict[str, Any]]] = {"small": [], "large": []}
    for repeat in range(options.repeats):
        order = ("small", "large") if repeat % 2 == 0 else ("large", "small")
        for case in order:
            case_options = dataclasses.replace(
                run_options,
                log_dir=options.log_dir / "throughput" / case,
                profile=("uniform",) if options.profile and case == "large" else (),
            )
            if case == "small":
                schema = f"bench_state_tp_small_r{repeat}"
                drop(options.database_url, schema)
                target = generate(options.database_url, HistorySpec(small_transfers), schema)
                save_head_snapshot(options.database_url, target)
            else:
                target = large
            say(f"throughput, repeat {repeat + 1}, {target.spec.transfers:,} transfers stored")
            result = run.run_scenario(
                scenario, dataclasses.replace(case_options, existing_schema=target.schema), repeat
            )
            runs[case].append(_throughput_figures(result, target))
            if case == "small":
                drop(options.database_url, target.schema)
    return {"large_transfers": large.spec.transfers, "runs": runs, **_throughput_summary(runs)}


def _throughput_figures(result: run.ScenarioRun, target: Generated) -> dict[str, Any]:
    peak, half = result.peak, result.half
    return {
        "stored_transfers": target.spec.transfers,
        "error": result.error,
        "saturated": result.saturated,
        "peak_transfers_per_second": peak.achieved_transfers_per_second if peak else None,
        "peak_p99_ms": peak.latency_ms["p99"] if peak else None,
        "peak_others_percent": peak.cpu_percent.get("other") if peak else None,
        "peak_server_percent": peak.cpu_percent.get("server") if peak else None,
        "peak_postgres_percent": peak.cpu_percent.get("postgres") if peak else None,
        "profiles": result.profiles,
        "half_calls_per_second": half.offered_calls_per_second if half else None,
        "half_p50_ms": half.latency_ms["p50"] if half else None,
        "half_p99_ms": half.latency_ms["p99"] if half else None,
        "half_others_percent": half.cpu_percent.get("other") if half else None,
        "bank_check": result.bank_check,
        "server_log": result.server_log,
        "others_percent_all_steps": [s.cpu_percent.get("other") for s in result.steps],
    }


def _throughput_summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def values(case: str, key: str) -> list[float]:
        return [r[key] for r in runs[case] if r.get(key) is not None]

    summary: dict[str, Any] = {}
    for case in runs:
        for key in ("peak_transfers_per_second", "half_p99_ms", "half_p50_ms", "peak_p99_ms"):
            summary[f"{case}_{key}"] = median(values(case, key))
    pairs = list(zip(runs["small"], runs["large"], strict=False))
    peak_ratios = [
        large["peak_transfers_per_second"] / small["peak_transfers_per_second"]
        for small, large in pairs
        if small["peak_transfers_per_second"] and large["peak_transfers_per_second"]
    ]
    p99_ratios = [
        large["half_p99_ms"] / small["half_p99_ms"]
        for small, large in pairs
        if small["half_p99_ms"] and large["half_p99_ms"]
    ]
    summary["peak_ratio_by_repeat"] = peak_ratios
    summary["peak_ratio"] = median(peak_ratios)
    summary["half_p99_ratio_by_repeat"] = p99_ratios
    summary["half_p99_ratio"] = median(p99_ratios)
    return summary


def throughput_targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    if not figures:
        return []
    peak, p99 = figures["peak_ratio"], figures["half_p99_ratio"]
    large = figures["large_transfers"]
    return [
        {
            "target": f"uniform peak, {large:,} vs {small_transfers:,} stored",
            "measured": f"{figures['large_peak_transfers_per_second']:,.0f} vs"
            f" {figures['small_peak_transfers_per_second']:,.0f} transfers/s: {peak:.0%}"
            f" (per repeat {', '.join(f'{r:.0%}' for r in figures['peak_ratio_by_repeat'])})",
            "wanted": f">= {throughput_ratio_min:.0%}",
            "met": peak >= throughput_ratio_min,
        },
        {
            "target": f"uniform p99 at half peak, {large:,} vs {small_transfers:,} stored",
            "measured": f"{figures['large_half_p99_ms']:.1f} vs {figures['small_half_p99_ms']:.1f}"
            f" ms: {p99:.0%}"
            f" (per repeat {', '.join(f'{r:.0%}' for r in figures['half_p99_ratio_by_repeat'])})",
            "wanted": f"<= {p99_ratio_max:.0%}",
            "met": p99 <= p99_ratio_max,
        },
    ]


# ----------------------------------------------------------------- part 4: idle banks


def process_facts(pid: int) -> dict[str, Any]:
    """Threads, RSS and peak RSS of a process, from /proc/<pid>/status."""
    facts: dict[str, Any] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "Threads":
            facts["threads"] = int(value)
        elif name in ("VmRSS", "VmHWM"):
            facts[f"{name.lower()}_bytes"] = int(value.split()[0]) * 1024
    facts["thread_names"] = thread_names(pid)
    return facts


def thread_names(pid: int) -> dict[str, int]:
    """Python threads by name prefix (digits dropped), from `py-spy dump`, when installed."""
    spy = profiling.py_spy()
    if spy is None:
        return {}
    done = subprocess.run(
        [spy, "dump", "--pid", str(pid), "--nonblocking"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    names: Counter[str] = Counter()
    for line in done.stdout.splitlines():
        if line.startswith("Thread ") and '"' in line:
            name = line.split('"')[1]
            names[name.rstrip("0123456789_-").rstrip("-_") or name] += 1
    return dict(names)


async def create_banks(address: str, bank_ids: Sequence[str]) -> Counter[str]:
    """Each bank: CreateBank, two OpenAccount and one CreateTransfer; status counts."""
    statuses: Counter[str] = Counter()
    slots = asyncio.Semaphore(setup_in_flight_max)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.LedgerServiceStub(channel)

        async def one(bank_id: str) -> None:
            async with slots:
                try:
                    await _bank_calls(stub, bank_id)
                    statuses["OK"] += 1
                except grpc.aio.AioRpcError as error:
                    statuses[error.code().name] += 1

        await asyncio.gather(*(one(bank_id) for bank_id in bank_ids))
    return statuses


async def _bank_calls(stub: pb_grpc.LedgerServiceAsyncStub, bank_id: str) -> None:
    timeout = setup_call_timeout_seconds
    await stub.CreateBank(pb.CreateBankRequest(bank_id=bank_id, name="Idle"), timeout=timeout)
    for account_id in ("a", "b"):
        await stub.OpenAccount(
            pb.OpenAccountRequest(
                bank_id=bank_id,
                account_id=account_id,
                kind=pb.ACCOUNT_KIND_MEMBER,
                lower_limit_minutes=idle_lower_limit_minutes,
            ),
            timeout=timeout,
        )
    await stub.CreateTransfer(
        pb.CreateTransferRequest(
            bank_id=bank_id,
            transfer_id="t1",
            payer_account_id="a",
            payee_account_id="b",
            amount_minutes=60,
            memo="one hour",
        ),
        timeout=timeout,
    )


async def warm_workers(address: str, bank_id: str, calls: int) -> None:
    """Concurrent reads, so the gRPC server starts its worker threads (it starts them lazily,
    up to grpc_workers): the one-bank baseline then has every thread a busy server has."""
    slots = asyncio.Semaphore(setup_in_flight_max)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.LedgerServiceStub(channel)

        async def one() -> None:
            async with slots:
                request = pb.GetBankRequest(bank_id=bank_id)
                await stub.GetBank(request, timeout=setup_call_timeout_seconds)

        await asyncio.gather(*(one() for _ in range(calls)))


def idle_cpu(server: RunningServer, seconds: float) -> dict[str, float]:
    before = sample_cpu(server.pid)
    time.sleep(seconds)
    return cpu_percent(before, sample_cpu(server.pid), 0.0)


def measure_idle_banks(options: argparse.Namespace) -> dict[str, Any]:
    """One server: a baseline with one bank, then `--waves` waves of `--banks` new banks,
    each measured right after its creation and once the banks have been idle."""
    code = Path(os.environ[code_env]) if code_env in os.environ else None
    log_path = options.log_dir / "idle-banks.server.log"
    with postgres_schema(options.database_url) as url:
        env = {
            "LEDGER_DATABASE_URL": url,
            **run.ledger_env,
            "LEDGER_BANK_IDLE_SECONDS": str(idle_seconds),
        }
        with running(ledger_command(), env, log_path, code) as server:
            statuses = asyncio.run(create_banks(server.address, ["idle-00000"]))
            asyncio.run(warm_workers(server.address, "idle-00000", warm_up_calls))
            time.sleep(idle_wait_seconds)
            baseline = {**process_facts(server.pid), "cpu": idle_cpu(server, idle_cpu_seconds)}
            say(f"idle: 1 bank: {facts_line(baseline)}")
            waves = [
                _idle_wave(server, options.banks, wave, options.database_url)
                for wave in range(options.waves)
            ]
    first = waves[0]
    per_bank = (first["after_idle"]["vmrss_bytes"] - baseline["vmrss_bytes"]) / options.banks
    say(f"idle: RSS per idle bank (first wave) {per_bank / 1024:,.1f} KiB")
    return {
        "banks": options.banks,
        "baseline_statuses": dict(statuses),
        "baseline": baseline,
        "waves": waves,
        "right_after": first["right_after"],
        "after_idle": first["after_idle"],
        "rss_per_idle_bank_bytes": per_bank,
        "bank_idle_seconds": idle_seconds,
        "writer_threads": Settings().writer_threads,
        "grpc_workers": Settings().grpc_workers,
    }


def _idle_wave(server: RunningServer, count: int, wave: int, database_url: str) -> dict[str, Any]:
    first = 1 + wave * count
    bank_ids = [f"idle-{n:06d}" for n in range(first, first + count)]
    started = time.monotonic()
    backends = server_backends(server.pid, database_url)
    cpu_before = sample_cpu(server.pid, backends)
    client_started = time.process_time()
    statuses = asyncio.run(create_banks(server.address, bank_ids))
    created_seconds = time.monotonic() - started
    # This process's gRPC client counts as the load generator, not as others' work.
    client_seconds = time.process_time() - client_started
    creating_cpu = cpu_percent(cpu_before, sample_cpu(server.pid, backends), client_seconds)
    right_after = process_facts(server.pid)
    say(
        f"idle: wave {wave + 1}: {count:,} more banks created in {created_seconds:.0f} s"
        f" ({dict(statuses)}; others {creating_cpu['other']:.0f}% of a core):"
        f" {facts_line(right_after)}"
    )
    time.sleep(idle_wait_seconds)
    idle = {**process_facts(server.pid), "cpu": idle_cpu(server, idle_cpu_seconds)}
    say(f"idle: wave {wave + 1}: after {idle_seconds:.0f} s idle: {facts_line(idle)}")
    return {
        "statuses": dict(statuses),
        "create_seconds": created_seconds,
        "creating_cpu_percent": creating_cpu,
        "right_after": right_after,
        "after_idle": idle,
    }


def facts_line(facts: dict[str, Any]) -> str:
    cpu = facts.get("cpu")
    idle = f", server CPU {cpu['server']:.1f}% (others {cpu['other']:.0f}%)" if cpu else ""
    return (
        f"threads {facts['threads']} {facts['thread_names']}, RSS {mib(facts['vmrss_bytes'])}"
        f" (peak {mib(facts['vmhwm_bytes'])}){idle}"
    )


def idle_targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    if not figures:
        return []
    threads = [figures[key]["threads"] for key in ("baseline", "right_after", "after_idle")]
    names = figures["after_idle"]["thread_names"]
    per_bank = figures["rss_per_idle_bank_bytes"]
    grpc_threads, writer_threads = names.get("grpc", 0), names.get("writer", 0)
    fixed = threads[-1] - grpc_threads - writer_threads
    return [
        {
            "target": f"threads with 1 bank / {figures['banks']:,} more (right after / idle)",
            "measured": f"{' / '.join(str(t) for t in threads)}: grpc {grpc_threads}"
            f" (grpc_workers {figures['grpc_workers']}) + writer {writer_threads} (writer_threads"
            f" {figures['writer_threads']}) + {fixed} others",
            "wanted": "bounded by named settings, not by the number of banks",
            "met": max(threads) <= threads[0]
            and grpc_threads <= figures["grpc_workers"]
            and writer_threads == figures["writer_threads"],
        },
        {
            "target": "RSS per idle bank over the 1-bank server",
            "measured": f"{per_bank / 1024:,.1f} KiB",
            "wanted": f"< {idle_bank_bytes_max // 1024} KiB",
            "met": per_bank < idle_bank_bytes_max,
        },
    ]


# ----------------------------------------------------------------- the run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.bench_state", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "part",
        nargs="?",
        default="all",
        choices=("all", "check", "generate", "load", "throughput", "idle", "drop"),
    )
    parser.add_argument("--database-url", default=run.database_url_default)
    parser.add_argument(
        "--sizes",
        default=",".join(str(n) for n in sizes_default),
        help="transfers in the banks that are loaded; throughput uses the largest",
    )
    parser.add_argument("--repeats", type=int, default=repeats_default)
    parser.add_argument("--banks", type=int, default=idle_banks_default, help="idle banks")
    parser.add_argument(
        "--waves",
        type=int,
        default=2,
        help="waves of --banks new banks (a second shows whether RSS keeps growing)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the server at its peak on the longest history (first repeat)",
    )
    parser.add_argument(
        "--code",
        default="HEAD",
        help="the commit every measured process runs (git archive), or 'worktree'",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated schemas")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--log-dir", type=Path)
    options = parser.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    options.log_dir = options.log_dir or Path(f"/tmp/bench_state-{stamp}")
    options.sizes = tuple(sorted(int(text) for text in options.sizes.split(",") if text))
    if not 1 <= options.repeats <= 10 or not 1 <= options.banks <= 100_000:
        parser.error("--repeats must be 1..10 and --banks 1..100000")
    if not 1 <= options.waves <= 5:
        parser.error("--waves must be 1..5")
    return options


def run_parts(options: argparse.Namespace) -> dict[str, Any]:
    part = options.part
    figures: dict[str, Any] = {}
    if part in ("all", "check"):
        figures["check"] = check_identical(options.database_url, small_transfers)
    generated: dict[int, Generated] = {}
    if part in ("all", "generate", "load", "throughput"):
        sizes = options.sizes if part != "throughput" else options.sizes[-1:]
        for size in sizes:
            generated[size] = generate(options.database_url, HistorySpec(size))
    if part in ("all", "load"):
        figures["load"] = [measure_loads(options, generated[size]) for size in options.sizes]
    if part in ("all", "throughput"):
        large = generated[options.sizes[-1]]
        save_head_snapshot(options.database_url, large)
        figures["throughput"] = measure_throughput(options, large)
    if part in ("all", "idle"):
        figures["idle"] = measure_idle_banks(options)
    if part == "drop" or (part == "all" and not options.keep):
        for schema in generated_schemas(options.database_url):
            drop(options.database_url, schema)
            say(f"dropped {schema}")
    return figures


def targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    rows = load_targets(figures.get("load", []))
    rows += throughput_targets(figures.get("throughput", {}))
    rows += idle_targets(figures.get("idle", {}))
    return rows


def format_targets(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | measured | wanted | met |", "|---|---|---|---|"]
    for row in rows:
        met = {True: "yes", False: "NO"}[bool(row["met"])]
        lines.append(f"| {row['target']} | {row['measured']} | {row['wanted']} | {met} |")
    return "\n".join(lines)


def format_loads(loads: list[dict[str, Any]]) -> str:
    lines = [
        "| transfers (events) | load, no snapshot | RSS +, no snapshot (peak) | load, snapshot"
        " | RSS +, snapshot (peak) | cold start to 1st commit, snapshot | same, no snapshot |",
        "|---|---|---|---|---|---|---|",
    ]
    for item in loads:
        before, after = item["load_before"], item["load_after"]
        lines.append(
            f"| {item['transfers']:,} ({item['events']:,}) | {before['seconds']:.3f} s"
            f" (n={before['n']}) | {mib(before.get('rss_growth_bytes'))}"
            f" ({mib(before.get('peak_growth_bytes'))}) | {after['seconds'] * 1000:.1f} ms"
            f" | {mib(after.get('rss_growth_bytes'))} ({mib(after.get('peak_growth_bytes'))})"
            f" | {item['first_write_after']['seconds']:.3f} s"
            f" | {item['first_write_before']['seconds']:.3f} s"
            f" (n={item['first_write_before']['n']}) |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    options = parse_args(args)
    if options.part != "drop" and code_env not in os.environ:
        options.log_dir.mkdir(parents=True, exist_ok=True)
        reexec_from_code(args, options)
    facts_path = os.environ.get(facts_env)
    facts = json.loads(Path(facts_path).read_text()) if facts_path else {}
    code = facts.get("code_under_test", {})
    if facts:
        say(
            f"{facts.get('date', '?')} HEAD {code.get('head', '?')[:7]}, measuring"
            f" {code.get('code', '?')}"
            f" | {facts.get('nproc')} x {facts.get('cpu_model')} | Python {facts.get('python')}"
            f" | PostgreSQL {facts.get('postgres', {}).get('server_version')} | logs in"
            f" {options.log_dir}"
        )
    started = time.monotonic()
    figures = run_parts(options)
    rows = targets(figures)
    if figures.get("load"):
        say("\n" + format_loads(figures["load"]))
    if rows:
        say("\n" + format_targets(rows))
    elapsed = time.monotonic() - started
    say(f"\n{options.part} done in {elapsed:,.0f} s")
    if options.json is not None:
        # One file for every part, run one at a time: each part replaces only its own entry.
        path: Path = options.json
        document = json.loads(path.read_text()) if path.exists() else {}
        document.setdefault("parts", {})[options.part] = {
            "machine": facts,
            "command": " ".join(["python -m load_tests.bench_state", *args]),
            "elapsed_seconds": round(elapsed, 1),
            "figures": figures,
            "targets": rows,
        }
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        say(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
