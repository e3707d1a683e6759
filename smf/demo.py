"""``python -m smf demo``: a server and a client on loopback, in two processes, and the
latency of a few thousand echo calls."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from multiprocessing.synchronize import Event as EventType

from .client import Client
from .context import CallContext
from .loop import run
from .server import Server

ECHO_ID = 0x5EC0


async def _echo(ctx: CallContext, body: memoryview) -> memoryview:
    return body


def _serve(port_out: multiprocessing.Queue[int], stop: EventType) -> None:
    async def main() -> None:
        server = Server()
        server.add_handler(ECHO_ID, _echo, "Demo.Echo")
        await server.start("127.0.0.1", 0)
        port_out.put(server.port)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await server.stop()

    run(main())


def percentile(sorted_ns: list[int], q: float) -> float:
    index = min(len(sorted_ns) - 1, max(0, round(q / 100 * len(sorted_ns)) - 1))
    return sorted_ns[index] / 1000


async def _measure(port: int, calls: int, payload: bytes) -> tuple[list[int], float]:
    async with Client("127.0.0.1", port) as client:
        for _ in range(min(1000, calls)):  # warm-up
            await client.call(ECHO_ID, payload)
        latencies = []
        start = time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            await client.call(ECHO_ID, payload)
            latencies.append(time.perf_counter_ns() - t0)
        elapsed = time.perf_counter() - start
    latencies.sort()
    return latencies, calls / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smf demo", description=__doc__)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--size", type=int, default=60, help="payload bytes")
    args = parser.parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    ports: multiprocessing.Queue[int] = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve, args=(ports, stop), daemon=True)
    proc.start()
    try:
        port = ports.get(timeout=30)
        print(f"server process {proc.pid} listening on 127.0.0.1:{port}")
        lat, rate = run(_measure(port, args.calls, b"x" * args.size))
    finally:
        stop.set()
        proc.join(10)
    print(f"{args.calls} sequential echo calls of {args.size} bytes, client and server processes:")
    for q in (50, 90, 99, 99.9):
        print(f"  p{q:<5} {percentile(lat, q):8.1f} us")
    print(f"  max    {lat[-1] / 1000:8.1f} us")
    print(f"  {rate:,.0f} calls/s")
    return 0
