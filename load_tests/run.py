"""Runs the load tests of issue 3 and prints the figures next to their targets.

    .venv/bin/python -m load_tests.run [--quick] [--scenarios echo,uniform,...] [--json FILE]

Each scenario gets its own server subprocess (and, for the ledger, a fresh PostgreSQL
schema, dropped afterwards). Peak finding: the offered rate starts low and is multiplied
by `--step-factor` each step of `--duration` seconds until a step falls behind (achieves
less than 95% of the offered rate, or sees any error); then `--refinements` geometric
bisection steps between the last rate that kept up and the first that did not; at most
`--steps-max` steps. The peak is the best achieved rate of any step. One run at half of the
peak then gives the latency the targets speak of. `--repeat N` repeats the whole set N times
(interleaved, so machine noise hits every scenario alike) and the table shows medians.

Scenarios: echo (baseline a, bare gRPC echo), uniform, hot, pool, batch, mixed, reads (mixed's
baseline: reads only), naive (baseline b: the uniform scenario on a ledger with
LEDGER_WRITER_BATCH_MAX=1). `--quick` is a one-minute
smoke run; `--quick --scenarios batch --duration 2` takes about 15 seconds.

`--existing-schema NAME` points the ledger scenarios at a schema that already holds the bank
(a long history written by `load_tests.state_history`, say): the server starts on it, the
bank is not prepared and the schema is not dropped; the bank check counts only the transfers
the run adds.

`--code COMMIT` runs the servers (and generators) from that commit's ledger/, projections/
and timebank/ (`git archive`) with the working tree's load_tests/, for before/after figures
of two commits while the working tree moves on.
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
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from load_tests import machine, profiling
from load_tests.generator import GeneratorPool, split
from load_tests.servers import (
    RunningServer,
    commit_code,
    cpu_percent,
    echo_command,
    ledger_command,
    log_events,
    postgres_schema,
    running,
    sample_cpu,
    schema_url,
    server_backends,
    snapshot_code,
)
from load_tests.stats import StepSummary, merge
from load_tests.workload import (
    Kind,
    Workload,
    bank_transfer_count,
    operator_token,
    prepare_bank,
)

# Targets of issue 3.
unary_vs_echo_min = 0.90
hot_vs_uniform_min = 0.95
# Issue 9's targets: 1.5x a plain SQL ledger's unary rate, 40% of TigerBeetle's batch rate.
uniform_transfers_per_second_min = 3_300
batch_transfers_per_second_min = 45_000
# p99 at half of the peak: unary calls, and batches of 100.
half_peak_p99_ms_max = 10.0
batch_half_peak_p99_ms_max = 20.0
# Reads never queue behind commits: GetAccount's p99 under mixed load within 2x of no writes.
mixed_reads_p99_ratio_max = 2.0
# A step keeps up when it achieves this share of the offered rate with no errors.
achieved_ratio_min = 0.95

# --quiet-wait: the machine counts as idle below this CPU use (percent of one core).
quiet_busy_percent_max = 25.0
quiet_sample_seconds = 1.0

# Every ledger server gets these (on top of the caller's LEDGER_* variables): a free port
# for its Prometheus exporter, so that it cannot clash with another server on the machine.
ledger_env = {
    "LEDGER_METRICS_ADDRESS": "127.0.0.1:0",
    # The load runs on one key of one bank: per-key quotas are not what is measured.
    "LEDGER_KEY_REQUESTS_PER_SECOND": "1000000000",
    "LEDGER_KEY_REQUEST_BURST_MAX": "1000000000",
    "LEDGER_KEY_CALLS_IN_FLIGHT_MAX": "100000",
    "LEDGER_CALLS_IN_FLIGHT_MAX": "100000",
}

database_url_default = "postgresql://postgres@127.0.0.1:5432/test"
# Set in the copy `--code COMMIT` runs from: where the machine facts were written.
_commit_facts_env = "LOAD_TESTS_COMMIT_FACTS"
bank_id = "load-bank"


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: Kind
    description: str
    start_calls_per_second: float
    server_env: dict[str, str] = field(default_factory=dict)
    transfers_per_request: int = 1
    read_fraction: float = 0.0

    @property
    def on_echo(self) -> bool:
        return self.kind == "echo"

    @property
    def counts_calls(self) -> bool:
        """Rated in calls/s (echo, mixed) rather than transfers/s."""
        return self.kind in ("echo", "mixed")


scenarios = {
    scenario.name: scenario
    for scenario in (
        Scenario("echo", "echo", "(a) bare gRPC unary echo", 250),
        Scenario("uniform", "uniform", "CreateTransfer, random member pairs", 100),
        Scenario("hot", "hot", "CreateTransfer, pool account on every transfer", 100),
        Scenario("pool", "pool", "half gifts to a pot, half grants from it (issue 11)", 100),
        Scenario(
            "batch", "batch", "CreateTransfers, 100 per request", 10, transfers_per_request=100
        ),
        Scenario(
            "mixed",
            "mixed",
            "80% GetAccount/ListAccountTransfers, 20% CreateTransfer",
            100,
            read_fraction=0.8,
        ),
        Scenario(
            "reads",
            "mixed",
            "GetAccount/ListAccountTransfers only, no writes (mixed's baseline)",
            100,
            read_fraction=1.0,
        ),
        Scenario(
            "naive",
            "uniform",
            "(b) uniform, LEDGER_WRITER_BATCH_MAX=1",
            50,
            server_env={"LEDGER_WRITER_BATCH_MAX": "1"},
        ),
    )
}


@dataclass(frozen=True)
class Options:
    scenarios: tuple[str, ...]
    step_seconds: float
    half_seconds: float
    steps_max: int
    step_factor: float
    refinements: int
    generators: int
    in_flight_max: int
    accounts: int
    call_timeout_seconds: float
    calls_per_step_max: int
    repeat: int
    database_url: str
    log_dir: Path
    profile: tuple[str, ...]
    profile_seconds: int
    quiet_wait_seconds: float
    json_path: Path | None
    # The code servers run: a snapshot taken at the start, or None for the working tree.
    code: Path | None = None
    # Ledger scenarios run on this pre-filled schema (its bank `bank_id` and members already
    # there, e.g. from load_tests.state_history) instead of a fresh one: not prepared, not
    # dropped. Every repeat and scenario then adds its transfers to that one bank.
    existing_schema: str | None = None
    # Servers run this commit's code (git archive into `code`) instead of the working tree's.
    commit: str | None = None


@dataclass
class ScenarioRun:
    scenario: str
    repeat: int
    steps: list[StepSummary] = field(default_factory=list)
    half: StepSummary | None = None
    profiles: dict[str, Any] = field(default_factory=dict)
    bank_check: dict[str, Any] = field(default_factory=dict)
    server_log: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def saturated(self) -> bool:
        """Some step fell behind; if none did, the peak is only a lower bound."""
        return any(not step.keeps_up(achieved_ratio_min) for step in self.steps)

    @property
    def peak(self) -> StepSummary | None:
        return max(self.steps, key=lambda step: step.achieved_calls_per_second, default=None)

    def to_json(self) -> dict[str, Any]:
        peak, half = self.peak, self.half
        return {
            "scenario": self.scenario,
            "repeat": self.repeat,
            "peak": peak.to_json() if peak else None,
            "saturated": self.saturated,
            "half_peak": half.to_json() if half else None,
            "steps": [step.to_json() for step in self.steps],
            "profiles": self.profiles,
            "bank_check": self.bank_check,
            "server_log": self.server_log,
            "error": self.error,
        }


# ------------------------------------------------------------------------- one scenario


def run_scenario(scenario: Scenario, options: Options, repeat: int) -> ScenarioRun:
    """Starts the scenario's server, finds its peak, runs at half of it, profiles if asked."""
    result = ScenarioRun(scenario.name, repeat)
    workload = Workload(
        kind=scenario.kind,
        bank_id=bank_id,
        member_count=options.accounts,
        transfers_per_request=scenario.transfers_per_request,
        read_fraction=scenario.read_fraction,
    )
    log_path = options.log_dir / f"{scenario.name}-{repeat}.server.log"
    if options.quiet_wait_seconds > 0:
        _wait_for_quiet(scenario, options.quiet_wait_seconds)
    try:
        with ExitStack() as stack:
            if scenario.on_echo:
                echo = running(echo_command(), {}, log_path, options.code)
                server = stack.enter_context(echo)
            else:
                url = _ledger_url(stack, options)
                # The keys a server makes at its first start (servers from before keys
                # write none, and take calls without them).
                keys_file = options.log_dir / f"{scenario.name}-{repeat}.keys.json"
                keys_file.unlink(missing_ok=True)
                env = {
                    "LEDGER_DATABASE_URL": url,
                    "LEDGER_BOOTSTRAP_KEYS_FILE": str(keys_file),
                    **ledger_env,
                    **scenario.server_env,
                }
                server = stack.enter_context(running(ledger_command(), env, log_path, options.code))
                token = asyncio.run(
                    prepare_bank(
                        server.address,
                        workload,
                        operator_token(keys_file),
                        existing=options.existing_schema is not None,
                    )
                )
                workload = dataclasses.replace(workload, token=token)
            pool = stack.enter_context(GeneratorPool(options.generators))
            step = _Stepper(pool, server, workload, options, repeat)
            if not scenario.on_echo:
                # Transfers already stored (none in a fresh schema): the bank check counts
                # only what this run adds.
                step.initial_transfers = asyncio.run(
                    bank_transfer_count(server.address, bank_id, workload.token)
                )
            _find_peak(scenario, step, options, result)
            peak = result.peak
            if peak is not None and peak.achieved_calls_per_second > 0:
                half_rate = peak.achieved_calls_per_second / 2
                result.half = step(half_rate, options.half_seconds, "half peak")
                _report(scenario, result.half)
                if scenario.name in options.profile and repeat == 0:
                    result.profiles = _profile(scenario, step, peak, options, repeat)
            if not scenario.on_echo:
                result.bank_check = _bank_check(step)
    except Exception:
        result.error = traceback.format_exc()
        print(f"{scenario.name}: FAILED\n{result.error}", file=sys.stderr)
    result.server_log = log_events(log_path)
    if result.server_log:
        print(f"{scenario.name:8} server log events: {result.server_log}")
    return result


