"""When replies and requests leave (the coalescing rule in ``smf.transport.Connection``)
and the deadline timer: replies gathered in a read are sent on close, at a partial
frame, before a write-side or in-flight pause; outgoing filters that wait leak no task
and starve nothing; calls on an idle connection leave in issue order; the client's one
deadline timer is never armed later than the next deadline, takes a lowered default
timeout into account and never expires a later call; every pipelined request gets one
answer. Real sockets on 127.0.0.1, uvloop (conftest).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

import smf
from smf.client import ClientConnection
from smf.filters import Fault, FaultFilter
from smf.wire import HEADER, HEADER_SIZE

MiB = 1024 * 1024


async def _read_until_eof(reader: asyncio.StreamReader, kit: Any) -> list[Any]:
    """Every complete frame the peer sends before it closes."""
    frames: list[Any] = []
    async with asyncio.timeout(5.0):
        while True:
            try:
                header = await reader.readexactly(HEADER_SIZE)
                body = await reader.readexactly(HEADER.unpack(header)[3])
            except (asyncio.IncompleteReadError, ConnectionResetError):
                return frames
            frames.append(kit.RawFrame(header, body))


async def _only_connection(server: smf.Server, kit: Any) -> Any:
    await kit.wait_until(lambda: len(server.connections) == 1, what="one connection")
    (conn,) = server.connections
    return conn


# =========================================================================== bugs


async def test_close_inside_a_read_still_sends_the_replies_it_gathered(
    make_server: Any, kit: Any
) -> None:
    """A filter closes the connection while a read is processed (FaultFilter "close",
    or any filter calling ``side.close()``). The reply to the read's earlier request
    was produced and counted, so it must leave before the close, as it did when every
    reply had a scheduled flush: ``FramedConnection.close`` flushes only when a flush
    handle is pending, and replies gathered inside a read have none."""
    server = await make_server(
        filters=[FaultFilter([Fault("close", wire_ids=frozenset({kit.INSPECT}))])]
    )
    reader, writer = await kit.open_raw(server)
    # One write, one read on the server: the echo is answered, then the close fault.
    writer.write(kit.frame(1, kit.ECHO, b"answered first") + kit.frame(2, kit.INSPECT, b"x"))
    frames = await _read_until_eof(reader, kit)
    await kit.close_writer(writer)
    assert server.stats.responses.get(200) == 1  # the server did answer session 1 ...
    assert [(f.session, f.body) for f in frames] == [(1, b"answered first")]  # ... lost


async def test_outgoing_filter_that_waits_does_not_leak_handler_tasks(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    """A handler that finishes in its first step, whose outgoing filter chain then
    waits: ``_serve`` removes itself from ``in_flight``/``server.tasks`` before the
    outgoing chain runs, and only then does ``start_eager`` return a task, which
    ``event_received`` adds. Nothing ever removes it."""
    server = await make_server(filters=[FaultFilter([Fault("delay", direction="outgoing")])])
    client = await make_client("127.0.0.1", server.port)
    conn = await _only_connection(server, kit)
    for i in range(3):
        assert bytes(await client.call(kit.ECHO, b"%d" % i)) == b"%d" % i
        await kit.wait_until(lambda: server.budget.used == 0, what="the call to finish")
        assert not server.tasks, f"call {i}: {len(server.tasks)} finished handlers still counted"
        assert not conn.in_flight


async def test_outgoing_filter_that_waits_does_not_starve_the_connection(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    """The same leak, seen by a client: once ``max_in_flight_per_connection`` finished
    handlers are counted, the server never reads that connection again (calls time out;
    ``Server.stop`` would also spin for its whole grace on the finished tasks)."""
    server = await make_server(
        max_in_flight_per_connection=2,
        filters=[FaultFilter([Fault("delay", direction="outgoing")])],
    )
    client = await make_client("127.0.0.1", server.port, timeout=5.0)
    for i in range(4):
        assert bytes(await client.call(kit.ECHO, b"%d" % i)) == b"%d" % i


async def test_lowering_the_default_timeout_after_an_idle_call_takes_effect(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    """The shared deadline timer now stays armed when the queue empties. A timer armed
    by a call under a long default timeout then outlives it; a later call under a
    shorter default (``client.timeout`` is a plain attribute) joins the queue without
    re-arming, so it is expired only when the old, later timer fires."""
    server = await make_server()
    client = await make_client("127.0.0.1", server.port, timeout=60.0)
    assert bytes(await client.call(kit.ECHO, b"warm")) == b"warm"  # timer armed at +60 s
    client.timeout = 0.05
    try:
        async with asyncio.timeout(5.0):  # a hang guard only: 100x the call's timeout
            with pytest.raises(smf.DeadlineExceeded):
                await client.call(kit.SLEEP, b"30")
    except TimeoutError:
        pytest.fail("a call under a 0.05 s default timeout was still pending after 5 s")


async def test_deadline_timer_is_never_armed_later_than_the_next_deadline(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    """The invariant behind the test above, checked on the queue itself."""
    server = await make_server()
    client = await make_client("127.0.0.1", server.port, timeout=60.0)
    await client.call(kit.ECHO, b"warm")
    client.timeout = 1.0
    call = asyncio.create_task(client.call(kit.SLEEP, b"30"))
    try:
        await kit.wait_until(lambda: client.in_flight == 1)
        deadlines = client._deadlines()
        armed, earliest = deadlines.next_deadline, deadlines.earliest
        assert armed is not None and earliest is not None
        assert armed <= earliest + 1e-3
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, smf.RpcError):
            await call


class _LateClient(smf.Client):
    """A client whose connection is lost before the call that opened it gets to use it
    (the window between the connect, or the reconnect's ``_connected.set()``, and the
    calling coroutine resuming), made deterministic."""

    async def _open(self) -> ClientConnection:
        conn = await super()._open()
        async with asyncio.timeout(5.0):
            while not conn.closed:
                await asyncio.sleep(0.002)
        return conn


async def test_call_on_a_connection_already_lost_raises_connection_lost(
    make_server: Any, kit: Any
) -> None:
    """The inlined session fast path skips the ``conn.closed`` check that followed
    session allocation: the frame is dropped (the connection is closed), the session was
    registered in a table nobody will fail, and the call waits for its timeout (forever
    with ``timeout=None``) instead of raising ``ConnectionLost``."""
    server = await make_server(max_connections=0)  # every connection is refused (aborted)
    client = _LateClient("127.0.0.1", server.port, timeout=None)
    try:
        async with asyncio.timeout(5.0):  # a hang guard only
            with pytest.raises(smf.ConnectionLost):
                await client.call(kit.ECHO, b"x")
    except TimeoutError:
        pytest.fail("a call on a lost connection hung instead of raising ConnectionLost")
    finally:
        await client.close()


async def test_replies_of_one_read_respect_the_write_side_pause(make_server: Any, kit: Any) -> None:
    """A peer pipelines tiny requests for large answers and reads nothing. Before, each
    request was a task counted against ``max_in_flight_per_connection`` and the write
    pause stopped reading after a few answers. Now a handler that finishes in its first
    step is not counted, and the answers of one read are queued in ``_out`` and written
    only when the read ends, so the transport never gets to pause writing: every
    request in the read is answered into memory (here 64 MiB for ~1.3 KB of requests;
    with the default 256 KiB receive buffer, ~13k answers per read)."""
    limit, n, size = 2, 64, MiB
    server = await make_server(max_in_flight_per_connection=limit)
    _, writer = await kit.open_raw(server)
    conn = await _only_connection(server, kit)
    writer.write(b"".join(kit.frame(i + 1, kit.SIZED, b"%d" % size) for i in range(n)))
    await kit.wait_until(lambda: conn._write_paused, what="the server to pause writing")
    for _ in range(5):
        await asyncio.sleep(0)
    queued = conn.transport.get_write_buffer_size()
    try:
        # What the limit and the write pause allow: the answers in flight, one more,
        # and the transport's high-water mark.
        assert queued <= (limit + 2) * size, (
            f"{queued / MiB:.0f} MiB of answers queued for a peer that reads nothing "
            f"({server.stats.requests} of {n} requests answered)"
        )
    finally:
        writer.transport.abort()


# =========================================================================== regression


async def test_read_ending_in_a_partial_frame_flushes_its_replies(
    echo_server: smf.Server, kit: Any
) -> None:
    reader, writer = await kit.open_raw(echo_server)
    tail = kit.frame(3, kit.ECHO, b"third" * 100)
    # Two complete requests and a third one's header and part of its body: the read's
    # last complete request is not "last of read", the flush at the end sends both.
    writer.write(kit.frame(1, kit.ECHO, b"one") + kit.frame(2, kit.ECHO, b"two") + tail[:40])
    first = await kit.read_frames(reader, 2)
    assert [(f.session, f.body) for f in first] == [(1, b"one"), (2, b"two")]
    writer.write(tail[40:])
    (third,) = await kit.read_frames(reader, 1)
    assert (third.session, third.body) == (3, b"third" * 100)
    await kit.close_writer(writer)


async def test_replies_gathered_before_an_in_flight_pause_are_flushed(
    make_server: Any, kit: Any
) -> None:
    server = await make_server(max_in_flight_per_connection=1)
    reader, writer = await kit.open_raw(server)
    conn = await _only_connection(server, kit)
    writer.write(
        kit.frame(1, kit.ECHO, b"a")
        + kit.frame(2, kit.BLOCK, b"b")
        + kit.frame(3, kit.ECHO, b"c")
        + kit.frame(4, kit.SLEEP, b"0.001")
        + kit.frame(5, kit.ECHO, b"e")
    )
    # Session 1 was answered inside the read, then BLOCK filled the limit: the read
    # paused with session 1's reply gathered, and it must not wait for BLOCK.
    (first,) = await kit.read_frames(reader, 1)
    assert (first.session, first.body) == (1, b"a")
    assert conn._reading_paused
    server.state.gate.set()
    # BLOCK finishing resumes pulling from inside its task (a nested start_eager with
    # the EagerTask current), where SLEEP waits and gets a task of its own.
    rest = await kit.read_frames(reader, 4)
    assert sorted((f.session, f.body) for f in rest) == [
        (2, b"released"),
        (3, b"c"),
        (4, b"0.001"),
        (5, b"e"),
    ]
    await kit.wait_until(lambda: not server.tasks and not conn.in_flight, what="bookkeeping")
    assert server.budget.used == 0
    await kit.close_writer(writer)


async def test_request_view_is_released_when_its_reply_waits_for_the_read_end(
    echo_server: smf.Server, kit: Any
) -> None:
    """STASH is answered inside a read before its last request: its view is released
    with the batch's flush, not left readable."""
    state = echo_server.state
    reader, writer = await kit.open_raw(echo_server)
    writer.write(kit.frame(1, kit.STASH, b"secret") + kit.frame(2, kit.ECHO, b"later"))
    frames = await kit.read_frames(reader, 2)
    assert [f.session for f in frames] == [1, 2]
    (view,) = state.stash
    with pytest.raises(ValueError):
        bytes(view)
    await kit.close_writer(writer)


