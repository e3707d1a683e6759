"""The broker's command line: ``python -m examples.broker COMMAND ...``.

    cluster  --nodes 3 --data DIR [--base-port 9001] [--host H] [--fsync-delay S]
    node     --id 1 --listen HOST:PORT --peers 2=HOST:PORT,3=HOST:PORT --data DIR
             [--fsync-delay S] [--tick-ms N] [--no-fsync]
    admin    --bootstrap HOST:PORT create-topic NAME --partitions N [--replicas R]
    admin    --bootstrap HOST:PORT delete-topic NAME
    admin    --bootstrap HOST:PORT describe [--json]
    admin    --bootstrap HOST:PORT health
    produce  --bootstrap HOST:PORT --topic T --partition N [VALUE ...]   (else stdin lines)
    consume  --bootstrap HOST:PORT --topic T --partition N --from OFFSET [--count N] [--follow]

``cluster`` prints ``cluster ready: ...`` once every node listens and a controller leader
is elected. The client commands wait up to ``--timeout`` (10 s) for a bootstrap node to
accept connections, so they can follow ``cluster ... &`` in a script at once.

``--bootstrap`` takes one address or a comma-separated list. ``produce`` prints
``OFFSET VALUE`` for each acknowledged record and one ``error: ...`` line (stderr) naming
the cause for each that was not; ``consume`` prints ``OFFSET VALUE`` lines. Exit status: 0
when everything worked, 1 when the broker failed or could not be reached, 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .tls import add_tls_arguments, tls_from_args

if TYPE_CHECKING:
    from .client import BrokerClient


# --------------------------------------------------------------------------- argument types


def _address(text: str) -> tuple[str, int]:
    from .client import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _peers(text: str) -> dict[int, tuple[str, int]]:
    """``2=HOST:PORT,3=HOST:PORT`` (empty for a single node)."""
    peers: dict[int, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node, sep, address = item.partition("=")
        if not sep or not node.strip().isdigit():
            raise argparse.ArgumentTypeError(f"bad peer {item!r}: expected ID=HOST:PORT")
        peers[int(node)] = _address(address)
    return peers


def _bootstrap(text: str) -> list[str]:
    from .client import parse_bootstrap

    try:
        return parse_bootstrap(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.broker",
        description="A small replicated-log broker on smf (Raft per partition).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("cluster", help="run N nodes as local subprocesses")
    p.add_argument("--nodes", type=_positive, default=3)
    p.add_argument("--data", type=pathlib.Path, required=True, help="data/node-I per node")
    p.add_argument("--base-port", type=_positive, default=9001, help="node I listens on P+I-1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--fsync-delay", type=_seconds, default=0.0, help="added to every fsync")

    p = sub.add_parser("node", help="run one node")
    p.add_argument("--id", type=_positive, required=True)
    p.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    p.add_argument("--peers", type=_peers, default={}, metavar="ID=HOST:PORT,...")
    p.add_argument("--data", type=pathlib.Path, required=True)
    p.add_argument("--fsync-delay", type=_seconds, default=0.0, help="added to every fsync")
    p.add_argument("--tick-ms", type=_positive, default=50, help="Raft tick (ms)")
    p.add_argument("--no-fsync", action="store_true", help="do not fsync (unsafe)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    add_tls_arguments(p)

    p = sub.add_parser("admin", help="create, delete and describe topics; node health")
    _common(p)
    admin = p.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    a = admin.add_parser("create-topic", help="create a topic")
    a.add_argument("name")
    a.add_argument("--partitions", type=_positive, required=True)
    a.add_argument("--replicas", type=_positive, default=None, help="default: every node")
    a = admin.add_parser("delete-topic", help="delete a topic")
    a.add_argument("name")
    a = admin.add_parser("describe", help="nodes, topics, partition leaders and offsets")
    a.add_argument("--json", action="store_true", help="print the description as JSON")
    admin.add_parser("health", help="the health of each bootstrap node")

    p = sub.add_parser("produce", help="append values to a partition")
    _common(p)
    p.add_argument("--topic", required=True)
    p.add_argument("--partition", type=_non_negative, required=True)
    p.add_argument("--batch", type=_positive, default=100, help="values per request (100)")
    p.add_argument("values", nargs="*", metavar="VALUE", help="default: lines of stdin")

    p = sub.add_parser("consume", help="read committed records of a partition")
    _common(p)
    p.add_argument("--topic", required=True)
    p.add_argument("--partition", type=_non_negative, required=True)
    p.add_argument("--from", dest="offset", type=_non_negative, default=0, metavar="OFFSET")
    p.add_argument(
        "--count",
        type=_positive,
        default=None,
        help="stop after N records, waiting for them up to --timeout (default: read up to "
        "the high watermark and stop)",
    )
    p.add_argument(
        "--follow",
        action="store_true",
        help="keep printing records as they commit, pushed by the leader over a stream "
        "(until --count records, or interrupted)",
    )
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap",
        type=_bootstrap,
        required=True,
        metavar="HOST:PORT[,...]",
        help="any node(s) of the cluster",
    )
    p.add_argument("--timeout", type=_seconds, default=10.0, help="per operation (10 s)")
    add_tls_arguments(p)


# --------------------------------------------------------------------------- commands


def _show(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


async def _admin(args: argparse.Namespace, client: BrokerClient) -> int:
    action = args.admin_command
    if action == "create-topic":
        await client.create_topic(args.name, args.partitions, args.replicas)
        print(f"created topic {args.name} ({args.partitions} partitions)")
        return 0
    if action == "delete-topic":
        await client.delete_topic(args.name)
        print(f"deleted topic {args.name}")
        return 0
    if action == "describe":
        description = await client.describe()
        if args.json:
            print(json.dumps(description, indent=2, sort_keys=True))
        else:
            print(format_description(description))
        return 0
    status = 0
    for address in client.nodes[: len(args.bootstrap)]:
        try:
            h = await client.health(address)
        except Exception as exc:  # reported per node
            print(f"{address}  unreachable: {exc}")
            status = 1
            continue
        state = "ok" if h["ok"] else "NOT OK"
        print(
            f"{address}  node {h['node_id']}  {state}  groups={h['groups']} "
            f"leader_of={h['leader_of']} uptime={h['uptime_ms'] / 1000:.1f}s"
        )
        status = status or (0 if h["ok"] else 1)
    return status


def format_description(d: dict[str, Any]) -> str:
    """The human table of ``admin describe``."""
    lines = []
    leader = d["controller_leader"]
    lines.append(
        f"answered by node {d['node_id']} ({d.get('address', '?')}); controller leader: "
        + (f"node {leader}" if leader >= 0 else "unknown")
    )
    lines.append("")
    lines.append(f"{'NODE':<6}{'ADDRESS':<24}ALIVE")
    for n in d["nodes"]:
        lines.append(f"{n['id']:<6}{n['address']:<24}{'yes' if n['alive'] else 'no'}")
    lines.append("")
    if not d["topics"]:
        lines.append("no topics")
        return "\n".join(lines)
    width = max(5, *(len(t["name"]) for t in d["topics"])) + 2
    header = (
        f"{'TOPIC':<{width}}{'PART':>4}  {'LEADER':>6}  {'TERM':>5}  {'COMMIT':>8}  "
        f"{'LAST':>8}  REPLICAS"
    )
    lines.append(header)
    for t in d["topics"]:
        for p in t["partitions"]:
            leader_text = str(p["leader"]) if p["leader"] >= 0 else "-"
            replicas = ",".join(str(r) for r in p["replicas"])
            lines.append(
                f"{t['name']:<{width}}{p['partition']:>4}  {leader_text:>6}  {p['term']:>5}  "
                f"{p['commit_index']:>8}  {p['last_index']:>8}  {replicas}"
            )
    return "\n".join(lines)


async def _produce(args: argparse.Namespace, client: BrokerClient) -> int:
    from .client import BrokerUnavailable, ProduceError

    if args.values:
        values = [v.encode() for v in args.values]
    else:
        values = [line.rstrip("\r\n").encode() for line in sys.stdin]
    failed = 0
    for start in range(0, len(values), args.batch):
        chunk = values[start : start + args.batch]
        try:
            offsets = await client.produce(args.topic, args.partition, chunk)
        except ProduceError as exc:
            if exc.cause == "unreachable":
                raise BrokerUnavailable(str(exc), code=exc.cause, tried=[exc.address]) from None
            failed += len(chunk)
            where = f" (at {exc.address})" if exc.address else ""
            for value in chunk:
                print(
                    f"error: {_show(value)!r} not acknowledged by {args.topic}/{args.partition}"
                    f"{where}: {exc.reason}",
                    file=sys.stderr,
                )
            continue
        for offset, value in zip(offsets, chunk, strict=True):
            print(f"{offset} {_show(value)}")
    sys.stdout.flush()
    return 1 if failed else 0


async def _consume(args: argparse.Namespace, client: BrokerClient) -> int:
    if args.follow:
        printed = 0
        async for record_offset, value in client.follow(args.topic, args.partition, args.offset):
            print(f"{record_offset} {_show(value)}", flush=True)
            printed += 1
            if args.count is not None and printed >= args.count:
                break
        return 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    offset = args.offset
    printed = 0
    while args.count is None or printed < args.count:
        want = 1000 if args.count is None else min(1000, args.count - printed)
        result = await client.fetch_result(args.topic, args.partition, offset, want)
        for record_offset, value in result.records:
            print(f"{record_offset} {_show(value)}")
            printed += 1
            offset = record_offset + 1
        if result.records:
            continue
        if args.count is None:
            break  # caught up with the high watermark
        if loop.time() >= deadline:
            print(
                f"error: only {printed} of {args.count} records from offset {args.offset} "
                f"within {args.timeout:g}s (high watermark {result.high_watermark})",
                file=sys.stderr,
            )
            return 1
        await asyncio.sleep(0.1)
    return 0


async def wait_for_any(addresses: Sequence[str], timeout: float) -> float:
    """Wait until one of ``addresses`` accepts a TCP connection (a node just started by
    ``cluster ... &`` needs a moment); the seconds left of ``timeout``. Raises
    BrokerUnavailable naming every address and the time waited."""
    from .client import BrokerUnavailable, parse_address

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = "no attempt"
    while True:
        for address in addresses:
            host, port = parse_address(address)
            left = deadline - loop.time()
            try:
                _reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), max(0.05, min(1.0, left))
                )
            except (OSError, TimeoutError) as exc:
                last = f"{address}: {exc or type(exc).__name__}"
                continue
            writer.close()
            return max(0.0, deadline - loop.time())
        if loop.time() >= deadline:
            raise BrokerUnavailable(
                f"no node of {', '.join(addresses)} accepted a connection within "
                f"{timeout:g}s (is the cluster running?): {last}",
                code="unreachable",
                tried=list(addresses),
            )
        await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))


async def _client_command(args: argparse.Namespace) -> int:
    from .client import BrokerClient

    tls = tls_from_args(args)
    left = await wait_for_any(args.bootstrap, args.timeout)
    client = BrokerClient(
        args.bootstrap,
        # The operation gets what the wait left of --timeout (at least a second).
        timeout=max(left, min(1.0, args.timeout)),
        ssl=tls.client_context() if tls is not None else None,
    )
    try:
        if args.command == "admin":
            return await _admin(args, client)
        if args.command == "produce":
            return await _produce(args, client)
        return await _consume(args, client)
    finally:
        await client.close()


def _run_node(args: argparse.Namespace) -> int:
    import smf

    from . import node  # lazily: the other commands work even if node.py does not import

    host, port = args.listen
    smf.run(
        node.run_node(
            args.id,
            (host, port),
            args.peers,
            args.data,
            fsync=not args.no_fsync,
            fsync_delay=args.fsync_delay,
            tick_interval=args.tick_ms / 1000.0,
            metrics_port=args.metrics_port,
            tls=tls_from_args(args),
        )
    )
    return 0


def _run_cluster(args: argparse.Namespace) -> int:
    import threading

    from . import node

    addresses = [f"{args.host}:{args.base_port + i}" for i in range(args.nodes)]
    threading.Thread(target=_report_ready, args=(addresses,), daemon=True).start()
    return node.run_cluster(
        args.nodes, args.data, args.base_port, host=args.host, fsync_delay=args.fsync_delay
    )


def _report_ready(addresses: list[str], patience: float = 60.0) -> None:
    """Print ``cluster ready: ...`` once every node accepts connections and the
    controller has a leader (or say, on stderr, that it did not within ``patience``)."""
    import smf

    from .client import BrokerClient, BrokerError

    async def poll() -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        for address in addresses:
            await wait_for_any([address], max(0.0, deadline - loop.time()))
        async with BrokerClient(addresses, timeout=2.0) as client:
            while True:
                try:
                    d = await client.describe()
                except BrokerError:
                    d = {"controller_leader": -1}
                if d["controller_leader"] >= 0:
                    return (
                        f"cluster ready: {len(addresses)} node(s) on {', '.join(addresses)}; "
                        f"controller leader: node {d['controller_leader']}"
                    )
                if loop.time() >= deadline:
                    raise BrokerError(f"no controller leader within {patience:g}s")
                await asyncio.sleep(0.1)

    try:
        print(smf.run(poll()), flush=True)
    except Exception as exc:  # reported; the nodes keep running
        print(f"cluster not ready: {exc}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "node":
        try:
            return _run_node(args)
        except KeyboardInterrupt:
            return 0
    if args.command == "cluster":
        return _run_cluster(args)

    import smf

    from .client import BrokerError

    try:
        return smf.run(_client_command(args))
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except smf.SmfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
