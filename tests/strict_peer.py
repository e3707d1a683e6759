"""A strict smf peer: a server and a client that behave as C++ smf does on the wire.

Written from the wire facts (docs/wire.md) and the C++ sources' checks, independently of
the ``smf`` package (only ``struct``, ``xxhash``, ``zstandard`` and ``lz4``), so a test
against it shows what a real smf peer makes of this project's frames:

Server (C++ ``rpc_recv_context::parse_header/parse_payload``, ``rpc_server``):
- closes the connection on a header with size 0, compression above 3, checksum 0 or
  meta 0; on a body whose xxhash64 does not match; on a non-zero bitflags byte (C++
  refuses bit 0, payload headers: "not yet implemented"; this model refuses every bit,
  as aiosmf does); on a wire id no handler serves (C++: "Can't find route", no reply);
  and on a body still compressed after its incoming filter (no decompressor configured);
- reads compression 1 (disabled) as 0; never sends payload headers; compresses a reply
  only when configured to (and only above ``min_compression_size``); answers in any order.

Client (C++ ``rpc_client``, aiosmf): the same header checks on replies (bitflags must be
0), fails every pending call and closes on a reply for an unknown session; a reply still
compressed after its incoming filter fails that call.

``closes`` records why each connection was closed, ``requests`` every request read.
Both sides take an ``algorithm`` (2 zstd, 3 lz4) to compress as a C++ filter pair does.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import lz4.block
import xxhash
import zstandard

HEADER = struct.Struct("<bBHIII")  # compression, bitflags, session, size, checksum, meta
HEADER_SIZE = 16
NONE, DISABLED, ZSTD, LZ4 = 0, 1, 2, 3
_U32 = struct.Struct("<I")

Reply = bytes | tuple[int, bytes]  # a body (status 200) or (status, body)
Handler = Callable[[bytes], Awaitable[Reply]]


def checksum(body: bytes) -> int:
    return xxhash.xxh64_intdigest(body) & 0xFFFFFFFF


def frame(session: int, meta: int, body: bytes, compression: int = NONE) -> bytes:
    return HEADER.pack(compression, 0, session, len(body), checksum(body), meta) + body


def compress(algorithm: int, body: bytes) -> bytes:
    if algorithm == ZSTD:
        return zstandard.ZstdCompressor().compress(body)  # carries its content size
    if algorithm == LZ4:
        return _U32.pack(len(body)) + lz4.block.compress(body, store_size=False)
    raise ValueError(f"no compression {algorithm}")


def decompress(algorithm: int, body: bytes) -> bytes:
    if algorithm == ZSTD:
        return zstandard.ZstdDecompressor().decompress(body)
    if algorithm == LZ4:
        size = _U32.unpack_from(body)[0]
        return lz4.block.decompress(body[4:], uncompressed_size=size)
    raise ValueError(f"no compression {algorithm}")


class BadFrame(Exception):
    """What a C++ peer logs before it closes the connection (``meta``: the frame's)."""

    def __init__(self, reason: str, meta: int = 0) -> None:
        super().__init__(reason)
        self.meta = meta


@dataclass
class Request:
    compression: int  # 1 (disabled) read as 0
    flags: int
    session: int
    meta: int
    body: bytes  # as received (before decompression)
    wire_compression: int  # the byte as sent


async def read_frame(reader: asyncio.StreamReader) -> Request:
    """One frame, checked as C++ smf checks it (raises ``BadFrame``)."""
    header = await reader.readexactly(HEADER_SIZE)
    compression, flags, session, size, csum, meta = HEADER.unpack(header)
    if size == 0:
        raise BadFrame("empty body", meta)
    if not NONE <= compression <= LZ4:
        raise BadFrame(f"compression {compression} out of range", meta)
    if csum == 0:
        raise BadFrame("checksum is empty", meta)
    if meta == 0:
        raise BadFrame("meta is empty", meta)
    body = await reader.readexactly(size)
    if flags:
        what = "payload headers: not yet implemented" if flags & 1 else "unknown bitflags"
        raise BadFrame(f"bitflags {flags}: {what}", meta)
    if checksum(body) != csum:
        raise BadFrame("payload checksum does not match the header", meta)
    return Request(
        NONE if compression == DISABLED else compression, flags, session, meta, body, compression
    )


@dataclass
class StrictServer:
    """An smf server as strict as C++ smf's. ``handlers``: wire id -> async body -> reply."""

    handlers: dict[int, Handler] = field(default_factory=dict)
    algorithm: int | None = None  # the compression filter pair it is configured with
    min_compression_size: int = 512
    requests: list[Request] = field(default_factory=list)
    closes: list[tuple[str, int]] = field(default_factory=list)  # (reason, last meta)
    connections: int = 0
    _server: asyncio.AbstractServer | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> StrictServer:
        self._server = await asyncio.start_server(self._serve, host, port)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def drop_connections(self) -> None:
        """Close every connection, as a restarting server would."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_connections()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        lock = asyncio.Lock()  # C++: serialize_writes
        meta = 0
        try:
            while True:
                request = await read_frame(reader)
                meta = request.meta
                self.requests.append(request)
                handler = self.handlers.get(request.meta)
                if handler is None:
                    raise BadFrame("can't find route for request", meta)
                body = request.body
                if request.compression == self.algorithm:  # the incoming filter
                    body = decompress(request.compression, body)
                elif request.compression != NONE:
                    raise BadFrame(f"no decompression filter for {request.compression}", meta)
                task = asyncio.get_running_loop().create_task(
                    self._dispatch(handler, request.session, body, writer, lock)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except BadFrame as exc:
            self.closes.append((str(exc), exc.meta))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer closed
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _dispatch(
        self,
        handler: Handler,
        session: int,
        body: bytes,
        writer: asyncio.StreamWriter,
        lock: asyncio.Lock,
    ) -> None:
        reply = await handler(body)
        status, out = (200, reply) if isinstance(reply, bytes) else reply
        compression = NONE
        if self.algorithm is not None and len(out) > self.min_compression_size:
            out, compression = compress(self.algorithm, out), self.algorithm
        async with lock:
            if not writer.transport.is_closing():
                writer.write(frame(session, status, out, compression))


class CallFailed(Exception):
    """A call the strict client could not complete (the connection failed, or the reply
    was compressed with no filter for it)."""


@dataclass
class StrictClient:
    """An smf client as strict as C++ smf's (and aiosmf's) about replies."""

    algorithm: int | None = None
    min_compression_size: int = 512
    closes: list[str] = field(default_factory=list)
    replies: list[tuple[int, int]] = field(default_factory=list)  # (wire compression, flags)
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None
    _session: int = 0
    _pending: dict[int, asyncio.Future[tuple[int, int, bytes]]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    async def connect(self, host: str, port: int) -> StrictClient:
        self._reader, self._writer = await asyncio.open_connection(host, port)
        self._task = asyncio.get_running_loop().create_task(self._read())
        return self

    async def call(self, meta: int, body: bytes) -> tuple[int, bytes]:
        """(status, body) of one call."""
        assert self._writer is not None
        if self._writer.transport.is_closing():
            raise CallFailed(f"connection closed: {self.closes}")
        self._session = (self._session + 1) & 0xFFFF  # C++: a uint16 that wraps
        if self._session in self._pending:
            raise CallFailed(f"session {self._session} still in flight")
        session = self._session
        future: asyncio.Future[tuple[int, int, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[session] = future
        compression = NONE
        if self.algorithm is not None and len(body) > self.min_compression_size:
            body, compression = compress(self.algorithm, body), self.algorithm
        self._writer.write(frame(session, meta, body, compression))
        status, compression, out = await future
        if compression == self.algorithm:
            out = decompress(compression, out)
        elif compression != NONE:
            raise CallFailed(f"reply compressed ({compression}) with no filter for it")
        return status, out

    async def _read(self) -> None:
        assert self._reader is not None
        try:
            while True:
                reply = await read_frame(self._reader)
                self.replies.append((reply.wire_compression, reply.flags))
                future = self._pending.pop(reply.session, None)
                if future is None:
                    raise BadFrame(f"cannot find session {reply.session}")
                if not future.done():
                    future.set_result((reply.meta, reply.compression, reply.body))
        except BadFrame as exc:
            self.closes.append(str(exc))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.closes.append(f"connection lost: {exc!r}")
        finally:
            self._fail_all()

    def _fail_all(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(CallFailed(f"connection closed: {self.closes}"))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_all()
