"""Naming shared by the generated modules: flatc's spellings of field names, the import
table that aliases clashing names, the header line, and names Python cannot import."""

from __future__ import annotations

import keyword
from collections.abc import Iterable

from .model import Enum, Object, Schema

# --------------------------------------------------------------------------- naming


def upper_camel(name: str) -> str:
    """flatc's method spelling of a field name (``shape_type`` -> ``ShapeType``)."""
    out = "".join(part[:1].upper() + part[1:] for part in name.split("_"))
    return out + "_" if keyword.iskeyword(out) else out


def lower_camel(name: str) -> str:
    """flatc's object-API attribute spelling (``shape_type`` -> ``shapeType``)."""
    parts = name.split("_")
    out = parts[0][:1].lower() + parts[0][1:] + "".join(p[:1].upper() + p[1:] for p in parts[1:])
    return out + "_" if keyword.iskeyword(out) else out


def module_of(qualified: str) -> str:
    """The Python module flatc writes a type into: its qualified name."""
    return qualified


# --------------------------------------------------------------------------- imports


def _prefixes(qualified: str) -> list[str]:
    """The prefixes tried, in order, for the local names imported for ``qualified``:
    none, ``_``, then ``_`` and its namespace (``_a_b_``), which is unique."""
    namespace = qualified.rpartition(".")[0]
    return ["", "_", "_" + namespace.replace(".", "_") + "_"]


class ImportTable:
    """The names a generated module imports, aliased where a bare name would clash.

    ``taken`` are names the module defines itself (classes, methods, attributes,
    constants). A type is imported under its bare name unless that name (or the name of
    its object-API class) is taken or already imported from another namespace; then both
    get the same private prefix: ``_Item``/``_ItemT``, else ``_a_b_Item``/``_a_b_ItemT``.
    """

    SUFFIXES = ("", "T", "Creator")

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.taken = set(taken)
        self._prefix: dict[str, str] = {}  # qualified type -> prefix of its local names
        self._imports: dict[tuple[str, str], str] = {}  # (module, name) -> local name
        self._exported: set[tuple[str, str]] = set()  # imported as ``name as name``

    def name(self, qualified: str, suffix: str = "") -> str:
        """The local name of ``qualified``'s class (``suffix`` "T": its object-API class)."""
        short = qualified.rpartition(".")[2]
        prefix = self._prefix.get(qualified)
        if prefix is None:
            for candidate in _prefixes(qualified):
                names = {candidate + short + s for s in self.SUFFIXES}
                if not names & self.taken:
                    prefix = candidate
                    break
            else:  # pragma: no cover - the namespace makes the last candidate unique
                raise AssertionError(f"no local name for {qualified}")
            self._prefix[qualified] = prefix
            self.taken.update(prefix + short + s for s in self.SUFFIXES)
        local = prefix + short + suffix
        self._imports[(module_of(qualified), short + suffix)] = local
        return local

    def member(
        self, qualified: str, name: str, local: str | None = None, *, export: bool = False
    ) -> str:
        """Import ``name`` (a function, say ``verify_Item``) from ``qualified``'s module.

        ``local`` fixes the local name (the caller has reserved it); else it is ``name``
        unless that is taken, then ``_name``, then ``_a_b_name``. ``export``: imported
        as ``name as name``, which ``mypy --strict`` counts as a re-export (a different
        local name never is)."""
        key = (module_of(qualified), name)
        if key in self._imports:
            return self._imports[key]
        if local is None:
            candidates = [prefix + name for prefix in _prefixes(qualified)]
            local = next((c for c in candidates if c not in self.taken), None)
            if local is None:  # pragma: no cover - the namespace makes the last one unique
                raise AssertionError(f"no local name for {name} of {qualified}")
        self.taken.add(local)
        self._imports[key] = local
        if export:
            self._exported.add(key)
        return local

    def lines(self) -> list[str]:
        """The import statements, ordered and split as ruff's isort (default settings) wants:
        modules case-insensitively; per module one statement of the plain names, one per
        aliased name, ordered by their first name (constants, classes, then the rest)."""
        by_module: dict[str, list[tuple[str, str]]] = {}
        for (module, name), local in self._imports.items():
            by_module.setdefault(module, []).append((name, local))
        out: list[str] = []
        for module in sorted(by_module, key=lambda m: (m.lower(), m)):
            names = by_module[module]
            plain = sorted((n for n, local in names if n == local), key=_member_key)
            spelled = [f"{n} as {n}" if (module, n) in self._exported else n for n in plain]
            statements = [(plain[0], ", ".join(spelled))] if plain else []
            statements += [(n, f"{n} as {local}") for n, local in names if n != local]
            for _, members in sorted(statements, key=lambda st: _member_key(st[0])):
                line = f"from {module} import {members}"
                if len(line) <= 100:
                    out.append(line)
                else:
                    out.append(f"from {module} import (")
                    out.extend(f"    {m}," for m in members.split(", "))
                    out.append(")")
        return out


def _member_key(name: str) -> tuple[int, str, str]:
    """isort's order-by-type: CONSTANTS, then Classes, then other names."""
    if name.isupper() and len(name) > 1:
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    return (kind, name.lower(), name)


def header_lines(source_file: str) -> list[str]:
    return [f"# generated by smfc from {source_file}, do not edit"]


def python_problems(schema: Schema) -> list[str]:
    """Names flatc's Python output cannot use: keywords as namespace parts or type names."""
    problems = []
    everything: list[Object | Enum] = [*schema.objects.values(), *schema.enums.values()]
    for item in sorted(everything, key=lambda i: i.name):
        kind = "enum" if isinstance(item, Enum) else ("struct" if item.is_struct else "table")
        if isinstance(item, Enum) and item.is_union:
            kind = "union"
        where = f"{kind} {item.name}" + (
            f" ({item.declaration_file})" if item.declaration_file else ""
        )
        for part in item.name.split("."):
            if keyword.iskeyword(part):
                problems.append(
                    f"{where}: {part!r} is a Python keyword, so the Python module flatc "
                    "writes for it cannot be imported (rename it or the namespace)"
                )
                break
    return problems
