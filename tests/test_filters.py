"""Filters end to end: CompressionFilter (smf's exact zstd/lz4 body formats) and
FaultFilter (delay, error, drop, close), on real sockets.

Wire-level facts are checked with raw peers: a raw server that records the request
frames a ``smf.Client`` sends, and a raw client (asyncio streams) that sends frames
built by hand with ``smf.wire`` and reads the server's answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import Callable
from typing import Any

import lz4.block
import pytest
import zstandard

import smf
from smf import headers
from smf.filters import CompressionFilter, Fault, FaultFilter, Filter, FilterSide, Message
from smf.filters.compression import compress, decompress
from smf.wire import HEADER, HEADER_SIZE, Compression, checksum, encode_frame

ALGORITHMS = [Compression.ZSTD, Compression.LZ4]
ALGO_IDS = ["zstd", "lz4"]

# Compressible: repetitive text, several KiB.
BIG = b"smf says hello to the compression filter; " * 200  # 8400 bytes


# --------------------------------------------------------------------------- smf's formats


def smf_zstd(data: bytes) -> bytes:
    """A standard zstd frame carrying its content size (wire.md)."""
    return zstandard.ZstdCompressor(write_content_size=True).compress(data)


def smf_lz4(data: bytes) -> bytes:
    """The lz4 block format prefixed by the uncompressed length, uint32 LE (wire.md)."""
    return struct.pack("<I", len(data)) + lz4.block.compress(data, store_size=False)


def by_hand(algorithm: int, data: bytes) -> bytes:
    return smf_zstd(data) if algorithm == Compression.ZSTD else smf_lz4(data)


def check_smf_format(algorithm: int, body: bytes, original: bytes) -> None:
    """``body`` is exactly smf's encoding of ``original`` for ``algorithm``."""
    if algorithm == Compression.ZSTD:
        assert zstandard.frame_content_size(body) == len(original)
        assert zstandard.ZstdDecompressor().decompress(body) == original
    else:
        assert struct.unpack_from("<I", body, 0)[0] == len(original)
        assert lz4.block.decompress(body[4:], uncompressed_size=len(original)) == original
        assert body[4:] == lz4.block.compress(original, store_size=False)
    assert len(body) < len(original)


# --------------------------------------------------------------------------- raw peers


class Recorded:
    __slots__ = ("body", "compression", "flags", "meta", "session")

    def __init__(self, header: bytes, body: bytes) -> None:
        self.compression, self.flags, self.session, size, csum, self.meta = HEADER.unpack(header)
        assert size == len(body)
        assert checksum(body) == csum, "the checksum must cover the body as sent"
        self.body = body


Responder = Callable[[Recorded], bytes | None]


def answer_ok(frame: Recorded) -> bytes:
    return encode_frame(frame.session, 200, b"ok")


class RawServer:
    """Records every request frame; answers with ``respond(frame)`` (None: no answer)."""

    def __init__(self, respond: Responder = answer_ok) -> None:
        self.respond = respond
        self.frames: list[Recorded] = []
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header = await reader.readexactly(HEADER_SIZE)
                body = await reader.readexactly(HEADER.unpack(header)[3])
                frame = Recorded(header, body)
                self.frames.append(frame)
                out = self.respond(frame)
                if out is not None:
                    writer.write(out)

    async def close(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)


@pytest.fixture
async def raw_server() -> Any:
    servers: list[RawServer] = []

    async def factory(respond: Responder = answer_ok) -> RawServer:
        s = await RawServer(respond).start()
        servers.append(s)
        return s

    yield factory
    for s in servers:
        await s.close()


async def raw_call(kit: Any, server: smf.Server, frame: bytes) -> Any:
    """Send one hand-built frame, return the server's answer (a conftest RawFrame)."""
    reader, writer = await kit.open_raw(server)
    try:
        writer.write(frame)
        return await kit.read_frame(reader)
    finally:
        await kit.close_writer(writer)


def echo_with_metadata_handler(seen: list[dict[str, str]]) -> Any:
    async def handler(ctx: smf.CallContext, body: memoryview) -> bytes:
        seen.append(dict(ctx.metadata))
        return bytes(body)

    return handler


META_ECHO = 0x0E0C0F01


