# ruff: noqa: E501  (lines of generated code are kept whole, so the output can be read here)
"""smfc's own table modules: one typed module per table, struct, enum and union.

For a table ``T`` the module holds:

* ``class T``: the reader, flatc's Python API (``GetRootAs``, ``Init``, ``Name()``,
  ``XLength()``, ``X(j)``, ``XAsNumpy()``, ``XIsNone()``), a ``__slots__`` class over the
  buffer that reads the vtable once (``Init``) and each field with one ``unpack_from`` at
  a known offset. ``[ubyte]``/``[byte]`` vectors also read as a zero-copy memoryview
  (``XAsBytes()``).
* ``class TT``: the object API (``InitFromBuf``, ``InitFromPackedBuf``, ``InitFromObj``,
  ``Pack(builder)`` for a ``flatbuffers.Builder``) plus ``Encode()``: the message as a
  finished FlatBuffer in one ``bytearray`` of its exact size, written front to back with
  precompiled ``struct.Struct``s (the table's inline part and vtable are one
  ``pack_into``; their layout is fixed at generation time).
* flatc's builder functions (``TStart``, ``TAddX``, ``TEnd``, ``TStartXVector``, and the
  unprefixed ``Start``, ``AddX``, ...), for code that builds by hand.

Layout of an encoded table: the inline part at a position aligned to the table's
alignment (every live field has a fixed place in it; a field left out, because it equals
its default or is None, keeps its bytes but gets 0 in the vtable, so it reads as absent,
as with flatc), the vtable right after it (a negative soffset, which FlatBuffers allow),
then the strings, vectors and child tables in field order, every offset pointing forward.

Everything flatc's Python generator supports is supported; what is not (vectors of
unions, 64-bit vectors, arrays of structs in structs, union members that are not tables)
fails at generation time naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .model import BaseType, Enum, Field, Object, Schema
from .tables import ImportTable, lower_camel, upper_camel
from .verifiers import RUNTIME as VERIFY_RUNTIME
from .verifiers import _nested_type, own_names, table_verifiers

CODES: dict[BaseType, str] = {
    BaseType.UTYPE: "B",
    BaseType.BOOL: "?",
    BaseType.BYTE: "b",
    BaseType.UBYTE: "B",
    BaseType.SHORT: "h",
    BaseType.USHORT: "H",
    BaseType.INT: "i",
    BaseType.UINT: "I",
    BaseType.LONG: "q",
    BaseType.ULONG: "Q",
    BaseType.FLOAT: "f",
    BaseType.DOUBLE: "d",
}
READERS: dict[BaseType, str] = {
    BaseType.UTYPE: "U8",
    BaseType.BOOL: "BOOL",
    BaseType.BYTE: "I8",
    BaseType.UBYTE: "U8",
    BaseType.SHORT: "I16",
    BaseType.USHORT: "U16",
    BaseType.INT: "I32",
    BaseType.UINT: "U32",
    BaseType.LONG: "I64",
    BaseType.ULONG: "U64",
    BaseType.FLOAT: "F32",
    BaseType.DOUBLE: "F64",
}
PREPEND: dict[BaseType, str] = {
    BaseType.UTYPE: "Uint8",
    BaseType.BOOL: "Bool",
    BaseType.BYTE: "Int8",
    BaseType.UBYTE: "Uint8",
    BaseType.SHORT: "Int16",
    BaseType.USHORT: "Uint16",
    BaseType.INT: "Int32",
    BaseType.UINT: "Uint32",
    BaseType.LONG: "Int64",
    BaseType.ULONG: "Uint64",
    BaseType.FLOAT: "Float32",
    BaseType.DOUBLE: "Float64",
}
DTYPES: dict[BaseType, str] = {
    BaseType.UTYPE: "<u1",
    BaseType.BOOL: "bool",
    BaseType.BYTE: "<i1",
    BaseType.UBYTE: "<u1",
    BaseType.SHORT: "<i2",
    BaseType.USHORT: "<u2",
    BaseType.INT: "<i4",
    BaseType.UINT: "<u4",
    BaseType.LONG: "<i8",
    BaseType.ULONG: "<u8",
    BaseType.FLOAT: "<f4",
    BaseType.DOUBLE: "<f8",
}
SIZES: dict[BaseType, int] = {
    BaseType.UTYPE: 1,
    BaseType.BOOL: 1,
    BaseType.BYTE: 1,
    BaseType.UBYTE: 1,
    BaseType.SHORT: 2,
    BaseType.USHORT: 2,
    BaseType.INT: 4,
    BaseType.UINT: 4,
    BaseType.LONG: 8,
    BaseType.ULONG: 8,
    BaseType.FLOAT: 4,
    BaseType.DOUBLE: 8,
}
BYTES = (BaseType.UBYTE, BaseType.BYTE)

# Names every module may bind at top level (imports from smf.codec and typing).
RUNTIME = [
    "BOOL",
    "I8",
    "U8",
    "I16",
    "U16",
    "I32",
    "U32",
    "I64",
    "U64",
    "F32",
    "F64",
    "PUT_U32",
    "Buffer",
    "UnionValue",
    "align_vector",
    "builder_bytes",
    "builder_offsets",
    "builder_scalars",
    "builder_struct",
    "deref",
    "element",
    "length",
    "missing",
    "numpy",
    "positions",
    "put_bytes",
    "put_scalars",
    "put_string",
    "put_strings",
    "root",
    "scalars",
    "string",
    "string_end",
    "strings",
    "strings_end",
    "utf8",
    "view",
    "vtable",
    "short_vtable",
]


class CodecError(ValueError):
    """A field smfc cannot generate; the message names it."""


def _scalar_type(base: BaseType) -> str:
    return base.python_scalar


def _literal(f: Field) -> str:
    """The field's default as Python source."""
    if f.optional:
        return "None"
    base = f.type.base
    if base is BaseType.BOOL:
        return "True" if f.default_integer else "False"
    if base in (BaseType.FLOAT, BaseType.DOUBLE):
        value = f.default_real
        if math.isnan(value):
            return 'float("nan")'
        if math.isinf(value):
            return 'float("inf")' if value > 0 else 'float("-inf")'
        return repr(value)
    return str(f.default_integer)


def _align(n: int, a: int) -> int:
    return (n + a - 1) & -a


