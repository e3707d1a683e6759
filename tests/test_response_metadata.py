"""Response metadata: a handler sets it (``ctx.set_trailing_metadata``), the client reads
it (``Client.call_with_metadata``); it travels as the reply's payload headers, only to a
caller whose request carried payload headers; outgoing filters may set the reply's
flags themselves. Real sockets on 127.0.0.1 (conftest)."""

from __future__ import annotations

from typing import Any

import pytest

import smf
from smf import headers
from smf.filters import CompressionFilter, Filter, FilterSide, Message
from smf.wire import FLAG_PAYLOAD_HEADERS

TRAILS = 0x0E110001  # echoes, with reply metadata {"served-by": "t", "n": <len>}
FAILS = 0x0E110002  # sets reply metadata, then raises a 404


async def trails(ctx: smf.CallContext, body: memoryview) -> bytes:
    ctx.set_trailing_metadata({"served-by": "t", "n": str(body.nbytes)})
    return bytes(body)


async def fails(ctx: smf.CallContext, body: memoryview) -> bytes:
    ctx.set_trailing_metadata({"why": "not here"})
    raise smf.RpcError.from_status(404, "no such thing")


async def _server(make_server: Any, **kw: Any) -> smf.Server:
    server: smf.Server = await make_server(**kw)
    server.add_handler(TRAILS, trails, "T.trails")
    server.add_handler(FAILS, fails, "T.fails")
    return server


async def test_a_handlers_reply_metadata_reaches_the_caller(
    make_server: Any, make_client: Any
) -> None:
    server = await _server(make_server)
    client = await make_client("127.0.0.1", server.port)
    body, metadata = await client.call_with_metadata(TRAILS, b"hello")
    assert bytes(body) == b"hello"
    assert metadata == {"served-by": "t", "n": "5"}
    body, metadata = await client.call_with_metadata(TRAILS, b"x", metadata={"k": "v"})
    assert (bytes(body), metadata) == (b"x", {"served-by": "t", "n": "1"})
    # A plain call gets the body alone, as before.
    assert bytes(await client.call(TRAILS, b"plain")) == b"plain"


async def test_reply_metadata_goes_only_to_callers_that_send_payload_headers(
    make_server: Any, kit: Any
) -> None:
    server = await _server(make_server)
    reader, writer = await kit.open_raw(server)
    try:
        writer.write(kit.frame(1, TRAILS, b"plain"))
        answer = await kit.read_frame(reader)
        assert (answer.meta, answer.flags, answer.body) == (200, 0, b"plain")
        writer.write(kit.frame(2, TRAILS, headers.encode({}) + b"with", flags=FLAG_PAYLOAD_HEADERS))
        answer = await kit.read_frame(reader)
        assert (answer.meta, answer.flags) == (200, FLAG_PAYLOAD_HEADERS)
        metadata, message = headers.split(memoryview(answer.body))
        assert (metadata, bytes(message)) == ({"served-by": "t", "n": "4"}, b"with")
    finally:
        await kit.close_writer(writer)


async def test_an_error_reply_carrying_metadata_keeps_its_message(
    make_server: Any, make_client: Any
) -> None:
    server = await _server(make_server)
    client = await make_client("127.0.0.1", server.port)
    with pytest.raises(smf.RpcError) as info:
        await client.call_with_metadata(FAILS, b"x")
    assert info.value.status == 404
    assert info.value.message == "no such thing"


class SignReply(Filter):
    """An outgoing filter that adds payload headers of its own to every reply."""

    async def outgoing(self, message: Message, side: FilterSide) -> Message | None:
        if message.flags & FLAG_PAYLOAD_HEADERS:
            found, rest = headers.split(memoryview(message.body))
            found["signed"] = "yes"
            message.body = headers.encode(found) + bytes(rest)
        else:
            message.body = headers.encode({"signed": "yes"}) + bytes(message.body)
        message.flags |= FLAG_PAYLOAD_HEADERS
        return message


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
async def test_outgoing_filters_may_set_flags_and_see_reply_metadata(
    make_server: Any, make_client: Any, compress: bool
) -> None:
    """Before, the flags an outgoing filter set were dropped on the way to the wire and
    the client failed to parse the reply (``struct.error``)."""
    filters: list[Filter] = [SignReply()]
    if compress:
        filters.append(CompressionFilter(smf.Compression.ZSTD, min_size=1))
    server = await _server(make_server, filters=filters)
    client_filters = [CompressionFilter(smf.Compression.ZSTD, min_size=1)] if compress else []
    client = await make_client("127.0.0.1", server.port, filters=client_filters)
    body, metadata = await client.call_with_metadata(TRAILS, b"abc" * 100)
    assert bytes(body) == b"abc" * 100
    assert metadata == {"served-by": "t", "n": "300", "signed": "yes"}
    assert bytes(await client.call(TRAILS, b"z")) == b"z"  # headers stripped, not shown
