"""Pure translation for PoolService: requests to commands; pools, grants, budgets to messages."""

from __future__ import annotations

from collections.abc import Mapping

from ledger.domain.commands import ChangePoolPolicy, CreatePool, DecideGrant, RequestGrant
from ledger.domain.errors import InvalidInput
from ledger.domain.pool_policy import PoolPolicy
from ledger.domain.pools import PoolView
from ledger.domain.records import GrantRecord
from ledger.security.caller import current_caller
from ledger.security.roles import Role
from ledger.service import convert
from ledger.service.convert import Acting
from projections.budget_queries import MemberUsage, PoolBudget
from timebank.ledger.v1 import pools_pb2 as pb

contributor_rules: Mapping[int, str] = {
    pb.CONTRIBUTOR_RULE_ANYONE: "anyone",
    pb.CONTRIBUTOR_RULE_LISTED: "listed",
}
drawer_rules: Mapping[int, str] = {
    pb.DRAWER_RULE_ANY_MEMBER: "any_member",
    pb.DRAWER_RULE_LISTED: "listed",
}
cap_periods: Mapping[int, str] = {
    pb.CAP_PERIOD_CALENDAR_MONTH: "calendar_month",
    pb.CAP_PERIOD_CALENDAR_WEEK: "calendar_week",
    pb.CAP_PERIOD_ROLLING_DAYS: "rolling_days",
}
grant_states: Mapping[int, str] = {
    pb.GRANT_STATE_PENDING: "pending",
    pb.GRANT_STATE_POSTED: "posted",
    pb.GRANT_STATE_VOIDED: "voided",
    pb.GRANT_STATE_EXPIRED: "expired",
}


def _choice(field: str, number: int, names: Mapping[int, str]) -> str:
    found = names.get(number)
    if found is None:
        raise InvalidInput(
            "INVALID_POOL_POLICY",
            f"{field} must be set to one of the values the proto lists",
            field=field,
        )
    return found


def policy(message: pb.PoolPolicy) -> PoolPolicy:
    return PoolPolicy(
        contributors=_choice("policy.contributors", message.contributors, contributor_rules),
        contributor_account_ids=tuple(message.contributor_account_ids),
        drawers=_choice("policy.drawers", message.drawers, drawer_rules),
        drawer_account_ids=tuple(message.drawer_account_ids),
        cap_minutes=message.cap_minutes if message.HasField("cap_minutes") else None,
        cap_period=_choice("policy.cap_period", message.cap_period, cap_periods),
        cap_period_days=message.cap_period_days,
        time_zone=message.time_zone or "UTC",
        floor_minutes=message.floor_minutes,
        approvers=tuple(message.approvers),
        approvals_required=message.approvals_required,
        request_expiry_seconds=message.request_expiry_seconds,
    )


def create_pool(request: pb.CreatePoolRequest, by: Acting) -> CreatePool:
    return CreatePool(
        request_id=request.request_id,
        pool_account_id=request.pool_account_id,
        policy=policy(request.policy),
        lower_limit_minutes=request.lower_limit_minutes,
        upper_limit_minutes=(
            request.upper_limit_minutes if request.HasField("upper_limit_minutes") else None
        ),
        reason=request.reason,
        actor=by.actor,
        actor_label=request.actor_label,
    )


def change_pool_policy(request: pb.ChangePoolPolicyRequest, by: Acting) -> ChangePoolPolicy:
    return ChangePoolPolicy(
        request_id=request.request_id,
        pool_account_id=request.pool_account_id,
        policy=policy(request.policy),
        reason=request.reason,
        actor=by.actor,
        actor_label=request.actor_label,
    )


def request_grant(request: pb.RequestGrantRequest, by: Acting) -> RequestGrant:
    return RequestGrant(
        grant_id=request.grant_id,
        pool_account_id=request.pool_account_id,
        member_account_id=request.member_account_id,
        amount_minutes=request.amount_minutes,
        memo=request.memo,
        category=request.category,
        actor=by.actor,
        actor_label=request.actor_label,
        via_front_end=by.via_front_end,
        member_subject=by.member_subject,
    )


DecisionRequest = pb.ApproveGrantRequest | pb.RejectGrantRequest | pb.CancelGrantRequest


def decide_grant(request: DecisionRequest, decision: str, by: Acting) -> DecideGrant:
    return DecideGrant(
        request_id=request.request_id,
        pool_account_id=request.pool_account_id,
        grant_id=request.grant_id,
        decision=decision,
        reason=request.reason,
        actor=by.actor,
        actor_label=request.actor_label,
        by_admin=current_caller().role is Role.BANK_ADMIN,
    )


