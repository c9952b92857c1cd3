"""All configuration, read once from LEDGER_* environment variables and passed down explicitly."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_DATABASE_URL = "sqlite:///timebank-ledger.sqlite3"

# Where projections run: "process" in a child process that `serve` starts and restarts;
# "in-process" in background threads of `serve`; "off" serves the views but leaves
# following the log to a `timebank-ledger project` run elsewhere; "auto" is "process",
# except on memory:// (which no other process can open), where it is "in-process".
PROJECTIONS_MODES = ("auto", "process", "in-process", "off")
# A read that asks for a position waits at most this long for its view to get there.
READ_WAIT_SECONDS_MAX = 10.0


class ConfigError(ValueError):
    """A LEDGER_* setting has a value the service cannot use."""


# Counts that must be positive.
_AT_LEAST_ONE = (
    "key_request_burst_max",
    "key_calls_in_flight_max",
    "calls_in_flight_max",
    "reads_waiting_max",
    "banks_per_operator_key_max",
    "writer_threads",
    "writer_batch_max",
    "writer_queue_max",
    "resident_banks_max",
    "snapshot_interval_events",
    "audit_checkpoint_interval_events",
    "audit_signing_interval_events",
    "audit_streams_max",
    "audit_follow_resume_events_max",
    "audit_resident_banks_max",
)
# Settings whose text is normalised before use (the rest are only stripped).
_NORMALISE: dict[str, Callable[[str], str]] = {
    "log_level": lambda text: text.strip().upper(),
    "projections": lambda text: text.strip().lower(),
}


@dataclass(frozen=True)
class Settings:
    """Every setting; each is read from LEDGER_<NAME IN CAPITALS>, e.g. LEDGER_WRITER_THREADS."""

    # sqlite:///relative/path, sqlite:////absolute/path, postgresql://user:pw@host:port/db?schema=s,
    # or memory:// (an in-memory SQLite database, nothing kept; for tests).
    database_url: str = DEFAULT_DATABASE_URL
    # HOST:PORT the gRPC server listens on (port 0: any free port).
    grpc_address: str = "127.0.0.1:50051"
    # Threads serving gRPC calls.
    grpc_workers: int = 32
    # The largest request body accepted (MESSAGE_TOO_LARGE beyond), and response sent.
    grpc_max_message_bytes: int = 4 * 1024 * 1024
    # On SIGTERM, how long calls in flight may take to finish.
    shutdown_grace_seconds: float = 10.0
    # DEBUG, INFO, WARNING or ERROR; logs are JSON lines on standard error.
    log_level: str = "INFO"
    # Threads that run the banks' writers (no bank has a thread of its own).
    writer_threads: int = 4
    # Commands one bank's writer applies and commits together at most.
    writer_batch_max: int = 1000
    # Requests that may wait for one bank's writer before new ones are refused.
    writer_queue_max: int = 10_000
    # How long a caller waits for its command to be committed before giving up.
    writer_timeout_seconds: float = 30.0
    # Banks whose writer (and decision state) stays in memory at most; the least recently
    # used idle ones are unloaded beyond that.
    resident_banks_max: int = 1000
    # A bank's writer is unloaded after this long without work.
    bank_idle_seconds: float = 300.0
    # How often resident writers are checked for pending transfers whose deadline passed.
    expiry_interval_seconds: float = 1.0
    # How often the store is searched for due pending transfers of banks not in memory.
    expiry_sweep_interval_seconds: float = 1.0
    # A bank's decision state is snapshotted after this many changes (an event, or one
    # transfer of a grouped event); loading replays at most about this many after it.
    snapshot_interval_events: int = 10_000
    # PostgreSQL connections kept open (and extra ones opened under load) by the event store.
    database_pool_size: int = 8
    database_pool_overflow: int = 8
    # The longest a statement waits for a lock or a pooled connection, in seconds.
    database_lock_timeout_seconds: int = 10
    # Where the views (projections' tables) live; "" means in LEDGER_DATABASE_URL's database.
    views_database_url: str = ""
    # "auto", "process", "in-process" or "off" (see PROJECTIONS_MODES).
    projections: str = "auto"
    # How long a read asking for `min_position` may wait for its view, 0 to 10 seconds.
    read_wait_seconds: float = 2.0
    # HOST:PORT of the Prometheus exporter (port 0: any free port); "" or "off": none.
    metrics_address: str = "127.0.0.1:9464"
    # TLS for the gRPC listener: PEM files of the certificate chain and its private key;
    # with a client CA, mutual TLS (client certificates required if the flag says so).
    tls_certificate_file: str = ""
    tls_private_key_file: str = ""
    tls_client_ca_file: str = ""
    tls_client_certificates_required: bool = False
    # Listening on anything but loopback without TLS is refused unless this is set.
    plaintext_allowed: bool = False
    # How long a server trusts what it read about an API key (a revocation made by another
    # server takes at most this long to be seen here).
    api_key_cache_seconds: float = 1.0
    # Per API key: requests per second (and the burst above it), and calls in flight. A
    # bank's front-end serves all its members through one key: these are not small.
    key_requests_per_second: float = 1000.0
    key_request_burst_max: int = 2000
    key_calls_in_flight_max: int = 64
    # Calls the server serves at once, all keys together; more are refused (SERVER_BUSY).
    calls_in_flight_max: int = 256
    # Reads that may wait for a view to reach their min_position at once.
    reads_waiting_max: int = 64
    # Banks one operator key may create.
    banks_per_operator_key_max: int = 1000
    # Where `serve` writes the keys it makes on a first start (an operator key, and a
    # bank-admin key of the demo bank): "auto" beside the SQLite file (none on
    # PostgreSQL), a path, or "off".
    bootstrap_keys_file: str = "auto"

    # ----------------------------------------------------------------- auditing
    # The audit projection keeps a bank's balances (for as-of queries) after this many
    # changes (an event, or one transfer of a grouped event), and after at least as many as
    # the bank has accounts and open holds: checkpoints never take more room than the history.
    audit_checkpoint_interval_events: int = 1000
    # A checkpoint of a bank's chain head is signed after this many events, or this long
    # after the first event not covered by a signed checkpoint, whichever comes first.
    audit_signing_interval_events: int = 10_000
    audit_signing_interval_seconds: float = 60.0
    # The Ed25519 private key (PEM, PKCS#8) checkpoints are signed with, kept outside the
    # database: "auto" beside the SQLite file (made on first use, mode 0600; none on
    # PostgreSQL), a path (made on first use if missing), or "off" (nothing is signed).
    audit_signing_key_file: str = "auto"
    # StreamEvents calls served at once (each holds a gRPC worker thread while it lasts);
    # at most half of LEDGER_GRPC_WORKERS are given to streams whatever this says.
    audit_streams_max: int = 16
    # How often a following stream looks for new events while it has none to send.
    audit_follow_poll_seconds: float = 0.05
    # How far behind the bank's head a member-app key's follow stream may start.
    audit_follow_resume_events_max: int = 10_000
    # Banks whose whole-history check the audit projection keeps in memory at once; another
    # bank's is rebuilt from the store when its next event comes.
    audit_resident_banks_max: int = 100

    def __post_init__(self) -> None:
        if self.projections not in PROJECTIONS_MODES:
            raise ConfigError(
                f"LEDGER_PROJECTIONS {self.projections!r} is not one of {PROJECTIONS_MODES}"
            )
        if not 0 <= self.read_wait_seconds <= READ_WAIT_SECONDS_MAX:
            raise ConfigError(
                f"LEDGER_READ_WAIT_SECONDS {self.read_wait_seconds} is not between 0 and"
                f" {READ_WAIT_SECONDS_MAX:g}"
            )
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ConfigError(f"LEDGER_{name.upper()} must be at least 1")
        host_port(self.metrics_address)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        values: dict[str, object] = {}
        try:
            for setting in fields(cls):
                text = environ.get(f"LEDGER_{setting.name.upper()}")
                if text is None:
                    continue
                text = _NORMALISE.get(setting.name, str.strip)(text)
                kind: type[Any] = type(setting.default)
                if kind is bool:
                    values[setting.name] = _flag(setting.name, text)
                else:
                    values[setting.name] = text if kind is str else kind(text)
            settings = cls(**values)  # type: ignore[arg-type]
        except ValueError as error:
            raise ConfigError(f"bad LEDGER_* setting: {error}") from None
        settings.eventsourcing_env()  # fail at start-up, not at first request
        eventsourcing_env(settings.views_url)  # the same URL forms name the views' database
        return settings

    def eventsourcing_env(self) -> dict[str, str]:
        """The eventsourcing library's settings for this database URL."""
        env = eventsourcing_env(self.database_url)
        if env["PERSISTENCE_MODULE"] == "eventsourcing.postgres":
            env["POSTGRES_POOL_SIZE"] = str(self.database_pool_size)
            env["POSTGRES_MAX_OVERFLOW"] = str(self.database_pool_overflow)
            env["POSTGRES_LOCK_TIMEOUT"] = str(self.database_lock_timeout_seconds)
            env["POSTGRES_MAX_WAITING"] = str(self.writer_queue_max)
        return env

    def keys_file_path(self) -> str | None:
        """Where first-start keys are written and `demo` reads them (None: nowhere)."""
        return self._file_setting(self.bootstrap_keys_file, ".keys.json")

    def signing_key_path(self) -> str | None:
        """Where the checkpoint signing key is (None: nothing is signed)."""
        return self._file_setting(self.audit_signing_key_file, ".checkpoint-key.pem")

    def _file_setting(self, setting: str, auto_suffix: str) -> str | None:
        """A file setting: "off" or empty is none; "auto" is beside the SQLite file (the
        database's name with `auto_suffix`), none for any other database; else the path."""
        if setting.lower() == "off" or not setting:
            return None
        if setting.lower() != "auto":
            return setting
        url = urlsplit(self.database_url)
        if url.scheme != "sqlite":
            return None
        path = unquote(url.path[1:] if url.path.startswith("/") else url.path)
        return str(Path(path).with_name(Path(path).stem + auto_suffix))

    @property
    def projections_mode(self) -> str:
        """Where projections run, "auto" resolved: process, in-process or off."""
        if self.projections != "auto":
            return self.projections
        return "in-process" if self.database_url.startswith("memory:") else "process"

    @property
    def views_url(self) -> str:
        """The views' database: LEDGER_VIEWS_DATABASE_URL, else the events' database."""
        return self.views_database_url or self.database_url


