"""`timebank-ledger serve` as a child process on a database that outlives it, for tests that
kill it or look at what it starts: TLS on, and the keys of its first start in a file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
from certs import Pki, server_host

REPO_ROOT = Path(__file__).resolve().parent.parent
WAIT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Bearer(grpc.AuthMetadataPlugin):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback((("authorization", f"Bearer {self._token}"),), None)


class ServerProcess:
    """`timebank-ledger serve` in a child process (TLS, and the keys it makes at its first
    start written to a file), on a database that outlives it."""

    def __init__(self, database_url: str, tmp_path: Path, pki: Pki, **settings: str) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.keys_file = tmp_path / "keys.json"
        self.pki = pki
        self.environment = {
            **os.environ,
            "LEDGER_DATABASE_URL": database_url,
            "LEDGER_GRPC_ADDRESS": self.address,
            "LEDGER_METRICS_ADDRESS": "off",
            "LEDGER_PROJECTIONS": "off",
            "LEDGER_LOG_LEVEL": "WARNING",
            "LEDGER_BOOTSTRAP_KEYS_FILE": str(self.keys_file),
            "LEDGER_TLS_CERTIFICATE_FILE": str(pki.server_certificate_path),
            "LEDGER_TLS_PRIVATE_KEY_FILE": str(pki.server_key_path),
            # The load runs on one key: quotas are not what this test is about.
            "LEDGER_KEY_REQUESTS_PER_SECOND": "1000000",
            "LEDGER_KEY_REQUEST_BURST_MAX": "1000000",
            **{f"LEDGER_{name.upper()}": value for name, value in settings.items()},
        }
        self.log = tmp_path / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def channel(self, token: str | None = None) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(root_certificates=self.pki.ca.certificate_pem)
        if token is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.metadata_call_credentials(_Bearer(token))
            )
        return grpc.secure_channel(
            self.address, credentials, options=[("grpc.ssl_target_name_override", server_host)]
        )

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ledger.cli", "serve"],
                cwd=REPO_ROOT,
                env=self.environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        with self.channel() as channel:
            grpc.channel_ready_future(channel).result(timeout=WAIT_SECONDS)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(WAIT_SECONDS)

    def terminate(self) -> None:
        """SIGTERM, as an operator stops it: a graceful shutdown."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(WAIT_SECONDS)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT_SECONDS)
