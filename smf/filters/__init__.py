"""Filters: transforms on whole messages, in chains on both sides of a connection.

The same ``Filter`` type serves client and server (as in smf and Finagle). A server
runs its ``incoming`` chain on each request before routing and its ``outgoing`` chain
on each response; a client runs ``outgoing`` on each request and ``incoming`` on each
response. A filter returns the (possibly new) message, returns ``None`` to drop it,
or raises ``smf.RpcError`` to answer (server) or fail the call (client) with a status.
"""

from .base import Filter, FilterSide, Message, run_chain
from .compression import CompressionFilter
from .fault import Fault, FaultFilter

__all__ = [
    "CompressionFilter",
    "Fault",
    "FaultFilter",
    "Filter",
    "FilterSide",
    "Message",
    "run_chain",
]
