"""Baseline (a): a bare gRPC unary echo server, built like the ledger's server but doing nothing.

    python -m load_tests.echo_server [--address 127.0.0.1:0]

One generic handler returns the request bytes as the response: no protobuf parsing, no
ledger. The thread pool, the admission limit and the message size limits are the ledger
server's own (the same LEDGER_GRPC_* settings and `rpcs_per_worker_max`), so the difference
between the two is what the ledger does per call. On start it prints one JSON line with the
port, shaped like the ledger's `server_started` log line; it stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

import grpc

from ledger.config import Settings
from load_tests.workload import echo_method_name, echo_service_name

# An echo server has nothing to finish; this only lets in-flight replies go out.
shutdown_grace_seconds = 1.0


def echo(request: bytes, _context: grpc.ServicerContext) -> bytes:
    return request


def calls_admitted_max(settings: Settings) -> int:
    """The ledger's own admission limit, as the code being measured defines it."""
    admitted: int | None = getattr(settings, "calls_in_flight_max", None)
    if admitted is not None:
        return admitted
    # Code from before the security edge: a fixed number of calls per worker thread.
    from ledger.service import server

    per_worker: int = getattr(server, "rpcs_per_worker_max")  # noqa: B009
    return settings.grpc_workers * per_worker


def create_server(settings: Settings) -> tuple[grpc.Server, int]:
    """An echo server, not yet started, bound to settings.grpc_address; and its port."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ],
        maximum_concurrent_rpcs=calls_admitted_max(settings),
    )
    # No serializers: the handler gets and returns raw bytes.
    handler = grpc.method_handlers_generic_handler(
        echo_service_name, {echo_method_name: grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(settings.grpc_address)
    assert port != 0, f"could not bind {settings.grpc_address}"
    return server, port


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:0", help="host:port (port 0: any)")
    args = parser.parse_args(argv)
    settings = Settings(grpc_address=args.address, grpc_workers=Settings.from_env().grpc_workers)

    stopping = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)

    server, port = create_server(settings)
    server.start()
    started = {"event": "echo_server_started", "port": port, "workers": settings.grpc_workers}
    print(json.dumps(started), flush=True)
    stopping.wait()
    server.stop(shutdown_grace_seconds).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