@dataclass
class _Slot:
    """A live table field's place in the inline part."""

    f: Field
    offset: int = 0
    size: int = 0
    align: int = 1
    code: str = ""  # its struct format (a struct's flattened leaves)


@dataclass
class _Module:
    schema: Schema
    qualified: str
    source_file: str
    imports: ImportTable
    lines: list[str] = field(default_factory=list)

    @property
    def short(self) -> str:
        return self.qualified.rpartition(".")[2]

    def ref(self, qualified: str, suffix: str = "") -> str:
        if qualified == self.qualified:
            return self.short + suffix
        return self.imports.name(qualified, suffix)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)


def _doc(lines: tuple[str, ...], indent: str, fallback: str) -> list[str]:
    text = [line.replace("\\", "\\\\").replace('"""', "'''") for line in lines] or [fallback]
    if len(text) == 1:
        return [f'{indent}"""{text[0]}"""']
    return [
        f'{indent}"""{text[0]}',
        *(f"{indent}{t}" if t else "" for t in text[1:]),
        f'{indent}"""',
    ]


def _where(obj: Object, f: Field) -> str:
    kind = "struct" if obj.is_struct else "table"
    where = f" ({obj.declaration_file})" if obj.declaration_file else ""
    return f"{kind} {obj.name}{where}: field {f.name}"


# ----------------------------------------------------------------------------- structs


def struct_format(schema: Schema, obj: Object) -> str:
    """The struct's bytes as a ``struct`` format (no byte order), padding as ``x``."""
    out = []
    cur = 0
    for f in sorted(obj.fields, key=lambda f: f.offset):
        if f.offset > cur:
            out.append(f"{f.offset - cur}x")
        t = f.type
        if t.base is BaseType.OBJ:
            inner = schema.objects[t.ref]
            out.append(struct_format(schema, inner))
            cur = f.offset + inner.bytesize
        elif t.base is BaseType.ARRAY:
            if t.element not in CODES:
                what = "structs" if t.element is BaseType.OBJ else t.element.name
                raise CodecError(f"{_where(obj, f)}: arrays of {what} are not supported")
            out.append(f"{t.fixed_length}{CODES[t.element]}")
            cur = f.offset + t.fixed_length * SIZES[t.element]
        else:
            out.append(CODES[t.base])
            cur = f.offset + SIZES[t.base]
    if obj.bytesize > cur:
        out.append(f"{obj.bytesize - cur}x")
    return "".join(out)


def _struct_module(m: _Module, obj: Object) -> None:
    schema = m.schema
    name = m.short
    fmt = struct_format(schema, obj)
    fields = sorted(obj.fields, key=lambda f: f.offset)
    m.add(f'_S: Final = struct.Struct("<{fmt}")', "", "")
    m.add(f"class {name}:")
    m.add(*_doc(obj.documentation, "    ", f"Reader of struct ``{obj.name}``."))
    m.add("", '    __slots__ = ("_buf", "_pos")', "    _buf: Buffer", "    _pos: int", "")
    m.add(
        "    @classmethod",
        "    def SizeOf(cls) -> int:",
        f"        return {obj.bytesize}",
        "",
        "    def Init(self, buf: Buffer, pos: int) -> None:",
        "        self._buf = buf",
        "        self._pos = pos",
    )
    for f in fields:
        meth = upper_camel(f.name)
        t = f.type
        m.add("")
        if t.base is BaseType.OBJ:
            cls = m.ref(t.ref)
            m.add(
                f"    def {meth}(self, obj: {cls} | None = None) -> {cls}:",
                f"        x = {cls}() if obj is None else obj",
                f"        x.Init(self._buf, self._pos + {f.offset})",
                "        return x",
            )
        elif t.base is BaseType.ARRAY:
            n = t.fixed_length
            size = SIZES[t.element]
            rd = READERS[t.element]
            m.add(
                f"    def {meth}(self, j: int | None = None) -> Any:",
                "        if j is None:",
                f'            return list(struct.unpack_from("<{n}{CODES[t.element]}", '
                f"self._buf, self._pos + {f.offset}))",
                f"        if 0 <= j < {n}:",
                f"            return {rd}(self._buf, self._pos + {f.offset} + j * {size})[0]",
                "        return None",
                "",
                f"    def {meth}AsNumpy(self) -> Any:",
                '        np: Any = importlib.import_module("numpy")',
                f'        return np.frombuffer(self._buf, dtype="{DTYPES[t.element]}", count={n}, '
                f"offset=self._pos + {f.offset})",
                "",
                f"    def {meth}Length(self) -> int:",
                f"        return {n}",
                "",
                f"    def {meth}IsNone(self) -> bool:",
                "        return False",
            )
        else:
            m.add(
                f"    def {meth}(self) -> {_scalar_type(t.base)}:",
                f"        return {READERS[t.base]}(self._buf, self._pos + {f.offset})[0]",
            )
    # object API
    m.add("", "")
    m.add(f"class {name}T:")
    m.add(*_doc((), "    ", f"Object API of struct ``{obj.name}``."))
    attrs = [lower_camel(f.name) for f in fields]
    m.add(
        "",
        f"    __slots__ = ({', '.join(repr(a) for a in sorted(attrs))}{',' if len(attrs) == 1 else ''})",
    )
    params = []
    for f, a in zip(fields, attrs, strict=True):
        params.append(f"{a}: {_struct_attr_type(m, f)} = {_struct_default(f)}")
    m.add("", "    def __init__(")
    m.add("        self,", *(f"        {p}," for p in params), "    ) -> None:")
    for a in attrs:
        m.add(f"        self.{a} = {a}")
    if not attrs:
        m.add("        pass")
    _object_api_init(m, name, obj.name)
    m.add(
        "",
        f"    def _UnPack(self, obj: {name} | None) -> None:",
        "        if obj is None:",
        "            return",
    )
    for f, a in zip(fields, attrs, strict=True):
        meth = upper_camel(f.name)
        if f.type.base is BaseType.OBJ:
            m.add(f"        self.{a} = {m.ref(f.type.ref, 'T')}.InitFromObj(obj.{meth}())")
        elif f.type.base is BaseType.ARRAY:
            m.add(f"        self.{a} = obj.{meth}()")
        else:
            m.add(f"        self.{a} = obj.{meth}()")
    leaves = []
    for f, a in zip(fields, attrs, strict=True):
        t = f.type
        if t.base is BaseType.OBJ:
            cls = m.ref(t.ref, "T")
            leaves.append(f"*(self.{a} if self.{a} is not None else {cls}())._Leaves()")
        elif t.base is BaseType.ARRAY:
            zero = (
                "False"
                if t.element is BaseType.BOOL
                else ("0.0" if t.element in (BaseType.FLOAT, BaseType.DOUBLE) else "0")
            )
            leaves.append(f"*(self.{a} if self.{a} is not None else [{zero}] * {t.fixed_length})")
        else:
            leaves.append(f"self.{a}")
    m.add(
        "",
        "    def _Leaves(self) -> tuple[Any, ...]:",
        f"        return ({', '.join(leaves)}{',' if len(leaves) == 1 else ''})",
        "",
        "    def Pack(self, builder: Any) -> int:",
        f"        return builder_struct(builder, {obj.minalign}, _S.pack(*self._Leaves()))",
        "",
        "    def _Put(self, buf: bytearray, at: int) -> None:",
        "        _S.pack_into(buf, at, *self._Leaves())",
    )
    # flatc's CreateX(builder, leaves...)
    names = _leaf_names(schema, obj, "")
    m.add("", "")
    m.add(
        f"def Create{upper_camel(name)}(builder: Any, {', '.join(f'{n}: Any' for n in names)}) -> int:"
    )
    leaf_args = [f"*{n}" if is_array else n for n, is_array in _leaf_names_kinds(schema, obj, "")]
    m.add(f"    return builder_struct(builder, {obj.minalign}, _S.pack({', '.join(leaf_args)}))")


