"""A call's life on the server, from start to answer: results of every kind (released
or waited-for views), handlers that are plain functions, context variables kept inside
their call, cancellation (self-cancel, anyio scopes, a cancelled future, connection
loss, ``stop`` with and without grace), exactly one reply per request, the byte budget
and the idle sweep while handlers wait.

Each holds on Python 3.11 (``smf.eager.EagerTask``) and 3.12+ (asyncio's eager tasks).
Real sockets on 127.0.0.1, uvloop (conftest); no wall-clock thresholds (the timeouts
are hang guards only).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
from typing import Any

import pytest

import smf
from smf.context import current_call
from smf.wire import HEADER_SIZE, Frame

COST = HEADER_SIZE + smf.server.REQUEST_OVERHEAD  # the budget charge, beyond the body

# Handlers of this file (the conftest ones are reached through ``kit``).
RELEASED_NOW = 0x0E0C0301  # returns a released memoryview in its first step
RELEASED_LATER = 0x0E0C0302  # the same, after waiting once
SEES_CALL = 0x0E0C0303  # a plain function: what current_call says while it is called
SETS_VAR = 0x0E0C0304  # a plain function that sets _var, then returns a coroutine
READS_VAR = 0x0E0C0305  # answers _var's value in its context
CANCELLED_RESULT = 0x0E0C0306  # a plain function reading a cancelled future's result
RELEASES_REQUEST = 0x0E0C0307  # releases its request view, then returns or raises
SETS_VAR_AND_WAITS = 0x0E0C0308  # sets _var, waits on state.gate
ANYIO_CANCEL = 0x0E0C0309  # an anyio cancel scope cancelled in the first step
SELF_CANCEL = 0x0E0C030A  # cancels its own task, then returns ("return") or awaits
ASYNCIO_SCOPES = 0x0E0C030B  # asyncio.timeout / TaskGroup, entered in the first step
CANCELLED_FUTURE = 0x0E0C030C  # a plain function returning a cancelled future

_var: contextvars.ContextVar[str] = contextvars.ContextVar("review_var")


def _install(server: smf.Server) -> dict[str, Any]:
    """Add this file's handlers to ``server``; returns what they saw."""
    seen: dict[str, Any] = {}
    state = server.state  # type: ignore[attr-defined]

    async def released_now(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        with memoryview(b"reply") as view:
            return view  # released on the way out: a handler bug, a 500 naming it

    async def released_later(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        await asyncio.sleep(0)
        seen["later"] = True
        with memoryview(b"reply") as view:
            return view

    def sees_call(ctx: smf.CallContext, body: memoryview) -> Any:
        # A plain-function handler (a decorator's wrapper, say) runs when called.
        seen["call"] = current_call.get()

        async def run() -> smf.Payload:
            return b"ok"

        return run()

    def sets_var(ctx: smf.CallContext, body: memoryview) -> Any:
        _var.set(bytes(body).decode())

        async def run() -> smf.Payload:
            return b"set"

        return run()

    async def reads_var(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        return _var.get("unset").encode()

    loop = asyncio.get_running_loop()
    cancelled: asyncio.Future[bytes] = loop.create_future()
    cancelled.cancel()

    def cancelled_result(ctx: smf.CallContext, body: memoryview) -> Any:
        return cancelled.result()  # raises CancelledError, synchronously

    async def releases_request(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        data = bytes(body)
        body.release()  # done with the request: free it early
        if data == b"raise":
            raise smf.BadRequest("no")
        return data

    async def sets_var_and_waits(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        _var.set("from another call")
        state.entered += 1
        await state.gate.wait()
        return b"waited"

    async def anyio_cancel(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        anyio = pytest.importorskip("anyio")
        if bytes(body) == b"move_on_after":
            with anyio.move_on_after(0):
                await anyio.sleep(30)
            return b"moved on"
        with anyio.CancelScope() as scope:
            scope.cancel()
            await anyio.sleep(30)
        return b"cancelled"

    async def self_cancel(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        if bytes(body) == b"return":
            return b"returned"  # never waited: the cancel has nothing to interrupt
        await asyncio.sleep(0)
        return b"not reached"

    async def asyncio_scopes(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        if bytes(body) == b"timeout":
            try:
                async with asyncio.timeout(0):
                    await asyncio.sleep(30)
            except TimeoutError:
                return b"timed out"
            return b"not reached"

        async def child() -> None:
            raise KeyError("child")

        outcome = b"not reached"
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(child())
                await asyncio.sleep(30)
        except* KeyError:
            outcome = b"group failed"
        return outcome

    def cancelled_future(ctx: smf.CallContext, body: memoryview) -> Any:
        future = loop.create_future()
        future.cancel()
        return future

    for wire_id, handler in {
        RELEASED_NOW: released_now,
        RELEASED_LATER: released_later,
        SEES_CALL: sees_call,
        SETS_VAR: sets_var,
        READS_VAR: reads_var,
        CANCELLED_RESULT: cancelled_result,
        RELEASES_REQUEST: releases_request,
        SETS_VAR_AND_WAITS: sets_var_and_waits,
        ANYIO_CANCEL: anyio_cancel,
        SELF_CANCEL: self_cancel,
        ASYNCIO_SCOPES: asyncio_scopes,
        CANCELLED_FUTURE: cancelled_future,
    }.items():
        server.add_handler(wire_id, handler, f"Review.{handler.__name__}")
    return seen


@pytest.fixture
async def served(make_server: Any, make_client: Any, kit: Any) -> Any:
    """A server with this file's handlers (``server.tasks`` tracked, so a handler task
    that failed never logs "exception never retrieved"), and a client."""
    server = await make_server()
    server.tasks = kit.TrackingSet()
    seen = _install(server)
    client = await make_client("127.0.0.1", server.port, timeout=5.0)
    yield server, client, seen
    server.tasks.retrieve_exceptions()


async def _only_connection(server: smf.Server, kit: Any) -> Any:
    await kit.wait_until(lambda: len(server.connections) == 1, what="one connection")
    (conn,) = server.connections
    return conn


async def _settled(server: smf.Server, kit: Any) -> None:
    """Wait until no handler runs and the budget is back to 0 (fails if never)."""
    await kit.wait_until(
        lambda: not server.tasks and server.budget.used == 0,
        what=f"tasks={server.tasks!r} budget.used={server.budget.used}",
    )
    assert all(not conn.in_flight for conn in server.connections)


# =========================================================================== bugs


async def test_released_memoryview_result_is_a_500_naming_the_problem(served: Any) -> None:
    """A handler returning a released view gets a 500 that says so (as a non-contiguous
    one does, and as it did at f4d2803). The inline answer (3.11) reads
    ``value.c_contiguous`` outside any handler-error handling, and on 3.12 ``_answer``
    raises inside the eager task: both land in event_received's "bug in smf" branch,
    which answers "internal error in smf server", logs it as an smf bug, and neither
    records the call nor releases its request view."""
    _, client, _ = served
    with pytest.raises(smf.InternalError, match="released"):
        await client.call(RELEASED_NOW, b"x")


async def test_released_memoryview_after_a_wait_is_answered_and_leaves_nothing_behind(
    served: Any, kit: Any
) -> None:
    """The same result from a handler that waited first: ``_answer`` calls ``_outcome``
    before its try/finally, so the ValueError escapes it and ends the handler's task.
    No reply is sent (the client times out), and the task stays in ``in_flight`` and
    ``server.tasks`` with its budget charge forever: it counts against
    ``max_in_flight_per_connection``/``max_concurrent_handlers``, keeps the connection
    from idling out, and makes ``Server.stop`` spin on it for its whole grace."""
    server, client, seen = served
    call = asyncio.create_task(client.call(RELEASED_LATER, b"x"))
    await kit.wait_until(lambda: "later" in seen, what="the handler to finish")
    await kit.wait_until(lambda: all(t.done() for t in server.tasks), what="its task")
    try:
        assert not server.tasks, "the finished handler's task is still counted"
        assert server.budget.used == 0, "its budget charge was never refunded"
        async with asyncio.timeout(5.0):
            with pytest.raises(smf.InternalError, match="released"):
                await call
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, smf.SmfError):
            await call


async def test_a_plain_function_handler_is_called_inside_its_calls_context(
    served: Any,
) -> None:
    """``handler(ctx, body)`` is called before ``run_eager`` enters the call's context,
    so a plain-function handler (or a sync decorator's wrapper) runs in the protocol
    callback's context: ``current_call`` is not its call (None, or the call of whichever
    handler's task resumed the pull), so a task it creates there (and any client call
    made in that task) loses the caller's deadline and trace. At f4d2803 it was called
    inside ``_serve``, in the call's own context."""
    _, client, seen = served
    assert bytes(await client.call(SEES_CALL, b"x")) == b"ok"
    got = seen["call"]
    assert got is not None and got.wire_id == SEES_CALL, f"current_call was {got!r}"


async def test_a_contextvar_set_by_a_plain_function_handler_stays_in_its_call(
    served: Any, make_client: Any
) -> None:
    """Same cause, worse effect: what such a handler sets lands in the context the
    server's protocol callbacks run in, which every later ``copy_context()`` copies, so
    it leaks into every later call on every connection (a request id, a user...)."""
    server, client, _ = served
    assert bytes(await client.call(SETS_VAR, b"alice")) == b"set"
    other = await make_client("127.0.0.1", server.port, timeout=5.0)
    assert bytes(await other.call(READS_VAR, b"x")) == b"unset"


async def test_a_plain_function_handler_raising_cancelled_error_is_a_503(
    served: Any,
) -> None:
    """A plain-function handler whose call raises CancelledError (here: reading a
    cancelled future's result). event_received wraps only ``Exception`` from the call
    in ``_raising``; a CancelledError escapes event_received, _pull and buffer_updated,
    and uvloop aborts the connection: this call and every other call in flight on it
    are lost. At f4d2803, ``_serve`` answered it 503 like any cancelled handler."""
    _, client, _ = served
    with pytest.raises(smf.Unavailable):
        await client.call(CANCELLED_RESULT, b"x")
    assert client.connected
    assert bytes(await client.call(READS_VAR, b"x")) == b"unset"


@pytest.mark.parametrize("outcome", ["return", "raise"])
async def test_a_handler_that_releases_its_request_gets_exactly_one_reply(
    served: Any, kit: Any, outcome: str
) -> None:
    """A handler may release its request view once it has copied it. ``_answer`` then
    reads ``frame.body.nbytes`` for the metrics after replying: ValueError, escaping
    run_eager into event_received's "bug in smf" branch, which answers the same session
    a second time (500). The inline path (3.11, returned in the first step) uses the
    size read earlier and is fine; 3.12 (every plain call goes through ``_answer``) and
    a first-step error on 3.11 send two replies, and the call is never recorded. (The
    same read is in ``_serve`` at f4d2803.)"""
    server, _, _ = served
    reader, writer = await kit.open_raw(server)
    try:
        writer.write(kit.frame(1, RELEASES_REQUEST, outcome.encode()))
        first = await kit.read_frame(reader)
        assert first.session == 1
        assert first.meta == (200 if outcome == "return" else 400)
        writer.write(kit.frame(2, kit.ECHO, b"next"))
        second = await kit.read_frame(reader)
        assert (second.session, second.meta, second.body) == (2, 200, b"next"), (
            "a second reply to session 1"
        )
        assert server.methods.get(RELEASES_REQUEST).calls == 1
    finally:
        await kit.close_writer(writer)


async def test_contextvars_do_not_leak_into_requests_pulled_when_a_handler_ends(
    make_server: Any, kit: Any
) -> None:
    """Re-entrancy: a handler that waited ends inside its own task's last step, and
    ``_finish`` resumes pulling right there, so the requests that were held back are
    dispatched inside that task's context: ``copy_context()`` in event_received copies
    what the finished handler set (only ``current_call`` is overwritten). Also true at
    f4d2803 (``_serve``), and through ``ByteBudget.refund`` for other connections. A
    per-connection base context (copied at connection_made) would isolate calls."""
    server = await make_server(max_in_flight_per_connection=1)
    _install(server)
    reader, writer = await kit.open_raw(server)
    try:
        # One write: the second request waits in the buffer while the first runs.
        writer.write(kit.frame(1, SETS_VAR_AND_WAITS, b"x") + kit.frame(2, READS_VAR, b"x"))
        conn = await _only_connection(server, kit)
        await kit.wait_until(lambda: server.state.entered == 1, what="the first handler")
        await kit.wait_until(lambda: conn.protocol.buffered > 0, what="the second request")
        server.state.gate.set()
        frames = {f.session: f.body for f in await kit.read_frames(reader, 2)}
        assert frames == {1: b"waited", 2: b"unset"}
    finally:
        await kit.close_writer(writer)


@pytest.mark.parametrize("how", ["move_on_after", "cancel"])
async def test_anyio_cancel_scope_cancelled_in_the_first_step(served: Any, how: str) -> None:
    """anyio cancel scopes work on 3.12 but not on 3.11: cancelling one while the
    handler runs its first step (a deadline already past, ``scope.cancel()``) makes
    anyio's ``_deliver_cancellation`` read ``task._must_cancel`` on the current task,
    the ``EagerTask``, whose ``__getattr__`` raises AttributeError until a real task
    exists: a 500. (``EagerTask`` predates this change; run_eager now steps every plain
    handler with it.) It could answer ``_must_cancel``/``_fut_waiter`` itself."""
    pytest.importorskip("anyio")
    _, client, _ = served
    expected = b"moved on" if how == "move_on_after" else b"cancelled"
    assert bytes(await client.call(ANYIO_CANCEL, how.encode())) == expected


async def test_client_holds_no_reply_once_its_calls_have_returned(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    """A reply body is "valid while you hold it": once a caller drops it, the receive
    buffer under it may be reused or freed. The deadline queue now drops finished
    calls only when the next call is queued (or when its timer fires, ``timeout``
    later), so after a burst each finished call's future, its Frame and the reply view
    stay referenced: here 32 x 256 KiB held by an idle client (at f4d2803: none)."""
    server = await make_server()
    client = await make_client("127.0.0.1", server.port)  # default timeout: 10 s
    size = 256 * 1024

    async def one() -> int:
        body = await client.call(kit.SIZED, b"%d" % size)
        return body.nbytes  # and the body is dropped

    assert await asyncio.gather(*(one() for _ in range(32))) == [size] * 32
    gc.collect()
    held = 0
    for obj in gc.get_objects():
        if type(obj) is Frame:
            with contextlib.suppress(ValueError):  # a released view: holds nothing
                if obj.body.nbytes == size:
                    held += obj.body.nbytes
    assert held == 0, f"{held // 1024} KiB of replies still referenced after the calls"


# =========================================================================== pins


async def test_handlers_ending_inside_a_resumed_pull_are_all_answered(
    make_server: Any, kit: Any
) -> None:
    """max_in_flight_per_connection=1 and pipelined requests: each handler that waits
    holds the rest back, and its end (in its task's last step) resumes the pull, which
    answers inline, raises, and starts the next waiting handler, nested in that step."""
    server = await make_server(max_in_flight_per_connection=1)
    reader, writer = await kit.open_raw(server)
    requests = [
        (kit.BLOCK, b"x", 200, b"released"),
        (kit.ECHO, b"two", 200, b"two"),
        (kit.FAIL, b"x", 500, None),
        (kit.SLEEP, b"0", 200, b"0"),  # waits one loop turn, inside the resumed pull
        (kit.WRONG_TYPE, b"x", 500, None),
        (kit.SLEEP, b"0", 200, b"0"),
        (kit.ECHO, b"seven", 200, b"seven"),
    ]
    try:
        writer.write(b"".join(kit.frame(i + 1, r[0], r[1]) for i, r in enumerate(requests)))
        await kit.wait_until(lambda: server.state.entered == 1, what="BLOCK to start")
        assert server.stats.requests == 1  # the rest wait in the buffer
        server.state.gate.set()
        frames = {f.session: f for f in await kit.read_frames(reader, len(requests))}
        for session, (_, _, status, body) in enumerate(requests, 1):
            assert frames[session].meta == status
            if body is not None:
                assert frames[session].body == body
        await _settled(server, kit)
    finally:
        await kit.close_writer(writer)


async def test_connection_lost_while_handlers_wait_cancels_and_refunds_them(
    make_server: Any, kit: Any
) -> None:
    server = await make_server()
    reader, writer = await kit.open_raw(server)
    writer.write(b"".join(kit.frame(s, kit.BLOCK, b"abcd") for s in (1, 2, 3)))
    writer.write(kit.frame(4, kit.ECHO, b"inline"))
    assert (await kit.read_frame(reader)).body == b"inline"
    await kit.wait_until(lambda: server.state.entered == 3, what="three waiting handlers")
    assert server.budget.used == 3 * (COST + 4)  # charged while they wait, not the echo
    assert len(server.tasks) == 3
    await kit.close_writer(writer)
    await kit.wait_until(lambda: not server.connections, what="the connection to close")
    await _settled(server, kit)
    assert server.state.cancelled == 3


async def test_graceful_stop_lets_a_waiting_plain_handler_answer(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server()
    client = await make_client("127.0.0.1", server.port, timeout=10.0)
    call = asyncio.create_task(client.call(kit.BLOCK, b"x"))
    await kit.wait_until(lambda: server.state.entered == 1, what="the handler to start")
    stopping = asyncio.create_task(server.stop(grace=30.0))
    await kit.wait_until(lambda: server.closing, what="stop to begin")
    with pytest.raises(smf.Unavailable, match="shutting down"):
        await client.call(kit.ECHO, b"late")  # a new request on an open connection
    assert not call.done()
    server.state.gate.set()
    assert bytes(await call) == b"released"
    async with asyncio.timeout(10.0):
        await stopping
    assert server.state.finished == 1


async def test_stop_without_grace_answers_waiting_plain_handlers_503(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server()
    client = await make_client("127.0.0.1", server.port, timeout=10.0)
    call = asyncio.create_task(client.call(kit.BLOCK, b"x"))
    await kit.wait_until(lambda: server.state.entered == 1, what="the handler to start")
    await server.stop(grace=0)
    with pytest.raises(smf.Unavailable, match="cancelled"):
        await call
    assert server.state.cancelled == 1
    assert not server.tasks and server.budget.used == 0


@pytest.mark.parametrize(("body", "expected"), [(b"return", 200), (b"await", 503)])
async def test_a_handler_that_cancels_itself(
    served: Any, kit: Any, body: bytes, expected: int
) -> None:
    """Self-cancel: ignored if the handler returns without waiting, a 503 at its next
    wait otherwise (3.11: counted on the EagerTask, handed to the real task)."""
    server, client, _ = served
    if expected == 200:
        assert bytes(await client.call(SELF_CANCEL, body)) == b"returned"
    else:
        with pytest.raises(smf.Unavailable):
            await client.call(SELF_CANCEL, body)
    await _settled(server, kit)


@pytest.mark.parametrize(
    ("body", "expected"), [(b"timeout", b"timed out"), (b"g", b"group failed")]
)
async def test_asyncio_timeout_and_taskgroup_inside_a_plain_handler(
    served: Any, kit: Any, body: bytes, expected: bytes
) -> None:
    server, client, _ = served
    assert bytes(await client.call(ASYNCIO_SCOPES, body)) == expected
    await _settled(server, kit)


async def test_a_handler_returning_a_cancelled_future_is_a_503(served: Any, kit: Any) -> None:
    server, client, _ = served
    with pytest.raises(smf.Unavailable):
        await client.call(CANCELLED_FUTURE, b"x")
    assert bytes(await client.call(kit.ECHO, b"after")) == b"after"
    await _settled(server, kit)


async def test_budget_spent_by_waiting_handlers_pauses_their_connection_only(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    """Waiting handlers spend the budget and pause their connection; a connection whose
    calls finish in their first step is still served (inline calls are not charged)."""
    server = await make_server(max_buffered_bytes=8 * 1024)
    hog_reader, hog_writer = await kit.open_raw(server)
    other = await make_client("127.0.0.1", server.port, timeout=10.0)
    body = b"h" * 2000
    try:
        hog_writer.write(b"".join(kit.frame(s, kit.HOLD, body) for s in range(1, 11)))
        await kit.wait_until(lambda: server.budget.exhausted, what="the budget to run out")
        entered = server.state.entered
        assert entered < 10  # the hog is paused
        for i in range(20):
            assert bytes(await other.call(kit.ECHO, b"%d" % i)) == b"%d" % i
        assert server.state.entered == entered
        server.state.gate.set()
        frames = await kit.read_frames(hog_reader, 10)
        assert sorted(f.session for f in frames) == list(range(1, 11))
        assert all(f.body == body for f in frames)
        await _settled(server, kit)
    finally:
        await kit.close_writer(hog_writer)


async def test_idle_sweep_spares_a_connection_whose_call_waits_longer(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    """Idleness is now frames between sweeps; a call in flight keeps its connection
    open however long it waits. Two silent connections, opened one after the other,
    idle out meanwhile (so at least two idle timeouts pass)."""
    server = await make_server(idle_timeout=0.2)
    client = await make_client("127.0.0.1", server.port, timeout=30.0)
    call = asyncio.create_task(client.call(kit.BLOCK, b"x"))
    await kit.wait_until(lambda: server.state.entered == 1, what="the handler to start")
    for n in (1, 2):
        reader, writer = await kit.open_raw(server)
        await kit.expect_closed_silently(reader)
        await kit.close_writer(writer)
        assert server.stats.idle_closed == n
    assert client.connected
    server.state.gate.set()
    assert bytes(await call) == b"released"
