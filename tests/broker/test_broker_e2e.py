"""End-to-end tests of the broker: the client against fake nodes, then a real 3-node
cluster (processes started by the harness, one cluster for the module), the CLI as
subprocesses, redirects, errors, and a follower catching up after a restart."""

from __future__ import annotations

import asyncio
import json
import re
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

import smf
from examples.broker import codec
from examples.broker.client import (
    AdminError,
    BrokerClient,
    BrokerUnavailable,
    CorruptRecord,
    ProduceError,
    parse_address,
    parse_bootstrap,
)

from . import harness

codec.use_generated_stubs()

from broker.Admin_smf import Admin  # noqa: E402
from broker.AdminReply import AdminReplyT  # noqa: E402
from broker.ClusterDescription import ClusterDescriptionT  # noqa: E402
from broker.Data_smf import Data  # noqa: E402
from broker.FetchReply import FetchReplyT  # noqa: E402
from broker.NodeInfo import NodeInfoT  # noqa: E402
from broker.ProduceReply import ProduceReplyT  # noqa: E402
from broker.Record import RecordT  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOPIC = "orders"
LINE = re.compile(r"^(\d+) (.*)$")


# =========================================================================== fake nodes


class FakeNode:
    """One fake broker node: a follower (answers not_leader, pointing at ``leader``) or
    the leader of everything (a dict log per partition)."""

    def __init__(self, *, leader: str | None = None) -> None:
        self.leader = leader  # None: this node is the leader
        self.logs: dict[int, list[tuple[int, bytes]]] = {0: [], 1: []}
        self.next_offset = 1
        self.produce_calls = 0
        self.hang = False
        self.corrupt = False
        self.topics = {TOPIC}
        self.server = smf.Server([_FakeAdmin(self), _FakeData(self)])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def not_leader(self) -> dict[str, Any]:
        return {"error": "not_leader", "leaderAddress": self.leader or ""}


class _FakeAdmin(Admin):
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    async def CreateTopic(self, request: Any, ctx: smf.CallContext) -> AdminReplyT:
        node = self.node
        if node.leader is not None:
            return AdminReplyT(**node.not_leader())
        name = codec.text(request.Name())
        if name in node.topics:
            return AdminReplyT(error="topic_exists")
        node.topics.add(name)
        return AdminReplyT()

    async def Describe(self, request: Any, ctx: smf.CallContext) -> ClusterDescriptionT:
        return ClusterDescriptionT(
            nodeId=7, controllerLeader=-1, nodes=[NodeInfoT(id=7, address="x:1", alive=True)]
        )


class _FakeData(Data):
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    async def Produce(self, request: Any, ctx: smf.CallContext) -> ProduceReplyT:
        node = self.node
        node.produce_calls += 1
        if node.leader is not None:
            return ProduceReplyT(**node.not_leader())
        if codec.text(request.Topic()) not in node.topics:
            return ProduceReplyT(error="unknown_topic")
        if node.hang:
            await asyncio.sleep(30)
        offsets = []
        for i in range(request.ValuesLength()):
            value = codec.value_bytes(request.Values(i))
            node.logs[request.Partition()].append((node.next_offset, value))
            offsets.append(node.next_offset)
            node.next_offset += 2  # gaps, like control entries
        return ProduceReplyT(offsets=offsets)

    async def Fetch(self, request: Any, ctx: smf.CallContext) -> FetchReplyT:
        node = self.node
        if node.leader is not None and not request.Local():
            return FetchReplyT(**node.not_leader())
        log = node.logs[request.Partition()]
        records = [
            RecordT(offset=o, crc=zlib.crc32(v) ^ (1 if node.corrupt else 0), value=list(v))
            for o, v in log
            if o >= request.Offset()
        ][: request.MaxRecords()]
        return FetchReplyT(records=records, highWatermark=log[-1][0] if log else 0)


@pytest_asyncio.fixture(loop_scope="module")
async def fakes() -> AsyncIterator[tuple[FakeNode, FakeNode]]:
    leader = FakeNode()
    await leader.server.start("127.0.0.1", 0)
    follower = FakeNode(leader=leader.address)
    await follower.server.start("127.0.0.1", 0)
    try:
        yield leader, follower
    finally:
        await follower.server.stop(grace=0)
        await leader.server.stop(grace=0)


