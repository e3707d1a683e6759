"""Round-robin over two server processes through ``smf.Channel`` vs one connection.

Run from the repository root::

    python bench/channel.py              # 4 rounds of 1.5 s per variant, ~30 s
    python bench/channel.py --rounds 8 --seconds 2

Two smf echo servers (``bench/_harness.py``'s), each its own process. One client process
alternates, round by round, between three variants, each keeping 64 calls in flight:

* ``one connection``: an ``smf.Client`` to the first server (the baseline);
* ``channel, 2 backends``: an ``smf.Channel`` round-robin over both servers;
* ``2 clients, by hand``: one ``smf.Client`` per server, 32 calls in flight on each (what
  the channel does, without its picking and retry bookkeeping).

It prints calls/s per variant (median over the rounds) and the median of the per-round
ratios to the baseline (each round's variants run back to back, so they share the
machine's state). On a 2-core machine the client process is one of the three
busy processes, so the gain is bounded by the client's own CPU, not by the servers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import (
    make_payload,
    read_port,
    run_on_smf,
    serve_smf,
    spawn,
    stop_by_stdin,
    windowed_for,
)

WINDOW = 64


async def measure(
    ports: list[int], rounds: int, seconds: float, size: int
) -> dict[str, list[float]]:
    import smf

    payload = make_payload(size)
    one = smf.Client("127.0.0.1", ports[0])
    pair = [smf.Client("127.0.0.1", port) for port in ports]
    channel = smf.Channel([f"127.0.0.1:{port}" for port in ports], keepalive=None)
    await one.connect()
    for client in pair:
        await client.connect()
    await channel.wait_ready(timeout=10, count=len(ports))
    variants = {
        "one connection": ([one.call], WINDOW),
        f"channel, {len(ports)} backends": ([channel.call], WINDOW),
        f"{len(ports)} clients, by hand": ([c.call for c in pair], WINDOW // len(ports)),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for calls, per_call in variants.values():  # warm-up
        await windowed_for(calls, payload, 0.3, per_call)
    for _ in range(rounds):
        for name, (calls, per_call) in variants.items():
            lat, elapsed_ns = await windowed_for(calls, payload, seconds, per_call)
            rates[name].append(len(lat) / (elapsed_ns / 1e9))
    await channel.close()
    await one.close()
    for client in pair:
        await client.close()
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=1.5, help="per variant per round")
    parser.add_argument("--size", type=int, default=64, help="payload bytes")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        run_on_smf(serve_smf())
        return 0
    servers = [spawn(__file__, ["--serve"]) for _ in range(2)]
    try:
        ports = [read_port(proc, 30) for proc in servers]
        rates = run_on_smf(measure(ports, args.rounds, args.seconds, args.size))
    finally:
        for proc in servers:
            stop_by_stdin(proc)
    print(
        f"{WINDOW} calls in flight, {args.size}-byte echo, {args.rounds} rounds of "
        f"{args.seconds:g} s per variant, interleaved"
    )
    baseline = rates["one connection"]
    print(f"  {'variant':<22} {'calls/s':>10}  (min-max)  median of per-round ratios")
    for name, values in rates.items():
        median = statistics.median(values)
        spread = f"{min(values):,.0f}-{max(values):,.0f}"
        ratio = statistics.median(v / b for v, b in zip(values, baseline, strict=True))
        print(f"  {name:<22} {median:>10,.0f}  ({spread})  {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