def _ledger_url(stack: ExitStack, options: Options) -> str:
    """The pre-filled schema's URL, or a fresh schema's (dropped when the stack closes)."""
    if options.existing_schema is not None:
        return schema_url(options.database_url, options.existing_schema)
    return stack.enter_context(postgres_schema(options.database_url))


def _wait_for_quiet(scenario: Scenario, seconds_max: float) -> None:
    """Waits (at most seconds_max) until the machine was nearly idle for one second."""
    started = time.monotonic()
    busy = math.nan
    while time.monotonic() - started < seconds_max:
        before = sample_cpu(os.getpid())
        time.sleep(quiet_sample_seconds)
        busy = cpu_percent(before, sample_cpu(os.getpid()), 0.0)["machine_busy"]
        if busy <= quiet_busy_percent_max:
            break
    waited = time.monotonic() - started
    print(f"{scenario.name:8} waited {waited:.0f} s for a quiet machine (busy {busy:.0f}%)")


class _Stepper:
    """Runs one step at a given rate against one server with one generator pool."""

    def __init__(
        self,
        pool: GeneratorPool,
        server: RunningServer,
        workload: Workload,
        options: Options,
        repeat: int,
    ) -> None:
        self.pool, self.server, self.workload, self.options = pool, server, workload, options
        self._repeat = repeat
        self._count = 0
        # Over every step so far: what the server acknowledged, and calls it did not.
        self.acknowledged_transfers = 0
        # What the bank held before the first step.
        self.initial_transfers = 0
        self.calls_without_ok = 0

    def __call__(
        self,
        calls_per_second: float,
        seconds: float,
        label: str,
        on_start: Callable[[], None] | None = None,
    ) -> StepSummary:
        options, workload = self.options, self.workload
        self._count += 1
        plans = split(
            processes=self.pool.size,
            address=self.server.address,
            workload=workload,
            calls_per_second=calls_per_second,
            duration_seconds=seconds,
            calls_max=options.calls_per_step_max,
            in_flight_max=options.in_flight_max,
            call_timeout_seconds=options.call_timeout_seconds,
            id_prefix=f"r{self._repeat}s{self._count}",
            seed=self._repeat * 1000 + self._count,
        )
        started = []
        backends = frozenset[int]()
        if self.workload.kind != "echo":
            backends = server_backends(self.server.pid, options.database_url)

        def start() -> None:
            started.append(sample_cpu(self.server.pid, backends))
            if on_start is not None:
                on_start()

        outcomes = self.pool.run(plans, on_start=start)
        ended = sample_cpu(self.server.pid, backends)
        summary = merge(
            label,
            outcomes,
            offered_calls_per_second=calls_per_second,
            transfers_per_call=_transfers_per_call(workload),
            duration_seconds=seconds,
        )
        generator_seconds = sum(outcome.cpu_seconds for outcome in outcomes)
        summary.cpu_percent = cpu_percent(started[0], ended, generator_seconds)
        self.acknowledged_transfers += summary.ok_transfers
        self.calls_without_ok += summary.error_calls
        return summary