def _leaf_names_kinds(schema: Schema, obj: Object, prefix: str) -> list[tuple[str, bool]]:
    out: list[tuple[str, bool]] = []
    for f in sorted(obj.fields, key=lambda f: f.offset):
        if f.type.base is BaseType.OBJ:
            out += _leaf_names_kinds(schema, schema.objects[f.type.ref], prefix + f.name + "_")
        else:
            out.append((prefix + f.name, f.type.base is BaseType.ARRAY))
    return out


def _leaf_names(schema: Schema, obj: Object, prefix: str) -> list[str]:
    return [n for n, _ in _leaf_names_kinds(schema, obj, prefix)]


def _struct_attr_type(m: _Module, f: Field) -> str:
    t = f.type
    if t.base is BaseType.OBJ:
        return f"{m.ref(t.ref, 'T')} | None"
    if t.base is BaseType.ARRAY:
        return f"list[{_scalar_type(t.element)}] | None"
    return _scalar_type(t.base)


def _struct_default(f: Field) -> str:
    t = f.type
    if t.base in (BaseType.OBJ, BaseType.ARRAY):
        return "None"
    if t.base is BaseType.BOOL:
        return "False"
    if t.base in (BaseType.FLOAT, BaseType.DOUBLE):
        return "0.0"
    return "0"


def _object_api_init(m: _Module, reader: str, qualified: str) -> None:
    m.add(
        "",
        "    @classmethod",
        f"    def InitFromBuf(cls, buf: Buffer, pos: int) -> {reader}T:",
        f"        obj = {reader}()",
        "        obj.Init(buf, pos)",
        "        return cls.InitFromObj(obj)",
        "",
        "    @classmethod",
        f"    def InitFromPackedBuf(cls, buf: Buffer, pos: int = 0) -> {reader}T:",
        "        return cls.InitFromBuf(buf, deref(buf, pos))",
        "",
        "    @classmethod",
        f"    def InitFromObj(cls, obj: {reader}) -> {reader}T:",
        "        x = cls()",
        "        x._UnPack(obj)",
        "        return x",
    )


# ----------------------------------------------------------------------------- tables


def _check_field(schema: Schema, obj: Object, f: Field) -> None:
    t = f.type
    if t.base is BaseType.VECTOR64 or "offset64" in f.attributes:
        raise CodecError(f"{_where(obj, f)}: 64-bit offsets are not supported")
    if t.base is BaseType.VECTOR and t.element is BaseType.UNION:
        raise CodecError(f"{_where(obj, f)}: vectors of unions are not supported")
    if (
        t.base is BaseType.VECTOR
        and t.element not in CODES
        and t.element
        not in (
            BaseType.STRING,
            BaseType.OBJ,
        )
    ):
        raise CodecError(f"{_where(obj, f)}: vectors of {t.element.name} are not supported")
    if t.base is BaseType.UNION:
        for v in schema.enums[t.ref].values:
            u = v.union_type
            if v.value and (
                u is None or u.base is not BaseType.OBJ or schema.objects[u.ref].is_struct
            ):
                raise CodecError(
                    f"{_where(obj, f)}: union member {v.name} is not a table (not supported)"
                )


def _layout(schema: Schema, obj: Object) -> tuple[list[_Slot], int, int]:
    """The inline part: each live field's offset, the part's size and alignment."""
    slots = []
    for f in obj.fields:
        if f.deprecated:
            continue
        _check_field(schema, obj, f)
        t = f.type
        if t.base in CODES:
            slots.append(_Slot(f, 0, SIZES[t.base], SIZES[t.base], CODES[t.base]))
        elif t.base is BaseType.OBJ and schema.objects[t.ref].is_struct:
            inner = schema.objects[t.ref]
            slots.append(_Slot(f, 0, inner.bytesize, inner.minalign, struct_format(schema, inner)))
        else:
            slots.append(_Slot(f, 0, 4, 4, "I"))
    cur = 4
    for s in sorted(slots, key=lambda s: (-s.align, -s.size, s.f.id)):
        cur = _align(cur, s.align)
        s.offset = cur
        cur += s.size
    align = max([4, *(s.align for s in slots)])
    return slots, cur, align


def encoded_layout(schema: Schema, obj: Object) -> tuple[dict[int, int], int, int]:
    """Where smfc's encoder puts a table's fields: each live field's offset in the inline
    part (by field id), the part's size (the vtable follows, 2-byte aligned) and its
    alignment. The fast verifiers check a table against it first."""
    slots, size, align = _layout(schema, obj)
    return {s.f.id: s.offset for s in slots}, size, align


def _table_align(schema: Schema, qualified: str) -> int:
    return _layout(schema, schema.objects[qualified])[2]


