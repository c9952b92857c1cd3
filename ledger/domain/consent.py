"""Member consent: with the bank's policy on, a front-end debits a member only with their token.

A bank that sets `member_tokens_required` says: a call that comes through one of our
front-end (member-app) keys and takes minutes from a member's account, by paying from it
or by posting a hold it owes, must carry a token from our identity provider whose subject
is that account. A stolen front-end key alone then moves no member's minutes. Coordinators'
(bank-admin) keys are trusted as they may change limits anyway; accounts that are not
members' (pools, organisations, system) need no token.
"""

from __future__ import annotations

from ledger.domain.batch import Batch
from ledger.domain.errors import ConsentRequired
from ledger.domain.state import Account


def check_consent(
    batch: Batch, payer: Account, *, via_front_end: bool, member_subject: str | None
) -> None:
    if not (batch.member_tokens_required and via_front_end and payer.kind == "member"):
        return
    if member_subject == payer.account_id:
        return
    if member_subject is None:
        message = f"debiting member {payer.account_id!r} needs that member's token"
    else:
        message = f"the member token is {member_subject!r}'s, not {payer.account_id!r}'s"
    raise ConsentRequired(
        "MEMBER_TOKEN_REQUIRED",
        message,
        field="x-member-token",
        metadata={"account_id": payer.account_id},
    )
