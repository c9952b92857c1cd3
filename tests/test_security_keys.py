"""API keys: issued once, stored hashed, and refused with one named reason per failure."""

from __future__ import annotations

import dataclasses
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from ledger.security import api_keys
from ledger.security.api_keys import (
    InMemoryKeyDirectory,
    IssuedKey,
    authenticate,
    issue_key,
    parse_bearer,
)
from ledger.security.errors import Reason, Unauthenticated
from ledger.security.roles import Role

now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def admin_key(expires_at: datetime | None = None) -> IssuedKey:
    return issue_key(
        Role.BANK_ADMIN,
        "riverside",
        label="office",
        created_by="key:op",
        now=now,
        expires_at=expires_at,
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def refusal(directory: InMemoryKeyDirectory, metadata: object, at: datetime = now) -> Reason:
    with pytest.raises(Unauthenticated) as refused:
        authenticate(directory, metadata, at)  # type: ignore[arg-type]  # tests odd metadata
    return refused.value.reason


def test_a_token_has_a_prefix_a_public_id_and_a_256_bit_secret() -> None:
    issued = admin_key()
    key_id, secret = parse_bearer(f"Bearer {issued.token}")
    # The token is the prefix, the key id and the secret; the id is the record's.
    assert issued.token == f"tbl_{key_id}_{secret}"
    assert key_id == issued.record.key_id
    assert len(key_id) * 5 >= 64
    assert len(secret) * 5 >= 256
    # Two keys never share an id or a secret.
    other = admin_key()
    assert other.record.key_id != key_id
    assert parse_bearer(f"Bearer {other.token}")[1] != secret


def test_only_a_hash_of_the_secret_is_stored_and_the_token_is_never_printed() -> None:
    issued = admin_key()
    _, secret = parse_bearer(f"Bearer {issued.token}")
    stored = dataclasses.asdict(issued.record)
    assert issued.record.secret_hash != secret
    assert all(secret not in str(value) for value in stored.values())
    assert len(issued.record.secret_hash) == 64  # hex SHA-256
    # Neither the issued key nor its record shows the token in a repr (logs, tracebacks).
    assert secret not in repr(issued)
    assert secret not in repr(issued.record)


def test_the_secret_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    issued = admin_key()
    _, secret = parse_bearer(f"Bearer {issued.token}")
    compared: list[tuple[str, str]] = []
    constant_time = hmac.compare_digest

    # Timing cannot be measured reliably in a test; that the comparison goes through
    # hmac.compare_digest, and only there, can.
    def compare_digest(a: str, b: str) -> bool:
        compared.append((a, b))
        return constant_time(a, b)

    monkeypatch.setattr(hmac, "compare_digest", compare_digest)
    assert api_keys.secret_matches(issued.record, secret)
    assert not api_keys.secret_matches(issued.record, "a" * len(secret))
    assert len(compared) == 2
    assert all(stored == issued.record.secret_hash for _, stored in compared)


def test_a_valid_key_authenticates_to_its_record() -> None:
    issued = admin_key()
    directory = InMemoryKeyDirectory([issued.record])
    assert authenticate(directory, bearer(issued.token), now) == issued.record
    # The scheme name is case-insensitive (RFC 6750), the token is not.
    metadata = (("authorization", f"bearer {issued.token}"),)
    assert authenticate(directory, metadata, now) == issued.record


def test_missing_and_malformed_authorization_are_named() -> None:
    issued = admin_key()
    directory = InMemoryKeyDirectory([issued.record])
    # No authorization at all, or only binary metadata.
    assert refusal(directory, ()) is Reason.API_KEY_MISSING
    assert refusal(directory, (("x-other", "1"),)) is Reason.API_KEY_MISSING
    # Not a bearer token, not our format, in upper case, cut short, too long, or twice.
    for value in (
        issued.token,
        f"Basic {issued.token}",
        "Bearer abc",
        f"Bearer {issued.token.upper()}",
        f"Bearer {issued.token[:-1]}",
        f"Bearer {issued.token}x",
        f"Bearer  {issued.token}",
        "Bearer " + "a" * 10_000,
    ):
        assert refusal(directory, (("authorization", value),)) is Reason.API_KEY_MALFORMED, value
    twice = bearer(issued.token) * 2
    assert refusal(directory, twice) is Reason.API_KEY_MALFORMED


def test_an_unknown_id_and_a_wrong_secret_get_the_same_reason() -> None:
    issued = admin_key()
    stranger = admin_key()  # well formed, never stored
    directory = InMemoryKeyDirectory([issued.record])
    key_id, secret = parse_bearer(f"Bearer {issued.token}")
    wrong_secret = f"tbl_{key_id}_{'a' * len(secret)}"
    unknown = refusal(directory, bearer(stranger.token))
    wrong = refusal(directory, bearer(wrong_secret))
    assert unknown is wrong is Reason.API_KEY_INVALID
    # And the same message: nothing tells the two apart.
    with pytest.raises(Unauthenticated) as first:
        authenticate(directory, bearer(stranger.token), now)
    with pytest.raises(Unauthenticated) as second:
        authenticate(directory, bearer(wrong_secret), now)
    assert first.value.message == second.value.message


def test_a_revoked_key_is_refused_from_the_moment_of_revocation() -> None:
    issued = admin_key()
    directory = InMemoryKeyDirectory([issued.record])
    directory.revoke(issued.record.key_id, now + timedelta(minutes=5))
    # Before the revocation takes effect it still works; from then on it does not.
    assert authenticate(directory, bearer(issued.token), now) is not None
    later = now + timedelta(minutes=5)
    assert refusal(directory, bearer(issued.token), later) is Reason.API_KEY_REVOKED
    # Revoking again keeps the first revocation's time.
    directory.revoke(issued.record.key_id, now + timedelta(days=1))
    record = directory.find(issued.record.key_id)
    assert record is not None
    assert record.revoked_at == later


def test_an_expired_key_is_refused() -> None:
    issued = admin_key(expires_at=now + timedelta(hours=1))
    directory = InMemoryKeyDirectory([issued.record])
    assert authenticate(directory, bearer(issued.token), now + timedelta(minutes=59))
    expired_at = now + timedelta(hours=1)
    assert refusal(directory, bearer(issued.token), expired_at) is Reason.API_KEY_EXPIRED


def test_revocation_and_expiry_are_told_only_to_a_holder_of_the_secret() -> None:
    issued = admin_key(expires_at=now + timedelta(hours=1))
    directory = InMemoryKeyDirectory([issued.record])
    directory.revoke(issued.record.key_id, now)
    key_id, secret = parse_bearer(f"Bearer {issued.token}")
    guess = f"tbl_{key_id}_{'b' * len(secret)}"
    assert refusal(directory, bearer(guess), now + timedelta(days=1)) is Reason.API_KEY_INVALID


def test_each_key_has_one_scope_that_fits_its_role() -> None:
    # The operator's key has the deployment's scope; every other role one bank.
    operator = issue_key(Role.OPERATOR, "", label="ops", created_by="cli", now=now)
    assert operator.record.bank_id == ""
    with pytest.raises(ValueError, match="deployment"):
        issue_key(Role.OPERATOR, "riverside", label="", created_by="cli", now=now)
    for role in (Role.BANK_ADMIN, Role.MEMBER_APP, Role.AUDITOR, Role.FEDERATION_PEER):
        with pytest.raises(ValueError, match="one bank"):
            issue_key(role, "", label="", created_by="cli", now=now)
    # Labels are bounded and a key cannot be born expired.
    with pytest.raises(ValueError, match="label"):
        issue_key(Role.AUDITOR, "riverside", label="x" * 201, created_by="cli", now=now)
    with pytest.raises(ValueError, match="expire"):
        issue_key(Role.AUDITOR, "riverside", label="", created_by="cli", now=now, expires_at=now)
