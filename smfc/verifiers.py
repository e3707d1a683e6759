"""Renders the verifiers of a stub module: one ``verify_T(v, pos)`` per table a service
sends or receives (and every table those reach), over the primitives of ``smf.verify``.

Each function opens its table and checks its fields in id order, one line per field::

    def verify_Figure(v: Verifier, pos: int) -> None:
        t = v.table(pos, "Figure")
        t.scalar(4, "id", 8)
        t.string(6, "name", required=True)
        t.union(10, "shape", _Shape_VERIFIERS)
        t.tables(12, "points", verify_Point)

A union gets a constant mapping its type values to the members' verifiers. The functions
live in the service module (not a module per namespace): a stub module stays
self-contained, and tables that refer to each other across namespaces need no imports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .layout import call
from .model import BaseType, Enum, Field, Object, Schema, Type

SCALAR_SIZES: dict[BaseType, int] = {
    BaseType.UTYPE: 1,
    BaseType.BOOL: 1,
    BaseType.BYTE: 1,
    BaseType.UBYTE: 1,
    BaseType.SHORT: 2,
    BaseType.USHORT: 2,
    BaseType.INT: 4,
    BaseType.UINT: 4,
    BaseType.FLOAT: 4,
    BaseType.LONG: 8,
    BaseType.ULONG: 8,
    BaseType.DOUBLE: 8,
}


class VerifierError(ValueError):
    """A field smfc cannot verify (flatc refuses these for Python, so never in practice)."""


@dataclass
class Verifiers:
    """The verifiers of one stub module: names by qualified type, and their code."""

    functions: dict[str, str] = field(default_factory=dict)  # table -> verify_T
    unions: dict[str, str] = field(default_factory=dict)  # union -> _U_VERIFIERS

    def names(self) -> set[str]:
        """The module-level names the verifiers define."""
        return {*self.functions.values(), *self.unions.values()}


def _nested_type(schema: Schema, owner: Object, f: Field) -> Object | None:
    """The root table of a ``nested_flatbuffer`` field, resolved as flatc does: the name
    as written, else relative to the enclosing namespaces of the field's table."""
    name = f.attributes.get("nested_flatbuffer")
    if not name or f.type.base is not BaseType.VECTOR or f.type.element is not BaseType.UBYTE:
        return None
    namespace = list(owner.namespace)
    while True:
        candidate = ".".join([*namespace, name])
        obj = schema.objects.get(candidate)
        if obj is not None and not obj.is_struct:
            return obj
        if not namespace:
            return None
        namespace.pop()


def _union_members(enum: Enum, schema: Schema) -> list[tuple[int, Object]]:
    members = []
    for value in enum.values:
        t = value.union_type
        if value.value == 0 or t is None:
            continue  # NONE
        obj = schema.objects.get(t.ref) if t.base is BaseType.OBJ else None
        if obj is None or obj.is_struct:
            raise VerifierError(f"union {enum.name}: member {value.name} is not a table")
        members.append((value.value, obj))
    return members


def _live(fields: Iterable[Field]) -> list[Field]:
    return [f for f in fields if not f.deprecated]


def reachable(schema: Schema, roots: Iterable[Object]) -> tuple[list[Object], list[Enum]]:
    """Every table reachable from ``roots`` (fields, vectors, unions, nested buffers) and
    the unions on the way, each sorted by qualified name."""
    tables: dict[str, Object] = {}
    unions: dict[str, Enum] = {}
    todo = [r for r in roots if not r.is_struct]
    while todo:
        obj = todo.pop()
        if obj.name in tables:
            continue
        tables[obj.name] = obj
        for f in _live(obj.fields):
            t = f.type
            if t.item is BaseType.OBJ:
                child = schema.objects[t.ref]
                if not child.is_struct:
                    todo.append(child)
            elif t.base is BaseType.UNION:
                enum = schema.enums[t.ref]
                unions[enum.name] = enum
                todo.extend(member for _, member in _union_members(enum, schema))
            nested = _nested_type(schema, obj, f)
            if nested is not None:
                todo.append(nested)
    return (
        [tables[k] for k in sorted(tables)],
        [unions[k] for k in sorted(unions)],
    )


