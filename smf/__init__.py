"""smf for Python: low-latency RPC with FlatBuffers stubs, wire-compatible with C++ smf."""

from typing import TYPE_CHECKING, Any

from .backoff import Backoff
from .client import DEFAULT, Client, ClientStats, Default, SessionTable
from .context import CallContext
from .errors import (
    BadRequest,
    ConnectionLost,
    DeadlineExceeded,
    FrameError,
    InternalError,
    NotFound,
    PayloadTooLarge,
    RpcError,
    SmfError,
    Unavailable,
    Unimplemented,
    Unsupported,
)
from .loop import new_event_loop, run
from .router import Handler, Payload, Service, ServiceRouter
from .server import Server, ServerStats
from .verify import VerificationError, Verifier
from .wire import Compression, FrameDecoder, Status

if TYPE_CHECKING:
    from .channel import Channel, RetryPolicy
    from .stubs import Caller


def __getattr__(name: str) -> Any:
    # Loaded on first use: the channel imports flatbuffers (and with it numpy, ~15 MiB).
    if name == "Caller":
        from .stubs import Caller

        return Caller
    if name in ("Channel", "RetryPolicy"):
        from . import channel

        return getattr(channel, name)
    raise AttributeError(f"module 'smf' has no attribute {name!r}")


__all__ = [
    "DEFAULT",
    "Backoff",
    "BadRequest",
    "CallContext",
    "Caller",
    "Channel",
    "Client",
    "ClientStats",
    "Compression",
    "ConnectionLost",
    "DeadlineExceeded",
    "Default",
    "FrameDecoder",
    "FrameError",
    "Handler",
    "InternalError",
    "NotFound",
    "Payload",
    "PayloadTooLarge",
    "RetryPolicy",
    "RpcError",
    "Server",
    "ServerStats",
    "Service",
    "ServiceRouter",
    "SessionTable",
    "SmfError",
    "Status",
    "Unavailable",
    "Unimplemented",
    "Unsupported",
    "VerificationError",
    "Verifier",
    "new_event_loop",
    "run",
]
