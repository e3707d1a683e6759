# ruff: noqa: E501  (lines of generated code are kept whole, so the output can be read here)
"""Renders the verifiers of a table, into the table's own module: ``verify_T(v, pos)``
over the primitives of ``smf.verify``; a stub module imports those of the tables its
service sends or receives (and every table those reach).

Each table gets three functions. ``verify_T`` (the fast path, ``render_fast``) checks the
table and its fields in one inline expression and hands anything unusual to ``_check_T``;
``_each_T`` (``render_each``, for tables held in vectors) does the same for every element
of a vector in one loop. ``_check_T`` (the general path) opens its table and checks its
fields in id order, one line per field, raising the precise fault::

    def _check_Figure(v: Verifier, pos: int) -> None:
        t = v.table(pos, "Figure")
        t.scalar(4, "id", 8)
        t.string(6, "name", required=True)
        t.union(10, "shape", _Shape_VERIFIERS)
        t.tables(12, "points", verify_Point)

A union gets a constant mapping its type values to the members' verifiers, in the module
of each table with a field of it (and in the stub modules that reach it). The verifiers of
the tables a table holds are imported from their modules with the module's other imports
of generated modules, at its end, and found when the functions are called: modules of
tables that hold each other import each other, and load in either order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import FunctionType, ModuleType
from typing import Any

from .layout import call
from .model import BaseType, Enum, Field, Object, Schema, Type
from .tables import ImportTable

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
    vectors: dict[str, str] = field(default_factory=dict)  # vector element -> _each_T
    layouts: dict[str, str] = field(default_factory=dict)  # table -> _LAYOUT_T (smfc's)
    runtime: dict[str, str] = field(default_factory=dict)  # smf.verify name -> local name

    def rt(self, name: str) -> str:
        """The local name of ``smf.verify``'s ``name`` (aliased where the module's own
        table has that name)."""
        return self.runtime.get(name, name)

    def names(self) -> set[str]:
        """The module-level names the verifiers define."""
        return {
            *self.functions.values(),
            *self.checks.values(),
            *self.unions.values(),
            *self.vectors.values(),
            *self.layouts.values(),
        }


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
    """A stub module's local names of the verifiers of everything reachable from
    ``roots`` (each imported from its table's module): ``verify_<Name>`` and
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


# ------------------------------------------------------------------ a table's own module

RUNTIME = (
    "OUT_OF_BOUNDS",
    "VerificationError",
    "Verifier",
    "VerifyFn",
    "unpacker",
    "vtable_reader",
)
"""What the verifiers use from ``smf.verify`` (a leaf module, as ``smf.codec``)."""


def _vector_elements(schema: Schema) -> set[str]:
    """The tables some table of the schema holds in a vector."""
    out = set()
    for obj in schema.objects.values():
        for f in _live(obj.fields):
            element = schema.objects.get(f.type.ref) if f.type.base is BaseType.VECTOR else None
            if element is not None and not element.is_struct:
                out.add(element.name)
    return out


def _has_each(schema: Schema, obj: Object) -> bool:
    """Whether ``obj``'s module defines ``_each_T`` (a table held in a vector somewhere,
    whose fast path is all inline)."""
    return obj.name in _vector_elements(schema) and not general_only(schema, obj)


def _own_unions(schema: Schema, obj: Object) -> dict[str, str]:
    """The unions of ``obj``'s fields -> the name of their map in its module."""
    enums = sorted(
        {f.type.ref for f in _live(obj.fields) if f.type.base is BaseType.UNION},
    )
    bare = [q.rpartition(".")[2] for q in enums]
    return {
        q: f"_{b if bare.count(b) == 1 else q.replace('.', '_')}_VERIFIERS"
        for q, b in zip(enums, bare, strict=True)
    }


def own_names(schema: Schema, obj: Object) -> set[str]:
    """The module-level names a table's verifiers bind in its module (so that the names
    it imports are aliased around them)."""
    short = obj.short_name
    out = {f"verify_{short}", f"_check_{short}", f"_each_{short}", f"_LAYOUT_{short}"}
    out |= {f"_VT_{_slots(obj) + 2}", *RUNTIME, *_own_unions(schema, obj).values()}
    return out


def table_verifiers(
    schema: Schema, obj: Object, imports: ImportTable, runtime: dict[str, str]
) -> tuple[list[str], list[str]]:
    """The verifiers of table ``obj``, for its own module: the code that goes before the
    module's imports of other generated modules (the constants, ``verify_T``, ``_each_T``
    and ``_check_T``) and after them (the maps of its unions, built from the members'
    verifiers, so they must be imported first).

    Those of the tables it holds are imported from their modules. The functions resolve
    them when called, so modules of tables that hold each other (``Thing`` and ``Peer``,
    a cycle of imports) load in either order: each defines its functions before it
    imports the others'."""
    from .services import docstring  # (services imports this module)

    short = obj.short_name
    names = Verifiers(runtime=runtime)
    names.functions[obj.name] = f"verify_{short}"
    names.checks[obj.name] = f"_check_{short}"
    if not general_only(schema, obj):
        names.layouts[obj.name] = f"_LAYOUT_{short}"
    if _has_each(schema, obj):
        names.vectors[obj.name] = f"_each_{short}"
    unions = _own_unions(schema, obj)
    names.unions.update(unions)

    def verifier(target: Object) -> None:
        if target.name not in names.functions:
            names.functions[target.name] = imports.member(
                target.name, f"verify_{target.short_name}"
            )

    for f in _live(obj.fields):
        t = f.type
        target = schema.objects.get(t.ref) if t.item is BaseType.OBJ else None
        if target is not None and not target.is_struct:
            verifier(target)
            vector = t.base is BaseType.VECTOR
            if vector and target.name not in names.vectors and _has_each(schema, target):
                names.vectors[target.name] = imports.member(
                    target.name, f"_each_{target.short_name}"
                )
        elif t.base is BaseType.UNION:
            for _, member in _union_members(schema.enums[t.ref], schema):
                verifier(member)
        nested = _nested_type(schema, obj, f)
        if nested is not None:
            verifier(nested)

    def doc(text: str) -> str:
        return docstring([text], " " * 4)

    before = [
        "\n".join(vtable_readers(schema, names, [obj]) + layout_readers(schema, names, [obj])),
        render_fast(schema, names, obj, doc(f"Checks a ``{obj.name}`` table.")),
    ]
    if obj.name in names.vectors and names.vectors[obj.name] == f"_each_{short}":
        each = (
            f"Checks the ``n`` ``{obj.name}`` tables of a vector whose offsets start at ``start``."
        )
        before.append(render_each(schema, names, obj, doc(each)))
    general = f"The general checks of ``{obj.name}``: precise faults."
    before.append(render_table(schema, names, obj, doc(general)))
    after = [render_union(schema, names, schema.enums[q]) for q in unions]
    return before, after


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
    lines = call(
        "", f"def {names.checks[obj.name]}", [f"v: {names.rt('Verifier')}", "pos: int"], " -> None:"
    )
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
        return f"{names.unions[enum.name]}: dict[int, {names.rt('VerifyFn')}] = {{}}"
    lines = [f"{names.unions[enum.name]} = {{"]
    for value, member in members:
        lines.append(f"    {value}: {names.functions[member.name]},")
    lines.append("}")
    return "\n".join(lines)


@dataclass
class _Check:
    """One field's fast check: ``static`` depends only on the table's vtable (so the
    tables of a vector written with equal vtables share it), ``dynamic`` on where the
    table lies; both apply when the field is present (``optional``: absent passes)."""

    x: str
    optional: bool
    static: str
    dynamic: str = ""
    encoded: str = ""  # the check against smfc's own layout (``x`` equals its offset there)

    def render(self, part: str) -> str:
        if not part:
            return ""
        return f"(not {self.x} or ({part}))" if self.optional else f"({self.x} and ({part}))"


@dataclass
class _Fast:
    """The fast checks of one table; ``later`` runs once they passed: the tables it holds,
    one level deeper, and the general checks of unions and nested buffers (``general``)."""

    n: int
    checks: list[_Check] = field(default_factory=list)
    later: list[str] = field(default_factory=list)
    general: bool = False
    reads: dict[int, int] = field(default_factory=dict)  # offset field id -> its place

    def encoded(self) -> list[str]:
        return [c.render(c.encoded) for c in self.checks if c.encoded]

    def single(self) -> list[str]:
        """Each field's checks, static then dynamic, in one condition."""
        return [c.render(" and ".join(p for p in (c.static, c.dynamic) if p)) for c in self.checks]

    def static(self) -> list[str]:
        return [c.render(c.static) for c in self.checks if c.static]

    def dynamic(self) -> list[str]:
        return [c.render(c.dynamic) for c in self.checks if c.dynamic]


def _fast(schema: Schema, names: Verifiers, obj: Object) -> _Fast:
    from .codecs import encoded_layout  # (codecs imports this module)

    out = _Fast(_slots(obj))
    places = encoded_layout(schema, obj)[0]
    owner = f'"{obj.short_name}"'
    for f in _live(obj.fields):
        t = f.type
        if t.base is BaseType.UTYPE:
            continue  # checked with its union
        k = f.id
        x = f"x{k}"
        name = f'"{f.name}"'
        required = ", required=True" if f.required else ""
        optional = not f.required

        def inline(
            size: int, align: int, x: str = x, optional: bool = optional, k: int = k
        ) -> None:
            """A scalar or struct stored in the table: inside it and aligned (the table
            is 4-byte aligned, so up to 4 that is the offset's own alignment)."""
            place = f"{x} + {size} <= tsize" if size > 1 else f"{x} < tsize"
            if 1 < align <= 4:
                place += f" and not {x} & {align - 1}"
            dynamic = f"not (pos + {x}) & {align - 1}" if align > 4 else ""
            out.checks.append(_Check(x, optional, place, dynamic, f"{x} == {places[k]}"))

        def offset(deref: str, x: str = x, optional: bool = optional, k: int = k) -> None:
            """An offset stored in the table (4 bytes, aligned), then what it points to:
            ``deref`` of ``r`` read at ``a``; in smfc's layout, ``r{k}`` read already."""
            static = f"{x} + 4 <= tsize and not {x} & 3"
            dynamic = f"(r := u[(a := pos + {x}) >> 2]) and {deref}"
            at = places[k]
            out.reads[k] = at
            mine = re.sub(r"\br\b", f"r{k}", deref).replace(f"a + r{k}", f"pos + {at} + r{k}")
            out.checks.append(
                _Check(x, optional, static, dynamic, f"{x} == {at} and r{k} and {mine}")
            )

        def vector(size: int, k: int = k) -> str:
            return f"not r & 3 and u[(p{k} := a + r) >> 2] * {size} <= size - p{k} - 4"

        nested = _nested_type(schema, obj, f)
        if t.base in SCALAR_SIZES:
            inline(SCALAR_SIZES[t.base], SCALAR_SIZES[t.base])
        elif t.base is BaseType.STRING:
            offset("not r & 3 and not buf[(p := a + r) + 4 + u[p >> 2]]")
        elif t.base is BaseType.OBJ:
            target = schema.objects[t.ref]
            if target.is_struct:
                inline(target.bytesize, target.minalign)
            else:
                offset(f"(c{k} := a + r) < size")
                out.later += [
                    f"if {x}:",
                    f"    v.visit({names.functions[target.name]}, c{k}, {owner}, {name}, -1)",
                ]
        elif t.base is BaseType.UNION:
            out.checks.append(_Check(f"x{k - 1}", True, f"x{k - 1} < tsize"))
            offset("a + r < size")
            out.general = True
            out.later.append(f"t.union({4 + 2 * k}, {name}, {names.unions[t.ref]}{required})")
        elif t.base is BaseType.VECTOR:
            item = t.element
            if nested is not None:
                offset(vector(1))
                out.general = True
                out.later.append(
                    f"t.nested({4 + 2 * k}, {name}, {names.functions[nested.name]}{required})"
                )
            elif item is BaseType.STRING:
                offset(
                    f"not r & 3 and (m{k} := u[(p{k} := a + r) >> 2]) * 4 <= size - p{k} - 4"
                    f" and v.strings_ok(p{k} + 4, m{k})"
                )
            elif item is BaseType.OBJ and not schema.objects[t.ref].is_struct:
                offset(vector(4))
                child = schema.objects[t.ref]
                each = names.vectors.get(child.name)
                call = (
                    f"{each}(v, p{k} + 4, u[p{k} >> 2], {owner}, {name})"
                    if each
                    else f"v.table_vector(p{k} + 4, u[p{k} >> 2], "
                    f"{names.functions[child.name]}, {owner}, {name})"
                )
                out.later += [f"if {x}:", f"    {call}"]
            else:
                size = (
                    schema.objects[t.ref].bytesize if item is BaseType.OBJ else SCALAR_SIZES[item]
                )
                offset(vector(size))
        else:
            raise VerifierError(f"{obj.name}.{f.name}: cannot verify a field of type {t.base.name}")
    return out


def _slots(obj: Object) -> int:
    """How many vtable entries the schema gives the table (deprecated fields included)."""
    return max((f.id for f in obj.fields), default=-1) + 1


def _vtable(fast: _Fast, indent: str, target: str) -> list[str]:
    """Unpack the vtable at ``vt``: its size, the table's and the ``n`` field offsets
    (``_`` for those not checked), zero for those a shorter vtable (an older writer, or
    trailing defaults) leaves out."""
    n = fast.n
    used = {c.x for c in fast.checks}
    xs = ", ".join(f"x{k}" if f"x{k}" in used else "_" for k in range(n))
    lines = [f"{indent}vsize, tsize{', ' + xs if n else ''} = {target}"]
    if n:
        lines += [
            f"{indent}if vsize < {4 + 2 * n}:",
            f"{indent}    {xs}{',' if n == 1 else ''} = v.short_offsets(vt, vsize, {n})",
        ]
    return lines


def _chain(indent: str, head: str, conditions: list[str], tail: str = "") -> list[str]:
    """``head`` followed by the conditions joined with ``and``, one per line."""
    if not conditions:
        return [f"{indent}{head}True{tail}"]
    lines = [f"{indent}{head}("]
    for i, c in enumerate(conditions):
        lines.append(f"{indent}    {c}" + (" and" if i < len(conditions) - 1 else ""))
    lines.append(f"{indent}){tail}")
    return lines


_READ_VTABLE = "_VT_{m}(buf, vt := (pos - u[pos >> 2]) & 0xFFFFFFFF)"


def _encoded(schema: Schema, obj: Object, fast: _Fast) -> tuple[str, str, list[str]]:
    """The check against the layout smfc's encoder writes (``codecs.encoded_layout``):
    the format that reads the table's soffset, its offset fields and its vtable in one
    ``unpack_from`` (which fails past the end of the buffer: the table and its vtable lie
    inside), the names it unpacks into and the conditions (the soffset and vtable header
    as written, the table aligned, each field absent or at its place). Every bound is
    then known but those of what the offsets point to, which the conditions check."""
    from .codecs import encoded_layout

    _, inline, align = encoded_layout(schema, obj)
    n = fast.n
    vt_off = (inline + 1) & -2
    fmt, names, cur = ["<i"], ["s"], 4
    for k, at in sorted(fast.reads.items(), key=lambda item: item[1]):
        if at > cur:
            fmt.append(f"{at - cur}x")
        fmt.append("I")
        names.append(f"r{k}")
        cur = at + 4
    if vt_off > cur:
        fmt.append(f"{vt_off - cur}x")
    fmt.append("I" + "H" * n)
    used = {c.x for c in fast.checks}
    names += ["h", *(f"x{k}" if f"x{k}" in used else "_" for k in range(n))]
    head = (4 + 2 * n) | inline << 16
    table = f"s == {-vt_off} and h == {head} and not pos & {align - 1}"
    return "".join(fmt), ", ".join(names), [table, *fast.encoded()]


def layout_readers(schema: Schema, names: Verifiers, tables: Iterable[Object]) -> list[str]:
    """The module constants that read a table as smfc's encoder lays it out."""
    out = []
    for t in tables:
        if general_only(schema, t):
            continue
        fmt, _, _ = _encoded(schema, t, _fast(schema, names, t))
        out.append(f'{names.layouts[t.name]}: Final = {names.rt("unpacker")}("{fmt}")')
    return out


def render_fast(schema: Schema, names: Verifiers, obj: Object, doc: str) -> str:
    """``def verify_T(v, pos)``: the fast path. First the table as smfc's encoder lays it
    out (one ``unpack_from``, then each field absent or where the encoder puts it), else
    as any writer may (the vtable read and checked), each in one inline expression: the
    table and every field that needs no recursion (placement, alignment, offsets,
    strings, vectors of scalars, structs and strings), no call per field. Reads go
    through ``v.words`` (the buffer as uint32s) and ``unpack_from``; one past the end
    raises ``OUT_OF_BOUNDS``, which (as any check that fails) hands the table to
    ``_check_T``, the general path, which raises the precise fault or passes what the
    fast path was too strict for. Then the tables it holds are verified, one level
    deeper. Tables with unions or nested buffers skip smfc's layout and end with the
    general checks of those fields."""
    fast = _fast(schema, names, obj)
    n = fast.n
    oob = names.rt("OUT_OF_BOUNDS")
    lines = [f"def {names.functions[obj.name]}(v: {names.rt('Verifier')}, pos: int) -> None:", doc]
    lines += ["    u = v.words", "    buf = v.buf", "    size = v.size"]
    table = "not (pos & 3 | vt & 1 | vsize & 1) and 4 <= vsize <= size - vt and 4 <= tsize <= size - pos"
    generic = ["try:", *_vtable(fast, "    ", _READ_VTABLE.format(m=n + 2))]
    generic += _chain("    ", "ok = ", [table, *fast.single()])
    generic += [f"except {oob}:", "    ok = False", "if not ok:"]
    generic += [f"    {names.checks[obj.name]}(v, pos)", "    return"]
    if obj.name in names.layouts:
        _, unpacked, conditions = _encoded(schema, obj, fast)
        lines += ["    try:", f"        {unpacked} = {names.layouts[obj.name]}(buf, pos)"]
        lines += _chain("        ", "ok = ", conditions)
        lines += [f"    except {oob}:", "        ok = False", "    if not ok:"]
        lines += [f"        {line}" for line in generic]
    else:
        lines += [f"    {line}" for line in generic]
    if fast.general:
        lines.append(f'    t = v.table(pos, "{obj.short_name}")')
    lines += [f"    {line}" for line in fast.later]
    return "\n".join(lines)


def render_each(schema: Schema, names: Verifiers, obj: Object, doc: str) -> str:
    """``def _each_T(v, start, n, table, field)``: the tables of a vector of ``T``, each
    checked as ``verify_T`` does inline, one level deeper. A first loop takes them in
    smfc's layout; from the first that is not, a second loop checks them as any writer
    may lay them out, the checks that depend only on a vtable once per distinct vtable
    (an encoder writes the same one for every element whose fields are laid out alike,
    a Builder even shares it); an element that fails anything is checked again on its
    own by ``verify_T`` (through ``Verifier.element``, which names it)."""
    fast = _fast(schema, names, obj)
    n = fast.n
    _, unpacked, conditions = _encoded(schema, obj, fast)
    later: list[str] = []
    if fast.later:
        later = ["        try:", *(f"            {line}" for line in fast.later)]
        later += [
            f"        except {names.rt('VerificationError')} as err:",
            '            err.within(table, f"{field}[{(at - start) >> 2}]")',
            "            raise",
        ]
    oob = names.rt("OUT_OF_BOUNDS")
    lines = [
        f"def {names.vectors[obj.name]}(v: {names.rt('Verifier')}, start: int, n: int, table: str, field: str) -> None:",
        doc,
        "    v.tables += n",
        "    v.depth += 1",
        "    if v.depth > v.max_depth or v.tables > v.max_tables:",
        "        v.over_limits(start, table, field)",
        "    u = v.words",
        "    buf = v.buf",
        "    size = v.size",
        "    end = rest = start + 4 * n",
        "    ok: object = True",
        "    for at in range(start, end, 4):  # smfc's layout",
        "        try:",
        "            pos = at + u[at >> 2]",
        f"            {unpacked} = {names.layouts[obj.name]}(buf, pos)",
    ]
    lines += _chain("            ", "ok = ", conditions)
    lines += [
        f"        except {oob}:",
        "            ok = False",
        "        if not ok:",
        "            rest = at",
        "            break",
        *later,
        "    known: object = None",
        "    good: object = False",
        "    shared = -1",
        "    for at in range(rest, end, 4):  # any layout",
        "        try:",
        "            pos = at + u[at >> 2]",
        "            if (vt := (pos - u[pos >> 2]) & 0xFFFFFFFF) != shared:",
        f"                t = _VT_{n + 2}(buf, vt)",
    ]
    lines += _vtable(fast, "                ", "t")
    lines += ["                if t != known:", "                    known = t"]
    lines += _chain(
        "                    ",
        "good = ",
        [f"4 <= vsize <= {4 + 2 * n} and not vsize & 1 and tsize >= 4", *fast.static()],
    )
    lines.append("                shared = vt  # a Builder shares one vtable among alike tables")
    lines += _chain(
        "            ",
        "ok = ",
        ["good and not (pos & 3 | vt & 1) and tsize <= size - pos", *fast.dynamic()],
    )
    lines += [
        f"        except {oob}:",
        "            ok = False",
        "        if not ok:",
        f"            v.element({names.functions[obj.name]}, at, (at - start) >> 2, table, field)",
    ]
    if later:
        lines.append("            continue")
    lines += [*later, "    v.depth -= 1"]
    return "\n".join(lines)


def general_only(schema: Schema, obj: Object) -> bool:
    """Whether the table's fast path ends in general checks (unions, nested buffers):
    its vectors are then walked by ``Verifier.table_vector``."""
    for f in _live(obj.fields):
        if f.type.base is BaseType.UNION or _nested_type(schema, obj, f) is not None:
            return True
    return False


def vtable_readers(schema: Schema, names: Verifiers, tables: Iterable[Object]) -> list[str]:
    """The module constants the fast verifiers unpack vtables with, one per field count:
    the vtable's size, the table's and the offsets of its fields."""
    counts = sorted({_slots(t) + 2 for t in tables})
    return [f"_VT_{m}: Final = {names.rt('vtable_reader')}({m})" for m in counts]


# ------------------------------------------------------------------ the reference


def general_path(module: ModuleType) -> dict[str, Any]:
    """The namespace of a generated module (a table's or a service's) with every
    generated ``verify_T`` it reaches replaced by ``_check_T``, the general path alone:
    no fast path anywhere, in the tables each table holds either (the reference the fast
    path must match, for tests and benchmarks). The modules are left as they are: the
    replacements are copies of the functions over copies of their modules' globals."""
    copies: dict[int, dict[str, Any]] = {}  # id(a module's globals) -> its patched copy
    generals: dict[int, FunctionType] = {}  # id(verify_T) -> _check_T over a patched copy

    def is_verifier(value: object) -> bool:
        if not isinstance(value, FunctionType) or not value.__name__.startswith("verify_"):
            return False
        return "_check_" + value.__name__.removeprefix("verify_") in value.__globals__

    def general(fn: FunctionType) -> FunctionType:
        found = generals.get(id(fn))
        if found is None:
            check = fn.__globals__["_check_" + fn.__name__.removeprefix("verify_")]
            found = FunctionType(check.__code__, patched(fn.__globals__), check.__name__)
            generals[id(fn)] = found
        return found

    def swap(value: object) -> object:
        if isinstance(value, FunctionType) and is_verifier(value):
            return general(value)
        if isinstance(value, dict) and value and all(map(is_verifier, value.values())):
            return {k: general(v) for k, v in value.items()}  # a union's map
        return value

    def patched(namespace: dict[str, Any]) -> dict[str, Any]:
        copy = copies.get(id(namespace))
        if copy is None:
            copy = copies[id(namespace)] = {}  # first, so that cycles find it
            copy.update({name: swap(value) for name, value in namespace.items()})
        return copy

    return patched(vars(module))
