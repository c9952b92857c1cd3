"""Member consent, end to end: with the bank's policy on, a front-end key alone moves no one.

Riverside registers its identity provider's keys (an Ed25519 key as PEM, a P-256 key as a
JWK) through AccessService and turns `member_tokens_required` on, as its admin would. The
front-end (a member-app key) then acts for its members only with their tokens: JWTs the
provider signs, naming the bank (aud) and the account (sub). Each step says what the
front-end sees, and after each refusal the books are as they were.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
import pytest
from certs import Pki
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from security_e2e import (
    bank_id,
    call_timeout_seconds,
    head,
    key_id_of,
    open_account,
    other_bank_id,
    refused,
    transfer_request,
)
from served import Served, serving

from ledger.application.verification import verify_bank
from ledger.domain.bank import bank_uuid
from timebank.ledger.v1 import access_pb2 as apb
from timebank.ledger.v1 import access_pb2_grpc as apb_grpc
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc
from timebank.ledger.v1 import views_pb2 as vpb
from timebank.ledger.v1 import views_pb2_grpc as vpb_grpc

ed_kid = "riverside-idp-ed25519"
p256_kid = "riverside-idp-p256"
member_token_lifetime_seconds = 300
Metadata = tuple[tuple[str, str], ...]
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class Riverside:
    """The bank as its coordinator set it up, and the keys its front-end and auditor hold."""

    served: Served
    admin: pb_grpc.LedgerServiceStub
    admin_key_id: str
    access: apb_grpc.AccessServiceStub  # the admin's
    app: pb_grpc.LedgerServiceStub  # the front-end's: a member-app key, no member token
    app_key_id: str
    app_channel: grpc.Channel
    auditor_channel: grpc.Channel
    admin_channel: grpc.Channel
    ed_idp: ed25519.Ed25519PrivateKey
    p256_idp: ec.EllipticCurvePrivateKey
    _numbers: Iterator[int]

    def transfer_id(self) -> str:
        return f"t-{next(self._numbers)}"

    def token(
        self,
        subject: str,
        *,
        audience: str = bank_id,
        expires_in_seconds: int = member_token_lifetime_seconds,
        key: PrivateKey | None = None,
        kid: str = ed_kid,
    ) -> Metadata:
        """The x-member-token metadata of a token the identity provider signs."""
        key = key or (self.ed_idp if kid == ed_kid else self.p256_idp)
        algorithm = "EdDSA" if isinstance(key, ed25519.Ed25519PrivateKey) else "ES256"
        claims = {
            "sub": subject,
            "aud": audience,
            "exp": int(time.time()) + expires_in_seconds,
        }
        return (("x-member-token", jwt.encode(claims, key, algorithm, headers={"kid": kid})),)

    def pay(
        self, payer: str, payee: str, minutes: int, metadata: Metadata = (), **extra: Any
    ) -> pb.CreateTransferResponse:
        """The front-end asks for a transfer, with the member token given (if any)."""
        return self.app.CreateTransfer(
            transfer_request(self.transfer_id(), payer, payee, minutes, **extra),
            metadata=metadata,
            timeout=call_timeout_seconds,
        )

    def books(self) -> tuple[tuple[int, str], dict[str, int]]:
        """The bank's head and every balance: what a refusal must leave as it was."""
        ledger = self.served.ledger
        balances = {
            account: ledger.get_account(bank_id, account).balance_minutes
            for account in ("ana", "ben", "garden")
        }
        return head(self.served), balances

    def set_policy(self, required: bool, request_id: str) -> None:
        self.access.SetBankPolicy(
            apb.SetBankPolicyRequest(
                bank_id=bank_id,
                request_id=request_id,
                policy=apb.BankPolicy(member_tokens_required=required),
            ),
            timeout=call_timeout_seconds,
        )


def public_pem(key: PrivateKey) -> str:
    encoded = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return encoded.decode()


def issue(access: apb_grpc.AccessServiceStub, role: apb.Role.ValueType) -> apb.IssueApiKeyResponse:
    return access.IssueApiKey(
        apb.IssueApiKeyRequest(bank_id=bank_id, role=role, label="riverside app"),
        timeout=call_timeout_seconds,
    )


