"""Every client feature against a strict smf peer (tests/strict_peer.py: C++ smf's rules),
and this project's server against the strict client: nothing this project sends may make
a real smf peer close a connection or leave a call unanswered.

The one close allowed is the payload-headers probe's own connection (smf/peer.py): a
C++ server closes it, as it closes any connection that asks for an unknown method.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import flatbuffers
import pytest
from flatbuffers.table import Table

import smf
from smf.context import TIMEOUT_HEADER, TRACEPARENT_HEADER
from smf.errors import reply_text
from smf.filters import CompressionFilter
from smf.peer import PROBE_WIRE_ID, probe
from smf.wire import Compression

from .strict_peer import HEADER, HEADER_SIZE, Reply, StrictClient, StrictServer, frame

ROOT = Path(__file__).resolve().parents[1]

ECHO = 0x5E0C0001
SLOW = 0x5E0C0002  # body: ASCII seconds to sleep, then echo
GET = 212494116 ^ 1719559449  # SmfStorage.Get (docs/wire.md test vectors)
PUT = 212494116 ^ 4204284524  # SmfStorage.Put
FORWARD = 0x5E0C0003  # on our server: calls the strict server's ECHO
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
COMPRESSIBLE = b"strict smf peer " * 512  # 8 KiB

ALGORITHMS = [pytest.param(Compression.ZSTD, id="zstd"), pytest.param(Compression.LZ4, id="lz4")]


async def echo(body: bytes) -> Reply:
    return body


async def slow(body: bytes) -> Reply:
    await asyncio.sleep(float(body))
    return body


def _name(body: bytes) -> bytes:
    """The ``name`` field of a ``Request``/``Response`` table (idl/demo.fbs)."""
    buf = bytearray(body)
    table = Table(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
    offset = table.Offset(4)
    return table.String(offset + table.Pos) if offset else b""


def _response(name: bytes) -> bytes:
    builder = flatbuffers.Builder(64)
    text = builder.CreateString(name)
    builder.StartObject(1)
    builder.PrependUOffsetTRelativeSlot(0, text, 0)
    builder.Finish(builder.EndObject())
    return bytes(builder.Output())


async def storage(body: bytes) -> Reply:
    return _response(_name(body))


StrictFactory = Callable[..., Awaitable[StrictServer]]


@pytest.fixture
async def strict() -> AsyncIterator[StrictFactory]:
    started: list[StrictServer] = []

    async def factory(**kwargs: Any) -> StrictServer:
        server = StrictServer(**kwargs)
        server.handlers.update({ECHO: echo, SLOW: slow, GET: storage, PUT: storage})
        started.append(await server.start())
        return server

    yield factory
    for server in started:
        await server.close()


def unexpected_closes(server: StrictServer) -> list[tuple[str, int]]:
    """Closes other than of the probe's connection (an unknown method to a C++ server)."""
    return [c for c in server.closes if c[1] != PROBE_WIRE_ID]


def calls_seen(server: StrictServer) -> list[Any]:
    return [r for r in server.requests if r.meta != PROBE_WIRE_ID]


# =========================================================================== client -> strict


async def test_plain_calls(strict: StrictFactory, make_client: Any) -> None:
    server = await strict()
    client = await make_client("127.0.0.1", server.port)
    for i in range(50):
        assert bytes(await client.call(ECHO, b"%d" % i)) == b"%d" % i
    assert server.closes == []
    assert server.connections == 1  # plain calls never probe


CALLS = [
    pytest.param({"timeout": 2.0}, id="explicit-timeout"),
    pytest.param({"metadata": {"user": "alice"}}, id="metadata"),
    pytest.param({"timeout": 2.0, "metadata": {TRACEPARENT_HEADER: TP}}, id="both"),
    pytest.param({"timeout": None}, id="no-timeout"),
    pytest.param({}, id="default-timeout"),
]


@pytest.mark.parametrize("kwargs", CALLS)
async def test_every_call_style_is_answered_first_on_a_connection(
    strict: StrictFactory, make_client: Any, kwargs: dict[str, Any]
) -> None:
    """A call with a deadline or metadata used to carry payload headers: a C++ server
    closed the connection on it. Now it goes as a plain frame (after the probe)."""
    server = await strict()
    client = await make_client("127.0.0.1", server.port)
    assert bytes(await client.call(ECHO, b"first", **kwargs)) == b"first"
    assert bytes(await client.call(ECHO, b"second", **kwargs)) == b"second"
    assert unexpected_closes(server) == []
    assert [(r.flags, r.body) for r in calls_seen(server)] == [(0, b"first"), (0, b"second")]


