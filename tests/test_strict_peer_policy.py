"""The payload-headers policy (smf/peer.py) on its own: what "auto" learns from which
reply, and that the probe reaches this project's server over every transport the client
speaks (TCP, Unix socket, mutual TLS), so metadata travels on a fresh connection's first
call whichever way the client connects."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

import smf
from smf.context import TIMEOUT_HEADER
from smf.peer import PROBE_WIRE_ID, REPLY_MARK, PeerHeaders, probe_frame
from smf.wire import Compression, FrameDecoder

CTX = 0x5E0C00F0


@pytest.mark.parametrize(
    ("replies", "reads"),
    [
        ([1], True),
        ([0], False),
        ([2], None),  # compressed: says nothing
        ([3, 2, 1], True),
        ([3, 0, 1], False),  # the first uncompressed reply decides, once
        ([1, 0], True),
    ],
)
def test_auto_learns_from_the_first_uncompressed_reply(
    replies: list[int], reads: bool | None
) -> None:
    peer = PeerHeaders("auto")
    for compression in replies:
        if peer.reads is None:  # as the client calls it
            peer.learn(compression)
    assert peer.reads is reads


def test_fixed_modes_know_at_once() -> None:
    assert PeerHeaders("always").reads is True
    assert PeerHeaders("never").reads is False
    assert REPLY_MARK == Compression.DISABLED


def test_probe_is_a_plain_valid_frame_for_an_unknown_method() -> None:
    decoder = FrameDecoder(1024)
    decoder.receive_data(probe_frame())
    event = decoder.next_event()
    assert event is not None
    assert (event.compression, event.flags, event.meta) == (0, 0, PROBE_WIRE_ID)  # type: ignore[union-attr]


async def _ctx_server(server: smf.Server, seen: list[dict[str, str]]) -> None:
    async def handler(ctx: smf.CallContext, body: memoryview) -> bytes:
        seen.append({k: v for k, v in ctx.metadata.items() if k != TIMEOUT_HEADER})
        return b"ok"

    server.add_handler(CTX, handler, "Policy.ctx")


async def test_first_call_over_a_unix_socket_carries_metadata(
    make_server: Any, make_client: Any, tmp_path: Path
) -> None:
    path = str(tmp_path / "smf.sock")
    server = await make_server(unix_path=path)
    seen: list[dict[str, str]] = []
    await _ctx_server(server, seen)
    client = await make_client(unix_path=path)
    await client.call(CTX, b"x", metadata={"k": "v"}, timeout=2.0)
    assert seen == [{"k": "v"}]
    assert server.stats.responses == {200: 1}


async def test_first_call_over_mutual_tls_carries_metadata(make_client: Any) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_ctx)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_ctx)
    ca.issue_cert("node-1", common_name="node-1").configure_cert(client_ctx)

    server = smf.Server()
    seen: list[dict[str, str]] = []
    await _ctx_server(server, seen)
    await server.start("127.0.0.1", 0, ssl=server_ctx)
    try:
        client = await make_client(
            "127.0.0.1", server.port, ssl=client_ctx, server_hostname="localhost"
        )
        await client.call(CTX, b"x", metadata={"k": "v"})
        assert seen == [{"k": "v"}]
    finally:
        await server.stop(grace=0)


async def test_first_call_to_a_compressing_server_carries_metadata(
    make_server: Any, make_client: Any
) -> None:
    """Its replies are compressed (they say nothing): the probe's answer is not."""
    from smf.filters import CompressionFilter

    server = await make_server(filters=[CompressionFilter(Compression.ZSTD, min_size=16)])
    seen: list[dict[str, str]] = []

    async def big(ctx: smf.CallContext, body: memoryview) -> bytes:
        seen.append({k: v for k, v in ctx.metadata.items() if k != TIMEOUT_HEADER})
        return b"z" * 4096

    server.add_handler(CTX, big, "Policy.big")
    client = await make_client(
        "127.0.0.1", server.port, filters=[CompressionFilter(Compression.ZSTD, min_size=16)]
    )
    for _ in range(3):
        assert bytes(await client.call(CTX, b"y" * 4096, metadata={"k": "v"})) == b"z" * 4096
    assert seen == [{"k": "v"}] * 3
    assert client._conn.peer_headers.reads is True
