"""Server limits: each cap, pushed by one peer, slows or rejects that peer, never others.

One test per cap, with small values: ``max_connections``, ``max_in_flight_per_connection``,
``max_buffered_bytes``, ``max_concurrent_handlers``, ``max_body_size``, ``body_timeout``
(stalled header, stalled body), ``idle_timeout``, ``handshake_timeout``; then a connection
flood and a slowloris attack while a well-behaved client measures its latency (the figures
are printed: run with ``-s`` to see them; only generous bounds are asserted).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import socket
import ssl
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import smf
import smf.server
from smf.wire import HEADER, HEADER_SIZE

MiB = 1024 * 1024


def _load_helper() -> ModuleType:
    path = Path(__file__).with_name("_soak_server.py")
    spec = importlib.util.spec_from_file_location("smf_tests_soak_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helper = _load_helper()


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _latencies(client: smf.Client, wire_id: int, n: int) -> list[float]:
    out = []
    for i in range(n):
        payload = b"latency probe %d" % i
        t0 = time.perf_counter()
        assert bytes(await client.call(wire_id, payload, timeout=10.0)) == payload
        out.append(time.perf_counter() - t0)
    return out


def _report(name: str, unloaded: list[float], loaded: list[float]) -> float:
    u50, u99 = _pct(unloaded, 0.50), _pct(unloaded, 0.99)
    l50, l99 = _pct(loaded, 0.50), _pct(loaded, 0.99)
    ratio = l50 / u50
    print(
        f"\n[{name}] good client, {len(unloaded)} unloaded calls: p50 {u50 * 1e6:.0f} us, "
        f"p99 {u99 * 1e6:.0f} us | {len(loaded)} calls under {name}: p50 {l50 * 1e6:.0f} us, "
        f"p99 {l99 * 1e6:.0f} us | p50 ratio {ratio:.2f}x, p99 ratio {l99 / u99:.2f}x"
    )
    return ratio


# --------------------------------------------------------------------------- max_connections


async def test_max_connections_refuses_the_extra_connection_at_once_and_logs_why(
    make_server: Any, make_client: Any, kit: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="smf.server")
    server = await make_server(max_connections=3)
    client = await make_client("127.0.0.1", server.port)
    raws = [await kit.open_raw(server) for _ in range(2)]
    await kit.wait_until(lambda: len(server.connections) == 3, what="3 connections")

    reader, writer = await kit.open_raw(server)
    writer.write(kit.frame(1, kit.ECHO, b"let me in"))
    t0 = time.monotonic()
    await kit.expect_closed_silently(reader, timeout=5.0)
    refused_after = time.monotonic() - t0
    await kit.close_writer(writer)
    assert refused_after < 2.0, f"refusal took {refused_after:.2f}s"
    assert server.stats.connections_refused == 1
    assert server.stats.connections_open == 3
    assert len(server.connections) == 3
    reasons = [r.getMessage() for r in caplog.records if "refusing connection" in r.getMessage()]
    assert len(reasons) == 1 and "max_connections" in reasons[0], reasons

    # The connections already open keep working, through the client and raw alike.
    assert bytes(await client.call(kit.ECHO, b"still here")) == b"still here"
    for i, (r, w) in enumerate(raws):
        w.write(kit.frame(10 + i, kit.ECHO, b"raw %d" % i))
        answer = await kit.read_frame(r)
        assert (answer.session, answer.meta, answer.body) == (10 + i, 200, b"raw %d" % i)

    # A freed slot is taken by the next connection.
    await kit.close_writer(raws[0][1])
    await kit.wait_until(lambda: len(server.connections) == 2, what="a slot to free")
    late = await make_client("127.0.0.1", server.port)
    assert bytes(await late.call(kit.ECHO, b"my turn")) == b"my turn"
    assert server.stats.connections_refused == 1
    await kit.close_writer(raws[1][1])


# --------------------------------------------------------------------------- in flight


async def test_max_in_flight_per_connection_pauses_only_the_offender(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server(max_in_flight_per_connection=8)
    state = server.state
    reader, writer = await kit.open_raw(server)
    n = 200
    writer.write(b"".join(kit.frame(s, kit.BLOCK, b"hog %d" % s) for s in range(1, n + 1)))
    await kit.wait_until(lambda: state.entered == 8, what="8 blocked handlers")
    await asyncio.sleep(0.1)  # time to overrun the cap, if it could be
    assert state.entered == 8
    (offender,) = server.connections
    assert offender._reading_paused
    assert server.stats.reads_paused > 0

    # A second connection is served at once while the offender stays paused.
    good = await make_client("127.0.0.1", server.port)
    payloads = [b"good %d" % i for i in range(100)]
    results = await asyncio.wait_for(
        asyncio.gather(*(good.call(kit.ECHO, p) for p in payloads)), 5.0
    )
    assert [bytes(r) for r in results] == payloads
    assert state.entered == 8
    assert offender._reading_paused

    state.gate.set()
    answers = await kit.read_frames(reader, n, timeout=20.0)
    assert sorted(a.session for a in answers) == list(range(1, n + 1))
    assert {a.meta for a in answers} == {200}
    assert max(len(c.in_flight) for c in server.connections) <= 8
    await kit.close_writer(writer)
    await kit.wait_until(lambda: server.budget.used == 0, what="the budget to drain")


# --------------------------------------------------------------------------- byte budget


async def _fill_budget(server: smf.Server, kit: Any, n: int, body: bytes) -> Any:
    reader, writer = await kit.open_raw(server)
    writer.write(b"".join(kit.frame(s, kit.BLOCK, body) for s in range(1, n + 1)))
    await kit.wait_until(lambda: server.budget.exhausted, what="the byte budget to fill")
    await asyncio.sleep(0.1)
    return reader, writer


async def test_max_buffered_bytes_stops_reading_and_serves_everyone_once_drained(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    limit = 16 * 1024
    body = b"b" * 1000
    cost = HEADER_SIZE + len(body) + smf.server.REQUEST_OVERHEAD
    server = await make_server(max_buffered_bytes=limit)
    state = server.state
    n = 100
    reader, writer = await _fill_budget(server, kit, n, body)
    held = state.entered
    assert 0 < held < n
    assert server.budget.peak <= limit + cost  # bytes already read are accepted: one over
    assert server.stats.reads_paused > 0
    await asyncio.sleep(0.1)
    assert state.entered == held  # no progress while the budget is spent

    good = await make_client("127.0.0.1", server.port)
    good_call = asyncio.create_task(good.call(kit.ECHO, b"patient", timeout=20.0))
    await asyncio.sleep(0.2)
    print(
        f"\n[max_buffered_bytes] offender holds {server.budget.used} of {limit} budget bytes "
        f"({held} requests); well-behaved call served while it does: {good_call.done()}"
    )

    state.gate.set()
    assert bytes(await asyncio.wait_for(good_call, 20.0)) == b"patient"
    answers = await kit.read_frames(reader, n, timeout=20.0)
    assert sorted(a.session for a in answers) == list(range(1, n + 1))
    assert {a.meta for a in answers} == {200}
    await kit.wait_until(lambda: server.budget.used == 0, what="the budget to drain")
    assert bytes(await good.call(kit.ECHO, b"after")) == b"after"
    assert server.budget.peak <= limit + 2 * cost
    await kit.close_writer(writer)


async def test_byte_budget_spent_by_one_peer_does_not_starve_a_connection_with_nothing_in_flight(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server(max_buffered_bytes=16 * 1024)
    _, writer = await _fill_budget(server, kit, 100, b"b" * 1000)
    good = await make_client("127.0.0.1", server.port)
    try:
        # "Reaching a cap slows or rejects the offender, never others": one request
        # from a connection holding nothing is the bounded overshoot the budget allows.
        result = await asyncio.wait_for(good.call(kit.ECHO, b"me too"), 2.0)
        assert bytes(result) == b"me too"
    finally:
        server.state.gate.set()
        await kit.close_writer(writer)


def _connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _blocking_echo(port: int) -> None:
    """One echo call over a plain socket (warms the child server up)."""
    with _connect(port) as sock:
        sock.sendall(smf.wire.encode_frame(1, helper.ECHO, b"warm-up"))
        got = b""
        while len(got) < HEADER_SIZE + len(b"warm-up"):
            chunk = sock.recv(65536)
            assert chunk, "server closed the warm-up connection"
            got += chunk
        assert HEADER.unpack_from(got)[5] == 200


def _settled_rss(server: Any, limit: float = 5.0) -> int:
    """The child's RSS once it stops growing (page faults take a while to land)."""
    last, deadline = server.rss(), time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.15)
        now = server.rss()
        if abs(now - last) < MiB:
            return int(now)
        last = now
    return int(last)


