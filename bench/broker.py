"""Broker benchmark: produce latency at acks=all and election time after kill -9.

    python bench/broker.py            # table (about 30-60 s on 2 cores)
    python bench/broker.py --json     # the same as JSON
    python bench/broker.py --requests 300 --elections 1    # quicker

Starts a 3-node cluster (node subprocesses on loopback, fsync on, peers connected
directly), creates a topic with one partition replicated on all three nodes, then:

- **sequential**: one producer, one single-record produce at a time (``--value-size``
  bytes); each latency is the ``await client.produce(...)`` call as the caller sees it,
  i.e. leader append + fsync + replication + a follower's fsync + commit + reply.
- **concurrent**: ``--producers`` producers doing the same at once (the leader batches
  what arrives together into one fsync).
- **election**: kill -9 the partition's leader, then produce until a new leader accepts
  a record; the time from the kill to that acknowledgement. Repeated ``--elections``
  times (the killed node is restarted and caught up in between); the median is printed.

Percentiles are nearest-rank over all samples. Exit status 0 unless something crashed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import smf  # noqa: E402
from examples.broker.client import BrokerClient, ProduceError  # noqa: E402
from tests.broker.harness import Cluster  # noqa: E402

TOPIC = "bench"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(q / 100.0 * len(ordered) + 0.999999)))
    return ordered[rank - 1]


def summarize(latencies: list[float], elapsed: float) -> dict[str, float]:
    return {
        "count": len(latencies),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
        "max_ms": max(latencies) * 1000 if latencies else float("nan"),
        "records_per_s": len(latencies) / elapsed if elapsed > 0 else float("nan"),
    }


async def produce_loop(
    client: BrokerClient, name: str, n: int, size: int, latencies: list[float]
) -> None:
    for i in range(n):
        value = f"{name}-{i:08d}".encode()
        value += b"x" * max(0, size - len(value))
        started = time.perf_counter()
        await client.produce(TOPIC, 0, [value])
        latencies.append(time.perf_counter() - started)


async def measure_election(cluster: Cluster, client: BrokerClient, round_: int) -> dict[str, Any]:
    leader = await cluster.wait_leader(TOPIC, 0)
    await client.produce(TOPIC, 0, [f"pre-election-{round_}".encode()])  # leader cached
    killed_at = time.perf_counter()
    await cluster.kill(leader)
    tries = 0
    while True:
        tries += 1
        try:
            await client.produce(TOPIC, 0, [f"election-{round_}-{tries}".encode()], timeout=2.0)
            break
        except ProduceError:
            if time.perf_counter() - killed_at > 30:
                raise
            await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - killed_at
    new_leader = await cluster.wait_leader(TOPIC, 0, exclude=[leader])
    await cluster.restart(leader)
    await wait_caught_up(cluster, leader)
    return {"killed": leader, "new_leader": new_leader, "ms": elapsed * 1000, "tries": tries}


async def wait_caught_up(cluster: Cluster, node_id: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views = [await cluster.describe(i) for i in cluster.live()]
        lasts = set()
        for view in views:
            for t in view["topics"] if view else []:
                if t["name"] == TOPIC:
                    lasts.add(t["partitions"][0]["commit_index"])
        if len(lasts) == 1 and all(views):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"node {node_id} did not catch up within {timeout}s")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.data is not None:
        args.data.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="broker-bench-", dir=args.data))
    try:
        return await _run(args, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


async def _run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    node_args = ["--fsync-delay", str(args.fsync_delay)] if args.fsync_delay else []
    result: dict[str, Any] = {
        "nodes": 3,
        "fsync": True,
        "value_size": args.value_size,
        "data": str(root),
    }
    async with Cluster(root, 3, proxies=False, common_args=node_args) as cluster:
        await cluster.wait_controller()
        await cluster.create_topic(TOPIC, 1, 3)
        client = cluster.client(timeout=10.0)
        log(f"cluster up in {root}; warming up")
        await produce_loop(client, "warmup", args.warmup, args.value_size, [])

        latencies: list[float] = []
        started = time.perf_counter()
        await produce_loop(client, "seq", args.requests, args.value_size, latencies)
        result["sequential"] = summarize(latencies, time.perf_counter() - started)
        log(f"sequential: {fmt(result['sequential'])}")

        concurrent: list[float] = []
        started = time.perf_counter()
        per = max(1, args.requests // args.producers)
        await asyncio.gather(
            *(
                produce_loop(client, f"c{p}", per, args.value_size, concurrent)
                for p in range(args.producers)
            )
        )
        result["concurrent"] = summarize(concurrent, time.perf_counter() - started)
        result["concurrent"]["producers"] = args.producers
        log(f"concurrent x{args.producers}: {fmt(result['concurrent'])}")

        elections = []
        for round_ in range(args.elections):
            e = await measure_election(cluster, client, round_)
            elections.append(e)
            log(f"election {round_ + 1}: node {e['killed']} killed, node {e['new_leader']} "
                f"accepted a produce after {e['ms']:.0f} ms")  # fmt: skip
        result["elections_ms"] = [e["ms"] for e in elections]
        result["elections"] = elections
        result["election_median_ms"] = (
            statistics.median(result["elections_ms"]) if elections else float("nan")
        )
    return result


def fmt(s: dict[str, float]) -> str:
    return (
        f"p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, "
        f"{s['records_per_s']:.0f} records/s ({int(s['count'])} produces)"
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def table(r: dict[str, Any]) -> str:
    lines = [
        f"broker bench: 3 nodes, loopback, fsync on, acks=all, {r['value_size']}-byte records",
        "",
        f"{'mode':<22}{'produces':>9}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'rec/s':>9}",
    ]
    for key, label in (
        ("sequential", "sequential (1)"),
        ("concurrent", f"concurrent ({r['concurrent']['producers']})"),
    ):
        s = r[key]
        lines.append(
            f"{label:<22}{int(s['count']):>9}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}"
            f"{s['mean_ms']:>9.2f}{s['records_per_s']:>9.0f}"
        )
    lines.append("")
    each = ", ".join(f"{ms:.0f}" for ms in r["elections_ms"])
    lines.append(
        f"election after kill -9 of the leader (ms, until a produce is acked): {each}; "
        f"median {r['election_median_ms']:.0f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1000, help="sequential produces (1000)")
    parser.add_argument("--producers", type=int, default=4, help="concurrent producers (4)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--value-size", type=int, default=100, help="bytes per record (100)")
    parser.add_argument("--elections", type=int, default=3, help="kill -9 rounds (3)")
    parser.add_argument("--fsync-delay", type=float, default=0.0, help="added to every fsync")
    parser.add_argument("--data", type=Path, default=None, help="parent of the data dir (tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the data and node logs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = smf.run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
