"""Member consent tokens: JWTs from a bank's own identity provider, naming one account.

A token is accepted for bank B when all of these hold:
- header `alg` is EdDSA (Ed25519) or ES256 (P-256) and equals the algorithm of the
  registered key named by header `kid`; `none`, HS* and RS* are refused before any key is
  looked at, so an HMAC "signed" with a public key can never verify;
- the signature verifies with that key of bank B;
- claim `aud` is the string B: the audience binds a token to one bank, so a token for
  the same member id in another bank is useless here;
- claim `sub` is the account id (the proto's id syntax), the member who consents;
- claim `exp` is present and not passed (with a small leeway for clock skew), `nbf` and
  `iat` (optional) are not in the future, and `exp` is at most an hour from now, so a
  leaked token is short-lived.
`iss` is not checked: the bank's registered keys already say who may sign.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeGuard

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from ledger.security.errors import Reason, Unauthenticated

member_token_header = "x-member-token"
# A compact ES256/EdDSA JWT with a handful of claims is well under 1 KB.
member_token_length_max = 4096
member_token_kid_length_max = 128
member_token_key_pem_length_max = 4096
member_token_keys_per_bank_max = 8  # room for rotation: old and new keys side by side
member_token_lifetime_seconds_max = 3600
member_token_leeway_seconds_default = 30.0
algorithms_allowed = ("EdDSA", "ES256")

# The proto's id syntax: 1 to 64 of letters, digits and `. _ : -`, starting alphanumeric.
_subject_re = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_kid_re = re.compile(rf"[\x21-\x7e]{{1,{member_token_kid_length_max}}}")  # printable ASCII
_jwk_algorithms: dict[tuple[object, object], str] = {
    ("OKP", "Ed25519"): "EdDSA",
    ("EC", "P-256"): "ES256",
}
# Header parameters that change how a token is read; a token naming them is refused.
_header_parameters_refused = ("crit", "b64")

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class MemberTokenKey:
    """One public key a bank registered, with the id tokens name it by."""

    kid: str
    algorithm: str  # "EdDSA" or "ES256", fixed by the key's type
    public_key: PublicKey

    def __post_init__(self) -> None:
        if not _kid_re.fullmatch(self.kid):
            raise ValueError(
                f"a key id (kid) is 1 to {member_token_kid_length_max} printable ASCII characters"
            )
        assert self.algorithm == _algorithm_of(self.public_key)

    @property
    def pem(self) -> str:
        """The public key as SubjectPublicKeyInfo PEM: the canonical form to store."""
        encoded = self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return encoded.decode()


class MemberTokenKeySource(Protocol):
    """The member-token keys each bank registered (the store implements it)."""

    def member_token_keys(self, bank_id: str) -> Sequence[MemberTokenKey]: ...


class StaticMemberTokenKeys:
    """A MemberTokenKeySource from a fixed mapping, for tests."""

    def __init__(self, keys: Mapping[str, Sequence[MemberTokenKey]] | None = None) -> None:
        self._keys = {bank_id: tuple(keys) for bank_id, keys in (keys or {}).items()}

    def member_token_keys(self, bank_id: str) -> Sequence[MemberTokenKey]:
        return self._keys.get(bank_id, ())


def key_from_pem(kid: str, pem: str) -> MemberTokenKey:
    """A registered key from a PEM public key (Ed25519 or P-256); ValueError otherwise."""
    if len(pem) > member_token_key_pem_length_max:
        raise ValueError(f"a PEM public key has at most {member_token_key_pem_length_max} chars")
    try:
        public_key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as error:
        raise ValueError(f"not a PEM public key: {error}") from None
    return _key(kid, public_key)


def key_from_jwk(jwk: Mapping[str, Any] | str, kid: str | None = None) -> MemberTokenKey:
    """A registered key from a public JWK (OKP Ed25519 or EC P-256); its `kid` if `kid` is None."""
    data = json.loads(jwk) if isinstance(jwk, str) else dict(jwk)
    if not isinstance(data, dict):
        raise ValueError("a JWK is a JSON object")
    if "d" in data:
        raise ValueError("this JWK holds a private key; register only the public key")
    if data.get("use", "sig") != "sig":
        raise ValueError("a member-token key is a signing key (use: sig)")
    named = data.get("kid")
    if kid is None:
        if not isinstance(named, str):
            raise ValueError("the JWK has no kid; give one")
        kid = named
    elif named is not None and named != kid:
        raise ValueError(f"the JWK's kid {named!r} is not {kid!r}")
    algorithm = _jwk_algorithms.get((data.get("kty"), data.get("crv")))
    if algorithm is None:
        raise ValueError("a member-token key is an OKP Ed25519 or an EC P-256 JWK")
    if data.get("alg", algorithm) != algorithm:
        raise ValueError(f"the JWK's alg {data['alg']!r} does not fit its key ({algorithm})")
    try:
        public_key = jwt.PyJWK(data, algorithm).key
    except jwt.PyJWTError as error:
        raise ValueError(f"not a usable JWK: {error}") from None
    return _key(kid, public_key)


def verify_member_token(
    token: str,
    bank_id: str,
    keys: Sequence[MemberTokenKey],
    now: datetime,
    leeway_seconds: float = member_token_leeway_seconds_default,
) -> str:
    """The subject (account id) of a valid member token for `bank_id`; Unauthenticated if not."""
    assert now.tzinfo is not None, "times are aware datetimes"
    key = _key_for(token, keys)
    try:
        claims = jwt.decode(
            token,
            key.public_key,
            algorithms=[key.algorithm],
            # The claims are checked below, against the caller's clock, not PyJWT's.
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise _refused(Reason.MEMBER_TOKEN_BAD_SIGNATURE, "the signature does not verify") from None
    except jwt.PyJWTError:
        raise _refused(Reason.MEMBER_TOKEN_MALFORMED, "the token cannot be decoded") from None
    return _subject(claims, bank_id, now.timestamp(), leeway_seconds)


def _key_for(token: str, keys: Sequence[MemberTokenKey]) -> MemberTokenKey:
    """The registered key the token's header names, once the header is acceptable."""
    if len(token) > member_token_length_max:
        raise _refused(
            Reason.MEMBER_TOKEN_MALFORMED,
            f"a member token has at most {member_token_length_max} characters",
        )
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _refused(Reason.MEMBER_TOKEN_MALFORMED, "the token is not a compact JWT") from None
    algorithm = header.get("alg")
    if algorithm not in algorithms_allowed:
        raise _refused(
            Reason.MEMBER_TOKEN_ALGORITHM_NOT_ALLOWED,
            f"member tokens are signed with one of {', '.join(algorithms_allowed)}",
        )
    if any(name in header for name in _header_parameters_refused):
        raise _refused(Reason.MEMBER_TOKEN_MALFORMED, "the token header has crit or b64")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise _refused(Reason.MEMBER_TOKEN_MALFORMED, "the token header names no kid")
    key = next((key for key in keys if key.kid == kid), None)
    if key is None:
        raise _refused(Reason.MEMBER_TOKEN_UNKNOWN_KEY, "the bank registered no key with this kid")
    if key.algorithm != algorithm:
        raise _refused(
            Reason.MEMBER_TOKEN_ALGORITHM_NOT_ALLOWED, f"key {kid!r} signs with {key.algorithm}"
        )
    return key


