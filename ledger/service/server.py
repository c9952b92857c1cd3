"""The gRPC server: LedgerService, AccessService, LedgerViewService, health and reflection.

Every call goes through the security interceptor (ledger/security): an API key, a role
allowed by the policy table, the bank's scope, member tokens, quotas. The listener has TLS
from the settings (mutual TLS with a client CA) and refuses plaintext off loopback.
`create_server()` builds a server bound to its address (port 0 picks a free port, for
tests); `serve()` runs one until SIGTERM or SIGINT, then drains it: health reports
NOT_SERVING, in-flight calls get `shutdown_grace_seconds` to finish, then the projections
stop and the Ledger closes. `serve()` also starts the projections (in background threads
unless LEDGER_PROJECTIONS=off) and the Prometheus exporter (LEDGER_METRICS_ADDRESS).
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

import grpc

from ledger import logs, metrics
from ledger.application.ledger import Ledger
from ledger.config import Settings
from ledger.security.gate import Gate
from ledger.security.interceptor import SecurityInterceptor
from ledger.security.quotas import QuotaSettings, Slots
from ledger.security.tls import TlsConfigError, TlsSettings, check_listener, server_credentials
from ledger.service.access_servicer import AccessServicer
from ledger.service.audit_servicer import AuditServicer
from ledger.service.bootstrap import bootstrap_keys
from ledger.service.discovery import HealthServicer, enable_discovery
from ledger.service.identity import StoreIdentities
from ledger.service.pool_servicer import PoolServicer
from ledger.service.projection_process import ProjectionProcess
from ledger.service.servicer import LedgerServicer
from ledger.service.view_servicer import LedgerViewServicer
from projections.reads import ViewReads
from projections.registry import ProjectionSet
from timebank.ledger.v1 import (
    access_pb2,
    access_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    pools_pb2,
    pools_pb2_grpc,
    views_pb2,
    views_pb2_grpc,
)

log = logging.getLogger(__name__)

ledger_service_name = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name
view_service_name = views_pb2.DESCRIPTOR.services_by_name["LedgerViewService"].full_name
access_service_name = access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name
audit_service_name = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name
pool_service_name = pools_pb2.DESCRIPTOR.services_by_name["PoolService"].full_name

# gRPC's own limit on a request body sits this far above ours, as a backstop only: its
# refusal carries no ErrorInfo, while the interceptor's (MESSAGE_TOO_LARGE) does.
message_bytes_backstop = 1024 * 1024
# Likewise for calls in flight: the interceptor's limit (SERVER_BUSY) is the one that refuses.
calls_in_flight_backstop = 64


# The collector's thresholds while serving. Each call allocates many short-lived objects;
# the default (700, 10, 10) collects the youngest generation every few calls and the whole
# heap every few thousand. The heap that matters (banks' states) lives long, so collections
# are made rarer, and what exists at start-up (modules, settings, the first banks) is frozen
# out of them.
gc_thresholds = (50_000, 20, 100)


def tune_garbage_collection() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*gc_thresholds)


def tls_settings(settings: Settings) -> TlsSettings | None:
    """The listener's TLS files from the settings, or None for plaintext."""
    if not settings.tls_certificate_file and not settings.tls_private_key_file:
        return None
    if not (settings.tls_certificate_file and settings.tls_private_key_file):
        raise TlsConfigError(
            "TLS needs both LEDGER_TLS_CERTIFICATE_FILE and LEDGER_TLS_PRIVATE_KEY_FILE"
        )
    return TlsSettings(
        certificate_chain_path=Path(settings.tls_certificate_file),
        private_key_path=Path(settings.tls_private_key_file),
        client_ca_path=Path(settings.tls_client_ca_file) if settings.tls_client_ca_file else None,
        client_certificates_required=settings.tls_client_certificates_required,
    )


def create_server(
    settings: Settings,
    ledger: Ledger,
    *,
    health_servicer: HealthServicer | None = None,
    projections: ProjectionSet | None = None,
) -> tuple[grpc.Server, int]:
    """A server, not yet started, bound to settings.grpc_address; and the port it is bound to.

    Every call passes the security interceptor (API keys, roles, bank scope, member tokens,
    quotas); with projections, it serves LedgerViewService from their views too.
    """
    tls = tls_settings(settings)
    check_listener(settings.grpc_address, tls, settings.plaintext_allowed)
    identities = StoreIdentities(ledger, settings.api_key_cache_seconds)
    gate = Gate(
        keys=identities,
        member_token_keys=identities,
        quotas=QuotaSettings(
            key_requests_per_second=settings.key_requests_per_second,
            key_request_burst_max=settings.key_request_burst_max,
            key_calls_in_flight_max=settings.key_calls_in_flight_max,
        ),
        calls_in_flight=Slots("calls_in_flight", settings.calls_in_flight_max),
    )
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="grpc"),
        interceptors=[SecurityInterceptor(gate, settings.grpc_max_message_bytes)],
        options=[
            (
                "grpc.max_receive_message_length",
                settings.grpc_max_message_bytes + message_bytes_backstop,
            ),
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ],
        maximum_concurrent_rpcs=settings.calls_in_flight_max + calls_in_flight_backstop,
    )
    servicer = LedgerServicer(ledger, settings.banks_per_operator_key_max)
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(servicer, server)
    access_pb2_grpc.add_AccessServiceServicer_to_server(AccessServicer(ledger, identities), server)
    services = [ledger_service_name, access_service_name]
    # AuditService (issue 10): the history as stored, as-of reads (from the audit
    # projection's checkpoints when this server has it), signed checkpoints.
    audit_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(ledger, settings, projections), server
    )
    services.append(audit_service_name)
    reads = None
    if projections is not None:
        waiting = Slots("reads_waiting", settings.reads_waiting_max)
        reads = ViewReads(projections, settings.read_wait_seconds, waiting)
    # PoolService (issue 11): pools, their policies, grant requests and approvals; budgets
    # from the views, when this server has them.
    pools_pb2_grpc.add_PoolServiceServicer_to_server(PoolServicer(ledger, reads), server)
    services.append(pool_service_name)
    if reads is not None:
        views_pb2_grpc.add_LedgerViewServiceServicer_to_server(
            LedgerViewServicer(reads, ledger), server
        )
        services.append(view_service_name)
    enable_discovery(server, services, health_servicer)
    if tls is None:
        port = server.add_insecure_port(settings.grpc_address)
    else:
        port = server.add_secure_port(settings.grpc_address, server_credentials(tls))
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
    child: ProjectionProcess | None = None
    try:
        keys_path = settings.keys_file_path()
        if keys_path:
            bootstrap_keys(ledger, Path(keys_path))
        projections = ProjectionSet.open(settings, ledger.store)
        if settings.projections_mode == "in-process":
            projections.start()
        elif settings.projections_mode == "process":
            child = ProjectionProcess(settings)
            child.start()
        exporter = metrics.start_exporter(settings.metrics_address)
        health_servicer = HealthServicer()
        server, port = create_server(
            settings, ledger, health_servicer=health_servicer, projections=projections
        )
        tune_garbage_collection()
        server.start()
        logs.event(
            log,
            "server_started",
            address=settings.grpc_address,
            port=port,
            workers=settings.grpc_workers,
            projections=settings.projections_mode,
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
        if child is not None:
            child.stop()
        if projections is not None:
            projections.close()
        ledger.close()
