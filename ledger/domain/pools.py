"""Pools (issue 11): creating one with its policy, changing it, grant requests and decisions.

A pool is an account of kind `pool` with a policy (pool_policy.py). Minutes come in as
ordinary transfers or pledges (pending transfers into it; pool_rules.py checks who may give)
and leave only as grants. A grant request is a pending transfer out of the pool, recorded in
the same batch as its item of a `GrantsRequested` event (the batch's grants are grouped in one
event, after the TransfersCreated event that holds their transfers): it reserves the amount
against the pool's floor and the member's cap at once, and since a batch decides its commands
one after another on the state the earlier ones left, requests made together can never
jointly pass a cap or the floor. With k = 0 approvals a request within the caps is paid at
once (an immediate transfer).

Decisions: each approval or rejection is an event naming the approver (an entry of the
policy's `approvers` that the authenticated caller matches: `member:<account>` by that
member's token, `key:<key id>` by that key). No one approves a request they made or that pays
them; an approver's second decision counts once (it changes nothing). The k-th approval
posts the transfer (`PendingPosted`); the rejection after which k approvals can no longer be
reached (the (n - k + 1)-th of the n approvers) voids it (`PendingVoided`), as does a
cancellation by its requester, its member or a bank admin; at its deadline the ordinary
expiry of holds expires it. The policy in force when a request is made decides it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

from ledger.domain import chain, limits, transfers
from ledger.domain.accounts import AccountOpened, check_not_closed, check_open, require_account
from ledger.domain.batch import Batch
from ledger.domain.commands import (
    ChangePoolPolicy,
    CreatePool,
    CreateTransfer,
    DecideGrant,
    RequestGrant,
)
from ledger.domain.errors import (
    ConsentRequired,
    DomainError,
    Forbidden,
    IdConflict,
    NotFound,
    PreconditionFailed,
)
from ledger.domain.events import Event, event_type
from ledger.domain.holds import PendingPosted, PendingVoided
from ledger.domain.idempotency import check_retry, earlier_request
from ledger.domain.overlay import LimitOverlay
from ledger.domain.pool_policy import PoolPolicy
from ledger.domain.pool_state import Grant, PoolState, grant_record
from ledger.domain.records import GrantRecord, RequestRecord, TransferRecord
from ledger.domain.state import Account
from ledger.domain.views import AccountView


@dataclass(frozen=True, slots=True)
class PoolView:
    account: AccountView
    policy: PoolPolicy
    # Position and time of the event that set the policy in force.
    policy_position: int
    policy_changed_at: datetime
    open_grant_count: int
    open_grant_minutes: int


def identities(actor: str) -> set[str]:
    """The approver names an authenticated caller answers to (`key:K`, `member:S`)."""
    return {part for part in actor.split("/") if part.startswith(("key:", "member:"))}


def person(actor: str) -> str:
    """Who acted: the member whose token came with the call, else the key (a front-end key
    is shared by all its members, so it is a person only when no token names one)."""
    parts = actor.split("/")
    return next((p for p in parts if p.startswith("member:")), parts[0])


def require_pool(batch: Batch, account_id: str) -> tuple[Account, PoolState]:
    account = batch.account(account_id)
    pool = batch.pool(account_id)
    if account is None or pool is None:
        raise NotFound(
            "POOL_NOT_FOUND",
            f"pool {account_id!r} does not exist in this bank",
            field="pool_account_id",
            metadata={"account_id": account_id},
        )
    return account, pool


def pool_view(batch: Batch, account_id: str) -> PoolView:
    account, pool = require_pool(batch, account_id)
    return PoolView(
        account=account.view(),
        policy=pool.policy,
        policy_position=pool.policy_position,
        policy_changed_at=pool.policy_changed_at,
        open_grant_count=len(pool.grants),
        open_grant_minutes=sum(g.amount_minutes for g in pool.grants.values()),
    )


# --------------------------------------------------------------------- policy


def create_pool(batch: Batch, command: CreatePool) -> PoolView:
    if earlier_request(batch, command) is not None:
        return pool_view(batch, command.pool_account_id)
    if batch.account(command.pool_account_id) is not None:
        raise IdConflict(
            "ACCOUNT_ALREADY_EXISTS",
            f"account {command.pool_account_id!r} already exists; a pool opens a new account",
            field="pool_account_id",
            metadata={"account_id": command.pool_account_id},
        )
    _check_policy_names(batch, command.policy)
    batch.record(
        AccountOpened(
            account_id=command.pool_account_id,
            kind="pool",
            lower_limit_minutes=command.lower_limit_minutes,
            upper_limit_minutes=command.upper_limit_minutes,
            actor=command.actor,
            actor_label=command.actor_label,
        )
    )
    _record_policy(batch, command, "create")
    return pool_view(batch, command.pool_account_id)


def change_pool_policy(batch: Batch, command: ChangePoolPolicy) -> PoolView:
    earlier = earlier_request(batch, command)
    account, _ = require_pool(batch, command.pool_account_id)
    if earlier is not None:
        return pool_view(batch, command.pool_account_id)
    check_not_closed(account)
    _check_policy_names(batch, command.policy)
    _record_policy(batch, command, "change")
    return pool_view(batch, command.pool_account_id)


def _record_policy(batch: Batch, command: CreatePool | ChangePoolPolicy, action: str) -> None:
    batch.record(
        PoolPolicySet(
            request_id=command.request_id,
            pool_account_id=command.pool_account_id,
            action=action,
            policy=command.policy.to_json(),
            reason=command.reason,
            actor=command.actor,
            actor_label=command.actor_label,
        )
    )


def _check_policy_names(batch: Batch, policy: PoolPolicy) -> None:
    """Every account and key a policy names exists in the bank."""
    for field, account_ids in (
        ("policy.contributor_account_ids", policy.contributor_account_ids),
        ("policy.drawer_account_ids", policy.drawer_account_ids),
    ):
        for account_id in account_ids:
            require_account(batch, account_id, field)
    for approver in policy.approvers:
        kind, _, name = approver.partition(":")
        if kind == "member":
            require_account(batch, name, "policy.approvers")
        elif batch.api_key(name) is None:
            raise NotFound(
                "API_KEY_NOT_FOUND",
                f"approver {approver!r} names no API key of this bank",
                field="policy.approvers",
                metadata={"key_id": name},
            )


@event_type
@dataclass(frozen=True, slots=True)
class PoolPolicySet(Event):
    """A pool's policy, set whole: when it is created (`action` create) or changed."""

    TYPE = "PoolPolicySet"
    request_id: str
    pool_account_id: str
    action: str
    policy: dict[str, Any]
    reason: str
    actor: str
    actor_label: str

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        policy = PoolPolicy.of_json(self.policy)
        if self.action == "create":
            batch.add_pool(PoolState(self.pool_account_id, policy, version, timestamp))
        else:
            pool = batch.pool_for_update(self.pool_account_id)
            pool.policy, pool.policy_position, pool.policy_changed_at = policy, version, timestamp
        if batch.records is None:
            return
        content: dict[str, Any] = {
            "request_id": self.request_id,
            "pool_account_id": self.pool_account_id,
            "policy": self.policy,
            "reason": self.reason,
        }
        kind = "ChangePoolPolicy"
        if self.action == "create":
            kind = "CreatePool"
            account = batch.account(self.pool_account_id)
            assert account is not None, "a pool's account is opened just before its policy"
            content["lower_limit_minutes"] = account.opened_lower_limit_minutes
            content["upper_limit_minutes"] = account.opened_upper_limit_minutes
        batch.records.add_request(RequestRecord(self.request_id, kind, content, version))


