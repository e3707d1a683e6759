"""The broker's messages, encoded and decoded with the code smfc generates from
``idl/broker.fbs`` (into ``examples/broker/generated``): object-API ``Encode()`` writes
each message in one bytearray, ``[ubyte]`` payloads in one copy, and the readers give
byte payloads as views of the receive buffer (``DataAsBytes()``).
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path
from typing import Any, TypeVar

from smf.errors import BadRequest

T = TypeVar("T")

GENERATED = Path(__file__).resolve().parent / "generated"


def use_generated_stubs() -> None:
    """Put smfc's output for idl/broker.fbs (package ``broker``) on ``sys.path``."""
    if str(GENERATED) not in sys.path:
        sys.path.insert(0, str(GENERATED))


use_generated_stubs()

from broker.AppendBatch import AppendBatchT  # noqa: E402
from broker.AppendRequest import AppendRequest, AppendRequestT  # noqa: E402
from broker.AppendResponse import AppendResponse, AppendResponseT  # noqa: E402
from broker.FetchReply import FetchReplyT  # noqa: E402
from broker.Heartbeat import Heartbeat as FbHeartbeat  # noqa: E402
from broker.Heartbeat import HeartbeatT  # noqa: E402
from broker.HeartbeatBatch import HeartbeatBatchT  # noqa: E402
from broker.HeartbeatResponse import HeartbeatResponse as FbHeartbeatResponse  # noqa: E402
from broker.HeartbeatResponse import HeartbeatResponseT  # noqa: E402
from broker.LogEntry import LogEntry, LogEntryT  # noqa: E402
from broker.Record import RecordT  # noqa: E402
from broker.Value import Value  # noqa: E402
from broker.VoteBatch import VoteBatchT  # noqa: E402
from broker.VoteRequest import VoteRequest as FbVoteRequest  # noqa: E402
from broker.VoteRequest import VoteRequestT  # noqa: E402
from broker.VoteResponse import VoteResponse as FbVoteResponse  # noqa: E402
from broker.VoteResponse import VoteResponseT  # noqa: E402

from . import raft  # noqa: E402
from .log import Entry  # noqa: E402


def _required(item: T | None, what: str) -> T:
    """A vector element that must be there (a malformed batch answers 400)."""
    if item is None:
        raise BadRequest(f"{what}: missing element")
    return item


def pack(obj: Any) -> bytearray:
    """An object-API instance as a finished FlatBuffer (smfc's encoder)."""
    encoded: bytearray = obj.Encode()
    return encoded


def value_bytes(value: Value | None) -> bytes:
    """A ``Value``'s payload, copied out of the receive buffer (empty when absent)."""
    return b"" if value is None else bytes(value.DataAsBytes())


def text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# ----------------------------------------------------------------- raft messages


def encode_append_batch(
    requests: list[raft.AppendRequest], responses: list[raft.AppendResponse]
) -> bytearray:
    """AppendBatch; entry payloads are copied once, into the message."""
    return AppendBatchT(
        requests=[
            AppendRequestT(
                group=m.group_id,
                term=m.term,
                src=m.src,
                dst=m.dst,
                prevIndex=m.prev_index,
                prevTerm=m.prev_term,
                entries=[
                    LogEntryT(term=e.term, index=e.index, kind=e.kind, data=e.data)
                    for e in m.entries
                ],
                leaderCommit=m.leader_commit,
            )
            for m in requests
        ],
        responses=[
            AppendResponseT(
                group=m.group_id,
                term=m.term,
                src=m.src,
                dst=m.dst,
                success=m.success,
                matchIndex=m.match_index,
                rejectHint=m.reject_hint,
            )
            for m in responses
        ],
    ).Encode()


def decode_append_batch(batch: Any) -> list[raft.RaftMessage]:
    out: list[raft.RaftMessage] = []
    for i in range(batch.RequestsLength()):
        r: AppendRequest = _required(batch.Requests(i), "AppendBatch.requests")
        entries = []
        for j in range(r.EntriesLength()):
            e: LogEntry = _required(r.Entries(j), "AppendRequest.entries")
            data = bytes(e.DataAsBytes())
            entries.append(Entry(term=e.Term(), index=e.Index(), data=data, kind=e.Kind()))
        out.append(
            raft.AppendRequest(
                group_id=r.Group(),
                term=r.Term(),
                src=r.Src(),
                dst=r.Dst(),
                prev_index=r.PrevIndex(),
                prev_term=r.PrevTerm(),
                entries=tuple(entries),
                leader_commit=r.LeaderCommit(),
            )
        )
    for i in range(batch.ResponsesLength()):
        s: AppendResponse = _required(batch.Responses(i), "AppendBatch.responses")
        out.append(
            raft.AppendResponse(
                group_id=s.Group(),
                term=s.Term(),
                src=s.Src(),
                dst=s.Dst(),
                success=s.Success(),
                match_index=s.MatchIndex(),
                reject_hint=s.RejectHint(),
            )
        )
    return out


