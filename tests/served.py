"""A real server for end-to-end tests: TLS with a test CA, and real API keys in its store.

`serving()` starts `create_server()` on 127.0.0.1 port 0 with the test PKI's certificate,
over a Ledger whose store already holds an operator key. `Served.key()` issues more keys
the way an operator or a bank admin would (the event goes through the bank's writer), and
`Served.channel()` opens a TLS channel that presents a key (and a member token) on every
call, as a front-end's would. Nothing here switches security off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import grpc
from certs import Pki, server_host

from ledger.application.ledger import Ledger
from ledger.config import Settings
from ledger.domain.commands import CreateBank
from ledger.security.api_keys import issue_key
from ledger.security.roles import Role
from ledger.service.bootstrap import operator_key_command
from ledger.service.discovery import HealthServicer
from ledger.service.server import create_server
from projections.registry import ProjectionSet

call_timeout_seconds = 10.0


class _Credentials(grpc.AuthMetadataPlugin):
    """Adds `authorization: Bearer <key>` (and `x-member-token`) to every call."""

    def __init__(self, token: str, member_token: str | None) -> None:
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),)
        if member_token is not None:
            self._metadata += (("x-member-token", member_token),)

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback(self._metadata, None)


@dataclass
class Served:
    address: str
    ledger: Ledger
    pki: Pki
    operator_token: str
    health: HealthServicer
    projections: ProjectionSet | None = None
    _channels: list[grpc.Channel] = field(default_factory=list)

    def key(self, role: Role, bank_id: str, *, label: str = "test key") -> str:
        """A new key of `role` for `bank_id` (which must exist), issued as its admin would."""
        issued = issue_key(role, bank_id, label=label, created_by="test", now=datetime.now(UTC))
        self.ledger.execute(bank_id, operator_key_command(issued, "key:test"))
        return issued.token

    def create_bank(self, bank_id: str, name: str = "Riverside Time Bank") -> str:
        """Creates a bank as the operator would; returns a bank-admin key of it."""
        self.ledger.create_bank(CreateBank(bank_id=bank_id, name=name, actor="key:test"))
        return self.key(Role.BANK_ADMIN, bank_id)

    def channel(self, token: str | None = None, member_token: str | None = None) -> grpc.Channel:
        """A TLS channel that trusts the test CA and presents `token` on every call."""
        credentials = grpc.ssl_channel_credentials(root_certificates=self.pki.ca.certificate_pem)
        if token is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.metadata_call_credentials(_Credentials(token, member_token))
            )
        channel = grpc.secure_channel(
            self.address, credentials, options=[("grpc.ssl_target_name_override", server_host)]
        )
        grpc.channel_ready_future(channel).result(timeout=call_timeout_seconds)
        self._channels.append(channel)
        return channel

    def close_channels(self) -> None:
        while self._channels:
            self._channels.pop().close()


def settings_for(pki: Pki, **overrides: Any) -> Settings:
    settings = Settings(
        database_url="memory://",
        grpc_address="127.0.0.1:0",
        grpc_workers=4,
        expiry_interval_seconds=0.02,
        metrics_address="off",
        tls_certificate_file=str(pki.server_certificate_path),
        tls_private_key_file=str(pki.server_key_path),
    )
    return replace(settings, **overrides)


@contextmanager
def serving(
    pki: Pki,
    *,
    clock: Callable[[], datetime] | None = None,
    ledger_class: type[Ledger] = Ledger,
    with_views: bool = False,
    **overrides: Any,
) -> Iterator[Served]:
    """A started server (TLS, keys on) on a free port; yields what a test needs of it."""
    settings = settings_for(pki, **overrides)
    ledger = ledger_class(settings, clock)
    projections: ProjectionSet | None = None
    try:
        operator = issue_key(
            Role.OPERATOR, "", label="test operator", created_by="test", now=datetime.now(UTC)
        )
        ledger.issue_operator_key(operator_key_command(operator, "test"))
        if with_views:
            projections = ProjectionSet.open(settings, ledger.store)
            if settings.projections_mode != "off":
                projections.start()
        health = HealthServicer()
        server, port = create_server(
            settings, ledger, health_servicer=health, projections=projections
        )
        server.start()
        served = Served(f"127.0.0.1:{port}", ledger, pki, operator.token, health, projections)
        try:
            yield served
        finally:
            served.close_channels()
            server.stop(grace=None)
    finally:
        if projections is not None:
            projections.close()
        ledger.close()
