"""AccessService and `timebank-ledger keys`, end to end: who hands out which keys, and what
a key's holder sees once it is revoked.

The operator issues a bank's admin keys; the bank's admin issues its front-end and auditor
keys. A token is shown once, in the answer that issues it; listings show the key's public
facts only. Issuing and revoking are events in the bank's history, which still verifies.
The command line does the operator's part against the store, beside a running server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from certs import Pki
from google.protobuf.timestamp_pb2 import Timestamp
from security_e2e import (
    bank_id,
    call_timeout_seconds,
    head,
    key_id_of,
    open_account,
    refused,
)
from served import Served, serving

from ledger.application.verification import verify_bank
from ledger.domain.bank import bank_uuid
from ledger.security.roles import Role
from timebank.ledger.v1 import access_pb2 as apb
from timebank.ledger.v1 import access_pb2_grpc as apb_grpc
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc

repo_root = Path(__file__).resolve().parents[1]
cli_timeout_seconds = 60.0


@dataclass
class Clients:
    """The services as one key's holder calls them."""

    ledger: pb_grpc.LedgerServiceStub
    access: apb_grpc.AccessServiceStub


def clients(served: Served, token: str) -> Clients:
    channel = served.channel(token)
    return Clients(pb_grpc.LedgerServiceStub(channel), apb_grpc.AccessServiceStub(channel))


@pytest.fixture
def served(pki: Pki) -> Iterator[Served]:
    with serving(pki) as served:
        served.create_bank(bank_id)
        yield served


def issue(
    by: Clients, role: apb.Role.ValueType, label: str = "a key", bank: str = bank_id
) -> apb.IssueApiKeyResponse:
    return by.access.IssueApiKey(
        apb.IssueApiKeyRequest(bank_id=bank, role=role, label=label, actor_label="Maria"),
        timeout=call_timeout_seconds,
    )


def revoke(by: Clients, key_id: str, reason: str = "lost phone") -> apb.RevokeApiKeyResponse:
    return by.access.RevokeApiKey(
        apb.RevokeApiKeyRequest(bank_id=bank_id, key_id=key_id, reason=reason),
        timeout=call_timeout_seconds,
    )


def get_bank(by: Clients) -> pb.Bank:
    return by.ledger.GetBank(pb.GetBankRequest(bank_id=bank_id), timeout=call_timeout_seconds).bank


def list_keys(by: Clients) -> apb.ListApiKeysResponse:
    return by.access.ListApiKeys(
        apb.ListApiKeysRequest(bank_id=bank_id, page_size=100), timeout=call_timeout_seconds
    )


def history(served: Served, bank: str = bank_id) -> list[dict[str, object]]:
    """The bank's events as stored, decoded."""
    return [
        json.loads(stored)
        for _, stored in served.ledger.store.events_after(str(bank_uuid(bank)), 0)
    ]


def test_the_operator_issues_admin_keys_and_an_admin_the_front_end_and_auditor_keys(
    served: Served,
) -> None:
    operator = clients(served, served.operator_token)
    # The operator issues riverside a bank-admin key; it works at once.
    issued = issue(operator, apb.ROLE_BANK_ADMIN, "coordinator")
    assert issued.key.role == apb.ROLE_BANK_ADMIN
    assert issued.key.created_by == f"key:{key_id_of(served.operator_token)}"
    admin = clients(served, issued.token)
    assert get_bank(admin).bank_id == bank_id
    # The operator may not issue the bank's other keys: those are the bank's own business.
    before = head(served)
    for role in (apb.ROLE_MEMBER_APP, apb.ROLE_AUDITOR):
        got = refused(issue, operator, role)
        assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    assert head(served) == before
    # The admin issues a front-end key and an auditor key, each good for its role.
    app = clients(served, issue(admin, apb.ROLE_MEMBER_APP, "riverside app").token)
    auditor = clients(served, issue(admin, apb.ROLE_AUDITOR, "annual audit").token)
    open_account(app.ledger, "ana")
    assert get_bank(auditor).account_count == 1
    got = refused(lambda: open_account(auditor.ledger, "ben"))
    assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    # The admin may not issue admin or operator keys.
    before = head(served)
    for role in (apb.ROLE_BANK_ADMIN, apb.ROLE_OPERATOR):
        got = refused(issue, admin, role)
        assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    assert head(served) == before


