"""Pieces shared by the benchmarks in this folder (``latency.py``, ``compare.py``).

* the raw uvloop floor: a minimal framed echo server and client speaking the 16-byte
  smf header (``<bBHIII``), nothing else;
* the smf echo server and client as the benchmarks run them;
* the call drivers (sequential, a window of calls in flight) and exact percentiles;
* child-process plumbing: start a role of a benchmark script in a fresh interpreter,
  read the port it announces, stop it, and sample which CPU each process last ran on.

Nothing here prints or decides what to measure; the scripts do.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import select
import struct
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

import xxhash

HEADER = struct.Struct("<bBHIII")
HEADER_SIZE = HEADER.size  # 16
# Any nonzero id works; this is SmfStorage.Get of the smf demo schema (see wire.md).
WIRE_ID = 1792279101
# Answers the pid of the server process that serves the connection (multi-worker runs).
WHOAMI_ID = 0x0E0C0F01
PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999))
SAMPLE_INTERVAL = 0.1  # seconds between CPU-placement samples
# Frames up to this size are sent by the raw client as one buffer (header + body
# joined); larger ones as two (writev), so the floor never copies a large body.
RAW_JOIN_LIMIT = 16 * 1024
RAW_BUFFER = 256 * 1024  # the raw floor's receive buffer (smf's default buffer_size)
RAW_MIN_READ = 4096  # never offer the kernel less room than this for a read

Call = Callable[[int, bytes], Awaitable[Any]]


def make_payload(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def run_on_uvloop(main: Coroutine[Any, Any, Any]) -> Any:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def run_on_asyncio(main: Coroutine[Any, Any, Any]) -> Any:
    """The default asyncio event loop (for grpc.aio, which brings its own I/O poller)."""
    return asyncio.run(main)


def run_on_smf(main: Coroutine[Any, Any, Any]) -> Any:
    import smf

    return smf.run(main)


# ============================================================================ raw floor


class _RawFramed(asyncio.BufferedProtocol):
    """Reads straight into a receive buffer (``get_buffer``/``buffer_updated``) and finds
    complete frames by their header's size field; a frame of any size accumulates until
    all of it is there, in room made for exactly that once its header has arrived.
    Bytes handed out (a reply being written, a response body) are never overwritten: a
    buffer is reused only while no view of it is alive, as ``bytearray`` itself reports.
    """

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.buf = bytearray(RAW_BUFFER)
        self.view = memoryview(self.buf)
        self.start = 0  # first byte of the first incomplete frame
        self.end = 0  # first free byte

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        end = self.end
        have = end - self.start
        if have < HEADER_SIZE:
            need = HEADER_SIZE - have
        else:
            need = HEADER_SIZE + HEADER.unpack_from(self.buf, self.start)[3] - have
        if len(self.buf) - end < max(need, RAW_MIN_READ):
            self._make_room(have, have + need)
            end = have
        return self.view[end:]

    def _make_room(self, have: int, size: int) -> None:
        """Move the ``have`` bytes of the incomplete frame to the front of a buffer of at
        least ``size`` bytes: this one if no view of it is alive, else a new one."""
        buf, start = self.buf, self.start
        size = max(size, RAW_BUFFER)
        self.view.release()
        try:
            buf.append(0)  # resizing fails while any view of buf is alive
            del buf[-1]
            reuse = size <= len(buf) <= max(size, RAW_BUFFER)
        except BufferError:
            reuse = False
        if reuse:
            buf[:have] = buf[start : start + have]
        else:
            new = bytearray(size)
            new[:have] = buf[start : start + have]
            self.buf = new
        self.view = memoryview(self.buf)
        self.start, self.end = 0, have

    def buffer_updated(self, nbytes: int) -> None:
        self.end = end = self.end + nbytes
        buf, start = self.buf, self.start
        pos = start
        unpack = HEADER.unpack_from
        while end - pos >= HEADER_SIZE:
            stop = pos + HEADER_SIZE + unpack(buf, pos)[3]
            if stop > end:
                break
            pos = stop
        if pos != start:
            self.frames(start, pos)
            self.start = pos

    def frames(self, start: int, stop: int) -> None:
        """``buf[start:stop]`` holds one or more complete frames."""
        raise NotImplementedError


class RawEchoServer(_RawFramed):
    """Echoes the complete frames of each read back unchanged, in one write, straight
    from the receive buffer."""

    def frames(self, start: int, stop: int) -> None:
        self.transport.write(self.view[start:stop])


class RawClient(_RawFramed):
    """Header + body out; each response body (a view of the receive buffer, as smf's
    client returns) resolves the future of its session."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.get_running_loop()
        self.pending: dict[int, asyncio.Future[memoryview]] = {}
        self.next_session = 1
        self.checksums: dict[bytes, int] = {}

    def frames(self, start: int, stop: int) -> None:
        buf, view, pending, unpack = self.buf, self.view, self.pending, HEADER.unpack_from
        pos = start
        while pos < stop:
            session, size = unpack(buf, pos)[2:4]
            end = pos + HEADER_SIZE + size
            fut = pending.pop(session, None)
            if fut is not None and not fut.done():
                fut.set_result(view[pos + HEADER_SIZE : end])
            pos = end

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("raw echo connection lost"))

    async def call(self, wire_id: int, payload: bytes) -> memoryview:
        session = self.next_session
        self.next_session = session + 1 if session < 0xFFFF else 1
        fut: asyncio.Future[memoryview] = self.loop.create_future()
        self.pending[session] = fut
        # The body never changes in these benchmarks: its checksum is computed once.
        csum = self.checksums.get(payload)
        if csum is None:
            csum = self.checksums[payload] = xxhash.xxh64_intdigest(payload) & 0xFFFFFFFF
        header = HEADER.pack(0, 0, session, len(payload), csum, wire_id)
        if len(payload) <= RAW_JOIN_LIMIT:
            self.transport.write(header + payload)
        else:
            self.transport.writelines((header, payload))
        return await fut


