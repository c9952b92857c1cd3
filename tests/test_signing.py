"""The checkpoint signing key: kept in a file outside the database, made on first use,
readable by its owner only, named by an id derived from it; rotated by pointing the setting
at another file."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import cli, verifier
from ledger.application.signing import CheckpointSigner, signer_from_settings
from ledger.config import ConfigError, Settings


def test_the_key_is_made_once_owner_only_and_loaded_after(tmp_path: Path) -> None:
    settings = Settings(database_url="memory://", audit_signing_key_file=str(tmp_path / "k.pem"))
    first = signer_from_settings(settings)
    assert first is not None
    # Only its owner may read it; no half-written file is left beside it.
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]
    again = signer_from_settings(settings)
    assert again is not None
    assert again.key_id == first.key_id
    # Its id is the verifier's: the first 16 hex digits of sha256 of the raw public key.
    public = verifier.load_public_key(first.public_key_pem.encode())
    assert verifier.key_id_of(public) == first.key_id


def test_where_the_key_lives_by_default() -> None:
    assert Settings().signing_key_path() == "timebank-ledger.checkpoint-key.pem"
    sqlite = Settings(database_url="sqlite:////var/lib/tb/ledger.sqlite3")
    assert sqlite.signing_key_path() == "/var/lib/tb/ledger.checkpoint-key.pem"
    # On PostgreSQL, and when off, nothing is signed unless a path is set.
    assert Settings(database_url="postgresql://h/db").signing_key_path() is None
    assert Settings(audit_signing_key_file="off").signing_key_path() is None


def test_a_file_that_is_not_an_ed25519_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text("not a key")
    settings = Settings(database_url="memory://", audit_signing_key_file=str(tmp_path / "k.pem"))
    with pytest.raises(ConfigError, match="LEDGER_AUDIT_SIGNING_KEY_FILE"):
        signer_from_settings(settings)


def test_a_signature_verifies_with_the_public_key_alone() -> None:
    signer = CheckpointSigner(Ed25519PrivateKey.generate())
    checkpoint = signer.sign("b" * 8, 7, "ab" * 32, datetime(2026, 1, 1, tzinfo=UTC))
    public = verifier.load_public_key(signer.public_key_pem.encode())
    public.verify(checkpoint.signature, checkpoint.payload)
    assert verifier.Checkpoint(checkpoint.payload, checkpoint.signature).fields() == {
        "bank": "b" * 8,
        "chain_head": "ab" * 32,
        "key_id": signer.key_id,
        "position": 7,
        "time": "2026-01-01T00:00:00.000000+00:00",
        "type": "Checkpoint",
    }


def test_the_command_line_makes_a_new_key_and_prints_the_public_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A new key for rotation; it will not overwrite one that exists.
    assert cli.main(["signing-key", "create", "--out", str(tmp_path / "new.pem")]) == 0
    created = capsys.readouterr()
    assert created.out.startswith("-----BEGIN PUBLIC KEY-----")
    assert cli.main(["signing-key", "create", "--out", str(tmp_path / "new.pem")]) == 2
    # The current key's public half, to publish.
    monkeypatch.setenv("LEDGER_AUDIT_SIGNING_KEY_FILE", str(tmp_path / "new.pem"))
    capsys.readouterr()
    assert cli.main(["signing-key", "public"]) == 0
    shown = capsys.readouterr()
    assert shown.out == created.out