def test_a_token_is_shown_once_and_no_answer_shows_a_secret_or_its_hash(served: Served) -> None:
    operator = clients(served, served.operator_token)
    admin = clients(served, issue(operator, apb.ROLE_BANK_ADMIN).token)
    issued = issue(admin, apb.ROLE_MEMBER_APP, "riverside app")
    secret = issued.token.split("_")[2]
    secret_hash = served.ledger.api_key(issued.key.key_id)
    assert secret_hash is not None
    # No key message has a field that could hold a secret.
    assert not [
        name
        for name in apb.ApiKey.DESCRIPTOR.fields_by_name
        if any(word in name for word in ("secret", "hash", "token"))
    ]
    # The listing (and the issuing answer's own key, and a revocation's) hold neither the
    # secret nor its hash, in any field.
    listed = list_keys(admin)
    assert issued.key.key_id in [key.key_id for key in listed.keys]
    revoked = revoke(admin, issued.key.key_id)
    for message in (listed, issued.key, revoked, list_keys(operator)):
        wire = message.SerializeToString()
        assert secret.encode() not in wire
        assert secret_hash.secret_hash.encode() not in wire
    # Nor does the bank's history.
    for _, stored in served.ledger.store.events_after(str(bank_uuid(bank_id)), 0):
        assert secret.encode() not in stored
        assert secret_hash.secret_hash.encode() not in stored


def test_a_revoked_key_is_refused_at_once_and_revoking_twice_is_harmless(served: Served) -> None:
    operator = clients(served, served.operator_token)
    admin_issued = issue(operator, apb.ROLE_BANK_ADMIN)
    admin = clients(served, admin_issued.token)
    issued = issue(admin, apb.ROLE_MEMBER_APP, "riverside app")
    app = clients(served, issued.token)
    # The front-end works (and the server has read its key)...
    get_bank(app)
    # ... until its admin revokes it: the very next call on the same channel is refused.
    revoked = revoke(admin, issued.key.key_id).key
    assert revoked.revoked_by == f"key:{admin_issued.key.key_id}"
    assert revoked.revoke_reason == "lost phone"
    assert revoked.HasField("revoked_at")
    got = refused(lambda: get_bank(app))
    assert (got.code, got.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")
    # Revoking it again changes nothing and says the same.
    before = head(served)
    again = revoke(admin, issued.key.key_id, "again")
    assert again.key == revoked
    assert head(served) == before
    got = refused(lambda: get_bank(app))
    assert got.reason == "API_KEY_REVOKED"
    # The admin may not revoke its own kind of key; the operator may.
    other_admin = issue(operator, apb.ROLE_BANK_ADMIN)
    got = refused(lambda: revoke(admin, other_admin.key.key_id))
    assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    revoke(operator, other_admin.key.key_id)
    got = refused(lambda: get_bank(clients(served, other_admin.token)))
    assert got.reason == "API_KEY_REVOKED"


def test_the_operator_reads_no_bank_data(served: Served) -> None:
    operator = clients(served, served.operator_token)
    for read in (
        lambda: get_bank(operator),
        lambda: operator.ledger.ListAccounts(
            pb.ListAccountsRequest(bank_id=bank_id), timeout=call_timeout_seconds
        ),
    ):
        got = refused(read)
        assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
        assert got.message == "an operator key may not make this call"
    # Its own part it does: the bank's keys.
    assert list_keys(operator).keys


def test_key_events_are_in_the_banks_history_and_it_verifies(served: Served) -> None:
    operator = clients(served, served.operator_token)
    admin_issued = issue(operator, apb.ROLE_BANK_ADMIN, "coordinator")
    admin = clients(served, admin_issued.token)
    app = issue(admin, apb.ROLE_MEMBER_APP, "riverside app")
    revoke(admin, app.key.key_id, "replaced")
    key_events = ("ApiKeyIssued", "ApiKeyRevoked")
    events = [event for event in history(served) if event["type"] in key_events]
    facts = [
        (event["type"], event["fields"]["key_id"], event["fields"]["actor"])  # type: ignore[index]
        for event in events
    ]
    operator_actor = f"key:{key_id_of(served.operator_token)}"
    admin_actor = f"key:{admin_issued.key.key_id}"
    assert facts[-3:] == [
        ("ApiKeyIssued", admin_issued.key.key_id, operator_actor),
        ("ApiKeyIssued", app.key.key_id, admin_actor),
        ("ApiKeyRevoked", app.key.key_id, admin_actor),
    ]
    # The client's label is kept apart from the actor.
    assert events[-2]["fields"]["actor_label"] == "Maria"  # type: ignore[index]
    assert app.key.position == events[-2]["version"]
    assert verify_bank(served.ledger.store, bank_id).ok


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------


def keys_cli(database_url: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "LEDGER_DATABASE_URL": database_url, "LEDGER_LOG_LEVEL": "WARNING"}
    result = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "keys", *arguments],
        cwd=repo_root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=cli_timeout_seconds,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def cli_listing(database_url: str, key_id: str, *bank: str) -> list[str]:
    """The `keys list` line of one key, split into words; no line holds a secret."""
    listed = keys_cli(database_url, "list", *bank)
    [line] = [line for line in listed.stdout.splitlines() if line.startswith(key_id)]
    return line.split()


