"""Payload headers (bitflags bit 0), sans-IO.

When the bit is set the body is ``[uint32 LE n][n bytes: payload_headers][message]``
where ``payload_headers`` is the FlatBuffer table of ``idl/rpc.fbs``::

    table dynamic_header { key:string (key); value:string; }
    table payload_headers { dynamic_headers:[dynamic_header]; }

with entries sorted by key. Both directions use the code smfc generates from that schema
(``smf_rpc/``): ``Encode()`` writes the table in one bytearray, and the reader trusts
nothing (every read is bounds-checked; a fault is a ``BadRequest`` naming it).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

# Modules, not names: importing smf_rpc first imports smf (for smf.codec), which imports
# this module while smf_rpc's is still half-initialised.
import smf_rpc.dynamic_header as _dynamic_header
import smf_rpc.payload_headers as _payload_headers

from .codec import DecodeError
from .errors import BadRequest

_U32 = struct.Struct("<I")

MAX_HEADERS = 256
"""More headers than this in one call is refused (bounded work per request)."""


def encode(headers: Mapping[str, str]) -> bytes:
    """``[uint32 n][payload_headers FlatBuffer]``: the prefix to put before a message."""
    items = sorted(headers.items())
    if len(items) > MAX_HEADERS:
        raise ValueError(f"{len(items)} payload headers is more than {MAX_HEADERS}")
    entry = _dynamic_header.dynamic_headerT
    table = _payload_headers.payload_headersT(
        dynamicHeaders=[entry(key=k, value=v) for k, v in items]
    )
    flatbuffer = table.Encode()
    return _U32.pack(len(flatbuffer)) + flatbuffer


def split(body: memoryview) -> tuple[dict[str, str], memoryview]:
    """Headers and the message that follows them. Raises ``BadRequest`` naming the fault."""
    if body.nbytes < 4:
        raise BadRequest("payload headers: body shorter than the 4-byte length prefix")
    n = _U32.unpack_from(body, 0)[0]
    if n > body.nbytes - 4:
        raise BadRequest(f"payload headers: length {n} runs past the body ({body.nbytes} bytes)")
    headers = decode(body[4 : 4 + n])
    return headers, body[4 + n :]


def decode(buf: memoryview) -> dict[str, str]:
    """Read a ``payload_headers`` FlatBuffer; every read is checked against ``buf``."""
    what = "payload_headers"
    try:
        root = _payload_headers.payload_headers.GetRootAs(buf, 0)
        count = root.DynamicHeadersLength()
        if count > MAX_HEADERS:
            raise BadRequest(f"payload headers: vector of {count} entries does not fit")
        headers: dict[str, str] = {}
        for i in range(count):
            what = f"dynamic_headers[{i}]"
            entry = root.DynamicHeaders(i)
            key = entry.Key() if entry is not None else None
            if key is None:
                raise BadRequest(f"payload headers: {what} has no key")
            what = f"dynamic_headers[{i}].key"
            text = key.decode("utf-8")
            what = f"{text}.value"
            value = entry.Value() if entry is not None else None
            headers[text] = "" if value is None else value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"payload headers: {what} is not UTF-8") from None
    except (struct.error, DecodeError, IndexError) as exc:
        raise BadRequest(f"payload headers: {what} lies outside the buffer ({exc})") from None
    return headers
