"""Streams, sans-IO: the state and credit of every stream on a connection.

A stream lives on one session id of one connection, beside unary calls. Its frames are
ordinary smf frames with bit 1 of ``flags`` set (``FLAG_STREAM``) and at most one of the
kind bits below; unary frames never carry them, so a peer that never calls a streaming
method never sees one (see ``docs/streams.md`` for the wire reference):

- ``OPEN | CREDIT`` (client, first frame): ``meta`` = the method's wire id; the body is
  optional payload headers (``FLAG_PAYLOAD_HEADERS``: deadline, metadata) followed by the
  client's credit grant (8 bytes).
- message (no kind bit): one message; ``meta`` = wire id (client) or 200 (server).
- ``CREDIT``: body = ``<II`` messages, bytes added to the peer's credit.
- ``END``: the sender's half-close. The server's carries the stream's final status in
  ``meta`` and its message as the body; the client's body is one zero byte.
- ``CANCEL`` (client): give up; the server cancels its handler and answers ``END``.

Credit: a sender may send a message while it holds at least one message and more than
zero bytes of credit (a message may overdraw the bytes by its own size). The opener
starts with one message and one byte of credit (its first message needs no grant);
a server grants its window when it accepts the stream, and each receiver grants back what
its application consumed once half its window (messages or bytes) is consumed.

Lifetime: a side forgets a stream once it has both sent and received a close (``END``
or ``CANCEL``); the client frees the session only then, so a session id is never reused
while the server may still send on it. A server ignores a ``CREDIT`` or ``CANCEL`` for a
stream it has forgotten (it crossed the server's ``END``) once that connection has
opened a stream; any other stream frame on a
session with no stream is a protocol error naming ``bitflags``, as any unknown bit is.

Nothing here does I/O: ``receive`` turns a decoded frame into a stream event (called
from the protocol's ``next_event``), the ``send_*`` functions queue frames on the
protocol (``data_to_send`` hands them over).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Final

from .errors import BadCompression, BadFlags, FrameError
from .wire import FLAG_PAYLOAD_HEADERS, STREAM_FLAGS, Frame, OversizedFrame, Payload

if TYPE_CHECKING:
    from .protocol import ClientProtocol, _Connection

FLAG_STREAM: Final = 0x02
FLAG_OPEN: Final = 0x04
FLAG_END: Final = 0x08
FLAG_CANCEL: Final = 0x10
FLAG_CREDIT: Final = 0x20
_KIND: Final = FLAG_OPEN | FLAG_END | FLAG_CANCEL | FLAG_CREDIT
assert STREAM_FLAGS == FLAG_STREAM | _KIND

CREDIT: Final = struct.Struct("<II")
OK_STATUS: Final = 200
CANCELLED_STATUS: Final = 499
"""The server's final status for a stream the client cancelled (as nginx's 499)."""

DEFAULT_WINDOW_MESSAGES: Final = 256
DEFAULT_WINDOW_BYTES: Final = 1024 * 1024
_CLIENT_END_BODY: Final = b"\x00"
_MAX_GRANT: Final = 0xFFFFFFFF


class StreamError(FrameError):
    """A peer broke the stream rules (credit, order of frames): the connection ends."""

    def __init__(self, field: str, value: int, reason: str) -> None:
        super().__init__(field, value, reason)


class Stream:
    """One stream's state on one side. ``owner`` is what the adapter attached (the
    client's call object, the server's running handler)."""

    __slots__ = (
        "consumed_bytes",
        "consumed_messages",
        "owner",
        "received_close",
        "recv_bytes",
        "recv_messages",
        "send_bytes",
        "send_messages",
        "sent_close",
        "server",
        "session",
        "window_bytes",
        "window_messages",
        "wire_id",
    )

    def __init__(
        self,
        session: int,
        wire_id: int,
        server: bool,
        window_messages: int,
        window_bytes: int,
        owner: Any = None,
    ) -> None:
        if window_messages < 1 or window_bytes < 1:
            raise ValueError("a stream window must allow at least 1 message and 1 byte")
        self.session = session
        self.wire_id = wire_id
        self.server = server
        self.owner = owner
        self.window_messages = window_messages
        self.window_bytes = window_bytes
        # What we may send (granted by the peer) and what the peer may send us.
        self.send_messages = 0 if server else 1
        self.send_bytes = 0 if server else 1
        self.recv_messages = window_messages + (1 if server else 0)
        self.recv_bytes = window_bytes + (1 if server else 0)
        self.consumed_messages = 0
        self.consumed_bytes = 0
        self.sent_close = False
        self.received_close = False

    @property
    def can_send(self) -> bool:
        """Credit allows one more message now."""
        return self.send_messages >= 1 and self.send_bytes > 0 and not self.sent_close

    @property
    def done(self) -> bool:
        return self.sent_close and self.received_close

    def __repr__(self) -> str:
        side = "server" if self.server else "client"
        return (
            f"Stream({side}, session={self.session}, wire_id={self.wire_id}, "
            f"credit={self.send_messages}/{self.send_bytes}, "
            f"sent_close={self.sent_close}, received_close={self.received_close})"
        )


# ---------------------------------------------------------------------------- events


class StreamEvent:
    """A stream frame received: ``stream`` its state, ``meta``/``flags``/``body`` as
    on the wire (``body`` a view over the receive buffer)."""

    __slots__ = ("body", "compression", "flags", "meta", "stream")

    def __init__(self, stream: Stream, frame: Frame) -> None:
        self.stream = stream
        self.meta = frame.meta
        self.flags = frame.flags
        self.compression = frame.compression
        self.body = frame.body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.stream!r}, meta={self.meta})"


class StreamOpened(StreamEvent):
    """Server: a client opened ``stream``. ``body`` holds the payload headers, if any
    (``FLAG_PAYLOAD_HEADERS`` in ``flags``), without the credit."""

    __slots__ = ()


class StreamMessage(StreamEvent):
    """One message; call ``consumed`` once the application has taken it."""

    __slots__ = ()


class StreamEnded(StreamEvent):
    """The peer half-closed. From a server, ``meta`` is the final status and ``body``
    its message."""

    __slots__ = ()


class StreamCancelled(StreamEvent):
    """Server: the client cancelled; ``body`` is its reason (UTF-8)."""

    __slots__ = ()


class StreamCredit(StreamEvent):
    """The peer granted credit (already added): a waiting sender may go on."""

    __slots__ = ()


class StreamOversized:
    """A stream message above ``max_body_size`` (its body skipped). The receiver ends
    the stream (server: ``END`` 413; client: fails the call and cancels)."""

    __slots__ = ("size", "stream")

    def __init__(self, stream: Stream, size: int) -> None:
        self.stream = stream
        self.size = size


class StreamIgnored:
    """A stale stream frame (for a stream this side has already forgotten)."""

    __slots__ = ("session",)

    def __init__(self, session: int) -> None:
        self.session = session


AnyStreamEvent = StreamEvent | StreamOversized | StreamIgnored


# ---------------------------------------------------------------------------- receiving


def receive(conn: _Connection, frame: Frame | OversizedFrame, server: bool) -> AnyStreamEvent:
    """The stream event for ``frame`` (which has ``FLAG_STREAM`` set); raises
    ``FrameError`` (naming the field) when the peer broke the stream rules."""
    flags = frame.flags
    if flags == FLAG_STREAM:  # a message: the fast path
        stream = conn.streams.get(frame.session)
        if (
            stream is not None
            and not stream.received_close
            and stream.recv_messages >= 1
            and stream.recv_bytes > 0
            and isinstance(frame, Frame)
        ):
            stream.recv_messages -= 1
            stream.recv_bytes -= frame.body.nbytes
            return StreamMessage(stream, frame)
    kind = flags & _KIND
    opening = kind == FLAG_OPEN | FLAG_CREDIT
    if (
        not flags & FLAG_STREAM
        or kind not in (0, FLAG_CREDIT, FLAG_END, FLAG_CANCEL, FLAG_OPEN | FLAG_CREDIT)
        or (flags & FLAG_PAYLOAD_HEADERS and not opening)
        or (opening and not server)
        or (kind == FLAG_CANCEL and not server)
    ):
        raise BadFlags(flags)
    if kind and frame.compression > 1:
        raise BadCompression(frame.compression)
    streams = conn.streams
    stream = streams.get(frame.session)
    if isinstance(frame, OversizedFrame):
        if kind or stream is None:
            raise StreamError("size", frame.size, "stream control frame above the maximum")
        return StreamOversized(stream, frame.size)
    assert isinstance(frame, Frame)
    if stream is None:
        # Only a grant or a cancel can be stale (sent by a client before it saw the
        # server's END); anything else on a session with no stream (a unary call's, or
        # none) is a peer that does not speak streams: the bits are unknown to it.
        if not server or not (opening or (kind in (FLAG_CREDIT, FLAG_CANCEL) and conn.streamed)):
            raise BadFlags(flags)
        if not opening:
            return StreamIgnored(frame.session)
        conn.streamed = True
        body = frame.body
        if body.nbytes < CREDIT.size:
            raise StreamError("size", body.nbytes, "an OPEN frame ends with 8 bytes of credit")
        stream = Stream(
            frame.session,
            frame.meta,
            True,
            conn.stream_window[0],
            conn.stream_window[1],
        )
        stream.send_messages, stream.send_bytes = CREDIT.unpack_from(body, body.nbytes - 8)
        streams[frame.session] = stream
        event: StreamEvent = StreamOpened(stream, frame)
        event.body = body[: body.nbytes - 8]
        return event
    if opening:
        raise StreamError("session", frame.session, "OPEN on a session whose stream is open")
    if kind == 0:
        if stream.received_close:
            raise StreamError("bitflags", flags, "stream message after the peer's END")
        if stream.recv_messages < 1 or stream.recv_bytes <= 0:
            raise StreamError("credit", stream.recv_messages, "stream message beyond credit")
        stream.recv_messages -= 1
        stream.recv_bytes -= frame.body.nbytes
        return StreamMessage(stream, frame)
    if kind == FLAG_CREDIT:
        if frame.body.nbytes != CREDIT.size:
            raise StreamError("size", frame.body.nbytes, "a CREDIT body is 8 bytes")
        messages, nbytes = CREDIT.unpack(frame.body)
        stream.send_messages += messages
        stream.send_bytes += nbytes
        return StreamCredit(stream, frame)
    if stream.received_close and not (kind == FLAG_CANCEL and server):
        raise StreamError("bitflags", flags, "stream closed twice by the peer")
    stream.received_close = True
    if kind == FLAG_END:
        if not server and not stream.sent_close:
            # The server ended first: close our side too (it waits for it), and forget.
            _queue(conn, stream, FLAG_CANCEL, b"server ended the stream")
            stream.sent_close = True
        event = StreamEnded(stream, frame)
    else:
        event = StreamCancelled(stream, frame)
    if stream.done:
        _forget(conn, stream)
    return event


# ---------------------------------------------------------------------------- sending


def open_stream(
    conn: ClientProtocol,
    session: int,
    wire_id: int,
    owner: Any,
    window_messages: int = DEFAULT_WINDOW_MESSAGES,
    window_bytes: int = DEFAULT_WINDOW_BYTES,
    prefix: bytes = b"",
) -> Stream:
    """Client: start a stream on ``session`` (allocated to ``owner`` with
    ``start_call``) and queue its OPEN frame (``prefix``: payload headers)."""
    stream = Stream(session, wire_id, False, window_messages, window_bytes, owner)
    conn.streams[session] = stream
    credit = CREDIT.pack(window_messages, window_bytes)
    conn._send(session, wire_id, credit, 0, FLAG_STREAM | FLAG_OPEN | FLAG_CREDIT, prefix)
    return stream


def accept(conn: _Connection, stream: Stream) -> None:
    """Server: serve ``stream`` (just opened): grant the client its window. A stream
    refused instead gets only its ``END`` (``send_end`` with the status)."""
    _queue(conn, stream, FLAG_CREDIT, CREDIT.pack(stream.window_messages, stream.window_bytes))


def send_message(conn: _Connection, stream: Stream, body: Payload, compression: int = 0) -> int:
    """Queue one message (the caller checked ``stream.can_send``); its size on the wire."""
    if not stream.can_send:
        if stream.sent_close:
            raise RuntimeError("send on a stream already closed for sending")
        raise RuntimeError("send without credit (await credit first)")
    meta = OK_STATUS if stream.server else stream.wire_id
    size = conn._send(stream.session, meta, body, compression, FLAG_STREAM)
    stream.send_messages -= 1
    stream.send_bytes -= size
    return size


def send_end(conn: _Connection, stream: Stream, status: int = OK_STATUS, message: str = "") -> None:
    """Half-close our side. The server's END carries the final ``status`` and message."""
    if stream.sent_close:
        return
    if stream.server:
        body = message.encode("utf-8", "replace") or b"OK"
        _queue(conn, stream, FLAG_END, body, status)
    else:
        _queue(conn, stream, FLAG_END, _CLIENT_END_BODY)
    stream.sent_close = True
    if stream.done:
        _forget(conn, stream)


