"""OpenTelemetry tracing: CLIENT and SERVER spans joined through ``traceparent``.

OpenTelemetry lets a process set its global tracer provider once. The ``spans``
fixture installs an SDK provider for one test through the reset documented in
OpenTelemetry's own tests (``_TRACER_PROVIDER_SET_ONCE`` / ``_TRACER_PROVIDER``) and
puts the previous state back afterwards, so every other test module keeps running
with tracing inactive (``smf.tracing.active()`` is False: no spans, no cost).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

otel_trace = pytest.importorskip("opentelemetry.trace")
pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402
from opentelemetry.util._once import Once  # noqa: E402

import smf  # noqa: E402
from smf import headers  # noqa: E402
from smf.context import TRACEPARENT_HEADER  # noqa: E402
from smf.wire import encode_frame  # noqa: E402

ECHO = 0x0E0F0001
HOP = 0x0E0F0002
BOOM = 0x0E0F0003
META = 0x0E0F0004


@contextlib.contextmanager
def sdk_provider() -> Iterator[InMemorySpanExporter]:
    saved = (otel_trace._TRACER_PROVIDER, otel_trace._TRACER_PROVIDER_SET_ONCE)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel_trace._TRACER_PROVIDER_SET_ONCE = Once()
    otel_trace._TRACER_PROVIDER = None
    otel_trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        otel_trace._TRACER_PROVIDER, otel_trace._TRACER_PROVIDER_SET_ONCE = saved
        provider.shutdown()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    assert not smf.tracing.active(), "a tracer provider leaked in from elsewhere"
    with sdk_provider() as exporter:
        assert smf.tracing.active()
        yield exporter
    assert not smf.tracing.active(), "the tracer provider was not restored"


async def echo(ctx: smf.CallContext, body: memoryview) -> bytes:
    return bytes(body)


async def boom(ctx: smf.CallContext, body: memoryview) -> bytes:
    raise ValueError("boom")


async def meta(ctx: smf.CallContext, body: memoryview) -> bytes:
    return repr(sorted(ctx.metadata.items())).encode()


@pytest.fixture
async def net() -> AsyncIterator[Any]:
    """Start servers (``server(**handlers)``) and clients; all stopped at teardown."""
    servers: list[smf.Server] = []
    clients: list[smf.Client] = []

    class Net:
        async def server(self, handlers: dict[int, tuple[Any, str]]) -> smf.Server:
            s = smf.Server()
            for wire_id, (handler, name) in handlers.items():
                s.add_handler(wire_id, handler, name)
            await s.start("127.0.0.1", 0)
            servers.append(s)
            return s

        async def client(self, server: smf.Server) -> smf.Client:
            c = smf.Client("127.0.0.1", server.port)
            for wire_id, name in server.router.names().items():
                c.methods.name(wire_id, name)
            await c.connect()
            clients.append(c)
            return c

    yield Net()
    for c in clients:
        await c.close()
    for s in reversed(servers):
        await s.stop(grace=0)


def by_kind(finished: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in finished if s.kind == kind]


async def finished_spans(exporter: InMemorySpanExporter, n: int) -> tuple[ReadableSpan, ...]:
    """The exported spans, once ``n`` have ended (a server span ends as its handler
    returns, around the time the client reads the answer)."""
    async with asyncio.timeout(5.0):
        while len(exporter.get_finished_spans()) < n:
            await asyncio.sleep(0.002)
    return exporter.get_finished_spans()


def child_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return (
        child.parent is not None
        and child.parent.span_id == parent.context.span_id
        and child.context.trace_id == parent.context.trace_id
    )


# =========================================================================== one hop


async def test_call_has_client_and_server_spans_in_one_trace(
    spans: InMemorySpanExporter, net: Any
) -> None:
    server = await net.server({ECHO: (echo, "Trace.echo")})
    client = await net.client(server)
    assert bytes(await client.call(ECHO, b"hi")) == b"hi"
    finished = await finished_spans(spans, 2)
    assert len(finished) == 2
    (c,) = by_kind(finished, SpanKind.CLIENT)
    (s,) = by_kind(finished, SpanKind.SERVER)
    assert c.name == "Trace.echo"
    assert s.name == "Trace.echo"
    assert c.parent is None  # a root span: no trace was active
    assert s.context.trace_id == c.context.trace_id
    assert child_of(s, c)
    assert s.parent is not None and s.parent.is_remote
    # The server span lies within the client span.
    assert c.start_time <= s.start_time <= s.end_time <= c.end_time


async def test_each_call_is_its_own_trace(spans: InMemorySpanExporter, net: Any) -> None:
    server = await net.server({ECHO: (echo, "Trace.echo")})
    client = await net.client(server)
    for _ in range(3):
        await client.call(ECHO, b"x")
    finished = await finished_spans(spans, 6)
    assert len({s.context.trace_id for s in finished}) == 3
    for c in by_kind(finished, SpanKind.CLIENT):
        (s,) = [
            s
            for s in by_kind(finished, SpanKind.SERVER)
            if s.context.trace_id == c.context.trace_id
        ]
        assert child_of(s, c)


async def test_call_inside_an_application_span_joins_its_trace(
    spans: InMemorySpanExporter, net: Any
) -> None:
    server = await net.server({ECHO: (echo, "Trace.echo")})
    client = await net.client(server)
    tracer = otel_trace.get_tracer("test")
    with tracer.start_as_current_span("outer"):
        await client.call(ECHO, b"x")
    finished = await finished_spans(spans, 3)
    (outer,) = [s for s in finished if s.name == "outer"]
    (c,) = by_kind(finished, SpanKind.CLIENT)
    (s,) = by_kind(finished, SpanKind.SERVER)
    assert child_of(c, outer)
    assert child_of(s, c)


async def test_a_callers_traceparent_is_the_parent_of_the_client_span(
    spans: InMemorySpanExporter, net: Any
) -> None:
    """(Before, the client span started a new root trace and replaced it.)"""
    server = await net.server({META: (meta, "Trace.meta")})
    client = await net.client(server)
    trace_id, span_id = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
    caller = f"00-{trace_id:032x}-{span_id:016x}-01"
    seen = bytes(await client.call(META, b"x", metadata={TRACEPARENT_HEADER: caller})).decode()
    finished = await finished_spans(spans, 2)
    (c,) = by_kind(finished, SpanKind.CLIENT)
    (s,) = by_kind(finished, SpanKind.SERVER)
    assert c.context.trace_id == trace_id == s.context.trace_id
    assert c.parent is not None and c.parent.span_id == span_id
    assert s.parent is not None and s.parent.span_id == c.context.span_id
    # The handler sees the client span's traceparent, in the caller's trace.
    assert f"00-{trace_id:032x}-{c.context.span_id:016x}-" in seen


async def test_traceparent_reaches_the_handler_and_callers_metadata_is_not_mutated(
    spans: InMemorySpanExporter, net: Any
) -> None:
    server = await net.server({META: (meta, "Trace.meta")})
    client = await net.client(server)
    md = {"user": "alice"}
    seen = bytes(await client.call(META, b"x", metadata=md)).decode()
    assert md == {"user": "alice"}
    assert "'user', 'alice'" in seen
    finished = await finished_spans(spans, 2)
    (c,) = by_kind(finished, SpanKind.CLIENT)
    # W3C: version-traceid-parentid-flags; flags bit 0 = sampled (newer OpenTelemetry
    # also sets bit 1, "random trace id").
    expected = f"('{TRACEPARENT_HEADER}', '00-{c.context.trace_id:032x}-{c.context.span_id:016x}-"
    assert expected in seen
    flags = seen[seen.index(expected) + len(expected) :][:2]
    assert int(flags, 16) & 1


async def test_incoming_traceparent_from_a_raw_peer(
    spans: InMemorySpanExporter, net: Any, kit: Any
) -> None:
    server = await net.server({ECHO: (echo, "Trace.echo")})
    trace_id, span_id = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
    tp = f"00-{trace_id:032x}-{span_id:016x}-01"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(encode_frame(1, ECHO, headers.encode({TRACEPARENT_HEADER: tp}) + b"x", flags=1))
    answer = await kit.read_frame(reader)
    assert answer.meta == 200
    await kit.close_writer(writer)
    (s,) = await finished_spans(spans, 1)
    assert s.kind == SpanKind.SERVER
    assert s.context.trace_id == trace_id
    assert s.parent is not None and s.parent.span_id == span_id and s.parent.is_remote


async def test_failures_mark_both_spans(spans: InMemorySpanExporter, net: Any) -> None:
    server = await net.server({BOOM: (boom, "Trace.boom")})
    client = await net.client(server)
    with pytest.raises(smf.InternalError):
        await client.call(BOOM, b"x")
    finished = await finished_spans(spans, 2)
    (c,) = by_kind(finished, SpanKind.CLIENT)
    (s,) = by_kind(finished, SpanKind.SERVER)
    assert child_of(s, c)
    assert s.status.status_code == StatusCode.ERROR
    assert c.status.status_code == StatusCode.ERROR


async def test_deadline_and_tracing_together(spans: InMemorySpanExporter, net: Any) -> None:
    async def slow(ctx: smf.CallContext, body: memoryview) -> bytes:
        await asyncio.sleep(3600)
        return b"never"

    server = await net.server({ECHO: (slow, "Trace.slow")})
    client = await net.client(server)
    with pytest.raises(smf.DeadlineExceeded):
        await client.call(ECHO, b"x", metadata={"smf-timeout-us": "50000"})
    finished = await finished_spans(spans, 2)
    (c,) = by_kind(finished, SpanKind.CLIENT)
    (s,) = by_kind(finished, SpanKind.SERVER)
    assert child_of(s, c)
    assert server.stats.responses == {408: 1}


# =========================================================================== two hops


async def test_nested_call_continues_the_trace(spans: InMemorySpanExporter, net: Any) -> None:
    b = await net.server({ECHO: (echo, "B.echo")})
    a_to_b = smf.Client("127.0.0.1", b.port)
    a_to_b.methods.name(ECHO, "B.echo")

    async def hop(ctx: smf.CallContext, body: memoryview) -> bytes:
        return b"A+" + bytes(await a_to_b.call(ECHO, bytes(body)))

    a = await net.server({HOP: (hop, "A.hop")})
    client = await net.client(a)
    try:
        assert bytes(await client.call(HOP, b"x")) == b"A+x"
        finished = await finished_spans(spans, 4)
    finally:
        await a_to_b.close()
    assert len(finished) == 4
    assert len({s.context.trace_id for s in finished}) == 1
    (c_a,) = [s for s in finished if s.kind == SpanKind.CLIENT and s.name == "A.hop"]
    (s_a,) = [s for s in finished if s.kind == SpanKind.SERVER and s.name == "A.hop"]
    (c_b,) = [s for s in finished if s.kind == SpanKind.CLIENT and s.name == "B.echo"]
    (s_b,) = [s for s in finished if s.kind == SpanKind.SERVER and s.name == "B.echo"]
    assert c_a.parent is None
    assert child_of(s_a, c_a)
    assert child_of(c_b, s_a)  # A's outgoing call is a child of A's server span
    assert child_of(s_b, c_b)


# =========================================================================== isolation


def test_sdk_provider_restores_the_global_state() -> None:
    before = otel_trace.get_tracer_provider()
    with sdk_provider():
        assert smf.tracing.active()
    assert otel_trace.get_tracer_provider() is before
    assert not smf.tracing.active()


async def test_no_spans_and_no_traceparent_without_a_provider(net: Any) -> None:
    assert not smf.tracing.active()
    server = await net.server({META: (meta, "Trace.meta")})
    client = await net.client(server)
    assert bytes(await client.call(META, b"x")) == b"[]"  # no payload headers at all


async def test_a_stream_gets_one_server_span_child_of_its_traceparent(
    spans: InMemorySpanExporter,
) -> None:
    async def tail(ctx: smf.CallContext, request: memoryview) -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    server = smf.Server()
    server.add_stream_handler(0x0E0F0010, tail, "server", "T.Tail")
    await server.start("127.0.0.1", 0)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        async with smf.Client("127.0.0.1", server.port) as client:
            call = client.server_stream(0x0E0F0010, b"x", metadata={TRACEPARENT_HEADER: parent})
            assert [r async for r in call] == [b"a", b"b"]
    finally:
        await server.stop(grace=0.5)
    finished = await finished_spans(spans, 2)
    (span,) = by_kind(finished, SpanKind.SERVER)
    (client_span,) = by_kind(finished, SpanKind.CLIENT)
    assert span.name == "T.Tail"
    assert span.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    # The caller's traceparent is the client span's parent; the client span the server's.
    assert client_span.parent is not None and client_span.parent.span_id == 0xB7AD6B7169203331
    assert child_of(span, client_span)


async def test_a_stream_gets_one_client_span_that_ends_with_it(
    spans: InMemorySpanExporter,
) -> None:
    async def tail(ctx: smf.CallContext, request: memoryview) -> AsyncIterator[bytes]:
        yield b"a"
        if bytes(request) == b"fail":
            raise ValueError("mid-stream")
        yield b"b"

    server = smf.Server()
    server.add_stream_handler(0x0E0F0011, tail, "server", "T.Tail")
    await server.start("127.0.0.1", 0)
    try:
        async with smf.Client("127.0.0.1", server.port) as client:
            client.methods.name(0x0E0F0011, "T.Tail")
            assert [r async for r in client.server_stream(0x0E0F0011, b"ok")] == [b"a", b"b"]
            with pytest.raises(smf.InternalError):
                async for _ in client.server_stream(0x0E0F0011, b"fail"):
                    pass
    finally:
        await server.stop(grace=0.5)
    finished = await finished_spans(spans, 4)
    clients = by_kind(finished, SpanKind.CLIENT)
    servers = by_kind(finished, SpanKind.SERVER)
    assert [c.name for c in clients] == ["T.Tail", "T.Tail"]
    assert len(servers) == 2
    assert clients[0].context.trace_id != clients[1].context.trace_id  # one trace each
    for c, s in zip(clients, sorted(servers, key=lambda s: s.start_time), strict=True):
        assert c.parent is None
        assert child_of(s, c)
        assert c.start_time <= s.start_time
    assert clients[0].status.status_code != StatusCode.ERROR
    assert clients[1].status.status_code == StatusCode.ERROR
    assert "mid-stream" in (clients[1].status.description or "")