async def test_after_a_plain_reply_no_probe_is_needed(
    strict: StrictFactory, make_client: Any
) -> None:
    server = await strict()
    client = await make_client("127.0.0.1", server.port)
    await client.call(ECHO, b"plain")
    assert client._conn.peer_headers.reads is False  # learned from the unmarked reply
    await client.call(ECHO, b"x", timeout=2.0, metadata={"a": "b"})
    assert server.connections == 1
    assert server.closes == []


async def test_deadline_is_still_enforced_on_the_client(
    strict: StrictFactory, make_client: Any
) -> None:
    server = await strict()
    client = await make_client("127.0.0.1", server.port)
    with pytest.raises(smf.DeadlineExceeded):
        await client.call(SLOW, b"30", timeout=0.2)
    assert bytes(await client.call(ECHO, b"still fine", timeout=2.0)) == b"still fine"
    assert unexpected_closes(server) == []


async def test_calls_forwarded_from_a_handler_of_our_server(
    strict: StrictFactory, make_server: Any, make_client: Any
) -> None:
    """Our server's handler calls the strict server: it inherits what is left of its
    caller's deadline and the traceparent, neither of which may reach the strict peer
    as payload headers; the first hop (to our server) still carries both."""
    server = await strict()
    downstream = await make_client("127.0.0.1", server.port)
    seen: list[dict[str, Any]] = []

    async def forward(ctx: smf.CallContext, body: memoryview) -> bytes:
        metadata = {k: v for k, v in ctx.metadata.items() if k != TIMEOUT_HEADER}
        seen.append({"metadata": metadata, "deadline": ctx.deadline is not None})
        return bytes(await downstream.call(ECHO, bytes(body)))

    ours = await make_server()
    ours.add_handler(FORWARD, forward, "Strict.forward")
    client = await make_client("127.0.0.1", ours.port)
    for i in range(5):
        got = await client.call(
            FORWARD, b"hop%d" % i, timeout=5.0, metadata={TRACEPARENT_HEADER: TP}
        )
        assert bytes(got) == b"hop%d" % i
    assert seen == [{"metadata": {TRACEPARENT_HEADER: TP}, "deadline": True}] * 5
    assert unexpected_closes(server) == []
    assert all(r.flags == 0 for r in server.requests)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_compression_filters(
    strict: StrictFactory, make_client: Any, algorithm: Compression
) -> None:
    server = await strict(algorithm=int(algorithm))
    client = await make_client(
        "127.0.0.1", server.port, filters=[CompressionFilter(algorithm, min_size=512)]
    )
    for kwargs in ({}, {"timeout": 2.0}, {"metadata": {"k": "v"}}):
        assert bytes(await client.call(ECHO, COMPRESSIBLE, **kwargs)) == COMPRESSIBLE
        assert bytes(await client.call(ECHO, b"small", **kwargs)) == b"small"
    assert unexpected_closes(server) == []
    sent = calls_seen(server)
    assert {r.compression for r in sent} == {int(algorithm), 0}
    assert all(r.flags == 0 for r in sent)


async def test_reconnect_then_calls_with_deadlines(strict: StrictFactory, make_client: Any) -> None:
    server = await strict()
    client = await make_client(
        "127.0.0.1", server.port, reconnect=smf.Backoff(initial=0.01, maximum=0.05)
    )
    assert bytes(await client.call(ECHO, b"before", timeout=2.0)) == b"before"
    server.drop_connections()
    while client.connected:  # the loss reaches the client
        await asyncio.sleep(0.005)
    assert bytes(await client.call(ECHO, b"after", timeout=5.0)) == b"after"
    assert bytes(await client.call(ECHO, b"meta", metadata={"k": "v"})) == b"meta"
    assert client.stats.reconnects == 1
    assert unexpected_closes(server) == []
    assert all(r.flags == 0 for r in server.requests)


async def test_many_concurrent_calls_of_every_style(
    strict: StrictFactory, make_client: Any
) -> None:
    server = await strict()
    client = await make_client("127.0.0.1", server.port)
    styles: list[dict[str, Any]] = [
        {},
        {"timeout": 10.0},
        {"metadata": {"i": "x"}},
        {"timeout": 10.0, "metadata": {"i": "x"}},
    ]
    n = 2000
    bodies = [b"call %d" % i for i in range(n)]
    replies = await asyncio.gather(
        *(client.call(ECHO, body, **styles[i % 4]) for i, body in enumerate(bodies))
    )
    assert [bytes(r) for r in replies] == bodies  # 0 dropped, 0 unanswered
    assert unexpected_closes(server) == []
    assert len(calls_seen(server)) == n
    assert all(r.flags == 0 for r in server.requests)


