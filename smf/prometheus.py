"""Prometheus exposition of server and client metrics.

Nothing here runs per call: the runtime keeps plain counters and latency recorders,
and this collector reads them when Prometheus scrapes.

    exporter = MetricsExporter(servers=[server])
    port = exporter.start_http_server(9100)

Every series carries the instance it comes from, so several servers and clients in one
process never collide: a ``server`` label on ``smf_server_*`` and a ``client`` label on
``smf_client_*``. Its value is the instance's position in the list (``"0"``, ``"1"``, ...)
or, when they are given as a mapping, its name:
``MetricsExporter(servers={"public": s1, "admin": s2}, clients={"db": c})``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as exc:  # an optional part: say which extra brings it
    raise ImportError(
        f"smf.prometheus needs prometheus-client ({exc}): pip install 'smf[prometheus]'"
    ) from exc

from .client import Client, ClientStats
from .metrics import LatencyRecorder, MethodTable
from .server import Server, ServerStats

T = TypeVar("T")

# Bucket upper bounds in seconds for the latency histograms (25 µs .. 10 s).
BUCKETS = (
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


def _buckets(totals: dict[int, int]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets and the sum in seconds, from µs counts."""
    counts = dict.fromkeys(BUCKETS, 0)
    total = 0
    sum_s = 0.0
    for us, n in totals.items():
        seconds = us / 1e6
        total += n
        sum_s += seconds * n
        for bound in BUCKETS:
            if seconds <= bound:
                counts[bound] += n
                break
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound in BUCKETS:
        running += counts[bound]
        buckets.append((repr(bound), float(running)))
    buckets.append(("+Inf", float(total)))
    return buckets, sum_s


@dataclass
class _MethodRow:
    name: str
    statuses: dict[int, int]
    recorder: LatencyRecorder
    fresh: dict[int, int]  # drained on the loop thread, folded on the scraper's
    messages: tuple[int, int] = (0, 0)  # stream messages (in, out)


@dataclass
class _Snapshot:
    servers: list[tuple[str, ServerStats, int, list[_MethodRow]]]
    clients: list[tuple[str, ClientStats, list[_MethodRow]]]


def _named(items: Sequence[T] | Mapping[str, T]) -> dict[str, T]:
    """Instance label value -> instance: the mapping's keys, or positions as strings."""
    if isinstance(items, Mapping):
        return {str(name): item for name, item in items.items()}
    return {str(i): item for i, item in enumerate(items)}


def _rows(table: MethodTable) -> list[_MethodRow]:
    return [
        _MethodRow(
            m.name,
            dict(m.statuses),
            m.latency_us,
            m.latency_us.drain(),
            (m.messages_in, m.messages_out),
        )
        for m in table
    ]


def _stream_messages(family: CounterMetricFamily, name: str, row: _MethodRow) -> None:
    """A method's stream messages, by direction (only for methods that streamed)."""
    if row.messages != (0, 0):
        family.add_metric([name, row.name, "in"], row.messages[0])
        family.add_metric([name, row.name, "out"], row.messages[1])


