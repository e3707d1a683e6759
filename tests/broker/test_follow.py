"""``consume --follow``: the leader pushes committed records over a server stream, as
they commit, and the follower of a partition survives a leader failover."""

from __future__ import annotations

import asyncio

from examples.broker.client import BrokerClient

from .test_node import Cluster, cluster, create_topic, produce  # noqa: F401 - the fixture


async def test_follow_pushes_records_as_they_commit_and_survives_failover(
    cluster: Cluster,  # noqa: F811
) -> None:
    await create_topic(cluster, "t", 1)
    group = cluster.nodes[1].controller.topics["t"][0].group
    leader = await cluster.wait_leader(group)
    await produce(cluster, leader, [b"a", b"b"])
    bootstrap = [f"127.0.0.1:{p}" for p in cluster.ports.values()]
    got: list[bytes] = []
    arrived = asyncio.Event()
    async with BrokerClient(bootstrap, timeout=10.0) as client:

        async def consume() -> None:
            async for _, value in client.follow("t", 0, 0):
                got.append(value)
                arrived.set()
                if len(got) == 5:
                    return

        task = asyncio.create_task(consume())
        await asyncio.wait_for(_until(lambda: len(got) == 2, arrived), 15)
        await produce(cluster, leader, [b"c"])  # pushed, not polled for
        await asyncio.wait_for(_until(lambda: len(got) == 3, arrived), 15)
        await cluster.stop(leader)  # the stream ends; the client finds the new leader
        new_leader = await cluster.wait_leader(group)
        await produce(cluster, new_leader, [b"d", b"e"])
        await asyncio.wait_for(task, 30)
    assert got == [b"a", b"b", b"c", b"d", b"e"]


async def _until(done: object, arrived: asyncio.Event) -> None:
    while not done():  # type: ignore[operator]
        arrived.clear()
        await arrived.wait()
