"""Typed use of the generated streaming API (checked with mypy --strict, then run)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from streamtest.Ack import AckT
from streamtest.Chunk import Chunk, ChunkT
from streamtest.Log_smf import Log, LogClient
from streamtest.Msg import Msg, MsgT
from streamtest.Record import RecordT
from streamtest.Sub import Sub, SubT

import smf


class LogService(Log):
    async def Tail(self, request: Sub, ctx: smf.CallContext) -> AsyncIterator[RecordT]:
        topic = (request.Topic() or b"").decode()
        for i in range(request.Count()):
            yield RecordT(offset=i, data=f"{topic}:{i}")

    async def Upload(self, requests: AsyncIterator[Chunk], ctx: smf.CallContext) -> AckT:
        chunks = size = 0
        async for chunk in requests:
            chunks += 1
            size += chunk.DataLength()
        return AckT(chunks=chunks, bytes=size)

    async def Chat(self, requests: AsyncIterator[Msg], ctx: smf.CallContext) -> AsyncIterator[MsgT]:
        async for msg in requests:
            yield MsgT(text="re:" + (msg.Text() or b"").decode())

    async def Ping(self, request: Msg, ctx: smf.CallContext) -> MsgT:
        return MsgT(text="pong")


async def exercise(client: smf.Client) -> list[str]:
    stub = LogClient(client, verify_responses=True)
    out: list[str] = []
    async for record in stub.Tail(SubT(topic="t", count=3), timeout=30):
        out.append(f"{record.Offset()}={(record.Data() or b'').decode()}")

    async def chunks() -> AsyncIterator[ChunkT]:
        for _ in range(4):
            yield ChunkT(data=b"\x01\x02\x03")

    ack = await stub.Upload(chunks())
    out.append(f"ack {ack.Chunks()}/{ack.Bytes()}")
    ack = await stub.Upload([ChunkT(data=b"\x09")])
    out.append(f"ack {ack.Chunks()}/{ack.Bytes()}")
    call = stub.Chat()
    await call.send(MsgT(text="a"))
    await call.send(MsgT(text="b"))
    await call.done_writing()
    async for reply in call:
        out.append((reply.Text() or b"").decode())
    out.append(((await stub.Ping(MsgT(text="p"))).Text() or b"").decode())
    async for record in stub.Tail(SubT(topic="forever", count=1_000_000)):
        out.append(f"broke at {record.Offset()}")
        break
    return out
