"""Server end to end: real sockets, real bytes on the wire.

Raw-protocol tests talk to the server through plain asyncio streams and frames
built with ``smf.wire``; the rest use ``smf.Client``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

import smf
from smf.wire import HEADER_SIZE, Compression

# --------------------------------------------------------------------------- loop


async def test_tests_run_on_uvloop() -> None:
    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


# --------------------------------------------------------------------------- concurrency


async def test_concurrent_calls_on_one_connection(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    state = echo_server.state
    n = 20
    calls = [asyncio.create_task(client.call(kit.BLOCK, b"%d" % i)) for i in range(n)]
    # All n handlers are running at once: the server did not serialise the connection.
    await kit.wait_until(lambda: state.entered == n, what="all handlers to start")
    assert len(echo_server.tasks) == n
    assert echo_server.stats.connections_open == 1
    state.gate.set()
    results = await asyncio.gather(*calls)
    assert [bytes(r) for r in results] == [b"released"] * n
    assert echo_server.stats.responses == {200: n}


async def test_out_of_order_completion_on_the_wire(echo_server: smf.Server, kit: Any) -> None:
    reader, writer = await kit.open_raw(echo_server)
    # Sent in session order 1..4, the first sleeps longest: they finish in reverse.
    delays = {1: b"0.30", 2: b"0.20", 3: b"0.10", 4: b"0.0"}
    writer.write(b"".join(kit.frame(s, kit.SLEEP, d) for s, d in delays.items()))
    frames = await kit.read_frames(reader, 4)
    sessions = [f.session for f in frames]
    assert sessions == [4, 3, 2, 1]
    assert sessions != sorted(sessions)  # the wire order differs from the send order
    for f in frames:
        assert f.meta == 200
        assert f.body == delays[f.session]  # matched by session
    await kit.close_writer(writer)


async def test_out_of_order_completion_matched_by_client(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    delays = [b"0.25", b"0.0", b"0.15", b"0.05", b"0.2", b"0.1"]
    results = await asyncio.gather(*(client.call(kit.SLEEP, d) for d in delays))
    assert [bytes(r) for r in results] == delays


# --------------------------------------------------------------------------- statuses


async def test_unknown_method_is_404_naming_the_id(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    with pytest.raises(smf.NotFound) as info:
        await client.call(kit.UNKNOWN, b"hi")
    assert info.value.status == 404
    assert str(kit.UNKNOWN) in info.value.message
    assert echo_server.stats.responses[404] == 1
    assert bytes(await client.call(kit.ECHO, b"still fine")) == b"still fine"


async def test_handler_exception_is_500_with_error_text(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    with pytest.raises(smf.InternalError) as info:
        await client.call(kit.FAIL, b"x")
    assert info.value.status == 500
    assert "ValueError" in info.value.message
    assert "boom: the handler broke" in info.value.message
    assert bytes(await client.call(kit.ECHO, b"after")) == b"after"


async def test_not_implemented_is_501(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    with pytest.raises(smf.Unimplemented) as info:
        await client.call(kit.NOT_IMPL, b"x")
    assert info.value.status == 501
    assert "coming in v2" in info.value.message


async def test_rpc_error_subclass_answers_its_status(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    with pytest.raises(smf.RpcError) as info:
        await client.call(kit.TEAPOT, b"x")
    assert info.value.status == 418
    assert info.value.message == "short and stout"
    with pytest.raises(smf.Unavailable) as busy:
        await client.call(kit.BUSY, b"x")
    assert busy.value.status == 503
    assert busy.value.message == "come back later"
    assert echo_server.stats.responses == {418: 1, 503: 1}


async def test_empty_response_body_is_500(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    with pytest.raises(smf.InternalError) as info:
        await client.call(kit.EMPTY, b"x")
    assert "empty" in info.value.message


async def test_handler_returning_wrong_type_is_500(
    echo_server: smf.Server, make_client: Any, kit: Any
) -> None:
    tasks = echo_server.tasks = kit.TrackingSet()
    client = await make_client("127.0.0.1", echo_server.port, timeout=2.0)
    try:
        with pytest.raises(smf.InternalError):
            await client.call(kit.WRONG_TYPE, b"x")
        assert echo_server.budget.used == 0
    finally:
        await kit.wait_until(lambda: all(t.done() for t in tasks.added))
        tasks.retrieve_exceptions()


async def test_503_for_new_requests_during_graceful_stop(echo_server: smf.Server, kit: Any) -> None:
    state = echo_server.state
    reader, writer = await kit.open_raw(echo_server)
    writer.write(kit.frame(1, kit.BLOCK, b"slow"))
    await kit.wait_until(lambda: state.entered == 1, what="the slow call to start")
    stopping = asyncio.create_task(echo_server.stop(grace=10.0))
    await kit.wait_until(lambda: echo_server.closing, what="stop() to begin")
    # A new request on the connection that is still open: refused with 503.
    writer.write(kit.frame(2, kit.ECHO, b"too late"))
    refused = await kit.read_frame(reader)
    assert (refused.session, refused.meta) == (2, 503)
    assert b"shutting down" in refused.body
    # The call in flight still finishes normally within the grace period.
    state.gate.set()
    done = await kit.read_frame(reader)
    assert (done.session, done.meta, done.body) == (1, 200, b"released")
    await asyncio.wait_for(stopping, 5.0)
    assert await asyncio.wait_for(reader.read(), 5.0) == b""  # then the server closes
    await kit.close_writer(writer)


async def test_oversized_request_is_413_and_connection_stays_usable(
    make_server: Any, kit: Any
) -> None:
    server = await make_server(max_body_size=1024)
    reader, writer = await kit.open_raw(server)
    size = 200_000
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    data = kit.frame(7, kit.ECHO, body)
    chunk = 10_000
    # Header and the first chunk: the 413 comes back before the body has arrived.
    writer.write(data[: HEADER_SIZE + chunk])
    await writer.drain()
    answer = await kit.read_frame(reader)
    assert (answer.session, answer.meta) == (7, 413)
    assert b"200000" in answer.body and b"1024" in answer.body
    # The rest of the body streams in (and is skipped, never buffered).
    for i in range(HEADER_SIZE + chunk, len(data), chunk):
        writer.write(data[i : i + chunk])
        await writer.drain()
        await asyncio.sleep(0)
    # The very next frame on the same connection is served.
    writer.write(kit.frame(8, kit.ECHO, b"next"))
    nxt = await kit.read_frame(reader)
    assert (nxt.session, nxt.meta, nxt.body) == (8, 200, b"next")
    assert server.stats.oversized_requests == 1
    assert server.stats.bad_frames == 0
    assert server.stats.responses == {413: 1, 200: 1}
    await kit.close_writer(writer)


async def test_oversized_request_through_client(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server(max_body_size=4096)
    client = await make_client("127.0.0.1", server.port)
    with pytest.raises(smf.PayloadTooLarge) as info:
        await client.call(kit.ECHO, b"y" * 100_000)
    assert info.value.status == 413
    assert bytes(await client.call(kit.ECHO, b"small")) == b"small"
    assert client.connected


@pytest.mark.parametrize(
    ("compression", "name"), [(Compression.ZSTD, b"zstd"), (Compression.LZ4, b"lz4")]
)
async def test_a_corrupt_compressed_request_is_refused_naming_the_compression(
    echo_server: smf.Server, kit: Any, compression: int, name: bytes
) -> None:
    """Compressed requests are decompressed without a filter; a body that is not what
    its compression says is 400 (zstd: not a zstd frame), or 413 when it declares more
    than the server's maximum (lz4: its first four bytes, 0xfd2fb528)."""
    reader, writer = await kit.open_raw(echo_server)
    writer.write(kit.frame(3, kit.ECHO, b"\x28\xb5\x2f\xfd-not-really", compression=compression))
    answer = await kit.read_frame(reader)
    assert (answer.session, answer.meta) == (3, 400 if compression == Compression.ZSTD else 413)
    assert name in answer.body
    writer.write(kit.frame(4, kit.ECHO, b"plain"))  # the connection is still usable
    ok = await kit.read_frame(reader)
    assert (ok.session, ok.meta, ok.body) == (4, 200, b"plain")
    await kit.close_writer(writer)