def set_up(served: Served) -> Riverside:
    """Riverside with ana and ben (members) and the garden pool, its keys and its policy on."""
    admin_token = served.create_bank(bank_id)
    admin_channel = served.channel(admin_token)
    admin = pb_grpc.LedgerServiceStub(admin_channel)
    access = apb_grpc.AccessServiceStub(admin_channel)
    # The coordinator issues the front-end's and the auditor's keys.
    app = issue(access, apb.ROLE_MEMBER_APP)
    auditor = issue(access, apb.ROLE_AUDITOR)
    for account in ("ana", "ben"):
        open_account(admin, account)
    open_account(admin, "garden", pb.ACCOUNT_KIND_POOL)
    # ... registers the identity provider's keys: one as PEM, one as a JWK ...
    ed_idp = ed25519.Ed25519PrivateKey.generate()
    p256_idp = ec.generate_private_key(ec.SECP256R1())
    access.RegisterMemberTokenKey(
        apb.RegisterMemberTokenKeyRequest(
            bank_id=bank_id, kid=ed_kid, public_key_pem=public_pem(ed_idp)
        ),
        timeout=call_timeout_seconds,
    )
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(p256_idp.public_key()))
    access.RegisterMemberTokenKey(
        apb.RegisterMemberTokenKeyRequest(bank_id=bank_id, kid=p256_kid, jwk_json=json.dumps(jwk)),
        timeout=call_timeout_seconds,
    )
    app_channel = served.channel(app.token)
    riverside = Riverside(
        served=served,
        admin=admin,
        admin_key_id=key_id_of(admin_token),
        access=access,
        app=pb_grpc.LedgerServiceStub(app_channel),
        app_key_id=app.key.key_id,
        app_channel=app_channel,
        auditor_channel=served.channel(auditor.token),
        admin_channel=admin_channel,
        ed_idp=ed_idp,
        p256_idp=p256_idp,
        _numbers=iter(range(1, 1_000_000)),
    )
    # ... and requires members' tokens from now on.
    riverside.set_policy(True, "consent-on")
    assert served.ledger.get_bank(bank_id).member_tokens_required
    return riverside


@pytest.fixture
def riverside(pki: Pki) -> Iterator[Riverside]:
    with serving(pki) as served:
        yield set_up(served)


# ---------------------------------------------------------------------------------------
# Paying from a member's account
# ---------------------------------------------------------------------------------------


def test_a_front_end_key_alone_moves_no_members_minutes(riverside: Riverside) -> None:
    before = riverside.books()
    # The front-end, without ana's token, pays ben from ana's account: refused.
    got = refused(lambda: riverside.pay("ana", "ben", 60))
    assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "MEMBER_TOKEN_REQUIRED")
    assert got.metadata["account_id"] == "ana"
    assert riverside.books() == before
    # With ben's token (the payee's, not the payer's): refused the same way.
    got = refused(lambda: riverside.pay("ana", "ben", 60, riverside.token("ben")))
    assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "MEMBER_TOKEN_REQUIRED")
    assert riverside.books() == before


def test_the_payers_token_lets_it_through_and_names_the_member_as_actor(
    riverside: Riverside,
) -> None:
    # With ana's token (Ed25519), ana pays ben; the client's label tries to pass for someone
    # else, and is kept apart as a label.
    forged = "key:someone-else/member:ben"
    paid = riverside.pay("ana", "ben", 60, riverside.token("ana"), actor_label=forged).transfer
    assert paid.actor == f"key:{riverside.app_key_id}/member:ana"
    assert paid.actor_label == forged
    # With a P-256 token, the same.
    paid = riverside.pay("ana", "ben", 30, riverside.token("ana", kid=p256_kid)).transfer
    assert paid.actor == f"key:{riverside.app_key_id}/member:ana"
    assert riverside.books()[1] == {"ana": -90, "ben": 90, "garden": 0}
    # The event in the history records the same actor, from the server, not the client.
    events = riverside.served.ledger.store.events_after(str(bank_uuid(bank_id)), 0)
    actors = [
        item["actor"]
        for _, stored in events
        if (event := json.loads(stored))["type"] == "TransfersCreated"
        for item in event["fields"]["transfers"]
    ]
    assert actors == [f"key:{riverside.app_key_id}/member:ana"] * 2
    assert verify_bank(riverside.served.ledger.store, bank_id).ok


