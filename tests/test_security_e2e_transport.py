"""Transport, end to end: mutual TLS on the real server, and no plaintext off loopback.

The server is `create_server()` as `serve` builds it, with the test CA's certificates; a
client certificate proves which machine calls, an API key still says who may do what.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import replace

import grpc
import pytest
from certs import Issued, Pki, server_host
from grpc_health.v1 import health_pb2, health_pb2_grpc
from security_e2e import bank_id, call_timeout_seconds, refused
from served import Served, serving, settings_for

from ledger.application.ledger import Ledger
from ledger.security.tls import TlsConfigError
from ledger.service.server import create_server
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc


def mutual_tls_channel(served: Served, client: Issued | None, token: str | None) -> grpc.Channel:
    """A channel that trusts the test CA, shows `client`'s certificate and presents `token`."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=served.pki.ca.certificate_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.certificate_pem if client else None,
    )
    if token is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return grpc.secure_channel(
        served.address, credentials, options=[("grpc.ssl_target_name_override", server_host)]
    )


@pytest.fixture
def mutual(pki: Pki) -> Iterator[Served]:
    """The real server, requiring a client certificate of the test CA."""
    with serving(
        pki, tls_client_ca_file=str(pki.ca_path), tls_client_certificates_required=True
    ) as served:
        yield served


def get_bank(channel: grpc.Channel) -> pb.Bank:
    stub = pb_grpc.LedgerServiceStub(channel)
    return stub.GetBank(pb.GetBankRequest(bank_id=bank_id), timeout=call_timeout_seconds).bank


def test_mutual_tls_admits_the_cas_client_and_still_asks_for_a_key(mutual: Served) -> None:
    admin_token = mutual.create_bank(bank_id)
    # With the CA's client certificate and the operator's key, a bank is created...
    with closing(mutual_tls_channel(mutual, mutual.pki.client, mutual.operator_token)) as channel:
        pb_grpc.LedgerServiceStub(channel).CreateBank(
            pb.CreateBankRequest(bank_id="hillside", name="Hillside Time Bank"),
            timeout=call_timeout_seconds,
        )
    # ... and with the admin's key the bank is read.
    with closing(mutual_tls_channel(mutual, mutual.pki.client, admin_token)) as channel:
        assert get_bank(channel).bank_id == bank_id
    # The certificate alone proves the machine, not the caller: no key, no bank.
    with closing(mutual_tls_channel(mutual, mutual.pki.client, None)) as channel:
        got = refused(lambda: get_bank(channel))
        assert (got.code, got.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
        # Health checking needs no key, only the handshake.
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=call_timeout_seconds)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("client", ["none", "stranger"])
def test_mutual_tls_refuses_no_certificate_and_another_cas(mutual: Served, client: str) -> None:
    admin_token = mutual.create_bank(bank_id)
    certificate = None if client == "none" else mutual.pki.stranger
    # A valid key does not make up for the handshake: the call never reaches the server.
    with closing(mutual_tls_channel(mutual, certificate, admin_token)) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            get_bank(channel)
        assert isinstance(raised.value, grpc.Call)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE


@contextmanager
def created(pki: Pki, **overrides: object) -> Iterator[tuple[grpc.Server, int]]:
    """create_server() on a Ledger of its own; both closed afterwards."""
    settings = replace(settings_for(pki), **overrides)  # type: ignore[arg-type]
    ledger = Ledger(settings)
    try:
        server, port = create_server(settings, ledger)
        try:
            yield server, port
        finally:
            server.stop(grace=None)
    finally:
        ledger.close()


def test_plaintext_off_loopback_is_refused_at_start_unless_allowed(pki: Pki) -> None:
    plaintext_everywhere = {
        "grpc_address": "0.0.0.0:0",
        "tls_certificate_file": "",
        "tls_private_key_file": "",
    }
    # Every interface, no TLS: the server does not start.
    with pytest.raises(TlsConfigError, match="without TLS"), created(pki, **plaintext_everywhere):
        pass
    # Allowed explicitly (behind a TLS-terminating proxy), it starts and serves plaintext.
    with created(pki, plaintext_allowed=True, **plaintext_everywhere) as (server, port):
        server.start()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=call_timeout_seconds)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    # Loopback may be plaintext without any allowance; with TLS, any address may be used.
    with created(pki, grpc_address="127.0.0.1:0", tls_certificate_file="", tls_private_key_file=""):
        pass
    with created(pki, grpc_address="0.0.0.0:0"):
        pass
