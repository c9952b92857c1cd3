"""API keys: issued once as a bearer token, stored as a hash, checked on every call.

A token reads `tbl_<key id>_<secret>`: the fixed prefix lets secret scanners and people
recognise a leaked token; the key id (16 base32 characters, 80 random bits) is public and
finds the stored record; the secret (52 base32 characters, 256 random bits) is shown once
and only its hash is kept. Base32 in lower case keeps the token to [a-z2-7_], so a double
click selects all of it and no character needs escaping anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from ledger.security.errors import Reason, Unauthenticated
from ledger.security.roles import Role

token_prefix = "tbl_"
key_id_bytes = 10  # 80 bits: unique among any number of keys a deployment will hold
secret_bytes = 32  # 256 bits
key_id_length = 16  # base32 characters of key_id_bytes
secret_length = 52  # base32 characters of secret_bytes, padding dropped
# "Bearer " and a token with room to spare; anything longer is refused before parsing.
authorization_length_max = 256
key_label_length_max = 200
authorization_header = "authorization"
# The deployment's scope: the bank_id of an operator key.
deployment_scope = ""

_token_re = re.compile(
    rf"{token_prefix}(?P<key_id>[a-z2-7]{{{key_id_length}}})_(?P<secret>[a-z2-7]{{{secret_length}}})"
)
_bearer_re = re.compile(r"(?i:bearer) (?P<token>\S+)")
# Hashed under a fixed label so these hashes can never be mistaken for any other digest.
_hash_label = b"timebank-ledger api key v1\x00"
_unknown_key_hash = "0" * 64


@dataclass(frozen=True)
class KeyRecord:
    """What is stored about a key: never the secret, only its hash."""

    key_id: str
    role: Role
    bank_id: str  # deployment_scope ("") for operator keys
    secret_hash: str  # hex SHA-256, see hash_secret
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    label: str
    created_by: str  # the actor who issued it

    def __post_init__(self) -> None:
        check_scope(self.role, self.bank_id)

    def revoked(self, at: datetime) -> KeyRecord:
        """This record as it is once revoked at `at` (a second revocation keeps the first)."""
        return self if self.revoked_at is not None else replace(self, revoked_at=at)


@dataclass(frozen=True)
class IssuedKey:
    """A new key: the token to hand over once, and the record to store."""

    token: str = field(repr=False)  # never in a log line or a traceback by accident
    record: KeyRecord


class KeyDirectory(Protocol):
    """Finds stored keys by their public id (the store implements it over the database)."""

    def find(self, key_id: str) -> KeyRecord | None: ...


def check_scope(role: Role, bank_id: str) -> None:
    """Raises ValueError unless an operator key has the deployment scope and others a bank."""
    if role is Role.OPERATOR and bank_id != deployment_scope:
        raise ValueError("an operator key has the deployment's scope, not a bank's")
    if role is not Role.OPERATOR and bank_id == deployment_scope:
        raise ValueError(f"{role.with_article} key is scoped to one bank; bank_id is empty")


def issue_key(
    role: Role,
    bank_id: str,
    *,
    label: str,
    created_by: str,
    now: datetime,
    expires_at: datetime | None = None,
) -> IssuedKey:
    """A fresh key of `role` scoped to `bank_id` ("" for an operator key)."""
    check_scope(role, bank_id)
    if len(label) > key_label_length_max:
        raise ValueError(f"a key label has at most {key_label_length_max} characters")
    if expires_at is not None and expires_at <= now:
        raise ValueError("a key must expire after it is issued")
    key_id = _random_base32(key_id_bytes)
    secret = _random_base32(secret_bytes)
    record = KeyRecord(
        key_id=key_id,
        role=role,
        bank_id=bank_id,
        secret_hash=hash_secret(key_id, secret),
        created_at=now,
        expires_at=expires_at,
        revoked_at=None,
        label=label,
        created_by=created_by,
    )
    return IssuedKey(token=f"{token_prefix}{key_id}_{secret}", record=record)


def hash_secret(key_id: str, secret: str) -> str:
    """The stored form of a secret: hex SHA-256 over the key id and the secret.

    A fast hash is enough here: the secret is 256 random bits, so no guess list or brute
    force can find it from the hash, unlike a password, which needs a slow KDF. Fast also
    means verifying a key costs microseconds on every call. The key id is hashed too, so a
    hash copied to another key's row does not verify there.
    """
    digest = hashlib.sha256(_hash_label + key_id.encode() + b"\x00" + secret.encode())
    return digest.hexdigest()


def secret_matches(record: KeyRecord, secret: str) -> bool:
    """Whether `secret` is the record's, compared in constant time."""
    return hmac.compare_digest(hash_secret(record.key_id, secret), record.secret_hash)


