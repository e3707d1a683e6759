"""Fault tests of the broker (slow; ``pytest -m slow tests/broker/test_broker_faults.py``).

Each test runs a real 3-node cluster (processes, node-to-node traffic through proxies the
test controls), a continuous workload of unique values from two producers over two
partitions, injects one fault, lets the cluster recover, and ends with the checker over
every live replica: lost, duplicated, reordered and divergent must all be 0.

Figures (election times, error counts) are printed: run with ``-s`` to see them.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from examples.broker.client import ProduceError

from . import harness

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

TOPIC = "events"
PARTITIONS = [0, 1]
PRODUCE_TIMEOUT = 3.0  # the workload client's budget per produce


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[harness.Cluster]:
    async with harness.Cluster(tmp_path, 3) as c:
        await c.wait_controller()
        await c.create_topic(TOPIC, len(PARTITIONS))
        yield c


def make_workload(cluster: harness.Cluster, name: str = "w") -> harness.Workload:
    client = cluster.client(timeout=PRODUCE_TIMEOUT)
    return harness.Workload(client, TOPIC, PARTITIONS, producers=2, name=name, pause=0.002)


async def finish(cluster: harness.Cluster, workload: harness.Workload, label: str) -> None:
    """Stop the workload, run the checker over every live replica, assert it is clean."""
    await workload.stop()
    report = await cluster.check(TOPIC, PARTITIONS, workload.history)
    print(f"\n[{label}] {report.summary()}\n[{label}] {report.extra()} errors={workload.errors}")
    assert report.ok, f"{report.text()}\n{cluster.report()}"
    assert report.replicas == len(cluster.live())
    assert report.acked > 0


def latency_summary(attempts: list[harness.Attempt]) -> str:
    if not attempts:
        return "no acks"
    ms = sorted((a.done - a.sent) * 1000 for a in attempts)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"n={len(ms)} p50={statistics.median(ms):.1f}ms p99={p99:.1f}ms"


async def test_kill_leader(cluster: harness.Cluster) -> None:
    """kill -9 the leader of partition 0, three times (restarting it in between): a new
    leader accepts a produce within a few seconds each time; nothing acked is lost."""
    workload = make_workload(cluster)
    workload.start()
    await workload.wait_acks(40, timeout=20)
    elections = []
    for round_ in range(3):
        leader = await cluster.wait_leader(TOPIC, 0)
        killed_at = time.monotonic()
        await cluster.kill(leader)
        probe = await workload.probe(0, timeout=20.0)
        election = time.monotonic() - killed_at
        elections.append(election)
        new_leader = await cluster.wait_leader(TOPIC, 0, exclude=[leader])
        print(
            f"\n[kill-leader] round {round_ + 1}: killed node {leader}; node {new_leader} "
            f"accepted a produce {election * 1000:.0f} ms later ({probe.tries} tries)"
        )
        assert election < 10.0
        await workload.wait_acks(40, after=time.monotonic(), timeout=20)
        await cluster.restart(leader)
        await workload.wait_acks(40, after=time.monotonic(), timeout=20)
    median = statistics.median(elections) * 1000
    print(f"[kill-leader] election times (ms): {[round(e * 1000) for e in elections]}, "
          f"median {median:.0f}")  # fmt: skip
    await finish(cluster, workload, "kill-leader")


async def test_kill_follower(cluster: harness.Cluster) -> None:
    workload = make_workload(cluster)
    workload.start()
    await workload.wait_acks(40, timeout=20)
    leader = await cluster.wait_leader(TOPIC, 0)
    follower = next(i for i in cluster.live() if i != leader)

    await cluster.kill(follower)
    killed_at = time.monotonic()
    # Partition 0 keeps its leader and its majority: no pause worth the name.
    await workload.wait_acks(40, after=killed_at, partition=0, timeout=10)
    await asyncio.sleep(1.0)
    await workload.wait_acks(20, after=time.monotonic(), timeout=20)
    during = len(workload.acks_after(killed_at))
    print(f"\n[kill-follower] acks while node {follower} was down: {during}")

    await cluster.restart(follower)
    await workload.wait_acks(40, after=time.monotonic(), timeout=20)
    await finish(cluster, workload, "kill-follower")


async def test_kill_majority_fails_cleanly_then_recovers(cluster: harness.Cluster) -> None:
    workload = make_workload(cluster)
    workload.start()
    await workload.wait_acks(40, timeout=20)
    leader = await cluster.wait_leader(TOPIC, 0)
    survivor = next(i for i in cluster.live() if i != leader)
    victims = [i for i in cluster.live() if i != survivor]

    killed_at = time.monotonic()
    await asyncio.gather(*(cluster.kill(i) for i in victims))
    await asyncio.sleep(1.0)  # let in-flight produces end

    client = cluster.client(timeout=PRODUCE_TIMEOUT)
    for partition in PARTITIONS:
        started = time.monotonic()
        with pytest.raises(ProduceError) as info:
            await client.produce(TOPIC, partition, [f"no-quorum-{partition}".encode()])
        took = time.monotonic() - started
        print(f"\n[kill-majority] produce without quorum: {info.value} ({took:.2f}s)")
        assert took < PRODUCE_TIMEOUT + 1.5, f"produce hung for {took:.1f}s"
        assert info.value.cause in ("timeout", "deadline_exceeded", "no_leader", "unreachable")
    # Every attempt of the workload while the majority was down ended within its timeout.
    limit = PRODUCE_TIMEOUT + 1.5
    slow = [a for a in workload.history if a.sent > killed_at and a.done - a.sent > limit]
    assert not slow, f"{len(slow)} produce calls took longer than their timeout: {slow[:3]}"
    assert not workload.acks_after(killed_at + 0.5)

    restarted_at = time.monotonic()
    await asyncio.gather(*(cluster.restart(i) for i in victims))
    took = await workload.wait_acks(20, after=restarted_at, timeout=30)
    print(f"[kill-majority] first ack {took:.2f}s after the restart; errors {workload.errors}")
    await finish(cluster, workload, "kill-majority")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
async def test_torn_tail_is_recovered(cluster: harness.Cluster, damage: str) -> None:
    """kill -9 a follower of partition 0, damage the tail of its newest segment, restart it:
    it drops the torn record, catches up from the leader and never serves the torn bytes.

    "truncate" cuts 7 bytes off the last record (a record the follower had fsynced and
    acknowledged: a lost acknowledged write, which Raft proper does not allow for).
    "garbage" appends half a record header (the torn write of a record never
    acknowledged: what a crash really leaves)."""
    workload = make_workload(cluster)
    workload.start()
    await workload.wait_acks(100, timeout=20)
    leader = await cluster.wait_leader(TOPIC, 0)
    victim = next(i for i in cluster.live() if i != leader)
    description = await cluster.describe(leader)
    assert description is not None
    group = cluster.group_of(description, TOPIC, 0)

    await cluster.kill(victim)
    segment = cluster.segments(victim, group)[-1]
    size = segment.stat().st_size
    assert size > 25, f"{segment} holds no record"
    with segment.open("r+b") as f:
        if damage == "truncate":
            f.truncate(size - 7)
        else:
            f.seek(size)
            f.write(b"\x30\x00\x00\x00\xde\xad\xbe\xef\x01\x02\x03")
    print(f"\n[torn-tail/{damage}] node {victim}: damaged {segment.name} ({size} bytes)")

    await workload.wait_acks(20, after=time.monotonic(), partition=0, timeout=20)
    await cluster.restart(victim)
    await workload.wait_acks(40, after=time.monotonic(), timeout=20)
    noticed = [
        line
        for line in cluster.nodes[victim].lines
        if "torn/corrupt tail" in line and "---- harness" not in line
    ]
    print(f"[torn-tail/{damage}] " + (noticed[0] if noticed else "no torn-tail message"))
    assert noticed, f"node {victim} did not report the torn tail\n{cluster.report()}"
    await finish(cluster, workload, f"torn-tail/{damage}")


async def test_network_cut_isolated_leader_rejoins(cluster: harness.Cluster) -> None:
    workload = make_workload(cluster)
    workload.start()
    await workload.wait_acks(40, timeout=20)
    old = await cluster.wait_leader(TOPIC, 0)
    found = await cluster.leader_of(TOPIC, 0)
    assert found is not None
    old_term = found[1]

    cut_at = time.monotonic()
    cluster.isolate(old)  # old leader <-x-> both others (clients still reach every node)
    new = await cluster.wait_leader(TOPIC, 0, exclude=[old], timeout=20)
    elected = time.monotonic() - cut_at
    probe = await workload.probe(0, timeout=20.0)
    print(
        f"\n[network-cut] node {old} isolated; node {new} leads partition 0 after "
        f"{elected * 1000:.0f} ms, accepted a produce after "
        f"{(time.monotonic() - cut_at) * 1000:.0f} ms"
    )
    assert probe.offset > 0
    await workload.wait_acks(40, after=time.monotonic(), timeout=20)

    cluster.heal_all()
    healed_at = time.monotonic()
    # The old leader rejoins as a follower of the new term and catches up.
    while True:
        view = await cluster.describe(old)
        p: dict[str, Any] | None = None
        if view is not None:
            p = next(
                q
                for t in view["topics"]
                if t["name"] == TOPIC
                for q in t["partitions"]
                if q["partition"] == 0
            )
        if p is not None and p["leader"] not in (-1, old) and p["term"] > old_term:
            break
        assert time.monotonic() - healed_at < 20, f"node {old} did not rejoin\n{cluster.report()}"
        await asyncio.sleep(0.1)
    print(f"[network-cut] node {old} follows node {p['leader']} (term {p['term']}) after heal")
    await workload.wait_acks(40, after=time.monotonic(), timeout=20)
    await finish(cluster, workload, "network-cut")


async def test_slow_disk_on_one_node(tmp_path: Path) -> None:
    async with harness.Cluster(tmp_path, 3, node_args={3: ["--fsync-delay", "0.05"]}) as cluster:
        await cluster.wait_controller()
        await cluster.create_topic(TOPIC, len(PARTITIONS))
        workload = make_workload(cluster)
        workload.start()
        started = time.monotonic()
        await workload.wait_acks(100, timeout=30)
        await asyncio.sleep(3.0)
        leaders = {p: await cluster.wait_leader(TOPIC, p) for p in PARTITIONS}
        for p in PARTITIONS:
            acks = [a for a in workload.acks_after(started) if a.partition == p]
            where = "slow node 3" if leaders[p] == 3 else f"node {leaders[p]}"
            print(f"\n[slow-disk] partition {p} led by {where}: {latency_summary(acks)}")
            assert acks, f"no acks on partition {p}"
            if leaders[p] != 3:  # the majority (leader + fast follower) does not wait for 3
                p50 = statistics.median(a.done - a.sent for a in acks)
                assert p50 < 0.05, f"partition {p}: p50 {p50 * 1000:.1f} ms >= the fsync delay"
        await finish(cluster, workload, "slow-disk")
