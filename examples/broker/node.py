"""A broker node: Raft groups on disk, driven by an asyncio loop, talking smf.

- Group 0 is the controller, replicated on every node: its log holds topic commands
  (JSON), applied in order by every node, so all nodes agree on topics, partitions and
  where each partition's replicas live.
- Every partition is a Raft group of its own on its replicas. A record's offset is its
  Raft index (control entries leave gaps, as Kafka's control records do).
- Raft messages leave through an outbox flushed once per event-loop iteration: all the
  messages for one peer of one kind go in one RPC, so the heartbeats of every group two
  nodes share travel together (one Heartbeat call per node pair per tick).
- Each group's Ready is handled in order: hard state and log writes, one fsync (in a
  thread), then messages, then commits (acks to producers) -- see raft.py's contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext
from typing import Any

import smf

from . import codec, follow, raft
from .log import KIND_DATA, SegmentedLog
from .tls import TlsFiles

codec.use_generated_stubs()  # the generated modules below live there

from broker.Ack import AckT  # noqa: E402
from broker.Admin_smf import Admin  # noqa: E402
from broker.AdminReply import AdminReplyT  # noqa: E402
from broker.AppendBatch import AppendBatch  # noqa: E402
from broker.ClusterDescription import ClusterDescriptionT  # noqa: E402
from broker.CreateTopicRequest import CreateTopicRequest  # noqa: E402
from broker.Data_smf import Data  # noqa: E402
from broker.DeleteTopicRequest import DeleteTopicRequest  # noqa: E402
from broker.DescribeRequest import DescribeRequest  # noqa: E402
from broker.FetchReply import FetchReplyT  # noqa: E402
from broker.FetchRequest import FetchRequest  # noqa: E402
from broker.HealthReply import HealthReplyT  # noqa: E402
from broker.HealthRequest import HealthRequest  # noqa: E402
from broker.HeartbeatBatch import HeartbeatBatch  # noqa: E402
from broker.NodeInfo import NodeInfoT  # noqa: E402
from broker.PartitionInfo import PartitionInfoT  # noqa: E402
from broker.ProduceReply import ProduceReplyT  # noqa: E402
from broker.ProduceRequest import ProduceRequest  # noqa: E402
from broker.Replication_smf import (  # noqa: E402
    AppendEntries_WIRE_ID,
    Heartbeat_WIRE_ID,
    Replication,
    Vote_WIRE_ID,
)
from broker.TopicInfo import TopicInfoT  # noqa: E402
from broker.VoteBatch import VoteBatch  # noqa: E402

log = logging.getLogger("broker.node")

CONTROLLER = 0
PRODUCE_TIMEOUT = 5.0
ADMIN_TIMEOUT = 5.0
PEER_CALL_TIMEOUT = 1.0
MAX_SENDS_IN_FLIGHT = 64  # per peer; beyond it batches are dropped (Raft resends)
NOT_LEADER = "not_leader"

Address = tuple[str, int]


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ----------------------------------------------------------------- controller state


@dataclass
class PartitionMeta:
    topic: str
    partition: int
    group: int
    replicas: list[int]


@dataclass
class ControllerState:
    """Topic metadata: the controller log's commands, applied in order."""

    nodes: list[int]
    topics: dict[str, list[PartitionMeta]] = field(default_factory=dict)
    next_group: int = 1

    def apply(self, command: dict[str, Any]) -> str:
        """Apply one committed command; returns its error ("" when it took effect)."""
        op = command.get("op")
        name = str(command.get("name", ""))
        if op == "create_topic":
            if name in self.topics:
                return "topic_exists"
            partitions = int(command["partitions"])
            replicas = min(int(command.get("replicas") or len(self.nodes)), len(self.nodes))
            start = zlib.crc32(name.encode())
            metas = []
            for p in range(partitions):
                first = (start + p) % len(self.nodes)
                chosen = [self.nodes[(first + k) % len(self.nodes)] for k in range(replicas)]
                metas.append(PartitionMeta(name, p, self.next_group, sorted(chosen)))
                self.next_group += 1
            self.topics[name] = metas
            return ""
        if op == "delete_topic":
            if name not in self.topics:
                return "unknown_topic"
            del self.topics[name]
            return ""
        return f"unknown_command:{op}"


