"""The write-path figures of load_tests.run for two commits in one table: did anything get slower?

    .venv/bin/python -m load_tests.before_after --before 07f375b --after c1510c2 \\
        [--repeats 3] [--scenarios uniform,hot,batch,mixed,naive] [--json FILE]

Runs `python -m load_tests.run --code COMMIT` (one repeat of the scenarios, servers from that
commit's code) for each commit in turn, alternating the order each round (before, after;
after, before; ...) so that the machine's drifting load falls on both alike, then prints the
median per scenario and commit: the peak, the p99 at half of it, and after / before. A
scenario counts as slower when its median peak is more than `slower_ratio_max` below the
other commit's or its half-peak p99 more than that above it: the run-to-run spread of this
harness on a 2-core shared machine is about that large (load_tests/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from load_tests import machine

scenarios_default = "uniform,hot,batch,mixed,naive"
# A change beyond this share is reported as slower (below it, it is within the noise).
slower_ratio_max = 0.10
run_timeout_seconds = 1800.0
# Scenarios measured in calls, not transfers (echo moves none; mixed is mostly reads).
calls_scenarios = ("echo", "mixed")


def run_once(commit: str, scenarios: str, log_dir: Path) -> dict[str, Any]:
    """One `load_tests.run` of the scenarios on the commit's code; its JSON summary."""
    json_path = log_dir / "results.json"
    command = [
        sys.executable,
        "-m",
        "load_tests.run",
        "--code",
        commit,
        "--scenarios",
        scenarios,
        "--log-dir",
        str(log_dir),
        "--json",
        str(json_path),
    ]
    done = subprocess.run(command, cwd=machine.repository, timeout=run_timeout_seconds, check=False)
    if not json_path.exists():
        raise RuntimeError(
            f"load_tests.run --code {commit} wrote no results (exit {done.returncode})"
        )
    document: dict[str, Any] = json.loads(json_path.read_text())
    return document


def figures_of(document: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per scenario: peak (transfers/s, or calls/s for mixed), half-peak p99, others' CPU."""
    figures = {}
    for name, summary in document["summary"].items():
        key = "peak_calls_per_second" if name in calls_scenarios else "peak_transfers_per_second"
        figures[name] = {
            "peak": float(summary[key]["median"]),
            "half_p99_ms": float(summary["half_p99_ms"]["median"]),
            "others_percent": float(summary["peak_cpu_percent"]["other"]["median"]),
            "errors": float(summary["errors"]),
        }
    return figures


def compare(runs: dict[str, list[dict[str, dict[str, float]]]]) -> list[dict[str, Any]]:
    rows = []
    for name in runs["before"][0]:
        row: dict[str, Any] = {"scenario": name}
        for label in ("before", "after"):
            for key in ("peak", "half_p99_ms", "others_percent"):
                values = [run[name][key] for run in runs[label] if name in run]
                row[f"{label}_{key}"] = statistics.median(values)
                row[f"{label}_{key}_all"] = values
        row["peak_ratio"] = row["after_peak"] / row["before_peak"]
        row["p99_ratio"] = row["after_half_p99_ms"] / row["before_half_p99_ms"]
        row["slower"] = (
            row["peak_ratio"] < 1 - slower_ratio_max or row["p99_ratio"] > 1 + slower_ratio_max
        )
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], before: str, after: str) -> str:
    lines = [
        f"| scenario | peak, {before} | peak, {after} | after / before | p99 at half peak,"
        f" {before} | same, {after} | after / before | others' CPU at peak | slower? |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        unit = "calls/s" if row["scenario"] in calls_scenarios else "transfers/s"
        spread = {
            label: "-".join(f"{v:,.0f}" for v in (min(vs), max(vs)))
            for label in ("before", "after")
            for vs in [row[f"{label}_peak_all"]]
        }
        lines.append(
            f"| {row['scenario']} | {row['before_peak']:,.0f} {unit} [{spread['before']}]"
            f" | {row['after_peak']:,.0f} {unit} [{spread['after']}] | {row['peak_ratio']:.0%}"
            f" | {row['before_half_p99_ms']:.1f} ms | {row['after_half_p99_ms']:.1f} ms"
            f" | {row['p99_ratio']:.0%} | {row['before_others_percent']:.0f}% /"
            f" {row['after_others_percent']:.0f}% | {'YES' if row['slower'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.before_after", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--before", required=True, help="commit before the change")
    parser.add_argument("--after", required=True, help="commit after the change")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenarios", default=scenarios_default)
    parser.add_argument("--log-dir", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--reuse-log-dir",
        action="store_true",
        help="tabulate the results an earlier run left in --log-dir instead of running again",
    )
    args = parser.parse_args(argv)
    if args.reuse_log_dir and args.log_dir is None:
        parser.error("--reuse-log-dir needs --log-dir")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    log_dir: Path = (args.log_dir or Path(f"/tmp/before_after-{stamp}")).resolve()
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"before": [], "after": []}
    documents = []
    for repeat in range(args.repeats):
        order = ("before", "after") if repeat % 2 == 0 else ("after", "before")
        for label in order:
            commit = args.before if label == "before" else args.after
            print(f"before_after: round {repeat + 1}, {label} ({commit})", flush=True)
            run_dir = log_dir / f"{label}-{repeat}"
            if args.reuse_log_dir:
                document = json.loads((run_dir / "results.json").read_text())
            else:
                document = run_once(commit, args.scenarios, run_dir)
            runs[label].append(figures_of(document))
            documents.append({"label": label, "repeat": repeat, "document": document})
    rows = compare(runs)
    print("\n" + format_table(rows, args.before, args.after), flush=True)
    if args.json is not None:
        result = {"before": args.before, "after": args.after, "rows": rows, "runs": documents}
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
