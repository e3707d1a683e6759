"""The smf wire format, sans-IO: headers, checksums, statuses and the frame decoder.

Nothing here touches a socket or an event loop. Bytes go in (``get_buffer`` /
``buffer_updated`` for zero-copy reads, or ``receive_data``), events come out
(``next_event``).

Body views and their lifetime
-----------------------------
A ``Frame.body`` is a ``memoryview`` slice of the decoder's own receive buffer: the
kernel wrote the bytes there and nobody copied them since. The decoder never
overwrites bytes under a live view: before it reuses a buffer it checks (through
``bytearray``'s export count, which the interpreter keeps exactly) that no view into
it is alive; otherwise it moves on to a fresh buffer and the old one lives as long
as its last view. So a view stays valid for as long as you hold it, and holding one
pins its whole receive buffer (``buffer_size`` bytes): copy with ``bytes(view)`` what
you keep past the call. The server releases a request's view when its handler
returns, so a handler that stashes the request and reads it later fails loudly
(``ValueError: operation forbidden on released memoryview object``) instead of
reading someone else's bytes.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any, Final, NoReturn, TypeAlias

import xxhash

from .errors import (
    BadCompression,
    BadFlags,
    BadMeta,
    BadSize,
    ChecksumMismatch,
    FrameError,
    FrameTooLarge,
)

HEADER: Final = struct.Struct("<bBHIII")
HEADER_SIZE: Final = HEADER.size  # 16
MAX_BODY_SIZE: Final = 0xFFFFFFFF
MAX_SESSION: Final = 0xFFFF

FLAG_PAYLOAD_HEADERS: Final = 0x01
_KNOWN_FLAGS: Final = FLAG_PAYLOAD_HEADERS
STREAM_FLAGS: Final = 0x3E
"""The bits of stream frames (``smf.streams``): accepted only by decoders built with
``known_flags`` including them (our own peers), and by ``encode_header``."""
_ENCODABLE: Final = FLAG_PAYLOAD_HEADERS | STREAM_FLAGS

Payload: TypeAlias = bytes | bytearray | memoryview
"""A finished FlatBuffer (or any body) ready to send; sent as is, never copied."""


def payload_size(body: Payload) -> int:
    """Bytes in ``body`` (``len`` of a memoryview counts items, not bytes)."""
    return body.nbytes if type(body) is memoryview else len(body)


class Compression(IntEnum):
    NONE = 0
    DISABLED = 1  # treated as NONE on receipt; tells outgoing filters not to compress
    ZSTD = 2
    LZ4 = 3


class Status(IntEnum):
    OK = 200
    BAD_REQUEST = 400
    NOT_FOUND = 404
    DEADLINE_EXCEEDED = 408
    PAYLOAD_TOO_LARGE = 413
    INTERNAL_ERROR = 500
    NOT_IMPLEMENTED = 501
    UNAVAILABLE = 503
    UNSUPPORTED = 505


_xxh64 = xxhash.xxh64_intdigest


def checksum(body: bytes | bytearray | memoryview) -> int:
    """The header checksum of ``body``: ``xxhash64(body, seed=0) & 0xFFFFFFFF``."""
    return _xxh64(body) & 0xFFFFFFFF


def checksum_parts(*parts: bytes | bytearray | memoryview) -> int:
    """The checksum of the concatenation of ``parts``, without concatenating them."""
    h = xxhash.xxh64()
    for part in parts:
        h.update(part)
    return h.intdigest() & 0xFFFFFFFF


def encode_header(
    session: int,
    meta: int,
    body: Payload | tuple[Payload, ...],
    compression: int = Compression.NONE,
    flags: int = 0,
) -> bytes:
    """The 16-byte header for ``body``; send it followed by ``body`` itself (no join
    needed). ``body`` may be a tuple of parts sent back to back (payload headers, then
    the message): size and checksum cover them all, nothing is joined. The one way
    headers are packed; it refuses what a decoder would refuse."""
    kind = type(body)
    if kind is tuple:
        size = sum(map(payload_size, body))  # type: ignore[arg-type]
        csum = checksum_parts(*body)
    else:
        size = body.nbytes if kind is memoryview else len(body)  # type: ignore[union-attr]
        csum = _xxh64(body) & 0xFFFFFFFF  # type: ignore[arg-type]
    # One test for the usual case; _refuse names the fault.
    if not size or size > MAX_BODY_SIZE or not meta or compression & ~3 or flags & ~_ENCODABLE:
        _refuse(size, meta, compression, flags)
    return HEADER.pack(compression, flags, session, size, csum, meta)


def _refuse(size: int, meta: int, compression: int, flags: int) -> NoReturn:
    """Raise the error that names what a header with these fields gets wrong."""
    if not size:
        raise BadSize(0)
    if size > MAX_BODY_SIZE:
        raise FrameTooLarge(size, MAX_BODY_SIZE)
    if not meta:
        raise BadMeta(meta)
    if compression & ~3:
        raise BadCompression(compression)
    raise BadFlags(flags)


def encode_frame(
    session: int,
    meta: int,
    body: Payload,
    compression: int = Compression.NONE,
    flags: int = 0,
) -> bytes:
    """Header and body as one ``bytes`` (copies the body: for tests and small frames)."""
    return encode_header(session, meta, body, compression, flags) + bytes(body)


class Frame:
    """One complete frame. ``body`` is a view into the decoder's buffer (see module doc)."""

    __slots__ = ("body", "compression", "flags", "meta", "session")

    def __init__(
        self, compression: int, flags: int, session: int, meta: int, body: memoryview
    ) -> None:
        self.compression = compression
        self.flags = flags
        self.session = session
        self.meta = meta
        self.body = body

    @property
    def size(self) -> int:
        return self.body.nbytes

    def __repr__(self) -> str:
        return (
            f"Frame(session={self.session}, meta={self.meta}, size={self.size}, "
            f"compression={self.compression}, flags={self.flags})"
        )


