"""Eager start (``smf.eager``): a coroutine's first step runs inline, and a task carries
it on only if it waits.

What is checked: the first step runs before any loop turn and without a task; one task
handle is current (``asyncio.current_task()``) from the coroutine's first step to its end;
contextvars, ``asyncio.timeout``, ``TaskGroup`` and cancellation behave as they do in a
task; the caller's current task is restored; nesting works. The async tests run on the
loop conftest gives them (uvloop); ``test_scenario_on_each_loop`` runs a selection of them
again on both a plain asyncio loop and a uvloop loop.

A cancel that reaches the carrying task before its first step (the coroutine cancelling
itself in its first step, an ``asyncio.timeout`` that expires at once, ``handle.cancel()``
right after ``start_eager``) must still reach the coroutine where it waits: these tests
found that the first 3.11 version, a generator, dropped it. It must also behave as
``Task.cancel`` on a waiting task does, which the tests compared with a plain task
("control-task") check; they found three more differences in an earlier 3.11 version
(cancel count, cancel message, not waiting for the awaited task), since fixed.

Waits that should take a few loop turns go through ``finish``/``done``, which fail after
``HANG_GUARD`` seconds instead of hanging (no timing is asserted).
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

from smf.eager import TaskHandle, start_eager, task_of

T = TypeVar("T")

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("smf_test_eager_var", default="unset")


def start(coro: Coroutine[Any, Any, None]) -> Any:
    """``start_eager`` on the running loop, in a copy of the current context: None if
    the coroutine finished, else its handle (typed Any, as ``TaskHandle`` is)."""
    return start_eager(asyncio.get_running_loop(), coro, contextvars.copy_context())


def real_task(handle: TaskHandle | None) -> asyncio.Task[None]:
    """The awaitable task behind a handle that must exist."""
    assert handle is not None, "the coroutine finished in its first step"
    task = task_of(handle)
    assert isinstance(task, asyncio.Task)
    return task


HANG_GUARD = 60.0
"""Seconds before a wait that should take a few loop turns is reported as hung: a guard
against a broken eager start hanging the run (pytest-timeout cannot interrupt uvloop),
not a time limit on anything measured."""


async def finish(*tasks: asyncio.Future[Any]) -> None:
    """Wait until each of ``tasks`` is done, whatever its outcome; fail if one never is."""
    _, pending = await asyncio.wait(tasks, timeout=HANG_GUARD)
    assert not pending, f"hung: {pending}"


async def done(task: asyncio.Future[T]) -> T:
    """``await task``, but fail instead of hanging if it never finishes."""
    await finish(task)
    return task.result()


def forever() -> asyncio.Future[None]:
    """A future nobody completes."""
    return asyncio.get_running_loop().create_future()


# --------------------------------------------------------------------------- first step


async def test_coroutine_that_never_awaits_finishes_inline_and_returns_none() -> None:
    loop = asyncio.get_running_loop()
    turns: list[str] = []
    loop.call_soon(turns.append, "turn")  # runs on the next loop turn, not before
    before = asyncio.all_tasks()
    seen: list[Any] = []

    async def handler() -> None:
        seen.append(list(turns))
        seen.append(asyncio.current_task())
        seen.append(set(asyncio.all_tasks()))

    assert start(handler()) is None
    assert turns == []  # no loop turn happened
    assert len(seen) == 3
    assert seen[0] == []
    assert seen[1] is not None
    assert seen[1] is not asyncio.current_task()
    if sys.version_info < (3, 12):  # 3.12+ makes an (eager) task, already done
        assert seen[2] == before  # no task was made for it
    assert asyncio.all_tasks() == before
    assert seen[1].done()
    await asyncio.sleep(0)
    assert turns == ["turn"]


async def test_coroutine_that_waits_returns_a_handle_and_finishes_later() -> None:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    steps: list[Any] = []

    async def handler() -> None:
        steps.append("before")
        steps.append(await fut)
        steps.append("after")

    handle = start(handler())
    assert handle is not None
    assert steps == ["before"]
    assert not handle.done()
    task = real_task(handle)
    await asyncio.sleep(0)
    assert steps == ["before"]
    assert not task.done()
    fut.set_result(42)
    await done(task)
    assert steps == ["before", 42, "after"]
    assert task.done()
    assert not task.cancelled()
    assert task.result() is None
    assert handle.done()
    assert not handle.cancelled()


async def test_exception_in_first_step_propagates_from_start_eager() -> None:
    handles: list[Any] = []

    async def handler() -> None:
        handles.append(asyncio.current_task())
        raise ValueError("first step")

    me = asyncio.current_task()
    with pytest.raises(ValueError, match="first step"):
        start(handler())
    assert asyncio.current_task() is me
    assert len(handles) == 1
    assert handles[0].done()


async def test_handle_api_before_and_after_the_first_wait() -> None:
    loop = asyncio.get_running_loop()
    fut = forever()
    inside: list[Any] = []

    async def handler() -> None:
        me = asyncio.current_task()
        assert me is not None
        inside.append((me.get_loop(), me.done(), me.cancelled(), me.cancelling()))
        inside.append(isinstance(me.get_name(), str))
        await fut

    coro = handler()
    handle = start(coro)
    assert handle is not None
    assert inside == [(loop, False, False, 0), True]
    assert handle.get_coro() is coro
    assert handle.get_loop() is loop
    assert isinstance(repr(handle), str)
    callbacks: list[asyncio.Future[None]] = []
    handle.add_done_callback(callbacks.append)  # the real task's (3.11: forwarded)
    fut.set_result(None)
    await done(real_task(handle))
    await asyncio.sleep(0)
    assert callbacks == [real_task(handle)]
    assert handle.result() is None
    assert handle.exception() is None


# --------------------------------------------------------------------------- current task


async def test_current_task_is_the_handle_from_first_step_to_end() -> None:
    fut = asyncio.get_running_loop().create_future()
    seen: list[Any] = []

    async def handler() -> None:
        seen.append(asyncio.current_task())
        await fut
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())

    me = asyncio.current_task()
    handle = start(handler())
    assert handle is not None
    assert len(seen) == 1
    assert seen[0] is handle
    assert asyncio.current_task() is me
    fut.set_result(None)
    await done(real_task(handle))
    assert len(seen) == 3
    assert all(t is handle for t in seen)
    assert handle is not me
    assert asyncio.current_task() is me


# --------------------------------------------------------------------------- contextvars


async def test_contextvar_set_inside_survives_awaits_and_does_not_leak() -> None:
    token = VAR.set("caller")
    try:
        fut = asyncio.get_running_loop().create_future()
        ctx = contextvars.copy_context()
        seen: list[str] = []

        async def handler() -> None:
            seen.append(VAR.get())
            VAR.set("inside")
            await fut
            seen.append(VAR.get())
            await asyncio.sleep(0)
            seen.append(VAR.get())

        handle = start_eager(asyncio.get_running_loop(), handler(), ctx)
        assert handle is not None
        assert seen == ["caller"]
        assert VAR.get() == "caller"  # not leaked by the inline first step
        VAR.set("caller-changed")  # nor does the caller's change reach the handler
        fut.set_result(None)
        await done(real_task(handle))
        assert seen == ["caller", "inside", "inside"]
        assert VAR.get() == "caller-changed"
        assert ctx[VAR] == "inside"  # it ran in the context it was given
    finally:
        VAR.reset(token)


async def test_contextvar_set_in_first_step_of_finished_coroutine_does_not_leak() -> None:
    ctx = contextvars.copy_context()

    async def handler() -> None:
        VAR.set("inside")

    assert start_eager(asyncio.get_running_loop(), handler(), ctx) is None
    assert VAR.get() == "unset"
    assert ctx[VAR] == "inside"


# --------------------------------------------------------------------------- asyncio.timeout


@pytest.mark.parametrize("await_first", [False, True], ids=["in-first-step", "after-await"])
async def test_timeout_that_expires_raises_timeout_error_inside(await_first: bool) -> None:
    events: list[Any] = []

    async def handler() -> None:
        if await_first:
            await asyncio.sleep(0)
        try:
            async with asyncio.timeout(0.01) as cm:
                await forever()
        except TimeoutError:
            events.append(("timeout", cm.expired()))
        me = asyncio.current_task()
        assert me is not None
        events.append(("cancelling", me.cancelling()))
        await asyncio.sleep(0)  # not cancelled any more
        events.append("finished")

    handle = start(handler())
    task = real_task(handle)
    await done(task)
    assert events == [("timeout", True), ("cancelling", 0), "finished"]
    assert not task.cancelled()


@pytest.mark.parametrize("await_first", [False, True], ids=["in-first-step", "after-await"])
async def test_timeout_that_does_not_expire_exits_cleanly(await_first: bool) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    events: list[Any] = []

    async def handler() -> None:
        if await_first:
            await asyncio.sleep(0)
        async with asyncio.timeout(10) as cm:
            events.append(await fut)
        me = asyncio.current_task()
        assert me is not None
        events.append((cm.expired(), me.cancelling()))
        await asyncio.sleep(0)
        events.append("finished")

    handle = start(handler())
    task = real_task(handle)
    loop.call_soon(fut.set_result, 7)
    await done(task)
    assert events == [7, (False, 0), "finished"]
    assert not task.cancelled()


async def test_timeout_entirely_within_first_step() -> None:
    events: list[Any] = []

    async def handler() -> None:
        async with asyncio.timeout(10) as cm:
            pass
        events.append(cm.expired())
        async with asyncio.timeout(None):
            events.append("no deadline")

    assert start(handler()) is None
    assert events == [False, "no deadline"]


async def test_timeout_expiring_at_once_in_first_step_raises_timeout_error_inside() -> None:
    events: list[str] = []

    async def handler() -> None:
        try:
            async with asyncio.timeout(0):  # expires on the next loop turn
                await forever()
        except TimeoutError:
            events.append("timeout")
        events.append("finished")

    handle = start(handler())
    task = real_task(handle)
    try:
        await finish(task)
        assert events == ["timeout", "finished"]
        assert not task.cancelled()
    finally:
        handle.get_coro().close()


# --------------------------------------------------------------------------- TaskGroup


@pytest.mark.parametrize("await_first", [False, True], ids=["in-first-step", "after-await"])
async def test_taskgroup_children_succeed(await_first: bool) -> None:
    results: list[Any] = []

    async def child(n: int) -> int:
        await asyncio.sleep(0)
        results.append(("child-task", asyncio.current_task()))
        return n * 2

    async def handler() -> None:
        if await_first:
            await asyncio.sleep(0)
        me = asyncio.current_task()
        async with asyncio.TaskGroup() as tg:
            kids = [tg.create_task(child(n)) for n in range(3)]
        results.append(sorted(k.result() for k in kids))
        results.append(asyncio.current_task() is me)

    handle = start(handler())
    await done(real_task(handle))
    child_tasks = [r[1] for r in results[:3]]
    assert all(t is not handle and isinstance(t, asyncio.Task) for t in child_tasks)
    assert results[3:] == [[0, 2, 4], True]


@pytest.mark.parametrize("await_first", [False, True], ids=["in-first-step", "after-await"])
@pytest.mark.parametrize("boom_waits", [False, True], ids=["boom-at-once", "boom-later"])
async def test_taskgroup_child_error_cancels_parent_body_and_reaches_except_star(
    await_first: bool, boom_waits: bool
) -> None:
    events: list[Any] = []

    async def boom() -> None:
        if boom_waits:
            await asyncio.sleep(0)
        raise ValueError("child failed")

    async def sibling() -> None:
        try:
            await forever()
        except asyncio.CancelledError:
            events.append("sibling cancelled")
            raise

    async def handler() -> None:
        if await_first:
            await asyncio.sleep(0)
        me = asyncio.current_task()
        assert me is not None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sibling())
                tg.create_task(boom())
                try:
                    await forever()  # the group cancels this, through the handle
                except asyncio.CancelledError:
                    events.append("body cancelled")
                    raise
        except* ValueError as eg:
            events.append([str(e) for e in eg.exceptions])
        events.append(("cancelling", me.cancelling()))
        await asyncio.sleep(0)  # the parent goes on, uncancelled
        events.append("finished")

    handle = start(handler())
    task = real_task(handle)
    await done(task)
    assert not task.cancelled()
    assert sorted(events[:2], key=str) == ["body cancelled", "sibling cancelled"]
    assert events[2:] == [["child failed"], ("cancelling", 0), "finished"]


async def test_taskgroup_parent_cancelled_through_handle_cancels_children() -> None:
    events: list[str] = []
    started = asyncio.Event()

    async def child() -> None:
        started.set()
        try:
            await forever()
        except asyncio.CancelledError:
            events.append("child cancelled")
            raise

    async def handler() -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(child())
                await forever()
        except asyncio.CancelledError:
            events.append("parent cancelled")
            raise

    handle = start(handler())
    task = real_task(handle)
    await started.wait()
    assert handle.cancel() is True
    with pytest.raises(asyncio.CancelledError):
        await done(task)
    assert task.cancelled()
    assert handle.cancelled()
    assert events == ["child cancelled", "parent cancelled"]


# --------------------------------------------------------------------------- cancellation


async def test_cancel_handle_while_awaiting_delivers_cancelled_error_at_the_await() -> None:
    events: list[Any] = []

    async def handler() -> None:
        try:
            await forever()
        except asyncio.CancelledError as exc:
            events.append(("cancelled", exc.args))
            raise
        finally:
            events.append("finally")

    handle = start(handler())
    task = real_task(handle)
    await asyncio.sleep(0)  # the carrying task has started
    await asyncio.sleep(0)
    assert events == []
    assert handle.cancel("stop") is True
    assert handle.cancelling() == 1
    with pytest.raises(asyncio.CancelledError):
        await done(task)
    assert events == [("cancelled", ("stop",)), "finally"]
    assert task.cancelled()
    assert handle.cancelled()
    assert handle.done()


async def test_cancel_handle_while_awaiting_can_be_caught_and_handler_finishes() -> None:
    events: list[Any] = []

    async def handler() -> None:
        try:
            await forever()
        except asyncio.CancelledError:
            events.append("cancelled")
            me = asyncio.current_task()
            assert me is not None
            events.append(me.uncancel())
        await asyncio.sleep(0)
        events.append("finished")

    handle = start(handler())
    task = real_task(handle)
    await asyncio.sleep(0)
    handle.cancel()
    await done(task)
    assert events == ["cancelled", 0, "finished"]
    assert not task.cancelled()


async def test_cancel_handle_right_after_start_eager_reaches_the_coroutine() -> None:
    events: list[str] = []
    awaited = forever()

    async def handler() -> None:
        try:
            await awaited
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        finally:
            events.append("finally")

    handle = start(handler())
    task = real_task(handle)
    try:
        assert handle.cancel() is True  # no loop turn since start_eager returned
        await finish(task)
        assert task.cancelled()
        assert events == ["cancelled", "finally"]
        assert awaited.cancelled()  # what it waited for is cancelled, as by Task.cancel
    finally:
        handle.get_coro().close()


async def test_self_cancel_in_first_step_raises_at_first_await() -> None:
    events: list[Any] = []

    async def handler() -> None:
        me = asyncio.current_task()
        assert me is not None
        events.append(me.cancel("self"))
        events.append(me.cancelling())
        events.append("still running")  # cancel only takes effect at the next await
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError as exc:
            events.append(("cancelled at first await", exc.args))
            raise
        events.append("not cancelled")

    handle = start(handler())
    assert events == [True, 1, "still running"]
    task = real_task(handle)
    try:
        await finish(task)
        assert events[3:] == [("cancelled at first await", ("self",))]
        assert task.cancelled()
    finally:
        handle.get_coro().close()


async def test_cancel_right_after_start_eager_can_be_caught_and_handler_goes_on() -> None:
    loop = asyncio.get_running_loop()
    later: asyncio.Future[str] = loop.create_future()
    events: list[Any] = []

    async def handler() -> None:
        me = asyncio.current_task()
        assert me is not None
        try:
            await forever()
        except asyncio.CancelledError as exc:
            events.append(("cancelled", exc.args, me.cancelling()))
            events.append(me.uncancel())
        events.append(await later)
        events.append(asyncio.current_task() is me)

    handle = start(handler())
    task = real_task(handle)
    assert handle.cancel("stop") is True  # before the carrying task's first step
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert events == [("cancelled", ("stop",), 1), 0]
    later.set_result("later")
    await done(task)
    assert events[2:] == ["later", True]
    assert not task.cancelled()


# A cancel that arrives before the carrying task's first step, compared with a plain task
# in the same state (its coroutine has run its first step and waits): "task" is the
# control, which must pass on every Python; "eager" is start_eager.

Launched = tuple[TaskHandle, asyncio.Task[None]]


def against_a_task(behaviour: str) -> pytest.MarkDecorator:
    """Run the test on a plain task (the control) and eagerly; ``behaviour`` is what
    both must show."""
    return pytest.mark.parametrize(
        "mode",
        [pytest.param("task", id="control-task"), pytest.param("eager", id="eager")],
    )


async def launch(coro: Coroutine[Any, Any, None], mode: str) -> Launched:
    """Run ``coro``'s first step and return (its handle, its task) with nothing run since:
    eagerly, or (the control) in a plain task given the loop turn its first step needs."""
    if mode == "eager":
        handle = start(coro)
        return handle, real_task(handle)
    task = asyncio.create_task(coro)
    await asyncio.sleep(0)
    return task, task


async def running_child(events: list[Any], suppress: bool = False) -> asyncio.Task[int]:
    """A task that has started and waits; cancelled, it records that and cleans up over
    a loop turn, then re-raises (or, with ``suppress``, returns 42)."""
    started = asyncio.Event()

    async def child() -> int:
        started.set()
        try:
            await forever()
        except asyncio.CancelledError as exc:
            events.append(("child cancelled", exc.args))
            await asyncio.sleep(0)
            events.append("child cleaned up")
            if not suppress:
                raise
        return 42

    task = asyncio.create_task(child())
    await started.wait()
    return task


@pytest.mark.parametrize("mode", ["task", "eager"])
async def test_cancel_after_the_carrying_task_started_matches_a_task(mode: str) -> None:
    # Guards the helpers above: a cancel after one loop turn behaves the same in both.
    events: list[Any] = []
    child_task = await running_child(events)

    async def handler() -> None:
        try:
            await child_task
        except asyncio.CancelledError as exc:
            events.append(("handler cancelled", exc.args))
            raise

    handle, task = await launch(handler(), mode)
    await asyncio.sleep(0)  # the carrying task has run its first step
    handle.cancel("stop")
    await finish(task)
    assert events == [
        ("child cancelled", ("stop",)),
        "child cleaned up",
        ("handler cancelled", ("stop",)),
    ]
    assert task.cancelled()


@against_a_task(
    "two cancels during the first step both count: cancelling() stays 2 across the first "
    "await (the first 3.11 version handed the real task one)"
)
async def test_two_cancels_in_first_step_both_count(mode: str) -> None:
    events: list[Any] = []

    async def handler() -> None:
        me = asyncio.current_task()
        assert me is not None
        me.cancel()
        me.cancel()
        events.append(me.cancelling())
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            events.append(me.cancelling())
            events.append(me.uncancel())  # one cancel request is still pending

    task = real_task(start(handler())) if mode == "eager" else asyncio.create_task(handler())
    await done(task)
    assert events == [2, 2, 1]


@against_a_task(
    "a cancel before the carrying task's first step cancels what the coroutine awaits "
    "with the cancel message (the first 3.11 version dropped the message)"
)
async def test_cancel_right_after_start_reaches_the_awaited_task_with_its_message(
    mode: str,
) -> None:
    events: list[Any] = []
    child_task = await running_child(events)

    async def handler() -> None:
        await child_task

    handle, task = await launch(handler(), mode)
    handle.cancel("stop")
    await finish(task, child_task)
    assert ("child cancelled", ("stop",)) in events
    assert task.cancelled()
    assert child_task.cancelled()


@against_a_task(
    "a cancel before the carrying task's first step waits for what the coroutine awaits "
    "to finish cancelling, as Task.cancel does: the awaited task cleans up first, and "
    "if it suppresses the cancel the coroutine gets its result (the first 3.11 version "
    "raised in the coroutine at once)"
)
@pytest.mark.parametrize("suppress", [False, True], ids=["child-reraises", "child-suppresses"])
async def test_cancel_right_after_start_waits_for_the_awaited_task(
    mode: str, suppress: bool
) -> None:
    events: list[Any] = []
    child_task = await running_child(events, suppress=suppress)

    async def handler() -> None:
        try:
            events.append(("handler got", await child_task))
        except asyncio.CancelledError:
            events.append("handler cancelled")
            raise

    handle, task = await launch(handler(), mode)
    handle.cancel()
    await finish(task, child_task)
    assert events == [
        ("child cancelled", ()),
        "child cleaned up",
        ("handler got", 42) if suppress else "handler cancelled",
    ]
    assert task.cancelled() is not suppress


async def test_cancel_and_uncancel_in_first_step_are_counted() -> None:
    events: list[Any] = []

    async def handler() -> None:
        me = asyncio.current_task()
        assert me is not None
        events.append(me.cancelling())
        events.append(me.cancel())
        events.append(me.cancel())
        events.append(me.cancelling())
        events.append(me.uncancel())
        events.append(me.uncancel())
        events.append(me.cancelling())

    assert start(handler()) is None
    assert events == [0, True, True, 2, 1, 0, 0]


async def test_self_cancel_after_first_await_raises_at_next_await() -> None:
    events: list[Any] = []

    async def handler() -> None:
        await asyncio.sleep(0)
        me = asyncio.current_task()
        assert me is not None
        events.append(me.cancel())
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            events.append("cancelled at next await")
            raise

    handle = start(handler())
    task = real_task(handle)
    with pytest.raises(asyncio.CancelledError):
        await done(task)
    assert events == [True, "cancelled at next await"]
    assert task.cancelled()


async def test_cancel_after_finish_returns_false() -> None:
    fut = asyncio.get_running_loop().create_future()

    async def waits() -> None:
        await fut

    handle = start(waits())
    fut.set_result(None)
    await done(real_task(handle))
    assert handle.done()
    assert handle.cancel() is False
    assert not handle.cancelled()

    inline: list[Any] = []

    async def no_wait() -> None:
        inline.append(asyncio.current_task())

    assert start(no_wait()) is None
    assert inline[0].done()
    assert inline[0].cancel() is False
    assert not inline[0].cancelled()


# --------------------------------------------------------------------------- reentrancy


@pytest.mark.parametrize("outcome", ["finish", "raise", "suspend"])
async def test_caller_task_is_current_again_after_start_eager(outcome: str) -> None:
    me = asyncio.current_task()
    assert me is not None
    fut = asyncio.get_running_loop().create_future()
    inside: list[Any] = []

    async def handler() -> None:
        inside.append(asyncio.current_task())
        if outcome == "raise":
            raise KeyError("boom")
        if outcome == "suspend":
            await fut
            inside.append(asyncio.current_task())

    if outcome == "raise":
        with pytest.raises(KeyError):
            start(handler())
        handle = None
    else:
        handle = start(handler())
    assert asyncio.current_task() is me
    assert inside[0] is not me
    assert inside[0] is not None
    if outcome == "suspend":
        assert handle is inside[0]
        fut.set_result(None)
        await done(real_task(handle))
        assert inside[1] is handle
        assert asyncio.current_task() is me
    else:
        assert handle is None


async def test_start_eager_from_a_plain_callback_outside_any_task() -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    results: list[Any] = []
    started: asyncio.Future[TaskHandle | None] = loop.create_future()

    async def handler() -> None:
        results.append(asyncio.current_task())
        await fut
        results.append(asyncio.current_task())

    def callback() -> None:
        results.append(asyncio.current_task(loop))
        handle = start_eager(loop, handler(), contextvars.copy_context())
        results.append(asyncio.current_task(loop))
        started.set_result(handle)

    loop.call_soon(callback)
    handle = await started
    assert results[0] is None
    assert results[1] is handle
    assert results[2] is None
    fut.set_result(None)
    await done(real_task(handle))
    assert results[3] is handle


# --------------------------------------------------------------------------- errors, yields


async def test_exception_after_first_await_surfaces_from_the_task() -> None:
    async def handler() -> None:
        await asyncio.sleep(0)
        raise ValueError("later")

    handle = start(handler())
    task = real_task(handle)
    with pytest.raises(ValueError, match="later"):
        await done(task)
    assert task.done()
    assert handle.done()
    assert not handle.cancelled()
    assert isinstance(handle.exception(), ValueError)
    assert asyncio.current_task() is not handle


async def test_repeated_bare_yields() -> None:
    log: list[tuple[str, int]] = []
    handles: dict[str, list[Any]] = {"a": [], "b": []}

    async def handler(name: str) -> None:
        for i in range(5):
            handles[name].append(asyncio.current_task())
            log.append((name, i))
            await asyncio.sleep(0)
        handles[name].append(asyncio.current_task())

    a = start(handler("a"))
    b = start(handler("b"))
    assert log == [("a", 0), ("b", 0)]
    await finish(real_task(a), real_task(b))
    assert real_task(a).result() is None
    assert real_task(b).result() is None
    assert [i for n, i in log if n == "a"] == list(range(5))
    assert [i for n, i in log if n == "b"] == list(range(5))
    assert all(t is a for t in handles["a"])
    assert all(t is b for t in handles["b"])
    assert len(handles["a"]) == len(handles["b"]) == 6
    assert a is not b


# --------------------------------------------------------------------------- nesting


async def test_nested_start_eager_each_sees_its_own_task() -> None:
    loop = asyncio.get_running_loop()
    inner_fut = loop.create_future()
    seen: dict[str, list[Any]] = {"outer": [], "inner": [], "inner2": []}
    inner_handles: list[Any] = []

    async def inner(name: str, wait: bool) -> None:
        seen[name].append(asyncio.current_task())
        if wait:
            await inner_fut
            seen[name].append(asyncio.current_task())

    async def outer() -> None:
        seen["outer"].append(asyncio.current_task())
        h = start(inner("inner", True))  # from the outer's first step
        inner_handles.append(h)
        seen["outer"].append(asyncio.current_task())
        await asyncio.sleep(0)
        seen["outer"].append(asyncio.current_task())
        assert start(inner("inner2", False)) is None  # from a later step
        seen["outer"].append(asyncio.current_task())
        inner_fut.set_result(None)
        await done(real_task(h))
        seen["outer"].append(asyncio.current_task())

    handle = start(outer())
    assert handle is not None
    await done(real_task(handle))
    (inner_handle,) = inner_handles
    assert inner_handle is not None
    assert inner_handle is not handle
    assert len(seen["outer"]) == 5
    assert all(t is handle for t in seen["outer"])
    assert len(seen["inner"]) == 2
    assert all(t is inner_handle for t in seen["inner"])
    assert len(seen["inner2"]) == 1
    assert seen["inner2"][0] not in (None, handle, inner_handle)
    assert inner_handle.done()


# --------------------------------------------------------------------------- anyio


async def test_anyio_cancel_scopes_across_an_await() -> None:
    anyio = pytest.importorskip("anyio")
    events: list[Any] = []

    async def handler() -> None:
        try:
            with anyio.fail_after(0.01):  # entered in the first step
                await forever()
        except TimeoutError:
            events.append("fail_after")
        await asyncio.sleep(0)
        with anyio.CancelScope() as scope:  # entered in a later step
            asyncio.get_running_loop().call_soon(scope.cancel)
            await forever()
        events.append(("scope", scope.cancel_called, scope.cancelled_caught))
        with anyio.move_on_after(10) as scope2:
            await asyncio.sleep(0)
        events.append(("move_on_after", scope2.cancelled_caught))
        await asyncio.sleep(0)
        events.append("finished")

    handle = start(handler())
    task = real_task(handle)
    await done(task)
    assert events == [
        "fail_after",
        ("scope", True, True),
        ("move_on_after", False),
        "finished",
    ]
    assert not task.cancelled()


# --------------------------------------------------------------------------- loops


LOOPS = [
    pytest.param(asyncio.SelectorEventLoop, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),
]

SCENARIOS = [
    pytest.param(f, id=f.__name__.removeprefix("test_"))
    for f in (
        test_coroutine_that_never_awaits_finishes_inline_and_returns_none,
        test_coroutine_that_waits_returns_a_handle_and_finishes_later,
        test_current_task_is_the_handle_from_first_step_to_end,
        test_contextvar_set_inside_survives_awaits_and_does_not_leak,
        test_timeout_entirely_within_first_step,
        test_taskgroup_parent_cancelled_through_handle_cancels_children,
        test_cancel_handle_while_awaiting_delivers_cancelled_error_at_the_await,
        test_self_cancel_after_first_await_raises_at_next_await,
        test_cancel_after_finish_returns_false,
        test_start_eager_from_a_plain_callback_outside_any_task,
        test_exception_after_first_await_surfaces_from_the_task,
        test_repeated_bare_yields,
        test_nested_start_eager_each_sees_its_own_task,
        test_cancel_handle_right_after_start_eager_reaches_the_coroutine,
        test_cancel_right_after_start_eager_can_be_caught_and_handler_goes_on,
        test_self_cancel_in_first_step_raises_at_first_await,
        test_timeout_expiring_at_once_in_first_step_raises_timeout_error_inside,
    )
]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("loop_factory", LOOPS)
def test_scenario_on_each_loop(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    scenario: Callable[[], Awaitable[None]],
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        if loop_factory is uvloop.new_event_loop:
            assert isinstance(loop, uvloop.Loop)
        else:
            assert not isinstance(loop, uvloop.Loop)
        await scenario()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
