"""Streams on real sockets: the three kinds, and every way a stream ends early
(break, cancel, deadline, handler error, disconnect), flow control with a consumer that
stops reading, and unary calls beside streams on one connection."""

from __future__ import annotations

import asyncio
import gc
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

import smf
from smf.stream_calls import Cancelled

TAIL, UPLOAD, CHAT, FOREVER, FAIL_AFTER, ECHO = 1, 2, 3, 4, 5, 6


class Probe:
    """What the server's handlers saw."""

    def __init__(self) -> None:
        self.ended: asyncio.Queue[str] = asyncio.Queue()
        self.produced = 0


@pytest.fixture
async def probe() -> Probe:
    return Probe()


@pytest.fixture
async def server(probe: Probe) -> AsyncIterator[smf.Server]:
    async def tail(ctx: smf.CallContext, request: memoryview) -> AsyncIterator[bytes]:
        for i in range(int(bytes(request))):
            yield b"rec-%d" % i

    async def upload(ctx: smf.CallContext, requests: AsyncIterator[memoryview]) -> bytes:
        n = total = 0
        async for chunk in requests:
            n += 1
            total += chunk.nbytes
        return b"%d/%d" % (n, total)

    async def chat(
        ctx: smf.CallContext, requests: AsyncIterator[memoryview]
    ) -> AsyncIterator[bytes]:
        async for message in requests:
            yield b"re:" + bytes(message)

    async def forever(ctx: smf.CallContext, request: memoryview) -> AsyncIterator[bytes]:
        try:
            while True:
                probe.produced += 1
                yield b"x" * int(bytes(request))
                await asyncio.sleep(0)
        except GeneratorExit:
            probe.ended.put_nowait("GeneratorExit")
            raise
        except asyncio.CancelledError:
            probe.ended.put_nowait("CancelledError")
            raise

    async def fail_after(ctx: smf.CallContext, request: memoryview) -> AsyncIterator[bytes]:
        yield b"one"
        yield b"two"
        raise ValueError("disk on fire")

    async def echo(ctx: smf.CallContext, body: memoryview) -> memoryview:
        return body

    srv = smf.Server(stream_window=(16, 64 * 1024))
    srv.add_stream_handler(TAIL, tail, "server", "T.Tail")
    srv.add_stream_handler(UPLOAD, upload, "client", "T.Upload")
    srv.add_stream_handler(CHAT, chat, "bidi", "T.Chat")
    srv.add_stream_handler(FOREVER, forever, "server", "T.Forever")
    srv.add_stream_handler(FAIL_AFTER, fail_after, "server", "T.FailAfter")
    srv.add_handler(ECHO, echo, "T.Echo")
    await srv.start("127.0.0.1", 0)
    yield srv
    await srv.stop(grace=0.5)


@pytest.fixture
async def client(server: smf.Server) -> AsyncIterator[smf.Client]:
    c = smf.Client("127.0.0.1", server.port, stream_window=(16, 64 * 1024))
    await c.connect()
    yield c
    await c.close()


async def test_server_stream_delivers_every_message_in_order(client: smf.Client) -> None:
    got = [bytes(r) async for r in client.server_stream(TAIL, b"5000")]
    assert got == [b"rec-%d" % i for i in range(5000)]
    assert client.in_flight == 0


async def test_client_stream_takes_sync_and_async_iterables(client: smf.Client) -> None:
    assert await client.client_stream(UPLOAD, [b"ab"] * 3000) == b"3000/6000"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"abcd"

    assert await client.client_stream(UPLOAD, chunks()) == b"10/40"
    assert await client.client_stream(UPLOAD, []) == b"0/0"


async def test_bidi_send_done_writing_and_read(client: smf.Client) -> None:
    call = client.stream(CHAT)
    replies = []
    for i in range(100):
        await call.send(b"m%d" % i)
        replies.append(await call.read())
    await call.done_writing()
    assert [r async for r in call] == []
    assert replies == [b"re:m%d" % i for i in range(100)]
    assert call.status == 200 and client.in_flight == 0


async def test_many_streams_and_unary_calls_multiplex_on_one_connection(
    client: smf.Client, server: smf.Server
) -> None:
    async def one_stream() -> int:
        return len([r async for r in client.server_stream(TAIL, b"300")])

    results = await asyncio.gather(
        *(one_stream() for _ in range(20)), *(client.call(ECHO, b"u%d" % i) for i in range(50))
    )
    assert results[:20] == [300] * 20
    assert [bytes(r) for r in results[20:]] == [b"u%d" % i for i in range(50)]
    assert server.stats.connections_accepted == 1 and client.in_flight == 0


