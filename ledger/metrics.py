"""Prometheus metrics, and the HTTP exporter that serves them on their own port.

    ledger_rpc_total{method,code}                counter: calls finished, by gRPC status code
    ledger_rpc_duration_seconds{method}          histogram: time spent in a call
    ledger_projection_position{projection}       gauge: log position (notification id) applied
    ledger_projection_lag_events{projection}     gauge: events in the log not yet applied
    ledger_writer_resident_banks                 gauge: banks whose writer is in memory
    ledger_writer_batch_commands                 histogram: commands per committed batch
    ledger_commit_duration_seconds               histogram: time to commit one batch
    ledger_writer_conflicts_total                counter: commits that lost a race
    ledger_snapshots_total                       counter: decision-state snapshots taken
    ledger_reads_waiting                         gauge: reads waiting now for a view to reach
                                                 their min_position (at most reads_waiting_max)
    ledger_audit_violations_total{check}         counter: violations the audit projection found,
                                                 by check (ledger/verifier.py's Reason)
    ledger_audit_checkpoints_signed_total        counter: checkpoints of chain heads signed
    ledger_audit_streams                         gauge: StreamEvents calls being served now
    ledger_audit_stream_events_total             counter: events StreamEvents handed to gRPC

Labels are bounded sets (RPC names, status codes, projection names): never an account,
bank or transfer id. The metrics live in the default registry, as Prometheus clients
expect; tests read them with `REGISTRY.get_sample_value()`.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

from ledger.config import host_port

rpcs = Counter(
    "ledger_rpc",  # exported as ledger_rpc_total
    "gRPC calls finished, by method and status code.",
    ["method", "code"],
)
rpc_duration = Histogram(
    "ledger_rpc_duration_seconds",
    "Time spent in a gRPC call, including any wait for a view to catch up.",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
projection_position = Gauge(
    "ledger_projection_position",
    "Log position (notification id) of the last event a projection applied.",
    ["projection"],
)
projection_lag = Gauge(
    "ledger_projection_lag_events",
    "Events in the log that a projection has not applied yet.",
    ["projection"],
)
reads_waiting = Gauge(
    "ledger_reads_waiting",
    "Reads waiting at this moment for a view to reach the min_position they asked for.",
)


writer_resident_banks = Gauge(
    "ledger_writer_resident_banks", "Banks whose writer and decision state are in memory."
)
writer_batch_commands = Histogram(
    "ledger_writer_batch_commands",
    "Commands a bank's writer applied and committed together.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
commit_duration = Histogram(
    "ledger_commit_duration_seconds",
    "Time to commit one batch's events and index rows.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
writer_conflicts = Counter(
    "ledger_writer_conflicts",  # exported as ledger_writer_conflicts_total
    "Commits that lost a race to another writer of the same bank (then caught up).",
)
snapshots_taken = Counter(
    "ledger_snapshots",  # exported as ledger_snapshots_total
    "Snapshots of banks' decision state taken.",
)


# ----------------------------------------------------------------- audit (issue 10)
audit_violations = Counter(
    "ledger_audit_violations",  # exported as ledger_audit_violations_total
    "Violations the audit projection found in banks' histories, by check.",
    ["check"],
)
audit_checkpoints_signed = Counter(
    "ledger_audit_checkpoints_signed",  # exported as ledger_audit_checkpoints_signed_total
    "Checkpoints of banks' chain heads signed by the audit projection.",
)
audit_streams = Gauge("ledger_audit_streams", "StreamEvents calls being served now.")
audit_stream_events = Counter(
    "ledger_audit_stream_events",  # exported as ledger_audit_stream_events_total
    "Events StreamEvents handed to gRPC to send (sent, or waiting in the transport).",
)


class MetricsExporter:
    """The HTTP endpoint Prometheus scrapes (any path answers), until close()."""

    def __init__(self, host: str, port: int) -> None:
        self._server: WSGIServer
        self._server, self._thread = start_http_server(port, addr=host, registry=REGISTRY)

    @property
    def port(self) -> int:
        port = self._server.server_address[1]
        assert isinstance(port, int)
        return port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_exporter(address: str) -> MetricsExporter | None:
    """Serves the metrics on address (port 0 picks a free one); None if it is disabled."""
    parsed = host_port(address)
    if parsed is None:
        return None
    return MetricsExporter(*parsed)
