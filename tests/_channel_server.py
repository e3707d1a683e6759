"""A server process for the channel tests: ``SmfStorage`` (idl/demo.fbs) where ``Get``
answers with the server's port (so a test sees which backend served a call) and ``Put``
sleeps ``float(name)`` seconds first. SIGTERM stops it with a 60 s grace (it drains).
``--no-reflection``: no reflection service."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "demo" / "generated"))

from smf_gen.demo.Request import Request
from smf_gen.demo.Response import ResponseT
from smf_gen.demo.SmfStorage_smf import SmfStorage

import smf


class Storage(SmfStorage):
    def __init__(self) -> None:
        super().__init__()
        self.port = 0

    async def Get(self, request: Request, ctx: smf.CallContext) -> ResponseT:
        return ResponseT(name=str(self.port))

    async def Put(self, request: Request, ctx: smf.CallContext) -> ResponseT:
        await asyncio.sleep(float(request.Name() or b"0"))
        return ResponseT(name=str(self.port))


async def main() -> None:
    storage = Storage()
    server = smf.Server([storage], reflection="--no-reflection" not in sys.argv)
    await server.start("127.0.0.1", 0)
    storage.port = server.port
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"listening on {server.port}", flush=True)
    await stop.wait()
    await server.stop(grace=60.0)


if __name__ == "__main__":
    smf.run(main())
