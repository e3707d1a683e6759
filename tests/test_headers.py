"""Payload headers (bitflags bit 0): smf.headers against the real flatc, and hostile input.

The encoding is ``[uint32 LE n][n bytes: payload_headers FlatBuffer]`` (wire.md). The
FlatBuffer half is checked both ways against ``flatc``: what smf writes, flatc reads
back as the same JSON; what flatc writes from JSON, smf decodes to the same dict.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import smf
from smf import headers
from smf.context import TIMEOUT_HEADER

SCHEMA = """\
namespace smf_rpc;
table dynamic_header { key:string (key); value:string; }
table payload_headers { dynamic_headers:[dynamic_header]; }
root_type payload_headers;
"""

FLATC = shutil.which("flatc")
needs_flatc = pytest.mark.skipif(FLATC is None, reason="flatc is not on PATH")

# Keys and values: any text that UTF-8 can encode (hypothesis leaves out surrogates).
texts = st.text(max_size=40)
header_dicts = st.dictionaries(texts, texts, max_size=20)


# --------------------------------------------------------------------------- helpers


def fb(prefixed: bytes) -> bytes:
    """The FlatBuffer inside an encoding (checks the length prefix on the way)."""
    (n,) = struct.unpack_from("<I", prefixed, 0)
    assert n == len(prefixed) - 4
    return prefixed[4:]


def decode(buf: bytes) -> dict[str, str]:
    return headers.decode(memoryview(buf))


class Flatc:
    """flatc driven through files in one directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.schema = directory / "payload_headers.fbs"
        self.schema.write_text(SCHEMA)
        self.n = 0

    def _name(self) -> str:
        self.n += 1
        return f"case{self.n}"

    def to_json(self, flatbuffer: bytes) -> Any:
        """flatc's reading of a binary payload_headers, as parsed JSON."""
        name = self._name()
        binary = self.dir / f"{name}.bin"
        binary.write_bytes(flatbuffer)
        out = self.dir / f"{name}_out"
        subprocess.run(
            [
                FLATC,
                "--json",
                "--strict-json",
                "--raw-binary",
                "-o",
                str(out),
                str(self.schema),
                "--",
                str(binary),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return json.loads((out / f"{name}.json").read_text(encoding="utf-8"))

    def from_json(self, document: Any) -> bytes:
        """The binary flatc builds from a JSON payload_headers."""
        name = self._name()
        source = self.dir / f"{name}.json"
        source.write_text(json.dumps(document), encoding="utf-8")
        out = self.dir / f"{name}_out"
        subprocess.run(
            [FLATC, "-b", "-o", str(out), str(self.schema), str(source)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return (out / f"{name}.bin").read_bytes()


@pytest.fixture(scope="module")
def flatc(tmp_path_factory: pytest.TempPathFactory) -> Flatc:
    if FLATC is None:
        pytest.skip("flatc is not on PATH")
    return Flatc(tmp_path_factory.mktemp("flatc"))


def as_json(h: dict[str, str]) -> dict[str, Any]:
    """The JSON flatc prints for ``h`` as smf encodes it (entries sorted by key)."""
    return {"dynamic_headers": [{"key": k, "value": v} for k, v in sorted(h.items())]}


CASES: list[dict[str, str]] = [
    {},
    {"a": "1"},
    {"b": "2", "a": "1", "c": "3"},
    {"": "empty key"},
    {"empty value": ""},
    {"": ""},
    {"ключ": "значение", "鍵": "値", "emoji 🙂": "🚀 ok", "ü": "ß"},
    {
        TIMEOUT_HEADER: "250000",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    },
    {"k": "v" * 1000, "long key " * 50: "x"},
    {f"key-{i:03d}": f"value {i}" for i in range(headers.MAX_HEADERS)},
    # 1..4 byte strings: each pads differently to 4-byte alignment.
    {"a": "bb", "ccc": "dddd", "eeeee": ""},
]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("h", CASES, ids=lambda h: f"{len(h)}h")
def test_encode_split_round_trip(h: dict[str, str]) -> None:
    message = b"\x0c\x00\x00\x00the message"
    body = headers.encode(h) + message
    got, rest = headers.split(memoryview(body))
    assert got == h
    assert isinstance(rest, memoryview)
    assert bytes(rest) == message


def test_split_with_nothing_after_the_headers() -> None:
    got, rest = headers.split(memoryview(headers.encode({"a": "b"})))
    assert got == {"a": "b"}
    assert rest.nbytes == 0


@given(header_dicts, st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_round_trip_property(h: dict[str, str], message: bytes) -> None:
    encoded = headers.encode(h)
    assert len(encoded) % 4 == 0  # the FlatBuffer keeps 4-byte alignment
    got, rest = headers.split(memoryview(encoded + message))
    assert got == h
    assert bytes(rest) == message


def test_encoding_is_deterministic_and_order_independent() -> None:
    a = headers.encode({"x": "1", "a": "2", "m": "3"})
    b = headers.encode({"m": "3", "x": "1", "a": "2"})
    assert a == b


def test_encode_accepts_any_mapping() -> None:
    from types import MappingProxyType

    assert decode(fb(headers.encode(MappingProxyType({"k": "v"})))) == {"k": "v"}


def test_too_many_headers_is_refused_by_encode() -> None:
    ok = {str(i): "" for i in range(headers.MAX_HEADERS)}
    assert decode(fb(headers.encode(ok))) == ok
    with pytest.raises(ValueError):
        headers.encode({str(i): "" for i in range(headers.MAX_HEADERS + 1)})


# --------------------------------------------------------------------------- the real flatc


@needs_flatc
@pytest.mark.parametrize("h", CASES, ids=lambda h: f"{len(h)}h")
def test_flatc_reads_what_smf_writes(flatc: Flatc, h: dict[str, str]) -> None:
    assert flatc.to_json(fb(headers.encode(h))) == as_json(h)


@needs_flatc
@given(header_dicts)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_flatc_reads_what_smf_writes_property(flatc: Flatc, h: dict[str, str]) -> None:
    assert flatc.to_json(fb(headers.encode(h))) == as_json(h)


@needs_flatc
def test_entries_are_sorted_by_key_on_the_wire(flatc: Flatc) -> None:
    h = {"zeta": "1", "alpha": "2", "Mid": "3", "": "4", "é": "5", "a": "6"}
    keys = [e["key"] for e in flatc.to_json(fb(headers.encode(h)))["dynamic_headers"]]
    # FlatBuffers compares string keys bytewise (strcmp of UTF-8): binary search by
    # key in any FlatBuffers reader relies on this order.
    assert keys == sorted(h, key=lambda k: k.encode("utf-8"))
    assert keys == ["", "Mid", "a", "alpha", "zeta", "é"]


@needs_flatc
@pytest.mark.parametrize("h", CASES, ids=lambda h: f"{len(h)}h")
def test_smf_reads_what_flatc_writes(flatc: Flatc, h: dict[str, str]) -> None:
    if len(h) == headers.MAX_HEADERS:
        h = dict(list(h.items())[:64])  # keep flatc's input small; the size is not the point
    assert decode(flatc.from_json(as_json(h))) == h


@needs_flatc
@given(header_dicts)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_smf_reads_what_flatc_writes_property(flatc: Flatc, h: dict[str, str]) -> None:
    # JSON order is not sorted here: flatc sorts keyed vectors itself.
    doc = {"dynamic_headers": [{"key": k, "value": v} for k, v in h.items()]}
    assert decode(flatc.from_json(doc)) == h


@needs_flatc
def test_flatc_buffers_with_absent_fields(flatc: Flatc) -> None:
    # A missing value is the empty string; a missing vector is no headers.
    assert decode(flatc.from_json({"dynamic_headers": [{"key": "k"}]})) == {"k": ""}
    assert decode(flatc.from_json({})) == {}
    assert decode(flatc.from_json({"dynamic_headers": []})) == {}


def test_entry_without_key_is_refused() -> None:
    # flatc itself refuses to build one (a key field is required), so patch smf's:
    # zero the key slot of the entry's vtable (found by its content: size 8, table 12).
    buf = bytearray(fb(headers.encode({"k": "v"})))
    entry_vtable = buf.index(struct.pack("<HHHH", 8, 12, 4, 8))
    assert struct.unpack_from("<HHHH", buf, entry_vtable) == (8, 12, 4, 8)
    struct.pack_into("<H", buf, entry_vtable + 4, 0)
    with pytest.raises(smf.BadRequest, match="no key"):
        decode(bytes(buf))
    # A vtable that ends before the value slot: the value is absent, so "".
    buf = bytearray(fb(headers.encode({"k": "v"})))
    struct.pack_into("<H", buf, buf.index(struct.pack("<HHHH", 8, 12, 4, 8)), 6)
    assert decode(bytes(buf)) == {"k": ""}


@needs_flatc
def test_flatc_buffer_with_too_many_headers_is_refused(flatc: Flatc) -> None:
    doc = {
        "dynamic_headers": [
            {"key": f"{i:04d}", "value": ""} for i in range(headers.MAX_HEADERS + 1)
        ]
    }
    buf = flatc.from_json(doc)
    with pytest.raises(smf.BadRequest):
        decode(buf)
    with pytest.raises(smf.BadRequest):
        headers.split(memoryview(struct.pack("<I", len(buf)) + buf + b"msg"))


# --------------------------------------------------------------------------- hostile input


def decode_is_safe(buf: bytes) -> None:
    """decode returns a dict of str or raises BadRequest: nothing else, and fast."""
    started = time.monotonic()
    try:
        result = decode(buf)
    except smf.BadRequest:
        pass
    else:
        assert isinstance(result, dict)
        assert len(result) <= headers.MAX_HEADERS
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())
    assert time.monotonic() - started < 2.0


def split_is_safe(body: bytes) -> None:
    try:
        result, rest = headers.split(memoryview(body))
    except smf.BadRequest:
        return
    assert isinstance(result, dict)
    assert isinstance(rest, memoryview)


VALID = fb(headers.encode({"alpha": "1", "beta": "two", TIMEOUT_HEADER: "1000", "ü": ""}))


@given(st.binary(max_size=512))
@settings(max_examples=500, deadline=None)
def test_random_bytes(buf: bytes) -> None:
    decode_is_safe(buf)
    split_is_safe(buf)


def test_every_truncation_of_a_valid_encoding() -> None:
    for cut in range(len(VALID)):
        decode_is_safe(VALID[:cut])
    prefixed = headers.encode({"alpha": "1", "beta": "two"})
    for cut in range(len(prefixed)):
        split_is_safe(prefixed[:cut])


@given(st.lists(st.integers(0, len(VALID) * 8 - 1), min_size=1, max_size=8))
@settings(max_examples=500, deadline=None)
def test_bit_flips_of_a_valid_encoding(bits: list[int]) -> None:
    buf = bytearray(VALID)
    for bit in bits:
        buf[bit // 8] ^= 1 << (bit % 8)
    decode_is_safe(bytes(buf))


@given(
    st.integers(0, len(VALID) // 4 - 1),
    st.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFC]),
)
@settings(max_examples=300, deadline=None)
def test_any_word_overwritten_with_extreme_values(word: int, value: int) -> None:
    buf = bytearray(VALID)
    struct.pack_into("<I", buf, word * 4, value)
    decode_is_safe(bytes(buf))


def _vector_length_offset(buf: bytes) -> int:
    """Where the dynamic_headers vector's length sits in ``buf`` (follows the offsets)."""
    (root,) = struct.unpack_from("<I", buf, 0)
    (soffset,) = struct.unpack_from("<i", buf, root)
    vtable = root - soffset
    (field,) = struct.unpack_from("<H", buf, vtable + 4)
    (rel,) = struct.unpack_from("<I", buf, root + field)
    return root + field + rel


@pytest.mark.parametrize("count", [headers.MAX_HEADERS + 1, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF])
def test_huge_vector_length_is_refused_fast(count: int) -> None:
    buf = bytearray(VALID)
    at = _vector_length_offset(bytes(buf))
    assert struct.unpack_from("<I", buf, at)[0] == 4
    struct.pack_into("<I", buf, at, count)
    started = time.monotonic()
    with pytest.raises(smf.BadRequest):
        decode(bytes(buf))
    assert time.monotonic() - started < 1.0


def test_string_length_past_the_buffer_is_refused() -> None:
    h = {"k": "value"}
    buf = bytearray(fb(headers.encode(h)))
    at = bytes(buf).index(b"value") - 4
    assert struct.unpack_from("<I", buf, at)[0] == 5
    struct.pack_into("<I", buf, at, 0xFFFFFFFF)
    with pytest.raises(smf.BadRequest):
        decode(bytes(buf))


def test_invalid_utf8_is_refused() -> None:
    buf = bytearray(fb(headers.encode({"k": "abc"})))
    at = bytes(buf).index(b"abc")
    buf[at] = 0xFF
    with pytest.raises(smf.BadRequest, match="UTF-8"):
        decode(bytes(buf))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x01",
        b"\x00\x00\x00",
        b"\x00\x00\x00\x00",
        b"\x08\x00\x00\x00abc",
        b"\xff\xff\xff\xffxxxx",
    ],
)
def test_split_refuses_bad_length_prefixes(body: bytes) -> None:
    with pytest.raises(smf.BadRequest):
        headers.split(memoryview(body))


@given(st.binary(max_size=64), st.binary(max_size=64))
@settings(max_examples=200, deadline=None)
def test_split_with_a_valid_length_and_random_table(table: bytes, message: bytes) -> None:
    split_is_safe(struct.pack("<I", len(table)) + table + message)
