"""Prometheus metrics, and the HTTP exporter that serves them on their own port.

    ledger_rpc_total{method,code}                counter: calls finished, by gRPC status code
    ledger_rpc_duration_seconds{method}          histogram: time spent in a call
    ledger_projection_position{projection}       gauge: log position (notification id) applied
    ledger_projection_lag_events{projection}     gauge: events in the log not yet applied

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