def _subject(claims: dict[str, Any], bank_id: str, now: float, leeway_seconds: float) -> str:
    """The `sub` of signed claims that are for `bank_id` and valid at `now`."""
    subject, audience, expires = claims.get("sub"), claims.get("aud"), claims.get("exp")
    if not isinstance(subject, str) or not _subject_re.fullmatch(subject):
        raise _refused(Reason.MEMBER_TOKEN_MALFORMED, "claim sub is not an account id")
    if not _is_time(expires):
        raise _refused(Reason.MEMBER_TOKEN_MALFORMED, "claim exp is required (NumericDate)")
    if not isinstance(audience, str):
        raise _refused(Reason.MEMBER_TOKEN_MALFORMED, "claim aud is required: the bank id string")
    if audience != bank_id:
        raise _refused(Reason.MEMBER_TOKEN_WRONG_BANK, "the token is for another bank")
    if expires <= now - leeway_seconds:
        raise _refused(Reason.MEMBER_TOKEN_EXPIRED, "the token has expired")
    for name in ("nbf", "iat"):
        if name not in claims:
            continue
        moment = claims[name]
        if not _is_time(moment):
            raise _refused(Reason.MEMBER_TOKEN_MALFORMED, f"claim {name} is not a NumericDate")
        if moment > now + leeway_seconds:
            raise _refused(Reason.MEMBER_TOKEN_NOT_YET_VALID, "the token is not valid yet")
    if expires > now + member_token_lifetime_seconds_max + leeway_seconds:
        raise _refused(
            Reason.MEMBER_TOKEN_LIFETIME_TOO_LONG,
            f"a member token expires within {member_token_lifetime_seconds_max} s",
        )
    return subject


def _is_time(value: object) -> TypeGuard[int | float]:
    # NumericDate: a finite JSON number. bool is an int to Python but not a date, and
    # Python's JSON reader accepts NaN, which compares false with everything.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _key(kid: str, public_key: object) -> MemberTokenKey:
    if not isinstance(public_key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("a member-token key is an Ed25519 or P-256 public key")
    return MemberTokenKey(kid=kid, algorithm=_algorithm_of(public_key), public_key=public_key)


def _algorithm_of(public_key: PublicKey) -> str:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise ValueError(f"curve {public_key.curve.name} is not P-256 (ES256)")
    return "ES256"


def _refused(reason: Reason, message: str) -> Unauthenticated:
    return Unauthenticated(reason, f"member token: {message}")