# --------------------------------------------------------------------- requests


def request_grant(batch: Batch, command: RequestGrant) -> GrantRecord:
    assert batch.records is not None
    earlier = batch.records.transfer(command.grant_id)
    if earlier is not None:
        kind = "RequestGrant" if batch.pool(earlier.payer_account_id) else "CreateTransfer"
        check_retry(command, kind, _request_content(earlier))
        return _grant_now(batch, earlier)
    pool_account, pool = require_pool(batch, command.pool_account_id)
    member = require_account(batch, command.member_account_id, "member_account_id")
    for account in (pool_account, member):
        check_open(account)
    policy = pool.policy
    _check_drawer(policy, member)
    _check_consent(batch, command, member)
    today = policy.local_day(batch.timestamp)
    _check_cap(pool, command, today)
    _check_floor(pool_account, policy, command.amount_minutes)
    pending = policy.approvals_required > 0
    LimitOverlay().check_and_add(pool_account, member, command.amount_minutes, pending=pending)
    _record_grant(batch, command, policy, today)
    return batch.records.grant_changes[command.grant_id]


def _record_grant(batch: Batch, command: RequestGrant, policy: PoolPolicy, today: date) -> None:
    """The grant's transfer (pending until decided; immediate with k = 0), then its event."""
    pending = policy.approvals_required > 0
    recorded = transfers.record_new(
        batch,
        CreateTransfer(
            transfer_id=command.grant_id,
            payer_account_id=command.pool_account_id,
            payee_account_id=command.member_account_id,
            amount_minutes=command.amount_minutes,
            memo=command.memo,
            category=command.category,
            pending=pending,
            timeout_seconds=policy.request_expiry_seconds if pending else 0,
            actor=command.actor,
            actor_label=command.actor_label,
        ),
    )
    deadline = recorded.deadline
    item = {
        "grant_id": command.grant_id,
        "pool_account_id": command.pool_account_id,
        "member_account_id": command.member_account_id,
        "amount_minutes": command.amount_minutes,
        "period_day": today.isoformat(),
        "approvers": list(policy.approvers) if pending else [],
        "approvals_required": policy.approvals_required,
        "deadline": "" if deadline is None else chain.timestamp_text(deadline),
        "actor": command.actor,
        "actor_label": command.actor_label,
    }
    last = batch.last_event()
    if isinstance(last, GrantsRequested) and len(last.grants) < limits.transfers_per_event_max:
        # Joins the batch's open group (its transfer joined the group just before it).
        last.grants.append(item)
        batch.changes += 1
        apply_grant_request(batch, item, batch.version, batch.timestamp)
    else:
        batch.record(GrantsRequested(grants=[item]))