async def test_session_ids_wrap_past_65535(strict: StrictFactory, make_client: Any) -> None:
    server = await strict()
    client = await make_client("127.0.0.1", server.port)
    n, batch = 70_000, 1000
    answered = 0
    for start in range(0, n, batch):
        kwargs: dict[str, Any] = {"timeout": 30.0} if start % 2000 else {}
        got = await asyncio.gather(
            *(client.call(ECHO, b"%d" % i, **kwargs) for i in range(start, start + batch))
        )
        assert [bytes(g) for g in got] == [b"%d" % i for i in range(start, start + batch)]
        answered += len(got)
    assert answered == n
    sessions = [r.session for r in server.requests]
    assert max(sessions) == 65535
    assert sessions.index(65535) < len(sessions) - 1  # ... and ids started over after it
    assert server.closes == []


async def test_demo_client_script_runs_unchanged(strict: StrictFactory) -> None:
    """examples/demo/client.py (Get, then Put with timeout=2.0) against the strict server."""
    server = await strict()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "demo" / "client.py"),
        "--port",
        str(server.port),
        "--name",
        "strict",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "Get('strict') -> 'strict'" in out.decode()
    assert "Put('strict') -> 'strict'" in out.decode()
    assert server.closes == []
    assert [r.meta for r in server.requests] == [GET, PUT]  # Get's reply taught the client


# =========================================================================== the policy


async def test_always_sends_headers_and_a_strict_server_closes(
    strict: StrictFactory, make_client: Any
) -> None:
    """What "auto" protects against: a C++ server closes the connection on them."""
    server = await strict()
    client = await make_client("127.0.0.1", server.port, payload_headers="always")
    with pytest.raises(smf.ConnectionLost):
        await client.call(ECHO, b"x", timeout=2.0)
    assert server.closes == [("bitflags 1: payload headers: not yet implemented", ECHO)]


async def test_our_server_gets_headers_on_the_first_call(
    make_server: Any, make_client: Any, kit: Any
) -> None:
    server = await make_server()
    seen: list[dict[str, Any]] = []

    async def ctx_handler(ctx: smf.CallContext, body: memoryview) -> bytes:
        metadata = {k: v for k, v in ctx.metadata.items() if k != TIMEOUT_HEADER}
        seen.append({"metadata": metadata, "deadline": ctx.deadline is not None})
        return b"ok"

    server.add_handler(0x5E0C00FF, ctx_handler, "Strict.ctx")
    client = await make_client("127.0.0.1", server.port)
    await client.call(0x5E0C00FF, b"x", timeout=2.0, metadata={"k": "v"})
    assert seen == [{"metadata": {"k": "v"}, "deadline": True}]
    assert client._conn.peer_headers.reads is True
    assert server.stats.responses == {200: 1}  # the probe is not counted as a call
    assert server.stats.requests == 1


async def test_never_sends_no_headers_even_to_our_server(
    make_server: Any, make_client: Any
) -> None:
    server = await make_server()
    seen: list[dict[str, str]] = []

    async def ctx_handler(ctx: smf.CallContext, body: memoryview) -> bytes:
        seen.append(dict(ctx.metadata))
        return b"ok"

    server.add_handler(0x5E0C00FF, ctx_handler, "Strict.ctx")
    client = await make_client("127.0.0.1", server.port, payload_headers="never")
    await client.call(0x5E0C00FF, b"x", timeout=2.0, metadata={"k": "v"})
    assert seen == [{}]
    assert server.stats.connections_accepted == 1  # no probe either


async def test_unknown_payload_headers_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="payload_headers must be one of auto, always, never"):
        smf.Client("127.0.0.1", 1, payload_headers="sometimes")


async def test_probe_answers(strict: StrictFactory, make_server: Any) -> None:
    ours = await make_server()
    assert await probe(smf.Client("127.0.0.1", ours.port)) is True
    server = await strict()
    assert await probe(smf.Client("127.0.0.1", server.port)) is False
    assert server.closes == [("can't find route for request", PROBE_WIRE_ID)]


