"""SessionTable: session id → pending call, ids 1..capacity, round-robin reuse."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import smf
from smf.client import SessionTable
from smf.wire import MAX_SESSION


def token() -> Any:
    """A stand-in for a call's future (try_allocate/release only compare identity)."""
    return object()


# --------------------------------------------------------------------------- basics


def test_capacity_bounds() -> None:
    assert SessionTable().capacity == MAX_SESSION == 65535
    assert SessionTable(1).capacity == 1
    for bad in (0, -1, MAX_SESSION + 1):
        with pytest.raises(ValueError):
            SessionTable(bad)


def test_ids_start_at_one_and_stay_within_capacity() -> None:
    table = SessionTable(3)
    tokens = [token() for _ in range(3)]
    assert [table.try_allocate(t) for t in tokens] == [1, 2, 3]
    assert len(table) == 3
    assert table.try_allocate(token()) == 0  # full: 0 is never a session
    for s, t in zip((1, 2, 3), tokens, strict=True):
        table.release(s, t)
    assert len(table) == 0
    assert table.try_allocate(token()) == 1  # wraps around to 1, never 0 or 4


def test_never_hands_out_a_session_in_flight() -> None:
    table = SessionTable(5)
    held = {table.try_allocate(token()) for _ in range(3)}  # 1, 2, 3 stay in flight
    seen = []
    for _ in range(20):
        t = token()
        s = table.try_allocate(t)
        assert s not in held
        seen.append(s)
        table.release(s, t)
    assert set(seen) == {4, 5}


def test_reuse_is_round_robin_as_late_as_possible() -> None:
    table = SessionTable(5)
    t1, t2, t3 = token(), token(), token()
    assert [table.try_allocate(t) for t in (t1, t2, t3)] == [1, 2, 3]
    table.release(1, t1)  # 1 is free again, but is reused last
    order = []
    for _ in range(3):
        t = token()
        order.append(table.try_allocate(t))
    assert order == [4, 5, 1]


def test_default_table_cycles_through_every_id_before_reusing_one() -> None:
    table = SessionTable()
    previous = 0
    for expected in range(1, 2001):
        t = token()
        s = table.try_allocate(t)
        assert s == expected > previous
        previous = s
        table.release(s, t)


def test_wraps_after_the_last_id() -> None:
    table = SessionTable()
    ids = []
    for _ in range(MAX_SESSION + 3):
        t = token()
        ids.append(table.try_allocate(t))
        table.release(ids[-1], t)
    assert ids[MAX_SESSION - 1 :] == [MAX_SESSION, 1, 2, 3]
    assert min(ids) == 1 and max(ids) == MAX_SESSION


def test_release_by_a_stale_owner_frees_nothing() -> None:
    table = SessionTable(2)
    old, new = token(), token()
    s = table.try_allocate(old)
    table.release(s, old)
    table.try_allocate(token())  # takes 2
    assert table.try_allocate(new) == s  # s belongs to a new call now
    table.release(s, old)  # the old call's late cleanup
    assert table.pending[s] is new


def test_pop_removes_and_returns_the_call() -> None:
    table = SessionTable(4)
    t = token()
    s = table.try_allocate(t)
    assert table.pop(s) is t
    assert table.pop(s) is None
    assert len(table) == 0


# --------------------------------------------------------------------------- waiting


async def test_allocate_waits_when_full_until_a_session_is_released() -> None:
    loop = asyncio.get_running_loop()
    table = SessionTable(3)
    futures = [loop.create_future() for _ in range(3)]
    sessions = [await table.allocate(f) for f in futures]
    assert sessions == [1, 2, 3]
    fourth = loop.create_future()
    waiting = asyncio.create_task(table.allocate(fourth))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()
    table.release(2, futures[1])
    assert await asyncio.wait_for(waiting, 5.0) == 2
    assert table.pending[2] is fourth
    assert len(table) == 3


