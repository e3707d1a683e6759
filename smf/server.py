"""The RPC server: routes request frames to handlers and answers every one of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextvars import copy_context
from dataclasses import dataclass, field
from ssl import SSLContext
from time import perf_counter_ns
from types import CoroutineType, TracebackType
from typing import Any, Final

from . import tracing as _tracing
from .context import CallContext, PeerIdentity, current_call
from .eager import current_task, run_eager, task_of
from .errors import DeadlineExceeded, RpcError
from .filters.base import Filter, Message, run_chain
from .health import install as install_builtin
from .metrics import MethodTable
from .peer import PROBE_WIRE_ID, answer_probe
from .protocol import (
    OversizedRequest,
    ProtocolError,
    RequestReceived,
    ServerProtocol,
    encode_metadata,
    offered,
    open_call,
)
from .router import Handler, Service, ServiceRouter
from .stream_calls import StreamHandler, add_handler, server_event
from .streams import DEFAULT_WINDOW_BYTES, DEFAULT_WINDOW_MESSAGES
from .transport import GATHER_LIMIT, Connection
from .wire import FLAG_PAYLOAD_HEADERS, HEADER_SIZE, Compression, Payload, Status

__all__ = ["GATHER_LIMIT", "REQUEST_OVERHEAD", "ByteBudget", "Server", "ServerStats"]

log = logging.getLogger("smf.server")

_DISABLED = int(Compression.DISABLED)
_OK: Final = int(Status.OK)  # per call: an IntEnum class attribute costs ~80 ns on 3.11
# isinstance() with a tuple: ``bytes | bytearray`` builds a union object per call (~40 ns).
_BYTES: Final = (bytes, bytearray)
_MASK32 = 0xFFFFFFFF

# Bytes charged to the server-wide budget per request beyond its frame: the task,
# context and future that carry it (measured ~1 KiB with tracemalloc, rounded).
REQUEST_OVERHEAD = 1024


@dataclass
class ServerStats:
    """Counters, for tests and (later) metrics exposition."""

    connections_accepted: int = 0
    connections_open: int = 0
    requests: int = 0
    responses: dict[int, int] = field(default_factory=dict)
    bad_frames: int = 0
    stalled_connections: int = 0
    oversized_requests: int = 0
    reads_paused: int = 0
    no_route: int = 0
    connections_refused: int = 0
    idle_closed: int = 0
    overloaded: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


class ByteBudget:
    """Server-wide cap on bytes held by requests in flight.

    Bytes already read are always accepted (dropping them would lose data); a
    connection that finds the budget exhausted stops reading until it drains.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._waiting: set[ServerConnection] = set()

    @property
    def exhausted(self) -> bool:
        return self.used >= self.limit

    def charge(self, n: int) -> None:
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def refund(self, n: int) -> None:
        self.used -= n
        if self._waiting and self.used < self.limit:
            waiting = list(self._waiting)
            self._waiting.clear()
            for conn in waiting:
                conn.resume_pulling()

    def wait(self, conn: ServerConnection) -> None:
        self._waiting.add(conn)

    def forget(self, conn: ServerConnection) -> None:
        self._waiting.discard(conn)


def _error_body(status: int, message: str) -> bytes:
    return (message or Status(status).name).encode("utf-8", "replace")


def _outcome(result: object) -> tuple[int, Payload]:
    """(200, result) for a handler's valid result, (500, why) for an empty one; raises
    naming what is wrong with any other (answered with 500 and logged)."""
    if isinstance(result, _BYTES):
        if result:
            return _OK, result
    elif isinstance(result, memoryview):
        # A released view raises ValueError here: reading it would be a use after free.
        if not result.c_contiguous:
            raise TypeError("handler returned a non-contiguous memoryview")
        if result.nbytes:
            return _OK, result
    else:
        kind = type(result).__name__
        raise TypeError(f"handler returned {kind}, not bytes, bytearray or memoryview")
    return Status.INTERNAL_ERROR, b"handler returned an empty body"


class _Filtered:
    """A reply as the outgoing filters left it (``status`` None: a filter dropped it)."""

    __slots__ = ("body", "compression", "flags", "status")

    def __init__(
        self, status: int | None, body: Payload = b"", compression: int = 0, flags: int = 0
    ) -> None:
        self.status = status
        self.body = body
        self.compression = compression
        self.flags = flags


