"""Hostile input against a live server: the server never crashes, never leaks a
connection's memory or budget, and keeps answering a well-behaved client.

One server per module runs in its own process (tests/_soak_server.py), so "did not
crash" means its process is alive, its event loop's exception handler never fired and
it logged nothing at ERROR. A well-behaved ``smf.Client`` (on an event loop in a
background thread) calls it after every hostile example, and the server's own view is
read through its STATS handler: after the hostile peers disconnect it holds only the
good client's connection, no handler task and no byte-budget charge.

Hostile peers are plain blocking sockets: random bytes, truncated frames, size fields
up to 2**32-1, bad checksums, unknown wire ids, every compression and bitflags byte,
bit flips of valid streams, and valid frames split at every byte. An atheris run over
the frame decoder (slow pass only) closes the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import random
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import smf
from smf import headers
from smf.wire import HEADER, HEADER_SIZE, Frame, FrameDecoder, checksum, encode_frame

T = TypeVar("T")
MiB = 1024 * 1024
MAX_BODY = 64 * 1024
STATUSES = {200, 400, 404, 413, 503, 505}  # what a hostile peer may get back
# The header with compression as the raw byte it is on the wire (HEADER reads it as the
# schema's signed int8, so 0x80..0xFF come out as -128..-1).
RAW_HEADER = struct.Struct("<BBHIII")


def _load_helper() -> ModuleType:
    path = Path(__file__).with_name("_soak_server.py")
    spec = importlib.util.spec_from_file_location("smf_tests_soak_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helper = _load_helper()
ECHO = helper.ECHO
HANDLED = {helper.ECHO, helper.SLEEP, helper.BLOCK, helper.RELEASE, helper.DROP, helper.STATS}
HANDLED |= set(smf.Server().router.handlers)  # the built-in health and reflection services

hostile = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------- the live server


class Live:
    """The server process, and a well-behaved client on a loop in a background thread."""

    def __init__(self) -> None:
        self.server = helper.ServerProcess(
            {"max_body_size": MAX_BODY, "body_timeout": 5.0, "idle_timeout": None}
        )
        self.port = self.server.port
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client: smf.Client = self.run(self._connect())
        self.checks = 0

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self) -> smf.Client:
        client = smf.Client("127.0.0.1", self.port, timeout=10.0)
        await client.connect()
        return client

    def call(self, wire_id: int, body: bytes) -> bytes:
        async def go() -> bytes:
            return bytes(await self.client.call(wire_id, body))

        return self.run(go())

    def stats(self, gc: bool = False) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.call(helper.STATS, b"gc" if gc else b"-"))
        return report

    def settle(self, timeout: float = 10.0, gc: bool = False) -> dict[str, Any]:
        """Wait until the server holds only the good client's connection, no task and
        no budget charge; its stats then."""
        deadline = time.monotonic() + timeout
        while True:
            report = self.stats(gc)
            if report["connections"] == 1 and report["tasks"] == 0 and report["budget_used"] == 0:
                return report
            if time.monotonic() > deadline:
                pytest.fail(f"server did not settle after hostile peers left: {report}")
            time.sleep(0.002)

    def check(self) -> dict[str, Any]:
        """The server is alive, answers the good client, and leaked nothing."""
        assert self.server.alive(), f"server process died (exit code {self.server.proc.poll()})"
        payload = os.urandom(8).hex().encode() * (1 + self.checks % 7)
        self.checks += 1
        assert self.call(ECHO, payload) == payload
        report = self.settle()
        assert report["loop_errors"] == 0, report
        assert report["log_errors"] == 0, report
        assert report["in_flight"] == 0, report
        return report

    def close(self) -> int | None:
        with contextlib.suppress(Exception):
            self.run(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        code: int | None = self.server.stop()
        return code


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    server = Live()
    yield server
    report = server.stats()
    code = server.close()
    assert report["loop_errors"] == 0 and report["log_errors"] == 0, report
    assert code == 0, f"server exited with {code}"


class Peer:
    """A hostile peer on a blocking socket."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = FrameDecoder(2**32 - 1)
        self.received = 0

    def send(self, data: bytes) -> bool:
        """False if the server already closed the connection."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def _recv(self) -> bytes:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return b""
        self.received += len(data)
        return data

    def read_frames(self, n: int) -> list[tuple[int, int, bytes]]:
        """``n`` answers as (session, status, body); checksums checked by the decoder."""
        out: list[tuple[int, int, bytes]] = []
        while len(out) < n:
            while (event := self.decoder.next_event()) is not None:
                assert isinstance(event, Frame)
                out.append((event.session, event.meta, bytes(event.body)))
                event.body.release()
            if len(out) >= n:
                break
            data = self._recv()
            assert data, f"connection closed after {len(out)} of {n} answers"
            self.decoder.receive_data(data)
        assert len(out) == n, f"{len(out)} answers, expected {n}"
        return out

    def drain_to_eof(self) -> list[tuple[int, int, bytes]]:
        """Everything the server sends until it closes; each must be a valid frame."""
        out: list[tuple[int, int, bytes]] = []
        while data := self._recv():
            self.decoder.receive_data(data)
            while (event := self.decoder.next_event()) is not None:
                assert isinstance(event, Frame)
                out.append((event.session, event.meta, bytes(event.body)))
                event.body.release()
        assert self.decoder.buffered == 0, "the server closed mid-frame"
        return out

    def half_close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def expect_closed_silently(self) -> None:
        assert self.drain_to_eof() == []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _well_formed(answers: list[tuple[int, int, bytes]]) -> None:
    for _, status, _ in answers:
        assert status in STATUSES, answers


# --------------------------------------------------------------------------- hypothesis

bodies = st.binary(min_size=1, max_size=2048)
sessions = st.integers(0, 0xFFFF)
valid_frames = st.lists(st.tuples(sessions, bodies), min_size=1, max_size=4)


def _stream(frames: list[tuple[int, bytes]]) -> bytes:
    return b"".join(encode_frame(s, ECHO, body) for s, body in frames)


@hostile
@given(data=st.binary(min_size=1, max_size=4096))
def test_random_bytes(live: Live, data: bytes) -> None:
    with Peer(live.port) as peer:
        peer.send(data)
        peer.half_close()
        _well_formed(peer.drain_to_eof())
    live.check()


@hostile
@given(frames=valid_frames, cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_valid_frames(live: Live, frames: list[tuple[int, bytes]], cut: float) -> None:
    stream = _stream(frames)
    cut_at = int(cut * len(stream))
    complete, offset = [], 0
    for session, body in frames:
        offset += HEADER_SIZE + len(body)
        if offset <= cut_at:
            complete.append((session, 200, body))
    with Peer(live.port) as peer:
        peer.send(stream[:cut_at])
        answers = peer.read_frames(len(complete))
        assert sorted(answers) == sorted(complete)
    live.check()


sizes = st.one_of(
    st.integers(1, 2**32 - 1),
    st.sampled_from(
        [1, 15, 16, 17, MAX_BODY - 1, MAX_BODY, MAX_BODY + 1, 2**16, 2**31, 2**32 - 2, 2**32 - 1]
    ),
)


@hostile
@given(
    size=sizes,
    session=sessions,
    csum=st.integers(0, 2**32 - 1),
    tail=st.binary(max_size=512),
)
def test_size_fields_up_to_4_gib(
    live: Live, size: int, session: int, csum: int, tail: bytes
) -> None:
    with Peer(live.port) as peer:
        peer.send(HEADER.pack(0, 0, session, size, csum, ECHO) + tail)
        if size > MAX_BODY:
            # Answered 413 at once; the body is skipped as it streams in, never held.
            ((got_session, status, body),) = peer.read_frames(1)
            assert (got_session, status) == (session, 413)
            assert str(size).encode() in body and str(MAX_BODY).encode() in body
            if len(tail) < size:
                rest = min(size - len(tail), 1024)
                peer.send(b"s" * rest)
        peer.half_close()
        answers = peer.drain_to_eof()
        if size <= len(tail) and checksum(tail[:size]) == csum:
            assert answers and answers[0][:2] == (session, 200)
        _well_formed(answers)
    live.check()


@hostile
@given(before=st.lists(st.tuples(sessions, bodies), max_size=3), bad=bodies, flip=st.integers(1))
def test_bad_checksums(live: Live, before: list[tuple[int, bytes]], bad: bytes, flip: int) -> None:
    flip &= 0xFFFFFFFF
    flip = flip or 1
    header = HEADER.pack(0, 0, 9, len(bad), checksum(bad) ^ flip, ECHO)
    with Peer(live.port) as peer:
        if before:
            peer.send(_stream(before))
            assert sorted(peer.read_frames(len(before))) == sorted((s, 200, b) for s, b in before)
        peer.send(header + bad)
        peer.expect_closed_silently()
    live.check()


@hostile
@given(
    meta=st.integers(1, 2**32 - 1).filter(lambda m: m not in HANDLED),
    session=sessions,
    body=bodies,
)
def test_unknown_ids(live: Live, meta: int, session: int, body: bytes) -> None:
    with Peer(live.port) as peer:
        peer.send(encode_frame(session, meta, body))
        ((got_session, status, text),) = peer.read_frames(1)
        assert (got_session, status) == (session, 404)
        assert str(meta).encode() in text
        peer.send(encode_frame(session ^ 1, ECHO, b"still served"))
        assert peer.read_frames(1) == [(session ^ 1, 200, b"still served")]
    live.check()


def _expected_close(compression: int, flags: int, size: int, meta: int, good_csum: bool) -> bool:
    return compression > 3 or bool(flags & ~1) or size == 0 or meta == 0 or not good_csum


@hostile
@given(
    compression=st.integers(0, 255),
    flags=st.integers(0, 255),
    session=sessions,
    meta=st.one_of(st.just(ECHO), st.integers(0, 2**32 - 1).filter(lambda m: m not in HANDLED)),
    body=bodies,
    good_csum=st.booleans(),
)
def test_every_header_field_hostile(
    live: Live,
    compression: int,
    flags: int,
    session: int,
    meta: int,
    body: bytes,
    good_csum: bool,
) -> None:
    csum = checksum(body) if good_csum else checksum(body) ^ 0x5A5A5A5A
    closes = _expected_close(compression, flags, len(body), meta, good_csum)
    with Peer(live.port) as peer:
        peer.send(RAW_HEADER.pack(compression, flags, session, len(body), csum, meta) + body)
        if closes:
            peer.expect_closed_silently()
        else:
            ((got_session, status, _),) = peer.read_frames(1)
            assert got_session == session
            assert status in STATUSES
            if meta != ECHO:
                assert status == 404
            peer.send(encode_frame(7, ECHO, b"next"))
            assert peer.read_frames(1) == [(7, 200, b"next")]
    live.check()


@hostile
@given(
    frames=valid_frames,
    flips=st.lists(st.tuples(st.integers(0), st.integers(1, 255)), min_size=1, max_size=8),
)
def test_bit_flips_in_a_valid_stream(
    live: Live, frames: list[tuple[int, bytes]], flips: list[tuple[int, int]]
) -> None:
    stream = bytearray(_stream(frames))
    for position, mask in flips:
        stream[position % len(stream)] ^= mask
    with Peer(live.port) as peer:
        peer.send(bytes(stream))
        peer.half_close()
        _well_formed(peer.drain_to_eof())
    live.check()


# --------------------------------------------------------------------------- exhaustive


def test_every_compression_and_bitflags_byte(live: Live) -> None:
    body = b"every byte"
    with_headers = headers.encode({"k": "v"}) + body
    outcomes: dict[str, dict[int, int | str]] = {"compression": {}, "flags": {}}
    for field in ("compression", "flags"):
        for value in range(256):
            payload = with_headers if field == "flags" and value == 1 else body
            data = RAW_HEADER.pack(
                value if field == "compression" else 0,
                value if field == "flags" else 0,
                value,
                len(payload),
                checksum(payload),
                ECHO,
            )
            data += payload
            stream_open = field == "flags" and value in (0x26, 0x27)  # smf.streams OPEN
            with Peer(live.port) as peer:
                if stream_open:  # answered with a stream END (no such streaming method)
                    peer.decoder = FrameDecoder(2**32 - 1, known_flags=0x3F)
                peer.send(data)
                if (field == "compression" and value > 3) or (
                    field == "flags" and value > 1 and not stream_open
                ):
                    peer.expect_closed_silently()
                    outcomes[field][value] = "closed"
                    continue
                ((session, status, answer),) = peer.read_frames(1)
                assert session == value
                outcomes[field][value] = status
                if status == 200:
                    assert answer == body
                peer.send(encode_frame(1000 + value, ECHO, b"after"))
                assert peer.read_frames(1) == [(1000 + value, 200, b"after")]
            if value % 32 == 31:
                live.check()
    assert outcomes["compression"][0] == outcomes["compression"][1] == 200
    # Decompressed by default: "every byte" is no zstd frame (400), and as lz4 its first
    # four bytes declare ~1.9 GB, above the server's maximum (413).
    assert (outcomes["compression"][2], outcomes["compression"][3]) == (400, 413)
    assert outcomes["flags"][0] == outcomes["flags"][1] == 200
    assert outcomes["flags"][0x26] == outcomes["flags"][0x27] == 404
    report = live.check()
    assert report["stats"]["bad_frames"] >= 252 + 252


def test_three_frames_split_at_every_byte(live: Live) -> None:
    stream = (
        encode_frame(1, ECHO, b"first")
        + encode_frame(2, ECHO, headers.encode({"trace": "x" * 20}) + b"second", flags=1)
        + encode_frame(3, ECHO, b"third " * 20)
    )
    expected = [(1, 200, b"first"), (2, 200, b"second"), (3, 200, b"third " * 20)]
    for cut in range(1, len(stream)):
        with Peer(live.port) as peer:
            peer.send(stream[:cut])
            time.sleep(0.001)  # a separate read on the server
            peer.send(stream[cut:])
            assert sorted(peer.read_frames(3)) == expected, f"split at byte {cut}"
    # And all of it one byte at a time.
    with Peer(live.port) as peer:
        for i in range(len(stream)):
            peer.send(stream[i : i + 1])
            time.sleep(0.0005)
        assert sorted(peer.read_frames(3)) == expected
    live.check()


# --------------------------------------------------------------------------- memory


def _hostile_connection(port: int, kind: int, rng: random.Random) -> Peer:
    """Open a peer and misbehave in one of several ways (it is closed by the caller)."""
    peer = Peer(port)
    if kind == 0:  # half a header
        peer.send(encode_frame(1, ECHO, b"x" * 100)[:9])
    elif kind == 1:  # most of a body as large as the server allows
        peer.send(HEADER.pack(0, 0, 1, MAX_BODY, 0, ECHO) + b"b" * (MAX_BODY // 2))
    elif kind == 2:  # an oversized frame, part of its body
        peer.send(HEADER.pack(0, 0, 1, 2**32 - 1, 0, ECHO) + b"o" * 4096)
    elif kind == 3:  # a bad checksum
        peer.send(HEADER.pack(0, 0, 1, 100, 1234, ECHO) + b"c" * 100)
    elif kind == 4:  # random bytes
        peer.send(rng.randbytes(rng.randint(1, 3000)))
    elif kind == 5:  # requests for a handler that never finishes, then gone
        peer.send(b"".join(encode_frame(s, helper.BLOCK, b"wait") for s in range(1, 20)))
    elif kind == 6:  # pipelined requests whose answers are never read
        peer.send(b"".join(encode_frame(s, ECHO, b"e" * 2000) for s in range(1, 50)))
    else:  # unknown ids
        peer.send(b"".join(encode_frame(s, 0xDEAD0000 + s, b"?") for s in range(1, 20)))
    return peer


def _batches(live: Live, n: int, batch: int, rng: random.Random) -> None:
    for start in range(0, n, batch):
        peers = [_hostile_connection(live.port, (start + i) % 8, rng) for i in range(batch)]
        time.sleep(0.01)
        for peer in peers:
            peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()  # abortive close (RST), as a crashed peer would
        live.settle()


def test_hostile_connections_do_not_leak_server_memory(live: Live) -> None:
    rng = random.Random(1234)
    _batches(live, 400, 50, rng)  # warm-up: allocator pools, caches
    before = live.settle(gc=True)
    n = 4000
    t0 = time.monotonic()
    _batches(live, n, 50, rng)
    elapsed = time.monotonic() - t0
    after = live.settle(gc=True)
    growth = after["rss"] - before["rss"]
    print(
        f"\n[hostile memory] {n} hostile connections in {elapsed:.1f}s: server RSS "
        f"{before['rss'] / MiB:.1f} -> {after['rss'] / MiB:.1f} MiB "
        f"({growth / MiB:+.2f} MiB, {growth / n:+.0f} B per connection); fds "
        f"{before['fds']} -> {after['fds']}; asyncio tasks {before['asyncio_tasks']} -> "
        f"{after['asyncio_tasks']}"
    )
    assert growth < 16 * MiB
    assert after["fds"] <= before["fds"] + 2
    assert after["asyncio_tasks"] <= before["asyncio_tasks"]
    assert after["budget_used"] == 0 and after["tasks"] == 0 and after["connections"] == 1
    live.check()


# --------------------------------------------------------------------------- atheris

ATHERIS_TARGET = textwrap.dedent(
    """
    import sys

    import atheris

    with atheris.instrument_imports():
        from smf.errors import FrameError
        from smf.wire import HEADER_SIZE, Frame, FrameDecoder, OversizedFrame, checksum


    def one_input(data):
        fdp = atheris.FuzzedDataProvider(data)
        max_body = fdp.ConsumeIntInRange(1, 512)
        buffer_size = fdp.ConsumeIntInRange(32, 300)
        zero_copy = fdp.ConsumeBool()
        chunk = fdp.ConsumeIntInRange(1, 64)
        stream = fdp.ConsumeBytes(fdp.remaining_bytes())
        decoder = FrameDecoder(max_body, buffer_size=buffer_size)
        held = []  # (view, expected bytes): views stay alive across buffer reuse
        offset = 0  # where the next frame starts in the stream
        failed = None
        for start in range(0, len(stream), chunk):
            piece = memoryview(stream)[start : start + chunk]
            if zero_copy:
                while piece:
                    buf = decoder.get_buffer(len(piece))
                    n = min(len(buf), len(piece))
                    buf[:n] = piece[:n]
                    buf.release()
                    decoder.buffer_updated(n)
                    piece = piece[n:]
            else:
                decoder.receive_data(piece)
            try:
                while (event := decoder.next_event()) is not None:
                    header = stream[offset : offset + HEADER_SIZE]
                    assert len(header) == HEADER_SIZE
                    if isinstance(event, Frame):
                        assert 0 < event.size <= max_body
                        body = stream[offset + HEADER_SIZE : offset + HEADER_SIZE + event.size]
                        assert bytes(event.body) == body
                        assert checksum(body) == int.from_bytes(header[8:12], "little")
                        held.append((event.body, body))
                    else:
                        assert isinstance(event, OversizedFrame)
                        assert event.size > max_body
                    offset += HEADER_SIZE + event.size
            except FrameError as error:
                failed = error
                break
        if failed is not None:
            try:
                decoder.next_event()
            except FrameError as again:
                assert again is failed
            else:
                raise AssertionError("the decoder recovered from a FrameError")
        for view, body in held:
            assert bytes(view) == body, "a live body view was overwritten"


    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
    """
)


@pytest.mark.slow
def test_atheris_over_the_frame_decoder(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (pip install atheris)")
    runs = 20_000
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    t0 = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", ATHERIS_TARGET, f"-atheris_runs={runs}", "-max_len=4096"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.monotonic() - t0
    tail = "\n".join(result.stderr.strip().splitlines()[-5:])
    print(f"\n[atheris] {runs} runs in {elapsed:.1f}s, exit {result.returncode}\n{tail}")
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Done {runs} in" in result.stderr