def _attr_type(m: _Module, f: Field) -> str:
    t = f.type
    if t.base.is_scalar:
        return _scalar_type(t.base) + (" | None" if f.optional else "")
    if t.base is BaseType.STRING:
        return "str | bytes | None"
    if t.base is BaseType.OBJ:
        return f"{m.ref(t.ref, 'T')} | None"
    if t.base is BaseType.UNION:
        members = [
            m.ref(v.union_type.ref, "T")
            for v in m.schema.enums[t.ref].values
            if v.value and v.union_type is not None
        ]
        return " | ".join([*members, "None"])
    item = t.element
    if item in BYTES:
        return "bytes | bytearray | memoryview | None"
    if item.is_scalar:
        return f"list[{_scalar_type(item)}] | None"
    if item is BaseType.STRING:
        return "list[str | bytes] | None"
    return f"list[{m.ref(t.ref, 'T')}] | None"


def _table_module(m: _Module, obj: Object) -> None:
    schema = m.schema
    name = m.short
    slots, tsize, talign = _layout(schema, obj)
    by_id = {s.f.id: s for s in slots}
    n = max((f.id for f in obj.fields), default=-1) + 1
    vt_off = _align(tsize, 2)
    vsize = 4 + 2 * n
    fixed = vt_off + vsize
    # the inline part and the vtable, one format
    fmt = ["<i"]
    cur = 4
    ordered = sorted(slots, key=lambda s: s.offset)
    for s in ordered:
        if s.offset > cur:
            fmt.append(f"{s.offset - cur}x")
        fmt.append(s.code)
        cur = s.offset + s.size
    if vt_off > cur:
        fmt.append(f"{vt_off - cur}x")
    fmt.append("HH" + "H" * n)
    ident = schema.file_identifiers.get(obj.name)
    m.add(f"_N: Final = {n}", f"_ALIGN: Final = {talign}")
    m.add(f'_FIXED: Final = struct.Struct("{"".join(fmt)}")')
    m.add(f'_VTABLE: Final = struct.Struct("<{n}H").unpack_from' if n else "")
    if ident:
        m.add(f"_IDENTIFIER: Final = {ident.encode()!r}")
    m.add("", "")
    # ------------------------------------------------------------------ reader
    m.add(f"class {name}:")
    m.add(
        *_doc(obj.documentation, "    ", f"Reader of table ``{obj.name}`` over a buffer (no copy).")
    )
    m.add(
        "",
        '    __slots__ = ("_buf", "_o", "_pos")',
        "    _buf: Buffer",
        "    _pos: int",
        "    _o: tuple[int, ...]",
        "",
    )
    m.add(
        "    @classmethod",
        f"    def GetRootAs(cls, buf: Buffer, offset: int = 0) -> {name}:",
        "        x = cls()",
        "        x.Init(buf, offset + U32(buf, offset)[0])",
        "        return x",
        "",
        "    @classmethod",
        f"    def GetRootAs{name}(cls, buf: Buffer, offset: int = 0) -> {name}:",
        '        """Deprecated: use GetRootAs."""',
        "        return cls.GetRootAs(buf, offset)",
    )
    if ident:
        m.add(
            "",
            "    @classmethod",
            f"    def {name}BufferHasIdentifier(",
            "        cls, buf: Buffer, offset: int, size_prefixed: bool = False",
            "    ) -> bool:",
            "        at = offset + (8 if size_prefixed else 4)",
            "        return bytes(buf[at : at + 4]) == _IDENTIFIER",
        )
    m.add(
        "",
        "    def Init(self, buf: Buffer, pos: int) -> None:",
        "        self._buf = buf",
        "        self._pos = pos",
    )
    if n:
        m.add(
            "        vt = pos - I32(buf, pos)[0]",
            f"        if vt >= 0 and U16(buf, vt)[0] >= {4 + 2 * n}:",
            "            self._o = _VTABLE(buf, vt + 4)",
            "        else:  # a vtable written for fewer fields (an older schema), or garbage",
            f"            self._o = short_vtable(buf, vt, _VTABLE, {n})",
        )
    else:
        m.add("        self._o = ()")
    for f in obj.fields:
        if f.deprecated:
            continue
        _reader_field(m, obj, f)
    # ------------------------------------------------------------------ object API
    live = [f for f in obj.fields if not f.deprecated]
    attrs = {f.id: lower_camel(f.name) for f in live}
    m.add("", "")
    m.add(f"class {name}T:")
    m.add(*_doc((), "    ", f"Object API of table ``{obj.name}``: ``Encode()`` is the fast path."))
    names = list(attrs.values())
    m.add(
        "",
        f"    __slots__ = ({', '.join(repr(a) for a in sorted(names))}{',' if len(names) == 1 else ''})",
    )
    m.add("", "    def __init__(", "        self,")
    for f in live:
        default = _literal(f) if f.type.base.is_scalar else "None"
        m.add(f"        {attrs[f.id]}: {_attr_type(m, f)} = {default},")
    m.add("    ) -> None:")
    for f in live:
        m.add(f"        self.{attrs[f.id]} = {attrs[f.id]}")
    if not live:
        m.add("        pass")
    m.add(
        "",
        "    @classmethod",
        f"    def InitFromBuf(cls, buf: Buffer, pos: int) -> {name}T:",
        "        x = cls.__new__(cls)  # every attribute is set by _UnPackAt",
        "        x._UnPackAt(buf, pos)",
        "        return x",
        "",
        "    @classmethod",
        f"    def InitFromPackedBuf(cls, buf: Buffer, pos: int = 0) -> {name}T:",
        "        return cls.InitFromBuf(buf, deref(buf, pos))",
        "",
        "    @classmethod",
        f"    def InitFromObj(cls, obj: {name}) -> {name}T:",
        "        x = cls.__new__(cls)",
        "        x._UnPackAt(obj._buf, obj._pos)",
        "        return x",
        "",
        f"    def _UnPack(self, obj: {name} | None) -> None:",
        "        if obj is not None:",
        "            self._UnPackAt(obj._buf, obj._pos)",
    )
    _unpack(m, obj, live, attrs, n)
    _pack(m, obj, live, attrs, n)
    _encoder(m, ident, obj, live, attrs, by_id, n, fixed, vt_off, vsize, tsize, talign)
    _builder_functions(m, obj, live, n)


