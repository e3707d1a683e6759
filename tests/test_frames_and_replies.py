"""Frames and replies at their edges: the client's per-method counters see every call
(and keep no record per finished call), decoded frames are plain objects (hashable,
distinct, assignable, copyable), each header fault raises its typed error and closes
only its connection, a partial frame after an answered one stalls, replies of every
buffer shape (multi-byte, 2-D, non-contiguous) and size around ``JOIN_LIMIT`` keep
their order, and a peer that does not read its replies pauses reading.
"""

from __future__ import annotations

import array
import asyncio
from typing import Any

import pytest

import smf
from smf.errors import BadCompression, BadFlags, BadMeta, BadSize, FrameError
from smf.transport import JOIN_LIMIT
from smf.wire import HEADER, HEADER_SIZE, Frame, FrameDecoder, encode_frame

# Handlers added to the test server for the payload-type pins.
MULTIBYTE = 0x0E0C0101  # body: ASCII n; answers memoryview(array("i", range(n)))
TWO_D = 0x0E0C0102  # body: ASCII n; answers a C-contiguous 2 x n/2 memoryview
BYTEARRAY = 0x0E0C0103  # body: ASCII n; answers bytearray(n)
STRIDED = 0x0E0C0104  # answers a non-contiguous memoryview


def _decoded(*frames: bytes) -> list[Any]:
    decoder = FrameDecoder()
    decoder.receive_data(b"".join(frames))
    events = []
    while (event := decoder.next_event()) is not None:
        events.append(event)
    return events


# =========================================================================== findings


