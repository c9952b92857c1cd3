"""What one load step measured: per generator process, then merged into one summary.

Latency is measured from each call's *scheduled* send time to its response, so a server
that falls behind shows as latency and not as a quietly lower send rate. Percentiles are
nearest-rank over the calls that returned OK; failed calls are counted by status code.
Achieved rates count the OK responses (and the transfers they recorded) that arrived
between the start of the schedule and its end, divided by its duration: what the server
delivered while under the offered load. Responses after that (the drain) count for latency
and errors but not for the rate.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from load_tests.workload import op_names

percentiles = (("p50", 0.50), ("p99", 0.99), ("p99.9", 0.999))


@dataclass
class GeneratorOutcome:
    """What one generator process saw in one step."""

    scheduled: int = 0
    sent: int = 0
    # Not sent: the in-flight cap was reached at the scheduled time.
    dropped: int = 0
    # Sent, but more than `late_ms` after the scheduled time (the generator fell behind).
    late: int = 0
    ok_transfers: int = 0
    # OK responses (and the transfers they recorded) that arrived within the step's duration.
    ok_calls_in_window: int = 0
    ok_transfers_in_window: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    item_errors: Counter[str] = field(default_factory=Counter)
    # Milliseconds from scheduled send to OK response, per operation index.
    latencies_ms: dict[int, list[float]] = field(default_factory=dict)
    # Seconds from the end of the schedule to the last response.
    drain_seconds: float = 0.0
    cpu_seconds: float = 0.0


@dataclass
class StepSummary:
    """One step at one offered rate, all generator processes merged."""

    label: str
    offered_calls_per_second: float
    transfers_per_call: float
    duration_seconds: float
    drain_seconds: float
    scheduled: int
    sent: int
    dropped: int
    late: int
    ok_calls: int
    error_calls: int
    ok_transfers: int
    statuses: dict[str, int]
    item_errors: dict[str, int]
    achieved_calls_per_second: float
    achieved_transfers_per_second: float
    latency_ms: dict[str, float]
    latency_ms_by_op: dict[str, dict[str, float]]
    cpu_percent: dict[str, float] = field(default_factory=dict)

    @property
    def offered_transfers_per_second(self) -> float:
        return self.offered_calls_per_second * self.transfers_per_call

    def keeps_up(self, achieved_ratio_min: float) -> bool:
        """Achieved at least the given share of the offered rate, with no errors at all."""
        achieved_enough = (
            self.achieved_calls_per_second >= achieved_ratio_min * self.offered_calls_per_second
        )
        return achieved_enough and self.error_calls == 0 and not self.item_errors

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "offered_calls_per_second": round(self.offered_calls_per_second, 1),
            "offered_transfers_per_second": round(self.offered_transfers_per_second, 1),
            "achieved_calls_per_second": round(self.achieved_calls_per_second, 1),
            "achieved_transfers_per_second": round(self.achieved_transfers_per_second, 1),
            "duration_seconds": self.duration_seconds,
            "drain_seconds": round(self.drain_seconds, 3),
            "scheduled": self.scheduled,
            "sent": self.sent,
            "dropped": self.dropped,
            "late": self.late,
            "ok_calls": self.ok_calls,
            "error_calls": self.error_calls,
            "ok_transfers": self.ok_transfers,
            "statuses": self.statuses,
            "item_errors": self.item_errors,
            "latency_ms": self.latency_ms,
            "latency_ms_by_op": self.latency_ms_by_op,
            "cpu_percent": self.cpu_percent,
        }


def percentile(ordered: Sequence[float], quantile: float) -> float:
    """Nearest-rank percentile of an ascending sequence; NaN if it is empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(quantile * len(ordered)))
    return ordered[rank - 1]


def latency_summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    summary = {name: round(percentile(ordered, q), 3) for name, q in percentiles}
    summary["max"] = round(ordered[-1], 3) if ordered else math.nan
    summary["count"] = len(ordered)
    return summary


def merge(
    label: str,
    outcomes: Sequence[GeneratorOutcome],
    *,
    offered_calls_per_second: float,
    transfers_per_call: float,
    duration_seconds: float,
) -> StepSummary:
    statuses: Counter[str] = Counter()
    item_errors: Counter[str] = Counter()
    by_op: dict[int, list[float]] = {}
    for outcome in outcomes:
        statuses.update(outcome.statuses)
        item_errors.update(outcome.item_errors)
        for op, values in outcome.latencies_ms.items():
            by_op.setdefault(op, []).extend(values)
    ok_calls = statuses.get("OK", 0)
    in_window_calls = sum(outcome.ok_calls_in_window for outcome in outcomes)
    in_window_transfers = sum(outcome.ok_transfers_in_window for outcome in outcomes)
    return StepSummary(
        label=label,
        offered_calls_per_second=offered_calls_per_second,
        transfers_per_call=transfers_per_call,
        duration_seconds=duration_seconds,
        drain_seconds=max((outcome.drain_seconds for outcome in outcomes), default=0.0),
        scheduled=sum(outcome.scheduled for outcome in outcomes),
        sent=sum(outcome.sent for outcome in outcomes),
        dropped=sum(outcome.dropped for outcome in outcomes),
        late=sum(outcome.late for outcome in outcomes),
        ok_calls=ok_calls,
        error_calls=sum(statuses.values()) - ok_calls,
        ok_transfers=sum(outcome.ok_transfers for outcome in outcomes),
        statuses=dict(statuses),
        item_errors=dict(item_errors),
        achieved_calls_per_second=in_window_calls / duration_seconds,
        achieved_transfers_per_second=in_window_transfers / duration_seconds,
        latency_ms=latency_summary([value for values in by_op.values() for value in values]),
        latency_ms_by_op={op_names[op]: latency_summary(values) for op, values in by_op.items()},
    )