def _reader_field(m: _Module, obj: Object, f: Field) -> None:
    schema = m.schema
    t = f.type
    meth = upper_camel(f.name)
    k = f.id
    head = [f"        o = self._o[{k}]"]
    m.add("")
    if t.base.is_scalar:
        typ = _scalar_type(t.base) + (" | None" if f.optional else "")
        m.add(
            f"    def {meth}(self) -> {typ}:",
            *head,
            f"        return {READERS[t.base]}(self._buf, self._pos + o)[0] if o else {_literal(f)}",
        )
        return
    if t.base is BaseType.STRING:
        m.add(
            f"    def {meth}(self) -> bytes | None:",
            *head,
            "        return string(self._buf, self._pos + o) if o else None",
        )
        return
    if t.base is BaseType.OBJ:
        target = schema.objects[t.ref]
        cls = m.ref(t.ref)
        at = "self._pos + o" if target.is_struct else "deref(self._buf, self._pos + o)"
        m.add(
            f"    def {meth}(self) -> {cls} | None:",
            *head,
            "        if not o:",
            "            return None",
            f"        x = {cls}()",
            f"        x.Init(self._buf, {at})",
            "        return x",
        )
        return
    if t.base is BaseType.UNION:
        m.add(
            f"    def {meth}(self) -> UnionValue | None:",
            *head,
            "        return UnionValue(self._buf, deref(self._buf, self._pos + o)) if o else None",
        )
        return
    # vectors
    item = t.element
    if item.is_scalar:
        size = SIZES[item]
        m.add(
            f"    def {meth}(self, j: int) -> {_scalar_type(item)}:",
            *head,
            "        if not o:",
            f"            return {'False' if item is BaseType.BOOL else '0'}",
            f"        return {READERS[item]}(self._buf, element(self._buf, self._pos + o, j, {size}))[0]",
            "",
            f"    def {meth}AsNumpy(self) -> Any:",
            *head,
            f'        return numpy(self._buf, self._pos + o, "{DTYPES[item]}", {size}) if o else 0',
        )
        if item in BYTES:
            m.add(
                "",
                f"    def {meth}AsBytes(self) -> memoryview:",
                '        """The bytes as a view of the buffer (no copy; ``bytes(...)`` for a copy)."""',
                *head,
                '        return view(self._buf, self._pos + o) if o else memoryview(b"")',
            )
        nested = _nested_type(schema, obj, f)
        if nested is not None:
            cls = m.ref(nested.name)
            m.add(
                "",
                f"    def {meth}NestedRoot(self) -> {cls} | None:",
                *head,
                "        if not o:",
                "            return None",
                f"        return {cls}.GetRootAs(self._buf, deref(self._buf, self._pos + o) + 4)",
            )
    elif item is BaseType.STRING:
        m.add(
            f"    def {meth}(self, j: int) -> bytes:",
            *head,
            '        return string(self._buf, element(self._buf, self._pos + o, j, 4)) if o else b""',
        )
    else:
        target = schema.objects[t.ref]
        cls = m.ref(t.ref)
        if target.is_struct:
            at = f"element(self._buf, self._pos + o, j, {target.bytesize})"
        else:
            at = "deref(self._buf, element(self._buf, self._pos + o, j, 4))"
        m.add(
            f"    def {meth}(self, j: int) -> {cls} | None:",
            *head,
            "        if not o:",
            "            return None",
            f"        x = {cls}()",
            f"        x.Init(self._buf, {at})",
            "        return x",
        )
    m.add(
        "",
        f"    def {meth}Length(self) -> int:",
        *head,
        "        return length(self._buf, self._pos + o) if o else 0",
        "",
        f"    def {meth}IsNone(self) -> bool:",
        f"        return not self._o[{k}]",
    )


def _unpack(m: _Module, obj: Object, live: list[Field], attrs: dict[int, str], n: int) -> None:
    schema = m.schema
    m.add("", "    def _UnPackAt(self, buf: Buffer, pos: int) -> None:")
    if live:
        m.add(
            "        vt = pos - I32(buf, pos)[0]",
            f"        if vt >= 0 and U16(buf, vt)[0] >= {4 + 2 * n}:",
            "            o = _VTABLE(buf, vt + 4)",
            "        else:",
            f"            o = short_vtable(buf, vt, _VTABLE, {n})",
        )
    else:
        m.add("        pass")
    for f in live:
        t = f.type
        a = attrs[f.id]
        m.add(f"        x = o[{f.id}]")
        if t.base.is_scalar:
            value = f"{READERS[t.base]}(buf, pos + x)[0] if x else {_literal(f)}"
        elif t.base is BaseType.STRING:
            value = "string(buf, pos + x) if x else None"
        elif t.base is BaseType.OBJ:
            cls = m.ref(t.ref, "T")
            at = "pos + x" if schema.objects[t.ref].is_struct else "deref(buf, pos + x)"
            value = f"{cls}.InitFromBuf(buf, {at}) if x else None"
        elif t.base is BaseType.UNION:
            union = m.ref(t.ref, "Creator")
            type_attr = attrs[f.id - 1]
            value = (
                f"{union}(self.{type_attr}, UnionValue(buf, deref(buf, pos + x))) if x else None"
            )
        elif t.element in BYTES:
            value = "bytes(view(buf, pos + x)) if x else None"
        elif t.element.is_scalar:
            value = (
                f'scalars(buf, pos + x, "{CODES[t.element]}", {SIZES[t.element]}) if x else None'
            )
        elif t.element is BaseType.STRING:
            value = "strings(buf, pos + x) if x else None"
        else:
            target = schema.objects[t.ref]
            cls = m.ref(t.ref, "T")
            if target.is_struct:
                value = (
                    f"[{cls}.InitFromBuf(buf, p) for p in range(deref(buf, pos + x) + 4, "
                    f"deref(buf, pos + x) + 4 + {target.bytesize} * length(buf, pos + x), "
                    f"{target.bytesize})] if x else None"
                )
            else:
                value = (
                    f"[{cls}.InitFromBuf(buf, p) for p in positions(buf, pos + x)] if x else None"
                )
        m.add(f"        self.{a} = {value}")


