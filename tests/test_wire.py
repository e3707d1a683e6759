"""The sans-IO codec: header facts from wire.md, decoder validation, chunking, views."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smf.errors import (
    BadCompression,
    BadFlags,
    BadMeta,
    BadSize,
    ChecksumMismatch,
    FrameError,
    FrameTooLarge,
)
from smf.wire import (
    HEADER,
    HEADER_SIZE,
    Frame,
    FrameDecoder,
    OversizedFrame,
    checksum,
    encode_frame,
    encode_header,
)

# ---------------------------------------------------------------- facts from wire.md


def test_header_layout_is_16_bytes_little_endian() -> None:
    assert HEADER.format == "<bBHIII"
    assert HEADER_SIZE == 16
    raw = HEADER.pack(2, 1, 0xBEEF, 5, 0xDEADBEEF, 1792279101)
    assert raw == (
        b"\x02\x01"
        + (0xBEEF).to_bytes(2, "little")
        + (5).to_bytes(4, "little")
        + (0xDEADBEEF).to_bytes(4, "little")
        + (1792279101).to_bytes(4, "little")
    )


def test_checksum_vector() -> None:
    assert checksum(b"hello") == 2292149667


def test_encode_header_fields() -> None:
    header = encode_header(7, 1792279101, b"hello")
    assert HEADER.unpack(header) == (0, 0, 7, 5, 2292149667, 1792279101)


@pytest.mark.parametrize(
    ("body", "meta", "error"),
    [(b"", 1, BadSize), (b"x", 0, BadMeta)],
)
def test_encode_rejects_what_the_decoder_rejects(
    body: bytes, meta: int, error: type[FrameError]
) -> None:
    with pytest.raises(error):
        encode_header(1, meta, body)


# ---------------------------------------------------------------- decoding


def frames_of(decoder: FrameDecoder) -> list[tuple[int, int, int, int, bytes]]:
    out = []
    while (event := decoder.next_event()) is not None:
        assert isinstance(event, Frame)
        out.append((event.compression, event.flags, event.session, event.meta, bytes(event.body)))
    return out


def test_decodes_one_frame() -> None:
    d = FrameDecoder()
    d.receive_data(encode_frame(9, 200, b"payload"))
    assert frames_of(d) == [(0, 0, 9, 200, b"payload")]
    assert not d.mid_frame


def test_partial_header_and_body_wait_for_more() -> None:
    d = FrameDecoder()
    raw = encode_frame(1, 5, b"abcdef")
    d.receive_data(raw[:10])
    assert d.next_event() is None and d.mid_frame
    d.receive_data(raw[10:20])
    assert d.next_event() is None and d.mid_frame
    d.receive_data(raw[20:])
    assert frames_of(d) == [(0, 0, 1, 5, b"abcdef")]


@pytest.mark.parametrize(
    ("header", "error", "field", "value"),
    [
        (HEADER.pack(4, 0, 1, 1, 0, 1), BadCompression, "compression", 4),
        (HEADER.pack(-1, 0, 1, 1, 0, 1), BadCompression, "compression", -1),
        (HEADER.pack(0, 2, 1, 1, 0, 1), BadFlags, "bitflags", 2),
        (HEADER.pack(0, 0x80, 1, 1, 0, 1), BadFlags, "bitflags", 0x80),
        (HEADER.pack(0, 0, 1, 0, 0, 1), BadSize, "size", 0),
        (HEADER.pack(0, 0, 1, 1, 0, 0), BadMeta, "meta", 0),
    ],
)
def test_bad_headers_are_typed_errors_naming_field_and_value(
    header: bytes, error: type[FrameError], field: str, value: int
) -> None:
    d = FrameDecoder()
    d.receive_data(header)  # the header alone is enough to reject it
    with pytest.raises(error) as info:
        d.next_event()
    assert info.value.field == field
    assert info.value.value == value
    assert field in str(info.value) and str(value) in str(info.value)
    with pytest.raises(error):  # sticky: the stream cannot resynchronise
        d.next_event()


def test_checksum_mismatch() -> None:
    d = FrameDecoder()
    header = HEADER.pack(0, 0, 1, 5, checksum(b"hello") ^ 1, 77)
    d.receive_data(header + b"hello")
    with pytest.raises(ChecksumMismatch) as info:
        d.next_event()
    assert info.value.field == "checksum"
    assert info.value.actual == 2292149667


def test_disabled_and_compressed_values_are_valid_frames() -> None:
    d = FrameDecoder()
    for compression in (0, 1, 2, 3):
        d.receive_data(encode_frame(compression + 1, 5, b"b", compression=compression))
    assert [f[0] for f in frames_of(d)] == [0, 1, 2, 3]


def test_payload_headers_flag_is_valid() -> None:
    d = FrameDecoder()
    d.receive_data(encode_frame(1, 5, b"b", flags=1))
    assert frames_of(d)[0][1] == 1


def test_oversized_frame_is_skipped_and_stream_continues() -> None:
    d = FrameDecoder(max_body_size=100, buffer_size=64)
    big = b"z" * 1000
    raw = encode_frame(3, 11, big) + encode_frame(4, 12, b"after")
    # Feed in small chunks: the big body must never be buffered whole.
    events: list[Frame | OversizedFrame] = []
    for i in range(0, len(raw), 37):
        d.receive_data(raw[i : i + 37])
        assert d.buffered <= 64 + 37
        while (event := d.next_event()) is not None:
            events.append(event)
    assert isinstance(events[0], OversizedFrame)
    assert (events[0].session, events[0].meta, events[0].size) == (3, 11, 1000)
    assert isinstance(events[1], Frame) and bytes(events[1].body) == b"after"
    assert len(events) == 2


def test_oversized_frame_zero_copy_reads_go_to_scratch() -> None:
    d = FrameDecoder(max_body_size=10, buffer_size=64)
    d.receive_data(HEADER.pack(0, 0, 1, 0xFFFFFFFF, 0, 5))
    event = d.next_event()
    assert isinstance(event, OversizedFrame) and event.size == 0xFFFFFFFF
    buf = d.get_buffer(-1)
    assert len(buf) <= 64 * 1024  # bounded scratch, never the declared size
    buf[:] = b"\0" * len(buf)
    d.buffer_updated(len(buf))
    assert d.mid_frame and d.next_event() is None


def test_oversized_frame_as_error_when_not_skipping() -> None:
    d = FrameDecoder(max_body_size=10, skip_oversized=False)
    d.receive_data(HEADER.pack(0, 0, 1, 11, 0, 5))
    with pytest.raises(FrameTooLarge) as info:
        d.next_event()
    assert info.value.value == 11 and info.value.limit == 10


def test_zero_copy_path_body_is_a_view_of_the_buffer_handed_out() -> None:
    d = FrameDecoder()
    raw = encode_frame(1, 5, b"zero-copy")
    buf = d.get_buffer(len(raw))
    buf[: len(raw)] = raw
    d.buffer_updated(len(raw))
    frame = d.next_event()
    assert isinstance(frame, Frame)
    assert isinstance(frame.body.obj, bytearray)
    assert frame.body.obj is buf.obj  # same memory the "kernel" wrote into
    assert bytes(frame.body) == b"zero-copy"


def test_live_views_are_never_overwritten() -> None:
    d = FrameDecoder(buffer_size=256)
    held = []
    for i in range(200):  # many buffer-fulls
        d.receive_data(encode_frame(i + 1, 5, bytes([i % 251]) * 50))
        while (event := d.next_event()) is not None:
            assert isinstance(event, Frame)
            held.append((i, event.body))
    for i, body in held:
        assert bytes(body) == bytes([i % 251]) * 50
    assert d.buffers_allocated > 1


def test_buffer_is_reused_once_views_are_gone() -> None:
    d = FrameDecoder(buffer_size=256)
    for i in range(200):
        d.receive_data(encode_frame(i + 1, 5, b"x" * 50))
        while (event := d.next_event()) is not None:
            assert isinstance(event, Frame)
            event.body.release()
    assert d.buffers_allocated == 1


def test_large_frame_gets_a_buffer_of_its_size() -> None:
    d = FrameDecoder(buffer_size=64)
    body = bytes(range(256)) * 40
    d.receive_data(encode_frame(1, 5, body))
    frame = d.next_event()
    assert isinstance(frame, Frame) and bytes(frame.body) == body


def test_buffer_updated_rejects_overrun() -> None:
    d = FrameDecoder(buffer_size=64)
    buf = d.get_buffer(-1)
    with pytest.raises(ValueError):
        d.buffer_updated(len(buf) + 1)


# ---------------------------------------------------------------- properties

bodies = st.binary(min_size=1, max_size=300)
frame_specs = st.lists(
    st.tuples(
        st.integers(0, 3),  # compression
        st.integers(0, 1),  # flags
        st.integers(0, 0xFFFF),  # session
        st.integers(1, 0xFFFFFFFF),  # meta
        bodies,
    ),
    min_size=1,
    max_size=12,
)


def stream_of(specs: list[tuple[int, int, int, int, bytes]]) -> bytes:
    return b"".join(encode_frame(s, m, b, compression=c, flags=f) for c, f, s, m, b in specs)


def split_points(data: st.DataObject, n: int) -> list[int]:
    cuts = data.draw(st.lists(st.integers(0, n), max_size=20))
    return sorted(set(cuts))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(specs=frame_specs, data=st.data(), buffer_size=st.sampled_from([32, 64, 200, 4096]))
def test_any_split_yields_the_same_frames(
    specs: list[tuple[int, int, int, int, bytes]], data: st.DataObject, buffer_size: int
) -> None:
    raw = stream_of(specs)
    cuts = [0, *split_points(data, len(raw)), len(raw)]
    d = FrameDecoder(buffer_size=buffer_size)
    got = []
    zero_copy = data.draw(st.booleans())
    for a, b in itertools.pairwise(cuts):
        chunk = raw[a:b]
        if zero_copy:
            while chunk:
                buf = d.get_buffer(len(chunk))
                n = min(len(buf), len(chunk))
                buf[:n] = chunk[:n]
                d.buffer_updated(n)
                chunk = chunk[n:]
        else:
            d.receive_data(chunk)
        got.extend(frames_of(d))
    assert got == [(c, f, s, m, b) for c, f, s, m, b in specs]
    assert not d.mid_frame


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(specs=frame_specs, data=st.data())
def test_any_corruption_yields_a_frame_error_never_a_crash_or_hang(
    specs: list[tuple[int, int, int, int, bytes]], data: st.DataObject
) -> None:
    raw = bytearray(stream_of(specs))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    d = FrameDecoder(max_body_size=1 << 20)
    d.receive_data(bytes(raw))
    got = []
    try:
        while (event := d.next_event()) is not None:
            if isinstance(event, OversizedFrame):
                return  # the flip raised a size above the maximum: answered with 413
            got.append(bytes(event.body))
            assert len(got) <= len(specs)  # every event consumes input: no loop
    except FrameError:
        return
    # No error: the flip hit a field the checksum does not cover (compression 0-3,
    # flag bit 0, session, meta) or made the size larger, so the decoder waits.
    # Either way no body byte differs from what was sent.
    assert got == [b for *_, b in specs][: len(got)]
    assert len(got) == len(specs) or d.mid_frame


@settings(max_examples=300)
@given(garbage=st.binary(min_size=0, max_size=2000), chunk=st.integers(1, 300))
def test_random_bytes_never_raise_anything_but_frame_error(garbage: bytes, chunk: int) -> None:
    d = FrameDecoder(max_body_size=4096, buffer_size=128)
    try:
        for i in range(0, len(garbage), chunk):
            d.receive_data(garbage[i : i + chunk])
            while d.next_event() is not None:
                pass
    except FrameError:
        pass


def test_header_struct_round_trip_all_fields_extremes() -> None:
    for values in [(0, 0, 0, 1, 0, 1), (3, 1, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)]:
        assert HEADER.unpack(HEADER.pack(*values)) == values
    with pytest.raises(struct.error):
        HEADER.pack(0, 0, 0x10000, 1, 0, 1)
