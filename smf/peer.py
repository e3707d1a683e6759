"""Does the server read payload headers? Decides whether a call may carry them.

Payload headers (bitflags bit 0) carry a call's metadata and deadline. Real smf peers
do not read them (docs/wire.md, "Real smf peers"): C++ smf closes the connection on
such a request, smf-go's server hands the body to the handler unparsed (its process
panics) and smf-java's does too. So a client sends them only to a server known to read
them, chosen per client by ``Client(payload_headers=...)``:

- ``"never"``: no call carries them; deadlines are enforced by the client alone and
  metadata is not sent.
- ``"always"``: every call with metadata or a deadline to send carries them (as before
  this module existed): for a server known to be this project's.
- ``"auto"`` (the default): learned per connection, without any frame a real peer
  cannot read:

  * This project's server sends every uncompressed reply with compression byte 1
    (``disabled``: "not compressed, do not compress"), where C++ smf, smf-go,
    smf-java and aiosmf put 0; all of them read 1 as "not compressed". The first
    uncompressed reply on a connection decides: 1, the server reads payload headers;
    0, it does not. Compressed replies (2, 3) decide nothing.
  * A call with headers to send before any such reply (the first call on a fresh
    connection, say) waits for a *probe*: one plain request for ``PROBE_WIRE_ID``,
    which no service defines, sent on a second, short-lived connection so that the
    calling connection never sees a frame a peer might reject. This project's server
    answers 404 (marked); C++ smf and smf-go close that connection; smf-java never
    answers (the probe gives up after ``PROBE_TIMEOUT``). The call waits at most
    ``PROBE_WAIT`` (and at most half its own timeout), then goes without headers.
    Calls with nothing to send in headers never wait.

When a call goes without headers its deadline still holds on the client; the first such
call on a connection is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from typing import TYPE_CHECKING, Final, Literal, cast

from .wire import HEADER, HEADER_SIZE, Compression, encode_header

if TYPE_CHECKING:
    from .client import Client
    from .protocol import RequestReceived
    from .server import ServerConnection

log = logging.getLogger("smf.peer")

Mode = Literal["auto", "always", "never"]
MODES: Final = ("auto", "always", "never")

REPLY_MARK: Final = int(Compression.DISABLED)
"""The compression byte this project's server puts on every reply it does not compress."""

PROBE_WIRE_ID: Final = zlib.crc32(b"smf_rpc.PeerProbe")
"""The probe's wire id, which no method is expected to have (a method that did, a 2**-32
chance, would be called with the probe's empty table instead of the 404 answer)."""

# An empty FlatBuffer table (root offset, vtable, table): a well-formed smallest body.
PROBE_BODY: Final = b"\x08\x00\x00\x00\x04\x00\x04\x00\x04\x00\x00\x00"
PROBE_SESSION: Final = 1
PROBE_ANSWER: Final = b"no such method: payload-headers probe (smf.peer)"

PROBE_TIMEOUT: Final = 2.0
"""How long the probe waits for an answer before concluding "does not read them"."""

PROBE_WAIT: Final = 1.0
"""How long a call with headers waits for an undecided probe before going without."""


def check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise ValueError(f"payload_headers must be one of {', '.join(MODES)}, not {mode!r}")
    return cast(Mode, mode)


def probe_frame() -> bytes:
    body = PROBE_BODY
    return encode_header(PROBE_SESSION, PROBE_WIRE_ID, body) + body


def answer_probe(conn: ServerConnection, request: RequestReceived) -> None:
    """The server's answer to a probe: a marked 404, as to any unknown method, but not
    counted as a call (it is protocol, not traffic: the server's stats and metrics
    stay those of its callers)."""
    stats = conn.server.stats
    stats.requests -= 1  # counted on arrival, before the server knew what it was
    request.body.release()
    # send_reply marks it (compression byte REPLY_MARK), as every uncompressed reply.
    if conn.protocol.send_reply(request.session, 404, PROBE_ANSWER):
        conn.queued()


class PeerHeaders:
    """One connection's answer to "does the server read payload headers?".

    ``reads`` is True or False once known (at once for ``"always"``/``"never"``),
    None while ``"auto"`` has not learned it yet. The client's hot path only reads
    ``reads``: ``learn`` runs for replies while it is None, ``admit`` for calls with
    headers while it is not True.
    """

    __slots__ = ("_known", "_logged", "_probe", "reads")

    def __init__(self, mode: Mode) -> None:
        self.reads: bool | None = {"auto": None, "always": True, "never": False}[mode]
        self._known: asyncio.Event | None = None
        self._probe: asyncio.Task[None] | None = None
        self._logged = False

    def learn(self, compression: int) -> None:
        """A reply arrived with this compression byte (called while ``reads`` is None)."""
        if compression == REPLY_MARK:
            self._decide(True)
        elif compression == Compression.NONE:
            self._decide(False)

    def _decide(self, reads: bool) -> None:
        if self.reads is None:
            self.reads = reads
            if self._known is not None:
                self._known.set()

    async def admit(self, client: Client, prefix: bytes, timeout: float | None) -> bytes:
        """``prefix`` (the call's payload headers) if the server reads them, else b""."""
        if self.reads is None:
            if self._known is None:
                self._known = asyncio.Event()
            if self._probe is None:
                self._probe = asyncio.get_running_loop().create_task(self._run_probe(client))
            wait = PROBE_WAIT if timeout is None else min(PROBE_WAIT, timeout / 2)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._known.wait()
        if self.reads:
            return prefix
        if not self._logged:
            self._logged = True
            log.info(
                "server %s has not shown that it reads payload headers (payload_headers=%r): "
                "calls go without them; deadlines hold on this client, metadata is not sent",
                client.address,
                client.payload_headers,
            )
        return b""

    async def _run_probe(self, client: Client) -> None:
        try:
            reads = await probe(client)
        except Exception:  # any failure means: not known to read them
            log.debug("payload-headers probe of %s failed", client.address, exc_info=True)
            reads = False
        self._decide(reads)

    def close(self) -> None:
        """The connection is gone: stop the probe, let waiting calls find that out."""
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
        if self._known is not None:
            self._known.set()


async def probe(client: Client, timeout: float = PROBE_TIMEOUT) -> bool:
    """Ask the server, on a connection of its own, whether it reads payload headers:
    True iff it answers the probe with a marked reply (see module doc)."""
    tls = client.ssl
    hostname = client.server_hostname if tls is not None else None
    if tls is not None and hostname is None and client.host is not None:
        hostname = client.host
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(client.connect_timeout):
            if client.unix_path is not None:
                reader, writer = await asyncio.open_unix_connection(
                    client.unix_path, ssl=tls, server_hostname=hostname
                )
            else:
                reader, writer = await asyncio.open_connection(
                    client.host, client.port, ssl=tls, server_hostname=hostname
                )
        writer.write(probe_frame())
        async with asyncio.timeout(timeout):
            header = await reader.readexactly(HEADER_SIZE)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False  # closed (C++ smf, smf-go), silent (smf-java) or unreachable
    finally:
        if writer is not None:
            writer.close()
    compression, flags, session, _size, _csum, _status = HEADER.unpack(header)
    return bool(compression == REPLY_MARK and flags == 0 and session == PROBE_SESSION)
