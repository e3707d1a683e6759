"""smfc's generated codecs against flatc's own, both ways, over every kind of field
(``schemas/codec.fbs``): property tests with hypothesis.

* smfc's ``Encode()`` -> flatc's Python classes (``flatc --python``, generated here) read
  the same message; the C++ reader (``flatc --json``) prints the same JSON as for the
  bytes flatc's Python object API packs; the generated verifier accepts them.
* ``flatbuffers.Builder`` bytes (flatc's object API ``Pack``) -> smfc's readers read the
  same message.
* Truncated and bit-flipped buffers: the verifier raises ``VerificationError`` or the
  readers read them; without the verifier the readers raise a bounded set of errors.
"""

from __future__ import annotations

import contextlib
import re
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import flatbuffers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smfc_testlib import SCHEMAS, imported_from, run_smfc

from smf.codec import DecodeError
from smf.verify import VerificationError, verify_buffer

pytest_plugins = ["smfc_testlib"]

SCHEMA = SCHEMAS / "codec.fbs"
ROOT = "codecprop.All"


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory, flatc_exe: str) -> Iterator[Any]:
    """(smfc's modules, flatc's modules): flatc's renamed to package ``flatc_codecprop``
    so both can be imported at once."""
    work = tmp_path_factory.mktemp("codec")
    ours = work / "ours"
    assert run_smfc("-o", ours, SCHEMA).code == 0
    theirs = work / "theirs"
    subprocess.run(
        [flatc_exe, "--python", "--gen-object-api", "--gen-all", "-o", str(theirs), str(SCHEMA)],
        check=True,
        capture_output=True,
    )
    (theirs / "codecprop").rename(theirs / "flatc_codecprop")
    for path in (theirs / "flatc_codecprop").glob("*.py"):
        text = re.sub(r"\bcodecprop\.", "flatc_codecprop.", path.read_text())
        path.write_text(text)
    with imported_from(ours) as load_ours, imported_from(theirs) as load_theirs:
        flatc_modules = {
            p.stem: load_theirs(f"flatc_codecprop.{p.stem}")
            for p in (theirs / "flatc_codecprop").glob("*.py")
            if p.stem != "__init__"
        }
        # flatc's object API uses names it never imports (union creators, nested T
        # classes): give every module every name its siblings define.
        names = {
            k: v for m in flatc_modules.values() for k, v in vars(m).items() if k[:1].isupper()
        }
        for module in flatc_modules.values():
            for k, v in names.items():
                vars(module).setdefault(k, v)
        yield _Side(load_ours, "codecprop"), _Side(load_theirs, "flatc_codecprop"), work


class _Side:
    def __init__(self, load: Callable[[str], ModuleType], package: str) -> None:
        self.load = load
        self.package = package

    def cls(self, name: str) -> Any:
        short = name.removesuffix("T")
        return getattr(self.load(f"{self.package}.{short}"), name)


# ----------------------------------------------------------------------------- messages


def _texts() -> st.SearchStrategy[str]:
    return st.text(max_size=12)