def _request_content(record: TransferRecord) -> dict[str, Any]:
    return {
        "grant_id": record.transfer_id,
        "pool_account_id": record.payer_account_id,
        "member_account_id": record.payee_account_id,
        "amount_minutes": record.amount_minutes,
        "memo": record.memo,
        "category": record.category,
    }


def _check_drawer(policy: PoolPolicy, member: Account) -> None:
    allowed = (
        member.kind == "member"
        if policy.drawers == "any_member"
        else member.account_id in policy.drawer_account_ids
    )
    if not allowed:
        raise PreconditionFailed(
            "DRAWER_NOT_ALLOWED",
            f"account {member.account_id!r} may not draw from this pool",
            metadata={"account_id": member.account_id},
        )


def _check_consent(batch: Batch, command: RequestGrant, member: Account) -> None:
    """With the bank's consent policy on, a front-end draws for a member only with their
    token: the pool's minutes are everyone's, and a stolen front-end key alone draws none."""
    if not (batch.member_tokens_required and command.via_front_end and member.kind == "member"):
        return
    if command.member_subject != member.account_id:
        raise ConsentRequired(
            "MEMBER_TOKEN_REQUIRED",
            f"a grant to member {member.account_id!r} through the front-end needs their token",
            field="x-member-token",
            metadata={"account_id": member.account_id},
        )


