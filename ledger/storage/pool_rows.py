"""Rows of the pool tables (issue 11): each pool's policy, and every grant request as it stands.

    ledger_pools        one row per pool: its policy in force (canonical JSON) and when set
    ledger_pool_grants  every grant request: its terms, approvers, decisions and state

Both are written from the writer's decision state in the same transaction as the events, and
only read by lists and GetPool; decisions never read them back.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ledger.domain import canonical, chain
from ledger.domain.pool_policy import PoolPolicy
from ledger.domain.pool_state import PoolState
from ledger.domain.records import GrantRecord
from ledger.storage.rows import Row
from ledger.storage.sql import Dialect

POOL_COLUMNS = ("bank_uuid", "account_id", "policy", "policy_position", "policy_changed_at")
GRANT_COLUMNS = (
    "bank_uuid",
    "grant_id",
    "pool_account_id",
    "member_account_id",
    "amount_minutes",
    "state",
    "approvers",
    "approvals_required",
    "approvals",
    "rejections",
    "requested_by",
    "requested_at",
    "deadline",
    "resolved_at",
    "number",
    "position",
)
# Open requests (the awaiting-approver list scans these): partial, as they are few.
OPEN = "state = 'pending'"


def statements(p: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {p}ledger_pools ("
        " bank_uuid TEXT NOT NULL, account_id TEXT NOT NULL, policy TEXT NOT NULL,"
        " policy_position BIGINT NOT NULL, policy_changed_at TEXT NOT NULL,"
        " PRIMARY KEY (bank_uuid, account_id))",
        f"CREATE TABLE IF NOT EXISTS {p}ledger_pool_grants ("
        " bank_uuid TEXT NOT NULL, grant_id TEXT NOT NULL, pool_account_id TEXT NOT NULL,"
        " member_account_id TEXT NOT NULL, amount_minutes BIGINT NOT NULL,"
        " state TEXT NOT NULL, approvers TEXT NOT NULL, approvals_required BIGINT NOT NULL,"
        " approvals TEXT NOT NULL, rejections TEXT NOT NULL, requested_by TEXT NOT NULL,"
        " requested_at TEXT NOT NULL, deadline TEXT, resolved_at TEXT,"
        " number BIGINT NOT NULL, position BIGINT NOT NULL,"
        " PRIMARY KEY (bank_uuid, grant_id))",
        f"CREATE INDEX IF NOT EXISTS ledger_pool_grants_by_pool"
        f" ON {p}ledger_pool_grants (bank_uuid, pool_account_id, number)",
        f"CREATE INDEX IF NOT EXISTS ledger_pool_grants_by_pool_state"
        f" ON {p}ledger_pool_grants (bank_uuid, pool_account_id, state, number)",
        f"CREATE INDEX IF NOT EXISTS ledger_pool_grants_open"
        f" ON {p}ledger_pool_grants (bank_uuid, number) WHERE {OPEN}",
    ]


def upsert(dialect: Dialect, table: str, columns: tuple[str, ...], keys: tuple[str, ...]) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
    return dialect.sql(
        f"INSERT INTO {dialect.table(table)} ({', '.join(columns)})"
        f" VALUES ({', '.join('?' for _ in columns)})"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    )


def _json(value: Any) -> str:
    return canonical.encode(value).decode("utf-8")


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else chain.timestamp_text(moment)


def pool_row(bank_uuid: str, pool: PoolState) -> tuple[Any, ...]:
    return (
        bank_uuid,
        pool.account_id,
        _json(pool.policy.to_json()),
        pool.policy_position,
        chain.timestamp_text(pool.policy_changed_at),
    )


def grant_row(bank_uuid: str, grant: GrantRecord) -> tuple[Any, ...]:
    return (
        bank_uuid,
        grant.grant_id,
        grant.pool_account_id,
        grant.member_account_id,
        grant.amount_minutes,
        grant.state,
        _json(list(grant.approvers)),
        grant.approvals_required,
        _json(list(grant.approvals)),
        _json(list(grant.rejections)),
        grant.requested_by,
        chain.timestamp_text(grant.requested_at),
        _time(grant.deadline),
        _time(grant.resolved_at),
        grant.number,
        grant.position,
    )


def _strings(text: str) -> tuple[str, ...]:
    return tuple(canonical.decode_trusted(text.encode("utf-8")))


def grant_of(row: Row) -> GrantRecord:
    deadline, resolved_at = row["deadline"], row["resolved_at"]
    return GrantRecord(
        grant_id=row["grant_id"],
        pool_account_id=row["pool_account_id"],
        member_account_id=row["member_account_id"],
        amount_minutes=row["amount_minutes"],
        state=row["state"],
        approvers=_strings(row["approvers"]),
        approvals_required=row["approvals_required"],
        approvals=_strings(row["approvals"]),
        rejections=_strings(row["rejections"]),
        requested_by=row["requested_by"],
        requested_at=datetime.fromisoformat(row["requested_at"]),
        deadline=None if deadline is None else datetime.fromisoformat(deadline),
        resolved_at=None if resolved_at is None else datetime.fromisoformat(resolved_at),
        number=row["number"],
        position=row["position"],
    )


def policy_of(row: Row) -> tuple[PoolPolicy, int, datetime]:
    """(policy, position, time) of a ledger_pools row."""
    policy = PoolPolicy.of_json(canonical.decode_trusted(row["policy"].encode("utf-8")))
    return policy, row["policy_position"], datetime.fromisoformat(row["policy_changed_at"])
