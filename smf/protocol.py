"""The smf connection, sans-IO: one object per connection and side (h11's model).

``ServerProtocol`` and ``ClientProtocol`` own everything about a connection that is
not I/O: the 16-byte header (packed by ``wire.encode_header``, parsed and checked by
``wire.FrameDecoder``), checksums, payload headers, compression flags, the client's
session ids, and the bytes waiting to be written. No asyncio and no sockets here:

- In: ``get_buffer(n)`` / ``buffer_updated(k)`` (the kernel reads straight into the
  receive buffer) or ``receive_data(data)`` (a copy); then ``next_event()`` until it
  returns ``None``. Events: ``RequestReceived`` / ``OversizedRequest`` on a server,
  ``ResponseReceived`` / ``OversizedResponse`` on a client, ``ProtocolError`` (naming
  the header field) on either, after which the connection is in ``State.ERROR``.
- Out: ``send_reply(...)`` / ``send_request(...)`` queue a frame; ``data_to_send()``
  hands over the queued buffers (to write in order, e.g. with one ``writelines``).

Zero-copy: a received body is a ``memoryview`` over the receive buffer, which is never
overwritten while a view into it lives (see ``smf.wire``). Bodies to send are queued as
given (never copied) unless they are small (``JOIN_LIMIT``).

Streams keep their per-session state here (``streams``, beside the session table);
their rules and events are in ``smf.streams``: a frame with ``FLAG_STREAM`` becomes a
stream event there.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from . import headers
from . import streams as _streams
from .context import ACCEPT_COMPRESSION_HEADER, TIMEOUT_HEADER, CallContext
from .errors import BadRequest, FrameError, Unsupported
from .filters.compression import decompress
from .wire import (
    FLAG_PAYLOAD_HEADERS,
    HEADER_SIZE,
    MAX_SESSION,
    STREAM_FLAGS,
    Compression,
    Frame,
    FrameDecoder,
    OversizedFrame,
    Payload,
    encode_header,
    payload_size,
)

JOIN_LIMIT: Final = 4096
"""Frames with a body up to this size are queued as one ``bytes`` (header + body, a copy
of at most this much) rather than as two buffers: uvloop sends a single buffer with one
``send``, while two cost a ``writev`` and a memoryview cast per non-bytes buffer. Larger
bodies are never copied."""

_DISABLED: Final = int(Compression.DISABLED)
_STREAM: Final = STREAM_FLAGS  # any of them: a stream frame, or a bad one


class State(enum.Enum):
    """A connection's state. ``OPEN``: frames flow both ways. ``ERROR``: the peer broke
    the framing (a ``ProtocolError`` was returned); nothing more is read, and what was
    queued before may still be written. ``CLOSED``: ``close()`` was called; nothing is
    read or queued any more."""

    OPEN = "open"
    ERROR = "error"
    CLOSED = "closed"


# Read per frame: a module global is ~15 ns, an Enum class attribute ~80 ns on 3.11.
_OPEN: Final = State.OPEN
_CLOSED: Final = State.CLOSED


# ---------------------------------------------------------------------------- events


class RequestReceived(Frame):
    """A complete request: ``meta`` is its wire id, ``body`` a view over the receive
    buffer (payload headers still in it when ``flags`` says so; see ``open_payload``)."""

    __slots__ = ()

    @property
    def wire_id(self) -> int:
        return self.meta


class ResponseReceived(Frame):
    """A complete response: ``meta`` is its status; ``call`` is what the session was
    allocated to (``None`` for a session not in flight: a late or stray reply)."""

    __slots__ = ("call",)

    call: Any

    @property
    def status(self) -> int:
        return self.meta


class OversizedRequest(OversizedFrame):
    """A request above ``max_body_size``: its body is skipped as it arrives, never held.
    Answer it with 413; the connection stays usable."""

    __slots__ = ()


class OversizedResponse(OversizedFrame):
    """A response above ``max_body_size`` (body skipped); ``call`` as in
    ``ResponseReceived``."""

    __slots__ = ("call",)

    call: Any


class ProtocolError:
    """The peer broke the framing: ``field`` names the header field at fault (or
    ``checksum``), ``value`` is what it held. The byte stream cannot be resynchronised."""

    __slots__ = ("error",)

    def __init__(self, error: FrameError) -> None:
        self.error = error

    @property
    def field(self) -> str:
        return self.error.field

    @property
    def value(self) -> int:
        return self.error.value

    def __repr__(self) -> str:
        return f"ProtocolError({self.error})"


ServerEvent = RequestReceived | OversizedRequest | ProtocolError | _streams.AnyStreamEvent
ClientEvent = ResponseReceived | OversizedResponse | ProtocolError | _streams.AnyStreamEvent


# ---------------------------------------------------------------------------- payload


def encode_metadata(metadata: Mapping[str, str]) -> bytes:
    """Payload headers for ``metadata``: send them before the message, with
    ``FLAG_PAYLOAD_HEADERS`` set (``send_request(..., prefix=...)``)."""
    return headers.encode(metadata)


def open_payload(
    compression: int, flags: int, body: memoryview, max_size: int | None = None
) -> tuple[Mapping[str, str], memoryview]:
    """(payload headers, message) of a received body. A zstd or lz4 body is decompressed
    (up to ``max_size`` bytes) when ``max_size`` is given, else raises ``Unsupported``;
    bad payload headers raise ``BadRequest``."""
    if compression > _DISABLED:
        if max_size is None:
            name = Compression(compression).name.lower()
            raise Unsupported(f"no filter for {name} compression")
        body = memoryview(decompress(compression, body, max_size))
    if flags & FLAG_PAYLOAD_HEADERS:
        return headers.split(body)
    return {}, body


def open_call(
    ctx: CallContext, compression: int, flags: int, body: memoryview, max_size: int | None
) -> memoryview:
    """The message in a request's body (``open_payload``); its payload headers become
    ``ctx.metadata`` and its ``smf-timeout-us`` sets ``ctx.deadline``."""
    ctx.metadata, body = open_payload(compression, flags, body, max_size)
    timeout = parse_timeout(ctx.metadata)
    if timeout is not None:
        ctx.deadline = time.monotonic() + timeout
    return body


def offered(compression: int, metadata: Mapping[str, str]) -> frozenset[int]:
    """The compressions a request offers for its reply: its own (zstd or lz4) and those
    named in its ``smf-accept-compression`` header (unknown names are ignored)."""
    accept = {compression} if compression > _DISABLED else set()
    names = metadata.get(ACCEPT_COMPRESSION_HEADER)
    if names:
        for name in names.split(","):
            algorithm = _BY_NAME.get(name.strip().lower())
            if algorithm is not None:
                accept.add(algorithm)
    return frozenset(accept)


_BY_NAME: Final = {"zstd": int(Compression.ZSTD), "lz4": int(Compression.LZ4)}


def parse_timeout(metadata: Mapping[str, str]) -> float | None:
    """The caller's remaining time in seconds (``smf-timeout-us``), None without one.

    Strict: an optional "-" (already expired) and 1-18 ASCII digits (~31 years), as a
    C++ peer would parse it; ``int()`` alone takes "+1", "1_000", full-width digits or
    a 400-digit number."""
    timeout_us = metadata.get(TIMEOUT_HEADER)
    if timeout_us is None:
        return None
    digits = timeout_us[1:] if timeout_us.startswith("-") else timeout_us
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 18):
        raise BadRequest(
            f"{TIMEOUT_HEADER} header must be an integer of at most 18 ASCII digits "
            f"(microseconds), not {timeout_us[:40]!r}"
        )
    return int(timeout_us) / 1e6


# ---------------------------------------------------------------------------- sessions


class SessionTable:
    """Session id → the call it belongs to. Ids run 1..capacity round-robin, so an id
    freed by a cancelled or timed-out call is reused as late as possible; an id in
    flight is never handed out. ``try_allocate`` returns 0 when all are in use."""

    def __init__(self, capacity: int = MAX_SESSION) -> None:
        if not 1 <= capacity <= MAX_SESSION:
            raise ValueError(f"capacity must be within 1..{MAX_SESSION}")
        self.capacity = capacity
        self.pending: dict[int, Any] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self.pending)

    def try_allocate(self, call: Any) -> int:
        """A free session bound to ``call``, or 0 when all are in use."""
        pending = self.pending
        session = self._next
        if session in pending:
            if len(pending) >= self.capacity:
                return 0
            while session in pending:
                session = session + 1 if session < self.capacity else 1
        self._next = session + 1 if session < self.capacity else 1
        pending[session] = call
        return session

    def pop(self, session: int) -> Any:
        """The call ``session`` belonged to (now free), or None."""
        return self.pending.pop(session, None)

    def release(self, session: int, call: Any) -> bool:
        """Free ``session`` if it still belongs to ``call``; True if it did."""
        if self.pending.get(session) is call:
            del self.pending[session]
            return True
        return False

    def take_all(self) -> list[Any]:
        """Every call in flight, all sessions freed (the connection is gone)."""
        calls = list(self.pending.values())
        self.pending.clear()  # in place: the decoder matches responses through it
        return calls


# ---------------------------------------------------------------------------- connections


class _Connection(FrameDecoder):
    """What both sides share. The receive side is a ``FrameDecoder`` (``get_buffer``,
    ``buffer_updated``, ``receive_data``; ``idle``, ``mid_frame``, ``buffered``,
    ``allocated``), whose ``next_event`` each side wraps into its own events; the send
    side queues frames (``_send``) until ``data_to_send``."""

    _frame_type: type[Frame] = Frame
    _oversized_type: type[OversizedFrame] = OversizedFrame
    _uncompressed: int = Compression.NONE
    """The compression byte of a frame sent uncompressed (the server's: ``DISABLED``)."""

    def __init__(self, max_body_size: int, buffer_size: int) -> None:
        super().__init__(
            max_body_size,
            buffer_size=buffer_size,
            frame_type=self._frame_type,
            oversized_type=self._oversized_type,
            known_flags=FLAG_PAYLOAD_HEADERS | STREAM_FLAGS,
        )
        self.state = State.OPEN
        # Streams by session (smf.streams), and the window granted to a peer's stream.
        self.streams: dict[int, _streams.Stream] = {}
        self.streamed = False  # a stream was opened on this connection (a stream peer)
        self.stream_window = (_streams.DEFAULT_WINDOW_MESSAGES, _streams.DEFAULT_WINDOW_BYTES)
        self._out: list[Payload] = []
        self.bytes_to_send = 0
        self.error: FrameError | None = None

    # ------------------------------------------------------------------ input

    # FrameDecoder's hooks: its next_event returns these connections' events itself
    # (typed for callers by each side's next_event declaration below).
    _divert_flags = _STREAM

    def _diverted(  # type: ignore[override]
        self, event: Frame | OversizedFrame
    ) -> _streams.AnyStreamEvent | ProtocolError:
        """A stream's frame (any stream flag): its event, by ``smf.streams``' rules."""
        try:
            return _streams.receive(self, event, isinstance(self, ServerProtocol))
        except FrameError as error:
            return self._failed(error)

    def _frame_error(self, error: FrameError) -> ProtocolError:  # type: ignore[override]
        return self._failed(error)

    def _when_halted(self) -> None:
        return None  # after a protocol error or close(): nothing more is read

    def _failed(self, error: FrameError) -> ProtocolError:
        self.state = State.ERROR
        self.error = error
        self._halted = True
        return ProtocolError(error)

    more_buffered = FrameDecoder.header_buffered
    """Another frame's header has arrived: ``next_event`` is not done yet."""

    # ------------------------------------------------------------------ output

    def _send(
        self,
        session: int,
        meta: int,
        body: Payload,
        compression: int = Compression.NONE,
        flags: int = 0,
        prefix: bytes = b"",
    ) -> int:
        """Queue one frame (``send_reply``/``send_request``); returns the body's size on
        the wire, 0 once closed. ``prefix`` (payload headers) sets
        ``FLAG_PAYLOAD_HEADERS`` and goes before ``body``."""
        if self.state is _CLOSED:
            return 0
        compression = compression or self._uncompressed
        out = self._out
        if prefix:
            flags |= FLAG_PAYLOAD_HEADERS
            header = encode_header(session, meta, (prefix, body), compression, flags)
            out.append(header + prefix)
            out.append(body)
            size = len(prefix) + payload_size(body)
        else:
            header = encode_header(session, meta, body, compression, flags)
            size = body.nbytes if type(body) is memoryview else len(body)
            if size <= JOIN_LIMIT:
                out.append(header + body)
            else:
                out.append(header)
                out.append(body)
        self.bytes_to_send += HEADER_SIZE + size
        return size

    def data_to_send(self) -> list[Payload]:
        """The buffers queued since the last call, to write in this order."""
        out = self._out
        self._out = []
        self.bytes_to_send = 0
        return out

    def close(self) -> None:
        """No more input is read and no more output queued (what is queued stays)."""
        self.state = State.CLOSED
        self._halted = True


class ServerProtocol(_Connection):
    """The server side of one connection: requests in, replies out."""

    _frame_type = RequestReceived
    _oversized_type = OversizedRequest

    if TYPE_CHECKING:  # FrameDecoder.next_event, with its hooks above (no call around it)

        def next_event(self) -> ServerEvent | None:  # type: ignore[override]
            """The next request (or oversized request, stream event or protocol error);
            None until more bytes arrive (and always after a protocol error or
            ``close``)."""

    _uncompressed = _DISABLED
    send_reply = _Connection._send
    """``send_reply(session, status, body, compression=0, flags=0, prefix=b"")``: queue
    the reply to ``session``; returns the body's size on the wire.

    An uncompressed reply carries compression byte 1 (``disabled``): every smf client
    reads it as "not compressed", and this project's clients as "this server reads
    payload headers" (``smf.peer``)."""


class ClientProtocol(_Connection):
    """The client side of one connection: it allocates sessions, sends requests and
    matches each response to the call its session was allocated to."""

    _frame_type = ResponseReceived
    _oversized_type = OversizedResponse

    def __init__(
        self, max_body_size: int, buffer_size: int, sessions: SessionTable | None = None
    ) -> None:
        super().__init__(max_body_size, buffer_size)
        self.sessions = sessions if sessions is not None else SessionTable()
        self._calls = self.sessions.pending  # FrameDecoder sets each response's call

    @property
    def in_flight(self) -> int:
        return len(self.sessions.pending)

    def start_call(self, call: Any) -> int:
        """A session for ``call`` (0 when all are in use or the connection is not open)."""
        if self.state is not _OPEN:
            return 0
        sessions = self.sessions
        session = sessions._next
        pending = sessions.pending
        if session in pending:
            return sessions.try_allocate(call)
        # try_allocate's usual case (the next id is free), inline: once per call.
        sessions._next = session + 1 if session < sessions.capacity else 1
        pending[session] = call
        return session

    def end_call(self, session: int, call: Any) -> bool:
        """Free ``session`` if ``call`` still holds it (a call that gave up)."""
        return self.sessions.release(session, call)

    send_request = _Connection._send
    """``send_request(session, wire_id, body, compression=0, flags=0, prefix=b"")``:
    queue a request on ``session`` (from ``start_call``); returns its size on the wire."""

    if TYPE_CHECKING:  # FrameDecoder.next_event, with the hooks above (no call around it)

        def next_event(self) -> ClientEvent | None:  # type: ignore[override]
            """The next response, its session freed and ``call`` set (or stream event, or
            protocol error); None until more bytes arrive (and always after a protocol
            error or ``close``)."""

    def fail_all(self) -> list[Any]:
        """Every call still in flight (their sessions freed): the connection is gone."""
        return self.sessions.take_all()