def _check_cap(pool: PoolState, command: RequestGrant, today: date) -> None:
    cap = pool.policy.cap_minutes
    if cap is None:
        return
    used = pool.used_minutes(command.member_account_id, today)
    if used + command.amount_minutes > cap:
        left = max(0, cap - used)
        raise PreconditionFailed(
            "EXCEEDS_MEMBER_CAP",
            f"member {command.member_account_id!r} may be granted at most {left} more minutes"
            f" from pool {pool.account_id!r} in this period",
            metadata={
                "account_id": command.member_account_id,
                "pool_account_id": pool.account_id,
                "available_minutes": str(left),
            },
        )


def _check_floor(pool_account: Account, policy: PoolPolicy, amount_minutes: int) -> None:
    # Against the balance less every pending grant: what is left if all of them post.
    exposure = pool_account.debit_exposure_minutes
    if exposure - amount_minutes < policy.floor_minutes:
        left = max(0, exposure - policy.floor_minutes)
        raise PreconditionFailed(
            "EXCEEDS_POOL_FLOOR",
            f"pool {pool_account.account_id!r} can grant at most {left} more minutes",
            metadata={"account_id": pool_account.account_id, "available_minutes": str(left)},
        )


@event_type
@dataclass(frozen=True, slots=True)
class GrantsRequested(Event):
    """Grant requests recorded together, just after the TransfersCreated event that holds
    their transfers (pending, or immediate when k = 0). Each item: grant_id,
    pool_account_id, member_account_id, amount_minutes, period_day (the day, in the pool's
    time zone, whose usage it counts in), approvers (the policy's when requested; empty with
    k = 0), approvals_required, deadline (ISO 8601, or "" for none), actor, actor_label.

    Grouped like transfers: a batch's grants and their transfers make two events however
    many there are, where one event per grant made a busy pool cost a stored event per call.
    """

    TYPE = "GrantsRequested"
    grants: list[dict[str, Any]]

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        for item in self.grants:
            apply_grant_request(batch, item, version, timestamp)

    def changes(self) -> int:
        return len(self.grants)


def apply_grant_request(
    batch: Batch, item: dict[str, Any], version: int, timestamp: datetime
) -> None:
    """One grant request's effect: its usage against the cap, and its open request."""
    pool_account_id, member_account_id = item["pool_account_id"], item["member_account_id"]
    pool = batch.pool_for_update(pool_account_id)
    pool.add_usage(member_account_id, item["period_day"], item["amount_minutes"])
    grant = Grant(
        grant_id=item["grant_id"],
        member_account_id=member_account_id,
        amount_minutes=item["amount_minutes"],
        period_day=item["period_day"],
        requested_by=item["actor"],
        approvers=tuple(item["approvers"]),
        approvals_required=item["approvals_required"],
        requested_at=timestamp,
        deadline=datetime.fromisoformat(item["deadline"]) if item["deadline"] else None,
        # Its transfer is in the TransfersCreated event just before.
        number=batch.group_transfer_numbers[item["grant_id"]],
    )
    pending = grant.approvals_required > 0
    if pending:
        pool.grants[grant.grant_id] = grant
    if batch.records is not None:
        state, resolved_at = ("pending", None) if pending else ("posted", timestamp)
        batch.records.grant_changes[grant.grant_id] = grant_record(
            pool_account_id, grant, state, resolved_at, version
        )


# --------------------------------------------------------------------- decisions

# The request kinds a decision's request id may have been recorded as (a decision that
# settles the request is recorded by the hold's own event).
_DECISION_KINDS = {
    "approve": ("ApproveGrant", "PostPending"),
    "reject": ("RejectGrant", "VoidPending"),
    "cancel": ("VoidPending",),
}


