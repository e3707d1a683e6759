"""Nested-message echo servers: smfc's stubs, a bare ``flatbuffers.Builder`` server and
grpc.aio, same message, same run.

Run from the repository root::

    python bench/nested.py            # ~1 min: a markdown table on stdout
    python bench/nested.py --quick    # a few seconds, for smoke tests (numbers are noise)

The message is bench/codec.py's **Tree** (16 nodes x 4 children with names and 6 doubles
each, ~7.9 KB), generated at run time as bench/codec.py does. Three servers, each in a
fresh process, each answering ``Echo(Tree): Tree`` with a decode and an encode:

* **smfc stubs**: the generated ``TreeService`` with
  ``async def Echo(self, request, ctx): return TreeT.InitFromObj(request)`` (the request
  verified first, the default; the reply encoded by the generated encoder).
* **flatc + Builder**: what a user without smfc writes: an ``smf.Server`` handler on the
  same wire id doing ``TreeT.InitFromObj(Tree.GetRootAs(body))`` with flatc's own Python
  output (``--gen-object-api``) and ``Pack`` into a ``flatbuffers.Builder`` (no verifier:
  flatc's Python has none).
* **grpc.aio**: the equivalent protobuf ``Tree`` (upb), a unary method returning the
  parsed request (parse + serialize), server and client on grpc.aio.

The smf clients send the same prebuilt request bytes with ``smf.Client`` (smfc's through
``TreeServiceClient(client).Echo``, reading the reply's root); gRPC's sends a prebuilt
message. Phases: sequential calls (p50, calls/s) and 64 in flight (calls/s). Systems
alternate order between repeats; each figure is the median over repeats.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import codec
from bench._harness import (
    read_port,
    run_on_asyncio,
    run_on_smf,
    sequential,
    serve_until_stdin_closes,
    spawn,
    stop_by_stdin,
    summarize,
    windowed,
)

SYSTEMS = ("smfc", "builder", "grpc")
LABELS = {"smfc": "smfc stubs", "builder": "flatc + Builder", "grpc": "grpc.aio (protobuf)"}
GRPC_METHOD = "/benchpb.TreeService/Echo"
DEFAULTS: dict[str, Any] = {"repeats": 3, "calls": 600, "window_calls": 1200, "warmup": 100}
QUICK: dict[str, Any] = {"repeats": 1, "calls": 20, "window_calls": 40, "warmup": 5}


def tree_message(g: codec.Generated) -> bytes:
    TreeT = g.ours("benchtree.Tree", "T")
    NodeT = g.ours("benchtree.Node", "T")
    ChildT = g.ours("benchtree.Child", "T")
    tree = TreeT(
        nodes=[
            NodeT(
                name=f"node-{i:03d}",
                weight=i * 0.5,
                children=[
                    ChildT(
                        name=f"child-{i:03d}-{j}",
                        values=[i * j + k * 0.25 for k in range(6)],
                        id=i * 4 + j,
                    )
                    for j in range(4)
                ],
            )
            for i in range(16)
        ]
    )
    return bytes(tree.Encode())


def pb_message(g: codec.Generated) -> Any:
    pbt = g.pb.Tree()
    for i in range(16):
        n = pbt.nodes.add(name=f"node-{i:03d}", weight=i * 0.5)
        for j in range(4):
            n.children.add(
                name=f"child-{i:03d}-{j}", values=[i * j + k * 0.25 for k in range(6)], id=i * 4 + j
            )
    return pbt


# ----------------------------------------------------------------------------- servers


async def serve(system: str, g: codec.Generated) -> None:
    if system == "grpc":
        import grpc

        Tree = g.pb.Tree

        async def echo(request: Any, context: Any) -> Any:
            return request

        handler = grpc.unary_unary_rpc_method_handler(
            echo, request_deserializer=Tree.FromString, response_serializer=Tree.SerializeToString
        )
        server = grpc.aio.server()
        service, _, method = GRPC_METHOD[1:].partition("/")
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {method: handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await serve_until_stdin_closes(port)
        await server.stop(grace=1.0)
        return
    import smf

    stubs: Any = __import__("benchtree.TreeService_smf", fromlist=["TreeService"])
    if system == "smfc":
        TreeT = g.ours("benchtree.Tree", "T")

        class Echo(stubs.TreeService):  # type: ignore[misc, name-defined]
            async def Echo(self, request: Any, ctx: Any) -> Any:
                return TreeT.InitFromObj(request)

        server = smf.Server([Echo()])
    else:
        import flatbuffers

        FTree = g.theirs("benchtree.Tree")
        FTreeT = g.theirs("benchtree.Tree", "T")

        async def builder_echo(ctx: smf.CallContext, body: memoryview) -> bytes:
            obj = FTreeT.InitFromObj(FTree.GetRootAs(body, 0))
            b = flatbuffers.Builder(8192)
            b.Finish(obj.Pack(b))
            return bytes(b.Output())

        server = smf.Server()
        server.add_handler(stubs.Echo_WIRE_ID, builder_echo, "bench.TreeEcho")
    await server.start("127.0.0.1", 0)
    await serve_until_stdin_closes(server.port)
    await server.stop(grace=1.0)


# ----------------------------------------------------------------------------- clients


async def measure(call: Callable[[], Awaitable[object]], opts: dict[str, Any]) -> dict[str, Any]:
    async def one(wire_id: int, payload: bytes) -> object:
        return await call()

    await sequential(one, b"", opts["warmup"])
    lat, elapsed = await sequential(one, b"", opts["calls"])
    seq = summarize(lat, elapsed)
    await windowed(one, b"", opts["warmup"], 64)
    lat, elapsed = await windowed(one, b"", opts["window_calls"], 64)
    return {"sequential": seq, "window": summarize(lat, elapsed)}


async def client(system: str, port: int, g: codec.Generated, opts: dict[str, Any]) -> Any:
    if system == "grpc":
        import grpc

        Tree = g.pb.Tree
        request = pb_message(g)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await channel.channel_ready()
            echo = channel.unary_unary(
                GRPC_METHOD,
                request_serializer=Tree.SerializeToString,
                response_deserializer=Tree.FromString,
            )

            async def grpc_call() -> object:
                reply = await echo(request)
                return len(reply.nodes)

            if await grpc_call() != 16:
                raise RuntimeError("gRPC echo returned a different tree")
            return await measure(grpc_call, opts)
    import smf

    stubs: Any = __import__("benchtree.TreeService_smf", fromlist=["TreeService"])
    body = tree_message(g)
    conn = smf.Client("127.0.0.1", port)
    await conn.connect()
    try:
        if system == "smfc":
            echo_stub = stubs.TreeServiceClient(conn).Echo

            async def call() -> object:
                reply = await echo_stub(body)
                return reply.NodesLength()

        else:
            FTree = g.theirs("benchtree.Tree")
            wire_id = stubs.Echo_WIRE_ID

            async def call() -> object:
                reply = await conn.call(wire_id, body)
                return FTree.GetRootAs(reply, 0).NodesLength()

        if await call() != 16:
            raise RuntimeError(f"{system} echo returned a different tree")
        return await measure(call, opts)
    finally:
        await conn.close()


# ----------------------------------------------------------------------------- parent


def run_system(system: str, work: Path, opts: dict[str, Any], timeout: float) -> Any:
    common = ["--system", system, "--work", str(work)]
    server = spawn(__file__, ["--role", "server", *common])
    try:
        port = read_port(server, timeout)
        proc = spawn(
            __file__, ["--role", "client", *common, "--port", str(port), "--opts", json.dumps(opts)]
        )
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{system} client failed ({proc.returncode}):\n{err}")
        return json.loads(out)
    finally:
        stop_by_stdin(server)


def benchmark(opts: dict[str, Any], timeout: float, log: Callable[[str], None] | None) -> Any:
    work = Path(tempfile.mkdtemp(prefix="smf-bench-nested-"))
    runs: dict[str, list[Any]] = {s: [] for s in SYSTEMS}
    try:
        codec.Generated.build(work)
        for r in range(opts["repeats"]):
            for system in SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]:
                res = run_system(system, work, opts, timeout)
                runs[system].append(res)
                if log is not None:
                    s, w = res["sequential"], res["window"]
                    log(
                        f"  run {r + 1}/{opts['repeats']} {LABELS[system]:<20} p50 "
                        f"{s['p50_us']:.0f} µs, {s['calls_per_s']:.0f} calls/s sequential, "
                        f"{w['calls_per_s']:.0f} calls/s 64 in flight"
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {
        system: {
            phase: {
                key: statistics.median(run[phase][key] for run in runs[system])
                for key in ("p50_us", "p99_us", "calls_per_s")
            }
            for phase in ("sequential", "window")
        }
        for system in SYSTEMS
    }
    return {"options": opts, "median": median, "runs": runs}


def format_markdown(result: Any) -> str:
    m, o = result["median"], result["options"]
    smfc = m["smfc"]
    lines = [
        f"Tree echo (~7.9 KB, 16 x 4 nested tables), median of {o['repeats']} alternating "
        f"repeats; {o['calls']} sequential calls, {o['window_calls']} calls 64 in flight.",
        "",
        "| server | seq p50 µs | seq p99 µs | seq calls/s | 64 in flight calls/s "
        "| smfc / it: seq calls/s | smfc / it: 64 in flight calls/s | it / smfc: p50 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system in SYSTEMS:
        s, w = m[system]["sequential"], m[system]["window"]
        ratios = (
            ["-", "-", "-"]
            if system == "smfc"
            else [
                f"{smfc['sequential']['calls_per_s'] / s['calls_per_s']:.2f}x",
                f"{smfc['window']['calls_per_s'] / w['calls_per_s']:.2f}x",
                f"{s['p50_us'] / smfc['sequential']['p50_us']:.2f}x",
            ]
        )
        lines.append(
            f"| {LABELS[system]} | {s['p50_us']:.0f} | {s['p99_us']:.0f} | "
            f"{s['calls_per_s']:.0f} | {w['calls_per_s']:.0f} | " + " | ".join(ratios) + " |"
        )
    b, g = m["builder"], m["grpc"]
    seq_x = smfc["sequential"]["calls_per_s"] / b["sequential"]["calls_per_s"]
    win_x = smfc["window"]["calls_per_s"] / b["window"]["calls_per_s"]
    below = smfc["sequential"]["p50_us"] < g["sequential"]["p50_us"]
    lines += [
        "",
        f"Targets: smfc >= 3x the Builder server's calls/s: sequential {seq_x:.2f}x, "
        f"64 in flight {win_x:.2f}x ({'PASS' if min(seq_x, win_x) >= 3 else 'MISS'}); "
        f"smfc p50 below grpc.aio's: {smfc['sequential']['p50_us']:.0f} vs "
        f"{g['sequential']['p50_us']:.0f} µs ({'PASS' if below else 'MISS'}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny counts (smoke test)")
    p.add_argument("--repeats", type=int)
    p.add_argument("--calls", type=int)
    p.add_argument("--window-calls", type=int)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--role", choices=("server", "client"), help=argparse.SUPPRESS)
    p.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--opts", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.role is not None:
        g = codec.Generated(a.work, build=False)
        run = run_on_asyncio if a.system == "grpc" else run_on_smf
        if a.role == "server":
            run(serve(a.system, g))
        else:
            result = run(client(a.system, a.port, g, json.loads(a.opts)))
            sys.stdout.write(json.dumps(result) + "\n")
        return 0
    opts = dict(QUICK if a.quick else DEFAULTS)
    for key in ("repeats", "calls", "window_calls"):
        if getattr(a, key) is not None:
            opts[key] = getattr(a, key)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.monotonic()
    result = benchmark(opts, a.timeout, None if a.quiet else log)
    result["duration_s"] = time.monotonic() - started
    print(json.dumps(result, indent=1) if a.json else format_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
