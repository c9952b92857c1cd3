"""Random pool histories in the domain: caps, floor and zero-sum hold after every step.

A hypothesis state machine drives one bank with a pool through random policy changes,
contributions, pledges (posted or voided), grant requests (alone and several in one batch),
approvals, rejections, cancellations and expiries. After every step: balances sum to zero;
every grant accepted kept its member within the cap and the pool at or above the floor of
the policy in force (recomputed here from the grants themselves, not from the pool's
counters); a refused command changed nothing; and every few steps the bank is what its
stored events rebuild, from event 1 and from a snapshot, and the verifier finds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from bank_checks import check_replays, loaded
from domain_harness import MemoryBank
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ledger.domain import canonical
from ledger.domain.commands import (
    ChangePoolPolicy,
    Command,
    CreatePool,
    CreateTransfer,
    DecideGrant,
    IssueApiKey,
    OpenAccount,
    PostPending,
    RequestGrant,
    VoidPending,
)
from ledger.domain.errors import DomainError
from ledger.domain.pool_policy import PoolPolicy
from ledger.domain.records import GrantRecord
from ledger.verifier import verify

T0 = datetime(2025, 1, 30, 22, 0, tzinfo=UTC)
MEMBERS = ("m0", "m1", "m2", "m3")
APPROVERS = ("member:m0", "member:m1", "member:m2", "key:admin1")
# The callers: each member through the front-end with their token, the front-end alone, and
# the admin key (an approver) and another admin key (not one).
CALLERS = (
    *(f"key:app/member:{m}" for m in MEMBERS),
    "key:app",
    "key:admin1",
    "key:admin2",
)
check_every_steps = 5


@st.composite
def policies(draw: st.DrawFn) -> PoolPolicy:
    period = draw(st.sampled_from(("calendar_month", "calendar_week", "rolling_days")))
    approvers = tuple(draw(st.lists(st.sampled_from(APPROVERS), unique=True, max_size=4)))
    return PoolPolicy(
        contributors=draw(st.sampled_from(("anyone", "listed"))),
        contributor_account_ids=("org", "m0"),
        drawers=draw(st.sampled_from(("any_member", "listed"))),
        drawer_account_ids=("m0", "m1", "m2"),
        cap_minutes=draw(st.sampled_from((None, 30, 90, 200))),
        cap_period=period,
        cap_period_days=draw(st.integers(1, 10)) if period == "rolling_days" else 0,
        floor_minutes=draw(st.sampled_from((0, 50, -20))),
        approvers=approvers,
        approvals_required=draw(st.integers(0, len(approvers))),
        request_expiry_seconds=draw(st.sampled_from((0, 3600, 86_400))),
    )


def _caller(approver: str) -> str:
    """How an approver calls: a member through the front-end with their token, or a key."""
    kind, _, name = approver.partition(":")
    return f"key:app/member:{name}" if kind == "member" else approver


def in_period(policy: PoolPolicy, day: date, today: date) -> bool:
    """When a grant made on `day` counts against the cap on `today` (written again, plainly)."""
    if day > today:
        return False
    if policy.cap_period == "calendar_month":
        return day.strftime("%Y-%m") == today.strftime("%Y-%m")
    if policy.cap_period == "calendar_week":
        monday = today - timedelta(days=today.weekday())
        return monday <= day
    return (today - day).days < policy.cap_period_days


@dataclass
class ModelGrant:
    member: str
    day: date
    amount_minutes: int


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.memory = MemoryBank.created(now=T0)
        self.now = T0
        self.steps = 0
        self.ids = 0
        self.grants: dict[str, ModelGrant] = {}
        self.pledges: list[str] = []

    def new_id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}{self.ids}"

    @initialize(policy=policies())
    def open_the_pool(self, policy: PoolPolicy) -> None:
        self.memory.execute(
            IssueApiKey(key_id="admin1", role="bank-admin", secret_hash="0" * 64), T0
        )
        for member in MEMBERS:
            self.memory.execute(OpenAccount(member, "member", lower_limit_minutes=-300), T0)
        self.memory.execute(OpenAccount("org", "organisation", lower_limit_minutes=-5000), T0)
        self.memory.execute(CreatePool("p0", "pot", policy, actor="key:admin1"), T0)
        self.memory.execute(CreateTransfer("c0", "org", "pot", 600), T0)
        self.policy = policy

    # ----------------------------------------------------------------- running

    def run(self, commands: list[Command]) -> list[object]:
        """One writer batch; a batch of one refused command must change nothing."""
        before = self.memory.snapshot()
        results = self.memory.run(commands, self.now)
        if all(isinstance(r, DomainError) for r in results):
            assert self.memory.snapshot() == before
        for command, result in zip(commands, results, strict=True):
            outcome = result.reason if isinstance(result, DomainError) else "ok"
            event(f"{type(command).__name__}: {outcome}")
            if isinstance(command, RequestGrant):
                # A decision later in the batch may void a grant the refusal counted.
                decided = any(isinstance(c, DecideGrant) for c in commands)
                self.check_cap(command, result, refusal_checked=not decided)
        return results

    def check_cap(self, command: RequestGrant, result: object, *, refusal_checked: bool) -> None:
        """A grant was accepted only within its member's cap, and refused for the cap only
        past it (counting the grants accepted before it, in this batch too)."""
        cap = self.policy.cap_minutes
        member, amount = command.member_account_id, command.amount_minutes
        if isinstance(result, GrantRecord):
            self.grants[command.grant_id] = ModelGrant(member, self.now.date(), amount)
            assert cap is None or self.used(member) <= cap
        elif (
            refusal_checked
            and isinstance(result, DomainError)
            and result.reason == "EXCEEDS_MEMBER_CAP"
        ):
            assert cap is not None
            assert self.used(member) + amount > cap

    def used(self, member: str) -> int:
        today = self.now.date()
        return sum(
            grant.amount_minutes
            for grant_id, grant in self.grants.items()
            if grant.member == member
            and self.counts(grant_id)
            and in_period(self.policy, grant.day, today)
        )

    def counts(self, grant_id: str) -> bool:
        record = self.memory.transfers.get(grant_id)
        return record is not None and record.status in ("pending", "posted")

    # ----------------------------------------------------------------- rules

    @rule(policy=policies())
    def change_policy(self, policy: PoolPolicy) -> None:
        results = self.run([ChangePoolPolicy(self.new_id("p"), "pot", policy)])
        if not isinstance(results[0], DomainError):
            self.policy = policy

    @rule(
        payer=st.sampled_from(("org", *MEMBERS)),
        minutes=st.integers(1, 200),
        pledge=st.booleans(),
    )
    def contribute(self, payer: str, minutes: int, pledge: bool) -> None:
        transfer_id = self.new_id("c")
        (result,) = self.run([CreateTransfer(transfer_id, payer, "pot", minutes, pending=pledge)])
        if pledge and not isinstance(result, DomainError):
            self.pledges.append(transfer_id)

    @rule(data=st.data(), post=st.booleans())
    def settle_pledge(self, data: st.DataObject, post: bool) -> None:
        if not self.pledges:
            return
        transfer_id = self.pledges.pop(data.draw(st.integers(0, len(self.pledges) - 1)))
        request_id = self.new_id("r")
        command: Command = (
            PostPending(request_id, transfer_id) if post else VoidPending(request_id, transfer_id)
        )
        self.run([command])

    @rule(
        asks=st.lists(
            st.tuples(st.sampled_from(MEMBERS), st.integers(1, 120), st.sampled_from(CALLERS)),
            min_size=1,
            max_size=4,
        )
    )
    def request_grants(self, asks: list[tuple[str, int, str]]) -> None:
        # Several at once are decided in one batch, as concurrent requests are.
        commands: list[Command] = [
            RequestGrant(self.new_id("g"), "pot", member, minutes, actor=caller)
            for member, minutes, caller in asks
        ]
        results = self.run(commands)
        if any(isinstance(r, GrantRecord) for r in results):
            # Each grant took the pool's exposure (its balance less every pending grant) no
            # lower than the floor; the last one leaves the lowest.
            pool = self.memory.state.accounts["pot"]
            assert pool.debit_exposure_minutes >= self.policy.floor_minutes

    @rule(
        data=st.data(),
        decision=st.sampled_from(("approve", "approve", "reject", "cancel")),
        admin=st.booleans(),
    )
    def decide(self, data: st.DataObject, decision: str, admin: bool) -> None:
        if not self.grants:
            return
        # Mostly an open request and one of its approvers; sometimes anyone, on anything.
        pool = self.memory.state.pools["pot"]
        open_ids = sorted(pool.grants)
        grant_id = data.draw(st.sampled_from(open_ids or sorted(self.grants)))
        grant = pool.grants.get(grant_id)
        callers = [_caller(entry) for entry in grant.approvers] if grant else []
        caller = data.draw(st.sampled_from(callers * 3 + list(CALLERS)))
        command = DecideGrant(
            self.new_id("d"), "pot", grant_id, decision, actor=caller, by_admin=admin
        )
        self.run([command])

    @rule(data=st.data(), member=st.sampled_from(MEMBERS), minutes=st.integers(1, 120))
    def mixed_batch(self, data: st.DataObject, member: str, minutes: int) -> None:
        # A gift, a request and a decision on an open request, decided in one batch.
        commands: list[Command] = [
            CreateTransfer(self.new_id("c"), "org", "pot", minutes),
            RequestGrant(
                self.new_id("g"), "pot", member, minutes, actor=f"key:app/member:{member}"
            ),
        ]
        pool = self.memory.state.pools["pot"]
        if pool.grants:
            grant = pool.grants[data.draw(st.sampled_from(sorted(pool.grants)))]
            callers = [_caller(entry) for entry in grant.approvers] or list(CALLERS)
            commands.append(
                DecideGrant(
                    self.new_id("d"),
                    "pot",
                    grant.grant_id,
                    data.draw(st.sampled_from(("approve", "reject"))),
                    actor=data.draw(st.sampled_from(callers)),
                )
            )
        self.run(data.draw(st.permutations(commands)))

    @rule(seconds=st.sampled_from((60, 3600, 86_400, 7 * 86_400)))
    def time_passes(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        self.memory.expire(self.now)

    # ----------------------------------------------------------------- after every step

    @invariant()
    def balances_sum_to_zero_and_the_floor_holds(self) -> None:
        state = self.memory.state
        assert sum(a.balance_minutes for a in state.accounts.values()) == 0
        pool = state.pools.get("pot")
        if pool is None:
            return
        # Open requests are exactly the pool's open holds that are grants.
        for grant_id in pool.grants:
            assert state.holds[grant_id].payer_account_id == "pot"
        held = sum(g.amount_minutes for g in pool.grants.values())
        assert held <= state.accounts["pot"].pending_debit_minutes
        self.steps += 1
        if self.steps % check_every_steps == 0:
            self.everything_rebuilds()

    def everything_rebuilds(self) -> None:
        check_replays(self.memory)
        snapshot = canonical.encode(self.memory.state.to_snapshot())
        assert loaded(snapshot, []) == self.memory.state
        report = verify((e.stored, e.chain_hash) for e in self.memory.stored)
        assert report.ok, report.violations

    def teardown(self) -> None:
        self.everything_rebuilds()


PoolMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pool_histories = PoolMachine.TestCase
