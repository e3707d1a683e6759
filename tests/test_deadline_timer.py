"""``smf.deadlines.Deadlines``, the client's one timer for every call's deadline, on a
loop whose clock the test moves: every call whose deadline passes while it runs is
cancelled once, no other is, the timer is never armed later than the earliest deadline,
and spent entries do not pile up. No sockets, no real time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from smf.deadlines import Deadlines


@dataclass
class _Handle:
    when: float
    callback: Any
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class _Loop:
    """What Deadlines uses of a loop: ``time`` and ``call_at``, on a clock we move."""

    now: float = 0.0
    handles: list[_Handle] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any) -> _Handle:
        handle = _Handle(when, callback)
        self.handles.append(handle)
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for _ in range(1000):
            due = [h for h in self.handles if not h.cancelled and h.when <= self.now]
            if not due:
                return
            handle = min(due, key=lambda h: h.when)
            self.handles.remove(handle)
            handle.callback()
        raise AssertionError("the timer keeps firing without the clock moving")


@dataclass
class _Task:
    cancels: int = 0

    def cancel(self) -> None:
        self.cancels += 1


DEFAULT = 1.0  # most calls use the client's default timeout

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from([DEFAULT, DEFAULT, DEFAULT, 0.05, 0.3, 2.5])),
        st.tuples(st.just("spend"), st.integers(0, 7)),
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.01, 0.1, 0.4, 1.0, 3.0])),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_each_call_is_cancelled_once_exactly_when_its_deadline_passes_while_it_runs(
    steps: list[tuple[str, float]],
) -> None:
    loop = _Loop()
    deadlines = Deadlines(loop, compact_at=8)  # type: ignore[arg-type]
    calls: list[tuple[float, _Task, list[Any]]] = []  # (deadline, task, entry), running
    ended: list[tuple[float, _Task, list[Any], bool]] = []  # ..., spent before expiry
    for op, arg in steps:
        if op == "add":
            task = _Task()
            calls.append((loop.now + arg, task, deadlines.add(task, arg)))
            if len(calls) > 4:  # calls end: few in flight, as a client has
                when, task, entry = calls.pop(0)
                ended.append((when, task, entry, entry[2] is not None))
                entry[2] = None
        elif op == "spend" and calls:
            when, task, entry = calls.pop(int(arg) % len(calls))
            ended.append((when, task, entry, entry[2] is not None))
            entry[2] = None  # the call ended (as Client._call's finally does)
        elif op == "advance":
            loop.advance(arg)
        for when, task, entry in calls:
            expired = when <= loop.now
            assert task.cancels == int(expired)
            assert entry[3] is expired
        for _when, task, _entry, live_at_end in ended:
            assert task.cancels == int(not live_at_end)  # ended first: never cancelled
        live = [when for when, task, entry in calls if task.cancels == 0]
        if live:
            armed = deadlines.next_deadline
            assert armed is not None and armed <= min(live)
            assert deadlines.earliest == min(live)
        assert len(deadlines) <= 2 * (8 + 1)  # spent entries are dropped or compacted


def test_a_shorter_timeout_after_longer_ones_fires_first() -> None:
    loop = _Loop()
    deadlines = Deadlines(loop)  # type: ignore[arg-type]
    slow, fast = _Task(), _Task()
    deadlines.add(slow, 5.0)
    entry = deadlines.add(fast, 0.1)
    assert deadlines.next_deadline == 0.1
    loop.advance(0.1)
    assert (fast.cancels, slow.cancels) == (1, 0) and entry[3]
    assert deadlines.next_deadline == 5.0
    loop.advance(5.0)
    assert slow.cancels == 1


def test_calls_with_the_default_timeout_hold_about_the_calls_in_flight() -> None:
    loop = _Loop()
    deadlines = Deadlines(loop)  # type: ignore[arg-type]
    in_flight: list[list[Any]] = []
    for _ in range(10_000):
        in_flight.append(deadlines.add(_Task(), DEFAULT))
        if len(in_flight) > 64:
            in_flight.pop(0)[2] = None
        loop.advance(0.00001)
    assert len(deadlines) <= 65
