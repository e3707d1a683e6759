"""Streams on real sockets, continued: compression and metrics per stream message, the
client's span per stream, and what a peer is told about unknown bitflags."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import smf
from smf.errors import ConnectionLost
from smf.filters import CompressionFilter, Filter, FilterSide, Message
from smf.wire import encode_frame


async def test_unknown_bitflags_error_names_the_defined_bits() -> None:
    # A "server" that answers with bit 7 set: the client's error says what is defined
    # (payload headers, and the stream bits), not "only bit 0".
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(16)
        session, size = struct.unpack("<bBHIII", header)[2:4]
        await reader.readexactly(size)
        frame = bytearray(encode_frame(session, 200, b"x"))
        frame[1] = 0x80
        writer.write(bytes(frame))
        await writer.drain()
        await reader.read()  # until the client hangs up
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = smf.Client("127.0.0.1", port, timeout=10.0)
    try:
        with pytest.raises(ConnectionLost) as info:
            await client.call(5, b"hi")
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    text = str(info.value)
    assert "bitflags=128" in text
    assert "payload headers" in text and "STREAM" in text and "CREDIT" in text
    assert "only bit 0" not in text


# --------------------------------------------------------------------------- filters


class Tag(Filter):
    """Appends its tag to every message it sees in the directions it is given."""

    def __init__(self, incoming: bytes = b"", outgoing: bytes = b"") -> None:
        self.tag_in = incoming
        self.tag_out = outgoing

    async def incoming(self, message: Message, side: FilterSide) -> Message | None:
        if self.tag_in:
            message.body = bytes(message.body) + self.tag_in
        return message

    async def outgoing(self, message: Message, side: FilterSide) -> Message | None:
        if self.tag_out:
            message.body = bytes(message.body) + self.tag_out
        return message


class Refuse(Filter):
    async def incoming(self, message: Message, side: FilterSide) -> Message | None:
        if b"bad" in bytes(message.body):
            raise smf.RpcError("refused by the client's filter", 403)
        return message

    async def outgoing(self, message: Message, side: FilterSide) -> Message | None:
        if b"nope" in bytes(message.body):
            raise smf.RpcError("not sent by the client's filter", 403)
        return message


CHAT, TAIL = 0x5EA0001, 0x5EA0002
SIZE = 4096


async def chat(ctx: smf.CallContext, requests: AsyncIterator[memoryview]) -> AsyncIterator[bytes]:
    async for message in requests:
        yield b"re:" + bytes(message)


async def tail(ctx: smf.CallContext, request: memoryview) -> AsyncIterator[bytes]:
    count, *tags = bytes(request).split(b"+")
    if tags:  # what the request became on its way: the last message says
        yield b"+".join(tags)
    for i in range(int(count)):
        yield (b"%05d" % i) * (SIZE // 5) + b"z"  # compressible


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[smf.Server]]]:
    servers: list[smf.Server] = []

    async def start(*filters: Filter) -> smf.Server:
        server = smf.Server(filters=filters)
        server.add_stream_handler(CHAT, chat, "bidi", name="T.Chat")
        server.add_stream_handler(TAIL, tail, "server", name="T.Tail")
        await server.start("127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(grace=0.5)


async def test_filters_run_on_every_stream_message_on_both_sides(
    serve: Callable[..., Awaitable[smf.Server]],
) -> None:
    server = await serve(Tag(incoming=b"+in", outgoing=b"+srv"))
    async with smf.Client(
        "127.0.0.1", server.port, filters=[Tag(incoming=b"+cli", outgoing=b"+out")]
    ) as client:
        call = client.stream(CHAT)
        for text in (b"a", b"b", b"c"):
            await call.send(text)
        await call.done_writing()
        replies = [bytes(r) async for r in call]
        # A server stream's request goes through the client's outgoing filters too.
        tails = [bytes(r) async for r in client.server_stream(TAIL, b"1")]
    assert replies == [b"re:%s+out+in+srv+cli" % t for t in (b"a", b"b", b"c")]
    assert tails == [b"out+in+srv+cli", b"00000" * (SIZE // 5) + b"z+srv+cli"]


async def test_an_incoming_filter_error_ends_the_client_stream(
    serve: Callable[..., Awaitable[smf.Server]],
) -> None:
    server = await serve()
    async with smf.Client("127.0.0.1", server.port, filters=[Refuse()]) as client:
        call = client.stream(CHAT)
        await call.send(b"fine")
        assert await call.read() == b"re:fine"
        await call.send(b"bad")
        with pytest.raises(smf.RpcError, match="refused by the client's filter"):
            await call.read()
        with pytest.raises(smf.RpcError):
            await call.send(b"more")
        # The server's handler was cancelled (the client's CANCEL): 499 in its metrics.
        stats = server.methods.get(CHAT)
        async with asyncio.timeout(5):
            while stats.statuses.get(499) != 1:
                await asyncio.sleep(0.01)
        # The connection goes on.
        call2 = client.stream(CHAT)
        await call2.send(b"x")
        await call2.done_writing()
        assert [bytes(r) async for r in call2] == [b"re:x"]


async def test_compression_filter_compresses_stream_replies_the_client_offered(
    serve: Callable[..., Awaitable[smf.Server]],
) -> None:
    server = await serve(CompressionFilter(smf.Compression.ZSTD, min_size=100))
    n = 20
    async with smf.Client("127.0.0.1", server.port) as client:
        offered = {"smf-accept-compression": "zstd"}
        got = [bytes(r) async for r in client.server_stream(TAIL, b"%d" % n, metadata=offered)]
        plain = [bytes(r) async for r in client.server_stream(TAIL, b"%d" % n)]
        expected = [(b"%05d" % i) * (SIZE // 5) + b"z" for i in range(n)]
        assert got == expected and plain == expected
        stats = client.methods.get_or_add(TAIL)
        assert stats.messages_in == 2 * n
        # The offered stream came compressed (far below its 20 x 4 KiB), the other not.
        assert stats.bytes_in < n * SIZE + n * SIZE // 4
    srv = server.methods.get(TAIL)
    assert srv.messages_out == 2 * n
    assert srv.bytes_out < n * SIZE + n * SIZE // 4


async def test_stream_messages_and_bytes_are_counted_in_the_method_metrics(
    serve: Callable[..., Awaitable[smf.Server]],
) -> None:
    server = await serve()
    async with smf.Client("127.0.0.1", server.port) as client:
        call = client.stream(CHAT)
        for text in (b"a", b"bb", b"ccc"):
            await call.send(text)
        await call.done_writing()
        assert [bytes(r) async for r in call] == [b"re:a", b"re:bb", b"re:ccc"]
        cli = client.methods.get_or_add(CHAT)
        assert (cli.messages_out, cli.bytes_out) == (3, 6)
        assert (cli.messages_in, cli.bytes_in) == (3, 6 + 9)
        assert cli.statuses == {200: 1}  # the stream, once
        assert cli.latency_us.histogram().get_total_count() == 1
    srv = server.methods.get(CHAT)
    assert (srv.messages_in, srv.bytes_in) == (3, 6)
    assert (srv.messages_out, srv.bytes_out) == (3, 6 + 9)
    assert srv.statuses == {200: 1}


async def test_a_client_compression_filter_compresses_its_stream_messages(
    serve: Callable[..., Awaitable[smf.Server]],
) -> None:
    server = await serve()
    big = b"0123456789" * 1000
    filters = [CompressionFilter(smf.Compression.LZ4, min_size=100)]
    async with smf.Client("127.0.0.1", server.port, filters=filters) as client:
        call = client.stream(CHAT)
        for _ in range(5):
            await call.send(big)
        await call.done_writing()
        assert [bytes(r) async for r in call] == [b"re:" + big] * 5
    srv = server.methods.get(CHAT)
    assert srv.messages_in == 5
    assert srv.bytes_in < len(big)  # five messages, compressed, below one plain one


async def test_stream_messages_are_exported_to_prometheus(
    serve: Callable[..., Awaitable[smf.Server]],
) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from smf.prometheus import MetricsExporter

    server = await serve()
    async with smf.Client("127.0.0.1", server.port) as client:
        client.methods.name(TAIL, "T.Tail")
        assert len([r async for r in client.server_stream(TAIL, b"3")]) == 3
        exporter = MetricsExporter(servers={"s": server}, clients={"c": client})
        port = exporter.start_http_server(0)

        def scrape() -> str:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as resp:
                return str(resp.read().decode())

        try:
            text = await asyncio.to_thread(scrape)
        finally:
            await asyncio.to_thread(exporter.stop_http_server)
    values = {
        (s.name, s.labels.get("server") or s.labels.get("client"), s.labels["direction"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.endswith("_stream_messages_total") and s.labels.get("method") == "T.Tail"
    }
    assert values == {
        ("smf_server_stream_messages_total", "s", "in"): 1,
        ("smf_server_stream_messages_total", "s", "out"): 3,
        ("smf_client_stream_messages_total", "c", "in"): 3,
        ("smf_client_stream_messages_total", "c", "out"): 1,
    }


async def test_a_server_stream_whose_request_a_filter_refuses_is_cancelled_on_the_server(
    serve: Callable[..., Awaitable[smf.Server]],
) -> None:
    server = await serve()
    async with smf.Client("127.0.0.1", server.port, filters=[Refuse()]) as client:
        with pytest.raises(smf.RpcError, match="not sent by the client's filter"):
            async for _ in client.server_stream(TAIL, b"nope"):
                pass
        # The OPEN went, then a CANCEL right behind it (in the same write): the server
        # ends the stream with 499 even though its task never ran before the CANCEL.
        stats = server.methods.get(TAIL)
        async with asyncio.timeout(5):
            while stats.statuses.get(499) != 1:
                await asyncio.sleep(0.01)
        assert [bytes(r) async for r in client.server_stream(TAIL, b"0")] == []


async def test_a_cancel_right_behind_the_open_is_answered_with_499(
    serve: Callable[..., Awaitable[smf.Server]],
) -> None:
    server = await serve()
    async with smf.Client("127.0.0.1", server.port) as client:
        call = client.stream(CHAT)
        await call.send(b"x")
        call.cancel()  # OPEN, message and CANCEL leave in one write
        stats = server.methods.get(CHAT)
        async with asyncio.timeout(5):
            while stats.statuses.get(499) != 1:
                await asyncio.sleep(0.01)
        async with asyncio.timeout(5):  # the END arrived: the client forgot the stream
            while call.conn.protocol.streams:
                await asyncio.sleep(0.01)