async def test_probe_of_a_server_that_never_answers_gives_up() -> None:
    """smf-java's server leaves an unknown method unanswered, connection open."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(Exception):
            await reader.read()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = listener.sockets[0].getsockname()[1]
        assert await probe(smf.Client("127.0.0.1", port), timeout=0.2) is False
    finally:
        for writer in held:
            writer.close()
        listener.close()


async def test_a_call_waits_for_the_probe_at_most_half_its_timeout(make_client: Any) -> None:
    """Against a server that answers calls but not the probe (smf-java), a first call with
    a deadline goes without headers once it has waited its share, and is answered."""
    frames: list[tuple[int, int]] = []

    async def java_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                _c, flags, session, size, _csum, meta = HEADER.unpack(
                    await reader.readexactly(HEADER_SIZE)
                )
                body = await reader.readexactly(size)
                frames.append((flags, meta))
                if meta == ECHO:  # known: answered; the probe's unknown id: never
                    writer.write(frame(session, 200, body))

    listener = await asyncio.start_server(java_like, "127.0.0.1", 0)
    try:
        port = listener.sockets[0].getsockname()[1]
        client = await make_client("127.0.0.1", port)
        assert bytes(await client.call(ECHO, b"x", timeout=0.6)) == b"x"
        assert (0, ECHO) in frames and (1, ECHO) not in frames
    finally:
        listener.close()


# =========================================================================== strict -> ours


async def test_our_server_answers_the_strict_client(make_server: Any, kit: Any) -> None:
    server = await make_server()
    client = await StrictClient().connect("127.0.0.1", server.port)
    try:
        assert await client.call(kit.ECHO, b"hello") == (200, b"hello")
        status, body = await client.call(kit.UNKNOWN, b"?")
        assert status == 404 and body.decode().isprintable()
        status, body = await client.call(kit.FAIL, b"?")
        assert status == 500 and b"boom" in body
        got = await asyncio.gather(*(client.call(kit.ECHO, b"%d" % i) for i in range(1000)))
        assert got == [(200, b"%d" % i) for i in range(1000)]
        assert client.closes == []
        # Uncompressed replies carry the mark (compression 1), which smf reads as none.
        assert {c for c, _ in client.replies} == {Compression.DISABLED}
        assert {f for _, f in client.replies} == {0}
    finally:
        await client.close()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_our_server_with_compression_and_the_strict_client(
    make_server: Any, kit: Any, algorithm: Compression
) -> None:
    server = await make_server(filters=[CompressionFilter(algorithm, min_size=512)])
    client = await StrictClient(algorithm=int(algorithm)).connect("127.0.0.1", server.port)
    try:
        assert await client.call(kit.ECHO, COMPRESSIBLE) == (200, COMPRESSIBLE)
        assert await client.call(kit.ECHO, b"small") == (200, b"small")
        assert client.closes == []
        assert {c for c, _ in client.replies} == {int(algorithm), Compression.DISABLED}
    finally:
        await client.close()


async def test_strict_client_session_wrap_against_our_server(make_server: Any, kit: Any) -> None:
    server = await make_server()
    client = await StrictClient().connect("127.0.0.1", server.port)
    try:
        for start in range(0, 66_000, 1000):
            got = await asyncio.gather(
                *(client.call(kit.ECHO, b"%d" % i) for i in range(start, start + 1000))
            )
            assert got == [(200, b"%d" % i) for i in range(start, start + 1000)]
        assert client.closes == []
    finally:
        await client.close()


# =========================================================================== error text


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(12345, b"\x00" * 300, id="unknown-status-nuls"),
        pytest.param(ECHO, b"\xff\xfe\x00garbage\x80" * 40, id="echoed-wire-id-invalid-utf8"),
        pytest.param(500, b"\x00\x01\x02 binary \xff", id="known-status-binary"),
    ],
)
async def test_unreadable_error_replies_give_printable_errors(
    strict: StrictFactory, make_client: Any, status: int, body: bytes
) -> None:
    async def odd(_: bytes) -> Reply:
        return status, body

    server = await strict()
    server.handlers[0x5E0C0010] = odd
    client = await make_client("127.0.0.1", server.port)
    with pytest.raises(smf.RpcError) as info:
        await client.call(0x5E0C0010, b"x")
    text = str(info.value)
    assert info.value.status == status
    assert str(status) in text
    assert text.isprintable()
    assert len(text) < 300
    assert f"{len(body)} bytes" in text


def test_reply_text_keeps_smf_error_text() -> None:
    assert reply_text(500, b"ValueError: boom\n  at line 3") == "ValueError: boom\n  at line 3"
    assert reply_text(404, "no method ü".encode()) == "no method ü"
    long = reply_text(12345, b"a" * 1000)
    assert "unknown status 12345" in long and long.endswith("...")
    assert "'" + "a" * 32 + "'..." in long
