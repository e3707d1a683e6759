"""Eager start (``smf.eager.run_eager``, stepped by hand on 3.11, asyncio's eager
tasks on 3.12+) and handlers of every shape through a real server on 127.0.0.1: plain
functions, non-coroutine awaitables, synchronous errors, results that cannot be sent;
the byte budget charged only while a handler waits; connections freed without the
garbage collector; the idle sweep; and the client's deadlines staying bounded.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from collections.abc import Awaitable, Coroutine
from contextvars import copy_context
from typing import Any

import pytest

import smf
from smf.eager import run_eager, task_of
from smf.wire import HEADER_SIZE, Frame, FrameDecoder, encode_frame

PY311 = sys.version_info < (3, 12)


class Ended:
    """What ``then`` was called with, and which task was current when it was."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, BaseException | None, tuple[Any, ...]]] = []
        self.current: list[Any] = []

    def __call__(self, result: Any, error: BaseException | None, *args: Any) -> None:
        self.calls.append((result, error, args))
        self.current.append(asyncio.current_task())


def run(coro: Coroutine[Any, Any, Any], then: Ended) -> tuple[bool, Any]:
    loop = asyncio.get_running_loop()
    return run_eager(loop, coro, copy_context(), then, "a", 1)


# =========================================================================== run_eager


@pytest.mark.skipif(not PY311, reason="the 3.11 path steps coroutines through drivers")
async def test_drivers_are_reused_only_when_their_coroutine_returned() -> None:
    # run_eager (3.11) steps each coroutine inside a driver generator, so that a return
    # is not a StopIteration; a driver goes back to the pool only once its coroutine
    # returned, and a coroutine started inside another's first step gets its own.
    from smf import eager

    async def quick(n: int) -> int:
        return n

    async def boom() -> int:
        raise KeyError("boom")

    async def nested() -> int:
        done, value = run(quick(41), Ended())
        assert done
        return int(value) + 1

    async def waits() -> int:
        await asyncio.sleep(0)
        return 7

    eager._idle_drivers.clear()
    for n in range(5):
        assert run(quick(n), Ended()) == (True, n)
    assert len(eager._idle_drivers) == 1  # one driver served them all

    assert run(nested(), Ended()) == (True, 42)
    assert len(eager._idle_drivers) == 2  # the nested call needed a second one

    ended = Ended()
    assert run(boom(), ended) == (False, None)
    assert isinstance(ended.calls[0][1], KeyError)
    assert len(eager._idle_drivers) == 1  # the one that raised is finished, not reused

    ended = Ended()
    done, handle = run(waits(), ended)
    assert not done and len(eager._idle_drivers) == 0
    await task_of(handle)
    assert ended.calls == [(7, None, ("a", 1))]
    assert len(eager._idle_drivers) == 1  # back once its coroutine returned
    assert run(quick(9), Ended()) == (True, 9)


@pytest.mark.skipif(not PY311, reason="the 3.11 path steps coroutines through drivers")
async def test_idle_drivers_keep_no_result_and_their_pool_is_bounded() -> None:
    from smf import eager

    class Result:
        pass

    async def quick() -> Result:
        return Result()

    async def waits() -> Result:
        await asyncio.sleep(0)
        return Result()

    eager._idle_drivers.clear()
    done, value = run(quick(), Ended())
    assert done
    gone = weakref.ref(value)
    del value
    assert gone() is None  # the driver, idle in the pool, does not hold it

    ended = Ended()
    handles = [run(waits(), ended)[1] for _ in range(eager._MAX_IDLE_DRIVERS + 50)]
    await asyncio.gather(*(task_of(h) for h in handles))
    assert len(ended.calls) == eager._MAX_IDLE_DRIVERS + 50
    assert len(eager._idle_drivers) == eager._MAX_IDLE_DRIVERS  # the rest were dropped
    results = [weakref.ref(result) for result, _, _ in ended.calls]
    ended.calls.clear()
    assert all(r() is None for r in results)


async def test_a_coroutine_that_returns_at_once_is_answered_by_the_caller() -> None:
    async def quick() -> bytes:
        return b"now"

    then = Ended()
    done, value = run(quick(), then)
    if PY311:
        # The result comes back inline; then is not called.
        assert (done, value) == (True, b"now")
        assert then.calls == []
    else:
        # asyncio's eager task ran the coroutine that calls then.
        assert (done, value) == (False, None)
        assert then.calls == [(b"now", None, ("a", 1))]


async def test_a_coroutine_that_waits_gets_a_task_and_then_sees_its_result() -> None:
    gate = asyncio.Event()

    async def slow() -> bytes:
        await gate.wait()
        return b"later"

    then = Ended()
    done, handle = run(slow(), then)
    assert not done and handle is not None
    task = task_of(handle)
    assert isinstance(task, asyncio.Task)
    assert then.calls == []
    gate.set()
    await task
    assert then.calls == [(b"later", None, ("a", 1))]
    # then runs inside the coroutine's own last step: its task is current.
    assert then.current == [handle]


