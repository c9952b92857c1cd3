"""The roles an API key can have; each key has exactly one."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    # The deployment: creates banks and issues a bank's first admin key; no bank data.
    OPERATOR = "operator"
    # One bank: limits, status, reversals, its keys, every read and write of the bank.
    BANK_ADMIN = "bank-admin"
    # One bank's front-end: accounts, transfers, posting and voiding, reads.
    MEMBER_APP = "member-app"
    # One bank, read-only.
    AUDITOR = "auditor"
    # One federation link; reserved, refused everywhere for now.
    FEDERATION_PEER = "federation-peer"

    @property
    def with_article(self) -> str:
        """The role as a message names it: 'an operator', 'a bank-admin', 'an auditor'."""
        return f"{'an' if self.value[0] in 'aeiou' else 'a'} {self.value}"
