"""The gRPC server: LedgerService, LedgerViewService, health checking and reflection.

`create_server()` builds a server bound to its address (port 0 picks a free port, for
tests); `serve()` runs one until SIGTERM or SIGINT, then drains it: health reports
NOT_SERVING, in-flight calls get `shutdown_grace_seconds` to finish, then the projections
stop and the Ledger closes. `serve()` also starts the projections (in background threads
unless LEDGER_PROJECTIONS=off) and the Prometheus exporter (LEDGER_METRICS_ADDRESS).
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ledger import logs, metrics
from ledger.application.ledger import Ledger
from ledger.config import Settings
from ledger.service.servicer import LedgerServicer
from ledger.service.view_servicer import LedgerViewServicer
from projections.reads import ViewReads
from projections.registry import ProjectionSet
from timebank.ledger.v1 import ledger_pb2, ledger_pb2_grpc, views_pb2, views_pb2_grpc

log = logging.getLogger(__name__)

ledger_service_name = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name
view_service_name = views_pb2.DESCRIPTOR.services_by_name["LedgerViewService"].full_name
health_service_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

# Calls admitted at once per worker thread (running or queued); beyond that a call fails
# at once with RESOURCE_EXHAUSTED instead of waiting in an unbounded queue.
rpcs_per_worker_max = 8


def create_server(
    settings: Settings,
    ledger: Ledger,
    *,
    health_servicer: health.HealthServicer | None = None,
    projections: ProjectionSet | None = None,
) -> tuple[grpc.Server, int]:
    """A server, not yet started, bound to settings.grpc_address; and the port it is bound to.

    With projections, it serves LedgerViewService from their views too.
    """
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ],
        maximum_concurrent_rpcs=settings.grpc_workers * rpcs_per_worker_max,
    )
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(LedgerServicer(ledger), server)
    services = [ledger_service_name]
    if projections is not None:
        reads = ViewReads(projections, settings.read_wait_seconds)
        views_pb2_grpc.add_LedgerViewServiceServicer_to_server(LedgerViewServicer(reads), server)
        services.append(view_service_name)

    health_servicer = health_servicer or health.HealthServicer()
    for service in ("", *services):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    reflection.enable_server_reflection(
        (*services, health_service_name, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(settings.grpc_address)
    assert port != 0, f"could not bind {settings.grpc_address}"
    return server, port


def serve(settings: Settings) -> None:
    """Runs the server until SIGTERM or SIGINT, then shuts it down gracefully."""
    stopping = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logs.event(log, "shutdown_requested", signal=signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)

    ledger = Ledger(settings)
    exporter: metrics.MetricsExporter | None = None
    projections: ProjectionSet | None = None
    try:
        projections = ProjectionSet.open(settings, ledger.store)
        if settings.projections == "in-process":
            projections.start()
        exporter = metrics.start_exporter(settings.metrics_address)
        health_servicer = health.HealthServicer()
        server, port = create_server(
            settings, ledger, health_servicer=health_servicer, projections=projections
        )
        server.start()
        logs.event(
            log,
            "server_started",
            address=settings.grpc_address,
            port=port,
            workers=settings.grpc_workers,
            projections=settings.projections,
            metrics_port=exporter.port if exporter else None,
        )
        stopping.wait()
        # Load balancers see NOT_SERVING and stop routing here; in-flight calls may finish.
        health_servicer.enter_graceful_shutdown()
        server.stop(settings.shutdown_grace_seconds).wait()
        logs.event(log, "server_stopped")
    finally:
        if exporter is not None:
            exporter.close()
        if projections is not None:
            projections.close()
        ledger.close()
