"""What the index tables hold about past writes: every transfer, and every request id's command.

They are written in the same database transaction as the events, and kept forever: a retry
of an id from years ago still finds its first write here. A batch of commands reads the
records it needs through a RecordBook: looked up once per batch (prefetch), and changed in
memory as the batch's events are applied, so a later command in the batch sees them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger.domain.views import TransferView


@dataclass(slots=True)
class TransferRecord:
    """One transfer as the index tables hold it: its terms and where it stands."""

    transfer_id: str
    # 1, 2, 3...: the order transfers were recorded in, within the bank.
    number: int
    kind: str  # immediate, pending or reversal
    status: str  # posted, pending, voided or expired
    payer_account_id: str
    payee_account_id: str
    amount_minutes: int
    posted_amount_minutes: int
    memo: str
    category: str
    service_date: str
    timeout_seconds: int
    created_at: datetime
    deadline: datetime | None
    resolved_at: datetime | None
    reverses_transfer_id: str
    reversed_by_transfer_id: str
    # Why it was voided (pending) or why it reverses another (reversal).
    reason: str
    actor: str
    actor_label: str
    created_position: int
    position: int

    def creation_content(self) -> tuple[str, dict[str, Any]]:
        """The command kind and content that created it: what a retry must repeat."""
        if self.kind == "reversal":
            return "ReverseTransfer", {
                "transfer_id": self.transfer_id,
                "reverses_transfer_id": self.reverses_transfer_id,
                "reason": self.reason,
            }
        return "CreateTransfer", {
            "transfer_id": self.transfer_id,
            "payer_account_id": self.payer_account_id,
            "payee_account_id": self.payee_account_id,
            "amount_minutes": self.amount_minutes,
            "memo": self.memo,
            "category": self.category,
            "service_date": self.service_date,
            "pending": self.kind == "pending",
            "timeout_seconds": self.timeout_seconds,
        }

    def view(self) -> TransferView:
        return TransferView(
            transfer_id=self.transfer_id,
            kind=self.kind,
            status=self.status,
            payer_account_id=self.payer_account_id,
            payee_account_id=self.payee_account_id,
            amount_minutes=self.amount_minutes,
            posted_amount_minutes=self.posted_amount_minutes,
            memo=self.memo,
            category=self.category,
            service_date=self.service_date,
            created_at=self.created_at,
            deadline=self.deadline,
            resolved_at=self.resolved_at,
            reverses_transfer_id=self.reverses_transfer_id,
            reversed_by_transfer_id=self.reversed_by_transfer_id,
            reason=self.reason,
            actor=self.actor,
            actor_label=self.actor_label,
            created_position=self.created_position,
            position=self.position,
        )


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """The command recorded under a request id (limit and status changes, posts, voids)."""

    request_id: str
    kind: str  # the command's name: ChangeLimits, ChangeStatus, PostPending, VoidPending
    content: Mapping[str, Any]
    position: int


@dataclass(frozen=True, slots=True)
class AccountMetadataRecord:
    """A change of an account's metadata as the index applies it: None leaves it as it is."""

    account_id: str
    label: str | None
    tags: Mapping[str, str] | None
    position: int


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key as the index keeps it, to authenticate calls: only the secret's hash."""

    key_id: str
    role: str
    secret_hash: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    created_by: str
    position: int


@dataclass(frozen=True, slots=True)
class ApiKeyRevocation:
    key_id: str
    revoked_at: datetime
    revoked_by: str
    reason: str
    position: int


# Loads the records of the given ids that the tables hold (absent ids are left out).
TransferLoader = Callable[[Iterable[str]], Mapping[str, TransferRecord]]
RequestLoader = Callable[[Iterable[str]], Mapping[str, RequestRecord]]


class RecordBook:
    """A batch's window on the records: what it looked up, and what its events changed."""

    def __init__(self, load_transfers: TransferLoader, load_requests: RequestLoader) -> None:
        self._load_transfers = load_transfers
        self._load_requests = load_requests
        # None: looked up and absent.
        self._transfers: dict[str, TransferRecord | None] = {}
        self._requests: dict[str, RequestRecord | None] = {}
        # What the batch created or changed, to write back with its events.
        self.changed_transfers: dict[str, TransferRecord] = {}
        self.created_transfers: set[str] = set()
        self.new_requests: dict[str, RequestRecord] = {}
        self.new_api_keys: list[ApiKeyRecord] = []
        self.revoked_api_keys: list[ApiKeyRevocation] = []
        # Account metadata changes, in the order recorded (metadata is not decision state).
        self.metadata_changes: list[AccountMetadataRecord] = []
        # Grant requests as they stand after the batch (pools.py), by grant id.
        self.grant_changes: dict[str, GrantRecord] = {}

    def prefetch(self, transfer_ids: Iterable[str], request_ids: Iterable[str]) -> None:
        """Look up many ids at once (one query each), before the batch runs."""
        wanted = [i for i in set(transfer_ids) if i not in self._transfers]
        found = self._load_transfers(wanted) if wanted else {}
        for transfer_id in wanted:
            self._transfers[transfer_id] = found.get(transfer_id)
        wanted = [i for i in set(request_ids) if i not in self._requests]
        found_requests = self._load_requests(wanted) if wanted else {}
        for request_id in wanted:
            self._requests[request_id] = found_requests.get(request_id)

    def assume_new(self, transfer_ids: Iterable[str]) -> None:
        """Take these ids as unused without looking them up: the ids of transfers a batch
        creates are almost always new. If one is not, the store refuses the batch's commit
        (the ids are unique there), or, where its command was refused, the writer asks the
        store about it; either way the batch runs again with every id looked up."""
        for transfer_id in transfer_ids:
            self._transfers.setdefault(transfer_id, None)

    def transfer(self, transfer_id: str) -> TransferRecord | None:
        if transfer_id not in self._transfers:
            self.prefetch([transfer_id], [])
        return self._transfers[transfer_id]

    def request(self, request_id: str) -> RequestRecord | None:
        if request_id not in self._requests:
            self.prefetch([], [request_id])
        return self._requests[request_id]

    def add_transfer(self, record: TransferRecord) -> None:
        assert self.transfer(record.transfer_id) is None, f"{record.transfer_id} recorded twice"
        self._transfers[record.transfer_id] = record
        self.changed_transfers[record.transfer_id] = record
        self.created_transfers.add(record.transfer_id)

    def changed(self, record: TransferRecord) -> None:
        """Mark a record the batch changed in place, so it is written back."""
        assert self._transfers.get(record.transfer_id) is record
        self.changed_transfers[record.transfer_id] = record

    def add_request(self, record: RequestRecord) -> None:
        assert self.request(record.request_id) is None, f"{record.request_id} recorded twice"
        self._requests[record.request_id] = record
        self.new_requests[record.request_id] = record


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """A pool's grant request as the index keeps it for lists (pools.py): written from the
    decision state each time the request changes, never read back by decisions."""

    grant_id: str
    pool_account_id: str
    member_account_id: str
    amount_minutes: int
    state: str  # pending, posted, voided or expired
    approvers: tuple[str, ...]
    approvals_required: int
    approvals: tuple[str, ...]
    rejections: tuple[str, ...]
    requested_by: str
    requested_at: datetime
    deadline: datetime | None
    resolved_at: datetime | None
    # The transfer's number (the order requests were made in) and the latest change's position.
    number: int
    position: int
    # False for the answer to a retry (pools._grant_now): rebuilt from the decision state or
    # from its transfer, it may lack the decisions and latest position the index row holds.
    complete: bool = field(default=True, compare=False)
