"""The RPC client: many calls in flight on one connection, matched by session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from ssl import SSLContext
from time import perf_counter_ns
from types import TracebackType
from typing import Any, Final

from . import headers, protocol
from . import tracing as _tracing
from .backoff import Backoff
from .context import (
    TIMEOUT_HEADER,
    TRACEPARENT_HEADER,
    CallContext,
    current_call,
)
from .deadlines import Deadlines
from .eager import current_task
from .errors import (
    ConnectionLost,
    DeadlineExceeded,
    PayloadTooLarge,
    RpcError,
    Unsupported,
    reply_text,
)
from .filters.base import Filter, Message, run_chain
from .metrics import MethodTable
from .peer import PeerHeaders, check_mode
from .protocol import (
    ClientProtocol,
    OversizedResponse,
    ProtocolError,
    ResponseReceived,
    open_payload,
)
from .stream_calls import StreamCall, client_event, client_stream
from .streams import DEFAULT_WINDOW_BYTES, DEFAULT_WINDOW_MESSAGES
from .transport import Connection
from .wire import FLAG_PAYLOAD_HEADERS, MAX_SESSION, Compression, Payload

log = logging.getLogger("smf.client")


class Default:
    """The type of ``DEFAULT`` (for annotations: ``timeout: float | Default | None``)."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = Default()
"""Sentinel: use the client's default timeout."""

_CallResult = asyncio.Future[ResponseReceived]
_DISABLED: Final = int(Compression.DISABLED)


class SessionTable(protocol.SessionTable):
    """The protocol's session table (``smf.protocol.SessionTable``: ids 1..65535
    round-robin, an id in flight never handed out) plus waiting: ``allocate`` waits
    when all are in use, and each ``release`` wakes one waiter."""

    def __init__(self, capacity: int = MAX_SESSION) -> None:
        super().__init__(capacity)
        self._waiters: list[asyncio.Future[None]] = []

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

    def release(self, session: int, call: Any) -> bool:
        """Free ``session`` if it still belongs to ``call``, and wake one waiter."""
        freed = super().release(session, call)
        self._wake_one()
        return freed

    def settle(self, session: int, call: Any) -> None:
        """``call`` ended: free its session unless its reply did (the protocol pops it
        then), and wake a waiter either way."""
        if self._waiters or self.pending.get(session) is call:
            self.release(session, call)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def fail_all(self, exc: BaseException) -> None:
        """Fail every pending call and wake every waiter (they will find the
        connection closed)."""
        for future in self.take_all():
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
    timeouts: int = 0  # calls that ended in DeadlineExceeded (ours or the server's 408)
    reconnects: int = 0
    connection_losses: int = 0


class ClientConnection(Connection):
    protocol: ClientProtocol

    def __init__(self, client: Client) -> None:
        self.sessions = SessionTable(client.max_sessions)
        super().__init__(
            ClientProtocol(client.max_body_size, client.buffer_size, self.sessions),
            client.body_timeout,
        )
        self.client = client
        self.deadlines = client._deadlines()  # the client's, shared across reconnects
        self.lost: asyncio.Future[None] = self.loop.create_future()
        # Does the server read payload headers? (smf/peer.py)
        self.peer_headers = PeerHeaders(client.payload_headers)
        self._failed = False  # _fail ran: its calls were failed with a reason

    def alone(self) -> bool:
        # The only call in flight: nothing else would join its write this iteration.
        return len(self.sessions.pending) <= 1

    def event_received(self, event: ResponseReceived | OversizedResponse) -> None:
        if type(event) is not ResponseReceived and type(event) is not OversizedResponse:
            client_event(self, event)  # type: ignore[arg-type]  # a stream's frame
            return
        if self.peer_headers.reads is None and type(event) is ResponseReceived:
            self.peer_headers.learn(event.compression)  # "auto": from the first reply
        future = event.call  # its session is free again
        # Unlinked at once: the future will hold the event, and a cycle would keep the
        # body's receive buffer alive until the garbage collector found it.
        event.call = None
        if future is None or future.done():
            self.client.stats.late_replies += 1
            if type(event) is ResponseReceived:
                event.body.release()
            return
        if type(event) is ResponseReceived:
            future.set_result(event)
        else:
            future.set_exception(
                PayloadTooLarge(
                    f"response of {event.size} bytes is above the client's maximum of "
                    f"{self.client.max_body_size} bytes"
                )
            )

    def protocol_error(self, event: ProtocolError) -> None:
        log.warning("closing connection to %s: %s", self.peer, event.error)
        self.client._last_loss = f": bad frame from the server: {event.error}"
        self._fail(ConnectionLost(f"server {self.peer} sent a bad frame: {event.error}"))
        self.abort()

    def stalled(self) -> None:
        self.client._last_loss = f": the server stopped mid-frame for {self.body_timeout}s"
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
        if not self._failed:  # else it failed first, for a reason of its own
            self.client._last_loss = why
        self._fail(ConnectionLost(f"connection to {self.client.address} lost{why}"))
        if not self.lost.done():
            self.lost.set_result(None)
        self.client._connection_lost(self)

    @property
    def is_server(self) -> bool:  # FilterSide
        return False

    def _fail(self, exc: ConnectionLost) -> None:
        self._failed = True
        self.closed = True
        self.protocol.close()
        self.sessions.fail_all(exc)
        self.peer_headers.close()


