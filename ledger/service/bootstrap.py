"""First start: the keys a newcomer needs, written to a file only its owner may read.

On the embedded default (a SQLite file) a store with no operator key gets one at the first
`serve`, with the demo bank and a bank-admin key of it, so that `timebank-ledger demo`
works with nothing else to do. The tokens go to `<database>.keys.json` beside the SQLite
file (mode 0600), never to the log. Production stores (PostgreSQL) get their first operator
key from `timebank-ledger keys create --role operator` instead.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger import logs
from ledger.application.ledger import Ledger
from ledger.domain.commands import CreateBank, IssueApiKey
from ledger.security.api_keys import IssuedKey, issue_key
from ledger.security.roles import Role

log = logging.getLogger(__name__)

demo_bank_id = "demo-bank"
demo_bank_name = "Demo Time Bank"
# Who the first-start events are recorded as: the server itself, before any key existed.
bootstrap_actor = "bootstrap"
keys_file_mode = 0o600


@dataclass(frozen=True)
class KeysFile:
    """The tokens of a keys file: the operator's, and a bank-admin token per bank."""

    operator: str
    bank_admins: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"operator": self.operator, "bank_admins": self.bank_admins}

    @classmethod
    def read(cls, path: Path) -> KeysFile:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(operator=data["operator"], bank_admins=dict(data["bank_admins"]))

    def write(self, path: Path) -> None:
        # Created with the mode set, so the tokens are never readable by others, not even
        # for a moment; replaced atomically.
        partial = path.with_name(path.name + ".partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, keys_file_mode)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(self.to_json(), file, indent=2)
            file.write("\n")
        os.chmod(partial, keys_file_mode)
        partial.replace(path)


def operator_key_command(issued: IssuedKey, actor: str) -> IssueApiKey:
    record = issued.record
    return IssueApiKey(
        key_id=record.key_id,
        role=record.role.value,
        secret_hash=record.secret_hash,
        label=record.label,
        expires_at=record.expires_at,
        actor=actor,
    )


def bootstrap_keys(ledger: Ledger, path: Path) -> bool:
    """Makes the first-start keys if the store has no operator key; True if it made them."""
    if ledger.has_operator_key():
        return False
    now = datetime.now(UTC)
    operator = issue_key(
        Role.OPERATOR, "", label="made at first start", created_by=bootstrap_actor, now=now
    )
    ledger.issue_operator_key(operator_key_command(operator, bootstrap_actor))
    operator_actor = f"key:{operator.record.key_id}"
    ledger.create_bank(CreateBank(bank_id=demo_bank_id, name=demo_bank_name, actor=operator_actor))
    admin = issue_key(
        Role.BANK_ADMIN,
        demo_bank_id,
        label="demo bank admin, made at first start",
        created_by=operator_actor,
        now=now,
    )
    ledger.execute(demo_bank_id, operator_key_command(admin, operator_actor))
    KeysFile(operator.token, {demo_bank_id: admin.token}).write(path)
    logs.event(log, "first_start_keys_written", path=str(path), bank_id=demo_bank_id)
    return True