async def serve_raw() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(RawEchoServer, "127.0.0.1", 0)
    await serve_until_stdin_closes(server.sockets[0].getsockname()[1])
    server.close()


async def connect_raw(port: int) -> tuple[asyncio.BaseTransport, RawClient]:
    loop = asyncio.get_running_loop()
    return await loop.create_connection(RawClient, "127.0.0.1", port)


# ============================================================================ smf


async def drive_system(
    system: str, port: int, drive: Callable[[Call, Any], Awaitable[Any]], opts: Any
) -> Any:
    """Connect to the echo server of ``system`` ("raw" or "smf"), run ``drive(call,
    opts)`` with its call function, and close the connection."""
    if system == "raw":
        transport, proto = await connect_raw(port)
        try:
            return await drive(proto.call, opts)
        finally:
            transport.close()
    import smf

    client = smf.Client("127.0.0.1", port)
    await client.connect()
    try:
        return await drive(client.call, opts)
    finally:
        await client.close()


def smf_echo_server() -> Any:
    """An ``smf.Server`` with the zero-copy echo at ``WIRE_ID`` and ``WHOAMI_ID``."""
    import smf

    async def echo(ctx: smf.CallContext, body: memoryview) -> memoryview:
        return body

    async def whoami(ctx: smf.CallContext, body: memoryview) -> bytes:
        return str(os.getpid()).encode()

    server = smf.Server()
    server.add_handler(WIRE_ID, echo, "bench.echo")
    server.add_handler(WHOAMI_ID, whoami, "bench.whoami")
    return server


async def serve_smf() -> None:
    server = smf_echo_server()
    await server.start("127.0.0.1", 0)
    await serve_until_stdin_closes(server.port)
    await server.stop(grace=1.0)


# ============================================================================ drivers