def send_cancel(conn: ClientProtocol, stream: Stream, reason: str = "cancelled") -> None:
    """Client: give the stream up; it is forgotten once the server's END arrives."""
    if stream.received_close:
        return  # the server already ended it (and our side was closed for it)
    _queue(conn, stream, FLAG_CANCEL, reason.encode("utf-8", "replace") or b"cancelled")
    stream.sent_close = True


def consumed(conn: _Connection, stream: Stream, size: int) -> bool:
    """The application took a message of ``size`` bytes: grant credit back once half
    the window is consumed. True if a CREDIT frame was queued."""
    stream.consumed_messages += 1
    stream.consumed_bytes += size
    if (
        stream.consumed_messages * 2 < stream.window_messages
        and stream.consumed_bytes * 2 < stream.window_bytes
    ) or stream.received_close:
        return False
    messages = min(stream.consumed_messages, _MAX_GRANT)
    nbytes = min(stream.consumed_bytes, _MAX_GRANT)
    stream.consumed_messages = stream.consumed_bytes = 0
    stream.recv_messages += messages
    stream.recv_bytes += nbytes
    _queue(conn, stream, FLAG_CREDIT, CREDIT.pack(messages, nbytes))
    return True


def fail_all(conn: _Connection) -> list[Stream]:
    """Every stream on a connection that is gone (all forgotten)."""
    streams = list(conn.streams.values())
    conn.streams.clear()
    return streams


