"""Python time per call, without sockets: the runtime's own cost, steadier than latency.

Run from the repository root::

    python bench/percall.py                       # this tree: server and client, raw and stubs
    python bench/percall.py --baseline /tmp/old   # A/B: this tree's runtime against DIR's

What is measured (µs per call, the best of ``--repeats`` rounds, each process pinned to
one CPU when the machine allows it):

* **server**: an ``smf.ServerConnection`` over a transport that only collects what is
  written. Frames of a 60-byte echo request are fed to it through ``get_buffer`` /
  ``buffer_updated``, one frame per read (*sequential*) or 64 per read (*64 in flight*).
  The handler is ``async def h(ctx, body): return body``.
* **client**: an ``smf.ClientConnection`` over a transport that answers each write with
  the replies at once, on the loop's next callback: ``client.call`` one at a time
  (*sequential*, the fake answer included) or from 64 coroutines (*64 in flight*).
* **stubs** (this tree only): the same two sides running the demo schema's generated
  stubs, as ``bench/compare.py``'s headline row does (the server verifies the request,
  reads it and encodes ``ResponseT(name=request.Name())``; the client encodes
  ``RequestT`` and reads the reply's ``Name()``).

No kernel, no wake-ups, no other process: what is left is the Python each call runs, so
a change of a few hundred ns shows in a ratio that ``bench/latency.py`` (±10% between
runs of one commit on a shared VM) cannot resolve. It says nothing about latency on
its own; ``latency.py`` and ``compare.py`` measure that.

``--baseline DIR`` runs the server and client rows with smf imported from ``DIR`` (a
checkout of another commit, e.g. ``git worktree add /tmp/old <commit>``), alternating
with this tree, and prints this/base per row. Each run appends its summary to
``bench/results/percall.jsonl`` (``--no-record`` skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "percall.jsonl"
DEMO_GENERATED = ROOT / "examples" / "demo" / "generated"
HEADER = struct.Struct("<bBHIII")
WIRE_ID = 1792279101  # SmfStorage.Get of the demo schema
WINDOW = 64
ROWS = ("server seq", "server 64", "client seq", "client 64")
STUB_ROWS = ("stubs server seq", "stubs server 64", "stubs client seq", "stubs client 64")


# ------------------------------------------------------------------ measured in a child


def _frame(session: int, meta: int, body: bytes, compression: int = 0) -> bytes:
    import xxhash

    csum = xxhash.xxh64_intdigest(body) & 0xFFFFFFFF
    return HEADER.pack(compression, 0, session, len(body), csum, meta) + body


class _Sink:
    """A transport that keeps nothing: what the server writes is dropped."""

    def __init__(self) -> None:
        self.writes = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def write(self, data: Any) -> None:
        self.writes += 1

    def writelines(self, parts: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _Answering(_Sink):
    """A transport that answers every request written with ``reply(body)``, all that
    were written in one loop iteration in one read, on the loop's next callback."""

    def __init__(self, loop: Any, reply: Any) -> None:
        super().__init__()
        self.loop, self.reply, self.conn = loop, reply, None
        self.pending: list[bytes] = []
        self.handle: Any = None

    def write(self, data: Any) -> None:
        data = bytes(data)
        at = 0
        while at < len(data):
            _, _, session, size, _, _ = HEADER.unpack_from(data, at)
            body = data[at + 16 : at + 16 + size]
            self.pending.append(_frame(session, 200, self.reply(body), compression=1))
            at += 16 + size
        if self.handle is None:
            self.handle = self.loop.call_soon(self._answer)

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(bytes(p) for p in parts))

    def _answer(self) -> None:
        self.handle = None
        data, self.pending = b"".join(self.pending), []
        _feed(self.conn, data)


def _feed(conn: Any, data: bytes) -> None:
    buf = conn.get_buffer(-1)
    buf[: len(data)] = data
    conn.buffer_updated(len(data))


def _demo() -> Any:
    sys.path.insert(0, str(DEMO_GENERATED))
    import importlib

    return importlib.import_module("smf_gen.demo.SmfStorage_smf")


def _server_and_request(stubs: bool) -> tuple[Any, bytes]:
    import smf

    if not stubs:

        async def echo(ctx: Any, body: memoryview) -> memoryview:
            return body

        server = smf.Server()
        server.add_handler(WIRE_ID, echo)
        return server, bytes(60)
    demo = _demo()
    response_t = demo.ResponseT

    class Storage(demo.SmfStorage):  # type: ignore[misc, name-defined]
        async def Get(self, request: Any, ctx: Any) -> Any:
            return response_t(name=request.Name())

    return smf.Server([Storage()]), bytes(demo.RequestT(name=bytes(60)).Encode())