class Client:
    """An smf RPC client over one connection (TCP or Unix socket).

    ``timeout`` is every call's default (seconds; ``None`` waits forever).

    ``reconnect`` (default ``True``, or a ``Backoff``): a lost connection (a server that
    closed an idle one, restarted, or dropped it) is re-established in the background
    with exponential backoff and jitter, and calls issued meanwhile wait for it within
    their own timeout, as gRPC channels do. Calls in flight when it was lost fail with
    ``ConnectionLost`` (they may or may not have run). ``reconnect=False``: every call
    after a loss fails with ``ConnectionLost``.

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
        reconnect: bool | Backoff = True,
        max_body_size: int = 64 * 1024 * 1024,
        max_sessions: int = MAX_SESSION,
        body_timeout: float | None = 30.0,
        buffer_size: int = 256 * 1024,
        filters: Iterable[Filter] = (),
        ssl: SSLContext | None = None,
        server_hostname: str | None = None,
        payload_headers: str = "auto",
        stream_window: tuple[int, int] = (DEFAULT_WINDOW_MESSAGES, DEFAULT_WINDOW_BYTES),
    ) -> None:
        self.stream_window = stream_window
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
        self._deadline_timer: Deadlines | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.unix_path}" if self.unix_path else f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def in_flight(self) -> int:
        return len(self._conn.sessions) if self._conn is not None else 0

    @property
    def connection(self) -> ClientConnection | None:
        """The current connection (None before the first connect; a new one after each
        reconnect): what a channel watches (``events_seen``, ``closed``, ``lost``)."""
        return self._conn

    @property
    def last_loss(self) -> str:
        """Why the last connection was lost ("" while none was)."""
        return self._last_loss.removeprefix(": ")

    def abort(self, why: str) -> None:
        """Drop the connection now (a peer found dead): its pending calls fail with
        ``ConnectionLost(why)``; with ``reconnect``, a new connection is made."""
        conn = self._conn
        if conn is not None and not conn.closed:
            self._last_loss = f": {why}"
            conn._fail(ConnectionLost(why))
            conn.abort()

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

    async def _ready_connection(self) -> ClientConnection:
        """The open connection, after connecting (first use) or waiting for the
        reconnect in progress (within the call's deadline)."""
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
            await self._connected.wait()
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

    async def call_with_metadata(
        self,
        wire_id: int,
        payload: Payload,
        *,
        timeout: float | Default | None = DEFAULT,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[memoryview, dict[str, str]]:
        """As ``call``, and also the reply's metadata (what the handler set with
        ``ctx.set_trailing_metadata``; empty when none). The request always carries
        payload headers (an empty set without ``metadata``): a server sends reply
        metadata only to a caller that sends payload headers itself."""
        trailers: dict[str, str] = {}
        if _tracing.active():
            body = await self._traced_call(wire_id, payload, timeout, metadata, trailers)
        else:
            body = await self._call(wire_id, payload, timeout, metadata, trailers)
        return body, trailers

    def stream(
        self,
        wire_id: int,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        window: tuple[int, int] | None = None,
    ) -> StreamCall:
        """A bidi (or any) stream: ``await s.send(m)``, ``await s.done_writing()``,
        ``async for reply in s``. ``timeout`` covers the whole stream (none by default);
        ``window`` (messages, bytes) is the credit granted to the server."""
        return StreamCall(self, wire_id, timeout=timeout, metadata=metadata, window=window)

    def server_stream(
        self,
        wire_id: int,
        request: Payload,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        window: tuple[int, int] | None = None,
    ) -> StreamCall:
        """A server stream: ``async for reply in client.server_stream(id, request)``."""
        return StreamCall(
            self, wire_id, timeout=timeout, metadata=metadata, window=window, request=request
        )

    async def client_stream(
        self,
        wire_id: int,
        requests: Iterable[Payload] | AsyncIterable[Payload],
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> bytes:
        """A client stream: sends every message of ``requests``, returns the reply."""
        return await client_stream(self, wire_id, requests, timeout=timeout, metadata=metadata)

    async def _traced_call(
        self,
        wire_id: int,
        payload: Payload,
        timeout: float | Default | None,
        metadata: Mapping[str, str] | None,
        trailers: dict[str, str] | None = None,
    ) -> memoryview:
        carrier = dict(metadata) if metadata else {}
        with _tracing.client_span(self.methods.get_or_add(wire_id).name, carrier):
            return await self._call(wire_id, payload, timeout, carrier, trailers)

    async def _call(
        self,
        wire_id: int,
        payload: Payload,
        timeout: float | Default | None,
        metadata: Mapping[str, str] | None,
        trailers: dict[str, str] | None = None,
    ) -> memoryview:
        """The one call path: connection -> session -> filters -> request -> response ->
        filters, under one deadline. ``trailers``: filled with the reply's metadata."""
        parent = current_call.get()
        t, prefix = self.timeout, b""  # the usual call: no payload headers
        if parent is not None or metadata or trailers is not None or type(timeout) is not Default:
            t, prefix = self._request_headers(parent, timeout, metadata, trailers)
        started = perf_counter_ns()
        conn = self._conn
        entry = future = None
        sent, session = False, 0
        try:
            if conn is not None and not conn.closed:  # the usual case: no wait to send
                future = conn.loop.create_future()
                session = conn.protocol.start_call(future)
            if not session:  # connect, reconnect or wait for a session, within t
                if t is not None:
                    entry = self._deadlines().add(asyncio.current_task(), t)
                conn, future, session = await self._start_call(conn, future)
            assert conn is not None and future is not None
            sent = True  # (or being sent: the probe and outgoing filters count as the exchange)
            if prefix or self.filters:
                if entry is None and t is not None:  # first (see _send_with_headers)
                    entry = conn.deadlines.add(current_task(conn.loop), t)
                await self._send_with_headers(conn, session, wire_id, prefix, payload, t)
            else:
                conn.protocol.send_request(session, wire_id, payload)
                conn.queued()
            if entry is None and t is not None:  # after the write: off the round trip
                entry = conn.deadlines.add(current_task(conn.loop), t)
            self.stats.calls += 1
            event: ResponseReceived = await future
            status, body = event.meta, event.body
            if event.compression > _DISABLED or event.flags or self.filters:
                status, reply_metadata, body = await self._open_response(conn, event)
                if trailers is not None:
                    trailers.update(reply_metadata)
        except asyncio.CancelledError:
            if entry is None or not entry[3]:
                raise  # cancelled by someone else
            raise self._expired(sent, t) from None
        finally:
            if entry is not None:
                entry[2] = None  # spent: the deadline no longer applies
            if session:  # unless its reply freed it already (the protocol pops it)
                conn.sessions.settle(session, future)  # type: ignore[union-attr]
        size = payload.nbytes if type(payload) is memoryview else len(payload)
        self.methods.get_or_add(wire_id).record(
            status, perf_counter_ns() - started, size, body.nbytes
        )
        if status == 200:
            return body
        raise self._failed(status, body)

    def _request_headers(
        self,
        parent: CallContext | None,
        timeout: float | Default | None,
        metadata: Mapping[str, str] | None,
        trailers: dict[str, str] | None,
    ) -> tuple[float | None, bytes]:
        """(timeout, payload headers) of a call with metadata, an explicit timeout, a
        parent call or reply metadata wanted."""
        explicit = not isinstance(timeout, Default)
        t = self.timeout if isinstance(timeout, Default) else timeout
        prefix = b""
        if parent is not None or metadata or (explicit and t is not None) or trailers is not None:
            t, explicit, prefix = _call_headers(parent, metadata, t, explicit)
            if not prefix and trailers is not None:
                prefix = headers.encode({})  # so the server may answer with metadata
        return t, prefix

    def _failed(self, status: int, body: memoryview) -> RpcError:
        """The error a non-200 reply raises (its body is the message)."""
        message = reply_text(status, body)
        body.release()
        if status == 408:
            self.stats.timeouts += 1  # the server's deadline passed first
        return RpcError.from_status(status, message)

    async def _start_call(
        self, conn: ClientConnection | None, future: _CallResult | None
    ) -> tuple[ClientConnection, _CallResult, int]:
        """A connection and a session for a call that could not have them at once
        (not connected yet, reconnecting, or every session in flight)."""
        if conn is None or conn.closed:
            conn = await self._ready_connection()
            future = None
        if future is None:
            future = conn.loop.create_future()
        session = conn.protocol.start_call(future)
        if not session:
            session = await conn.sessions.allocate(future)
        if conn.closed:  # lost while we waited to resume (connect, reconnect, session)
            conn.sessions.release(session, future)
            raise ConnectionLost(f"connection to {self.address} lost{self._last_loss}")
        return conn, future, session

    def _deadlines(self) -> Deadlines:
        """The client's deadlines (one timer for all its calls, across reconnects)."""
        deadlines = self._deadline_timer
        if deadlines is None:
            deadlines = self._deadline_timer = Deadlines(asyncio.get_running_loop())
        return deadlines

    def _expired(self, sent: bool, timeout: float | None) -> Exception:
        """What a call whose deadline passed raises (its task's cancel taken back): by
        whether its request was sent, else by what it was waiting for (a connection, or
        a free session)."""
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
        self.stats.timeouts += 1
        if sent:
            return DeadlineExceeded(f"no response within {timeout}s (client timeout)")
        conn = self._conn
        if conn is None or conn.closed:
            return ConnectionLost(
                f"not connected to {self.address} (reconnecting) within {timeout}s"
            )
        capacity = conn.sessions.capacity
        return DeadlineExceeded(f"no free session within {timeout}s: {capacity} calls in flight")

    async def _send_with_headers(
        self,
        conn: ClientConnection,
        session: int,
        wire_id: int,
        prefix: bytes,
        payload: Payload,
        timeout: float | None,
    ) -> None:
        """Send a request with payload headers (``prefix``; only to a server that reads
        them) or through the outgoing filters. Its deadline already runs: filters and the
        probe may be slow, and a deadline that travels (in ``prefix``) must run out here
        before it does at the server."""
        if prefix and not conn.peer_headers.reads:
            prefix = await conn.peer_headers.admit(self, prefix, timeout)
        if not self.filters:
            conn.protocol.send_request(session, wire_id, payload, prefix=prefix)
            conn.queued()
            return
        body: Payload = prefix + bytes(payload) if prefix else payload
        flags = FLAG_PAYLOAD_HEADERS if prefix else 0
        message = await run_chain(
            self.filters, False, Message(0, flags, session, wire_id, body), conn
        )
        if message is None:
            return  # dropped by a filter: the call ends by its timeout
        conn.protocol.send_request(
            session, message.meta, message.body, message.compression, message.flags
        )
        conn.queued()

    async def _open_response(
        self, conn: ClientConnection, event: ResponseReceived
    ) -> tuple[int, Mapping[str, str], memoryview]:
        """Status, metadata and message of a response: through the incoming filters,
        then its compression checked and its payload headers split off."""
        message: Message | None = Message(
            event.compression, event.flags, event.session, event.meta, event.body
        )
        if self.filters:
            message = await run_chain(self.filters, True, message, conn)  # type: ignore[arg-type]
            if message is None:
                raise ConnectionLost("response dropped by a client filter")
        assert message is not None
        if message.compression > _DISABLED:
            name = Compression(message.compression).name.lower()
            raise Unsupported(f"response is {name}-compressed and this client has no filter for it")
        reply_metadata, body = open_payload(0, message.flags, memoryview(message.body))
        return message.meta, reply_metadata, body

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        self._closed = True
        if self._deadline_timer is not None:
            self._deadline_timer.close()
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