async def test_an_error_in_the_first_step_goes_to_then() -> None:
    async def broken() -> bytes:
        raise ValueError("first step")

    then = Ended()
    assert run(broken(), then) == (False, None)
    ((result, error, args),) = then.calls
    assert result is None and isinstance(error, ValueError) and args == ("a", 1)


async def test_an_error_after_a_wait_goes_to_then() -> None:
    async def broken_later() -> bytes:
        await asyncio.sleep(0)
        raise KeyError("later")

    then = Ended()
    done, handle = run(broken_later(), then)
    assert not done
    await task_of(handle)  # the task itself ends normally: then took the error
    ((_, error, _),) = then.calls
    assert isinstance(error, KeyError)


async def test_a_self_cancel_in_the_first_step_reaches_then_as_cancelled_error() -> None:
    async def self_cancel() -> bytes:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)
        return b"not reached"

    then = Ended()
    done, handle = run(self_cancel(), then)
    assert not done and handle is not None
    await asyncio.wait([task_of(handle)])
    ((result, error, _),) = then.calls
    assert result is None and isinstance(error, asyncio.CancelledError)


async def test_base_exceptions_other_than_cancel_propagate() -> None:
    class Stop(BaseException):
        pass

    async def stopping() -> bytes:
        raise Stop

    then = Ended()
    if PY311:
        with pytest.raises(Stop):
            run(stopping(), then)
    else:
        # In asyncio's task it propagates as the task's own failure.
        with pytest.raises(Stop):
            run(stopping(), then)
    assert then.calls == []


# =========================================================================== server

PLAIN_FN = 0x0E0C0100  # a plain function returning an awaitable (a Future)
RAISES_AT_CALL = 0x0E0C0101  # a plain function that raises before returning anything
NOT_AWAITABLE = 0x0E0C0102  # a plain function returning bytes
BUDGET_NOW = 0x0E0C0103  # reports the budget in use during its first step
BUDGET_WAIT = 0x0E0C0104  # waits on a gate, reporting the budget while it waits