_new_object: Final = object.__new__


class OversizedFrame:
    """A frame whose size is above the decoder's maximum. Its body is being skipped as it
    streams in (never buffered); the connection stays usable. Answer it with 413."""

    __slots__ = ("compression", "flags", "meta", "session", "size")

    def __init__(self, compression: int, flags: int, session: int, meta: int, size: int) -> None:
        self.compression = compression
        self.flags = flags
        self.session = session
        self.meta = meta
        self.size = size

    def __repr__(self) -> str:
        return f"OversizedFrame(session={self.session}, meta={self.meta}, size={self.size})"


Event = Frame | OversizedFrame


class FrameDecoder:
    """Turns a byte stream into frames, validating every header and checksum.

    Feed bytes either zero-copy (``buf = get_buffer(n)``; write into ``buf``;
    ``buffer_updated(k)``) or by copy (``receive_data(data)``), then call
    ``next_event()`` until it returns ``None``. After a ``FrameError`` the stream
    cannot be resynchronised: every later call raises the same error.

    ``max_body_size``: frames above it become ``OversizedFrame`` events and their
    bodies are discarded as they arrive (``skip_oversized=True``) or raise
    ``FrameTooLarge`` (``skip_oversized=False``).

    Subclasses (``smf.protocol``'s connections) turn frames into their own events
    without a call around ``next_event``: a frame with any of ``_divert_flags`` is
    handed to ``_diverted`` (streams), a ``FrameError`` to ``_frame_error``, and once
    ``_halted`` is set every call returns ``_when_halted()``. A client's connection
    sets ``_calls`` (what waits on each session): a frame then takes its session's
    entry as ``call`` (its event type has that slot), which frees the session.
    """

    _divert_flags = 0
    _calls: dict[int, Any] | None = None

    def __init__(
        self,
        max_body_size: int = 64 * 1024 * 1024,
        *,
        buffer_size: int = 256 * 1024,
        skip_oversized: bool = True,
        frame_type: type[Frame] = Frame,
        oversized_type: type[OversizedFrame] = OversizedFrame,
        known_flags: int = _KNOWN_FLAGS,
    ) -> None:
        if buffer_size < 2 * HEADER_SIZE:
            raise ValueError(f"buffer_size must be at least {2 * HEADER_SIZE}")
        self.max_body_size = max_body_size
        self.buffer_size = buffer_size
        self.skip_oversized = skip_oversized
        # What next_event builds (subclasses of Frame/OversizedFrame: a protocol's own
        # event types, built here at no extra cost).
        self._frame_type = frame_type
        self._oversized_type = oversized_type
        self._unknown_flags = ~known_flags & 0xFF
        # Allocated on first read: an idle connection costs no receive buffer.
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._start = 0  # first unconsumed byte
        self._end = 0  # first free byte
        self._skip = 0  # bytes of an oversized body still to discard
        self._scratch: bytearray | None = None  # where skipped bytes land
        self._into_scratch = False  # did the last get_buffer hand out the scratch?
        self._error: FrameError | None = None
        self._halted = False  # after a FrameError (or a subclass's close)
        self.buffers_allocated = 0  # buffers taken: first, grown, or because views pinned one

    # ------------------------------------------------------------------ input

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A writable view for the next read. Pass the count written to ``buffer_updated``."""
        if self._skip and self._start == self._end:
            # Nothing is buffered and the next bytes belong to a body we discard.
            if self._scratch is None:
                self._scratch = bytearray(min(self.buffer_size, 64 * 1024))
            self._into_scratch = True
            return memoryview(self._scratch)[: min(self._skip, len(self._scratch))]
        self._into_scratch = False
        end = self._end
        free = len(self._buf) - end
        if self._start == end and free >= self.buffer_size // 8:
            return self._view[end:]  # between frames with room to spare: the usual case
        need, in_body = self._bytes_needed()
        # Mid-body, room is made only if the rest of the frame does not fit (moving a
        # large partial body would copy it); between frames, keep reads from shrinking.
        if free < need or (not in_body and free < self.buffer_size // 8):
            self._make_room(need)
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        end = self._end + nbytes
        if not self._into_scratch and nbytes >= 0 and end <= len(self._buf):
            self._end = end  # the usual case, once per read
            return
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        if self._into_scratch:
            self._into_scratch = False
            self._skip -= min(nbytes, self._skip)
            return
        if self._end + nbytes > len(self._buf):
            raise ValueError("buffer_updated beyond the buffer handed out by get_buffer")
        self._end += nbytes

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Copying input, for tests and for transports without buffered reads."""
        mv = memoryview(data).cast("B")
        while mv:
            buf = self.get_buffer(len(mv))
            n = min(len(buf), len(mv))
            buf[:n] = mv[:n]
            buf.release()  # so this buffer can be reused by the next get_buffer
            self.buffer_updated(n)
            mv = mv[n:]

    # ------------------------------------------------------------------ output

    def next_event(self) -> Event | None:
        """The next complete frame (or oversized header), ``None`` until more bytes arrive."""
        if self._halted:
            return self._when_halted()
        try:
            start = self._start
            avail = self._end - start
            if self._skip:
                n = min(self._skip, avail)
                self._skip -= n
                self._start = start = start + n
                avail -= n
                if self._skip:
                    return None
            if avail < HEADER_SIZE:
                return None
            compression, flags, session, size, csum, meta = HEADER.unpack_from(self._buf, start)
            # One test for the four header faults (compression & ~3 is also non-zero for a
            # negative byte); _bad_header names which.
            if compression & ~3 or flags & self._unknown_flags or not size or not meta:
                self._bad_header(compression, flags, size, meta)
            if size > self.max_body_size:
                if not self.skip_oversized:
                    self._fail(FrameTooLarge(size, self.max_body_size))
                self._start = start + HEADER_SIZE
                self._skip = size
                oversized = self._oversized_type(compression, flags, session, meta, size)
                if flags & self._divert_flags:
                    return self._diverted(oversized)
                if self._calls is not None:
                    oversized.call = self._calls.pop(session, None)  # type: ignore[attr-defined]
                return oversized
            end = start + HEADER_SIZE + size
            if end > self._end:
                return None
            body = self._view[start + HEADER_SIZE : end]
            actual = _xxh64(body) & 0xFFFFFFFF
            if actual != csum:
                body.release()
                self._fail(ChecksumMismatch(csum, actual))
            self._start = end
            # Frame.__init__'s work without its Python frame (one per request and reply):
            frame: Frame = _new_object(self._frame_type)
            frame.compression = compression
            frame.flags = flags
            frame.session = session
            frame.meta = meta
            frame.body = body
            if flags & self._divert_flags:
                return self._diverted(frame)
            if self._calls is not None:
                frame.call = self._calls.pop(session, None)  # type: ignore[attr-defined]
            return frame
        except FrameError as error:
            return self._frame_error(error)

    def _diverted(self, event: Event) -> Event | None:
        """A frame with one of ``_divert_flags`` (none here)."""
        return event

    def _frame_error(self, error: FrameError) -> Event | None:
        """What ``next_event`` returns for a broken stream: here, it raises."""
        raise error

    def _when_halted(self) -> Event | None:
        """What ``next_event`` returns once halted: here, the same error again."""
        assert self._error is not None
        raise self._error

    @property
    def mid_frame(self) -> bool:
        """True while part of a frame has arrived but not all of it (for stall timeouts)."""
        return self._start != self._end or self._skip > 0

    @property
    def idle(self) -> bool:
        """Nothing buffered and nothing being skipped: a read now starts a new frame."""
        return self._start == self._end and not self._skip

    @property
    def header_buffered(self) -> bool:
        """A further frame's header has arrived (``next_event`` has more to say)."""
        return self._end - self._start >= HEADER_SIZE

    @property
    def allocated(self) -> int:
        """Bytes of the current receive buffer (what the decoder itself holds)."""
        return len(self._buf)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return self._end - self._start

    # ------------------------------------------------------------------ internals

    def _bad_header(self, compression: int, flags: int, size: int, meta: int) -> NoReturn:
        if not 0 <= compression <= 3:
            self._fail(BadCompression(compression))
        if flags & self._unknown_flags:
            self._fail(BadFlags(flags))
        if size == 0:
            self._fail(BadSize(size))
        self._fail(BadMeta(meta))

    def _fail(self, error: FrameError) -> NoReturn:
        self._error = error
        self._halted = True
        raise error

    def _bytes_needed(self) -> tuple[int, bool]:
        """Free bytes needed to finish the frame in progress (at least one header), and
        whether that frame's header has arrived (we are inside its body)."""
        avail = self._end - self._start
        if avail >= HEADER_SIZE:
            size: int = HEADER.unpack_from(self._buf, self._start)[3]
            if size <= self.max_body_size and HEADER_SIZE + size > avail:
                return HEADER_SIZE + size - avail, True
            return 1, False
        return HEADER_SIZE - avail, False

    def _make_room(self, need: int) -> None:
        pending = self._end - self._start
        # The header's size is the peer's claim: 16 bytes must not buy a 64 MiB
        # allocation. A body of up to 4 buffers (1 MiB by default) gets its room at
        # once (charged to the server's budget); beyond that the
        # buffer doubles with the bytes actually received, so a large body is copied
        # once more in part as it grows (frames above 4 x buffer_size only).
        room = max(2 * pending, 4 * self.buffer_size + HEADER_SIZE)
        capacity = max(self.buffer_size, min(pending + max(need, self.buffer_size // 8), room))
        old = self._buf
        self._view.release()
        try:
            # Resizing a bytearray fails while any view of it is alive: exactly the test
            # for "no frame body handed out from this buffer is still in use".
            old.append(0)
            del old[-1]
            # Reuse it if it fits, but drop an outsized one (grown for a large frame)
            # once that frame is done, rather than holding it forever.
            reusable = capacity <= len(old) <= max(capacity, 4 * self.buffer_size + HEADER_SIZE)
        except BufferError:
            reusable = False
        if reusable:
            old[:pending] = old[self._start : self._end]
            self._buf = old
        else:
            new = bytearray(capacity)
            new[:pending] = old[self._start : self._end]
            self._buf = new
            self.buffers_allocated += 1
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = pending
