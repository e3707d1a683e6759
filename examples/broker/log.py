"""Segmented, CRC-checked, crash-recoverable Raft log plus Raft hard state.

One :class:`SegmentedLog` per partition replica, owning one directory.  All I/O is
synchronous and every operation is small (one ``pwrite`` per segment touched, one
``pread`` per segment read); the asyncio node runs :meth:`SegmentedLog.flush` and
:meth:`SegmentedLog.save_state` in an executor because they fsync.

On-disk layout
==============

``<directory>/``

``00000000000000000001.log`` ...
    Log segments.  The name is the index of the segment's first record, zero-padded to
    20 digits.  Segments are contiguous: segment *k+1*'s name is segment *k*'s last
    index + 1.  Only the newest ("active") segment is written; a new segment is started
    when appending a record would push the active one past ``segment_bytes`` (a single
    record larger than that gets a segment of its own).

``raft_state``
    Hard state (current term, voted-for), 26 bytes, replaced atomically
    (``raft_state.tmp`` + fsync + ``os.replace`` + fsync of the directory).
    A leftover ``raft_state.tmp`` is ignored and removed on open.

``commit_index``
    Advisory commit index, 12 bytes, overwritten in place without fsync.

Segment record (all integers little-endian)::

    offset  size  field
    0       4     length  u32  number of bytes after the crc field (17 + len(data))
    4       4     crc     u32  CRC-32 (zlib.crc32) of the `length` bytes that follow
    8       8     index   u64
    16      8     term    u64
    24      1     kind    u8   0 = data record, 1 = no-op/control
    25      n     data

A record therefore takes ``25 + len(data)`` bytes on disk.  The length field is not
itself covered by the CRC, but a damaged length makes the CRC run over the wrong bytes,
so it is caught all the same.

``raft_state``::

    magic b"RFHS" | u8 version (1) | u8 flags (bit 0: has vote) | u64 term
    | i64 voted_for (0 when none) | u32 CRC-32 of the preceding 22 bytes

``commit_index``::

    u64 commit index | u32 CRC-32 of those 8 bytes

Recovery (on open)
==================

Every segment is scanned front to back (the in-memory index ``index -> (segment,
offset)`` is rebuilt from the scan).  A record is valid when its header is complete,
``length >= 17``, the whole record is present, the CRC matches, its index is the
previous index + 1 (the segment's name for the first record) and its term is not lower
than the previous record's term.

* In the **last** segment, the first invalid record and everything after it are
  treated as the torn tail of a write that was never acknowledged (partial write,
  zero-filled or garbage blocks, a bad CRC, a non-contiguous index): the file is
  truncated there, a warning is logged (``logging.getLogger("broker.log")``) and the
  number of bytes cut is exposed as :attr:`SegmentedLog.recovered_truncated_bytes`.
  Those bytes are never served.  An empty trailing segment is fine; one whose name
  does not follow its predecessor (it holds nothing) is deleted.
* In **any earlier** segment, an invalid record cannot be a torn write: a segment is
  fsynced before its successor is created, and only the active segment is ever
  written.  Such damage means acknowledged, possibly committed, data is gone, so open
  raises :class:`LogCorruptionError` naming the file and offset instead of silently
  dropping it; the replica must be repaired or rebuilt from its peers.  A gap between
  segment names is reported the same way.

Decision: damage in the middle of the *last* segment cannot be told apart from a torn
multi-record unflushed tail (the page cache may write back the pages of an unflushed
batch in any order), so it is truncated like a torn tail.  If that cuts the log below
the persisted advisory commit index, the truncation is logged at ERROR level, because
committed entries were lost on this replica (Raft still has them on a majority).

Durability
==========

``append`` writes through the page cache only.  ``flush`` (when ``fsync=True``)
``fdatasync``-s the active segment and, when segments were created since the last
flush, the directory; everything appended before ``flush`` was *called* is durable when
it returns.  Rolling to a new segment fsyncs the old one first, and ``truncate_suffix``
fsyncs the directory after deleting whole segments before cutting the segment that
remains, so that after any crash the segments on disk are a prefix of some log that
existed.  ``fsync=False`` skips every fsync (tests, or a disk you do not trust anyway).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
import time
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = [
    "KIND_DATA",
    "KIND_NOOP",
    "RECORD_HEADER_SIZE",
    "Entry",
    "LogCorruptionError",
    "SegmentedLog",
    "record_size",
]

logger = logging.getLogger("broker.log")

KIND_DATA = 0
KIND_NOOP = 1

_PREFIX = struct.Struct("<II")  # length, crc
_FIXED = struct.Struct("<QQB")  # index, term, kind
RECORD_HEADER_SIZE = _PREFIX.size + _FIXED.size  # 25
_MAX_U64 = (1 << 64) - 1
_MAX_DATA = (1 << 32) - 1 - _FIXED.size

_SEGMENT_RE = re.compile(r"^(\d{20})\.log$")
_STATE_FILE = "raft_state"
_STATE_TMP = "raft_state.tmp"
_COMMIT_FILE = "commit_index"
_STATE = struct.Struct("<4sBBQq")
_STATE_MAGIC = b"RFHS"
_STATE_VERSION = 1
_CRC = struct.Struct("<I")
_COMMIT = struct.Struct("<Q")

_fdatasync = getattr(os, "fdatasync", os.fsync)


@dataclass(frozen=True, slots=True)
class Entry:
    """One Raft log entry."""

    term: int
    index: int
    data: bytes  # a record's value; b"" for a leader's no-op entry
    kind: int = KIND_DATA  # 0 = data record, 1 = no-op/control (consumers skip it)


def record_size(entry: Entry) -> int:
    """Bytes ``entry`` occupies in a segment file."""
    return RECORD_HEADER_SIZE + len(entry.data)


class LogCorruptionError(Exception):
    """Damage the log refuses to repair silently (it may hold committed data)."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path}: {reason} at offset {offset}")


