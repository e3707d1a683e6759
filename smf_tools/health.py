"""``smf health HOST:PORT [SERVICE]``: exit 0 when the server (or SERVICE) is SERVING, 1
otherwise (unreachable, NOT_SERVING, unknown service, no health service), like
``grpc_health_probe``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import smf
from smf.health import ServingStatus
from smf_rpc.health.Health_smf import Check_WIRE_ID, HealthClient
from smf_rpc.health.HealthCheckRequest import HealthCheckRequestT

from .peer import ToolError, add_common, run, with_client

HELP = "check a server's health (exit 0 when SERVING)"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("health", help=HELP, description=__doc__)
    _arguments(parser)
    parser.set_defaults(func=_command)


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument(
        "service", nargs="?", default="", help="a service's name (default: the whole server)"
    )


def _command(args: argparse.Namespace) -> int:
    async def body() -> int:
        async def check(client: smf.Client) -> int:
            try:
                reply = await HealthClient(client).Check(
                    HealthCheckRequestT(service=args.service), timeout=args.timeout
                )
            except smf.NotFound:
                raise ToolError(
                    f"{args.address} serves no health service (no method with wire id "
                    f"{Check_WIRE_ID})"
                ) from None
            status = ServingStatus(reply.Status())
            print(status.name)
            return 0 if status is ServingStatus.SERVING else 1

        return await with_client(args.address, args.timeout, check)

    return run("health", body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smf health", description=__doc__)
    _arguments(parser)
    return _command(parser.parse_args(sys.argv[1:] if argv is None else argv))
