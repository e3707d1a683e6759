"""``smf list HOST:PORT``: the services a server serves, through its reflection service:
each method's wire id and request and response types (types need the service's schema)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import smf

from .peer import add_common, list_services, parse_schema, reflected_schema, run, with_client

HELP = "list a server's services and methods (reflection)"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("list", help=HELP, description=__doc__)
    add_common(parser)
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    async def body() -> int:
        async def listing(client: smf.Client) -> int:
            for entry in await list_services(client, args.timeout):
                types: dict[str, tuple[str, str]] = {}
                if entry.has_schema:
                    schema = parse_schema(
                        await reflected_schema(client, entry.fqn or entry.name, args.timeout)
                    )
                    service = schema.services.get(entry.fqn)
                    for method in service.methods if service else ():
                        types[method.name] = (method.request.name, method.response.name)
                title = entry.fqn or entry.name
                print(title if entry.has_schema else f"{title} (no schema)")
                width = max((len(name) for name, _ in entry.methods), default=0)
                for name, wire_id in entry.methods:
                    line = f"  {name:<{width}}  {wire_id:>10}"
                    if name in types:
                        line += f"  {types[name][0]} -> {types[name][1]}"
                    print(line)
            return 0

        return await with_client(args.address, args.timeout, listing)

    return run("list", body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smf list", description=__doc__)
    add_common(parser)
    return _command(parser.parse_args(sys.argv[1:] if argv is None else argv))
