"""Following a partition over a server stream: the leader pushes committed records as
they commit (``consume --follow``), instead of the consumer polling ``Fetch``.

The stream's request is a ``FetchRequest`` (topic, partition, first offset; ``max_records``
caps each message) and each message a ``FetchReply`` (records and the high watermark),
so both ends reuse the Fetch encoding. It is served through the runtime's streaming API
(``Server.add_stream_handler``) under its own wire id. Flow control is smf's credit: a
consumer that stops reading costs the leader at most its window, never a growing queue.
When the node is not (or stops being) the leader, the stream's last message carries
the error and the leader's address, as a Fetch reply does, and the client reconnects
there and resumes after the last offset it delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
import zlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

import smf

from . import codec

if TYPE_CHECKING:
    from .client import BrokerClient
    from .node import Group, Node

FOLLOW_WIRE_ID: Final = zlib.crc32(b"broker.Data.Follow(FetchRequest):FetchReply")
LEADERSHIP_CHECK: Final = 1.0  # seconds between leadership checks while idle
NOT_LEADER: Final = "not_leader"

_signals: weakref.WeakKeyDictionary[Any, asyncio.Future[None]] = weakref.WeakKeyDictionary()


def committed(group: Group) -> None:
    """``group`` committed entries: wake the streams waiting for them."""
    signal = _signals.pop(group, None)
    if signal is not None and not signal.done():
        signal.set_result(None)


async def _next_commit(group: Group, timeout: float) -> None:
    signal = _signals.get(group)
    if signal is None or signal.done():
        signal = _signals[group] = asyncio.get_running_loop().create_future()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(signal), timeout)


def register(server: smf.Server, node: Node) -> None:
    """Serve ``Follow`` on ``server`` for ``node``."""

    async def follow(ctx: smf.CallContext, body: memoryview) -> AsyncIterator[bytes]:
        from broker.Data_smf import verify_FetchRequest
        from broker.FetchReply import FetchReplyT
        from broker.FetchRequest import FetchRequest

        from smf.stubs import check_request

        check_request(body, verify_FetchRequest)
        request = FetchRequest.GetRootAs(body, 0)
        topic, partition = codec.text(request.Topic()), request.Partition()
        offset = request.Offset()
        max_records = min(request.MaxRecords() or 1000, 10_000)
        group, error = node.partition_group(topic, partition)
        if group is None:
            yield codec.pack(
                FetchReplyT(error=error, leaderAddress=node.leader_address_of(topic, partition))
            )
            return
        while True:
            if not group.raft.is_leader:
                address = node.address_of(group.raft.leader_id)
                yield codec.pack(FetchReplyT(error=NOT_LEADER, leaderAddress=address))
                return
            records, hw = group.committed_records(offset, max_records)
            if records:
                yield codec.encode_fetch_reply(records, hw)
                offset = records[-1][0] + 1
            else:
                await _next_commit(group, LEADERSHIP_CHECK)

    server.add_stream_handler(FOLLOW_WIRE_ID, follow, "server", "Data.Follow")


async def follow(
    broker: BrokerClient, topic: str, partition: int, offset: int, max_records: int = 1000
) -> AsyncIterator[tuple[int, bytes]]:
    """Committed records of ``topic``/``partition`` from ``offset`` on, as they commit,
    forever (leave the loop to stop). Follows the leader across failovers."""
    from broker.FetchReply import FetchReply

    from .client import CorruptRecord, _fetch_reply, _fetch_request

    address: str | None = await broker.leader_address(topic, partition)
    while True:
        if address is None:  # find the leader (Fetch follows redirects), catching up too
            result = await broker.fetch_result(topic, partition, offset, max_records)
            for record_offset, value in result.records:
                yield record_offset, value
                offset = record_offset + 1
            address = result.address
        try:
            client = await broker._connect(address, broker.rpc_timeout)
            payload = _fetch_request(topic, partition, offset, max_records, False)
            async for body in client.server_stream(FOLLOW_WIRE_ID, payload):
                reply = _fetch_reply(FetchReply.GetRootAs(body, 0))
                if reply.error:
                    address = reply.leader_address or None
                    break
                for record_offset, crc, value in reply.value[0]:
                    if zlib.crc32(value) != crc:
                        raise CorruptRecord(address, record_offset, crc, zlib.crc32(value))
                    yield record_offset, value
                    offset = record_offset + 1
            else:
                address = None  # the stream ended: ask again
        except (smf.ConnectionLost, smf.RpcError):
            address = None
            await asyncio.sleep(0.1)
