"""All configuration, read once from LEDGER_* environment variables and passed down explicitly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_DATABASE_URL = "sqlite:///timebank-ledger.sqlite3"

# Where projections run: "in-process" follows the log in background threads of `serve`;
# "off" serves the views but leaves following the log to `timebank-ledger project`.
PROJECTIONS_MODES = ("in-process", "off")
# A read that asks for a position waits at most this long for its view to get there.
READ_WAIT_SECONDS_MAX = 10.0


class ConfigError(ValueError):
    """A LEDGER_* setting has a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    # sqlite:///relative/path, sqlite:////absolute/path, postgresql://user:pw@host:port/db?schema=s,
    # or memory:// (nothing kept; for tests).
    database_url: str = DEFAULT_DATABASE_URL
    grpc_address: str = "127.0.0.1:50051"
    grpc_workers: int = 32
    grpc_max_message_bytes: int = 4 * 1024 * 1024
    shutdown_grace_seconds: float = 10.0
    log_level: str = "INFO"
    # Commands one bank's writer applies and commits together at most.
    writer_batch_max: int = 1000
    # How long the writer may wait for more commands to fill a batch once one has arrived;
    # 0 takes only what is already waiting (requests queue up while a commit is in flight).
    writer_batch_wait_seconds: float = 0.0
    # Requests that may wait for one bank's writer before new ones are refused.
    writer_queue_max: int = 10_000
    # How long a caller waits for its command to be committed before giving up.
    writer_timeout_seconds: float = 30.0
    # How often an idle writer wakes to expire pending transfers whose deadline passed.
    expiry_interval_seconds: float = 1.0
    # Where the views (projections' tables) live; "" means in LEDGER_DATABASE_URL's database.
    views_database_url: str = ""
    # "in-process" or "off" (see PROJECTIONS_MODES).
    projections: str = "in-process"
    # How long a read asking for `min_position` may wait for its view, 0 to 10 seconds.
    read_wait_seconds: float = 2.0
    # HOST:PORT of the Prometheus exporter (port 0: any free port); "" or "off": none.
    metrics_address: str = "127.0.0.1:9464"

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
        host_port(self.metrics_address)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        def get(name: str, default: str) -> str:
            return environ.get(f"LEDGER_{name}", default)

        try:
            settings = cls(
                database_url=get("DATABASE_URL", DEFAULT_DATABASE_URL),
                grpc_address=get("GRPC_ADDRESS", cls.grpc_address),
                grpc_workers=int(get("GRPC_WORKERS", str(cls.grpc_workers))),
                grpc_max_message_bytes=int(
                    get("GRPC_MAX_MESSAGE_BYTES", str(cls.grpc_max_message_bytes))
                ),
                shutdown_grace_seconds=float(
                    get("SHUTDOWN_GRACE_SECONDS", str(cls.shutdown_grace_seconds))
                ),
                log_level=get("LOG_LEVEL", cls.log_level).upper(),
                writer_batch_max=int(get("WRITER_BATCH_MAX", str(cls.writer_batch_max))),
                writer_batch_wait_seconds=float(
                    get("WRITER_BATCH_WAIT_SECONDS", str(cls.writer_batch_wait_seconds))
                ),
                writer_queue_max=int(get("WRITER_QUEUE_MAX", str(cls.writer_queue_max))),
                writer_timeout_seconds=float(
                    get("WRITER_TIMEOUT_SECONDS", str(cls.writer_timeout_seconds))
                ),
                expiry_interval_seconds=float(
                    get("EXPIRY_INTERVAL_SECONDS", str(cls.expiry_interval_seconds))
                ),
                views_database_url=get("VIEWS_DATABASE_URL", cls.views_database_url),
                projections=get("PROJECTIONS", cls.projections).strip().lower(),
                read_wait_seconds=float(get("READ_WAIT_SECONDS", str(cls.read_wait_seconds))),
                metrics_address=get("METRICS_ADDRESS", cls.metrics_address).strip(),
            )
        except ValueError as error:
            raise ConfigError(f"bad LEDGER_* setting: {error}") from None
        settings.eventsourcing_env()  # fail at start-up, not at first request
        eventsourcing_env(settings.views_url)  # the same URL forms name the views' database
        return settings

    def eventsourcing_env(self) -> dict[str, str]:
        """The eventsourcing library's settings for this database URL."""
        return eventsourcing_env(self.database_url)

    @property
    def views_url(self) -> str:
        """The views' database: LEDGER_VIEWS_DATABASE_URL, else the events' database."""
        return self.views_database_url or self.database_url


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
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
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
