"""What the code smfc generates calls into, so each generated module stays short.

Not meant for hand-written code (it is the stubs' contract with the runtime), though
nothing here is specific to a schema.
"""

from __future__ import annotations

from typing import Any, Final, Protocol, cast

import flatbuffers

from .errors import BadRequest
from .router import Payload
from .verify import VerificationError, Verifier, VerifyFn

BUILDER_SIZE: Final = 1024


class Packable(Protocol):
    """An object-API instance (flatc's ``FooT``)."""

    def Pack(self, builder: Any) -> int: ...


def pack(value: Packable) -> memoryview:
    """Pack an object-API instance; the view spares ``Builder.Output()``'s copy."""
    builder = flatbuffers.Builder(BUILDER_SIZE)
    builder.Finish(value.Pack(builder))
    return memoryview(builder.Bytes)[builder.Head() :]


def as_root(tab: Any) -> memoryview | None:
    """The table's whole buffer when the table is its root (sent as is), else None."""
    buf = memoryview(tab.Bytes)
    if buf.nbytes >= 8 and int.from_bytes(buf[:4], "little") == tab.Pos:
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
    elif body.nbytes < 8 or int.from_bytes(body[:4], "little") > body.nbytes - 4:
        raise BadRequest(f"a {body.nbytes}-byte body is not a FlatBuffer")
    return body


def encode(value: object, table: type, object_api: Any) -> Payload:
    """A message to send: a finished buffer as is, an object-API instance packed, a
    table as its buffer when it is the root (else unpacked and packed again)."""
    if isinstance(value, object_api):
        return pack(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return value
    if isinstance(value, table):
        return as_root(cast(Any, value)._tab) or pack(object_api.InitFromObj(value))
    raise TypeError(
        f"expected {table.__name__}, {object_api.__name__} or bytes, got {type(value).__name__}"
    )
