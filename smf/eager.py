"""Eager start: run a coroutine's first step now, and make a task only if it waits.

Most handlers finish without ever waiting (they read the request, build a reply and
return). Giving each a task costs a task object, a trip through the event loop's ready
queue and that task's bookkeeping: measured at about 11 µs of round-trip latency per
call on a 2-CPU VM, the largest single cost of a sequential call. Python 3.12 has this
built in (``asyncio.Task(..., eager_start=True)``), and ``start_eager`` uses it there.

On 3.11, ``EagerTask`` stands in for the task: while the coroutine runs,
``asyncio.current_task()`` returns it (so ``asyncio.timeout``, ``TaskGroup`` and code
that cancels its own task work), and if the coroutine waits, a real task carries it on
with the same ``EagerTask`` still current inside it (so one coroutine sees one task
from start to end), which forwards ``cancel`` and the rest of the ``Task`` API to the
real task.
"""

from __future__ import annotations

import asyncio
import collections.abc
import sys
import types
from collections.abc import Callable, Coroutine, Generator
from contextvars import Context
from typing import Any

if sys.version_info < (3, 12):
    # Private, but present and unchanged from 3.7 to 3.13: how asyncio marks the task
    # that is running (``asyncio.current_task`` reads ``_current_tasks``). Only the
    # 3.11 path uses them; 3.12+ has eager tasks built in.
    from asyncio.tasks import _enter_task, _leave_task

    _current_tasks: dict[asyncio.AbstractEventLoop, Any] = asyncio.tasks._current_tasks  # type: ignore[attr-defined]

TaskHandle = Any
"""What ``asyncio.current_task()`` returns inside the coroutine: an ``asyncio.Task``
(3.12+) or an ``EagerTask`` (3.11). Both have ``cancel()``; ``task_of`` gives the
awaitable ``asyncio.Task``."""

_Coro = Coroutine[Any, Any, None]


class EagerTask:
    """The task of a coroutine started eagerly (Python 3.11; see the module doc).

    Before the coroutine waits for the first time there is no real task: cancel
    requests are counted and handed to the real task when it is made. After that,
    everything is forwarded to the real task (``task``).
    """

    __slots__ = ("__weakref__", "_cancel_msg", "_cancels", "_coro", "_done", "_loop", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, coro: _Coro) -> None:
        self._loop = loop
        self._coro = coro
        self.task: asyncio.Task[None] | None = None
        self._cancels = 0
        self._cancel_msg: Any = None
        self._done = False

    # The parts of the Task API that asyncio (timeout, TaskGroup) and user code use.

    def cancel(self, msg: Any = None) -> bool:
        if self.task is not None:
            return self.task.cancel(msg)
        if self._done:
            return False
        self._cancels += 1
        self._cancel_msg = msg
        return True

    def cancelling(self) -> int:
        return self.task.cancelling() if self.task is not None else self._cancels

    def uncancel(self) -> int:
        if self.task is not None:
            return self.task.uncancel()
        if self._cancels:
            self._cancels -= 1
        return self._cancels

    def done(self) -> bool:
        return self.task.done() if self.task is not None else self._done

    def cancelled(self) -> bool:
        return self.task.cancelled() if self.task is not None else False

    def get_coro(self) -> _Coro:
        return self._coro

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def get_name(self) -> str:
        return self.task.get_name() if self.task is not None else f"smf-eager-{id(self):x}"

    # Private Task state that anyio's cancel scopes read (3.11) on whatever
    # current_task() returned: before the first wait there is no real task, so they
    # describe a task that runs and waits for nothing, with the cancels asked for.

    @property
    def _must_cancel(self) -> bool:
        if self.task is not None:
            return bool(self.task._must_cancel)  # type: ignore[attr-defined]
        return self._cancels > 0

    @property
    def _fut_waiter(self) -> Any:
        if self.task is not None:
            return self.task._fut_waiter  # type: ignore[attr-defined]
        return None

    def __getattr__(self, name: str) -> Any:
        # Anything else (add_done_callback, result, _fut_waiter, ...) is the real task's.
        task = object.__getattribute__(self, "task")
        if task is None:
            raise AttributeError(
                f"{name!r}: not available while a handler runs its first step inline "
                "(smf eager start); it is once the handler has awaited something"
            )
        return getattr(task, name)

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"<EagerTask {state} coro={self._coro!r} task={self.task!r}>"


if sys.version_info >= (3, 12):
    current_task: Callable[[asyncio.AbstractEventLoop], Any] = asyncio.current_task
else:
    current_task = _current_tasks.get
