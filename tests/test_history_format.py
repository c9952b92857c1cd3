"""The documented history format (docs/history-format.md) is the one the code writes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from ledger.domain import chain
from ledger.domain.bank import Bank, bank_uuid
from ledger.domain.commands import CreateBank

DOC = Path(__file__).resolve().parent.parent / "docs" / "history-format.md"


def test_the_worked_example_in_the_docs_is_what_the_code_computes() -> None:
    # The example: bank demo-bank created at 2026-11-26 12:00 UTC.
    created_at = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    bank = Bank.create(CreateBank(bank_id="demo-bank", name="Demo time bank"), created_at)
    fields = {"actor": "", "bank_id": "demo-bank", "name": "Demo time bank"}
    canonical = chain.canonical_body(str(bank.id), 1, "Created", created_at, fields).decode()
    text = DOC.read_text()
    # The doc shows the same UUID, canonical JSON and hash as the aggregate produces.
    assert str(bank_uuid("demo-bank")) in text
    assert canonical in text
    assert bank.chain_head in text


def test_every_event_type_of_the_bank_is_documented() -> None:
    text = DOC.read_text()
    event_types = [
        name
        for name, value in vars(Bank).items()
        if isinstance(value, type) and issubclass(value, Bank.Event) and name != "Event"
    ]
    assert "TransfersCreated" in event_types
    for name in event_types:
        assert f"`{name}`" in text, name