def _flag(name: str, text: str) -> bool:
    value = text.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"LEDGER_{name.upper()} {text!r} is not true or false")


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a HOST:PORT listen address; None when it is "" or "off" (disabled)."""
    if address.strip().lower() in ("", "off"):
        return None
    host, separator, port = address.rpartition(":")
    if not separator or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"address {address!r} is not HOST:PORT, '' or 'off'")
    return host.strip("[]") or "0.0.0.0", int(port)


def eventsourcing_env(database_url: str) -> dict[str, str]:
    url = urlsplit(database_url)
    if url.scheme == "memory":
        # A private in-memory SQLite database per call: each Ledger gets its own.
        name = f"file:timebank-ledger-{uuid.uuid4().hex}?mode=memory&cache=shared"
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": name}
    if url.scheme == "sqlite":
        # sqlite:///name.sqlite3 is relative to the working directory; sqlite:////abs is absolute.
        path = unquote(url.path[1:] if url.path.startswith("/") else url.path)
        if not path:
            raise ConfigError(
                "sqlite URL needs a file path, e.g. sqlite:///timebank-ledger.sqlite3"
            )
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path}
    if url.scheme in ("postgresql", "postgres"):
        dbname = unquote(url.path.lstrip("/"))
        if not dbname:
            raise ConfigError("postgresql URL needs a database name, e.g. postgresql://host/db")
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": url.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": unquote(url.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(url.password or ""),
            # Fail fast with a clear error rather than wait 30 s on an unreachable server.
            "POSTGRES_CONNECT_TIMEOUT": "5",
        }
        schema = parse_qs(url.query).get("schema", [""])[0]
        if schema:
            env["POSTGRES_SCHEMA"] = schema
        return env
    raise ConfigError(
        f"LEDGER_DATABASE_URL scheme {url.scheme!r} is not one of sqlite, postgresql, memory"
    )
