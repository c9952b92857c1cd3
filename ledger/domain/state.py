"""A bank's decision state: only what deciding the next command needs, kept in memory.

Accounts (balances, holds, limits, status), open pending transfers with their deadlines, and
pools (policy, usage per member per day, open grant requests: pool_state.py).
Closed transfers, each account's transfer list and every idempotency record live in the
index tables instead (records.py), so this grows with the number of accounts and open holds,
never with the length of the history. The state is snapshotted (to_snapshot/from_snapshot)
so that loading a bank costs its accounts and holds, not its history.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger.domain import chain
from ledger.domain.pool_state import PoolState
from ledger.domain.views import AccountView, BankView

# 2: with the bank's creator, API keys and member-token keys (security).
# 3: with the pools (policy, usage per member per day, open grant requests; issue 11).
SNAPSHOT_FORMAT = 3


class SnapshotUnreadable(ValueError):
    """A snapshot of another format, or missing what this format has: replay instead."""


@dataclass(slots=True)
class Account:
    account_id: str
    # 1, 2, 3...: the order accounts were opened in (ListAccounts' order).
    number: int
    kind: str
    status: str
    lower_limit_minutes: int
    upper_limit_minutes: int | None
    # The limits it was opened with: what a retry of OpenAccount must repeat.
    opened_lower_limit_minutes: int
    opened_upper_limit_minutes: int | None
    opened_at: datetime
    updated_at: datetime
    # Position of the last event that changed this account.
    position: int
    # Balance = minutes received - minutes paid (posted only).
    balance_minutes: int = 0
    pending_debit_minutes: int = 0
    pending_credit_minutes: int = 0

    @property
    def debit_exposure_minutes(self) -> int:
        """The balance if every pending debit posts and no pending credit does."""
        return self.balance_minutes - self.pending_debit_minutes

    @property
    def credit_exposure_minutes(self) -> int:
        """The balance if every pending credit posts and no pending debit does."""
        return self.balance_minutes + self.pending_credit_minutes

    def touch(self, timestamp: datetime, position: int) -> None:
        self.updated_at = timestamp
        self.position = position

    def view(self) -> AccountView:
        return AccountView(
            account_id=self.account_id,
            kind=self.kind,
            status=self.status,
            lower_limit_minutes=self.lower_limit_minutes,
            upper_limit_minutes=self.upper_limit_minutes,
            balance_minutes=self.balance_minutes,
            pending_debit_minutes=self.pending_debit_minutes,
            pending_credit_minutes=self.pending_credit_minutes,
            opened_at=self.opened_at,
            updated_at=self.updated_at,
            position=self.position,
        )


@dataclass(frozen=True, slots=True)
class Hold:
    """An open pending transfer: its amount is reserved against both accounts' limits."""

    transfer_id: str
    payer_account_id: str
    payee_account_id: str
    amount_minutes: int
    deadline: datetime | None


@dataclass(frozen=True, slots=True)
class ApiKeyState:
    """What decisions need about one of the bank's API keys (the rest is in the index)."""

    role: str
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class MemberTokenKey:
    """A public key of the bank's identity provider; member tokens are signed with it."""

    kid: str
    algorithm: str
    public_key_pem: str
    registered_at: datetime
    position: int


