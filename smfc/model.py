"""What smfc knows about a schema: the types and services flatc parsed, and the wire ids.

The model is filled from flatc's binary schema (``smfc.bfbs``) and read by the
renderers. Names are kept exactly as flatc reports them: ``Object.name`` and
``Service.name`` are fully qualified with dots (``smf_gen.demo.Request``).
"""

from __future__ import annotations

import keyword
import zlib
from dataclasses import dataclass, field
from enum import IntEnum


class BaseType(IntEnum):
    """``reflection.BaseType``."""

    NONE = 0
    UTYPE = 1
    BOOL = 2
    BYTE = 3
    UBYTE = 4
    SHORT = 5
    USHORT = 6
    INT = 7
    UINT = 8
    LONG = 9
    ULONG = 10
    FLOAT = 11
    DOUBLE = 12
    STRING = 13
    VECTOR = 14
    OBJ = 15
    UNION = 16
    ARRAY = 17
    VECTOR64 = 18

    @property
    def is_scalar(self) -> bool:
        return BaseType.UTYPE <= self <= BaseType.DOUBLE

    @property
    def python_scalar(self) -> str:
        """The Python type flatc's accessors return for this scalar."""
        if self is BaseType.BOOL:
            return "bool"
        if self in (BaseType.FLOAT, BaseType.DOUBLE):
            return "float"
        return "int"


@dataclass(frozen=True)
class Type:
    base: BaseType
    element: BaseType = BaseType.NONE
    ref: str = ""  # qualified name of the object (OBJ) or enum/union (scalars, UTYPE, UNION)
    fixed_length: int = 0

    @property
    def item(self) -> BaseType:
        """The element type of vectors and arrays, the type itself otherwise."""
        if self.base in (BaseType.VECTOR, BaseType.VECTOR64, BaseType.ARRAY):
            return self.element
        return self.base


@dataclass(frozen=True)
class Field:
    name: str
    type: Type
    id: int
    offset: int = 0  # a struct field's byte offset in its struct
    default_integer: int = 0
    default_real: float = 0.0
    deprecated: bool = False
    required: bool = False
    key: bool = False
    optional: bool = False
    attributes: dict[str, str] = field(default_factory=dict)
    documentation: tuple[str, ...] = ()


def split_name(qualified: str) -> tuple[tuple[str, ...], str]:
    """``"a.b.C"`` -> ``(("a", "b"), "C")``."""
    *namespace, name = qualified.split(".")
    return tuple(namespace), name


class Qualified:
    """Something named by a dotted, fully qualified ``name`` (``a.b.C``)."""

    name: str

    @property
    def namespace(self) -> tuple[str, ...]:
        return split_name(self.name)[0]

    @property
    def short_name(self) -> str:
        return split_name(self.name)[1]


@dataclass
class Object(Qualified):
    """A table or a struct."""

    name: str
    fields: list[Field]
    is_struct: bool
    bytesize: int = 0
    minalign: int = 1
    attributes: dict[str, str] = field(default_factory=dict)
    documentation: tuple[str, ...] = ()
    declaration_file: str = ""

    @property
    def cpp_name(self) -> str:
        """The C++ spelling (``a::b::C``) that method ids are computed from."""
        return self.name.replace(".", "::")


@dataclass(frozen=True)
class EnumVal:
    name: str
    value: int
    union_type: Type | None = None
    documentation: tuple[str, ...] = ()


@dataclass
class Enum(Qualified):
    """An enum or a union (``is_union``)."""

    name: str
    values: list[EnumVal]
    is_union: bool
    underlying_type: Type
    attributes: dict[str, str] = field(default_factory=dict)
    documentation: tuple[str, ...] = ()
    declaration_file: str = ""


def crc32(text: str) -> int:
    """CRC-32/IEEE of ``text`` (UTF-8), as smf computes service and method ids."""
    return zlib.crc32(text.encode("utf-8")) & 0xFFFFFFFF


@dataclass
class Method:
    name: str
    request: Object
    response: Object
    attributes: dict[str, str] = field(default_factory=dict)
    documentation: tuple[str, ...] = ()

    @property
    def id_text(self) -> str:
        """What the method id is the CRC of: ``Method:In::FQN:Out::FQN``."""
        return f"{self.name}:{self.request.cpp_name}:{self.response.cpp_name}"

    @property
    def method_id(self) -> int:
        return crc32(self.id_text)


@dataclass
class Service(Qualified):
    name: str
    methods: list[Method]
    attributes: dict[str, str] = field(default_factory=dict)
    documentation: tuple[str, ...] = ()
    declaration_file: str = ""

    @property
    def service_id(self) -> int:
        """``crc32`` of the bare service name (no namespace), as in C++ smf."""
        return crc32(self.short_name)

    def wire_id(self, method: Method) -> int:
        """The request's ``meta``: ``service_id ^ method_id``."""
        return self.service_id ^ method.method_id


@dataclass
class Schema:
    """Every type and service reachable from the schemas smfc was given, by qualified name."""

    objects: dict[str, Object] = field(default_factory=dict)
    enums: dict[str, Enum] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    file_identifiers: dict[str, str] = field(default_factory=dict)  # root table -> identifier


def python_keyword(name: str) -> bool:
    """True for names Python cannot use as identifiers (hard keywords only)."""
    return keyword.iskeyword(name)
