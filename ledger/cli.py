"""Command line: `timebank-ledger serve` runs the gRPC server; `demo` walks through it.

    timebank-ledger serve [--address HOST:PORT]   # settings from LEDGER_* variables
    timebank-ledger project [--projection NAME]...  # follow the log, keep the views up to date
    timebank-ledger replay --projection NAME      # drop one view and rebuild it from event 1
    timebank-ledger verify --bank ID ...          # check a bank's whole history in the store
    timebank-ledger verify --server HOST:PORT --bank ID | --file EXPORT  # as an auditor
    timebank-ledger export --bank ID / import FILE  # move a bank (see audit_cli.py)
    timebank-ledger report --bank ID --from YYYY-MM --to YYYY-MM [--csv]  # see report_cli.py
    timebank-ledger keys create|list|revoke ...   # the operator's API keys (see admin_keys.py)
    timebank-ledger demo  [--address HOST:PORT]   # a client: two members swap an hour and a half
    timebank-ledger pool-demo [--address HOST:PORT]  # a pot from creation to a posted grant

On its first start on the embedded default (SQLite), `serve` writes an operator key and a
demo bank's admin key to `<database>.keys.json` (mode 0600); `demo` uses them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger import admin_keys, audit_cli, logs, report_cli
from ledger.config import ConfigError, Settings

# A rebuild gives up after this long (at 50,000 events/s: 1.08 billion events).
replay_time_limit_seconds = 6 * 3600.0

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="timebank-ledger", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the gRPC server")
    serve_parser.add_argument("--address", help="host:port to listen on (LEDGER_GRPC_ADDRESS)")
    project_parser = commands.add_parser(
        "project", help="follow the event log and keep the views up to date until stopped"
    )
    project_parser.add_argument(
        "--projection",
        action="append",
        dest="projections",
        metavar="NAME",
        help="a projection to run (repeat for several; default: all)",
    )
    project_parser.add_argument(
        "--exit-with-parent",
        type=int,
        metavar="PID",
        help=argparse.SUPPRESS,  # `serve` starts its child so: no orphan outlives a kill -9
    )
    replay_parser = commands.add_parser(
        "replay", help="drop one projection's view and rebuild it from the first event"
    )
    replay_parser.add_argument("--projection", required=True, metavar="NAME")
    verify_parser = commands.add_parser(
        "verify",
        help="check banks' histories in the store: hash chain, invariants, snapshot, index",
    )
    verify_parser.add_argument(
        "--bank", action="append", dest="banks", metavar="ID", help="repeatable (store form)"
    )
    audit_cli.add_verify_arguments(verify_parser)
    audit_cli.add_parsers(commands)
    admin_keys.add_parser(commands)
    report_cli.add_parser(commands)
    demo_parser = commands.add_parser("demo", help="walk through the API against a server")
    demo_parser.add_argument("--address", help="host:port of the server (LEDGER_GRPC_ADDRESS)")
    demo_parser.add_argument(
        "--keys-file", type=Path, help="default: the one `serve` wrote beside the SQLite file"
    )
    demo_parser.add_argument("--ca-file", type=Path, help="the server's CA, to connect by TLS")
    # Issue 11: a community pot from creation to a posted grant (ledger/pool_demo.py).
    pool_demo_parser = commands.add_parser(
        "pool-demo", help="walk through a pool, from its creation to a posted grant"
    )
    pool_demo_parser.add_argument("--address", help="host:port of the server")
    pool_demo_parser.add_argument("--keys-file", type=Path, help="as for demo")
    pool_demo_parser.add_argument("--ca-file", type=Path, help="as for demo")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
        if args.command == "project":
            logs.configure(settings.log_level)
            stopping = _stop_on_signal()
            if args.exit_with_parent:
                _stop_with_parent(args.exit_with_parent, stopping)
            return project(settings, args.projections or [], stopping)
        if args.command == "replay":
            return replay(settings, args.projection)
        if args.command == "verify":
            if args.server or args.file:
                return audit_cli.verify_remote(args)
            if not args.banks:
                raise ConfigError("verify needs --bank ID (or --server, or --file)")
            keys = audit_cli.public_keys(args.public_key)
            heads = audit_cli.expected_heads(args.expect_head)
            return verify(settings, args.banks, keys, heads)
        if args.command == "export":
            _check_durable(settings)
            return audit_cli.export(settings, args)
        if args.command == "import":
            _check_durable(settings)
            return audit_cli.import_file(settings, args)
        if args.command == "signing-key":
            return audit_cli.signing_key(settings, args)
        if args.command == "keys":
            _check_durable(settings)
            return admin_keys.run(settings, args)
        if args.command == "report":
            return report_cli.run(settings, args)
    except ConfigError as error:
        print(f"timebank-ledger {args.command}: {error}", file=sys.stderr)
        return 2
    if getattr(args, "address", None):
        settings = dataclasses.replace(settings, grpc_address=args.address)
    if args.command == "serve":
        return _serve(settings)
    from ledger.demo import demo
    from ledger.pool_demo import pool_demo

    keys_file = args.keys_file or settings.keys_file_path()
    if args.command == "pool-demo":
        return pool_demo(
            settings.grpc_address, Path(keys_file) if keys_file else None, args.ca_file
        )
    return demo(settings.grpc_address, Path(keys_file) if keys_file else None, args.ca_file)


def _serve(settings: Settings) -> int:
    # Imported here so that `demo` needs neither the event store nor the server code.
    from ledger.security.tls import TlsConfigError
    from ledger.service.server import serve

    logs.configure(settings.log_level)
    try:
        serve(settings)
    except TlsConfigError as error:
        print(f"timebank-ledger serve: {error}", file=sys.stderr)
        return 2
    return 0


def project(settings: Settings, names: Sequence[str], stopping: threading.Event) -> int:
    """Follows the log with the named projections (all if none) until `stopping` is set."""
    # Imported here so that `demo` needs neither the event store nor the projections.
    from ledger import metrics
    from ledger.storage.store import LedgerStore
    from projections.registry import ProjectionSet, projection_names

    _check_durable(settings)
    store = LedgerStore.beside_writers(settings.eventsourcing_env())
    try:
        projections = ProjectionSet.open(settings, store, names or projection_names)
        exporter = None
        try:
            exporter = metrics.start_exporter(settings.metrics_address)
            projections.start()
            logs.event(
                log,
                "projections_started",
                projections=",".join(projections.names),
                metrics_port=exporter.port if exporter else None,
            )
            stopping.wait()
        finally:
            if exporter is not None:
                exporter.close()
            projections.close()
            logs.event(log, "projections_stopped")
    finally:
        store.close()
    return 0


def replay(settings: Settings, name: str) -> int:
    """Drops one projection's rows and rebuilds them from the first event; prints the rate."""
    from ledger.storage.store import LedgerStore
    from projections.registry import ProjectionSet

    _check_durable(settings)
    store = LedgerStore.beside_writers(settings.eventsourcing_env())
    try:
        projections = ProjectionSet.open(settings, store, [name])
        try:
            started = time.monotonic()
            applied = projections.rebuild(name, replay_time_limit_seconds)
            seconds = time.monotonic() - started
        finally:
            projections.close()
    finally:
        store.close()
    rate = applied / seconds if seconds > 0 else 0.0
    print(
        f"replayed projection {name}: {applied} events applied in {seconds:.3f} s"
        f" ({rate:,.0f} events/s)"
    )
    return 0


