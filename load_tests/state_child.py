"""The measured side of bench_state: one cold process per measurement, printing one JSON line.

    python -m load_tests.state_child load URL BASE_URL BANK_UUID
    python -m load_tests.state_child first-write URL BASE_URL BANK_ID SPAWNED_AT

`load` times `loading.load_bank` and the resident memory it adds (RSS from /proc/self/statm
before and after; the peak from VmHWM, reset just before; and the RSS once the freed memory
is handed back with malloc_trim, which is what the loaded state itself holds). `first-write`
opens a Ledger and commits one CreateTransfer; with the time the parent spawned this process
(SPAWNED_AT, time.time()) it gives the time from a cold process to the first commit. Both
report the CPU used meanwhile by this process, by its PostgreSQL backends and by everyone
else on the machine ("other"). This module imports only what a ledger process imports, so
its start-up is a server's start-up.
"""

from __future__ import annotations

import time

started_at = time.time()

import ctypes  # noqa: E402 - the start time is taken before any import
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from ledger.application.ledger import Ledger  # noqa: E402
from ledger.application.loading import load_bank  # noqa: E402
from ledger.config import Settings  # noqa: E402
from ledger.domain.commands import CreateTransfer  # noqa: E402
from ledger.domain.errors import NotFound, Unavailable  # noqa: E402
from ledger.storage.store import LedgerStore  # noqa: E402
from load_tests.servers import cpu_percent, sample_cpu, server_backends  # noqa: E402

_page_bytes = os.sysconf("SC_PAGE_SIZE")
# After a WRITER_TIMEOUT: how long to look for the write's commit, and how often.
commit_wait_seconds_max = 1800.0
commit_poll_seconds = 0.05


def rss_bytes() -> int:
    """Resident set size now (the second field of /proc/self/statm, in pages)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * _page_bytes


def status_bytes(field: str) -> int:
    """A `kB` field of /proc/self/status (VmHWM, VmRSS...), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return -1


def reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux 4.0 and later)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def trimmed_rss_bytes() -> int:
    """RSS after a full collection and after malloc hands its free pages back to the system."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return -1
    return rss_bytes()


def load(url: str, base_url: str, bank_uuid: str) -> dict[str, Any]:
    store = LedgerStore(Settings(database_url=url).eventsourcing_env())
    try:
        snapshot = store.snapshot(bank_uuid)  # also opens the connection the load uses
        backends = server_backends(os.getpid(), base_url)
        gc.collect()
        before_bytes = rss_bytes()
        peak_reset = reset_peak()
        cpu_before = sample_cpu(os.getpid(), backends)
        clock = time.perf_counter()
        state = load_bank(store, bank_uuid)
        seconds = time.perf_counter() - clock
        cpu = cpu_percent(cpu_before, sample_cpu(os.getpid(), backends), 0.0)
        after_bytes = rss_bytes()
        peak_bytes = status_bytes("VmHWM")
        trimmed_bytes = trimmed_rss_bytes()
    finally:
        store.close()
    return {
        "seconds": seconds,
        "version": state.version,
        "snapshot_version": snapshot.version if snapshot is not None else None,
        "snapshot_bytes": len(snapshot.state) if snapshot is not None else 0,
        "tail_events": state.version - (snapshot.version if snapshot is not None else 0),
        "accounts": len(state.accounts),
        "holds": len(state.holds),
        "transfer_count": state.transfer_count,
        "rss_before_bytes": before_bytes,
        "rss_growth_bytes": after_bytes - before_bytes,
        "peak_growth_bytes": peak_bytes - before_bytes if peak_reset else None,
        "trimmed_growth_bytes": trimmed_bytes - before_bytes if trimmed_bytes >= 0 else None,
        "cpu_percent": cpu,
    }


def first_write(url: str, base_url: str, bank_id: str, spawned_at: float) -> dict[str, Any]:
    main_at = time.time()
    cpu_before = sample_cpu(os.getpid())
    ledger = Ledger(Settings(database_url=url))
    command = CreateTransfer(
        transfer_id=f"cold-{uuid.uuid4().hex[:16]}",
        payer_account_id="m00000",
        payee_account_id="m00001",
        amount_minutes=30,
        memo="first write after a cold start",
        actor_label="bench-state",
    )
    timed_out_at: float | None = None
    try:
        opened_at = time.time()
        try:
            view: Any = ledger.execute(bank_id, command)
        except Unavailable as error:
            if error.reason != "WRITER_TIMEOUT":
                raise
            # What a caller sees: the load outlasted writer_timeout_seconds. The write is
            # still queued; find when it commits.
            timed_out_at = time.time()
            view = _wait_for_transfer(ledger, bank_id, command.transfer_id)
        committed_at = time.time()
        backends = server_backends(os.getpid(), base_url)
        cpu = cpu_percent(cpu_before, sample_cpu(os.getpid(), backends), 0.0)
    finally:
        ledger.close()
    return {
        "seconds": committed_at - spawned_at,
        "interpreter_seconds": started_at - spawned_at,
        "imports_seconds": main_at - started_at,
        "ledger_open_seconds": opened_at - main_at,
        "first_commit_seconds": committed_at - opened_at,
        # The caller got WRITER_TIMEOUT this long after the process started, if it did.
        "caller_timed_out_seconds": None if timed_out_at is None else timed_out_at - spawned_at,
        "position": getattr(view, "created_position", None),
        "cpu_percent": cpu,
    }


def _wait_for_transfer(ledger: Ledger, bank_id: str, transfer_id: str) -> Any:
    deadline = time.monotonic() + commit_wait_seconds_max
    while time.monotonic() < deadline:
        try:
            return ledger.get_transfer(bank_id, transfer_id)
        except NotFound:
            time.sleep(commit_poll_seconds)
    raise TimeoutError(f"{transfer_id} was not committed within {commit_wait_seconds_max} s")


def main(argv: Sequence[str]) -> int:
    command, *args = argv
    if command == "load":
        url, base_url, bank_uuid = args
        result = load(url, base_url, bank_uuid)
    elif command == "first-write":
        url, base_url, bank_id, spawned_at = args
        result = first_write(url, base_url, bank_id, float(spawned_at))
    else:
        print(f"unknown command {command!r}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