async def serve_until_stdin_closes(port: int) -> None:
    """Announce the port, then serve until the parent closes our stdin."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    fd = sys.stdin.fileno()

    def readable() -> None:
        if not os.read(fd, 4096) and not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    announce_port(port)
    await done
    loop.remove_reader(fd)


def announce_port(port: int) -> None:
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()


async def sequential(call: Call, payload: bytes, n: int) -> tuple[array[int], int]:
    lat = array("q", bytes(8 * n))
    clock = time.perf_counter_ns
    start = clock()
    for i in range(n):
        t0 = clock()
        await call(WIRE_ID, payload)
        lat[i] = clock() - t0
    return lat, clock() - start


async def windowed(call: Call, payload: bytes, n: int, window: int) -> tuple[array[int], int]:
    lat = array("q", bytes(8 * n))
    clock = time.perf_counter_ns
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index = i + 1
            t0 = clock()
            await call(WIRE_ID, payload)
            lat[i] = clock() - t0

    start = clock()
    await asyncio.gather(*(worker() for _ in range(min(window, n))))
    return lat, clock() - start


async def windowed_for(
    calls: Iterable[Call], payload: bytes, seconds: float, per_call: int
) -> tuple[array[int], int]:
    """``per_call`` coroutines on each of ``calls`` (one per connection) call back to back
    until ``seconds`` have passed; calls in flight then finish and count."""
    lat = array("q")
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)

    async def worker(call: Call) -> None:
        while clock() < deadline:
            t0 = clock()
            await call(WIRE_ID, payload)
            lat.append(clock() - t0)

    start = clock()
    await asyncio.gather(*(worker(c) for c in calls for _ in range(per_call)))
    return lat, clock() - start


def percentile(samples: list[int], q: float) -> int:
    """Exact nearest-rank percentile of ``samples`` (sorted)."""
    n = len(samples)
    return samples[min(n - 1, max(0, math.ceil(q * n) - 1))]


def summarize(
    lat: array[int], elapsed_ns: int, percentiles: Iterable[tuple[str, float]] = PERCENTILES
) -> dict[str, float]:
    samples = sorted(lat)
    n = len(samples)
    out: dict[str, float] = {"calls": n}
    for name, q in percentiles:
        out[f"{name}_us"] = percentile(samples, q) / 1000
    out["max_us"] = samples[-1] / 1000
    out["mean_us"] = sum(samples) / n / 1000
    out["calls_per_s"] = n / (elapsed_ns / 1e9)
    return out


# ============================================================================ processes


def spawn(
    script: str | Path, args: list[str], env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``script`` (a benchmark file) in a fresh interpreter, with pipes on all three
    (``env``: extra environment variables)."""
    return subprocess.Popen(
        [sys.executable, os.path.abspath(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env} if env else None,
    )


def read_line(proc: subprocess.Popen[str], timeout: float, what: str) -> str:
    """One line of ``proc``'s stdout within ``timeout`` seconds (a crash raises)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(f"{what} {proc.args!r}: no output within {timeout}s\n{err}")
    return line


def read_port(proc: subprocess.Popen[str], timeout: float) -> int:
    line = read_line(proc, timeout, "server")
    if not line.startswith("PORT "):
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(f"server {proc.args!r} did not start: {line!r}\n{err}")
    return int(line.split()[1])


def stop_by_stdin(proc: subprocess.Popen[str]) -> None:
    """Close the server's stdin (it stops when it sees EOF) and reap it."""
    _reap(proc)  # communicate() closes stdin first


def stop_by_signal(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (``Server.run`` stops gracefully on it, forwarding it to its workers)."""
    if proc.poll() is None:
        proc.terminate()
    _reap(proc)


def _reap(proc: subprocess.Popen[str]) -> None:
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()


def last_cpu(pid: int) -> int | None:
    """The CPU ``pid`` last ran on (field 39 of /proc/PID/stat), if readable."""
    fields = _stat_fields(pid)
    try:
        return int(fields[36]) if fields else None
    except (IndexError, ValueError):
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (fields 14 and 15), 0 if gone."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (scans /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and len(fields) > 1 and fields[1] == str(pid):
                out.append(int(entry))
    return out


class PlacementSampler(threading.Thread):
    """Samples (time, server CPU, client CPU) while the client runs."""

    def __init__(self, server_pid: int, client_pid: int) -> None:
        super().__init__(daemon=True)
        self.pids = (server_pid, client_pid)
        self.samples: list[tuple[float, int, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_INTERVAL):
            s, c = (last_cpu(pid) for pid in self.pids)
            if s is None or c is None:
                return
            self.samples.append((time.monotonic(), s, c))

    def same_cpu_share(self, began: float, ended: float) -> float | None:
        inside = [s == c for t, s, c in self.samples if began <= t <= ended]
        return sum(inside) / len(inside) if inside else None


def share_text(share: float | None) -> str:
    return "same CPU ?" if share is None else f"same CPU {share:.0%}"


def smf_version() -> dict[str, Any]:
    """Which smf the children import (path, git commit, uncommitted changes)."""
    try:
        import smf

        path = Path(smf.__file__).resolve().parent
    except ImportError:
        return {"path": None}
    info: dict[str, Any] = {"path": str(path)}
    try:
        git = ["git", "-C", str(path)]
        info["commit"] = (
            subprocess.run(
                [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        status = subprocess.run(
            [*git, "status", "--porcelain", "--", "."], capture_output=True, text=True, timeout=10
        ).stdout
        info["dirty"] = bool(status.strip()) if info["commit"] else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def version_text(info: dict[str, Any]) -> str:
    text = str(info.get("commit") or info.get("path") or "?")
    return text + "+dirty" if info.get("dirty") else text


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
    }
