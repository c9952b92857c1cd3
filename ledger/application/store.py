"""The event store: an eventsourcing Application configured only from our Settings."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.utils import Environment, EnvType


class LedgerStore(Application[UUID]):
    """Holds every bank's event history; `save()` of one bank is one database transaction."""

    name = "ledger"

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        # Only what we pass: stray POSTGRES_*/SQLITE_* variables must not reconfigure the store.
        settings: dict[str, Any] = dict(type(self).env)
        settings.update(env or {})
        return Environment(name, settings)
