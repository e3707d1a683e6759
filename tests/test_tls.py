"""TLS with the standard ``ssl`` module: server TLS, mutual TLS with a CA, the peer's
certificate identity in the handler's context, and clear, fast failures when one side
speaks TLS and the other does not. Certificates are made at test time (trustme).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import smf

trustme = pytest.importorskip("trustme")

ECHO = 0x0E0C0001  # tests/conftest.py's echo handler
WHO = 0x0E0C00A1  # answers the caller's certificate identity as JSON
SLOW_TIMEOUT = 30.0  # call timeout: every failure below must come well before it
FAST = 5.0


class Pki:
    """A cluster CA, an unrelated CA, and contexts built from them."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()
        self.server_cert = self.ca.issue_cert("localhost", "127.0.0.1")

    def server_ctx(self, *, mutual: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        if mutual:
            ctx.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(ctx)
        return ctx

    def client_ctx(
        self, name: str | None = None, *, trust: Any = None, issuer: Any = None
    ) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        (trust or self.ca).configure_trust(ctx)
        if name is not None:
            (issuer or self.ca).issue_cert(name, common_name=name).configure_cert(ctx)
        return ctx


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


async def _who(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
    ident = ctx.peer_identity
    return json.dumps(
        None
        if ident is None
        else {
            "name": ident.name,
            "common_name": ident.common_name,
            "dns_names": list(ident.dns_names),
        }
    ).encode()


StartTls = Callable[..., Awaitable[smf.Server]]


@pytest.fixture
async def tls_server(kit: Any) -> AsyncIterator[StartTls]:
    """Start servers with the test handlers plus WHO; all stop at teardown."""
    servers: list[smf.Server] = []

    async def start(ctx: ssl.SSLContext | None, unix_path: str | None = None) -> smf.Server:
        server = smf.Server()
        kit.HandlerState().install(server)
        server.add_handler(WHO, _who, "Test.Who")
        servers.append(server)
        if unix_path is not None:
            await server.start_unix(unix_path, ssl=ctx)
        else:
            await server.start("127.0.0.1", 0, ssl=ctx)
        return server

    yield start
    for server in servers:
        await server.stop(grace=0)


async def _fails_fast(client: smf.Client) -> tuple[smf.ConnectionLost, float]:
    t0 = time.monotonic()
    with pytest.raises(smf.ConnectionLost) as info:
        await client.call(ECHO, b"hello?", timeout=SLOW_TIMEOUT)
    elapsed = time.monotonic() - t0
    assert elapsed < FAST, f"took {elapsed:.1f}s to fail (call timeout {SLOW_TIMEOUT}s)"
    return info.value, elapsed


# --------------------------------------------------------------------------- server TLS


async def test_tls_server_and_a_client_verifying_it_through_the_ca(
    pki: Pki, tls_server: StartTls, make_client: Any, kit: Any
) -> None:
    server = await tls_server(pki.server_ctx())
    client = await make_client(
        "127.0.0.1", server.port, ssl=pki.client_ctx(), server_hostname="localhost"
    )
    assert bytes(await client.call(kit.ECHO, b"secret")) == b"secret"
    assert json.loads(bytes(await client.call(WHO, b"?"))) is None  # no client certificate
    (conn,) = server.connections
    assert conn.extra("ssl_object") is not None
    assert conn.extra("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    # Without server_hostname the client checks the address it dialled (an IP SAN).
    by_ip = await make_client("127.0.0.1", server.port, ssl=pki.client_ctx())
    assert bytes(await by_ip.call(kit.ECHO, b"by ip")) == b"by ip"


async def test_tls_client_rejects_a_certificate_for_another_name(
    pki: Pki, tls_server: StartTls, make_client: Any
) -> None:
    server = await tls_server(pki.server_ctx())
    client = await make_client(
        "127.0.0.1",
        server.port,
        ssl=pki.client_ctx(),
        server_hostname="other.example",
        connect=False,
    )
    error, _ = await _fails_fast(client)
    assert "TLS" in str(error) and "other.example" in str(error), str(error)


async def test_tls_client_that_does_not_trust_the_servers_ca_fails_naming_tls(
    pki: Pki, tls_server: StartTls, make_client: Any
) -> None:
    server = await tls_server(pki.server_ctx())
    client = await make_client(
        "127.0.0.1",
        server.port,
        ssl=pki.client_ctx(trust=pki.other_ca),
        server_hostname="localhost",
        connect=False,
    )
    error, _ = await _fails_fast(client)
    assert "TLS" in str(error), str(error)
    assert "certificate" in str(error).lower(), str(error)
    assert server.stats.connections_accepted == 0


# --------------------------------------------------------------------------- mutual TLS


async def test_mutual_tls_puts_the_client_certificate_identity_in_the_context(
    pki: Pki, tls_server: StartTls, make_client: Any, kit: Any
) -> None:
    server = await tls_server(pki.server_ctx(mutual=True))
    node2 = await make_client(
        "127.0.0.1",
        server.port,
        ssl=pki.client_ctx("node-2.cluster"),
        server_hostname="localhost",
    )
    node3 = await make_client(
        "127.0.0.1",
        server.port,
        ssl=pki.client_ctx("node-3.cluster"),
        server_hostname="localhost",
    )
    for _ in range(3):  # the identity is the connection's: every call sees it
        assert json.loads(bytes(await node2.call(WHO, b"?"))) == {
            "name": "node-2.cluster",
            "common_name": "node-2.cluster",
            "dns_names": ["node-2.cluster"],
        }
        assert json.loads(bytes(await node3.call(WHO, b"?")))["name"] == "node-3.cluster"
    assert bytes(await node2.call(kit.ECHO, b"inter-node")) == b"inter-node"
    identities = sorted(str(c.identity and c.identity.name) for c in server.connections)
    assert identities == ["node-2.cluster", "node-3.cluster"]


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    pki: Pki, tls_server: StartTls, make_client: Any, kit: Any
) -> None:
    server = await tls_server(pki.server_ctx(mutual=True))
    anonymous = await make_client(
        "127.0.0.1",
        server.port,
        ssl=pki.client_ctx(),
        server_hostname="localhost",
        connect=False,
    )
    await _fails_fast(anonymous)
    assert server.stats.requests == 0
    # A client with a certificate is served all along.
    node = await make_client(
        "127.0.0.1", server.port, ssl=pki.client_ctx("node-1.cluster"), server_hostname="localhost"
    )
    assert bytes(await node.call(kit.ECHO, b"ok")) == b"ok"


@pytest.mark.parametrize("when", ["call-at-once", "call-after-handshake"])
async def test_mutual_tls_refusal_message_says_a_client_certificate_is_needed(
    pki: Pki, tls_server: StartTls, make_client: Any, when: str
) -> None:
    server = await tls_server(pki.server_ctx(mutual=True))
    anonymous = await make_client(
        "127.0.0.1",
        server.port,
        ssl=pki.client_ctx(),
        server_hostname="localhost",
        connect=False,
    )
    if when == "call-after-handshake":
        await anonymous.connect()  # TLS 1.3: the client's side of the handshake succeeds
        await asyncio.sleep(0.1)  # ... and the server's refusal arrives afterwards
    error, _ = await _fails_fast(anonymous)
    message = str(error).lower()
    assert "certificate" in message or "tls" in message, str(error)


async def test_mutual_tls_refuses_a_certificate_from_another_ca(
    pki: Pki, tls_server: StartTls, make_client: Any
) -> None:
    server = await tls_server(pki.server_ctx(mutual=True))
    impostor = await make_client(
        "127.0.0.1",
        server.port,
        ssl=pki.client_ctx("node-2.cluster", issuer=pki.other_ca),
        server_hostname="localhost",
        connect=False,
    )
    await _fails_fast(impostor)
    assert server.stats.requests == 0
    assert server.stats.connections_accepted == 0


# --------------------------------------------------------------------------- mismatches


async def test_plaintext_client_against_a_tls_server_fails_fast_hinting_at_tls(
    pki: Pki, tls_server: StartTls, make_client: Any
) -> None:
    server = await tls_server(pki.server_ctx())
    plain = await make_client("127.0.0.1", server.port, timeout=SLOW_TIMEOUT)
    error, elapsed = await _fails_fast(plain)
    print(f"\n[plaintext -> TLS] failed after {elapsed * 1e3:.1f} ms: {error}")
    assert "TLS" in str(error) and "ssl=" in str(error), str(error)
    assert server.stats.requests == 0


async def test_tls_client_against_a_plaintext_server_fails_fast_and_the_server_says_why(
    pki: Pki,
    tls_server: StartTls,
    make_client: Any,
    kit: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="smf.server")
    server = await tls_server(None)
    tls = await make_client(
        "127.0.0.1",
        server.port,
        ssl=pki.client_ctx(),
        server_hostname="localhost",
        connect=False,
    )
    error, elapsed = await _fails_fast(tls)
    print(f"\n[TLS -> plaintext] failed after {elapsed * 1e3:.1f} ms: {error}")
    assert "TLS" in str(error), str(error)
    await kit.wait_until(lambda: server.stats.bad_frames == 1, what="the server to notice")
    hints = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(hints) == 1, [r.getMessage() for r in caplog.records]
    # The listener is unharmed: plaintext clients are served.
    plain = await make_client("127.0.0.1", server.port)
    assert bytes(await plain.call(kit.ECHO, b"plain")) == b"plain"


# --------------------------------------------------------------------------- transports, load


async def test_mutual_tls_over_a_unix_socket(
    pki: Pki, tls_server: StartTls, make_client: Any, kit: Any, tmp_path: Path
) -> None:
    path = str(tmp_path / "smf-tls.sock")
    await tls_server(pki.server_ctx(mutual=True), unix_path=path)
    client = await make_client(
        unix_path=path, ssl=pki.client_ctx("node-7.cluster"), server_hostname="localhost"
    )
    assert bytes(await client.call(kit.ECHO, b"local and private")) == b"local and private"
    assert json.loads(bytes(await client.call(WHO, b"?")))["name"] == "node-7.cluster"
    # The hostname is checked on a Unix socket too.
    wrong = await make_client(
        unix_path=path,
        ssl=pki.client_ctx("node-7.cluster"),
        server_hostname="elsewhere",
        connect=False,
    )
    error, _ = await _fails_fast(wrong)
    assert "TLS" in str(error), str(error)


async def test_many_concurrent_calls_over_tls_are_matched(
    pki: Pki, tls_server: StartTls, make_client: Any, kit: Any
) -> None:
    server = await tls_server(pki.server_ctx(mutual=True))
    client = await make_client(
        "127.0.0.1", server.port, ssl=pki.client_ctx("node-9.cluster"), server_hostname="localhost"
    )
    # Sizes from 1 byte to past a TLS record (16 KiB), so replies span records.
    payloads = [(b"%06d:" % i) * (1 + (i * 37) % 5000) for i in range(2000)]
    t0 = time.perf_counter()
    results = await asyncio.wait_for(
        asyncio.gather(*(client.call(kit.ECHO, p) for p in payloads)), 60.0
    )
    elapsed = time.perf_counter() - t0
    total = sum(len(p) for p in payloads)
    print(
        f"\n[TLS] {len(payloads)} concurrent calls, {total / 1e6:.1f} MB each way, "
        f"in {elapsed:.2f}s"
    )
    assert [bytes(r) for r in results] == payloads
    assert client.in_flight == 0
    assert server.stats.responses == {200: len(payloads)}
