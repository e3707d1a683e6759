"""The asyncio adapter: one ``BufferedProtocol`` around a sans-IO ``smf.protocol``
connection, for servers and clients alike. It alone writes to the transport.

The kernel reads straight into the protocol's receive buffer (``get_buffer`` /
``buffer_updated``); events are pulled one at a time, so a subclass can stop pulling
(backpressure) without dropping bytes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .protocol import JOIN_LIMIT, ClientProtocol, ProtocolError, ServerProtocol

__all__ = ["GATHER_LIMIT", "JOIN_LIMIT", "Connection"]

GATHER_LIMIT = 64 * 1024
"""Bytes queued inside one read that are written at once, before the read's last event
is handled: the transport's write-side pause then stops further reading, as it does for
replies written one by one."""


class Connection(asyncio.BufferedProtocol):
    """One connection: reading, writing, stall detection and read pausing.

    Subclasses implement ``event_received`` (one request or response, or an oversized
    one) and ``protocol_error``, and may override ``can_pull`` to apply backpressure:
    while it returns False, no further events are pulled and the socket is not read;
    call ``resume_pulling`` when it may turn True again. ``can_pull`` is asked only
    while ``in_flight`` holds a task or writing is paused (else it always pulls).

    **When bytes leave** (the one coalescing rule, for replies and requests alike):
    whatever is queued on the protocol is handed to the transport, in one ``write`` or
    ``writelines`` (one ``writev`` on uvloop), by ``queued()``:

    - inside a read (events being handled), when no further frame's header is buffered
      (this was the read's last event) or ``GATHER_LIMIT`` bytes are queued; the rest
      of a read's output leaves when the read ends;
    - outside a read, at once if ``alone()`` says no other work of this connection runs
      that could queue more in this loop iteration (the server: no other handler in
      flight; the client: no other call), else at the end of the iteration.

    Views of received bodies passed to ``release_after_flush`` are released once what
    was queued with them has been handed to the transport.
    """

    def __init__(self, protocol: ServerProtocol | ClientProtocol, body_timeout: float | None):
        self.protocol = protocol
        self.body_timeout = body_timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.closed = False
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
        self._pulling = False  # inside _pull: what is queued leaves by the rule above
        # Straight to the protocol: uvloop looks this up once per connection.
        self.get_buffer = protocol.get_buffer  # type: ignore[method-assign]
        self._gated = type(self).can_pull is not Connection.can_pull
        self._after_pull_hooked = type(self)._after_pull is not Connection._after_pull
        self._buffers_seen = -1  # protocol.buffers_allocated when _after_pull last ran

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
        return self.protocol.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        # No clock read here: idleness is judged by whether frames arrive between two
        # sweeps (``events_seen``), which costs the read path nothing.
        self.protocol.buffer_updated(nbytes)
        self._pull()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.protocol.close()
        if self._stall_handle is not None:
            self._stall_handle.cancel()
            self._stall_handle = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.protocol.data_to_send()  # dropped: nobody will read it
        self._release_views()
        self._wake_drainers()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drainers()

    # ------------------------------------------------------------------ hooks

    def event_received(self, event: Any) -> None:
        raise NotImplementedError

    def protocol_error(self, event: ProtocolError) -> None:
        raise NotImplementedError

    def can_pull(self) -> bool:
        return True

    def alone(self) -> bool:
        """No other work of this connection could queue output in this iteration."""
        return not self.in_flight

    def stalled(self) -> None:
        """The peer began a frame and did not finish it within ``body_timeout``."""
        self.close()

    def stalled_while_paused(self) -> bool:
        """Whether a connection we paused still counts as stalled mid-frame (it holds
        memory the pause itself cannot free)."""
        return False

    def _after_pull(self) -> None:
        """Called after a pull when the protocol has taken a new receive buffer since
        the last call (subclasses account for the memory it holds: ``allocated`` changes
        only then)."""

    # ------------------------------------------------------------------ reading

    def _pull(self) -> None:
        if self._pulling:
            return  # re-entered (a reply resumed pulling): the outer loop carries on
        self._pulling = True
        protocol = self.protocol
        gated = self._gated
        try:
            while not self.closed:
                if gated and (self.in_flight or self._write_paused) and not self.can_pull():
                    self._pause_reading()
                    break
                event = protocol.next_event()
                if event is None:  # the protocol ran dry: read again
                    self._ran_dry()
                    break
                if type(event) is ProtocolError:
                    self.protocol_error(event)
                    break
                self.events_seen += 1
                self.event_received(event)
                if (
                    protocol.idle
                    and not self._reading_paused
                    and not (gated and (self.in_flight or self._write_paused))
                ):
                    # Nothing buffered, nothing paused, nothing that could hold us back:
                    # done without asking the protocol again (once per read).
                    break
            if self._after_pull_hooked and protocol.buffers_allocated != self._buffers_seen:
                self._buffers_seen = protocol.buffers_allocated
                self._after_pull()
        finally:
            self._pulling = False
            if protocol.bytes_to_send:
                self.flush()

    def _ran_dry(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        if self.body_timeout is not None and self._stall_handle is None and self.protocol.mid_frame:
            self._stall_handle = self.loop.call_later(
                self.body_timeout, self._check_stall, self.events_seen
            )

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
        if self.closed or not self.protocol.mid_frame:
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

    def queued(self, now: bool = False) -> None:
        """Something was queued on the protocol: write it by the rule in the class doc
        (``now``: at once). The one place bytes are handed to the transport."""
        protocol = self.protocol
        if not now:
            if self._pulling:
                if (
                    protocol.more_buffered
                    and protocol.bytes_to_send < GATHER_LIMIT
                    and not self._reading_paused
                ):
                    return  # the read's later events add to it
            elif not self.alone():
                if self._flush_handle is None:
                    self._flush_handle = self.loop.call_soon(self.flush)
                return
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        out = protocol.data_to_send()
        if out and not self.closed and self.transport is not None:
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                self.transport.writelines(out)
        if self._release:
            self._release_views()

    def flush(self) -> None:
        """Hand everything queued to the transport now."""
        self.queued(True)

    def release_after_flush(self, view: memoryview) -> None:
        """Release ``view`` once what is queued now has been handed to the transport
        (at once when nothing is queued)."""
        if self.protocol.bytes_to_send and not self.closed:
            self._release.append(view)
            return
        try:  # noqa: SIM105 - contextlib.suppress costs ~1 us per view here
            view.release()
        except BufferError:
            pass  # the transport still holds it for a pending write (see _release_views)

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

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self._write_paused and not self.closed:
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def close(self) -> None:
        """Write what is queued, then close."""
        if self.transport is not None and not self.transport.is_closing():
            self.flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def extra(self, name: str) -> Any:
        return self.transport.get_extra_info(name) if self.transport is not None else None
