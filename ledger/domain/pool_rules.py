"""The pool rules that ordinary transfers and holds meet: contributions, debits and grant holds.

A pool with a policy takes minutes only from the contributors it allows (a transfer, or a
pledge: a pending transfer into it), and pays out only through grants (pools.py), so that
its caps, floor and approvals cannot be gone around with CreateTransfer or PostPending.
When a grant's hold resolves (posted on its last approval, voided, or expired by the
ordinary expiry of holds), the pool's open request goes and, unless posted, its minutes go
back to the member's cap.
"""

from __future__ import annotations

from datetime import datetime

from ledger.domain.batch import Batch
from ledger.domain.errors import PreconditionFailed
from ledger.domain.pool_state import grant_record
from ledger.domain.state import Account, Hold


def check_transfer(batch: Batch, payer: Account, payee: Account) -> None:
    """A new ordinary transfer (or pledge) between these accounts respects their pools' rules."""
    if payer.kind == "pool" and batch.pool(payer.account_id) is not None:
        raise PreconditionFailed(
            "POOL_GRANT_REQUIRED",
            f"minutes leave pool {payer.account_id!r} only as grants (PoolService.RequestGrant)",
            metadata={"account_id": payer.account_id},
        )
    pool = batch.pool(payee.account_id) if payee.kind == "pool" else None
    if pool is None or pool.policy.contributors == "anyone":
        return
    if payer.account_id not in pool.policy.contributor_account_ids:
        raise PreconditionFailed(
            "CONTRIBUTOR_NOT_ALLOWED",
            f"account {payer.account_id!r} is not a contributor of pool {payee.account_id!r}",
            metadata={"account_id": payee.account_id, "contributor_account_id": payer.account_id},
        )


def check_not_grant(batch: Batch, hold: Hold) -> None:
    """A grant's hold is posted by its approvals and voided by rejection or cancellation."""
    pool = batch.pool(hold.payer_account_id)
    if pool is not None and hold.transfer_id in pool.grants:
        raise PreconditionFailed(
            "TRANSFER_IS_GRANT",
            f"transfer {hold.transfer_id!r} is a grant request of pool"
            f" {hold.payer_account_id!r}: approve, reject or cancel it with PoolService",
            metadata={"transfer_id": hold.transfer_id, "pool_account_id": hold.payer_account_id},
        )


def grant_released(
    batch: Batch, hold: Hold, status: str, version: int, timestamp: datetime
) -> None:
    """A hold resolved (used by the hold events' apply): if it was a grant's, settle the pool."""
    state = batch.pool(hold.payer_account_id)
    if state is None or hold.transfer_id not in state.grants:
        return
    pool = batch.pool_for_update(hold.payer_account_id)
    grant = pool.grants.pop(hold.transfer_id)
    if status != "posted":
        # The reservation against the member's cap is given back.
        pool.add_usage(grant.member_account_id, grant.period_day, -grant.amount_minutes)
    if batch.records is not None:
        batch.records.grant_changes[grant.grant_id] = grant_record(
            pool.account_id, grant, status, timestamp, version
        )
