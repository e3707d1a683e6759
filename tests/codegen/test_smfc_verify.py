"""Generated verifiers (``verify_T``) over ``smf.verify``: valid buffers pass, corrupt
ones fail with a message naming the field and the offset, a buffer that passes is safe to
read, and servers answer 400 for a malformed request before the method runs."""

from __future__ import annotations

import contextlib
import gc
import inspect
import mmap
import pickle
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import flatbuffers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smfc_testlib import DATA, IDL, SCHEMAS, flatc_binary, imported_from, run_smfc

import smf
import smf.stubs as smf_stubs
from smf.codec import UnionValue
from smf.verify import VerificationError, Verifier, verify_buffer
from smfc.verifiers import general_path

pytest_plugins = ["smfc_testlib"]  # its fixtures: smfc_corpus, flatc_exe

Load = Callable[[str], ModuleType]


@dataclass(frozen=True)
class Sample:
    """A flatc-encoded document and where its generated verifier lives."""

    data: str
    schema: Path
    root: str  # qualified root type
    stub: str  # the service module holding verify_<Root>
    nested: bool = False  # generated from verify_nested.fbs, outside the corpus

    @property
    def verifier(self) -> str:
        return "verify_" + self.root.rpartition(".")[2]


SAMPLES = [
    Sample(
        "figure.json", SCHEMAS / "geo.fbs", "corpus.geo.deep.Figure", "corpus.geo.deep.Shapes_smf"
    ),
    Sample("thing.json", SCHEMAS / "multi.fbs", "Thing", "Thing_smf"),
    Sample(
        "record.json",
        SCHEMAS / "tables_only.fbs",
        "corpus.plain.Record",
        "corpus.verify.Checker_smf",
    ),
    Sample("request.json", IDL / "demo.fbs", "smf_gen.demo.Request", "smf_gen.demo.SmfStorage_smf"),
    Sample(
        "envelope.json",
        SCHEMAS / "verify.fbs",
        "corpus.verify.Envelope",
        "corpus.verify.Checker_smf",
    ),
    Sample("link.json", SCHEMAS / "verify.fbs", "corpus.verify.Link", "corpus.verify.Checker_smf"),
    Sample("node.json", SCHEMAS / "recursive.fbs", "corpus.rec.a.Node", "corpus.rec.a.Walker_smf"),
    Sample(
        "sealed.json",
        SCHEMAS / "verify_nested.fbs",
        "corpus.nested.Sealed",
        "corpus.nested.Sealer_smf",
        nested=True,
    ),
]
IDS = [s.data.removesuffix(".json") for s in SAMPLES]


@pytest.fixture(scope="module")
def nested_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """verify_nested.fbs, generated apart: it includes multi.fbs, whose top-level modules
    (Thing, Peer) must not meet the corpus's in ``sys.modules``."""
    out = tmp_path_factory.mktemp("nested") / "out"
    result = run_smfc("-I", SCHEMAS, "-o", out, SCHEMAS / "verify_nested.fbs")
    assert result.code == 0, result.err
    return out


