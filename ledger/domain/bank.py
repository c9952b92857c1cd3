"""The Bank aggregate: one time bank's accounts and transfers, as one hash-chained event history.

Every rule lives here. A command method checks everything first and only then records its
events, so a refused command changes nothing. Events are applied by their own `apply()`,
which is all that replaying the history runs.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from ledger.domain import chain, limits
from ledger.domain.commands import (
    BankCommand,
    ChangeLimits,
    ChangeStatus,
    Command,
    CreateBank,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    PostPending,
    ReverseTransfer,
    VoidPending,
)
from ledger.domain.errors import DomainError, IdConflict, InvalidInput, NotFound, PreconditionFailed
from ledger.domain.overlay import LimitOverlay
from ledger.domain.state import AccountState, TransferState
from ledger.domain.views import AccountView, BankView, BatchItemResult, TransferView

# Keys every eventsourcing event has; the rest of an event's attributes are its own fields.
_ENVELOPE_KEYS = frozenset(
    {"originator_id", "originator_version", "timestamp", "originator_topic", "chain_hash"}
)


class ChainBrokenError(Exception):
    """A stored event's hash does not follow from its content and its predecessor."""


def bank_uuid(bank_id: str) -> UUID:
    """The aggregate id of a bank, derived from its client-chosen id."""
    return uuid5(NAMESPACE_URL, f"timebank-ledger:bank:{bank_id}")


def _event_fields(event: object) -> dict[str, Any]:
    return {k: v for k, v in vars(event).items() if k not in _ENVELOPE_KEYS}


def _check_chain(event: Any, previous_hash: str) -> None:
    expected = chain.next_hash(
        previous_hash,
        str(event.originator_id),
        event.originator_version,
        type(event).__name__,
        event.timestamp,
        _event_fields(event),
    )
    if expected != event.chain_hash:
        raise ChainBrokenError(
            f"event {event.originator_version} of bank {event.originator_id} breaks the hash chain"
        )


def _iso(moment: datetime | None) -> str:
    return moment.isoformat(timespec="microseconds") if moment else ""


def id_conflict(command: Command, earlier: Command) -> IdConflict | None:
    differing = command.first_difference(earlier)
    if differing is None:
        return None
    id_field = command.id_field
    return IdConflict(
        f"EXISTS_WITH_DIFFERENT_{differing.upper()}",
        f"{id_field} {getattr(command, id_field)!r} was already used with a different {differing}",
        field=differing,
        metadata={id_field: getattr(command, id_field)},
    )