async def test_compression_disabled_is_treated_as_none(echo_server: smf.Server, kit: Any) -> None:
    reader, writer = await kit.open_raw(echo_server)
    writer.write(kit.frame(5, kit.ECHO, b"as is", compression=Compression.DISABLED))
    answer = await kit.read_frame(reader)
    assert (answer.session, answer.meta, answer.body) == (5, 200, b"as is")
    await kit.close_writer(writer)


async def test_payload_headers_flag_is_505_or_served(echo_server: smf.Server, kit: Any) -> None:
    """Bit 0 of bitflags: answered 505 while unsupported; once supported, the handler
    sees only the message after the headers. Either way the connection stays usable."""
    reader, writer = await kit.open_raw(echo_server)
    try:
        from smf.headers import encode
    except ImportError:  # payload headers not implemented yet
        encode = None  # type: ignore[assignment]
    prefix = encode({"k": "v"}) if encode is not None else b"\x00\x00\x00\x00"
    writer.write(kit.frame(9, kit.ECHO, prefix + b"message", flags=0x01))
    answer = await kit.read_frame(reader)
    assert answer.session == 9
    if answer.meta == 505:
        assert b"payload headers" in answer.body
    else:
        assert encode is not None
        assert (answer.meta, answer.body) == (200, b"message")
    writer.write(kit.frame(10, kit.ECHO, b"plain"))
    ok = await kit.read_frame(reader)
    assert (ok.session, ok.meta) == (10, 200)
    assert echo_server.stats.bad_frames == 0
    await kit.close_writer(writer)