@dataclass(eq=False, slots=True)
class _Segment:
    base: int  # index of the first record (the file name)
    path: Path
    fd: int
    size: int = 0  # bytes of valid records; writes go here
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    terms: array[int] = field(default_factory=lambda: array("Q"))

    @property
    def count(self) -> int:
        return len(self.offsets)

    def record_end(self, i: int) -> int:
        return self.offsets[i + 1] if i + 1 < len(self.offsets) else self.size


@dataclass(slots=True)
class _Scan:
    offsets: array[int]
    terms: array[int]
    end: int  # offset just past the last valid record
    problem: str | None  # why scanning stopped before the end of the file


def _scan(buf: bytes, base: int, prev_term: int) -> _Scan:
    """Parse records from ``buf``, stopping at the first invalid one."""
    offsets: array[int] = array("Q")
    terms: array[int] = array("Q")
    view = memoryview(buf)
    pos, n = 0, len(buf)
    expected, last_term = base, prev_term
    problem: str | None = None
    while pos < n:
        if n - pos < RECORD_HEADER_SIZE:
            problem = f"partial record header ({n - pos} of {RECORD_HEADER_SIZE} bytes)"
            break
        length, crc = _PREFIX.unpack_from(buf, pos)
        if length < _FIXED.size:
            problem = f"invalid record length {length}"
            break
        end = pos + _PREFIX.size + length
        if end > n:
            problem = f"partial record ({n - pos} of {end - pos} bytes)"
            break
        if zlib.crc32(view[pos + _PREFIX.size : end]) != crc:
            problem = "CRC mismatch"
            break
        index, term, _kind = _FIXED.unpack_from(buf, pos + _PREFIX.size)
        if index != expected:
            problem = f"record index {index}, expected {expected}"
            break
        if term < last_term:
            problem = f"record {index} has term {term} below previous term {last_term}"
            break
        offsets.append(pos)
        terms.append(term)
        expected += 1
        last_term = term
        pos = end
    return _Scan(offsets, terms, pos, problem)


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _segment_name(base: int) -> str:
    return f"{base:020d}.log"


