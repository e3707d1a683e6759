"""Tests for the broker's segmented Raft log (examples/broker/log.py)."""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from examples.broker.log import (
    KIND_NOOP,
    RECORD_HEADER_SIZE,
    Entry,
    LogCorruptionError,
    SegmentedLog,
    record_size,
)

# --------------------------------------------------------------------------- helpers


def encode(index: int, term: int, data: bytes, kind: int = 0) -> bytes:
    """The documented record format, written independently of the implementation."""
    body = struct.pack("<QQB", index, term, kind) + data
    return struct.pack("<II", len(body), zlib.crc32(body)) + body


def mk(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    """Entries lo..hi-1 with distinct, index-derived payloads."""
    return [Entry(term, i, (f"{i}:".encode() * size)[:size]) for i in range(lo, hi)]


def segments(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix == ".log")


def all_entries(log: SegmentedLog) -> list[Entry]:
    return log.entries(log.first_index(), log.last_index() + 1, max_bytes=1 << 40)


def reopen(log: SegmentedLog) -> SegmentedLog:
    log.close()
    return SegmentedLog(log.directory, segment_bytes=log.segment_bytes, fsync=log.fsync)


def chop(path: Path, nbytes: int) -> None:
    size = path.stat().st_size
    os.truncate(path, size - nbytes)


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SegmentedLog]:
    lg = SegmentedLog(tmp_path / "log", segment_bytes=256, fsync=False)
    yield lg
    lg.close()


# --------------------------------------------------------------------------- basics


def test_new_log_is_empty(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path / "a") as lg:
        assert (lg.first_index(), lg.last_index(), lg.last_term()) == (1, 0, 0)
        assert lg.term_at(0) == 0
        with pytest.raises(IndexError):
            lg.term_at(1)
        with pytest.raises(IndexError):
            lg.entry(1)
        assert lg.entries(1, 1) == []
        assert lg.entries(1, 10) == []
        assert lg.load_state() == (0, None)
        assert lg.load_commit() == 0
        assert lg.recovered_truncated_bytes == 0
        lg.flush()
    assert [p.name for p in segments(tmp_path / "a")] == ["00000000000000000001.log"]


def test_record_format_matches_docstring(log: SegmentedLog) -> None:
    log.append([Entry(7, 1, b"hello"), Entry(9, 2, b"", kind=KIND_NOOP)])
    raw = segments(log.directory)[0].read_bytes()
    assert raw == encode(1, 7, b"hello") + encode(2, 9, b"", 1)
    assert RECORD_HEADER_SIZE == 25
    assert record_size(Entry(1, 1, b"abc")) == 28