def test_a_pool_payer_and_an_admin_key_need_no_member_token(riverside: Riverside) -> None:
    # The garden pool is no member: the front-end pays from it without a token.
    paid = riverside.pay("garden", "ana", 45).transfer
    assert paid.actor == f"key:{riverside.app_key_id}"
    # The coordinator's (bank-admin) key debits ana without her token.
    paid = riverside.admin.CreateTransfer(
        transfer_request(riverside.transfer_id(), "ana", "ben", 15),
        timeout=call_timeout_seconds,
    ).transfer
    assert paid.actor == f"key:{riverside.admin_key_id}"
    assert riverside.books()[1] == {"ana": 30, "ben": 15, "garden": -45}


def batch_items(riverside: Riverside) -> list[pb.NewTransfer]:
    """ana pays ben, ben pays ana, the garden pays ben: one hour each."""
    return [
        pb.NewTransfer(
            transfer_id=riverside.transfer_id(),
            payer_account_id=payer,
            payee_account_id=payee,
            amount_minutes=60,
            memo=f"{payee} helped {payer}",
        )
        for payer, payee in (("ana", "ben"), ("ben", "ana"), ("garden", "ben"))
    ]


def test_each_batch_item_needs_its_payers_consent(riverside: Riverside) -> None:
    # A batch sent with ana's token: the item ben pays is refused, the others stand.
    results = riverside.app.CreateTransfers(
        pb.CreateTransfersRequest(bank_id=bank_id, transfers=batch_items(riverside)),
        metadata=riverside.token("ana"),
        timeout=call_timeout_seconds,
    ).results
    assert [result.WhichOneof("result") for result in results] == ["transfer", "error", "transfer"]
    assert (results[1].error.code, results[1].error.reason) == (
        grpc.StatusCode.PERMISSION_DENIED.value[0],
        "MEMBER_TOKEN_REQUIRED",
    )
    assert results[1].error.metadata["account_id"] == "ben"
    assert results[0].transfer.actor == f"key:{riverside.app_key_id}/member:ana"
    assert riverside.books()[1] == {"ana": -60, "ben": 120, "garden": -60}
    # The same batch linked: all or nothing, so nothing is recorded.
    before = riverside.books()
    results = riverside.app.CreateTransfers(
        pb.CreateTransfersRequest(bank_id=bank_id, transfers=batch_items(riverside), linked=True),
        metadata=riverside.token("ana"),
        timeout=call_timeout_seconds,
    ).results
    assert [result.error.reason for result in results] == [
        "LINKED_EVENT_FAILED",
        "MEMBER_TOKEN_REQUIRED",
        "LINKED_EVENT_FAILED",
    ]
    assert riverside.books() == before


def test_posting_a_hold_a_member_owes_needs_their_token(riverside: Riverside) -> None:
    # The coordinator holds an hour of ana's for ben.
    hold_id = riverside.transfer_id()
    riverside.admin.CreateTransfer(
        transfer_request(hold_id, "ana", "ben", 60, pending=True), timeout=call_timeout_seconds
    )
    before = riverside.books()

    def post(metadata: Metadata, request_id: str) -> pb.PostPendingTransferResponse:
        return riverside.app.PostPendingTransfer(
            pb.PostPendingTransferRequest(
                bank_id=bank_id, request_id=request_id, transfer_id=hold_id
            ),
            metadata=metadata,
            timeout=call_timeout_seconds,
        )

    # The front-end posts it without a token, then with ben's: refused, still pending.
    for metadata in ((), riverside.token("ben")):
        got = refused(post, metadata, "post-1")
        assert (got.code, got.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "MEMBER_TOKEN_REQUIRED",
        )
        assert riverside.books() == before
    held = riverside.served.ledger.get_transfer(bank_id, hold_id)
    assert held.status == "pending"
    # With ana's token it is posted.
    posted = post(riverside.token("ana"), "post-1").transfer
    assert posted.status == pb.TRANSFER_STATUS_POSTED
    assert riverside.books()[1] == {"ana": -60, "ben": 60, "garden": 0}