async def test_addresses_parse() -> None:
    assert parse_address("127.0.0.1:9001") == ("127.0.0.1", 9001)
    assert parse_address("[::1]:9001") == ("::1", 9001)
    assert parse_bootstrap("a:1, b:2,a:1") == ["a:1", "b:2"]
    for bad in ("nohost", "h:", "h:0", "h:99999", ":80"):
        with pytest.raises(ValueError):
            parse_address(bad)


async def test_fake_redirect_produce_fetch(fakes: tuple[FakeNode, FakeNode]) -> None:
    leader, follower = fakes
    async with BrokerClient(follower.address, timeout=5.0) as client:
        offsets = await client.produce(TOPIC, 0, [b"one", b"two"])
        assert offsets == [1, 3]
        assert follower.produce_calls == 1 and leader.produce_calls == 1
        # The leader is remembered: the next produce goes straight to it.
        assert await client.produce(TOPIC, 0, [b"three"]) == [5]
        assert follower.produce_calls == 1
        assert await client.fetch(TOPIC, 0, 0, 10) == [(1, b"one"), (3, b"two"), (5, b"three")]
        assert await client.fetch(TOPIC, 0, 2, 1) == [(3, b"two")]
        await client.create_topic("new", 1)
        with pytest.raises(AdminError, match="topic_exists"):
            await client.create_topic("new", 1)


async def test_fake_unknown_topic_is_a_clear_error(fakes: tuple[FakeNode, FakeNode]) -> None:
    leader, _ = fakes
    async with BrokerClient(leader.address, timeout=5.0) as client:
        with pytest.raises(ProduceError) as info:
            await client.produce("nope", 0, [b"x"])
    assert info.value.cause == "unknown_topic" and not info.value.ambiguous
    assert "produce to nope/0 not acknowledged" in str(info.value)
    assert "unknown_topic (no such topic)" in str(info.value)


async def test_fake_crc_mismatch_raises(fakes: tuple[FakeNode, FakeNode]) -> None:
    leader, _ = fakes
    async with BrokerClient(leader.address, timeout=5.0) as client:
        await client.produce(TOPIC, 1, [b"payload"])
        leader.corrupt = True
        try:
            with pytest.raises(CorruptRecord, match="is corrupt"):
                await client.fetch(TOPIC, 1, 0, 10)
        finally:
            leader.corrupt = False


async def test_fake_ambiguous_produce_is_not_retried(fakes: tuple[FakeNode, FakeNode]) -> None:
    leader, follower = fakes
    leader.hang = True
    calls = leader.produce_calls
    try:
        async with BrokerClient([leader.address, follower.address], timeout=0.5) as client:
            started = time.monotonic()
            with pytest.raises(ProduceError) as info:
                await client.produce(TOPIC, 0, [b"maybe"])
            elapsed = time.monotonic() - started
    finally:
        leader.hang = False
    assert info.value.ambiguous and info.value.cause == "deadline_exceeded"
    assert leader.produce_calls == calls + 1  # sent once, never again
    assert elapsed < 2.0


async def test_unreachable_node_fails_fast_naming_it() -> None:
    port = harness.free_port()
    async with BrokerClient(f"127.0.0.1:{port}", timeout=10.0) as client:
        started = time.monotonic()
        with pytest.raises(ProduceError) as info:
            await client.produce(TOPIC, 0, [b"x"])
        with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}"):
            await client.describe()
    assert time.monotonic() - started < 5.0
    assert info.value.cause == "unreachable" and not info.value.ambiguous
    assert f"127.0.0.1:{port}" in str(info.value)


async def test_cli_unreachable_and_bad_arguments() -> None:
    port = harness.free_port()
    r = await harness.run_cli("admin", "--bootstrap", f"127.0.0.1:{port}", "describe")
    assert r.code == 1
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.err
    assert f"127.0.0.1:{port}" in lines[0]
    r = await harness.run_cli("produce", "--bootstrap", f"127.0.0.1:{port}", "--topic", "t")
    assert r.code == 2 and "--partition" in r.err
    r = await harness.run_cli("node", "--id", "1", "--listen", "nowhere", "--data", "/tmp/x")
    assert r.code == 2 and "HOST:PORT" in r.err
    r = await harness.run_cli("consume", "--bootstrap", "h:1", "--topic", "t", "--partition", "-1")
    assert r.code == 2


# =========================================================================== real cluster


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[harness.Cluster]:
    c = harness.Cluster(tmp_path_factory.mktemp("broker-e2e"), 3)
    try:
        await c.start()
        await c.wait_controller()
        await c.create_topic(TOPIC, 2)
        yield c
    finally:
        await c.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def history() -> list[harness.Attempt]:
    """Every value the module's tests produced to TOPIC through the library (for the
    final checker run)."""
    return []