async def _awaiting(awaitable: Awaitable[Any]) -> Any:
    """A coroutine awaiting what a plain-function handler returned."""
    return await awaitable


class ServerConnection(Connection):
    """One client's connection: admits requests and sees each call through to its
    reply (``event_received`` -> the handler, run eagerly -> ``_answer``)."""

    protocol: ServerProtocol

    def __init__(self, server: Server) -> None:
        super().__init__(
            ServerProtocol(server.max_body_size, server.buffer_size), server.body_timeout
        )
        self.server = server
        self.protocol.stream_window = server.stream_window
        self.identity: PeerIdentity | None = None
        self.refused = False
        self._partial_charge = 0
        # What every request's context starts from: the context the loop creates the
        # protocol and runs its callbacks in (a copy per request, see event_received).
        self._base_context = copy_context()
        # Idle sweeps: events_seen when a sweep last saw this connection busy, and when.
        self.idle_mark = (0, time.monotonic())

    # ------------------------------------------------------------------ connection life

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Read once per connection: the verified client certificate, if any.
        self.identity = PeerIdentity.from_cert(transport.get_extra_info("peercert"))
        server = self.server
        if len(server.connections) >= server.max_connections:
            server.stats.connections_refused += 1
            log.warning(
                "refusing connection from %s: %d connections open (max_connections)",
                self.peer,
                len(server.connections),
            )
            self.refused = True
            self.abort()
            return
        server.stats.connections_accepted += 1
        server.stats.connections_open += 1
        server.connections.add(self)
        server._ensure_idle_sweep()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.refused:
            return
        server = self.server
        server.stats.connections_open -= 1
        server.connections.discard(self)
        server.budget.forget(self)
        if self._partial_charge:
            server.budget.refund(self._partial_charge)
            self._partial_charge = 0
        # Nobody is left to read the answers: stop the work (as gRPC does).
        for task in self.in_flight:
            task.cancel()

    def protocol_error(self, event: ProtocolError) -> None:
        self.server.stats.bad_frames += 1
        hint = ""
        if event.field == "compression" and event.value == 0x16 and self.events_seen == 0:
            hint = " (0x16 opens a TLS handshake: the client speaks TLS, this listener does not)"
        log.warning("closing connection from %s: %s%s", self.peer, event.error, hint)
        # Answers to the valid requests before the bad frame go first: only what
        # follows the corruption is not to be trusted.
        self.flush()
        self.abort()

    def stalled(self) -> None:
        self.server.stats.stalled_connections += 1
        log.warning(
            "closing connection from %s: frame incomplete after %ss", self.peer, self.body_timeout
        )
        self.abort()

    # ------------------------------------------------------------------ backpressure

    def can_pull(self) -> bool:
        server = self.server
        if self._write_paused:
            # The peer is not reading its answers: stop reading its questions.
            server.stats.reads_paused += 1
            return False
        # Streams do not count: they wait for grants that only reading brings.
        if len(self.in_flight) - len(self.protocol.streams) >= server.max_in_flight_per_connection:
            server.stats.reads_paused += 1
            return False
        budget = server.budget
        if budget.exhausted and self.in_flight:
            # A connection with nothing in flight may still take one request, so one
            # peer that spent the budget cannot starve the others.
            server.stats.reads_paused += 1
            budget.wait(self)
            return False
        return True

    def _after_pull(self) -> None:
        if not self.closed and (
            self._partial_charge or self.protocol.allocated > self.server.buffer_size
        ):
            self._charge_partial()

    def _charge_partial(self) -> None:
        """Charge the budget for receive-buffer memory beyond one ``buffer_size``: a peer
        trickling a huge frame holds memory before it is a request. Reading pauses once
        the budget is spent, so each connection overshoots by one growth step at most."""
        budget = self.server.budget
        charge = max(self.protocol.allocated - self.server.buffer_size, 0)
        delta = charge - self._partial_charge
        if not delta:
            return
        self._partial_charge = charge
        if delta < 0:
            budget.refund(-delta)
            return
        budget.charge(delta)
        if budget.exhausted:
            self.server.stats.reads_paused += 1
            budget.wait(self)
            self._pause_reading()

    def stalled_while_paused(self) -> bool:
        # Paused by the budget while holding a partial frame: if it never completes,
        # dropping it after body_timeout is what frees the budget for everyone.
        return self._partial_charge > 0

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._reading_paused:
            self.resume_pulling()

    # ------------------------------------------------------------------ requests

    def event_received(self, event: RequestReceived | OversizedRequest) -> None:
        """Admit a request and start its call eagerly: a handler that does not wait is
        answered (``_answer``) before this returns, with no task made."""
        if type(event) is not RequestReceived:
            if type(event) is OversizedRequest:
                return self._too_large(event)
            return server_event(self, event)  # type: ignore[arg-type]  # a stream's frame
        server = self.server
        server.stats.requests += 1
        handler = server.router.handlers.get(event.meta)
        if handler is None and event.meta == PROBE_WIRE_ID:
            return answer_probe(self, event)  # does this server read payload headers?
        size = event.body.nbytes
        server.stats.bytes_in += HEADER_SIZE + size
        busy = server.closing or len(server.tasks) >= server.max_concurrent_handlers
        if (handler is None or busy) and self._refused(event, handler, size):
            return
        assert handler is not None
        cost = HEADER_SIZE + size + REQUEST_OVERHEAD
        ctx = CallContext(self.peer, event.meta, event.session, peer_identity=self.identity)
        # A copy of the connection's context, not the current one: a request pulled when
        # a handler ends runs in that handler's task, and must not see its variables.
        context = self._base_context.copy()
        started = perf_counter_ns()
        # The call up to its outcome: the handler's coroutine, or one around it for filters
        # (``_filtered``: they see payload headers first), a deadline or tracing (``_invoke``).
        call: Coroutine[Any, Any, Any]
        try:
            if server.filters:
                call = self._filtered(handler, ctx, event)
            else:
                body = event.body
                if event.compression > _DISABLED or event.flags:
                    body = open_call(
                        ctx, event.compression, event.flags, body, server.max_body_size
                    )
                context.run(current_call.set, ctx)  # the call's own context: no reset
                if ctx.deadline is not None or _tracing.active():
                    call = self._invoke(handler, ctx, body)
                else:
                    awaitable = context.run(handler, ctx, body)  # any awaitable, as with await
                    is_coro = type(awaitable) is CoroutineType
                    call = awaitable if is_coro else _awaiting(awaitable)  # type: ignore[assignment]
        except (Exception, asyncio.CancelledError) as exc:  # headers, or a plain handler raised
            return self._answer(None, exc, ctx, event, size, cost, started, True)
        try:
            done, value = run_eager(
                self.loop, call, context, self._answer, ctx, event, size, cost, started, False
            )
            if done:  # returned in its first step (3.11), the usual case: answer now
                return self._answer(value, None, ctx, event, size, cost, started, True)
        except Exception:  # _answer answers all it can: a bug in smf, kept to this call
            log.exception("serving %s failed", server.methods.get(event.meta).name)
            self.reply(event.session, Status.INTERNAL_ERROR, "internal error in smf server")
            return
        task = task_of(value) if value is not None else None
        if task is not None:  # it waits: its task carries it on, holding its request
            server.budget.charge(cost)
            self.in_flight.add(task)
            server.tasks.add(task)

    def _too_large(self, event: OversizedRequest) -> None:
        stats = self.server.stats
        stats.requests += 1
        stats.oversized_requests += 1
        stats.bytes_in += HEADER_SIZE  # the body was skipped, never held
        self.reply(
            event.session,
            Status.PAYLOAD_TOO_LARGE,
            f"request of {event.size} bytes is above the server's maximum of "
            f"{self.server.max_body_size} bytes",
        )

    def _refused(self, request: RequestReceived, handler: Handler | None, size: int) -> bool:
        """Answer ``request`` with 404 or 503 if the server will not serve it now."""
        server = self.server
        wire_id = request.meta
        if handler is None:
            server.stats.no_route += 1
            status, why = Status.NOT_FOUND, f"no method with wire id {wire_id}"
        elif server.closing and wire_id not in server.always_served:
            status, why = Status.UNAVAILABLE, "server is shutting down"
        elif len(server.tasks) >= server.max_concurrent_handlers:
            server.stats.overloaded += 1
            running = len(server.tasks)
            status = Status.UNAVAILABLE
            why = f"server overloaded: {running} handlers running (max_concurrent_handlers)"
        else:
            return False
        server.methods.get(wire_id).record(status, 0, size, 0)
        request.body.release()
        self.reply(request.session, status, why)
        return True

    def _answer(
        self,
        result: object,
        error: BaseException | None,
        ctx: CallContext,
        request: RequestReceived,
        size_in: int,
        cost: int,
        started_ns: int,
        inline: bool,
    ) -> None:
        """A call ended (``run_eager``'s ``then``, or ``inline`` when it returned in its
        first step or failed before it ran): ``result`` or ``error`` becomes the reply
        (every error a status, in ``_failure``), the call is recorded and its request
        let go. ``_filtered`` hands over the reply as the outgoing filters left it. The
        budget holds ``cost`` only while the call has a task (once it waited).
        ``size_in`` was read before the handler ran: it may release its request."""
        waited = False
        try:
            # Before replying (alone() looks at in_flight); a call has a task only if
            # it waited, and then in_flight holds it.
            if not inline and self.in_flight:
                waited = self._forget_own_task()
            compression = flags = 0
            prefix = b""
            if type(result) is _Filtered:
                if result.status is None:
                    return  # dropped by a filter: no answer
                status, body = result.status, result.body
                compression, flags = result.compression, result.flags
            else:
                if error is None:
                    try:
                        status, body = _outcome(result)
                    except Exception as exc:
                        status, body = self._failure(exc, ctx.wire_id)
                else:
                    status, body = self._failure(error, ctx.wire_id)
                # The handler's trailing metadata, if the caller reads payload headers.
                if ctx.trailing_metadata and request.flags & FLAG_PAYLOAD_HEADERS:
                    prefix = encode_metadata(ctx.trailing_metadata)
            size_out = self.reply(ctx.session, status, body, compression, flags, prefix)
            self.server.methods.get(ctx.wire_id).record(
                status, perf_counter_ns() - started_ns, size_in, size_out
            )
        finally:
            # Released once the reply is handed to the transport (it may be the request
            # itself, as in an echo): a handler that kept the request past its return
            # then fails loudly instead of reading reused memory.
            self.release_after_flush(request.body)
            if waited:
                self.server.budget.refund(cost)
            if self._reading_paused:
                self.resume_pulling()

    async def _filtered(
        self, handler: Handler, ctx: CallContext, request: RequestReceived
    ) -> _Filtered:
        """A call on a server with filters, up to its reply: incoming filters ->
        payload headers -> deadline -> handler -> outcome -> outgoing filters."""
        filters = self.server.filters
        compression, flags, body = request.compression, request.flags, request.body
        try:
            message = Message(compression, flags, ctx.session, ctx.wire_id, body)
            filtered = await run_chain(filters, True, message, self)
            if filtered is None:
                return _Filtered(None)  # dropped by a filter: no answer
            compression, flags = filtered.compression, filtered.flags
            body = memoryview(filtered.body)  # a new view of the same bytes
            if compression > _DISABLED or flags:
                body = open_call(ctx, compression, flags, body, self.server.max_body_size)
            current_call.set(ctx)  # this call's own context: no reset needed
            status, result = _outcome(await self._invoke(handler, ctx, body))
        except (Exception, asyncio.CancelledError) as exc:
            status, result = self._failure(exc, ctx.wire_id)
        prefix = b""
        if ctx.trailing_metadata and request.flags & FLAG_PAYLOAD_HEADERS:
            prefix = encode_metadata(ctx.trailing_metadata)
        out = await self._filter_reply(ctx, request.compression, status, result, prefix)
        return _Filtered(None) if out is None else _Filtered(*out)

    async def _filter_reply(
        self, ctx: CallContext, compression_in: int, status: int, result: Payload, prefix: bytes
    ) -> tuple[int, Payload, int, int] | None:
        """(status, body, compression, flags) of the reply after the outgoing filters,
        which see it as it will be sent (payload headers in its body) and what the
        caller offered (``Message.accept``); None if one dropped it."""
        flags = FLAG_PAYLOAD_HEADERS if prefix else 0
        body: Payload = prefix + bytes(result) if prefix else result
        accept = offered(compression_in, ctx.metadata)
        message: Message | None = Message(0, flags, ctx.session, status, body, accept)
        try:
            message = await run_chain(self.server.filters, False, message, self)  # type: ignore[arg-type]
        except RpcError as exc:
            message = Message(0, 0, ctx.session, exc.status, _error_body(exc.status, exc.message))
        except Exception as exc:
            log.exception("outgoing filter raised")
            status = Status.INTERNAL_ERROR
            message = Message(0, 0, ctx.session, status, _error_body(status, repr(exc)))
        if message is None:
            return None
        return message.meta, message.body, message.compression, message.flags

    def _failure(self, exc: BaseException, wire_id: int) -> tuple[int, bytes]:
        """The status and body that answer ``exc`` (the one place errors become
        statuses); logged unless it is an ``RpcError``, a 501 or a cancel."""
        try:
            if isinstance(exc, RpcError) and 0 < exc.status <= _MASK32:
                return exc.status, _error_body(exc.status, exc.message)
            if isinstance(exc, NotImplementedError):
                return Status.NOT_IMPLEMENTED, _error_body(
                    501, str(exc) or "method not implemented"
                )
            if isinstance(exc, asyncio.CancelledError):
                # Connection gone or grace period over: answer if anyone still listens.
                return Status.UNAVAILABLE, b"call cancelled: server is shutting down"
            name = self.server.methods.get(wire_id).name
            log.error("handler %s raised (wire id %d)", name, wire_id, exc_info=exc)
            return Status.INTERNAL_ERROR, _error_body(500, f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("answering wire id %d failed", wire_id)
            return Status.INTERNAL_ERROR, b"internal error in smf server"

    def _forget_own_task(self) -> bool:
        """Drop the running call's task from the in-flight sets, if it has one (a call
        gets a task only once it waits, so with none in flight there is none). True if
        it had one."""
        if not self.in_flight:
            return False
        task = task_of(current_task(self.loop))
        if task not in self.in_flight:
            return False
        self.in_flight.discard(task)
        self.server.tasks.discard(task)
        return True

    async def _invoke(self, handler: Handler, ctx: CallContext, body: memoryview) -> Payload:
        """The handler under its deadline and/or a tracing span."""
        if ctx.deadline is None and not _tracing.active():
            return await handler(ctx, body)
        if not _tracing.active():
            return await _run_with_deadline(handler, ctx, body)
        name = self.server.methods.get(ctx.wire_id).name
        with _tracing.server_span(name, ctx.metadata):
            if ctx.deadline is None:
                return await handler(ctx, body)
            return await _run_with_deadline(handler, ctx, body)

    # ------------------------------------------------------------------ replies

    def reply(
        self,
        session: int,
        status: int,
        body: Payload | str,
        compression: int = 0,
        flags: int = 0,
        prefix: bytes = b"",
    ) -> int:
        """Queue the answer to ``session`` (a ``str`` body is an error message; ``prefix``
        payload headers) and write it by the transport's rule; returns its size."""
        payload = _error_body(status, body) if isinstance(body, str) else body
        size = self.protocol.send_reply(session, status, payload, compression, flags, prefix)
        if size:
            self.queued()
        stats = self.server.stats
        stats.responses[status] = stats.responses.get(status, 0) + 1
        stats.bytes_out += HEADER_SIZE + size
        return size

    # FilterSide
    @property
    def is_server(self) -> bool:
        return True


async def _run_with_deadline(handler: Handler, ctx: CallContext, body: memoryview) -> Payload:
    remaining = ctx.time_remaining()
    assert remaining is not None
    if remaining <= 0:
        raise DeadlineExceeded("deadline passed before the handler started")
    timeout = asyncio.timeout(remaining)
    try:
        async with timeout:
            return await handler(ctx, body)
    except TimeoutError:
        if timeout.expired():
            raise DeadlineExceeded(f"deadline of {remaining * 1e3:.1f} ms exceeded") from None
        raise


class Server:
    """An smf RPC server.

    >>> server = Server()
    >>> server.add_service(MyService())
    >>> await server.start("127.0.0.1", 7000)
    ...
    >>> await server.stop(grace=5.0)

    Limits, each reached only by the peer that pushes it:

    - ``max_body_size`` (64 MiB): larger requests get 413, their bodies skipped.
    - ``max_in_flight_per_connection`` (1024) and ``max_buffered_bytes`` (256 MiB,
      server-wide): reading the socket stops until requests drain (backpressure).
    - ``max_concurrent_handlers`` (100k, server-wide): further requests get 503.
    - ``max_connections`` (10k): further connections are closed at once and logged.
    - ``body_timeout`` (30 s): a peer that starts a frame and stalls is dropped.
    - ``idle_timeout`` (10 min): a connection with no bytes and no calls is closed;
      ``None`` keeps idle connections forever.
    - ``handshake_timeout`` (10 s): TLS handshakes that take longer are dropped.

    zstd and lz4 requests are decompressed without any filter (up to ``max_body_size``);
    replies are compressed only by a ``CompressionFilter`` and only with a compression
    the caller offered (``smf.context.ACCEPT_COMPRESSION_HEADER``).

    ``health`` and ``reflection`` (on by default) serve the built-in services of
    ``smf.health`` (``server.health.set_status(...)``) and ``smf.reflection``.
    """

    def __init__(
        self,
        services: Iterable[Service] = (),
        *,
        max_body_size: int = 64 * 1024 * 1024,
        max_in_flight_per_connection: int = 1024,
        max_buffered_bytes: int = 256 * 1024 * 1024,
        body_timeout: float | None = 30.0,
        buffer_size: int = 256 * 1024,
        filters: Iterable[Filter] = (),
        handshake_timeout: float = 10.0,
        max_connections: int = 10_000,
        max_concurrent_handlers: int = 100_000,
        idle_timeout: float | None = 600.0,
        health: bool = True,
        reflection: bool = True,
        stream_window: tuple[int, int] = (DEFAULT_WINDOW_MESSAGES, DEFAULT_WINDOW_BYTES),
    ) -> None:
        self.stream_window = stream_window
        self.stream_handlers: dict[int, tuple[str, StreamHandler]] = {}
        self.max_connections = max_connections
        self.max_concurrent_handlers = max_concurrent_handlers
        self.idle_timeout = idle_timeout
        self._idle_sweep: asyncio.TimerHandle | None = None
        self.router = ServiceRouter()
        self.handshake_timeout = handshake_timeout
        self.filters: list[Filter] = list(filters)
        self.methods = MethodTable()
        self.max_body_size = max_body_size
        if max_in_flight_per_connection < 1:
            raise ValueError("max_in_flight_per_connection must be at least 1")
        self.max_in_flight_per_connection = max_in_flight_per_connection
        self.budget = ByteBudget(max_buffered_bytes)
        self.body_timeout = body_timeout
        self.buffer_size = buffer_size
        self.stats = ServerStats()
        self.connections: set[ServerConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._listeners: list[asyncio.AbstractServer] = []
        self.services: list[Service] = []  # as added (reflection lists them)
        self.health, self.always_served = install_builtin(self, health, reflection)
        for service in services:
            self.add_service(service)

    def add_service(self, service: Service) -> None:
        self.router.add_service(service)
        self.services.append(service)
        for wire_id, name in self.router.names().items():
            self.methods.name(wire_id, name)
        streaming = getattr(service, "stream_handlers", None)  # generated: smf.stream_calls
        if streaming is not None:
            names = getattr(service, "method_names", {})
            for wire_id, (kind, handler) in streaming().items():
                self.add_stream_handler(wire_id, handler, kind, names.get(wire_id, "?"))

    def add_handler(self, wire_id: int, handler: Handler, name: str = "?") -> None:
        self.router.add_handler(wire_id, handler, name)
        self.methods.name(wire_id, name)

    def add_stream_handler(
        self, wire_id: int, handler: StreamHandler, kind: str, name: str = "?"
    ) -> None:
        """Serve a streaming method (``kind``: "server", "client" or "bidi"; the
        handler shapes are in ``smf.stream_calls``)."""
        add_handler(self.stream_handlers, wire_id, handler, kind)
        self.methods.name(wire_id, name)

    # ------------------------------------------------------------------ listening

    async def start(
        self,
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        reuse_port: bool = False,
        backlog: int = 1024,
        sock: socket.socket | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        """Listen on TCP (IPv4 or IPv6; ``port=0`` picks a free port, see ``port``).

        ``ssl``: a server-side ``ssl.SSLContext``; with ``verify_mode=CERT_REQUIRED``
        and a CA loaded, clients must present a certificate (mutual TLS) and handlers
        see its identity as ``ctx.peer_identity``.
        """
        loop = asyncio.get_running_loop()
        hs_timeout = self.handshake_timeout if ssl is not None else None
        if sock is not None:
            listener = await loop.create_server(
                lambda: ServerConnection(self),
                sock=sock,
                backlog=backlog,
                ssl=ssl,
                ssl_handshake_timeout=hs_timeout,
            )
        else:
            listener = await loop.create_server(
                lambda: ServerConnection(self),
                host,
                port,
                reuse_port=reuse_port or None,
                backlog=backlog,
                ssl=ssl,
                ssl_handshake_timeout=hs_timeout,
            )
        self._listeners.append(listener)

    async def start_unix(
        self, path: str, *, backlog: int = 1024, ssl: SSLContext | None = None
    ) -> None:
        """Listen on a Unix socket at ``path`` (a stale socket file is replaced)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(FileNotFoundError):
            if os.path.exists(path) and not os.path.isdir(path):
                os.unlink(path)
        listener = await loop.create_unix_server(
            lambda: ServerConnection(self),
            path,
            backlog=backlog,
            ssl=ssl,
            ssl_handshake_timeout=self.handshake_timeout if ssl is not None else None,
        )
        self._listeners.append(listener)

    @property
    def sockets(self) -> list[socket.socket]:
        return [s for listener in self._listeners for s in getattr(listener, "sockets", ())]

    @property
    def port(self) -> int:
        """The TCP port of the first TCP listener (useful after ``start(port=0)``)."""
        for s in self.sockets:
            if s.family in (socket.AF_INET, socket.AF_INET6):
                return int(s.getsockname()[1])
        raise RuntimeError("the server has no TCP listener")

    def run(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        workers: int = 1,
        grace: float = 5.0,
        on_listening: Callable[[], None] | None = None,
    ) -> int:
        """Serve until SIGTERM/SIGINT (blocking; call it outside any event loop).

        ``workers > 1`` forks that many processes sharing ``port`` through
        SO_REUSEPORT; the kernel spreads connections across them. Returns an exit code.
        """
        from .workers import run_workers

        return run_workers(self, host, port, workers, grace, on_listening)

    def _ensure_idle_sweep(self) -> None:
        if self.idle_timeout is not None and self._idle_sweep is None:
            loop = asyncio.get_running_loop()
            self._idle_sweep = loop.call_later(self.idle_timeout / 4, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close connections with no request in and no call running for ``idle_timeout``.
        One timer per server, not per connection, and nothing on the read path: a sweep
        that finds a connection's frame count moved (or a call running, or a frame half
        in) notes the time, and a connection unchanged since then for ``idle_timeout``
        is closed. It closes ``idle_timeout`` to 1.5x that after the last activity."""
        self._idle_sweep = None
        assert self.idle_timeout is not None
        now = time.monotonic()
        for conn in list(self.connections):
            seen, since = conn.idle_mark
            if conn.events_seen != seen or conn.in_flight or conn.protocol.mid_frame:
                conn.idle_mark = (conn.events_seen, now)  # busy: idle time starts now
                continue
            if now - since >= self.idle_timeout:
                self.stats.idle_closed += 1
                log.info("closing connection from %s: idle for %ss", conn.peer, self.idle_timeout)
                conn.close()
        if self.connections and not self.closing:
            self._ensure_idle_sweep()

    # ------------------------------------------------------------------ stopping

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let calls in flight finish within ``grace`` seconds (new
        requests on open connections get 503), then cancel the rest and close."""
        self.closing = True
        if self.health is not None:
            self.health.shutdown()  # NOT_SERVING while calls drain
        if self._idle_sweep is not None:
            self._idle_sweep.cancel()
            self._idle_sweep = None
        for listener in self._listeners:
            listener.close()
        deadline = time.monotonic() + grace
        while self.tasks:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.wait(list(self.tasks), timeout=left)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=1.0)
        await asyncio.sleep(0)  # let the last replies' flush run
        for conn in list(self.connections):
            conn.close()
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await listener.wait_closed()
        self._listeners.clear()
        # Give transports a chance to deliver their final writes and report closure.
        for _ in range(10):
            if not self.connections:
                break
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