async def test_each_release_wakes_one_waiter() -> None:
    loop = asyncio.get_running_loop()
    table = SessionTable(2)
    held = [loop.create_future() for _ in range(2)]
    for f in held:
        table.try_allocate(f)
    waiters = [asyncio.create_task(table.allocate(loop.create_future())) for _ in range(4)]
    await asyncio.sleep(0)
    table.release(1, held[0])
    await asyncio.sleep(0.01)
    assert sum(w.done() for w in waiters) == 1
    table.release(2, held[1])
    await asyncio.sleep(0.01)
    assert sum(w.done() for w in waiters) == 2
    got = [w.result() for w in waiters if w.done()]
    assert sorted(got) == [1, 2]
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_cancelled_waiter_leaves_no_trace() -> None:
    loop = asyncio.get_running_loop()
    table = SessionTable(1)
    f = loop.create_future()
    s = table.try_allocate(f)
    waiting = asyncio.create_task(table.allocate(loop.create_future()))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert table._waiters == []
    table.release(s, f)
    assert len(table) == 0
    assert table.try_allocate(loop.create_future()) == 1


async def test_waiter_cancelled_after_its_wakeup_passes_it_on() -> None:
    loop = asyncio.get_running_loop()
    table = SessionTable(1)
    f = loop.create_future()
    s = table.try_allocate(f)
    first = asyncio.create_task(table.allocate(loop.create_future()))
    second = asyncio.create_task(table.allocate(loop.create_future()))
    await asyncio.sleep(0.01)
    table.release(s, f)  # wakes `first`...
    first.cancel()  # ...which is cancelled before it gets to run
    try:
        assert await asyncio.wait_for(second, 1.0) == 1
    finally:
        second.cancel()
        await asyncio.gather(first, second, return_exceptions=True)


async def test_fail_all_fails_every_pending_call() -> None:
    loop = asyncio.get_running_loop()
    table = SessionTable(8)
    futures = [loop.create_future() for _ in range(5)]
    for f in futures:
        table.try_allocate(f)
    futures[3].cancel()  # a call that gave up already: left alone
    error = smf.ConnectionLost("gone")
    table.fail_all(error)
    assert len(table) == 0
    for i, f in enumerate(futures):
        if i == 3:
            assert f.cancelled()
        else:
            assert f.exception() is error
    # The table is usable again and ids still go round-robin.
    assert table.try_allocate(loop.create_future()) == 6


# --------------------------------------------------------------------------- property


class SessionTableMachine(RuleBasedStateMachine):
    """Random allocate/release/pop sequences against a model of round-robin allocation."""

    @initialize(capacity=st.integers(1, 12))
    def start(self, capacity: int) -> None:
        self.capacity = capacity
        self.table = SessionTable(capacity)
        self.model: dict[int, object] = {}
        self.next = 1
        self.handed_out: list[int] = []

    @rule()
    def allocate(self) -> None:
        t = token()
        s = self.table.try_allocate(t)
        if len(self.model) == self.capacity:
            assert s == 0
            return
        expected = self.next
        while expected in self.model:
            expected = expected % self.capacity + 1
        assert s == expected, (s, expected, sorted(self.model))
        assert s not in self.model  # never a session in flight
        # Reuse as late as possible: going round from the last id handed out, every id
        # passed over on the way to `s` was busy (none was skipped while free).
        prev = self.handed_out[-1] if self.handed_out else self.capacity
        passed = prev % self.capacity + 1
        while passed != s:
            assert passed in self.model, (prev, s, passed, sorted(self.model))
            passed = passed % self.capacity + 1
        self.model[s] = t
        self.next = s % self.capacity + 1
        self.handed_out.append(s)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        s = data.draw(st.sampled_from(sorted(self.model)))
        self.table.release(s, self.model.pop(s))

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def reply_arrives(self, data: st.DataObject) -> None:
        s = data.draw(st.sampled_from(sorted(self.model)))
        t = self.model.pop(s)
        assert self.table.pop(s) is t
        self.table.release(s, t)  # the call's own cleanup afterwards is harmless

    @rule(session=st.integers(0, 13))
    def stale_release(self, session: int) -> None:
        self.table.release(session, token())  # frees nothing

    @invariant()
    def matches_model(self) -> None:
        if not hasattr(self, "table"):
            return
        assert len(self.table) == len(self.model)
        assert set(self.table.pending) == set(self.model)
        for s, t in self.model.items():
            assert 1 <= s <= self.capacity
            assert self.table.pending[s] is t


TestSessionTableStateful = SessionTableMachine.TestCase
TestSessionTableStateful.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None
)
