"""Call metadata and deadlines: payload headers into ``ctx.metadata``, ``smf-timeout-us``
into ``ctx.deadline``, the server's 408 and handler cancellation, and propagation of
what is left of a deadline (and of ``traceparent``) through nested calls.

Timing: deadlines here are 0.1-0.5 s and the only wall-clock assertions are generous
upper bounds; ordering facts use ``time.monotonic()`` inside one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest

import smf
from smf import headers
from smf.client import _call_headers
from smf.context import TIMEOUT_HEADER, TRACEPARENT_HEADER, CallContext, current_call
from smf.wire import HEADER, HEADER_SIZE, checksum, encode_frame

CTX = 0x0E0D0001  # answers JSON with what the handler saw
SLOW = 0x0E0D0002  # waits forever (until cancelled), recording what happens
HOP = 0x0E0D0003  # server A: records, then calls server B's CTX (or SLOW) through a client
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

# A top-level call with an explicit timeout, without and with metadata: the timeout
# travels either way.
CALL_STYLES = [
    pytest.param({}, id="timeout-only"),
    pytest.param({"metadata": {"m": "1"}}, id="timeout+metadata"),
]


class Seen:
    """What the handlers of one server saw."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.slow_started = 0
        self.slow_cancelled = 0
        self.slow_finally = 0
        self.slow_started_event = asyncio.Event()

    def record(self, ctx: CallContext) -> dict[str, Any]:
        entry = {
            "metadata": dict(ctx.metadata),
            "deadline": ctx.deadline,
            "remaining": ctx.time_remaining(),
            "current_is_ctx": current_call.get() is ctx,
        }
        self.calls.append(entry)
        return entry

    async def ctx_handler(self, ctx: CallContext, body: memoryview) -> bytes:
        entry = self.record(ctx)
        return json.dumps(entry).encode()

    async def slow_handler(self, ctx: CallContext, body: memoryview) -> bytes:
        self.record(ctx)
        self.slow_started += 1
        self.slow_started_event.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.slow_cancelled += 1
            raise
        finally:
            self.slow_finally += 1
        return b"never"


async def start(seen: Seen | None = None, **kwargs: Any) -> tuple[smf.Server, Seen]:
    seen = seen or Seen()
    server = smf.Server(**kwargs)
    server.add_handler(CTX, seen.ctx_handler, "Ctx.get")
    server.add_handler(SLOW, seen.slow_handler, "Ctx.slow")
    await server.start("127.0.0.1", 0)
    return server, seen


@pytest.fixture
async def servers() -> Any:
    started: list[smf.Server] = []

    async def factory(**kwargs: Any) -> tuple[smf.Server, Seen]:
        server, seen = await start(**kwargs)
        started.append(server)
        return server, seen

    yield factory
    for s in reversed(started):  # callers (A) before the servers they call (B)
        await s.stop(grace=0)


@pytest.fixture
async def clients() -> Any:
    made: list[smf.Client] = []

    async def factory(port: int, **kwargs: Any) -> smf.Client:
        c = smf.Client("127.0.0.1", port, **kwargs)
        made.append(c)
        await c.connect()
        return c

    yield factory
    for c in made:
        await c.close()


def add_hop(
    server: smf.Server, seen: Seen, downstream: smf.Client, target: int = CTX, **call_kwargs: Any
) -> None:
    """Server A's HOP handler: record its own context, then call ``target`` downstream."""

    async def hop(ctx: CallContext, body: memoryview) -> bytes:
        seen.record(ctx)
        answer = await downstream.call(target, b"from A", **call_kwargs)
        return bytes(answer)

    server.add_handler(HOP, hop, "Ctx.hop")


# --------------------------------------------------------------------------- raw server