def _transfers_per_call(workload: Workload) -> float:
    if workload.kind == "batch":
        return float(workload.transfers_per_request)
    if workload.kind == "mixed":
        return 1.0 - workload.read_fraction
    return 1.0


def _find_peak(scenario: Scenario, step: _Stepper, options: Options, result: ScenarioRun) -> None:
    """Multiplies the rate by the step factor until a step falls behind, then bisects.

    Bisection is geometric, between the highest rate that kept up and the lowest that did
    not, `options.refinements` times; if the very first step falls behind, the rate is
    divided by the factor until one keeps up. At most `options.steps_max` steps in all.
    """
    rate = scenario.start_calls_per_second
    kept_up, fell_behind = 0.0, math.inf
    refinements = 0
    for index in range(options.steps_max):
        summary = step(rate, options.step_seconds, f"step {index + 1}")
        result.steps.append(summary)
        _report(scenario, summary)
        if summary.keeps_up(achieved_ratio_min):
            kept_up = rate
        else:
            fell_behind = rate
        if math.isinf(fell_behind):
            rate *= options.step_factor
        elif kept_up == 0.0:
            rate /= options.step_factor
        elif refinements < options.refinements:
            rate = math.sqrt(kept_up * fell_behind)
            refinements += 1
        else:
            return


