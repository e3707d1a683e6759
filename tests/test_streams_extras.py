"""Streams on real sockets, continued: compression and metrics per stream message, the
client's span per stream, and what a peer is told about unknown bitflags."""

from __future__ import annotations

import asyncio
import struct

import pytest

import smf
from smf.errors import ConnectionLost
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
