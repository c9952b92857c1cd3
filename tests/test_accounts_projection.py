"""The accounts projection on every store: its rows equal what the raw events say.

A Ledger is driven through real commands (immediate and pending transfers, partial posts,
voids, expiries, reversals, linked and independent batches, limit and status changes) in
several banks. The projection is then built by a ProjectionRunner, and each account's row
is compared with the balances the independent verifier recomputes from the stored events,
with the Ledger's own account views, and with given/received/exchange figures computed here
from the verifier's transfers. Statements must number their entries 1..n per account and
carry a running balance that ends at the account's balance.

The helpers at the top (`snapshot`, `check_views`, `closing_views`, ...) are shared with
test_projection_runner.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import Clock, MakeLedger

from ledger.application import loading
from ledger.application.ledger import Ledger
from ledger.domain.bank import bank_uuid
from ledger.domain.commands import (
    BankCommand,
    ChangeLimits,
    ChangeStatus,
    CreateBank,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    PostPending,
    ReverseTransfer,
    VoidPending,
)
from ledger.domain.errors import DomainError
from ledger.domain.views import AccountView, BatchItemResult
from ledger.verifier import Report, TransferTotals, verify
from projections.accounts import AccountsProjection
from projections.db import Row, ViewDatabase, open_views
from projections.runner import ProjectionRunner

# ----------------------------------------------------------------- shared helpers

# Every table the accounts projection writes, with the key that orders its rows.
VIEW_TABLES = {
    "view_banks": "bank_uuid",
    "view_accounts": "bank_id, account_id",
    "view_statement_entries": "bank_id, account_id, seq",
    "view_open_holds": "bank_id, transfer_id",
}
# What each kind of transfer is called on a statement line.
ENTRY_KINDS = {"immediate": "transfer", "pending": "posted", "reversal": "reversal"}

OpenViews = Callable[[str], ViewDatabase]


def closing_views() -> Iterator[OpenViews]:
    """Body of the `views_opener` fixture: opens view databases, closes them at the end."""
    opened: list[ViewDatabase] = []

    def open_(url: str) -> ViewDatabase:
        views = open_views(url)
        opened.append(views)
        return views

    yield open_
    while opened:
        opened.pop().close()


@pytest.fixture
def views_opener() -> Iterator[OpenViews]:
    """Open view databases on a URL; each is closed when the test ends."""
    yield from closing_views()


def snapshot(views: ViewDatabase) -> dict[str, list[Row]]:
    """Every row the accounts projection owns, its position and bank versions, in key order."""
    rows = {
        table: views.query(f"SELECT * FROM {table} ORDER BY {key}")
        for table, key in VIEW_TABLES.items()
    }
    rows["projection_positions"] = views.query(
        "SELECT position FROM projection_positions WHERE projection = ?", ("accounts",)
    )
    rows["projection_bank_versions"] = views.query(
        "SELECT bank_uuid, version FROM projection_bank_versions WHERE projection = ?"
        " ORDER BY bank_uuid",
        ("accounts",),
    )
    return rows


def stored_report(ledger: Ledger, bank_id: str) -> Report:
    """The independent verifier's reading of the bank's raw stored events."""
    uuid = str(bank_uuid(bank_id))
    rows = [
        (stored, chain_hash) for _, stored, chain_hash in loading.stored_rows(ledger.store, uuid)
    ]
    report = verify(rows, uuid)
    assert report.ok, report.violations
    return report


@dataclass
class ExpectedAccount:
    """What an account's row and statement must show, computed from the verifier's transfers."""

    given_minutes: int = 0
    received_minutes: int = 0
    exchanges: int = 0
    # (transfer_id, kind, signed amount) of every statement line, in any order.
    lines: Counter[tuple[str, str, int]] = field(default_factory=Counter)


def expected_accounts(report: Report) -> dict[str, ExpectedAccount]:
    expected = {account_id: ExpectedAccount() for account_id in report.accounts}
    for transfer_id, transfer in report.transfers.items():
        if transfer.status != "posted":
            continue  # still pending, voided or expired: nothing moved
        _expect_movement(expected, transfer_id, transfer)
    return expected


def _expect_movement(
    expected: dict[str, ExpectedAccount], transfer_id: str, transfer: TransferTotals
) -> None:
    amount = transfer.posted_amount_minutes
    payer = expected[transfer.payer_account_id]
    payee = expected[transfer.payee_account_id]
    kind = ENTRY_KINDS[transfer.kind]
    payer.lines[(transfer_id, kind, -amount)] += 1
    payee.lines[(transfer_id, kind, amount)] += 1
    if transfer.kind == "reversal":
        # A reversal takes back the original exchange: its payer is the original payee.
        payer.given_minutes -= amount
        payee.received_minutes -= amount
        payer.exchanges -= 1
        payee.exchanges -= 1
    else:
        # The payee gave the help; the payer received it.
        payee.given_minutes += amount
        payer.received_minutes += amount
        payer.exchanges += 1
        payee.exchanges += 1


_ACCOUNT_QUERY = (
    "SELECT account_id, kind, status, lower_limit_minutes, upper_limit_minutes,"
    " balance_minutes, pending_in_minutes, pending_out_minutes, given_minutes,"
    " received_minutes, exchanges, entries, position, opened_at"
    " FROM view_accounts WHERE bank_id = ? ORDER BY account_id"
)


def check_views(ledger: Ledger, views: ViewDatabase, bank_ids: list[str]) -> None:
    """Every bank's view rows agree with the raw events, the verifier and the Ledger."""
    for bank_id in bank_ids:
        report = stored_report(ledger, bank_id)
        expected = expected_accounts(report)
        rows = {row[0]: row for row in views.query(_ACCOUNT_QUERY, (bank_id,))}
        # The same accounts, and the bank's balances sum to zero in the view too.
        assert sorted(rows) == sorted(report.accounts)
        assert sum(row[5] for row in rows.values()) == 0
        for account_id, row in rows.items():
            _check_account(
                row,
                report,
                expected[account_id],
                ledger.get_account(bank_id, account_id),
            )
            _check_statement(views, bank_id, account_id, row, expected[account_id])
        # The open holds are exactly the transfers still pending.
        holds = views.query(
            "SELECT transfer_id, amount_minutes FROM view_open_holds WHERE bank_id = ?",
            (bank_id,),
        )
        assert sorted(holds) == sorted(
            (tid, t.amount_minutes) for tid, t in report.transfers.items() if t.status == "pending"
        )
        # The view has applied the bank's whole history.
        versions = views.query(
            "SELECT version FROM projection_bank_versions WHERE projection = ? AND bank_uuid = ?",
            ("accounts", str(bank_uuid(bank_id))),
        )
        assert versions == [(report.position,)]
        assert report.position == ledger.get_bank(bank_id).position