async def test_malformed_payload_headers_are_answered(echo_server: smf.Server, kit: Any) -> None:
    reader, writer = await kit.open_raw(echo_server)
    # n = 1000 but only 4 bytes follow: 400 (bad request) or 505 (unsupported).
    writer.write(kit.frame(11, kit.ECHO, b"\xe8\x03\x00\x00oops", flags=0x01))
    answer = await kit.read_frame(reader)
    assert (answer.session, answer.meta in (400, 505)) == (11, True)
    writer.write(kit.frame(12, kit.ECHO, b"plain"))
    ok = await kit.read_frame(reader)
    assert (ok.session, ok.meta, ok.body) == (12, 200, b"plain")
    assert echo_server.stats.bad_frames == 0
    await kit.close_writer(writer)


# --------------------------------------------------------------------------- corrupt frames


def _corrupt_frames(kit: Any) -> dict[str, bytes]:
    good = kit.frame(1, kit.ECHO, b"hello")
    bad_checksum = (
        good[:8] + (int.from_bytes(good[8:12], "little") ^ 1).to_bytes(4, "little") + good[12:]
    )
    body = b"hello"
    csum = smf.wire.checksum(body)
    return {
        "bad-checksum": bad_checksum,
        "compression-7": kit.raw_header(compression=7, size=5, checksum=csum) + body,
        "compression-negative": kit.raw_header(compression=-1, size=5, checksum=csum) + body,
        "unknown-bitflag": kit.raw_header(flags=0x02, size=5, checksum=csum) + body,
        "high-bitflag": kit.raw_header(flags=0x81, size=5, checksum=csum) + body,
        "size-0": kit.raw_header(size=0, checksum=0),
        "meta-0": kit.raw_header(size=5, checksum=csum, meta=0) + body,
    }


