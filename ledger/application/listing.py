"""The lists an app pages through: accounts by kind and status, an account's transfers with
filters, its inbox of pending transfers, a bank's transfers, and the deployment's banks.

Each page reads the committed index tables (storage/lists.py): a few bounded index scans,
whatever the history's length. A page token is bound to the list and its filter; reusing
it with another filter is INVALID_PAGE_TOKEN (AIP-158). `total_size` is the exact number of
items when it is cheap to know: a kept count (a bank's accounts or transfers), or on a list's
first page a bounded count of its index (at most list_total_size_counted_max entries, no
filter checked row by row); else None. Who may read a member's lists is the Ledger's
check (check_statement_reader); this module only reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from ledger.application import pages
from ledger.domain import limits
from ledger.domain.bank import bank_uuid
from ledger.domain.commands import check_id, check_text
from ledger.domain.errors import InvalidInput, NotFound
from ledger.domain.views import AccountView, BankView, TransferView
from ledger.storage.lists import ListReads, TransferQuery, transfer_states
from ledger.storage.store import LedgerStore

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ListPage(Generic[T]):
    items: list[T]
    next_page_token: str  # "" on the last page
    total_size: int | None  # exact, or None when it is not cheap to know


@dataclass(frozen=True, slots=True)
class TransferFilter:
    """What an account's or a bank's transfers are filtered by; None: not filtered."""

    state: str | None = None  # pending, posted (and not reversed), voided, expired, reversed
    category: str | None = None  # exact; "" for transfers recorded without one
    created_from: datetime | None = None  # recorded at or after
    created_before: datetime | None = None  # recorded before

    def validate(self) -> None:
        assert self.state is None or self.state in transfer_states, self.state
        if self.category is not None:
            check_text("filter.category", self.category, limits.category_length_max)
        if (
            self.created_from is not None
            and self.created_before is not None
            and self.created_from >= self.created_before
        ):
            raise InvalidInput(
                "INVALID_TIME_RANGE",
                "filter.created_from must be before filter.created_before",
                field="filter.created_before",
            )


PENDING_SIDES = ("payer", "payee")
# Refuses a caller who may not read the list (member consent), raising a DomainError.
ReaderCheck = Callable[[], None]


class Listing:
    """The lists of every bank in one store."""

    def __init__(self, store: LedgerStore, get_bank: Callable[[str], BankView]) -> None:
        self._reads = ListReads(store)
        self._get_bank = get_bank

    # ----------------------------------------------------------------- accounts

    def account(self, bank_id: str, account_id: str) -> AccountView | None:
        """One account with its label and tags, or None."""
        return self._reads.account(str(bank_uuid(bank_id)), account_id)

    def accounts(
        self,
        bank_id: str,
        page_size: int,
        page_token: str,
        *,
        kind: str | None = None,
        status: str | None = None,
    ) -> ListPage[AccountView]:
        """Accounts in the order they were opened, of one kind and/or status."""
        check_id("bank_id", bank_id)
        size = pages.page_size(page_size)
        token_kind = pages.bound_kind("a", kind, status)
        after = pages.decode_token(token_kind, page_token) or 0
        bank = self._get_bank(bank_id)
        if after > bank.account_count:
            raise pages.bad_token()  # no page of this list ends past its end
        page = self._reads.accounts_page(
            str(bank_uuid(bank_id)),
            kind=kind,
            status=status,
            after_number=after,
            size=size,
            account_count=bank.account_count,
            count=not page_token,
        )
        return _page(page.items, token_kind, page.next_number, page.total_size)

    # ----------------------------------------------------------------- transfers

    def account_transfers(
        self,
        bank_id: str,
        account_id: str,
        page_size: int,
        page_token: str,
        transfer_filter: TransferFilter | None = None,
        check_reader: ReaderCheck | None = None,
    ) -> ListPage[TransferView]:
        """The transfers an account paid or received, newest first, filtered.
        `check_reader` runs once the request is known to be valid, before anything is read."""
        found = transfer_filter or TransferFilter()
        found.validate()
        query = TransferQuery(
            account_id=account_id,
            state=found.state,
            category=found.category,
            created_from=found.created_from,
            created_before=found.created_before,
        )
        return self._transfers(bank_id, query, "t", found, page_size, page_token, check_reader)

    def pending_transfers(
        self,
        bank_id: str,
        account_id: str,
        page_size: int,
        page_token: str,
        sides: tuple[str, ...] = PENDING_SIDES,
        check_reader: ReaderCheck | None = None,
    ) -> ListPage[TransferView]:
        """The account's pending transfers, as payer and/or payee, newest first."""
        query = TransferQuery(account_id=account_id, sides=sides, state="pending")
        return self._transfers(bank_id, query, "p", sides, page_size, page_token, check_reader)

    def bank_transfers(
        self,
        bank_id: str,
        page_size: int,
        page_token: str,
        transfer_filter: TransferFilter | None = None,
    ) -> ListPage[TransferView]:
        """Every transfer of the bank, newest first, filtered."""
        found = transfer_filter or TransferFilter()
        found.validate()
        query = TransferQuery(
            state=found.state,
            category=found.category,
            created_from=found.created_from,
            created_before=found.created_before,
        )
        return self._transfers(bank_id, query, "x", found, page_size, page_token)

    def _transfers(
        self,
        bank_id: str,
        query: TransferQuery,
        kind: str,
        binding: object,
        page_size: int,
        page_token: str,
        check_reader: ReaderCheck | None = None,
    ) -> ListPage[TransferView]:
        check_id("bank_id", bank_id)
        if query.account_id is not None:
            check_id("account_id", query.account_id)
        size = pages.page_size(page_size)
        unfiltered = binding in (TransferFilter(), PENDING_SIDES)
        token_kind = kind if unfiltered else pages.bound_kind(kind, binding)
        before = pages.decode_token(token_kind, page_token)
        if check_reader is not None:
            check_reader()
        # A bank's whole list counts with the bank's own count; others count on their first
        # page only (a bounded count of the index), deeper pages need not pay for it.
        whole_bank = query == TransferQuery()
        transfer_count = self._get_bank(bank_id).transfer_count if whole_bank else None
        page = self._reads.transfers_page(
            str(bank_uuid(bank_id)),
            query,
            before_number=before,
            size=size,
            transfer_count=transfer_count,
            count=not page_token,
        )
        if not page.items:
            # Rows exist only for a bank and an account that do; an empty page checks them.
            self._get_bank(bank_id)
            if query.account_id is not None and self.account(bank_id, query.account_id) is None:
                raise account_not_found(query.account_id)
        return _page(page.items, token_kind, page.next_number, page.total_size)

    # ----------------------------------------------------------------- banks

    def banks(self, page_size: int, page_token: str) -> ListPage[BankView]:
        """Every bank of the deployment, by bank id (the operator's list)."""
        size = pages.page_size(page_size)
        after = pages.decode_text_token("b", page_token) or ""
        items, more, total = self._reads.banks_page(after, size)
        token = pages.encode_text_token("b", items[-1].bank_id) if more else ""
        return ListPage(items, token, total)


def _page(items: list[T], kind: str, next_number: int | None, total: int | None) -> ListPage[T]:
    token = "" if next_number is None else pages.encode_token(kind, next_number)
    return ListPage(items, token, total)


def account_not_found(account_id: str) -> NotFound:
    return NotFound(
        "ACCOUNT_NOT_FOUND",
        f"account {account_id!r} does not exist in this bank",
        field="account_id",
        metadata={"account_id": account_id},
    )