# ----------------------------------------------------------------- one Raft group


class Group:
    def __init__(
        self,
        node: Node,
        group_id: int,
        voters: list[int],
        directory: Path,
        meta: PartitionMeta | None,
    ) -> None:
        self.node = node
        self.group_id = group_id
        self.meta = meta
        self.directory = directory
        self.log = SegmentedLog(directory, fsync=node.fsync, fsync_delay=node.fsync_delay)
        self.raft = raft.RaftGroup(
            group_id,
            node.node_id,
            voters,
            self.log,
            election_ticks=node.election_ticks,
            rng=random.Random(node.node_id * 7919 + group_id),
        )
        self.kick = asyncio.Event()
        self.waiters: dict[int, tuple[int, asyncio.Future[None]]] = {}  # index -> (term, fut)
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._drive())
        self.kick.set()

    async def stop(self) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        for _, fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(RuntimeError("partition closed"))
        self.log.close()

    def step(self, message: raft.RaftMessage) -> None:
        self.raft.step(message)  # type: ignore[arg-type]
        self.kick.set()

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        node = self.node
        while not self.closed:
            await self.kick.wait()
            self.kick.clear()
            while (rd := self.raft.ready()) is not None:
                lg = self.log
                if rd.hard_state_changed is not None:
                    # First, and durable: a crash must never leave entries of a newer
                    # term on disk than the term saved. (fsync in a thread.)
                    await loop.run_in_executor(node.pool, _save_state, lg, rd.hard_state_changed)
                if rd.truncate_from is not None:
                    lg.truncate_suffix(rd.truncate_from)
                if rd.entries_to_persist:
                    lg.append(rd.entries_to_persist)
                if rd.needs_flush:
                    await loop.run_in_executor(node.pool, lg.flush)
                node.outbox.add(rd.messages)
                if rd.committed:
                    self._committed(rd.committed)
                    assert rd.commit_index is not None
                    lg.save_commit(rd.commit_index)
                if rd.soft_state is not None:
                    self._leadership_changed()
                self.raft.advance(rd)

    def _committed(self, entries: list[raft.Entry]) -> None:
        for entry in entries:
            waiter = self.waiters.pop(entry.index, None)
            if waiter is not None:
                term, fut = waiter
                if not fut.done():
                    if term == entry.term:
                        fut.set_result(None)
                    else:  # our proposal was replaced by a newer leader's entry
                        fut.set_exception(LeadershipLost())
            if self.group_id == CONTROLLER and entry.kind == KIND_DATA:
                self.node.apply_controller(entry)
        follow.committed(self)  # wake the consumers following this partition

    def _leadership_changed(self) -> None:
        if self.raft.is_leader or not self.waiters:
            return
        # Deposed: answer now rather than at the producer's timeout. The outcome is
        # unknown (a majority may hold an entry, and the new leader would commit it),
        # so the answer says so and the client does not blindly retry.
        waiters, self.waiters = self.waiters, {}
        for _, fut in waiters.values():
            if not fut.done():
                fut.set_exception(SteppedDown())

    def propose(self, data: bytes) -> tuple[int, asyncio.Future[None]]:
        """Append ``data`` (leader only); the future resolves when this very entry
        (same index and term) commits, and fails if another one commits there."""
        index = self.raft.propose(data)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters[index] = (self.raft.term, fut)
        self.kick.set()
        return index, fut

    def committed_records(
        self, offset: int, max_records: int
    ) -> tuple[list[tuple[int, bytes]], int]:
        """Committed data records from ``offset`` on, and the high watermark: what Raft
        has handed out as committed (durable here), never entries past it that may
        still await truncation."""
        hw = self.raft.applied_index
        lo = max(offset, self.log.first_index())
        out: list[tuple[int, bytes]] = []
        while lo <= hw and len(out) < max_records:
            batch = self.log.entries(lo, hw + 1, 1 << 20)
            if not batch:
                break
            for e in batch:
                if e.kind == KIND_DATA:
                    out.append((e.index, e.data))
                    if len(out) >= max_records:
                        break
            lo = batch[-1].index + 1
        return out, hw


def _save_state(lg: SegmentedLog, hard: tuple[int, int | None]) -> None:
    lg.save_state(*hard)


class LeadershipLost(Exception):
    """Another entry committed at our proposal's index: ours certainly did not."""