async def test_break_cancels_the_stream_and_the_handler_sees_it(
    client: smf.Client, probe: Probe
) -> None:
    async for _ in client.server_stream(FOREVER, b"10"):
        break
    seen = await asyncio.wait_for(probe.ended.get(), 10)
    assert seen in ("GeneratorExit", "CancelledError")
    for _ in range(100):  # the server's END frees the session
        if client.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert client.in_flight == 0


async def test_cancel_ends_reading_with_a_clear_error_and_reaches_the_handler(
    client: smf.Client, probe: Probe
) -> None:
    call = client.server_stream(FOREVER, b"10")
    assert await call.read() == b"x" * 10
    call.cancel()
    with pytest.raises(Cancelled, match="cancelled"):
        await call.read()
    assert await asyncio.wait_for(probe.ended.get(), 10) in ("GeneratorExit", "CancelledError")


async def test_the_deadline_covers_the_whole_stream(client: smf.Client, probe: Probe) -> None:
    call = client.server_stream(FOREVER, b"10", timeout=0.3)
    with pytest.raises(smf.DeadlineExceeded):
        async for _ in call:
            await asyncio.sleep(0.01)
    assert await asyncio.wait_for(probe.ended.get(), 10) in ("GeneratorExit", "CancelledError")


async def test_the_server_enforces_the_deadline_it_was_sent(
    server: smf.Server, client: smf.Client
) -> None:
    async def silent(ctx: smf.CallContext, request: memoryview) -> AsyncIterator[bytes]:
        await asyncio.sleep(60)
        yield b"never"

    server.add_stream_handler(50, silent, "server")
    call = client.server_stream(50, b"x", timeout=0.2)
    with pytest.raises(smf.DeadlineExceeded):
        await call.read()


async def test_a_handler_raising_mid_stream_ends_it_with_500_and_its_message(
    client: smf.Client,
) -> None:
    got = []
    with pytest.raises(smf.InternalError, match="disk on fire"):
        async for reply in client.server_stream(FAIL_AFTER, b"x"):
            got.append(reply)
    assert got == [b"one", b"two"]
    assert client.in_flight == 0


async def test_an_rpc_error_in_a_client_stream_handler_reaches_the_sender(
    server: smf.Server, client: smf.Client
) -> None:
    async def picky(ctx: smf.CallContext, requests: AsyncIterator[memoryview]) -> bytes:
        async for _ in requests:
            raise smf.BadRequest("first chunk is bad")
        return b"ok"

    server.add_stream_handler(51, picky, "client")
    with pytest.raises(smf.BadRequest, match="first chunk is bad"):
        await client.client_stream(51, [b"c"] * 10_000)


async def test_an_unknown_streaming_method_is_not_found(client: smf.Client) -> None:
    with pytest.raises(smf.NotFound, match="no streaming unary method with wire id 6"):
        await client.server_stream(ECHO, b"x").read()
    with pytest.raises(smf.NotFound):
        await client.server_stream(999, b"x").read()
    assert bytes(await client.call(ECHO, b"still fine")) == b"still fine"


async def test_a_slow_consumer_costs_the_server_its_window_and_unary_calls_flow(
    client: smf.Client, probe: Probe
) -> None:
    call = client.server_stream(FOREVER, b"100")
    assert await call.read() is not None
    await asyncio.sleep(0.3)  # the consumer reads nothing more
    stalled_at = probe.produced
    assert stalled_at <= 16 + 1 + 2  # window + the implicit one + one in the generator
    for i in range(20):
        assert bytes(await client.call(ECHO, b"u%d" % i)) == b"u%d" % i
    await asyncio.sleep(0.1)
    assert probe.produced == stalled_at  # still waiting for credit
    for _ in range(200):  # reading again grants credit: the producer resumes
        await call.read()
    assert probe.produced > stalled_at + 100
    call.cancel()


async def test_a_dropped_connection_ends_streams_on_both_sides(
    server: smf.Server, probe: Probe
) -> None:
    c = smf.Client("127.0.0.1", server.port)
    call = c.server_stream(FOREVER, b"10")
    assert await call.read() is not None
    assert c._conn is not None
    c._conn.abort()
    with pytest.raises(smf.ConnectionLost):
        while True:
            await call.read()
    assert await asyncio.wait_for(probe.ended.get(), 10) in ("GeneratorExit", "CancelledError")
    await c.close()


async def test_a_server_stopping_ends_its_streams_with_503(
    server: smf.Server, client: smf.Client
) -> None:
    call = client.server_stream(FOREVER, b"10")
    assert await call.read() is not None
    stop = asyncio.create_task(server.stop(grace=0.1))
    with pytest.raises((smf.Unavailable, smf.ConnectionLost)):
        while True:
            await call.read()
    await stop


