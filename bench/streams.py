"""Server-streaming benchmark: smf streams against a raw uvloop one-way framed stream
(the floor) and grpc.aio server streaming, plus a slow-consumer memory run.

Run from the repository root::

    python bench/streams.py                   # 60 B and 16 KiB, 3 alternating repeats
    python bench/streams.py --seconds 1 --repeats 1 --slow 5   # quick
    python bench/streams.py --json

What is measured:

* One server-streaming call per run: the server sends ``count`` messages of ``size``
  bytes as fast as it may, the client receives them all; messages/s and MB/s are
  counted from the first message received to the last (the client's clock).
* Server and client run in two freshly started processes (``subprocess``), nothing
  pinned, both on uvloop (grpc.aio on its default asyncio loop).
* **raw** (the floor): the sender packs a 16-byte smf header per message and writes
  header + body with one ``transport.write`` per message, waiting whenever the
  transport calls ``pause_writing``; the receiver is an ``asyncio.BufferedProtocol``
  that parses each frame's header (size field) and counts frames. No checksums
  verified, no copies, no credit: nothing smf does beyond framing.
* **smf**: ``Server.add_stream_handler(id, gen, "server")`` where ``gen`` yields the
  same prebuilt ``bytes`` ``count`` times; the client iterates
  ``client.server_stream(id, request)`` (default window: 256 messages / 1 MiB).
* **grpc**: a generic ``unary_stream`` handler (raw bytes, no protobuf) yielding the same
  bytes; the client iterates the call.
* Repeats alternate the systems' order; the table shows medians and the paired
  ratios smf/raw and smf/grpc (each repeat's ratio, median over repeats).
* **slow consumer**: the smf server's handler yields 16 KiB messages as fast as
  credit allows; the client reads one message, then reads nothing for ``--slow``
  seconds while calling a unary method on the same connection every 100 ms (each
  must be answered), and asks the server for its RSS (``/proc/self/status``) before
  the stream and at the end. Target: growth <= window bytes + 5 MB.

Targets (issue 16; reported, never the exit status): smf 60 B msgs/s >= 0.5x raw and
>= 5x grpc.aio; slow-consumer RSS growth <= window + 5 MB with unary calls answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HEADER = struct.Struct("<bBHIII")
STREAM_ID = 0x5EED0001
RSS_ID = 0x5EED0002
ECHO_ID = 0x5EED0003
SYSTEMS = ("raw", "smf", "grpc")


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def announce(port: int) -> None:
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()


async def until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def readable() -> None:
        if not sys.stdin.buffer.read1(1) and not done.done():  # type: ignore[attr-defined]
            done.set_result(None)

    loop.add_reader(sys.stdin.fileno(), readable)
    await done


# ---------------------------------------------------------------------------- servers


async def serve_raw(size: int, count: int) -> None:
    body = os.urandom(size)

    class Sender(asyncio.Protocol):
        def __init__(self) -> None:
            self.resume: asyncio.Future[None] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.request = b""

        def pause_writing(self) -> None:
            self.resume = asyncio.get_running_loop().create_future()

        def resume_writing(self) -> None:
            if self.resume is not None and not self.resume.done():
                self.resume.set_result(None)
            self.resume = None

        def data_received(self, data: bytes) -> None:
            self.request += data  # the count, as 8 bytes (the request of a stream)
            if len(self.request) == 8:
                n = int.from_bytes(self.request, "little")
                asyncio.get_running_loop().create_task(self.send(n))

        async def send(self, n: int) -> None:
            pack, write = HEADER.pack, self.transport.write
            for _ in range(n):
                if self.resume is not None:
                    await self.resume
                write(pack(0, 0, 1, size, 0, 200) + body)

    server = await asyncio.get_running_loop().create_server(Sender, "127.0.0.1", 0)
    announce(server.sockets[0].getsockname()[1])
    await until_stdin_closes()


async def serve_smf(size: int, count: int) -> None:
    import smf

    body = os.urandom(size)

    async def stream(ctx: smf.CallContext, request: memoryview) -> Any:
        n = int(bytes(request))
        for _ in range(n):
            yield body

    async def rss(ctx: smf.CallContext, request: memoryview) -> bytes:
        return b"%d" % rss_bytes()

    async def echo(ctx: smf.CallContext, request: memoryview) -> memoryview:
        return request

    server = smf.Server()
    server.add_stream_handler(STREAM_ID, stream, "server", "Bench.Stream")
    server.add_handler(RSS_ID, rss, "Bench.Rss")
    server.add_handler(ECHO_ID, echo, "Bench.Echo")
    await server.start("127.0.0.1", 0)
    announce(server.port)
    await until_stdin_closes()
    await server.stop(grace=0.1)


async def serve_grpc(size: int, count: int) -> None:
    import grpc

    body = os.urandom(size)

    async def tail(request: bytes, context: Any) -> Any:
        for _ in range(int(request)):
            yield body

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Stream", {"Tail": grpc.unary_stream_rpc_method_handler(tail)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    announce(port)
    await until_stdin_closes()
    await server.stop(0.1)


# ---------------------------------------------------------------------------- clients


async def client_raw(port: int, size: int, count: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    class Receiver(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(1 << 20)
            self.view = memoryview(self.buf)
            self.end = 0
            self.frames = 0
            self.first = 0.0

        def get_buffer(self, sizehint: int) -> memoryview:
            return self.view[self.end :]

        def buffer_updated(self, nbytes: int) -> None:
            if not self.first:
                self.first = time.perf_counter()
            end = self.end + nbytes
            pos = 0
            unpack = HEADER.unpack_from
            while end - pos >= 16:
                total = 16 + unpack(self.buf, pos)[3]
                if end - pos < total:
                    break
                pos += total
                self.frames += 1
            self.buf[: end - pos] = self.buf[pos:end]
            self.end = end - pos
            if self.frames >= count and not done.done():
                done.set_result(None)

    transport, proto = await loop.create_connection(Receiver, "127.0.0.1", port)
    transport.write(count.to_bytes(8, "little"))
    await done
    return {"seconds": time.perf_counter() - proto.first, "messages": proto.frames}


async def client_smf(port: int, size: int, count: int) -> dict[str, Any]:
    import smf

    async with smf.Client("127.0.0.1", port) as client:
        n = 0
        first = 0.0
        async for _ in client.server_stream(STREAM_ID, b"%d" % count):
            if not n:
                first = time.perf_counter()
            n += 1
        return {"seconds": time.perf_counter() - first, "messages": n}


async def client_grpc(port: int, size: int, count: int) -> dict[str, Any]:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_stream("/bench.Stream/Tail")
        n = 0
        first = 0.0
        async for _ in call(b"%d" % count):
            if not n:
                first = time.perf_counter()
            n += 1
        return {"seconds": time.perf_counter() - first, "messages": n}


async def client_slow(port: int, size: int, seconds: float) -> dict[str, Any]:
    import smf

    async with smf.Client("127.0.0.1", port) as client:
        before = int(bytes(await client.call(RSS_ID, b"?")))
        call = client.server_stream(STREAM_ID, b"%d" % 10**9)
        await call.read()
        answered = 0
        peak = before
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            assert bytes(await client.call(ECHO_ID, b"ping", timeout=5)) == b"ping"
            answered += 1
            peak = max(peak, int(bytes(await client.call(RSS_ID, b"?"))))
        call.cancel()
        window = client.stream_window
        return {
            "rss_before": before,
            "rss_peak": peak,
            "growth": peak - before,
            "window_bytes": window[1],
            "unary_answered": answered,
        }


# ---------------------------------------------------------------------------- driver

SERVERS = {"raw": serve_raw, "smf": serve_smf, "grpc": serve_grpc}
CLIENTS = {"raw": client_raw, "smf": client_smf, "grpc": client_grpc}


def role_main(args: argparse.Namespace) -> None:
    import uvloop

    if args.role == "server":
        main = SERVERS[args.system](args.size, args.count)
    elif args.system == "slow":
        main = client_slow(args.port, args.size, args.slow)
    else:
        main = CLIENTS[args.system](args.port, args.size, args.count)
    result = asyncio.run(main) if args.system == "grpc" else uvloop.run(main)
    if result is not None:
        print(json.dumps(result), flush=True)


def run_pair(system: str, size: int, count: int, slow: float = 0.0) -> dict[str, Any]:
    me = [sys.executable, str(Path(__file__).resolve())]
    server_system = "smf" if system == "slow" else system
    server = subprocess.Popen(
        [*me, "--role", "server", "--system", server_system, "--size", str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        out = subprocess.run(
            [
                *me,
                "--role",
                "client",
                "--system",
                system,
                "--port",
                str(port),
                "--size",
                str(size),
                "--count",
                str(count),
                "--slow",
                str(slow),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if out.returncode:
            raise RuntimeError(f"{system} client failed: {out.stderr}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def calibrate(system: str, size: int, seconds: float, probe: int) -> int:
    """A message count that takes about ``seconds`` for ``system``."""
    r = run_pair(system, size, probe if size < 1024 else max(probe // 10, 1))
    rate = r["messages"] / max(r["seconds"], 1e-6)
    return max(int(rate * seconds), probe)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("server", "client"))
    parser.add_argument("--system", default="smf")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--size", type=int, default=60)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--sizes", default="60,16384")
    parser.add_argument("--seconds", type=float, default=2.0, help="target length of a run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow", type=float, default=10.0, help="slow-consumer seconds (0: skip)")
    parser.add_argument("--probe", type=int, default=20_000, help="calibration messages")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.role:
        role_main(args)
        return 0
    report: dict[str, Any] = {"sizes": {}}
    for size in (int(s) for s in args.sizes.split(",")):
        counts = {system: calibrate(system, size, args.seconds, args.probe) for system in SYSTEMS}
        runs: dict[str, list[float]] = {s: [] for s in SYSTEMS}
        for rep in range(args.repeats):
            order = SYSTEMS if rep % 2 == 0 else SYSTEMS[::-1]
            for system in order:
                r = run_pair(system, size, counts[system])
                runs[system].append(r["messages"] / r["seconds"])
        paired = {
            "smf/raw": statistics.median(
                s / r for s, r in zip(runs["smf"], runs["raw"], strict=True)
            ),
            "smf/grpc": statistics.median(
                s / g for s, g in zip(runs["smf"], runs["grpc"], strict=True)
            ),
        }
        report["sizes"][size] = {
            "msgs_per_s": {s: statistics.median(v) for s, v in runs.items()},
            "mb_per_s": {s: statistics.median(v) * size / 1e6 for s, v in runs.items()},
            "paired": paired,
            "runs": runs,
        }
    if args.slow:
        report["slow_consumer"] = run_pair("slow", 16384, 0, args.slow)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    load = os.getloadavg()[0]
    print(f"server streaming, {args.repeats} alternating repeats (medians); loadavg {load:.1f}")
    print(f"{'size':>7} {'system':>6} {'msgs/s':>12} {'MB/s':>9}")
    for size, r in report["sizes"].items():
        for s in SYSTEMS:
            print(f"{size:>7} {s:>6} {r['msgs_per_s'][s]:>12,.0f} {r['mb_per_s'][s]:>9.1f}")
        p = r["paired"]
        verdict_raw = "PASS" if size != 60 or p["smf/raw"] >= 0.5 else "MISS"
        verdict_grpc = "PASS" if size != 60 or p["smf/grpc"] >= 5 else "MISS"
        print(
            f"{size:>7} smf/raw {p['smf/raw']:.2f}x"
            + (f" (target >= 0.5x: {verdict_raw})" if size == 60 else "")
            + f"   smf/grpc {p['smf/grpc']:.2f}x"
            + (f" (target >= 5x: {verdict_grpc})" if size == 60 else "")
        )
    if args.slow:
        s = report["slow_consumer"]
        limit = s["window_bytes"] + 5 * 1024 * 1024
        verdict = "PASS" if s["growth"] <= limit and s["unary_answered"] > 0 else "MISS"
        print(
            f"slow consumer ({args.slow:.0f} s, 16 KiB messages): server RSS growth "
            f"{s['growth'] / 1e6:.2f} MB (limit window {s['window_bytes'] / 1e6:.2f} MB + 5 MB: "
            f"{verdict}); unary calls answered meanwhile: {s['unary_answered']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
