"""A pool's policy: who may give to it and draw from it, the caps, the floor and the approvers.

A policy is a value: set whole when a pool is created and replaced whole when it changes
(each time an event with an actor and a reason, pools.py). Caps count minutes per member per
period, the period being the calendar month or ISO week of the pool's time zone, or the
rolling last N days; the day a grant is requested on (in that time zone) is recorded in its
event, so replaying a history never depends on the time-zone data of the machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ledger.domain import limits
from ledger.domain.errors import InvalidInput

CONTRIBUTORS = ("anyone", "listed")
DRAWERS = ("any_member", "listed")
CAP_PERIODS = ("calendar_month", "calendar_week", "rolling_days")
# Approvers are named by the credential they call with: a member's token, or an API key.
APPROVER_PREFIXES = ("member:", "key:")

# Bounds on a policy (TigerBeetle style: a limit on everything).
pool_listed_accounts_max = 1_000
pool_approvers_max = 32
# Day buckets of usage are kept this long; no cap period may be longer.
pool_cap_period_days_max = 92
time_zone_length_max = 64
_time_zone_re = re.compile(r"^[A-Za-z0-9_+\-/]+$")


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    contributors: str = "anyone"
    contributor_account_ids: tuple[str, ...] = ()
    drawers: str = "any_member"
    drawer_account_ids: tuple[str, ...] = ()
    # None: no cap. Minutes a member may be granted (or have reserved) per period.
    cap_minutes: int | None = None
    cap_period: str = "calendar_month"
    # rolling_days only: the window's length in days (1..pool_cap_period_days_max).
    cap_period_days: int = 0
    time_zone: str = "UTC"
    # Grants never take the pool's balance (less its pending grants) below this.
    floor_minutes: int = 0
    approvers: tuple[str, ...] = ()
    # k of the approvers must approve; 0: grants within the caps post at once.
    approvals_required: int = 0
    # Seconds until an undecided request expires (is voided); 0: never.
    request_expiry_seconds: int = 0

    def validate(self) -> None:
        _check_choice("policy.contributors", self.contributors, CONTRIBUTORS)
        _check_choice("policy.drawers", self.drawers, DRAWERS)
        _check_accounts("policy.contributor_account_ids", self.contributor_account_ids)
        _check_accounts("policy.drawer_account_ids", self.drawer_account_ids)
        if self.cap_minutes is not None and not 0 <= self.cap_minutes <= limits.limit_minutes_max:
            raise InvalidInput(
                "INVALID_POOL_POLICY",
                f"policy.cap_minutes must be between 0 and {limits.limit_minutes_max}",
                field="policy.cap_minutes",
            )
        _check_choice("policy.cap_period", self.cap_period, CAP_PERIODS)
        rolling = self.cap_period == "rolling_days"
        if rolling != (1 <= self.cap_period_days <= pool_cap_period_days_max):
            raise InvalidInput(
                "INVALID_POOL_POLICY",
                "policy.cap_period_days is 1 to"
                f" {pool_cap_period_days_max} for rolling_days, and 0 otherwise",
                field="policy.cap_period_days",
            )
        check_time_zone(self.time_zone)
        if not -limits.limit_minutes_max <= self.floor_minutes <= limits.limit_minutes_max:
            raise InvalidInput(
                "INVALID_POOL_POLICY",
                f"policy.floor_minutes must be within ±{limits.limit_minutes_max}",
                field="policy.floor_minutes",
            )
        self._check_approvers()
        if not 0 <= self.request_expiry_seconds <= limits.pending_timeout_seconds_max:
            raise InvalidInput(
                "INVALID_POOL_POLICY",
                "policy.request_expiry_seconds must be between 0 and"
                f" {limits.pending_timeout_seconds_max}",
                field="policy.request_expiry_seconds",
            )

    def _check_approvers(self) -> None:
        field = "policy.approvers"
        if len(self.approvers) > pool_approvers_max:
            raise InvalidInput(
                "INVALID_POOL_POLICY",
                f"a pool has at most {pool_approvers_max} approvers",
                field=field,
            )
        for approver in self.approvers:
            prefix = next((p for p in APPROVER_PREFIXES if approver.startswith(p)), "")
            name = approver[len(prefix) :]
            if not prefix or not name or not re.fullmatch(limits.id_pattern, name):
                raise InvalidInput(
                    "INVALID_POOL_POLICY",
                    "an approver is member:<account id> or key:<API key id>",
                    field=field,
                )
        if len(set(self.approvers)) != len(self.approvers):
            raise InvalidInput("INVALID_POOL_POLICY", "an approver is named twice", field=field)
        if not 0 <= self.approvals_required <= len(self.approvers):
            raise InvalidInput(
                "INVALID_POOL_POLICY",
                "policy.approvals_required must be between 0 and the number of approvers",
                field="policy.approvals_required",
            )

    # ----------------------------------------------------------------- periods

    def local_day(self, moment: datetime) -> date:
        """The calendar day `moment` falls on in the pool's time zone."""
        return moment.astimezone(ZoneInfo(self.time_zone)).date()

    def in_period(self, day: date, today: date) -> bool:
        """Whether usage recorded on `day` counts against the cap of the period of `today`."""
        if day > today:
            return False
        if self.cap_period == "calendar_month":
            return (day.year, day.month) == (today.year, today.month)
        if self.cap_period == "calendar_week":
            return day.isocalendar()[:2] == today.isocalendar()[:2]
        return today - day < timedelta(days=self.cap_period_days)

    # ----------------------------------------------------------------- as stored

    def to_json(self) -> dict[str, Any]:
        return {
            "contributors": self.contributors,
            "contributor_account_ids": list(self.contributor_account_ids),
            "drawers": self.drawers,
            "drawer_account_ids": list(self.drawer_account_ids),
            "cap_minutes": self.cap_minutes,
            "cap_period": self.cap_period,
            "cap_period_days": self.cap_period_days,
            "time_zone": self.time_zone,
            "floor_minutes": self.floor_minutes,
            "approvers": list(self.approvers),
            "approvals_required": self.approvals_required,
            "request_expiry_seconds": self.request_expiry_seconds,
        }

    @classmethod
    def of_json(cls, data: dict[str, Any]) -> PoolPolicy:
        return cls(
            contributors=data["contributors"],
            contributor_account_ids=tuple(data["contributor_account_ids"]),
            drawers=data["drawers"],
            drawer_account_ids=tuple(data["drawer_account_ids"]),
            cap_minutes=data["cap_minutes"],
            cap_period=data["cap_period"],
            cap_period_days=data["cap_period_days"],
            time_zone=data["time_zone"],
            floor_minutes=data["floor_minutes"],
            approvers=tuple(data["approvers"]),
            approvals_required=data["approvals_required"],
            request_expiry_seconds=data["request_expiry_seconds"],
        )


