"""The SmfStorage demo server (idl/demo.fbs): Get and Put echo the request's name, Watch
streams it back ten times.

    python examples/demo/server.py --host 127.0.0.1 --port 7000

The stubs it imports are generated and shipped in ``generated/`` (regenerate them with
``smfc -o examples/demo/generated idl/demo.fbs``; a test checks they are up to date).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path


def _stubs_dir(argv: list[str]) -> str:
    """``--stubs DIR`` (stubs smfc just generated, as ``smf demo`` does) or the shipped ones."""
    if "--stubs" in argv[:-1]:
        return argv[argv.index("--stubs") + 1]
    return str(Path(__file__).resolve().parent / "generated")


sys.path.insert(0, _stubs_dir(sys.argv))

from smf_gen.demo.Request import Request  # noqa: E402 - after the sys.path line
from smf_gen.demo.Response import ResponseT  # noqa: E402
from smf_gen.demo.SmfStorage_smf import SmfStorage  # noqa: E402

import smf  # noqa: E402


class Storage(SmfStorage):
    """Step 3 of the smfc workflow: implement the generated base class."""

    async def Get(self, request: Request, ctx: smf.CallContext) -> ResponseT:
        # ``request`` reads straight from the receive buffer; ResponseT is packed for us.
        return ResponseT(name=request.Name())

    async def Put(self, request: Request, ctx: smf.CallContext) -> ResponseT:
        return ResponseT(name=request.Name())

    async def Watch(self, request: Request, ctx: smf.CallContext) -> AsyncIterator[ResponseT]:
        # A server stream: an async generator; the client reads with ``async for``.
        name = (request.Name() or b"").decode()
        for i in range(10):
            yield ResponseT(name=f"{name} #{i}")


async def serve(host: str, port: int) -> None:
    server = smf.Server()
    server.add_service(Storage())
    await server.start(host, port)
    print(f"SmfStorage listening on {host}:{server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=5.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7000, help="0 picks a free port")
    parser.add_argument("--stubs", help="directory of smfc output (default: generated/)")
    args = parser.parse_args(argv)
    smf.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
