"""A batch: the changes a run of commands (or of replayed events) makes to one bank's state.

Copy-on-write: an account is copied the first time the batch changes it, holds added and
removed are kept aside, and the bank's state is only changed by `commit()`, once the store
has committed the batch's events. A batch that fails to commit is dropped with `rollback()`
and the state is exactly what the store holds, so the writer can go on without reloading.

Every command of a batch is stamped with one time (the batch's `timestamp`, never before the
bank's latest event), which is also what lets consecutive new transfers share one event.
"""

from __future__ import annotations

import heapq
from dataclasses import replace
from datetime import UTC, datetime

from ledger.domain.events import Event
from ledger.domain.pool_state import PoolState
from ledger.domain.records import RecordBook
from ledger.domain.state import Account, ApiKeyState, BankState, Hold, MemberTokenKey

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Batch:
    """Changes to one bank's state that are not committed yet."""

    def __init__(self, state: BankState, now: datetime | None, records: RecordBook | None) -> None:
        self.state = state
        # None while replaying stored events: their records are already in the tables.
        self.records = records
        last = state.last_timestamp
        # A replay (now is None) takes each stored event's own time instead.
        moment = now or last or _EPOCH
        self.timestamp = moment if last is None or moment > last else last
        self.version = state.version
        self.transfer_count = state.transfer_count
        self.changes = 0
        # (version, timestamp, event) recorded by this batch, in order.
        self.events: list[tuple[int, datetime, Event]] = []
        self.bank_id = state.bank_id
        self.name = state.name
        self.created_at = state.created_at
        self.created_by = state.created_by
        self.member_tokens_required = state.member_tokens_required
        # Changed keys; the member-token keys are copied whole when one changes (at most 8).
        self.api_keys: dict[str, ApiKeyState] = {}
        self._member_token_keys: dict[str, MemberTokenKey] | None = None
        self._accounts: dict[str, Account] = {}
        # Pools the batch changed (copied on first change, like accounts).
        self._pools: dict[str, PoolState] = {}
        self._holds_added: dict[str, Hold] = {}
        self._holds_removed: set[str] = set()
        self._popped_deadlines: list[tuple[datetime, str]] = []
        # transfer id -> number, for the transfers of the last TransfersCreated event: the
        # grant requests that follow it (pools.GrantsRequested) name their transfers by id.
        self.group_transfer_numbers: dict[str, int] = {}
        self._done = False

    # ----------------------------------------------------------------- the bank

    @property
    def exists(self) -> bool:
        return self.version > 0

    @property
    def bank_uuid(self) -> str:
        return self.state.bank_uuid

    def create(self, bank_id: str, name: str, created_at: datetime, created_by: str) -> None:
        assert not self.state.exists, "a bank is created once"
        assert self.version == 1, "a bank is created by its event 1"
        self.bank_id, self.name, self.created_at = bank_id, name, created_at
        self.created_by = created_by

    # ----------------------------------------------------------------- access

    def api_key(self, key_id: str) -> ApiKeyState | None:
        found = self.api_keys.get(key_id)
        return found if found is not None else self.state.api_keys.get(key_id)

    @property
    def active_api_key_count(self) -> int:
        keys = {**self.state.api_keys, **self.api_keys}
        return sum(1 for key in keys.values() if not key.revoked)

    @property
    def member_token_keys(self) -> dict[str, MemberTokenKey]:
        """The bank's member-token keys as this batch sees them (do not change this dict)."""
        found = self._member_token_keys
        return found if found is not None else self.state.member_token_keys

    def member_token_keys_for_update(self) -> dict[str, MemberTokenKey]:
        if self._member_token_keys is None:
            self._member_token_keys = dict(self.state.member_token_keys)
        return self._member_token_keys

    @property
    def member_token_keys_changed(self) -> bool:
        return self._member_token_keys is not None

    # ----------------------------------------------------------------- accounts

    def account(self, account_id: str) -> Account | None:
        """The account as this batch sees it (do not change it: use account_for_update)."""
        found = self._accounts.get(account_id)
        return found if found is not None else self.state.accounts.get(account_id)

    def account_for_update(self, account_id: str) -> Account:
        found = self._accounts.get(account_id)
        if found is None:
            found = self._accounts[account_id] = replace(self.state.accounts[account_id])
        return found

    def add_account(self, account: Account) -> None:
        assert self.account(account.account_id) is None, f"{account.account_id} opened twice"
        self._accounts[account.account_id] = account

    @property
    def account_count(self) -> int:
        new = sum(1 for a in self._accounts if a not in self.state.accounts)
        return len(self.state.accounts) + new

    def changed_accounts(self) -> list[Account]:
        return list(self._accounts.values())

    # ----------------------------------------------------------------- pools

    def pool(self, account_id: str) -> PoolState | None:
        """The pool as this batch sees it (do not change it: use pool_for_update)."""
        found = self._pools.get(account_id)
        return found if found is not None else self.state.pools.get(account_id)

    def pool_for_update(self, account_id: str) -> PoolState:
        found = self._pools.get(account_id)
        if found is None:
            found = self._pools[account_id] = self.state.pools[account_id].copy_for_update()
        return found

    def add_pool(self, pool: PoolState) -> None:
        assert self.pool(pool.account_id) is None, f"pool {pool.account_id} created twice"
        self._pools[pool.account_id] = pool

    def changed_pools(self) -> list[PoolState]:
        return list(self._pools.values())

    # ----------------------------------------------------------------- holds

    def hold(self, transfer_id: str) -> Hold | None:
        if transfer_id in self._holds_removed:
            return None
        found = self._holds_added.get(transfer_id)
        return found if found is not None else self.state.holds.get(transfer_id)

    def add_hold(self, hold: Hold) -> None:
        assert self.hold(hold.transfer_id) is None, f"{hold.transfer_id} held twice"
        self._holds_added[hold.transfer_id] = hold

    def remove_hold(self, transfer_id: str) -> Hold:
        hold = self.hold(transfer_id)
        assert hold is not None, f"{transfer_id} is not held"
        if self._holds_added.pop(transfer_id, None) is None:
            self._holds_removed.add(transfer_id)
        return hold

    def due_holds(self, now: datetime) -> list[str]:
        """Ids of the stored holds whose deadline is at or before `now`, in deadline order."""
        due = []
        deadlines = self.state.deadlines
        while deadlines and deadlines[0][0] <= now:
            entry = heapq.heappop(deadlines)
            self._popped_deadlines.append(entry)
            if self.hold(entry[1]) is not None:
                due.append(entry[1])
        return due

    # ----------------------------------------------------------------- events

    def record(self, event: Event) -> int:
        """Record a new event at the batch's time and apply it; returns its version."""
        self.version += 1
        self.events.append((self.version, self.timestamp, event))
        self.changes += event.changes()
        event.apply(self, self.version, self.timestamp)
        return self.version

    def last_event(self) -> Event | None:
        return self.events[-1][2] if self.events else None

    def replay(self, version: int, timestamp: datetime, event: Event) -> None:
        """Apply an event read back from the store (its checks were made when it was recorded)."""
        assert version == self.version + 1, f"event {version} after {self.version}"
        self.version = version
        self.timestamp = timestamp
        self.changes += event.changes()
        event.apply(self, version, timestamp)

    def next_transfer_number(self) -> int:
        self.transfer_count += 1
        return self.transfer_count

    # ----------------------------------------------------------------- the end

    def commit(self, chain_head: str) -> None:
        """The store committed this batch's events: make them the bank's state."""
        assert not self._done, "a batch ends once"
        self._done = True
        state = self.state
        if not self.events and self.version == state.version:
            self._restore_deadlines()  # nothing happened; keep what was popped
            return
        state.version = self.version
        state.chain_head = chain_head
        state.last_timestamp = self.timestamp
        state.transfer_count = self.transfer_count
        state.bank_id, state.name, state.created_at = self.bank_id, self.name, self.created_at
        state.created_by = self.created_by
        state.member_tokens_required = self.member_tokens_required
        state.api_keys.update(self.api_keys)
        if self._member_token_keys is not None:
            state.member_token_keys = self._member_token_keys
        state.accounts.update(self._accounts)
        state.pools.update(self._pools)
        for transfer_id in self._holds_removed:
            del state.holds[transfer_id]
        state.holds.update(self._holds_added)
        for hold in self._holds_added.values():
            if hold.deadline is not None:
                heapq.heappush(state.deadlines, (hold.deadline, hold.transfer_id))
        self._restore_deadlines()  # popped but still held: not due after all
        state.changes_since_snapshot += self.changes

    def rollback(self) -> None:
        """The batch will not be committed: leave the state as the store holds it."""
        if self._done:
            return
        self._done = True
        self._restore_deadlines()

    def _restore_deadlines(self) -> None:
        for entry in self._popped_deadlines:
            if self.state.holds.get(entry[1]) is not None:
                heapq.heappush(self.state.deadlines, entry)
        self._popped_deadlines.clear()