class RawServer:
    """Records requests (header fields and decoded payload headers); answers 200.

    It does not mark its replies as this project's server does (smf/peer.py), so its
    clients are told ``payload_headers="always"``: these tests pin what travels."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, int, bytes]] = []  # (compression, flags, body)
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def headers(self, i: int) -> dict[str, str]:
        compression, flags, body = self.frames[i]
        assert compression == 0
        if not flags & 1:
            return {}
        h, _ = headers.split(memoryview(body))
        return h

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header = await reader.readexactly(HEADER_SIZE)
                compression, flags, session, size, csum, _meta = HEADER.unpack(header)
                body = await reader.readexactly(size)
                assert checksum(body) == csum
                self.frames.append((compression, flags, body))
                writer.write(encode_frame(session, 200, b"ok"))

    async def close(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def raw_server() -> Any:
    s = await RawServer().start()
    yield s
    await s.close()


async def raw_request(
    kit: Any, port: int, h: dict[str, str], wire_id: int = CTX, body: bytes = b"x"
) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(encode_frame(9, wire_id, headers.encode(h) + body, flags=1))
        return await kit.read_frame(reader)
    finally:
        await kit.close_writer(writer)


# =========================================================================== metadata


@pytest.mark.parametrize(
    "metadata",
    [
        {"user": "alice"},
        {"a": "1", "b": "", "": "empty key", "ключ": "значение 🙂"},
        {f"k{i}": "v" * i for i in range(100)},
    ],
    ids=["one", "unicode", "many"],
)
async def test_metadata_reaches_the_handler(
    servers: Any, clients: Any, metadata: dict[str, str]
) -> None:
    server, _seen = await servers()
    client = await clients(server.port)
    answer = json.loads(bytes(await client.call(CTX, b"x", metadata=metadata)))
    assert answer["metadata"] == metadata
    assert answer["deadline"] is None  # the default timeout does not travel
    assert answer["current_is_ctx"] is True


async def test_no_metadata_means_empty_mapping(servers: Any, clients: Any) -> None:
    server, _seen = await servers()
    client = await clients(server.port)
    for md in (None, {}):
        answer = json.loads(bytes(await client.call(CTX, b"x", metadata=md)))
        assert answer["metadata"] == {}
        assert answer["deadline"] is None


async def test_message_after_headers_is_intact(servers: Any, clients: Any) -> None:
    server, _ = await servers()
    server.add_handler(0x0E0D00FF, lambda ctx, body: _echo(body), "Ctx.echo")
    client = await clients(server.port)
    payload = bytes(range(256)) * 10
    assert (
        bytes(await client.call(0x0E0D00FF, payload, metadata={"m": "1"}, timeout=5.0)) == payload
    )


async def _echo(body: memoryview) -> bytes:
    return bytes(body)


async def test_current_call_is_unset_outside_handlers() -> None:
    assert current_call.get() is None


# =========================================================================== what travels


async def test_default_timeout_sends_no_headers(raw_server: RawServer, clients: Any) -> None:
    client = await clients(raw_server.port, payload_headers="always", timeout=3.0)
    await client.call(CTX, b"x")
    assert raw_server.frames == [(0, 0, b"x")]


@pytest.mark.parametrize("style", CALL_STYLES)
async def test_explicit_timeout_travels_in_microseconds(
    raw_server: RawServer, clients: Any, style: dict[str, Any]
) -> None:
    client = await clients(raw_server.port, payload_headers="always", timeout=30.0)
    await client.call(CTX, b"x", timeout=1.5, **style)
    _compression, flags, body = raw_server.frames[0]
    assert flags == 1
    h, rest = headers.split(memoryview(body))
    assert bytes(rest) == b"x"
    assert set(h) == {TIMEOUT_HEADER} | set(style.get("metadata", {}))
    assert h[TIMEOUT_HEADER].isdigit()  # a plain ASCII integer
    assert 0 < int(h[TIMEOUT_HEADER]) <= 1_500_000


async def test_explicit_none_timeout_sends_nothing(raw_server: RawServer, clients: Any) -> None:
    client = await clients(raw_server.port, payload_headers="always")
    await client.call(CTX, b"x", timeout=None)
    assert raw_server.frames[0][1] == 0


async def test_metadata_with_default_timeout_has_no_timeout_header(
    raw_server: RawServer, clients: Any
) -> None:
    client = await clients(raw_server.port, payload_headers="always")
    await client.call(CTX, b"x", metadata={"a": "b"})
    assert raw_server.headers(0) == {"a": "b"}
    await client.call(CTX, b"x", metadata={"a": "b"}, timeout=2.0)
    h = raw_server.headers(1)
    assert h["a"] == "b"
    assert 0 < int(h[TIMEOUT_HEADER]) <= 2_000_000


@pytest.mark.parametrize("style", CALL_STYLES)
async def test_server_sees_the_explicit_deadline(
    servers: Any, clients: Any, style: dict[str, Any]
) -> None:
    server, _seen = await servers()
    client = await clients(server.port, timeout=30.0)
    before = time.monotonic()
    answer = json.loads(bytes(await client.call(CTX, b"x", timeout=2.0, **style)))
    assert answer["deadline"] is not None
    assert 0 < answer["remaining"] <= 2.0
    # Same host, same monotonic clock: the deadline is within the call's window.
    assert before < answer["deadline"] <= time.monotonic() + 2.0
    assert TIMEOUT_HEADER in answer["metadata"]


async def test_server_without_deadline_in_default_timeout_call(servers: Any, clients: Any) -> None:
    server, _seen = await servers()
    client = await clients(server.port, timeout=0.5)
    answer = json.loads(bytes(await client.call(CTX, b"x")))
    assert answer["deadline"] is None
    assert answer["remaining"] is None


# =========================================================================== 408


async def test_server_answers_408_and_cancels_the_handler(servers: Any, clients: Any) -> None:
    server, seen = await servers()
    # The client's own timer (10 s default) is far away; the deadline that travels is
    # 150 ms (set through the header itself), so the 408 observed is the server's.
    client = await clients(server.port, timeout=10.0)
    started = time.monotonic()
    with pytest.raises(smf.DeadlineExceeded) as info:
        await client.call(SLOW, b"x", metadata={TIMEOUT_HEADER: "150000"})
    assert time.monotonic() - started < 5.0
    assert info.value.status == 408
    assert "client timeout" not in str(info.value)
    assert seen.slow_started == 1
    assert seen.slow_cancelled == 1
    assert seen.slow_finally == 1
    assert server.stats.responses == {408: 1}
    assert server.methods.get(SLOW).statuses == {408: 1}
    assert client.methods.get_or_add(SLOW).statuses == {408: 1}
    assert server.tasks == set()


@pytest.mark.parametrize("style", CALL_STYLES)
async def test_explicit_timeout_client_and_server_both_give_up(
    servers: Any, clients: Any, kit: Any, style: dict[str, Any]
) -> None:
    server, seen = await servers()
    client = await clients(server.port, timeout=30.0)
    with pytest.raises(smf.DeadlineExceeded):
        await client.call(SLOW, b"x", timeout=0.2, **style)
    # Whichever answered first, the server's own deadline cancels the handler and the
    # server answers 408 (possibly after the client stopped waiting).
    await kit.wait_until(
        lambda: server.stats.responses.get(408) == 1, timeout=2.0, what="server's 408"
    )
    assert seen.slow_cancelled == 1
    assert seen.slow_finally == 1
    assert server.methods.get(SLOW).statuses == {408: 1}
    await kit.wait_until(lambda: client.stats.late_replies + client.stats.timeouts >= 1)


async def test_408_on_the_wire(servers: Any, kit: Any) -> None:
    server, seen = await servers()
    answer = await raw_request(kit, server.port, {TIMEOUT_HEADER: "100000"}, wire_id=SLOW)
    assert (answer.session, answer.meta) == (9, 408)
    assert b"deadline" in answer.body
    assert seen.slow_cancelled == 1


@pytest.mark.parametrize("value", ["0", "-1", "-5000000"])
async def test_expired_deadline_is_408_without_running_the_handler(
    servers: Any, kit: Any, value: str
) -> None:
    server, seen = await servers()
    answer = await raw_request(kit, server.port, {TIMEOUT_HEADER: value}, wire_id=SLOW)
    assert answer.meta == 408
    assert seen.slow_started == 0


async def test_handler_finishing_in_time_is_not_cancelled(servers: Any, clients: Any) -> None:
    server, _seen = await servers()
    client = await clients(server.port)
    for _ in range(5):
        answer = json.loads(
            bytes(await client.call(CTX, b"x", metadata={TIMEOUT_HEADER: "5000000"}))
        )
        assert answer["remaining"] > 0
    assert server.stats.responses == {200: 5}


@pytest.mark.parametrize("value", ["abc", "", "1.5", "1e6", "0x10", "inf", "nan", "12abc"])
async def test_malformed_timeout_header_is_400(servers: Any, kit: Any, value: str) -> None:
    server, seen = await servers()
    answer = await raw_request(kit, server.port, {TIMEOUT_HEADER: value})
    assert answer.meta == 400
    assert TIMEOUT_HEADER.encode() in answer.body
    assert seen.calls == []


async def test_absurdly_long_timeout_header_is_not_a_500(servers: Any, kit: Any) -> None:
    server, _seen = await servers()
    answer = await raw_request(kit, server.port, {TIMEOUT_HEADER: "9" * 400})
    # Refused (400) or taken as "no practical deadline" (200); never a server error.
    assert answer.meta in (200, 400), answer.body
    assert server.stats.responses.get(500) is None


async def test_huge_but_representable_timeout_is_not_a_500(servers: Any, kit: Any) -> None:
    server, seen = await servers()
    answer = await raw_request(kit, server.port, {TIMEOUT_HEADER: "9" * 30})
    assert answer.meta in (200, 400)
    if answer.meta == 200:
        assert seen.calls[0]["remaining"] > 1e6


@pytest.mark.parametrize(
    "value",
    ["1_000000", " 1000000 ", "+1000000", "\uff11\uff10\uff10\uff10\uff10\uff10\uff10"],
    ids=["underscore", "spaces", "plus", "fullwidth"],
)
async def test_non_canonical_timeout_header_is_400(servers: Any, kit: Any, value: str) -> None:
    server, _seen = await servers()
    answer = await raw_request(kit, server.port, {TIMEOUT_HEADER: value})
    assert answer.meta == 400


async def test_malformed_payload_headers_are_400(servers: Any, kit: Any) -> None:
    server, _seen = await servers()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(encode_frame(1, CTX, b"\xff\xff\xff\x7fgarbage", flags=1))
    answer = await kit.read_frame(reader)
    assert answer.meta == 400
    # Still usable afterwards.
    writer.write(encode_frame(2, CTX, headers.encode({"a": "b"}) + b"x", flags=1))
    answer = await kit.read_frame(reader)
    assert answer.meta == 200
    assert json.loads(answer.body)["metadata"] == {"a": "b"}
    await kit.close_writer(writer)


# =========================================================================== two hops


async def two_hops(servers: Any, clients: Any, target: int = CTX, **hop_kwargs: Any) -> Any:
    b, b_seen = await servers()
    a, a_seen = await servers()
    a_to_b = await clients(b.port)
    add_hop(a, a_seen, a_to_b, target, **hop_kwargs)
    client = await clients(a.port)
    return a, a_seen, b, b_seen, client


@pytest.mark.parametrize("style", CALL_STYLES)
async def test_deadline_propagates_through_two_hops(
    servers: Any, clients: Any, style: dict[str, Any]
) -> None:
    _a, a_seen, _b, _b_seen, client = await two_hops(servers, clients)
    answer = json.loads(bytes(await client.call(HOP, b"x", timeout=2.0, **style)))
    (a_call,) = a_seen.calls
    assert 0 < a_call["remaining"] <= 2.0
    # B's handler sees a deadline no later than what A had left when it called.
    assert answer["deadline"] is not None
    assert 0 < answer["remaining"] <= a_call["remaining"]
    assert 0 < int(answer["metadata"][TIMEOUT_HEADER]) <= 2_000_000


async def test_no_deadline_means_none_downstream(servers: Any, clients: Any) -> None:
    _a, a_seen, _b, _b_seen, client = await two_hops(servers, clients)
    answer = json.loads(bytes(await client.call(HOP, b"x")))
    assert a_seen.calls[0]["deadline"] is None
    assert answer["deadline"] is None
    assert answer["metadata"] == {}


async def test_shorter_explicit_timeout_downstream_wins(servers: Any, clients: Any) -> None:
    _a, _a_seen, _b, _b_seen, client = await two_hops(servers, clients, timeout=0.5)
    answer = json.loads(bytes(await client.call(HOP, b"x", timeout=5.0)))
    assert 0 < answer["remaining"] <= 0.5


@pytest.mark.parametrize("style", CALL_STYLES)
async def test_longer_explicit_timeout_downstream_is_capped(
    servers: Any, clients: Any, style: dict[str, Any]
) -> None:
    _a, a_seen, _b, _b_seen, client = await two_hops(servers, clients, timeout=60.0)
    answer = json.loads(bytes(await client.call(HOP, b"x", timeout=1.0, **style)))
    assert 0 < answer["remaining"] <= a_seen.calls[0]["remaining"] <= 1.0


async def test_caller_metadata_is_not_forwarded_except_trace_context(
    servers: Any, clients: Any
) -> None:
    _a, a_seen, _b, _b_seen, client = await two_hops(servers, clients)
    answer = json.loads(
        bytes(await client.call(HOP, b"x", metadata={"secret": "s", TRACEPARENT_HEADER: TP}))
    )
    assert a_seen.calls[0]["metadata"] == {"secret": "s", TRACEPARENT_HEADER: TP}
    assert answer["metadata"] == {TRACEPARENT_HEADER: TP}


async def test_traceparent_passes_through_unchanged_without_sdk(servers: Any, clients: Any) -> None:
    assert not smf.tracing.active()
    _a, _a_seen, _b, _b_seen, client = await two_hops(servers, clients)
    answer = json.loads(
        bytes(await client.call(HOP, b"x", metadata={TRACEPARENT_HEADER: TP}, timeout=5.0))
    )
    assert answer["metadata"][TRACEPARENT_HEADER] == TP
    assert TIMEOUT_HEADER in answer["metadata"]


async def test_handler_own_traceparent_wins_over_inherited(servers: Any, clients: Any) -> None:
    mine = "00-11111111111111111111111111111111-2222222222222222-01"
    _a, _a_seen, _b, _b_seen, client = await two_hops(
        servers, clients, metadata={TRACEPARENT_HEADER: mine}
    )
    answer = json.loads(bytes(await client.call(HOP, b"x", metadata={TRACEPARENT_HEADER: TP})))
    assert answer["metadata"][TRACEPARENT_HEADER] == mine


async def test_expiring_deadline_cancels_both_hops(servers: Any, clients: Any, kit: Any) -> None:
    a, _a_seen, b, b_seen, client = await two_hops(servers, clients, target=SLOW)
    started = time.monotonic()
    # Observe A's own 408 (the client's local timer is the 10 s default).
    with pytest.raises(smf.DeadlineExceeded) as info:
        await client.call(HOP, b"x", metadata={TIMEOUT_HEADER: "300000"})
    assert time.monotonic() - started < 5.0
    assert "client timeout" not in str(info.value)
    assert b_seen.slow_started == 1
    assert 0 < b_seen.calls[0]["remaining"] <= 0.3
    # B's own deadline (inherited from A) cancels B's handler and B answers 408 too.
    await kit.wait_until(lambda: b_seen.slow_cancelled == 1, what="B's handler cancelled")
    await kit.wait_until(lambda: b.stats.responses.get(408) == 1, what="B's 408")
    assert b_seen.slow_finally == 1
    assert a.stats.responses == {408: 1}
    assert a.methods.get(HOP).statuses == {408: 1}


@pytest.mark.parametrize("style", CALL_STYLES)
async def test_expiring_explicit_timeout_through_two_hops(
    servers: Any, clients: Any, kit: Any, style: dict[str, Any]
) -> None:
    a, _a_seen, b, b_seen, client = await two_hops(servers, clients, target=SLOW)
    with pytest.raises(smf.DeadlineExceeded):
        await client.call(HOP, b"x", timeout=0.25, **style)
    await kit.wait_until(
        lambda: b_seen.slow_cancelled == 1, timeout=2.0, what="B's handler cancelled"
    )
    await kit.wait_until(lambda: a.stats.responses.get(408) == 1, timeout=2.0, what="A's 408")
    await kit.wait_until(lambda: b.stats.responses.get(408) == 1, timeout=2.0, what="B's 408")
    assert a.tasks == set()
    await kit.wait_until(lambda: not b.tasks, what="B idle")


# =========================================================================== _call_headers


def _parent(remaining: float | None, metadata: dict[str, str] | None = None) -> CallContext:
    deadline = None if remaining is None else time.monotonic() + remaining
    return CallContext("peer", 1, 1, deadline, metadata or {})


def _fields(prefix: bytes) -> dict[str, str]:
    if not prefix:
        return {}
    h, rest = headers.split(memoryview(prefix))
    assert rest.nbytes == 0
    return h


def test_call_headers_explicit_timeout() -> None:
    t, explicit, prefix = _call_headers(None, None, 1.5, True)
    assert (t, explicit) == (1.5, True)
    assert _fields(prefix) == {TIMEOUT_HEADER: "1500000"}


def test_call_headers_default_timeout_stays_local() -> None:
    t, explicit, prefix = _call_headers(None, {"a": "b"}, 10.0, False)
    assert (t, explicit) == (10.0, False)
    assert _fields(prefix) == {"a": "b"}


def test_call_headers_inherit_remaining() -> None:
    t, explicit, prefix = _call_headers(_parent(2.0), None, 10.0, False)
    assert explicit is True
    assert t is not None and 0 < t <= 2.0
    assert 0 < int(_fields(prefix)[TIMEOUT_HEADER]) <= 2_000_000
    # explicit None ("no timeout") still cannot outlive the parent's deadline
    t, _, _ = _call_headers(_parent(2.0), None, None, True)
    assert t is not None and t <= 2.0
    t, _, _ = _call_headers(_parent(2.0), None, 0.5, True)
    assert t == 0.5


def test_call_headers_parent_without_deadline() -> None:
    t, explicit, prefix = _call_headers(
        _parent(None, {TRACEPARENT_HEADER: TP, "x": "y"}), None, 10.0, False
    )
    assert (t, explicit) == (10.0, False)
    assert _fields(prefix) == {TRACEPARENT_HEADER: TP}


def test_call_headers_past_deadline_raises_before_sending() -> None:
    with pytest.raises(smf.DeadlineExceeded):
        _call_headers(_parent(-0.01), None, 10.0, False)
    with pytest.raises(smf.DeadlineExceeded):
        _call_headers(None, None, 0.0, True)