async def test_every_pipelined_request_gets_exactly_one_answer(make_server: Any, kit: Any) -> None:
    """Eager and waiting handlers, errors, 404s and a 413 mixed in one read."""
    server = await make_server(max_body_size=64)
    reader, writer = await kit.open_raw(server)
    mix = [kit.ECHO, kit.SLEEP, kit.FAIL, kit.UNKNOWN, kit.SIZED, kit.EMPTY, kit.TEAPOT]
    bodies = {kit.SLEEP: b"0.002", kit.SIZED: b"3"}
    data = b"".join(kit.frame(i + 1, w, bodies.get(w, b"x")) for i, w in enumerate(mix))
    data += kit.frame(len(mix) + 1, kit.ECHO, b"y" * 100)  # oversized: 413
    writer.write(data)
    frames = await kit.read_frames(reader, len(mix) + 1)
    statuses = {f.session: f.meta for f in frames}
    assert statuses == {1: 200, 2: 200, 3: 500, 4: 404, 5: 200, 6: 500, 7: 418, 8: 413}
    writer.write(kit.frame(99, kit.ECHO, b"after"))
    (after,) = await kit.read_frames(reader, 1)
    assert (after.session, after.body) == (99, b"after")
    await kit.wait_until(lambda: server.budget.used == 0 and not server.tasks)
    await kit.close_writer(writer)


