"""Per-method counters and HDR latency histograms, kept as plain numbers on the hot
path and read by exporters (``smf.prometheus``) only when scraped."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from hdrh.histogram import HdrHistogram

# 1 µs .. 1 hour at 3 significant digits: ~0.1% error, ~200 KiB per histogram.
LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


class LatencyRecorder:
    """An HDR histogram with a cheap front.

    ``record`` (event-loop thread, 0.17 µs) counts values rounded to 8 significant bits
    (at most 0.4% low) in a dict; HdrHistogram's own ``record_value`` costs ~1.2 µs,
    too much to pay on every call. ``drain`` (same thread) hands those counts over
    and ``fold`` (any thread, serialised by a lock) adds them to the cumulative
    ``totals`` and to the ``HdrHistogram``. ``histogram()`` does both, for readers on
    the recording thread.
    """

    __slots__ = ("_histogram", "_lock", "pending", "totals")

    def __init__(self) -> None:
        # Counts recorded since the last drain, by rounded value (MethodStats.record
        # adds to it directly: one Python call less per call).
        self.pending: dict[int, int] = {}
        self.totals: dict[int, int] = {}
        self._histogram = new_histogram()
        self._lock = threading.Lock()

    def record(self, us: int) -> None:
        shift = us.bit_length() - 8
        if shift > 0:
            us = (us >> shift) << shift
        pending = self.pending
        pending[us] = pending.get(us, 0) + 1

    def drain(self) -> dict[int, int]:
        """The counts recorded since the last drain (call on the recording thread)."""
        pending, self.pending = self.pending, {}
        return pending

    def fold(self, counts: dict[int, int]) -> HdrHistogram:
        with self._lock:
            totals = self.totals
            h = self._histogram
            for value, count in counts.items():
                totals[value] = totals.get(value, 0) + count
                h.record_value(min(max(value, LOWEST_US), HIGHEST_US), count)
            return h

    def histogram(self) -> HdrHistogram:
        return self.fold(self.drain())


class MethodStats:
    """Calls of one method on one side: by status, bytes, and latency in µs. A stream
    is one call (recorded when it ends, with its final status and duration); each of
    its messages also counts in ``messages_in``/``messages_out`` and in the bytes (as
    sent on the wire)."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "latency_us",
        "messages_in",
        "messages_out",
        "name",
        "statuses",
        "wire_id",
    )

    def __init__(self, wire_id: int, name: str) -> None:
        self.wire_id = wire_id
        self.name = name
        self.statuses: dict[int, int] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self.messages_in = 0  # stream messages received
        self.messages_out = 0  # stream messages sent
        self.latency_us = LatencyRecorder()

    def record(self, status: int, latency_ns: int, bytes_in: int, bytes_out: int) -> None:
        statuses = self.statuses
        statuses[status] = statuses.get(status, 0) + 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        # LatencyRecorder.record, inline: once per call on each side.
        us = latency_ns // 1000
        shift = us.bit_length() - 8
        if shift > 0:
            us = (us >> shift) << shift
        pending = self.latency_us.pending
        pending[us] = pending.get(us, 0) + 1

    @property
    def calls(self) -> int:
        return sum(self.statuses.values())


class MethodTable:
    """wire id → ``MethodStats``; unknown ids share one "unknown" row (no unbounded
    growth from peers sending random ids)."""

    def __init__(self) -> None:
        self.methods: dict[int, MethodStats] = {}
        self.names: dict[int, str] = {}
        self.unknown = MethodStats(0, "unknown")

    def name(self, wire_id: int, name: str) -> None:
        self.names[wire_id] = name

    def get(self, wire_id: int) -> MethodStats:
        stats = self.methods.get(wire_id)
        if stats is None:
            name = self.names.get(wire_id)
            if name is None:
                return self.unknown
            stats = self.methods[wire_id] = MethodStats(wire_id, name)
        return stats

    def get_or_add(self, wire_id: int) -> MethodStats:
        """For clients: every id they call is one they chose, so each gets a row."""
        stats = self.methods.get(wire_id)
        if stats is None:
            name = self.names.get(wire_id, str(wire_id))
            stats = self.methods[wire_id] = MethodStats(wire_id, name)
        return stats

    def __iter__(self) -> Iterator[MethodStats]:
        yield from self.methods.values()
        if self.unknown.calls:
            yield self.unknown