def _profile(
    scenario: Scenario, step: _Stepper, peak: StepSummary, options: Options, repeat: int
) -> dict[str, Any]:
    """py-spy on the server at the peak rate: once all threads, once GIL holders only."""
    if profiling.py_spy() is None:
        return {"error": "py-spy not installed"}
    summaries: dict[str, Any] = {}
    seconds = options.profile_seconds
    for mode, gil_only in (("all_threads", False), ("gil", True)):
        raw = options.log_dir / f"{scenario.name}-{repeat}.{mode}.raw"
        recorders: list[subprocess.Popen[bytes]] = []

        def start(
            raw: Path = raw,
            gil_only: bool = gil_only,
            recorders: list[subprocess.Popen[bytes]] = recorders,
        ) -> None:
            recorders.append(
                profiling.start_recording(step.server.pid, seconds, raw, gil_only=gil_only)
            )

        load = step(peak.achieved_calls_per_second, seconds + 2, f"profile {mode}", start)
        _report(scenario, load)
        for recorder in recorders:
            profiling.wait_recording(recorder, seconds)
        summary = profiling.summarise(raw) if raw.exists() else {"samples": 0}
        summaries[mode] = {"raw": str(raw), "load": load.to_json(), "summary": summary}
        print(profiling.format_summary(f"{scenario.name} profile ({mode})", summary))
    return summaries


def _bank_check(step: _Stepper) -> dict[str, Any]:
    """Every acknowledged transfer must be recorded (more may be, from unanswered calls)."""
    acknowledged = step.acknowledged_transfers
    total = asyncio.run(bank_transfer_count(step.server.address, bank_id, step.workload.token))
    recorded = total - step.initial_transfers
    verdict = "ok" if recorded == acknowledged else "LOST" if recorded < acknowledged else "extra"
    return {
        "acknowledged_transfers": acknowledged,
        "recorded_transfers": recorded,
        "initial_transfers": step.initial_transfers,
        "calls_without_ok": step.calls_without_ok,
        "verdict": verdict,
    }


def _report(scenario: Scenario, step: StepSummary) -> None:
    latency = step.latency_ms
    errors = {k: v for k, v in step.statuses.items() if k != "OK"}
    cpu = step.cpu_percent
    print(
        f"{scenario.name:8} {step.label:18} offered {step.offered_calls_per_second:8,.0f}/s"
        f"  achieved {step.achieved_calls_per_second:8,.0f} calls/s"
        f" {step.achieved_transfers_per_second:8,.0f} transfers/s"
        f"  p50 {latency['p50']:7.1f}  p99 {latency['p99']:7.1f}  p99.9 {latency['p99.9']:7.1f} ms"
        f"  dropped {step.dropped} late {step.late} errors {errors or 0}"
        f"{' items ' + str(step.item_errors) if step.item_errors else ''}"
        f"  cpu% server {cpu.get('server', 0):.0f} proj {cpu.get('projections', 0):.0f}"
        f" pg {cpu.get('postgres', 0):.0f} gen {cpu.get('generators', 0):.0f}"
        f" other {cpu.get('other', 0):.0f}",
        flush=True,
    )