def plan(schema: Schema, roots: Iterable[Object]) -> tuple[Verifiers, list[Object], list[Enum]]:
    """Name the verifiers of everything reachable from ``roots``: ``verify_<Name>`` and
    ``_<Name>_VERIFIERS``, with the namespace spelled in (``a_b_Name``) for bare names
    that two reachable types share."""
    tables, unions = reachable(schema, roots)
    count: dict[str, int] = {}
    for q in [t.name for t in tables] + [u.name for u in unions]:
        bare = q.rpartition(".")[2]
        count[bare] = count.get(bare, 0) + 1

    def stem(qualified: str) -> str:
        bare = qualified.rpartition(".")[2]
        return bare if count[bare] == 1 else qualified.replace(".", "_")

    out = Verifiers()
    for t in tables:
        out.functions[t.name] = f"verify_{stem(t.name)}"
    for u in unions:
        out.unions[u.name] = f"_{stem(u.name)}_VERIFIERS"
    return out, tables, unions


def _field_check(schema: Schema, names: Verifiers, owner: Object, f: Field) -> list[str] | None:
    """The arguments and method of one field's check (None: nothing to check)."""
    t: Type = f.type
    slot = str(4 + 2 * f.id)
    name = f'"{f.name}"'
    required = ["required=True"] if f.required else []
    nested = _nested_type(schema, owner, f)
    if t.base is BaseType.UTYPE:
        return None  # checked with its union
    if t.base in SCALAR_SIZES:
        return ["scalar", slot, name, str(SCALAR_SIZES[t.base])]
    if t.base is BaseType.STRING:
        return ["string", slot, name, *required]
    if t.base is BaseType.UNION:
        return ["union", slot, name, names.unions[t.ref], *required]
    if t.base is BaseType.OBJ:
        obj = schema.objects[t.ref]
        if obj.is_struct:
            return ["struct", slot, name, str(obj.bytesize), str(obj.minalign), *required]
        return ["table", slot, name, names.functions[obj.name], *required]
    if t.base is BaseType.VECTOR:
        if nested is not None:
            return ["nested", slot, name, names.functions[nested.name], *required]
        if t.element is BaseType.STRING:
            return ["strings", slot, name, *required]
        if t.element is BaseType.OBJ:
            obj = schema.objects[t.ref]
            if obj.is_struct:
                return ["vector", slot, name, str(obj.bytesize), *required]
            return ["tables", slot, name, names.functions[obj.name], *required]
        if t.element in SCALAR_SIZES:
            return ["vector", slot, name, str(SCALAR_SIZES[t.element]), *required]
    raise VerifierError(
        f"{owner.name}.{f.name}: cannot verify a field of type {t.base.name}"
        + (f" of {t.element.name}" if t.element is not BaseType.NONE else "")
    )


def render_table(schema: Schema, names: Verifiers, obj: Object, doc: str) -> str:
    """``def verify_T(v, pos)``, formatted as ruff formats it."""
    lines = call("", f"def {names.functions[obj.name]}", ["v: Verifier", "pos: int"], " -> None:")
    lines.append(doc)
    opening = f'v.table(pos, "{obj.short_name}")'
    checks = [c for f in _live(obj.fields) if (c := _field_check(schema, names, obj, f))]
    if not checks:
        lines.append(f"    {opening}")
    else:
        lines.append(f"    t = {opening}")
        for method, *arguments in checks:
            lines += call("    ", f"t.{method}", arguments)
    return "\n".join(lines)


def render_union(schema: Schema, names: Verifiers, enum: Enum) -> str:
    """The union's ``type value -> verifier`` map (exploded: ruff keeps it so)."""
    members = _union_members(enum, schema)
    if not members:
        return f"{names.unions[enum.name]}: dict[int, VerifyFn] = {{}}"
    lines = [f"{names.unions[enum.name]} = {{"]
    for value, member in members:
        lines.append(f"    {value}: {names.functions[member.name]},")
    lines.append("}")
    return "\n".join(lines)
