"""The lists an app pages through, on the three stores: filters, inbox, totals, page tokens.

A history long enough that the list machinery has to work: Ann has some 2,600 transfers over
three hours, with a few pending, voided and reversed ones among the oldest, and one
gardening exchange buried under a thousand newer ones. Every page is a few bounded index
scans (ledger/storage/lists.py); a filter no index answers alone may give short pages, but
paging to the end always finds exactly the matching transfers, newest first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
from conftest import Clock

from ledger.application.ledger import Ledger
from ledger.application.listing import ListPage, TransferFilter
from ledger.application.verification import verify_bank
from ledger.domain import limits
from ledger.domain.commands import (
    ChangeAccountMetadata,
    ChangeLimits,
    ChangeStatus,
    CreateBank,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    ReverseTransfer,
    VoidPending,
)
from ledger.domain.errors import IdConflict, InvalidInput
from ledger.domain.views import TransferView
from ledger.storage.schema import time_mark_every

BANK = "riverside"


@dataclass
class History:
    ledger: Ledger
    clock: Clock
    # transfer ids by what they are, in the order recorded
    oldest: list[str]
    middle: list[str]
    newest: list[str]


def batch(ledger: Ledger, prefix: str, count: int, payer: str, payee: str) -> list[str]:
    """`count` one-minute transfers recorded together, as a front-end's batch would be."""
    ids = []
    for start in range(0, count, limits.transfers_per_batch_max):
        items = tuple(
            CreateTransfer(f"{prefix}-{n}", payer, payee, 1)
            for n in range(start, min(count, start + limits.transfers_per_batch_max))
        )
        ledger.execute(BANK, CreateTransfers(items))
        ids += [item.transfer_id for item in items]
    return ids


def long_history(ledger: Ledger, clock: Clock) -> History:
    ledger.create_bank(CreateBank(bank_id=BANK, name="Riverside"))
    for account_id in ("ann", "bob", "cat"):
        ledger.execute(BANK, OpenAccount(account_id, "member", lower_limit_minutes=-100_000))
    ledger.execute(BANK, OpenAccount("surgery", "organisation"))
    # Hour 0: a hold still pending, a voided one, an exchange later reversed, then 1,000 more.
    ledger.execute(BANK, CreateTransfer("held", "ann", "bob", 30, pending=True))
    ledger.execute(BANK, CreateTransfer("called-off", "cat", "ann", 20, pending=True))
    ledger.execute(BANK, VoidPending("void-1", "called-off", reason="not needed"))
    ledger.execute(BANK, CreateTransfer("mistake", "bob", "ann", 15))
    oldest = ["held", "called-off", "mistake", *batch(ledger, "a", 1000, "ann", "bob")]
    # Hour 1: the one gardening exchange.
    clock.advance(hours=1)
    ledger.execute(BANK, CreateTransfer("garden", "bob", "ann", 90, category="gardening"))
    # Hour 2: a thousand more; hour 3: six hundred, and the reversal of the mistake.
    clock.advance(hours=1)
    middle = ["garden", *batch(ledger, "b", 1000, "bob", "ann")]
    clock.advance(hours=1)
    newest = batch(ledger, "c", 600, "ann", "cat")
    ledger.execute(BANK, ReverseTransfer("mistake-undo", "mistake", reason="wrong member"))
    newest.append("mistake-undo")
    assert ledger.get_bank(BANK).transfer_count > 2 * time_mark_every
    return History(ledger, clock, oldest, middle, newest)


@pytest.fixture
def history(store_url: str, make_ledger: Callable[..., Ledger], clock: Clock) -> History:
    return long_history(make_ledger(store_url), clock)


def every_page(
    read: Callable[[str], ListPage[TransferView]],
) -> tuple[list[str], list[ListPage[TransferView]]]:
    """All the ids a list gives, paging to the end, and the pages."""
    found: list[str] = []
    seen: list[ListPage[TransferView]] = []
    token = ""
    while True:
        page = read(token)
        seen.append(page)
        found += [transfer.transfer_id for transfer in page.items]
        token = page.next_page_token
        if not token:
            return found, seen


def newest_first(*groups: list[str]) -> list[str]:
    return [transfer_id for group in reversed(groups) for transfer_id in reversed(group)]


# ----------------------------------------------------------------- an account's transfers


