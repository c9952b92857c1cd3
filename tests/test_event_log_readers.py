"""A reader tailing the event log never misses or reorders a committed event.

Several banks are written at once, each by its own writer, so their transactions overlap.
Commits are delayed at random *after* their rows got notification ids, which is exactly
when a reader could see a later id commit first and skip the earlier one for good. A reader
tails the log throughout; at the end, what it saw must be every row of the table, in order.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from conftest import MakeLedger

from ledger.domain.bank import bank_uuid
from ledger.domain.commands import CreateBank, CreateTransfer, OpenAccount
from ledger.domain.errors import DomainError

banks = [f"bank-{n}" for n in range(4)]
transfers_per_thread = 40
commit_delay_seconds_max = 0.02


def _delay_commits(recorder: Any, seed: int) -> None:
    """Sleep inside each insert transaction, after ids are assigned and before commit."""
    chooser = random.Random(seed)
    lock = threading.Lock()
    fetch_ids = getattr(recorder, "_fetch_ids_after_insert_events", None)
    if fetch_ids is None:  # the in-memory recorder has no transaction to delay
        return

    def delayed(curs: Any, stored_events: Sequence[Any], **kwargs: Any) -> Any:
        ids = fetch_ids(curs, stored_events, **kwargs)
        with lock:
            delay = chooser.uniform(0, commit_delay_seconds_max)
        time.sleep(delay)
        return ids

    recorder._fetch_ids_after_insert_events = delayed


def test_a_tailing_reader_sees_every_event_in_order(
    durable_store_url: str, make_ledger: MakeLedger
) -> None:
    ledger = make_ledger(durable_store_url)
    recorder = ledger.store.recorder
    # Set up several banks, each with two members.
    for bank_id in banks:
        ledger.create_bank(CreateBank(bank_id=bank_id, name=bank_id))
        for member in ("ann", "bob"):
            ledger.execute(
                bank_id, OpenAccount(account_id=member, kind="member", lower_limit_minutes=-100_000)
            )
    _delay_commits(recorder, seed=7)

    # A reader tails the log from the start, in pages, while the writers run.
    seen: list[Any] = []
    writers_done = threading.Event()

    def tail() -> None:
        position = 0
        caught_up_after_done = False
        while not caught_up_after_done:
            done_before_read = writers_done.is_set()
            page = recorder.select_notifications(start=position + 1, limit=50)
            seen.extend(page)
            if page:
                position = page[-1].id
            elif done_before_read:
                caught_up_after_done = True
            else:
                time.sleep(0.001)

    reader = threading.Thread(target=tail)
    reader.start()

    # Two threads per bank write transfers at once, so commits of different banks overlap.
    failures: list[DomainError] = []

    def write(bank_id: str, thread_number: int) -> None:
        for n in range(transfers_per_thread):
            payer, payee = ("ann", "bob") if n % 2 else ("bob", "ann")
            try:
                ledger.execute(
                    bank_id,
                    CreateTransfer(
                        transfer_id=f"t{thread_number}-{n}",
                        payer_account_id=payer,
                        payee_account_id=payee,
                        amount_minutes=1 + n % 5,
                    ),
                )
            except DomainError as error:
                failures.append(error)

    writers = [
        threading.Thread(target=write, args=(bank_id, number))
        for bank_id in banks
        for number in range(2)
    ]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    writers_done.set()
    reader.join(timeout=60)
    assert not reader.is_alive()

    # Every transfer was accepted.
    assert failures == []
    # The reader saw exactly the rows in the table, in increasing order, each once.
    seen_ids = [notification.id for notification in seen]
    in_table = [n.id for n in recorder.select_notifications(start=1, limit=1_000_000)]
    assert seen_ids == in_table
    assert seen_ids == sorted(set(seen_ids))
    # And what it saw is each bank's whole history: versions 1..position, in order.
    for bank_id in banks:
        bank = ledger.get_bank(bank_id)
        assert bank.transfer_count == 2 * transfers_per_thread
        versions = [n.originator_version for n in seen if n.originator_id == bank_uuid(bank_id)]
        assert versions == list(range(1, bank.position + 1))
