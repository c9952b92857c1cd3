"""TLS for the listener: credentials from files, and the rule against plaintext off loopback.

The files are read and checked when the server starts (certificates parse, the key is the
certificate's), so a wrong path or file fails with a message naming it instead of an
opaque error from gRPC's core, or a listener that never accepts a handshake.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

# PEM files this large are not certificates or keys; refuse them rather than read them.
tls_file_bytes_max = 1024 * 1024
# gRPC's local-socket address schemes: reachable only from this machine.
_local_schemes = ("unix:", "unix-abstract:")


class TlsConfigError(ValueError):
    """A TLS file is missing, unreadable or not what it should be; or plaintext is refused."""


@dataclass(frozen=True)
class TlsSettings:
    certificate_chain_path: Path  # PEM: the server's certificate, then intermediates
    private_key_path: Path  # PEM, unencrypted: the service starts unattended
    client_ca_path: Path | None = None  # PEM: CAs whose client certificates are accepted
    client_certificates_required: bool = False  # mutual TLS: a call without one fails

    def __post_init__(self) -> None:
        if self.client_certificates_required and self.client_ca_path is None:
            raise TlsConfigError("requiring client certificates needs a client CA file")


@dataclass(frozen=True)
class TlsMaterial:
    """The checked contents of the TLS files, as gRPC takes them."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    def __repr__(self) -> str:  # never print the private key
        return f"TlsMaterial(certificate_chain=<{len(self.certificate_chain)} bytes>, ...)"


def load_tls(settings: TlsSettings) -> TlsMaterial:
    """Reads and checks the files; TlsConfigError names the file at fault."""
    chain_pem = _read(settings.certificate_chain_path, "certificate chain")
    key_pem = _read(settings.private_key_path, "private key")
    chain = _certificates(chain_pem, settings.certificate_chain_path, "certificate chain")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise TlsConfigError(
            f"private key file {settings.private_key_path}: not an unencrypted PEM key ({error})"
        ) from None
    if _public_der(key.public_key()) != _public_der(chain[0].public_key()):
        raise TlsConfigError(
            f"private key file {settings.private_key_path} is not the key of the first"
            f" certificate in {settings.certificate_chain_path}"
        )
    client_ca = None
    if settings.client_ca_path is not None:
        client_ca = _read(settings.client_ca_path, "client CA")
        _certificates(client_ca, settings.client_ca_path, "client CA")
    return TlsMaterial(chain_pem, key_pem, client_ca)


def server_credentials(settings: TlsSettings) -> grpc.ServerCredentials:
    """gRPC server credentials from the files, with mutual TLS if a client CA is given."""
    material = load_tls(settings)
    return grpc.ssl_server_credentials(
        [(material.private_key, material.certificate_chain)],
        root_certificates=material.client_ca,
        require_client_auth=settings.client_certificates_required,
    )


def is_loopback_host(host: str) -> bool:
    """Whether a host is this machine only: localhost, 127.0.0.0/8 or ::1."""
    host = host.strip().strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # another name: it may resolve to anything
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def is_loopback_address(address: str) -> bool:
    """Whether a gRPC listen address (HOST:PORT, [V6]:PORT, unix:PATH) is local only."""
    if address.startswith(_local_schemes):
        return True
    host, separator, port = address.rpartition(":")
    if not separator or not port.isdigit():
        raise TlsConfigError(f"listen address {address!r} is not HOST:PORT")
    return bool(host) and is_loopback_host(host)


def check_listener(address: str, tls: TlsSettings | None, plaintext_allowed: bool) -> None:
    """Refuses to serve plaintext anywhere but loopback unless it was explicitly allowed."""
    if tls is None and not plaintext_allowed and not is_loopback_address(address):
        raise TlsConfigError(
            f"refusing to listen on {address} without TLS: give a certificate and key, bind"
            " to 127.0.0.1, or allow plaintext explicitly (behind a TLS-terminating proxy)"
        )


def _read(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(tls_file_bytes_max + 1)
    except OSError as error:
        raise TlsConfigError(
            f"{what} file {path} cannot be read: {error.strerror or error}"
        ) from None
    if len(data) > tls_file_bytes_max:
        raise TlsConfigError(f"{what} file {path} is over {tls_file_bytes_max} bytes")
    return data


def _certificates(pem: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as error:
        raise TlsConfigError(f"{what} file {path}: no PEM certificate ({error})") from None
    return certificates


def _public_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
