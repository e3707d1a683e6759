# ruff: noqa: E501  (lines of generated code are kept whole, so the output can be read here)
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
    checks: dict[str, str] = field(default_factory=dict)  # table -> _check_T (general path)
    unions: dict[str, str] = field(default_factory=dict)  # union -> _U_VERIFIERS

    def names(self) -> set[str]:
        """The module-level names the verifiers define."""
        return {*self.functions.values(), *self.checks.values(), *self.unions.values()}


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
        out.checks[t.name] = f"_check_{stem(t.name)}"
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
    """``def _check_T(v, pos)``, the general path, formatted as ruff formats it."""
    lines = call("", f"def {names.checks[obj.name]}", ["v: Verifier", "pos: int"], " -> None:")
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


def render_fast(schema: Schema, names: Verifiers, obj: Object, doc: str) -> str:
    """``def verify_T(v, pos)``: the fast path. One expression checks the table and every
    field that needs no recursion (placement in the table, alignment, offsets, strings,
    vectors of scalars and structs), inline: no call per field. If anything is off it
    hands the table to ``_check_T`` (the general path, which raises the precise fault or
    passes what the fast path was too strict for). Then the tables it holds are
    verified, one level deeper, as the general path does."""
    fn = names.functions[obj.name]
    check = names.checks[obj.name]
    live = [f for f in _live(obj.fields) if f.type.base is not BaseType.UTYPE]
    n = max((f.id for f in obj.fields), default=-1) + 1
    conditions: list[str] = []
    later: list[str] = []
    general = False
    offset_ok = "(r := U32(buf, a)[0]) != 0 and a + r < size"
    vector_at = "(r := U32(buf, a)[0]) != 0 and not (p := a + r) & 3 and p <= size - 4"
    for f in live:
        t = f.type
        k = f.id
        slot = 4 + 2 * k
        name = f'"{f.name}"'
        required = ", required=True" if f.required else ""

        def placed(size: int, align: int, content: str = "", f: Field = f, k: int = k) -> str:
            inner = f"x + {size} <= tsize" if size > 1 else "x < tsize"
            if content:
                inner += f" and not (a := pos + x) & 3 and {content}"
            elif align > 1:
                inner += f" and not (pos + x) & {align - 1}"
            if f.required:
                return f"((x := o[{k}]) != 0 and {inner})"
            return f"(not (x := o[{k}]) or ({inner}))"

        nested = _nested_type(schema, obj, f)
        if t.base in SCALAR_SIZES:
            conditions.append(placed(SCALAR_SIZES[t.base], SCALAR_SIZES[t.base]))
        elif t.base is BaseType.STRING:
            conditions.append(
                placed(
                    4,
                    4,
                    f"{vector_at} and (e := p + 4 + U32(buf, p)[0]) < size and not buf[e]",
                )
            )
        elif t.base is BaseType.OBJ:
            target = schema.objects[t.ref]
            if target.is_struct:
                conditions.append(placed(target.bytesize, target.minalign))
            else:
                conditions.append(placed(4, 4, offset_ok))
                child = names.functions[target.name]
                later += [
                    f"    if x := o[{k}]:",
                    f'        v.visit({child}, pos + x + U32(buf, pos + x)[0], "{obj.short_name}", {name}, -1)',
                ]
        elif t.base is BaseType.UNION:
            conditions.append(f"(not (y := o[{k - 1}]) or y < tsize)")
            conditions.append(placed(4, 4, offset_ok))
            general = True
            later.append(f"    t.union({slot}, {name}, {names.unions[t.ref]}{required})")
        elif t.base is BaseType.VECTOR:
            item = t.element
            if nested is not None:
                conditions.append(placed(4, 4, _vector_fits(vector_at, 1)))
                general = True
                later.append(
                    f"    t.nested({slot}, {name}, {names.functions[nested.name]}{required})"
                )
            elif item is BaseType.STRING:
                conditions.append(placed(4, 4, _vector_fits(vector_at, 4)))
                general = True
                later.append(f"    t.strings({slot}, {name}{required})")
            elif item is BaseType.OBJ and not schema.objects[t.ref].is_struct:
                conditions.append(placed(4, 4, _vector_fits(vector_at, 4)))
                child = names.functions[t.ref]
                later += [
                    f"    if x := o[{k}]:",
                    "        a = pos + x + U32(buf, pos + x)[0]",
                    f'        v.table_vector(a + 4, U32(buf, a)[0], {child}, "{obj.short_name}", {name})',
                ]
            else:
                size = (
                    schema.objects[t.ref].bytesize if item is BaseType.OBJ else SCALAR_SIZES[item]
                )
                conditions.append(placed(4, 4, _vector_fits(vector_at, size)))
        else:
            raise VerifierError(f"{obj.name}.{f.name}: cannot verify a field of type {t.base.name}")
    lines = ["# fmt: off", f"def {fn}(v: Verifier, pos: int) -> None:", doc]
    lines += [
        "    buf = v.buf",
        "    size = v.size",
        "    o: tuple[int, ...] | None = None",
        "    tsize = 0",
        "    if not pos & 3 and pos <= size - 4 and 0 <= (vt := pos - I32(buf, pos)[0]) <= size - 4 and not vt & 1:",
        "        vsize, tsize = U16X2(buf, vt)",
        "        if not vsize & 1 and 4 <= vsize <= size - vt and 4 <= tsize <= size - pos:",
        f"            o = _VTABLE_{n}(buf, vt + 4) if vsize >= {4 + 2 * n} else v.short_offsets(vt, vsize, {n})",
    ]
    if conditions:
        lines.append("    if o is None or not (")
        if len(conditions) == 1 and conditions[0].startswith("(") and conditions[0].endswith(")"):
            conditions = [conditions[0][1:-1]]  # no parentheses in parentheses (ruff's UP034)
        for i, c in enumerate(conditions):
            lines.append(f"        {c}" + (" and" if i < len(conditions) - 1 else ""))
        lines.append("    ):")
    else:
        lines.append("    if o is None:")
    lines += [f"        {check}(v, pos)", "        return"]
    if general:
        lines.append(f'    t = v.table(pos, "{obj.short_name}")')
    lines += later
    lines.append("# fmt: on")
    return "\n".join(lines)


def _vector_fits(vector_at: str, size: int) -> str:
    return f"{vector_at} and U32(buf, p)[0] * {size} <= size - p - 4"


def vtable_readers(schema: Schema, tables: Iterable[Object]) -> list[str]:
    """The module constants the fast verifiers unpack vtables with, one per field count."""
    counts = sorted({max((f.id for f in t.fields), default=-1) + 1 for t in tables})
    return [f"_VTABLE_{n}: Final = vtable_reader({n})" for n in counts]
