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
from typing import Any

import xxhash

from . import headers
from . import tracing as _tracing
from .context import TIMEOUT_HEADER, CallContext, PeerIdentity, current_call
from .eager import run_eager, start_eager, task_of
from .errors import BadRequest, DeadlineExceeded, FrameError, RpcError, Unsupported
from .filters.base import Filter, Message, run_chain
from .health import install as install_builtin
from .metrics import MethodTable
from .peer import PROBE_WIRE_ID, REPLY_MARK, answer_probe
from .router import Handler, Payload, Service, ServiceRouter, payload_size
from .transport import JOIN_LIMIT, FramedConnection
from .wire import (
    HEADER,
    HEADER_SIZE,
    Compression,
    Event,
    Frame,
    FrameDecoder,
    Status,
)

log = logging.getLogger("smf.server")

_DISABLED = int(Compression.DISABLED)
_xxh64 = xxhash.xxh64_intdigest  # checksum(), inline on the reply path
_MASK32 = 0xFFFFFFFF

# Replies gathered inside one read are written once they reach this many bytes, even
# before the read's last request is answered: the transport's write-side pause then
# stops further reading, as it does for replies written one by one.
GATHER_LIMIT = 64 * 1024

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


class ServerConnection(FramedConnection):
    def __init__(self, server: Server) -> None:
        super().__init__(
            FrameDecoder(server.max_body_size, buffer_size=server.buffer_size),
            server.body_timeout,
        )
        self.server = server
        # in_flight (FramedConnection) holds the tasks of this connection's handlers
        # that waited; the others never had one.
        self.identity: PeerIdentity | None = None
        self.refused = False
        self._partial_charge = 0
        self._last_of_read = True  # the request being dispatched ends what a read held
        # What every request's context starts from: the context the loop creates the
        # protocol and runs its callbacks in (a copy per request, see event_received).
        self._base_context = copy_context()
        # Idle sweeps: events_seen when a sweep last saw this connection busy, and when.
        self.idle_mark = (0, time.monotonic())

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

    def can_pull(self) -> bool:
        server = self.server
        if self._write_paused:
            # The peer is not reading its answers: stop reading its questions.
            server.stats.reads_paused += 1
            return False
        if len(self.in_flight) >= server.max_in_flight_per_connection:
            server.stats.reads_paused += 1
            return False
        budget = server.budget
        if budget.used >= budget.limit and self.in_flight:  # budget.exhausted, inline
            # A connection with nothing in flight may still take one request, so one
            # peer that spent the budget cannot starve the others.
            server.stats.reads_paused += 1
            budget.wait(self)
            return False
        return True

    def _after_pull(self) -> None:
        if not self.closed and (
            self._partial_charge or len(self.decoder._buf) > self.server.buffer_size  # .allocated
        ):
            self._charge_partial()

    def _charge_partial(self) -> None:
        """Charge the budget for receive-buffer memory beyond one ``buffer_size``: a peer
        trickling a huge frame holds memory before it is a request. Reading pauses once
        the budget is spent, so each connection overshoots by one growth step at most."""
        budget = self.server.budget
        charge = max(self.decoder.allocated - self.server.buffer_size, 0)
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

    def frame_error(self, error: FrameError) -> None:
        self.server.stats.bad_frames += 1
        hint = ""
        if error.field == "compression" and error.value == 0x16 and self.events_seen == 0:
            hint = " (0x16 opens a TLS handshake: the client speaks TLS, this listener does not)"
        log.warning("closing connection from %s: %s%s", self.peer, error, hint)
        # Answers to the valid requests before the bad frame, gathered in this read,
        # go first: only what follows the corruption is not to be trusted.
        self.flush_now()
        self.abort()

    def stalled(self) -> None:
        self.server.stats.stalled_connections += 1
        log.warning(
            "closing connection from %s: frame incomplete after %ss", self.peer, self.body_timeout
        )
        self.abort()

    def reply(self, session: int, status: int, body: Payload, compression: int = 0) -> int:
        """Queue the answer to ``session``; returns the body's size."""
        size = body.nbytes if type(body) is memoryview else len(body)  # payload_size, inline
        if not self.closed:
            # Uncompressed replies carry compression byte 1 (REPLY_MARK): "this server
            # reads payload headers" to our clients, "not compressed" to any smf client.
            header = HEADER.pack(
                compression or REPLY_MARK, 0, session, size, _xxh64(body) & _MASK32, status
            )
            out = self._out
            # The reply leaves as early as batching allows; bookkeeping comes after it,
            # while the peer is already reading.
            if self._pulling and self._last_of_read and not out:
                # The one reply of this read (the usual case): straight to the transport.
                # (With nothing queued, nothing waits for release either: see
                # release_after_flush.)
                if size <= JOIN_LIMIT:
                    self.transport.write(header + body)  # type: ignore[union-attr]
                else:
                    self.transport.writelines((header, body))  # type: ignore[union-attr]
            else:
                out.append(header)
                out.append(body)
                if self._pulling:
                    # Inside a read: replies gather until the one to its last request,
                    # or until they are big enough that the transport should see them
                    # (so a peer that does not read its answers pauses us, and memory
                    # is bounded).
                    self._gathered += HEADER_SIZE + size
                    if self._last_of_read or self._gathered >= GATHER_LIMIT:
                        self._gathered = 0
                        self._flush()
                elif not self.in_flight:
                    # No other handler of this connection is running, so nothing else
                    # would join this write in this iteration: send it now.
                    self._flush()
                elif self._flush_handle is None:
                    # Others still run: what they answer in this iteration leaves together.
                    self._flush_handle = self.loop.call_soon(self._flush)
        stats = self.server.stats
        responses = stats.responses
        responses[status] = responses.get(status, 0) + 1
        stats.bytes_out += HEADER_SIZE + size
        return size

    def event_received(self, event: Event) -> None:
        server = self.server
        stats = server.stats
        stats.requests += 1
        if not isinstance(event, Frame):
            stats.oversized_requests += 1
            stats.bytes_in += HEADER_SIZE  # the body was skipped, never held
            self.reply(
                event.session,
                Status.PAYLOAD_TOO_LARGE,
                _error_body(
                    413,
                    f"request of {event.size} bytes is above the server's maximum of "
                    f"{server.max_body_size} bytes",
                ),
            )
            return
        frame = event
        # No further header buffered: this request's reply may leave at once.
        decoder = self.decoder
        self._last_of_read = decoder._end - decoder._start < HEADER_SIZE  # .buffered
        size = frame.body.nbytes
        stats.bytes_in += HEADER_SIZE + size
        handler = server.router.handlers.get(frame.meta)
        if handler is None:
            if frame.meta == PROBE_WIRE_ID:  # a client asks: do you read payload headers?
                return answer_probe(self, frame)  # smf/peer.py
            stats.no_route += 1
            self._refuse(frame, Status.NOT_FOUND, f"no method with wire id {frame.meta}")
            return
        if server.closing and frame.meta not in server.always_served:
            self._refuse(frame, Status.UNAVAILABLE, "server is shutting down")
            return
        if len(server.tasks) >= server.max_concurrent_handlers:
            stats.overloaded += 1
            self._refuse(
                frame,
                Status.UNAVAILABLE,
                f"server overloaded: {len(server.tasks)} handlers running "
                "(max_concurrent_handlers)",
            )
            return
        cost = HEADER_SIZE + size + REQUEST_OVERHEAD
        started = perf_counter_ns()
        # A copy of the connection's own context, not of the current one: a request
        # pulled when another handler ends runs inside that handler's task and
        # context, and must not see (or change) its context variables.
        context = self._base_context.copy()
        # The handler runs now, inside this read; it gets a task only if it waits.
        try:
            if frame.flags or frame.compression > _DISABLED or server.filters or _tracing.active():
                # Payload headers (metadata, a deadline), compression, filters or tracing:
                # one coroutine (_serve) sees the call through.
                server.budget.charge(cost)
                coro = self._serve(handler, frame, cost, started)
                task = task_of(start_eager(self.loop, coro, context))
            else:
                # A plain call, most of them: the handler's own coroutine runs, with no
                # coroutine around it. If it returns in its first step (the usual case)
                # it is answered here, inline: everything up to the reply's write is on
                # the round trip. If it waits or raises, _answer sees it end.
                ctx = CallContext(self.peer, frame.meta, frame.session, peer_identity=self.identity)
                context.run(current_call.set, ctx)
                call: Coroutine[Any, Any, Payload]
                try:
                    # In the call's own context: a plain function handler may set
                    # context variables or start tasks before returning its awaitable.
                    call = context.run(handler, ctx, frame.body)  # type: ignore[arg-type]
                    if type(call) is not CoroutineType:
                        call = _awaiting(call)  # any awaitable will do, as with await
                except (Exception, asyncio.CancelledError) as exc:
                    call = _raising(exc)  # answered like an error raised inside the handler
                done, value = run_eager(
                    self.loop, call, context, self._answer, frame, size, cost, started
                )
                if done:  # returned in its first step, the usual case: answer now
                    # _outcome's checks and _respond's work, inline: each Python call
                    # here costs round-trip time (see bench/README.md).
                    status: int = Status.OK
                    kind = type(value)
                    if kind is bytes or kind is bytearray:
                        ok = bool(value)
                    elif kind is memoryview:
                        try:
                            ok = value.c_contiguous and value.nbytes > 0
                        except ValueError:  # released: _outcome says so
                            ok = False
                    else:
                        ok = False
                    if not ok:
                        status, value = self._outcome(value, frame.meta)
                    size_out = self.reply(frame.session, status, value)
                    server.methods.get(frame.meta).record(
                        status, perf_counter_ns() - started, size, size_out
                    )
                    self.release_after_flush(frame.body)
                    return
                if value is None:
                    return  # its first step raised: answered already
                # It waits: from now on it holds its request, so the budget counts it.
                server.budget.charge(cost)
                task = task_of(value)
        except Exception:
            # Handlers' errors are answered where they are caught; this is a bug in smf.
            # Answer and carry on: a request's failure must not take down its connection.
            log.exception("serving wire id %d failed", frame.meta)
            self.reply(frame.session, Status.INTERNAL_ERROR, b"internal error in smf server")
            return
        if task is not None:
            self.in_flight.add(task)
            server.tasks.add(task)

    def _answer(
        self,
        result: object,
        error: BaseException | None,
        frame: Frame,
        size_in: int,
        cost: int,
        started_ns: int,
    ) -> None:
        """A plain call's handler ended, after waiting or by raising (``run_eager``'s
        ``then``): answer, record, and let the request go. Its budget was charged only
        if it waited (it has a task). ``size_in`` was read before the handler ran: it
        may have released its request."""
        waited = False
        try:
            waited = bool(self.in_flight) and self._forget_own_task()  # before reply()
            status, body = self._verdict(result, error, frame.meta)
            self._respond(frame, status, body, size_in, started_ns)
        finally:
            self._finish(frame.body, cost if waited else 0)

    def _respond(
        self, frame: Frame, status: int, body: Payload, size_in: int, started_ns: int
    ) -> None:
        """Reply to ``frame`` and record the call (calls without outgoing filters; the
        inline path in event_received does the same, spelled out: it is the hot one)."""
        size_out = self.reply(frame.session, status, body)
        self.server.methods.get(frame.meta).record(
            status, perf_counter_ns() - started_ns, size_in, size_out
        )

    def _verdict(
        self, result: object, error: BaseException | None, wire_id: int
    ) -> tuple[int, Payload]:
        """The answer to a handler's result or error; a 500 if even that fails (an
        exception whose ``str()`` raises, say), so that every call is answered."""
        try:
            if error is None:
                return self._outcome(result, wire_id)
            return self._failure(error, wire_id)
        except Exception:
            log.exception("answering wire id %d failed", wire_id)
            return Status.INTERNAL_ERROR, b"internal error in smf server"

    def _refuse(self, frame: Frame, status: int, message: str) -> None:
        self.server.methods.get(frame.meta).record(status, 0, frame.body.nbytes, 0)
        frame.body.release()
        self.reply(frame.session, status, _error_body(status, message))

    async def _serve(self, handler: Handler, frame: Frame, cost: int, started_ns: int) -> None:
        server = self.server
        status: int = Status.OK
        body: memoryview = frame.body
        size_in = body.nbytes  # now: the handler may release its request
        compression, flags = frame.compression, frame.flags
        ctx = CallContext(self.peer, frame.meta, frame.session, peer_identity=self.identity)
        dropped = False
        try:
            if server.filters:
                message = await run_chain(
                    server.filters,
                    True,
                    Message(compression, flags, frame.session, frame.meta, body),
                    self,
                )
                if message is None:
                    dropped = True
                    return
                compression, flags = message.compression, message.flags
                body = memoryview(message.body)  # a new view of the same bytes: no copy
            if compression > Compression.DISABLED:
                name = Compression(compression).name.lower()
                raise Unsupported(f"no filter for {name} compression")
            if flags:
                ctx.metadata, body = headers.split(body)
                timeout_us = ctx.metadata.get(TIMEOUT_HEADER)
                if timeout_us is not None:
                    ctx.deadline = _deadline(timeout_us)
            current_call.set(ctx)  # this call's own context: no reset needed
            if ctx.deadline is None and not _tracing.active():
                result: Payload = await handler(ctx, body)
            else:
                result = await self._invoke(handler, ctx, body)
            status, result = self._outcome(result, ctx.wire_id)
        except (Exception, asyncio.CancelledError) as exc:
            status, result = self._failure(exc, ctx.wire_id)
        finally:
            self._forget_own_task()  # before replying: reply() looks at in_flight
            if dropped:
                self._finish(frame.body, cost)
        try:
            if server.filters:
                await self._respond_filtered(ctx, status, result, size_in, started_ns)
            else:
                self._respond(frame, status, result, size_in, started_ns)
        finally:
            self._forget_own_task()  # the outgoing filters may have waited: a task now
            self._finish(frame.body, cost)

    def _outcome(self, result: object, wire_id: int) -> tuple[int, Payload]:
        """(200, result) for a handler's valid result, else a 500 naming the problem."""
        if isinstance(result, bytes | bytearray):
            if result:
                return Status.OK, result
        elif isinstance(result, memoryview):
            try:
                contiguous, nbytes = result.c_contiguous, result.nbytes
            except ValueError as exc:  # released: reading it would be a use after free
                return self._failure(exc, wire_id)
            if not contiguous:
                error = TypeError("handler returned a non-contiguous memoryview")
                return self._failure(error, wire_id)
            if nbytes:
                return Status.OK, result
        else:
            kind = type(result).__name__
            error = TypeError(f"handler returned {kind}, not bytes, bytearray or memoryview")
            return self._failure(error, wire_id)
        return Status.INTERNAL_ERROR, b"handler returned an empty body"

    def _failure(self, exc: BaseException, wire_id: int) -> tuple[int, bytes]:
        """The status and body that answer a handler's exception (logged unless it is
        an ``RpcError``, a 501 or a cancel)."""
        if isinstance(exc, RpcError) and 0 < exc.status <= _MASK32:
            return exc.status, _error_body(exc.status, exc.message)
        if isinstance(exc, NotImplementedError):
            return Status.NOT_IMPLEMENTED, _error_body(501, str(exc) or "method not implemented")
        if isinstance(exc, asyncio.CancelledError):
            # Connection gone or grace period over: answer if anyone still listens.
            return Status.UNAVAILABLE, _error_body(503, "call cancelled: server is shutting down")
        log.error("handler for wire id %d raised", wire_id, exc_info=exc)
        return Status.INTERNAL_ERROR, _error_body(500, f"{type(exc).__name__}: {exc}")

    def _forget_own_task(self) -> bool:
        """Drop the running handler's task from the in-flight sets, if it has one (a
        handler gets a task only once it waits, so with none in flight there is none).
        True if it had one."""
        if not self.in_flight:
            return False
        # With the loop given, current_task() skips get_running_loop()'s getpid().
        # In _serve's first step on 3.11 that is the EagerTask: its task is the real one.
        task = task_of(asyncio.current_task(self.loop))
        if task not in self.in_flight:
            return False
        self.in_flight.discard(task)
        self.server.tasks.discard(task)
        return True

    async def _respond_filtered(
        self, ctx: CallContext, status: int, result: Payload, size_in: int, started_ns: int
    ) -> None:
        try:
            message = await run_chain(
                self.server.filters, False, Message(0, 0, ctx.session, status, result), self
            )
        except RpcError as exc:
            error = _error_body(exc.status, exc.message)
            message = Message(0, 0, ctx.session, exc.status, error)
        except Exception as exc:
            log.exception("outgoing filter raised")
            status = Status.INTERNAL_ERROR
            message = Message(0, 0, ctx.session, status, _error_body(status, repr(exc)))
        if message is None:
            return  # dropped by a filter
        self.reply(ctx.session, message.meta, message.body, message.compression)
        self.server.methods.get(ctx.wire_id).record(
            message.meta, time.perf_counter_ns() - started_ns, size_in, payload_size(message.body)
        )

    async def _invoke(self, handler: Handler, ctx: CallContext, body: memoryview) -> Payload:
        """The handler under its deadline and/or a tracing span."""
        if not _tracing.active():
            return await _run_with_deadline(handler, ctx, body)
        name = self.server.methods.get(ctx.wire_id).name
        with _tracing.server_span(name, ctx.metadata):
            if ctx.deadline is None:
                return await handler(ctx, body)
            return await _run_with_deadline(handler, ctx, body)

    def _finish(self, body: memoryview, cost: int) -> None:
        # Released once the reply is handed to the transport (it may be the request
        # itself, as in an echo): a handler that kept the request past its return
        # then fails loudly instead of reading reused memory.
        self.release_after_flush(body)
        if cost:
            self.server.budget.refund(cost)
        if self._reading_paused:
            self.resume_pulling()

    # FilterSide
    @property
    def is_server(self) -> bool:
        return True


async def _awaiting(awaitable: Awaitable[Payload]) -> Payload:
    return await awaitable


async def _raising(error: BaseException) -> Payload:
    raise error


def _deadline(timeout_us: str) -> float:
    # Strict: an optional "-" (already expired) and 1-18 ASCII digits (~31 years), as a
    # C++ peer would parse it; int() alone takes "+1", "1_000", full-width digits, or
    # a 400-digit number.
    digits = timeout_us[1:] if timeout_us.startswith("-") else timeout_us
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 18):
        raise BadRequest(
            f"{TIMEOUT_HEADER} header must be an integer of at most 18 ASCII digits "
            f"(microseconds), not {timeout_us[:40]!r}"
        )
    return time.monotonic() + int(timeout_us) / 1e6


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
    ) -> None:
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

    def add_handler(self, wire_id: int, handler: Handler, name: str = "?") -> None:
        self.router.add_handler(wire_id, handler, name)
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
            if conn.events_seen != seen or conn.in_flight or conn.decoder.mid_frame:
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
