"""Payload headers (bitflags bit 0), sans-IO.

When the bit is set the body is ``[uint32 LE n][n bytes: payload_headers][message]``
where ``payload_headers`` is the FlatBuffer table of ``idl/rpc.fbs``::

    table dynamic_header { key:string (key); value:string; }
    table payload_headers { dynamic_headers:[dynamic_header]; }

with entries sorted by key. The generic ``flatbuffers.Builder`` costs ~13 µs for a
small table, so this module writes and reads that one fixed layout directly (a valid
FlatBuffer: tests check it against flatc-generated readers). The reader trusts
nothing: every offset and length is checked against the buffer before use.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from .errors import BadRequest

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")

MAX_HEADERS = 256
"""More headers than this in one call is refused (bounded work per request)."""

# vtable of payload_headers: size 6, table 8 bytes, field 0 at +4; padded to 8.
_ROOT_VTABLE = struct.pack("<HHHH", 6, 8, 4, 0)
# vtable shared by every dynamic_header: size 8, table 12 bytes, key +4, value +8.
_ENTRY_VTABLE = struct.pack("<HHHH", 8, 12, 4, 8)


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def encode(headers: Mapping[str, str]) -> bytes:
    """``[uint32 n][payload_headers FlatBuffer]``: the prefix to put before a message."""
    items = sorted(headers.items())
    if len(items) > MAX_HEADERS:
        raise ValueError(f"{len(items)} payload headers is more than {MAX_HEADERS}")
    n = len(items)
    # Layout (all offsets from the FlatBuffer's start, 4-aligned):
    # 0 root uoffset | 4 root vtable (8) | 12 root table (8) | 20 entry vtable (8)
    # | 28 vector: n, then n uoffsets | entry tables (12 each) | strings
    root_table = 12
    entry_vtable = 20
    vector = 28
    entries = vector + 4 + 4 * n
    strings = entries + 12 * n
    parts: list[bytes] = [
        _U32.pack(root_table),
        _ROOT_VTABLE,
        _I32.pack(root_table - 4) + _U32.pack(vector - (root_table + 4)),
        _ENTRY_VTABLE,
        _U32.pack(n),
    ]
    parts.extend(_U32.pack(entries + 12 * i - (vector + 4 + 4 * i)) for i in range(n))
    blobs: list[bytes] = []
    pos = strings
    for i, (key, value) in enumerate(items):
        table = entries + 12 * i
        offsets = []
        for text in (key, value):
            raw = text.encode("utf-8")
            blob = _U32.pack(len(raw)) + raw + b"\0" * (1 + _pad4(len(raw) + 1))
            offsets.append(pos)
            blobs.append(blob)
            pos += len(blob)
        parts.append(
            _I32.pack(table - entry_vtable)
            + _U32.pack(offsets[0] - (table + 4))
            + _U32.pack(offsets[1] - (table + 8))
        )
    flatbuffer = b"".join(parts + blobs)
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
    """Read a ``payload_headers`` FlatBuffer, checking every offset against ``buf``."""
    reader = _Reader(buf)
    root = reader.uoffset(0, "root")
    field = reader.field(root, 0, "payload_headers")
    if field is None:
        return {}
    vec = reader.uoffset(field, "dynamic_headers")
    count = reader.u32(vec, "dynamic_headers length")
    if count > MAX_HEADERS or vec + 4 + 4 * count > reader.size:
        raise BadRequest(f"payload headers: vector of {count} entries does not fit")
    headers: dict[str, str] = {}
    for i in range(count):
        slot = vec + 4 + 4 * i
        entry = reader.uoffset(slot, f"dynamic_headers[{i}]")
        key_field = reader.field(entry, 0, f"dynamic_headers[{i}]")
        if key_field is None:
            raise BadRequest(f"payload headers: dynamic_headers[{i}] has no key")
        key = reader.string(key_field, f"dynamic_headers[{i}].key")
        value_field = reader.field(entry, 1, f"dynamic_headers[{i}]")
        value = "" if value_field is None else reader.string(value_field, f"{key}.value")
        headers[key] = value
    return headers


class _Reader:
    __slots__ = ("buf", "size")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.size = buf.nbytes

    def _fail(self, what: str, pos: int) -> BadRequest:
        return BadRequest(f"payload headers: {what} at offset {pos} is outside the buffer")

    def u32(self, pos: int, what: str) -> int:
        if not 0 <= pos <= self.size - 4:
            raise self._fail(what, pos)
        value: int = _U32.unpack_from(self.buf, pos)[0]
        return value

    def uoffset(self, pos: int, what: str) -> int:
        target = pos + self.u32(pos, what)
        if target >= self.size:
            raise self._fail(what, target)
        return target

    def field(self, table: int, index: int, what: str) -> int | None:
        """Absolute position of field ``index`` of the table at ``table``, or None."""
        if not 0 <= table <= self.size - 4:
            raise self._fail(what, table)
        vtable = table - _I32.unpack_from(self.buf, table)[0]
        if not 0 <= vtable <= self.size - 4:
            raise self._fail(f"{what} vtable", vtable)
        vt_size = _U16.unpack_from(self.buf, vtable)[0]
        if vt_size < 4 or vt_size % 2 or vtable + vt_size > self.size:
            raise BadRequest(f"payload headers: {what} vtable size {vt_size} is invalid")
        slot = 4 + 2 * index
        if slot + 2 > vt_size:
            return None
        offset: int = _U16.unpack_from(self.buf, vtable + slot)[0]
        if offset == 0:
            return None
        return table + offset

    def string(self, pos: int, what: str) -> str:
        start = self.uoffset(pos, what)
        length = self.u32(start, what)
        if start + 4 + length > self.size:
            raise BadRequest(f"payload headers: {what} of {length} bytes runs past the buffer")
        try:
            return bytes(self.buf[start + 4 : start + 4 + length]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"payload headers: {what} is not UTF-8") from exc
