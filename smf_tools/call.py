"""``smf call HOST:PORT Service.Method --data '{...}'``: one call, JSON in and JSON out
(encoded and decoded by the real flatc). The schema comes from the server's reflection
service, or from ``--schema FILE.fbs`` (or ``.bfbs``) for servers without one (a C++ smf
peer, or ``Server(reflection=False)``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import smf

from .peer import (
    Target,
    ToolError,
    add_common,
    buffer_to_json,
    compile_schema,
    find_method,
    json_to_buffer,
    list_services,
    method_names,
    parse_schema,
    reflected_schema,
    run,
    with_client,
)

HELP = "call a method with a JSON request and print the JSON response"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("call", help=HELP, description=__doc__)
    _arguments(parser)
    parser.set_defaults(func=_command)


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("method", metavar="Service.Method", help="bare or qualified service name")
    parser.add_argument(
        "-d",
        "--data",
        default="{}",
        help="the request as JSON; @FILE reads a file, @- standard input (default: {})",
    )
    parser.add_argument(
        "--schema", type=Path, metavar="FILE.fbs", help="the schema, for peers without reflection"
    )
    parser.add_argument(
        "-I",
        dest="include_dirs",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="include directory for --schema (repeatable)",
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="call metadata (repeatable)",
    )


def _read_data(data: str) -> str:
    if data == "@-":
        return sys.stdin.read()
    if data.startswith("@"):
        try:
            return Path(data[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ToolError(f"cannot read {data[1:]}: {exc.strerror}") from None
    return data


def _split(method: str) -> tuple[str, str]:
    service, sep, name = method.rpartition(".")
    if not sep or not service or not name:
        raise ToolError(f"bad method {method!r}: expected Service.Method", 2)
    return service, name


async def _resolve(client: smf.Client, args: argparse.Namespace) -> Target:
    service_name, method_name = _split(args.method)
    if args.schema is not None:
        bfbs = compile_schema(args.schema, args.include_dirs)
        schema = parse_schema(bfbs)
        found = find_method(schema, service_name, method_name)
        if found is None:
            known = ", ".join(method_names(schema)) or "none"
            raise ToolError(f"{args.schema} has no method {args.method} (it has: {known})")
        return Target(found[0], found[1], bfbs)
    entries = await list_services(client, args.timeout)
    for entry in entries:
        if service_name in (entry.name, entry.fqn):
            break
    else:
        known = ", ".join(e.fqn or e.name for e in entries)
        raise ToolError(f"{client.address} serves no service {service_name!r} (it serves: {known})")
    if method_name not in {name for name, _ in entry.methods}:
        known = ", ".join(f"{entry.name}.{name}" for name, _ in entry.methods)
        raise ToolError(
            f"{entry.fqn or entry.name} has no method {method_name!r} (it has: {known})"
        )
    if not entry.has_schema:
        raise ToolError(
            f"{client.address} has no schema for {entry.fqn or entry.name} "
            "(generated with smfc --no-bfbs?); pass --schema FILE.fbs"
        )
    bfbs = await reflected_schema(client, entry.fqn or entry.name, args.timeout)
    found = find_method(parse_schema(bfbs), entry.fqn or entry.name, method_name)
    if found is None:
        raise ToolError(f"the reflected schema of {entry.fqn} has no method {method_name!r}")
    return Target(found[0], found[1], bfbs)


def _metadata(headers: list[str]) -> dict[str, str]:
    metadata = {}
    for item in headers:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ToolError(f"bad header {item!r}: expected KEY=VALUE", 2)
        metadata[key] = value
    return metadata


def _command(args: argparse.Namespace) -> int:
    async def body() -> int:
        data = _read_data(args.data)
        metadata = _metadata(args.header)

        async def call(client: smf.Client) -> int:
            target = await _resolve(client, args)
            payload = json_to_buffer(target.bfbs, target.method.request.name, data)
            reply = await client.call(
                target.wire_id, payload, timeout=args.timeout, metadata=metadata or None
            )
            print(buffer_to_json(target.bfbs, target.method.response.name, bytes(reply)), end="")
            return 0

        return await with_client(args.address, args.timeout, call)

    return run("call", body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smf call", description=__doc__)
    _arguments(parser)
    return _command(parser.parse_args(sys.argv[1:] if argv is None else argv))
