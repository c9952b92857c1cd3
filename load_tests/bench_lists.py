"""Benchmark of the lists (issue 12): one account with 10^6 transfers, on PostgreSQL.

    .venv/bin/python -m load_tests.bench_lists                       # about 10 minutes
    .venv/bin/python -m load_tests.bench_lists --transfers 100000    # a quicker look
    .venv/bin/python -m load_tests.bench_lists --keep-schema         # keep the history ...
    .venv/bin/python -m load_tests.bench_lists --schema bench_xxx    # ... and reuse it

The history is written through the Ledger's own write path (CreateTransfers of 1,000, one
event each) on a fresh schema of LEDGER_BENCH_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test): a `pool` account pays or is paid in every
transfer, by 1,000 members, over a year of recorded time. Among them: 1 in 100 a pending
pledge to the pool, half of which are voided later, 1 in 1,000 reversed, 10% in category
`garden`, 0.1% in `plumbing`. Then each list is read `--pages` times, at random depths of
the history (page tokens for random positions), in-process through `Ledger.lists` (the
store's SQL and the conversion to views; no gRPC), after a VACUUM ANALYZE (the steady state
autovacuum keeps the tables in), and timed one page at a time, in `--repeats` rounds over
every list (a burst of another process's load spreads over the lists instead of landing on
one): p50, p99 of the median round and of the best, and max, against the target of issue
12 (page p99 under 10 ms). The plan of each query
(EXPLAIN ANALYZE) is printed for one deep page, to show it is one index range scan.

`--write-cost` also measures what the issue-12 indexes cost the write path: the same batches
of transfers written on two fresh schemas, with and without those indexes (dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from ledger.application import pages
from ledger.application.ledger import Ledger
from ledger.application.listing import ListPage, TransferFilter
from ledger.config import Settings
from ledger.domain import limits
from ledger.domain.commands import (
    CreateBank,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    ReverseTransfer,
    VoidPending,
)
from ledger.storage.schema import time_mark_every
from load_tests import machine

POSTGRES_URL_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
BANK = "lists"
POOL = "pool"
page_ms_max = 10.0  # issue 12's target for a page's p99
members_count = 1_000
# Indexes this issue added (ledger/storage/schema.py, list_statements), for --write-cost.
issue_12_indexes = (
    "ledger_accounts_by_kind",
    "ledger_accounts_by_status",
    "ledger_accounts_by_kind_status",
    "ledger_transfers_marked_by_payer",
    "ledger_transfers_marked_by_payee",
    "ledger_transfers_marked",
    f"ledger_transfers_every_{time_mark_every}th",
)


class BenchClock:
    """Recorded time, moved on by the writer of the history (a year over the whole run)."""

    def __init__(self) -> None:
        self._now = datetime(2025, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._now += delta


def say(text: str) -> None:
    print(text, flush=True)


def postgres_url() -> str:
    return os.environ.get("LEDGER_BENCH_POSTGRES_URL", POSTGRES_URL_DEFAULT)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def others_load() -> list[str]:
    """What else runs on the machine (other benchmarks, test runs), as `ps` shows it."""
    listing = subprocess.run(
        ["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    own = str(os.getpid())
    return [line for line in listing[1:8] if own not in line.split()[:1]]


@contextmanager
def schema(name: str | None, keep: bool) -> Iterator[tuple[str, bool]]:
    """(database URL, whether the history is there already) on `name` or a fresh schema."""
    base = postgres_url()
    fresh = name is None
    name = name or f"bench_lists_{uuid.uuid4().hex[:10]}"
    if fresh:
        with psycopg.connect(base, autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield f"{base}{'&' if '?' in base else '?'}schema={name}", not fresh
    finally:
        if fresh and not keep:
            with psycopg.connect(base, autocommit=True) as connection:
                connection.execute(f'DROP SCHEMA "{name}" CASCADE')
        elif fresh:
            say(f"kept schema {name}: --schema {name} reuses it")


def open_ledger(url: str, clock: BenchClock) -> Ledger:
    return Ledger(Settings(database_url=url, writer_timeout_seconds=600.0), clock=clock)


# ----------------------------------------------------------------- the history


@dataclass
class Written:
    transfers: int
    seconds: float


def write_history(ledger: Ledger, clock: BenchClock, transfers: int) -> Written:
    rng = random.Random(12)
    ledger.create_bank(CreateBank(bank_id=BANK, name="Lists bench"))
    lower = -limits.limit_minutes_max
    ledger.execute(BANK, OpenAccount(POOL, "pool", lower_limit_minutes=lower))
    people = [f"m{n}" for n in range(members_count)]
    for person in people:
        ledger.execute(BANK, OpenAccount(person, "member", lower_limit_minutes=lower))
    per_request = limits.transfers_per_batch_max
    requests = max(1, transfers // per_request)
    step = timedelta(days=365) / requests
    pending: list[str] = []
    started = time.perf_counter()
    for request in range(requests):
        items = []
        for i in range(per_request):
            number = request * per_request + i
            person = people[rng.randrange(members_count)]
            roll = rng.random()
            category = "garden" if roll < 0.1 else "plumbing" if roll < 0.101 else ""
            if number % 100 == 50:
                items.append(CreateTransfer(f"t{number}", person, POOL, 5, pending=True))
                pending.append(f"t{number}")
            elif number % 2:
                items.append(CreateTransfer(f"t{number}", POOL, person, 1, category=category))
            else:
                items.append(CreateTransfer(f"t{number}", person, POOL, 1, category=category))
        ledger.execute(BANK, CreateTransfers(tuple(items)))
        # Half the pledges of the batch before are voided; one transfer in 1,000 reversed.
        for transfer_id in pending[:-10][::2][-5:]:
            ledger.execute(BANK, VoidPending(f"void-{transfer_id}", transfer_id))
        reversed_id = f"t{request * per_request + 1}"
        ledger.execute(BANK, ReverseTransfer(f"undo-{reversed_id}", reversed_id, reason="bench"))
        clock.advance(step)
        if request % 50 == 49:
            rate = (request + 1) * per_request / (time.perf_counter() - started)
            say(f"  {(request + 1) * per_request:>9,} transfers written, {rate:,.0f}/s")
    return Written(requests * per_request, time.perf_counter() - started)


# ----------------------------------------------------------------- reading pages


@dataclass
class Case:
    name: str
    read: Callable[[str], ListPage[Any]]
    tokens: Callable[[random.Random], str]


def cases(ledger: Ledger, first: datetime, last: datetime) -> list[Case]:
    lists = ledger.lists
    count = ledger.get_bank(BANK).transfer_count
    middle = first + (last - first) / 2

    def below(kind: str, *binding: object) -> Callable[[random.Random], str]:
        token_kind = pages.bound_kind(kind, *binding) if binding else kind

        def token(rng: random.Random) -> str:
            return pages.encode_token(token_kind, rng.randrange(2, count))

        return token

    def first_page(rng: random.Random) -> str:
        return ""

    def account(size: int, found: TransferFilter | None = None) -> Callable[[str], ListPage[Any]]:
        return lambda token: lists.account_transfers(BANK, POOL, size, token, found)

    def bank(size: int, found: TransferFilter | None = None) -> Callable[[str], ListPage[Any]]:
        return lambda token: lists.bank_transfers(BANK, size, token, found)

    garden = TransferFilter(category="garden")
    plumbing = TransferFilter(category="plumbing")
    posted = TransferFilter(state="posted")
    voided = TransferFilter(state="voided")
    reversed_ = TransferFilter(state="reversed")
    day = TransferFilter(created_from=middle, created_before=middle + timedelta(days=1))
    return [
        Case("account, all, page 50, first page", account(50), first_page),
        Case("account, all, page 50, any depth", account(50), below("t")),
        Case("account, all, page 1000, any depth", account(1000), below("t")),
        Case(
            "account inbox (pending as payee), page 50",
            lambda token: lists.pending_transfers(BANK, POOL, 50, token, ("payee",)),
            first_page,
        ),
        Case("account, voided, page 50", account(50, voided), first_page),
        Case("account, reversed, page 50", account(50, reversed_), first_page),
        Case("account, posted (row check), any depth", account(50, posted), below("t", posted)),
        Case(
            "account, category 10% (row check), any depth", account(50, garden), below("t", garden)
        ),
        Case(
            "account, category 0.1% (row check), any depth",
            account(50, plumbing),
            below("t", plumbing),
        ),
        Case("account, one day mid-history", account(50, day), first_page),
        Case("bank, all, page 50, any depth", bank(50), below("x")),
        Case("bank, pending, page 50", bank(50, TransferFilter(state="pending")), first_page),
        Case(
            "bank, category 0.1% (row check), any depth", bank(50, plumbing), below("x", plumbing)
        ),
        Case(
            "accounts, members, page 50, first page",
            lambda token: lists.accounts(BANK, 50, token, kind="member"),
            first_page,
        ),
    ]


@dataclass
class Timing:
    name: str
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_items: float
    total_size_given: bool
    best_p99_ms: float = 0.0  # the best round's, when measured in rounds

    @property
    def ok(self) -> bool:
        return self.p99_ms < page_ms_max


def time_case(case: Case, count: int, rng: random.Random) -> Timing:
    timings: list[float] = []
    items: list[int] = []
    given = False
    for _ in range(count):
        token = case.tokens(rng)
        started = time.perf_counter()
        page = case.read(token)
        timings.append((time.perf_counter() - started) * 1000)
        items.append(len(page.items))
        given = given or page.total_size is not None
    return Timing(
        case.name,
        percentile(timings, 0.5),
        percentile(timings, 0.99),
        max(timings),
        statistics.fmean(items),
        given,
    )


def measure(found: list[Case], pages: int, repeats: int) -> list[Timing]:
    """Each case `repeats` times, round-robin (so another process's burst spreads over
    cases, not onto one), `pages` pages each; per case the median round, and the best p99."""
    rng = random.Random(7)
    rounds: dict[str, list[Timing]] = {case.name: [] for case in found}
    for case in found:
        time_case(case, 20, rng)  # warm the caches and the prepared statements
    for number in range(repeats):
        say(f"round {number + 1} of {repeats}: load average {load_average()}")
        for case in found:
            rounds[case.name].append(time_case(case, pages, rng))
    say(
        f"{'list':<50} {'p50 ms':>7} {'p99 ms':>7} {'best p99':>8} {'max ms':>7} {'items':>6} total"
    )
    timings = []
    for case in found:
        measured = sorted(rounds[case.name], key=lambda t: t.p99_ms)
        median = measured[len(measured) // 2]
        timing = Timing(
            case.name,
            statistics.median(t.p50_ms for t in measured),
            median.p99_ms,
            max(t.max_ms for t in measured),
            median.mean_items,
            median.total_size_given,
            measured[0].p99_ms,
        )
        timings.append(timing)
        say(
            f"{timing.name:<50} {timing.p50_ms:>7.2f} {timing.p99_ms:>7.2f}"
            f" {timing.best_p99_ms:>8.2f} {timing.max_ms:>7.2f} {timing.mean_items:>6.1f}"
            f" {'yes' if timing.total_size_given else 'no'}"
            f"{'' if timing.ok else '   OVER TARGET'}"
        )
    return timings


# ----------------------------------------------------------------- plans


def explain(url: str, schema_name: str, ledger: Ledger) -> list[str]:
    """EXPLAIN ANALYZE of the statements a deep page of the main lists runs."""
    captured: list[tuple[str, Sequence[Any]]] = []
    store = ledger.store
    query = store.query

    def capture(statement: str, params: Sequence[Any]) -> list[Any]:
        captured.append((statement, params))
        return query(statement, params)

    store.query = capture  # type: ignore[method-assign]
    try:
        count = ledger.get_bank(BANK).transfer_count
        deep = pages.encode_token("t", count // 2)
        ledger.lists.account_transfers(BANK, POOL, 50, deep)
        ledger.lists.pending_transfers(BANK, POOL, 50, "", ("payee",))
        plumbing = TransferFilter(category="plumbing")
        ledger.lists.account_transfers(
            BANK,
            POOL,
            50,
            pages.encode_token(pages.bound_kind("t", plumbing), count // 2),
            plumbing,
        )
    finally:
        store.query = query  # type: ignore[method-assign]
    lines: list[str] = []
    with psycopg.connect(postgres_url()) as connection:
        connection.execute(f'SET search_path TO "{schema_name}"')
        for statement, params in captured:
            sql = store.dialect.sql(statement)
            plan = connection.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}", params)
            lines.append(f"-- {statement[:120]}...")
            lines += [f"   {row[0]}" for row in plan.fetchall()]
    return lines


# ----------------------------------------------------------------- write cost


def write_cost(transfers: int, repeats: int) -> dict[str, list[float]]:
    """Transfers per second written with and without the issue-12 indexes, alternately."""
    rates: dict[str, list[float]] = {"with": [], "without": []}
    for label, drop in (("with", False), ("without", True)) * repeats:
        with schema(None, keep=False) as (url, _):
            clock = BenchClock()
            ledger = open_ledger(url, clock)
            try:
                if drop:
                    name = url.rsplit("schema=", 1)[1]
                    with psycopg.connect(postgres_url(), autocommit=True) as connection:
                        for index in issue_12_indexes:
                            connection.execute(f'DROP INDEX "{name}"."{index}"')
                written = write_history(ledger, clock, transfers)
            finally:
                ledger.close()
        rates[label].append(written.transfers / written.seconds)
        say(f"  {label} the issue-12 indexes: {rates[label][-1]:,.0f} transfers/s")
    return rates


# ----------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench_lists", description=__doc__)
    parser.add_argument("--transfers", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=300, help="pages read per list and round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over every list")
    parser.add_argument("--schema", help="reuse a history kept with --keep-schema")
    parser.add_argument("--keep-schema", action="store_true")
    parser.add_argument("--write-cost", type=int, default=0, metavar="TRANSFERS")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    facts = machine.facts(postgres_url())
    say(json.dumps(facts, default=str))
    say("\n".join(["busiest processes:", *others_load()]))
    say(f"load average before: {load_average()}")
    result: dict[str, Any] = {
        "machine": facts,
        "load_average_before": load_average(),
        "others_before": others_load(),
    }
    with schema(args.schema, args.keep_schema) as (url, existing):
        clock = BenchClock()
        ledger = open_ledger(url, clock)
        try:
            if not existing:
                say(f"writing {args.transfers:,} transfers of one account ...")
                written = write_history(ledger, clock, args.transfers)
                say(f"  {written.transfers:,} in {written.seconds:.0f} s")
                result["written"] = vars(written)
            bank = ledger.get_bank(BANK)
            first = bank.created_at
            last = ledger.lists.account_transfers(BANK, POOL, 1, "").items[0].created_at
            say(f"the bank: {bank.transfer_count:,} transfers, {bank.account_count:,} accounts")
            # The steady state autovacuum keeps a table in: its visibility map set (index-only
            # scans need no heap visits) and its statistics current.
            with psycopg.connect(postgres_url(), autocommit=True) as connection:
                name = url.rsplit("schema=", 1)[1]
                for table in ("ledger_transfers", "ledger_account_transfers", "ledger_accounts"):
                    connection.execute(f'VACUUM (ANALYZE) "{name}".{table}')
            timings = measure(cases(ledger, first, last), args.pages, args.repeats)
            result["pages"] = [vars(t) for t in timings]
            plans = explain(url, url.rsplit("schema=", 1)[1], ledger)
            say("\n".join(plans))
            result["plans"] = plans
        finally:
            ledger.close()
    if args.write_cost:
        say(f"write cost: {args.write_cost:,} transfers, with and without the indexes ...")
        result["write_cost"] = write_cost(args.write_cost, args.repeats)
    result["load_average_after"] = load_average()
    result["others_after"] = others_load()
    say(f"load average after: {load_average()}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0 if all(t.ok for t in timings) else 1


if __name__ == "__main__":
    raise SystemExit(main())