"""``current_task(loop)``: ``asyncio.current_task(loop)`` as one C call (on 3.11 asyncio's
is a Python function around the same dict lookup; on 3.12 it is C). Per call on the
client's path and per waiting handler on the server's."""


def task_of(handle: TaskHandle) -> asyncio.Task[None] | None:
    """The ``asyncio.Task`` behind ``handle`` (None while it has none)."""
    return handle.task if isinstance(handle, EagerTask) else handle


Then = Callable[..., None]
"""``then(result, error, *args)``: how ``run_eager``'s caller learns that the coroutine
ended: ``error`` is None when it returned ``result``, else what it raised (an
``Exception`` or a ``CancelledError``; anything else propagates)."""


def _conclude(ended: BaseException, then: Then, args: tuple[Any, ...]) -> None:
    """Hand how a coroutine ended (its StopIteration, or what it raised) to ``then``."""
    if isinstance(ended, StopIteration):
        then(ended.value, None, *args)
    elif isinstance(ended, Exception | asyncio.CancelledError):
        then(None, ended, *args)
    else:
        raise ended


if sys.version_info >= (3, 12):

    def start_eager(
        loop: asyncio.AbstractEventLoop, coro: _Coro, context: Context
    ) -> TaskHandle | None:
        """Run ``coro`` until it first waits; None if it finished, else its task."""
        task = asyncio.Task(coro, loop=loop, context=context, eager_start=True)
        if not task.done():
            return task
        if not task.cancelled():
            task.result()  # what the first step raised propagates, as on 3.11
        return None

    def run_eager(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        context: Context,
        then: Then,
        *args: Any,
    ) -> tuple[bool, Any]:
        """As on 3.11, except that asyncio's eager task runs a coroutine that awaits
        ``coro`` and calls ``then``, so ``then`` always sees the end: the result is
        ``(False, task)``, or ``(False, None)`` once ``then`` has run."""
        return False, start_eager(loop, _then_after(coro, then, args), context)

    async def _then_after(
        coro: Coroutine[Any, Any, Any], then: Then, args: tuple[Any, ...]
    ) -> None:
        try:
            result = await coro
        except (Exception, asyncio.CancelledError) as error:
            then(None, error, *args)
            return
        then(result, None, *args)

else:

    def start_eager(
        loop: asyncio.AbstractEventLoop, coro: _Coro, context: Context
    ) -> TaskHandle | None:
        """Run ``coro`` until it first waits; None if it finished, else its task."""
        done, handle = run_eager(loop, coro, context, None)
        return None if done else handle

    def run_eager(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        context: Context,
        then: Then | None,
        *args: Any,
    ) -> tuple[bool, Any]:
        """Run ``coro`` until it first waits, with no coroutine wrapped around it (that
        wrapper's frame and await cost µs a call on a woken CPU):

        - ``(True, result)``: it returned ``result`` in this first step, and the
          caller takes it from here (``then`` is not called);
        - ``(False, task)``: it waits; ``then(result, error, *args)`` runs when it
          ends, inside the step of its task that ends it, with its task current;
        - ``(False, None)``: its first step raised, and ``then(None, error, *args)``
          has run (with ``then`` None, as in ``start_eager``, the error propagates).

        ``error`` is an ``Exception`` or a ``CancelledError``; other exceptions
        (``KeyboardInterrupt``, ``SystemExit``) propagate."""
        handle = EagerTask(loop, coro)
        # We may be called from inside a task (a handler finishing resumes reading):
        # that task steps aside while this coroutine runs, as it would for a new task.
        outer = _current_tasks.get(loop)  # asyncio.current_task(loop), minus a call
        if outer is not None:
            _leave_task(loop, outer)
        _enter_task(loop, handle)  # type: ignore[arg-type]
        driver = _idle_drivers.pop() if _idle_drivers else _new_driver()
        try:
            try:
                out = context.run(driver.send, coro)
            except BaseException as ended:  # it raised (and the driver with it)
                handle._done = True
                if then is None:
                    raise
                _conclude(ended, then, args)
                return False, None
        finally:
            _leave_task(loop, handle)  # type: ignore[arg-type]
            if outer is not None:
                _enter_task(loop, outer)
        if type(out) is _Returned:
            handle._done = True
            value = out.value
            out.value = None  # the idle driver must not keep the result alive
            _idle_drivers.append(driver)
            return True, value
        carried = _CarryOn(loop, handle, coro, driver, out, then, args)
        task = handle.task = loop.create_task(carried, context=context)
        for _ in range(handle._cancels):  # each counts, as Task.cancelling() does
            task.cancel(handle._cancel_msg)
        return False, handle


class _Returned:
    """What a driver yields when the coroutine it runs returned ``value``."""

    __slots__ = ("value",)
    value: Any