def _pack(m: _Module, obj: Object, live: list[Field], attrs: dict[int, str], n: int) -> None:
    schema = m.schema
    m.add(
        "",
        "    def Pack(self, builder: Any) -> int:",
        '        """Into a ``flatbuffers.Builder`` (to nest it in a message built there)."""',
    )
    offsets: dict[int, str] = {}
    for f in live:
        t = f.type
        a = attrs[f.id]
        v = f"self.{a}"
        var = f"x{f.id}"
        if t.base is BaseType.STRING:
            m.add(
                f"        {var} = builder.CreateString(bytes(utf8({v}))) if {v} is not None else 0"
            )
        elif (
            t.base is BaseType.OBJ and not schema.objects[t.ref].is_struct
        ) or t.base is BaseType.UNION:
            m.add(f"        {var} = {v}.Pack(builder) if {v} is not None else 0")
        elif t.base is BaseType.VECTOR:
            item = t.element
            m.add(f"        {var} = 0", f"        if {v} is not None:")
            if item in BYTES:
                m.add(f"            {var} = builder_bytes(builder, {v})")
            elif item.is_scalar:
                m.add(
                    f'            {var} = builder_scalars(builder, {v}, "{CODES[item]}", {SIZES[item]})'
                )
            elif item is BaseType.STRING:
                m.add(
                    f"            {var} = builder_offsets(builder, [builder.CreateString(bytes(utf8(s))) for s in {v}])"
                )
            else:
                target = schema.objects[t.ref]
                if target.is_struct:
                    m.add(
                        f"            builder.StartVector({target.bytesize}, len({v}), {target.minalign})",
                        f"            for s{f.id} in reversed({v}):",
                        f"                s{f.id}.Pack(builder)",
                        f"            {var} = builder.EndVector()",
                    )
                else:
                    m.add(
                        f"            {var} = builder_offsets(builder, [c.Pack(builder) for c in {v}])"
                    )
        else:
            continue
        offsets[f.id] = var
    m.add(f"        builder.StartObject({n})")
    for f in live:
        t = f.type
        v = f"self.{attrs[f.id]}"
        if t.base.is_scalar:
            default = _literal(f)
            if f.optional:
                m.add(
                    f"        if {v} is not None:",
                    f"            builder.Prepend{PREPEND[t.base]}Slot({f.id}, {v}, None)",
                )
            else:
                m.add(f"        builder.Prepend{PREPEND[t.base]}Slot({f.id}, {v}, {default})")
        elif f.id in offsets:
            m.add(
                f"        if {offsets[f.id]}:",
                f"            builder.PrependUOffsetTRelativeSlot({f.id}, {offsets[f.id]}, 0)",
            )
        else:  # a struct, written inline just before its slot
            m.add(
                f"        if {v} is not None:",
                f"            builder.PrependStructSlot({f.id}, {v}.Pack(builder), 0)",
            )
    m.add("        return int(builder.EndObject())")


def _vector_start(at: str, align: int) -> str:
    """Where a vector starts at or after ``at``: its length 4-aligned, its elements
    ``align``-aligned (``smf.codec.align_vector``, computed here)."""
    if align <= 4:
        return f"(({at} + 3) & -4)"
    return f"((({at} + {align + 3}) & -{align}) - 4)"


def _presence(f: Field, v: str, off: int) -> str:
    """The vtable entry of a scalar field: its offset unless it equals its default."""
    if f.optional:
        return f"{off} if {v} is not None else 0"
    if f.type.base is BaseType.BOOL:
        return f"{off} if {v} else 0" if not f.default_integer else f"0 if {v} else {off}"
    default = _literal(f)
    if "nan" in default:
        return str(off)
    return f"{off} if {v} != {default} else 0"