@pytest.mark.parametrize(
    "kind",
    [
        "bad-checksum",
        "compression-7",
        "compression-negative",
        "unknown-bitflag",
        "high-bitflag",
        "size-0",
        "meta-0",
    ],
)
async def test_corrupt_frame_closes_silently_other_connections_unaffected(
    echo_server: smf.Server, client: smf.Client, kit: Any, kind: str
) -> None:
    state = echo_server.state
    # A well-behaved connection with a call in flight while the bad peer misbehaves.
    in_flight = asyncio.create_task(client.call(kit.BLOCK, b"patient"))
    await kit.wait_until(lambda: state.entered == 1)

    reader, writer = await kit.open_raw(echo_server)
    writer.write(_corrupt_frames(kit)[kind])
    await kit.expect_closed_silently(reader)
    await kit.close_writer(writer)
    assert echo_server.stats.bad_frames == 1

    assert bytes(await client.call(kit.ECHO, b"unaffected")) == b"unaffected"
    state.gate.set()
    assert bytes(await in_flight) == b"released"
    assert echo_server.stats.responses.get(200) == 2


async def test_corrupt_frame_after_valid_ones_in_the_same_read(
    echo_server: smf.Server, kit: Any
) -> None:
    reader, writer = await kit.open_raw(echo_server)
    writer.write(kit.frame(1, kit.SLEEP, b"0.0") + kit.raw_header(compression=7, size=1) + b"x")
    # Whatever was valid before the corruption may or may not be answered, but the
    # stream ends and nothing after the bad header is ever interpreted.
    received = b""
    async with asyncio.timeout(5):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                received += chunk
    assert len(received) in (0, HEADER_SIZE + 3)
    assert echo_server.stats.bad_frames == 1
    await kit.close_writer(writer)


async def test_answers_gathered_before_a_corrupt_frame_are_sent_before_closing(
    echo_server: smf.Server, kit: Any
) -> None:
    # Requests answered inline in the read that ends in a corrupt header are answered
    # (their replies were gathered, waiting for the read's last request); nothing after
    # the bad header is. Repeated: the close must not race the replies away.
    for _ in range(20):
        reader, writer = await kit.open_raw(echo_server)
        writer.write(
            kit.frame(1, kit.ECHO, b"abc")
            + kit.frame(2, kit.ECHO, b"de")
            + kit.raw_header(compression=7, size=1)
            + b"x"
        )
        received = b""
        async with asyncio.timeout(5):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await reader.read(65536):
                    received += chunk
        assert len(received) == 2 * HEADER_SIZE + 5
        assert received.endswith(b"de") and received[HEADER_SIZE : HEADER_SIZE + 3] == b"abc"
        await kit.close_writer(writer)
    assert echo_server.stats.bad_frames == 20


# --------------------------------------------------------------------------- stalls


@pytest.mark.parametrize("cut", ["half-header", "header-and-half-body"])
async def test_stalled_peer_is_dropped_after_body_timeout(
    make_server: Any, kit: Any, cut: str
) -> None:
    server = await make_server(body_timeout=0.2)
    reader, writer = await kit.open_raw(server)
    data = kit.frame(1, kit.ECHO, b"q" * 1000)
    writer.write(data[:8] if cut == "half-header" else data[: HEADER_SIZE + 500])
    await kit.expect_closed_silently(reader, timeout=5.0)
    assert server.stats.stalled_connections == 1
    assert server.stats.bad_frames == 0
    await kit.close_writer(writer)


async def test_idle_connection_is_not_dropped(make_server: Any, make_client: Any, kit: Any) -> None:
    server = await make_server(body_timeout=0.2)
    reader, writer = await kit.open_raw(server)
    client = await make_client("127.0.0.1", server.port)
    writer.write(kit.frame(1, kit.ECHO, b"one"))
    assert (await kit.read_frame(reader)).body == b"one"
    assert bytes(await client.call(kit.ECHO, b"one")) == b"one"
    await asyncio.sleep(0.8)  # four body timeouts without a partial frame
    writer.write(kit.frame(2, kit.ECHO, b"two"))
    assert (await kit.read_frame(reader)).body == b"two"
    assert bytes(await client.call(kit.ECHO, b"two")) == b"two"
    assert server.stats.stalled_connections == 0
    assert server.stats.connections_open == 2
    await kit.close_writer(writer)


