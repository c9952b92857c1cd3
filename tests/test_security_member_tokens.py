"""Member consent tokens: the bank's identity provider signs, the ledger verifies or says why."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ledger.security.errors import Reason, Unauthenticated
from ledger.security.member_tokens import (
    MemberTokenKey,
    key_from_jwk,
    key_from_pem,
    member_token_length_max,
    verify_member_token,
)

now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
bank_id = "riverside"
leeway_seconds = 30.0

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def public_pem(private_key: PrivateKey) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def claims(**changes: Any) -> dict[str, Any]:
    """Claims of a token for Ann of riverside, valid for five minutes from now."""
    base: dict[str, Any] = {
        "sub": "ann",
        "aud": bank_id,
        "exp": int((now + timedelta(minutes=5)).timestamp()),
        "iat": int(now.timestamp()),
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def sign(private_key: PrivateKey, kid: str, payload: dict[str, Any], algorithm: str = "") -> str:
    algorithm = algorithm or (
        "EdDSA" if isinstance(private_key, ed25519.Ed25519PrivateKey) else "ES256"
    )
    return jwt.encode(payload, private_key, algorithm=algorithm, headers={"kid": kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return (
        f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"
    )


@pytest.fixture
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def keys(
    ed_key: ed25519.Ed25519PrivateKey, p256_key: ec.EllipticCurvePrivateKey
) -> list[MemberTokenKey]:
    """The bank registered one Ed25519 key as PEM and one P-256 key as a JWK."""
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(p256_key.public_key()))
    jwk["kid"] = "idp-2025-p256"
    return [key_from_pem("idp-2025-ed", public_pem(ed_key)), key_from_jwk(jwk)]


def refusal(
    token: str, keys: list[MemberTokenKey], at: datetime = now, bank: str = bank_id
) -> Reason:
    with pytest.raises(Unauthenticated) as refused:
        verify_member_token(token, bank, keys, at, leeway_seconds)
    return refused.value.reason


def test_a_right_token_names_its_member_with_either_algorithm(
    ed_key: ed25519.Ed25519PrivateKey,
    p256_key: ec.EllipticCurvePrivateKey,
    keys: list[MemberTokenKey],
) -> None:
    assert keys[0].algorithm == "EdDSA"
    assert keys[1].algorithm == "ES256"
    ed_token = sign(ed_key, "idp-2025-ed", claims())
    assert verify_member_token(ed_token, bank_id, keys, now, leeway_seconds) == "ann"
    p256_token = sign(p256_key, "idp-2025-p256", claims(sub="bo"))
    assert verify_member_token(p256_token, bank_id, keys, now, leeway_seconds) == "bo"


def test_a_token_for_the_same_member_of_another_bank_is_refused(
    ed_key: ed25519.Ed25519PrivateKey, keys: list[MemberTokenKey]
) -> None:
    # Same key, same member id, but the audience is another bank.
    token = sign(ed_key, "idp-2025-ed", claims(aud="hillside"))
    assert refusal(token, keys) is Reason.MEMBER_TOKEN_WRONG_BANK
    # And a right token presented for another bank is refused the same way.
    assert refusal(sign(ed_key, "idp-2025-ed", claims()), keys, bank="hillside") is (
        Reason.MEMBER_TOKEN_WRONG_BANK
    )
    # The audience must be the bank id itself, not a list or nothing.
    for audience in ([bank_id], None):
        token = sign(ed_key, "idp-2025-ed", claims(aud=audience))
        assert refusal(token, keys) is Reason.MEMBER_TOKEN_MALFORMED


def test_expiry_and_not_before_follow_the_given_clock_with_leeway(
    ed_key: ed25519.Ed25519PrivateKey, keys: list[MemberTokenKey]
) -> None:
    token = sign(ed_key, "idp-2025-ed", claims())
    expires = now + timedelta(minutes=5)
    # Within the leeway after exp it still passes; past it, it has expired.
    assert verify_member_token(token, bank_id, keys, expires + timedelta(seconds=29), 30.0)
    assert refusal(token, keys, at=expires + timedelta(seconds=30)) is Reason.MEMBER_TOKEN_EXPIRED
    # nbf or iat in the future beyond the leeway: not yet valid.
    future = int((now + timedelta(minutes=2)).timestamp())
    for name in ("nbf", "iat"):
        early = sign(ed_key, "idp-2025-ed", claims(**{name: future}))
        assert refusal(early, keys) is Reason.MEMBER_TOKEN_NOT_YET_VALID
        assert verify_member_token(early, bank_id, keys, now + timedelta(minutes=2), 30.0)


def test_exp_is_required_and_a_long_lived_token_is_refused(
    ed_key: ed25519.Ed25519PrivateKey, keys: list[MemberTokenKey]
) -> None:
    for exp in (None, "tomorrow", True):
        token = sign(ed_key, "idp-2025-ed", claims(exp=exp))
        assert refusal(token, keys) is Reason.MEMBER_TOKEN_MALFORMED, exp
    # NaN compares false with every time, so it must not slip through as "not expired".
    header = {"alg": "EdDSA", "kid": "idp-2025-ed", "typ": "JWT"}
    payload = b'{"sub":"ann","aud":"riverside","exp":NaN}'
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload)}".encode()
    nan_token = f"{signing_input.decode()}.{b64(ed_key.sign(signing_input))}"
    assert refusal(nan_token, keys) is Reason.MEMBER_TOKEN_MALFORMED
    # A token valid for a day is more than the hour a consent token may live.
    day = int((now + timedelta(days=1)).timestamp())
    token = sign(ed_key, "idp-2025-ed", claims(exp=day))
    assert refusal(token, keys) is Reason.MEMBER_TOKEN_LIFETIME_TOO_LONG


def test_the_subject_must_be_an_account_id(
    ed_key: ed25519.Ed25519PrivateKey, keys: list[MemberTokenKey]
) -> None:
    for subject in (None, "", "ann/member:bo", "x" * 65, 42, "\uff41nn"):
        token = sign(ed_key, "idp-2025-ed", claims(sub=subject))
        assert refusal(token, keys) is Reason.MEMBER_TOKEN_MALFORMED, subject


def test_a_token_signed_by_an_unregistered_key_is_refused(keys: list[MemberTokenKey]) -> None:
    intruder = ed25519.Ed25519PrivateKey.generate()
    # Under a kid the bank never registered...
    assert refusal(sign(intruder, "idp-evil", claims()), keys) is Reason.MEMBER_TOKEN_UNKNOWN_KEY
    # ...or under a registered kid: then the signature does not verify.
    impostor = sign(intruder, "idp-2025-ed", claims())
    assert refusal(impostor, keys) is Reason.MEMBER_TOKEN_BAD_SIGNATURE
    # A bank with no keys knows no kid at all.
    assert refusal(sign(intruder, "idp-2025-ed", claims()), []) is Reason.MEMBER_TOKEN_UNKNOWN_KEY
    # And a token without a kid names no key.
    no_kid = jwt.encode(claims(), intruder, algorithm="EdDSA")
    assert refusal(no_kid, keys) is Reason.MEMBER_TOKEN_MALFORMED


def test_alg_none_hs256_and_rs256_are_refused(
    ed_key: ed25519.Ed25519PrivateKey, keys: list[MemberTokenKey]
) -> None:
    # alg none: no signature at all.
    unsigned = compact({"alg": "none", "kid": "idp-2025-ed"}, claims())
    assert refusal(unsigned, keys) is Reason.MEMBER_TOKEN_ALGORITHM_NOT_ALLOWED
    # HS256 "signed" with the bank's public key as the HMAC secret (key confusion).
    header = {"alg": "HS256", "kid": "idp-2025-ed", "typ": "JWT"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}"
    secret = public_pem(ed_key).encode()
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    assert refusal(f"{signing_input}.{b64(mac)}", keys) is (
        Reason.MEMBER_TOKEN_ALGORITHM_NOT_ALLOWED
    )
    # RS256 from an RSA key.
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rs_token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "idp-2025-ed"})
    assert refusal(rs_token, keys) is Reason.MEMBER_TOKEN_ALGORITHM_NOT_ALLOWED
    # An allowed algorithm that is not the named key's: ES256 header on the Ed25519 kid.
    p256 = ec.generate_private_key(ec.SECP256R1())
    mixed = sign(p256, "idp-2025-ed", claims(), algorithm="ES256")
    assert refusal(mixed, keys) is Reason.MEMBER_TOKEN_ALGORITHM_NOT_ALLOWED


def test_a_tampered_payload_fails_the_signature(
    ed_key: ed25519.Ed25519PrivateKey, keys: list[MemberTokenKey]
) -> None:
    header, _, signature = sign(ed_key, "idp-2025-ed", claims()).split(".")
    forged = f"{header}.{b64(json.dumps(claims(sub='mallory')).encode())}.{signature}"
    assert refusal(forged, keys) is Reason.MEMBER_TOKEN_BAD_SIGNATURE


def test_garbage_and_oversized_tokens_are_malformed(
    ed_key: ed25519.Ed25519PrivateKey, keys: list[MemberTokenKey]
) -> None:
    for garbage in ("", "abc", "a.b.c", "....", "\u2028.\u0085.x"):
        assert refusal(garbage, keys) is Reason.MEMBER_TOKEN_MALFORMED, garbage
    padded = sign(ed_key, "idp-2025-ed", claims(pad="x" * member_token_length_max))
    assert refusal(padded, keys) is Reason.MEMBER_TOKEN_MALFORMED
    # A header asking for unencoded payloads (b64: false) is refused, not interpreted.
    b64_false = compact({"alg": "EdDSA", "kid": "idp-2025-ed", "b64": False, "crit": ["b64"]}, {})
    assert refusal(b64_false, keys) is Reason.MEMBER_TOKEN_MALFORMED


def test_only_public_ed25519_or_p256_keys_can_be_registered(
    ed_key: ed25519.Ed25519PrivateKey,
) -> None:
    # The stored form is canonical PEM and reads back as the same key.
    key = key_from_pem("k1", public_pem(ed_key))
    assert key_from_pem("k1", key.pem) == key_from_pem("k1", public_pem(ed_key))
    rsa_pem = public_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))  # type: ignore[arg-type]
    p384_pem = public_pem(ec.generate_private_key(ec.SECP384R1()))
    for pem in (rsa_pem, p384_pem, "not a key", "x" * 10_000):
        with pytest.raises(ValueError):  # noqa: PT011  # each its own message
            key_from_pem("k1", pem)
    # A JWK with its private part, for encryption, without a kid, or with another alg.
    private_jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ed_key))
    public_jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ed_key.public_key()))
    for jwk, match in (
        ({**private_jwk, "kid": "k"}, "private"),
        ({**public_jwk, "kid": "k", "use": "enc"}, "signing"),
        (public_jwk, "no kid"),
        ({**public_jwk, "kid": "k", "alg": "ES256"}, "alg"),
        ({**public_jwk, "kid": "k"}, None),
    ):
        if match is None:
            assert key_from_jwk(jwk).algorithm == "EdDSA"
        else:
            with pytest.raises(ValueError, match=match):
                key_from_jwk(jwk)
    # Key ids are printable ASCII and bounded.
    for kid in ("", "a b", "x" * 129):
        with pytest.raises(ValueError, match="kid"):
            key_from_pem(kid, public_pem(ed_key))
