"""smf for Python: low-latency RPC with FlatBuffers stubs, wire-compatible with C++ smf."""

from .client import DEFAULT, Backoff, Client, ClientStats, Default, SessionTable
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

# Last: the built-in services it uses import the modules above.
from .channel import Caller, Channel, RetryPolicy  # isort: skip

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