def check_time_zone(name: str) -> None:
    bad = InvalidInput(
        "INVALID_TIME_ZONE",
        "policy.time_zone must be an IANA time zone name such as Europe/London or UTC",
        field="policy.time_zone",
    )
    if not name or len(name) > time_zone_length_max or not _time_zone_re.fullmatch(name):
        raise bad
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise bad from None


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidInput(
            "INVALID_POOL_POLICY", f"{field} must be one of {', '.join(choices)}", field=field
        )


def _check_accounts(field: str, account_ids: tuple[str, ...]) -> None:
    if len(account_ids) > pool_listed_accounts_max:
        raise InvalidInput(
            "INVALID_POOL_POLICY",
            f"{field} lists at most {pool_listed_accounts_max} accounts",
            field=field,
        )
    for account_id in account_ids:
        if not account_id or len(account_id) > limits.id_length_max:
            raise InvalidInput("INVALID_POOL_POLICY", f"{field} holds an invalid id", field=field)
        if not re.fullmatch(limits.id_pattern, account_id):
            raise InvalidInput("INVALID_POOL_POLICY", f"{field} holds an invalid id", field=field)
    if len(set(account_ids)) != len(account_ids):
        raise InvalidInput("INVALID_POOL_POLICY", f"{field} names an account twice", field=field)