async def _server_row(stubs: bool, window: int, calls: int, repeats: int) -> float:
    from smf.server import ServerConnection

    server, request = _server_and_request(stubs)
    conn = ServerConnection(server)
    sink = _Sink()
    conn.connection_made(sink)  # type: ignore[arg-type]
    reads = [b"".join(_frame(s, WIRE_ID, request) for s in range(i, i + window)) for i in (1, 1001)]
    rounds = max(1, calls // window)
    for i in range(100):
        _feed(conn, reads[i & 1])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(rounds):
            _feed(conn, reads[i & 1])
        best = min(best, (time.perf_counter() - start) / (rounds * window))
    return best * 1e6


async def _client_row(stubs: bool, window: int, calls: int, repeats: int) -> float:
    import asyncio

    import smf
    from smf.client import ClientConnection

    loop = asyncio.get_running_loop()
    client = smf.Client("127.0.0.1", 1)
    if stubs:
        demo = _demo()
        reply = bytes(demo.ResponseT(name=bytes(60)).Encode())
        get, request_t = demo.SmfStorageClient(client).Get, demo.RequestT
        payload = bytes(60)

        async def one() -> None:
            (await get(request_t(name=payload))).Name()

    else:
        reply = bytes(60)

        async def one() -> None:
            await client.call(WIRE_ID, reply)

    conn = ClientConnection(client)
    transport = _Answering(loop, lambda body: reply)
    transport.conn = conn
    conn.connection_made(transport)  # type: ignore[arg-type]
    client._conn = conn  # connected, as far as the client can tell

    async def worker(n: int) -> None:
        for _ in range(n):
            await one()

    per = max(1, calls // window)
    await asyncio.gather(*(worker(50) for _ in range(window)))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        await asyncio.gather(*(worker(per) for _ in range(window)))
        best = min(best, (time.perf_counter() - start) / (per * window))
    return best * 1e6


def _child(row: str, calls: int, repeats: int) -> None:
    import asyncio

    import uvloop

    stubs = row.startswith("stubs ")
    side, mode = row.removeprefix("stubs ").split()
    window = WINDOW if mode == "64" else 1
    measure = _server_row if side == "server" else _client_row
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(json.dumps(runner.run(measure(stubs, window, calls, repeats))))


# ------------------------------------------------------------------ the parent


def _run(row: str, runtime: Path | None, opts: argparse.Namespace) -> float:
    env = dict(os.environ)
    if runtime is not None:
        env["PYTHONPATH"] = str(runtime)
    cmd = [sys.executable, __file__, "--row", row, "--calls", str(opts.calls)]
    cmd += ["--repeats", str(opts.rounds)]
    if opts.cpu is not None and hasattr(os, "sched_setaffinity"):
        cmd = ["taskset", "-c", str(opts.cpu), *cmd]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{row} failed ({runtime or 'this tree'}):\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def measure(opts: argparse.Namespace) -> dict[str, Any]:
    systems: dict[str, Path | None] = {"smf": None}
    if opts.baseline:
        systems = {"base": Path(opts.baseline).resolve(), "smf": None}
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in systems}
    for repeat in range(opts.repeats):
        order = list(systems) if repeat % 2 == 0 else list(reversed(systems))
        for name in order:
            for row in ROWS:
                samples[name].setdefault(row, []).append(_run(row, systems[name], opts))
        if not opts.no_stubs:
            for row in STUB_ROWS:
                samples["smf"].setdefault(row, []).append(_run(row, None, opts))
    medians = {n: {r: statistics.median(v) for r, v in rows.items()} for n, rows in samples.items()}
    return {"options": vars(opts), "samples": samples, "medians": medians}


def table(result: dict[str, Any]) -> str:
    med = result["medians"]
    lines = [f"{'row (µs per call, socket-free)':34}" + "".join(f"{n:>9}" for n in med)]
    if "base" in med:
        lines[0] += f"{'smf/base':>10}"
    for row in (*ROWS, *STUB_ROWS):
        if row not in med["smf"]:
            continue
        cells = "".join(f"{med[n][row]:9.2f}" if row in med[n] else f"{'-':>9}" for n in med)
        ratio = f"{med['smf'][row] / med['base'][row]:9.3f}x" if row in med.get("base", {}) else ""
        lines.append(f"{row:34}{cells}{ratio}")
    if "stubs server 64" in med["smf"]:
        for side in ("server", "client"):
            extra = med["smf"][f"stubs {side} 64"] / med["smf"][f"{side} 64"]
            lines.append(f"stubs / raw echo, {side}, 64 in flight: {extra:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=32000, help="calls per round (32000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per run; the best counts (5)")
    p.add_argument("--repeats", type=int, default=3, help="runs per row; the median counts (3)")
    p.add_argument("--baseline", metavar="DIR", help="A/B against smf imported from DIR")
    p.add_argument("--no-stubs", action="store_true", help="leave out the demo-stub rows")
    p.add_argument("--cpu", type=int, default=1, help="pin each run to this CPU (1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS.name}")
    p.add_argument("--row", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.row:
        _child(opts.row, opts.calls, opts.rounds)
        return 0
    if opts.cpu is not None and (os.cpu_count() or 1) <= opts.cpu:
        opts.cpu = None
    result = measure(opts)
    print(json.dumps(result, indent=2) if opts.json else table(result))
    if not opts.no_record:
        summary = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result}
        del summary["samples"]
        with RESULTS.open("a") as f:
            f.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
