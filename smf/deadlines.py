"""The client's deadlines: one timer for every call's timeout."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from typing import Any

__all__ = ["Deadlines"]


class Deadlines:
    """Every call's deadline, one timer for all (the client's one deadline mechanism).

    A call registers its task and timeout (``add``); when the deadline passes first,
    the task is cancelled and the entry marked expired (``entry[3]``), and the call
    turns that cancel into ``DeadlineExceeded``, as ``asyncio.timeout`` does, wherever
    it was waiting (for a connection, a session, filters or the reply). A call that
    ends sets its entry's task to None (``entry[2]``).

    Entries are kept in deadline order in two places. Most calls use the client's
    default timeout, so a deadline is rarely earlier than the one added before it: those
    go at the end of a deque (``_run``, O(1): a heap's push and pop cost ~0.4 µs a call);
    one earlier than the deque's last (a shorter timeout) goes into a heap. Spent entries
    are dropped from the heads when a call is added or the timer fires (calls end
    roughly in order, so the two hold about the calls in flight), and both are rebuilt
    without them past ``compact_at``. A timer per call (``call_later``) costs a libuv
    timer and its cancel on every call; this one re-arms only when a deadline earlier
    than the armed one comes.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, compact_at: int = 4096) -> None:
        self._loop = loop
        self._run: deque[list[Any]] = deque()
        self._heap: list[list[Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0  # when the timer fires (read per call: no when() call)
        self._compact_at = compact_at
        self._seq = itertools.count(1)  # heap order among equal deadlines

    def __len__(self) -> int:
        return len(self._run) + len(self._heap)

    @property
    def next_deadline(self) -> float | None:
        """When the timer fires next (loop time), None when none is armed."""
        return self._armed_at if self._timer is not None else None

    @property
    def earliest(self) -> float | None:
        """The earliest deadline of a call still running (loop time), None if none."""
        live = (e[0] for e in itertools.chain(self._run, self._heap) if e[2] is not None)
        return min(live, default=None)

    def add(self, task: Any, timeout: float) -> list[Any]:
        """Cancel ``task`` in ``timeout`` seconds unless its entry is spent first."""
        run = self._run
        while run and run[0][2] is None:
            run.popleft()
        when = self._loop.time() + timeout
        if not run or when >= run[-1][0]:
            entry = [when, 0, task, False]
            run.append(entry)
            held = len(run)
        else:
            heap = self._heap
            while heap and heap[0][2] is None:
                heapq.heappop(heap)
            entry = [when, next(self._seq), task, False]
            heapq.heappush(heap, entry)
            held = len(heap)
        timer = self._timer
        if timer is None or self._armed_at > when:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(when, self._fire)
            self._armed_at = when
        elif held > self._compact_at:
            self._run = deque(e for e in self._run if e[2] is not None)
            self._heap = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)
            self._compact_at = max(self._compact_at, 2 * len(self))
        return entry

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        run, heap = self._run, self._heap
        while run and _leaves(run[0], now):
            run.popleft()
        while heap and _leaves(heap[0], now):
            heapq.heappop(heap)
        heads = [q[0][0] for q in (run, heap) if q]
        if heads:
            self._armed_at = min(heads)
            self._timer = self._loop.call_at(self._armed_at, self._fire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._run.clear()
        self._heap.clear()


def _leaves(entry: list[Any], now: float) -> bool:
    """Whether a head entry leaves its queue at ``now``: spent, or due (its task is
    then cancelled and the entry marked expired)."""
    task = entry[2]
    if task is None:
        return True
    if entry[0] > now:
        return False
    entry[2] = None
    entry[3] = True
    task.cancel()
    return True
