"""Streams, sans-IO: open, credit, half-close, cancel and the session's lifetime, with a
ClientProtocol and a ServerProtocol wired back to back (no sockets)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from smf import streams as s
from smf.protocol import ClientProtocol, ProtocolError, ServerProtocol
from smf.wire import encode_frame

BUF = 64 * 1024
WIRE_ID = 77


def pump(src: Any, dst: Any) -> list[Any]:
    for buf in src.data_to_send():
        dst.receive_data(buf)
    events = []
    while (event := dst.next_event()) is not None:
        events.append(event)
    return events


def opened(window: tuple[int, int] = (4, 1000)) -> tuple[ClientProtocol, ServerProtocol, Any, Any]:
    client = ClientProtocol(1 << 20, BUF)
    server = ServerProtocol(1 << 20, BUF)
    server.stream_window = window
    owner = object()
    session = client.start_call(owner)
    cs = s.open_stream(client, session, WIRE_ID, owner, window[0], window[1])
    (event,) = pump(client, server)
    assert type(event) is s.StreamOpened
    s.accept(server, event.stream)
    (credit,) = pump(server, client)
    assert type(credit) is s.StreamCredit
    return client, server, cs, event.stream


def test_a_stream_opens_with_the_wire_id_and_both_windows() -> None:
    _client, _server, cs, ss = opened((4, 1000))
    assert ss.wire_id == WIRE_ID and ss.session == cs.session
    # The client may send 1 implicit message + the server's window.
    assert (cs.send_messages, cs.send_bytes) == (5, 1001)
    assert (ss.send_messages, ss.send_bytes) == (4, 1000)


def test_a_server_stream_ends_and_frees_the_session_on_both_sides() -> None:
    client, server, cs, ss = opened()
    s.send_message(client, cs, b"request")
    s.send_end(client, cs)
    events = pump(client, server)
    assert [type(e) for e in events] == [s.StreamMessage, s.StreamEnded]
    assert bytes(events[0].body) == b"request"
    for i in range(3):
        s.send_message(server, ss, b"reply %d" % i)
    s.send_end(server, ss, 200, "")
    assert ss.session not in server.streams  # both directions closed
    events = pump(server, client)
    assert [bytes(e.body) for e in events[:3]] == [b"reply 0", b"reply 1", b"reply 2"]
    assert type(events[3]) is s.StreamEnded and events[3].meta == 200
    assert cs.session not in client.streams and client.in_flight == 0


def test_a_server_ending_first_makes_the_client_close_its_side_too() -> None:
    client, server, _cs, ss = opened()
    s.send_end(server, ss, 500, "boom")
    (end,) = pump(server, client)
    assert end.meta == 500 and bytes(end.body) == b"boom"
    assert client.in_flight == 0  # forgotten; its CANCEL is queued for the server
    (cancel,) = pump(client, server)
    assert type(cancel) is s.StreamCancelled
    assert not server.streams


def test_a_cancelled_stream_keeps_its_session_until_the_server_ends_it() -> None:
    client, server, cs, ss = opened()
    s.send_cancel(client, cs, "bored")
    assert client.in_flight == 1  # the server may still be sending on it
    (cancel,) = pump(client, server)
    assert type(cancel) is s.StreamCancelled and bytes(cancel.body) == b"bored"
    s.send_end(server, ss, s.CANCELLED_STATUS, "cancelled")
    pump(server, client)
    assert client.in_flight == 0 and not server.streams


def test_a_message_beyond_credit_is_a_protocol_error_naming_credit() -> None:
    client, server, cs, _ss = opened((2, 1000))
    cs.send_messages = 100  # a client that ignores its credit
    for _ in range(4):
        s.send_message(client, cs, b"x")
    events = pump(client, server)
    assert type(events[-1]) is ProtocolError and events[-1].field == "credit"


def test_sending_without_credit_refuses_locally() -> None:
    _client, server, _cs, ss = opened((1, 1000))
    s.send_message(server, ss, b"one")
    assert not ss.can_send
    try:
        s.send_message(server, ss, b"two")
    except RuntimeError as exc:
        assert "credit" in str(exc)
    else:
        raise AssertionError("sent beyond credit")


def test_a_stream_frame_on_a_unary_session_is_a_protocol_error_naming_bitflags() -> None:
    client = ClientProtocol(1 << 20, BUF)
    session = client.start_call(object())
    client.receive_data(encode_frame(session, 200, b"x", flags=s.FLAG_STREAM))
    event = client.next_event()
    assert type(event) is ProtocolError and event.field == "bitflags"


def test_a_grant_to_a_forgotten_stream_is_ignored_only_from_a_stream_peer() -> None:
    grant = encode_frame(9, WIRE_ID, b"\x01" * 8, flags=s.FLAG_STREAM | s.FLAG_CREDIT)
    fresh = ServerProtocol(1 << 20, BUF)
    fresh.receive_data(grant)
    event = fresh.next_event()
    assert type(event) is ProtocolError and event.field == "bitflags"
    _client, server, _cs, _ss = opened()
    server.receive_data(grant)
    assert type(server.next_event()) is s.StreamIgnored


def test_reopening_a_live_session_is_a_protocol_error() -> None:
    _client, server, cs, _ss = opened()
    server.receive_data(
        encode_frame(
            cs.session, WIRE_ID, b"\0" * 8, flags=s.FLAG_STREAM | s.FLAG_OPEN | s.FLAG_CREDIT
        )
    )
    event = server.next_event()
    assert type(event) is ProtocolError and event.field == "session"


def test_unary_calls_and_streams_share_a_connection() -> None:
    client, server, cs, ss = opened()
    unary = object()
    session = client.start_call(unary)
    assert session != cs.session
    client.send_request(session, 5, b"unary")
    s.send_message(client, cs, b"streamed")
    events = pump(client, server)
    assert [bytes(e.body) for e in events] == [b"unary", b"streamed"]
    server.send_reply(session, 200, b"answer")
    s.send_message(server, ss, b"pushed")
    back = pump(server, client)
    assert back[0].call is unary and bytes(back[0].body) == b"answer"
    assert type(back[1]) is s.StreamMessage


@settings(max_examples=60, deadline=None)
@given(
    window=st.tuples(st.integers(1, 8), st.integers(1, 300)),
    sizes=st.lists(st.integers(1, 120), min_size=1, max_size=60),
    reads=st.lists(st.integers(0, 5), min_size=1, max_size=60),
)
def test_a_receiver_never_holds_more_than_its_window(
    window: tuple[int, int], sizes: list[int], reads: list[int]
) -> None:
    """Producer sends whenever credit allows; the consumer takes a random number of
    messages per round. Unconsumed messages never exceed the window (bytes: by at most
    one message), and every message arrives once, in order."""
    client, server, cs, ss = opened(window)
    client_window = (window[0], window[1])
    cs.window_messages, cs.window_bytes = client_window
    ss.send_messages, ss.send_bytes = client_window  # as the client's OPEN granted
    cs.recv_messages, cs.recv_bytes = client_window
    to_send = [bytes([i % 256]) * n for i, n in enumerate(sizes)]
    sent = 0
    held: list[bytes] = []
    got: list[bytes] = []
    rounds = 0
    while len(got) < len(to_send):
        rounds += 1
        assert rounds < 10_000, "stalled: credit never came back"
        while sent < len(to_send) and ss.can_send:
            s.send_message(server, ss, to_send[sent])
            sent += 1
        for event in pump(server, client):
            assert type(event) is s.StreamMessage
            held.append(bytes(event.body))
        assert len(held) <= window[0]
        assert sum(map(len, held)) <= window[1] + 120
        take = max(reads[rounds % len(reads)], 1 if rounds % 7 == 0 else 0)
        for _ in range(min(take, len(held))):
            body = held.pop(0)
            got.append(body)
            s.consumed(client, cs, len(body))
        for event in pump(client, server):
            assert type(event) is s.StreamCredit
    assert got == to_send