def verify(
    settings: Settings,
    bank_ids: Sequence[str],
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    expected_heads: Sequence[tuple[int, str]] = (),
) -> int:
    """Verifies each bank's stored history from event 1, with its signed checkpoints (and
    the heads given); prints a report; 1 if any fails."""
    from ledger.application.verification import verify_bank
    from ledger.storage.store import LedgerStore

    _check_durable(settings)
    store = LedgerStore.beside_writers(settings.eventsourcing_env())
    failed = 0
    try:
        for bank_id in bank_ids:
            check = verify_bank(
                store, bank_id, public_keys=public_keys, expected_heads=expected_heads
            )
            report = check.report
            if report.position == 0:
                print(f"bank {bank_id}: no history in this store")
                failed += 1
                continue
            print(
                f"bank {bank_id}: {report.events_checked} events, {len(report.transfers)}"
                f" transfers, {len(report.accounts)} accounts; position {report.position},"
                f" chain head {report.chain_head}; balances digest {check.balances_digest}"
            )
            if report.checkpoints_checked or report.heads_checked or public_keys:
                print(
                    f"  checkpoints: {report.checkpoints_checked} checked, signatures "
                    + ("checked" if report.signatures_checked else "NOT checked (no --public-key)")
                    + f"; saved heads: {report.heads_checked} checked"
                )
            for violation in report.violations:
                print(f"  position {violation.version}: {violation.reason} {violation.detail}")
            if report.violation_count > len(report.violations):
                print(f"  ... {report.violation_count - len(report.violations)} more")
            for problem in check.problems:
                print(f"  {problem}")
            print(f"  {'OK' if check.ok else 'FAILED'}")
            failed += 0 if check.ok else 1
    finally:
        store.close()
    return 1 if failed else 0


def _check_durable(settings: Settings) -> None:
    if settings.database_url.startswith("memory:"):
        raise ConfigError(
            "memory:// keeps the events inside the serving process; set LEDGER_DATABASE_URL"
            " to the sqlite or postgresql database the server writes"
        )


# How often a child checks that the process that started it is still there.
parent_check_interval_seconds = 1.0


def _stop_with_parent(parent_pid: int, stopping: threading.Event) -> None:
    """Sets `stopping` once the parent is gone (the child is then another's child)."""

    def watch() -> None:
        while not stopping.wait(parent_check_interval_seconds):
            if os.getppid() != parent_pid:
                logs.event(log, "parent_gone", level=logging.WARNING, parent_pid=parent_pid)
                stopping.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _stop_on_signal() -> threading.Event:
    """An event set by SIGTERM or SIGINT (handlers only install in the main thread)."""
    stopping = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logs.event(log, "shutdown_requested", signal=signal.Signals(signum).name)
        stopping.set()

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, request_stop)
    return stopping


if __name__ == "__main__":
    sys.exit(main())
