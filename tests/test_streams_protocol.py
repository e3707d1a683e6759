"""Streams, sans-IO: open, credit, half-close, cancel and the session's lifetime, with a
ClientProtocol and a ServerProtocol wired back to back (no sockets)."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
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


ACTIONS = (
    "open",
    "client_send",
    "server_send",
    "client_consume",
    "server_consume",
    "client_end",
    "client_cancel",
    "server_end",
    "to_server",
    "to_client",
)


@settings(max_examples=200, deadline=None)
@given(actions=st.lists(st.sampled_from(ACTIONS), max_size=80))
# The client takes a message it holds after both sides closed the stream.
@example(
    actions=[
        *("open", "to_server", "server_send", "client_end", "server_end"),
        *("to_server", "to_client", "client_consume"),
    ]
)
def test_any_order_of_legal_moves_never_breaks_the_protocol_and_frees_every_session(
    actions: list[str],
) -> None:
    """Two correct peers, any interleaving of their legal moves and of delivery (each
    direction in order, as TCP): no protocol error, messages in order, and once both
    sides have closed, each forgets the stream and the session is free for reuse (two
    session ids, so reuse happens)."""
    from smf.protocol import SessionTable

    client = ClientProtocol(1 << 20, BUF, SessionTable(2))
    server = ServerProtocol(1 << 20, BUF)
    server.stream_window = (3, 100)
    cs: Any = None
    ss: Any = None
    # The streams the held messages came from: an application may take what it holds
    # after both sides closed, when the test has forgotten cs and ss.
    down_stream: Any = None
    up_stream: Any = None
    sent_up: list[bytes] = []
    sent_down: list[bytes] = []
    got_up: list[bytes] = []
    got_down: list[bytes] = []
    held_up: list[bytes] = []
    held_down: list[bytes] = []

    def deliver(src: Any, dst: Any) -> None:
        nonlocal ss, up_stream
        for event in pump(src, dst):
            assert type(event) is not ProtocolError, event
            if type(event) is s.StreamOpened:
                ss = up_stream = event.stream
                s.accept(server, ss)
            elif type(event) is s.StreamMessage:
                (held_up if dst is server else held_down).append(bytes(event.body))

    for counter, action in enumerate([*actions, "finish"]):
        if action == "open" and cs is None:
            owner = object()
            session = client.start_call(owner)
            if session:
                cs = down_stream = s.open_stream(client, session, WIRE_ID, owner, 2, 50)
                sent_up, sent_down, got_up, got_down = [], [], [], []
                held_up, held_down = [], []
        elif action == "client_send" and cs is not None and cs.can_send:
            sent_up.append(b"u%d" % counter)
            s.send_message(client, cs, sent_up[-1])
        elif action == "server_send" and ss is not None and ss.can_send:
            sent_down.append(b"d%d" % counter)
            s.send_message(server, ss, sent_down[-1])
        elif action == "client_consume" and held_down:
            got_down.append(held_down.pop(0))
            s.consumed(client, down_stream, len(got_down[-1]))
        elif action == "server_consume" and held_up:
            got_up.append(held_up.pop(0))
            s.consumed(server, up_stream, len(got_up[-1]))
        elif action == "client_end" and cs is not None and not cs.sent_close:
            s.send_end(client, cs)
        elif action == "client_cancel" and cs is not None:
            s.send_cancel(client, cs)
        elif action == "server_end" and ss is not None and not ss.sent_close:
            s.send_end(server, ss, 200, "")
        elif action == "to_server":
            deliver(client, server)
        elif action == "to_client":
            deliver(server, client)
        if action == "finish" and cs is not None:
            deliver(client, server)  # the OPEN, if not yet
            assert ss is not None
            if not ss.sent_close:
                s.send_end(server, ss, 499, "the test ends")
        if action == "finish" or (cs is not None and ss is not None and ss.done and cs.done):
            for _ in range(4):
                deliver(client, server)
                deliver(server, client)
            if cs is not None:
                assert cs.done and ss is not None and ss.done
                assert got_up + held_up == sent_up[: len(got_up) + len(held_up)]
                assert got_down + held_down == sent_down[: len(got_down) + len(held_down)]
            assert not client.streams and not server.streams
            assert client.in_flight == 0
            cs = ss = None