async def test_sending_after_done_writing_is_refused(client: smf.Client) -> None:
    call = client.stream(CHAT)
    await call.done_writing()
    with pytest.raises(RuntimeError, match="done_writing"):
        await call.send(b"late")
    assert [r async for r in call] == []


async def test_a_client_message_above_the_servers_maximum_ends_the_stream_with_413() -> None:
    async def count(ctx: smf.CallContext, requests: AsyncIterator[memoryview]) -> bytes:
        n = 0
        async for _ in requests:
            n += 1
        return b"%d" % n

    server = smf.Server(max_body_size=1000)
    server.add_stream_handler(7, count, "client")
    await server.start("127.0.0.1", 0)
    try:
        async with smf.Client("127.0.0.1", server.port) as c:
            with pytest.raises(smf.PayloadTooLarge, match="above the maximum of 1000"):
                await c.client_stream(7, [b"small", b"x" * 5000, b"small"])
            assert await c.client_stream(7, [b"a", b"b"]) == b"2"  # the connection lives on
    finally:
        await server.stop(grace=0.5)


async def test_a_bad_deadline_header_on_open_is_refused_with_400(client: smf.Client) -> None:
    call = client.server_stream(TAIL, b"3", metadata={"smf-timeout-us": "soon"})
    with pytest.raises(smf.BadRequest, match="smf-timeout-us"):
        await call.read()


async def test_metadata_reaches_the_stream_handler(server: smf.Server, client: smf.Client) -> None:
    async def whoami(ctx: smf.CallContext, request: memoryview) -> AsyncIterator[bytes]:
        yield ctx.metadata.get("user", "?").encode()
        yield b"deadline" if ctx.deadline is not None else b"none"

    server.add_stream_handler(52, whoami, "server")
    got = [r async for r in client.server_stream(52, b"x", metadata={"user": "ada"}, timeout=30)]
    assert got == [b"ada", b"deadline"]


async def test_more_streams_than_max_in_flight_still_flow() -> None:
    """Streams waiting for credit must not stop the server reading the grants."""

    async def tail(ctx: smf.CallContext, request: memoryview) -> AsyncIterator[bytes]:
        for i in range(50):
            yield b"%d" % i

    server = smf.Server(max_in_flight_per_connection=2, stream_window=(2, 1024))
    server.add_stream_handler(TAIL, tail, "server")
    await server.start("127.0.0.1", 0)
    try:
        async with smf.Client("127.0.0.1", server.port, stream_window=(2, 1024)) as c:
            calls = [c.server_stream(TAIL, b"x") for _ in range(6)]
            for call in calls:
                assert await call.read() == b"0"  # all six open, each out of credit soon
            results = await asyncio.wait_for(asyncio.gather(*(_drain(call) for call in calls)), 30)
            assert all(len(r) == 49 for r in results)
    finally:
        await server.stop(grace=0.5)


async def _drain(call: Any) -> list[bytes]:
    return [r async for r in call]


@pytest.mark.parametrize("algorithm", [smf.Compression.ZSTD, smf.Compression.LZ4])
async def test_compressed_stream_messages_are_decompressed(
    client: smf.Client, algorithm: smf.Compression
) -> None:
    call = client.stream(CHAT)
    text = b"compressible " * 200
    await call.send(text, compress=algorithm)
    assert await call.read() == b"re:" + text
    await call.done_writing()
    assert await call.read() is None


async def test_session_ids_are_reused_safely_across_cancelled_and_finished_streams(
    server: smf.Server,
) -> None:
    """Three session ids for 300 streams and unary calls, a third of the streams left
    early: every stream still gets exactly its own messages."""
    rng = random.Random(7)
    async with smf.Client("127.0.0.1", server.port, max_sessions=3) as c:

        async def one(i: int) -> None:
            n = rng.randrange(1, 40)
            stop = rng.randrange(0, n) if i % 3 == 0 else n
            got = []
            async for reply in c.server_stream(TAIL, b"%d" % n):
                if len(got) == stop:
                    break
                got.append(reply)
            assert got == [b"rec-%d" % k for k in range(stop)]
            assert bytes(await c.call(ECHO, b"u%d" % i)) == b"u%d" % i

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(300))), 60)
        for _ in range(200):
            if c.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert c.in_flight == 0


async def test_a_stream_the_client_dropped_is_cancelled_on_the_server(
    client: smf.Client, probe: Probe
) -> None:
    call = client.server_stream(FOREVER, b"10")
    assert await call.read() is not None
    del call  # never read to its end, never cancelled
    gc.collect()
    assert await asyncio.wait_for(probe.ended.get(), 10) in ("GeneratorExit", "CancelledError")
    for _ in range(200):
        if client.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert client.in_flight == 0
