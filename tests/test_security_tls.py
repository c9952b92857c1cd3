"""TLS and mutual TLS end to end, with certificates made by the test; and the plaintext rule."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from certs import Issued, Pki, make_pki, server_host

from ledger.security.tls import (
    TlsConfigError,
    TlsSettings,
    check_listener,
    is_loopback_address,
    is_loopback_host,
    load_tls,
    server_credentials,
)
from timebank.ledger.v1 import ledger_pb2 as pb

call_timeout_seconds = 10.0
get_bank = "/timebank.ledger.v1.LedgerService/GetBank"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def tls_settings(pki: Pki, *, mutual: bool = False) -> TlsSettings:
    return TlsSettings(
        certificate_chain_path=pki.server_certificate_path,
        private_key_path=pki.server_key_path,
        client_ca_path=pki.ca_path if mutual else None,
        client_certificates_required=mutual,
    )


@contextmanager
def serving(settings: TlsSettings) -> Iterator[tuple[int, list[tuple[bytes, ...]]]]:
    """A TLS server with a fake GetBank that records the client certificate's names."""
    peers: list[tuple[bytes, ...]] = []

    def bank(request: pb.GetBankRequest, context: grpc.ServicerContext) -> pb.GetBankResponse:
        peers.append(tuple(context.peer_identities() or ()))
        return pb.GetBankResponse(bank=pb.Bank(bank_id=request.bank_id))

    handler = grpc.unary_unary_rpc_method_handler(
        bank,
        request_deserializer=pb.GetBankRequest.FromString,
        response_serializer=pb.GetBankResponse.SerializeToString,
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "timebank.ledger.v1.LedgerService", {"GetBank": handler}
            ),
        )
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials(settings))
    assert port != 0
    server.start()
    try:
        yield port, peers
    finally:
        server.stop(grace=None)


def call(port: int, credentials: grpc.ChannelCredentials | None) -> str:
    """GetBank over a channel with these credentials (None: plaintext)."""
    address = f"127.0.0.1:{port}"
    # The certificate is for `server_host`; the channel checks that name.
    options: list[tuple[str, Any]] = [("grpc.ssl_target_name_override", server_host)]
    channel = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials, options=options)
    )
    with channel:
        stub = channel.unary_unary(
            get_bank,
            request_serializer=pb.GetBankRequest.SerializeToString,
            response_deserializer=pb.GetBankResponse.FromString,
        )
        response = stub(pb.GetBankRequest(bank_id="riverside"), timeout=call_timeout_seconds)
        assert isinstance(response, pb.GetBankResponse)
        return response.bank.bank_id


def trusting(pki: Pki, client: Issued | None = None) -> grpc.ChannelCredentials:
    """Credentials that trust the test CA, presenting `client`'s certificate if given."""
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=pki.ca.certificate_pem)
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.certificate_pem,
        private_key=client.key_pem,
        certificate_chain=client.certificate_pem,
    )


def refused(port: int, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call(port, credentials)
    assert isinstance(raised.value, grpc.Call)
    code = raised.value.code()
    assert isinstance(code, grpc.StatusCode)
    return code


def test_a_client_that_trusts_the_ca_talks_tls(pki: Pki) -> None:
    with serving(tls_settings(pki)) as (port, peers):
        assert call(port, trusting(pki)) == "riverside"
        # Without a client CA the server asks for no client certificate.
        assert peers == [()]
        # A plaintext client gets nowhere, nor does one that trusts only the public roots.
        assert refused(port, None) is grpc.StatusCode.UNAVAILABLE
        assert refused(port, grpc.ssl_channel_credentials()) is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_admits_a_client_certificate_of_the_ca(pki: Pki) -> None:
    with serving(tls_settings(pki, mutual=True)) as (port, peers):
        assert call(port, trusting(pki, pki.client)) == "riverside"
        # The servicer sees who the peer is (a federation link will be matched on it).
        assert peers == [(b"federation peer",)]


def test_mutual_tls_refuses_no_certificate_and_another_cas_certificate(pki: Pki) -> None:
    with serving(tls_settings(pki, mutual=True)) as (port, peers):
        assert refused(port, trusting(pki)) is grpc.StatusCode.UNAVAILABLE
        assert refused(port, trusting(pki, pki.stranger)) is grpc.StatusCode.UNAVAILABLE
        assert peers == []


def test_files_are_checked_with_a_message_naming_the_file(pki: Pki, tmp_path: Path) -> None:
    settings = tls_settings(pki, mutual=True)
    assert load_tls(settings).client_ca == pki.ca.certificate_pem
    missing = tmp_path / "missing.pem"
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    other_key = tmp_path / "other.key"
    other_key.write_bytes(pki.client.key_pem)
    for changes, message in (
        ({"certificate_chain_path": missing}, f"certificate chain file {missing} cannot be read"),
        ({"private_key_path": missing}, f"private key file {missing} cannot be read"),
        ({"client_ca_path": missing}, f"client CA file {missing} cannot be read"),
        ({"certificate_chain_path": tmp_path}, f"certificate chain file {tmp_path} cannot be read"),
        ({"certificate_chain_path": not_pem}, f"certificate chain file {not_pem}: no PEM"),
        ({"private_key_path": not_pem}, f"private key file {not_pem}: not an unencrypted PEM"),
        ({"client_ca_path": not_pem}, f"client CA file {not_pem}: no PEM"),
        ({"private_key_path": other_key}, f"private key file {other_key} is not the key"),
    ):
        with pytest.raises(TlsConfigError) as error:
            load_tls(replace(settings, **changes))  # type: ignore[arg-type]  # each a Path
        assert str(error.value).startswith(message), str(error.value)
    # Requiring client certificates without saying whose is a mistake caught at once.
    with pytest.raises(TlsConfigError, match="client CA"):
        TlsSettings(pki.server_certificate_path, pki.server_key_path, None, True)
    # The private key never shows in a repr.
    assert b"PRIVATE KEY" not in repr(load_tls(settings)).encode()


def test_loopback_is_localhost_127_slash_8_and_ipv6_1() -> None:
    for host in (
        "localhost",
        "LOCALHOST",
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "[::1]",
        "::ffff:127.0.0.1",
    ):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "::", "[::]", "", "10.0.0.1", "example.org", "localhost.example.org"):
        assert not is_loopback_host(host), host
    assert is_loopback_address("127.0.0.1:50051")
    assert is_loopback_address("[::1]:0")
    assert is_loopback_address("localhost:50051")
    assert is_loopback_address("unix:/run/ledger.sock")
    assert not is_loopback_address("[::]:50051")
    assert not is_loopback_address("0.0.0.0:50051")
    assert not is_loopback_address(":50051")
    with pytest.raises(TlsConfigError, match="HOST:PORT"):
        is_loopback_address("localhost")


def test_plaintext_off_loopback_is_refused_unless_allowed(pki: Pki) -> None:
    # Loopback may be plaintext; anything else needs TLS or an explicit allowance.
    check_listener("127.0.0.1:50051", None, plaintext_allowed=False)
    check_listener("0.0.0.0:50051", tls_settings(pki), plaintext_allowed=False)
    check_listener("0.0.0.0:50051", None, plaintext_allowed=True)
    with pytest.raises(TlsConfigError, match="without TLS"):
        check_listener("0.0.0.0:50051", None, plaintext_allowed=False)
    with pytest.raises(TlsConfigError, match="without TLS"):
        check_listener("[::]:50051", None, plaintext_allowed=False)