# =========================================================================== compression


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
@pytest.mark.parametrize("size", [64, 1000, len(BIG), 300_000])
async def test_round_trip_with_filters_on_both_sides(
    make_server: Any, make_client: Any, kit: Any, algorithm: Compression, size: int
) -> None:
    server = await make_server(filters=[CompressionFilter(algorithm, min_size=64)])
    client = await make_client(
        "127.0.0.1", server.port, filters=[CompressionFilter(algorithm, min_size=64)]
    )
    payload = (BIG * (size // len(BIG) + 1))[:size]
    assert bytes(await client.call(kit.ECHO, payload)) == payload
    # The request went compressed: the server read fewer bytes than the payload.
    assert server.stats.bytes_in < HEADER_SIZE + size
    assert server.stats.bytes_out < HEADER_SIZE + size


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
async def test_client_request_on_the_wire_is_exactly_smf_format(
    raw_server: Any, make_client: Any, kit: Any, algorithm: Compression
) -> None:
    peer = await raw_server()
    client = await make_client("127.0.0.1", peer.port, filters=[CompressionFilter(algorithm)])
    assert bytes(await client.call(kit.ECHO, BIG)) == b"ok"
    (frame,) = peer.frames
    assert frame.compression == algorithm
    assert frame.flags == 0
    assert frame.meta == kit.ECHO
    check_smf_format(algorithm, frame.body, BIG)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
async def test_compression_covers_payload_headers_too(
    raw_server: Any, make_client: Any, kit: Any, algorithm: Compression
) -> None:
    peer = await raw_server()
    client = await make_client(
        "127.0.0.1", peer.port, filters=[CompressionFilter(algorithm)], payload_headers="always"
    )  # a foreign peer (unmarked replies): told that it reads payload headers
    await client.call(kit.ECHO, BIG, metadata={"who": "me"})
    (frame,) = peer.frames
    assert frame.compression == algorithm
    assert frame.flags == 1
    plain = decompress(algorithm, frame.body, 1 << 20)
    meta, rest = headers.split(memoryview(plain))
    assert meta == {"who": "me"}
    assert bytes(rest) == BIG


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
async def test_metadata_reaches_handler_through_compression(
    make_server: Any, make_client: Any, algorithm: Compression
) -> None:
    server = await make_server(filters=[CompressionFilter(algorithm)])
    seen: list[dict[str, str]] = []
    server.add_handler(META_ECHO, echo_with_metadata_handler(seen), "Meta.echo")
    client = await make_client("127.0.0.1", server.port, filters=[CompressionFilter(algorithm)])
    assert bytes(await client.call(META_ECHO, BIG, metadata={"k": "v", "ü": "ß"})) == BIG
    assert seen == [{"k": "v", "ü": "ß"}]


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
async def test_hand_built_compressed_request_is_served(
    make_server: Any, kit: Any, algorithm: Compression
) -> None:
    server = await make_server(filters=[CompressionFilter(algorithm)])
    body = by_hand(algorithm, BIG)
    answer = await raw_call(kit, server, encode_frame(7, kit.ECHO, body, compression=algorithm))
    assert answer.meta == 200
    assert answer.session == 7
    # The echo is big enough to be compressed on its way back, in the same format.
    assert answer.compression == algorithm
    check_smf_format(algorithm, answer.body, BIG)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
async def test_hand_built_compressed_request_with_payload_headers(
    make_server: Any, kit: Any, algorithm: Compression
) -> None:
    server = await make_server(filters=[CompressionFilter(algorithm)])
    seen: list[dict[str, str]] = []
    server.add_handler(META_ECHO, echo_with_metadata_handler(seen), "Meta.echo")
    plain = headers.encode({"a": "1"}) + b"tiny"
    frame = encode_frame(3, META_ECHO, by_hand(algorithm, plain), compression=algorithm, flags=1)
    answer = await raw_call(kit, server, frame)
    assert answer.meta == 200
    assert answer.compression == Compression.DISABLED  # below min_size: as is (marked)
    assert answer.body == b"tiny"
    assert seen == [{"a": "1"}]


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
async def test_below_min_size_is_not_compressed(
    raw_server: Any, make_client: Any, kit: Any, algorithm: Compression
) -> None:
    peer = await raw_server()
    client = await make_client(
        "127.0.0.1", peer.port, filters=[CompressionFilter(algorithm, min_size=len(BIG) + 1)]
    )
    await client.call(kit.ECHO, BIG)
    await client.call(kit.ECHO, b"small")
    assert [(f.compression, f.body) for f in peer.frames] == [(0, BIG), (0, b"small")]


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
async def test_min_size_is_inclusive(
    raw_server: Any, make_client: Any, kit: Any, algorithm: Compression
) -> None:
    peer = await raw_server()
    client = await make_client(
        "127.0.0.1", peer.port, filters=[CompressionFilter(algorithm, min_size=len(BIG))]
    )
    await client.call(kit.ECHO, BIG)
    assert peer.frames[0].compression == algorithm


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
async def test_incompressible_body_is_sent_as_is(
    raw_server: Any, make_client: Any, kit: Any, algorithm: Compression
) -> None:
    peer = await raw_server()
    client = await make_client(
        "127.0.0.1", peer.port, filters=[CompressionFilter(algorithm, min_size=16)]
    )
    noise = os.urandom(4096)
    await client.call(kit.ECHO, noise)
    assert (peer.frames[0].compression, peer.frames[0].body) == (0, noise)


class MarkDisabled(Filter):
    """Marks every outgoing message ``Compression.DISABLED`` (do not compress)."""

    async def outgoing(self, message: Message, side: FilterSide) -> Message | None:
        message.compression = Compression.DISABLED
        return message


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
async def test_disabled_is_respected_by_client(
    raw_server: Any, make_client: Any, kit: Any, algorithm: Compression
) -> None:
    peer = await raw_server()
    client = await make_client(
        "127.0.0.1", peer.port, filters=[MarkDisabled(), CompressionFilter(algorithm, min_size=1)]
    )
    await client.call(kit.ECHO, BIG)
    assert (peer.frames[0].compression, peer.frames[0].body) == (Compression.DISABLED, BIG)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
async def test_disabled_is_respected_by_server_and_accepted_by_client(
    make_server: Any, make_client: Any, kit: Any, algorithm: Compression
) -> None:
    server = await make_server(filters=[MarkDisabled(), CompressionFilter(algorithm, min_size=1)])
    # Raw: the response carries compression=1 and the plain body.
    answer = await raw_call(kit, server, encode_frame(1, kit.ECHO, BIG))
    assert (answer.meta, answer.compression, answer.body) == (200, Compression.DISABLED, BIG)
    # A client (with or without a filter) reads a DISABLED response as plain.
    for filters in ([], [CompressionFilter(algorithm)]):
        client = await make_client("127.0.0.1", server.port, filters=filters)
        assert bytes(await client.call(kit.ECHO, BIG)) == BIG


async def test_disabled_request_is_treated_as_none_by_a_filtering_server(
    make_server: Any, kit: Any
) -> None:
    server = await make_server(filters=[CompressionFilter(Compression.ZSTD)])
    answer = await raw_call(kit, server, encode_frame(1, kit.ECHO, b"plain", compression=1))
    assert (answer.meta, answer.body) == (200, b"plain")


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
async def test_server_without_filter_decompresses_zstd_and_lz4_requests(
    make_server: Any, kit: Any, algorithm: Compression
) -> None:
    """As gRPC servers do: a compressed request needs no filter. (Was 505 before.)"""
    server = await make_server()
    answer = await raw_call(
        kit, server, encode_frame(1, kit.ECHO, by_hand(algorithm, BIG), compression=algorithm)
    )
    # A plain reply is marked: compression byte 1, "disabled" (smf.peer).
    assert (answer.meta, answer.compression, answer.body) == (200, Compression.DISABLED, BIG)
    assert server.stats.responses == {200: 1}


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
async def test_default_decompression_is_capped_by_max_body_size(
    make_server: Any, kit: Any, algorithm: Compression
) -> None:
    server = await make_server(max_body_size=64 * 1024)
    bomb = by_hand(algorithm, bytes(4 * 1024 * 1024))
    answer = await raw_call(kit, server, encode_frame(1, kit.ECHO, bomb, compression=algorithm))
    assert answer.meta == 413


async def test_server_with_the_other_algorithm_still_decompresses_and_replies_plain(
    make_server: Any, kit: Any
) -> None:
    """An lz4 server gets a zstd request: served, and its reply is not lz4 (the caller
    offered only zstd). (Was 505 before.)"""
    server = await make_server(filters=[CompressionFilter(Compression.LZ4, min_size=1)])
    answer = await raw_call(kit, server, encode_frame(1, kit.ECHO, smf_zstd(BIG), compression=2))
    assert (answer.meta, answer.compression, answer.body) == (200, Compression.DISABLED, BIG)


async def test_a_plain_client_gets_plain_replies_from_a_compressing_server(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    """A server with compression filters never compresses for a caller that offered
    nothing: adding compression to a server does not break its clients. (Before, the
    reply came zstd-compressed and the client failed with 505 Unsupported.)"""
    server = await make_server(
        filters=[CompressionFilter(Compression.ZSTD), CompressionFilter(Compression.LZ4)]
    )
    client = await make_client("127.0.0.1", server.port)
    assert bytes(await client.call(kit.ECHO, BIG)) == BIG
    assert bytes(await client.call(kit.ECHO, BIG, metadata={"k": "v"})) == BIG
    answer = await raw_call(kit, server, encode_frame(1, kit.ECHO, BIG))
    assert (answer.compression, answer.body) == (Compression.DISABLED, BIG)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
async def test_a_reply_uses_only_the_compression_the_request_came_in(
    make_server: Any, make_client: Any, kit: Any, algorithm: Compression
) -> None:
    """A [ZSTD, LZ4] server answers an lz4 request in lz4 and a zstd one in zstd (before,
    the first filter's zstd went to the lz4-only client)."""
    server = await make_server(
        filters=[
            CompressionFilter(Compression.ZSTD, min_size=64),
            CompressionFilter(Compression.LZ4, min_size=64),
        ]
    )
    answer = await raw_call(
        kit, server, encode_frame(1, kit.ECHO, by_hand(algorithm, BIG), compression=algorithm)
    )
    assert answer.meta == 200 and answer.compression == algorithm
    only = await make_client(
        "127.0.0.1", server.port, filters=[CompressionFilter(algorithm, min_size=64)]
    )
    assert bytes(await only.call(kit.ECHO, BIG)) == BIG


async def test_an_explicit_offer_gets_a_compressed_reply_to_a_plain_request(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    from smf.context import ACCEPT_COMPRESSION_HEADER
    from smf.headers import encode

    server = await make_server(filters=[CompressionFilter(Compression.ZSTD, min_size=64)])
    offer = encode({ACCEPT_COMPRESSION_HEADER: "lz4, zstd"})
    answer = await raw_call(kit, server, encode_frame(1, kit.ECHO, offer + BIG, flags=1))
    assert (answer.meta, answer.compression) == (200, Compression.ZSTD)
    unknown = encode({ACCEPT_COMPRESSION_HEADER: "gzip"})
    answer = await raw_call(kit, server, encode_frame(2, kit.ECHO, unknown + BIG, flags=1))
    assert (answer.meta, answer.compression, answer.body) == (200, Compression.DISABLED, BIG)
    # A client with a zstd filter (sending plain requests) offers it in its metadata.
    client = await make_client(
        "127.0.0.1", server.port, filters=[CompressionFilter(Compression.ZSTD, min_size=10**6)]
    )
    before = server.stats.bytes_out
    offer_zstd = {ACCEPT_COMPRESSION_HEADER: "zstd"}
    assert bytes(await client.call(kit.ECHO, BIG, metadata=offer_zstd)) == BIG
    assert server.stats.bytes_out - before < HEADER_SIZE + len(BIG)  # the reply was packed


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
async def test_decompression_bomb_is_413(
    make_server: Any, kit: Any, algorithm: Compression
) -> None:
    server = await make_server(filters=[CompressionFilter(algorithm, max_size=64 * 1024)])
    bomb = by_hand(algorithm, bytes(4 * 1024 * 1024))  # 4 MiB of zeros, a few KiB packed
    assert len(bomb) < 64 * 1024
    reader, writer = await kit.open_raw(server)
    writer.write(encode_frame(1, kit.ECHO, bomb, compression=algorithm))
    answer = await kit.read_frame(reader)
    assert answer.meta == 413
    # The connection stays usable.
    writer.write(encode_frame(2, kit.ECHO, b"after"))
    answer = await kit.read_frame(reader)
    assert (answer.session, answer.meta, answer.body) == (2, 200, b"after")
    await kit.close_writer(writer)


async def test_lz4_declaring_4_gib_is_413_without_allocating(make_server: Any, kit: Any) -> None:
    server = await make_server(filters=[CompressionFilter(Compression.LZ4)])
    body = struct.pack("<I", 0xFFFFFFFF) + lz4.block.compress(b"x" * 100, store_size=False)
    started = time.monotonic()
    answer = await raw_call(kit, server, encode_frame(1, kit.ECHO, body, compression=3))
    assert answer.meta == 413
    assert time.monotonic() - started < 5.0


async def test_zstd_declaring_a_huge_size_is_413(make_server: Any, kit: Any) -> None:
    server = await make_server(filters=[CompressionFilter(Compression.ZSTD, max_size=1000)])
    frame = smf_zstd(b"y" * 1001)
    answer = await raw_call(kit, server, encode_frame(1, kit.ECHO, frame, compression=2))
    assert answer.meta == 413
    frame = smf_zstd(b"y" * 1000)  # exactly max_size is fine
    answer = await raw_call(kit, server, encode_frame(1, kit.ECHO, frame, compression=2))
    assert answer.meta == 200


def _corrupt_bodies() -> dict[str, tuple[int, bytes]]:
    z = smf_zstd(BIG)
    lz = smf_lz4(BIG)
    flipped = bytearray(lz)
    flipped[len(flipped) // 2] ^= 0xFF
    return {
        "zstd-garbage": (2, b"this is not zstd at all"),
        "zstd-truncated": (2, z[: len(z) // 2]),
        "zstd-no-content-size": (
            2,
            zstandard.ZstdCompressor(write_content_size=False).compress(BIG),
        ),
        "zstd-bad-block": (2, z[:-4] + b"\xff\xff\xff\xff"),
        "lz4-short": (3, b"\x01\x02"),
        "lz4-garbage": (3, struct.pack("<I", 1000) + b"\xff" * 40),
        "lz4-prefix-too-big": (3, struct.pack("<I", len(BIG) + 10) + lz[4:]),
        "lz4-prefix-too-small": (3, struct.pack("<I", len(BIG) - 10) + lz[4:]),
        "lz4-truncated": (3, lz[: len(lz) // 2]),
        "lz4-flipped": (3, bytes(flipped)),
    }


@pytest.mark.parametrize("case", list(_corrupt_bodies()))
async def test_corrupt_compressed_body_is_400(make_server: Any, kit: Any, case: str) -> None:
    algorithm, body = _corrupt_bodies()[case]
    server = await make_server(filters=[CompressionFilter(Compression(algorithm))])
    answer = await raw_call(kit, server, encode_frame(1, kit.ECHO, body, compression=algorithm))
    if case == "lz4-flipped" and answer.meta == 200:
        # A flipped byte can land in a literal run: still a valid block, other bytes.
        assert answer.body != BIG
        return
    assert answer.meta == 400, answer.body


async def test_small_replies_stay_plain_even_when_offered(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server(filters=[CompressionFilter(Compression.ZSTD)])
    client = await make_client(
        "127.0.0.1", server.port, filters=[CompressionFilter(Compression.ZSTD)]
    )
    assert bytes(await client.call(kit.ECHO, b"small")) == b"small"
    assert bytes(await client.call(kit.ECHO, BIG)) == BIG


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=ALGO_IDS)
async def test_client_response_compressed_by_raw_server(
    raw_server: Any, make_client: Any, kit: Any, algorithm: Compression
) -> None:
    def respond(frame: Recorded) -> bytes:
        return encode_frame(frame.session, 200, by_hand(algorithm, BIG), compression=algorithm)

    peer = await raw_server(respond)
    plain = await make_client("127.0.0.1", peer.port)
    with pytest.raises(smf.Unsupported, match=algorithm.name.lower()):
        await plain.call(kit.ECHO, b"x")
    filtered = await make_client("127.0.0.1", peer.port, filters=[CompressionFilter(algorithm)])
    assert bytes(await filtered.call(kit.ECHO, b"x")) == BIG


async def test_client_with_filter_fails_call_on_corrupt_compressed_response(
    raw_server: Any, make_client: Any, kit: Any
) -> None:
    def respond(frame: Recorded) -> bytes:
        return encode_frame(frame.session, 200, b"not zstd", compression=2)

    peer = await raw_server(respond)
    client = await make_client(
        "127.0.0.1", peer.port, filters=[CompressionFilter(Compression.ZSTD)]
    )
    with pytest.raises(smf.BadRequest):
        await client.call(kit.ECHO, b"x")


def test_compress_decompress_helpers_match_smf_format() -> None:
    for algorithm in ALGORITHMS:
        packed = compress(algorithm, BIG)
        check_smf_format(algorithm, packed, BIG)
        assert decompress(algorithm, packed, len(BIG)) == BIG
        assert decompress(algorithm, by_hand(algorithm, BIG), len(BIG)) == BIG
        assert decompress(algorithm, memoryview(packed), len(BIG)) == BIG
        with pytest.raises(smf.PayloadTooLarge):
            decompress(algorithm, packed, len(BIG) - 1)


def test_compression_filter_refuses_non_algorithms() -> None:
    for bad in (Compression.NONE, Compression.DISABLED):
        with pytest.raises(ValueError):
            CompressionFilter(bad)


# =========================================================================== faults


def test_fault_validation() -> None:
    with pytest.raises(ValueError):
        Fault("explode")  # type: ignore[arg-type]
    for p in (-0.1, 1.01):
        with pytest.raises(ValueError):
            Fault("drop", probability=p)


async def test_delay(make_server: Any, make_client: Any, kit: Any) -> None:
    faults = FaultFilter([Fault("delay", seconds=0.2)])
    server = await make_server(filters=[faults])
    client = await make_client("127.0.0.1", server.port)
    started = time.monotonic()
    assert bytes(await client.call(kit.ECHO, b"late")) == b"late"
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 5.0  # (lower bound: uvloop timers have ms granularity)
    assert faults.injected == {"delay": 1}


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (503, smf.Unavailable),
        (413, smf.PayloadTooLarge),
        (500, smf.InternalError),
        (400, smf.BadRequest),
    ],
)
async def test_error_status_gives_the_typed_error(
    make_server: Any, make_client: Any, kit: Any, status: int, error: type[smf.RpcError]
) -> None:
    server = await make_server(
        filters=[FaultFilter([Fault("error", status=status, message="injected!")])]
    )
    client = await make_client("127.0.0.1", server.port)
    with pytest.raises(error, match="injected!") as info:
        await client.call(kit.INSPECT, b"x")
    assert info.value.status == status
    assert server.state.inspected == []  # the handler never ran
    assert server.stats.responses == {status: 1}


async def test_error_with_an_unknown_status(make_server: Any, make_client: Any, kit: Any) -> None:
    server = await make_server(filters=[FaultFilter([Fault("error", status=599)])])
    client = await make_client("127.0.0.1", server.port)
    with pytest.raises(smf.RpcError) as info:
        await client.call(kit.ECHO, b"x")
    assert info.value.status == 599


async def test_drop_times_out(make_server: Any, make_client: Any, kit: Any) -> None:
    faults = FaultFilter([Fault("drop")])
    server = await make_server(filters=[faults])
    client = await make_client("127.0.0.1", server.port, timeout=0.2)
    with pytest.raises(smf.DeadlineExceeded):
        await client.call(kit.INSPECT, b"x")
    assert server.state.inspected == []
    assert faults.injected == {"drop": 1}
    assert server.stats.responses == {}
    # Nothing leaked: the dropped request released its budget.
    await kit.wait_until(lambda: server.budget.used == 0, what="budget refund")
    faults.clear()
    assert bytes(await client.call(kit.ECHO, b"healed")) == b"healed"


async def test_close_loses_the_connection(make_server: Any, make_client: Any, kit: Any) -> None:
    server = await make_server(
        filters=[FaultFilter([Fault("close", wire_ids=frozenset({kit.INSPECT}))])]
    )
    client = await make_client("127.0.0.1", server.port)
    with pytest.raises(smf.ConnectionLost):
        await client.call(kit.INSPECT, b"x")
    assert server.state.inspected == []
    await kit.wait_until(lambda: server.stats.connections_open == 0, what="connection closed")
    # The server itself is fine: a new client works (ECHO is not faulted).
    other = await make_client("127.0.0.1", server.port)
    assert bytes(await other.call(kit.ECHO, b"ok")) == b"ok"


async def test_wire_ids_restrict_the_fault(make_server: Any, make_client: Any, kit: Any) -> None:
    faults = FaultFilter([Fault("error", status=503, wire_ids=frozenset({kit.INSPECT}))])
    server = await make_server(filters=[faults])
    client = await make_client("127.0.0.1", server.port)
    for _ in range(3):
        assert bytes(await client.call(kit.ECHO, b"fine")) == b"fine"
        with pytest.raises(smf.Unavailable):
            await client.call(kit.INSPECT, b"x")
    assert faults.injected == {"error": 3}


async def test_probability_zero_never_fires(make_server: Any, make_client: Any, kit: Any) -> None:
    faults = FaultFilter(
        [Fault(kind, probability=0.0) for kind in ("delay", "error", "drop", "close")], seed=1
    )
    server = await make_server(filters=[faults])
    client = await make_client("127.0.0.1", server.port, timeout=5.0)
    results = await asyncio.gather(*(client.call(kit.ECHO, b"%d" % i) for i in range(100)))
    assert [bytes(r) for r in results] == [b"%d" % i for i in range(100)]
    assert faults.injected == {}


async def test_probability_half_fires_sometimes(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    faults = FaultFilter([Fault("error", probability=0.5)], seed=1234)
    server = await make_server(filters=[faults])
    client = await make_client("127.0.0.1", server.port)
    outcomes = await asyncio.gather(
        *(client.call(kit.ECHO, b"x") for _ in range(100)), return_exceptions=True
    )
    failed = sum(isinstance(o, smf.Unavailable) for o in outcomes)
    assert 10 < failed < 90
    assert all(isinstance(o, (memoryview, smf.Unavailable)) for o in outcomes)
    assert faults.injected == {"error": failed}


async def test_set_and_clear_at_run_time(make_server: Any, make_client: Any, kit: Any) -> None:
    faults = FaultFilter()
    server = await make_server(filters=[faults])
    client = await make_client("127.0.0.1", server.port, timeout=0.2)
    assert bytes(await client.call(kit.ECHO, b"1")) == b"1"
    faults.set(Fault("error", status=503))
    with pytest.raises(smf.Unavailable):
        await client.call(kit.ECHO, b"2")
    faults.set(Fault("drop"))  # replaces, does not add
    with pytest.raises(smf.DeadlineExceeded):
        await client.call(kit.ECHO, b"3")
    faults.clear()
    assert bytes(await client.call(kit.ECHO, b"4")) == b"4"
    assert faults.injected == {"error": 1, "drop": 1}


async def test_first_matching_fault_decides(make_server: Any, make_client: Any, kit: Any) -> None:
    faults = FaultFilter([Fault("delay", seconds=0.05), Fault("error", status=503)])
    server = await make_server(filters=[faults])
    client = await make_client("127.0.0.1", server.port)
    with pytest.raises(smf.Unavailable):
        await client.call(kit.ECHO, b"x")
    assert faults.injected == {"delay": 1, "error": 1}  # a delay continues to the next rule


# --------------------------------------------------------------------------- server, outgoing


async def test_server_outgoing_error_replaces_the_response(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server(
        filters=[FaultFilter([Fault("error", status=503, direction="outgoing")])]
    )
    client = await make_client("127.0.0.1", server.port)
    with pytest.raises(smf.Unavailable):
        await client.call(kit.INSPECT, b"x")
    assert len(server.state.inspected) == 1  # the handler ran; its answer was replaced


async def test_server_outgoing_drop_times_out(make_server: Any, make_client: Any, kit: Any) -> None:
    server = await make_server(filters=[FaultFilter([Fault("drop", direction="outgoing")])])
    client = await make_client("127.0.0.1", server.port, timeout=0.2)
    with pytest.raises(smf.DeadlineExceeded):
        await client.call(kit.INSPECT, b"x")
    assert len(server.state.inspected) == 1
    await kit.wait_until(lambda: server.budget.used == 0, what="budget refund")


async def test_server_outgoing_close(make_server: Any, make_client: Any, kit: Any) -> None:
    server = await make_server(filters=[FaultFilter([Fault("close", direction="outgoing")])])
    client = await make_client("127.0.0.1", server.port)
    with pytest.raises(smf.ConnectionLost):
        await client.call(kit.ECHO, b"x")


# --------------------------------------------------------------------------- client side


async def test_client_outgoing_drop_times_out_and_nothing_is_sent(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    faults = FaultFilter([Fault("drop", direction="outgoing")])
    server = await make_server()
    client = await make_client("127.0.0.1", server.port, timeout=0.2, filters=[faults])
    with pytest.raises(smf.DeadlineExceeded):
        await client.call(kit.ECHO, b"x")
    assert server.stats.requests == 0
    assert client.in_flight == 0  # the session was released
    faults.clear()
    assert bytes(await client.call(kit.ECHO, b"y")) == b"y"


async def test_client_outgoing_delay(make_server: Any, make_client: Any, kit: Any) -> None:
    server = await make_server()
    client = await make_client(
        "127.0.0.1",
        server.port,
        filters=[FaultFilter([Fault("delay", seconds=0.15, direction="outgoing")])],
    )
    started = time.monotonic()
    await client.call(kit.ECHO, b"x")
    assert 0.14 <= time.monotonic() - started < 5.0


async def test_client_outgoing_delay_counts_against_the_timeout(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server()
    client = await make_client(
        "127.0.0.1",
        server.port,
        filters=[FaultFilter([Fault("delay", seconds=0.3, direction="outgoing")])],
    )
    with pytest.raises(smf.DeadlineExceeded):
        await client.call(kit.ECHO, b"x", timeout=0.1)


async def test_client_timeout_bounds_a_slow_outgoing_filter(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server()
    client = await make_client(
        "127.0.0.1",
        server.port,
        filters=[FaultFilter([Fault("delay", seconds=1.6, direction="outgoing")])],
    )
    started = time.monotonic()
    with pytest.raises(smf.DeadlineExceeded):
        await client.call(kit.ECHO, b"x", timeout=0.1)
    assert time.monotonic() - started < 1.2  # generous for a 0.1 s timeout


async def test_client_outgoing_error_fails_locally(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server()
    client = await make_client(
        "127.0.0.1",
        server.port,
        filters=[FaultFilter([Fault("error", status=503, direction="outgoing")])],
    )
    with pytest.raises(smf.Unavailable):
        await client.call(kit.ECHO, b"x")
    assert server.stats.requests == 0
    assert client.in_flight == 0


async def test_client_outgoing_close(make_server: Any, make_client: Any, kit: Any) -> None:
    server = await make_server()
    client = await make_client(
        "127.0.0.1", server.port, filters=[FaultFilter([Fault("close", direction="outgoing")])]
    )
    with pytest.raises(smf.ConnectionLost):
        await client.call(kit.ECHO, b"x")


async def test_client_incoming_error(make_server: Any, make_client: Any, kit: Any) -> None:
    server = await make_server()
    client = await make_client(
        "127.0.0.1",
        server.port,
        filters=[FaultFilter([Fault("error", status=503, direction="incoming")])],
    )
    with pytest.raises(smf.Unavailable):
        await client.call(kit.INSPECT, b"x")
    assert len(server.state.inspected) == 1  # the request was served; the answer was failed


async def test_client_incoming_drop_fails_the_call(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server()
    client = await make_client(
        "127.0.0.1", server.port, filters=[FaultFilter([Fault("drop", direction="incoming")])]
    )
    with pytest.raises(smf.SmfError):
        await client.call(kit.ECHO, b"x", timeout=2.0)


async def test_client_fault_restricted_by_wire_id(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server()
    client = await make_client(
        "127.0.0.1",
        server.port,
        timeout=0.2,
        filters=[
            FaultFilter([Fault("drop", direction="outgoing", wire_ids=frozenset({kit.INSPECT}))])
        ],
    )
    assert bytes(await client.call(kit.ECHO, b"x")) == b"x"
    with pytest.raises(smf.DeadlineExceeded):
        await client.call(kit.INSPECT, b"x")
