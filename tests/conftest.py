"""Shared fixtures for the runtime's end-to-end tests.

Every async test (and async fixture) runs on uvloop, the loop smf is built for, via
pytest-asyncio's ``pytest_asyncio_loop_factories`` hook (overriding the
``event_loop_policy`` fixture is deprecated in pytest-asyncio >= 1.x).

Tests reach the helpers below through the ``kit`` fixture (a namespace of this
module's names), so they do not depend on how pytest imports conftest files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio.plugin
import uvloop
from hypothesis import settings

import smf
from smf.wire import HEADER, HEADER_SIZE, encode_frame

# --------------------------------------------------------------------------- hypothesis

# Property tests explore new examples on every developer run ("explore", the default);
# CI (SMF_HYPOTHESIS_PROFILE=ci in .ci/run) runs a fixed sequence, so a landing depends
# on the code, not on which examples a run happened to draw. Failures found while
# exploring are pinned with @example.
settings.register_profile("explore")
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("SMF_HYPOTHESIS_PROFILE", "explore"))

# --------------------------------------------------------------------------- event loop


@pytest.hookimpl(optionalhook=True)
def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Callable[[], Any]]:
    return {"uvloop": uvloop.new_event_loop}


if not hasattr(pytest_asyncio.plugin, "PytestAsyncioSpecs"):  # an older pytest-asyncio

    @pytest.fixture(scope="session")
    def event_loop_policy() -> Any:
        return uvloop.EventLoopPolicy()


# --------------------------------------------------------------------------- wire ids

ECHO = 0x0E0C0001  # returns the request view itself
SLEEP = 0x0E0C0002  # body: ASCII seconds; sleeps, then echoes a copy
FAIL = 0x0E0C0003  # raises ValueError
NOT_IMPL = 0x0E0C0004  # raises NotImplementedError
TEAPOT = 0x0E0C0005  # raises a user RpcError subclass (status 418)
BUSY = 0x0E0C0006  # raises smf.Unavailable
EMPTY = 0x0E0C0007  # returns b""
BLOCK = 0x0E0C0008  # waits on state.gate, then answers b"released"
SIZED = 0x0E0C0009  # body: ASCII n; answers n bytes
STASH = 0x0E0C000A  # keeps the request view past its return
INSPECT = 0x0E0C000B  # records what the handler was given
HOLD = 0x0E0C000C  # holds the request view across state.gate, answers a copy of it
WRONG_TYPE = 0x0E0C000D  # returns a str (not a Payload)
UNKNOWN = 0x0BADBEEF  # no handler


class Teapot(smf.RpcError):
    status = 418


class HandlerState:
    """The test handlers' shared state (one per server)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = 0  # BLOCK/HOLD handlers that started
        self.finished = 0
        self.cancelled = 0
        self.stash: list[memoryview] = []
        self.inspected: list[dict[str, Any]] = []
        self.on_enter: Callable[[], None] | None = None

    async def echo(self, ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        return body

    async def sleep(self, ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        data = bytes(body)
        await asyncio.sleep(float(data))
        return data

    async def fail(self, ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        raise ValueError("boom: the handler broke")

    async def not_impl(self, ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        raise NotImplementedError("coming in v2")

    async def teapot(self, ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        raise Teapot("short and stout")

    async def busy(self, ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        raise smf.Unavailable("come back later")

    async def empty(self, ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        return b""

    async def block(self, ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        self.entered += 1
        if self.on_enter is not None:
            self.on_enter()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return b"released"

    async def sized(self, ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        return b"x" * int(bytes(body))

    async def stash_it(self, ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        self.stash.append(body)
        return b"stashed"

    async def inspect(self, ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        self.inspected.append(
            {
                "type": type(body),
                "obj_type": type(body.obj),
                "nbytes": body.nbytes,
                "session": ctx.session,
                "wire_id": ctx.wire_id,
                "peer": ctx.peer,
            }
        )
        return b"inspected"

    async def hold(self, ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        self.entered += 1
        await self.gate.wait()
        return bytes(body)

    async def wrong_type(self, ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        return "not bytes"  # type: ignore[return-value]

    def install(self, server: smf.Server) -> None:
        for wire_id, handler in {
            ECHO: self.echo,
            SLEEP: self.sleep,
            FAIL: self.fail,
            NOT_IMPL: self.not_impl,
            TEAPOT: self.teapot,
            BUSY: self.busy,
            EMPTY: self.empty,
            BLOCK: self.block,
            SIZED: self.sized,
            STASH: self.stash_it,
            INSPECT: self.inspect,
            HOLD: self.hold,
            WRONG_TYPE: self.wrong_type,
        }.items():
            server.add_handler(wire_id, handler, "Test")


# --------------------------------------------------------------------------- raw-protocol helpers


def frame(
    session: int,
    meta: int,
    body: bytes,
    compression: int = 0,
    flags: int = 0,
) -> bytes:
    """A valid frame's bytes (header + body)."""
    return encode_frame(session, meta, body, compression, flags)


def raw_header(
    compression: int = 0,
    flags: int = 0,
    session: int = 1,
    size: int = 1,
    checksum: int = 0,
    meta: int = ECHO,
) -> bytes:
    """Any 16-byte header, valid or not."""
    return HEADER.pack(compression, flags, session, size, checksum, meta)


class RawFrame:
    __slots__ = ("body", "compression", "flags", "meta", "session", "size")

    def __init__(self, header: bytes, body: bytes) -> None:
        self.compression, self.flags, self.session, self.size, _, self.meta = HEADER.unpack(header)
        self.body = body

    def __repr__(self) -> str:
        return f"RawFrame(session={self.session}, meta={self.meta}, body={self.body[:60]!r})"


async def read_frame(reader: asyncio.StreamReader, timeout: float = 5.0) -> RawFrame:
    """Read one response frame; checks its checksum like a real peer would."""
    async with asyncio.timeout(timeout):
        header = await reader.readexactly(HEADER_SIZE)
        size = HEADER.unpack(header)[3]
        body = await reader.readexactly(size)
    csum = HEADER.unpack(header)[4]
    assert smf.wire.checksum(body) == csum, "response checksum mismatch"
    return RawFrame(header, body)


async def read_frames(
    reader: asyncio.StreamReader, n: int, timeout: float = 10.0
) -> list[RawFrame]:
    async with asyncio.timeout(timeout):
        return [await read_frame(reader, timeout) for _ in range(n)]


async def expect_closed_silently(reader: asyncio.StreamReader, timeout: float = 5.0) -> None:
    """The peer closes the connection without sending a single byte."""
    received = b""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                received += chunk
    assert received == b"", f"expected no answer, got {received[:80]!r}"


async def open_raw(server: smf.Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 2.0)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` on the loop; fail after a generous ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.002)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")


def free_port() -> int:
    """A TCP port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/status (VmRSS, in kB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


class CallSpy:
    """Wraps a transport and counts writes: ``writelines`` calls, and ``write`` calls (a
    frame with a small body leaves as one joined buffer). uvloop's transports are C
    types whose methods cannot be patched, so the connection's ``transport`` is swapped."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.writes = 0
        self.buffers: list[int] = []  # how many buffers each write handed over

    def writelines(self, data: Any) -> None:
        data = list(data)
        self.writes += 1
        self.buffers.append(len(data))
        self._transport.writelines(data)

    def write(self, data: Any) -> None:
        self.writes += 1
        self.buffers.append(1)
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class TrackingSet(set):  # type: ignore[type-arg]
    """A set that remembers its largest size and everything ever added (to watch
    ``server.tasks``)."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0
        self.added: list[Any] = []

    def add(self, item: Any) -> None:
        super().add(item)
        self.added.append(item)
        if len(self) > self.peak:
            self.peak = len(self)

    def retrieve_exceptions(self) -> list[BaseException]:
        """Mark the failures of finished tasks as retrieved, and return them.

        A task that dies with an exception nobody retrieves is logged from its
        ``__del__``; on CPython 3.11.7 that logging (which ``ast.parse``s source lines
        for its carets) can run re-entrantly inside pytest's own ``ast.parse`` and
        corrupt it ("AST constructor recursion depth mismatch" INTERNALERROR)."""
        failures = []
        for task in self.added:
            if task.done() and not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())
        return failures


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def kit() -> Any:
    """This module's public names: wire ids, the handlers' state class and the
    raw-protocol helpers. Built from ``globals()``, not ``sys.modules["conftest"]``:
    another directory's ``conftest.py`` may take that name later in the session."""
    return types.SimpleNamespace(
        **{name: value for name, value in globals().items() if not name.startswith("_")}
    )


ServerFactory = Callable[..., Awaitable[smf.Server]]
ClientFactory = Callable[..., Awaitable[smf.Client]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Start test servers (``state`` attribute: their HandlerState); all stop at teardown."""
    servers: list[smf.Server] = []

    async def factory(
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        unix_path: str | None = None,
        state: HandlerState | None = None,
        **kwargs: Any,
    ) -> smf.Server:
        server = smf.Server(**kwargs)
        server.state = state or HandlerState()  # type: ignore[attr-defined]
        server.state.install(server)  # type: ignore[attr-defined]
        if unix_path is not None:
            await server.start_unix(unix_path)
        else:
            await server.start(host, port)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.state.gate.set()  # type: ignore[attr-defined]
        await server.stop(grace=0)


@pytest.fixture
async def echo_server(make_server: ServerFactory) -> smf.Server:
    return await make_server()


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """Connected clients (``connect=False`` to skip connecting); all closed at teardown."""
    clients: list[smf.Client] = []

    async def factory(*args: Any, connect: bool = True, **kwargs: Any) -> smf.Client:
        client = smf.Client(*args, **kwargs)
        clients.append(client)
        if connect:
            await client.connect()
        return client

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
async def client(echo_server: smf.Server, make_client: ClientFactory) -> smf.Client:
    return await make_client("127.0.0.1", echo_server.port)