def test_a_token_for_another_bank_an_expired_one_or_a_strangers_is_unauthenticated(
    riverside: Riverside,
) -> None:
    before = riverside.books()
    stranger = ed25519.Ed25519PrivateKey.generate()
    for metadata, reason in (
        # Right member, right signature, but for another bank.
        (riverside.token("ana", audience=other_bank_id), "MEMBER_TOKEN_WRONG_BANK"),
        # Expired an hour ago.
        (riverside.token("ana", expires_in_seconds=-3600), "MEMBER_TOKEN_EXPIRED"),
        # Signed by a key the bank never registered: under a registered kid, and another.
        (riverside.token("ana", key=stranger), "MEMBER_TOKEN_BAD_SIGNATURE"),
        (riverside.token("ana", key=stranger, kid="stranger"), "MEMBER_TOKEN_UNKNOWN_KEY"),
    ):
        got = refused(riverside.pay, "ana", "ben", 60, metadata)
        assert (got.code, got.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)
        assert riverside.books() == before


def test_a_removed_keys_tokens_stop_verifying_at_once(riverside: Riverside) -> None:
    # A P-256 token works (and the server has read the bank's keys for it).
    token = riverside.token("ana", kid=p256_kid)
    riverside.pay("ana", "ben", 10, token)
    # The coordinator removes that key; the very same token is refused on the next call.
    riverside.access.RemoveMemberTokenKey(
        apb.RemoveMemberTokenKeyRequest(bank_id=bank_id, kid=p256_kid),
        timeout=call_timeout_seconds,
    )
    before = riverside.books()
    got = refused(lambda: riverside.pay("ana", "ben", 10, token))
    assert (got.code, got.reason) == (grpc.StatusCode.UNAUTHENTICATED, "MEMBER_TOKEN_UNKNOWN_KEY")
    assert riverside.books() == before
    # The other key's tokens still work.
    riverside.pay("ana", "ben", 10, riverside.token("ana"))
    listed = riverside.access.ListMemberTokenKeys(
        apb.ListMemberTokenKeysRequest(bank_id=bank_id), timeout=call_timeout_seconds
    ).keys
    assert [key.kid for key in listed] == [ed_kid]


def test_with_the_policy_off_no_token_is_needed(riverside: Riverside) -> None:
    riverside.set_policy(False, "consent-off")
    assert not riverside.admin.GetBank(
        pb.GetBankRequest(bank_id=bank_id), timeout=call_timeout_seconds
    ).bank.member_tokens_required
    # The front-end pays from ana and reads her transfers without her token.
    paid = riverside.pay("ana", "ben", 60).transfer
    assert paid.actor == f"key:{riverside.app_key_id}"
    listed = riverside.app.ListAccountTransfers(
        pb.ListAccountTransfersRequest(bank_id=bank_id, account_id="ana"),
        timeout=call_timeout_seconds,
    ).transfers
    assert [transfer.transfer_id for transfer in listed] == [paid.transfer_id]
    # A token given anyway is checked and recorded.
    paid = riverside.pay("ana", "ben", 60, riverside.token("ana")).transfer
    assert paid.actor == f"key:{riverside.app_key_id}/member:ana"


# ---------------------------------------------------------------------------------------
# Reading a member's statement
# ---------------------------------------------------------------------------------------


