"""Client end to end: many calls in flight, timeouts, cancellation, connection loss,
reconnects with backoff, write coalescing and response size limits."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import smf

# --------------------------------------------------------------------------- many in flight


async def test_2000_concurrent_calls_are_matched_by_session(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    n = 2000
    payloads = [b"call-%d-" % i + os.urandom(i % 64) for i in range(n)]
    results = await asyncio.gather(*(client.call(kit.ECHO, p) for p in payloads))
    assert [bytes(r) for r in results] == payloads
    assert client.in_flight == 0
    assert client.stats.calls == n
    assert echo_server.stats.responses == {200: n}


async def test_concurrent_calls_on_one_connection_with_staggered_completion(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    delays = [b"%.3f" % random.uniform(0, 0.1) for _ in range(200)]
    results = await asyncio.gather(*(client.call(kit.SLEEP, d) for d in delays))
    assert [bytes(r) for r in results] == delays
    assert echo_server.stats.connections_accepted == 1


async def test_response_view_stays_valid_while_held(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server()
    client = await make_client("127.0.0.1", server.port, buffer_size=4096)
    first = await client.call(kit.ECHO, b"F" * 1500)
    assert isinstance(first, memoryview)
    # Far more than the client's buffer goes through after it.
    payloads = [bytes([i % 256]) * 1500 for i in range(200)]
    results = await asyncio.gather(*(client.call(kit.ECHO, p) for p in payloads))
    assert [bytes(r) for r in results] == payloads
    assert bytes(first) == b"F" * 1500


# ------------------------------------------------------------------ timeouts and cancellation


async def test_per_call_timeout_raises_deadline_exceeded_and_counts_the_late_reply(
    echo_server: smf.Server, make_client: Any, kit: Any
) -> None:
    state = echo_server.state
    # No payload headers: the server gets no deadline, so the client's timer is the only
    # one. Otherwise, on a loaded machine, the server's 408 can come back before the
    # client's own deadline fires, and there is no late reply to count.
    client = await make_client("127.0.0.1", echo_server.port, payload_headers="never")
    with pytest.raises(smf.DeadlineExceeded) as info:
        await client.call(kit.BLOCK, b"slow", timeout=0.1)
    assert isinstance(info.value, TimeoutError)
    assert info.value.status == 408
    assert client.stats.timeouts == 1
    assert client.in_flight == 0  # the session is free again
    state.gate.set()  # the server answers after all: nobody is waiting for it
    await kit.wait_until(lambda: client.stats.late_replies == 1, what="the late reply")
    assert bytes(await client.call(kit.ECHO, b"next")) == b"next"
    assert client.stats.late_replies == 1


async def test_default_timeout_applies_to_every_call(
    echo_server: smf.Server, make_client: Any, kit: Any
) -> None:
    # The client's deadline only (see the test above): no server 408 races it.
    client = await make_client("127.0.0.1", echo_server.port, timeout=0.1, payload_headers="never")
    results = await asyncio.gather(
        *(client.call(kit.BLOCK, b"x") for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, smf.DeadlineExceeded) for r in results), results
    assert client.stats.timeouts == 5
    assert client.in_flight == 0
    echo_server.state.gate.set()
    await kit.wait_until(lambda: client.stats.late_replies == 5)


async def test_cancelling_a_call_frees_its_session_and_counts_the_late_reply(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    state = echo_server.state
    calls = [asyncio.create_task(client.call(kit.BLOCK, b"x")) for _ in range(3)]
    await kit.wait_until(lambda: state.entered == 3)
    assert client.in_flight == 3
    calls[1].cancel()
    with pytest.raises(asyncio.CancelledError):
        await calls[1]
    assert client.in_flight == 2
    state.gate.set()
    assert [bytes(await c) for c in (calls[0], calls[2])] == [b"released"] * 2
    assert client.in_flight == 0
    await kit.wait_until(lambda: client.stats.late_replies == 1)
    assert client.connected


async def test_timeout_covers_waiting_for_a_free_session(
    echo_server: smf.Server, make_client: Any, kit: Any
) -> None:
    client = await make_client("127.0.0.1", echo_server.port, max_sessions=2)
    hogs = [asyncio.create_task(client.call(kit.BLOCK, b"x", timeout=None)) for _ in range(2)]
    await kit.wait_until(lambda: echo_server.state.entered == 2)
    try:
        with pytest.raises(smf.DeadlineExceeded):
            await asyncio.wait_for(client.call(kit.ECHO, b"queued", timeout=0.1), 2.0)
    finally:
        echo_server.state.gate.set()
        await asyncio.gather(*hogs)


async def test_calls_beyond_max_sessions_wait_for_a_session(
    echo_server: smf.Server, make_client: Any, kit: Any
) -> None:
    client = await make_client("127.0.0.1", echo_server.port, max_sessions=4)
    calls = [asyncio.create_task(client.call(kit.BLOCK, b"%d" % i)) for i in range(10)]
    await kit.wait_until(lambda: echo_server.state.entered == 4)
    await asyncio.sleep(0.05)
    assert echo_server.state.entered == 4  # the other six wait for sessions
    assert client.in_flight == 4
    echo_server.state.gate.set()
    assert [bytes(r) for r in await asyncio.gather(*calls)] == [b"released"] * 10


# --------------------------------------------------------------------------- connection loss


async def test_connection_loss_fails_every_pending_call(
    echo_server: smf.Server, make_client: Any, kit: Any
) -> None:
    client = await make_client("127.0.0.1", echo_server.port, reconnect=False)
    calls = [asyncio.create_task(client.call(kit.BLOCK, b"x")) for _ in range(50)]
    await kit.wait_until(lambda: echo_server.state.entered == 50)
    for conn in list(echo_server.connections):
        conn.abort()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5.0)
    assert all(isinstance(r, smf.ConnectionLost) for r in results), results
    assert isinstance(results[0], ConnectionError)
    assert f"127.0.0.1:{echo_server.port}" in str(results[0])
    assert client.in_flight == 0
    assert client.stats.connection_losses == 1
    # Without reconnect, later calls fail at once.
    with pytest.raises(smf.ConnectionLost):
        await asyncio.wait_for(client.call(kit.ECHO, b"after"), 5.0)


async def test_calls_in_flight_fail_on_loss_and_later_ones_reconnect_by_default(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    calls = [asyncio.create_task(client.call(kit.BLOCK, b"x")) for _ in range(5)]
    await kit.wait_until(lambda: echo_server.state.entered == 5)
    for conn in list(echo_server.connections):
        conn.abort()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5.0)
    assert all(isinstance(r, smf.ConnectionLost) for r in results), results
    assert bytes(await client.call(kit.ECHO, b"after")) == b"after"
    assert client.stats.reconnects == 1


async def test_connection_loss_also_fails_calls_waiting_for_a_session(
    echo_server: smf.Server, make_client: Any, kit: Any
) -> None:
    client = await make_client("127.0.0.1", echo_server.port, max_sessions=2)
    calls = [asyncio.create_task(client.call(kit.BLOCK, b"x")) for _ in range(6)]
    await kit.wait_until(lambda: echo_server.state.entered == 2)
    for conn in list(echo_server.connections):
        conn.abort()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5.0)
    assert all(isinstance(r, smf.ConnectionLost) for r in results), results


async def test_server_stop_fails_pending_calls_promptly(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    calls = [asyncio.create_task(client.call(kit.BLOCK, b"x")) for _ in range(20)]
    await kit.wait_until(lambda: echo_server.state.entered == 20)
    await echo_server.stop(grace=0)
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5.0)
    assert all(isinstance(r, smf.Unavailable | smf.ConnectionLost) for r in results), results
    await kit.wait_until(lambda: not client.connected)
    with pytest.raises(smf.ConnectionLost):
        await client.call(kit.ECHO, b"after")


async def test_peer_that_closes_without_answering(make_client: Any, kit: Any) -> None:
    """A raw server that reads the requests and hangs up."""
    got = asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        got.set()
        await asyncio.sleep(0.05)
        writer.close()

    raw = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    try:
        client = await make_client("127.0.0.1", port)
        calls = [asyncio.create_task(client.call(kit.ECHO, b"%d" % i)) for i in range(10)]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5.0)
        assert got.is_set()
        assert all(isinstance(r, smf.ConnectionLost) for r in results), results
    finally:
        raw.close()


async def test_peer_sending_a_corrupt_frame_fails_pending_calls(make_client: Any, kit: Any) -> None:
    async def corrupt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(kit.raw_header(compression=7, size=1, meta=200) + b"x")
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    raw = await asyncio.start_server(corrupt, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    try:
        client = await make_client("127.0.0.1", port)
        calls = [asyncio.create_task(client.call(kit.ECHO, b"%d" % i)) for i in range(5)]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5.0)
        assert all(isinstance(r, smf.ConnectionLost) for r in results), results
        assert "bad frame" in str(results[0])
    finally:
        raw.close()


async def test_server_stalling_mid_response_is_dropped(make_client: Any, kit: Any) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(kit.frame(1, 200, b"half of this never comes")[:20])
        await writer.drain()
        await asyncio.sleep(10)

    raw = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    try:
        client = await make_client("127.0.0.1", port, body_timeout=0.2, timeout=None)
        with pytest.raises(smf.ConnectionLost, match="mid-frame"):
            await asyncio.wait_for(client.call(kit.ECHO, b"x"), 5.0)
    finally:
        raw.close()


async def test_unsolicited_response_is_counted_and_ignored(make_client: Any, kit: Any) -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readexactly(16)
        body = await reader.readexactly(kit.HEADER.unpack(data)[3])
        session = kit.HEADER.unpack(data)[2]
        # An answer to a session nobody asked about, then the real answer.
        writer.write(kit.frame(session + 100, 200, b"stray") + kit.frame(session, 200, body))
        await writer.drain()
        await reader.read()

    raw = await asyncio.start_server(chatty, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    try:
        client = await make_client("127.0.0.1", port)
        assert bytes(await client.call(kit.ECHO, b"mine")) == b"mine"
        assert client.stats.late_replies == 1
        assert client.connected
    finally:
        raw.close()


async def test_close_fails_pending_calls_and_later_calls(
    echo_server: smf.Server, make_client: Any, kit: Any
) -> None:
    client = await make_client("127.0.0.1", echo_server.port)
    calls = [asyncio.create_task(client.call(kit.BLOCK, b"x")) for _ in range(3)]
    await kit.wait_until(lambda: echo_server.state.entered == 3)
    await client.close()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5.0)
    assert all(isinstance(r, smf.ConnectionLost) for r in results), results
    with pytest.raises(smf.ConnectionLost, match="closed"):
        await client.call(kit.ECHO, b"x")


async def test_connect_to_a_closed_port_names_the_address(kit: Any) -> None:
    port = kit.free_port()
    client = smf.Client("127.0.0.1", port)
    with pytest.raises(smf.ConnectionLost) as info:
        await client.connect()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert isinstance(info.value, ConnectionError)
    # A call connects on first use and fails the same way.
    with pytest.raises(smf.ConnectionLost, match=f"127.0.0.1:{port}"):
        await smf.Client("127.0.0.1", port).call(kit.ECHO, b"x")


async def test_connect_to_a_missing_unix_socket_names_the_path(kit: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "nobody-home.sock")
    with pytest.raises(smf.ConnectionLost, match=r"nobody-home\.sock"):
        await smf.Client(unix_path=path).connect()


# --------------------------------------------------------------------------- reconnect


async def test_reconnect_to_a_new_server_on_the_same_port(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    first = await make_server()
    port = first.port
    client = await make_client(
        "127.0.0.1", port, reconnect=smf.Backoff(initial=0.01, maximum=0.05), timeout=5.0
    )
    assert bytes(await client.call(kit.ECHO, b"before")) == b"before"
    await first.stop(grace=0)
    await kit.wait_until(lambda: not client.connected, what="the client to notice")
    # A call issued while the server is down waits for the reconnection.
    waiting = asyncio.create_task(client.call(kit.ECHO, b"during"))
    await asyncio.sleep(0.1)  # a few failed attempts
    assert not waiting.done()
    second = await make_server(port=port)
    assert second.port == port
    assert bytes(await asyncio.wait_for(waiting, 5.0)) == b"during"
    assert bytes(await client.call(kit.ECHO, b"after")) == b"after"
    assert client.stats.reconnects >= 1
    assert client.stats.connection_losses == 1
    assert second.stats.connections_accepted == 1


async def test_reconnect_gives_up_a_waiting_call_at_its_timeout(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server()
    client = await make_client(
        "127.0.0.1", server.port, reconnect=smf.Backoff(initial=0.01, maximum=0.05)
    )
    await server.stop(grace=0)
    await kit.wait_until(lambda: not client.connected)
    with pytest.raises(smf.ConnectionLost, match="reconnecting"):
        await asyncio.wait_for(client.call(kit.ECHO, b"x", timeout=0.1), 5.0)


async def test_reconnect_true_uses_default_backoff(echo_server: smf.Server, kit: Any) -> None:
    client = smf.Client("127.0.0.1", echo_server.port, reconnect=True)
    assert client.backoff == smf.Backoff()
    # Reconnecting is the default; reconnect=False turns it off.
    assert smf.Client("127.0.0.1", echo_server.port).backoff == smf.Backoff()
    assert smf.Client("127.0.0.1", echo_server.port, reconnect=False).backoff is None


async def test_the_next_call_after_the_server_closed_an_idle_connection_succeeds(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    """A server's idle timeout closes a default client's connection; its next call
    reconnects instead of failing (before, it raised ConnectionLost for good)."""
    server = await make_server(idle_timeout=0.2)
    client = await make_client("127.0.0.1", server.port)
    assert bytes(await client.call(kit.ECHO, b"first")) == b"first"
    await kit.wait_until(lambda: server.stats.idle_closed == 1, what="the idle close")
    await kit.wait_until(lambda: not client.connected, what="the client to see it")
    assert bytes(await client.call(kit.ECHO, b"second")) == b"second"
    assert client.stats.reconnects == 1
    off = await make_client("127.0.0.1", server.port, reconnect=False)
    assert bytes(await off.call(kit.ECHO, b"x")) == b"x"
    await kit.wait_until(lambda: not off.connected, what="the idle close of the other")
    with pytest.raises(smf.ConnectionLost):
        await off.call(kit.ECHO, b"y")


def _expected_bases(b: smf.Backoff, n: int) -> list[float]:
    bases, d = [], b.initial
    for _ in range(n):
        bases.append(d)
        d = min(d * b.multiplier, b.maximum)
    return bases


def test_backoff_grows_exponentially_and_is_capped() -> None:
    b = smf.Backoff(initial=0.01, maximum=0.1, multiplier=2.0, jitter=0.2)
    no_jitter = list(_take(b.delays(rng=lambda: 0.0), 7))
    assert no_jitter == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.1, 0.1, 0.1])
    full_jitter = list(_take(b.delays(rng=lambda: 1.0), 7))
    assert full_jitter == pytest.approx([d * 0.8 for d in no_jitter])


def test_backoff_jitter_varies_within_bounds() -> None:
    b = smf.Backoff(initial=0.01, maximum=0.1, jitter=0.5)
    delays = list(_take(b.delays(), 200))
    for d, base in zip(delays, _expected_bases(b, 200), strict=True):
        assert base * 0.5 <= d <= base
    assert max(delays) <= b.maximum
    assert len({round(d, 9) for d in delays[10:]}) > 1  # jittered, not a constant


@settings(max_examples=200, deadline=None)
@given(
    initial=st.floats(1e-4, 1.0),
    factor=st.floats(1.0, 100.0),
    multiplier=st.floats(1.0, 4.0),
    jitter=st.floats(0.0, 1.0),
    draws=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=40),
)
def test_backoff_property(
    initial: float, factor: float, multiplier: float, jitter: float, draws: list[float]
) -> None:
    b = smf.Backoff(initial=initial, maximum=initial * factor, multiplier=multiplier, jitter=jitter)
    it = iter(draws)
    delays = list(_take(b.delays(rng=lambda: next(it)), len(draws)))
    bases = _expected_bases(b, len(draws))
    for d, base, r in zip(delays, bases, draws, strict=True):
        assert d == pytest.approx(base * (1 - jitter * r))
        assert base * (1 - jitter) - 1e-12 <= d <= base + 1e-12
        assert d <= b.maximum + 1e-12
    assert bases == sorted(bases)  # never shrinks


def _take(it: Any, n: int) -> Any:
    for _, x in zip(range(n), it, strict=False):
        yield x


# --------------------------------------------------------------------------- write coalescing


async def test_calls_issued_in_one_iteration_leave_together(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    await kit.wait_until(lambda: len(echo_server.connections) == 1)
    (server_conn,) = echo_server.connections
    conn = client._conn
    assert conn is not None
    spy = conn.transport = kit.CallSpy(conn.transport)
    server_spy = server_conn.transport = kit.CallSpy(server_conn.transport)
    payloads = [b"batch-%d" % i for i in range(100)]
    results = await asyncio.gather(*(client.call(kit.ECHO, p) for p in payloads))
    assert [bytes(r) for r in results] == payloads
    # The connection was idle, so the first call left at once (nothing to wait for);
    # the 99 issued after it in the same iteration left together, in one writev.
    assert spy.writes == 2
    # The server answers what it read together together, too.
    assert 1 <= server_spy.writes <= 10
    # Calls issued in separate iterations leave separately.
    for p in payloads[:3]:
        await client.call(kit.ECHO, p)
    assert spy.writes == 5
    # A burst issued while a call is in flight leaves in one writev: nothing goes
    # ahead of the batch.
    release = asyncio.create_task(client.call(kit.SLEEP, b"0.2"))
    await kit.wait_until(lambda: client.in_flight == 1)
    before = spy.writes
    results = await asyncio.gather(*(client.call(kit.ECHO, p) for p in payloads))
    assert [bytes(r) for r in results] == payloads
    assert spy.writes == before + 1
    await release


# --------------------------------------------------------------------------- response size


async def test_response_above_client_max_body_size_is_payload_too_large(
    echo_server: smf.Server, make_client: Any, kit: Any
) -> None:
    client = await make_client("127.0.0.1", echo_server.port, max_body_size=1024)
    big = asyncio.create_task(client.call(kit.SIZED, b"50000"))
    small = asyncio.create_task(client.call(kit.SIZED, b"1000"))
    with pytest.raises(smf.PayloadTooLarge) as info:
        await big
    assert "50000" in info.value.message and "1024" in info.value.message
    assert bytes(await small) == b"x" * 1000
    # The oversized body was skipped; the connection is still in step.
    assert bytes(await client.call(kit.ECHO, b"after")) == b"after"
    assert [
        bytes(r) for r in await asyncio.gather(*(client.call(kit.SIZED, b"10") for _ in range(20)))
    ] == [b"x" * 10] * 20
    assert client.connected
    assert client.stats.connection_losses == 0


async def test_small_frames_leave_as_one_buffer_large_ones_uncopied(
    echo_server: smf.Server, client: smf.Client, kit: Any
) -> None:
    # Header and body of a small frame are joined (uvloop sends one buffer with one
    # send); a body above JOIN_LIMIT is handed over as is, never copied.
    from smf.transport import JOIN_LIMIT

    await client.call(kit.ECHO, b"warm")
    (server_conn,) = echo_server.connections
    conn = client._conn
    assert conn is not None
    spy = conn.transport = kit.CallSpy(conn.transport)
    server_spy = server_conn.transport = kit.CallSpy(server_conn.transport)
    for size in (1, JOIN_LIMIT, JOIN_LIMIT + 1, 100_000):
        payload = bytes([size % 251]) * size
        assert bytes(await client.call(kit.ECHO, payload)) == payload
    assert spy.buffers == [1, 1, 2, 2]
    assert server_spy.buffers == [1, 1, 2, 2]


async def test_abort_fails_pending_calls_with_its_reason_and_the_client_reconnects(
    echo_server: smf.Server, make_client: Any, kit: Any
) -> None:
    client = await make_client("127.0.0.1", echo_server.port)
    first = client.connection
    pending = asyncio.ensure_future(client.call(kit.BLOCK, b"slow"))
    await kit.wait_until(lambda: echo_server.state.entered == 1, what="the handler to start")
    client.abort("keepalive: no answer within 0.5s")
    with pytest.raises(smf.ConnectionLost, match="keepalive: no answer"):
        await pending
    assert client.last_loss == "keepalive: no answer within 0.5s"
    # Reconnecting is the default: the next call goes out on a new connection.
    assert bytes(await client.call(kit.ECHO, b"next")) == b"next"
    assert client.connection is not first and client.connected
