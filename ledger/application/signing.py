"""The key that signs checkpoints of banks' chain heads, kept in a file outside the database.

Whoever can rewrite the database can recompute a whole hash chain; they cannot make a
signature without this key. The key is Ed25519 (PEM, PKCS#8), read from
LEDGER_AUDIT_SIGNING_KEY_FILE (made there on first use, readable by its owner only). Its id,
which every signature names, is derived from its public half (ledger/verifier.py), so
rotating keys needs no other setting: point the setting at a new key file; the old public
keys stay listed (ledger_checkpoint_keys) for the checkpoints they signed.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import logs, verifier
from ledger.config import ConfigError, Settings
from ledger.domain import chain
from ledger.storage.store import StoredCheckpoint

log = logging.getLogger(__name__)


class CheckpointSigner:
    """Signs checkpoints with one Ed25519 key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        public_key = private_key.public_key()
        self.key_id = verifier.key_id_of(public_key)
        self.public_key_pem = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def sign(
        self, bank_uuid: str, position: int, chain_head: str, signed_at: datetime
    ) -> StoredCheckpoint:
        time = chain.timestamp_text(signed_at)
        payload = verifier.checkpoint_payload(bank_uuid, position, chain_head, time, self.key_id)
        return StoredCheckpoint(
            bank_uuid=bank_uuid,
            position=position,
            chain_head=chain_head,
            signed_at=time,
            key_id=self.key_id,
            payload=payload,
            signature=self._private_key.sign(payload),
        )


def create_key_file(path: Path) -> Ed25519PrivateKey:
    """A new key written to `path`, which must not exist (FileExistsError if it does).

    The file is written whole under another name (mode 0600 from the start) and then linked
    to `path`, so that another process starting at the same time finds either no key or the
    whole of it, never half of one.
    """
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    partial = path.with_name(f".{path.name}.{os.getpid()}.new")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        os.link(partial, path)  # fails if a key is there already
    finally:
        partial.unlink(missing_ok=True)
    return key


def load_key_file(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(f"LEDGER_AUDIT_SIGNING_KEY_FILE {path}: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"LEDGER_AUDIT_SIGNING_KEY_FILE {path} is not an Ed25519 private key")
    return key


def signer_from_settings(settings: Settings) -> CheckpointSigner | None:
    """The signer of the setting's key file (made on first use); None if signing is off."""
    setting = settings.signing_key_path()
    if setting is None:
        return None
    path = Path(setting)
    try:
        key = create_key_file(path)
        logs.event(log, "checkpoint_key_created", path=str(path))
    except FileExistsError:
        key = load_key_file(path)
    except OSError as error:
        raise ConfigError(f"LEDGER_AUDIT_SIGNING_KEY_FILE {path}: {error}") from None
    signer = CheckpointSigner(key)
    logs.event(log, "checkpoint_signer_ready", key_id=signer.key_id, path=str(path))
    return signer
