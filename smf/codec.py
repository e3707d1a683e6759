"""What smfc's generated table modules call: typed ``struct`` readers and writers.

A leaf module (it imports nothing from ``smf``), so the runtime's own modules can use
generated code (``smf.headers`` reads ``smf_rpc.payload_headers``) without an import
cycle. ``smf.stubs`` re-exports it for the service modules.

Readers trust the buffer as far as Python lets them: a read outside it raises
``struct.error`` or ``DecodeError``, and every slice (strings, byte vectors) is checked
against the buffer first, so a truncated or hostile buffer raises rather than returning
bytes from elsewhere. Run the verifier (the generated handlers do) for the precise fault.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview
"""What readers read: any bytes-like object of bytes."""

_Unpack: TypeAlias = Callable[[Buffer, int], tuple[Any, ...]]


class DecodeError(ValueError):
    """A read outside the buffer (a buffer the verifier would have refused)."""


def _reader(fmt: str) -> Callable[[Buffer, int], tuple[Any]]:
    unpack: Callable[[Buffer, int], tuple[Any]] = struct.Struct(fmt).unpack_from
    return unpack


BOOL: Final[Callable[[Buffer, int], tuple[bool]]] = _reader("<?")
I8: Final[Callable[[Buffer, int], tuple[int]]] = _reader("<b")
U8: Final[Callable[[Buffer, int], tuple[int]]] = _reader("<B")
I16: Final[Callable[[Buffer, int], tuple[int]]] = _reader("<h")
U16: Final[Callable[[Buffer, int], tuple[int]]] = _reader("<H")
I32: Final[Callable[[Buffer, int], tuple[int]]] = _reader("<i")
U32: Final[Callable[[Buffer, int], tuple[int]]] = _reader("<I")
I64: Final[Callable[[Buffer, int], tuple[int]]] = _reader("<q")
U64: Final[Callable[[Buffer, int], tuple[int]]] = _reader("<Q")
F32: Final[Callable[[Buffer, int], tuple[float]]] = _reader("<f")
F64: Final[Callable[[Buffer, int], tuple[float]]] = _reader("<d")

PUT_U32: Final[Callable[[bytearray, int, int], None]] = struct.Struct("<I").pack_into

_EMPTY: Final = memoryview(b"")
# A tuple for isinstance(): ``bytes | bytearray | memoryview`` builds a union per call.
BUFFER_TYPES: Final = (bytes, bytearray, memoryview)


size_of: Final[Callable[[Buffer], int]] = len
"""A buffer's size in bytes (buffers are bytes, or memoryviews of format ``B``)."""


def root(buf: Buffer, offset: int) -> int:
    """The position of the root table of the buffer starting at ``offset``."""
    if offset < 0 or offset > size_of(buf) - 8:
        raise DecodeError(f"a FlatBuffer at offset {offset} of {size_of(buf)} bytes is too short")
    pos: int = offset + U32(buf, offset)[0]
    return pos


def vtable(buf: Buffer, pos: int, full: Callable[[Buffer, int], tuple[int, ...]], n: int) -> Any:
    """The ``n`` field offsets of the table at ``pos`` (0 for an absent field)."""
    vt = pos - I32(buf, pos)[0]
    if vt < 0:
        raise DecodeError(f"the vtable of the table at offset {pos} lies before the buffer")
    return short_vtable(buf, vt, full, n)


def short_vtable(
    buf: Buffer, vt: int, full: Callable[[Buffer, int], tuple[int, ...]], n: int
) -> Any:
    """The ``n`` field offsets the vtable at ``vt`` holds, when it may hold fewer."""
    if vt < 0:
        raise DecodeError(f"a vtable at offset {vt} lies before the buffer")
    fields = (U16(buf, vt)[0] - 4) >> 1
    if fields >= n:
        return full(buf, vt + 4)
    if fields <= 0:
        return (0,) * n
    return struct.unpack_from(f"<{fields}H", buf, vt + 4) + (0,) * (n - fields)


