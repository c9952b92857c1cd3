"""The "budgets" projection: what each pool has been given, has granted and still holds.

Self-contained, like the reports: it reads only its own tables (all prefixed `budget_`),
keyed by the bank's history id (`bank_uuid`, derived from the bank id), so it never needs
another projection's rows. Only pools with a policy (PoolService.CreatePool) are followed.

Tables:
- budget_pools: per pool, its policy and time zone, and its running totals: contributed
  and granted (net of reversals), pledged (open pledges) and committed (open grant
  requests), and beyond_shares (granted past what the shares held; budget_shares.py).
- budget_months: per pool and month, the same four figures. A month is a calendar month
  of the pool's time zone. A grant counts in the month of the day it was requested on,
  which its item of a GrantsRequested event records (also the day its member's cap counts it on), so
  replaying never needs the machine's time-zone data for grants; a contribution and a
  pledge count in the month (in the pool's time zone then in force, by zoneinfo) of the
  event that posted or made it. A reversal takes its original back out of the original's
  month, so every figure is net of reversals.
- budget_shares: per pool and contributor: contributed and left (used = contributed - left),
  by the share rule of projections/budget_shares.py.
- budget_usage: per pool, member and day: minutes granted or reserved by open requests (a
  voided or expired request gives its minutes back), as the writer counts them for the cap.
- budget_holds: the open pledges and grant requests (what their resolution needs).
- budget_posted, budget_takes: posted contributions and grants not reversed, and what each
  grant took from each share (what a reversal needs).

Cheap when nothing concerns a pool: the projection keeps in memory, per bank it has seen,
its pools (with their time zones) and their open holds, so a batch's events are sorted out
with set look-ups alone; only a batch touching a pool reads rows, a few bulk queries for the
whole batch, and every figure is written back as a delta (`x = x + ?`). What it keeps in
memory takes a batch's changes only once the batch has committed, and is forgotten whenever
the tables are created or dropped, or the log it is given skips ahead of where it last was.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from projections.budget_rows import (
    BUDGET_TABLES,
    CONTRIBUTION,
    DDL,
    GRANT,
    PLEDGE,
    BudgetBatch,
    Hold,
    PoolKey,
    Posted,
    Step,
)
from projections.db import Cursor

# Banks whose pools and open pool holds are kept in memory; beyond that the longest kept is
# dropped (and read again, two small queries, if it shows up again).
banks_remembered_max = 10_000

_HOLD_RESOLVED = frozenset({"PendingPosted", "PendingVoided", "PendingExpired"})
_FOLLOWED = frozenset(
    {"BankCreated", "PoolPolicySet", "GrantsRequested", "TransfersCreated", "TransferReversed"}
    | _HOLD_RESOLVED
)


def month_in(time_zone: str, moment: datetime) -> str:
    """The month ('YYYY-MM') `moment` falls in, in the time zone."""
    local = moment.astimezone(ZoneInfo(time_zone))
    return f"{local.year:04d}-{local.month:02d}"


# ----------------------------------------------------------------- what is kept in memory


@dataclass(slots=True)
class _Seen:
    """A bank's pools (pool -> time zone) and the open holds of its pools
    (transfer -> ((pool, kind), ...): a transfer between two pools is in both)."""

    pools: dict[str, str] = field(default_factory=dict)
    holds: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def copy(self) -> _Seen:
        return _Seen(dict(self.pools), dict(self.holds))


# ----------------------------------------------------------------- the projection


class BudgetsProjection:
    """Per pool and month: contributed, pledged, granted, committed; shares; cap usage."""

    name = "budgets"

    def __init__(self) -> None:
        # bank_uuid -> what the committed tables hold about it (banks seen so far).
        self._seen: dict[str, _Seen] = {}
        # The running batch's copies of the banks it changed, kept once it commits.
        self._staged: dict[str, _Seen] = {}
        self._staged_through = 0
        # The notification id of the last event of the last committed batch.
        self._through = 0

    def create_tables(self, cursor: Cursor) -> None:
        for statement in DDL:
            cursor.execute(statement)
        self._forget()

    def drop_tables(self, cursor: Cursor) -> None:
        for table in BUDGET_TABLES:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
        self._forget()

    def apply(self, cursor: Cursor, events: Sequence[Any]) -> None:
        self._staged = {}
        self._staged_through = self._through
        if not events:
            return
        if events[0].notification_id != self._through + 1:
            # A gap: the deployment's own events, a rolled-back insert, or another process
            # having applied events this one did not see. Read the banks again to be sure.
            self._seen.clear()
        self._staged_through = events[-1].notification_id
        steps = self._sort_out(cursor, events)
        if not steps:
            return
        batch = BudgetBatch(cursor)
        batch.preload(steps)
        for step in steps:
            getattr(self, f"_on_{step.kind}")(batch, step)
        batch.write()

    def committed(self) -> None:
        self._seen.update(self._staged)
        self._staged = {}
        self._through = self._staged_through

    def _forget(self) -> None:
        self._seen.clear()
        self._staged = {}
        self._through = 0

    # ----------------------------------------------------------------- the first pass

    def _bank(self, cursor: Cursor, bank: str) -> _Seen:
        seen = self._staged.get(bank) or self._seen.get(bank)
        if seen is None:
            seen = self._remember(bank, _Seen())
            for pool, time_zone in cursor.query(
                "SELECT pool_account_id, time_zone FROM budget_pools WHERE bank_uuid = ?",
                (bank,),
            ):
                seen.pools[pool] = time_zone
            holds: dict[str, list[tuple[str, str]]] = defaultdict(list)
            for transfer_id, pool, kind in cursor.query(
                "SELECT transfer_id, pool_account_id, kind FROM budget_holds WHERE bank_uuid = ?",
                (bank,),
            ):
                holds[transfer_id].append((pool, kind))
            seen.holds = {transfer_id: tuple(found) for transfer_id, found in holds.items()}
        return seen

    def _remember(self, bank: str, seen: _Seen) -> _Seen:
        if bank not in self._seen and len(self._seen) >= banks_remembered_max:
            del self._seen[next(iter(self._seen))]
        self._seen[bank] = seen
        return seen

    def _changing(self, cursor: Cursor, bank: str) -> _Seen:
        staged = self._staged.get(bank)
        if staged is None:
            staged = self._staged[bank] = self._bank(cursor, bank).copy()
        return staged

    def _sort_out(self, cursor: Cursor, events: Sequence[Any]) -> list[Step]:
        """The steps that concern pools, found with the banks' pools and holds in memory."""
        steps: list[Step] = []
        for event in events:
            name = event.type
            if name not in _FOLLOWED:
                continue
            bank = event.bank_uuid
            if name == "BankCreated":
                # A new bank has no pools yet: nothing to read about it.
                self._remember(bank, _Seen())
            elif name == "TransfersCreated":
                pools = self._bank(cursor, bank).pools
                for item in event.transfers:
                    pool = item["payee_account_id"]
                    if pool in pools:
                        steps.append(self._into_pool(cursor, event, item, pools[pool]))
            elif name in _HOLD_RESOLVED:
                holds = self._bank(cursor, bank).holds
                if event.transfer_id in holds:
                    seen = self._changing(cursor, bank)
                    found = seen.holds.pop(event.transfer_id)
                    detail = tuple((pool, kind, seen.pools[pool]) for pool, kind in found)
                    steps.append(Step("resolve", event, detail=detail))
            elif name == "TransferReversed":
                pools = self._bank(cursor, bank).pools
                touched = [
                    account
                    for account in (event.payer_account_id, event.payee_account_id)
                    if account in pools
                ]
                if touched:
                    steps.append(Step("reverse", event, detail=tuple(touched)))
            elif name == "PoolPolicySet":
                time_zone = str(event.policy["time_zone"])
                self._changing(cursor, bank).pools[event.pool_account_id] = time_zone
                steps.append(Step("policy", event, event.pool_account_id))
            else:  # GrantsRequested
                for item in event.grants:
                    pool = item["pool_account_id"]
                    if item["approvals_required"] > 0:
                        self._hold(cursor, bank, item["grant_id"], pool, GRANT)
                    steps.append(Step("grant", event, pool, item))
        return steps

    def _into_pool(self, cursor: Cursor, event: Any, item: Any, time_zone: str) -> Step:
        pool = item["payee_account_id"]
        if item["pending"]:
            self._hold(cursor, event.bank_uuid, item["transfer_id"], pool, PLEDGE)
        kind = "pledge" if item["pending"] else "contribution"
        return Step(kind, event, pool, item, month_in(time_zone, event.timestamp))

    def _hold(self, cursor: Cursor, bank: str, transfer_id: str, pool: str, kind: str) -> None:
        holds = self._changing(cursor, bank).holds
        holds[transfer_id] = (*holds.get(transfer_id, ()), (pool, kind))

    # ----------------------------------------------------------------- the second pass

    def _on_policy(self, batch: BudgetBatch, step: Step) -> None:
        event = step.event
        policy = json.dumps(event.policy, sort_keys=True, separators=(",", ":"))
        batch.pools[(event.bank_uuid, step.pool_account_id)].policy = (
            policy,
            str(event.policy["time_zone"]),
        )

    def _on_contribution(self, batch: BudgetBatch, step: Step) -> None:
        item = step.detail
        key = (step.event.bank_uuid, step.pool_account_id)
        payer, amount = item["payer_account_id"], item["amount_minutes"]
        self._contribute(batch, key, item["transfer_id"], payer, amount, step.month)

    def _on_pledge(self, batch: BudgetBatch, step: Step) -> None:
        bank, item = step.event.bank_uuid, step.detail
        amount = item["amount_minutes"]
        batch.count((bank, step.pool_account_id), step.month, "pledged_minutes", amount)
        hold = Hold(PLEDGE, item["payer_account_id"], amount, step.month, "")
        batch.add_hold(bank, item["transfer_id"], step.pool_account_id, hold)

    def _on_grant(self, batch: BudgetBatch, step: Step) -> None:
        bank, pool, item = step.event.bank_uuid, step.pool_account_id, step.detail
        day, amount, member = item["period_day"], item["amount_minutes"], item["member_account_id"]
        month = day[:7]
        batch.usage[(bank, pool, day, member)] += amount
        if item["approvals_required"] == 0:
            # Paid at once: its transfer is in the TransfersCreated event just before.
            self._grant(batch, (bank, pool), item["grant_id"], member, amount, month)
            return
        batch.count((bank, pool), month, "committed_minutes", amount)
        hold = Hold(GRANT, member, amount, month, day)
        batch.add_hold(bank, item["grant_id"], pool, hold)

    def _on_resolve(self, batch: BudgetBatch, step: Step) -> None:
        event = step.event
        bank, transfer_id = event.bank_uuid, event.transfer_id
        posted = event.posted_amount_minutes if event.type == "PendingPosted" else 0
        for pool, kind, time_zone in step.detail:
            key = (bank, pool)
            hold = batch.take_hold(bank, transfer_id, pool)
            assert hold.kind == kind, transfer_id
            assert 0 <= posted <= hold.amount_minutes, transfer_id
            if kind == PLEDGE:
                batch.count(key, hold.month, "pledged_minutes", -hold.amount_minutes)
                if posted:
                    # A pledge counts as given in the month it was posted, when minutes moved.
                    month = month_in(time_zone, event.timestamp)
                    self._contribute(batch, key, transfer_id, hold.account_id, posted, month)
                continue
            batch.count(key, hold.month, "committed_minutes", -hold.amount_minutes)
            # A voided or expired request gives its reservation back to the member's cap.
            unused = hold.amount_minutes - posted
            batch.usage[(bank, pool, hold.day, hold.account_id)] -= unused
            if posted:
                self._grant(batch, key, transfer_id, hold.account_id, posted, hold.month)

    def _on_reverse(self, batch: BudgetBatch, step: Step) -> None:
        event = step.event
        bank, original = event.bank_uuid, event.reverses_transfer_id
        for pool in step.detail:
            key = (bank, pool)
            posted, takes = batch.take_posted(bank, original, pool)
            assert posted.amount_minutes == event.amount_minutes, original
            book = batch.pools[key].book
            if posted.kind == CONTRIBUTION:
                assert pool == event.payer_account_id, original
                batch.count(key, posted.month, "contributed_minutes", -posted.amount_minutes)
                book.withdraw(posted.account_id, posted.amount_minutes)
            else:
                assert pool == event.payee_account_id, original
                batch.count(key, posted.month, "granted_minutes", -posted.amount_minutes)
                book.give_back(posted.amount_minutes, takes)

    @staticmethod
    def _contribute(
        batch: BudgetBatch,
        key: PoolKey,
        transfer_id: str,
        account: str,
        minutes: int,
        month: str,
    ) -> None:
        batch.count(key, month, "contributed_minutes", minutes)
        batch.pools[key].book.contribute(account, minutes)
        batch.post(key[0], transfer_id, key[1], Posted(CONTRIBUTION, account, minutes, month))

    @staticmethod
    def _grant(
        batch: BudgetBatch, key: PoolKey, transfer_id: str, member: str, minutes: int, month: str
    ) -> None:
        batch.count(key, month, "granted_minutes", minutes)
        takes = batch.pools[key].book.draw(minutes)
        batch.post(key[0], transfer_id, key[1], Posted(GRANT, member, minutes, month))
        if takes:
            batch.new_takes[(key[0], transfer_id, key[1])] = takes
