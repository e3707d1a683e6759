"""The RPC client: many calls in flight on one connection, matched by session."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from ssl import SSLContext
from time import perf_counter_ns
from types import TracebackType
from typing import Any, Final

import xxhash

from . import headers
from . import tracing as _tracing
from .context import TIMEOUT_HEADER, TRACEPARENT_HEADER, CallContext, current_call
from .errors import (
    ConnectionLost,
    DeadlineExceeded,
    FrameError,
    PayloadTooLarge,
    RpcError,
    Unsupported,
    reply_text,
)
from .filters.base import Filter, Message, run_chain
from .metrics import MethodTable
from .peer import PeerHeaders, check_mode
from .router import Payload, payload_size
from .transport import JOIN_LIMIT, FramedConnection
from .wire import (
    FLAG_PAYLOAD_HEADERS,
    HEADER,
    MAX_SESSION,
    Compression,
    Event,
    Frame,
    FrameDecoder,
    checksum,
    checksum_parts,
)

log = logging.getLogger("smf.client")


class Default:
    """The type of ``DEFAULT`` (for annotations: ``timeout: float | Default | None``)."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = Default()
"""Sentinel: use the client's default timeout."""

_CallResult = asyncio.Future[Frame]
_xxh64: Final = xxhash.xxh64_intdigest
_MASK32: Final = 0xFFFFFFFF
_DISABLED: Final = int(Compression.DISABLED)


