"""The Ledger facade that entrypoints call: writes go to the banks' writers, reads to the tables.

Reads never wait for a writer: they come from the committed index tables, so they never
queue behind a commit, and any process reading the store sees what was committed, whether
or not it holds the bank's writer.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from ledger.application import deployment, pages
from ledger.application.listing import Listing
from ledger.application.writer import Clock, Result
from ledger.application.writers import Writers
from ledger.config import Settings
from ledger.domain.bank import bank_not_found, bank_uuid
from ledger.domain.commands import Command, CreateBank, IssueApiKey, RevokeApiKey, check_id
from ledger.domain.errors import ConsentRequired, NotFound
from ledger.domain.state import MemberTokenKey
from ledger.domain.views import AccountView, BankView, TransferView
from ledger.storage.rows import StoredApiKey
from ledger.storage.store import LedgerStore


def system_clock() -> datetime:
    return datetime.now(UTC)


class Ledger:
    """Every bank in one store; the writers of those in use in this process."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = clock or system_clock
        self.store = LedgerStore(settings.eventsourcing_env())
        try:
            self.writers = Writers(self.store, settings, self._clock)
        except BaseException:
            self.store.close()
            raise
        # The lists an app pages through (issue 12): accounts, transfers, inbox, banks.
        self.lists = Listing(self.store, self.get_bank)

    # ----------------------------------------------------------------- writes

    def create_bank(self, command: CreateBank) -> BankView:
        command.validate()
        result = self.writers.submit(command.bank_id, command)
        assert isinstance(result, BankView), result
        return result

    def execute(self, bank_id: str, command: Command) -> Result:
        """Validate, queue and commit one command; returns its view or per-item results."""
        check_id("bank_id", bank_id)
        command.validate()
        return self.writers.submit(bank_id, command)

    # ----------------------------------------------------------------- reads

    def now(self) -> datetime:
        """The ledger's clock (reads that depend on the day, as a pool budget's cap period)."""
        return self._clock()

    def get_bank(self, bank_id: str) -> BankView:
        check_id("bank_id", bank_id)
        view = self.store.bank(str(bank_uuid(bank_id)))
        if view is None:
            raise bank_not_found(bank_id)
        return view

    def get_account(self, bank_id: str, account_id: str) -> AccountView:
        check_id("bank_id", bank_id)
        check_id("account_id", account_id)
        view = self.lists.account(bank_id, account_id)
        if view is None:
            self.get_bank(bank_id)
            raise _account_not_found(account_id)
        return view

    def with_metadata(self, bank_id: str, view: AccountView) -> AccountView:
        """A written account's view with its label and tags (kept in the index, not in the
        writer's state), as committed."""
        found = self.lists.account(bank_id, view.account_id)
        if found is None:
            return view
        return dataclasses.replace(view, label=found.label, tags=found.tags)

    def list_accounts(
        self, bank_id: str, page_size: int, page_token: str
    ) -> tuple[list[AccountView], str]:
        """Accounts in the order they were opened (Listing.accounts has the filters)."""
        page = self.lists.accounts(bank_id, page_size, page_token)
        return page.items, page.next_page_token

    def get_transfer(self, bank_id: str, transfer_id: str) -> TransferView:
        check_id("bank_id", bank_id)
        check_id("transfer_id", transfer_id)
        view = self.store.transfer(str(bank_uuid(bank_id)), transfer_id)
        if view is None:
            self.get_bank(bank_id)
            raise NotFound(
                "TRANSFER_NOT_FOUND",
                f"transfer {transfer_id!r} does not exist in this bank",
                field="transfer_id",
                metadata={"transfer_id": transfer_id},
            )
        return view

    def list_account_transfers(
        self, bank_id: str, account_id: str, page_size: int, page_token: str
    ) -> tuple[list[TransferView], str]:
        """An account's transfers, newest first (Listing.account_transfers has the filters)."""
        page = self.lists.account_transfers(bank_id, account_id, page_size, page_token)
        return page.items, page.next_page_token

    def check_statement_reader(
        self, bank_id: str, account_id: str, *, via_front_end: bool, member_subject: str | None
    ) -> None:
        """With the bank's consent policy on, a front-end reads a member's statement only with
        that member's token (ConsentRequired); admins and auditors read every statement."""
        if not via_front_end or member_subject == account_id:
            return
        if not self.get_bank(bank_id).member_tokens_required:
            return
        if self.get_account(bank_id, account_id).kind != "member":
            return
        raise ConsentRequired(
            "MEMBER_TOKEN_REQUIRED",
            f"reading member {account_id!r}'s statement needs that member's token",
            field="x-member-token",
            metadata={"account_id": account_id},
        )

    def check_transfer_reader(
        self,
        bank_id: str,
        view: TransferView,
        *,
        via_front_end: bool,
        member_subject: str | None,
    ) -> None:
        """With the consent policy on, a front-end reads a transfer that touches a member's
        account only with the token of one of its two parties."""
        parties = (view.payer_account_id, view.payee_account_id)
        if not via_front_end or member_subject in parties:
            return
        if not self.get_bank(bank_id).member_tokens_required:
            return
        if all(self.get_account(bank_id, party).kind != "member" for party in parties):
            return
        raise ConsentRequired(
            "MEMBER_TOKEN_REQUIRED",
            f"reading transfer {view.transfer_id!r} needs the token of a member it is between",
            field="x-member-token",
            metadata={"transfer_id": view.transfer_id},
        )

    # ----------------------------------------------------------------- access

    def issue_operator_key(self, command: IssueApiKey) -> int:
        """Records a new operator key in the deployment's history; returns its position."""
        return deployment.issue_operator_key(self.store, command, self._clock())

    def revoke_operator_key(self, command: RevokeApiKey) -> int:
        if self.store.api_key(command.key_id) is None:
            raise NotFound(
                "API_KEY_NOT_FOUND",
                f"key {command.key_id!r} is not an operator key",
                field="key_id",
                metadata={"key_id": command.key_id},
            )
        return deployment.revoke_operator_key(self.store, command, self._clock())

    def api_key(self, key_id: str) -> StoredApiKey | None:
        return self.store.api_key(key_id)

    def api_keys(
        self, bank_id: str | None, page_size: int, page_token: str
    ) -> tuple[list[StoredApiKey], str]:
        """A bank's keys (None: the operator keys) in the order they were issued."""
        size = pages.page_size(page_size)
        after = pages.decode_token("k", page_token) or 0
        if bank_id is None:
            uuid = deployment.deployment_uuid
        else:
            check_id("bank_id", bank_id)
            self.get_bank(bank_id)
            uuid = str(bank_uuid(bank_id))
        found = self.store.api_keys_page(uuid, after, size + 1)
        more = len(found) > size
        return found[:size], pages.encode_token("k", found[size - 1].position) if more else ""

    def member_token_keys(self, bank_id: str) -> list[MemberTokenKey]:
        check_id("bank_id", bank_id)
        return self.store.member_token_keys(str(bank_uuid(bank_id)))

    def banks_created_by(self, actor: str) -> int:
        return self.store.banks_created_by(actor)

    def has_operator_key(self) -> bool:
        return bool(self.store.api_keys_page(deployment.deployment_uuid, 0, 1))

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        self.writers.close()
        self.store.close()


def _account_not_found(account_id: str) -> NotFound:
    return NotFound(
        "ACCOUNT_NOT_FOUND",
        f"account {account_id!r} does not exist in this bank",
        field="account_id",
        metadata={"account_id": account_id},
    )