def test_append_read_term_at_across_rolls(log: SegmentedLog) -> None:
    batch: list[Entry] = []
    for i in range(1, 61):
        batch.append(Entry(term=1 + i // 7, index=i, data=os.urandom(i % 23), kind=i % 2))
    log.append(batch[:5])
    log.append(batch[5:40])
    log.append(batch[40:])
    segs = segments(log.directory)
    assert len(segs) > 4
    for p in segs:
        assert p.stat().st_size <= 256
    # each file is named by its first index and starts with that record
    for p in segs:
        base = int(p.stem)
        assert struct.unpack_from("<Q", p.read_bytes(), 8)[0] == base
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 60, 1 + 60 // 7)
    for e in batch:
        assert log.term_at(e.index) == e.term
        assert log.entry(e.index) == e
    assert all_entries(log) == batch
    for lo in range(1, 61, 7):
        assert log.entries(lo, lo + 13, max_bytes=1 << 30) == batch[lo - 1 : lo + 12]
    with pytest.raises(IndexError):
        log.term_at(61)
    with pytest.raises(IndexError):
        log.term_at(-1)


def test_oversized_record_gets_own_segment(log: SegmentedLog) -> None:
    log.append(mk(1, 3, size=10))
    log.append([Entry(1, 3, b"x" * 1000)])
    log.append(mk(4, 6, size=10))
    sizes = [(int(p.stem), p.stat().st_size) for p in segments(log.directory)]
    assert sizes == [(1, 70), (3, 1025), (4, 70)]
    assert log.entry(3).data == b"x" * 1000


@pytest.mark.parametrize(
    ("batch", "pattern"),
    [
        ([Entry(1, 12, b"")], "index 12, expected 11"),
        ([Entry(1, 10, b"")], "index 10, expected 11"),
        ([Entry(1, 11, b""), Entry(1, 13, b"")], "index 13, expected 12"),
        ([Entry(1, 11, b""), Entry(1, 11, b"")], "index 11, expected 12"),
    ],
)
def test_non_contiguous_append_raises(log: SegmentedLog, batch: list[Entry], pattern: str) -> None:
    log.append(mk(1, 11))
    before = segments(log.directory)[-1].read_bytes()
    with pytest.raises(ValueError, match=pattern):
        log.append(batch)
    assert log.last_index() == 10
    assert segments(log.directory)[-1].read_bytes() == before  # nothing half-written
    log.append(mk(11, 12))
    assert log.last_index() == 11


def test_append_rejects_decreasing_term_and_bad_kind(log: SegmentedLog) -> None:
    log.append(mk(1, 3, term=5))
    with pytest.raises(ValueError, match="non-decreasing"):
        log.append([Entry(4, 3, b"")])
    with pytest.raises(ValueError, match="kind"):
        log.append([Entry(5, 3, b"", kind=256)])
    log.append([])  # no-op
    assert log.last_index() == 2


def test_empty_log_first_append_must_start_at_one(log: SegmentedLog) -> None:
    with pytest.raises(ValueError, match="index 2, expected 1"):
        log.append(mk(2, 3))


# --------------------------------------------------------------------------- entries()


def test_entries_honours_max_bytes_but_returns_at_least_one(log: SegmentedLog) -> None:
    batch = mk(1, 31, size=10)  # 35 bytes per record, 7 records per 256-byte segment
    log.append(batch)
    rec = 35
    assert log.entries(1, 31, max_bytes=1) == batch[:1]
    assert log.entries(1, 31, max_bytes=0) == batch[:1]
    assert log.entries(5, 31, max_bytes=rec) == batch[4:5]
    assert log.entries(5, 31, max_bytes=rec * 3) == batch[4:7]
    assert log.entries(5, 31, max_bytes=rec * 3 + rec - 1) == batch[4:7]
    # spans segment boundaries (7 per segment) with the same budget rule
    assert log.entries(6, 31, max_bytes=rec * 10) == batch[5:15]
    assert log.entries(1, 31, max_bytes=1 << 20) == batch
    # hi is clamped; lo past the end is empty; lo >= hi is empty
    assert log.entries(29, 100) == batch[28:]
    assert log.entries(31, 40) == []
    assert log.entries(5, 5) == []
    assert log.entries(7, 3) == []
    with pytest.raises(IndexError):
        log.entries(0, 3)


def test_entries_large_first_record_exceeds_budget(log: SegmentedLog) -> None:
    log.append([Entry(1, 1, b"y" * 500), *mk(2, 4)])
    got = log.entries(1, 4, max_bytes=100)
    assert [e.index for e in got] == [1]
    assert got[0].data == b"y" * 500


# --------------------------------------------------------------------------- truncation


def test_truncate_suffix_inside_segment_then_append(log: SegmentedLog) -> None:
    log.append(mk(1, 6, term=1))
    assert len(segments(log.directory)) == 1
    log.truncate_suffix(4)
    assert (log.last_index(), log.last_term()) == (3, 1)
    with pytest.raises(IndexError):
        log.entry(4)
    log.append(mk(4, 8, term=2, size=3))
    assert [log.term_at(i) for i in range(1, 8)] == [1, 1, 1, 2, 2, 2, 2]
    assert log.entry(4) == Entry(2, 4, b"4:4")
    log.flush()
    lg = reopen(log)
    try:
        assert all_entries(lg) == mk(1, 4, term=1) + mk(4, 8, term=2, size=3)
        assert lg.recovered_truncated_bytes == 0
    finally:
        lg.close()


def test_truncate_suffix_across_segments(log: SegmentedLog) -> None:
    log.append(mk(1, 30, term=1))  # 7 records per segment -> 5 segments
    assert [int(p.stem) for p in segments(log.directory)] == [1, 8, 15, 22, 29]
    log.truncate_suffix(10)
    assert [int(p.stem) for p in segments(log.directory)] == [1, 8]
    assert (log.last_index(), log.last_term()) == (9, 1)
    log.append(mk(10, 25, term=3))
    assert all_entries(log) == mk(1, 10) + mk(10, 25, term=3)
    log.flush()
    lg = reopen(log)
    try:
        assert all_entries(lg) == mk(1, 10) + mk(10, 25, term=3)
        assert lg.last_term() == 3
    finally:
        lg.close()


def test_truncate_at_segment_base_leaves_empty_active_segment(log: SegmentedLog) -> None:
    log.append(mk(1, 20, term=1))
    log.append(mk(20, 22, term=2))
    log.truncate_suffix(8)  # 8 is the base of the second segment
    assert [int(p.stem) for p in segments(log.directory)] == [1, 8]
    assert segments(log.directory)[1].stat().st_size == 0
    assert (log.last_index(), log.last_term()) == (7, 1)
    lg = reopen(log)
    try:
        assert (lg.last_index(), lg.last_term()) == (7, 1)
        lg.append(mk(8, 9, term=4))
        assert lg.term_at(8) == 4
    finally:
        lg.close()


def test_truncate_everything(log: SegmentedLog) -> None:
    log.append(mk(1, 20, term=2))
    log.truncate_suffix(1)
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 0, 0)
    assert [int(p.stem) for p in segments(log.directory)] == [1]
    log.append(mk(1, 3, term=5))
    assert log.term_at(1) == 5


def test_truncate_bounds(log: SegmentedLog) -> None:
    log.append(mk(1, 5))
    log.truncate_suffix(5)  # beyond the end: no-op
    log.truncate_suffix(99)
    assert log.last_index() == 4
    with pytest.raises(ValueError, match="below first index"):
        log.truncate_suffix(0)


# --------------------------------------------------------------------------- persistence


def test_reopen_persists_after_flush(tmp_path: Path) -> None:
    d = tmp_path / "p"
    with SegmentedLog(d, segment_bytes=300, fsync=True) as lg:
        lg.append(mk(1, 40, term=1))
        lg.append([Entry(2, 40, b"", kind=KIND_NOOP)])
        lg.flush()
        lg.save_state(2, 3)
        lg.save_commit(39)
    with SegmentedLog(d, segment_bytes=300, fsync=True) as lg:
        assert all_entries(lg) == [*mk(1, 40, term=1), Entry(2, 40, b"", kind=KIND_NOOP)]
        assert (lg.last_index(), lg.last_term()) == (40, 2)
        assert lg.load_state() == (2, 3)
        assert lg.load_commit() == 39
        assert lg.recovered_truncated_bytes == 0
        lg.append(mk(41, 43, term=2))
    with SegmentedLog(d, segment_bytes=300, fsync=True) as lg:
        assert lg.last_index() == 42


def test_closed_log_rejects_use(log: SegmentedLog) -> None:
    log.append(mk(1, 2))
    log.close()
    log.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        log.append(mk(2, 3))
    with pytest.raises(RuntimeError, match="closed"):
        log.entries(1, 2)
    with pytest.raises(RuntimeError, match="closed"):
        log.flush()


# --------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("alone_in_segment", [False, True], ids=["shared", "alone"])
def test_torn_tail_every_cut(tmp_path: Path, alone_in_segment: bool) -> None:
    n = 6
    src = tmp_path / "src"
    seg_bytes = 5 * 35 if alone_in_segment else 4096  # 35-byte records; 6th rolls alone
    batch = [*mk(1, n, size=10), Entry(3, n, b"last-record-payload!")]
    with SegmentedLog(src, segment_bytes=seg_bytes, fsync=True) as lg:
        lg.append(batch)
        lg.flush()
    last_seg = segments(src)[-1]
    assert (int(last_seg.stem) == n) is alone_in_segment
    rec = record_size(batch[-1])
    for cut in range(1, rec + 1):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(src, d)
        chop(d / last_seg.name, cut)
        with SegmentedLog(d, segment_bytes=seg_bytes, fsync=False) as lg:
            assert lg.last_index() == n - 1, cut
            assert lg.last_term() == 1
            assert lg.recovered_truncated_bytes == rec - cut
            assert all_entries(lg) == batch[:-1]
            lg.append([Entry(4, n, b"again")])
            lg.append([Entry(4, n + 1, b"more")])
        with SegmentedLog(d, segment_bytes=seg_bytes, fsync=False) as lg:
            assert lg.recovered_truncated_bytes == 0
            assert all_entries(lg) == [*batch[:-1], Entry(4, n, b"again"), Entry(4, n + 1, b"more")]
        shutil.rmtree(d)


@pytest.mark.parametrize(
    "tail",
    [
        b"\x00" * 4096,
        b"\x00" * 7,
        bytes(range(256)) * 3,
        b"\xff" * 100,
        struct.pack("<II", 17, 0) + b"\x00" * 17,  # plausible header, body of zeros
        struct.pack("<II", 1 << 30, 0),  # length far past the end
    ],
    ids=["zeros4k", "zeros7", "ramp", "ones", "zero-body", "huge-length"],
)
def test_garbage_and_zero_tail_is_truncated(
    tmp_path: Path, tail: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "g"
    with SegmentedLog(d, fsync=False) as lg:
        lg.append(mk(1, 9))
    seg = segments(d)[-1]
    good = seg.stat().st_size
    with seg.open("ab") as f:
        f.write(tail)
    with caplog.at_level(logging.WARNING, logger="broker.log"), SegmentedLog(d) as lg:
        assert lg.last_index() == 8
        assert lg.recovered_truncated_bytes == len(tail)
        assert seg.stat().st_size == good  # cut on disk, never served
        assert all_entries(lg) == mk(1, 9)
        lg.append(mk(9, 10))
    assert any("truncated" in r.getMessage() and str(seg) in r.getMessage() for r in caplog.records)
    with SegmentedLog(d) as lg:
        assert all_entries(lg) == mk(1, 10)


@pytest.mark.parametrize("where", ["crc-field", "index", "term", "data", "length"])
def test_corrupt_last_record_is_truncated(tmp_path: Path, where: str) -> None:
    d = tmp_path / "c"
    with SegmentedLog(d, fsync=False) as lg:
        lg.append(mk(1, 6, size=12))
    seg = segments(d)[-1]
    start = 4 * record_size(mk(1, 2, size=12)[0])
    full = seg.stat().st_size
    flip(seg, start + {"length": 0, "crc-field": 5, "index": 9, "term": 17, "data": 30}[where])
    with SegmentedLog(d, fsync=False) as lg:
        assert lg.last_index() == 4
        assert lg.recovered_truncated_bytes == full - start == 37
        assert seg.stat().st_size == start
        assert all_entries(lg) == mk(1, 5, size=12)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (encode(7, 1, b"skips index 6"), "index 7, expected 6"),
        (encode(5, 1, b"repeats index 5"), "index 5, expected 6"),
        (encode(6, 0, b"term goes backwards"), "term 0 below previous term 1"),
    ],
)
def test_valid_crc_but_non_contiguous_tail_is_truncated(
    tmp_path: Path, extra: bytes, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "nc"
    with SegmentedLog(d, fsync=False) as lg:
        lg.append(mk(1, 6))
    with segments(d)[-1].open("ab") as f:
        f.write(extra + encode(8, 1, b"after"))
    with caplog.at_level(logging.WARNING, logger="broker.log"), SegmentedLog(d) as lg:
        assert lg.last_index() == 5
        assert lg.recovered_truncated_bytes == len(extra) + record_size(Entry(1, 8, b"after"))
    assert any(problem in r.getMessage() for r in caplog.records)


def test_corruption_mid_last_segment_below_commit_logs_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "m"
    with SegmentedLog(d, fsync=False) as lg:
        lg.append(mk(1, 11))
        lg.save_commit(10)
    flip(segments(d)[0], 3 * 35 + 30)  # data byte of record 4
    with caplog.at_level(logging.WARNING, logger="broker.log"), SegmentedLog(d) as lg:
        assert lg.last_index() == 3
        assert lg.load_commit() == 3  # clamped to what the log holds
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors
    assert "below the persisted commit index 10" in errors[0].getMessage()


@pytest.mark.parametrize("damage", ["crc", "chop-mid", "zero-record"])
def test_corruption_in_earlier_segment_raises(tmp_path: Path, damage: str) -> None:
    d = tmp_path / "e"
    with SegmentedLog(d, segment_bytes=256, fsync=False) as lg:
        lg.append(mk(1, 30))  # segments 1, 8, 15, 22, 29
    victim = segments(d)[1]  # 00000000000000000008.log, records 8..14
    bad_offset = 3 * 35  # record 11
    if damage == "crc":
        flip(victim, bad_offset + 28)
    elif damage == "chop-mid":
        chop(victim, 10)
        bad_offset = 6 * 35
    else:
        with victim.open("r+b") as f:
            f.seek(bad_offset)
            f.write(b"\x00" * 35)
    before = {p.name: p.read_bytes() for p in segments(d)}
    with pytest.raises(LogCorruptionError) as ei:
        SegmentedLog(d, segment_bytes=256, fsync=False)
    err = ei.value
    assert err.path == victim
    assert err.offset == bad_offset
    assert str(victim) in str(err) and f"offset {bad_offset}" in str(err)
    assert "non-last segment" in str(err)
    # nothing was "repaired" on disk
    assert {p.name: p.read_bytes() for p in segments(d)} == before


def test_missing_middle_segment_raises(tmp_path: Path) -> None:
    d = tmp_path / "gap"
    with SegmentedLog(d, segment_bytes=256, fsync=False) as lg:
        lg.append(mk(1, 30))
    segments(d)[2].unlink()  # records 15..21
    with pytest.raises(LogCorruptionError, match="starts at index 22 but the log ends at 14"):
        SegmentedLog(d, segment_bytes=256, fsync=False)


def test_empty_trailing_segment(tmp_path: Path) -> None:
    d = tmp_path / "t"
    with SegmentedLog(d, segment_bytes=256, fsync=False) as lg:
        lg.append(mk(1, 9))  # fills segment 1 (7 records) and starts segment 8
    assert [int(p.stem) for p in segments(d)] == [1, 8]
    segments(d)[-1].write_bytes(b"")  # crash after roll, before the first write landed
    with SegmentedLog(d, segment_bytes=256, fsync=False) as lg:
        assert (lg.last_index(), lg.recovered_truncated_bytes) == (7, 0)
        lg.append(mk(8, 10))
        assert all_entries(lg) == mk(1, 10)
    assert [int(p.stem) for p in segments(d)] == [1, 8]
    # an empty trailing segment whose name does not follow holds nothing: deleted
    (d / f"{50:020d}.log").write_bytes(b"")
    with SegmentedLog(d, segment_bytes=256, fsync=False) as lg:
        assert lg.last_index() == 9
        lg.append(mk(10, 11))
    assert [int(p.stem) for p in segments(d)] == [1, 8]


def test_last_segment_entirely_garbage(tmp_path: Path) -> None:
    d = tmp_path / "lg"
    with SegmentedLog(d, segment_bytes=256, fsync=False) as lg:
        lg.append(mk(1, 9))
    segments(d)[-1].write_bytes(b"\x00" * 100)
    with SegmentedLog(d, segment_bytes=256, fsync=False) as lg:
        assert (lg.last_index(), lg.last_term(), lg.recovered_truncated_bytes) == (7, 1, 100)
        lg.append(mk(8, 9, term=2))
        assert lg.term_at(8) == 2


def test_unrelated_files_are_ignored(tmp_path: Path) -> None:
    d = tmp_path / "u"
    with SegmentedLog(d, fsync=False) as lg:
        lg.append(mk(1, 3))
    (d / "notes.txt").write_text("hi")
    (d / "123.log").write_bytes(b"junk")  # not a 20-digit name
    with SegmentedLog(d, fsync=False) as lg:
        assert lg.last_index() == 2


# --------------------------------------------------------------------------- hard state


def test_hard_state_round_trip(tmp_path: Path) -> None:
    d = tmp_path / "hs"
    with SegmentedLog(d, fsync=True) as lg:
        assert lg.load_state() == (0, None)
        lg.save_state(1, None)
        assert lg.load_state() == (1, None)
        lg.save_state(5, 0)
        assert lg.load_state() == (5, 0)
        lg.save_state(7, 2)
    with SegmentedLog(d) as lg:
        assert lg.load_state() == (7, 2)
        lg.save_state(8, None)
    with SegmentedLog(d) as lg:
        assert lg.load_state() == (8, None)
    assert sorted(p.name for p in d.iterdir() if "state" in p.name) == ["raft_state"]


def test_hard_state_leftover_temp_file_is_ignored(tmp_path: Path) -> None:
    d = tmp_path / "hs"
    with SegmentedLog(d) as lg:
        lg.save_state(4, 1)
    # a crash between writing the temp file and os.replace leaves it behind
    (d / "raft_state.tmp").write_bytes(b"\x13" * 11)
    with SegmentedLog(d) as lg:
        assert lg.load_state() == (4, 1)
        assert not (d / "raft_state.tmp").exists()
        lg.save_state(5, 2)
    with SegmentedLog(d) as lg:
        assert lg.load_state() == (5, 2)
    # a temp file but no state file at all: still the initial state
    d2 = tmp_path / "hs2"
    d2.mkdir()
    (d2 / "raft_state.tmp").write_bytes(b"RFHS" + b"\x01" * 22)
    with SegmentedLog(d2) as lg:
        assert lg.load_state() == (0, None)


def test_corrupt_hard_state_raises(tmp_path: Path) -> None:
    d = tmp_path / "hs"
    with SegmentedLog(d) as lg:
        lg.save_state(4, 1)
    flip(d / "raft_state", 8)
    with pytest.raises(LogCorruptionError, match="hard state CRC"):
        SegmentedLog(d)


def test_commit_index_round_trip_and_damage(tmp_path: Path) -> None:
    d = tmp_path / "ci"
    with SegmentedLog(d, fsync=False) as lg:
        lg.append(mk(1, 21))
        lg.save_commit(12)
        assert lg.load_commit() == 12
        lg.save_commit(20)
    with SegmentedLog(d, fsync=False) as lg:
        assert lg.load_commit() == 20
        lg.truncate_suffix(15)
        assert lg.load_commit() == 14
    flip(d / "commit_index", 2)
    with SegmentedLog(d, fsync=False) as lg:
        assert lg.load_commit() == 0  # advisory: a torn/damaged value reads as 0


# --------------------------------------------------------------------------- flush


def test_fsync_delay_delays_flush(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path / "slow", fsync=False, fsync_delay=0.1) as lg:
        lg.append(mk(1, 3))
        t0 = time.monotonic()
        lg.flush()
        assert time.monotonic() - t0 >= 0.09
    with SegmentedLog(tmp_path / "fast", fsync=True) as lg:
        lg.append(mk(1, 3))
        t0 = time.monotonic()
        lg.flush()
        assert time.monotonic() - t0 < 5.0


def test_flush_in_thread_while_appending(tmp_path: Path) -> None:
    d = tmp_path / "conc"
    stop = threading.Event()
    errors: list[BaseException] = []
    with SegmentedLog(d, segment_bytes=512, fsync=True) as lg:

        def flusher() -> None:
            try:
                while not stop.is_set():
                    lg.flush()
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=flusher)
        t.start()
        try:
            for lo in range(1, 300, 10):
                lg.append(mk(lo, lo + 10, term=1 + lo // 100))
                if lo % 70 == 1:
                    lg.truncate_suffix(lo + 5)
                    lg.append(mk(lo + 5, lo + 10, term=1 + lo // 100))
        finally:
            stop.set()
            t.join()
        assert not errors
        lg.flush()
        expected = all_entries(lg)
    with SegmentedLog(d, segment_bytes=512) as lg:
        assert all_entries(lg) == expected
        assert lg.last_index() == 300


# --------------------------------------------------------------------------- stateful


class LogMachine(RuleBasedStateMachine):
    """SegmentedLog vs. a plain list under append / truncate / reopen / torn tails."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="segmented-log-"))
        self.model: list[Entry] = []
        self.log: SegmentedLog | None = None
        self.seg_bytes = 120

    @initialize(seg_bytes=st.sampled_from([40, 120, 400]))
    def open_log(self, seg_bytes: int) -> None:
        self.seg_bytes = seg_bytes
        self.log = SegmentedLog(self.tmp, segment_bytes=seg_bytes, fsync=False)

    @property
    def lg(self) -> SegmentedLog:
        assert self.log is not None
        return self.log

    def _reopen(self) -> None:
        self.lg.close()
        self.log = SegmentedLog(self.tmp, segment_bytes=self.seg_bytes, fsync=False)

    @rule(
        n=st.integers(1, 6),
        bump=st.integers(0, 2),
        sizes=st.lists(st.integers(0, 60), min_size=6, max_size=6),
        kind=st.integers(0, 1),
    )
    def append(self, n: int, bump: int, sizes: list[int], kind: int) -> None:
        last_term = self.model[-1].term if self.model else 0
        term = last_term + bump
        start = len(self.model) + 1
        batch = [
            Entry(term, start + k, bytes([(start + k) % 251]) * sizes[k], kind) for k in range(n)
        ]
        self.lg.append(batch)
        self.model.extend(batch)

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(1, len(self.model) + 2))
        self.lg.truncate_suffix(index)
        del self.model[index - 1 :]

    @rule(bad_offset=st.sampled_from([-2, -1, 1, 2]))
    def bad_append(self, bad_offset: int) -> None:
        start = len(self.model) + 1 + bad_offset
        with pytest.raises(ValueError):
            self.lg.append([Entry(self.lg.last_term(), start, b"x")])

    @rule(flush=st.booleans())
    def reopen(self, flush: bool) -> None:
        if flush:
            self.lg.flush()
        self._reopen()
        assert self.lg.recovered_truncated_bytes == 0

    @rule(data=st.data())
    def torn_tail(self, data: st.DataObject) -> None:
        self.lg.flush()
        self.lg.close()
        last = segments(self.tmp)[-1]
        base = int(last.stem)
        size = last.stat().st_size
        if size == 0:
            self._reopen()
            return
        cut = data.draw(st.integers(1, size))
        os.truncate(last, size - cut)
        keep = len(self.model)
        end = 0
        for k, e in enumerate(self.model[base - 1 :]):
            end += record_size(e)
            if end > size - cut:
                keep = base - 1 + k
                break
        expected_cut = (size - cut) - sum(record_size(e) for e in self.model[base - 1 : keep])
        del self.model[keep:]
        self.log = SegmentedLog(self.tmp, segment_bytes=self.seg_bytes, fsync=False)
        assert self.lg.recovered_truncated_bytes == expected_cut

    @rule(data=st.data())
    def read_range(self, data: st.DataObject) -> None:
        lo = data.draw(st.integers(1, len(self.model) + 1))
        hi = data.draw(st.integers(lo, len(self.model) + 3))
        budget = data.draw(st.integers(0, 300))
        got = self.lg.entries(lo, hi, max_bytes=budget)
        want = self.model[lo - 1 : hi - 1]
        assert got == want[: len(got)]
        if want:
            assert got
            assert len(got) == 1 or sum(record_size(e) for e in got) <= budget
            if len(got) < len(want):
                assert sum(record_size(e) for e in want[: len(got) + 1]) > budget

    @invariant()
    def matches_model(self) -> None:
        if self.log is None:
            return
        lg = self.lg
        assert lg.first_index() == 1
        assert lg.last_index() == len(self.model)
        assert lg.last_term() == (self.model[-1].term if self.model else 0)
        for e in self.model[-3:]:
            assert lg.term_at(e.index) == e.term
        assert all_entries(lg) == self.model

    def teardown(self) -> None:
        if self.log is not None:
            self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


LogMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLogMachine = LogMachine.TestCase
