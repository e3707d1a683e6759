"""What the service modules smfc generates import: their one contract with the runtime.

Not meant for hand-written code, though nothing here is specific to a schema. The table
modules smfc generates import ``smf.codec`` instead (a leaf module, so the runtime's own
modules can use generated code without an import cycle); it is re-exported here.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from typing import Any, Protocol, cast

from .client import DEFAULT, Client, Default
from .codec import BUFFER_TYPES, Buffer, DecodeError, EncodeError
from .context import CallContext
from .errors import BadRequest
from .metrics import MethodTable
from .router import Handler, Payload
from .stream_calls import StreamHandler, TypedStream, client_stream_typed, decoded, encoded
from .verify import (
    OUT_OF_BOUNDS,
    U32,
    VerificationError,
    Verifier,
    VerifyFn,
    unpacker,
    vtable_reader,
)

__all__ = [
    "DEFAULT",
    "OUT_OF_BOUNDS",
    "U32",
    "Buffer",
    "CallContext",
    "Caller",
    "Client",
    "DecodeError",
    "Default",
    "EncodeError",
    "Handler",
    "Payload",
    "StreamHandler",
    "TypedStream",
    "VerificationError",
    "Verifier",
    "VerifyFn",
    "as_root",
    "check_request",
    "client_stream_typed",
    "decoded",
    "encode",
    "encoded",
    "name_methods",
    "streaming",
    "unpacker",
    "vtable_reader",
]


class Encodable(Protocol):
    """An object-API instance smfc generated (``FooT``)."""

    def Encode(self) -> bytearray: ...


def as_root(table: Any) -> memoryview | None:
    """The table's whole buffer when the table is its root (sent as is), else None."""
    buf = memoryview(table._buf)
    if buf.nbytes >= 8 and U32(buf, 0)[0] == table._pos:
        return buf
    return None


def check_request(body: memoryview, verify: VerifyFn | None) -> memoryview:
    """``body`` once it passed ``verify`` (or, with ``None``, once its root offset at
    least points inside it); otherwise a 400 naming the fault."""
    if verify is not None:
        try:
            Verifier(body).root(verify)
        except VerificationError as err:
            raise BadRequest(str(err)) from None
    elif body.nbytes < 8 or U32(body, 0)[0] > body.nbytes - 4:
        raise BadRequest(f"a {body.nbytes}-byte body is not a FlatBuffer")
    return body


def encode(value: object, table: type, object_api: Any) -> Payload:
    """A message to send: an object-API instance encoded (smfc's encoder, one bytearray),
    a finished buffer as is, a table as its buffer when it is the root (else unpacked and
    encoded again)."""
    if type(value) is object_api or (
        isinstance(value, object_api) and not isinstance(value, BUFFER_TYPES)
    ):
        encoded: bytearray = cast(Encodable, value).Encode()
        return encoded
    if isinstance(value, BUFFER_TYPES):
        return value
    if isinstance(value, table):
        buf = as_root(value)
        if buf is not None:
            return buf
        repacked: bytearray = object_api.InitFromObj(value).Encode()
        return repacked
    raise TypeError(
        f"expected {table.__name__}, {object_api.__name__} or bytes, got {type(value).__name__}"
    )


class Caller(Protocol):
    """What generated client stubs call: ``smf.Client`` and ``smf.Channel`` both are."""

    @property
    def methods(self) -> MethodTable: ...

    def call(
        self,
        wire_id: int,
        payload: Payload,
        *,
        timeout: float | Default | None = DEFAULT,
        metadata: Mapping[str, str] | None = None,
    ) -> Coroutine[Any, Any, memoryview]: ...


def name_methods(client: Caller, names: Any) -> None:
    """Tell the client the names of a service's wire ids (its metrics and spans say them)."""
    methods = getattr(client, "methods", None)
    if methods is not None:
        for wire_id, name in names.items():
            methods.name(wire_id, name)


def streaming(caller: Caller) -> Client:
    """The client a streaming method runs on: a stream lives on one connection, so it
    needs an ``smf.Client`` (an ``smf.Channel`` carries unary calls)."""
    if isinstance(caller, Client):
        return caller
    raise TypeError(
        f"streaming methods need an smf.Client, not {type(caller).__name__} "
        "(a Channel carries unary calls only)"
    )
