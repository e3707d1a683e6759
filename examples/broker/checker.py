"""Consistency checker: what producers were told against what every replica holds.

Input: the *history* of a workload (every value it tried to produce: unique, with when
the request was sent, when its answer came back, and the offset acknowledged or the
error), and the committed log of every live replica of every partition (read with
``fetch(local=True)`` from each node). Output: a :class:`Report` whose one-line summary is

    acked=N lost=0 duplicated=0 reordered=0 divergent=0

Definitions (per topic):

acked
    values whose produce was acknowledged (with an offset).
lost
    acked values that some live replica does not hold at the acknowledged offset
    (missing, or another value there). An acknowledgement means committed on a majority,
    fsynced; once replicas have caught up, every live replica must hold it.
duplicated
    values found at two or more distinct (partition, offset) positions, in the union of
    all replicas. Every produced value is unique, so any repeat was written twice.
reordered
    acked values whose offset is not greater than the offset of a value acknowledged
    (same partition) *before this one's request was sent*, i.e. the log order contradicts
    real-time order. For a producer that waits for each ack before sending the next
    value this includes "one producer's acked offsets must increase in the order the acks
    were received". Values of one request must also get increasing offsets, in order.
divergent
    (partition, offset) positions holding different values on different replicas.

Also counted, and failing the check when not zero: ``phantom`` (values in the log that
nobody produced). Reported for information: ``attempted``, ``failed`` (not acknowledged)
and ``unacked_present`` (not acknowledged, yet committed: allowed, the outcome of a
timed-out produce is unknown to its producer).

    python -m examples.broker.checker --nodes A,B,C --topic T --partitions 0,1 \
        --history history.jsonl      # one Attempt per line, as written by Attempt.to_json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .client import BrokerClient, BrokerError

# replica name (address) -> partition -> offset -> value
Replicas = dict[str, dict[int, dict[int, bytes]]]


@dataclass(frozen=True)
class Attempt:
    """One value a producer tried to append (unique across the whole run)."""

    producer: str
    seq: int  # the producer's own sequence number
    partition: int
    value: bytes
    sent: float  # time.monotonic() when the request was sent
    done: float  # when its answer (or error) came back
    offset: int | None = None  # acknowledged offset; None when not acknowledged
    error: str = ""
    batch: int = 0  # id of the request (values of one request share it, in order)

    @property
    def acked(self) -> bool:
        return self.offset is not None

    def to_json(self) -> str:
        d = asdict(self)
        d["value"] = self.value.decode("utf-8", "backslashreplace")
        return json.dumps(d)

    @staticmethod
    def from_json(line: str) -> Attempt:
        d = json.loads(line)
        d["value"] = d["value"].encode()
        return Attempt(**d)


@dataclass
class Report:
    attempted: int = 0
    acked: int = 0
    failed: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    divergent: int = 0
    phantom: int = 0
    unacked_present: int = 0
    replicas: int = 0
    records: int = 0  # distinct (partition, offset) positions read
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        bad = (self.lost, self.duplicated, self.reordered, self.divergent, self.phantom)
        return not any(bad)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def summary(self) -> str:
        return (
            f"acked={self.acked} lost={self.lost} duplicated={self.duplicated} "
            f"reordered={self.reordered} divergent={self.divergent}"
        )

    def extra(self) -> str:
        return (
            f"attempted={self.attempted} failed={self.failed} "
            f"unacked_present={self.unacked_present} phantom={self.phantom} "
            f"replicas={self.replicas} positions={self.records}"
        )

    def text(self, max_details: int = 20) -> str:
        lines = [self.summary(), self.extra()]
        lines += self.details[:max_details]
        if len(self.details) > max_details:
            lines.append(f"... and {len(self.details) - max_details} more")
        return "\n".join(lines)


def check(
    history: Sequence[Attempt], replicas: Mapping[str, Mapping[int, Mapping[int, bytes]]]
) -> Report:
    """Judge ``history`` against ``replicas`` (every live replica's committed log)."""
    report = Report(attempted=len(history), replicas=len(replicas))
    acked = [a for a in history if a.acked]
    report.acked = len(acked)
    report.failed = report.attempted - report.acked
    details = report.details

    # ---- divergent: one position, different values on different replicas
    union: dict[tuple[int, int], dict[bytes, list[str]]] = defaultdict(dict)
    for name, partitions in replicas.items():
        for partition, log in partitions.items():
            for offset, value in log.items():
                union[(partition, offset)].setdefault(value, []).append(name)
    report.records = len(union)
    for (partition, offset), values in sorted(union.items()):
        if len(values) > 1:
            report.divergent += 1
            shown = "; ".join(f"{_show(v)} on {','.join(names)}" for v, names in values.items())
            details.append(f"divergent: {partition}/{offset} holds {shown}")

    # ---- duplicated: one value at several positions
    positions: dict[bytes, set[tuple[int, int]]] = defaultdict(set)
    for position, values in union.items():
        for value in values:
            positions[value].add(position)
    for value, where in positions.items():
        if len(where) > 1:
            report.duplicated += 1
            details.append(f"duplicated: {_show(value)} at {_positions(where)}")

    # ---- phantom / unacked but present
    by_value = {a.value: a for a in history}
    for value, where in positions.items():
        attempt = by_value.get(value)
        if attempt is None:
            report.phantom += 1
            details.append(f"phantom: {_show(value)} at {_positions(where)} was never produced")
        elif not attempt.acked:
            report.unacked_present += 1

    # ---- lost: acked, and missing (or overwritten) at its offset on some replica
    for a in acked:
        assert a.offset is not None
        missing = []
        for name, partitions in replicas.items():
            got = partitions.get(a.partition, {}).get(a.offset)
            if got != a.value:
                missing.append(f"{name} ({'nothing' if got is None else _show(got)})")
        if missing:
            report.lost += 1
            details.append(
                f"lost: {_show(a.value)} acked at {a.partition}/{a.offset}, "
                f"missing on {', '.join(missing)}"
            )

    # ---- reordered: an ack below an offset acknowledged before its request was sent
    report.reordered = _reordered(acked, details)
    return report


def _reordered(acked: Sequence[Attempt], details: list[str]) -> int:
    count = 0
    by_partition: dict[int, list[Attempt]] = defaultdict(list)
    for a in acked:
        by_partition[a.partition].append(a)
    for partition, attempts in by_partition.items():
        by_done = sorted(attempts, key=lambda a: a.done)
        i = 0
        best: Attempt | None = None  # the highest offset acknowledged so far
        flagged: set[int] = set()
        for b in sorted(attempts, key=lambda a: a.sent):
            while i < len(by_done) and by_done[i].done < b.sent:
                c = by_done[i]
                if best is None or (c.offset or 0) > (best.offset or 0):
                    best = c
                i += 1
            if best is not None and (b.offset or 0) <= (best.offset or 0):
                count += 1
                flagged.add(id(b))
                details.append(
                    f"reordered: {_show(b.value)} got {partition}/{b.offset}, but "
                    f"{_show(best.value)} had been acked at {partition}/{best.offset} before "
                    "it was sent"
                )
        # values of one request: offsets in the order of the values
        batches: dict[tuple[str, int], list[Attempt]] = defaultdict(list)
        for a in attempts:
            batches[(a.producer, a.batch)].append(a)
        for members in batches.values():
            members.sort(key=lambda a: a.seq)
            for prev, cur in itertools.pairwise(members):
                if (cur.offset or 0) <= (prev.offset or 0) and id(cur) not in flagged:
                    count += 1
                    details.append(
                        f"reordered: {_show(cur.value)} at {partition}/{cur.offset} not after "
                        f"{_show(prev.value)} at {partition}/{prev.offset} of the same request"
                    )
    return count


def _show(value: bytes, limit: int = 40) -> str:
    text = value.decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _positions(where: Iterable[tuple[int, int]]) -> str:
    return ", ".join(f"{p}/{o}" for p, o in sorted(where))


# --------------------------------------------------------------------------- reading replicas


async def read_replica(
    client: BrokerClient, address: str, topic: str, partition: int, *, batch: int = 1000
) -> tuple[dict[int, bytes], int]:
    """Every committed record of one replica (``fetch(local=True)`` from ``address``),
    and the high watermark it reported (CRC checked by the client)."""
    log: dict[int, bytes] = {}
    offset = 0
    high_watermark = 0
    while True:
        result = await client.fetch_result(
            topic, partition, offset, batch, address=address, local=True
        )
        high_watermark = max(high_watermark, result.high_watermark)
        if not result.records:
            return log, high_watermark
        for record_offset, value in result.records:
            log[record_offset] = value
        offset = result.records[-1][0] + 1


async def read_replicas(
    client: BrokerClient, addresses: Sequence[str], topic: str, partitions: Sequence[int]
) -> tuple[Replicas, dict[str, dict[int, int]]]:
    """Every live replica's committed log (``addresses``: the nodes to read), and each
    one's high watermark per partition."""
    replicas: Replicas = {}
    marks: dict[str, dict[int, int]] = {}
    for address in addresses:
        replicas[address] = {}
        marks[address] = {}
        for partition in partitions:
            log, hw = await read_replica(client, address, topic, partition)
            replicas[address][partition] = log
            marks[address][partition] = hw
    return replicas, marks


async def converged_replicas(
    client: BrokerClient,
    addresses: Sequence[str],
    topic: str,
    partitions: Sequence[int],
    *,
    timeout: float = 20.0,
    at_least: Mapping[int, int] | None = None,
) -> Replicas:
    """:func:`read_replicas` once every replica reports the same high watermark and the
    same records for each partition (and a high watermark of at least ``at_least[p]``),
    or the last read when that does not happen within ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            replicas, marks = await read_replicas(client, addresses, topic, partitions)
        except BrokerError:
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        same = all(
            len({marks[a][p] for a in addresses}) == 1
            and len({len(replicas[a][p]) for a in addresses}) == 1
            and marks[addresses[0]][p] >= (at_least or {}).get(p, 0)
            for p in partitions
        )
        if same or loop.time() >= deadline:
            return replicas
        await asyncio.sleep(0.2)


async def check_cluster(
    client: BrokerClient,
    addresses: Sequence[str],
    topic: str,
    partitions: Sequence[int],
    history: Sequence[Attempt],
    *,
    timeout: float = 20.0,
) -> Report:
    """Wait for the live replicas to converge, read them and :func:`check` the history."""
    at_least: dict[int, int] = {}
    for a in history:
        if a.offset is not None:
            at_least[a.partition] = max(at_least.get(a.partition, 0), a.offset)
    replicas = await converged_replicas(
        client, addresses, topic, partitions, timeout=timeout, at_least=at_least
    )
    return check(history, replicas)


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    import smf

    parser = argparse.ArgumentParser(prog="python -m examples.broker.checker")
    parser.add_argument("--nodes", required=True, help="HOST:PORT,... of every live node")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", default="0", help="comma-separated (0)")
    parser.add_argument("--history", required=True, help="JSON lines of Attempt")
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args(argv)
    with open(args.history) as f:
        history = [Attempt.from_json(line) for line in f if line.strip()]
    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
    partitions = [int(p) for p in args.partitions.split(",")]

    async def run() -> Report:
        client = BrokerClient(nodes, timeout=10.0)
        try:
            return await check_cluster(
                client, nodes, args.topic, partitions, history, timeout=args.timeout
            )
        finally:
            await client.close()

    try:
        report = smf.run(run())
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