@types.coroutine
def _drive() -> Generator[Any, Any, None]:
    """Runs the coroutines sent to it one after another, each to its end: what they
    wait for goes up as from the coroutine itself; a return comes back as a yielded
    ``_Returned``. The point: a coroutine that returns inside ``coro.send`` raises
    StopIteration, and raising and catching it on every call costs round-trip time on a
    woken CPU; inside ``yield from`` the return is no exception."""
    done = _Returned()
    while True:
        coro = yield done
        done = _Returned()
        done.value = yield from coro


def _new_driver() -> Generator[Any, Any, None]:
    driver = _drive()
    driver.send(None)  # to its first yield, ready for a coroutine
    return driver


# Drivers between coroutines. Taken from while one runs, so that a coroutine started
# from inside another's first step gets one of its own. Handlers that waited hand theirs
# back when they end, possibly thousands at once: beyond this many, they are dropped.
_idle_drivers: list[Generator[Any, Any, None]] = []
_MAX_IDLE_DRIVERS = 64


class _CarryOn(collections.abc.Coroutine[Any, Any, None]):
    """What the real task runs: ``coro`` from its first wait on, with ``handle`` as the
    current task whenever ``coro`` runs (what it awaits goes up to the real task).

    A class rather than a generator because the real task may be cancelled before its
    first step (a cancel asked for during the eager step, a timeout that expired at
    once): that arrives as ``throw`` before anything ran, and must reach ``coro``
    where it waits, as it would in a task of its own.
    """

    __slots__ = (
        "_args",
        "_coro",
        "_driver",
        "_handle",
        "_loop",
        "_started",
        "_then",
        "_waiting_for",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handle: EagerTask,
        coro: Coroutine[Any, Any, Any],
        driver: Generator[Any, Any, None],
        waiting_for: Any,
        then: Then | None,
        args: tuple[Any, ...],
    ) -> None:
        self._loop = loop
        self._handle = handle
        self._coro = coro
        self._driver = driver
        self._waiting_for = waiting_for
        self._started = False
        self._then = then
        self._args = args

    def send(self, value: Any) -> Any:
        if not self._started:
            # The task's first step: hand it what the coroutine is waiting for.
            self._started = True
            waiting_for, self._waiting_for = self._waiting_for, None
            return waiting_for
        return self._step(self._driver.send, value)

    def __next__(self) -> Any:
        return self.send(None)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        exc = typ if val is None else val
        if not self._started:
            self._started = True
            # Cancelled before the task ran: do what Task.cancel does to a task that
            # waits. Cancel what it waits for (with the message) and keep waiting, so
            # the coroutine sees how that ends (an awaited task may clean up first, or
            # even return); only if that cannot be cancelled, raise it where it waits.
            waiting_for, self._waiting_for = self._waiting_for, None
            if (
                isinstance(exc, asyncio.CancelledError)
                and isinstance(waiting_for, asyncio.Future)
                and waiting_for.cancel(exc.args[0] if exc.args else None)
            ):
                return waiting_for
        return self._step(self._driver.throw, exc)

    def close(self) -> None:
        self._driver.close()

    def __await__(self) -> Generator[Any, None, None]:
        raise TypeError("_CarryOn is driven by its task, not awaited")

    def __getattr__(self, name: str) -> Any:
        # The handler coroutine's name, frame and code (cr_frame, __qualname__, ...):
        # the task's repr and get_stack() show the handler, not this wrapper.
        return getattr(object.__getattribute__(self, "_coro"), name)

    def _step(self, step: Any, arg: Any) -> Any:
        loop, handle = self._loop, self._handle
        real = _current_tasks[loop]  # the task running us
        _leave_task(loop, real)
        _enter_task(loop, handle)  # type: ignore[arg-type]
        try:
            ended: BaseException
            try:
                out = step(arg)
            except BaseException as raised:
                ended = raised  # the coroutine raised (and its driver with it)
            else:
                if type(out) is not _Returned:
                    return out  # what the coroutine waits for, up to the real task
                ended = StopIteration(out.value)
                out.value = None  # the idle driver must not keep the result alive
                if len(_idle_drivers) < _MAX_IDLE_DRIVERS:
                    _idle_drivers.append(self._driver)  # back at its yield: reusable
            handle._done = True  # returned or raised: it is over
            if self._then is None:
                raise ended  # the task's own outcome
            _conclude(ended, self._then, self._args)  # with the coroutine's task current
            raise StopIteration from None  # the task ends here, its work done
        finally:
            _leave_task(loop, handle)  # type: ignore[arg-type]
            _enter_task(loop, real)
