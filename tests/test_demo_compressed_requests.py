"""A client that is not this project's sends zstd and lz4 requests, in smf's exact formats,
to the demo server process, which has no compression filter: each gets a 200 (servers
decompress by default, as gRPC servers do) and a reply it can read without one.

The client here is a blocking socket and ``struct``: it shares no code with ``smf``."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lz4.block
import pytest
import xxhash
import zstandard

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "demo" / "generated"))

from smf_gen.demo.Request import RequestT  # noqa: E402
from smf_gen.demo.Response import Response  # noqa: E402

HEADER = struct.Struct("<bBHIII")  # compression, flags, session, size, checksum, meta
GET_WIRE_ID = 1792279101  # crc32("SmfStorage") ^ crc32("Get:smf_gen::demo::Request:...")


@pytest.fixture(scope="module")
def demo_port() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "demo" / "server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line
        yield int(line.strip().rsplit(":", 1)[1])
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _zstd(body: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(body)  # a frame that carries its size


def _lz4(body: bytes) -> bytes:
    return struct.pack("<I", len(body)) + lz4.block.compress(body, store_size=False)


def _exchange(port: int, compression: int, body: bytes, session: int) -> tuple[int, int, bytes]:
    frame = HEADER.pack(
        compression, 0, session, len(body), xxhash.xxh64_intdigest(body) & 0xFFFFFFFF, GET_WIRE_ID
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(frame + body)
        header = b""
        while len(header) < HEADER.size:
            header += sock.recv(HEADER.size - len(header))
        got_compression, _flags, got_session, size, checksum, status = HEADER.unpack(header)
        reply = b""
        while len(reply) < size:
            reply += sock.recv(size - len(reply))
    assert got_session == session
    assert xxhash.xxh64_intdigest(reply) & 0xFFFFFFFF == checksum
    return status, got_compression, reply


@pytest.mark.parametrize(("compression", "pack"), [(2, _zstd), (3, _lz4)], ids=["zstd", "lz4"])
def test_the_demo_server_answers_compressed_requests_with_200(
    demo_port: int, compression: int, pack: object
) -> None:
    name = "compressed " * 40
    request = bytes(RequestT(name=name).Encode())
    assert callable(pack)
    status, reply_compression, reply = _exchange(demo_port, compression, pack(request), 7)
    assert status == 200, reply
    # The demo server has no compression filter: its reply is plain (byte 1, "disabled",
    # is this project's mark for an uncompressed reply; smf clients read it as none).
    assert reply_compression in (0, 1)
    assert Response.GetRootAs(reply, 0).Name() == name.encode()