class SegmentedLog:
    """A Raft log stored as CRC-checked records in numbered segment files.

    Thread-safety: every method may be called from one thread (the event loop) while
    :meth:`flush` and :meth:`save_state` run concurrently in an executor; internal state
    is guarded by a lock that is never held across an fsync or ``fsync_delay`` sleep.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 16 * 1024 * 1024,
        fsync: bool = True,
        fsync_delay: float = 0.0,
    ) -> None:
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        if fsync_delay < 0:
            raise ValueError(f"fsync_delay must be >= 0, got {fsync_delay}")
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.fsync_delay = fsync_delay
        self.recovered_truncated_bytes = 0
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._bases: list[int] = []
        self._last_term = 0
        self._active_dirty = False  # active segment has writes not yet fsynced
        self._dir_dirty = False  # directory has entries not yet fsynced
        self._closed = False
        self._commit_fd = -1
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._term, self._voted_for = self._read_state()
            self._recover()
            self._commit_fd, self._commit = self._open_commit()
        except BaseException:
            self._close_fds()
            raise
        if self._commit > self.last_index():
            logger.error(
                "%s: log ends at index %d, below the persisted commit index %d; "
                "committed entries were lost on this replica",
                self.directory,
                self.last_index(),
                self._commit,
            )

    # ------------------------------------------------------------------ recovery

    def _recover(self) -> None:
        found: list[tuple[int, Path]] = []
        for path in self.directory.iterdir():
            m = _SEGMENT_RE.match(path.name)
            if m is not None and path.is_file():
                found.append((int(m.group(1)), path))
        found.sort()
        if not found:
            self._create_segment(1)
            return
        prev_term = 0
        expected: int | None = None
        for k, (base, path) in enumerate(found):
            last = k == len(found) - 1
            if base < 1:
                raise LogCorruptionError(path, 0, "segment base index must be >= 1")
            if expected is not None and base != expected:
                if last and path.stat().st_size == 0:
                    logger.warning(
                        "%s: deleting empty trailing segment (expected base %d)", path, expected
                    )
                    path.unlink()
                    self._dir_dirty = True
                    break
                raise LogCorruptionError(
                    path, 0, f"segment starts at index {base} but the log ends at {expected - 1}"
                )
            fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            seg = _Segment(base, path, fd)
            self._segments.append(seg)
            self._bases.append(base)
            size = os.fstat(fd).st_size
            scan = _scan(_pread_all(fd, size, 0), base, prev_term)
            if scan.problem is not None:
                if not last:
                    raise LogCorruptionError(
                        path,
                        scan.end,
                        f"{scan.problem} in a non-last segment (not a torn write; refusing "
                        f"to drop possibly committed records)",
                    )
                cut = size - scan.end
                os.ftruncate(fd, scan.end)
                if self.fsync:
                    _fdatasync(fd)
                self.recovered_truncated_bytes += cut
                logger.warning(
                    "%s: truncated %d bytes of torn/corrupt tail at offset %d (%s); "
                    "log now ends at index %d",
                    path,
                    cut,
                    scan.end,
                    scan.problem,
                    base + len(scan.offsets) - 1,
                )
            seg.size = scan.end
            seg.offsets = scan.offsets
            seg.terms = scan.terms
            if scan.terms:
                prev_term = scan.terms[-1]
            expected = base + seg.count
        self._last_term = prev_term
        if self._dir_dirty and self.fsync:
            _fsync_dir(self.directory)
            self._dir_dirty = False

    def _create_segment(self, base: int) -> _Segment:
        path = self.directory / _segment_name(base)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o644)
        seg = _Segment(base, path, fd)
        self._segments.append(seg)
        self._bases.append(base)
        self._dir_dirty = True
        return seg

    # ------------------------------------------------------------------ queries

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"SegmentedLog({self.directory}) is closed")

    def first_index(self) -> int:
        """Index of the oldest entry (1 for a new log, also when empty)."""
        return self._segments[0].base

    def last_index(self) -> int:
        """Index of the newest entry, 0 when empty."""
        active = self._segments[-1]
        return active.base + active.count - 1

    def last_term(self) -> int:
        """Term of the newest entry, 0 when empty."""
        return self._last_term

    def _locate(self, index: int) -> tuple[_Segment, int]:
        if index < self.first_index() or index > self.last_index():
            raise IndexError(
                f"log index {index} outside [{self.first_index()}..{self.last_index()}]"
            )
        seg = self._segments[bisect_right(self._bases, index) - 1]
        return seg, index - seg.base

    def term_at(self, index: int) -> int:
        """Term of entry ``index``; 0 for index 0; IndexError outside the log."""
        if index == 0:
            return 0
        with self._lock:
            seg, i = self._locate(index)
            return seg.terms[i]

    def entry(self, index: int) -> Entry:
        with self._lock:
            self._check_open()
            seg, i = self._locate(index)
            return self._read(seg, i, i + 1)[0]

    def entries(self, lo: int, hi: int, max_bytes: int = 1 << 20) -> list[Entry]:
        """Entries ``[lo, hi)`` (``hi`` is clamped to ``last_index() + 1``).

        Stops before the on-disk size of the batch (``25 + len(data)`` per entry)
        would exceed ``max_bytes``, but returns at least one entry when any is in
        range.  ``lo`` below ``first_index()`` raises IndexError; ``lo`` past the end
        returns ``[]``.
        """
        with self._lock:
            self._check_open()
            if lo >= hi:
                return []
            if lo < self.first_index():
                raise IndexError(f"log index {lo} is below first index {self.first_index()}")
            hi = min(hi, self.last_index() + 1)
            out: list[Entry] = []
            budget = max_bytes
            index = lo
            while index < hi:
                seg, i = self._locate(index)
                j = i
                stop = min(seg.count, i + (hi - index))
                while j < stop:
                    size = seg.record_end(j) - seg.offsets[j]
                    if size > budget and (out or j > i):
                        break
                    budget -= size
                    j += 1
                if j > i:
                    out.extend(self._read(seg, i, j))
                    index += j - i
                if j < stop or j == i:
                    break
            return out

    def _read(self, seg: _Segment, i: int, j: int) -> list[Entry]:
        """Records ``i..j-1`` of ``seg`` (one pread), CRC-verified."""
        start = seg.offsets[i]
        buf = _pread_all(seg.fd, seg.record_end(j - 1) - start, start)
        view = memoryview(buf)
        out: list[Entry] = []
        for k in range(i, j):
            pos = seg.offsets[k] - start
            end = seg.record_end(k) - start
            problem: str | None = None
            if end > len(buf):
                problem = "record shorter than indexed (file truncated underneath the log?)"
            else:
                length, crc = _PREFIX.unpack_from(buf, pos)
                if _PREFIX.size + length != end - pos:
                    problem = f"record length {length} does not match the index"
                elif zlib.crc32(view[pos + _PREFIX.size : end]) != crc:
                    problem = "CRC mismatch on read"
            if problem is not None:
                raise LogCorruptionError(seg.path, seg.offsets[k], problem)
            index, term, kind = _FIXED.unpack_from(buf, pos + _PREFIX.size)
            if index != seg.base + k:
                raise LogCorruptionError(
                    seg.path, seg.offsets[k], f"read index {index}, expected {seg.base + k}"
                )
            out.append(Entry(term, index, bytes(view[pos + RECORD_HEADER_SIZE : end]), kind))
        return out

    # ------------------------------------------------------------------ mutation

    def append(self, entries: Sequence[Entry]) -> None:
        """Append contiguous entries after ``last_index()``; written, not yet durable.

        On an I/O error the log stays consistent but may hold a prefix of ``entries``
        (those that went to an earlier segment when the batch spanned a roll).
        """
        if not entries:
            return
        with self._lock:
            self._check_open()
            expected = self.last_index() + 1
            prev_term = self._last_term
            encoded: list[tuple[Entry, bytes, bytes]] = []
            for e in entries:
                if e.index != expected:
                    raise ValueError(
                        f"non-contiguous append: entry index {e.index}, expected {expected} "
                        f"(last_index {self.last_index()}, batch starts at {entries[0].index})"
                    )
                if not prev_term <= e.term <= _MAX_U64:
                    raise ValueError(
                        f"entry {e.index} has term {e.term}; terms must be non-decreasing "
                        f"(previous {prev_term}) and fit in u64"
                    )
                if not 0 <= e.kind <= 0xFF:
                    raise ValueError(f"entry {e.index} has kind {e.kind}, must fit in u8")
                if len(e.data) > _MAX_DATA:
                    raise ValueError(f"entry {e.index} data is {len(e.data)} bytes, too large")
                fixed = _FIXED.pack(e.index, e.term, e.kind)
                crc = zlib.crc32(e.data, zlib.crc32(fixed))
                encoded.append((e, _PREFIX.pack(_FIXED.size + len(e.data), crc) + fixed, e.data))
                expected += 1
                prev_term = e.term

            pending: list[tuple[Entry, bytes, bytes]] = []
            pending_bytes = 0
            for rec in encoded:
                size = len(rec[1]) + len(rec[2])
                active = self._segments[-1]
                used = active.size + pending_bytes
                if used > 0 and used + size > self.segment_bytes:
                    self._write(pending)
                    pending, pending_bytes = [], 0
                    self._roll(rec[0].index)
                pending.append(rec)
                pending_bytes += size
            self._write(pending)

    def _write(self, records: list[tuple[Entry, bytes, bytes]]) -> None:
        if not records:
            return
        seg = self._segments[-1]
        parts: list[bytes] = []
        offsets: list[int] = []
        pos = seg.size
        for _e, head, data in records:
            offsets.append(pos)
            parts.append(head)
            parts.append(data)
            pos += len(head) + len(data)
        try:
            _pwrite_all(seg.fd, b"".join(parts), seg.size)
        except BaseException:
            # Do not leave a half-written batch behind: a later, shorter append would
            # leave its tail after the new records, where recovery could resurrect it.
            with contextlib.suppress(OSError):
                os.ftruncate(seg.fd, seg.size)
            raise
        seg.offsets.extend(offsets)
        seg.terms.extend(e.term for e, _, _ in records)
        seg.size = pos
        self._last_term = records[-1][0].term
        self._active_dirty = True

    def _roll(self, base: int) -> None:
        old = self._segments[-1]
        if self.fsync and self._active_dirty:
            # The old segment must be complete on disk before its successor can exist:
            # recovery treats damage in a non-last segment as fatal.
            _fdatasync(old.fd)
        self._active_dirty = False
        self._create_segment(base)

    def truncate_suffix(self, index: int) -> None:
        """Drop every entry with index >= ``index``; durable after :meth:`flush`."""
        with self._lock:
            self._check_open()
            if index > self.last_index():
                return
            if index < self.first_index():
                raise ValueError(
                    f"cannot truncate at {index}: below first index {self.first_index()}"
                )
            k = bisect_right(self._bases, index) - 1
            doomed = self._segments[k + 1 :]
            for seg in reversed(doomed):  # newest first: what remains is always a prefix
                os.close(seg.fd)
                seg.fd = -1
                seg.path.unlink()
            del self._segments[k + 1 :]
            del self._bases[k + 1 :]
            if doomed and self.fsync:
                _fsync_dir(self.directory)
            seg = self._segments[k]
            i = index - seg.base
            if i < seg.count:
                cut = seg.offsets[i]
                os.ftruncate(seg.fd, cut)
                del seg.offsets[i:]
                del seg.terms[i:]
                seg.size = cut
            self._active_dirty = True
            self._last_term = next((s.terms[-1] for s in reversed(self._segments) if s.count), 0)

    def flush(self) -> None:
        """Make everything appended or truncated before this call durable.

        Sleeps ``fsync_delay`` seconds first when set (a slow-disk fault knob; it
        applies even with ``fsync=False``).  Safe to run in an executor thread while
        the event loop keeps appending and reading.
        """
        if self.fsync_delay > 0:
            time.sleep(self.fsync_delay)
        with self._lock:
            self._check_open()
            if not self.fsync:
                return
            sync_active = self._active_dirty
            sync_dir = self._dir_dirty
            # A dup survives a concurrent roll/truncate/close closing the original fd.
            fd = os.dup(self._segments[-1].fd) if sync_active else -1
            self._active_dirty = False
            self._dir_dirty = False
        try:
            if fd >= 0:
                _fdatasync(fd)
            if sync_dir:
                _fsync_dir(self.directory)
        except BaseException:
            with self._lock:
                self._active_dirty |= sync_active
                self._dir_dirty |= sync_dir
            raise
        finally:
            if fd >= 0:
                os.close(fd)

    # ------------------------------------------------------------------ hard state

    def _read_state(self) -> tuple[int, int | None]:
        tmp = self.directory / _STATE_TMP
        if tmp.exists():
            logger.warning("%s: removing leftover temporary hard-state file", tmp)
            tmp.unlink()
        path = self.directory / _STATE_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return 0, None
        if len(raw) != _STATE.size + _CRC.size:
            raise LogCorruptionError(path, 0, f"hard state is {len(raw)} bytes, expected 26")
        (crc,) = _CRC.unpack_from(raw, _STATE.size)
        if zlib.crc32(raw[: _STATE.size]) != crc:
            raise LogCorruptionError(path, 0, "hard state CRC mismatch")
        magic, version, flags, term, voted_for = _STATE.unpack_from(raw)
        if magic != _STATE_MAGIC or version != _STATE_VERSION:
            raise LogCorruptionError(path, 0, f"bad hard state header {magic!r} v{version}")
        return term, (voted_for if flags & 1 else None)

    def save_state(self, term: int, voted_for: int | None) -> None:
        """Persist (term, voted_for); durable on return when ``fsync=True``."""
        if not 0 <= term <= _MAX_U64:
            raise ValueError(f"term {term} must fit in u64")
        body = _STATE.pack(
            _STATE_MAGIC,
            _STATE_VERSION,
            0 if voted_for is None else 1,
            term,
            0 if voted_for is None else voted_for,
        )
        raw = body + _CRC.pack(zlib.crc32(body))
        tmp = self.directory / _STATE_TMP
        with self._state_lock:
            self._check_open()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _pwrite_all(fd, raw, 0)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.directory / _STATE_FILE)
            if self.fsync:
                _fsync_dir(self.directory)
            self._term, self._voted_for = term, voted_for

    def load_state(self) -> tuple[int, int | None]:
        """(current term, voted for); (0, None) for a new log."""
        with self._state_lock:
            return self._term, self._voted_for

    def _open_commit(self) -> tuple[int, int]:
        path = self.directory / _COMMIT_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        raw = _pread_all(fd, _COMMIT.size + _CRC.size, 0)
        if not raw:
            return fd, 0
        if len(raw) == _COMMIT.size + _CRC.size:
            (crc,) = _CRC.unpack_from(raw, _COMMIT.size)
            if zlib.crc32(raw[: _COMMIT.size]) == crc:
                (commit,) = _COMMIT.unpack_from(raw)
                return fd, int(commit)
        logger.warning("%s: unreadable advisory commit index, using 0", path)
        return fd, 0

    def save_commit(self, commit_index: int) -> None:
        """Record the commit index (advisory: one in-place pwrite, no fsync)."""
        if not 0 <= commit_index <= _MAX_U64:
            raise ValueError(f"commit index {commit_index} must fit in u64")
        raw = _COMMIT.pack(commit_index)
        with self._lock:
            self._check_open()
            _pwrite_all(self._commit_fd, raw + _CRC.pack(zlib.crc32(raw)), 0)
            self._commit = commit_index

    def load_commit(self) -> int:
        """Last saved commit index, clamped to ``last_index()`` (0 when never saved)."""
        with self._lock:
            return min(self._commit, self.last_index())

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Sync pending writes (when ``fsync=True``, without ``fsync_delay``), close files."""
        with self._lock:
            if self._closed:
                return
            try:
                if self.fsync and self._active_dirty:
                    _fdatasync(self._segments[-1].fd)
                if self.fsync and self._dir_dirty:
                    _fsync_dir(self.directory)
            finally:
                self._closed = True
                self._close_fds()

    def _close_fds(self) -> None:
        for seg in self._segments:
            if seg.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(seg.fd)
                seg.fd = -1
        if self._commit_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._commit_fd)
            self._commit_fd = -1

    def __enter__(self) -> SegmentedLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SegmentedLog({str(self.directory)!r}, first={self.first_index()}, "
            f"last={self.last_index()}, segments={len(self._segments)})"
        )