def _queue(conn: _Connection, stream: Stream, kind: int, body: bytes, meta: int = 0) -> None:
    if not meta:
        meta = OK_STATUS if stream.server else stream.wire_id
    conn._send(stream.session, meta, body, 0, FLAG_STREAM | kind)


def _forget(conn: _Connection, stream: Stream) -> None:
    if conn.streams.get(stream.session) is stream:
        del conn.streams[stream.session]
    if not stream.server:
        conn.sessions.release(stream.session, stream.owner)  # type: ignore[attr-defined]


__all__ = [
    "CANCELLED_STATUS",
    "DEFAULT_WINDOW_BYTES",
    "DEFAULT_WINDOW_MESSAGES",
    "FLAG_CANCEL",
    "FLAG_CREDIT",
    "FLAG_END",
    "FLAG_OPEN",
    "FLAG_STREAM",
    "AnyStreamEvent",
    "Stream",
    "StreamCancelled",
    "StreamCredit",
    "StreamEnded",
    "StreamError",
    "StreamEvent",
    "StreamIgnored",
    "StreamMessage",
    "StreamOpened",
    "StreamOversized",
    "accept",
    "consumed",
    "fail_all",
    "open_stream",
    "receive",
    "send_cancel",
    "send_end",
    "send_message",
]
