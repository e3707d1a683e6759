"""The asyncio adapter shared by server and client connections.

A thin ``BufferedProtocol`` around ``FrameDecoder``: the kernel reads straight into
the decoder's buffer (``get_buffer``/``buffer_updated``), frames are pulled one at a
time so a subclass can stop pulling (backpressure) without dropping bytes, and
outgoing frames queued in one event-loop iteration leave in one ``writelines``
(one ``writev`` on uvloop). Frames queued while a read is processed leave when it
ends.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .errors import FrameError
from .router import Payload
from .wire import Event, FrameDecoder

JOIN_LIMIT = 4096
"""Frames with a body up to this size are written as one ``bytes`` (header + body, a
copy of at most this much) rather than as two buffers: uvloop sends a single buffer with
one ``send``, while two cost a ``writev`` context and a memoryview cast per non-bytes
buffer. Larger bodies are never copied."""


class FramedConnection(asyncio.BufferedProtocol):
    """Base protocol: decoding, write coalescing, stall detection and read pausing.

    Subclasses implement ``event_received`` (one frame or oversized header),
    ``frame_error`` (the peer broke the protocol) and may override ``can_pull`` to
    apply backpressure: while it returns False, no further events are pulled and the
    socket is not read; call ``resume_pulling`` when it may turn True again.
    ``can_pull`` is asked only while the connection holds back something: a task in
    ``in_flight`` or paused writing. With neither, it always pulls (so the common case,
    a read whose requests are all answered inline, costs no call).
    """

    def __init__(self, decoder: FrameDecoder, body_timeout: float | None) -> None:
        self.decoder = decoder
        self.body_timeout = body_timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.closed = False
        self._out: list[Payload] = []
        self._release: list[memoryview] = []
        self._flush_handle: asyncio.Handle | None = None
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._stall_handle: asyncio.TimerHandle | None = None
        # Work this connection started that has not ended (the server's waiting
        # handlers); while any is, can_pull is asked before each event.
        self.in_flight: set[asyncio.Task[None]] = set()
        self.events_seen = 0  # frames completed; the stall and idle timers watch it move
        self._pulling = False  # inside _pull: what is sent leaves when it ends
        self._gathered = 0  # bytes queued inside the current pull, not yet written
        # Straight to the decoder: uvloop looks this up once per connection, and the
        # wrapper cost a Python call per read.
        self.get_buffer = decoder.get_buffer  # type: ignore[method-assign]
        # A subclass that never holds back (the client) costs no can_pull call per event.
        # (A flag, not the bound method: that would make each connection a cycle, freed
        # only by the garbage collector, receive buffers and all.)
        self._gated = type(self).can_pull is not FramedConnection.can_pull
        self._after_pull_hooked = type(self)._after_pull is not FramedConnection._after_pull

    # ------------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but have its API.
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"{peer[0]}:{peer[1]}" if ":" not in peer[0] else f"[{peer[0]}]:{peer[1]}"
        elif peer:
            self.peer = str(peer)
        else:
            sock = transport.get_extra_info("sockname")
            self.peer = f"unix:{sock}" if sock else "unix"

    def get_buffer(self, sizehint: int) -> memoryview:  # replaced per instance, see __init__
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        # No clock read here: idleness is judged by whether frames arrive between two
        # sweeps (``events_seen``), which costs the read path nothing.
        decoder = self.decoder
        end = decoder._end + nbytes
        if decoder._into_scratch or end > len(decoder._buf) or nbytes < 0:
            decoder.buffer_updated(nbytes)  # skipped bytes, or a misuse it reports
        else:  # FrameDecoder.buffer_updated's usual case, inline: once per read
            decoder._end = end
        self._pull()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._stall_handle is not None:
            self._stall_handle.cancel()
            self._stall_handle = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._out.clear()
        self._release_views()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # ------------------------------------------------------------------ hooks

    def event_received(self, event: Event) -> None:
        raise NotImplementedError

    def frame_error(self, error: FrameError) -> None:
        raise NotImplementedError

    def can_pull(self) -> bool:
        return True

    def stalled(self) -> None:
        """The peer began a frame and did not finish it within ``body_timeout``."""
        self.close()

    def stalled_while_paused(self) -> bool:
        """Whether a connection we paused still counts as stalled mid-frame (it holds
        memory the pause itself cannot free)."""
        return False

    # ------------------------------------------------------------------ reading

    def _pull(self) -> None:
        # Frames taken in one pull are often answered within it (handlers that finish
        # without waiting): their replies leave together, in one write at the end.
        if self._pulling:
            return  # re-entered (a reply resumed pulling): the outer loop carries on
        self._pulling = True
        self._gathered = 0
        decoder = self.decoder
        gated = self._gated
        try:
            # Events go to event_received while can_pull allows; one loop, no helper
            # calls, as this runs for every read.
            while not self.closed:
                if gated and (self.in_flight or self._write_paused) and not self.can_pull():
                    self._pause_reading()
                    break
                try:
                    event = decoder.next_event()
                except FrameError as error:
                    self.frame_error(error)
                    break
                if event is None:  # the decoder ran dry: read again
                    if self._reading_paused:
                        self._reading_paused = False
                        assert self.transport is not None
                        self.transport.resume_reading()
                    if (
                        self.body_timeout is not None
                        and self._stall_handle is None
                        and (decoder._start != decoder._end or decoder._skip)  # mid_frame
                    ):
                        self._stall_handle = self.loop.call_later(
                            self.body_timeout, self._check_stall, self.events_seen
                        )
                    break
                self.events_seen += 1
                self.event_received(event)
                if (
                    decoder._start == decoder._end
                    and not decoder._skip
                    and not self._reading_paused
                    and not (gated and (self.in_flight or self._write_paused))
                ):
                    # Nothing buffered, nothing paused, nothing that could hold us back:
                    # done without asking the decoder (or can_pull) again. For a client
                    # this is between a reply and the caller resuming; for a server,
                    # between a reply's write and the next read.
                    break
            if self._after_pull_hooked:  # (not called otherwise: it is a Python call)
                self._after_pull()
        finally:
            self._pulling = False
            if self._out:
                self.flush_now()

    def _after_pull(self) -> None:
        """Called after every pull (subclasses account for what stays buffered)."""

    def resume_pulling(self) -> None:
        """Backpressure lifted: pull what is buffered and read the socket again."""
        if not self.closed:
            self._pull()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _check_stall(self, events_at_arming: int) -> None:
        self._stall_handle = None
        if self.closed or not self.decoder.mid_frame:
            return
        if self.events_seen == events_at_arming and (
            not self._reading_paused or self.stalled_while_paused()
        ):
            self.stalled()
            return
        # Progress was made, or we are the ones not reading: watch the next frame.
        assert self.body_timeout is not None
        self._stall_handle = self.loop.call_later(
            self.body_timeout, self._check_stall, self.events_seen
        )

    # ------------------------------------------------------------------ writing

    def send(self, header: bytes, body: Payload) -> None:
        """Queue one frame; everything queued in this loop iteration leaves together."""
        if self.closed:
            return
        out = self._out
        out.append(header)
        out.append(body)
        if self._flush_handle is None and not self._pulling:
            self._flush_handle = self.loop.call_soon(self._flush)

    def send_parts(self, header: bytes, parts: tuple[Payload, ...]) -> None:
        """Queue one frame whose body is ``parts`` back to back (no join, no copy)."""
        if self.closed:
            return
        self._out.append(header)
        self._out.extend(parts)
        if self._flush_handle is None and not self._pulling:
            self._flush_handle = self.loop.call_soon(self._flush)

    def flush_now(self) -> None:
        """Write what is queued now instead of at the next loop iteration."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if self._out or self._release:
            self._flush()

    def _flush(self) -> None:
        self._flush_handle = None
        if self.closed or self.transport is None:
            return
        out = self._out
        if out:
            self._out = []
            self.transport.writelines(out)
        if self._release:
            self._release_views()

    def release_after_flush(self, view: memoryview) -> None:
        """Release ``view`` once what is queued now has been handed to the transport
        (at once when nothing is queued)."""
        self._release.append(view)
        if self.closed or not self._out:
            self._release_views()

    def _release_views(self) -> None:
        views = self._release
        self._release = []
        for view in views:
            try:  # noqa: SIM105 - contextlib.suppress costs ~1 us per view here
                view.release()
            except BufferError:
                # The transport still holds it for a pending write; it stays valid
                # (nothing reuses its memory while any view is alive).
                pass

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self._write_paused and not self.closed:
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def close(self) -> None:
        """Flush what is queued, then close."""
        if self.transport is not None and not self.transport.is_closing():
            # Replies gathered inside a read have no flush handle: flush regardless.
            self.flush_now()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def extra(self, name: str) -> Any:
        return self.transport.get_extra_info(name) if self.transport is not None else None