async def test_client_row_held_across_calls_counts_the_last_call(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    """Undone change (metrics, client). ``get_or_add``/``get``/iterating return live
    ``MethodStats`` rows; a caller that keeps one (as tests/test_metrics.py keeps a
    server row's ``latency_us`` in test_histogram_folds_incrementally) reads it after
    the calls. With that change the last call sits in ``MethodTable.unsettled`` until the next
    call's write or the next read through the table, so the held row shows one call
    fewer, its bytes and its latency sample missing. At bda3810 the call was recorded
    into the row before ``call()`` returned."""
    row = client.methods.get_or_add(kit.ECHO)
    recorder = row.latency_us
    await client.call(kit.ECHO, b"one")
    await client.call(kit.ECHO, b"two")
    assert row.statuses == {200: 2}
    assert row.bytes_in == len(b"onetwo")
    assert recorder.histogram().get_total_count() == 2


async def test_client_methods_dict_shows_a_finished_call(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    """Undone change (metrics, client). ``MethodTable.methods`` is a public attribute (wire
    id -> row). With that change a client's first finished call has no row there until something
    settles the table; at bda3810 the row existed (and counted it) once call() returned."""
    await client.call(kit.ECHO, b"x")
    assert kit.ECHO in client.methods.methods
    assert client.methods.methods[kit.ECHO].calls == 1


async def test_an_idle_client_keeps_no_record_per_finished_call(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    """Undone change (metrics, memory; low). A burst of N concurrent calls writes (and so
    settles) before any reply arrives; every reply then appends a 5-tuple to
    ``MethodTable.unsettled`` (~170 bytes with its ints), and nothing settles them until
    the next call or a read of the table: an idle client keeps N of them indefinitely.
    At bda3810 each call went into its row's fixed-size counters at once (no list)."""
    results = await asyncio.gather(*(client.call(kit.ECHO, b"x") for _ in range(500)))
    assert len(results) == 500
    del results
    assert len(getattr(client.methods, "unsettled", ())) <= 1


def test_decoded_frames_are_hashable() -> None:
    """Undone change (Frame as a named tuple). A decoded frame's body is a writable
    memoryview; a tuple hashes its items, so ``hash(frame)`` (a set of frames, a dict
    keyed by frame) raises ``ValueError: cannot hash writable memoryview object`` on
    that change. At bda3810 a Frame hashed by identity."""
    first, second = _decoded(encode_frame(1, 9, b"abc"), encode_frame(1, 9, b"abc"))
    assert len({first, second}) == 2


def test_distinct_frames_are_not_equal() -> None:
    """Undone change (Frame as a named tuple). Two different frames (two requests that happen
    to carry the same session, id and bytes) compare equal with that change, and a Frame equals a
    plain 5-tuple, so ``frames.remove(f)`` / ``f in frames`` can pick the wrong one. At
    bda3810 frames compared by identity."""
    first, second = _decoded(encode_frame(1, 9, b"abc"), encode_frame(1, 9, b"abc"))
    assert first != second
    assert first != (0, 0, 1, 9, first.body)


def test_frame_fields_are_assignable() -> None:
    """Undone change (Frame as a named tuple). A Frame's fields could be reassigned at
    bda3810 (a __slots__ class), e.g. to swap in a decompressed body; with that change that
    raises ``AttributeError: can't set attribute``."""
    (frame,) = _decoded(encode_frame(3, 9, b"abc"))
    frame.body = memoryview(b"replaced")
    frame.session = 4
    assert (frame.session, bytes(frame.body)) == (4, b"replaced")


# =========================================================================== pins


def test_frame_is_still_a_frame_copies_and_pickles() -> None:
    """isinstance, keyword construction, copy and pickling (with a bytes body;
    a memoryview body never pickled) behave as at bda3810."""
    import copy
    import pickle

    frame = Frame(compression=0, flags=0, session=1, meta=2, body=b"x")  # type: ignore[arg-type]
    assert isinstance(frame, Frame)
    assert pickle.loads(pickle.dumps(frame)).session == 1
    assert copy.copy(frame).meta == 2
    with pytest.raises(TypeError):
        pickle.dumps(Frame(0, 0, 1, 2, memoryview(bytearray(b"x"))))


def _header(compression: int = 0, flags: int = 0, size: int = 3, meta: int = 9) -> bytes:
    return HEADER.pack(compression, flags, 1, size, 0, meta) + b"abc"


@pytest.mark.parametrize(
    ("header", "error", "field", "value"),
    [
        (_header(compression=4), BadCompression, "compression", 4),
        (_header(compression=0x16), BadCompression, "compression", 0x16),
        (_header(compression=-1), BadCompression, "compression", -1),
        (_header(compression=-128), BadCompression, "compression", -128),
        (_header(compression=127), BadCompression, "compression", 127),
        (_header(flags=0x02), BadFlags, "bitflags", 2),
        (_header(flags=0x80), BadFlags, "bitflags", 0x80),
        (_header(size=0), BadSize, "size", 0),
        (_header(meta=0), BadMeta, "meta", 0),
        # Several faults at once: the first in header order is named, as before.
        (_header(compression=9, flags=4, size=0, meta=0), BadCompression, "compression", 9),
        (_header(flags=4, size=0, meta=0), BadFlags, "bitflags", 4),
        (_header(size=0, meta=0), BadSize, "size", 0),
        (_header(compression=3, flags=1, meta=0), BadMeta, "meta", 0),
    ],
)
def test_each_header_fault_raises_its_typed_error(
    header: bytes, error: type[FrameError], field: str, value: int
) -> None:
    """the merged fault test still names the right field and value, and the
    decoder keeps raising that same error afterwards."""
    decoder = FrameDecoder()
    decoder.receive_data(header)
    with pytest.raises(error) as raised:
        decoder.next_event()
    assert type(raised.value) is error
    assert (raised.value.field, raised.value.value) == (field, value)
    with pytest.raises(error) as again:
        decoder.next_event()
    assert again.value is raised.value


@pytest.mark.parametrize("compression", [0, 1, 2, 3])
def test_valid_compressions_and_flags_pass_the_merged_test(compression: int) -> None:
    (frame,) = _decoded(encode_frame(5, 7, b"abc", compression, 1))
    assert (frame.compression, frame.flags, frame.session, frame.meta) == (compression, 1, 5, 7)


async def test_a_bad_header_closes_the_connection_and_is_counted(
    echo_server: smf.Server, kit: Any
) -> None:
    reader, writer = await kit.open_raw(echo_server)
    try:
        writer.write(kit.frame(1, kit.ECHO, b"fine"))
        assert (await kit.read_frame(reader)).body == b"fine"
        writer.write(kit.raw_header(flags=0x40))
        await kit.expect_closed_silently(reader)
    finally:
        await kit.close_writer(writer)
    assert echo_server.stats.bad_frames == 1


async def test_partial_frame_after_an_answered_one_in_the_same_read_stalls(
    make_server: Any, kit: Any
) -> None:
    """the pull no longer asks the decoder again when a read ends on a frame
    boundary; a read that ends inside the next frame still arms the stall timer."""
    server = await make_server(body_timeout=0.2)
    reader, writer = await kit.open_raw(server)
    try:
        writer.write(kit.frame(1, kit.ECHO, b"whole") + kit.frame(2, kit.ECHO, b"half")[:10])
        assert (await kit.read_frame(reader)).body == b"whole"
        await kit.expect_closed_silently(reader)
    finally:
        await kit.close_writer(writer)
    assert server.stats.stalled_connections == 1


@pytest.fixture
async def typed_server(make_server: Any) -> smf.Server:
    server = await make_server()

    async def multibyte(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        return memoryview(array.array("i", range(int(bytes(body)))))

    async def two_d(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        n = int(bytes(body))
        return memoryview(bytearray(range(256)) * (n // 256) + bytearray(n % 256)).cast(
            "B", (2, n // 2)
        )

    async def a_bytearray(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        return bytearray(b"q" * int(bytes(body)))

    async def strided(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        return memoryview(b"abcdefgh")[::2]

    server.add_handler(MULTIBYTE, multibyte, "Typed.multibyte")
    server.add_handler(TWO_D, two_d, "Typed.two_d")
    server.add_handler(BYTEARRAY, a_bytearray, "Typed.bytearray")
    server.add_handler(STRIDED, strided, "Typed.strided")
    return server


@pytest.mark.parametrize("items", [1, JOIN_LIMIT // 4, JOIN_LIMIT // 4 + 1, 50_000])
async def test_server_replies_with_multibyte_memoryviews_whole(
    typed_server: smf.Server, make_client: Any, items: int
) -> None:
    """a reply whose body is a memoryview of itemsize 4 is sent whole (nbytes, not
    len) on both sides of JOIN_LIMIT, joined or not."""
    client = await make_client("127.0.0.1", typed_server.port)
    expected = array.array("i", range(items)).tobytes()
    assert bytes(await client.call(MULTIBYTE, b"%d" % items)) == expected
    assert typed_server.stats.bytes_out == HEADER_SIZE + len(expected)


@pytest.mark.parametrize("size", [2, JOIN_LIMIT, JOIN_LIMIT + 2, 100_000])
async def test_server_replies_with_2d_memoryviews_and_bytearrays(
    typed_server: smf.Server, make_client: Any, size: int
) -> None:
    client = await make_client("127.0.0.1", typed_server.port)
    body = bytes(await client.call(TWO_D, b"%d" % size))
    assert body == bytes(bytearray(range(256)) * (size // 256) + bytearray(size % 256))
    assert bytes(await client.call(BYTEARRAY, b"%d" % size)) == b"q" * size


async def test_non_contiguous_reply_is_a_500_not_a_crash(
    typed_server: smf.Server, make_client: Any
) -> None:
    client = await make_client("127.0.0.1", typed_server.port)
    with pytest.raises(smf.InternalError, match="non-contiguous"):
        await client.call(STRIDED, b"x")
    assert bytes(await client.call(0x0E0C0001, b"after")) == b"after"


@pytest.mark.parametrize("items", [1, JOIN_LIMIT // 4, JOIN_LIMIT // 4 + 1, 50_000])
async def test_client_payload_types_on_both_sides_of_join_limit(
    echo_server: smf.Server, client: smf.Client, kit: Any, items: int
) -> None:
    """the client's immediate write joins header + payload up to JOIN_LIMIT bytes;
    multi-byte, 2-D, bytearray and bytes payloads all arrive whole, and the client
    counts nbytes sent."""
    ints = array.array("i", range(items))
    raw = ints.tobytes()
    assert bytes(await client.call(kit.ECHO, memoryview(ints))) == raw
    two_d = memoryview(bytearray(raw)).cast("B", (2, len(raw) // 2))
    assert bytes(await client.call(kit.ECHO, two_d)) == raw
    assert bytes(await client.call(kit.ECHO, bytearray(raw))) == raw
    assert bytes(await client.call(kit.ECHO, raw)) == raw
    assert client.methods.get_or_add(kit.ECHO).bytes_in == 4 * len(raw)


async def test_non_contiguous_client_payload_raises_and_frees_its_session(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    """as at bda3810, a strided payload fails in the checksum (BufferError),
    before anything is written; its session is freed and the connection stays usable."""
    with pytest.raises(BufferError):
        await client.call(kit.ECHO, memoryview(b"abcdefgh")[::2])
    assert client.in_flight == 0
    assert bytes(await client.call(kit.ECHO, b"after")) == b"after"


async def test_replies_to_one_read_keep_order_across_join_limit(
    echo_server: smf.Server, kit: Any
) -> None:
    """one read holding small, large and waiting requests: every reply arrives,
    in request order for those answered inline, with the one that waited last."""
    sizes = [1, JOIN_LIMIT, JOIN_LIMIT + 1, 10, 200_000, 3]
    requests = [kit.frame(i + 1, kit.SIZED, b"%d" % n) for i, n in enumerate(sizes)]
    requests.insert(2, kit.frame(100, kit.SLEEP, b"0.01"))
    reader, writer = await kit.open_raw(echo_server)
    try:
        writer.write(b"".join(requests))
        got = await kit.read_frames(reader, len(requests))
    finally:
        await kit.close_writer(writer)
    inline = [(f.session, len(f.body)) for f in got if f.session != 100]
    assert inline == [(i + 1, n) for i, n in enumerate(sizes)]
    assert got[-1].session == 100 and got[-1].body == b"0.01"


async def test_a_stashed_request_fails_loudly_after_a_joined_reply(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    """the one reply of a read now goes straight to the transport; the request
    view is still released after it, so a handler that kept it fails loudly."""
    assert bytes(await client.call(kit.STASH, b"keep me")) == b"stashed"
    (kept,) = echo_server.state.stash  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="released"):
        bytes(kept)


async def test_peer_not_reading_small_inline_replies_pauses_reading(
    echo_server: smf.Server, kit: Any
) -> None:
    """with only inline handlers (nothing in flight, so can_pull is asked only
    once writing pauses) a peer that never reads its small, joined answers still makes
    the server stop reading: the transport's write buffer stays bounded."""
    _, writer = await kit.open_raw(echo_server)
    await kit.wait_until(lambda: len(echo_server.connections) == 1)
    (conn,) = echo_server.connections
    body = b"s" * 1000
    batch = b"".join(kit.frame(1 + i % 60000, kit.ECHO, body) for i in range(200))

    async def pipeline() -> None:
        while True:
            writer.write(batch)
            await writer.drain()

    sending = asyncio.create_task(pipeline())
    try:
        await kit.wait_until(lambda: conn._reading_paused, timeout=20, what="reads to pause")
        assert conn._write_paused
        assert echo_server.stats.reads_paused > 0
        assert conn.transport.get_write_buffer_size() < 8 * 1024 * 1024
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        writer.transport.abort()


async def test_in_flight_cap_of_one_still_pauses_reading(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server(max_in_flight_per_connection=1)
    client = await make_client("127.0.0.1", server.port)
    calls = [asyncio.create_task(client.call(kit.BLOCK, b"x")) for _ in range(5)]
    await kit.wait_until(lambda: server.state.entered == 1)
    (conn,) = server.connections
    await kit.wait_until(lambda: conn._reading_paused, what="reads to pause")
    assert server.state.entered == 1 and len(conn.in_flight) == 1
    server.state.gate.set()
    assert [bytes(r) for r in await asyncio.gather(*calls)] == [b"released"] * 5
    assert server.budget.used == 0


async def test_prometheus_collector_sees_every_client_call(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    """the collector reads the table by iterating it, which settles what is
    pending: the last call is counted, and scraping twice does not count it twice."""
    from smf.prometheus import MetricsExporter

    exporter = MetricsExporter(clients=[client])
    for _ in range(3):
        await client.call(kit.ECHO, b"x")
    labels = {"client": "0", "method": str(kit.ECHO), "status": "200"}
    for _ in range(2):
        assert exporter.registry.get_sample_value("smf_client_calls_total", labels) == 3
        count = exporter.registry.get_sample_value(
            "smf_client_latency_seconds_count", {"client": "0", "method": str(kit.ECHO)}
        )
        assert count == 3


async def test_client_error_replies_are_counted_once(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    with pytest.raises(smf.InternalError):
        await client.call(kit.FAIL, b"x")
    await client.call(kit.ECHO, b"x")
    await client.call(kit.ECHO, b"y")
    assert client.methods.get(kit.FAIL).statuses == {500: 1}
    assert client.methods.get(kit.ECHO).statuses == {200: 2}
    assert sum(m.calls for m in client.methods) == 3