class SessionTable:
    """Session id → pending call. Ids run 1..65535 round-robin, so an id freed by a
    cancelled or timed-out call is reused as late as possible; an id still in flight is
    never handed out, and ``acquire`` waits when all 65535 are in use."""

    def __init__(self, capacity: int = MAX_SESSION) -> None:
        if not 1 <= capacity <= MAX_SESSION:
            raise ValueError(f"capacity must be within 1..{MAX_SESSION}")
        self.capacity = capacity
        self.pending: dict[int, _CallResult] = {}
        self._next = 1
        self._waiters: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return len(self.pending)

    def try_allocate(self, future: _CallResult) -> int:
        """A free session bound to ``future``, or 0 when all are in use."""
        pending = self.pending
        if len(pending) >= self.capacity:
            return 0
        session = self._next
        while session in pending:
            session = session + 1 if session < self.capacity else 1
        self._next = session + 1 if session < self.capacity else 1
        pending[session] = future
        return session

    async def allocate(self, future: _CallResult) -> int:
        session = self.try_allocate(future)
        while not session:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # we were woken but will not use it: pass it on
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            session = self.try_allocate(future)
        return session

    def pop(self, session: int) -> _CallResult | None:
        return self.pending.pop(session, None)

    def release(self, session: int, future: _CallResult) -> None:
        """Free ``session`` if it still belongs to ``future``."""
        if self.pending.get(session) is future:
            del self.pending[session]
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def fail_all(self, exc: BaseException) -> None:
        """Fail every pending call and wake every waiter (they will find the
        connection closed)."""
        pending = self.pending
        self.pending = {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


@dataclass
class ClientStats:
    calls: int = 0
    late_replies: int = 0  # answers to calls that timed out or were cancelled
    timeouts: int = 0
    reconnects: int = 0
    connection_losses: int = 0


@dataclass(frozen=True)
class Backoff:
    """Exponential reconnect backoff with jitter (delays in seconds): the n-th delay is
    drawn from [d * (1 - jitter), d] where d = min(initial * multiplier**n, maximum)."""

    initial: float = 0.05
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2  # each delay is drawn from [d * (1 - jitter), d]

    def delays(self, rng: Callable[[], float] = random.random) -> _DelayIterator:
        return _DelayIterator(self, rng)


class _DelayIterator:
    def __init__(self, backoff: Backoff, rng: Callable[[], float]) -> None:
        self._b = backoff
        self._rng = rng
        self._next = backoff.initial

    def __iter__(self) -> _DelayIterator:
        return self

    def __next__(self) -> float:
        d = self._next
        self._next = min(d * self._b.multiplier, self._b.maximum)
        return d * (1.0 - self._b.jitter * self._rng())


class DeadlineQueue:
    """Timeouts of calls that use the client's default timeout.

    Their deadlines arrive in issue order, so one deque and one timer serve them all:
    ``call_later`` per call costs a libuv timer each on uvloop (measured 6-11 µs per
    call with its cancel). Each entry is ``[deadline, future, timeout]``; a call that
    returns sets its entry's future to None, so the queue never keeps a reply alive.
    Spent entries are dropped from the head when the next call is queued (after its
    write, off the round trip) or when the timer fires; a call stuck at the head
    cannot pin more than ``compact_at`` spent ones. The timer stays armed when the
    queue empties (sequential calls would otherwise start and cancel one per call):
    firing on an empty queue costs a wakeup.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, compact_at: int = 4096) -> None:
        self._loop = loop
        self._queue: collections.deque[list[Any]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._compact_at = compact_at

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, future: _CallResult, timeout: float) -> list[Any] | None:
        """Queue ``future``'s deadline and return its entry; None
        (nothing queued) if it falls before the last one queued (the default timeout
        was lowered): the caller then times it alone."""
        queue = self._queue
        while queue and _spent(queue[0]):
            queue.popleft()
        deadline = self._loop.time() + timeout
        if queue and deadline < queue[-1][0]:
            return None
        entry = [deadline, future, timeout]
        queue.append(entry)
        timer = self._timer
        if timer is None or timer.when() > deadline:
            # None armed, or the one left armed when the queue emptied is later.
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._fire)
        elif len(queue) > self._compact_at:
            self._queue = collections.deque(e for e in queue if not _spent(e))
            self._compact_at = max(self._compact_at, 2 * len(self._queue))
        return entry

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        queue = self._queue
        while queue:
            deadline, future, timeout = queue[0]
            if future is not None and not future.done():
                if deadline > now:
                    break
                _expire(future, timeout)
            queue.popleft()
        if queue:
            self._timer = self._loop.call_at(queue[0][0], self._fire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()


def _spent(entry: list[Any]) -> bool:
    future = entry[1]
    return future is None or bool(future.done())


class ClientConnection(FramedConnection):
    def __init__(self, client: Client) -> None:
        super().__init__(
            FrameDecoder(client.max_body_size, buffer_size=client.buffer_size),
            client.body_timeout,
        )
        self.client = client
        self.sessions = SessionTable(client.max_sessions)
        self.deadlines = DeadlineQueue(self.loop)
        self.lost: asyncio.Future[None] = self.loop.create_future()
        # Does the server read payload headers? (smf/peer.py)
        self.peer_headers = PeerHeaders(client.payload_headers)

    def event_received(self, event: Event) -> None:
        if self.peer_headers.reads is None and isinstance(event, Frame):
            self.peer_headers.learn(event.compression)  # "auto": learned from the first reply
        future = self.sessions.pending.pop(event.session, None)
        if future is None or future.done():
            self.client.stats.late_replies += 1
            if isinstance(event, Frame):
                event.body.release()
            return
        if isinstance(event, Frame):
            future.set_result(event)
        else:
            future.set_exception(
                PayloadTooLarge(
                    f"response of {event.size} bytes is above the client's maximum of "
                    f"{self.client.max_body_size} bytes"
                )
            )

    def frame_error(self, error: FrameError) -> None:
        log.warning("closing connection to %s: %s", self.peer, error)
        self._fail(ConnectionLost(f"server {self.peer} sent a bad frame: {error}"))
        self.abort()

    def stalled(self) -> None:
        self._fail(ConnectionLost(f"server {self.peer} stopped mid-frame for {self.body_timeout}s"))
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        why = f": {exc}" if exc else ""
        if self.events_seen == 0:
            # Closed before a single reply: the usual sign of a TLS mismatch.
            if self.client.ssl is None:
                why += " (closed before any reply; if the server requires TLS, pass ssl=)"
            else:
                why += (
                    " (closed before any reply; the server may require a client "
                    "certificate this client did not present or it did not trust)"
                )
        self.client._last_loss = why
        self._fail(ConnectionLost(f"connection to {self.client.address} lost{why}"))
        if not self.lost.done():
            self.lost.set_result(None)
        self.client._connection_lost(self)

    @property
    def is_server(self) -> bool:  # FilterSide
        return False

    def _fail(self, exc: ConnectionLost) -> None:
        self.closed = True
        self.sessions.fail_all(exc)
        self.deadlines.close()
        self.peer_headers.close()


class Client:
    """An smf RPC client over one connection (TCP or Unix socket).

    ``timeout`` is every call's default (seconds; ``None`` waits forever). With
    ``reconnect`` set (``True`` or a ``Backoff``), a lost connection is re-established
    in the background with exponential backoff and jitter; calls issued meanwhile wait
    for it within their own timeout. Without it, they fail with ``ConnectionLost``.

    ``payload_headers`` (``"auto"``, ``"always"`` or ``"never"``): whether calls carry
    their metadata and deadline to the server in payload headers, which real smf
    peers (C++, Go, Java) cannot read. ``"auto"`` sends them only to a server that
    shows it reads them (this project's does); see ``smf.peer``.
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        unix_path: str | None = None,
        timeout: float | None = 10.0,
        connect_timeout: float = 5.0,
        reconnect: bool | Backoff = False,
        max_body_size: int = 64 * 1024 * 1024,
        max_sessions: int = MAX_SESSION,
        body_timeout: float | None = 30.0,
        buffer_size: int = 256 * 1024,
        filters: Iterable[Filter] = (),
        ssl: SSLContext | None = None,
        server_hostname: str | None = None,
        payload_headers: str = "auto",
    ) -> None:
        if (unix_path is None) == (host is None or port is None):
            raise ValueError("give either host and port, or unix_path")
        self.host = host
        self.port = port
        self.unix_path = unix_path
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.backoff: Backoff | None = (
            Backoff() if reconnect is True else (reconnect if reconnect else None)
        )
        self.max_body_size = max_body_size
        self.max_sessions = max_sessions
        self.body_timeout = body_timeout
        self.buffer_size = buffer_size
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.payload_headers = check_mode(payload_headers)  # see smf/peer.py
        self.stats = ClientStats()
        self.filters: list[Filter] = list(filters)
        self.methods = MethodTable()
        self._conn: ClientConnection | None = None
        self._connected: asyncio.Event | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_loss = ""

    @property
    def address(self) -> str:
        return f"unix:{self.unix_path}" if self.unix_path else f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def in_flight(self) -> int:
        return len(self._conn.sessions) if self._conn is not None else 0

    # ------------------------------------------------------------------ connecting

    async def connect(self) -> None:
        if self._closed:
            raise ConnectionLost("client is closed")
        if self._connected is None:
            self._connected = asyncio.Event()
        if self.connected:
            return
        self._conn = await self._open()
        self._connected.set()

    async def _open(self) -> ClientConnection:
        loop = asyncio.get_running_loop()
        tls = self.ssl
        hostname = self.server_hostname if tls is not None else None
        if tls is not None and hostname is None and self.host is not None:
            hostname = self.host
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.unix_path is not None:
                    _, proto = await loop.create_unix_connection(
                        lambda: ClientConnection(self),
                        self.unix_path,
                        ssl=tls,
                        server_hostname=hostname,
                    )
                else:
                    assert self.host is not None and self.port is not None
                    _, proto = await loop.create_connection(
                        lambda: ClientConnection(self),
                        self.host,
                        self.port,
                        ssl=tls,
                        server_hostname=hostname,
                    )
        except (OSError, TimeoutError) as exc:
            hint = ""
            if tls is not None and not isinstance(exc, ConnectionRefusedError):
                hint = " (TLS handshake failed: is the server speaking TLS, and is its "
                hint += "certificate trusted for this name?)"
            why = str(exc) or type(exc).__name__
            raise ConnectionLost(f"cannot connect to {self.address}: {why}{hint}") from exc
        return proto

    def _connection_lost(self, conn: ClientConnection) -> None:
        if conn is not self._conn:
            return
        self.stats.connection_losses += 1
        if self._connected is not None:
            self._connected.clear()
        if self.backoff is not None and not self._closed and self._reconnect_task is None:
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        assert self.backoff is not None and self._connected is not None
        try:
            for delay in self.backoff.delays():
                await asyncio.sleep(delay)
                if self._closed:
                    return
                try:
                    self._conn = await self._open()
                except ConnectionLost as exc:
                    log.info("reconnect to %s failed: %s", self.address, exc)
                    continue
                self.stats.reconnects += 1
                self._connected.set()
                return
        finally:
            self._reconnect_task = None

    async def _ready_connection(self, timeout: float | None) -> ClientConnection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._closed:
            raise ConnectionLost("client is closed")
        if self._connected is None:  # never connected: connect on first use
            await self.connect()
        elif self._reconnect_task is None:
            raise ConnectionLost(f"not connected to {self.address}{self._last_loss}")
        else:
            try:
                async with asyncio.timeout(timeout):
                    await self._connected.wait()
            except TimeoutError:
                raise ConnectionLost(
                    f"not connected to {self.address} (reconnecting) within {timeout}s"
                ) from None
        assert self._conn is not None
        return self._conn

    # ------------------------------------------------------------------ calling

    def call(
        self,
        wire_id: int,
        payload: Payload,
        *,
        timeout: float | Default | None = DEFAULT,
        metadata: Mapping[str, str] | None = None,
    ) -> Coroutine[Any, Any, memoryview]:
        """Send one request and return the response body (a view over this client's
        receive buffer, valid while you hold it). Await it (``await client.call(...)``).

        ``timeout`` (seconds) defaults to the client's; inside a handler, the call also
        inherits what is left of the handler's deadline. An explicit or inherited
        deadline travels to the server (payload header ``smf-timeout-us``), which
        cancels the handler when it passes; the client's default timeout stays a local
        safety net. ``metadata`` reaches the handler as ``ctx.metadata``.

        Non-200 statuses raise ``RpcError`` subclasses; connection loss raises
        ``ConnectionLost``; the timeout raises ``DeadlineExceeded``.
        """
        # A plain function returning the coroutine: one coroutine layer less per call.
        if _tracing.active():
            return self._traced_call(wire_id, payload, timeout, metadata)
        return self._call(wire_id, payload, timeout, metadata)

    async def _traced_call(
        self,
        wire_id: int,
        payload: Payload,
        timeout: float | Default | None,
        metadata: Mapping[str, str] | None,
    ) -> memoryview:
        carrier = dict(metadata) if metadata else {}
        with _tracing.client_span(self.methods.get_or_add(wire_id).name, carrier):
            return await self._call(wire_id, payload, timeout, carrier)

    async def _call(
        self,
        wire_id: int,
        payload: Payload,
        timeout: float | Default | None,
        metadata: Mapping[str, str] | None,
    ) -> memoryview:
        if isinstance(timeout, Default):
            explicit = False
            t = self.timeout
        else:
            explicit = True
            t = timeout
        parent = current_call.get()
        prefix = b""
        if parent is not None or metadata or (explicit and t is not None):
            t, explicit, prefix = _call_headers(parent, metadata, t, explicit)
        started = perf_counter_ns()
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._ready_connection(t)
        if prefix and not conn.peer_headers.reads:  # only to a server that reads them
            prefix = await conn.peer_headers.admit(self, prefix, t)
        loop = conn.loop
        future: _CallResult = loop.create_future()
        sessions = conn.sessions
        pending = sessions.pending
        session = sessions._next
        if session in pending or len(pending) >= sessions.capacity:
            session = sessions.try_allocate(future)
        else:  # the next id is free: try_allocate's first step, inline
            pending[session] = future
            sessions._next = session + 1 if session < sessions.capacity else 1
        session_free = session != 0
        if not session:
            session = await self._wait_for_session(sessions, future, t)
        if conn.closed:  # lost while we waited to resume (connect, reconnect, session)
            sessions.release(session, future)
            raise ConnectionLost(f"connection to {self.address} lost{self._last_loss}")
        timer = None
        entry = None  # the call's place in the shared deadline queue
        shared_timeout: float | None = None
        if t is not None:
            if session_free and not explicit and t == self.timeout:
                shared_timeout = t  # the common case: one shared timer, armed below
            else:
                # What is left once the connection and a session were had.
                t = max(t - (perf_counter_ns() - started) / 1e9, 0.0)
                timer = loop.call_later(t, _expire, future, t)
        # Inlined (payload_size, checksum, SessionTable.release, ...): this runs for
        # every call, between one reply's arrival and the next request's write.
        size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
        try:
            if self.filters:
                status, body = await self._exchange_filtered(
                    conn, session, wire_id, prefix, payload, future, t
                )
            else:
                if prefix:
                    conn.send_parts(
                        HEADER.pack(
                            0,
                            FLAG_PAYLOAD_HEADERS,
                            session,
                            len(prefix) + size,
                            checksum_parts(prefix, payload),
                            wire_id,
                        ),
                        (prefix, payload),
                    )
                else:
                    header = HEADER.pack(0, 0, session, size, _xxh64(payload) & _MASK32, wire_id)
                    if len(pending) == 1 and not conn._out:
                        # The only call in flight, nothing queued: there is nothing to
                        # batch it with, so it leaves now rather than one loop iteration
                        # later (an extra epoll_wait and callback, ~4 µs a call). Calls
                        # that join it in this iteration are queued and leave together.
                        # The connection is open (checked above). The server's reply()
                        # writes its one reply of a read the same way.
                        if size <= JOIN_LIMIT:  # one buffer: see JOIN_LIMIT
                            conn.transport.write(header + payload)  # type: ignore[union-attr]
                        else:
                            conn.transport.writelines((header, payload))  # type: ignore[union-attr]
                    else:
                        conn.send(header, payload)
                # The shared deadline is queued after the write, off the round trip.
                if shared_timeout is not None:
                    entry = conn.deadlines.add(future, shared_timeout)
                    if entry is None:
                        timer = loop.call_later(shared_timeout, _expire, future, shared_timeout)
                self.stats.calls += 1
                frame = await future
                status, body = frame.meta, frame.body
                if frame.compression > _DISABLED or frame.flags:
                    status, body = _unwrap(
                        Message(frame.compression, frame.flags, frame.session, status, body)
                    )
        except DeadlineExceeded:
            self.stats.timeouts += 1
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if entry is not None:
                entry[1] = None  # the queue keeps no reference to this call's reply
            # A reply already freed its session (event_received); the shared deadline
            # queue drops spent entries when the next call is queued (off the round trip).
            if sessions._waiters or sessions.pending.get(session) is future:
                sessions.release(session, future)
        self.methods.get_or_add(wire_id).record(
            status, perf_counter_ns() - started, size, body.nbytes
        )
        if status == 200:
            return body
        message = reply_text(status, body)
        body.release()
        raise RpcError.from_status(status, message)

    async def _send_filtered(
        self, conn: ClientConnection, session: int, wire_id: int, prefix: bytes, payload: Payload
    ) -> None:
        body: Payload = prefix + bytes(payload) if prefix else payload
        flags = FLAG_PAYLOAD_HEADERS if prefix else 0
        message = await run_chain(
            self.filters, False, Message(0, flags, session, wire_id, body), conn
        )
        if message is None:
            return  # dropped by a filter: the call ends by its timeout
        conn.send(
            HEADER.pack(
                message.compression,
                message.flags,
                session,
                payload_size(message.body),
                checksum(message.body),
                message.meta,
            ),
            message.body,
        )

    async def _wait_for_session(
        self, sessions: SessionTable, future: _CallResult, timeout: float | None
    ) -> int:
        try:
            async with asyncio.timeout(timeout):
                return await sessions.allocate(future)
        except TimeoutError:
            self.stats.timeouts += 1
            raise DeadlineExceeded(
                f"no free session within {timeout}s: {sessions.capacity} calls in flight"
            ) from None

    async def _exchange_filtered(
        self,
        conn: ClientConnection,
        session: int,
        wire_id: int,
        prefix: bytes,
        payload: Payload,
        future: _CallResult,
        timeout: float | None,
    ) -> tuple[int, memoryview]:
        """Send through the outgoing chain, wait, receive through the incoming chain:
        all of it within the call's timeout (filters may be slow: compression, faults)."""
        try:
            async with asyncio.timeout(timeout):
                await self._send_filtered(conn, session, wire_id, prefix, payload)
                self.stats.calls += 1
                frame = await future
                message = Message(
                    frame.compression, frame.flags, frame.session, frame.meta, frame.body
                )
                filtered = await run_chain(self.filters, True, message, conn)
        except DeadlineExceeded:
            raise
        except TimeoutError:
            raise DeadlineExceeded(f"no response within {timeout}s (client timeout)") from None
        if filtered is None:
            raise ConnectionLost("response dropped by a client filter")
        return _unwrap(filtered)

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        self._closed = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
        conn = self._conn
        if conn is not None and not conn.closed:
            conn.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.lost), 1.0)

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _call_headers(
    parent: CallContext | None,
    metadata: Mapping[str, str] | None,
    timeout: float | None,
    explicit: bool,
) -> tuple[float | None, bool, bytes]:
    """(timeout, explicit, payload-header prefix) for a call made with ``metadata``
    and/or from inside a handler serving ``parent``."""
    fields = dict(metadata) if metadata else {}
    if parent is not None:
        remaining = parent.time_remaining()
        if remaining is not None:
            timeout = remaining if timeout is None or not explicit else min(timeout, remaining)
            explicit = True
        traceparent = parent.metadata.get(TRACEPARENT_HEADER)
        if traceparent is not None:
            fields.setdefault(TRACEPARENT_HEADER, traceparent)
    if explicit and timeout is not None:
        if timeout <= 0:
            raise DeadlineExceeded("deadline already passed before the call was sent")
        fields[TIMEOUT_HEADER] = str(int(timeout * 1e6))
    return timeout, explicit, headers.encode(fields) if fields else b""


def _unwrap(message: Message) -> tuple[int, memoryview]:
    """Status and message body of a response, payload headers stripped."""
    if message.compression > Compression.DISABLED:
        name = Compression(message.compression).name.lower()
        raise Unsupported(f"response is {name}-compressed and this client has no filter for it")
    body = memoryview(message.body)
    if message.flags & FLAG_PAYLOAD_HEADERS:
        _, body = headers.split(body)
    return message.meta, body


def _expire(future: _CallResult, timeout: float) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded(f"no response within {timeout}s (client timeout)"))
