"""kill -9 under load: no acknowledged write is lost, none is recorded twice, retries agree.

A real server process writes to SQLite or PostgreSQL while client threads send transfers
with ids of their own. It is killed (SIGKILL) in the middle of that, several times, and
started again on the same database. After each restart every acknowledged transfer is there
exactly as acknowledged, and a retry of every id sent (acknowledged or not: its first write
may be in the tables although the answer was lost) returns one transfer with the content
that was sent. At the end the history verifies from event 1 and the balances sum to zero.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from certs import Pki
from server_process import REPO_ROOT, WAIT_SECONDS, ServerProcess

from ledger.service.bootstrap import KeysFile
from timebank.ledger.v1 import access_pb2, access_pb2_grpc
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc

BANK = "crash-bank"
MEMBERS = [f"m{n}" for n in range(8)]
KILL_ROUNDS = 3
CLIENT_THREADS = 4
# Acknowledged writes to wait for before each kill (so that every kill lands under load).
ACKS_BEFORE_KILL = 60
CALL_TIMEOUT_SECONDS = 10.0


@pytest.fixture
def server(durable_store_url: str, tmp_path: Path, pki: Pki) -> Iterator[ServerProcess]:
    process = ServerProcess(durable_store_url, tmp_path, pki)
    try:
        yield process
    finally:
        process.stop()


def transfer_request(transfer_id: str) -> pb.CreateTransferRequest:
    """The content a transfer id always carries (so every retry repeats it exactly)."""
    number = int.from_bytes(transfer_id.encode(), "big")
    return pb.CreateTransferRequest(
        bank_id=BANK,
        transfer_id=transfer_id,
        payer_account_id=MEMBERS[number % len(MEMBERS)],
        payee_account_id=MEMBERS[(number + 1) % len(MEMBERS)],
        amount_minutes=number % 7 + 1,
        memo=f"round trip {transfer_id}",
    )


def set_up_bank(server: ServerProcess) -> str:
    """The bank, created by the operator key of the first start; returns its admin's key."""
    operator = KeysFile.read(server.keys_file).operator
    with server.channel(operator) as channel:
        pb_grpc.LedgerServiceStub(channel).CreateBank(
            pb.CreateBankRequest(bank_id=BANK, name="Crash test bank")
        )
        token = (
            access_pb2_grpc.AccessServiceStub(channel)
            .IssueApiKey(
                access_pb2.IssueApiKeyRequest(bank_id=BANK, role=access_pb2.ROLE_BANK_ADMIN)
            )
            .token
        )
    with server.channel(token) as channel:
        open_members(pb_grpc.LedgerServiceStub(channel))
    return token


def open_members(stub: pb_grpc.LedgerServiceStub) -> None:
    for member in MEMBERS:
        stub.OpenAccount(
            pb.OpenAccountRequest(
                bank_id=BANK,
                account_id=member,
                kind=pb.ACCOUNT_KIND_MEMBER,
                lower_limit_minutes=-1_000_000,
            )
        )


class Load:
    """Client threads sending new transfers until stopped; remembers what was acknowledged."""

    def __init__(self, server: ServerProcess, token: str, round_number: int) -> None:
        self._server = server
        self._token = token
        self._round = round_number
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.sent: list[str] = []
        self.acknowledged: dict[str, pb.Transfer] = {}
        self._threads = [
            threading.Thread(target=self._send, args=(n,), daemon=True)
            for n in range(CLIENT_THREADS)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT_SECONDS)
            assert not thread.is_alive()

    def _send(self, thread: int) -> None:
        with self._server.channel(self._token) as channel:
            stub = pb_grpc.LedgerServiceStub(channel)
            number = 0
            while not self._stop.is_set():
                transfer_id = f"r{self._round}-w{thread}-{number}"
                number += 1
                with self._lock:
                    self.sent.append(transfer_id)
                try:
                    response = stub.CreateTransfer(
                        transfer_request(transfer_id), timeout=CALL_TIMEOUT_SECONDS
                    )
                except grpc.RpcError:
                    return  # the server is gone: what was acknowledged is what counts
                with self._lock:
                    self.acknowledged[transfer_id] = response.transfer


def test_kill_9_under_load_loses_and_duplicates_nothing(server: ServerProcess) -> None:
    server.start()
    token = set_up_bank(server)
    sent: list[str] = []
    acknowledged: dict[str, pb.Transfer] = {}
    for round_number in range(KILL_ROUNDS):
        # Clients write as fast as they can; once enough were acknowledged, kill -9.
        load = Load(server, token, round_number)
        load.start()
        deadline = time.monotonic() + WAIT_SECONDS
        while len(load.acknowledged) < ACKS_BEFORE_KILL:
            assert time.monotonic() < deadline, "the server never got going"
            time.sleep(0.005)
        server.kill()
        load.stop()
        sent += load.sent
        acknowledged.update(load.acknowledged)
        # The server starts again on the same database.
        server.start()
        with server.channel(token) as channel:
            stub = pb_grpc.LedgerServiceStub(channel)
            # Every acknowledged transfer is there, exactly as it was acknowledged.
            for transfer_id, answer in acknowledged.items():
                found = stub.GetTransfer(
                    pb.GetTransferRequest(bank_id=BANK, transfer_id=transfer_id)
                ).transfer
                assert found == answer, transfer_id
            # A retry of every id sent returns one transfer with the content that was sent.
            for transfer_id in sent:
                retried = stub.CreateTransfer(transfer_request(transfer_id)).transfer
                expected = transfer_request(transfer_id)
                assert (retried.amount_minutes, retried.payer_account_id, retried.memo) == (
                    expected.amount_minutes,
                    expected.payer_account_id,
                    expected.memo,
                )
                if transfer_id in acknowledged:
                    assert retried == acknowledged[transfer_id]
            # Each id was recorded once: the bank counts exactly the ids sent.
            bank = stub.GetBank(pb.GetBankRequest(bank_id=BANK)).bank
            assert bank.transfer_count == len(set(sent))
            balances = [
                account.balance_minutes
                for account in stub.ListAccounts(
                    pb.ListAccountsRequest(bank_id=BANK, page_size=100)
                ).accounts
            ]
            assert sum(balances) == 0
    # Every kill landed under load: some writes were sent and never answered.
    assert len(sent) > len(acknowledged)
    server.stop()
    # The whole history verifies from event 1, in the store, with the server gone.
    result = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "verify", "--bank", BANK],
        cwd=REPO_ROOT,
        env=server.environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("OK")
