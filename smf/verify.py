"""Verifies FlatBuffers before the Python reader touches them.

flatbuffers' Python runtime trusts its input: a crafted body can point outside the buffer,
claim a vector of 2^32 elements or nest tables until the interpreter's stack runs out. The
checks here are those of the C++ ``flatbuffers::Verifier`` (offsets in range and aligned,
vtables and tables inside the buffer, strings NUL-terminated, vector lengths that fit,
nesting depth and table count bounded), plus a few that C++ leaves out (a field must lie
inside its table, a union's type must be one the schema declares).

smfc generates one ``verify_T(v, pos)`` per table; each opens the table with
``Verifier.table`` and checks its fields with the primitives of ``TableCheck``. A buffer
that passes can be read with the generated accessors (and unpacked with the object API)
without any exception; one that fails raises ``VerificationError`` naming the field and
the offset::

    Verifier(body).root(verify_Request)
    # VerificationError: Request.name: string at offset 24 runs past the end of the
    # 40-byte buffer

Offsets only ever point forward, so a buffer cannot make the verifier loop; shared
subtrees (a DAG) are bounded by ``max_tables`` as in C++.
"""

from __future__ import annotations

import array
import contextlib
import struct
import sys
from collections.abc import Callable, Mapping
from typing import ClassVar, Final

MAX_BUFFER_SIZE: Final = 2**31 - 1
"""Buffers must be smaller than 2 GiB: offsets are 32-bit and soffsets signed."""
DEFAULT_MAX_DEPTH: Final = 64
"""Tables nested deeper than this are refused (C++'s ``max_depth``)."""
DEFAULT_MAX_TABLES: Final = 1_000_000
"""More tables than this (counting a shared one each time it is reached) are refused."""

_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_i32 = struct.Struct("<i").unpack_from
_u16x2 = struct.Struct("<HH").unpack_from
OUT_OF_BOUNDS: Final = (IndexError, struct.error)
"""What a read past the end of the buffer raises, through ``Verifier.words`` (a
``memoryview``) or ``unpack_from``: the fast path's bounds checks."""
_VTABLE_READERS: dict[int, Callable[[memoryview, int], tuple[int, ...]]] = {}
U32: Final[Callable[[memoryview, int], tuple[int]]] = _u32


def vtable_reader(n: int) -> Callable[[memoryview, int], tuple[int, ...]]:
    """``unpack_from`` of ``n`` vtable entries (the generated verifiers' fast path)."""
    return _vtable_reader(n)


def unpacker(fmt: str) -> Callable[[memoryview, int], tuple[int, ...]]:
    """``struct.Struct(fmt).unpack_from``: how the generated verifiers read a table as
    smfc's encoder lays it out, in one call."""
    return struct.Struct(fmt).unpack_from


def _vtable_reader(n: int) -> Callable[[memoryview, int], tuple[int, ...]]:
    reader = _VTABLE_READERS.get(n)
    if reader is None:
        reader = _VTABLE_READERS[n] = struct.Struct(f"<{n}H").unpack_from
    return reader


_LITTLE: Final = sys.byteorder == "little"


def _swapped_words(view: memoryview) -> memoryview:
    """``view`` (bytes) as little-endian uint32s on a big-endian machine: a swapped copy."""
    words = array.array("I")
    words.frombytes(view[: view.nbytes & -4])
    words.byteswap()
    return memoryview(words)


VerifyFn = Callable[["Verifier", int], None]
"""A generated ``verify_T(v, pos)``: checks the table ``T`` at ``pos`` or raises."""

_PATH_SHOWN = 12  # a longer path (deep nesting) is abridged in the message