def deref(buf: Buffer, at: int) -> int:
    """Where the uoffset at ``at`` points."""
    pos: int = at + U32(buf, at)[0]
    return pos


def _span(buf: Buffer, at: int, size: int) -> tuple[int, int]:
    """The start and length of the vector the uoffset at ``at`` points to."""
    start = at + U32(buf, at)[0]
    n: int = U32(buf, start)[0]
    if start + 4 + n * size > size_of(buf):
        raise DecodeError(
            f"a vector of {n} x {size} bytes at offset {start} runs past the end of the "
            f"{size_of(buf)}-byte buffer"
        )
    return start + 4, n


def string(buf: Buffer, at: int) -> bytes:
    """The string the uoffset at ``at`` points to."""
    start = at + U32(buf, at)[0] + 4
    end = start + U32(buf, start - 4)[0]
    if end > size_of(buf):
        raise DecodeError(
            f"a string of {end - start} bytes at offset {start - 4} runs past the end of the "
            f"{size_of(buf)}-byte buffer"
        )
    return bytes(buf[start:end])


def length(buf: Buffer, at: int) -> int:
    """The length of the vector the uoffset at ``at`` points to."""
    n: int = U32(buf, at + U32(buf, at)[0])[0]
    return n


def element(buf: Buffer, at: int, j: int, size: int) -> int:
    """The position of element ``j`` of the vector the uoffset at ``at`` points to."""
    start = at + U32(buf, at)[0]
    n: int = U32(buf, start)[0]
    if not 0 <= j < n:
        raise IndexError(f"index {j} out of range for a vector of {n} elements")
    return start + 4 + j * size


def view(buf: Buffer, at: int) -> memoryview:
    """A ``[ubyte]``/``[byte]`` vector as a zero-copy view of the buffer."""
    start, n = _span(buf, at, 1)
    return memoryview(buf)[start : start + n]


def scalars(buf: Buffer, at: int, code: str, size: int) -> list[Any]:
    """A vector of scalars as a list."""
    start, n = _span(buf, at, size)
    return list(struct.unpack_from(f"<{n}{code}", buf, start))


def numpy(buf: Buffer, at: int, dtype: str, size: int) -> Any:
    """A vector of scalars as a numpy array over the buffer (no copy)."""
    import importlib

    np: Any = importlib.import_module("numpy")
    start, n = _span(buf, at, size)
    return np.frombuffer(buf, dtype=dtype, count=n, offset=start)


def positions(buf: Buffer, at: int) -> list[int]:
    """The positions of the tables a vector of tables (at the uoffset at ``at``) holds."""
    start, n = _span(buf, at, 4)
    offsets = struct.unpack_from(f"<{n}I", buf, start)
    return [start + 4 * i + off for i, off in enumerate(offsets)]


def strings(buf: Buffer, at: int) -> list[str | bytes]:
    """A vector of strings (as bytes; typed for the object API, which also takes str)."""
    return [string(buf, p) for p in range(*_range(buf, at))]


def _range(buf: Buffer, at: int) -> tuple[int, int, int]:
    start, n = _span(buf, at, 4)
    return start, start + 4 * n, 4


class UnionValue:
    """The table a union field holds, as flatc's ``Table``: ``Bytes`` and ``Pos``."""

    __slots__ = ("Bytes", "Pos")

    def __init__(self, buf: Buffer, pos: int) -> None:
        self.Bytes = buf
        self.Pos = pos


# ----------------------------------------------------------------------------- writing


