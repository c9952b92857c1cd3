"""The Ledger facade that entrypoints call: finds or loads each bank's writer, reads its state."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from ledger.application import pages
from ledger.application.store import LedgerStore
from ledger.application.writer import BankWriter, Clock, Result
from ledger.config import Settings
from ledger.domain.bank import Bank, bank_uuid, id_conflict
from ledger.domain.commands import BankCommand, CreateBank, check_id
from ledger.domain.errors import NotFound
from ledger.domain.views import AccountView, BankView, TransferView

T = TypeVar("T")


def system_clock() -> datetime:
    return datetime.now(UTC)


class Ledger:
    """Every bank in one store; one writer per bank in this process."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = clock or system_clock
        self.store = LedgerStore(env=settings.eventsourcing_env())
        self._writers: dict[str, BankWriter] = {}
        self._writers_lock = threading.Lock()

    # ----------------------------------------------------------------- writes

    def create_bank(self, command: CreateBank) -> BankView:
        command.validate()
        with self._writers_lock:
            bank = self._load(command.bank_id)
            if bank is None:
                bank = Bank.create(command, self._clock())
                try:
                    self.store.save(bank)
                except IntegrityError:
                    # Created concurrently by another process: compare with what it stored.
                    bank = self._load(command.bank_id)
                    assert bank is not None
            conflict = id_conflict(command, bank.created_by)
            if conflict is not None:
                raise conflict
            writer = self._writers.get(command.bank_id)
            if writer is None:
                writer = self._writers[command.bank_id] = BankWriter(
                    self.store, bank, self._settings, self._clock
                )
        return writer.read(Bank.view)

    def execute(self, bank_id: str, command: BankCommand) -> Result:
        """Validate, queue and commit one command; returns its view or per-item results."""
        command.validate()
        return self._writer(bank_id).submit(command)

    # ----------------------------------------------------------------- reads

    def get_bank(self, bank_id: str) -> BankView:
        return self._read(bank_id, Bank.view)

    def get_account(self, bank_id: str, account_id: str) -> AccountView:
        check_id("account_id", account_id)
        return self._read(bank_id, lambda bank: bank.account(account_id).view())

    def list_accounts(
        self, bank_id: str, page_size: int, page_token: str
    ) -> tuple[list[AccountView], str]:
        """Accounts in the order they were opened."""
        size = pages.page_size(page_size)

        def page(bank: Bank) -> tuple[list[AccountView], str]:
            order = bank.account_order
            start = pages.decode_token("a", page_token, len(order)) or 0
            end = min(start + size, len(order))
            views = [bank.accounts[account_id].view() for account_id in order[start:end]]
            return views, pages.encode_token("a", end) if end < len(order) else ""

        return self._read(bank_id, page)

    def get_transfer(self, bank_id: str, transfer_id: str) -> TransferView:
        check_id("transfer_id", transfer_id)
        return self._read(bank_id, lambda bank: bank.transfer(transfer_id).view())

    def list_account_transfers(
        self, bank_id: str, account_id: str, page_size: int, page_token: str
    ) -> tuple[list[TransferView], str]:
        """An account's transfers, newest first."""
        check_id("account_id", account_id)
        size = pages.page_size(page_size)

        def page(bank: Bank) -> tuple[list[TransferView], str]:
            ids = bank.account(account_id).transfer_ids
            # The token counts the (oldest) entries still to show; ids only grow at the end.
            end = pages.decode_token("t", page_token, len(ids))
            end = len(ids) if end is None else end
            start = max(0, end - size)
            views = [bank.transfers[transfer_id].view() for transfer_id in reversed(ids[start:end])]
            return views, pages.encode_token("t", start) if start > 0 else ""

        return self._read(bank_id, page)

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        with self._writers_lock:
            writers = list(self._writers.values())
            self._writers.clear()
        for writer in writers:
            writer.close()
        self.store.close()

    # ----------------------------------------------------------------- internals

    def _read(self, bank_id: str, reader: Callable[[Bank], T]) -> T:
        return self._writer(bank_id).read(reader)

    def _writer(self, bank_id: str) -> BankWriter:
        check_id("bank_id", bank_id)
        writer = self._writers.get(bank_id)
        if writer is not None:
            return writer
        with self._writers_lock:
            writer = self._writers.get(bank_id)
            if writer is None:
                bank = self._load(bank_id)
                if bank is None:
                    raise NotFound(
                        "BANK_NOT_FOUND",
                        f"bank {bank_id!r} does not exist",
                        field="bank_id",
                        metadata={"bank_id": bank_id},
                    )
                writer = self._writers[bank_id] = BankWriter(
                    self.store, bank, self._settings, self._clock
                )
            return writer

    def _load(self, bank_id: str) -> Bank | None:
        try:
            bank: Bank = self.store.repository.get(bank_uuid(bank_id))
        except AggregateNotFoundError:
            return None
        return bank