def _add_shapes(server: smf.Server, seen: dict[str, int], gate: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def plain_fn(ctx: smf.CallContext, body: memoryview) -> Awaitable[smf.Payload]:
        future: asyncio.Future[smf.Payload] = loop.create_future()
        loop.call_soon(future.set_result, b"from a future:" + bytes(body))
        return future

    def raises_at_call(ctx: smf.CallContext, body: memoryview) -> Awaitable[smf.Payload]:
        raise ValueError("raised before any await")

    def not_awaitable(ctx: smf.CallContext, body: memoryview) -> Any:
        return b"plain bytes"

    async def budget_now(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        seen["now"] = server.budget.used
        return b"ok"

    async def budget_wait(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        await asyncio.sleep(0)
        seen["waiting"] = server.budget.used
        await gate.wait()
        return bytes(body)

    server.add_handler(PLAIN_FN, plain_fn, "T.plain_fn")
    server.add_handler(RAISES_AT_CALL, raises_at_call, "T.raises_at_call")
    server.add_handler(NOT_AWAITABLE, not_awaitable, "T.not_awaitable")
    server.add_handler(BUDGET_NOW, budget_now, "T.budget_now")
    server.add_handler(BUDGET_WAIT, budget_wait, "T.budget_wait")


@pytest.fixture
async def shapes(make_server: Any, make_client: Any) -> Any:
    server = await make_server()
    seen: dict[str, int] = {}
    gate = asyncio.Event()
    _add_shapes(server, seen, gate)
    client = await make_client("127.0.0.1", server.port)
    return server, client, seen, gate


async def test_a_handler_returning_any_awaitable_is_served(shapes: Any) -> None:
    _, client, _, _ = shapes
    assert bytes(await client.call(PLAIN_FN, b"x")) == b"from a future:x"


async def test_a_handler_that_raises_when_called_is_a_500_naming_the_error(
    shapes: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server, client, _, _ = shapes
    with pytest.raises(smf.InternalError, match="ValueError: raised before any await"):
        await client.call(RAISES_AT_CALL, b"x")
    assert "handler T.raises_at_call raised" in caplog.text  # the method, by name
    assert not server.tasks  # it never had one
    assert bytes(await client.call(PLAIN_FN, b"y")) == b"from a future:y"


async def test_a_handler_that_is_not_awaitable_is_a_500_naming_the_problem(shapes: Any) -> None:
    _, client, _, _ = shapes
    with pytest.raises(smf.InternalError, match="await"):
        await client.call(NOT_AWAITABLE, b"x")


async def test_the_budget_counts_a_request_only_while_its_handler_waits(shapes: Any) -> None:
    server, client, seen, gate = shapes
    assert bytes(await client.call(BUDGET_NOW, b"abc")) == b"ok"
    assert seen["now"] == 0  # answered inside the read: it never held memory past it
    assert server.budget.used == 0
    waiting = asyncio.create_task(client.call(BUDGET_WAIT, b"w" * 100))
    kit_cost = HEADER_SIZE + 100 + smf.server.REQUEST_OVERHEAD
    async with asyncio.timeout(5):
        while "waiting" not in seen:
            await asyncio.sleep(0.001)
    assert seen["waiting"] == kit_cost
    assert len(server.tasks) == 1
    gate.set()
    assert bytes(await waiting) == b"w" * 100
    async with asyncio.timeout(5):
        while server.tasks or server.budget.used:
            await asyncio.sleep(0.001)
    assert server.budget.used == 0


async def test_closed_server_connections_are_freed_without_the_garbage_collector(
    make_server: Any, kit: Any
) -> None:
    """A server connection is freed by reference counting when it closes: a reference
    cycle would keep it (and its 256 KiB receive buffer) until a collection, which
    the hostile-connections memory test once caught. (A client's connection and the
    ``Client`` refer to each other, one pair per client, and go together.)"""
    server = await make_server()
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            client = smf.Client("127.0.0.1", server.port)
            await client.connect()
            assert bytes(await client.call(kit.ECHO, b"hello")) == b"hello"
            await kit.wait_until(lambda: len(server.connections) == 1, what="one connection")
            server_side = weakref.ref(next(iter(server.connections)))
            await client.close()
            await kit.wait_until(lambda: not server.connections, what="the server side closing")
            await asyncio.sleep(0.01)  # let the loop drop its own references
            assert server_side() is None, "the server connection outlived its close"
    finally:
        gc.enable()


async def test_idle_sweep_keeps_a_connection_whose_calls_keep_coming(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    """Idleness is judged by frames arriving between sweeps (no clock read per read):
    a connection calling more often than ``idle_timeout`` stays, a silent one goes."""
    idle_timeout = 0.3
    server = await make_server(idle_timeout=idle_timeout)
    busy = await make_client("127.0.0.1", server.port)
    _, silent_writer = await kit.open_raw(server)
    for _ in range(12):  # 1.2 s: four idle timeouts
        assert bytes(await busy.call(kit.ECHO, b"tick")) == b"tick"
        await asyncio.sleep(idle_timeout / 3)
    assert busy.connected
    assert server.stats.idle_closed == 1  # the silent one
    await kit.close_writer(silent_writer)


async def test_sequential_calls_leave_one_entry_in_the_deadline_queue(
    client: smf.Client, kit: Any
) -> None:
    """Finished calls leave the shared deadline queue when the next call is queued:
    it never grows with sequential calls (nor pins their responses for long)."""
    for _ in range(100):
        await client.call(kit.ECHO, b"x")
        assert len(client._deadlines()) <= 1


class _HugeStatus(smf.RpcError):
    status = 2**40  # no header can carry it


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for this error")


@pytest.mark.parametrize("error", [_HugeStatus("too big"), _Unprintable()], ids=["status", "str"])
async def test_an_error_that_cannot_be_answered_as_raised_is_a_500(
    make_server: Any, make_client: Any, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """Every call is answered: an error with a status the header cannot carry, or one
    whose text cannot be made, after a wait too, gives a 500 and leaves no task."""
    server = await make_server()

    async def raises_now(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        raise error

    async def raises_later(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        await asyncio.sleep(0)
        raise error

    server.add_handler(0x0E0C0110, raises_now, "T.raises_now")
    server.add_handler(0x0E0C0111, raises_later, "T.raises_later")
    client = await make_client("127.0.0.1", server.port)
    for wire_id in (0x0E0C0110, 0x0E0C0111):
        with pytest.raises(smf.InternalError):
            await client.call(wire_id, b"x")
    assert not server.tasks and server.budget.used == 0
    assert bytes(await client.call(0x0E0C0001, b"still served")) == b"still served"


def test_max_in_flight_per_connection_must_allow_one() -> None:
    # can_pull is consulted only while something is in flight: a cap of 0 could never
    # be honoured, so it is refused up front.
    with pytest.raises(ValueError, match="max_in_flight_per_connection"):
        smf.Server(max_in_flight_per_connection=0)


def test_decoded_frame_is_a_whole_frame_object() -> None:
    # The decoder builds frames without calling Frame.__init__ (a Python frame per
    # request): they must still be complete, hash and compare by identity, and be
    # assignable, as frames built the usual way are.
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(7, 9, b"abc") * 2)
    frame, twin = decoder.next_event(), decoder.next_event()
    assert isinstance(frame, Frame) and isinstance(twin, Frame)
    assert (frame.compression, frame.flags, frame.session, frame.meta) == (0, 0, 7, 9)
    assert bytes(frame.body) == b"abc" and frame.size == 3
    assert repr(frame) == "Frame(session=7, meta=9, size=3, compression=0, flags=0)"
    assert frame != twin and len({frame, twin}) == 2
    frame.session = 8
    assert frame.session == 8
