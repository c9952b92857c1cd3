"""The domain without a store: a bank's state, records and stored events kept in memory.

`MemoryBank` runs commands exactly as a writer does (one Batch per call: expire what is due,
run the commands, encode the events, commit), but keeps the index records in dicts and the
stored events in a list. Domain tests use it to check rules and what a refusal leaves
unchanged; property tests use `replayed()` to compare with a history replayed from event 1.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from ledger.domain import bank, history, holds
from ledger.domain.batch import Batch
from ledger.domain.commands import Command, CreateBank
from ledger.domain.errors import DomainError
from ledger.domain.records import RecordBook, RequestRecord, TransferRecord
from ledger.domain.state import BankState

START = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


class MemoryBank:
    """One bank: decision state, index records and stored history, all in memory."""

    def __init__(self, bank_id: str = "b1") -> None:
        self.bank_id = bank_id
        self.state = BankState(bank_uuid=str(bank.bank_uuid(bank_id)))
        self.transfers: dict[str, TransferRecord] = {}
        self.requests: dict[str, RequestRecord] = {}
        self.stored: list[history.StoredEvent] = []

    @classmethod
    def created(
        cls, bank_id: str = "b1", name: str = "Test bank", now: datetime = START
    ) -> MemoryBank:
        memory = cls(bank_id)
        memory.execute(CreateBank(bank_id=bank_id, name=name), now)
        return memory

    # ----------------------------------------------------------------- running commands

    def record_book(self) -> RecordBook:
        """A batch's window on this bank's records, as a writer makes one."""
        return RecordBook(self._load_transfers, self._load_requests)

    def run(self, commands: Sequence[Command], now: datetime) -> list[Any]:
        """Run commands as one writer batch; each result is its view or its DomainError."""
        records = self.record_book()
        records.prefetch(*bank.referenced_ids(commands))
        batch = Batch(self.state, now, records)
        holds.expire_due(batch, now)
        results: list[Any] = []
        for command in commands:
            try:
                results.append(bank.execute(batch, self.bank_id, command))
            except DomainError as error:
                results.append(error)
        stored = history.encode(batch, self.state.chain_head)
        batch.commit(stored[-1].chain_hash if stored else self.state.chain_head)
        self.stored.extend(stored)
        for transfer_id, record in records.changed_transfers.items():
            self.transfers[transfer_id] = copy.copy(record)
        self.requests.update(records.new_requests)
        return results

    def execute(self, command: Command, now: datetime = START) -> Any:
        """Run one command; returns its result or raises its DomainError."""
        command.validate()
        (result,) = self.run([command], now)
        if isinstance(result, DomainError):
            raise result
        return result

    def expire(self, now: datetime) -> None:
        """What an idle writer does at `now`: expire the holds that are due."""
        self.run([], now)

    # ----------------------------------------------------------------- looking at it

    def replayed(self, events: Iterable[history.StoredEvent] | None = None) -> BankState:
        """A fresh state from the stored events alone (replay from event 1)."""
        state = BankState(bank_uuid=self.state.bank_uuid)
        batch = Batch(state, None, None)
        head = state.chain_head
        for event in self.stored if events is None else events:
            decoded = history.decode(state.bank_uuid, event.stored)
            batch.replay(event.version, decoded.timestamp, decoded.event)
            head = event.chain_hash
        batch.commit(head)
        return state

    def snapshot(self) -> dict[str, Any]:
        """Everything a refusal must leave as it was."""
        return {
            "state": copy.deepcopy(self.state),
            "transfers": copy.deepcopy(self.transfers),
            "requests": copy.deepcopy(self.requests),
            "stored": list(self.stored),
        }

    def _load_transfers(self, ids: Iterable[str]) -> dict[str, TransferRecord]:
        return {i: copy.copy(self.transfers[i]) for i in ids if i in self.transfers}

    def _load_requests(self, ids: Iterable[str]) -> dict[str, RequestRecord]:
        return {i: self.requests[i] for i in ids if i in self.requests}