def _vec(elements: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | st.lists(elements, max_size=4)


def _ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
    if signed:
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return st.integers(0, 2**bits - 1)


f32 = st.floats(width=32, allow_nan=False)
f64 = st.floats(allow_nan=False)


@st.composite
def messages(draw: st.DrawFn, side: _Side) -> Any:
    """An ``AllT`` of smfc's object API with every field drawn."""
    c = side.cls
    inner = st.builds(c("InnerT"), a=_ints(8, True), b=f64)
    outer = st.builds(
        c("OuterT"),
        inner=inner,
        c=_ints(16, True),
        arr=st.lists(_ints(32, True), min_size=3, max_size=3),
        f=st.booleans(),
    )
    leaf = st.builds(c("LeafT"), name=st.none() | _texts(), values=_vec(f64), n=_ints(64, True))
    pick = draw(st.sampled_from([0, 1, 2]))
    value = None
    if pick == 1:
        value = c("AlphaT")(x=draw(_ints(32, True)))
    elif pick == 2:
        value = c("BetaT")(s=draw(_texts()))
    return c("AllT")(
        b=draw(st.booleans()),
        i8=draw(_ints(8, True)),
        u8=draw(_ints(8, False)),
        i16=draw(_ints(16, True)),
        u16=draw(_ints(16, False)),
        i32=draw(_ints(32, True)),
        u32=draw(_ints(32, False)),
        i64=draw(_ints(64, True)),
        u64=draw(_ints(64, False)),
        f32=draw(f32),
        f64=draw(f64),
        color=draw(st.sampled_from([0, 1, 5])),
        bits=draw(st.integers(0, 7)),
        optI=draw(st.none() | _ints(32, True)),
        optD=draw(st.none() | f64),
        optB=draw(st.none() | st.booleans()),
        text=draw(st.none() | _texts()),
        req=draw(_texts()),
        blob=draw(st.none() | st.binary(max_size=16)),
        sbytes=draw(st.none() | st.binary(max_size=8)),
        shorts=draw(_vec(_ints(16, True))),
        longs=draw(_vec(_ints(64, False))),
        doubles=draw(_vec(f64)),
        bools=draw(_vec(st.booleans())),
        colors=draw(_vec(st.sampled_from([0, 1, 5]))),
        names=draw(_vec(_texts())),
        outer=draw(st.none() | outer),
        outers=draw(_vec(outer)),
        leaf=draw(st.none() | leaf),
        leaves=draw(_vec(leaf)),
        pickType=pick,
        pick=value,
        ided=draw(st.none() | st.builds(c("IdedT"), a=st.none() | _texts(), b=_ints(32, True))),
    )


def norm(value: Any) -> Any:
    """An object-API value as plain data, whichever generator's classes hold it."""
    if hasattr(value, "tolist"):  # numpy arrays (flatc's object API)
        if value.dtype.kind == "i" and value.dtype.itemsize == 1:
            value = value.view("u1")  # [byte]: compare as the bytes on the wire
        return norm(value.tolist())
    if isinstance(value, str):
        return list(value.encode())
    if isinstance(value, bytes | bytearray | memoryview):
        return list(bytes(value))
    if isinstance(value, list | tuple):
        return [norm(v) for v in value]
    if isinstance(value, bool | int | float) or value is None:
        return value
    slots = getattr(type(value), "__slots__", None)
    attrs = slots if slots is not None else sorted(vars(value))
    return {"type": type(value).__name__, **{a: norm(getattr(value, a)) for a in attrs}}


def reread(side: _Side, buf: bytes | bytearray) -> Any:
    return side.cls("AllT").InitFromObj(side.cls("All").GetRootAs(buf, 0))


def builder_bytes(obj: Any) -> bytes:
    builder = flatbuffers.Builder(0)
    builder.Finish(obj.Pack(builder))
    return bytes(builder.Output())


SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _verify_all(ours: _Side) -> Any:
    return ours.load("codecprop.CodecProp_smf").verify_All


@SETTINGS
@given(data=st.data())
def test_flatc_reads_what_smfc_encodes(both: Any, data: st.DataObject) -> None:
    ours, theirs, _ = both
    message = data.draw(messages(ours))
    buf = bytes(message.Encode())
    verify_buffer(buf, _verify_all(ours))
    expected = norm(message)
    assert norm(reread(theirs, buf)) == expected
    assert norm(reread(ours, buf)) == expected


@SETTINGS
@given(data=st.data())
def test_smfc_reads_what_the_builder_packs(both: Any, data: st.DataObject) -> None:
    ours, theirs, _ = both
    message = data.draw(messages(ours))
    expected = norm(message)
    flatc_object = reread(theirs, bytes(message.Encode()))
    packed = builder_bytes(flatc_object)  # flatc's Python object API and Builder
    verify_buffer(packed, _verify_all(ours))
    assert norm(reread(ours, packed)) == expected
    ours_packed = builder_bytes(message)  # smfc's Pack into a Builder (nesting path)
    assert norm(reread(theirs, ours_packed)) == expected


def _json(flatc: str, work: Path, buf: bytes, name: str) -> Any:
    path = work / f"{name}.bin"
    path.write_bytes(buf)
    subprocess.run(
        [
            flatc,
            "--json",
            "--strict-json",
            "--raw-binary",
            "--root-type",
            ROOT,
            "-o",
            str(work),
            str(SCHEMA),
            "--",
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    return (work / f"{name}.json").read_text()  # text: flatc prints inf, which JSON lacks


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_cpp_reader_sees_the_same_message(both: Any, data: st.DataObject, flatc_exe: str) -> None:
    """flatc's C++ reader (which verifies first) prints the same JSON for smfc's bytes as
    for the bytes flatc's own Python object API packs."""
    ours, theirs, work = both
    message = data.draw(messages(ours))
    buf = bytes(message.Encode())
    reference = builder_bytes(reread(theirs, buf))
    assert _json(flatc_exe, work, buf, "ours") == _json(flatc_exe, work, reference, "theirs")


# ----------------------------------------------------------------------------- hostile

READ_ERRORS = (struct.error, DecodeError, IndexError, UnicodeDecodeError)


def _read_or_fail(ours: _Side, buf: bytes) -> None:
    """Verified: must read without error. Not: read, or raise one of READ_ERRORS."""
    try:
        verify_buffer(buf, _verify_all(ours))
    except VerificationError:
        with contextlib.suppress(*READ_ERRORS):
            reread(ours, buf)
        return
    reread(ours, buf)


@SETTINGS
@given(data=st.data())
def test_truncated_and_flipped_buffers_fail_clearly(both: Any, data: st.DataObject) -> None:
    ours, _, _ = both
    buf = bytes(data.draw(messages(ours)).Encode())
    cut = data.draw(st.integers(0, len(buf)))
    _read_or_fail(ours, buf[:cut])
    flipped = bytearray(buf)
    for at in data.draw(st.lists(st.integers(0, len(buf) - 1), min_size=1, max_size=4)):
        flipped[at] ^= 1 << data.draw(st.integers(0, 7))
    _read_or_fail(ours, bytes(flipped))


def test_required_field_missing_fails_at_encode(both: Any) -> None:
    ours, _, _ = both
    with pytest.raises(ValueError, match=r"All\.req is required"):
        ours.cls("AllT")().Encode()


def test_identifier_and_size_prefix(both: Any, flatc_exe: str) -> None:
    """The schema's file_identifier follows the root offset; ``size_prefixed=True`` puts
    the size first. flatc's Python classes and the C++ reader read both."""
    ours, theirs, work = both
    message = ours.cls("AllT")(req="r", text="identified", leaf=ours.cls("LeafT")(n=5))
    plain = bytes(message.Encode())
    assert plain[4:8] == b"CDPR"
    assert ours.cls("All").AllBufferHasIdentifier(plain, 0)
    assert theirs.cls("All").AllBufferHasIdentifier(plain, 0)
    prefixed = bytes(message.Encode(size_prefixed=True))
    assert struct.unpack_from("<I", prefixed)[0] == len(prefixed) - 4
    assert prefixed[8:12] == b"CDPR"
    expected = norm(message)
    assert norm(ours.cls("AllT").InitFromObj(ours.cls("All").GetRootAs(prefixed, 4))) == expected
    assert (
        norm(theirs.cls("AllT").InitFromObj(theirs.cls("All").GetRootAs(prefixed, 4))) == expected
    )
    reference = _json(flatc_exe, work, plain, "plain")
    (work / "prefixed.bin").write_bytes(prefixed)
    subprocess.run(
        [
            flatc_exe,
            "--json",
            "--strict-json",
            "--size-prefixed",
            "-o",
            str(work),
            str(SCHEMA),
            "--",
            str(work / "prefixed.bin"),
        ],
        check=True,
        capture_output=True,
    )
    assert (work / "prefixed.json").read_text() == reference