def test_a_declared_body_size_is_not_allocated_before_the_bytes_arrive() -> None:
    server = helper.ServerProcess({"max_buffered_bytes": 8 * MiB})  # max_body_size 64 MiB
    socks: list[socket.socket] = []
    try:
        _blocking_echo(server.port)
        base = server.rss()
        for _ in range(8):
            sock = _connect(server.port)
            sock.sendall(HEADER.pack(0, 0, 1, 60 * MiB, 0, helper.ECHO) + b"x")
            socks.append(sock)
        time.sleep(0.1)
        for sock in socks:
            sock.sendall(b"y")  # a second read: the decoder sizes its buffer for the frame
        growth = _settled_rss(server) - base
        print(
            f"\n[declared size] 8 peers x 18 bytes declaring 60 MiB bodies: server RSS "
            f"+{growth / MiB:.1f} MiB"
        )
        assert growth < 32 * MiB, f"18 bytes per peer cost the server {growth / MiB:.0f} MiB"
    finally:
        for sock in socks:
            sock.close()
        server.stop()


def test_partially_received_frames_count_against_the_server_wide_budget() -> None:
    budget, n, sent_each = 8 * MiB, 8, 6 * MiB
    server = helper.ServerProcess({"max_buffered_bytes": budget, "body_timeout": 30.0})
    socks = [_connect(server.port, timeout=2.0) for _ in range(n)]
    try:
        _blocking_echo(server.port)
        base = server.rss()

        def push(sock: socket.socket) -> int:
            header = HEADER.pack(0, 0, 1, 32 * MiB, 0, helper.ECHO)
            chunk = b"p" * (256 * 1024)
            sent = 0
            with contextlib.suppress(OSError):  # TimeoutError: the server stopped reading
                sock.sendall(header)
                while sent < sent_each:
                    sock.sendall(chunk)
                    sent += len(chunk)
            return sent

        with ThreadPoolExecutor(n) as pool:
            pushed = sum(pool.map(push, socks))
        growth = _settled_rss(server) - base
        print(
            f"\n[partial frames] {n} peers pushed {pushed / MiB:.0f} MiB of unfinished "
            f"frames: server RSS +{growth / MiB:.1f} MiB (budget {budget / MiB:.0f} MiB)"
        )
        assert growth < budget + n * 256 * 1024 + 16 * MiB
    finally:
        for sock in socks:
            sock.close()
        server.stop()