def test_reading_a_members_statement_needs_their_token_or_an_admin_or_auditor_key(
    pki: Pki,
) -> None:
    with serving(pki, with_views=True) as served:
        riverside = set_up(served)
        position = riverside.pay("ana", "ben", 60, riverside.token("ana")).position

        def read_all(channel: grpc.Channel, account: str, metadata: Metadata) -> None:
            """The account's transfers, statement and summary, as one reader."""
            ledger = pb_grpc.LedgerServiceStub(channel)
            views = vpb_grpc.LedgerViewServiceStub(channel)
            transfers = ledger.ListAccountTransfers(
                pb.ListAccountTransfersRequest(bank_id=bank_id, account_id=account),
                metadata=metadata,
                timeout=call_timeout_seconds,
            ).transfers
            assert len(transfers) == 1
            entries = views.ListStatementEntries(
                vpb.ListStatementEntriesRequest(
                    bank_id=bank_id, account_id=account, min_position=position
                ),
                metadata=metadata,
                timeout=call_timeout_seconds,
            ).entries
            assert len(entries) == 1
            views.GetAccountSummary(
                vpb.GetAccountSummaryRequest(
                    bank_id=bank_id, account_id=account, min_position=position
                ),
                metadata=metadata,
                timeout=call_timeout_seconds,
            )

        # The front-end, without ana's token or with ben's, reads none of ana's statement.
        ledger = pb_grpc.LedgerServiceStub(riverside.app_channel)
        views = vpb_grpc.LedgerViewServiceStub(riverside.app_channel)
        reads: list[tuple[Callable[..., object], object]] = [
            (
                ledger.ListAccountTransfers,
                pb.ListAccountTransfersRequest(bank_id=bank_id, account_id="ana"),
            ),
            (
                views.ListStatementEntries,
                vpb.ListStatementEntriesRequest(
                    bank_id=bank_id, account_id="ana", min_position=position
                ),
            ),
            (
                views.GetAccountSummary,
                vpb.GetAccountSummaryRequest(
                    bank_id=bank_id, account_id="ana", min_position=position
                ),
            ),
        ]
        for metadata in ((), riverside.token("ben")):
            for read, request in reads:
                got = refused(read, request, metadata=metadata, timeout=call_timeout_seconds)
                assert (got.code, got.reason) == (
                    grpc.StatusCode.PERMISSION_DENIED,
                    "MEMBER_TOKEN_REQUIRED",
                )
        # With ana's token it reads all three.
        read_all(riverside.app_channel, "ana", riverside.token("ana"))
        # The auditor and the coordinator read them without any token.
        read_all(riverside.auditor_channel, "ana", ())
        read_all(riverside.admin_channel, "ana", ())
        # A pool's statement is no member's: the front-end reads it without a token.
        riverside.pay("garden", "ben", 30)
        pb_grpc.LedgerServiceStub(riverside.app_channel).ListAccountTransfers(
            pb.ListAccountTransfersRequest(bank_id=bank_id, account_id="garden"),
            timeout=call_timeout_seconds,
        )


def test_a_members_account_and_transfers_read_through_a_front_end_need_a_partys_token(
    pki: Pki,
) -> None:
    with serving(pki) as served:
        riverside = set_up(served)
        paid = riverside.pay("ana", "ben", 45, riverside.token("ana")).transfer
        ledger = pb_grpc.LedgerServiceStub(riverside.app_channel)
        get_account = pb.GetAccountRequest(bank_id=bank_id, account_id="ana")
        get_transfer = pb.GetTransferRequest(bank_id=bank_id, transfer_id=paid.transfer_id)
        # Without a token, the front-end reads neither ana's account nor her transfer.
        for read, request in ((ledger.GetAccount, get_account), (ledger.GetTransfer, get_transfer)):
            got = refused(read, request, timeout=call_timeout_seconds)
            assert (got.code, got.reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "MEMBER_TOKEN_REQUIRED",
            )
        # Ben's token reads the transfer he is paid by (he is a party), not ana's account.
        with_ben = riverside.token("ben")
        found = ledger.GetTransfer(get_transfer, metadata=with_ben, timeout=call_timeout_seconds)
        assert found.transfer.transfer_id == paid.transfer_id
        got = refused(
            ledger.GetAccount, get_account, metadata=with_ben, timeout=call_timeout_seconds
        )
        assert got.reason == "MEMBER_TOKEN_REQUIRED"
        # Ana's token reads both; the coordinator needs no token.
        with_ana = riverside.token("ana")
        assert ledger.GetAccount(get_account, metadata=with_ana).account.balance_minutes == -45
        admin = pb_grpc.LedgerServiceStub(riverside.admin_channel)
        assert admin.GetTransfer(get_transfer).transfer.amount_minutes == 45
