"""Prometheus exposition of server and client metrics.

Nothing here runs per call: the runtime keeps plain counters and latency recorders,
and this collector reads them when Prometheus scrapes.

    exporter = MetricsExporter(servers=[server])
    port = exporter.start_http_server(9100)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .client import Client
from .metrics import MethodStats
from .server import Server

# Bucket upper bounds in seconds for the latency histograms (25 µs .. 10 s).
BUCKETS = (
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


def _histogram(stats: MethodStats) -> tuple[list[tuple[str, float]], float]:
    h = stats.latency_us.histogram()
    total = h.get_total_count()
    buckets: list[tuple[str, float]] = []
    if total:
        counts: dict[float, int] = dict.fromkeys(BUCKETS, 0)
        for item in h.get_recorded_iterator():
            seconds = h.get_highest_equivalent_value(item.value_iterated_to) / 1e6
            for bound in BUCKETS:
                if seconds <= bound:
                    counts[bound] += item.count_added_in_this_iter_step
                    break
        running = 0
        for bound in BUCKETS:
            running += counts[bound]
            buckets.append((repr(bound), float(running)))
    else:
        buckets = [(repr(b), 0.0) for b in BUCKETS]
    buckets.append(("+Inf", float(total)))
    mean_s = h.get_mean_value() / 1e6 if total else 0.0
    return buckets, mean_s * total


class MetricsExporter:
    """A Prometheus collector over any number of servers and clients."""

    def __init__(self, servers: Sequence[Server] = (), clients: Sequence[Client] = ()) -> None:
        self.servers = list(servers)
        self.clients = list(clients)
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def start_http_server(self, port: int = 0, addr: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on a background thread; returns the bound port."""
        httpd, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._httpd = httpd
        return int(httpd.server_port)

    def stop_http_server(self) -> None:
        httpd = getattr(self, "_httpd", None)
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        conns = GaugeMetricFamily("smf_server_connections", "Open server connections")
        accepted = CounterMetricFamily("smf_server_connections_accepted", "Accepted connections")
        in_flight = GaugeMetricFamily("smf_server_in_flight", "Requests being served")
        bad = CounterMetricFamily("smf_server_bad_frames", "Connections closed for a bad frame")
        stalled = CounterMetricFamily("smf_server_stalled", "Connections dropped mid-frame")
        no_route = CounterMetricFamily("smf_server_no_route", "Requests for unknown wire ids")
        too_large = CounterMetricFamily("smf_server_too_large", "Requests refused with 413")
        bytes_io = CounterMetricFamily(
            "smf_server_bytes", "Bytes received and sent", labels=["direction"]
        )
        requests = CounterMetricFamily(
            "smf_server_requests", "Requests answered", labels=["method", "status"]
        )
        latency = HistogramMetricFamily(
            "smf_server_latency_seconds", "Server-side request latency", labels=["method"]
        )
        for server in self.servers:
            st = server.stats
            conns.add_metric([], st.connections_open)
            accepted.add_metric([], st.connections_accepted)
            in_flight.add_metric([], len(server.tasks))
            bad.add_metric([], st.bad_frames)
            stalled.add_metric([], st.stalled_connections)
            no_route.add_metric([], st.no_route)
            too_large.add_metric([], st.oversized_requests)
            bytes_io.add_metric(["in"], st.bytes_in)
            bytes_io.add_metric(["out"], st.bytes_out)
            for m in server.methods:
                for status, n in sorted(m.statuses.items()):
                    requests.add_metric([m.name, str(status)], n)
                buckets, total = _histogram(m)
                latency.add_metric([m.name], buckets, total)
        yield from (conns, accepted, in_flight, bad, stalled, no_route, too_large, bytes_io)
        yield from (requests, latency)

        calls = CounterMetricFamily(
            "smf_client_calls", "Calls completed", labels=["method", "status"]
        )
        client_latency = HistogramMetricFamily(
            "smf_client_latency_seconds", "Client-side call latency", labels=["method"]
        )
        timeouts = CounterMetricFamily("smf_client_timeouts", "Calls that timed out")
        late = CounterMetricFamily("smf_client_late_replies", "Replies after timeout/cancel")
        for client in self.clients:
            timeouts.add_metric([], client.stats.timeouts)
            late.add_metric([], client.stats.late_replies)
            for m in client.methods:
                for status, n in sorted(m.statuses.items()):
                    calls.add_metric([m.name, str(status)], n)
                buckets, total = _histogram(m)
                client_latency.add_metric([m.name], buckets, total)
        yield from (calls, client_latency, timeouts, late)