async def _produce(
    client: BrokerClient, partition: int, values: list[bytes], history: list[harness.Attempt]
) -> list[int]:
    sent = time.monotonic()
    offsets = await client.produce(TOPIC, partition, values)
    done = time.monotonic()
    for i, (value, offset) in enumerate(zip(values, offsets, strict=True)):
        history.append(
            harness.Attempt(
                producer="e2e",
                seq=len(history) + i,
                partition=partition,
                value=value,
                sent=sent,
                done=done,
                offset=offset,
                batch=int(sent * 1e6),
            )
        )
    return offsets


async def test_describe_shows_topic_and_leaders(cluster: harness.Cluster) -> None:
    client = cluster.client(timeout=10.0)
    d = await client.describe()
    assert {n["id"] for n in d["nodes"]} == {1, 2, 3}
    assert d["controller_leader"] in (1, 2, 3)
    (topic,) = [t for t in d["topics"] if t["name"] == TOPIC]
    assert [p["partition"] for p in topic["partitions"]] == [0, 1]
    for p in topic["partitions"]:
        assert sorted(p["replicas"]) == [1, 2, 3]
    json.dumps(d)  # JSON-able


async def test_produce_consume_round_trip(
    cluster: harness.Cluster, history: list[harness.Attempt]
) -> None:
    client = cluster.client(timeout=10.0)
    for partition in (0, 1):
        values = [f"rt-{partition}-{i}".encode() for i in range(20)]
        offsets = await _produce(client, partition, values, history)
        assert offsets == sorted(offsets) and len(set(offsets)) == 20
        got = await client.fetch(TOPIC, partition, offsets[0], 100)
        assert [v for _, v in got][:20] == values
        assert [o for o, _ in got][:20] == offsets
        one = await _produce(client, partition, [f"rt-{partition}-single".encode()], history)
        assert one[0] > offsets[-1]
    # binary values survive
    blob = bytes(range(256)) * 4
    (offset,) = await _produce(client, 0, [blob], history)
    assert await client.fetch(TOPIC, 0, offset, 1) == [(offset, blob)]


async def test_not_leader_redirect_is_followed(
    cluster: harness.Cluster, history: list[harness.Attempt]
) -> None:
    leader = await cluster.wait_leader(TOPIC, 0)
    follower = next(i for i in cluster.live() if i != leader)
    client = cluster.client([cluster.address(follower)], timeout=10.0)
    (offset,) = await _produce(client, 0, [b"via-follower"], history)
    leader = await cluster.wait_leader(TOPIC, 0)  # (the same one, barring an election)
    assert await client.leader_address(TOPIC, 0) == cluster.address(leader)
    assert (offset, b"via-follower") in await client.fetch(TOPIC, 0, offset, 1)
    # a non-local fetch on the follower is redirected too; a local one is served there
    raw = harness.BrokerClient([cluster.address(follower)], timeout=10.0, max_attempts=1)
    try:
        result = await raw.fetch_result(
            TOPIC, 0, 0, 1000, address=cluster.address(follower), local=True
        )
        assert result.address == cluster.address(follower)
    finally:
        await raw.close()


async def test_unknown_topic_and_partition_errors(cluster: harness.Cluster) -> None:
    client = cluster.client(timeout=5.0)
    started = time.monotonic()
    with pytest.raises(ProduceError) as info:
        await client.produce("no-such-topic", 0, [b"x"])
    assert info.value.cause == "unknown_topic", info.value
    assert "no-such-topic" in str(info.value) and "no such topic" in str(info.value)
    with pytest.raises(ProduceError) as info:
        await client.produce(TOPIC, 9, [b"x"])
    assert info.value.cause == "unknown_partition", info.value
    assert time.monotonic() - started < 5.0
    with pytest.raises(AdminError, match="topic_exists"):
        await client.create_topic(TOPIC, 2)
    r = await harness.run_cli(
        "produce", "--bootstrap", cluster.address(1), "--topic", "no-such-topic",
        "--partition", "0", "v1",
    )  # fmt: skip
    assert r.code == 1 and r.out == ""
    assert "unknown_topic" in r.err and "'v1' not acknowledged" in r.err, r.err