def grant_state(number: int) -> str | None:
    return convert.optional_enum("state", number, grant_states, "INVALID_GRANT_STATE")


# ---------------------------------------------------------------------------------------
# Views to messages
# ---------------------------------------------------------------------------------------


def _number(name: str, names: Mapping[int, str]) -> int:
    return next(number for number, known in names.items() if known == name)


def policy_message(value: PoolPolicy) -> pb.PoolPolicy:
    message = pb.PoolPolicy(
        contributors=_number(value.contributors, contributor_rules),  # type: ignore[arg-type]
        contributor_account_ids=value.contributor_account_ids,
        drawers=_number(value.drawers, drawer_rules),  # type: ignore[arg-type]
        drawer_account_ids=value.drawer_account_ids,
        cap_period=_number(value.cap_period, cap_periods),  # type: ignore[arg-type]
        cap_period_days=value.cap_period_days,
        time_zone=value.time_zone,
        floor_minutes=value.floor_minutes,
        approvers=value.approvers,
        approvals_required=value.approvals_required,
        request_expiry_seconds=value.request_expiry_seconds,
    )
    if value.cap_minutes is not None:
        message.cap_minutes = value.cap_minutes
    return message


def pool(view: PoolView) -> pb.Pool:
    return pb.Pool(
        account=convert.account(view.account),
        policy=policy_message(view.policy),
        policy_position=view.policy_position,
        policy_changed_at=convert.timestamp(view.policy_changed_at),
        open_grant_count=view.open_grant_count,
        open_grant_minutes=view.open_grant_minutes,
    )


def grant(record: GrantRecord) -> pb.Grant:
    message = pb.Grant(
        grant_id=record.grant_id,
        pool_account_id=record.pool_account_id,
        member_account_id=record.member_account_id,
        amount_minutes=record.amount_minutes,
        state=_number(record.state, grant_states),  # type: ignore[arg-type]
        approvers=record.approvers,
        approvals_required=record.approvals_required,
        approvals=record.approvals,
        rejections=record.rejections,
        requested_by=record.requested_by,
        requested_at=convert.timestamp(record.requested_at),
        position=record.position,
    )
    if record.deadline is not None:
        message.deadline.CopyFrom(convert.timestamp(record.deadline))
    if record.resolved_at is not None:
        message.resolved_at.CopyFrom(convert.timestamp(record.resolved_at))
    return message


def pool_budget(budget: PoolBudget) -> pb.PoolBudget:
    message = pb.PoolBudget(
        pool_account_id=budget.pool_account_id,
        time_zone=budget.time_zone,
        as_of_day=budget.today.isoformat(),
        contributed_minutes=budget.contributed_minutes,
        granted_minutes=budget.granted_minutes,
        balance_minutes=budget.balance_minutes,
        pledged_minutes=budget.pledged_minutes,
        committed_minutes=budget.committed_minutes,
        remaining_minutes=budget.remaining_minutes,
        beyond_shares_minutes=budget.beyond_shares_minutes,
        recent_granted_minutes=budget.recent_granted_minutes,
        months=[
            pb.PoolBudgetMonth(
                month=month.month,
                contributed_minutes=month.contributed_minutes,
                granted_minutes=month.granted_minutes,
                pledged_minutes=month.pledged_minutes,
                committed_minutes=month.committed_minutes,
            )
            for month in budget.months
        ],
        cap_period=_number(budget.cap_period, cap_periods),  # type: ignore[arg-type]
        cap_period_first_day=budget.cap_period_first_day.isoformat(),
        members=[_member_usage(usage) for usage in budget.members],
        members_total=budget.members_total,
        contributors=[
            pb.PoolContributorShare(
                contributor_account_id=share.account_id,
                contributed_minutes=share.contributed_minutes,
                used_minutes=share.used_minutes,
                left_minutes=share.left_minutes,
            )
            for share in budget.contributors
        ],
        contributors_total=budget.contributors_total,
    )
    if budget.runway_months is not None:
        message.runway_months = budget.runway_months
    if budget.cap_minutes is not None:
        message.cap_minutes = budget.cap_minutes
    return message


def _member_usage(usage: MemberUsage) -> pb.PoolMemberUsage:
    message = pb.PoolMemberUsage(
        member_account_id=usage.account_id, used_minutes=usage.used_minutes
    )
    if usage.left_minutes is not None:
        message.cap_left_minutes = usage.left_minutes
    return message
