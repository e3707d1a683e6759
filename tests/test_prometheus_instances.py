"""Several servers and clients behind one MetricsExporter: every series names its instance,
so no two samples share a name and labels (Prometheus would reject or merge them)."""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

import smf
from smf.prometheus import MetricsExporter

ECHO = 0x5EC0


async def echo(ctx: smf.CallContext, body: memoryview) -> bytes:
    return bytes(body)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text: str = resp.read().decode()
    return text


def samples(text: str) -> list[tuple[str, frozenset[tuple[str, str]]]]:
    return [
        (s.name, frozenset(s.labels.items()))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


async def _exposition(
    servers: list[smf.Server] | dict[str, smf.Server],
    clients: list[smf.Client] | dict[str, smf.Client],
) -> str:
    exporter = MetricsExporter(servers=servers, clients=clients)
    port = exporter.start_http_server(0)
    try:
        return await asyncio.to_thread(scrape, port)
    finally:
        await asyncio.to_thread(exporter.stop_http_server)


async def _two_servers_two_clients() -> tuple[list[smf.Server], list[smf.Client]]:
    servers = []
    for _ in range(2):
        server = smf.Server()
        server.add_handler(ECHO, echo, "Echo.call")  # the same method on both
        await server.start("127.0.0.1", 0)
        servers.append(server)
    # Two clients of the same server, calling the same method.
    clients = [smf.Client("127.0.0.1", servers[0].port) for _ in range(2)]
    for client in clients:
        await client.connect()
        client.methods.name(ECHO, "Echo.call")
        await client.call(ECHO, b"x")
    async with smf.Client("127.0.0.1", servers[1].port) as other:
        await other.call(ECHO, b"y")
    return servers, clients


async def _close(servers: list[smf.Server], clients: list[smf.Client]) -> None:
    for client in clients:
        await client.close()
    for server in servers:
        await server.stop(grace=0)


async def test_several_servers_and_clients_never_share_a_series() -> None:
    servers, clients = await _two_servers_two_clients()
    try:
        text = await _exposition(servers, clients)
    finally:
        await _close(servers, clients)
    found = samples(text)
    duplicates = [key for key, n in Counter(found).items() if n > 1]
    assert duplicates == []
    labels = {dict(ls).get("server") for name, ls in found if name.startswith("smf_server_")}
    assert labels == {"0", "1"}
    requests = {
        dict(ls)["server"]
        for name, ls in found
        if name == "smf_server_requests_total" and dict(ls)["method"] == "Echo.call"
    }
    assert requests == {"0", "1"}
    calls = {
        dict(ls)["client"]
        for name, ls in found
        if name == "smf_client_calls_total" and dict(ls)["method"] == "Echo.call"
    }
    assert calls == {"0", "1"}


async def test_instances_given_as_a_mapping_are_labelled_by_name() -> None:
    servers, clients = await _two_servers_two_clients()
    try:
        text = await _exposition(
            {"public": servers[0], "admin": servers[1]}, {"a": clients[0], "b": clients[1]}
        )
    finally:
        await _close(servers, clients)
    found = samples(text)
    assert {dict(ls)["server"] for n, ls in found if n == "smf_server_connections"} == {
        "public",
        "admin",
    }
    assert {dict(ls)["client"] for n, ls in found if n == "smf_client_timeouts_total"} == {
        "a",
        "b",
    }