# --------------------------------------------------------------------------- handlers


async def test_max_concurrent_handlers_answers_503_naming_the_cap(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server(max_concurrent_handlers=4)
    state = server.state
    hog = await make_client("127.0.0.1", server.port)
    held = [asyncio.create_task(hog.call(kit.BLOCK, b"hold")) for _ in range(4)]
    await kit.wait_until(lambda: state.entered == 4, what="4 handlers running")

    other = await make_client("127.0.0.1", server.port)
    with pytest.raises(smf.Unavailable) as info:
        await other.call(kit.ECHO, b"room?")
    assert info.value.status == 503
    assert "max_concurrent_handlers" in info.value.message
    with pytest.raises(smf.Unavailable):
        await hog.call(kit.ECHO, b"one more")
    assert server.stats.overloaded == 2
    assert other.connected and hog.connected  # rejected, not disconnected

    state.gate.set()
    assert [bytes(r) for r in await asyncio.gather(*held)] == [b"released"] * 4
    assert bytes(await other.call(kit.ECHO, b"room now")) == b"room now"
    assert len(server.tasks) == 0


# --------------------------------------------------------------------------- frame size


async def test_max_body_size_answers_413_and_the_connection_stays_usable(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server(max_body_size=4096)
    client = await make_client("127.0.0.1", server.port)
    with pytest.raises(smf.PayloadTooLarge) as info:
        await client.call(kit.ECHO, b"y" * 100_000)
    assert info.value.status == 413
    assert "100000" in info.value.message and "4096" in info.value.message
    payloads = [b"z" * 4096, b"small", b"x" * 4000]
    for p in payloads:
        assert bytes(await client.call(kit.ECHO, p)) == p
    with pytest.raises(smf.PayloadTooLarge):
        await client.call(kit.ECHO, b"y" * 4097)
    assert bytes(await client.call(kit.ECHO, b"again")) == b"again"
    assert client.stats.connection_losses == 0
    assert server.stats.oversized_requests == 2
    assert server.stats.bad_frames == 0
    assert server.stats.connections_open == 1
    assert server.budget.used == 0


# --------------------------------------------------------------------------- read timeouts


async def test_body_timeout_drops_a_stalled_header_and_a_stalled_body(
    make_server: Any, make_client: Any, kit: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="smf.server")
    timeout = 0.3
    server = await make_server(body_timeout=timeout)
    good = await make_client("127.0.0.1", server.port)
    data = kit.frame(1, kit.ECHO, b"q" * 1000)
    half_header = await kit.open_raw(server)
    half_body = await kit.open_raw(server)
    half_header[1].write(data[:8])
    half_body[1].write(data[: HEADER_SIZE + 500])
    t0 = time.monotonic()

    async def keep_calling() -> int:
        n = 0
        while server.stats.stalled_connections < 2:
            assert bytes(await good.call(kit.ECHO, b"fine %d" % n)) == b"fine %d" % n
            n += 1
            await asyncio.sleep(0.01)
        return n

    calls = asyncio.create_task(keep_calling())
    await asyncio.gather(
        kit.expect_closed_silently(half_header[0], timeout=5.0),
        kit.expect_closed_silently(half_body[0], timeout=5.0),
    )
    dropped_after = time.monotonic() - t0
    served = await asyncio.wait_for(calls, 5.0)
    assert timeout * 0.8 <= dropped_after < 5.0, dropped_after
    assert served > 0
    assert server.stats.stalled_connections == 2
    assert server.stats.bad_frames == 0
    assert server.stats.connections_open == 1
    reasons = [r.getMessage() for r in caplog.records if "frame incomplete" in r.getMessage()]
    assert len(reasons) == 2 and all(f"{timeout}s" in r for r in reasons), reasons
    assert bytes(await good.call(kit.ECHO, b"after")) == b"after"
    for _, writer in (half_header, half_body):
        await kit.close_writer(writer)


# --------------------------------------------------------------------------- idle


async def test_idle_timeout_closes_an_idle_connection_but_not_one_with_a_call_in_flight(
    make_server: Any, make_client: Any, kit: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smf.server")
    idle_timeout = 0.4
    server = await make_server(idle_timeout=idle_timeout)
    state = server.state
    busy = await make_client("127.0.0.1", server.port)
    long_call = asyncio.create_task(busy.call(kit.BLOCK, b"long", timeout=20.0))
    await kit.wait_until(lambda: state.entered == 1, what="the long call to start")
    idle_reader, idle_writer = await kit.open_raw(server)

    t0 = time.monotonic()
    await kit.expect_closed_silently(idle_reader, timeout=5.0)
    closed_after = time.monotonic() - t0
    assert idle_timeout * 0.8 <= closed_after < 5.0, closed_after
    assert server.stats.idle_closed == 1

    await asyncio.sleep(2 * idle_timeout)  # the busy one stays, well past the timeout
    assert busy.connected and not long_call.done()
    assert server.stats.idle_closed == 1
    state.gate.set()
    assert bytes(await long_call) == b"released"

    # Once its call is over, it is idle too.
    await kit.wait_until(lambda: not busy.connected, timeout=5.0, what="the idle close")
    assert server.stats.idle_closed == 2
    assert not server.connections
    reasons = [r.getMessage() for r in caplog.records if "idle for" in r.getMessage()]
    assert len(reasons) == 2 and all(f"{idle_timeout}s" in r for r in reasons), reasons
    await kit.close_writer(idle_writer)


# --------------------------------------------------------------------------- TLS handshake


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00"], ids=["silent", "partial-hello"])
async def test_handshake_timeout_drops_a_connection_that_never_completes_tls(
    kit: Any, sent: bytes
) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_ctx)

    handshake_timeout = 0.3
    server = smf.Server(handshake_timeout=handshake_timeout)
    kit.HandlerState().install(server)
    await server.start("127.0.0.1", 0, ssl=server_ctx)
    client = smf.Client("127.0.0.1", server.port, ssl=client_ctx, server_hostname="localhost")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(sent)
        t0 = time.monotonic()
        # Meanwhile a real TLS client is served.
        assert bytes(await client.call(kit.ECHO, b"over tls")) == b"over tls"
        await kit.expect_closed_silently(reader, timeout=5.0)
        dropped_after = time.monotonic() - t0
        assert handshake_timeout * 0.8 <= dropped_after < 5.0, dropped_after
        assert bytes(await client.call(kit.ECHO, b"still")) == b"still"
        assert server.stats.connections_accepted == 1  # the stalled one never was
        await kit.close_writer(writer)
    finally:
        await client.close()
        await server.stop(grace=0)


# --------------------------------------------------------------------------- flood


async def test_connection_flood_leaves_a_well_behaved_client_served(
    make_server: Any, make_client: Any, kit: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="smf.server")  # 150 refusals: not worth keeping
    max_connections, total, burst = 150, 300, 50
    server = await make_server(max_connections=max_connections)
    good = await make_client("127.0.0.1", server.port)
    await _latencies(good, kit.ECHO, 100)  # warm-up
    unloaded = await _latencies(good, kit.ECHO, 500)
    rss_before = kit.rss_bytes()

    flood: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    flooding = True

    async def open_burst() -> None:
        opened = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", server.port) for _ in range(burst))
        )
        flood.extend(opened)

    async def run_flood() -> None:
        nonlocal flooding
        try:
            for _ in range(total // burst):
                await open_burst()
                await asyncio.sleep(0.05)
            # Churn: close a burst, open a burst (half of them refused again).
            for _ in range(4):
                for _, writer in flood[:burst]:
                    writer.transport.abort()
                del flood[:burst]
                await open_burst()
                await asyncio.sleep(0.05)
        finally:
            flooding = False

    flooder = asyncio.create_task(run_flood())
    loaded: list[float] = []
    peak_open = 0
    while flooding:
        loaded.extend(await _latencies(good, kit.ECHO, 10))
        peak_open = max(peak_open, len(server.connections))
    await flooder
    rss_flood = kit.rss_bytes()
    await kit.wait_until(
        lambda: (
            server.stats.connections_accepted + server.stats.connections_refused
            >= 1 + total + 4 * burst
        ),
        what="every flood connection to be accepted or refused",
    )
    refused = server.stats.connections_refused
    for _, writer in flood:
        writer.transport.abort()
    await kit.wait_until(lambda: len(server.connections) == 1, what="the flood to go away")

    ratio = _report("connection flood", unloaded, loaded)
    per_conn = (rss_flood - rss_before) / max(peak_open - 1, 1)
    print(
        f"[connection flood] {total + 4 * burst} flood connections, {refused} refused "
        f"(max_connections={max_connections}), peak {peak_open} open; test-process RSS "
        f"+{(rss_flood - rss_before) / MiB:.1f} MiB (~{per_conn / 1024:.0f} KiB per open "
        "connection, server and flooder sides together)"
    )
    assert len(loaded) >= 20
    assert refused >= total - max_connections
    assert peak_open <= max_connections
    assert ratio < 50, f"p50 under flood is {ratio:.1f}x the unloaded p50"
    assert bytes(await good.call(kit.ECHO, b"after")) == b"after"


async def test_slowloris_peers_are_dropped_and_a_well_behaved_client_is_served(
    make_server: Any, make_client: Any, kit: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="smf.server")
    n, interval, body_timeout = 200, 0.5, 1.0
    server = await make_server(body_timeout=body_timeout)
    good = await make_client("127.0.0.1", server.port)
    await _latencies(good, kit.ECHO, 100)
    unloaded = await _latencies(good, kit.ECHO, 500)

    async def dribble(i: int) -> tuple[float, int]:
        """Send a frame one byte every ``interval``; (seconds until dropped, bytes sent)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        data = kit.frame(i + 1, kit.ECHO, b"slowly")
        closed = asyncio.ensure_future(reader.read())
        t0 = time.monotonic()
        sent = 0
        try:
            for byte in data:
                writer.write(bytes([byte]))
                try:
                    await writer.drain()
                except ConnectionError:
                    break
                sent += 1
                done, _ = await asyncio.wait({closed}, timeout=interval)
                if done:
                    break
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(asyncio.shield(closed), 10.0)
            return time.monotonic() - t0, sent
        finally:
            closed.cancel()
            writer.transport.abort()

    attack = asyncio.gather(*(dribble(i) for i in range(n)))
    loaded: list[float] = []
    while not attack.done():
        loaded.extend(await _latencies(good, kit.ECHO, 10))
    results = await attack
    drop_times = sorted(t for t, _ in results)
    frame_len = HEADER_SIZE + len(b"slowly")

    ratio = _report("slowloris", unloaded, loaded)
    print(
        f"[slowloris] {n} peers, 1 byte per {interval}s, body_timeout {body_timeout}s: "
        f"dropped after {drop_times[0]:.2f}s (min), {statistics.median(drop_times):.2f}s "
        f"(median), {drop_times[-1]:.2f}s (max); at most {max(s for _, s in results)} of "
        f"{frame_len} bytes sent"
    )
    assert server.stats.stalled_connections == n
    assert all(sent < frame_len for _, sent in results)
    assert server.stats.responses.get(200, 0) >= len(loaded) + 600
    assert set(server.stats.responses) == {200}
    assert len(loaded) >= 20
    assert ratio < 50, f"p50 under slowloris is {ratio:.1f}x the unloaded p50"
    await kit.wait_until(lambda: len(server.connections) == 1, what="the dribblers to go")
