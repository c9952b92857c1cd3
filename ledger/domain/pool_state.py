"""What a writer keeps about each pool to decide: its policy, usage per member, open requests.

Usage is kept per member per day (the day in the pool's time zone a grant was requested on),
for `pool_cap_period_days_max` days: minutes granted, plus minutes of requests still open, so
a request reserves against its member's cap the moment it is recorded. Open requests are
bounded by the pool's open holds; decided ones leave the state (their rows are in the index).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from ledger.domain import chain
from ledger.domain.pool_policy import PoolPolicy, pool_cap_period_days_max
from ledger.domain.records import GrantRecord


@dataclass(frozen=True, slots=True)
class Grant:
    """An open grant request: a pending transfer out of the pool, awaiting its approvals."""

    grant_id: str
    member_account_id: str
    amount_minutes: int
    # The day (YYYY-MM-DD, pool's time zone) whose usage bucket the request reserved in.
    period_day: str
    # The authenticated caller that asked (an approver may not approve their own request).
    requested_by: str
    # The approvers and k of the policy in force when it was requested: they decide it.
    approvers: tuple[str, ...]
    approvals_required: int
    requested_at: datetime
    deadline: datetime | None
    # The number of its transfer: the order of the bank's transfers (and of the grant lists).
    number: int
    approvals: tuple[str, ...] = ()
    rejections: tuple[str, ...] = ()

    @property
    def rejections_to_void(self) -> int:
        """Rejections after which k approvals can no longer be reached: n - k + 1."""
        return len(self.approvers) - self.approvals_required + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "grant_id": self.grant_id,
            "member_account_id": self.member_account_id,
            "amount_minutes": self.amount_minutes,
            "period_day": self.period_day,
            "requested_by": self.requested_by,
            "approvers": list(self.approvers),
            "approvals_required": self.approvals_required,
            "requested_at": chain.timestamp_text(self.requested_at),
            "deadline": None if self.deadline is None else chain.timestamp_text(self.deadline),
            "number": self.number,
            "approvals": list(self.approvals),
            "rejections": list(self.rejections),
        }

    @classmethod
    def of_json(cls, data: dict[str, Any]) -> Grant:
        return cls(
            grant_id=data["grant_id"],
            member_account_id=data["member_account_id"],
            amount_minutes=data["amount_minutes"],
            period_day=data["period_day"],
            requested_by=data["requested_by"],
            approvers=tuple(data["approvers"]),
            approvals_required=data["approvals_required"],
            requested_at=datetime.fromisoformat(data["requested_at"]),
            deadline=None if data["deadline"] is None else datetime.fromisoformat(data["deadline"]),
            number=data["number"],
            approvals=tuple(data["approvals"]),
            rejections=tuple(data["rejections"]),
        )


@dataclass(slots=True)
class PoolState:
    account_id: str
    policy: PoolPolicy
    # Position and time of the event that set the policy in force.
    policy_position: int
    policy_changed_at: datetime
    # member -> {day: minutes}. The inner dicts are never changed in place, only replaced,
    # so a batch's copy of a pool shares them safely (copy_for_update).
    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)

    def copy_for_update(self) -> PoolState:
        return replace(self, usage=dict(self.usage), grants=dict(self.grants))

    def used_minutes(self, member_account_id: str, today: date) -> int:
        """Minutes granted or reserved for the member in the cap period of `today`."""
        days = self.usage.get(member_account_id, {})
        return sum(
            minutes
            for day, minutes in days.items()
            if self.policy.in_period(date.fromisoformat(day), today)
        )

    def add_usage(self, member_account_id: str, day: str, minutes: int) -> None:
        """Add (or, negative, give back) minutes on a day; drops days too old to count."""
        days = self.usage.get(member_account_id, {})
        if minutes < 0 and day not in days:
            return  # its day was dropped already: it counts in no period any more
        oldest = (date.fromisoformat(day) - timedelta(days=pool_cap_period_days_max)).isoformat()
        kept = {d: m for d, m in days.items() if d > oldest}
        total = kept.get(day, 0) + minutes
        assert total >= 0, f"usage of {member_account_id} on {day} below zero"
        if total:
            kept[day] = total
        else:
            kept.pop(day, None)
        if kept:
            self.usage[member_account_id] = kept
        else:
            self.usage.pop(member_account_id, None)

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "policy": self.policy.to_json(),
            "policy_position": self.policy_position,
            "policy_changed_at": chain.timestamp_text(self.policy_changed_at),
            "usage": {member: dict(days) for member, days in self.usage.items()},
            "grants": [grant.to_json() for grant in self.grants.values()],
        }

    @classmethod
    def of_json(cls, data: dict[str, Any]) -> PoolState:
        grants = [Grant.of_json(item) for item in data["grants"]]
        return cls(
            account_id=data["account_id"],
            policy=PoolPolicy.of_json(data["policy"]),
            policy_position=data["policy_position"],
            policy_changed_at=datetime.fromisoformat(data["policy_changed_at"]),
            usage={member: dict(days) for member, days in data["usage"].items()},
            grants={grant.grant_id: grant for grant in grants},
        )


def grant_record(
    pool_account_id: str, grant: Grant, state: str, resolved_at: datetime | None, position: int
) -> GrantRecord:
    """The index row of a grant request as it stands after an event at `position`."""
    return GrantRecord(
        grant_id=grant.grant_id,
        pool_account_id=pool_account_id,
        member_account_id=grant.member_account_id,
        amount_minutes=grant.amount_minutes,
        state=state,
        approvers=grant.approvers,
        approvals_required=grant.approvals_required,
        approvals=grant.approvals,
        rejections=grant.rejections,
        requested_by=grant.requested_by,
        requested_at=grant.requested_at,
        deadline=grant.deadline,
        resolved_at=resolved_at,
        number=grant.number,
        position=position,
    )