def test_keys_create_list_revoke_a_bank_admin_key_on_the_command_line(
    pki: Pki, tmp_path: Path
) -> None:
    database_url = f"sqlite:///{(tmp_path / 'ledger.sqlite3').resolve()}"
    # A server on a SQLite file (re-reading keys on every call, so that another process's
    # revocation is seen at once) holds lakeside.
    with serving(pki, database_url=database_url, api_key_cache_seconds=0.0) as served:
        served.create_bank("lakeside", "Lakeside Time Bank")
        # The operator issues lakeside's admin key on the command line: the token, once,
        # on standard output.
        created = keys_cli(
            database_url, "create", "--role", "bank-admin", "--bank", "lakeside", "--label", "Jo"
        )
        token = created.stdout.strip()
        key_id = key_id_of(token)
        assert token not in created.stderr
        # The token works against the running server, reads and writes.
        admin = clients(served, token)
        open_account(admin.ledger, "ana", bank="lakeside")
        assert (
            admin.ledger.GetBank(
                pb.GetBankRequest(bank_id="lakeside"), timeout=call_timeout_seconds
            ).bank.account_count
            == 1
        )
        # The listing shows it, active, and not its secret.
        assert cli_listing(database_url, key_id, "--bank", "lakeside")[1:3] == [
            "bank-admin",
            "active",
        ]
        # Revoked on the command line, it is refused by the running server.
        keys_cli(database_url, "revoke", key_id, "--bank", "lakeside", "--reason", "left")
        got = refused(lambda: open_account(admin.ledger, "ben", bank="lakeside"))
        assert (got.code, got.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")
        assert cli_listing(database_url, key_id, "--bank", "lakeside")[2] == "revoked"
        assert verify_bank(served.ledger.store, "lakeside").ok


def test_keys_create_list_revoke_an_operator_key_on_the_command_line(
    pki: Pki, tmp_path: Path
) -> None:
    database_url = f"sqlite:///{(tmp_path / 'ledger.sqlite3').resolve()}"
    # A deployment that already has its first operator key (as `serve` makes one at first
    # start, and as the test server does)...
    with serving(pki, database_url=database_url, api_key_cache_seconds=0.0) as served:
        # ... gets another one on the command line: its token, once, on standard output.
        created = keys_cli(database_url, "create", "--role", "operator", "--label", "ops laptop")
        token = created.stdout.strip()
        key_id = key_id_of(token)
        assert token not in created.stderr
        # The token works against the running server.
        operator = clients(served, token)
        operator.ledger.CreateBank(
            pb.CreateBankRequest(bank_id="lakeside", name="Lakeside Time Bank"),
            timeout=call_timeout_seconds,
        )
        # The listing shows both operator keys, this one active, without its secret.
        listed = keys_cli(database_url, "list").stdout
        assert token.split("_")[2] not in listed
        assert key_id_of(served.operator_token) in listed
        assert cli_listing(database_url, key_id)[1:3] == ["operator", "active"]
        # Revoked on the command line, the key is refused by the running server.
        keys_cli(database_url, "revoke", key_id, "--reason", "laptop lost")
        got = refused(
            lambda: operator.ledger.CreateBank(
                pb.CreateBankRequest(bank_id="brookside", name="Brookside Time Bank"),
                timeout=call_timeout_seconds,
            )
        )
        assert (got.code, got.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")
        assert cli_listing(database_url, key_id)[2] == "revoked"


def test_a_bad_label_or_expiry_names_its_field_and_issues_nothing(served: Served) -> None:
    admin = clients(served, served.key(Role.BANK_ADMIN, bank_id))
    before = head(served)
    past = Timestamp(seconds=int(time.time()) - 3600)
    # Seconds beyond year 9999 and nanos beyond a second: no Timestamp at all (this was
    # INTERNAL, with a traceback in the log).
    for request, reason, field in (
        (apb.IssueApiKeyRequest(label="x" * 201), "FIELD_TOO_LONG", "label"),
        (apb.IssueApiKeyRequest(expires_at=past), "INVALID_KEY", "expires_at"),
        (
            apb.IssueApiKeyRequest(expires_at=Timestamp(seconds=10**18)),
            "INVALID_TIMESTAMP",
            "expires_at",
        ),
        (
            apb.IssueApiKeyRequest(expires_at=Timestamp(seconds=0, nanos=-1)),
            "INVALID_TIMESTAMP",
            "expires_at",
        ),
    ):
        request.bank_id, request.role = bank_id, apb.ROLE_MEMBER_APP
        got = refused(admin.access.IssueApiKey, request, timeout=call_timeout_seconds)
        assert (got.code, got.reason, got.metadata["field"]) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            reason,
            field,
        )
    assert head(served) == before