@dataclass(slots=True)
class BankState:
    bank_uuid: str
    # Set by the BankCreated event (version 1); empty at version 0, before it exists.
    bank_id: str = ""
    name: str = ""
    created_at: datetime | None = None
    version: int = 0
    chain_head: str = chain.GENESIS_HASH
    # The latest event's timestamp: a bank's timestamps never go backwards.
    last_timestamp: datetime | None = None
    # The authenticated caller that created the bank (banks per operator key are bounded).
    created_by: str = ""
    # Transfers ever recorded (reversals included); the last one's number.
    transfer_count: int = 0
    # Access: whether debits of a member's account need that member's token, the bank's
    # API keys, and its identity provider's public keys.
    member_tokens_required: bool = False
    api_keys: dict[str, ApiKeyState] = field(default_factory=dict)
    member_token_keys: dict[str, MemberTokenKey] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    # Pools with a policy (pool_state.py), by account id.
    pools: dict[str, PoolState] = field(default_factory=dict)
    # (deadline, transfer_id) of holds that can expire; entries of resolved holds are skipped.
    deadlines: list[tuple[datetime, str]] = field(default_factory=list, compare=False)
    # Changes (events, and each transfer of a grouped event) since the latest snapshot.
    changes_since_snapshot: int = field(default=0, compare=False)

    @property
    def exists(self) -> bool:
        return self.version > 0

    def view(self) -> BankView:
        assert self.created_at is not None, "a bank that exists has its creation time"
        return BankView(
            bank_id=self.bank_id,
            name=self.name,
            created_at=self.created_at,
            position=self.version,
            chain_head=self.chain_head,
            account_count=len(self.accounts),
            transfer_count=self.transfer_count,
            member_tokens_required=self.member_tokens_required,
        )

    def next_deadline(self) -> datetime | None:
        """When the next hold may expire (stale entries make this early, never late)."""
        return self.deadlines[0][0] if self.deadlines else None

    # ----------------------------------------------------------------- snapshots

    def to_snapshot(self) -> dict[str, Any]:
        """Everything above as JSON values (times as ISO 8601 text), in a stable order."""
        assert self.created_at is not None
        assert self.last_timestamp is not None
        return {
            "format": SNAPSHOT_FORMAT,
            "bank": self.bank_uuid,
            "bank_id": self.bank_id,
            "name": self.name,
            "created_at": chain.timestamp_text(self.created_at),
            "version": self.version,
            "chain_head": self.chain_head,
            "last_timestamp": chain.timestamp_text(self.last_timestamp),
            "created_by": self.created_by,
            "transfer_count": self.transfer_count,
            "accounts": [_account_json(a) for a in self.accounts.values()],
            "holds": [_hold_json(h) for h in self.holds.values()],
            "member_tokens_required": self.member_tokens_required,
            "api_keys": [
                {"key_id": key_id, "role": key.role, "revoked": key.revoked}
                for key_id, key in self.api_keys.items()
            ],
            "member_token_keys": [
                {
                    "kid": key.kid,
                    "algorithm": key.algorithm,
                    "public_key_pem": key.public_key_pem,
                    "registered_at": chain.timestamp_text(key.registered_at),
                    "position": key.position,
                }
                for key in self.member_token_keys.values()
            ],
            "pools": [pool.to_json() for pool in self.pools.values()],
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> BankState:
        if data.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotUnreadable(f"snapshot format {data.get('format')!r}")
        try:
            return cls._from_snapshot(data)
        except (KeyError, TypeError, ValueError) as error:
            raise SnapshotUnreadable(f"snapshot lacks or mistypes {error}") from error

    @classmethod
    def _from_snapshot(cls, data: dict[str, Any]) -> BankState:
        accounts = [_account_of(item) for item in data["accounts"]]
        holds = [_hold_of(item) for item in data["holds"]]
        state = cls(
            bank_uuid=data["bank"],
            bank_id=data["bank_id"],
            name=data["name"],
            created_at=datetime.fromisoformat(data["created_at"]),
            version=data["version"],
            chain_head=data["chain_head"],
            last_timestamp=datetime.fromisoformat(data["last_timestamp"]),
            created_by=data["created_by"],
            transfer_count=data["transfer_count"],
            accounts={a.account_id: a for a in sorted(accounts, key=lambda a: a.number)},
            holds={h.transfer_id: h for h in holds},
            member_tokens_required=data["member_tokens_required"],
            api_keys={
                item["key_id"]: ApiKeyState(item["role"], item["revoked"])
                for item in data["api_keys"]
            },
            member_token_keys={
                item["kid"]: MemberTokenKey(
                    kid=item["kid"],
                    algorithm=item["algorithm"],
                    public_key_pem=item["public_key_pem"],
                    registered_at=datetime.fromisoformat(item["registered_at"]),
                    position=item["position"],
                )
                for item in data["member_token_keys"]
            },
            pools={item["account_id"]: PoolState.of_json(item) for item in data["pools"]},
        )
        state.deadlines = [(h.deadline, h.transfer_id) for h in holds if h.deadline is not None]
        heapq.heapify(state.deadlines)
        return state


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else chain.timestamp_text(moment)


def _time_of(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _account_json(account: Account) -> dict[str, Any]:
    return {
        "account_id": account.account_id,
        "number": account.number,
        "kind": account.kind,
        "status": account.status,
        "lower_limit_minutes": account.lower_limit_minutes,
        "upper_limit_minutes": account.upper_limit_minutes,
        "opened_lower_limit_minutes": account.opened_lower_limit_minutes,
        "opened_upper_limit_minutes": account.opened_upper_limit_minutes,
        "opened_at": chain.timestamp_text(account.opened_at),
        "updated_at": chain.timestamp_text(account.updated_at),
        "position": account.position,
        "balance_minutes": account.balance_minutes,
        "pending_debit_minutes": account.pending_debit_minutes,
        "pending_credit_minutes": account.pending_credit_minutes,
    }


def _account_of(item: dict[str, Any]) -> Account:
    fields = dict(item)
    fields["opened_at"] = datetime.fromisoformat(fields["opened_at"])
    fields["updated_at"] = datetime.fromisoformat(fields["updated_at"])
    return Account(**fields)


def _hold_json(hold: Hold) -> dict[str, Any]:
    return {
        "transfer_id": hold.transfer_id,
        "payer_account_id": hold.payer_account_id,
        "payee_account_id": hold.payee_account_id,
        "amount_minutes": hold.amount_minutes,
        "deadline": _time(hold.deadline),
    }


def _hold_of(item: dict[str, Any]) -> Hold:
    return Hold(
        transfer_id=item["transfer_id"],
        payer_account_id=item["payer_account_id"],
        payee_account_id=item["payee_account_id"],
        amount_minutes=item["amount_minutes"],
        deadline=_time_of(item["deadline"]),
    )
