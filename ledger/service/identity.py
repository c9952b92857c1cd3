"""Where the edge looks up who is calling: API keys and member-token keys, from the store.

Every call looks its key up, so what was read is kept for `api_key_cache_seconds` (default
1 s): a revocation made on this server is seen at once (the entry is dropped), one made on
another server within that time. Member-token keys are parsed once per fill. Both caches are
bounded (least recently used entries dropped first), so a caller spraying made-up key ids
costs at most one look-up each and holds no memory.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from ledger.application.ledger import Ledger
from ledger.security.api_keys import KeyRecord
from ledger.security.member_tokens import MemberTokenKey, key_from_pem
from ledger.security.roles import Role

# Entries each cache holds at most.
cached_entries_max = 10_000

Value = TypeVar("Value")


class _Cache(Generic[Value]):
    """Values by key, each for `ttl_seconds`, at most `cached_entries_max` of them."""

    def __init__(self, ttl_seconds: float, monotonic: Callable[[], float]) -> None:
        self._ttl_seconds = ttl_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Value]] = OrderedDict()

    def get(self, key: str, load: Callable[[str], Value]) -> Value:
        now = self._monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                self._entries.move_to_end(key)
                return entry[1]
        value = load(key)
        with self._lock:
            self._entries[key] = (now + self._ttl_seconds, value)
            self._entries.move_to_end(key)
            while len(self._entries) > cached_entries_max:
                self._entries.popitem(last=False)
        return value

    def forget(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)


class StoreIdentities:
    """The KeyDirectory and MemberTokenKeySource of a Ledger's store."""

    def __init__(
        self,
        ledger: Ledger,
        cache_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._keys: _Cache[KeyRecord | None] = _Cache(cache_seconds, monotonic)
        self._member_keys: _Cache[tuple[MemberTokenKey, ...]] = _Cache(cache_seconds, monotonic)

    def find(self, key_id: str) -> KeyRecord | None:
        return self._keys.get(key_id, self._load_key)

    def member_token_keys(self, bank_id: str) -> Sequence[MemberTokenKey]:
        return self._member_keys.get(bank_id, self._load_member_keys)

    def forget_key(self, key_id: str) -> None:
        """Drop what was read about a key (after it was revoked here)."""
        self._keys.forget(key_id)

    def forget_member_keys(self, bank_id: str) -> None:
        self._member_keys.forget(bank_id)

    def _load_key(self, key_id: str) -> KeyRecord | None:
        stored = self._ledger.api_key(key_id)
        if stored is None:
            return None
        return KeyRecord(
            key_id=stored.key_id,
            role=Role(stored.role),
            bank_id=stored.bank_id,
            secret_hash=stored.secret_hash,
            created_at=stored.created_at,
            expires_at=stored.expires_at,
            revoked_at=stored.revoked_at,
            label=stored.label,
            created_by=stored.created_by,
        )

    def _load_member_keys(self, bank_id: str) -> tuple[MemberTokenKey, ...]:
        return tuple(
            key_from_pem(key.kid, key.public_key_pem)
            for key in self._ledger.member_token_keys(bank_id)
        )
