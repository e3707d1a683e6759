"""Backpressure: the server stops reading instead of buffering without bound.

Per connection (``max_in_flight_per_connection``), server wide (``max_buffered_bytes``),
and in memory actually used by the process (VmRSS) while a peer pipelines far more
requests than the server will hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import smf
import smf.server
from smf.wire import HEADER, HEADER_SIZE, FrameDecoder, checksum

MiB = 1024 * 1024


async def test_in_flight_per_connection_is_capped_and_reads_pause(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server(max_in_flight_per_connection=16)
    server.tasks = kit.TrackingSet()
    client = await make_client("127.0.0.1", server.port)
    await kit.wait_until(lambda: len(server.connections) == 1)
    (conn,) = server.connections
    conn.in_flight = kit.TrackingSet()
    state = server.state

    n = 3000
    calls = [asyncio.create_task(client.call(kit.BLOCK, b"req-%d" % i)) for i in range(n)]
    await kit.wait_until(lambda: state.entered == 16, what="16 handlers to start")
    await asyncio.sleep(0.1)  # plenty of time to overrun the limit, if it could
    assert state.entered == 16
    assert len(conn.in_flight) == 16
    assert server.stats.reads_paused > 0
    assert conn._reading_paused
    assert client.in_flight == n  # the client did pipeline everything

    state.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*calls), 30.0)
    assert [bytes(r) for r in results] == [b"released"] * n
    assert conn.in_flight.peak == 16
    assert server.tasks.peak == 16
    assert server.stats.responses == {200: n}
    assert server.budget.used == 0


async def test_server_wide_byte_budget_bounds_requests_in_flight(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    limit = 32 * 1024
    body = b"b" * 1000
    cost = HEADER_SIZE + len(body) + getattr(smf.server, "REQUEST_OVERHEAD", 1024)
    server = await make_server(max_buffered_bytes=limit)
    state = server.state
    n_conns, per_conn = 4, 150
    clients = [await make_client("127.0.0.1", server.port) for _ in range(n_conns)]
    calls = [asyncio.create_task(c.call(kit.BLOCK, body)) for c in clients for _ in range(per_conn)]
    await kit.wait_until(lambda: server.budget.exhausted, what="the budget to fill")
    await asyncio.sleep(0.1)
    held = state.entered
    assert 0 < held < n_conns * per_conn
    # Bytes already read are accepted, so each connection may overshoot by one request.
    assert server.budget.peak <= limit + n_conns * cost
    assert held * cost <= limit + n_conns * cost
    assert server.stats.reads_paused > 0
    await asyncio.sleep(0.1)
    assert state.entered == held  # no progress while the budget is spent

    state.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*calls), 30.0)
    assert all(bytes(r) == b"released" for r in results)
    assert state.finished == n_conns * per_conn
    assert server.budget.used == 0
    assert server.budget.peak <= limit + n_conns * cost


def _frames(start: int, count: int, meta: int, body: bytes) -> bytes:
    csum = checksum(body)
    size = len(body)
    return b"".join(
        HEADER.pack(0, 0, (start + i) % 0xFFFF + 1, size, csum, meta) + body for i in range(count)
    )


async def _count_responses(reader: asyncio.StreamReader, counts: dict[int, int]) -> None:
    decoder = FrameDecoder()
    while data := await reader.read(256 * 1024):
        decoder.receive_data(data)
        while (event := decoder.next_event()) is not None:
            assert isinstance(event, smf.wire.Frame)
            counts[event.meta] = counts.get(event.meta, 0) + 1
            event.body.release()


async def test_memory_stays_bounded_while_a_peer_pipelines_50k_requests(
    make_server: Any, kit: Any
) -> None:
    """50k requests of 1 KiB (~52 MB, and ~50k tasks if all were accepted) against a
    blocked handler: the server holds what its budget allows and stops reading."""
    server = await make_server(max_buffered_bytes=256 * 1024)
    state = server.state
    n, batch = 50_000, 200
    body = b"m" * 1024
    reader, writer = await kit.open_raw(server)
    counts: dict[int, int] = {}
    responses = asyncio.create_task(_count_responses(reader, counts))

    baseline = kit.rss_bytes()
    peak = baseline
    sent = 0

    async def pipeline() -> None:
        nonlocal sent
        for start in range(0, n, batch):
            writer.write(_frames(start, batch, kit.BLOCK, body))
            await writer.drain()
            sent += batch

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, kit.rss_bytes())
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    sending = asyncio.create_task(pipeline())
    try:
        # Wait until the sender is stuck: the server stopped reading.
        last, still_since = -1, time.monotonic()
        async with asyncio.timeout(20):
            while time.monotonic() - still_since < 0.3:
                await asyncio.sleep(0.02)
                if sent != last:
                    last, still_since = sent, time.monotonic()
        assert not sending.done(), "the server read all 50k requests: no backpressure"
        assert state.entered < 1000
        assert server.stats.reads_paused > 0
        blocked_growth = kit.rss_bytes() - baseline

        state.gate.set()
        await asyncio.wait_for(sending, 30.0)
        await kit.wait_until(lambda: counts.get(200, 0) == n, timeout=30.0, what="all responses")
    finally:
        sampler.cancel()
        sending.cancel()
        await asyncio.gather(sampler, sending, return_exceptions=True)
        await kit.close_writer(writer)
        responses.cancel()
        with contextlib.suppress(BaseException):
            await responses
    assert counts == {200: n}
    assert state.finished == n
    growth = peak - baseline
    assert blocked_growth < 64 * MiB, f"RSS grew {blocked_growth / MiB:.1f} MiB while blocked"
    assert growth < 64 * MiB, f"RSS grew {growth / MiB:.1f} MiB"
    assert server.budget.peak <= 256 * 1024 + HEADER_SIZE + len(body) + 1024 * 4


async def test_server_stops_reading_while_the_peer_does_not_read_answers(
    make_server: Any, kit: Any
) -> None:
    """A peer that pipelines requests and never reads the answers: the server must not
    queue answers without bound (its transport's write buffer) but stop reading."""
    server = await make_server()
    n, batch = 50_000, 100
    body = b"w" * 1024  # ~52 MB of echoes if the server kept reading
    _, writer = await kit.open_raw(server)
    await kit.wait_until(lambda: len(server.connections) == 1)
    (conn,) = server.connections
    sent = 0

    async def pipeline() -> None:
        nonlocal sent
        for start in range(0, n, batch):
            writer.write(_frames(start, batch, kit.ECHO, body))
            await writer.drain()
            sent += batch

    sending = asyncio.create_task(pipeline())
    try:
        last, still_since = -1, time.monotonic()
        async with asyncio.timeout(20):
            while time.monotonic() - still_since < 0.3 and not sending.done():
                await asyncio.sleep(0.02)
                if sent != last:
                    last, still_since = sent, time.monotonic()
        queued = conn.transport.get_write_buffer_size()
        assert queued < 8 * MiB, (
            f"server queued {queued / MiB:.1f} MiB of answers for a peer that reads nothing "
            f"(peer sent {sent} requests)"
        )
        assert not sending.done()
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        writer.transport.abort()