def encode_vote_batch(
    requests: list[raft.VoteRequest], responses: list[raft.VoteResponse]
) -> bytearray:
    return pack(
        VoteBatchT(
            requests=[
                VoteRequestT(
                    group=m.group_id,
                    term=m.term,
                    src=m.src,
                    dst=m.dst,
                    lastLogIndex=m.last_log_index,
                    lastLogTerm=m.last_log_term,
                    preVote=m.pre_vote,
                )
                for m in requests
            ],
            responses=[
                VoteResponseT(
                    group=m.group_id,
                    term=m.term,
                    src=m.src,
                    dst=m.dst,
                    granted=m.granted,
                    preVote=m.pre_vote,
                )
                for m in responses
            ],
        )
    )


def decode_vote_batch(batch: Any) -> list[raft.RaftMessage]:
    out: list[raft.RaftMessage] = []
    for i in range(batch.RequestsLength()):
        r: FbVoteRequest = _required(batch.Requests(i), "VoteBatch.requests")
        out.append(
            raft.VoteRequest(
                group_id=r.Group(),
                term=r.Term(),
                src=r.Src(),
                dst=r.Dst(),
                last_log_index=r.LastLogIndex(),
                last_log_term=r.LastLogTerm(),
                pre_vote=r.PreVote(),
            )
        )
    for i in range(batch.ResponsesLength()):
        s: FbVoteResponse = _required(batch.Responses(i), "VoteBatch.responses")
        out.append(
            raft.VoteResponse(
                group_id=s.Group(),
                term=s.Term(),
                src=s.Src(),
                dst=s.Dst(),
                granted=s.Granted(),
                pre_vote=s.PreVote(),
            )
        )
    return out


def encode_heartbeat_batch(
    beats: list[raft.Heartbeat], responses: list[raft.HeartbeatResponse]
) -> bytearray:
    return pack(
        HeartbeatBatchT(
            heartbeats=[
                HeartbeatT(
                    group=m.group_id,
                    term=m.term,
                    src=m.src,
                    dst=m.dst,
                    leaderCommit=m.leader_commit,
                )
                for m in beats
            ],
            responses=[
                HeartbeatResponseT(group=m.group_id, term=m.term, src=m.src, dst=m.dst)
                for m in responses
            ],
        )
    )


def decode_heartbeat_batch(batch: Any) -> list[raft.RaftMessage]:
    out: list[raft.RaftMessage] = []
    for i in range(batch.HeartbeatsLength()):
        h: FbHeartbeat = _required(batch.Heartbeats(i), "HeartbeatBatch.heartbeats")
        out.append(
            raft.Heartbeat(
                group_id=h.Group(),
                term=h.Term(),
                src=h.Src(),
                dst=h.Dst(),
                leader_commit=h.LeaderCommit(),
            )
        )
    for i in range(batch.ResponsesLength()):
        s: FbHeartbeatResponse = _required(batch.Responses(i), "HeartbeatBatch.responses")
        out.append(
            raft.HeartbeatResponse(group_id=s.Group(), term=s.Term(), src=s.Src(), dst=s.Dst())
        )
    return out


def encode_fetch_reply(records: list[tuple[int, bytes]], high_watermark: int) -> bytearray:
    """FetchReply {records: [Record {offset, crc, value}], high_watermark}: each value
    carries its CRC-32 for the consumer to check."""
    return FetchReplyT(
        records=[
            RecordT(offset=offset, crc=zlib.crc32(value), value=value) for offset, value in records
        ],
        highWatermark=high_watermark,
    ).Encode()


__all__ = [
    "AppendBatchT",
    "decode_append_batch",
    "decode_heartbeat_batch",
    "decode_vote_batch",
    "encode_append_batch",
    "encode_fetch_reply",
    "encode_heartbeat_batch",
    "encode_vote_batch",
    "pack",
    "text",
    "value_bytes",
]
