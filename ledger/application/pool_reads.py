"""Reads of pools (issue 11): a pool and its policy, its grant requests, and those awaiting someone.

Like every read, they come from the committed index tables (storage/pool_rows.py), never from
a writer. Each page is one bounded range scan of one index, in the order requests were made.
The requests awaiting an approver are found among the bank's open requests, checked row by
row on at most `list_rows_scanned_per_page_max` of them per page: a page may hold fewer
items than asked for, even none, and still have a next page.
"""

from __future__ import annotations

from collections.abc import Callable

from ledger.application import pages
from ledger.application.listing import ListPage
from ledger.domain import limits
from ledger.domain.bank import bank_uuid
from ledger.domain.commands import check_id
from ledger.domain.errors import InvalidInput, NotFound
from ledger.domain.pool_policy import APPROVER_PREFIXES
from ledger.domain.pools import PoolView, person
from ledger.domain.records import GrantRecord
from ledger.domain.views import AccountView, BankView
from ledger.storage import pool_rows
from ledger.storage.store import LedgerStore

GRANT_STATES = ("pending", "posted", "voided", "expired")


def check_approver(approver: str) -> None:
    prefix = next((p for p in APPROVER_PREFIXES if approver.startswith(p)), "")
    if not prefix:
        raise InvalidInput(
            "INVALID_APPROVER",
            "approver is member:<account id> or key:<API key id>",
            field="approver",
        )
    check_id("approver", approver[len(prefix) :])


class PoolReads:
    def __init__(
        self,
        store: LedgerStore,
        get_bank: Callable[[str], BankView],
        get_account: Callable[[str, str], AccountView],
    ) -> None:
        self._store = store
        self._get_bank = get_bank
        self._get_account = get_account
        table = store.dialect.table
        self._pools = table("ledger_pools")
        self._grants = table("ledger_pool_grants")

    def pool(self, bank_id: str, pool_account_id: str) -> PoolView:
        check_id("pool_account_id", pool_account_id)
        self._get_bank(bank_id)
        uuid = str(bank_uuid(bank_id))
        found = self._store.query(
            f"SELECT * FROM {self._pools} WHERE bank_uuid = ? AND account_id = ?",
            (uuid, pool_account_id),
        )
        if not found:
            raise NotFound(
                "POOL_NOT_FOUND",
                f"account {pool_account_id!r} is not a pool with a policy",
                field="pool_account_id",
                metadata={"account_id": pool_account_id},
            )
        # Written in the same transaction as the pool's row: it exists.
        account = self._get_account(bank_id, pool_account_id)
        policy, position, changed_at = pool_rows.policy_of(found[0])
        (open_row,) = self._store.query(
            "SELECT COUNT(*) AS open_count, COALESCE(SUM(amount_minutes), 0) AS open_minutes"
            f" FROM {self._grants} WHERE bank_uuid = ? AND pool_account_id = ?"
            f" AND {pool_rows.OPEN}",
            (uuid, pool_account_id),
        )
        return PoolView(
            account=account,
            policy=policy,
            policy_position=position,
            policy_changed_at=changed_at,
            open_grant_count=int(open_row["open_count"]),
            open_grant_minutes=int(open_row["open_minutes"]),
        )

    def grant(self, bank_id: str, grant_id: str) -> GrantRecord | None:
        """One grant request as committed (with its approvals, once decided too)."""
        found = self._store.query(
            f"SELECT * FROM {self._grants} WHERE bank_uuid = ? AND grant_id = ?",
            (str(bank_uuid(bank_id)), grant_id),
        )
        return pool_rows.grant_of(found[0]) if found else None

    def grant_requests(
        self,
        bank_id: str,
        pool_account_id: str,
        state: str | None,
        page_size: int,
        page_token: str,
    ) -> ListPage[GrantRecord]:
        """A pool's grant requests in the order they were made, of one state or all."""
        assert state is None or state in GRANT_STATES, state
        check_id("pool_account_id", pool_account_id)
        size = pages.page_size(page_size)
        kind = pages.bound_kind("g", pool_account_id, state)
        after = pages.decode_token(kind, page_token) or 0
        self.pool(bank_id, pool_account_id)  # the pool exists (and so does the bank)
        where = "bank_uuid = ? AND pool_account_id = ?"
        params: list[object] = [str(bank_uuid(bank_id)), pool_account_id]
        if state is not None:
            where += " AND state = ?"
            params.append(state)
        found = self._store.query(
            f"SELECT * FROM {self._grants} WHERE {where} AND number > ? ORDER BY number LIMIT ?",
            (*params, after, size + 1),
        )
        items = [pool_rows.grant_of(row) for row in found[:size]]
        more = len(found) > size
        return ListPage(items, pages.encode_token(kind, items[-1].number) if more else "", None)

    def awaiting(
        self, bank_id: str, approver: str, page_size: int, page_token: str
    ) -> ListPage[GrantRecord]:
        """Open requests that `approver` may decide and has not: named among their
        approvers, not theirs nor paying them, no decision of theirs yet."""
        check_approver(approver)
        size = pages.page_size(page_size)
        kind = pages.bound_kind("w", approver)
        after = pages.decode_token(kind, page_token) or 0
        self._get_bank(bank_id)
        scanned_max = limits.list_rows_scanned_per_page_max
        found = self._store.query(
            f"SELECT * FROM {self._grants} WHERE bank_uuid = ? AND {pool_rows.OPEN}"
            " AND number > ? ORDER BY number LIMIT ?",
            (str(bank_uuid(bank_id)), after, scanned_max),
        )
        items: list[GrantRecord] = []
        for index, row in enumerate(found):
            grant = pool_rows.grant_of(row)
            if _awaits(grant, approver):
                items.append(grant)
            if len(items) == size:
                more = index < len(found) - 1 or len(found) == scanned_max
                return ListPage(items, pages.encode_token(kind, grant.number) if more else "", None)
        last = found[-1]["number"] if len(found) == scanned_max else None
        return ListPage(items, "" if last is None else pages.encode_token(kind, last), None)


def _awaits(grant: GrantRecord, approver: str) -> bool:
    if approver not in grant.approvers or approver in (*grant.approvals, *grant.rejections):
        return False
    return approver not in (person(grant.requested_by), f"member:{grant.member_account_id}")