def _encoder(
    m: _Module,
    ident: str | None,
    obj: Object,
    live: list[Field],
    attrs: dict[int, str],
    by_id: dict[int, _Slot],
    n: int,
    fixed: int,
    vt_off: int,
    vsize: int,
    tsize: int,
    talign: int,
) -> None:
    schema = m.schema
    short = obj.short_name
    children = [
        f
        for f in live
        if not f.type.base.is_scalar
        and not (f.type.base is BaseType.OBJ and schema.objects[f.type.ref].is_struct)
    ]
    # ---------------------------------------------------------------- size
    m.add(
        "",
        "    def Encode(self, size_prefixed: bool = False) -> bytearray:",
        '        """This message as a finished FlatBuffer: one bytearray of its exact size (rounded',
        "        up to the alignment of its root table, as flatc does). ``size_prefixed``: with"
        + (
            " the\n        size first (uint32), as ``Builder.FinishSizePrefixed``. The schema's file"
            f"\n        identifier ({ident!r}) follows the root offset."
            if ident
            else " the\n        size first (uint32), as ``Builder.FinishSizePrefixed``."
        )
        + '"""',
        f"        head = {8 if ident else 4} + (4 if size_prefixed else 0)",
        f"        start = (head + {talign - 1}) & -{talign}",
        f"        buf = bytearray((self._Size(start) + {talign - 1}) & -{talign})",
        "        if size_prefixed:",
        "            PUT_U32(buf, 0, len(buf) - 4)",
        "        PUT_U32(buf, head - "
        + ("8" if ident else "4")
        + ", start - head + "
        + ("8" if ident else "4")
        + ")",
        *(["        buf[head - 4 : head] = _IDENTIFIER"] if ident else []),
        "        self._Write(buf, start)",
        "        return buf",
        "",
        "    def _Size(self, at: int) -> int:",
        f'        """Where this table, written at ``at`` ({talign}-aligned), ends with its children."""',
        f"        at += {fixed}",
    )
    for f in live:
        if f.required and not f.type.base.is_scalar:
            m.add(
                f"        if self.{attrs[f.id]} is None:",
                f'            raise missing("{short}", "{f.name}")',
            )
    for f in children:
        t = f.type
        a = f"self.{attrs[f.id]}"
        m.add(f"        v{f.id} = {a}", f"        if v{f.id} is not None:")
        vv = f"v{f.id}"
        if t.base is BaseType.STRING:
            m.add(
                f"            at = ((at + 3) & -4) + 5 + (len({vv}.encode()) if type({vv}) is str else len({vv}))"
            )
        elif t.base is BaseType.OBJ:
            al = _table_align(schema, t.ref)
            m.add(f"            at = {vv}._Size((at + {al - 1}) & -{al})")
        elif t.base is BaseType.UNION:
            m.add(f"            at = {vv}._Size((at + 7) & -8)")
        elif t.element in BYTES:
            m.add(f"            at = ((at + 3) & -4) + 4 + len({vv})")
        elif t.element.is_scalar:
            size = SIZES[t.element]
            m.add(f"            at = {_vector_start('at', size)} + 4 + {size} * len({vv})")
        elif t.element is BaseType.STRING:
            m.add(f"            at = strings_end({vv}, at)")
        else:
            target = schema.objects[t.ref]
            if target.is_struct:
                m.add(
                    f"            at = {_vector_start('at', target.minalign)} + 4 + {target.bytesize} * len({vv})"
                )
            else:
                al = _table_align(schema, t.ref)
                m.add(
                    f"            at = ((at + 3) & -4) + 4 + 4 * len({vv})",
                    # One loop variable per field: two vectors of different tables
                    # would give one name two types (mypy --strict refuses that).
                    f"            for c{f.id} in {vv}:",
                    f"                at = c{f.id}._Size((at + {al - 1}) & -{al})",
                )
    m.add("        return at")
    # ---------------------------------------------------------------- write
    m.add(
        "",
        "    def _Write(self, buf: bytearray, pos: int) -> int:",
        f'        """Write this table at ``pos`` ({talign}-aligned), then its children; returns the end."""',
        f"        end = pos + {fixed}",
    )
    for f in children:
        t = f.type
        a = f"self.{attrs[f.id]}"
        off = by_id[f.id].offset
        x = f"x{f.id}"
        vv = f"v{f.id}"
        m.add(f"        {x} = 0", f"        {vv} = {a}", f"        if {vv} is not None:")
        if t.base is BaseType.STRING:
            m.add(
                "            end = (end + 3) & -4",
                f"            {x} = end - pos - {off}",
                f"            end = put_string(buf, end, {vv})",
            )
        elif t.base is BaseType.OBJ:
            al = _table_align(schema, t.ref)
            m.add(
                f"            end = (end + {al - 1}) & -{al}",
                f"            {x} = end - pos - {off}",
                f"            end = {vv}._Write(buf, end)",
            )
        elif t.base is BaseType.UNION:
            m.add(
                "            end = (end + 7) & -8",
                f"            {x} = end - pos - {off}",
                f"            end = {vv}._Write(buf, end)",
            )
        elif t.element in BYTES:
            m.add(
                "            end = (end + 3) & -4",
                f"            {x} = end - pos - {off}",
                f"            end = put_bytes(buf, end, {vv})",
            )
        elif t.element.is_scalar:
            size = SIZES[t.element]
            m.add(
                f"            end = {_vector_start('end', size)}",
                f"            {x} = end - pos - {off}",
                f'            end = put_scalars(buf, end, {vv}, "{CODES[t.element]}", {size})',
            )
        elif t.element is BaseType.STRING:
            m.add(
                "            end = (end + 3) & -4",
                f"            {x} = end - pos - {off}",
                f"            end = put_strings(buf, end, {vv})",
            )
        else:
            target = schema.objects[t.ref]
            if target.is_struct:
                m.add(
                    f"            end = {_vector_start('end', target.minalign)}",
                    f"            {x} = end - pos - {off}",
                    f"            PUT_U32(buf, end, len({vv}))",
                    "            end += 4",
                    f"            for s{f.id} in {vv}:",
                    f"                s{f.id}._Put(buf, end)",
                    f"                end += {target.bytesize}",
                )
            else:
                al = _table_align(schema, t.ref)
                m.add(
                    "            end = (end + 3) & -4",
                    f"            {x} = end - pos - {off}",
                    f"            PUT_U32(buf, end, len({vv}))",
                    "            slot = end + 4",
                    f"            end = slot + 4 * len({vv})",
                    f"            for c{f.id} in {vv}:",
                    f"                end = (end + {al - 1}) & -{al}",
                    "                PUT_U32(buf, slot, end - slot)",
                    "                slot += 4",
                    f"                end = c{f.id}._Write(buf, end)",
                )
    # the fixed part: inline values in offset order, then the vtable
    values = [str(-vt_off)]
    for s in sorted(by_id.values(), key=lambda s: s.offset):
        f = s.f
        a = f"self.{attrs[f.id]}"
        t = f.type
        if t.base.is_scalar:
            values.append(f"0 if {a} is None else {a}" if f.optional else a)
        elif t.base is BaseType.OBJ and schema.objects[t.ref].is_struct:
            cls = m.ref(t.ref, "T")
            values.append(f"*({a} if {a} is not None else {cls}())._Leaves()")
        else:
            values.append(f"x{f.id}")
    values += [str(vsize), str(tsize)]
    for k in range(n):
        found = by_id.get(k)
        if found is None:
            values.append("0")
            continue
        f = found.f
        a = f"self.{attrs[f.id]}"
        t = f.type
        if t.base.is_scalar:
            values.append(_presence(f, a, found.offset))
        elif t.base is BaseType.OBJ and schema.objects[t.ref].is_struct:
            values.append(f"{found.offset} if {a} is not None else 0")
        else:
            values.append(f"{found.offset} if x{f.id} else 0")
    m.add("        _FIXED.pack_into(", "            buf,", "            pos,")
    for v in values:
        m.add(f"            {v},")
    m.add("        )", "        return end")


def _builder_functions(m: _Module, obj: Object, live: list[Field], n: int) -> None:
    """flatc's module functions for building by hand with a ``flatbuffers.Builder``."""
    name = m.short
    schema = m.schema
    funcs: list[tuple[str, str, list[str]]] = [
        ("Start", "builder: Any", [f"builder.StartObject({n})"])
    ]
    for f in live:
        meth = upper_camel(f.name)
        t = f.type
        if t.base.is_scalar:
            default = "None" if f.optional else _literal(f)
            body = [
                f"builder.Prepend{PREPEND[t.base]}Slot({f.id}, {lower_camel(f.name)}, {default})"
            ]
            typ = _scalar_type(t.base)
        elif t.base is BaseType.OBJ and schema.objects[t.ref].is_struct:
            body = [f"builder.PrependStructSlot({f.id}, {lower_camel(f.name)}, 0)"]
            typ = "int"
        else:
            body = [f"builder.PrependUOffsetTRelativeSlot({f.id}, {lower_camel(f.name)}, 0)"]
            typ = "int"
        funcs.append((f"Add{meth}", f"builder: Any, {lower_camel(f.name)}: {typ}", body))
        if t.base is BaseType.VECTOR:
            if t.element is BaseType.OBJ:
                target = schema.objects[t.ref]
                size, al = (target.bytesize, target.minalign) if target.is_struct else (4, 4)
            elif t.element is BaseType.STRING:
                size, al = 4, 4
            else:
                size = al = SIZES[t.element]
            funcs.append(
                (
                    f"Start{meth}Vector",
                    "builder: Any, numElems: int",
                    [f"return int(builder.StartVector({size}, numElems, {al}))"],
                )
            )
            if t.element in BYTES:
                funcs.append(
                    (
                        f"Make{meth}VectorFromBytes",
                        "builder: Any, bytes: bytes",
                        ["return int(builder.CreateByteVector(bytes))"],
                    )
                )
    funcs.append(("End", "builder: Any", ["return int(builder.EndObject())"]))
    for fname, params, body in funcs:
        returns = "int" if body[0].startswith("return") else "None"
        for prefixed in (name + fname, fname):
            m.add("", "")
            m.add(f"def {prefixed}({params}) -> {returns}:", *(f"    {b}" for b in body))