class MetricsExporter:
    """A Prometheus collector over any number of servers and clients."""

    def __init__(
        self,
        servers: Sequence[Server] | Mapping[str, Server] = (),
        clients: Sequence[Client] | Mapping[str, Client] = (),
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """Create it on the event loop that runs ``servers`` and ``clients`` (or pass
        ``loop``): scrapes from other threads read the counters on that loop. A mapping
        names each instance (its ``server``/``client`` label); a list numbers them."""
        self.named_servers = _named(servers)
        self.named_clients = _named(clients)
        self.servers = list(self.named_servers.values())
        self.clients = list(self.named_clients.values())
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self.loop = loop
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

    def _snapshot(self) -> _Snapshot:
        """Copy what is needed; runs on the event loop, so nothing changes meanwhile."""
        return _Snapshot(
            servers=[
                (name, dataclasses.replace(s.stats), len(s.tasks), _rows(s.methods))
                for name, s in self.named_servers.items()
            ],
            clients=[
                (name, dataclasses.replace(c.stats), _rows(c.methods))
                for name, c in self.named_clients.items()
            ],
        )

    def _take_snapshot(self) -> _Snapshot:
        loop = self.loop
        if loop is None or not loop.is_running() or _on_loop_thread(loop):
            return self._snapshot()
        done: concurrent.futures.Future[_Snapshot] = concurrent.futures.Future()

        def take() -> None:
            try:
                done.set_result(self._snapshot())
            except BaseException as exc:  # delivered to the scraping thread
                done.set_exception(exc)

        loop.call_soon_threadsafe(take)
        return done.result(timeout=10)

    def collect(self) -> Iterator[Metric]:
        snap = self._take_snapshot()
        srv = ["server"]
        conns = GaugeMetricFamily("smf_server_connections", "Open server connections", labels=srv)
        accepted = CounterMetricFamily(
            "smf_server_connections_accepted", "Accepted connections", labels=srv
        )
        in_flight = GaugeMetricFamily("smf_server_in_flight", "Requests being served", labels=srv)
        bad = CounterMetricFamily(
            "smf_server_bad_frames", "Connections closed for a bad frame", labels=srv
        )
        stalled = CounterMetricFamily(
            "smf_server_stalled", "Connections dropped mid-frame", labels=srv
        )
        no_route = CounterMetricFamily(
            "smf_server_no_route", "Requests for unknown wire ids", labels=srv
        )
        too_large = CounterMetricFamily(
            "smf_server_too_large", "Requests refused with 413", labels=srv
        )
        bytes_io = CounterMetricFamily(
            "smf_server_bytes", "Bytes received and sent", labels=[*srv, "direction"]
        )
        requests = CounterMetricFamily(
            "smf_server_requests", "Requests answered", labels=[*srv, "method", "status"]
        )
        latency = HistogramMetricFamily(
            "smf_server_latency_seconds", "Server-side request latency", labels=[*srv, "method"]
        )
        server_messages = CounterMetricFamily(
            "smf_server_stream_messages",
            "Stream messages received and sent",
            labels=[*srv, "method", "direction"],
        )
        for name, st, running, rows in snap.servers:
            conns.add_metric([name], st.connections_open)
            accepted.add_metric([name], st.connections_accepted)
            in_flight.add_metric([name], running)
            bad.add_metric([name], st.bad_frames)
            stalled.add_metric([name], st.stalled_connections)
            no_route.add_metric([name], st.no_route)
            too_large.add_metric([name], st.oversized_requests)
            bytes_io.add_metric([name, "in"], st.bytes_in)
            bytes_io.add_metric([name, "out"], st.bytes_out)
            for row in rows:
                for status, n in sorted(row.statuses.items()):
                    requests.add_metric([name, row.name, str(status)], n)
                _stream_messages(server_messages, name, row)
                row.recorder.fold(row.fresh)
                buckets, total = _buckets(row.recorder.totals)
                latency.add_metric([name, row.name], buckets, total)
        yield from (conns, accepted, in_flight, bad, stalled, no_route, too_large, bytes_io)
        yield from (requests, latency, server_messages)

        cli = ["client"]
        calls = CounterMetricFamily(
            "smf_client_calls", "Calls completed", labels=[*cli, "method", "status"]
        )
        client_latency = HistogramMetricFamily(
            "smf_client_latency_seconds", "Client-side call latency", labels=[*cli, "method"]
        )
        timeouts = CounterMetricFamily("smf_client_timeouts", "Calls that timed out", labels=cli)
        late = CounterMetricFamily(
            "smf_client_late_replies", "Replies after timeout/cancel", labels=cli
        )
        client_messages = CounterMetricFamily(
            "smf_client_stream_messages",
            "Stream messages received and sent",
            labels=[*cli, "method", "direction"],
        )
        for name, cst, rows in snap.clients:
            timeouts.add_metric([name], cst.timeouts)
            late.add_metric([name], cst.late_replies)
            for row in rows:
                for status, n in sorted(row.statuses.items()):
                    calls.add_metric([name, row.name, str(status)], n)
                _stream_messages(client_messages, name, row)
                row.recorder.fold(row.fresh)
                buckets, total = _buckets(row.recorder.totals)
                client_latency.add_metric([name, row.name], buckets, total)
        yield from (calls, client_latency, timeouts, late, client_messages)


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