def parse_bearer(authorization: str) -> tuple[str, str]:
    """(key id, secret) of an `authorization` metadata value `Bearer tbl_...`."""
    if len(authorization) > authorization_length_max:
        raise Unauthenticated(Reason.API_KEY_MALFORMED, "the authorization value is too long")
    bearer = _bearer_re.fullmatch(authorization)
    if bearer is None:
        raise Unauthenticated(
            Reason.API_KEY_MALFORMED, "authorization must be 'Bearer' and an API key"
        )
    token = _token_re.fullmatch(bearer["token"])
    if token is None:
        raise Unauthenticated(Reason.API_KEY_MALFORMED, "the bearer token is not an API key")
    return token["key_id"], token["secret"]


def metadata_values(metadata: Sequence[tuple[str, str | bytes]], name: str) -> list[str]:
    """Every text value of metadata key `name` (keys arrive in lower case)."""
    return [value for key, value in metadata if key == name and isinstance(value, str)]


def authenticate(
    directory: KeyDirectory, metadata: Sequence[tuple[str, str | bytes]], now: datetime
) -> KeyRecord:
    """The stored record of the key the call presents, if it is valid at `now`."""
    values = metadata_values(metadata, authorization_header)
    if not values:
        raise Unauthenticated(
            Reason.API_KEY_MISSING, "this call needs an API key: authorization: Bearer tbl_..."
        )
    if len(values) > 1:
        raise Unauthenticated(Reason.API_KEY_MALFORMED, "more than one authorization value")
    key_id, secret = parse_bearer(values[0])
    record = directory.find(key_id)
    # An unknown id and a wrong secret get the same answer, so key ids cannot be probed;
    # an unknown id costs the same hash and comparison, so neither can timing tell them apart.
    if record is None:
        hmac.compare_digest(hash_secret(key_id, secret), _unknown_key_hash)
    if record is None or not secret_matches(record, secret):
        raise Unauthenticated(Reason.API_KEY_INVALID, "the API key is not valid")
    # Only a caller holding the secret learns that the key was revoked or has expired.
    if record.revoked_at is not None and record.revoked_at <= now:
        raise Unauthenticated(Reason.API_KEY_REVOKED, "the API key was revoked")
    if record.expires_at is not None and record.expires_at <= now:
        raise Unauthenticated(Reason.API_KEY_EXPIRED, "the API key has expired")
    return record


class InMemoryKeyDirectory:
    """A KeyDirectory in a dict, for tests and for tools that hold keys in memory."""

    def __init__(self, records: Sequence[KeyRecord] = ()) -> None:
        self._lock = threading.Lock()
        self._records = {record.key_id: record for record in records}

    def add(self, record: KeyRecord) -> None:
        with self._lock:
            assert record.key_id not in self._records, f"key {record.key_id} exists"
            self._records[record.key_id] = record

    def revoke(self, key_id: str, at: datetime) -> None:
        with self._lock:
            self._records[key_id] = self._records[key_id].revoked(at)

    def find(self, key_id: str) -> KeyRecord | None:
        with self._lock:
            return self._records.get(key_id)


def _random_base32(length_bytes: int) -> str:
    encoded = base64.b32encode(secrets.token_bytes(length_bytes)).decode().rstrip("=")
    return encoded.lower()