# ----------------------------------------------------------------------------- enums


def _enum_module(m: _Module, enum: Enum) -> None:
    name = m.short
    m.add(f"class {name}:")
    m.add(
        *_doc(
            enum.documentation, "    ", f"{'Union' if enum.is_union else 'Enum'} ``{enum.name}``."
        )
    )
    m.add("")
    for v in enum.values:
        m.add(f"    {v.name}: Final = {v.value}")
    if not enum.is_union:
        return
    members = [
        (v.name, m.ref(v.union_type.ref, "T")) for v in enum.values if v.value and v.union_type
    ]
    returns = " | ".join([*(c for _, c in members), "None"])
    m.add(
        "",
        "",
        f"def {name}Creator(unionType: int, table: Any) -> {returns}:",
        '    """The object-API instance of the member ``table`` (a union field\'s value) holds."""',
        "    if table is None:",
        "        return None",
    )
    for member, cls in members:
        m.add(
            f"    if unionType == {name}.{member}:",
            f"        return {cls}.InitFromBuf(table.Bytes, table.Pos)",
        )
    m.add("    return None")


# ----------------------------------------------------------------------------- modules


def render_type(schema: Schema, qualified: str) -> str:
    """The module of one table, struct, enum or union."""
    obj = schema.objects.get(qualified)
    enum = schema.enums.get(qualified)
    source = obj.declaration_file if obj is not None else enum.declaration_file if enum else ""
    short = qualified.rpartition(".")[2]
    taken = {
        short,
        short + "T",
        short + "Creator",
        *RUNTIME,
        "struct",
        "importlib",
        "Any",
        "Final",
        "annotations",
    }
    taken |= {f"_{x}" for x in ("S", "N", "ALIGN", "FIXED", "VTABLE", "IDENTIFIER")}
    verify_runtime: dict[str, str] = {}
    if obj is not None and not obj.is_struct:
        # its verifiers' names; smf.verify's aliased where the table itself has the name
        own = {short, short + "T", short + "Creator"}
        verify_runtime = {n: f"_smf_{n}" for n in VERIFY_RUNTIME if n in own}
        taken |= own_names(schema, obj) | set(verify_runtime.values())
    if obj is not None:  # a method's name in the class would shadow an imported type
        for f in obj.fields:
            meth = upper_camel(f.name)
            taken |= {
                meth + s for s in ("", "Length", "IsNone", "AsNumpy", "AsBytes", "NestedRoot")
            }
            taken |= {lower_camel(f.name), "Add" + meth, f"Start{meth}Vector"}
    m = _Module(schema, qualified, source, ImportTable(taken))
    before: list[str] = []  # the table's verifiers
    after: list[str] = []  # what must follow the imports of other generated modules
    if obj is not None and obj.is_struct:
        _struct_module(m, obj)
        kind = "struct"
    elif obj is not None:
        _table_module(m, obj)
        before, after = table_verifiers(schema, obj, m.imports, verify_runtime)
        for code in before:
            m.add("", "", code)
        kind = "table"
    else:
        assert enum is not None
        _enum_module(m, enum)
        kind = "union" if enum.is_union else "enum"
    body = "\n".join(m.lines)
    used = sorted(n for n in RUNTIME if _uses(body, n))
    code = "\n".join([*before, *after])
    verify = [n for n in sorted(VERIFY_RUNTIME) if _uses(code, verify_runtime.get(n, n))]
    typing = [n for n in ("Any", "Final") if _uses(body, n)]
    head = [
        f"# generated by smfc from {source}, do not edit",
        "# ruff: noqa: E402, E501, I001, RUF023, RUF100",
        "# fmt: off",
        f'"""The {kind} ``{qualified}``: generated by smfc (see smfc/codecs.py)."""',
        "",
        "from __future__ import annotations",
        "",
    ]
    if "importlib." in body:
        head.append("import importlib")
    if "struct." in body:
        head.append("import struct")
    if typing:
        head.append(f"from typing import {', '.join(typing)}")
    if used:
        head.append("")
        head.append("from smf.codec import (")
        head += [f"    {u}," for u in used]
        head.append(")")
    if verify:
        if not used:
            head.append("")
        head.append("from smf.verify import (")
        head += [
            f"    {n} as {verify_runtime[n]}," if n in verify_runtime else f"    {n},"
            for n in verify
        ]
        head.append(")")
    tail = m.imports.lines()
    out = "\n".join(head) + "\n\n\n" + body + "\n"
    if tail:
        out += (
            "\n\n# Imports of other generated modules come last: types may refer to each other.\n"
        )
        out += "\n".join(tail) + "\n"
    for code in after:
        out += "\n\n" + code + "\n"
    return out


def _uses(body: str, name: str) -> bool:
    import re

    # functions count when called (so a word in a docstring does not), classes and
    # constants wherever they appear
    tail = r"\(" if name[:1].islower() else r"\b"
    return re.search(rf"(?<![\w.\"]){re.escape(name)}{tail}", body) is not None


def check(schema: Schema) -> list[str]:
    """Fields smfc cannot generate, one message each."""
    problems = []
    for obj in sorted(schema.objects.values(), key=lambda o: o.name):
        try:
            if obj.is_struct:
                struct_format(schema, obj)
            else:
                _layout(schema, obj)
        except CodecError as exc:
            if str(exc) not in problems:  # a struct's fault also shows in its tables
                problems.append(str(exc))
    return problems
