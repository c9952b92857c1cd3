"""Reads of the "accounts" projection in plain SQL: an account's summary and its statement.

Both are primary-key reads. A statement page is one index range scan on
(bank_id, account_id, seq), newest first, however long the statement is: the page token
holds the seq below which the next page starts (keyset pagination), never an offset.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.application import pages
from ledger.domain.views import available_minutes
from projections.db import ViewDatabase

# A statement's seq counts its entries from 1; no real statement comes near this bound,
# which stays inside a signed 64-bit integer so the first page uses the same SQL.
statement_seq_max = 2**62
_statement_token_kind = "s"

_SUMMARY_SQL = (
    "SELECT bank_id, account_id, kind, status, lower_limit_minutes, upper_limit_minutes,"
    " balance_minutes, pending_in_minutes, pending_out_minutes, given_minutes,"
    " received_minutes, exchanges, entries, opened_at, last_activity_at, position"
    " FROM view_accounts WHERE bank_id = ? AND account_id = ?"
)
_STATEMENT_SQL = (
    "SELECT seq, transfer_id, kind, counterparty_account_id, amount_minutes, balance_minutes,"
    " memo, category, service_date, recorded_at, position"
    " FROM view_statement_entries WHERE bank_id = ? AND account_id = ? AND seq < ?"
    " ORDER BY seq DESC LIMIT ?"
)


@dataclass(frozen=True, slots=True)
class AccountSummary:
    """One account as the projection last saw it; amounts in minutes."""

    bank_id: str
    account_id: str
    kind: str  # member, pool, clearing or system
    status: str  # open, frozen or closed
    lower_limit_minutes: int
    upper_limit_minutes: int | None  # None: no cap
    balance_minutes: int  # posted minutes received minus posted minutes paid
    pending_in_minutes: int  # held by pending transfers this account receives
    pending_out_minutes: int  # held by pending transfers this account pays
    given_minutes: int  # posted minutes received for help given, net of reversals
    received_minutes: int  # posted minutes paid for help received, net of reversals
    exchanges: int  # posted exchanges taken part in, net of reversals
    entries: int  # statement entries: the seq of the newest one
    opened_at: str  # ISO 8601, UTC, microseconds
    last_activity_at: str  # ISO 8601, UTC, microseconds
    position: int  # the bank's event that last changed this account

    @property
    def available_minutes(self) -> int:
        """How many more minutes the account may pay now (0 after its limit was raised)."""
        return available_minutes(
            self.balance_minutes, self.pending_out_minutes, self.lower_limit_minutes
        )


@dataclass(frozen=True, slots=True)
class StatementEntry:
    """One posted movement on an account, with the balance right after it."""

    seq: int  # 1 for the account's first entry, then 2, 3...
    transfer_id: str
    kind: str  # transfer (posted at once), posted (a pending transfer posted) or reversal
    counterparty_account_id: str
    amount_minutes: int  # signed: > 0 received, < 0 paid
    balance_minutes: int  # the account's balance after this entry
    memo: str  # for a reversal: its reason
    category: str
    service_date: str  # YYYY-MM-DD or ""
    recorded_at: str  # ISO 8601, UTC, microseconds
    position: int  # the bank's event that recorded it


def account_summary(views: ViewDatabase, bank_id: str, account_id: str) -> AccountSummary | None:
    """The account's summary, or None if the projection has not seen it opened."""
    rows = views.query(_SUMMARY_SQL, (bank_id, account_id))
    if not rows:
        return None
    (row,) = rows
    return AccountSummary(*row)


def statement_page(
    views: ViewDatabase, bank_id: str, account_id: str, page_size: int, page_token: str
) -> tuple[list[StatementEntry], str]:
    """One page of the account's statement, newest first, and the next page's token.

    An unknown account has an empty statement: check it exists with account_summary().
    Entries only ever append at the top, so paging on never repeats or skips an entry.
    """
    size, below = statement_cursor(page_size, page_token)
    # One row more than the page tells whether another page follows.
    rows = views.query(_STATEMENT_SQL, (bank_id, account_id, below, size + 1))
    entries = [StatementEntry(*row) for row in rows[:size]]
    more = len(rows) > size
    next_token = pages.encode_token(_statement_token_kind, entries[-1].seq) if more else ""
    return entries, next_token


def statement_cursor(page_size: int, page_token: str) -> tuple[int, int]:
    """(entries in the page, seq the page starts below); InvalidInput for a bad size or token."""
    size = pages.page_size(page_size)
    below = pages.decode_token(_statement_token_kind, page_token)
    if below is not None and below > statement_seq_max:
        raise pages.bad_token()
    return size, statement_seq_max if below is None else below
