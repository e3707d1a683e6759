"""Streams on asyncio: the server's running stream handlers and the client's stream
calls, over the sans-IO state in ``smf.streams``.

Server: register a handler with ``Server.add_stream_handler(wire_id, handler, kind)``:

- ``"server"``: ``handler(ctx, request: memoryview) -> AsyncIterator[Payload]`` (an
  async generator);
- ``"client"``: ``async handler(ctx, requests: AsyncIterator[memoryview]) -> Payload``;
- ``"bidi"``: ``handler(ctx, requests: AsyncIterator[memoryview]) -> AsyncIterator[Payload]``.

Client: ``client.stream(wire_id)`` (bidi: ``send``, ``done_writing``, ``async for``),
``client.server_stream(wire_id, request)`` (``async for``) and
``await client.client_stream(wire_id, requests)``.

Messages received are copied out of the receive buffer (``bytes``), so a consumer
that keeps them pins no receive buffer; what it has not consumed is bounded by the
window it granted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeAlias, TypeVar

from . import streams as st
from . import tracing as _tracing
from .context import CallContext, current_call
from .errors import (
    BadRequest,
    ConnectionLost,
    DeadlineExceeded,
    PayloadTooLarge,
    RpcError,
)
from .filters.base import Filter, Message, run_chain
from .filters.compression import compress as compress_body
from .protocol import offered, open_call, open_payload
from .wire import Compression, Payload, Status

if TYPE_CHECKING:
    from .client import Client, ClientConnection, Default
    from .metrics import MethodStats
    from .server import ServerConnection
    from .transport import Connection

log = logging.getLogger("smf.streams")

StreamKind: TypeAlias = Literal["server", "client", "bidi"]
KINDS: tuple[str, ...] = ("server", "client", "bidi")

StreamHandler: TypeAlias = Callable[..., Any]
"""See the module doc for the three shapes."""


class Cancelled(RpcError):
    """The stream was cancelled by the client (the server's final status 499)."""

    status = st.CANCELLED_STATUS


_END: Any = object()


class Inbox:
    """Messages received on one stream, waiting for the application; consuming one
    grants credit back to the peer (``smf.streams.consumed``). With ``chain`` (the
    side's incoming filters), each message is kept as received, with its compression,
    and goes through ``chain`` as the application takes it (``None``: dropped)."""

    def __init__(
        self,
        conn: Connection,
        stream: st.Stream,
        chain: Callable[[int, bytes], Awaitable[bytes | None]] | None = None,
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.chain = chain
        self.compressions: collections.deque[int] = collections.deque()
        self.items: collections.deque[bytes] = collections.deque()
        self.closed = False  # no more messages will come
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put(self, body: bytes, compression: int = 0) -> None:
        if not self.closed:
            self.items.append(body)
            if self.chain is not None:
                self.compressions.append(compression)
            self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        if not self.closed:
            self.closed = True
            self.error = error
            self._wake()

    def fail_now(self, error: BaseException) -> None:
        """End at once: what is queued is dropped and ``error`` raised next."""
        self.items.clear()
        self.compressions.clear()
        self.closed = False
        self.finish(error)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> bytes | None:
        """The next message; None at a clean end; raises the stream's error."""
        chain = self.chain
        while True:
            body = await self._take()
            if chain is None or body is None:
                return body
            filtered = await chain(self.compressions.popleft(), body)
            if filtered is not None:
                return filtered

    async def _take(self) -> bytes | None:
        while not self.items:
            if self.closed:
                if self.error is not None:
                    raise self.error
                return None
            self._waiter = self.conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        body = self.items.popleft()
        conn = self.conn
        if not conn.closed and st.consumed(conn.protocol, self.stream, len(body)):
            conn.queued()
        return body

    async def __aiter__(self) -> AsyncIterator[memoryview]:
        while True:
            body = await self.get()
            if body is None:
                return
            yield memoryview(body)


def _message(event: st.AnyStreamEvent, max_size: int) -> bytes:
    """A received message's bytes (copied out of the receive buffer), decompressed when
    it is zstd or lz4 (up to ``max_size``); raises ``RpcError`` for a bad one."""
    body: memoryview = event.body  # type: ignore[union-attr]
    try:
        return _plain(event.compression, body, max_size)  # type: ignore[union-attr]
    finally:
        body.release()


def _plain(compression: int, body: Payload, max_size: int) -> bytes:
    """``body`` as bytes, decompressed when ``compression`` is zstd or lz4."""
    try:
        if compression > 1:
            _, plain = open_payload(compression, 0, memoryview(body), max_size)
            return bytes(plain)
        return bytes(body)
    except RpcError:
        raise
    except Exception as exc:
        raise BadRequest(f"stream message does not decompress: {exc}") from None


async def _filter_in(
    filters: list[Filter],
    side: Any,
    stream: st.Stream,
    meta: int,
    compression: int,
    body: bytes,
    max_size: int,
) -> bytes | None:
    """A received message through ``filters`` (incoming), then decompressed if a
    filter left it compressed; None if a filter dropped it."""
    message = await run_chain(
        filters, True, Message(compression, 0, stream.session, meta, body), side
    )
    if message is None:
        return None
    return _plain(message.compression, message.body, max_size)


def _received(stats: MethodStats, event: st.AnyStreamEvent) -> None:
    stats.messages_in += 1
    stats.bytes_in += event.body.nbytes  # type: ignore[union-attr]


class _Sender:
    """Waiting for credit and for the transport, then queueing a message."""

    conn: Connection
    stream: st.Stream
    stats: MethodStats
    filters: list[Filter]
    accept: frozenset[int] = frozenset()  # what the peer offered (a server's replies)
    _credit: asyncio.Future[None] | None = None
    _send_error: BaseException | None = None

    def credit_arrived(self) -> None:
        waiter = self._credit
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _send(self, body: Payload, compression: int = 0) -> None:
        if not (body.nbytes if type(body) is memoryview else len(body)):
            raise ValueError("a stream message is never empty (an empty table is 4+ bytes)")
        conn, stream = self.conn, self.stream
        while not stream.can_send:
            if self._send_error is not None:
                raise self._send_error
            if stream.sent_close:
                raise RuntimeError("send after done_writing() or the stream's end")
            self._credit = conn.loop.create_future()
            try:
                await self._credit
            finally:
                self._credit = None
        if self._send_error is not None:
            raise self._send_error
        if conn._write_paused:
            await conn.drain()
            if conn.closed:
                raise ConnectionLost("connection lost while sending on a stream")
        stats = self.stats
        stats.bytes_out += st.send_message(conn.protocol, stream, body, compression)
        stats.messages_out += 1
        conn.queued()

    async def _send_filtered(self, body: Payload, compression: int = 0) -> None:
        """``body`` through the outgoing filters, then sent (unless one dropped it).
        Filters see a stream message's compression and body; the flags they set are not
        sent (a stream message never carries payload headers)."""
        stream = self.stream
        meta = st.OK_STATUS if stream.server else stream.wire_id
        message = Message(compression, 0, stream.session, meta, body, self.accept)
        out = await run_chain(self.filters, False, message, self.conn)  # type: ignore[arg-type]
        if out is not None:
            await self._send(out.body, out.compression)


# ---------------------------------------------------------------------------- server


class ServerStream(_Sender):
    """One stream being served: its handler's task, inbox and credit."""

    conn: ServerConnection

    def __init__(
        self,
        conn: ServerConnection,
        stream: st.Stream,
        kind: str,
        handler: StreamHandler,
        ctx: CallContext,
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.kind = kind
        self.handler = handler
        self.ctx = ctx
        self.filters = conn.server.filters
        self.stats = conn.server.methods.get(ctx.wire_id)
        self.inbox = Inbox(conn, stream, self._incoming if self.filters else None)
        self.accept = offered(0, ctx.metadata)  # smf-accept-compression in the OPEN frame
        self.cancelled_by_peer = False
        self.started = False
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        conn = self.conn
        ctx = self.ctx
        current_call.set(ctx)
        status: int = Status.OK
        message = ""
        started = time.perf_counter_ns()
        self.started = True
        try:
            if self.cancelled_by_peer:
                # Cancelled before this task first ran (a CANCEL right behind the OPEN):
                # a task cancelled then would never run this body, nor send the END.
                raise asyncio.CancelledError
            remaining = ctx.time_remaining()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded("deadline passed before the stream started")
            if _tracing.active():  # one SERVER span per stream, child of its traceparent
                name = conn.server.methods.get(ctx.wire_id).name
                with _tracing.server_span(name, ctx.metadata):
                    await self._serve_within(remaining)
            else:
                await self._serve_within(remaining)
        except asyncio.CancelledError:
            if conn.closed:
                return  # nobody is left to tell
            if self.cancelled_by_peer:
                status, message = st.CANCELLED_STATUS, "cancelled by the client"
            else:
                status, message = Status.UNAVAILABLE, "stream cancelled: server is shutting down"
        except Exception as exc:
            status, body = conn._failure(exc, ctx.wire_id)
            message = bytes(body).decode("utf-8", "replace")
        finally:
            if not conn.closed:
                st.send_end(conn.protocol, self.stream, status, message)
                conn.queued()
            self.inbox.finish(ConnectionLost("stream ended"))
            self.stats.record(status, time.perf_counter_ns() - started, 0, 0)

    async def _serve_within(self, remaining: float | None) -> None:
        if remaining is None:
            await self._serve()
            return
        timeout = asyncio.timeout(remaining)
        try:
            async with timeout:
                await self._serve()
        except TimeoutError:
            if timeout.expired():
                raise DeadlineExceeded(
                    f"stream deadline of {remaining * 1e3:.1f} ms exceeded"
                ) from None
            raise

    async def _serve(self) -> None:
        kind, handler, ctx = self.kind, self.handler, self.ctx
        if kind == "server":
            request = await self.inbox.get()
            if request is None:
                raise BadRequest("server-streaming call half-closed before its request")
            await self._pump(handler(ctx, memoryview(request)))
        elif kind == "client":
            result = await handler(ctx, self.inbox.__aiter__())
            if self.filters:
                await self._send_filtered(result)
            else:
                await self._send(result)
        else:
            await self._pump(handler(ctx, self.inbox.__aiter__()))

    async def _incoming(self, compression: int, body: bytes) -> bytes | None:
        conn = self.conn
        return await _filter_in(
            self.filters,
            conn,
            self.stream,
            self.ctx.wire_id,
            compression,
            body,
            conn.server.max_body_size,
        )

    async def _pump(self, replies: AsyncIterator[Payload]) -> None:
        conn, stream, send, stats = self.conn, self.stream, st.send_message, self.stats
        protocol = conn.protocol
        filtered = bool(self.filters)
        try:
            async for reply in replies:
                if filtered:
                    await self._send_filtered(reply)
                elif stream.can_send and not conn._write_paused:  # no wait: no coroutine
                    stats.bytes_out += send(protocol, stream, reply)
                    stats.messages_out += 1
                    conn.queued()
                else:
                    await self._send(reply)
        finally:
            aclose = getattr(replies, "aclose", None)
            if aclose is not None:
                await aclose()  # the generator sees GeneratorExit if we stopped early

    def on_event(self, event: st.AnyStreamEvent) -> None:
        kind = type(event)
        if kind is st.StreamMessage:
            _received(self.stats, event)
            if self.filters:  # decompressed after the incoming filters, when taken
                body = event.body  # type: ignore[union-attr]
                self.inbox.put(bytes(body), event.compression)  # type: ignore[union-attr]
                body.release()
                return
            try:
                self.inbox.put(_message(event, self.conn.server.max_body_size))
            except RpcError as exc:
                self.inbox.fail_now(exc)
        elif kind is st.StreamCredit:
            self.credit_arrived()
        elif kind is st.StreamEnded:
            self.inbox.finish()
        elif kind is st.StreamCancelled:
            self.cancelled_by_peer = True
            self.inbox.finish(Cancelled("cancelled by the client"))
            if self.task is not None and self.started:
                self.task.cancel()
        elif kind is st.StreamOversized:
            size = event.size  # type: ignore[union-attr]
            limit = self.conn.server.max_body_size
            self.inbox.fail_now(
                PayloadTooLarge(f"stream message of {size} bytes is above the maximum of {limit}")
            )


def server_event(conn: ServerConnection, event: st.AnyStreamEvent) -> None:
    """A stream event on a server connection (from ``event_received``)."""
    if type(event) is st.StreamIgnored:
        return
    stream = event.stream  # type: ignore[union-attr]
    if type(event) is not st.StreamOpened:
        owner = stream.owner
        if owner is not None:
            owner.on_event(event)
        elif type(event) is st.StreamMessage:
            event.body.release()
        return
    _open(conn, event)


def _open(conn: ServerConnection, event: st.StreamOpened) -> None:
    server = conn.server
    stream = event.stream
    server.stats.requests += 1
    entry = server.stream_handlers.get(stream.wire_id)
    refusal: tuple[int, str] | None = None
    ctx = CallContext(conn.peer, stream.wire_id, stream.session, peer_identity=conn.identity)
    if entry is None:
        server.stats.no_route += 1
        kind = "unary method" if stream.wire_id in server.router.handlers else "method"
        refusal = Status.NOT_FOUND, f"no streaming {kind} with wire id {stream.wire_id}"
    elif server.closing:
        refusal = Status.UNAVAILABLE, "server is shutting down"
    else:
        try:
            open_call(ctx, 0, event.flags, event.body, None)
        except RpcError as exc:
            refusal = exc.status, exc.message
    event.body.release()
    if refusal is not None:
        server.methods.get(stream.wire_id).record(refusal[0], 0, 0, 0)
        st.send_end(conn.protocol, stream, *refusal)
        conn.queued()
        return
    assert entry is not None
    kind, handler = entry
    owner = ServerStream(conn, stream, kind, handler, ctx)
    stream.owner = owner
    st.accept(conn.protocol, stream)
    conn.queued()
    task = conn.loop.create_task(owner.run(), context=conn._base_context.copy())
    owner.task = task
    conn.in_flight.add(task)
    server.tasks.add(task)
    task.add_done_callback(lambda t: _stream_done(conn, t))


def _stream_done(conn: ServerConnection, task: asyncio.Task[None]) -> None:
    conn.in_flight.discard(task)
    conn.server.tasks.discard(task)
    if conn._reading_paused and not conn.closed:
        conn.resume_pulling()


def add_handler(
    handlers: dict[int, tuple[str, StreamHandler]], wire_id: int, handler: StreamHandler, kind: str
) -> None:
    if kind not in KINDS:
        raise ValueError(f"stream kind must be one of {', '.join(KINDS)}, not {kind!r}")
    handlers[wire_id] = (kind, handler)


# ---------------------------------------------------------------------------- client


class StreamCall(_Sender):
    conn: ClientConnection

    """A client's stream: ``await send(msg)``, ``await done_writing()``, ``async for``
    over the replies (``bytes``), ``cancel()``. The stream opens on first use. The
    replies end cleanly when the server ends with 200, else raise the status's
    ``RpcError``; a lost connection raises ``ConnectionLost``; the deadline
    ``DeadlineExceeded``. Leaving ``async for`` early (``break``) cancels the stream."""

    def __init__(
        self,
        client: Client,
        wire_id: int,
        *,
        timeout: float | Default | None = None,
        metadata: Mapping[str, str] | None = None,
        window: tuple[int, int] | None = None,
        request: Payload | None = None,
    ) -> None:
        self.client = client
        self.wire_id = wire_id
        self.timeout: float | None = timeout if isinstance(timeout, float | int) else None
        self.metadata = metadata
        self.window = window or client.stream_window
        self._request = request
        self._opening: asyncio.Future[None] | None = None
        self._finished = False
        self._error: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.status: int | None = None
        self.inbox: Inbox | None = None
        # What the session table and the stream's state hold: not the call itself, so
        # a call the application dropped is collected (and cancelled, see __del__).
        self._handle = _Handle(self)
        self._span: Any = None  # the CLIENT span (tracing active), ended with the stream
        self.filters = client.filters
        self.stats = client.methods.get_or_add(wire_id)
        self._started = 0

    # --------------------------------------------------------------- opening

    async def _open(self) -> None:
        if self._opening is not None:
            await asyncio.shield(self._opening)
            return
        loop = asyncio.get_running_loop()
        self._opening = loop.create_future()
        try:
            await self._do_open()
        except BaseException as exc:
            self._error = exc if isinstance(exc, Exception) else ConnectionLost(repr(exc))
            if self.inbox is not None and not self._finished:
                # Opened, but its request did not go (an outgoing filter raised): the
                # server must not wait for it.
                self._end(self._error, "the client could not send its request")
            self._end_span(self._error)
            self._opening.set_exception(self._error)
            self._opening.exception()  # retrieved: raised to every opener
            self._finished = True
            raise
        self._opening.set_result(None)

    async def _do_open(self) -> None:
        from .client import _call_headers

        client = self.client
        t = self.timeout
        parent = current_call.get()
        prefix = b""
        metadata = self.metadata
        if _tracing.active():  # one CLIENT span per stream, parent of the server's
            carrier = dict(metadata) if metadata else {}
            self._span = _tracing.start_client_span(
                client.methods.get_or_add(self.wire_id).name, carrier
            )
            metadata = carrier
        if parent is not None or metadata or t is not None:
            t, _, prefix = _call_headers(parent, metadata, t, t is not None)
        if t is not None:
            timeout = t
            self._timer = asyncio.get_running_loop().call_later(t, self._expire, timeout)
            async with asyncio.timeout(t):
                conn, session = await self._session()
        else:
            conn, session = await self._session()
        self.conn = conn
        self._started = time.perf_counter_ns()
        self.stream = st.open_stream(
            conn.protocol, session, self.wire_id, self._handle, *self.window, prefix
        )
        self.inbox = Inbox(conn, self.stream, self._incoming if self.filters else None)
        client.stats.calls += 1
        request = self._request
        if request is not None:
            self._request = None
            if self.filters:  # the server stream's request goes through them too
                conn.queued()
                await self._send_filtered(request)
            else:
                self.stats.bytes_out += st.send_message(conn.protocol, self.stream, request)
                self.stats.messages_out += 1
            st.send_end(conn.protocol, self.stream)
        conn.queued()

    async def _session(self) -> tuple[ClientConnection, int]:
        conn = await self.client._ready_connection()
        handle = self._handle
        session = conn.protocol.start_call(handle)
        if not session:
            session = await conn.sessions.allocate(handle)  # type: ignore[arg-type]
        if conn.closed:
            conn.sessions.release(session, handle)
            raise ConnectionLost(f"connection to {self.client.address} lost")
        return conn, session

    # --------------------------------------------------------------- sending

    async def send(self, message: Payload, *, compress: int = 0) -> None:
        """Send one message (waits for credit: the server's window). ``compress``:
        ``smf.Compression.ZSTD`` or ``LZ4`` compresses it (the server decompresses)."""
        if self.inbox is None:
            await self._open()
        if self._error is not None:
            raise self._error
        if compress > 1:
            message = compress_body(Compression(compress), message)
        if self.filters:
            await self._send_filtered(message, compress if compress > 1 else 0)
        else:
            await self._send(message, compress if compress > 1 else 0)

    async def done_writing(self) -> None:
        """Half-close: no more messages from this side."""
        await self._open()
        if not self._finished and not self.stream.sent_close:
            st.send_end(self.conn.protocol, self.stream)
            self.conn.queued()

    # --------------------------------------------------------------- receiving

    async def read(self) -> bytes | None:
        """The next reply, None once the stream ended cleanly."""
        inbox = self.inbox
        if inbox is None:
            await self._open()
            inbox = self.inbox
            assert inbox is not None
        return await inbox.get()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            if self.inbox is None:
                await self._open()
            assert self.inbox is not None
            get = self.inbox.get
            while True:
                reply = await get()
                if reply is None:
                    return
                yield reply
        finally:
            if not self._finished:
                self.cancel("the client stopped reading")

    def __await__(self) -> Any:
        """``await call``: the one reply of a client-streaming call."""
        return self._one_reply().__await__()

    async def _one_reply(self) -> bytes:
        reply = await self.read()
        if reply is None:
            raise RpcError("stream ended without a reply", Status.INTERNAL_ERROR)
        rest = await self.read()
        if rest is not None:
            raise RpcError("stream sent more than one reply", Status.INTERNAL_ERROR)
        return reply

    # --------------------------------------------------------------- ending

    def cancel(self, reason: str = "cancelled by the client") -> None:
        """Give up: the server's handler is cancelled; reading raises ``Cancelled``."""
        self._end(Cancelled(reason), reason)

    def _expire(self, timeout: float) -> None:
        self._timer = None
        self.client.stats.timeouts += 1
        self._end(DeadlineExceeded(f"stream deadline of {timeout}s exceeded (client)"), "deadline")

    async def _incoming(self, compression: int, body: bytes) -> bytes | None:
        try:
            return await _filter_in(
                self.filters,
                self.conn,
                self.stream,
                st.OK_STATUS,
                compression,
                body,
                self.client.max_body_size,
            )
        except Exception as exc:
            self._end(exc, "an incoming filter refused a reply")
            raise

    def _record(self, status: int) -> None:
        """The stream as one call in the method's metrics (its messages counted apart)."""
        if self._started:
            self.stats.record(status, time.perf_counter_ns() - self._started, 0, 0)
            self._started = 0

    def _end_span(self, error: BaseException | None) -> None:
        span, self._span = self._span, None
        if span is not None:
            _tracing.end_span(span, error)

    def _end(self, error: BaseException, reason: str) -> None:
        if self._finished:
            return
        self._finished = True
        self._end_span(error)
        self._record(error.status if isinstance(error, RpcError) else Status.INTERNAL_ERROR)
        self._error = self._send_error = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.inbox is not None:
            self.inbox.fail_now(error)
            conn = self.conn
            if not conn.closed:
                st.send_cancel(conn.protocol, self.stream, reason)
                conn.queued()
        self.credit_arrived()

    def on_event(self, event: st.AnyStreamEvent) -> None:
        kind = type(event)
        inbox = self.inbox
        assert inbox is not None
        if kind is st.StreamMessage:
            stats = self.stats  # inline: once per message
            stats.messages_in += 1
            stats.bytes_in += event.body.nbytes  # type: ignore[union-attr]
            if self.filters:  # decompressed after the incoming filters, when read
                body = event.body  # type: ignore[union-attr]
                inbox.put(bytes(body), event.compression)  # type: ignore[union-attr]
                body.release()
                return
            try:
                inbox.put(_message(event, self.client.max_body_size))
            except RpcError as exc:
                self._end(exc, "reply does not decompress")
        elif kind is st.StreamCredit:
            self.credit_arrived()
        elif kind is st.StreamEnded:
            status = self.status = event.meta  # type: ignore[union-attr]
            body = event.body  # type: ignore[union-attr]
            text = bytes(body).decode("utf-8", "replace")
            body.release()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._finished:
                return
            self._finished = True
            error = None if status == Status.OK else RpcError.from_status(status, text)
            if error is not None and status == st.CANCELLED_STATUS:
                error = Cancelled(text)
            self._send_error = error or RuntimeError("send after the stream ended")
            self._end_span(error)
            self._record(status)
            inbox.finish(error)
            self.credit_arrived()
        elif kind is st.StreamOversized:
            size = event.size  # type: ignore[union-attr]
            limit = self.client.max_body_size
            self._end(
                PayloadTooLarge(f"stream message of {size} bytes is above the maximum of {limit}"),
                "message above the client's maximum size",
            )

    def __del__(self) -> None:
        # Dropped while open (never read to its end, never cancelled): cancel it, from
        # the loop (a finalizer may run inside any callback), so the server stops too.
        self._end_span(Cancelled("the client dropped the stream"))
        if self.inbox is not None and not self._finished and not self.conn.closed:
            with contextlib.suppress(RuntimeError):  # a closed loop: a closed connection
                self.conn.loop.call_soon(_cancel_dropped, self.conn, self.stream)

    # SessionTable.fail_all duck-typing: the connection is gone.
    def done(self) -> bool:
        return self._finished

    def set_exception(self, exc: BaseException) -> None:
        if self._finished:
            return
        self._finished = True
        self._end_span(exc)
        self._error = self._send_error = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.inbox is not None:
            self.inbox.fail_now(exc)
        self.credit_arrived()


class _Handle:
    """A client stream's entry in the session table: forwards to its call while the
    application holds it (``SessionTable.fail_all`` calls ``done``/``set_exception``)."""

    __slots__ = ("call",)

    def __init__(self, call: StreamCall) -> None:
        self.call = weakref.ref(call)

    def on_event(self, event: st.AnyStreamEvent) -> None:
        call = self.call()
        if call is not None:
            call.on_event(event)
        elif isinstance(event, st.StreamEvent):
            event.body.release()

    def done(self) -> bool:
        call = self.call()
        return call is None or call.done()

    def set_exception(self, exc: BaseException) -> None:
        call = self.call()
        if call is not None:
            call.set_exception(exc)


def _cancel_dropped(conn: ClientConnection, stream: st.Stream) -> None:
    if not conn.closed and conn.protocol.streams.get(stream.session) is stream:
        st.send_cancel(conn.protocol, stream, "the client dropped the stream")
        conn.queued()


def client_event(conn: ClientConnection, event: st.AnyStreamEvent) -> None:
    """A stream event on a client connection (from ``event_received``)."""
    if type(event) is st.StreamIgnored:
        conn.client.stats.late_replies += 1
        return
    owner = event.stream.owner  # type: ignore[union-attr]
    owner.on_event(event)


async def client_stream(
    client: Client,
    wire_id: int,
    requests: Iterable[Payload] | AsyncIterable[Payload],
    **kwargs: Any,
) -> bytes:
    """Send every message of ``requests``, half-close, and return the one reply."""
    call = StreamCall(client, wire_id, **kwargs)
    try:
        if isinstance(requests, AsyncIterable):
            async for message in requests:
                await call.send(message)
        else:
            for message in requests:
                await call.send(message)
        await call.done_writing()
        return await call._one_reply()
    except RuntimeError:
        # The server ended the stream early: its status says why.
        if call.inbox is not None and call.inbox.error is not None:
            raise call.inbox.error from None
        raise
    except BaseException:
        call.cancel("the client stopped sending")
        raise


# ---------------------------------------------------------------------------- typed (stubs)

Req = TypeVar("Req")
Rep = TypeVar("Rep")


class TypedStream(Generic[Req, Rep]):
    """A ``StreamCall`` with typed messages (what generated client stubs return):
    ``send`` encodes, reading decodes (``Table.GetRootAs``). ``async for`` ends when
    the server ends with 200; leaving it early cancels the stream."""

    def __init__(
        self,
        call: StreamCall,
        encode: Callable[[Req], Payload],
        decode: Callable[[bytes], Rep],
    ) -> None:
        self.call = call
        self._encode = encode
        self._decode = decode

    async def send(self, message: Req) -> None:
        await self.call.send(self._encode(message))

    async def done_writing(self) -> None:
        await self.call.done_writing()

    async def read(self) -> Rep | None:
        """The next reply, None once the stream ended cleanly."""
        body = await self.call.read()
        return None if body is None else self._decode(body)

    def cancel(self) -> None:
        self.call.cancel()

    @property
    def status(self) -> int | None:
        """The server's final status, once it ended the stream."""
        return self.call.status

    async def __aiter__(self) -> AsyncIterator[Rep]:
        try:
            while True:
                body = await self.call.read()
                if body is None:
                    return
                yield self._decode(body)
        finally:
            if not self.call.done():
                self.call.cancel("the client stopped reading")


async def encoded(
    replies: AsyncIterator[Rep], encode: Callable[[Rep], Payload]
) -> AsyncIterator[Payload]:
    """A handler's replies encoded; closing this closes the handler's generator (so it
    sees ``GeneratorExit`` when the stream is cancelled)."""
    try:
        async for reply in replies:
            yield encode(reply)
    finally:
        aclose = getattr(replies, "aclose", None)
        if aclose is not None:
            await aclose()


async def decoded(
    requests: AsyncIterator[memoryview], decode: Callable[[memoryview], Req]
) -> AsyncIterator[Req]:
    """A stream's requests decoded (and checked) for a handler."""
    async for body in requests:
        yield decode(body)


async def client_stream_typed(
    client: Client,
    wire_id: int,
    requests: Iterable[Req] | AsyncIterable[Req],
    encode: Callable[[Req], Payload],
    **kwargs: Any,
) -> bytes:
    """``client_stream`` with each request encoded."""

    async def payloads() -> AsyncIterator[Payload]:
        if isinstance(requests, AsyncIterable):
            async for message in requests:
                yield encode(message)
        else:
            for message in requests:
                yield encode(message)

    return await client_stream(client, wire_id, payloads(), **kwargs)
