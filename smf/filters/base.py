"""The filter interface and the message it sees."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..wire import Payload, payload_size


class Message:
    """One request or response as filters see it: header fields and the body.

    ``meta`` is the wire id of a request or the status of a response. ``body`` is the
    message as sent on the wire (payload headers included when ``flags`` bit 0 is set).
    ``accept``: on a server's reply, the compressions the caller offered (its request's
    own, and any in its ``smf-accept-compression`` header); a reply must not be
    compressed with any other.
    """

    __slots__ = ("accept", "body", "compression", "flags", "meta", "session")

    def __init__(
        self,
        compression: int,
        flags: int,
        session: int,
        meta: int,
        body: Payload,
        accept: frozenset[int] = frozenset(),
    ) -> None:
        self.compression = compression
        self.flags = flags
        self.session = session
        self.meta = meta
        self.body = body
        self.accept = accept

    def __repr__(self) -> str:
        size = payload_size(self.body)
        return (
            f"Message(session={self.session}, meta={self.meta}, size={size}, "
            f"compression={self.compression}, flags={self.flags})"
        )


class FilterSide(Protocol):
    """What a filter may know and do about the connection it runs on."""

    @property
    def is_server(self) -> bool: ...

    @property
    def peer(self) -> str: ...

    def close(self) -> None: ...


class Filter:
    """Base class: pass-through in both directions. Override what you need."""

    async def incoming(self, message: Message, side: FilterSide) -> Message | None:
        return message

    async def outgoing(self, message: Message, side: FilterSide) -> Message | None:
        return message


async def run_chain(
    filters: Sequence[Filter], incoming: bool, message: Message, side: FilterSide
) -> Message | None:
    """Run ``message`` through ``filters`` in order; ``None`` if one dropped it."""
    result: Message | None = message
    for f in filters:
        assert result is not None
        result = await (f.incoming(result, side) if incoming else f.outgoing(result, side))
        if result is None:
            return None
    return result