# ------------------------------------------------------------------------- the report


def summarise(runs: Sequence[ScenarioRun]) -> dict[str, dict[str, Any]]:
    """Per scenario: medians (and ranges) over repeats of the peak and half-peak figures."""
    summary: dict[str, dict[str, Any]] = {}
    for name in scenarios:
        done = [run for run in runs if run.scenario == name and run.peak is not None]
        if not done:
            continue
        peaks = [run.peak for run in done if run.peak is not None]
        halves = [run.half for run in done if run.half is not None]
        summary[name] = {
            "repeats": len(done),
            "saturated": all(run.saturated for run in done),
            "peak_calls_per_second": _spread([p.achieved_calls_per_second for p in peaks]),
            "peak_transfers_per_second": _spread([p.achieved_transfers_per_second for p in peaks]),
            # For ratios between scenarios measured close in time (noise on a shared machine).
            "by_repeat": {
                run.repeat: {
                    "peak_calls_per_second": run.peak.achieved_calls_per_second,
                    "peak_transfers_per_second": run.peak.achieved_transfers_per_second,
                }
                for run in done
                if run.peak is not None
            },
            "peak_offered_calls_per_second": _spread([p.offered_calls_per_second for p in peaks]),
            "peak_p99_ms": _spread([p.latency_ms["p99"] for p in peaks]),
            "peak_cpu_percent": {
                part: _spread([p.cpu_percent.get(part, math.nan) for p in peaks])
                for part in ("server", "projections", "postgres", "generators", "other")
            },
            "half_calls_per_second": _spread([h.offered_calls_per_second for h in halves]),
            "half_p50_ms": _spread([h.latency_ms["p50"] for h in halves]),
            "half_p99_ms": _spread([h.latency_ms["p99"] for h in halves]),
            "half_p999_ms": _spread([h.latency_ms["p99.9"] for h in halves]),
            "half_get_account_p99_ms": _spread(
                [h.latency_ms_by_op["GetAccount"]["p99"] for h in halves if _reads(h)]
            ),
            "errors": sum(step.error_calls for run in done for step in run.steps),
            "item_errors": sum(
                sum(step.item_errors.values()) for run in done for step in run.steps
            ),
            "bank_checks": sorted({run.bank_check.get("verdict", "-") for run in done}),
        }
    return summary


