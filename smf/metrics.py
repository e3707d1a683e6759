"""Per-method counters and HDR latency histograms, kept as plain numbers on the hot
path and read by exporters (``smf.prometheus``) only when scraped."""

from __future__ import annotations

from collections.abc import Iterator

from hdrh.histogram import HdrHistogram

# 1 µs .. 1 hour at 3 significant digits: ~0.1% error, ~200 KiB per histogram.
LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


class LatencyRecorder:
    """An HDR histogram with a cheap front: ``record`` counts values rounded to 8
    significant bits (at most 0.4% low, 0.17 µs) in a dict, and ``histogram()`` folds
    those counts into an ``HdrHistogram`` when read (``record_value`` costs ~1.2 µs
    per value, too much to pay on every call)."""

    __slots__ = ("_counts", "_histogram")

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self._histogram = new_histogram()

    def record(self, us: int) -> None:
        shift = us.bit_length() - 8
        if shift > 0:
            us = (us >> shift) << shift
        counts = self._counts
        counts[us] = counts.get(us, 0) + 1

    def histogram(self) -> HdrHistogram:
        if self._counts:
            counts, self._counts = self._counts, {}
            h = self._histogram
            for value, count in counts.items():
                h.record_value(min(max(value, LOWEST_US), HIGHEST_US), count)
        return self._histogram


class MethodStats:
    """Calls of one method on one side: by status, bytes, and latency in µs."""

    __slots__ = ("bytes_in", "bytes_out", "latency_us", "name", "statuses", "wire_id")

    def __init__(self, wire_id: int, name: str) -> None:
        self.wire_id = wire_id
        self.name = name
        self.statuses: dict[int, int] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self.latency_us = LatencyRecorder()

    def record(self, status: int, latency_ns: int, bytes_in: int, bytes_out: int) -> None:
        statuses = self.statuses
        statuses[status] = statuses.get(status, 0) + 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        self.latency_us.record(latency_ns // 1000)

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