@pytest.fixture(scope="module")
def encoded(flatc_exe: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Every sample encoded by ``flatc -b`` (the oracle), once."""
    out: dict[str, bytes] = {}
    for sample in SAMPLES:
        where = tmp_path_factory.mktemp("bin")
        flags = [] if sample.root == "Thing" else ["--root-type", sample.root]
        out[sample.data] = flatc_binary(flatc_exe, sample.schema, DATA / sample.data, where, *flags)
    return out


@contextlib.contextmanager
def generated(sample: Sample, corpus: Path, nested: Path) -> Iterator[Load]:
    with imported_from(nested if sample.nested else corpus) as load:
        yield load


@pytest.fixture
def gen(smfc_corpus: Path) -> Iterator[Load]:
    with imported_from(smfc_corpus) as load:
        yield load


def _class(load: Load, qualified: str, suffix: str = "") -> Any:
    return getattr(load(qualified), qualified.rpartition(".")[2] + suffix)


def pack(obj: Any) -> bytearray:
    builder = flatbuffers.Builder(0)
    builder.Finish(obj.Pack(builder))
    return bytearray(builder.Output())


# ----------------------------------------------------------------------------- reading

_NOT_ACCESSORS = {"Init", "GetRootAs", "SizeOf"}


def read_everything(obj: Any, calls: list[int]) -> None:
    """Call every accessor of a generated table or struct that takes no argument or a
    vector index (every index), recursing into the tables and structs they return."""
    for name in dir(type(obj)):
        if name.startswith("_") or name in _NOT_ACCESSORS or name.startswith("GetRootAs"):
            continue
        if name.endswith("AsNumpy"):
            continue  # numpy is optional
        method = getattr(obj, name)
        params = list(inspect.signature(method).parameters)
        if not params:
            results = [method()]
        elif params == ["j"] and hasattr(obj, name + "Length"):
            results = [method(j) for j in range(getattr(obj, name + "Length")())]
        else:
            continue  # struct accessors taking an object to fill: the object API reads them
        calls[0] += len(results)
        for result in results:
            if hasattr(result, "_buf") and not isinstance(result, UnionValue):
                read_everything(result, calls)


def read_all(load: Load, root: str, buf: bytes | bytearray | memoryview) -> int:
    """Read ``buf`` through the accessors and unpack it with the object API; the number of
    accessor calls."""
    table = _class(load, root).GetRootAs(buf, 0)
    calls = [0]
    read_everything(table, calls)
    _class(load, root, "T").InitFromObj(table)
    return calls[0]


# ----------------------------------------------------------------------------- layout
# Hand-crafted corruptions need to find things in a buffer.


class Layout:
    def __init__(self, buf: bytearray) -> None:
        self.buf = buf

    def u16(self, at: int) -> int:
        value: int = struct.unpack_from("<H", self.buf, at)[0]
        return value

    def u32(self, at: int) -> int:
        value: int = struct.unpack_from("<I", self.buf, at)[0]
        return value

    def put16(self, at: int, value: int) -> None:
        struct.pack_into("<H", self.buf, at, value)

    def put32(self, at: int, value: int) -> None:
        struct.pack_into("<I", self.buf, at, value & 0xFFFFFFFF)

    @property
    def root(self) -> int:
        return self.u32(0)

    def vtable(self, table: int) -> int:
        vtable: int = table - struct.unpack_from("<i", self.buf, table)[0]
        return vtable

    def slot_at(self, table: int, slot: int) -> int:
        """Where the vtable stores the offset of the field in ``slot``."""
        vtable = self.vtable(table)
        assert slot < self.u16(vtable), "field absent"
        return vtable + slot

    def field(self, table: int, slot: int) -> int:
        off = self.u16(self.slot_at(table, slot))
        assert off, "field absent"
        return table + off

    def deref(self, at: int) -> int:
        return at + self.u32(at)

    def element(self, vector: int, i: int) -> int:
        return self.deref(vector + 4 + 4 * i)


# ----------------------------------------------------------------------------- valid input


@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
def test_flatc_encoded_buffers_pass_and_read(
    sample: Sample, encoded: dict[str, bytes], smfc_corpus: Path, nested_out: Path
) -> None:
    buf = encoded[sample.data]
    with generated(sample, smfc_corpus, nested_out) as load:
        verify = getattr(load(sample.stub), sample.verifier)
        for form in (buf, bytearray(buf), memoryview(bytearray(buf))):
            Verifier(form).root(verify)
        assert read_all(load, sample.root, memoryview(buf)) > 0


@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
def test_object_api_buffers_pass(
    sample: Sample, encoded: dict[str, bytes], smfc_corpus: Path, nested_out: Path
) -> None:
    """flatc's buffer unpacked and packed again by Python's builder (another layout)."""
    with generated(sample, smfc_corpus, nested_out) as load:
        table = _class(load, sample.root).GetRootAs(encoded[sample.data], 0)
        repacked = pack(_class(load, sample.root, "T").InitFromObj(table))
        assert repacked != encoded[sample.data] or sample.data == "request.json"
        verify_buffer(repacked, getattr(load(sample.stub), sample.verifier))


def test_empty_and_default_tables_pass(gen: Load) -> None:
    checker = gen("corpus.verify.Checker_smf")
    verify_buffer(pack(gen("corpus.verify.Link").LinkT()), checker.verify_Link)
    verify_buffer(pack(gen("corpus.plain.Record").RecordT()), checker.verify_Record)
    geometry = gen("corpus.geo.deep.Geometry_smf")
    verify_buffer(pack(gen("corpus.common.Empty").EmptyT()), geometry.verify_Empty)


def test_verifiers_cover_every_reachable_table(gen: Load) -> None:
    """One function per table a service sends or receives (and what those reach), each
    named after its table, with the namespace spelled in where two share a name."""
    shapes = gen("corpus.geo.deep.Shapes_smf")
    assert {n for n in vars(shapes) if n.startswith("verify_")} == {
        "verify_Figure",
        "verify_Point",
        "verify_Circle",
        "verify_Square",
    }
    assert set(shapes._Shape_VERIFIERS) == {1, 2}
    store = gen("multi.Store_smf")
    assert {n for n in vars(store) if n.startswith("verify_")} == {
        "verify_multi_a_Item",
        "verify_multi_b_Item",
        "verify_Thing",
        "verify_Peer",
    }


def test_each_table_is_verified_by_code_generated_once(smfc_corpus: Path, gen: Load) -> None:
    """A table's verifiers live in its own module; a stub module imports (and re-exports)
    them, so a table that several services reach is verified by one function."""
    for stub in smfc_corpus.rglob("*_smf.py"):
        text = stub.read_text()
        assert "def verify_" not in text and "def _check_" not in text, stub
    shapes = gen("corpus.geo.deep.Shapes_smf")
    figure, point = gen("corpus.geo.deep.Figure"), gen("corpus.common.Point")
    assert shapes.verify_Figure is figure.verify_Figure
    assert (
        shapes.verify_Point
        is point.verify_Point
        is gen("corpus.geo.deep.Geometry_smf").verify_Point
    )
    assert figure._each_Point is point._each_Point
    store = gen("multi.Store_smf")
    assert store.verify_multi_a_Item is gen("multi.a.Item").verify_Item
    assert store.verify_multi_b_Item is gen("multi.b.Item").verify_Item
    assert (
        gen("corpus.rec.a.Walker_smf")._Choice_VERIFIERS
        == gen("corpus.rec.a.Node")._Choice_VERIFIERS
    )


# ----------------------------------------------------------------------------- corruptions


@pytest.fixture
def request_buffer(gen: Load) -> tuple[bytearray, Any]:
    stub = gen("smf_gen.demo.SmfStorage_smf")
    return pack(gen("smf_gen.demo.Request").RequestT(name="n" * 20)), stub.verify_Request


def _fails(buf: bytes | bytearray, verify: Any, pattern: str, **limits: int) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        Verifier(buf, **limits).root(verify)
    assert caught.match(pattern), str(caught.value)
    return caught.value


def test_message_names_table_field_and_offset(request_buffer: tuple[bytearray, Any]) -> None:
    buf, verify = request_buffer
    lay = Layout(buf)
    string = lay.deref(lay.field(lay.root, 4))
    lay.put32(string, 1000)
    err = _fails(
        buf,
        verify,
        rf"^Request\.name: string at offset {string} runs past the end of the "
        rf"{len(buf)}-byte buffer$",
    )
    assert (err.table, err.path, err.offset) == ("Request", ["name"], string)
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.offset == err.offset


@pytest.mark.parametrize("size", [0, 3, 7])
def test_too_short_to_be_a_flatbuffer(size: int, request_buffer: tuple[bytearray, Any]) -> None:
    _, verify = request_buffer
    _fails(bytes(size), verify, rf"^a {size}-byte buffer is not a FlatBuffer")


@pytest.mark.parametrize("root", [0, 0xFFFFFFFF, 0xFFFFFFFC])
def test_root_offset_out_of_range(root: int, request_buffer: tuple[bytearray, Any]) -> None:
    buf, verify = request_buffer
    Layout(buf).put32(0, root)
    _fails(buf, verify, rf"^root offset {root} does not point at a table inside")


def test_root_offset_misaligned(request_buffer: tuple[bytearray, Any]) -> None:
    buf, verify = request_buffer
    lay = Layout(buf)
    lay.put32(0, lay.root + 2)
    _fails(buf, verify, rf"^Request: table at offset {lay.root} is not 4-byte aligned$")


@pytest.mark.parametrize("soffset", [-(2**31), 2**31 - 1, 1 << 20])
def test_vtable_out_of_range(soffset: int, request_buffer: tuple[bytearray, Any]) -> None:
    buf, verify = request_buffer
    lay = Layout(buf)
    struct.pack_into("<i", buf, lay.root, soffset)
    _fails(buf, verify, r"^Request: vtable at offset -?\d+ \(of the table at \d+\) lies outside")


def test_vtable_misaligned(request_buffer: tuple[bytearray, Any]) -> None:
    buf, verify = request_buffer
    lay = Layout(buf)
    struct.pack_into("<i", buf, lay.root, struct.unpack_from("<i", buf, lay.root)[0] + 1)
    _fails(buf, verify, r"^Request: vtable at offset \d+ is not 2-byte aligned$")


@pytest.mark.parametrize("vsize", [5, 2, 0])
def test_bad_vtable_size(vsize: int, request_buffer: tuple[bytearray, Any]) -> None:
    buf, verify = request_buffer
    lay = Layout(buf)
    lay.put16(lay.vtable(lay.root), vsize)
    _fails(buf, verify, rf"has size {vsize} \(it must be even and at least 4\)$")


def test_vtable_past_the_end(request_buffer: tuple[bytearray, Any]) -> None:
    buf, verify = request_buffer
    lay = Layout(buf)
    lay.put16(lay.vtable(lay.root), 0xFFFE)
    _fails(buf, verify, r"^Request: vtable at offset \d+ \(65534 bytes\) runs past the end")


@pytest.mark.parametrize(("tsize", "why"), [(0xFFFF, "past the end"), (2, "fewer than")])
def test_table_size_out_of_range(
    tsize: int, why: str, request_buffer: tuple[bytearray, Any]
) -> None:
    buf, verify = request_buffer
    lay = Layout(buf)
    lay.put16(lay.vtable(lay.root) + 2, tsize)
    _fails(buf, verify, rf"^Request: table at offset \d+ declares {tsize} bytes, {why}")


def test_field_beyond_the_table_size(request_buffer: tuple[bytearray, Any]) -> None:
    buf, verify = request_buffer
    lay = Layout(buf)
    tsize = lay.u16(lay.vtable(lay.root) + 2)
    lay.put16(lay.slot_at(lay.root, 4), tsize - 2)
    _fails(
        buf,
        verify,
        rf"^Request\.name: 4-byte field at offset \d+ runs past the end of its {tsize}-byte table",
    )


def test_string_offset_out_of_range_and_zero(request_buffer: tuple[bytearray, Any]) -> None:
    buf, verify = request_buffer
    lay = Layout(buf)
    at = lay.field(lay.root, 4)
    lay.put32(at, 0x7FFFFFF0)
    _fails(buf, verify, rf"^Request\.name: string offset at {at} points to \d+, past the end")
    lay.put32(at, 0)
    _fails(buf, verify, rf"^Request\.name: string offset at {at} is 0")


def test_string_without_nul(request_buffer: tuple[bytearray, Any]) -> None:
    buf, verify = request_buffer
    lay = Layout(buf)
    string = lay.deref(lay.field(lay.root, 4))
    end = string + 4 + lay.u32(string)
    buf[end] = ord("!")
    _fails(buf, verify, rf"^Request\.name: string at offset {string} is not NUL-terminated")
    # A string that ends exactly at the end of the buffer has no room for its NUL.
    buf[end] = 0
    _fails(bytes(buf[:end]), verify, rf"string at offset {string} runs past the end")


def test_string_misaligned(request_buffer: tuple[bytearray, Any]) -> None:
    buf, verify = request_buffer
    lay = Layout(buf)
    at = lay.field(lay.root, 4)
    lay.put32(at, lay.u32(at) + 1)
    _fails(buf, verify, r"^Request\.name: string at offset \d+ is not 4-byte aligned$")


@pytest.fixture
def figure(gen: Load, encoded: dict[str, bytes]) -> tuple[bytearray, Any, Layout]:
    buf = bytearray(encoded["figure.json"])
    return buf, gen("corpus.geo.deep.Shapes_smf").verify_Figure, Layout(buf)


@pytest.mark.parametrize(("slot", "what"), [(12, "4-byte elements"), (14, "bytes")])
def test_huge_vector_length_fails_fast(
    slot: int, what: str, figure: tuple[bytearray, Any, Layout]
) -> None:
    buf, verify, lay = figure
    vector = lay.deref(lay.field(lay.root, slot))  # points ([Point]) and data ([ubyte])
    lay.put32(vector, 0xFFFFFFFF)
    started = time.perf_counter()
    _fails(buf, verify, rf"^Figure\.\w+: vector at offset {vector} of 4294967295 {what} runs past")
    assert time.perf_counter() - started < 0.05


def test_misaligned_vector(figure: tuple[bytearray, Any, Layout]) -> None:
    buf, verify, lay = figure
    at = lay.field(lay.root, 14)  # data: [ubyte]
    lay.put32(at, lay.u32(at) + 1)
    _fails(buf, verify, r"^Figure\.data: vector at offset \d+ is not 4-byte aligned$")


def test_misaligned_scalar(figure: tuple[bytearray, Any, Layout]) -> None:
    buf, verify, lay = figure
    tsize = lay.u16(lay.vtable(lay.root) + 2)
    off = next(o for o in range(4, tsize - 7) if (lay.root + o) % 8 == 4)
    lay.put16(lay.slot_at(lay.root, 4), off)  # id: ulong
    _fails(buf, verify, rf"^Figure\.id: 8-byte field at offset {lay.root + off} is not 8-byte")


def test_struct_past_the_table(figure: tuple[bytearray, Any, Layout]) -> None:
    buf, verify, lay = figure
    tsize = lay.u16(lay.vtable(lay.root) + 2)
    lay.put16(lay.slot_at(lay.root, 24), tsize - 20)  # pair: a 28-byte struct
    _fails(buf, verify, rf"^Figure\.pair: 28-byte field at offset \d+ runs past .* {tsize}-byte")


def test_union_with_unknown_type(figure: tuple[bytearray, Any, Layout]) -> None:
    buf, verify, lay = figure
    buf[lay.field(lay.root, 8)] = 9  # shape_type
    _fails(buf, verify, r"^Figure\.shape_type: unknown union type 9 \(known: 0 for none, 1, 2\)$")


def test_union_member_is_verified_as_its_type(figure: tuple[bytearray, Any, Layout]) -> None:
    buf, verify, lay = figure
    circle = lay.deref(lay.field(lay.root, 10))
    lay.put16(lay.vtable(circle) + 2, 0xFFF0)
    _fails(buf, verify, r"^Figure\.shape: table at offset \d+ declares 65520 bytes")


def test_union_none_and_absent_values_pass(gen: Load) -> None:
    verify = gen("corpus.geo.deep.Shapes_smf").verify_Figure
    figure_t = gen("corpus.geo.deep.Figure").FigureT
    verify_buffer(pack(figure_t(name="n", shapeType=0, shape=None)), verify)
    verify_buffer(pack(figure_t(name="n", shapeType=2, shape=None)), verify)


def test_fault_inside_a_vector_element_names_the_path(
    figure: tuple[bytearray, Any, Layout],
) -> None:
    buf, verify, lay = figure
    points = lay.deref(lay.field(lay.root, 12))
    point = lay.element(points, 0)
    tags = lay.deref(lay.field(point, 8))
    tag = lay.element(tags, 1)
    buf[tag + 4 + lay.u32(tag)] = 1  # its NUL
    _fails(buf, verify, r"^Figure\.points\[0\]\.tags\[1\]: string at offset \d+ is not NUL")
    buf[tag + 4 + lay.u32(tag)] = 0
    lay.put32(tags + 4, 0)
    _fails(buf, verify, r"^Figure\.points\[0\]\.tags\[0\]: string offset at \d+ is 0")


def test_missing_required_fields(gen: Load) -> None:
    shapes = gen("corpus.geo.deep.Shapes_smf")
    _fails(
        pack(gen("corpus.geo.deep.Figure").FigureT()),
        shapes.verify_Figure,
        r"^Figure\.name: required field is missing",
    )
    checker = gen("corpus.verify.Checker_smf")
    Envelope = gen("corpus.verify.Envelope")
    SpanT = gen("corpus.plain.Span").SpanT
    LinkT = gen("corpus.verify.Link").LinkT
    complete = {"label": "l", "span": SpanT(1, 2), "links": [LinkT()]}
    verify_buffer(pack(Envelope.EnvelopeT(**complete)), checker.verify_Envelope)
    for missing in complete:
        fields = {k: v for k, v in complete.items() if k != missing}
        _fails(
            pack(Envelope.EnvelopeT(**fields)),
            checker.verify_Envelope,
            rf"^Envelope\.{missing}: required field is missing",
        )


def _chain(gen: Load, depth: int) -> bytearray:
    """A Link holding a Link ... ``depth`` tables deep (built bottom-up)."""
    link = gen("corpus.verify.Link")
    builder = flatbuffers.Builder(0)
    inner = 0
    for level in reversed(range(depth)):
        link.LinkStart(builder)
        link.LinkAddDepth(builder, level)
        if inner:
            link.LinkAddNext(builder, inner)
        inner = link.LinkEnd(builder)
    builder.Finish(inner)
    return bytearray(builder.Output())


def test_nesting_deeper_than_the_limit_fails(gen: Load) -> None:
    verify = gen("corpus.verify.Checker_smf").verify_Link
    verify_buffer(_chain(gen, 64), verify)  # the root is level 1
    err = _fails(_chain(gen, 65), verify, r": tables nested deeper than 64 levels$")
    assert err.path == ["next"] * 64
    err = _fails(
        _chain(gen, 100), verify, r"^Link\.next\.next.*\.\.\.52 more\.\.\..*: tables nested"
    )
    assert len(str(err)) < 200  # the path is abridged
    _fails(_chain(gen, 10), verify, r"nested deeper than 5 levels$", max_depth=5)
    verify_buffer(_chain(gen, 100), verify, max_depth=100)


def _dag(gen: Load, fanout: int) -> bytearray:
    """Thing -> Peer -> [fanout x the same Thing -> Peer -> [fanout x the same Thing]]:
    a few hundred bytes that reach fanout^2 tables."""
    thing, peer = gen("Thing"), gen("Peer")
    builder = flatbuffers.Builder(0)
    thing.ThingStart(builder)
    shared = thing.ThingEnd(builder)
    for _ in range(2):
        peer.PeerStartThingsVector(builder, fanout)
        for _ in range(fanout):
            builder.PrependUOffsetTRelative(shared)
        things = builder.EndVector()
        peer.PeerStart(builder)
        peer.PeerAddThings(builder, things)
        shared_peer = peer.PeerEnd(builder)
        thing.ThingStart(builder)
        thing.ThingAddPeer(builder, shared_peer)
        shared = thing.ThingEnd(builder)
    builder.Finish(shared)
    return bytearray(builder.Output())


def test_shared_tables_count_towards_the_table_limit(gen: Load) -> None:
    verify = gen("Thing_smf").verify_Thing
    buf = _dag(gen, 40)  # 1 + 1 + 40 * (1 + 1 + 40) = 1682 tables reached
    # By default the limit scales with the buffer (at least 1024): sharing this heavy
    # in a buffer this small is refused unless the caller allows it explicitly.
    assert len(buf) < 1682
    _fails(buf, verify, rf"more than {max(1024, len(buf))} tables")
    _fails(buf, verify, r"more than 1000 tables", max_tables=1000)
    verify_buffer(buf, verify, max_tables=1682)
    _fails(buf, verify, r"more than 1681 tables", max_tables=1681)


def test_servers_take_the_class_defaults_of_the_limits(
    gen: Load, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = gen("Thing_smf")
    body = memoryview(_dag(gen, 40))
    smf_stubs.check_request(memoryview(_dag(gen, 10)), stub.verify_Thing)  # 1 + 1 + 10 * 12 tables
    monkeypatch.setattr(Verifier, "default_max_tables", 100)
    with pytest.raises(
        smf.BadRequest, match=r"^400: Thing\.peer\.things\[\d+\]\.peer\.things: more than 100"
    ):
        smf_stubs.check_request(body, stub.verify_Thing)
    monkeypatch.setattr(Verifier, "default_max_depth", 2)
    with pytest.raises(
        smf.BadRequest, match=r"^400: Thing\.peer\.things: tables nested deeper than 2"
    ):
        smf_stubs.check_request(body, stub.verify_Thing)


def test_verification_work_is_bounded_by_the_buffer_size(gen: Load) -> None:
    """A small body whose offsets share tables heavily is refused after O(size) work,
    not after a million table visits (which took about a second)."""
    verify = gen("Thing_smf").verify_Thing
    buf = _dag(gen, 200)  # 1 + 1 + 200 * 202 = 40,402 tables reached from ~2 KB
    _fails(buf, verify, rf"more than {max(1024, len(buf))} tables")


def test_backward_and_overlapping_offsets_do_not_hang(gen: Load) -> None:
    """Offsets are unsigned and relative to themselves: every one points forward, so no
    buffer makes a cycle. Offsets that would wrap around (-4 as unsigned) fail."""
    verify = gen("Thing_smf").verify_Thing
    buf = _dag(gen, 3)
    lay = Layout(buf)
    at = lay.field(lay.root, 6)  # Thing.peer
    lay.put32(at, -4)
    started = time.perf_counter()
    _fails(buf, verify, rf"^Thing\.peer: table offset at {at} points to \d+, past the end")
    # A table whose soffset is 0 is its own vtable: of size 0.
    buf = _dag(gen, 3)
    struct.pack_into("<i", buf, Layout(buf).root, 0)
    _fails(buf, verify, r"^Thing: vtable at offset \d+ has size 0")
    # Every element of a vector pointing at the vector's last slot, read as a table.
    buf = _dag(gen, 3)
    lay = Layout(buf)
    peer = lay.deref(lay.field(lay.root, 6))
    things = lay.deref(lay.field(peer, 6))
    last = things + 4 + 4 * 2
    for i in range(2):
        lay.put32(things + 4 + 4 * i, last - (things + 4 + 4 * i))
    with contextlib.suppress(VerificationError):
        Verifier(buf).root(verify)
        read_all(gen, "Thing", buf)
    assert time.perf_counter() - started < 0.5
    # The error above went through the vector loop: collecting it must be safe (an
    # iterator over a slice of the buffer there once made CPython 3.11's GC crash).
    gc.collect()


def test_nested_flatbuffer_is_verified(encoded: dict[str, bytes], nested_out: Path) -> None:
    buf = bytearray(encoded["sealed.json"])
    with imported_from(nested_out) as load:
        verify = load("corpus.nested.Sealer_smf").verify_Sealed
        verify_buffer(buf, verify)
        lay = Layout(buf)
        inner = lay.deref(lay.field(lay.root, 6)) + 4
        nested = Layout(buf[inner:])
        struct.pack_into("<i", buf, inner + nested.root, 1 << 20)  # the nested root's vtable
        _fails(buf, verify, r"^Sealed\.inner: vtable at offset")
        buf = bytearray(encoded["sealed.json"])
        lay.buf = buf
        lay.put32(inner - 4, 6)  # the nested buffer: 6 bytes
        _fails(buf, verify, r"^Sealed\.inner: a 6-byte buffer is not a FlatBuffer")


def test_a_kept_error_does_not_pin_the_buffer(figure: tuple[bytearray, Any, Layout]) -> None:
    """The server's receive buffer can only be resized once no view of it is alive."""
    buf, verify, lay = figure
    buf[lay.field(lay.root, 8)] = 9
    body = memoryview(buf)
    with pytest.raises(VerificationError) as caught:
        Verifier(body).root(verify)
    body.release()
    buf.append(0)  # BufferError if the error's frames still held a view
    assert "unknown union type 9" in str(caught.value)


def test_buffers_of_2_gib_are_refused() -> None:
    huge = mmap.mmap(-1, 2**31)  # never touched: no memory is used (closed when collected)
    with pytest.raises(VerificationError, match=r"^a 2147483648-byte buffer is larger than"):
        Verifier(memoryview(huge))


# ----------------------------------------------------------------------------- fuzzing

_MUTATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(0, 7)),
        st.tuples(
            st.just("set"), st.integers(0, 1 << 16), st.sampled_from([0, 1, 0x7F, 0x80, 0xFF])
        ),
        st.tuples(st.just("cut"), st.integers(0, 1 << 16), st.just(0)),
    ),
    min_size=1,
    max_size=4,
)