class SteppedDown(Exception):
    """This node stopped leading before our proposal committed: it may still commit."""


# ----------------------------------------------------------------- peers and outbox


class Peers:
    """One smf client per peer (reconnecting with backoff), and a bounded number of
    one-way sends in flight to each."""

    def __init__(
        self, node: Node, peers: dict[int, Address], ssl: SSLContext | None = None
    ) -> None:
        self.node = node
        self.ssl = ssl
        self.addresses = dict(peers)
        self.clients: dict[int, smf.Client] = {}
        self.in_flight: dict[int, int] = defaultdict(int)
        self.last_ok: dict[int, float] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def client(self, peer: int) -> smf.Client:
        c = self.clients.get(peer)
        if c is None:
            host, port = self.addresses[peer]
            c = smf.Client(
                host,
                port,
                timeout=PEER_CALL_TIMEOUT,
                connect_timeout=PEER_CALL_TIMEOUT,
                reconnect=smf.Backoff(initial=0.05, maximum=1.0),
                ssl=self.ssl,
            )
            self.clients[peer] = c
        return c

    def send(self, peer: int, wire_id: int, payload: bytes) -> None:
        if peer not in self.addresses or self.in_flight[peer] >= MAX_SENDS_IN_FLIGHT:
            return
        self.in_flight[peer] += 1
        task = asyncio.get_running_loop().create_task(self._send(peer, wire_id, payload))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, peer: int, wire_id: int, payload: bytes) -> None:
        try:
            # An explicit timeout: the deadline travels with the call (smf-timeout-us).
            await self.client(peer).call(wire_id, payload, timeout=PEER_CALL_TIMEOUT)
            self.last_ok[peer] = time.monotonic()
        except (smf.SmfError, OSError) as exc:
            log.debug("send to node %d failed: %s", peer, exc)
            self.node.peer_unreachable(peer)
        finally:
            self.in_flight[peer] -= 1

    def alive(self, peer: int) -> bool:
        return time.monotonic() - self.last_ok.get(peer, -1e9) < 3.0

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for c in self.clients.values():
            await c.close()