async def test_cli_produce_consume_describe(cluster: harness.Cluster) -> None:
    boot = ",".join(cluster.addresses)
    topic = "cli-topic"
    r = await harness.run_cli("admin", "--bootstrap", boot, "create-topic", topic,
                              "--partitions", "2", "--replicas", "3")  # fmt: skip
    assert r.code == 0, r.err
    assert r.out.strip() == f"created topic {topic} (2 partitions)"
    r = await harness.run_cli("admin", "--bootstrap", boot, "create-topic", topic,
                              "--partitions", "1")  # fmt: skip
    assert r.code == 1 and "topic_exists" in r.err and len(r.err.splitlines()) == 1

    r = await harness.run_cli(
        "produce", "--bootstrap", boot, "--topic", topic, "--partition", "1", "cli-a", "cli-b",
    )  # fmt: skip
    assert r.code == 0, r.err
    produced = [LINE.match(line) for line in r.out.splitlines()]
    assert len(produced) == 2 and all(produced), r.out
    assert [m.group(2) for m in produced if m] == ["cli-a", "cli-b"]
    first = int(produced[0].group(1)) if produced[0] else 0

    r = await harness.run_cli(
        "produce", "--bootstrap", cluster.address(2), "--topic", topic, "--partition", "1",
        stdin=b"cli-c\ncli d with spaces\n",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert [line.split(" ", 1)[1] for line in r.out.splitlines()] == ["cli-c", "cli d with spaces"]

    r = await harness.run_cli(
        "consume", "--bootstrap", cluster.address(3), "--topic", topic, "--partition", "1",
        "--from", str(first), "--count", "4",
    )  # fmt: skip
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert len(lines) == 4 and all(LINE.match(line) for line in lines), r.out
    values = [line.split(" ", 1)[1] for line in lines]
    assert values == ["cli-a", "cli-b", "cli-c", "cli d with spaces"]
    assert int(lines[0].split()[0]) == first

    r = await harness.run_cli(
        "consume", "--bootstrap", boot, "--topic", topic, "--partition", "1", "--from", "0",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert r.out.splitlines() == lines  # everything committed, then stop

    r = await harness.run_cli(
        "consume", "--bootstrap", boot, "--topic", topic, "--partition", "0", "--count", "1",
        "--timeout", "1",
    )  # fmt: skip
    assert r.code == 1 and "only 0 of 1 records" in r.err

    r = await harness.run_cli("admin", "--bootstrap", boot, "describe", "--json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert {n["id"] for n in d["nodes"]} == {1, 2, 3}
    assert {t["name"] for t in d["topics"]} >= {TOPIC, topic}

    r = await harness.run_cli("admin", "--bootstrap", boot, "describe")
    assert r.code == 0, r.err
    assert "controller leader: node" in r.out
    row = rf"^{topic}\s+1\s+[123-]+\s+\d+\s+\d+\s+\d+\s+1,2,3$"
    assert re.search(row, r.out, re.M), r.out

    r = await harness.run_cli("admin", "--bootstrap", boot, "health")
    assert r.code == 0, r.err
    assert len(r.out.splitlines()) == 3 and all("  ok  " in ln for ln in r.out.splitlines())

    r = await harness.run_cli("admin", "--bootstrap", boot, "delete-topic", topic)
    assert r.code == 0, r.err
    r = await harness.run_cli(
        "produce", "--bootstrap", boot, "--topic", topic, "--partition", "0", "late",
    )  # fmt: skip
    assert r.code == 1 and "unknown_topic" in r.err, r.err


async def test_follower_restart_catches_up(
    cluster: harness.Cluster, history: list[harness.Attempt]
) -> None:
    leader = await cluster.wait_leader(TOPIC, 0)
    follower = next(i for i in cluster.live() if i != leader)
    client = cluster.client(timeout=10.0)
    await cluster.terminate(follower)
    for i in range(30):
        await _produce(client, i % 2, [f"while-down-{i}".encode()], history)
    await cluster.restart(follower)
    await _produce(client, 0, [b"after-restart"], history)
    for partition in (0, 1):
        expected = await client.fetch(TOPIC, partition, 0, 10_000)
        deadline = time.monotonic() + 15.0
        while True:
            got = await client.fetch(
                TOPIC, partition, 0, 10_000, address=cluster.address(follower), local=True
            )
            if got == expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert got == expected, f"follower {follower} did not catch up\n{cluster.report()}"


async def test_checker_is_clean_at_the_end(
    cluster: harness.Cluster, history: list[harness.Attempt]
) -> None:
    assert len(history) > 50
    report = await cluster.check(TOPIC, [0, 1], history)
    print(report.text())
    assert report.ok, report.text()
    assert report.acked == len(history) and report.replicas == 3