def _reads(step: StepSummary) -> bool:
    return "p99" in step.latency_ms_by_op.get("GetAccount", {})


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with what was measured (medians) and whether it was met.

    Ratios between scenarios are taken within each repeat, then their median: two scenarios
    of one repeat ran minutes apart, so they share the machine's load more than medians do.
    """

    def median(name: str, key: str) -> float | None:
        value = summary.get(name, {}).get(key, {}).get("median")
        return float(value) if value is not None else None

    def row(
        target: str, measured: str, value: float | None, wanted: str, met: bool | None
    ) -> dict[str, Any]:
        return {
            "target": target,
            "measured": measured,
            "value": value,
            "wanted": wanted,
            "met": met,
        }

    def ratio(target: str, top: str, bottom: str, key: str, minimum: float) -> dict[str, Any]:
        """Median over repeats of the ratio within each repeat (run minutes apart)."""
        tops = summary.get(top, {}).get("by_repeat", {})
        bottoms = summary.get(bottom, {}).get("by_repeat", {})
        ratios = [
            tops[repeat][key] / bottoms[repeat][key]
            for repeat in sorted(tops.keys() & bottoms.keys())
            if bottoms[repeat][key]
        ]
        a, b = median(top, key), median(bottom, key)
        if not ratios or a is None or b is None:
            return row(target, "n/a", None, f">= {minimum:.0%}", None)
        value = statistics.median(ratios)
        per_repeat = ", ".join(f"{r:.0%}" for r in ratios)
        measured = f"{value:.0%} (per repeat: {per_repeat}; medians {a:,.0f} / {b:,.0f})"
        return row(target, measured, value, f">= {minimum:.0%}", value >= minimum)

    calls, transfers = "peak_calls_per_second", "peak_transfers_per_second"
    rows = [
        ratio("unary uniform vs echo, calls/s", "uniform", "echo", calls, unary_vs_echo_min),
        ratio(
            "hot account vs uniform, transfers/s", "hot", "uniform", transfers, hot_vs_uniform_min
        ),
        ratio("hot pool vs uniform, transfers/s", "pool", "uniform", transfers, hot_vs_uniform_min),
    ]
    uniform, wanted = median("uniform", transfers), uniform_transfers_per_second_min
    measured = "n/a" if uniform is None else f"{uniform:,.0f} ({uniform / wanted:.0%} of target)"
    met = None if uniform is None else uniform >= wanted
    rows.append(row("unary uniform, transfers/s", measured, uniform, f">= {wanted:,}", met))
    batch, wanted = median("batch", transfers), batch_transfers_per_second_min
    measured = "n/a" if batch is None else f"{batch:,.0f} ({batch / wanted:.0%} of target)"
    met = None if batch is None else batch >= wanted
    rows.append(row("batch API, transfers/s", measured, batch, f">= {wanted:,}", met))
    for name in ("uniform", "hot", "pool", "batch", "mixed", "naive", "echo"):
        p99, rate = median(name, "half_p99_ms"), median(name, "half_calls_per_second")
        if p99 is not None and rate is not None:
            measured = f"{p99:.1f} ms at {rate:,.0f} calls/s"
            limit_ms = batch_half_peak_p99_ms_max if name == "batch" else half_peak_p99_ms_max
            rows.append(
                row(
                    f"p99 at half peak: {name}",
                    measured,
                    p99,
                    f"<= {limit_ms:.0f} ms",
                    p99 <= limit_ms,
                )
            )
    mixed, alone = (
        median("mixed", "half_get_account_p99_ms"),
        median("reads", "half_get_account_p99_ms"),
    )
    if mixed is not None and alone:
        rate_mixed = median("mixed", "half_calls_per_second") or 0.0
        rate_alone = median("reads", "half_calls_per_second") or 0.0
        rates = f"{rate_mixed:,.0f} / {rate_alone:,.0f} calls/s"
        measured = f"{mixed:.1f} / {alone:.1f} ms = {mixed / alone:.1f}x (at {rates})"
        rows.append(
            row(
                "GetAccount p99 at half peak, mixed vs no writes",
                measured,
                mixed / alone,
                f"<= {mixed_reads_p99_ratio_max:.0f}x",
                mixed / alone <= mixed_reads_p99_ratio_max,
            )
        )
    uniform, naive = median("uniform", transfers), median("naive", transfers)
    if uniform is not None and naive:
        gain = uniform / naive
        measured = f"{uniform:,.0f} / {naive:,.0f} = {gain:.1f}x"
        rows.append(row("(info) batching writer vs naive path", measured, gain, "-", None))
    return rows


def _scenario_row(name: str, figures: dict[str, Any]) -> str:
    scenario = scenarios[name]
    calls = figures["peak_calls_per_second"]["median"]
    transfers = figures["peak_transfers_per_second"]["median"]
    if scenario.counts_calls:
        peak = f"{calls:,.0f} calls/s" + (f" ({transfers:,.0f} transfers/s)" if transfers else "")
    else:
        peak = f"{transfers:,.0f} transfers/s"
        peak += f" ({calls:,.0f} calls/s)" if scenario.kind == "batch" else ""
    if not figures["saturated"]:
        peak = f">= {peak} (no step fell behind: raise --steps-max)"
    if figures["repeats"] > 1:
        key = "peak_calls_per_second" if scenario.counts_calls else "peak_transfers_per_second"
        low, high = figures[key]["min"], figures[key]["max"]
        peak += f" [{low:,.0f}-{high:,.0f}, n={figures['repeats']}]"
    half = figures["half_calls_per_second"].get("median", 0.0)
    latencies = " / ".join(
        f"{figures[key].get('median', float('nan')):.1f}"
        for key in ("half_p50_ms", "half_p99_ms", "half_p999_ms")
    )
    errors = f"{figures['errors']} calls, {figures['item_errors']} items"
    checks = ", ".join(figures["bank_checks"])
    other = figures["peak_cpu_percent"]["other"].get("median", math.nan)
    return (
        f"| {name} | {scenario.description} | {peak} | {figures['peak_p99_ms']['median']:.1f} ms"
        f" | {half:,.0f} calls/s | {latencies} ms | {errors} | {checks} | {other:.0f}% |"
    )


def format_report(summary: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | what | peak achieved | p99 at peak | half-peak rate"
        " | p50 / p99 / p99.9 at half peak | errors | bank check | others' CPU at peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_scenario_row(name, figures) for name, figures in summary.items()]
    lines += ["", "| target | measured | wanted | met |", "|---|---|---|---|"]
    for row in rows:
        met = {True: "yes", False: "NO", None: "-"}[row["met"]]
        lines.append(f"| {row['target']} | {row['measured']} | {row['wanted']} | {met} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    parser.add_argument(
        "--scenarios",
        default=",".join(scenarios),
        help="comma-separated, from: " + ", ".join(scenarios),
    )
    parser.add_argument("--duration", type=float, help="seconds per step (default 4, quick 2)")
    parser.add_argument(
        "--half-duration", type=float, help="seconds at half peak (default 8, quick 2)"
    )
    parser.add_argument(
        "--steps-max", type=int, help="peak-finding steps per scenario (default 12, quick 5)"
    )
    parser.add_argument(
        "--refinements",
        type=int,
        help="bisection steps after the first step that falls behind (default 3, quick 1)",
    )
    parser.add_argument("--step-factor", type=float, help="rate multiplier per step (default 2)")
    parser.add_argument("--generators", type=int, default=2, help="generator processes (default 2)")
    parser.add_argument(
        "--in-flight", type=int, default=64, help="calls in flight at most, all generators together"
    )
    parser.add_argument("--accounts", type=int, help="members per bank (default 1000, quick 200)")
    parser.add_argument(
        "--call-timeout", type=float, default=5.0, help="deadline of each call, seconds"
    )
    parser.add_argument("--calls-per-step-max", type=int, default=500_000)
    parser.add_argument(
        "--repeat", type=int, default=1, help="repeat the whole set; medians are reported"
    )
    parser.add_argument(
        "--database-url",
        default=database_url_default,
        help="PostgreSQL; a schema is created per server",
    )
    parser.add_argument(
        "--log-dir", type=Path, help="server logs and profiles (default /tmp/load_tests-<time>)"
    )
    parser.add_argument(
        "--profile",
        default="",
        help="scenarios to profile with py-spy at their peak (first repeat only): uniform,batch",
    )
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each scenario, wait up to this many seconds for the machine to be idle",
    )
    parser.add_argument("--json", type=Path, help="write all results to this JSON file")
    parser.add_argument(
        "--existing-schema",
        help="run the ledger scenarios on this pre-filled schema of --database-url (bank"
        f" {bank_id!r} with members m00000...; see load_tests.bench_state) instead of a fresh"
        " one: it is neither prepared nor dropped",
    )
    parser.add_argument(
        "--code",
        dest="commit",
        help="run servers (and generators) from this commit's ledger/, projections/ and"
        " timebank/ (git archive) with the working tree's load_tests/: figures of one commit",
    )
    parser.add_argument(
        "--no-snapshot",
        action="store_true",
        help="run servers from the working tree, not from a copy taken when the run starts",
    )
    args = parser.parse_args(argv)

    chosen = tuple(name.strip() for name in args.scenarios.split(",") if name.strip())
    profile = tuple(name.strip() for name in args.profile.split(",") if name.strip())
    unknown = [name for name in (*chosen, *profile) if name not in scenarios]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    quick = args.quick
    step_seconds = args.duration or (2.0 if quick else 4.0)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    options = Options(
        scenarios=chosen,
        step_seconds=step_seconds,
        half_seconds=args.half_duration or (step_seconds if quick else 2 * step_seconds),
        steps_max=args.steps_max or (5 if quick else 12),
        step_factor=args.step_factor or 2.0,
        refinements=args.refinements if args.refinements is not None else (1 if quick else 3),
        generators=args.generators,
        in_flight_max=args.in_flight,
        accounts=args.accounts or (200 if quick else 1000),
        call_timeout_seconds=args.call_timeout,
        calls_per_step_max=args.calls_per_step_max,
        repeat=args.repeat,
        database_url=args.database_url,
        log_dir=args.log_dir or Path(f"/tmp/load_tests-{stamp}"),
        profile=profile,
        profile_seconds=args.profile_seconds,
        quiet_wait_seconds=args.quiet_wait,
        json_path=args.json,
        existing_schema=args.existing_schema,
        commit=args.commit,
    )
    if args.commit and args.no_snapshot:
        parser.error("--code runs a commit's code from a copy: it cannot go with --no-snapshot")
    if not args.no_snapshot:
        options = dataclasses.replace(options, code=options.log_dir / "code")
    _check(parser, options)
    return options


def _check(parser: argparse.ArgumentParser, options: Options) -> None:
    if not 0 < options.step_seconds <= 120 or not 0 < options.half_seconds <= 300:
        parser.error("step durations must be in (0, 120] and (0, 300] seconds")
    if not 1 <= options.steps_max <= 30 or options.step_factor <= 1.0:
        parser.error("--steps-max must be 1..30 and --step-factor above 1")
    if not 0 <= options.refinements <= options.steps_max:
        parser.error("--refinements must be 0..steps-max")
    if not 1 <= options.generators <= 8 or options.in_flight_max < options.generators:
        parser.error("--generators must be 1..8, with at least one call in flight each")
    if not 2 <= options.accounts <= 100_000 or not 1 <= options.repeat <= 10:
        parser.error("--accounts must be 2..100000 and --repeat 1..10")
    if not 1 <= options.profile_seconds <= 60 or not 0 <= options.quiet_wait_seconds <= 600:
        parser.error("--profile-seconds must be 1..60 and --quiet-wait 0..600")


def _run_from_commit(args: list[str], options: Options) -> None:
    """Copies the commit's code, then runs this command again from the copy (never returns):
    this process's own imports (the protos the generators build requests with) are then the
    commit's too. The machine facts are taken here, where the git repository is."""
    assert options.commit is not None, "only for --code"
    assert options.code is not None, "--code runs from a copy"
    facts = machine.facts(options.database_url)
    facts["code_commit"] = commit_code(machine.repository, options.commit, options.code)
    facts["code_snapshot"] = f"git archive {facts['code_commit'][:7]} + working-tree load_tests"
    facts_path = options.log_dir / "machine.json"
    facts_path.write_text(json.dumps(facts, indent=2, default=str))
    pinned = [*args, "--log-dir", str(options.log_dir.resolve())]
    if options.json_path is not None:
        pinned += ["--json", str(options.json_path.resolve())]
    env = {**os.environ, _commit_facts_env: str(facts_path), "PYTHONPATH": str(options.code)}
    os.chdir(options.code)
    os.execve(sys.executable, [sys.executable, "-m", "load_tests.run", *pinned], env)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    options = parse_args(args)
    options.log_dir.mkdir(parents=True, exist_ok=True)
    if options.commit is not None and _commit_facts_env not in os.environ:
        _run_from_commit(args, options)
    if options.commit is not None:
        facts = json.loads(Path(os.environ[_commit_facts_env]).read_text())
    else:
        facts = machine.facts(options.database_url)
    if options.code is not None and options.commit is None:
        facts["code_snapshot"] = snapshot_code(machine.repository, options.code)
        # Generator processes (spawned, so they import afresh) take the snapshot too.
        sys.path.insert(0, str(options.code))
    print(
        f"{facts['date']} commit {facts['git_commit']}{' (dirty)' if facts['git_dirty'] else ''}"
        f" | {facts['nproc']} x {facts['cpu_model']} | Python {facts['python']}"
        f" | PostgreSQL {facts['postgres'].get('server_version')}"
        f" synchronous_commit={facts['postgres'].get('synchronous_commit')}"
        f" | code snapshot {facts.get('code_snapshot', 'none (working tree)')}"
        f" | logs in {options.log_dir}",
        flush=True,
    )
    started = time.monotonic()
    runs = [
        run_scenario(scenarios[name], options, repeat)
        for repeat in range(options.repeat)
        for name in options.scenarios
    ]
    summary = summarise(runs)
    rows = targets(summary)
    print()
    print(format_report(summary, rows))
    elapsed = time.monotonic() - started
    print(f"\n{len(runs)} scenario runs in {elapsed:.0f} s", flush=True)
    if options.json_path is not None:
        document = {
            "machine": facts,
            "command": " ".join(["python -m load_tests.run", *args]),
            "options": {
                k: str(v) if isinstance(v, Path) else v
                for k, v in dataclasses.asdict(options).items()
            },
            "elapsed_seconds": round(elapsed, 1),
            "summary": summary,
            "targets": rows,
            "runs": [run.to_json() for run in runs],
        }
        options.json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"results written to {options.json_path}")
    return 1 if any(run.error for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
