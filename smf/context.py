"""What a handler knows about the call it is serving."""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType

_EMPTY: Mapping[str, str] = MappingProxyType({})

TIMEOUT_HEADER = "smf-timeout-us"
"""Payload header carrying the caller's remaining time in microseconds (relative, so
clocks need not agree across hosts; as gRPC's ``grpc-timeout``)."""

TRACEPARENT_HEADER = "traceparent"


class CallContext:
    """Per-call facts handed to every handler.

    ``deadline`` is an absolute ``time.monotonic()`` value, or ``None`` when the caller
    set no deadline. ``metadata`` holds the caller's payload headers (empty when none).
    """

    __slots__ = ("deadline", "metadata", "peer", "session", "wire_id")

    def __init__(
        self,
        peer: str,
        wire_id: int,
        session: int,
        deadline: float | None = None,
        metadata: Mapping[str, str] = _EMPTY,
    ) -> None:
        self.peer = peer
        self.wire_id = wire_id
        self.session = session
        self.deadline = deadline
        self.metadata = metadata

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline (negative once passed), ``None`` without one."""
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()

    def __repr__(self) -> str:
        return f"CallContext(peer={self.peer!r}, wire_id={self.wire_id}, session={self.session})"


current_call: ContextVar[CallContext | None] = ContextVar("smf_current_call", default=None)
"""The call a handler is serving, so its own outgoing calls inherit what is left of the
deadline and the trace context. Set by the server in each handler's task."""
