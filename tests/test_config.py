"""Settings: one LEDGER_* variable each, parsed strictly, and documented where operators look."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ledger.config import ConfigError, Settings

ENV_EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "timebank-ledger.env.example"


def test_the_env_example_lists_every_setting_with_its_default() -> None:
    listed: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("LEDGER_"):
            name, _, value = line.partition("=")
            listed[name] = value
    names = {f"LEDGER_{field.name.upper()}" for field in dataclasses.fields(Settings)}
    assert set(listed) == names
    # The example's values are the defaults, and reading them back changes nothing.
    assert Settings.from_env(listed) == Settings()


def test_flags_numbers_and_names_are_parsed_strictly() -> None:
    settings = Settings.from_env(
        {
            "LEDGER_PLAINTEXT_ALLOWED": "yes",
            "LEDGER_TLS_CLIENT_CERTIFICATES_REQUIRED": "False",
            "LEDGER_WRITER_THREADS": " 7 ",
            "LEDGER_PROJECTIONS": "OFF",
            "LEDGER_LOG_LEVEL": "debug",
        }
    )
    assert settings.plaintext_allowed is True
    assert settings.tls_client_certificates_required is False
    assert (settings.writer_threads, settings.projections, settings.log_level) == (
        7,
        "off",
        "DEBUG",
    )
    for name, value in [
        ("LEDGER_PLAINTEXT_ALLOWED", "maybe"),
        ("LEDGER_WRITER_THREADS", "two"),
        ("LEDGER_WRITER_THREADS", "0"),
        ("LEDGER_SNAPSHOT_INTERVAL_EVENTS", "0"),
        ("LEDGER_READ_WAIT_SECONDS", "11"),
        ("LEDGER_DATABASE_URL", "mysql://x/y"),
    ]:
        with pytest.raises(ConfigError):
            Settings.from_env({name: value})


def test_first_start_keys_go_beside_the_sqlite_file_only() -> None:
    assert Settings().keys_file_path() == "timebank-ledger.keys.json"
    assert (
        Settings(database_url="sqlite:////var/lib/tb/ledger.sqlite3").keys_file_path()
        == "/var/lib/tb/ledger.keys.json"
    )
    assert Settings(database_url="postgresql://h/db").keys_file_path() is None
    assert Settings(bootstrap_keys_file="off").keys_file_path() is None
    assert Settings(bootstrap_keys_file="/tmp/k.json").keys_file_path() == "/tmp/k.json"