def utf8(value: str | bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    return value.encode() if isinstance(value, str) else value


def string_end(value: str | bytes | bytearray | memoryview, at: int) -> int:
    """Where a string written at ``at`` (rounded up to 4) ends."""
    n = len(value.encode()) if isinstance(value, str) else len(value)
    return ((at + 3) & -4) + 5 + n


def put_string(buf: bytearray, at: int, value: str | bytes | bytearray | memoryview) -> int:
    """Write a string at ``at`` (4-aligned); returns its end."""
    data = value.encode() if isinstance(value, str) else value
    n = len(data)
    PUT_U32(buf, at, n)
    buf[at + 4 : at + 4 + n] = data
    return at + 5 + n  # the NUL is already there: the buffer starts zeroed


def put_bytes(buf: bytearray, at: int, value: Buffer | Sequence[int]) -> int:
    """Write a ``[ubyte]``/``[byte]`` vector at ``at`` (4-aligned) in one copy."""
    if isinstance(value, BUFFER_TYPES):
        n = value.nbytes if isinstance(value, memoryview) else len(value)
        PUT_U32(buf, at, n)
        buf[at + 4 : at + 4 + n] = value
        return at + 4 + n
    return put_scalars(buf, at, value, "B", 1)


def put_scalars(buf: bytearray, at: int, values: Sequence[Any], code: str, size: int) -> int:
    """Write a vector of scalars at ``at`` (its elements aligned); returns its end."""
    n = len(values)
    PUT_U32(buf, at, n)
    struct.pack_into(f"<{n}{code}", buf, at + 4, *values)
    return at + 4 + n * size


def align_vector(at: int, size: int) -> int:
    """Where a vector of ``size``-byte elements starts at or after ``at``: its length
    4-aligned and its elements ``size``-aligned."""
    if size <= 4:
        return (at + 3) & -4
    return ((at + 4 + size - 1) & -size) - 4


def put_strings(buf: bytearray, at: int, values: Sequence[str | bytes]) -> int:
    """Write a vector of strings at ``at`` (4-aligned), then the strings."""
    n = len(values)
    PUT_U32(buf, at, n)
    slot = at + 4
    end = slot + 4 * n
    for value in values:
        data = value.encode() if isinstance(value, str) else value
        k = len(data)
        end = (end + 3) & -4
        PUT_U32(buf, slot, end - slot)
        PUT_U32(buf, end, k)
        buf[end + 4 : end + 4 + k] = data
        end += 5 + k
        slot += 4
    return end


def strings_end(values: Sequence[str | bytes], at: int) -> int:
    end = ((at + 3) & -4) + 4 + 4 * len(values)
    for value in values:
        end = ((end + 3) & -4) + 5 + (len(value.encode()) if isinstance(value, str) else len(value))
    return end


class EncodeError(ValueError):
    """A message that cannot be encoded (a required field missing, a value out of range)."""


def missing(table: str, field: str) -> EncodeError:
    return EncodeError(f"{table}.{field} is required")


def builder_bytes(builder: Any, data: Buffer | Sequence[int]) -> int:
    """A ``[ubyte]`` vector in a ``flatbuffers.Builder``, in one copy."""
    if isinstance(data, bytes | bytearray):
        return int(builder.CreateByteVector(data))
    if isinstance(data, memoryview):
        return int(builder.CreateByteVector(data.tobytes()))
    return int(builder.CreateByteVector(bytes(data)))


def builder_scalars(builder: Any, values: Sequence[Any], code: str, size: int) -> int:
    """A vector of scalars in a ``flatbuffers.Builder``."""
    n = len(values)
    builder.StartVector(size, n, size)
    builder.head -= n * size
    struct.pack_into(f"<{n}{code}", builder.Bytes, builder.head, *values)
    return int(builder.EndVector())


def builder_offsets(builder: Any, offsets: Sequence[int]) -> int:
    """A vector of offsets (to strings or tables) in a ``flatbuffers.Builder``."""
    builder.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        builder.PrependUOffsetTRelative(off)
    return int(builder.EndVector())


def builder_struct(builder: Any, align: int, data: bytes) -> int:
    """A struct's bytes placed in a ``flatbuffers.Builder`` (inline, as the next slot or
    vector element)."""
    n = len(data)
    builder.Prep(align, n)
    builder.head -= n
    builder.Bytes[builder.head : builder.head + n] = data
    return int(builder.Offset())