class Outbox:
    """Raft messages of one loop iteration, batched per peer and kind."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.pending: dict[int, dict[type, list[Any]]] = {}
        self._scheduled = False

    def add(self, messages: list[raft.Message]) -> None:
        if not messages:
            return
        for m in messages:
            self.pending.setdefault(m.dst, defaultdict(list))[type(m)].append(m)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        pending, self.pending = self.pending, {}
        peers = self.node.peers
        for dst, by_type in pending.items():
            votes = by_type.get(raft.VoteRequest, []), by_type.get(raft.VoteResponse, [])
            if votes[0] or votes[1]:
                peers.send(dst, Vote_WIRE_ID, codec.encode_vote_batch(*votes))
            apps = by_type.get(raft.AppendRequest, []), by_type.get(raft.AppendResponse, [])
            if apps[0] or apps[1]:
                peers.send(dst, AppendEntries_WIRE_ID, codec.encode_append_batch(*apps))
            beats = by_type.get(raft.Heartbeat, []), by_type.get(raft.HeartbeatResponse, [])
            if beats[0] or beats[1]:
                peers.send(dst, Heartbeat_WIRE_ID, codec.encode_heartbeat_batch(*beats))


# ----------------------------------------------------------------- services


class ReplicationService(Replication):
    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node

    async def Vote(self, request: VoteBatch, ctx: smf.CallContext) -> AckT:
        return self.node.deliver(codec.decode_vote_batch(request))

    async def AppendEntries(self, request: AppendBatch, ctx: smf.CallContext) -> AckT:
        return self.node.deliver(codec.decode_append_batch(request))

    async def Heartbeat(self, request: HeartbeatBatch, ctx: smf.CallContext) -> AckT:
        return self.node.deliver(codec.decode_heartbeat_batch(request))


class AdminService(Admin):
    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node

    async def CreateTopic(self, request: CreateTopicRequest, ctx: smf.CallContext) -> AdminReplyT:
        name = codec.text(request.Name())
        if not name or request.Partitions() == 0:
            return AdminReplyT(error="bad_request: name and partitions > 0 are required")
        command = {
            "op": "create_topic",
            "name": name,
            "partitions": request.Partitions(),
            "replicas": request.Replicas(),
        }
        return await self.node.controller_command(command)

    async def DeleteTopic(self, request: DeleteTopicRequest, ctx: smf.CallContext) -> AdminReplyT:
        name = codec.text(request.Name())
        return await self.node.controller_command({"op": "delete_topic", "name": name})

    async def Describe(self, request: DescribeRequest, ctx: smf.CallContext) -> ClusterDescriptionT:
        return self.node.describe()

    async def Health(self, request: HealthRequest, ctx: smf.CallContext) -> HealthReplyT:
        node = self.node
        return HealthReplyT(
            nodeId=node.node_id,
            ok=True,
            groups=len(node.groups),
            leaderOf=sum(1 for g in node.groups.values() if g.raft.is_leader),
            uptimeMs=int((time.monotonic() - node.started) * 1000),
        )


class DataService(Data):
    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node

    async def Produce(self, request: ProduceRequest, ctx: smf.CallContext) -> ProduceReplyT:
        node = self.node
        topic = codec.text(request.Topic())
        group, error = node.partition_group(topic, request.Partition())
        if group is None:
            return ProduceReplyT(
                error=error, leaderAddress=node.leader_address_of(topic, request.Partition())
            )
        if not group.raft.is_leader:
            return ProduceReplyT(
                error=NOT_LEADER, leaderAddress=node.address_of(group.raft.leader_id)
            )
        values = [codec.value_bytes(request.Values(i)) for i in range(request.ValuesLength())]
        try:
            proposed = [group.propose(v) for v in values]
        except raft.NotLeader as exc:
            return ProduceReplyT(error=NOT_LEADER, leaderAddress=node.address_of(exc.leader_id))
        remaining = ctx.time_remaining()
        timeout = PRODUCE_TIMEOUT if remaining is None else max(min(remaining, PRODUCE_TIMEOUT), 0)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(fut for _, fut in proposed))
        except TimeoutError:
            return ProduceReplyT(error="timeout: not committed on a majority in time")
        except LeadershipLost:
            return ProduceReplyT(
                error=NOT_LEADER + ": leadership lost before commit",
                leaderAddress=node.address_of(group.raft.leader_id),
            )
        except SteppedDown:
            return ProduceReplyT(
                error="timeout: the leader stepped down before commit (the records may "
                "still commit)",
                leaderAddress=node.address_of(group.raft.leader_id),
            )
        return ProduceReplyT(offsets=[index for index, _ in proposed])

    async def Fetch(self, request: FetchRequest, ctx: smf.CallContext) -> FetchReplyT | bytes:
        node = self.node
        topic = codec.text(request.Topic())
        group, error = node.partition_group(topic, request.Partition())
        if group is None:
            return FetchReplyT(
                error=error, leaderAddress=node.leader_address_of(topic, request.Partition())
            )
        if not request.Local() and not group.raft.is_leader:
            return FetchReplyT(
                error=NOT_LEADER, leaderAddress=node.address_of(group.raft.leader_id)
            )
        max_records = request.MaxRecords() or 1000
        records, hw = group.committed_records(request.Offset(), min(max_records, 10_000))
        return codec.encode_fetch_reply(records, hw)


# ----------------------------------------------------------------- the node


class Node:
    def __init__(
        self,
        node_id: int,
        listen: Address,
        peers: dict[int, Address],
        data_dir: Path,
        *,
        fsync: bool = True,
        fsync_delay: float = 0.0,
        tick_interval: float = 0.05,
        election_ticks: int = 10,
        tls: TlsFiles | None = None,
    ) -> None:
        self.node_id = node_id
        self.tls = tls
        self.listen = listen
        self.data_dir = data_dir
        self.fsync = fsync
        self.fsync_delay = fsync_delay
        self.tick_interval = tick_interval
        self.election_ticks = election_ticks
        self.all_nodes = sorted({node_id, *peers})
        self.addresses = {**peers, node_id: listen}
        self.groups: dict[int, Group] = {}
        self.controller = ControllerState(self.all_nodes)
        self.command_waiters: dict[int, asyncio.Future[str]] = {}
        self.peers = Peers(self, peers, tls.client_context() if tls is not None else None)
        self.outbox = Outbox(self)
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"fsync-{node_id}")
        self.server = smf.Server([ReplicationService(self), AdminService(self), DataService(self)])
        follow.register(self.server, self)  # consume --follow: a server stream
        self.started = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        controller = Group(self, CONTROLLER, self.all_nodes, self.data_dir / "group-0", None)
        self.groups[CONTROLLER] = controller
        # Rebuild topic metadata from what the controller had committed before a restart
        # (the Raft core hands out only entries committed after start).
        for entry in controller.log.entries(1, controller.raft.applied_index + 1, 1 << 62):
            if entry.kind == KIND_DATA:
                self.apply_controller(entry, replay=True)
        controller.start()
        self._sync_partitions()
        await self.server.start(
            self.listen[0],
            self.listen[1],
            ssl=self.tls.server_context() if self.tls is not None else None,
        )
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        await self.server.stop(grace=1.0)
        for g in list(self.groups.values()):
            await g.stop()
        await self.peers.close()
        self.pool.shutdown(wait=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            for g in self.groups.values():
                g.raft.tick()
                g.kick.set()

    # -------------------------------------------------------------- raft plumbing

    def deliver(self, messages: list[raft.RaftMessage]) -> AckT:
        accepted = 0
        for m in messages:
            g = self.groups.get(m.group_id)
            if g is not None and not g.closed:
                g.step(m)
                accepted += 1
        return AckT(accepted=accepted)

    def peer_unreachable(self, peer: int) -> None:
        for g in self.groups.values():
            if peer in g.raft.voters and g.raft.is_leader:
                g.raft.report_unreachable(peer)

    # -------------------------------------------------------------- controller

    def apply_controller(self, entry: raft.Entry, replay: bool = False) -> None:
        try:
            command = json.loads(entry.data)
            error = self.controller.apply(command)
        except (ValueError, KeyError, TypeError) as exc:
            error = f"bad_command: {exc}"
        waiter = self.command_waiters.pop(entry.index, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(error)
        if not replay:
            self._sync_partitions()

    def _sync_partitions(self) -> None:
        """Open the groups of partitions placed here; close those of deleted topics."""
        wanted: dict[int, PartitionMeta] = {}
        for metas in self.controller.topics.values():
            for meta in metas:
                if self.node_id in meta.replicas:
                    wanted[meta.group] = meta
        for gid, meta in wanted.items():
            if gid not in self.groups:
                directory = self.data_dir / f"group-{gid}"
                g = Group(self, gid, meta.replicas, directory, meta)
                self.groups[gid] = g
                g.start()
        for gid in [g for g in self.groups if g != CONTROLLER and g not in wanted]:
            group = self.groups.pop(gid)
            task = asyncio.get_running_loop().create_task(self._drop_group(group))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _drop_group(self, group: Group) -> None:
        await group.stop()
        shutil.rmtree(group.directory, ignore_errors=True)

    async def controller_command(self, command: dict[str, Any]) -> AdminReplyT:
        controller = self.groups[CONTROLLER]
        if not controller.raft.is_leader:
            return AdminReplyT(
                error=NOT_LEADER, leaderAddress=self.address_of(controller.raft.leader_id)
            )
        try:
            index, fut = controller.propose(json.dumps(command, sort_keys=True).encode())
        except raft.NotLeader as exc:
            return AdminReplyT(error=NOT_LEADER, leaderAddress=self.address_of(exc.leader_id))
        result: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.command_waiters[index] = result
        try:
            async with asyncio.timeout(ADMIN_TIMEOUT):
                await fut
                error = await result
        except TimeoutError:
            self.command_waiters.pop(index, None)
            return AdminReplyT(error="timeout: controller command not committed in time")
        except LeadershipLost:
            return AdminReplyT(
                error=NOT_LEADER, leaderAddress=self.address_of(controller.raft.leader_id)
            )
        except SteppedDown:
            self.command_waiters.pop(index, None)
            return AdminReplyT(error="timeout: the controller leader stepped down (may apply)")
        return AdminReplyT(error=error)

    # -------------------------------------------------------------- lookups

    def address_of(self, node_id: int | None) -> str:
        if node_id is None or node_id not in self.addresses:
            return ""
        return format_address(self.addresses[node_id])

    def find_partition(self, topic: str, partition: int) -> tuple[PartitionMeta | None, str]:
        metas = self.controller.topics.get(topic)
        if metas is None:
            return None, "unknown_topic"
        if not 0 <= partition < len(metas):
            return None, f"unknown_partition: {topic} has {len(metas)}"
        return metas[partition], ""

    def partition_group(self, topic: str, partition: int) -> tuple[Group | None, str]:
        meta, error = self.find_partition(topic, partition)
        if meta is None:
            return None, error
        group = self.groups.get(meta.group)
        if group is None:
            return None, NOT_LEADER  # not a replica here: send the client elsewhere
        return group, ""

    def leader_address_of(self, topic: str, partition: int) -> str:
        """For a partition not hosted here: point at one of its replicas."""
        meta, _ = self.find_partition(topic, partition)
        if meta is None:
            return ""
        return self.address_of(meta.replicas[0])

    def describe(self) -> ClusterDescriptionT:
        controller = self.groups[CONTROLLER].raft
        topics = []
        for name, metas in sorted(self.controller.topics.items()):
            parts = []
            for meta in metas:
                g = self.groups.get(meta.group)
                r = g.raft if g is not None else None
                leader = r.leader_id if r is not None else None
                parts.append(
                    PartitionInfoT(
                        partition=meta.partition,
                        group=meta.group,
                        replicas=list(meta.replicas),
                        leader=-1 if leader is None else leader,
                        term=r.term if r is not None else 0,
                        commitIndex=r.commit_index if r is not None else 0,
                        lastIndex=r.last_index if r is not None else 0,
                    )
                )
            topics.append(TopicInfoT(name=name, partitions=parts))
        return ClusterDescriptionT(
            nodeId=self.node_id,
            controllerLeader=-1 if controller.leader_id is None else controller.leader_id,
            nodes=[
                NodeInfoT(
                    id=n,
                    address=self.address_of(n),
                    alive=n == self.node_id or self.peers.alive(n),
                )
                for n in self.all_nodes
            ],
            topics=topics,
        )


# ----------------------------------------------------------------- entry points


async def run_node(
    node_id: int,
    listen: Address,
    peers: dict[int, Address],
    data_dir: Path,
    *,
    fsync: bool = True,
    fsync_delay: float = 0.0,
    tick_interval: float = 0.05,
    election_ticks: int = 10,
    metrics_port: int | None = None,
    tls: TlsFiles | None = None,
) -> None:
    """Serve until cancelled or SIGTERM/SIGINT."""
    node = Node(
        node_id,
        listen,
        peers,
        data_dir,
        fsync=fsync,
        fsync_delay=fsync_delay,
        tick_interval=tick_interval,
        election_ticks=election_ticks,
        tls=tls,
    )
    await node.start()
    print(f"node {node_id} listening on {format_address(listen)}", flush=True)
    exporter = None
    if metrics_port is not None:
        from smf.prometheus import MetricsExporter

        exporter = MetricsExporter(servers=[node.server])
        port = exporter.start_http_server(metrics_port)
        print(f"node {node_id} metrics on http://127.0.0.1:{port}/metrics", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        if exporter is not None:
            exporter.stop_http_server()
        await node.stop()


def run_cluster(
    nodes: int,
    data: Path,
    base_port: int,
    host: str = "127.0.0.1",
    fsync_delay: float = 0.0,
) -> int:
    """Start ``nodes`` node processes; relay their output; stop them on SIGINT/SIGTERM."""
    addresses = {i: (host, base_port + i - 1) for i in range(1, nodes + 1)}
    procs: list[subprocess.Popen[bytes]] = []
    for i, (h, p) in addresses.items():
        peers = ",".join(f"{j}={format_address(a)}" for j, a in addresses.items() if j != i)
        argv = [
            sys.executable,
            "-m",
            "examples.broker",
            "node",
            "--id",
            str(i),
            "--listen",
            format_address((h, p)),
            "--peers",
            peers,
            "--data",
            str(data / f"node-{i}"),
        ]
        if fsync_delay:
            argv += ["--fsync-delay", str(fsync_delay)]
        procs.append(subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[2]))

    def stop(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    status = 0
    for proc in procs:
        code = proc.wait()
        if code not in (0, -signal.SIGTERM, -signal.SIGINT):
            status = 1
    return status


__all__ = ["Node", "run_cluster", "run_node"]
