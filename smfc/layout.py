"""Line layout of generated code: what ``ruff format`` would make of long annotations.

Names come from schemas and can be long; a union of a few of them overflows 100 columns.
These helpers break such lines exactly as ruff's formatter does, so the output passes
``ruff format --check`` whatever the names' lengths.
"""

from __future__ import annotations

WIDTH = 100


def split_union(annotation: str) -> list[str]:
    """The top-level operands of ``A | list[B | C] | None``."""
    operands: list[str] = []
    depth = 0
    start = 0
    for i, char in enumerate(annotation):
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == "|" and depth == 0:
            operands.append(annotation[start:i].strip())
            start = i + 1
    operands.append(annotation[start:].strip())
    return operands


def parenthesized(indent: str, head: str, annotation: str, tail: str) -> list[str]:
    """``{head}{annotation}{tail}`` where ruff wraps the annotation in parentheses: a class
    attribute (``name: ...``) or a return annotation (``) -> ...:``)."""
    one = f"{indent}{head}{annotation}{tail}"
    if len(one) <= WIDTH:
        return [one]
    operands = split_union(annotation)
    inner = indent + "    "
    lines = [f"{indent}{head}("]
    if len(inner + annotation) <= WIDTH or len(operands) == 1:
        lines.append(inner + annotation)
    else:
        lines.append(inner + operands[0])
        lines.extend(f"{inner}| {operand}" for operand in operands[1:])
    lines.append(f"{indent}){tail}")
    return lines


def parameter(indent: str, name: str, annotation: str, tail: str) -> list[str]:
    """One parameter of an exploded signature (``tail``: ``","`` or ``" = ...,"``); ruff
    breaks an overlong union at every ``|``, at the parameter's own indentation."""
    one = f"{indent}{name}: {annotation}{tail}"
    operands = split_union(annotation)
    if len(one) <= WIDTH or len(operands) == 1:
        return [one]
    lines = [f"{indent}{name}: {operands[0]}"]
    lines.extend(f"{indent}| {operand}" for operand in operands[1:])
    lines[-1] += tail
    return lines


def call(indent: str, head: str, arguments: list[str], tail: str = "") -> list[str]:
    """``{head}({arguments}){tail}`` as ruff formats a call (or a ``def``) without a magic
    trailing comma: on one line if it fits, else the arguments on one line of their own,
    else one argument per line with a trailing comma."""
    joined = ", ".join(arguments)
    one = f"{indent}{head}({joined}){tail}"
    if len(one) <= WIDTH:
        return [one]
    inner = indent + "    "
    if len(inner + joined) <= WIDTH:
        return [f"{indent}{head}(", inner + joined, f"{indent}){tail}"]
    return [f"{indent}{head}(", *(f"{inner}{a}," for a in arguments), f"{indent}){tail}"]
