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

ACCEPT_COMPRESSION_HEADER = "smf-accept-compression"
"""Payload header of a request: the compressions (``zstd``, ``lz4``, comma-separated) the
caller accepts in its reply, beside the request's own compression (itself an offer of
that one). A server compresses a reply only with an offered compression; a caller that
offers nothing gets plain replies."""


class PeerIdentity:
    """Who the peer's verified TLS certificate says it is."""

    __slots__ = ("common_name", "dns_names", "subject")

    def __init__(
        self,
        common_name: str | None,
        dns_names: tuple[str, ...],
        subject: tuple[tuple[str, str], ...],
    ) -> None:
        self.common_name = common_name
        self.dns_names = dns_names
        self.subject = subject

    @classmethod
    def from_cert(cls, cert: Mapping[str, object] | None) -> PeerIdentity | None:
        """From ``SSLObject.getpeercert()``; ``None`` when there is no certificate."""
        if not cert:
            return None
        subject: list[tuple[str, str]] = []
        for rdn in cert.get("subject", ()):  # type: ignore[attr-defined]
            for key, value in rdn:
                subject.append((str(key), str(value)))
        names = tuple(
            str(value)
            for kind, value in cert.get("subjectAltName", ())  # type: ignore[attr-defined]
            if kind == "DNS"
        )
        cn = next((v for k, v in subject if k == "commonName"), None)
        return cls(cn, names, tuple(subject))

    @property
    def name(self) -> str | None:
        """The first DNS name, else the common name."""
        return self.dns_names[0] if self.dns_names else self.common_name

    def __repr__(self) -> str:
        return f"PeerIdentity(name={self.name!r})"


class CallContext:
    """Per-call facts handed to every handler.

    ``deadline`` is an absolute ``time.monotonic()`` value, or ``None`` when the caller
    set no deadline. ``metadata`` holds the caller's payload headers (empty when none);
    ``set_trailing_metadata`` sets the reply's.
    ``peer_identity`` is the verified client certificate's identity on a mutual-TLS
    connection, ``None`` otherwise.
    """

    __slots__ = (
        "deadline",
        "metadata",
        "peer",
        "peer_identity",
        "session",
        "trailing_metadata",
        "wire_id",
    )

    def __init__(
        self,
        peer: str,
        wire_id: int,
        session: int,
        deadline: float | None = None,
        metadata: Mapping[str, str] = _EMPTY,
        peer_identity: PeerIdentity | None = None,
    ) -> None:
        self.peer = peer
        self.peer_identity = peer_identity
        self.wire_id = wire_id
        self.session = session
        self.deadline = deadline
        self.metadata = metadata
        self.trailing_metadata: Mapping[str, str] = _EMPTY

    def set_trailing_metadata(self, metadata: Mapping[str, str]) -> None:
        """Metadata for the reply (``Client.call_with_metadata`` returns it). It travels
        as the reply's payload headers, sent only when the request carried payload
        headers itself (a peer that sent none may not read them)."""
        self.trailing_metadata = dict(metadata)

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