def _mutate(buf: bytes, mutations: list[tuple[str, int, int]]) -> bytearray:
    out = bytearray(buf)
    for kind, where, value in mutations:
        if not out:
            break
        at = where % len(out)
        if kind == "flip":
            out[at] ^= 1 << value
        elif kind == "set":
            out[at] = value
        else:
            del out[at:]
    return out


@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
def test_corrupted_buffers_fail_cleanly_or_read_safely(
    sample: Sample, encoded: dict[str, bytes], smfc_corpus: Path, nested_out: Path
) -> None:
    """Random bit flips, byte writes and truncations of a valid buffer: the verifier
    raises VerificationError and nothing else, and a buffer it passes reads without any
    exception through every accessor and the object API."""
    original = encoded[sample.data]
    outcome = {"passed": 0, "failed": 0}
    with generated(sample, smfc_corpus, nested_out) as load:
        verify = getattr(load(sample.stub), sample.verifier)

        @settings(
            max_examples=500,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(_MUTATIONS)
        def check(mutations: list[tuple[str, int, int]]) -> None:
            buf = memoryview(_mutate(original, mutations))
            try:
                Verifier(buf).root(verify)
            except VerificationError:
                outcome["failed"] += 1
                return
            outcome["passed"] += 1
            read_all(load, sample.root, buf)

        check()
    assert outcome["failed"] > 0 and outcome["passed"] > 0, outcome


def _general_path(stub: ModuleType) -> Callable[[str], Any]:
    """The stub module's verifiers with every ``verify_T`` replaced by ``_check_T``: the
    general path alone, no fast path anywhere (the reference the fast path must match),
    across the table modules the verifiers live in."""
    return general_path(stub).__getitem__


def _verdict(buf: bytes | bytearray, verify: Any) -> str | None:
    try:
        Verifier(buf).root(verify)
    except VerificationError as err:
        return str(err)
    return None


@pytest.mark.parametrize("writer", ["flatc", "smfc"])
@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
def test_fast_path_agrees_with_the_general_path_on_corrupted_buffers(
    sample: Sample, writer: str, encoded: dict[str, bytes], smfc_corpus: Path, nested_out: Path
) -> None:
    """The fast path (smfc's own layout first, any layout after, vectors of tables in one
    loop) passes exactly the buffers the general path passes and fails the others with
    the same message, on buffers flatc wrote (a Builder's layout) and smfc's encoder
    wrote (its own), corrupted at random."""
    with generated(sample, smfc_corpus, nested_out) as load:
        stub = load(sample.stub)
        fast = getattr(stub, sample.verifier)
        slow = _general_path(stub)(sample.verifier)
        original = encoded[sample.data]
        if writer == "smfc":
            table = _class(load, sample.root).GetRootAs(original, 0)
            original = bytes(_class(load, sample.root, "T").InitFromObj(table).Encode())
        assert _verdict(original, fast) is None

        @settings(
            max_examples=300,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(_MUTATIONS)
        def check(mutations: list[tuple[str, int, int]]) -> None:
            buf = bytes(_mutate(original, mutations))
            assert _verdict(buf, fast) == _verdict(buf, slow)

        check()


# ----------------------------------------------------------------------------- end to end


@contextlib.asynccontextmanager
async def serving(*services: Any) -> AsyncIterator[smf.Client]:
    server = smf.Server()
    for service in services:
        server.add_service(service)
    await server.start("127.0.0.1", 0)
    try:
        async with smf.Client("127.0.0.1", server.port) as client:
            yield client
    finally:
        await server.stop(grace=1.0)


def _storage(gen: Load, **options: Any) -> Any:
    stub = gen("smf_gen.demo.SmfStorage_smf")
    ResponseT = gen("smf_gen.demo.Response").ResponseT

    class Storage(stub.SmfStorage):  # type: ignore[misc]
        seen: list[bytes | None]

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.seen = []

        async def Get(self, request: Any, ctx: smf.CallContext) -> Any:
            self.seen.append(request.Name())
            return ResponseT(name=request.Name())

    return Storage(**options)


def _no_nul(gen: Load) -> bytes:
    buf = pack(gen("smf_gen.demo.Request").RequestT(name="payload"))
    lay = Layout(buf)
    string = lay.deref(lay.field(lay.root, 4))
    buf[string + 4 + lay.u32(string)] = ord("!")
    return bytes(buf)


async def test_server_answers_400_naming_the_fault(gen: Load) -> None:
    stub = gen("smf_gen.demo.SmfStorage_smf")
    RequestT = gen("smf_gen.demo.Request").RequestT
    impl = _storage(gen)
    assert impl.verify is True
    async with serving(impl) as client:
        storage = stub.SmfStorageClient(client)
        with pytest.raises(smf.BadRequest) as caught:
            await storage.Get(_no_nul(gen))
        assert caught.value.status == 400
        assert caught.value.message.startswith("Request.name: string at offset ")
        assert "is not NUL-terminated" in caught.value.message
        with pytest.raises(smf.BadRequest, match="not a FlatBuffer"):
            await storage.Get(b"\x01\x02\x03")
        with pytest.raises(smf.BadRequest, match="root offset 4294967295"):
            await client.call(stub.Get_WIRE_ID, b"\xff\xff\xff\xff" + bytes(12))
        # The connection is still usable, and the method never saw the bad bodies.
        assert (await storage.Get(RequestT(name="fine"))).Name() == b"fine"
    assert impl.seen == [b"fine"]


async def test_verify_false_lets_the_body_through(gen: Load) -> None:
    stub = gen("smf_gen.demo.SmfStorage_smf")
    impl = _storage(gen, verify=False)
    async with serving(impl) as client:
        reply = await stub.SmfStorageClient(client).Get(_no_nul(gen))
        assert reply.Name() == b"payload"
        # Only the root offset is checked then.
        with pytest.raises(smf.BadRequest, match="not a FlatBuffer"):
            await client.call(stub.Get_WIRE_ID, b"\xff\xff\xff\xff" + bytes(12))
    assert impl.seen == [b"payload"]


async def test_subclasses_without_super_init_verify(gen: Load) -> None:
    """A subclass whose __init__ does not call the base's still verifies (class default)."""
    stub = gen("smf_gen.demo.SmfStorage_smf")

    class Bare(stub.SmfStorage):  # type: ignore[misc]
        def __init__(self) -> None:
            self.calls = 0

        async def Get(self, request: Any, ctx: smf.CallContext) -> Any:
            self.calls += 1
            return request

    impl = Bare()
    async with serving(impl) as client:
        with pytest.raises(smf.BadRequest, match="NUL-terminated"):
            await stub.SmfStorageClient(client).Get(_no_nul(gen))
    assert impl.calls == 0


async def test_client_verifies_responses_when_asked(gen: Load) -> None:
    stub = gen("smf_gen.demo.SmfStorage_smf")
    corrupt = _no_nul(gen)  # a Request and a Response have the same layout

    class Liar(stub.SmfStorage):  # type: ignore[misc]
        async def Get(self, request: Any, ctx: smf.CallContext) -> Any:
            return corrupt

    RequestT = gen("smf_gen.demo.Request").RequestT
    async with serving(Liar()) as client:
        trusting = stub.SmfStorageClient(client)
        assert (await trusting.Get(RequestT(name="x"))).Name() == b"payload"
        checking = stub.SmfStorageClient(client, verify_responses=True)
        with pytest.raises(VerificationError, match=r"^Response\.name: .* NUL-terminated"):
            await checking.Get(RequestT(name="x"))


def test_method_names_the_verifier_uses_are_refused(tmp_path: Path) -> None:
    schema = tmp_path / "svc.fbs"
    schema.write_text("namespace v;\ntable T {}\nrpc_service S { verify(T): T; }\n")
    result = run_smfc("-o", tmp_path / "out", schema)
    assert result.code == 1
    assert "method verify: the name is taken by the generated classes" in result.err