def _check_account(row: Row, report: Report, expected: ExpectedAccount, live: AccountView) -> None:
    (account_id, kind, status, lower, upper, balance, pending_in, pending_out) = row[:8]
    given, received, exchanges, _entries, position, opened_at = row[8:]
    totals = report.accounts[account_id]
    # Against the verifier: recomputed from the raw events alone.
    assert (kind, status, lower, upper) == (
        totals.kind,
        totals.status,
        totals.lower_limit_minutes,
        totals.upper_limit_minutes,
    ), account_id
    assert (balance, pending_in, pending_out) == (
        totals.balance_minutes,
        totals.pending_credit_minutes,
        totals.pending_debit_minutes,
    ), account_id
    # Against the figures computed in this test from the verifier's transfers.
    assert (given, received, exchanges) == (
        expected.given_minutes,
        expected.received_minutes,
        expected.exchanges,
    ), account_id
    # Against the Ledger's own (write-side) view of the account.
    assert (balance, pending_in, pending_out, status, lower, upper, position) == (
        live.balance_minutes,
        live.pending_credit_minutes,
        live.pending_debit_minutes,
        live.status,
        live.lower_limit_minutes,
        live.upper_limit_minutes,
        live.position,
    ), account_id
    assert opened_at == live.opened_at.isoformat(timespec="microseconds")


def _check_statement(
    views: ViewDatabase, bank_id: str, account_id: str, row: Row, expected: ExpectedAccount
) -> None:
    lines = views.query(
        "SELECT seq, transfer_id, kind, amount_minutes, balance_minutes"
        " FROM view_statement_entries WHERE bank_id = ? AND account_id = ? ORDER BY seq",
        (bank_id, account_id),
    )
    balance, entries = row[5], row[11]
    # Numbered 1..n without a gap, n is the row's entry count.
    assert [line[0] for line in lines] == list(range(1, len(lines) + 1)), account_id
    assert entries == len(lines)
    # Each line's balance is the running sum of the amounts; the last one is the balance.
    running = 0
    for line in lines:
        running += line[3]
        assert line[4] == running, (account_id, line)
    assert running == balance
    # One line per posted movement, with the right transfer, kind and signed amount.
    assert Counter((line[1], line[2], line[3]) for line in lines) == expected.lines, account_id


def build(ledger: Ledger, views: ViewDatabase, *, batch_max: int = 1_000) -> ProjectionRunner:
    runner = ProjectionRunner(ledger.store, views, AccountsProjection(), batch_max=batch_max)
    runner.run_until_caught_up()
    return runner


def do(ledger: Ledger, bank_id: str, command: BankCommand) -> Any:
    return ledger.execute(bank_id, command)


