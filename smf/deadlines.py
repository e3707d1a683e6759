"""The client's deadlines: one timer for every call's timeout."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Any

__all__ = ["Deadlines"]


class Deadlines:
    """Every call's deadline, one timer for all (the client's one deadline mechanism).

    A call registers its task and timeout (``add``); when the deadline passes first,
    the task is cancelled and the entry marked expired (``entry[3]``), and the call
    turns that cancel into ``DeadlineExceeded``, as ``asyncio.timeout`` does, wherever
    it was waiting (for a connection, a session, filters or the reply). A call that
    ends sets its entry's task to None (``entry[2]``). Entries sit in a heap by
    deadline: spent ones are dropped from its top when the next call is added (calls
    with the default timeout end roughly in order, so the heap holds about the calls in
    flight) or when the timer fires, and the heap is rebuilt without them past
    ``compact_at``. A timer per call (``call_later``) costs a libuv timer and its cancel
    on every call; this re-arms only when a deadline earlier than the armed one comes.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, compact_at: int = 4096) -> None:
        self._loop = loop
        self._heap: list[list[Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0  # when the timer fires (read per call: no when() call)
        self._compact_at = compact_at
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def next_deadline(self) -> float | None:
        """When the timer fires next (loop time), None when none is armed."""
        return self._armed_at if self._timer is not None else None

    @property
    def earliest(self) -> float | None:
        """The earliest deadline of a call still running (loop time), None if none."""
        return min((e[0] for e in self._heap if e[2] is not None), default=None)

    def add(self, task: Any, timeout: float) -> list[Any]:
        """Cancel ``task`` in ``timeout`` seconds unless its entry is spent first."""
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
        when = self._loop.time() + timeout
        entry = [when, next(self._seq), task, False]
        heapq.heappush(heap, entry)
        timer = self._timer
        if timer is None or self._armed_at > when:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(when, self._fire)
            self._armed_at = when
        elif len(heap) > self._compact_at:
            self._heap = [e for e in heap if e[2] is not None]
            heapq.heapify(self._heap)
            self._compact_at = max(self._compact_at, 2 * len(self._heap))
        return entry

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        heap = self._heap
        while heap:
            entry = heap[0]
            task = entry[2]
            if task is not None:
                if entry[0] > now:
                    break
                entry[2] = None
                entry[3] = True
                task.cancel()
            heapq.heappop(heap)
        if heap:
            self._armed_at = heap[0][0]
            self._timer = self._loop.call_at(self._armed_at, self._fire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