class Bank(Aggregate):
    """One time bank: its accounts, transfers and idempotency records."""

    class Event(Aggregate.Event):
        chain_hash: str

        def mutate(self, aggregate: Any) -> Any:
            # The created event (aggregate is None) follows the genesis hash.
            _check_chain(self, chain.GENESIS_HASH if aggregate is None else aggregate.chain_head)
            mutated = super().mutate(aggregate)
            assert mutated is not None
            mutated.chain_head = self.chain_hash
            return mutated

    class Created(Aggregate.Created):
        bank_id: str
        name: str
        actor: str
        chain_hash: str

    def __init__(self, bank_id: str, name: str, actor: str, chain_hash: str) -> None:
        self.created_by = CreateBank(bank_id=bank_id, name=name, actor=actor)
        self.chain_head = chain_hash
        self.accounts: dict[str, AccountState] = {}
        self.account_order: list[str] = []
        self.transfers: dict[str, TransferState] = {}
        # request_id -> the command recorded under it (limit and status changes, post, void).
        self.requests: dict[str, Command] = {}
        # (deadline, transfer_id) of pending transfers that can expire; stale entries are skipped.
        self.deadlines: list[tuple[datetime, str]] = []
        # New transfers already applied to the state but not yet in an event: consecutive
        # transfers become one TransfersCreated event, so a batch costs one event, not many.
        self._staged_transfers: list[dict[str, Any]] = []
        self._staged_at: datetime | None = None

    # ----------------------------------------------------------------- creation

    @classmethod
    def create(cls, command: CreateBank, now: datetime) -> Bank:
        uuid = bank_uuid(command.bank_id)
        fields = {"bank_id": command.bank_id, "name": command.name, "actor": command.actor}
        chain_hash = chain.next_hash(chain.GENESIS_HASH, str(uuid), 1, "Created", now, fields)
        return cls._create(cls.Created, id=uuid, timestamp=now, chain_hash=chain_hash, **fields)

    def _record(self, event_class: type[Bank.Event], now: datetime, **fields: Any) -> None:
        self.flush()
        self._append(event_class, self._timestamp(now), fields, applied=False)

    def _timestamp(self, now: datetime) -> datetime:
        # Timestamps never go backwards within a bank, even if the wall clock does.
        return max(now, self.modified_on)

    def _append(
        self,
        event_class: type[Bank.Event],
        timestamp: datetime,
        fields: dict[str, Any],
        *,
        applied: bool,
    ) -> None:
        version = self.version + 1
        chain_hash = chain.next_hash(
            self.chain_head, str(self.id), version, event_class.__name__, timestamp, fields
        )
        # eventsourcing's metaclass makes each event a dataclass; mypy cannot see its __init__.
        event = event_class(  # type: ignore[call-arg]
            originator_id=self.id,
            originator_version=version,
            timestamp=timestamp,
            chain_hash=chain_hash,
            **fields,
        )
        # Apply directly rather than through mutate(): the hash was just computed from these
        # very fields, so re-verifying it (as replay does) would only double the cost.
        if not applied:
            event.apply(self)
        self.version = version
        self.modified_on = timestamp
        self.chain_head = chain_hash
        self.pending_events.append(event)

    def flush(self) -> None:
        """Turn the staged transfers into one TransfersCreated event (they are already applied)."""
        if self._staged_transfers:
            assert self._staged_at is not None
            staged, self._staged_transfers = self._staged_transfers, []
            staged_at, self._staged_at = self._staged_at, None
            self._append(Bank.TransfersCreated, staged_at, {"transfers": staged}, applied=True)

    def collect_events(self) -> Any:
        self.flush()
        return super().collect_events()

    # ----------------------------------------------------------------- dispatch

    def execute(
        self, command: BankCommand, now: datetime
    ) -> AccountView | TransferView | list[BatchItemResult]:
        """Run one validated command at time `now`: first expire what is due, then the command."""
        self.expire_due(now)
        result: AccountView | TransferView | list[BatchItemResult]
        result = _HANDLERS[type(command)](self, command, now)
        return result

    # ----------------------------------------------------------------- reads

    def view(self) -> BankView:
        return BankView(
            bank_id=self.created_by.bank_id,
            name=self.created_by.name,
            created_at=self.created_on,
            position=self.version,
            chain_head=self.chain_head,
            account_count=len(self.accounts),
            transfer_count=len(self.transfers),
        )

    def account(self, account_id: str, field: str = "account_id") -> AccountState:
        try:
            return self.accounts[account_id]
        except KeyError:
            raise NotFound(
                "ACCOUNT_NOT_FOUND",
                f"account {account_id!r} does not exist in this bank",
                field=field,
                metadata={"account_id": account_id},
            ) from None

    def transfer(self, transfer_id: str, field: str = "transfer_id") -> TransferState:
        try:
            return self.transfers[transfer_id]
        except KeyError:
            raise NotFound(
                "TRANSFER_NOT_FOUND",
                f"transfer {transfer_id!r} does not exist in this bank",
                field=field,
                metadata={"transfer_id": transfer_id},
            ) from None

    # ----------------------------------------------------------------- accounts

    def open_account(self, command: OpenAccount, now: datetime) -> AccountView:
        existing = self.accounts.get(command.account_id)
        if existing is not None:
            self._raise_if_conflict(command, existing.opened_by)
            return existing.view()
        self._record(
            Bank.AccountOpened,
            now,
            account_id=command.account_id,
            kind=command.kind,
            lower_limit_minutes=command.lower_limit_minutes,
            upper_limit_minutes=command.upper_limit_minutes,
            actor=command.actor,
        )
        return self.accounts[command.account_id].view()

    class AccountOpened(Event):
        account_id: str
        kind: str
        lower_limit_minutes: int
        upper_limit_minutes: int | None
        actor: str

        def apply(self, bank: Bank) -> None:
            bank.accounts[self.account_id] = AccountState(
                opened_by=OpenAccount(
                    account_id=self.account_id,
                    kind=self.kind,
                    lower_limit_minutes=self.lower_limit_minutes,
                    upper_limit_minutes=self.upper_limit_minutes,
                    actor=self.actor,
                ),
                lower_limit_minutes=self.lower_limit_minutes,
                upper_limit_minutes=self.upper_limit_minutes,
                opened_at=self.timestamp,
                updated_at=self.timestamp,
                position=self.originator_version,
            )
            bank.account_order.append(self.account_id)

    def change_limits(self, command: ChangeLimits, now: datetime) -> AccountView:
        earlier = self._earlier_request(command)
        account = self.account(command.account_id)
        if earlier is not None:
            return account.view()
        self._check_not_closed(account)
        # Lowering a limit below the current balance is allowed: it only blocks further debits.
        self._record(
            Bank.AccountLimitsChanged,
            now,
            request_id=command.request_id,
            account_id=command.account_id,
            lower_limit_minutes=command.lower_limit_minutes,
            upper_limit_minutes=command.upper_limit_minutes,
            reason=command.reason,
            actor=command.actor,
        )
        return account.view()

    class AccountLimitsChanged(Event):
        request_id: str
        account_id: str
        lower_limit_minutes: int
        upper_limit_minutes: int | None
        reason: str
        actor: str

        def apply(self, bank: Bank) -> None:
            account = bank.accounts[self.account_id]
            account.lower_limit_minutes = self.lower_limit_minutes
            account.upper_limit_minutes = self.upper_limit_minutes
            account.updated_at = self.timestamp
            account.position = self.originator_version
            bank.requests[self.request_id] = ChangeLimits(**_event_fields(self))

    def change_status(self, command: ChangeStatus, now: datetime) -> AccountView:
        earlier = self._earlier_request(command)
        account = self.account(command.account_id)
        if earlier is not None:
            return account.view()
        self._check_not_closed(account)
        new_status = {"freeze": "frozen", "unfreeze": "open", "close": "closed"}[command.action]
        if command.action == "freeze" and account.status != "open":
            raise self._status_error(
                "ACCOUNT_NOT_OPEN", account, "only an open account can be frozen"
            )
        if command.action == "unfreeze" and account.status != "frozen":
            raise self._status_error("ACCOUNT_NOT_FROZEN", account, "the account is not frozen")
        if command.action == "close":
            self._check_closable(account)
        self._record(
            Bank.AccountStatusChanged,
            now,
            request_id=command.request_id,
            account_id=command.account_id,
            action=command.action,
            status=new_status,
            reason=command.reason,
            actor=command.actor,
        )
        return account.view()

    class AccountStatusChanged(Event):
        request_id: str
        account_id: str
        action: str
        status: str
        reason: str
        actor: str

        def apply(self, bank: Bank) -> None:
            account = bank.accounts[self.account_id]
            account.status = self.status
            account.updated_at = self.timestamp
            account.position = self.originator_version
            bank.requests[self.request_id] = ChangeStatus(
                request_id=self.request_id,
                account_id=self.account_id,
                action=self.action,
                reason=self.reason,
                actor=self.actor,
            )

    def _check_closable(self, account: AccountState) -> None:
        if account.balance_minutes != 0:
            raise self._status_error(
                "ACCOUNT_HAS_BALANCE", account, "only an account with a zero balance can be closed"
            )
        if account.pending_debit_minutes or account.pending_credit_minutes:
            raise self._status_error(
                "ACCOUNT_HAS_PENDING",
                account,
                "the account has pending transfers; post or void them first",
            )

    @staticmethod
    def _status_error(reason: str, account: AccountState, message: str) -> PreconditionFailed:
        return PreconditionFailed(
            reason,
            f"account {account.account_id!r}: {message}",
            metadata={"account_id": account.account_id, "status": account.status},
        )

    def _check_not_closed(self, account: AccountState) -> None:
        if account.status == "closed":
            raise self._status_error("ACCOUNT_CLOSED", account, "the account is closed")

    # ----------------------------------------------------------------- transfers

    def create_transfer(self, command: CreateTransfer, now: datetime) -> TransferView:
        existing = self._existing_transfer(command)
        if existing is not None:
            return existing
        self._check_transfer(command, LimitOverlay())
        return self._record_transfer(command, now)

    def create_transfers(self, command: CreateTransfers, now: datetime) -> list[BatchItemResult]:
        if command.linked:
            return self._create_linked(command.items, now)
        results = []
        for item in command.items:
            try:
                item.validate()
                results.append(BatchItemResult(self.create_transfer(item, now), None))
            except DomainError as error:
                results.append(BatchItemResult(None, error))
        return results

    def _create_linked(
        self, items: tuple[CreateTransfer, ...], now: datetime
    ) -> list[BatchItemResult]:
        """All or nothing: check every item against the balances the earlier items leave."""
        overlay = LimitOverlay()
        existing: list[TransferView | None] = []
        seen: set[str] = set()
        for index, item in enumerate(items):
            try:
                if item.transfer_id in seen:
                    raise InvalidInput(
                        "DUPLICATE_ID_IN_BATCH",
                        f"transfer_id {item.transfer_id!r} appears twice in this linked batch",
                        field="transfer_id",
                    )
                seen.add(item.transfer_id)
                item.validate()
                found = self._existing_transfer(item)
                if found is None:
                    self._check_transfer(item, overlay)
                existing.append(found)
            except DomainError as error:
                return self._linked_failure(len(items), index, error)
        return [
            BatchItemResult(found or self._record_transfer(item, now), None)
            for item, found in zip(items, existing, strict=True)
        ]

    @staticmethod
    def _linked_failure(count: int, failed_index: int, error: DomainError) -> list[BatchItemResult]:
        linked_error = PreconditionFailed(
            "LINKED_TRANSFER_FAILED",
            f"not recorded: item {failed_index} of this linked batch was refused",
            metadata={"failed_index": str(failed_index)},
        )
        return [
            BatchItemResult(None, error if index == failed_index else linked_error)
            for index in range(count)
        ]

    def _existing_transfer(self, command: CreateTransfer | ReverseTransfer) -> TransferView | None:
        existing = self.transfers.get(command.transfer_id)
        if existing is None:
            return None
        self._raise_if_conflict(command, existing.created_by)
        return existing.view()

    def _check_transfer(self, command: CreateTransfer, overlay: LimitOverlay) -> None:
        payer = self.account(command.payer_account_id, "payer_account_id")
        payee = self.account(command.payee_account_id, "payee_account_id")
        for account in (payer, payee):
            self._check_open(account)
        overlay.check_and_add(payer, payee, command.amount_minutes, pending=command.pending)

    @staticmethod
    def _check_open(account: AccountState) -> None:
        if account.status != "open":
            reason = "ACCOUNT_CLOSED" if account.status == "closed" else "ACCOUNT_FROZEN"
            raise Bank._status_error(reason, account, f"the account is {account.status}")

    def _record_transfer(self, command: CreateTransfer, now: datetime) -> TransferView:
        timestamp = self._timestamp(now)
        if self._staged_transfers and timestamp != self._staged_at:
            self.flush()  # one event has one timestamp
            timestamp = self._timestamp(now)
        deadline = (
            timestamp + timedelta(seconds=command.timeout_seconds)
            if command.pending and command.timeout_seconds
            else None
        )
        record = command.content()
        record["actor"] = command.actor
        record["deadline"] = _iso(deadline)
        # Apply now, so the next command sees it; the event it joins will be the next version.
        transfer = self._add_new_transfer(command, deadline, timestamp, self.version + 1)
        self._staged_transfers.append(record)
        self._staged_at = timestamp
        if len(self._staged_transfers) >= limits.transfers_per_event_max:
            self.flush()
        return transfer.view()

    class TransfersCreated(Event):
        # Each item: the CreateTransfer fields (transfer_id, payer_account_id,
        # payee_account_id, amount_minutes, memo, category, service_date, pending,
        # timeout_seconds, actor) and "deadline" (ISO 8601, or "" for none).
        transfers: list[dict[str, Any]]

        def apply(self, bank: Bank) -> None:
            for record in self.transfers:
                bank.apply_new_transfer(record, self.timestamp, self.originator_version)

    def apply_new_transfer(
        self, record: dict[str, Any], timestamp: datetime, position: int
    ) -> None:
        """Add one recorded transfer to the state (used by apply only)."""
        fields = dict(record)
        deadline_iso = fields.pop("deadline")
        deadline = datetime.fromisoformat(deadline_iso) if deadline_iso else None
        self._add_new_transfer(CreateTransfer(**fields), deadline, timestamp, position)

    def _add_new_transfer(
        self, command: CreateTransfer, deadline: datetime | None, timestamp: datetime, position: int
    ) -> TransferState:
        amount = command.amount_minutes
        transfer = TransferState(
            created_by=command,
            kind="pending" if command.pending else "immediate",
            status="pending" if command.pending else "posted",
            payer_account_id=command.payer_account_id,
            payee_account_id=command.payee_account_id,
            amount_minutes=amount,
            created_at=timestamp,
            created_position=position,
            position=position,
            deadline=deadline,
        )
        self.add_transfer(transfer, timestamp)
        payer = self.accounts[command.payer_account_id]
        payee = self.accounts[command.payee_account_id]
        if command.pending:
            payer.pending_debit_minutes += amount
            payee.pending_credit_minutes += amount
            if deadline is not None:
                heapq.heappush(self.deadlines, (deadline, command.transfer_id))
        else:
            transfer.posted_amount_minutes = amount
            transfer.resolved_at = timestamp
            payer.balance_minutes -= amount
            payee.balance_minutes += amount
        return transfer

    def add_transfer(self, transfer: TransferState, timestamp: datetime) -> None:
        """Index a new transfer under its id and under both accounts (used by apply only)."""
        self.transfers[transfer.transfer_id] = transfer
        for account_id in (transfer.payer_account_id, transfer.payee_account_id):
            account = self.accounts[account_id]
            account.transfer_ids.append(transfer.transfer_id)
            account.updated_at = timestamp
            account.position = transfer.position

    # ----------------------------------------------------------------- pending transfers

    def post_pending(self, command: PostPending, now: datetime) -> TransferView:
        earlier = self._earlier_request(command)
        transfer = self.transfer(command.transfer_id)
        if earlier is not None:
            return transfer.view()
        self._check_pending(transfer)
        for account_id in (transfer.payer_account_id, transfer.payee_account_id):
            self._check_open(self.accounts[account_id])
        amount = (
            transfer.amount_minutes if command.amount_minutes is None else command.amount_minutes
        )
        if amount > transfer.amount_minutes:
            raise PreconditionFailed(
                "POST_AMOUNT_EXCEEDS_PENDING",
                f"cannot post {amount} minutes of a pending transfer of {transfer.amount_minutes}",
                metadata={"pending_amount_minutes": str(transfer.amount_minutes)},
            )
        # Posting needs no limit check: the hold already reserved the whole amount.
        self._record(
            Bank.PendingPosted,
            now,
            request_id=command.request_id,
            transfer_id=command.transfer_id,
            amount_minutes=command.amount_minutes,
            posted_amount_minutes=amount,
            actor=command.actor,
        )
        return transfer.view()

    class PendingPosted(Event):
        request_id: str
        transfer_id: str
        amount_minutes: int | None
        posted_amount_minutes: int
        actor: str

        def apply(self, bank: Bank) -> None:
            transfer = bank.release_hold(
                self.transfer_id, "posted", self.timestamp, self.originator_version
            )
            transfer.posted_amount_minutes = self.posted_amount_minutes
            bank.accounts[transfer.payer_account_id].balance_minutes -= self.posted_amount_minutes
            bank.accounts[transfer.payee_account_id].balance_minutes += self.posted_amount_minutes
            bank.requests[self.request_id] = PostPending(
                request_id=self.request_id,
                transfer_id=self.transfer_id,
                amount_minutes=self.amount_minutes,
                actor=self.actor,
            )

    def void_pending(self, command: VoidPending, now: datetime) -> TransferView:
        earlier = self._earlier_request(command)
        transfer = self.transfer(command.transfer_id)
        if earlier is not None:
            return transfer.view()
        self._check_pending(transfer)
        self._record(
            Bank.PendingVoided,
            now,
            request_id=command.request_id,
            transfer_id=command.transfer_id,
            reason=command.reason,
            actor=command.actor,
        )
        return transfer.view()

    class PendingVoided(Event):
        request_id: str
        transfer_id: str
        reason: str
        actor: str

        def apply(self, bank: Bank) -> None:
            bank.release_hold(self.transfer_id, "voided", self.timestamp, self.originator_version)
            bank.requests[self.request_id] = VoidPending(**_event_fields(self))

    def expire_due(self, now: datetime) -> None:
        """Expire every pending transfer whose deadline has passed, in deadline order."""
        while self.deadlines and self.deadlines[0][0] <= now:
            _, transfer_id = heapq.heappop(self.deadlines)
            if self.transfers[transfer_id].status == "pending":
                self._record(Bank.PendingExpired, now, transfer_id=transfer_id)

    def next_deadline(self) -> datetime | None:
        """When the next pending transfer may expire (stale entries make this early, never late)."""
        return self.deadlines[0][0] if self.deadlines else None

    class PendingExpired(Event):
        transfer_id: str

        def apply(self, bank: Bank) -> None:
            bank.release_hold(self.transfer_id, "expired", self.timestamp, self.originator_version)

    def release_hold(
        self, transfer_id: str, status: str, timestamp: datetime, position: int
    ) -> TransferState:
        """Resolve a pending transfer: drop its holds on both accounts (used by apply only)."""
        transfer = self.transfers[transfer_id]
        assert transfer.status == "pending", f"{transfer_id} resolved twice"
        transfer.status = status
        transfer.resolved_at = timestamp
        transfer.position = position
        payer = self.accounts[transfer.payer_account_id]
        payee = self.accounts[transfer.payee_account_id]
        payer.pending_debit_minutes -= transfer.amount_minutes
        payee.pending_credit_minutes -= transfer.amount_minutes
        for account in (payer, payee):
            account.updated_at = timestamp
            account.position = position
        return transfer

    @staticmethod
    def _check_pending(transfer: TransferState) -> None:
        if transfer.kind != "pending":
            raise PreconditionFailed(
                "TRANSFER_NOT_PENDING",
                f"transfer {transfer.transfer_id!r} is {transfer.kind}, not pending",
                metadata={"transfer_id": transfer.transfer_id},
            )
        if transfer.status != "pending":
            raise PreconditionFailed(
                f"PENDING_TRANSFER_ALREADY_{transfer.status.upper()}"
                if transfer.status != "expired"
                else "PENDING_TRANSFER_EXPIRED",
                f"pending transfer {transfer.transfer_id!r} was already {transfer.status}",
                metadata={"transfer_id": transfer.transfer_id, "status": transfer.status},
            )

    # ----------------------------------------------------------------- reversals

    def reverse_transfer(self, command: ReverseTransfer, now: datetime) -> TransferView:
        existing = self._existing_transfer(command)
        if existing is not None:
            return existing
        original = self.transfer(command.reverses_transfer_id, "reverses_transfer_id")
        self._check_reversible(original)
        # The reversal moves the posted minutes back: the original payee pays the original payer.
        payer = self.accounts[original.payee_account_id]
        payee = self.accounts[original.payer_account_id]
        for account in (payer, payee):
            # A coordinator may reverse on a frozen account; a closed one takes nothing.
            self._check_not_closed(account)
        LimitOverlay().check_and_add(payer, payee, original.posted_amount_minutes, pending=False)
        self._record(
            Bank.TransferReversed,
            now,
            transfer_id=command.transfer_id,
            reverses_transfer_id=command.reverses_transfer_id,
            payer_account_id=payer.account_id,
            payee_account_id=payee.account_id,
            amount_minutes=original.posted_amount_minutes,
            reason=command.reason,
            actor=command.actor,
        )
        return self.transfers[command.transfer_id].view()

    @staticmethod
    def _check_reversible(original: TransferState) -> None:
        metadata = {"transfer_id": original.transfer_id}
        if original.kind == "reversal":
            raise PreconditionFailed(
                "CANNOT_REVERSE_REVERSAL", "a reversal cannot itself be reversed", metadata=metadata
            )
        if original.status != "posted":
            raise PreconditionFailed(
                "TRANSFER_NOT_POSTED",
                f"transfer {original.transfer_id!r} is {original.status}, not posted",
                metadata=metadata,
            )
        if original.reversed_by_transfer_id:
            raise PreconditionFailed(
                "TRANSFER_ALREADY_REVERSED",
                f"transfer {original.transfer_id!r} was already reversed",
                metadata={**metadata, "reversed_by_transfer_id": original.reversed_by_transfer_id},
            )

    class TransferReversed(Event):
        transfer_id: str
        reverses_transfer_id: str
        payer_account_id: str
        payee_account_id: str
        amount_minutes: int
        reason: str
        actor: str

        def apply(self, bank: Bank) -> None:
            transfer = TransferState(
                created_by=ReverseTransfer(
                    transfer_id=self.transfer_id,
                    reverses_transfer_id=self.reverses_transfer_id,
                    reason=self.reason,
                    actor=self.actor,
                ),
                kind="reversal",
                status="posted",
                payer_account_id=self.payer_account_id,
                payee_account_id=self.payee_account_id,
                amount_minutes=self.amount_minutes,
                created_at=self.timestamp,
                created_position=self.originator_version,
                position=self.originator_version,
                posted_amount_minutes=self.amount_minutes,
                resolved_at=self.timestamp,
            )
            bank.add_transfer(transfer, self.timestamp)
            original = bank.transfers[self.reverses_transfer_id]
            original.reversed_by_transfer_id = self.transfer_id
            original.position = self.originator_version
            bank.accounts[self.payer_account_id].balance_minutes -= self.amount_minutes
            bank.accounts[self.payee_account_id].balance_minutes += self.amount_minutes

    # ----------------------------------------------------------------- idempotency

    def _earlier_request(
        self, command: ChangeLimits | ChangeStatus | PostPending | VoidPending
    ) -> Command | None:
        earlier = self.requests.get(command.request_id)
        if earlier is not None:
            self._raise_if_conflict(command, earlier)
        return earlier

    @staticmethod
    def _raise_if_conflict(command: Command, earlier: Command) -> None:
        conflict = id_conflict(command, earlier)
        if conflict is not None:
            raise conflict


_HANDLERS: dict[type[Command], Callable[..., Any]] = {
    OpenAccount: Bank.open_account,
    ChangeLimits: Bank.change_limits,
    ChangeStatus: Bank.change_status,
    CreateTransfer: Bank.create_transfer,
    CreateTransfers: Bank.create_transfers,
    PostPending: Bank.post_pending,
    VoidPending: Bank.void_pending,
    ReverseTransfer: Bank.reverse_transfer,
}