def refused(ledger: Ledger, bank_id: str, command: BankCommand) -> str:
    """Run a command that must be refused; returns the reason."""
    with pytest.raises(DomainError) as caught:
        ledger.execute(bank_id, command)
    return caught.value.reason


# ----------------------------------------------------------------- the story


def transfer(
    transfer_id: str, payer: str, payee: str, amount: int, **fields: Any
) -> CreateTransfer:
    return CreateTransfer(
        transfer_id=transfer_id,
        payer_account_id=payer,
        payee_account_id=payee,
        amount_minutes=amount,
        **fields,
    )


def open_bank(ledger: Ledger, bank_id: str) -> None:
    ledger.create_bank(CreateBank(bank_id=bank_id, name=f"Time bank {bank_id}"))
    for account_id in ("ann", "bob", "cat", "dan", "eve"):
        do(
            ledger,
            bank_id,
            OpenAccount(account_id=account_id, kind="member", lower_limit_minutes=-600),
        )
    do(
        ledger,
        bank_id,
        OpenAccount(
            account_id="pool", kind="pool", lower_limit_minutes=0, upper_limit_minutes=5_000
        ),
    )


def first_phase(ledger: Ledger, bank_id: str, k: int) -> None:
    """Immediate transfers and four holds: one to post in part, one to void, one to expire."""
    do(ledger, bank_id, transfer("t1", "ann", "bob", 60 * k))
    do(
        ledger,
        bank_id,
        transfer(
            "t2",
            "bob",
            "cat",
            30 * k,
            memo="garden",
            category="gardening",
            service_date="2025-02-28",
        ),
    )
    do(ledger, bank_id, transfer("p1", "cat", "ann", 90 * k, pending=True))
    do(ledger, bank_id, transfer("p2", "ann", "pool", 120 * k, pending=True, timeout_seconds=3_600))
    do(ledger, bank_id, transfer("p3", "bob", "ann", 45 * k, pending=True, timeout_seconds=60))
    do(ledger, bank_id, transfer("p4", "cat", "bob", 20 * k, pending=True))


def second_phase(ledger: Ledger, bank_id: str, k: int) -> None:
    """Posts, a void, reversals, batches, limit and status changes; p3 has expired by now."""
    do(ledger, bank_id, PostPending(request_id="post-p1", transfer_id="p1", amount_minutes=40 * k))
    do(ledger, bank_id, VoidPending(request_id="void-p4", transfer_id="p4", reason="not done"))
    do(ledger, bank_id, ReverseTransfer(transfer_id="r1", reverses_transfer_id="t1", reason="typo"))
    assert ledger.get_transfer(bank_id, "p3").status == "expired"
    # Reversing a partly posted hold moves back what was posted.
    do(ledger, bank_id, ReverseTransfer(transfer_id="r2", reverses_transfer_id="p1", reason="dup"))
    # A linked batch that holds, and one refused as a whole (b5 exceeds cat's limit).
    linked = CreateTransfers(
        items=(
            transfer("b1", "ann", "cat", 10 * k),
            transfer("b2", "cat", "bob", 15 * k),
            transfer("b3", "bob", "ann", 5 * k, pending=True),
        ),
        linked=True,
    )
    assert all(r.error is None for r in do(ledger, bank_id, linked))
    refused_batch = CreateTransfers(
        items=(transfer("b4", "ann", "cat", 1), transfer("b5", "cat", "bob", 100_000)),
        linked=True,
    )
    results: list[BatchItemResult] = do(ledger, bank_id, refused_batch)
    assert [r.error.reason if r.error else "" for r in results] == [
        "LINKED_EVENT_FAILED",
        "EXCEEDS_LOWER_LIMIT",
    ]
    assert refused(ledger, bank_id, PostPending(request_id="x", transfer_id="b4")) == (
        "TRANSFER_NOT_FOUND"
    )
    # An independent batch: the middle item names no account, its neighbours stand.
    independent = CreateTransfers(
        items=(
            transfer("i1", "dan", "eve", 7 * k),
            transfer("i2", "dan", "nobody", 7),
            transfer("i3", "eve", "pool", 11 * k),
        )
    )
    assert [r.error is None for r in do(ledger, bank_id, independent)] == [True, False, True]
    # Limits change (bob's lower limit goes above his balance: allowed, blocks further debits).
    do(
        ledger,
        bank_id,
        ChangeLimits(
            request_id="lim-ann",
            account_id="ann",
            lower_limit_minutes=-1_000,
            upper_limit_minutes=2_000,
        ),
    )
    do(ledger, bank_id, ChangeLimits(request_id="lim-bob", account_id="bob", lower_limit_minutes=0))
    # Freeze and unfreeze eve; dan pays back to zero and is closed.
    do(ledger, bank_id, ChangeStatus(request_id="frz-eve", account_id="eve", action="freeze"))
    assert refused(ledger, bank_id, transfer("x1", "eve", "ann", 1)) == "ACCOUNT_FROZEN"
    do(ledger, bank_id, ChangeStatus(request_id="unf-eve", account_id="eve", action="unfreeze"))
    do(ledger, bank_id, transfer("t3", "eve", "dan", 7 * k))
    do(ledger, bank_id, ChangeStatus(request_id="close-dan", account_id="dan", action="close"))
    # The long hold is posted in full; one more hold stays open to the end.
    do(ledger, bank_id, PostPending(request_id="post-p2", transfer_id="p2"))
    do(ledger, bank_id, transfer("p5", "eve", "cat", 25 * k, pending=True))


