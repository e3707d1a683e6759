"""The broker's client: admin, produce and fetch over smf, following leader redirects.

    client = BrokerClient(["127.0.0.1:9001", "127.0.0.1:9002"], timeout=10.0)
    await client.create_topic("orders", partitions=2)
    offsets = await client.produce("orders", 0, [b"a", b"b"])
    records = await client.fetch("orders", 0, offsets[0], 100)   # [(offset, value), ...]
    await client.close()

Routing. CreateTopic/DeleteTopic must reach the controller's leader and Produce (and a
non-local Fetch) the partition's leader. A node that is not the leader answers
``error="not_leader"`` with ``leader_address`` ("" while it knows no leader): the client
follows the address, or waits a little and tries another node. The last leader seen for
each partition (and for the controller) is remembered, so steady-state requests go
straight to it. A node that cannot be reached is skipped for a short while and the
request moves on to the other known nodes (the bootstrap list plus every address learnt
from redirects and ``describe``). Every operation is bounded by ``timeout`` as a whole
(retries included) and by ``max_attempts`` tries.

Produce is at-most-once by default: it is retried only when the request certainly did not
take effect (a ``not_leader`` answer, a node that could not be connected to). When the
outcome is unknown (the connection dropped after the request was sent, no answer within
the deadline, the node's own ``timeout`` answer: the records may still commit), it raises
:class:`ProduceError` with ``ambiguous=True`` instead of sending the values again, so a
retry never writes them twice behind the caller's back.

Every fetched record's CRC-32 is checked against its value (:class:`CorruptRecord`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, Final, Generic, TypeVar

import smf

from . import codec

_GENERATED: Final = codec.GENERATED  # codec put the generated stubs on sys.path

from broker.Admin_smf import AdminClient  # noqa: E402
from broker.AdminReply import AdminReply  # noqa: E402
from broker.ClusterDescription import ClusterDescription  # noqa: E402
from broker.CreateTopicRequest import CreateTopicRequestT  # noqa: E402
from broker.Data_smf import DataClient  # noqa: E402
from broker.DeleteTopicRequest import DeleteTopicRequestT  # noqa: E402
from broker.DescribeRequest import DescribeRequestT  # noqa: E402
from broker.FetchReply import FetchReply  # noqa: E402
from broker.FetchRequest import FetchRequestT  # noqa: E402
from broker.HealthRequest import HealthRequestT  # noqa: E402
from broker.ProduceReply import ProduceReply  # noqa: E402
from broker.ProduceRequest import ProduceRequestT  # noqa: E402
from broker.Value import ValueT  # noqa: E402

__all__ = [
    "AdminError",
    "BrokerClient",
    "BrokerError",
    "BrokerUnavailable",
    "CorruptRecord",
    "FetchError",
    "FetchResult",
    "ProduceError",
    "format_address",
    "parse_address",
    "parse_bootstrap",
]

T = TypeVar("T")

NOT_LEADER: Final = "not_leader"

ERROR_TEXT: Final[Mapping[str, str]] = {
    "not_leader": "the node is not the leader and no leader is known yet",
    "unknown_topic": "no such topic",
    "unknown_partition": "no such partition",
    "timeout": "not committed within the node's deadline (it may still commit)",
    "topic_exists": "a topic with that name exists",
    "deadline_exceeded": "no answer within the client's deadline (it may still commit)",
    "connection_lost": "the connection dropped after the request was sent (it may still commit)",
    "unreachable": "no node could be reached",
    "no_leader": "no leader was found within the deadline",
}


def describe_error(code: str) -> str:
    """``code`` with a short explanation when it is a known one."""
    text = ERROR_TEXT.get(code)
    return f"{code} ({text})" if text else code


# --------------------------------------------------------------------------- errors


class BrokerError(Exception):
    """Base class of the client's errors. ``code`` is the broker's error string (or one
    of the client's own: unreachable, no_leader, connection_lost, deadline_exceeded)."""

    def __init__(self, message: str, *, code: str = "", address: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.address = address


class BrokerUnavailable(BrokerError):
    """No node could serve the request within the deadline (all unreachable, or no
    leader elected). ``tried`` lists the addresses tried, in order."""

    def __init__(self, message: str, *, code: str, tried: Sequence[str]) -> None:
        super().__init__(message, code=code, address=tried[-1] if tried else "")
        self.tried = list(tried)


class AdminError(BrokerError):
    """An admin request the broker refused (``code``: topic_exists, unknown_topic, ...)."""


class ProduceError(BrokerError):
    """The values were not acknowledged. ``cause`` is the error code; ``ambiguous`` is
    True when they may still have been (or may later be) committed."""

    def __init__(
        self,
        topic: str,
        partition: int,
        cause: str,
        *,
        address: str = "",
        ambiguous: bool = False,
        detail: str = "",
    ) -> None:
        where = f" at {address}" if address else ""
        extra = f": {detail}" if detail else ""
        self.reason = f"{describe_error(cause)}{extra}"
        super().__init__(
            f"produce to {topic}/{partition} not acknowledged{where}: {self.reason}",
            code=cause,
            address=address,
        )
        self.topic = topic
        self.partition = partition
        self.cause = cause
        self.ambiguous = ambiguous


class FetchError(BrokerError):
    """A fetch the broker refused (``code``: unknown_topic, unknown_partition, ...)."""


class CorruptRecord(FetchError):
    """A fetched record whose CRC-32 does not match its value."""

    def __init__(self, address: str, offset: int, expected: int, actual: int) -> None:
        super().__init__(
            f"record at offset {offset} from {address} is corrupt: crc {expected:#010x} "
            f"sent, value hashes to {actual:#010x}",
            code="corrupt_record",
            address=address,
        )
        self.offset = offset
        self.expected = expected
        self.actual = actual


class _Ambiguous(Exception):
    """The request may have taken effect (sent, then no answer)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


# --------------------------------------------------------------------------- addresses


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:port"`` for IPv6) as ``(host, port)``."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {address!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_bootstrap(bootstrap: str | Iterable[str]) -> list[str]:
    """One address, a comma-separated list, or an iterable of either: normalized, in
    order, without duplicates."""
    items = [bootstrap] if isinstance(bootstrap, str) else list(bootstrap)
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            if part.strip():
                address = format_address(*parse_address(part))
                if address not in out:
                    out.append(address)
    if not out:
        raise ValueError("no bootstrap address given")
    return out


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class FetchResult:
    records: list[tuple[int, bytes]]
    high_watermark: int
    address: str


@dataclass(frozen=True)
class _Reply(Generic[T]):
    error: str
    leader_address: str
    value: T


_Key = tuple[str, int] | str  # (topic, partition) or "controller"
_CONTROLLER: Final = "controller"


class BrokerClient:
    """A client of the broker cluster.

    ``bootstrap``: one or more ``host:port`` of any nodes. ``timeout``: the budget of one
    operation, redirects and retries included. ``rpc_timeout``: the cap of one call within
    it (default: ``timeout``). ``address_map``: addresses to dial instead of those the
    nodes advertise (e.g. a test that puts proxies between the nodes maps each proxy to
    the node behind it). ``max_attempts``: tries per operation.
    """

    def __init__(
        self,
        bootstrap: str | Iterable[str],
        timeout: float = 10.0,
        *,
        rpc_timeout: float | None = None,
        connect_timeout: float = 1.0,
        max_attempts: int = 30,
        down_for: float = 1.0,
        address_map: Mapping[str, str] | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        self.timeout = timeout
        self.ssl = ssl
        self.rpc_timeout = rpc_timeout if rpc_timeout is not None else timeout
        self.connect_timeout = connect_timeout
        self.max_attempts = max_attempts
        self.down_for = down_for
        self.address_map: dict[str, str] = dict(address_map or {})
        self.nodes: list[str] = [self._resolve(a) for a in parse_bootstrap(bootstrap)]
        self._clients: dict[str, smf.Client] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._leaders: dict[_Key, str] = {}
        self._down_until: dict[str, float] = {}
        self._rotation = 0
        self._closed = False

    # ------------------------------------------------------------------ public API

    async def create_topic(self, name: str, partitions: int, replicas: int | None = None) -> None:
        """Create ``name`` with ``partitions`` partitions of ``replicas`` replicas each
        (0 / None: the broker's default). Raises :class:`AdminError` (``topic_exists``...)."""
        request = CreateTopicRequestT(name=name, partitions=partitions, replicas=replicas or 0)

        async def call(client: smf.Client, timeout: float) -> _Reply[None]:
            reply = await AdminClient(client).CreateTopic(request, timeout=timeout)
            return _admin_reply(reply)

        await self._admin(call, f"create topic {name!r}", exists_ok_after_retry=True)

    async def delete_topic(self, name: str) -> None:
        request = DeleteTopicRequestT(name=name)

        async def call(client: smf.Client, timeout: float) -> _Reply[None]:
            reply = await AdminClient(client).DeleteTopic(request, timeout=timeout)
            return _admin_reply(reply)

        await self._admin(call, f"delete topic {name!r}", exists_ok_after_retry=False)

    async def describe(self, address: str | None = None) -> dict[str, Any]:
        """The cluster as one node sees it (``address``, or the first that answers), as a
        JSON-able dict: node_id, controller_leader, nodes, topics (with partitions:
        leader, term, commit_index, last_index, replicas)."""

        async def call(client: smf.Client, timeout: float) -> _Reply[dict[str, Any]]:
            reply = await AdminClient(client).Describe(DescribeRequestT(), timeout=timeout)
            return _Reply("", "", _description(reply))

        result, answered = await self._any_node(call, "describe", address)
        result["address"] = answered
        for node in result["nodes"]:
            self._learn(node["address"])
        return result

    async def health(self, address: str) -> dict[str, Any]:
        """One node's health: node_id, ok, groups, leader_of, uptime_ms, address."""

        async def call(client: smf.Client, timeout: float) -> _Reply[dict[str, Any]]:
            r = await AdminClient(client).Health(HealthRequestT(), timeout=timeout)
            value = {
                "node_id": r.NodeId(),
                "ok": r.Ok(),
                "groups": r.Groups(),
                "leader_of": r.LeaderOf(),
                "uptime_ms": r.UptimeMs(),
            }
            return _Reply("", "", value)

        result, answered = await self._any_node(call, "health", address, only=True)
        result["address"] = answered
        return result

    async def produce(
        self,
        topic: str,
        partition: int,
        values: Sequence[bytes],
        *,
        timeout: float | None = None,
    ) -> list[int]:
        """Append ``values`` to ``topic``/``partition``; their offsets, in order, once
        committed on a majority. Raises :class:`ProduceError` otherwise (see the module
        docstring for when it is ``ambiguous``)."""
        if not values:
            return []
        payload = _produce_request(topic, partition, values)
        n = len(values)

        async def call(client: smf.Client, rpc_timeout: float) -> _Reply[list[int]]:
            reply = await DataClient(client).Produce(payload, timeout=rpc_timeout)
            return _produce_reply(reply)

        try:
            offsets, address = await self._leader_call(
                (topic, partition),
                call,
                timeout=timeout,
                idempotent=False,
                retry_lost_leadership=len(values) == 1,
            )
        except _Failed as exc:
            raise ProduceError(
                topic,
                partition,
                exc.code,
                address=exc.address,
                ambiguous=exc.ambiguous,
                detail=exc.detail,
            ) from None
        if len(offsets) != n:
            raise ProduceError(
                topic,
                partition,
                "bad_reply",
                address=address,
                ambiguous=True,
                detail=f"{len(offsets)} offsets for {n} values",
            )
        return offsets

    async def fetch(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_records: int = 1000,
        *,
        address: str | None = None,
        local: bool = False,
    ) -> list[tuple[int, bytes]]:
        """Committed records of ``topic``/``partition`` from ``offset`` on, at most
        ``max_records``, as ``(offset, value)``. ``local``: read this node's committed copy
        (``address``, required then) even if it is a follower. Raises :class:`FetchError`,
        :class:`CorruptRecord` (CRC mismatch)."""
        result = await self.fetch_result(
            topic, partition, offset, max_records, address=address, local=local
        )
        return result.records

    async def fetch_result(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_records: int = 1000,
        *,
        address: str | None = None,
        local: bool = False,
    ) -> FetchResult:
        """:meth:`fetch`, with the answering node's high watermark and address."""
        if local and address is None:
            raise ValueError("a local fetch needs the address of the node to read")
        payload = _fetch_request(topic, partition, offset, max_records, local)

        async def call(
            client: smf.Client, rpc_timeout: float
        ) -> _Reply[tuple[list[tuple[int, int, bytes]], int]]:
            reply = await DataClient(client).Fetch(payload, timeout=rpc_timeout)
            return _fetch_reply(reply)

        try:
            if local:
                assert address is not None
                (raw, hw), answered = await self._any_node(
                    call, f"fetch {topic}/{partition}", address, only=True
                )
            else:
                (raw, hw), answered = await self._leader_call(
                    (topic, partition), call, idempotent=True, first=address
                )
        except _Failed as exc:
            if exc.code in ("unreachable", "no_leader"):
                raise BrokerUnavailable(
                    f"fetch {topic}/{partition}: {exc.detail}", code=exc.code, tried=exc.tried
                ) from None
            raise FetchError(
                f"fetch {topic}/{partition} from {exc.address}: {describe_error(exc.code)}"
                + (f": {exc.detail}" if exc.detail else ""),
                code=exc.code,
                address=exc.address,
            ) from None
        records: list[tuple[int, bytes]] = []
        for off, crc, value in raw:
            actual = zlib.crc32(value)
            if actual != crc:
                raise CorruptRecord(answered, off, crc, actual)
            records.append((off, value))
        return FetchResult(records, hw, answered)

    def follow(self, topic: str, partition: int, offset: int) -> AsyncIterator[tuple[int, bytes]]:
        """``(offset, value)`` of each committed record from ``offset`` on, pushed by the
        leader as it commits (a server stream; see ``follow.py``), until you stop."""
        from .follow import follow

        return follow(self, topic, partition, offset)

    async def leader_address(self, topic: str, partition: int) -> str | None:
        """The partition's leader as last seen by this client (None when unknown)."""
        return self._leaders.get((topic, partition))

    async def close(self) -> None:
        self._closed = True
        clients, self._clients = self._clients, {}
        for client in clients.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 2.0)

    async def __aenter__(self) -> BrokerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ routing

    def _resolve(self, address: str) -> str:
        return self.address_map.get(address, address)

    def _learn(self, address: str) -> str:
        address = self._resolve(address)
        if address and address not in self.nodes:
            self.nodes.append(address)
        return address

    def _next_node(self, avoid: str | None) -> str:
        """The next known node in rotation, preferring ones not recently unreachable."""
        now = time.monotonic()
        n = len(self.nodes)
        candidates = [self.nodes[(self._rotation + i) % n] for i in range(n)]
        self._rotation = (self._rotation + 1) % n
        fresh = [a for a in candidates if a != avoid and self._down_until.get(a, 0.0) <= now]
        if fresh:
            return fresh[0]
        others = [a for a in candidates if a != avoid]
        return others[0] if others else candidates[0]

    async def _connect(self, address: str, timeout: float) -> smf.Client:
        """A connected client for ``address`` (cached); raises ``smf.ConnectionLost`` when
        it cannot connect (nothing was sent then)."""
        if self._closed:
            raise smf.ConnectionLost("the broker client is closed")
        client = self._clients.get(address)
        if client is not None and client.connected:
            return client
        lock = self._locks.setdefault(address, asyncio.Lock())
        async with lock:
            client = self._clients.get(address)
            if client is not None and client.connected:
                return client
            if client is not None:
                await self._drop(address)
            host, port = parse_address(address)
            client = smf.Client(
                host,
                port,
                timeout=self.rpc_timeout,
                connect_timeout=max(0.05, min(self.connect_timeout, timeout)),
                ssl=self.ssl,
            )
            try:
                await client.connect()
            except BaseException:
                await client.close()
                raise
            self._clients[address] = client
            self._down_until.pop(address, None)
            return client

    async def _drop(self, address: str) -> None:
        client = self._clients.pop(address, None)
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 1.0)

    def _mark_down(self, address: str) -> None:
        self._down_until[address] = time.monotonic() + self.down_for

    async def _attempt(
        self,
        address: str,
        call: Callable[[smf.Client, float], Awaitable[_Reply[T]]],
        remaining: float,
    ) -> _Reply[T]:
        """One call to ``address``. Raises ``_Unreachable`` (not sent) or ``_Ambiguous``
        (sent, outcome unknown)."""
        try:
            client = await self._connect(address, remaining)
        except smf.ConnectionLost as exc:
            self._mark_down(address)
            raise _Unreachable(str(exc)) from None
        try:
            return await call(client, min(remaining, self.rpc_timeout))
        except smf.DeadlineExceeded as exc:
            raise _Ambiguous("deadline_exceeded", str(exc)) from None
        except smf.ConnectionLost as exc:
            await self._drop(address)
            self._mark_down(address)
            raise _Ambiguous("connection_lost", str(exc)) from None
        except smf.Unavailable as exc:  # 503: the node is busy / shutting down
            raise _Ambiguous("unavailable", str(exc)) from None
        except smf.RpcError as exc:
            raise _Failed(
                f"rpc_{exc.status}", address, detail=exc.message or str(exc), ambiguous=True
            ) from None

    async def _leader_call(
        self,
        key: _Key,
        call: Callable[[smf.Client, float], Awaitable[_Reply[T]]],
        *,
        idempotent: bool,
        timeout: float | None = None,
        first: str | None = None,
        retry_errors: frozenset[str] = frozenset(),
        retry_lost_leadership: bool = True,
    ) -> tuple[T, str]:
        """Send ``call`` to the leader of ``key``, following redirects. Raises _Failed.

        ``idempotent``: retry (on another node) when the outcome of a try is unknown.
        ``retry_errors``: error codes worth another try after a pause. A node that does
        not know the topic (its metadata may lag the controller) sends the request on to
        the nodes that were not asked yet; it fails once every known node said so.
        ``retry_lost_leadership``: whether a "not_leader: leadership lost" answer (the
        node proposed the values, then a new leader replaced them) may be retried."""
        loop = asyncio.get_running_loop()
        budget = self.timeout if timeout is None else timeout
        deadline = loop.time() + budget
        address = self._resolve(first) if first else self._leaders.get(key) or self._next_node(None)
        tried: list[str] = []
        delay = 0.02
        last = ("no_leader", "")
        redirects_in_a_row = 0
        unreachable_in_a_row = 0
        unknown_at: dict[str, str] = {}  # address -> its unknown_topic/partition answer
        uncertain = False  # an earlier try may have taken effect
        for _ in range(self.max_attempts):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            tried.append(address)
            try:
                reply = await self._attempt(address, call, remaining)
            except _Unreachable as exc:
                last = ("unreachable", exc.args[0])
                self._forget(key, address)
                unreachable_in_a_row += 1
                if unreachable_in_a_row >= 3 * len(self.nodes):
                    break  # every known node refused, three times over: give up early
                address = self._next_node(address)
                if all(self._down_until.get(a, 0.0) > time.monotonic() for a in self.nodes):
                    delay = await self._pause(delay, deadline)
                continue
            except _Ambiguous as exc:
                self._forget(key, address)
                if not idempotent:
                    raise _Failed(
                        exc.code, address, detail=exc.args[0], ambiguous=True, tried=tried
                    ) from None
                last = (exc.code, exc.args[0])
                uncertain = True
                address = self._next_node(address)
                delay = await self._pause(delay, deadline)
                continue
            unreachable_in_a_row = 0
            if not reply.error:
                self._leaders[key] = address
                return reply.value, address
            code, _, detail = reply.error.partition(":")
            code, detail = code.strip(), detail.strip()
            if code == NOT_LEADER:
                self._forget(key, address)
                if detail and not retry_lost_leadership:
                    # Proposed, then replaced: some values of a batch may have committed.
                    raise _Failed(code, address, detail=detail, ambiguous=True, tried=tried)
                hint = self._learn(reply.leader_address) if reply.leader_address else ""
                why = f" ({detail})" if detail else ""
                last = (NOT_LEADER, f"{address} is not the leader{why}")
                if hint and self._down_until.get(hint, 0.0) > time.monotonic():
                    hint = ""  # a leader we just failed to reach (dead?): wait for a new one
                if hint and hint != address and redirects_in_a_row < 3:
                    redirects_in_a_row += 1
                    address = hint
                    continue
                redirects_in_a_row = 0
                address = hint if hint and hint != address else self._next_node(address)
                delay = await self._pause(delay, deadline)
                continue
            redirects_in_a_row = 0
            if code in ("unknown_topic", "unknown_partition"):
                unknown_at[address] = reply.error
                others = [a for a in self.nodes if a not in unknown_at]
                if others:
                    address = others[0]
                    continue
                raise _Failed(code, address, detail=detail, tried=tried)
            if code in retry_errors:
                last = (code, detail)
                uncertain = True
                delay = await self._pause(delay, deadline)
                continue
            raise _Failed(
                code,
                address,
                detail=detail,
                ambiguous=code == "timeout",
                tried=tried,
                after_uncertain=uncertain,
            )
        code, detail = last
        if code == NOT_LEADER:
            code, detail = "no_leader", f"no leader found (elections still running?): {detail}"
        where = ", ".join(dict.fromkeys(tried)) or "no address"
        spent = loop.time() - (deadline - budget)  # early when every node refused
        raise _Failed(
            code,
            tried[-1] if tried else "",
            detail=f"gave up after {len(tried)} tries in {spent:.1f}s of its {budget:g}s "
            f"({where}): {detail}",
            ambiguous=code in ("deadline_exceeded", "connection_lost", "unavailable"),
            tried=tried,
        )

    def _forget(self, key: _Key, address: str) -> None:
        if self._leaders.get(key) == address:
            del self._leaders[key]

    async def _pause(self, delay: float, deadline: float) -> float:
        """Sleep ``delay`` (within the deadline); the next delay."""
        await self._sleep(delay, deadline)
        return min(delay * 2, 0.5)

    async def _any_node(
        self,
        call: Callable[[smf.Client, float], Awaitable[_Reply[T]]],
        what: str,
        address: str | None,
        *,
        only: bool = False,
    ) -> tuple[T, str]:
        """``call`` on ``address`` (only there when ``only``) or the first node that
        answers. Raises BrokerUnavailable (no node answered) or _Failed (an error)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        order = [self._resolve(address)] if address else []
        if not only:
            order += [a for a in self.nodes if a not in order]
        tried: list[str] = []
        causes: list[str] = []
        delay = 0.05
        rounds = 0
        while rounds < 3:
            rounds += 1
            for candidate in order:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                tried.append(candidate)
                try:
                    reply = await self._attempt(candidate, call, remaining)
                except (_Unreachable, _Ambiguous) as exc:
                    causes.append(f"{candidate}: {exc.args[0]}")
                    continue
                if reply.error:
                    code, _, detail = reply.error.partition(":")
                    raise _Failed(code.strip(), candidate, detail=detail.strip(), tried=tried)
                return reply.value, candidate
            if only or deadline - loop.time() <= delay:
                break
            await self._sleep(delay, deadline)
            delay = min(delay * 2, 0.5)
        last = causes[-1] if causes else "no time left"
        raise BrokerUnavailable(
            f"{what}: cannot reach the broker at {', '.join(dict.fromkeys(tried))}: {last}",
            code="unreachable",
            tried=tried,
        )

    async def _admin(
        self,
        call: Callable[[smf.Client, float], Awaitable[_Reply[None]]],
        what: str,
        *,
        exists_ok_after_retry: bool,
    ) -> None:
        try:
            await self._leader_call(_CONTROLLER, call, idempotent=True, retry_errors=_RETRY)
        except _Failed as exc:
            if exc.code in ("unreachable", "no_leader"):
                raise BrokerUnavailable(
                    f"{what}: {exc.detail}", code=exc.code, tried=exc.tried
                ) from None
            if exists_ok_after_retry and exc.code == "topic_exists" and exc.after_uncertain:
                return  # an earlier try whose answer was lost created it: accept it
            raise AdminError(
                f"{what} failed at {exc.address}: {describe_error(exc.code)}"
                + (f": {exc.detail}" if exc.detail else ""),
                code=exc.code,
                address=exc.address,
            ) from None

    @staticmethod
    async def _sleep(delay: float, deadline: float) -> None:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining > 0:
            await asyncio.sleep(min(delay, remaining))


_RETRY: Final = frozenset({"timeout"})


class _Unreachable(Exception):
    """Could not connect: the request was not sent."""


class _Failed(Exception):
    def __init__(
        self,
        code: str,
        address: str,
        *,
        detail: str = "",
        ambiguous: bool = False,
        tried: Sequence[str] = (),
        after_uncertain: bool = False,
    ) -> None:
        super().__init__(code)
        self.after_uncertain = after_uncertain
        self.code = code
        self.address = address
        self.detail = detail
        self.ambiguous = ambiguous
        self.tried = list(tried)


# --------------------------------------------------------------------------- encoding


def _produce_request(topic: str, partition: int, values: Sequence[bytes]) -> bytearray:
    """A ProduceRequest: each value copied once, into the message."""
    return ProduceRequestT(
        topic=topic, partition=partition, values=[ValueT(data=v) for v in values]
    ).Encode()


def _fetch_request(
    topic: str, partition: int, offset: int, max_records: int, local: bool
) -> bytearray:
    return FetchRequestT(
        topic=topic, partition=partition, offset=offset, maxRecords=max_records, local=local
    ).Encode()


def _admin_reply(reply: AdminReply) -> _Reply[None]:
    return _Reply(codec.text(reply.Error()), codec.text(reply.LeaderAddress()), None)


def _produce_reply(reply: ProduceReply) -> _Reply[list[int]]:
    offsets = [reply.Offsets(i) for i in range(reply.OffsetsLength())]
    return _Reply(codec.text(reply.Error()), codec.text(reply.LeaderAddress()), offsets)


def _fetch_reply(reply: FetchReply) -> _Reply[tuple[list[tuple[int, int, bytes]], int]]:
    records = []
    for i in range(reply.RecordsLength()):
        record = reply.Records(i)
        if record is None:
            continue
        records.append((record.Offset(), record.Crc(), bytes(record.ValueAsBytes())))
    value = (records, reply.HighWatermark())
    return _Reply(codec.text(reply.Error()), codec.text(reply.LeaderAddress()), value)


def _description(reply: ClusterDescription) -> dict[str, Any]:
    nodes = []
    for i in range(reply.NodesLength()):
        n = reply.Nodes(i)
        if n is not None:
            nodes.append({"id": n.Id(), "address": codec.text(n.Address()), "alive": n.Alive()})
    topics = []
    for i in range(reply.TopicsLength()):
        t = reply.Topics(i)
        if t is None:
            continue
        partitions = []
        for j in range(t.PartitionsLength()):
            p = t.Partitions(j)
            if p is None:
                continue
            partitions.append(
                {
                    "partition": p.Partition(),
                    "group": p.Group(),
                    "replicas": [p.Replicas(k) for k in range(p.ReplicasLength())],
                    "leader": p.Leader(),
                    "term": p.Term(),
                    "commit_index": p.CommitIndex(),
                    "last_index": p.LastIndex(),
                }
            )
        topics.append({"name": codec.text(t.Name()), "partitions": partitions})
    return {
        "error": codec.text(reply.Error()),
        "leader_address": codec.text(reply.LeaderAddress()),
        "node_id": reply.NodeId(),
        "controller_leader": reply.ControllerLeader(),
        "nodes": nodes,
        "topics": topics,
    }
