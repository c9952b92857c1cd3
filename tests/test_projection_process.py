"""`serve` runs the projections in a child process it starts, restarts and stops.

A real server (SQLite or PostgreSQL, TLS and keys on) with the default LEDGER_PROJECTIONS
(auto: a child process): a write is seen by a view read that names its position, which
only the child can have applied; the child is killed and the server starts another, which
carries on; when the server stops, no child is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from certs import Pki
from server_process import WAIT_SECONDS, ServerProcess

from ledger.service.bootstrap import KeysFile, demo_bank_id
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc
from timebank.ledger.v1 import views_pb2 as vpb
from timebank.ledger.v1 import views_pb2_grpc as vpb_grpc


@pytest.fixture
def server(durable_store_url: str, tmp_path: Path, pki: Pki) -> Iterator[ServerProcess]:
    process = ServerProcess(durable_store_url, tmp_path, pki, projections="auto", log_level="INFO")
    try:
        yield process
    finally:
        process.stop()


def child_pids(server: ServerProcess) -> list[int]:
    """The projection children the server said it started, in order."""
    pids = []
    for line in server.log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "projection_process_started":
            pids.append(int(record["pid"]))
    return pids


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


def test_the_child_keeps_the_views_current_and_is_restarted(server: ServerProcess) -> None:
    server.start()
    wait_for(lambda: len(child_pids(server)) == 1)
    admin = KeysFile.read(server.keys_file).bank_admins[demo_bank_id]
    with server.channel(admin) as channel:
        ledger = pb_grpc.LedgerServiceStub(channel)
        views = vpb_grpc.LedgerViewServiceStub(channel)
        # A write, then a view read naming its position: the child applied it.
        ledger.OpenAccount(
            pb.OpenAccountRequest(
                bank_id=demo_bank_id, account_id="ana", kind=pb.ACCOUNT_KIND_MEMBER
            ),
            timeout=WAIT_SECONDS,
        )
        opened = ledger.OpenAccount(
            pb.OpenAccountRequest(
                bank_id=demo_bank_id,
                account_id="ben",
                kind=pb.ACCOUNT_KIND_MEMBER,
                lower_limit_minutes=-60,
            ),
            timeout=WAIT_SECONDS,
        )
        paid = ledger.CreateTransfer(
            pb.CreateTransferRequest(
                bank_id=demo_bank_id,
                transfer_id="t1",
                payer_account_id="ben",
                payee_account_id="ana",
                amount_minutes=30,
            ),
            timeout=WAIT_SECONDS,
        )
        summary = views.GetAccountSummary(
            vpb.GetAccountSummaryRequest(
                bank_id=demo_bank_id, account_id="ana", min_position=paid.position
            ),
            timeout=WAIT_SECONDS,
        )
        assert summary.account.balance_minutes == 30
        assert opened.position < paid.position
        # The child dies; the server starts another, which carries on from the views' position.
        first = child_pids(server)[0]
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: len(child_pids(server)) == 2)
        paid = ledger.CreateTransfer(
            pb.CreateTransferRequest(
                bank_id=demo_bank_id,
                transfer_id="t2",
                payer_account_id="ben",
                payee_account_id="ana",
                amount_minutes=15,
            ),
            timeout=WAIT_SECONDS,
        )
        summary = views.GetAccountSummary(
            vpb.GetAccountSummaryRequest(
                bank_id=demo_bank_id, account_id="ana", min_position=paid.position
            ),
            timeout=WAIT_SECONDS,
        )
        assert summary.account.balance_minutes == 45
    # Stopping the server (SIGTERM) stops its child too.
    second = child_pids(server)[1]
    server.terminate()
    assert not alive(second)


def test_a_server_killed_with_sigkill_leaves_no_child_behind(server: ServerProcess) -> None:
    server.start()
    wait_for(lambda: len(child_pids(server)) == 1)
    child = child_pids(server)[0]
    # kill -9 gives the server no chance to stop its child: the child sees it is gone.
    server.kill()
    wait_for(lambda: not alive(child))
