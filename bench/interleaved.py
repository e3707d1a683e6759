"""Low-variance smf/raw latency ratio, for A/B work on smf itself.

Run from the repository root::

    python bench/interleaved.py              # 40 blocks of 1000 calls per system
    python bench/interleaved.py --blocks 80

``latency.py`` runs each system in fresh processes, one after the other; on a shared
VM the ratio between two such runs moves by about ±0.15x, more than most single
changes. Here one server process holds both echo servers (the raw floor and smf) and
one client process holds both clients; the client alternates 1000-call sequential
blocks between them, so both see the same machine state, and the ratio repeats
within about ±0.04x. Server and client are pinned to CPUs 0 and 1 (split placement).
Not a replacement for ``latency.py``: the two systems share processes here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

# Run as a script, only bench/ is on sys.path: make ``bench._harness`` importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import (
    Call,
    connect_raw,
    make_payload,
    percentile,
    read_line,
    run_on_smf,
    sequential,
    serve_until_stdin_closes,
    smf_echo_server,
    spawn,
    stop_by_stdin,
)

BLOCK = 1000  # calls per block
WARMUP = 2000  # untimed calls per system first


async def serve_both() -> None:
    """The raw echo and the smf echo in this process; prints both ports."""
    from bench._harness import RawEchoServer

    loop = asyncio.get_running_loop()
    raw = await loop.create_server(RawEchoServer, "127.0.0.1", 0)
    server = smf_echo_server()
    await server.start("127.0.0.1", 0)
    sys.stdout.write(f"PORTS {raw.sockets[0].getsockname()[1]} {server.port}\n")
    await serve_until_stdin_closes(server.port)  # announces the smf port again: ignored
    await server.stop(grace=1.0)
    raw.close()


async def drive(raw_port: int, smf_port: int, blocks: int) -> dict[str, list[int]]:
    import smf

    transport, raw_client = await connect_raw(raw_port)
    client = smf.Client("127.0.0.1", smf_port)
    await client.connect()
    calls: dict[str, Call] = {"raw": raw_client.call, "smf": client.call}
    payload = make_payload(60)
    samples: dict[str, list[int]] = {name: [] for name in calls}
    try:
        for call in calls.values():
            await sequential(call, payload, WARMUP)
        for block in range(blocks):
            order = ("raw", "smf") if block % 2 == 0 else ("smf", "raw")
            for name in order:
                lat, _ = await sequential(calls[name], payload, BLOCK)
                samples[name].extend(lat)
    finally:
        await client.close()
        transport.close()
    return samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=40, help="blocks per system (40)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve:
        os.sched_setaffinity(0, {0})
        run_on_smf(serve_both())
        return 0
    server = spawn(__file__, ["--serve"])
    try:
        line = read_line(server, 30, "server").split()
        if line[0] != "PORTS":
            raise RuntimeError(f"server did not start: {line}")
        os.sched_setaffinity(0, {1 % (os.cpu_count() or 1)})
        samples = run_on_smf(drive(int(line[1]), int(line[2]), a.blocks))
    finally:
        stop_by_stdin(server)
    summary: dict[str, Any] = {}
    for name, lat in samples.items():
        ordered = sorted(lat)
        summary[name] = (percentile(ordered, 0.5) / 1000, percentile(ordered, 0.99) / 1000)
    (raw50, raw99), (smf50, smf99) = summary["raw"], summary["smf"]
    print(
        f"{a.blocks} x {BLOCK} sequential 60 B calls each, interleaved: "
        f"raw p50 {raw50:.1f} p99 {raw99:.1f} µs | smf p50 {smf50:.1f} p99 {smf99:.1f} µs | "
        f"smf/raw p50 {smf50 / raw50:.2f}x p99 {smf99 / raw99:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