def test_an_accounts_transfers_by_state(history: History) -> None:
    lists = history.ledger.lists

    def state(name: str) -> ListPage[TransferView]:
        return lists.account_transfers(BANK, "ann", 10, "", TransferFilter(state=name))

    # Each state is answered by an index: one page, exact total, however deep in history.
    for name, expected in [
        ("pending", ["held"]),
        ("voided", ["called-off"]),
        ("reversed", ["mistake"]),
    ]:
        page = state(name)
        assert ([t.transfer_id for t in page.items], page.next_page_token) == (expected, "")
        assert page.total_size == 1
    assert state("expired").items == []
    # Posted (and standing) is most of them: the reversal included, the reversed one not.
    posted, _ = every_page(
        lambda token: lists.account_transfers(
            BANK, "ann", 1000, token, TransferFilter(state="posted")
        )
    )
    everything = newest_first(history.oldest, history.middle, history.newest)
    assert posted == [t for t in everything if t not in ("held", "called-off", "mistake")]


def test_a_rare_category_is_found_below_many_pages_of_others(history: History) -> None:
    lists = history.ledger.lists

    def read(token: str) -> ListPage[TransferView]:
        return lists.account_transfers(BANK, "ann", 10, token, TransferFilter(category="gardening"))

    found, seen = every_page(read)
    # Exactly the one gardening exchange; reaching it took bounded pages, some of them empty.
    assert found == ["garden"]
    assert any(not page.items and page.next_page_token for page in seen)
    rows_per_page = limits.list_rows_scanned_per_page_max
    assert len(seen) <= -(-2_700 // rows_per_page)  # Ann's 2,6xx rows, so many a page
    assert all(page.total_size is None for page in seen)  # checked row by row: not counted


def test_a_time_range(history: History) -> None:
    lists = history.ledger.lists
    start = history.ledger.get_bank(BANK).created_at
    hour = timedelta(hours=1)
    # Hours 1 and 2, for Ann and for the bank: the gardening exchange and the middle batch.
    window = TransferFilter(created_from=start + hour, created_before=start + 3 * hour)
    for read in (
        lambda token: lists.account_transfers(BANK, "ann", 300, token, window),
        lambda token: lists.bank_transfers(BANK, 300, token, window),
    ):
        found, _ = every_page(read)
        assert found == newest_first(history.middle)
    # From hour 3 on, in one category: nothing.
    late = TransferFilter(created_from=start + 3 * hour, category="gardening")
    assert every_page(lambda token: lists.bank_transfers(BANK, 50, token, late))[0] == []
    # An empty range is refused.
    with pytest.raises(InvalidInput) as info:
        lists.bank_transfers(BANK, 10, "", TransferFilter(created_from=start, created_before=start))
    assert (info.value.reason, info.value.field) == ("INVALID_TIME_RANGE", "filter.created_before")


def test_a_page_token_belongs_to_its_list_and_filter(history: History) -> None:
    lists = history.ledger.lists
    gardening = TransferFilter(category="gardening")
    token = lists.account_transfers(BANK, "ann", 10, "", gardening).next_page_token
    assert token
    # The same list with the same filter goes on; with another filter, or as another list,
    # the token is refused.
    lists.account_transfers(BANK, "ann", 10, token, gardening)
    refusals: list[Callable[[], object]] = [
        lambda: lists.account_transfers(BANK, "ann", 10, token, TransferFilter(state="posted")),
        lambda: lists.account_transfers(BANK, "ann", 10, token),
        lambda: lists.bank_transfers(BANK, 10, token, gardening),
        lambda: lists.pending_transfers(BANK, "ann", 10, token),
    ]
    for refused in refusals:
        with pytest.raises(InvalidInput) as info:
            refused()
        assert (info.value.reason, info.value.field) == ("INVALID_PAGE_TOKEN", "page_token")


# ----------------------------------------------------------------- inbox and bank-wide lists


def test_the_inbox_by_side(history: History) -> None:
    lists = history.ledger.lists
    assert [t.transfer_id for t in lists.pending_transfers(BANK, "ann", 10, "").items] == ["held"]
    assert lists.pending_transfers(BANK, "ann", 10, "", ("payee",)).items == []
    bobs = lists.pending_transfers(BANK, "bob", 10, "", ("payee",))
    assert ([t.transfer_id for t in bobs.items], bobs.total_size) == (["held"], 1)
    # New holds come first; they leave the inbox once voided.
    ledger = history.ledger
    ledger.execute(BANK, CreateTransfer("lesson", "cat", "ann", 60, pending=True))
    ledger.execute(BANK, CreateTransfer("repair", "ann", "surgery", 45, pending=True))
    both = lists.pending_transfers(BANK, "ann", 2, "")
    assert [t.transfer_id for t in both.items] == ["repair", "lesson"]
    assert both.total_size == 3
    rest = lists.pending_transfers(BANK, "ann", 2, both.next_page_token)
    assert ([t.transfer_id for t in rest.items], rest.next_page_token) == (["held"], "")
    ledger.execute(BANK, VoidPending("void-lesson", "lesson"))
    assert [t.transfer_id for t in lists.pending_transfers(BANK, "ann", 10, "").items] == [
        "repair",
        "held",
    ]


def test_the_banks_transfers(history: History) -> None:
    lists = history.ledger.lists
    transfer_count = history.ledger.get_bank(BANK).transfer_count
    found, seen = every_page(lambda token: lists.bank_transfers(BANK, 1000, token))
    assert found == newest_first(history.oldest, history.middle, history.newest)
    assert {page.total_size for page in seen} == {transfer_count}
    reversed_ = lists.bank_transfers(BANK, 10, "", TransferFilter(state="reversed"))
    assert ([t.transfer_id for t in reversed_.items], reversed_.total_size) == (["mistake"], 1)
    assert [
        t.transfer_id
        for t in lists.bank_transfers(BANK, 10, "", TransferFilter(category="gardening")).items
    ] in ([], ["garden"])  # a short page is allowed; paging on finds it
    assert every_page(
        lambda token: lists.bank_transfers(BANK, 10, token, TransferFilter(category="gardening"))
    )[0] == ["garden"]


# ----------------------------------------------------------------- accounts and banks


def test_accounts_by_kind_and_status(history: History) -> None:
    ledger = history.ledger
    lists = ledger.lists
    ledger.execute(BANK, ChangeStatus("freeze-cat", "cat", "freeze"))
    page = lists.accounts(BANK, 10, "", kind="member")
    assert ([a.account_id for a in page.items], page.total_size) == (["ann", "bob", "cat"], 3)
    page = lists.accounts(BANK, 10, "", kind="member", status="open")
    assert ([a.account_id for a in page.items], page.total_size) == (["ann", "bob"], 2)
    page = lists.accounts(BANK, 10, "", status="frozen")
    assert [a.account_id for a in page.items] == ["cat"]
    page = lists.accounts(BANK, 10, "", kind="organisation")
    assert [a.account_id for a in page.items] == ["surgery"]
    assert lists.accounts(BANK, 10, "").total_size == 4
    first = lists.accounts(BANK, 1, "", kind="member")
    second = lists.accounts(BANK, 1, first.next_page_token, kind="member")
    assert [a.account_id for a in second.items] == ["bob"]
    with pytest.raises(InvalidInput):
        lists.accounts(BANK, 1, first.next_page_token, kind="pool")


def test_the_deployments_banks(store_url: str, make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(store_url)
    for bank_id in ("seaside", "hillside", "riverside"):
        ledger.create_bank(CreateBank(bank_id=bank_id, name=bank_id.title()))
    first = ledger.lists.banks(2, "")
    assert ([b.bank_id for b in first.items], first.total_size) == (["hillside", "riverside"], 3)
    rest = ledger.lists.banks(2, first.next_page_token)
    assert ([b.bank_id for b in rest.items], rest.next_page_token) == (["seaside"], "")
    with pytest.raises(InvalidInput) as info:
        ledger.lists.banks(2, "bogus!")
    assert info.value.reason == "INVALID_PAGE_TOKEN"


# ----------------------------------------------------------------- metadata and limits, kept


def test_metadata_and_masked_limits_survive_a_restart(
    durable_store_url: str, make_ledger: Callable[..., Ledger]
) -> None:
    ledger = make_ledger(durable_store_url)
    ledger.create_bank(CreateBank(bank_id=BANK, name="Riverside"))
    ledger.execute(BANK, OpenAccount("ann", "member", lower_limit_minutes=-600))
    label = ChangeAccountMetadata("m1", "ann", label="member-17", tags=(("area", "north"),))
    ledger.execute(BANK, label)
    retag = ChangeAccountMetadata("m2", "ann", tags=(("area", "south"), ("team", "garden")))
    ledger.execute(BANK, retag)
    cap = ChangeLimits("l1", "ann", upper_limit_minutes=120, update_mask=("upper_limit_minutes",))
    ledger.execute(BANK, cap)
    ledger.close()
    # Another process opens the store: the label, the tags and the limits are as set ...
    again = make_ledger(durable_store_url)
    ann = again.get_account(BANK, "ann")
    assert (ann.label, ann.tags) == ("member-17", (("area", "south"), ("team", "garden")))
    assert (ann.lower_limit_minutes, ann.upper_limit_minutes) == (-600, 120)
    # ... the same requests are answered as retries, other content under their ids refused ...
    assert again.execute(BANK, cap).upper_limit_minutes == 120
    assert again.execute(BANK, retag).label == ""  # the writer's view; the Ledger reads it back
    with pytest.raises(IdConflict) as info:
        again.execute(BANK, ChangeAccountMetadata("m1", "ann", label="someone"))
    assert info.value.reason == "EXISTS_WITH_DIFFERENT_LABEL"
    # ... and the history verifies from its first event.
    assert verify_bank(again.store, BANK).ok