async def test_slow_but_progressing_frames_are_not_stalls(make_server: Any, kit: Any) -> None:
    server = await make_server(body_timeout=0.3)
    reader, writer = await kit.open_raw(server)
    # Whole frames trickle in, each split in two writes a little apart.
    for session in range(1, 6):
        data = kit.frame(session, kit.ECHO, b"piece %d" % session)
        writer.write(data[:10])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(data[10:])
        assert (await kit.read_frame(reader)).session == session
    assert server.stats.stalled_connections == 0
    await kit.close_writer(writer)


# --------------------------------------------------------------------------- graceful stop


async def test_graceful_stop_lets_calls_in_flight_finish(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    state = echo_server.state
    port = echo_server.port
    calls = [asyncio.create_task(client.call(kit.BLOCK, b"x")) for _ in range(5)]
    await kit.wait_until(lambda: state.entered == 5)
    stopping = asyncio.create_task(echo_server.stop(grace=10.0))
    await kit.wait_until(lambda: echo_server.closing)
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waiting for the calls in flight
    # The listener no longer accepts while the grace period runs.
    with pytest.raises(OSError):
        _, w = await asyncio.open_connection("127.0.0.1", port)
        await kit.close_writer(w)
    state.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*calls), 5.0)
    assert [bytes(r) for r in results] == [b"released"] * 5
    await asyncio.wait_for(stopping, 5.0)
    assert state.cancelled == 0
    assert echo_server.stats.responses == {200: 5}
    # Stopped: new connections fail, and the old one is gone.
    with pytest.raises(smf.ConnectionLost):
        await smf.Client("127.0.0.1", port).connect()
    await kit.wait_until(lambda: not client.connected, what="the client to see the close")


async def test_graceful_stop_cancels_calls_still_running_after_grace(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    state = echo_server.state
    calls = [asyncio.create_task(client.call(kit.BLOCK, b"x")) for _ in range(4)]
    await kit.wait_until(lambda: state.entered == 4)
    await asyncio.wait_for(echo_server.stop(grace=0.2), 5.0)
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5.0)
    for r in results:
        assert isinstance(r, smf.Unavailable | smf.ConnectionLost), r
    assert state.cancelled == 4
    assert state.finished == 0
    assert not echo_server.tasks
    assert echo_server.budget.used == 0


