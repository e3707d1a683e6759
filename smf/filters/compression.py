"""zstd and lz4 body compression in exactly smf's formats (see wire.md).

- zstd (2): a standard zstd frame that carries its content size.
- lz4 (3): the lz4 block format prefixed by the uncompressed length (uint32 LE).
Decompression is capped at ``max_size`` (a small body cannot expand into gigabytes).
"""

from __future__ import annotations

import struct

import lz4.block
import zstandard

from ..errors import BadRequest, PayloadTooLarge
from ..wire import Compression, Payload, payload_size
from .base import Filter, FilterSide, Message

_U32 = struct.Struct("<I")


def compress(algorithm: Compression, body: Payload, level: int | None = None) -> bytes:
    if algorithm == Compression.ZSTD:
        return zstandard.ZstdCompressor(level=3 if level is None else level).compress(body)
    if algorithm == Compression.LZ4:
        raw: bytes = lz4.block.compress(bytes(body), store_size=False)
        return _U32.pack(payload_size(body)) + raw
    raise ValueError(f"{algorithm!r} is not a compression algorithm")


def decompress(algorithm: int, body: Payload, max_size: int) -> bytes:
    """The original bytes; ``BadRequest`` for corrupt input, ``PayloadTooLarge`` above
    ``max_size``."""
    if algorithm == Compression.ZSTD:
        try:
            declared = zstandard.frame_content_size(body)
        except zstandard.ZstdError as exc:
            raise BadRequest(f"zstd body is not a zstd frame: {exc}") from exc
        if declared < 0:
            raise BadRequest("zstd frame does not carry its content size (smf requires it)")
        if declared > max_size:
            raise PayloadTooLarge(f"zstd body expands to {declared} bytes (max {max_size})")
        try:
            out: bytes = zstandard.ZstdDecompressor().decompress(body, max_output_size=max_size)
        except zstandard.ZstdError as exc:
            raise BadRequest(f"corrupt zstd body: {exc}") from exc
        if len(out) != declared:
            raise BadRequest(f"zstd body is {len(out)} bytes, its frame says {declared}")
        return out
    if algorithm == Compression.LZ4:
        if payload_size(body) < 4:
            raise BadRequest("lz4 body is shorter than its 4-byte length prefix")
        declared = _U32.unpack_from(body, 0)[0]
        if declared > max_size:
            raise PayloadTooLarge(f"lz4 body expands to {declared} bytes (max {max_size})")
        try:
            out = lz4.block.decompress(memoryview(body)[4:], uncompressed_size=declared)
        except lz4.block.LZ4BlockError as exc:
            raise BadRequest(f"corrupt lz4 body: {exc}") from exc
        if len(out) != declared:
            raise BadRequest(f"lz4 body is {len(out)} bytes, its prefix says {declared}")
        return bytes(out)
    raise ValueError(f"compression {algorithm} is not zstd or lz4")


class CompressionFilter(Filter):
    """Decompresses incoming bodies of its algorithm; compresses outgoing bodies of at
    least ``min_size`` bytes (unless marked ``Compression.DISABLED`` or already
    compressed), keeping the original when compression does not make it smaller. On a
    server, a reply is compressed only if the caller offered the algorithm (its request
    was compressed with it, or named it in the ``smf-accept-compression`` payload
    header, e.g. ``client.call(..., metadata={"smf-accept-compression": "zstd"})``). A
    server decompresses zstd and lz4 requests without any filter; this filter adds
    compressed replies and its own ``max_size``."""

    def __init__(
        self,
        algorithm: Compression = Compression.ZSTD,
        *,
        min_size: int = 1024,
        level: int | None = None,
        max_size: int = 64 * 1024 * 1024,
    ) -> None:
        if algorithm not in (Compression.ZSTD, Compression.LZ4):
            raise ValueError(f"{algorithm!r} is not zstd or lz4")
        self.algorithm = algorithm
        self.min_size = min_size
        self.level = level
        self.max_size = max_size

    async def incoming(self, message: Message, side: FilterSide) -> Message | None:
        if message.compression == self.algorithm:
            message.body = decompress(self.algorithm, message.body, self.max_size)
            message.compression = Compression.NONE
        return message

    async def outgoing(self, message: Message, side: FilterSide) -> Message | None:
        if side.is_server and self.algorithm not in message.accept:
            return message  # the caller did not offer it: a plain reply
        if message.compression == Compression.NONE and payload_size(message.body) >= self.min_size:
            packed = compress(self.algorithm, message.body, self.level)
            if len(packed) < payload_size(message.body):
                message.body = packed
                message.compression = self.algorithm
        return message