def decide_grant(batch: Batch, command: DecideGrant) -> GrantRecord:
    earlier = _earlier_decision(batch, command)
    _, pool = require_pool(batch, command.pool_account_id)
    grant = pool.grants.get(command.grant_id)
    if earlier is not None:
        return _grant_now(batch, transfers.require_transfer(batch, command.grant_id, "grant_id"))
    if grant is None:
        raise _not_open(batch, command)
    if command.decision == "cancel":
        _check_canceller(command, grant)
        _settle(batch, command, grant, post=False)
    else:
        approver = _approver(command, grant)
        if approver is None:  # this approver decided already: counted once
            return _grant_now(batch, transfers.require_transfer(batch, command.grant_id))
        _vote(batch, command, grant, approver)
    assert batch.records is not None
    return batch.records.grant_changes[command.grant_id]


def _earlier_decision(batch: Batch, command: DecideGrant) -> RequestRecord | None:
    assert batch.records is not None
    earlier = batch.records.request(command.request_id)
    if earlier is None:
        return None
    content = earlier.content
    differing = ""
    if earlier.kind not in _DECISION_KINDS[command.decision]:
        decisions = {kind for kinds in _DECISION_KINDS.values() for kind in kinds}
        differing = "decision" if earlier.kind in decisions else "kind"
    elif content.get("pool_account_id", command.pool_account_id) != command.pool_account_id:
        differing = "pool_account_id"
    elif content.get("grant_id", content.get("transfer_id")) != command.grant_id:
        differing = "grant_id"
    elif content.get("reason", "") != command.reason and earlier.kind != "PostPending":
        differing = "reason"
    if differing:
        raise IdConflict(
            f"EXISTS_WITH_DIFFERENT_{differing.upper()}",
            f"request_id {command.request_id!r} was already used with a different {differing}",
            field=differing,
            metadata={"request_id": command.request_id},
        )
    return earlier


def _not_open(batch: Batch, command: DecideGrant) -> DomainError:
    assert batch.records is not None
    record = batch.records.transfer(command.grant_id)
    if record is None or record.payer_account_id != command.pool_account_id:
        return NotFound(
            "GRANT_NOT_FOUND",
            f"pool {command.pool_account_id!r} has no grant request {command.grant_id!r}",
            field="grant_id",
            metadata={"transfer_id": command.grant_id},
        )
    return PreconditionFailed(
        "GRANT_NOT_OPEN",
        f"grant request {command.grant_id!r} was already decided ({record.status})",
        metadata={"transfer_id": command.grant_id, "status": record.status},
    )


def _check_canceller(command: DecideGrant, grant: Grant) -> None:
    allowed = {person(grant.requested_by), f"member:{grant.member_account_id}"}
    if not command.by_admin and person(command.actor) not in allowed:
        raise Forbidden(
            "NOT_GRANT_REQUESTER",
            "only who made a grant request, its member or a bank admin may cancel it",
            metadata={"transfer_id": grant.grant_id},
        )


def _approver(command: DecideGrant, grant: Grant) -> str | None:
    """The approver entry the caller decides as; None if it decided already (same way)."""
    callers = identities(command.actor)
    matches = [entry for entry in grant.approvers if entry in callers]
    if not matches:
        raise Forbidden(
            "NOT_GRANT_APPROVER",
            f"the caller is not an approver of grant request {grant.grant_id!r}",
            metadata={"transfer_id": grant.grant_id},
        )
    if person(command.actor) in {person(grant.requested_by), f"member:{grant.member_account_id}"}:
        raise Forbidden(
            "OWN_GRANT_REQUEST",
            "an approver cannot decide a grant request they made or that pays them",
            metadata={"transfer_id": grant.grant_id},
        )
    same = grant.approvals if command.decision == "approve" else grant.rejections
    other = grant.rejections if command.decision == "approve" else grant.approvals
    if any(entry in other for entry in matches):
        raise PreconditionFailed(
            "APPROVER_ALREADY_DECIDED",
            f"this approver already decided grant request {grant.grant_id!r} the other way",
            metadata={"transfer_id": grant.grant_id},
        )
    if any(entry in same for entry in matches):
        return None
    return matches[0]