async def test_calls_on_an_idle_connection_leave_in_issue_order(kit: Any) -> None:
    """The first call is written at once, the ones joining it in the same iteration are
    queued (plain and with metadata): the wire order is still the issue order."""
    seen: list[tuple[int, int]] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header = await reader.readexactly(HEADER_SIZE)
                _, flags, session, size, _, _ = HEADER.unpack(header)
                body = await reader.readexactly(size)
                seen.append((session, flags))
                assert body
                writer.write(kit.frame(session, 200, b"ok"))

    listener = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    # A foreign peer (unmarked replies): told that it reads payload headers (smf/peer.py).
    client = smf.Client("127.0.0.1", port, payload_headers="always")
    try:
        await client.connect()
        calls = [
            asyncio.create_task(client.call(kit.ECHO, b"1")),
            asyncio.create_task(client.call(kit.ECHO, b"2", metadata={"k": "v"})),
            asyncio.create_task(client.call(kit.ECHO, b"3")),
        ]
        await asyncio.gather(*calls)
        # Idle again: a call with metadata first, then a plain one.
        calls = [
            asyncio.create_task(client.call(kit.ECHO, b"4", metadata={"k": "v"})),
            asyncio.create_task(client.call(kit.ECHO, b"5")),
        ]
        await asyncio.gather(*calls)
        assert [s for s, _ in seen] == [1, 2, 3, 4, 5]
        assert [bool(f) for _, f in seen] == [False, True, False, True, False]
    finally:
        await client.close()
        listener.close()
        await listener.wait_closed()