class VerificationError(ValueError):
    """A buffer that is not a valid FlatBuffer of the expected type.

    ``str(err)`` is ``"Table.field[i].field: reason"``: ``table`` is the outermost table
    known, ``path`` the fields (and vector indexes) from there to the fault, ``offset`` the
    byte position in the buffer the ``reason`` is about.
    """

    def __init__(self, reason: str, offset: int, table: str = "", field: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.offset = offset
        self.table = table
        self.path: list[str] = [field] if field else []

    def within(self, table: str, field: str) -> None:
        """The fault lies in ``field`` of a ``table``: prefix the path with it."""
        self.table = table
        self.path.insert(0, field)

    @property
    def where(self) -> str:
        path = self.path
        if len(path) > _PATH_SHOWN:
            keep = _PATH_SHOWN // 2
            path = [*path[:keep], f"...{len(path) - 2 * keep} more...", *path[-keep:]]
        return ".".join([self.table, *path] if self.table else path)

    def __str__(self) -> str:
        where = self.where
        return f"{where}: {self.reason}" if where else self.reason

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild, (self.reason, self.offset, self.table, list(self.path))


def _rebuild(reason: str, offset: int, table: str, path: list[str]) -> VerificationError:
    err = VerificationError(reason, offset, table)
    err.path = path
    return err


class Verifier:
    """The state of one verification: the buffer, the limits and the counts so far.

    ``buf`` is any bytes-like object (the server passes a ``memoryview`` of its receive
    buffer; nothing is copied). Alignment is checked relative to its start, as C++ does.

    ``max_depth`` defaults to ``default_max_depth`` (64). ``max_tables`` defaults to the
    buffer's size in bytes (at least 1024), capped by ``default_max_tables`` (1,000,000,
    as in C++): a table takes at least 4 bytes, so that allows 4x sharing while keeping
    verification O(size). A flat million let a few hundred bytes of shared tables hold
    the event loop for about a second.
    """

    __slots__ = ("buf", "depth", "max_depth", "max_tables", "size", "tables", "words")

    default_max_depth: ClassVar[int] = DEFAULT_MAX_DEPTH
    default_max_tables: ClassVar[int] = DEFAULT_MAX_TABLES

    def __init__(
        self,
        buf: bytes | bytearray | memoryview,
        *,
        max_depth: int | None = None,
        max_tables: int | None = None,
    ) -> None:
        # Run before every handler: the usual case (a byte view, a few kB) costs the
        # fewest operations (a view of our own, so releasing it never touches the caller's).
        view = memoryview(buf)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        size = view.nbytes
        if size > MAX_BUFFER_SIZE:
            raise VerificationError(
                f"a {size}-byte buffer is larger than FlatBuffers allow (< 2 GiB)", 0
            )
        self.buf = view
        self.size = size
        if not _LITTLE:
            self.words = _swapped_words(view)
        elif size & 3:
            self.words = view[: size & -4].cast("I")
        else:
            self.words = view.cast("I")
        self.max_depth = self.default_max_depth if max_depth is None else max_depth
        if max_tables is None:
            # Each table takes at least 4 bytes, so a buffer of n bytes holds at most n/4
            # distinct ones; allowing 4x that for legitimately shared tables keeps the
            # work O(size), where a flat 1,000,000 let ~400 bytes of cycles-free sharing
            # hold the event loop for about a second.
            max_tables = size if size > 1024 else 1024
            if max_tables > self.default_max_tables:  # (no min(): ~100 ns a request)
                max_tables = self.default_max_tables
        self.max_tables = max_tables
        self.depth = 0
        self.tables = 0

    words: memoryview
    """The buffer as little-endian uint32s (``words[pos >> 2]`` is the uint32 at ``pos``,
    for ``pos`` 4-byte aligned; a trailing partial word is left out): a read costs half of
    an ``unpack_from``, and one past the end raises ``IndexError``."""

    # ----------------------------------------------------------------- entry points

    def root(self, verify: VerifyFn) -> None:
        """Check the whole buffer as a FlatBuffer whose root table ``verify`` checks.

        A Verifier checks one buffer once. On failure it lets go of the buffer before
        raising (the error holds no view of it), so a caller that keeps the error does not
        pin, say, a connection's receive buffer."""
        size = self.size
        try:
            if size < 8:
                raise VerificationError(
                    f"a {size}-byte buffer is not a FlatBuffer (a root offset and a table "
                    "take at least 8 bytes)",
                    0,
                )
            offset = _u32(self.buf, 0)[0]
            if offset == 0 or offset > size - 4:
                raise VerificationError(
                    f"root offset {offset} does not point at a table inside the {size}-byte buffer",
                    0,
                )
            self.visit(verify, offset, "", "", -1)
        except VerificationError as err:
            err.__traceback__ = None  # its frames hold views of the buffer
            fault = err
        else:
            self.words.release()
            return
        self.words.release()
        with contextlib.suppress(BufferError):
            self.buf.release()
        raise fault

    def visit(self, verify: VerifyFn, pos: int, table: str, field: str, index: int) -> None:
        """Check the table at ``pos`` with ``verify``, one level deeper; a fault inside it
        is reported as in ``table.field`` (``field[index]`` for vector elements)."""
        self.tables += 1
        self.depth += 1
        if self.depth > self.max_depth:
            raise VerificationError(
                f"tables nested deeper than {self.max_depth} levels", pos, table, field
            )
        if self.tables > self.max_tables:
            raise VerificationError(
                f"more than {self.max_tables} tables (a shared table counts each time it "
                "is reached)",
                pos,
                table,
                field,
            )
        try:
            verify(self, pos)
        except VerificationError as err:
            if table:
                err.within(table, field if index < 0 else f"{field}[{index}]")
            raise
        self.depth -= 1

    def table(self, pos: int, name: str) -> TableCheck:
        """Open the table ``name`` at ``pos``: its vtable offset, vtable and size must lie
        inside the buffer and be aligned. The fields are checked with the result."""
        buf = self.buf
        size = self.size
        if pos & 3:
            raise VerificationError(f"table at offset {pos} is not 4-byte aligned", pos, name)
        if pos > size - 4:
            raise VerificationError(
                f"table at offset {pos} runs past the end of the {size}-byte buffer", pos, name
            )
        vtable = pos - _i32(buf, pos)[0]
        if vtable < 0 or vtable > size - 4:
            raise VerificationError(
                f"vtable at offset {vtable} (of the table at {pos}) lies outside the "
                f"{size}-byte buffer",
                pos,
                name,
            )
        if vtable & 1:
            raise VerificationError(
                f"vtable at offset {vtable} is not 2-byte aligned", vtable, name
            )
        vsize, tsize = _u16x2(buf, vtable)
        if vsize & 1 or vsize < 4:
            raise VerificationError(
                f"vtable at offset {vtable} has size {vsize} (it must be even and at least 4)",
                vtable,
                name,
            )
        if vsize > size - vtable:
            raise VerificationError(
                f"vtable at offset {vtable} ({vsize} bytes) runs past the end of the "
                f"{size}-byte buffer",
                vtable,
                name,
            )
        if tsize < 4 or tsize > size - pos:
            raise VerificationError(
                f"table at offset {pos} declares {tsize} bytes, "
                + (
                    "fewer than its 4-byte vtable offset"
                    if tsize < 4
                    else f"past the end of the {size}-byte buffer"
                ),
                pos,
                name,
            )
        return TableCheck(self, pos, vtable, vsize, tsize, name)

    # ----------------------------------------------------------------- fast path
    # The generated ``verify_T`` and ``_each_T`` check a table inline and hand anything
    # they refuse to the general path (``TableCheck``, through the generated ``_check_T``),
    # which raises the precise fault. These are their helpers.

    def short_offsets(self, vt: int, vsize: int, n: int) -> tuple[int, ...]:
        """The ``n`` field offsets of a vtable shorter than the schema's (the fields it
        leaves out are absent: 0); all 0 when ``vsize`` is too small to be a vtable's."""
        have = (vsize - 4) >> 1
        if have <= 0:
            return (0,) * n
        return (*_vtable_reader(have)(self.buf, vt + 4), *(0,) * (n - have))

    def over_limits(self, at: int, table: str, field: str) -> None:
        """Raise the fault of a depth or table count past the limits (``at``: where the
        vector or table that crossed them is)."""
        if self.depth > self.max_depth:
            raise VerificationError(
                f"tables nested deeper than {self.max_depth} levels", at, table, field
            )
        if self.tables > self.max_tables:
            raise VerificationError(
                f"more than {self.max_tables} tables (a shared table counts each time it is "
                "reached)",
                at,
                table,
                field,
            )

    def table_vector(
        self, start: int, length: int, verify: VerifyFn, table: str, field: str
    ) -> None:
        """The tables of a vector (already checked to fit) whose ``length`` offsets start
        at ``start``: each with ``verify``, one level deeper, each counting towards
        ``max_tables``."""
        if not length:
            return
        self.tables += length
        self.depth += 1
        if self.depth > self.max_depth or self.tables > self.max_tables:
            self.over_limits(start, table, field)
        element = self.element
        for i in range(length):
            element(verify, start + 4 * i, i, table, field)
        self.depth -= 1

    def element(self, verify: VerifyFn, at: int, i: int, table: str, field: str) -> None:
        """Element ``i`` of a vector of tables, whose offset is at ``at``, checked on its
        own with ``verify`` (at the vector's depth); a fault names it ``field[i]``."""
        relative: int = _u32(self.buf, at)[0]
        pos = at + relative
        if not relative or pos >= self.size:
            try:
                self.offset(at, table, field, "table")
            except VerificationError as err:
                err.path[0] = f"{field}[{i}]"
                raise
        try:
            verify(self, pos)
        except VerificationError as err:
            err.within(table, f"{field}[{i}]")
            raise

    def strings_ok(self, start: int, length: int) -> bool:
        """The ``length`` offsets from ``start`` (a vector that fits) all point to strings
        inside the buffer, 4-byte aligned and NUL-terminated."""
        u = self.words
        buf = self.buf
        try:
            for at in range(start, start + 4 * length, 4):
                relative = u[at >> 2]
                if not relative or relative & 3 or buf[(p := at + relative) + 4 + u[p >> 2]]:
                    return False
        except OUT_OF_BOUNDS:
            return False
        return True

    # ----------------------------------------------------------------- primitives
    # Each takes the position of a uoffset (already known to lie inside a checked table
    # or vector, aligned) and the names to report a fault with.

    def offset(self, at: int, table: str, field: str, what: str) -> int:
        """The position the uoffset at ``at`` points to: forward, inside the buffer."""
        relative: int = _u32(self.buf, at)[0]
        target = at + relative
        if target >= self.size or not relative:
            raise VerificationError(
                f"{what} offset at {at} is 0 (an offset never points at itself)"
                if not relative
                else f"{what} offset at {at} points to {target}, past the end of the "
                f"{self.size}-byte buffer",
                at,
                table,
                field,
            )
        return target

    def vector(self, pos: int, elem_size: int, table: str, field: str, what: str) -> int:
        """The length of the vector (or string) at ``pos`` of ``elem_size``-byte elements,
        checked to fit in the buffer."""
        size = self.size
        if pos & 3:
            raise VerificationError(
                f"{what} at offset {pos} is not 4-byte aligned", pos, table, field
            )
        if pos > size - 4:
            raise VerificationError(
                f"{what} at offset {pos} runs past the end of the {size}-byte buffer",
                pos,
                table,
                field,
            )
        length: int = _u32(self.buf, pos)[0]
        if length * elem_size > size - pos - 4:
            raise VerificationError(
                f"{what} at offset {pos} of {length} "
                + ("bytes" if elem_size == 1 else f"{elem_size}-byte elements")
                + f" runs past the end of the {size}-byte buffer",
                pos,
                table,
                field,
            )
        return length

    def string(self, pos: int, table: str, field: str) -> None:
        """The string at ``pos``: its length, its bytes and a NUL after them in the buffer."""
        size = self.size
        if pos & 3 or pos > size - 4:
            self.vector(pos, 1, table, field, "string")  # raises the precise fault
        end = pos + 4 + _u32(self.buf, pos)[0]
        if end >= size:
            raise VerificationError(
                f"string at offset {pos} runs past the end of the {size}-byte buffer",
                pos,
                table,
                field,
            )
        if self.buf[end]:
            raise VerificationError(
                f"string at offset {pos} is not NUL-terminated (byte {end} is {self.buf[end]})",
                pos,
                table,
                field,
            )

    def nested(self, start: int, length: int, verify: VerifyFn, table: str, field: str) -> None:
        """A nested FlatBuffer (``nested_flatbuffer``) in the ``length`` bytes at ``start``,
        checked as a buffer of its own; its tables count towards this buffer's limits. A
        fault's message gives offsets in the nested buffer, its ``offset`` in this one."""
        inner = Verifier(
            self.buf[start : start + length], max_depth=self.max_depth, max_tables=self.max_tables
        )
        inner.depth = self.depth
        inner.tables = self.tables
        try:
            inner.root(verify)
        except VerificationError as err:
            err.offset += start
            err.within(table, field)
            raise
        self.tables = inner.tables


class TableCheck:
    """One table being checked: the field checks of the generated ``verify_T``.

    ``slot`` is the field's vtable slot (``4 + 2 * id``); a field past the end of the
    vtable, or at offset 0, is absent (its default applies). Each check first places the
    field: its ``size`` bytes must lie inside the table and be aligned.

    The common case (a valid field) runs inline; anything unusual is handed to the
    general checks (``field``, ``Verifier.offset``, ``Verifier.vector``, ...), which raise
    the precise fault.
    """

    __slots__ = ("buf", "name", "pos", "size", "tsize", "v", "vsize", "vtable")

    def __init__(
        self, v: Verifier, pos: int, vtable: int, vsize: int, tsize: int, name: str
    ) -> None:
        self.v = v
        self.buf = v.buf
        self.size = v.size
        self.pos = pos
        self.vtable = vtable
        self.vsize = vsize
        self.tsize = tsize
        self.name = name

    def field(self, slot: int, field: str, size: int, align: int) -> int:
        """The field's position in the buffer, 0 when absent."""
        if slot >= self.vsize:
            return 0
        off: int = _u16(self.buf, self.vtable + slot)[0]
        if not off:
            return 0
        at = self.pos + off
        if off + size > self.tsize:
            raise VerificationError(
                f"{size}-byte field at offset {at} runs past the end of its {self.tsize}-byte "
                f"table at {self.pos}",
                at,
                self.name,
                field,
            )
        if at & (align - 1):
            raise VerificationError(
                f"{size}-byte field at offset {at} is not {align}-byte aligned",
                at,
                self.name,
                field,
            )
        return at

    def target(self, slot: int, field: str, what: str) -> int:
        """Where the offset field (string, vector, table, union) points, 0 when absent."""
        if slot >= self.vsize:
            return 0
        off: int = _u16(self.buf, self.vtable + slot)[0]
        if not off:
            return 0
        at = self.pos + off
        if off + 4 > self.tsize or at & 3:
            self.field(slot, field, 4, 4)  # raises
        relative: int = _u32(self.buf, at)[0]
        if not relative or at + relative >= self.size:
            self.v.offset(at, self.name, field, what)  # raises
        return at + relative

    def missing(self, field: str) -> VerificationError:
        return VerificationError(
            f"required field is missing (table at offset {self.pos})", self.pos, self.name, field
        )

    def scalar(self, slot: int, field: str, size: int) -> None:
        """A scalar (or enum) of ``size`` bytes, aligned to its size."""
        if slot < self.vsize:
            off: int = _u16(self.buf, self.vtable + slot)[0]
            if off and (off + size > self.tsize or (self.pos + off) & (size - 1)):
                self.field(slot, field, size, size)  # raises

    def struct(
        self, slot: int, field: str, size: int, align: int, *, required: bool = False
    ) -> None:
        """A struct, stored inline: ``size`` bytes aligned to ``align``."""
        if not self.field(slot, field, size, align) and required:
            raise self.missing(field)

    def string(self, slot: int, field: str, *, required: bool = False) -> None:
        pos = self.target(slot, field, "string")
        if not pos:
            if required:
                raise self.missing(field)
            return
        buf = self.buf
        size = self.size
        if pos & 3 or pos > size - 4:
            self.v.string(pos, self.name, field)  # raises
        end = pos + 4 + _u32(buf, pos)[0]
        if end >= size or buf[end]:
            self.v.string(pos, self.name, field)  # raises

    def vector(self, slot: int, field: str, elem_size: int, *, required: bool = False) -> None:
        """A vector of scalars, enums or structs (``elem_size`` bytes each)."""
        pos = self.target(slot, field, "vector")
        if not pos:
            if required:
                raise self.missing(field)
            return
        size = self.size
        if pos & 3 or pos > size - 4 or _u32(self.buf, pos)[0] * elem_size > size - pos - 4:
            self.v.vector(pos, elem_size, self.name, field, "vector")  # raises

    def _elements(self, slot: int, field: str, required: bool) -> tuple[int, int]:
        """A vector of offsets: where its elements start and how many (0, 0 when absent).

        The elements are read one by one with ``unpack_from``: an iterator over a slice of
        the buffer would hold an export of it, and CPython 3.11 crashes collecting a
        memoryview with exports in a reference cycle (a caller keeping the error in a frame
        of its traceback makes one)."""
        pos = self.target(slot, field, "vector")
        if not pos:
            if required:
                raise self.missing(field)
            return 0, 0
        return pos + 4, self.v.vector(pos, 4, self.name, field, "vector")

    def _element_fault(self, at: int, field: str, i: int, what: str) -> VerificationError:
        try:
            self.v.offset(at, self.name, field, what)
        except VerificationError as err:
            err.path[0] = f"{field}[{i}]"
            return err
        raise AssertionError("not a fault")  # pragma: no cover

    def strings(self, slot: int, field: str, *, required: bool = False) -> None:
        """A vector of strings: the vector, then every string."""
        start, length = self._elements(slot, field, required)
        buf = self.buf
        size = self.size
        at = start
        for i in range(length):
            relative: int = _u32(buf, at)[0]
            pos = at + relative
            if not relative or pos >= size:
                raise self._element_fault(at, field, i, "string")
            if (
                pos & 3
                or pos > size - 4
                or (end := pos + 4 + _u32(buf, pos)[0]) >= size
                or buf[end]
            ):
                try:
                    self.v.string(pos, self.name, field)
                except VerificationError as err:
                    err.path[0] = f"{field}[{i}]"
                    raise
            at += 4

    def table(self, slot: int, field: str, verify: VerifyFn, *, required: bool = False) -> None:
        """A table field, checked by its own ``verify``."""
        pos = self.target(slot, field, "table")
        if pos:
            self.v.visit(verify, pos, self.name, field, -1)
        elif required:
            raise self.missing(field)

    def tables(self, slot: int, field: str, verify: VerifyFn, *, required: bool = False) -> None:
        """A vector of tables: the vector, then every element with ``verify``, one level
        deeper (each counts towards ``max_tables``)."""
        start, length = self._elements(slot, field, required)
        self.v.table_vector(start, length, verify, self.name, field)

    def union(
        self,
        slot: int,
        field: str,
        members: Mapping[int, VerifyFn],
        *,
        required: bool = False,
    ) -> None:
        """A union: its type (``field_type``, the slot before) must be NONE (0) or a
        member of ``members``; the value is checked as that member's table."""
        type_at = self.field(slot - 2, field + "_type", 1, 1)
        pos = self.target(slot, field, "union")
        if required and not (type_at and pos):
            raise self.missing(field if type_at else field + "_type")
        kind = self.buf[type_at] if type_at else 0
        if not kind:
            return
        verify = members.get(kind)
        if verify is None:
            known = ", ".join(["0 for none", *map(str, sorted(members))])
            raise VerificationError(
                f"unknown union type {kind} (known: {known})",
                type_at,
                self.name,
                field + "_type",
            )
        if pos:
            self.v.visit(verify, pos, self.name, field, -1)

    def nested(self, slot: int, field: str, verify: VerifyFn, *, required: bool = False) -> None:
        """A ``[ubyte]`` holding a FlatBuffer of its own (``nested_flatbuffer``)."""
        pos = self.target(slot, field, "vector")
        if not pos:
            if required:
                raise self.missing(field)
            return
        v = self.v
        length = v.vector(pos, 1, self.name, field, "vector")
        v.nested(pos + 4, length, verify, self.name, field)


def verify_buffer(
    buf: bytes | bytearray | memoryview,
    verify: VerifyFn,
    *,
    max_depth: int | None = None,
    max_tables: int | None = None,
) -> None:
    """Check ``buf`` as a FlatBuffer whose root table ``verify`` checks (a generated
    ``verify_T``); raises ``VerificationError``."""
    Verifier(buf, max_depth=max_depth, max_tables=max_tables).root(verify)