def _vote(batch: Batch, command: DecideGrant, grant: Grant, approver: str) -> None:
    approve = command.decision == "approve"
    count = len(grant.approvals if approve else grant.rejections) + 1
    settles = count >= (grant.approvals_required if approve else grant.rejections_to_void)
    if settles and approve:
        for account_id in (command.pool_account_id, grant.member_account_id):
            check_open(require_account(batch, account_id))
    event_class = GrantApproved if approve else GrantRejected
    batch.record(
        event_class(
            # A decision that settles the request is recorded under its request id by the
            # hold's event (PendingPosted / PendingVoided) that follows.
            request_id="" if settles else command.request_id,
            pool_account_id=command.pool_account_id,
            grant_id=command.grant_id,
            approver=approver,
            reason=command.reason,
            actor=command.actor,
            actor_label=command.actor_label,
        )
    )
    if settles:
        _settle(batch, command, grant, post=approve)


def _settle(batch: Batch, command: DecideGrant, grant: Grant, *, post: bool) -> None:
    if post:
        batch.record(
            PendingPosted(
                request_id=command.request_id,
                transfer_id=command.grant_id,
                amount_minutes=None,
                posted_amount_minutes=grant.amount_minutes,
                actor=command.actor,
                actor_label=command.actor_label,
            )
        )
    else:
        batch.record(
            PendingVoided(
                request_id=command.request_id,
                transfer_id=command.grant_id,
                reason=command.reason,
                actor=command.actor,
                actor_label=command.actor_label,
            )
        )


def _grant_now(batch: Batch, record: TransferRecord) -> GrantRecord:
    """A grant request as it stands, for the answer to a retry: from the decision state while
    it is open; once decided, from its transfer (the index rows hold its approvals)."""
    pool = batch.pool(record.payer_account_id)
    grant = pool.grants.get(record.transfer_id) if pool is not None else None
    if grant is not None:
        found = grant_record(record.payer_account_id, grant, "pending", None, record.position)
        return replace(found, complete=False)
    return GrantRecord(
        grant_id=record.transfer_id,
        pool_account_id=record.payer_account_id,
        member_account_id=record.payee_account_id,
        amount_minutes=record.amount_minutes,
        state=record.status,
        approvers=(),
        approvals_required=0,
        approvals=(),
        rejections=(),
        requested_by=record.actor,
        requested_at=record.created_at,
        deadline=record.deadline,
        resolved_at=record.resolved_at,
        number=record.number,
        position=record.position,
        complete=False,
    )


@dataclass(frozen=True, slots=True)
class _Decision(Event):
    request_id: str
    pool_account_id: str
    grant_id: str
    approver: str
    reason: str
    actor: str
    actor_label: str

    KIND = ""

    def apply(self, batch: Batch, version: int, timestamp: datetime) -> None:
        pool = batch.pool_for_update(self.pool_account_id)
        grant = pool.grants[self.grant_id]
        if self.KIND == "ApproveGrant":
            grant = replace(grant, approvals=(*grant.approvals, self.approver))
        else:
            grant = replace(grant, rejections=(*grant.rejections, self.approver))
        pool.grants[self.grant_id] = grant
        if batch.records is None:
            return
        batch.records.grant_changes[self.grant_id] = grant_record(
            self.pool_account_id, grant, "pending", None, version
        )
        if self.request_id:
            content = {
                "request_id": self.request_id,
                "pool_account_id": self.pool_account_id,
                "grant_id": self.grant_id,
                "reason": self.reason,
            }
            batch.records.add_request(RequestRecord(self.request_id, self.KIND, content, version))


@event_type
@dataclass(frozen=True, slots=True)
class GrantApproved(_Decision):
    """An approver approved; `request_id` is "" when its PendingPosted follows."""

    TYPE = "GrantApproved"
    KIND = "ApproveGrant"


@event_type
@dataclass(frozen=True, slots=True)
class GrantRejected(_Decision):
    """An approver rejected; `request_id` is "" when its PendingVoided follows."""

    TYPE = "GrantRejected"
    KIND = "RejectGrant"