async def test_a_stale_deadline_timer_does_not_expire_a_later_call(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    """The timer armed by a finished call fires while a later call (same default
    timeout, later deadline) is in flight: it must re-arm, not expire that call."""
    server = await make_server()
    client = await make_client("127.0.0.1", server.port, timeout=1.0)
    await client.call(kit.ECHO, b"arm")  # timer at t0 + 1.0
    await asyncio.sleep(0.8)
    # In flight from t0 + 0.8 to t0 + 1.3, deadline t0 + 1.8: the stale timer fires at
    # t0 + 1.0 while it runs.
    assert bytes(await client.call(kit.SLEEP, b"0.5")) == b"0.5"
    assert client.stats.timeouts == 0


async def test_handler_that_self_cancels_in_its_first_step_is_answered(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    """The 3.11 EagerTask as ``current_task()`` in the first step, from server code's
    point of view: a self-cancel lands at the first wait and is answered 503."""
    server = await make_server()

    async def self_cancel(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)
        return b"not reached"

    server.add_handler(0x0E0C00F0, self_cancel, "Test.self_cancel")
    client = await make_client("127.0.0.1", server.port)
    with pytest.raises(smf.Unavailable):
        await client.call(0x0E0C00F0, b"x")
    await kit.wait_until(lambda: not server.tasks, what="the handler task to be forgotten")
    assert bytes(await client.call(kit.ECHO, b"next")) == b"next"


async def test_stop_waits_for_suspended_handlers_while_eager_ones_were_answered(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server()
    client = await make_client("127.0.0.1", server.port)
    blocked = asyncio.create_task(client.call(kit.BLOCK, b"x"))
    await kit.wait_until(lambda: server.state.entered == 1)
    assert bytes(await client.call(kit.ECHO, b"eager")) == b"eager"
    stopping = asyncio.create_task(server.stop(grace=30.0))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # the suspended handler holds it
    server.state.gate.set()
    assert bytes(await blocked) == b"released"
    await asyncio.wait_for(stopping, 10.0)


async def test_a_handler_error_escaping_serve_does_not_take_the_connection_down(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    """A handler result the server cannot send (a non-contiguous memoryview: its
    checksum raised ``BufferError`` in ``reply``) is answered 500 with a message naming
    the problem; it once escaped the eager first step into ``buffer_updated``, where
    uvloop closed the connection and failed every other call on it."""
    server = await make_server()

    async def strided(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        return memoryview(b"abcdef")[::2]

    server.add_handler(0x0E0C00F1, strided, "Test.strided")
    client = await make_client("127.0.0.1", server.port)
    blocked = asyncio.create_task(client.call(kit.BLOCK, b"x"))
    await kit.wait_until(lambda: server.state.entered == 1)
    with pytest.raises(smf.InternalError, match="non-contiguous memoryview"):
        await client.call(0x0E0C00F1, b"x", timeout=0.5)
    server.state.gate.set()
    assert bytes(await blocked) == b"released"  # the other call on the connection
    assert bytes(await client.call(kit.ECHO, b"still open")) == b"still open"
