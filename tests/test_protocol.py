"""The sans-IO connection (``smf.protocol``), without sockets or an event loop: requests
and replies round-trip, every header violation is a ``ProtocolError`` naming its field,
reads split or coalesced at every byte boundary give the same events, hostile sizes are
skipped, bodies are views that stay valid, and a stateful model of a client and a
server talking through arbitrarily chunked pipes (in the style of h11's tests)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from smf import headers
from smf.errors import BadCompression, BadFlags, BadMeta, BadSize
from smf.protocol import (
    JOIN_LIMIT,
    ClientProtocol,
    OversizedRequest,
    OversizedResponse,
    ProtocolError,
    RequestReceived,
    ResponseReceived,
    ServerProtocol,
    SessionTable,
    State,
    open_payload,
    parse_timeout,
)
from smf.wire import (
    FLAG_PAYLOAD_HEADERS,
    HEADER,
    HEADER_SIZE,
    MAX_SESSION,
    Compression,
    checksum,
    encode_frame,
    encode_header,
)

BUF = 4096  # a small receive buffer, so frames cross buffer boundaries often


def joined(parts: list[Any]) -> bytes:
    return b"".join(bytes(p) for p in parts)


def drain(proto: ServerProtocol | ClientProtocol) -> list[Any]:
    events = []
    while (event := proto.next_event()) is not None:
        events.append(event)
    return events


def server_events(data: bytes, **kw: Any) -> list[Any]:
    server = ServerProtocol(kw.pop("max_body_size", 1 << 20), kw.pop("buffer_size", BUF))
    server.receive_data(data)
    return drain(server)


def raw_header(
    compression: int, flags: int, session: int, size: int, csum: int, meta: int
) -> bytes:
    return HEADER.pack(compression, flags, session, size, csum, meta)


# ============================================================================ round trips


def test_a_request_reaches_the_server_and_its_reply_reaches_the_call() -> None:
    client = ClientProtocol(1 << 20, BUF)
    server = ServerProtocol(1 << 20, BUF)
    call = object()
    session = client.start_call(call)
    assert session == 1
    size = client.send_request(session, 77, b"hello")
    assert size == 5 and client.bytes_to_send == HEADER_SIZE + 5
    server.receive_data(joined(client.data_to_send()))
    assert client.bytes_to_send == 0
    [request] = drain(server)
    assert isinstance(request, RequestReceived)
    assert (request.session, request.wire_id, request.flags, request.compression) == (1, 77, 0, 0)
    assert bytes(request.body) == b"hello"
    server.send_reply(request.session, 200, request.body)  # an echo: the view itself
    client.receive_data(joined(server.data_to_send()))
    [response] = drain(client)
    assert isinstance(response, ResponseReceived)
    assert response.call is call and response.status == 200
    assert bytes(response.body) == b"hello"
    assert client.in_flight == 0  # the response freed its session


def test_payload_headers_set_the_flag_and_come_back_as_metadata() -> None:
    client = ClientProtocol(1 << 20, BUF)
    server = ServerProtocol(1 << 20, BUF)
    prefix = headers.encode({"smf-timeout-us": "1500", "k": "v"})
    session = client.start_call("call")
    size = client.send_request(session, 5, b"message", prefix=prefix)
    assert size == len(prefix) + 7
    server.receive_data(joined(client.data_to_send()))
    [request] = drain(server)
    assert request.flags == FLAG_PAYLOAD_HEADERS
    metadata, body = open_payload(request.compression, request.flags, request.body)
    assert dict(metadata) == {"smf-timeout-us": "1500", "k": "v"}
    assert bytes(body) == b"message"
    assert parse_timeout(metadata) == 0.0015


def test_a_compressed_body_nobody_decompressed_is_unsupported() -> None:
    with pytest.raises(Exception, match="zstd"):
        open_payload(2, 0, memoryview(b"x"))
    metadata, body = open_payload(1, 0, memoryview(b"x"))  # DISABLED is plain
    assert metadata == {} and bytes(body) == b"x"


@pytest.mark.parametrize("value", ["+1", "1_000", "\uff11\uff12", "1" * 19, "", "-", "1.5", " 1"])
def test_a_malformed_timeout_header_is_a_bad_request_naming_it(value: str) -> None:
    with pytest.raises(Exception, match="smf-timeout-us") as info:
        parse_timeout({"smf-timeout-us": value})
    assert getattr(info.value, "status", None) == 400


def test_timeouts_parse_strictly() -> None:
    assert parse_timeout({}) is None
    assert parse_timeout({"smf-timeout-us": "-5"}) == -5e-6  # already expired
    assert parse_timeout({"smf-timeout-us": "9" * 18}) == int("9" * 18) / 1e6


def test_small_bodies_leave_as_one_buffer_large_ones_are_never_copied() -> None:
    server = ServerProtocol(1 << 20, BUF)
    small = b"s" * JOIN_LIMIT
    large = bytearray(b"L" * (JOIN_LIMIT + 1))
    server.send_reply(1, 200, small)
    server.send_reply(2, 200, large)
    out = server.data_to_send()
    assert len(out) == 3
    assert bytes(out[0]) == encode_frame(1, 200, small, compression=Compression.DISABLED)
    assert out[2] is large  # queued as given
    assert bytes(out[1]) == encode_header(2, 200, large, Compression.DISABLED)


def test_nothing_is_queued_once_closed() -> None:
    client = ClientProtocol(1 << 20, BUF)
    session = client.start_call("c")
    client.close()
    assert client.state is State.CLOSED
    assert client.send_request(session, 1, b"x") == 0
    assert client.data_to_send() == []
    assert client.start_call("d") == 0
    client.receive_data(encode_frame(session, 200, b"late"))
    assert client.next_event() is None  # nothing is read either


# ============================================================================ header violations


@pytest.mark.parametrize(
    ("header", "field", "value"),
    [
        *[(raw_header(c, 0, 1, 1, checksum(b"x"), 1), "compression", c) for c in (4, 5, 0x16, 127)],
        (raw_header(-1, 0, 1, 1, checksum(b"x"), 1), "compression", -1),
        (raw_header(-128, 0, 1, 1, checksum(b"x"), 1), "compression", -128),
        *[(raw_header(0, f, 1, 1, checksum(b"x"), 1), "bitflags", f) for f in (2, 4, 0x80, 0xFF)],
        (raw_header(0, 0, 1, 0, 0, 1), "size", 0),
        (raw_header(0, 0, 1, 1, checksum(b"x"), 0), "meta", 0),
        (raw_header(0, 0, 1, 1, checksum(b"x") ^ 1, 1), "checksum", checksum(b"x") ^ 1),
    ],
)
@pytest.mark.parametrize("side", [ServerProtocol, ClientProtocol])
def test_every_header_violation_is_a_protocol_error_naming_the_field(
    header: bytes, field: str, value: int, side: type[ServerProtocol] | type[ClientProtocol]
) -> None:
    proto = side(1 << 20, BUF)
    good = encode_frame(9, 3, b"before")
    proto.receive_data(good + header + b"x" + encode_frame(10, 3, b"after"))
    events = drain(proto)
    assert len(events) == 2  # the valid frame before it, then the error
    assert bytes(events[0].body) == b"before"
    error = events[1]
    assert isinstance(error, ProtocolError)
    assert (error.field, error.value) == (field, value)
    assert field in str(error.error)
    # The stream cannot be resynchronised: nothing more comes out, even with more bytes.
    assert proto.state is State.ERROR
    proto.receive_data(encode_frame(11, 3, b"more"))
    assert proto.next_event() is None


def test_encode_header_refuses_what_a_decoder_refuses() -> None:
    with pytest.raises(BadSize):
        encode_header(1, 1, b"")
    with pytest.raises(BadMeta):
        encode_header(1, 0, b"x")
    with pytest.raises(BadCompression):
        encode_header(1, 1, b"x", compression=4)
    with pytest.raises(BadFlags):
        encode_header(1, 1, b"x", flags=0x40)  # bits 1-5 are stream bits (smf.streams)
    with pytest.raises(struct.error):
        encode_header(MAX_SESSION + 1, 1, b"x")
    with pytest.raises(struct.error):
        encode_header(1, 1 << 32, b"x")


@given(parts=st.lists(st.binary(min_size=0, max_size=50), min_size=1, max_size=5))
def test_a_header_over_parts_equals_the_header_over_their_concatenation(
    parts: list[bytes],
) -> None:
    whole = b"".join(parts)
    if not whole:
        with pytest.raises(BadSize):
            encode_header(1, 1, tuple(parts))
        return
    assert encode_header(7, 9, tuple(parts), 0, 1) == encode_header(7, 9, whole, 0, 1)


@settings(max_examples=300)
@given(
    server=st.booleans(),
    session=st.integers(0, MAX_SESSION + 1),
    meta=st.integers(0, 1 << 32),
    body=st.binary(min_size=0, max_size=JOIN_LIMIT + 8),
    prefix=st.binary(min_size=0, max_size=20),
    compression=st.integers(0, 5),
    flags=st.sampled_from([0, 0x01, 0x02, 0x40, 0x80]),
)
def test_a_connection_frames_exactly_as_encode_header_does(
    server: bool, session: int, meta: int, body: bytes, prefix: bytes, compression: int, flags: int
) -> None:
    """A connection's frames carry encode_header's bytes (a server's uncompressed reply
    with compression byte 1), and it refuses exactly what encode_header refuses."""
    proto = ServerProtocol(1 << 20, BUF) if server else ClientProtocol(1 << 20, BUF)
    send = proto.send_reply if server else proto.send_request
    # A server's uncompressed reply says so with compression byte 1 (smf.peer).
    sent_compression = compression or (Compression.DISABLED if server else 0)
    sent_flags = flags | (FLAG_PAYLOAD_HEADERS if prefix else 0)
    parts = (prefix, body) if prefix else body
    try:
        expected = encode_header(session, meta, parts, sent_compression, sent_flags)
    except Exception as error:
        with pytest.raises(type(error)):
            send(session, meta, body, compression, flags, prefix)
        return
    size = send(session, meta, body, compression, flags, prefix)
    assert size == len(prefix) + len(body)
    assert joined(proto.data_to_send()) == expected + prefix + body


# ======================================================== split and coalesced reads


def _three_frames() -> tuple[bytes, list[tuple[int, int, bytes]]]:
    frames = [(1, 10, b"a"), (2, 11, b"bb" * 40), (3, 12, bytes(range(256)) * 3)]
    return b"".join(encode_frame(s, m, b) for s, m, b in frames), frames


def test_reads_split_at_every_byte_boundary_give_the_same_requests() -> None:
    data, frames = _three_frames()
    for cut in range(len(data) + 1):
        server = ServerProtocol(1 << 20, 64)  # smaller than a frame: buffers grow and move
        got = []
        for chunk in (data[:cut], data[cut:]):
            server.receive_data(chunk)
            got += [(e.session, e.meta, bytes(e.body)) for e in drain(server)]
        assert got == frames, cut
        assert server.idle


def test_reads_split_at_every_pair_of_boundaries_through_get_buffer() -> None:
    data, frames = _three_frames()
    n = len(data)
    for a in range(0, n + 1, 7):
        for b in range(a, n + 1, 13):
            server = ServerProtocol(1 << 20, 64)
            got = []
            for chunk in (data[:a], data[a:b], data[b:]):
                view = memoryview(chunk)
                while view:  # as the event loop does: fill what get_buffer hands out
                    buf = server.get_buffer(len(view))
                    k = min(len(buf), len(view))
                    buf[:k] = view[:k]
                    buf.release()
                    server.buffer_updated(k)
                    view = view[k:]
                    got += [(e.session, e.meta, bytes(e.body)) for e in drain(server)]
            assert got == frames, (a, b)


@given(
    bodies=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=200), max_size=30),
)
def test_any_chunking_gives_the_frames_that_were_sent(bodies: list[bytes], cuts: list[int]) -> None:
    data = b"".join(encode_frame(i + 1, 1000 + i, b) for i, b in enumerate(bodies))
    server = ServerProtocol(1 << 20, 64)
    got = []
    pos = 0
    for cut in [*cuts, len(data)]:
        server.receive_data(data[pos : pos + cut])
        pos += cut
        got += [(e.session, e.meta, bytes(e.body)) for e in drain(server)]
        if pos >= len(data):
            break
    assert got == [(i + 1, 1000 + i, b) for i, b in enumerate(bodies)]


# ============================================================================ hostile sizes


@pytest.mark.parametrize("size", [1025, 65536, 1 << 24, 2**32 - 1])
def test_an_oversized_request_is_reported_and_its_body_skipped(size: int) -> None:
    server = ServerProtocol(1024, BUF)
    server.receive_data(raw_header(0, 0, 5, size, 0, 42))
    [event] = drain(server)
    assert isinstance(event, OversizedRequest)
    assert (event.session, event.meta, event.size) == (5, 42, size)
    assert server.allocated <= BUF  # the claim bought no allocation
    if size <= 1 << 16:  # stream the body through and see the next frame come out whole
        server.receive_data(b"\0" * size + encode_frame(6, 43, b"next"))
        [after] = drain(server)
        assert (after.session, bytes(after.body)) == (6, b"next")
        assert server.allocated <= BUF


def test_an_oversized_response_still_frees_its_session() -> None:
    client = ClientProtocol(1024, BUF)
    session = client.start_call("c")
    client.receive_data(raw_header(0, 0, session, 5000, 0, 200) + b"\0" * 5000)
    [event] = drain(client)
    assert isinstance(event, OversizedResponse) and event.call == "c"
    assert client.in_flight == 0


def test_a_large_claim_is_not_allocated_before_the_bytes_arrive() -> None:
    server = ServerProtocol(1 << 30, BUF)
    server.receive_data(raw_header(0, 0, 1, 1 << 29, 0, 1) + b"x" * 100)
    assert drain(server) == []
    assert server.allocated <= 8 * BUF
    assert server.mid_frame


# ============================================================================ zero copy


def test_a_body_view_stays_valid_while_more_data_arrives() -> None:
    server = ServerProtocol(1 << 20, 64)
    server.receive_data(encode_frame(1, 1, b"A" * 40))
    [first] = drain(server)
    for i in range(50):  # many reads that would reuse the buffer if it were free
        server.receive_data(encode_frame(i + 2, 1, bytes([i]) * 40))
        drain(server)
    assert bytes(first.body) == b"A" * 40
    assert server.buffers_allocated > 1  # it moved on instead of overwriting


def test_a_body_view_points_into_the_receive_buffer() -> None:
    server = ServerProtocol(1 << 20, BUF)
    buf = server.get_buffer(-1)
    frame = encode_frame(1, 1, b"zero-copy")
    buf[: len(frame)] = frame
    server.buffer_updated(len(frame))
    [event] = drain(server)
    assert event.body.obj is buf.obj  # the same bytearray the "kernel" wrote into
    buf.release()


# ============================================================================ sessions


def test_session_table_round_robin_and_full() -> None:
    table = SessionTable(3)
    calls = [object() for _ in range(3)]
    assert [table.try_allocate(c) for c in calls] == [1, 2, 3]
    assert table.try_allocate(object()) == 0
    assert table.release(2, calls[1])
    assert not table.release(2, calls[1])  # already free
    assert table.try_allocate("x") == 2  # the only free one
    assert table.pop(1) is calls[0]
    assert sorted(table.take_all(), key=str) == sorted([calls[2], "x"], key=str)
    assert len(table) == 0


def test_a_late_response_has_no_call() -> None:
    client = ClientProtocol(1 << 20, BUF)
    session = client.start_call("gave up")
    assert client.end_call(session, "gave up")
    client.receive_data(encode_frame(session, 408, b"too late"))
    [event] = drain(client)
    assert event.call is None


def test_fail_all_hands_back_every_call() -> None:
    client = ClientProtocol(1 << 20, BUF, SessionTable(4))
    for name in "abcd":
        client.start_call(name)
    assert client.start_call("e") == 0
    assert sorted(client.fail_all()) == ["a", "b", "c", "d"]
    assert client.in_flight == 0


# ============================================================================ stateful model


class Conversation(RuleBasedStateMachine):
    """A client and a server connected by two byte pipes that deliver arbitrary chunks.
    The model: every request the client sent arrives once, in order, with its body and
    payload headers; every reply reaches the call its session belongs to, or is late
    when that call gave up; sessions in flight are never reused."""

    def __init__(self) -> None:
        super().__init__()
        self.client = ClientProtocol(1 << 16, 64, SessionTable(8))
        self.server = ServerProtocol(1 << 16, 64)
        self.to_server = b""
        self.to_client = b""
        self.sent: list[tuple[int, int, bytes, dict[str, str]]] = []  # in order
        self.received_requests: list[tuple[int, int, bytes, dict[str, str]]] = []
        self.calls: dict[int, object] = {}  # session -> call, as the client holds them
        self.abandoned: set[object] = set()
        self.expected_replies: dict[object, bytes] = {}
        self.replied: dict[object, bytes] = {}
        self.late = 0
        self.late_expected = 0

    @rule(
        body=st.binary(min_size=1, max_size=200),
        metadata=st.dictionaries(
            st.text(alphabet="abc-", min_size=1, max_size=5), st.text(max_size=8), max_size=2
        ),
    )
    def client_sends(self, body: bytes, metadata: dict[str, str]) -> None:
        call = object()
        session = self.client.start_call(call)
        if not session:
            assert len(self.calls) == 8  # full, and only then
            return
        assert session not in self.calls  # never a session in flight
        self.calls[session] = call
        prefix = headers.encode(metadata) if metadata else b""
        self.client.send_request(session, 1000 + session, body, prefix=prefix)
        self.sent.append((session, 1000 + session, body, metadata))
        self.to_server += joined(self.client.data_to_send())

    @rule(n=st.integers(min_value=1, max_value=300))
    def deliver_to_server(self, n: int) -> None:
        chunk, self.to_server = self.to_server[:n], self.to_server[n:]
        self.server.receive_data(chunk)
        for event in drain(self.server):
            assert isinstance(event, RequestReceived)
            metadata, body = open_payload(event.compression, event.flags, event.body)
            self.received_requests.append((event.session, event.meta, bytes(body), dict(metadata)))

    @precondition(lambda self: len(self.received_requests) > self._answered)
    @rule(status=st.sampled_from([200, 400, 404, 500]))
    def server_replies(self, status: int) -> None:
        session, wire_id, body, _ = self.received_requests[self._answered]
        self._answered += 1
        reply = body[::-1] + wire_id.to_bytes(4, "little")
        self.server.send_reply(session, status, reply)
        call = self.calls.get(session)
        if call is not None:
            self.expected_replies[call] = reply
        self.to_client += joined(self.server.data_to_send())

    _answered = 0

    @precondition(lambda self: bool(self.calls))
    @rule(data=st.data())
    def client_gives_up(self, data: st.DataObject) -> None:
        session = data.draw(st.sampled_from(sorted(self.calls)))
        call = self.calls.pop(session)
        assert self.client.end_call(session, call)
        self.abandoned.add(call)
        if call in self.expected_replies:
            del self.expected_replies[call]
        self.late_expected += 1

    @rule(n=st.integers(min_value=1, max_value=300))
    def deliver_to_client(self, n: int) -> None:
        chunk, self.to_client = self.to_client[:n], self.to_client[n:]
        self.client.receive_data(chunk)
        for event in drain(self.client):
            assert isinstance(event, ResponseReceived)
            if event.call is None:
                self.late += 1
                continue
            assert event.call not in self.abandoned
            assert self.calls.pop(event.session) is event.call
            self.replied[event.call] = bytes(event.body)

    @invariant()
    def requests_arrive_in_order_and_intact(self) -> None:
        assert self.received_requests == self.sent[: len(self.received_requests)]

    @invariant()
    def replies_reach_their_calls(self) -> None:
        for call, body in self.replied.items():
            assert self.expected_replies.get(call, body) == body

    @invariant()
    def sessions_in_flight_are_the_calls_held(self) -> None:
        assert self.client.in_flight == len(self.calls)
        assert self.late <= self.late_expected  # late replies only for calls given up

    def teardown(self) -> None:
        # Everything sent arrives: deliver both pipes whole and check the totals.
        self.server.receive_data(self.to_server)
        drain(self.server)
        self.client.receive_data(self.to_client)
        for event in drain(self.client):
            if event.call is None:
                self.late += 1
        assert self.late <= self.late_expected


Conversation.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestConversation = Conversation.TestCase


@given(st.data())
@settings(max_examples=30, deadline=None)
def test_a_server_answers_interleaved_requests_in_any_order(data: st.DataObject) -> None:
    client = ClientProtocol(1 << 16, 64)
    server = ServerProtocol(1 << 16, 64)
    calls = {client.start_call(f"c{i}"): f"c{i}" for i in range(10)}
    for session in calls:
        client.send_request(session, 7, f"q{session}".encode())
    server.receive_data(joined(client.data_to_send()))
    requests = drain(server)
    order = data.draw(st.permutations(requests))
    for request in order:
        server.send_reply(request.session, 200, b"a" + bytes(request.body))
    client.receive_data(joined(server.data_to_send()))
    for response in drain(client):
        assert response.call == calls[response.session]
        assert bytes(response.body) == f"aq{response.session}".encode()
    assert client.in_flight == 0
