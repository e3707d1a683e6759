"""Broker nodes in one process, over real loopback sockets: controller, produce/fetch,
restart recovery and leader failover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import smf
from examples.broker import codec
from examples.broker.node import CONTROLLER, Node
from smf.workers import free_port

codec.use_generated_stubs()

from broker.Admin_smf import AdminClient  # noqa: E402
from broker.CreateTopicRequest import CreateTopicRequestT  # noqa: E402
from broker.Data_smf import DataClient  # noqa: E402
from broker.FetchRequest import FetchRequestT  # noqa: E402
from broker.ProduceRequest import ProduceRequestT  # noqa: E402
from broker.Value import ValueT  # noqa: E402


class Cluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.ports = {i: free_port() for i in range(1, size + 1)}
        self.nodes: dict[int, Node] = {}
        self.clients: list[smf.Client] = []

    def make(self, i: int) -> Node:
        peers = {j: ("127.0.0.1", p) for j, p in self.ports.items() if j != i}
        return Node(i, ("127.0.0.1", self.ports[i]), peers, self.root / f"node-{i}", fsync=False)

    async def start(self, i: int) -> None:
        node = self.make(i)
        await node.start()
        self.nodes[i] = node

    async def stop(self, i: int) -> None:
        await self.nodes.pop(i).stop()

    async def client(self, i: int) -> smf.Client:
        c = smf.Client("127.0.0.1", self.ports[i], timeout=10.0)
        await c.connect()
        self.clients.append(c)
        return c

    def leader_of(self, group: int) -> int | None:
        for i, n in self.nodes.items():
            g = n.groups.get(group)
            if g is not None and g.raft.is_leader:
                return i
        return None

    async def wait_leader(self, group: int, timeout: float = 15.0) -> int:
        return await wait_for(lambda: self.leader_of(group), timeout, f"leader of {group}")


async def wait_for(probe: Callable[[], int | None], timeout: float, what: str) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {what} within {timeout}s")


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    for i in c.ports:
        await c.start(i)
    yield c
    for client in c.clients:
        await client.close()
    for i in list(c.nodes):
        await c.stop(i)


async def create_topic(c: Cluster, name: str, partitions: int) -> None:
    leader = await c.wait_leader(CONTROLLER)
    admin = AdminClient(await c.client(leader))
    reply = await admin.CreateTopic(CreateTopicRequestT(name=name, partitions=partitions))
    assert codec.text(reply.Error()) == ""
    await wait_for(
        lambda: 1 if all(name in n.controller.topics for n in c.nodes.values()) else None,
        10,
        "topic on every node",
    )


async def produce(c: Cluster, leader: int, values: list[bytes]) -> list[int]:
    data = DataClient(await c.client(leader))
    reply = await data.Produce(
        ProduceRequestT(topic="t", partition=0, values=[ValueT(data=list(v)) for v in values])
    )
    assert codec.text(reply.Error()) == ""
    return [reply.Offsets(i) for i in range(reply.OffsetsLength())]


async def fetch_local(c: Cluster, node: int) -> list[tuple[int, bytes]]:
    data = DataClient(await c.client(node))
    reply = await data.Fetch(
        FetchRequestT(topic="t", partition=0, offset=0, maxRecords=1000, local=True)
    )
    return [
        (reply.Records(i).Offset(), bytes(reply.Records(i).ValueAsBytes()))
        for i in range(reply.RecordsLength())
    ]


async def test_create_produce_fetch_on_every_replica(cluster: Cluster) -> None:
    await create_topic(cluster, "t", 1)
    group = cluster.nodes[1].controller.topics["t"][0].group
    leader = await cluster.wait_leader(group)
    values = [f"v{i}".encode() for i in range(20)]
    offsets = await produce(cluster, leader, values)
    assert offsets == sorted(offsets) and len(set(offsets)) == 20
    for node in cluster.nodes:
        await wait_for(
            lambda n=node: (
                1 if cluster.nodes[n].groups[group].raft.commit_index >= offsets[-1] else None
            ),
            10,
            "commit on every replica",
        )
        assert await fetch_local(cluster, node) == list(zip(offsets, values, strict=True))


async def test_restart_replays_controller_and_keeps_records(cluster: Cluster) -> None:
    await create_topic(cluster, "t", 1)
    group = cluster.nodes[1].controller.topics["t"][0].group
    leader = await cluster.wait_leader(group)
    offsets = await produce(cluster, leader, [b"a", b"b", b"c"])
    victim = next(i for i in cluster.nodes if i != leader)
    await wait_for(
        lambda: 1 if cluster.nodes[victim].groups[group].raft.commit_index >= offsets[-1] else None,
        10,
        "follower commit",
    )
    await cluster.stop(victim)
    await cluster.start(victim)
    restarted = cluster.nodes[victim]
    assert "t" in restarted.controller.topics  # rebuilt from its own controller log
    assert group in restarted.groups
    assert [v for _, v in await fetch_local(cluster, victim)] == [b"a", b"b", b"c"]


async def test_leader_failover_keeps_acknowledged_records(cluster: Cluster) -> None:
    await create_topic(cluster, "t", 1)
    group = cluster.nodes[1].controller.topics["t"][0].group
    leader = await cluster.wait_leader(group)
    offsets = await produce(cluster, leader, [b"x1", b"x2"])
    await cluster.stop(leader)
    started = time.monotonic()
    new_leader = await cluster.wait_leader(group)
    print(f"\nnew leader {new_leader} after {time.monotonic() - started:.2f}s")
    assert new_leader != leader
    more = await produce(cluster, new_leader, [b"x3"])
    assert more[0] > offsets[-1]
    assert [v for _, v in await fetch_local(cluster, new_leader)] == [b"x1", b"x2", b"x3"]


async def test_mutual_tls_between_nodes_and_for_clients(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    from examples.broker.client import BrokerClient
    from examples.broker.tls import TlsFiles

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    def issue(name: str) -> TlsFiles:
        cert = ca.issue_cert(name)
        cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        return TlsFiles(ca_file, cert_file, key_file)

    c = Cluster(tmp_path / "data")
    for i in c.ports:
        peers = {j: ("127.0.0.1", p) for j, p in c.ports.items() if j != i}
        node = Node(
            i,
            ("127.0.0.1", c.ports[i]),
            peers,
            c.root / f"node-{i}",
            fsync=False,
            tls=issue(f"node-{i}.cluster"),
        )
        await node.start()
        c.nodes[i] = node
    try:
        await c.wait_leader(CONTROLLER)  # elections ran over mutual TLS
        client_tls = issue("producer.cluster")
        addresses = [f"127.0.0.1:{p}" for p in c.ports.values()]
        broker = BrokerClient(addresses, timeout=15.0, ssl=client_tls.client_context())
        try:
            await broker.create_topic("t", partitions=1)
            offsets = await broker.produce("t", 0, [b"secret"])
            assert [v for _, v in await broker.fetch("t", 0, offsets[0], 10)] == [b"secret"]
        finally:
            await broker.close()
        plain = smf.Client("127.0.0.1", c.ports[1], timeout=3.0, connect_timeout=3.0)
        with pytest.raises(smf.ConnectionLost):
            await plain.connect()
            await plain.call(1, b"x")
        await plain.close()
    finally:
        for i in list(c.nodes):
            await c.stop(i)


async def test_nodes_serve_health_and_a_channel_reaches_any_of_them(cluster: Cluster) -> None:
    """Every node serves smf's health service; a channel over the nodes answers the
    calls any node can serve (Describe), and drops a stopped node."""
    from broker.DescribeRequest import DescribeRequestT

    from smf_rpc.health.Health_smf import HealthClient
    from smf_rpc.health.HealthCheckRequest import HealthCheckRequestT

    addresses = [f"127.0.0.1:{port}" for port in cluster.ports.values()]
    async with smf.Channel(addresses, keepalive=0.2, keepalive_timeout=2.0) as channel:
        await channel.wait_ready(timeout=15, count=len(addresses))
        for backend in channel.backends:
            reply = await HealthClient(backend.client).Check(HealthCheckRequestT(), timeout=5)
            assert reply.Status() == smf.health.ServingStatus.SERVING
        admin = AdminClient(channel)  # type: ignore[arg-type]
        seen = {(await admin.Describe(DescribeRequestT(), timeout=5)).NodeId() for _ in range(6)}
        assert seen == set(cluster.ports)  # round robin: every node answered
        await cluster.stop(1)
        for _ in range(6):
            assert (await admin.Describe(DescribeRequestT(), timeout=5)).NodeId() != 1