async def test_stop_without_calls_returns_promptly_and_refuses_connections(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    assert bytes(await client.call(kit.ECHO, b"x")) == b"x"
    port = echo_server.port
    await asyncio.wait_for(echo_server.stop(grace=30.0), 5.0)
    with pytest.raises(OSError):
        _, w = await asyncio.open_connection("127.0.0.1", port)
        await kit.close_writer(w)
    assert echo_server.stats.connections_open == 0


async def test_client_disconnect_cancels_its_handlers(echo_server: smf.Server, kit: Any) -> None:
    state = echo_server.state
    _, writer = await kit.open_raw(echo_server)
    writer.write(kit.frame(1, kit.BLOCK, b"a") + kit.frame(2, kit.BLOCK, b"b"))
    await kit.wait_until(lambda: state.entered == 2)
    assert echo_server.budget.used > 0
    writer.close()
    await kit.wait_until(lambda: state.cancelled == 2, what="handlers to be cancelled")
    await kit.wait_until(lambda: not echo_server.tasks)
    assert echo_server.budget.used == 0
    assert echo_server.stats.connections_open == 0


# --------------------------------------------------------------------------- listeners


@pytest.mark.parametrize("family", ["ipv4", "ipv6", "unix"])
async def test_listeners(
    make_server: Any, make_client: Any, kit: Any, tmp_path: Any, family: str
) -> None:
    if family == "ipv6" and not kit.ipv6_available():
        pytest.skip("IPv6 loopback not available")
    if family == "unix":
        path = str(tmp_path / "smf.sock")
        server = await make_server(unix_path=path)
        client = await make_client(unix_path=path)
    else:
        host = "127.0.0.1" if family == "ipv4" else "::1"
        server = await make_server(host)
        client = await make_client(host, server.port)
    payloads = [b"p%d" % i * (i + 1) for i in range(50)]
    results = await asyncio.gather(*(client.call(kit.ECHO, p) for p in payloads))
    assert [bytes(r) for r in results] == payloads
    await client.call(kit.INSPECT, b"who")
    peer = server.state.inspected[0]["peer"]
    if family == "ipv6":
        assert peer.startswith("[::1]:")
    elif family == "ipv4":
        assert peer.startswith("127.0.0.1:")
    else:
        assert peer.startswith("unix")


async def test_one_server_on_tcp_and_unix_at_once(
    make_server: Any, make_client: Any, kit: Any, tmp_path: Any
) -> None:
    server = await make_server()
    path = str(tmp_path / "both.sock")
    await server.start_unix(path)
    tcp = await make_client("127.0.0.1", server.port)
    unix = await make_client(unix_path=path)
    assert bytes(await tcp.call(kit.ECHO, b"tcp")) == b"tcp"
    assert bytes(await unix.call(kit.ECHO, b"unix")) == b"unix"
    assert server.stats.connections_open == 2
    await server.stop(grace=1.0)
    with pytest.raises(smf.ConnectionLost):
        await smf.Client(unix_path=path).connect()


async def test_unix_listener_replaces_stale_socket_file(
    make_server: Any, make_client: Any, kit: Any, tmp_path: Any
) -> None:
    path = str(tmp_path / "stale.sock")
    first = await make_server(unix_path=path)
    await first.stop(grace=0)
    server = await make_server(unix_path=path)
    client = await make_client(unix_path=path)
    assert bytes(await client.call(kit.ECHO, b"fresh")) == b"fresh"
    assert server.stats.requests == 1


# --------------------------------------------------------------------------- zero copy


async def test_handler_body_is_a_view_of_the_decoders_bytearray(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    await client.call(kit.INSPECT, b"look at me")
    seen = echo_server.state.inspected[0]
    assert seen["type"] is memoryview
    assert seen["obj_type"] is bytearray
    assert seen["nbytes"] == len(b"look at me")
    assert seen["wire_id"] == kit.INSPECT


async def test_stashed_request_view_fails_loudly_after_return(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    assert bytes(await client.call(kit.STASH, b"mine for now")) == b"stashed"
    await asyncio.sleep(0)
    (stashed,) = echo_server.state.stash
    with pytest.raises(ValueError, match="released"):
        bytes(stashed)
    with pytest.raises(ValueError):
        stashed[0]


@pytest.mark.parametrize("size", [1, 100, 64 * 1024, 1024 * 1024 + 7])
async def test_echo_of_the_request_view_itself(
    echo_server: smf.Server, client: smf.Client, kit: Any, size: int
) -> None:
    payload = bytes((i * 7 + size) & 0xFF for i in range(size))
    assert bytes(await client.call(kit.ECHO, payload)) == payload


async def test_held_request_view_is_never_overwritten(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server(buffer_size=4096)
    client = await make_client("127.0.0.1", server.port)
    original = b"HELD" * 250
    held = asyncio.create_task(client.call(kit.HOLD, original))
    await kit.wait_until(lambda: server.state.entered == 1)
    # Stream far more than the decoder's buffer through the same connection.
    payloads = [bytes([i % 251]) * 1000 for i in range(300)]
    results = await asyncio.gather(*(client.call(kit.ECHO, p) for p in payloads))
    assert [bytes(r) for r in results] == payloads
    server.state.gate.set()
    assert bytes(await held) == original