BANKS = {"north": 1, "south": 2, "east": 3}


@pytest.mark.parametrize("batch_max", [1, 7, 1_000])
def test_views_equal_the_events_on_every_store(
    store_url: str,
    make_ledger: MakeLedger,
    clock: Clock,
    views_opener: OpenViews,
    batch_max: int,
) -> None:
    ledger = make_ledger(store_url)
    views = views_opener(store_url)
    for bank_id in BANKS:
        open_bank(ledger, bank_id)
    for bank_id, k in BANKS.items():
        first_phase(ledger, bank_id, k)
    # Project what is there so far: holds opened now are released by later batches.
    runner = build(ledger, views, batch_max=batch_max)
    check_views(ledger, views, list(BANKS))
    # Time passes beyond p3's deadline; the next command in each bank expires it first.
    clock.advance(seconds=61)
    for bank_id, k in BANKS.items():
        second_phase(ledger, bank_id, k)
    runner.run_until_caught_up()
    check_views(ledger, views, list(BANKS))
    # Nothing was left behind: the runner is at the head of the log.
    assert runner.lag_events() == 0
    assert runner.position == runner.stored_position()


def test_one_accounts_figures_by_hand(
    store_url: str, make_ledger: MakeLedger, views_opener: OpenViews
) -> None:
    ledger = make_ledger(store_url)
    views = views_opener(store_url)
    open_bank(ledger, "solo")
    # ann helps bob for an hour; bob helps ann for half an hour, which is then reversed.
    do(ledger, "solo", transfer("a", "bob", "ann", 60, memo="shopping"))
    do(ledger, "solo", transfer("b", "ann", "bob", 30))
    do(ledger, "solo", ReverseTransfer(transfer_id="rb", reverses_transfer_id="b", reason="no"))
    # A hold of 20 minutes on ann's account for cat, not yet posted.
    do(ledger, "solo", transfer("h", "ann", "cat", 20, pending=True))
    build(ledger, views)

    row = views.query(
        "SELECT balance_minutes, pending_in_minutes, pending_out_minutes, given_minutes,"
        " received_minutes, exchanges, entries FROM view_accounts"
        " WHERE bank_id = ? AND account_id = ?",
        ("solo", "ann"),
    )
    # Balance 60; 20 out on hold; gave 60 (the 30 received was taken back); one exchange.
    assert row == [(60, 0, 20, 60, 0, 1, 3)]
    lines = views.query(
        "SELECT seq, transfer_id, kind, counterparty_account_id, amount_minutes,"
        " balance_minutes, memo FROM view_statement_entries"
        " WHERE bank_id = ? AND account_id = ? ORDER BY seq DESC",
        ("solo", "ann"),
    )
    assert lines == [
        (3, "rb", "reversal", "bob", 30, 60, "no"),
        (2, "b", "transfer", "bob", -30, 30, ""),
        (1, "a", "transfer", "bob", 60, 60, "shopping"),
    ]
    check_views(ledger, views, ["solo"])


def test_a_batch_touching_many_stored_accounts(
    store_url: str, make_ledger: MakeLedger, views_opener: OpenViews
) -> None:
    ledger = make_ledger(store_url)
    views = views_opener(store_url)
    ledger.create_bank(CreateBank(bank_id="big", name="A big bank"))
    members = [f"m{n}" for n in range(1_200)]
    for member in members:
        do(ledger, "big", OpenAccount(account_id=member, kind="member", lower_limit_minutes=-60))
    # The accounts are stored; one later batch then touches every one of them at once
    # (more than one lookup's worth of keys), with holds opened and released across batches.
    runner = build(ledger, views)
    for start in range(0, len(members), 600):
        chunk = members[start : start + 600]
        items = tuple(
            transfer(f"t{start + i}", payer, chunk[i - 1], 10, pending=i % 3 == 0)
            for i, payer in enumerate(chunk)
        )
        assert all(r.error is None for r in do(ledger, "big", CreateTransfers(items=items)))
    runner.run_until_caught_up()
    for n in range(0, len(members), 3):
        do(ledger, "big", VoidPending(request_id=f"v{n}", transfer_id=f"t{n}"))
    runner.run_until_caught_up()
    check_views(ledger, views, ["big"])
