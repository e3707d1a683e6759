"""What smfc writes: typed (mypy --strict, stubtest), lint-clean (ruff), importable, and
correct (round trips through flatc, the encoding helpers, the shipped example stubs)."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import flatbuffers
import pytest
from smfc_testlib import (
    DATA,
    HERE,
    IDL,
    REPO,
    SCHEMAS,
    flatc_binary,
    flatc_json,
    imported_from,
    run_smfc,
    snapshot,
    tool,
)

import smf
import smf.stubs as smf_stubs
import smf.wire
from smf.codec import UnionValue

pytest_plugins = ["smfc_testlib"]  # its fixtures: smfc_corpus, flatc_exe

MYPY_CONFIG = """\
[mypy]
strict = True
python_version = 3.11
cache_dir = {cache}

# The runtime is checked by its own job; here it is a library, as once installed.
[mypy-smf.*]
follow_imports = silent
"""


def _mypy(paths: list[Path], cwd: Path, mypypath: str | None) -> subprocess.CompletedProcess[str]:
    config = cwd / "mypy.ini"
    config.write_text(MYPY_CONFIG.format(cache=cwd / ".mypy_cache"))
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    if mypypath is not None:
        env["MYPYPATH"] = mypypath
    return subprocess.run(
        [*tool("mypy"), "--config-file", str(config), "--no-error-summary", *map(str, paths)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def mypy_corpus(smfc_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """mypy --strict over the generated corpus plus typing_usage.py, run once (it is slow)."""
    work = tmp_path_factory.mktemp("mypy")
    tree = work / "tree"
    shutil.copytree(smfc_corpus, tree)
    shutil.copy(HERE / "typing_usage.py", tree / "typing_usage.py")
    proc = _mypy([tree], work, str(REPO))
    return tree, proc.stdout + proc.stderr


def test_mypy_strict_passes_on_generated_code(mypy_corpus: tuple[Path, str]) -> None:
    tree, output = mypy_corpus
    outside = [line for line in output.splitlines() if not line.startswith("typing_usage.py")]
    outside = [line for line in outside if "tree/typing_usage.py" not in line]
    assert not outside, "\n".join(outside)
    assert (tree / "corpus/geo/deep/Geometry_smf.py").is_file()


def test_mypy_types_of_user_code_are_precise(mypy_corpus: tuple[Path, str]) -> None:
    _, output = mypy_corpus
    expected: set[tuple[int, str]] = set()
    for number, line in enumerate((HERE / "typing_usage.py").read_text().splitlines(), 1):
        match = re.search(r"# E: ([\w-]+)$", line)
        if match:
            expected.add((number, match.group(1)))
    reported: set[tuple[int, str]] = set()
    for line in output.splitlines():
        match = re.match(r".*typing_usage\.py:(\d+): error: .*\[([\w-]+)\]$", line)
        if match:
            reported.add((int(match.group(1)), match.group(2)))
    assert reported == expected, output


def test_mypy_strict_passes_on_rpc_fbs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_smfc("-o", out, IDL / "rpc.fbs").code == 0
    proc = _mypy([out], tmp_path, str(REPO))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_passes_on_generated_code(smfc_corpus: Path) -> None:
    config = str(REPO / "pyproject.toml")
    for args in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
        proc = subprocess.run(
            [*tool("ruff"), *args, "--config", config, "."],
            cwd=smfc_corpus,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generated_modules_are_typed_not_stubbed(smfc_corpus: Path) -> None:
    """smfc writes typed modules (no .pyi, no ``# mypy: ignore-errors``), and ``Any`` only
    where the value is a numpy array, a fixed-size array or a ``flatbuffers.Builder``."""
    assert not list(smfc_corpus.rglob("*.pyi"))
    allowed = re.compile(
        r"AsNumpy\(self\) -> Any|def \w+\(self, j: int \| None = None\) -> Any|"
        r"builder: Any|table: Any|_Leaves\(self\) -> tuple\[Any, \.\.\.\]"
    )
    for module in smfc_corpus.rglob("*.py"):
        text = module.read_text()
        assert "ignore-errors" not in text, module
        for line in text.splitlines():
            if "Any" in line and line.lstrip().startswith("def "):
                assert allowed.search(line), f"{module.name}: {line}"


# ----------------------------------------------------------------------------- runtime


def test_every_module_imports(smfc_corpus: Path) -> None:
    modules = sorted(
        p.relative_to(smfc_corpus)
        .with_suffix("")
        .as_posix()
        .replace("/", ".")
        .removesuffix(".__init__")
        for p in smfc_corpus.rglob("*.py")
    )
    with imported_from(smfc_corpus) as load:
        for name in modules:
            assert isinstance(load(name), ModuleType)


def test_every_module_imports_first(smfc_corpus: Path) -> None:
    """Each module imported first, in a fresh set of modules: tables that hold each other
    (``Thing`` and ``Peer``; ``corpus.rec``'s cycle through two namespaces and a union)
    import each other's verifiers, so every order of loading them must work."""
    script = """
import importlib, sys
names = sys.argv[1:]
for name in names:
    for loaded in [m for m in sys.modules if m.split(".")[0] in {n.split(".")[0] for n in names}]:
        del sys.modules[loaded]
    importlib.import_module(name)
"""
    modules = sorted(
        p.relative_to(smfc_corpus).with_suffix("").as_posix().replace("/", ".")
        for p in smfc_corpus.rglob("*.py")
        if p.name != "__init__.py"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *modules],
        cwd=smfc_corpus,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(smfc_corpus), str(REPO)])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


SAMPLES = [
    # (schema, data, root type, module of the root type)
    (SCHEMAS / "geo.fbs", "figure.json", "corpus.geo.deep.Figure", ("--root-type",)),
    (SCHEMAS / "multi.fbs", "thing.json", "Thing", ()),
    (SCHEMAS / "tables_only.fbs", "record.json", "corpus.plain.Record", ("--root-type",)),
    (IDL / "demo.fbs", "request.json", "smf_gen.demo.Request", ("--root-type",)),
]


def _root_class(load: Callable[[str], ModuleType], qualified: str, suffix: str = "") -> Any:
    return getattr(load(qualified), qualified.rpartition(".")[2] + suffix)


@pytest.mark.parametrize(("schema", "data", "root", "extra"), SAMPLES, ids=[s[1] for s in SAMPLES])
def test_object_api_round_trip_against_flatc(
    schema: Path,
    data: str,
    root: str,
    extra: tuple[str, ...],
    smfc_corpus: Path,
    flatc_exe: str,
    tmp_path: Path,
) -> None:
    """flatc encodes JSON; the generated tables read it (over a memoryview, as the server
    does), the object API unpacks and repacks it; flatc decodes both to the same JSON."""
    flags = [*extra, root] if extra else []
    original = flatc_binary(flatc_exe, schema, DATA / data, tmp_path / "bin", *flags)
    with imported_from(smfc_corpus) as load:
        table = _root_class(load, root).GetRootAs(memoryview(bytearray(original)), 0)
        obj = _root_class(load, root, "T").InitFromObj(table)
        builder = flatbuffers.Builder(0)
        builder.Finish(obj.Pack(builder))
        repacked = bytes(builder.Output())
        encoded = bytes(obj.Encode())
    before = json.loads(flatc_json(flatc_exe, schema, original, root, tmp_path / "a"))
    after = json.loads(flatc_json(flatc_exe, schema, repacked, root, tmp_path / "b"))
    fast = json.loads(flatc_json(flatc_exe, schema, encoded, root, tmp_path / "c"))
    assert after == before
    assert fast == before
    assert before != {}


# The annotations must be true: call every accessor of the samples and check the value.


class _StubTypes:
    """Reads a generated module: each class's methods and the names it imports."""

    def __init__(self, stub: Path, load: Callable[[str], ModuleType], module: ModuleType) -> None:
        tree = ast.parse(stub.read_text())
        self.load = load
        self.module = module
        self.imports: dict[str, tuple[str, str]] = {}
        self.classes: dict[str, dict[str, ast.FunctionDef]] = {}
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module != "typing":
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (node.module, alias.name)
            if isinstance(node, ast.ClassDef):
                self.classes[node.name] = {
                    f.name: f for f in node.body if isinstance(f, ast.FunctionDef)
                }

    def resolve(self, name: str) -> type | None:
        builtin = {
            "int": int,
            "float": float,
            "bool": bool,
            "bytes": bytes,
            "str": str,
            "memoryview": memoryview,
        }
        if name in builtin:
            return builtin[name]
        if name == "None":
            return type(None)
        if name in self.imports:
            module, attr = self.imports[name]
            value: type = getattr(self.load(module), attr)
            return value
        value = getattr(self.module, name)
        assert isinstance(value, type)
        return value

    def check(self, value: object, annotation: str, where: str) -> None:
        if annotation == "Any":
            return
        options = [self.resolve(part.strip()) for part in annotation.split("|")]
        if isinstance(value, bool):  # bool is an int, but int is not a bool
            ok = bool in options
        else:
            ok = any(t is not None and isinstance(value, t) for t in options)
        assert ok, f"{where} returned {value!r}, annotated {annotation}"


def _check_table(stubs_of: Callable[[object], _StubTypes], table: object, seen: set[int]) -> int:
    """Call the accessors of ``table`` (recursing into tables it returns); count the calls."""
    if id(table) in seen:
        return 0
    seen.add(id(table))
    types = stubs_of(table)
    calls = 0
    for name, func in types.classes[type(table).__name__].items():
        params = [a.arg for a in func.args.args[1:]]
        returns = ast.unparse(func.returns) if func.returns else "Any"
        method = getattr(table, name)
        if returns == "Any":
            continue  # numpy views (numpy is optional) and fixed-size arrays
        if params == [] and not name.startswith("GetRootAs"):
            results = [method()]
        elif params == ["j"] and hasattr(table, name + "Length"):
            results = [method(j) for j in range(getattr(table, name + "Length")())]
        else:
            continue
        for result in results:
            calls += 1
            types.check(result, returns, f"{type(table).__name__}.{name}")
            if (
                result is not None
                and hasattr(result, "_buf")
                and not isinstance(result, UnionValue)
            ):
                calls += _check_table(stubs_of, result, seen)
    return calls


@pytest.mark.parametrize(("schema", "data", "root", "extra"), SAMPLES, ids=[s[1] for s in SAMPLES])
def test_stub_types_are_true(
    schema: Path,
    data: str,
    root: str,
    extra: tuple[str, ...],
    smfc_corpus: Path,
    flatc_exe: str,
    tmp_path: Path,
) -> None:
    flags = [*extra, root] if extra else []
    buf = flatc_binary(flatc_exe, schema, DATA / data, tmp_path, *flags)
    with imported_from(smfc_corpus) as load:

        def stubs_of(table: object) -> _StubTypes:
            module = sys.modules[type(table).__module__]
            assert module.__file__ is not None
            return _StubTypes(Path(module.__file__), load, module)

        table = _root_class(load, root).GetRootAs(buf, 0)
        assert _check_table(stubs_of, table, set()) >= 1


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def demo(smfc_corpus: Path) -> Any:
    with imported_from(smfc_corpus) as load:
        yield load("smf_gen.demo.SmfStorage_smf"), load


def test_encode_writes_one_bytearray_of_the_exact_size(demo: Any) -> None:
    _, load = demo
    response_t = load("smf_gen.demo.Response").ResponseT
    encoded = response_t(name="exact").Encode()
    assert isinstance(encoded, bytearray)
    assert len(encoded) == 4 + 8 + 6 + 2 + 4 + 6 + 2  # root, table, vtable, pad, string, pad
    builder = flatbuffers.Builder(0)
    builder.Finish(response_t(name="exact").Pack(builder))
    reread = load("smf_gen.demo.Response").Response.GetRootAs(bytes(builder.Output()))
    assert response_t.InitFromObj(reread).Encode() == encoded


def test_encoders_accept_every_form(demo: Any) -> None:
    stub, load = demo
    Response = load("smf_gen.demo.Response").Response
    ResponseT = load("smf_gen.demo.Response").ResponseT
    packed = ResponseT(name="x").Encode()
    raw = bytearray(packed)
    assert stub._encode_Response(raw) is raw  # finished buffers are sent as they are
    assert bytes(stub._encode_Response(ResponseT(name="x"))) == bytes(packed)
    # A table that is the root of its buffer is forwarded without a copy.
    table = Response.GetRootAs(memoryview(raw), 0)
    forwarded = stub._encode_Response(table)
    assert forwarded.obj is raw
    # A table elsewhere in a buffer is repacked through the object API.
    shifted = bytearray(8) + raw
    inner = Response.GetRootAs(shifted, 8)
    assert bytes(stub._encode_Response(inner)) == bytes(packed)
    with pytest.raises(TypeError, match="expected Response, ResponseT or bytes, got str"):
        stub._encode_Response("x")


def test_check_root_refuses_what_cannot_be_a_flatbuffer(demo: Any) -> None:
    stub, _ = demo
    with pytest.raises(smf.BadRequest):
        smf_stubs.check_request(memoryview(b"\x01\x02\x03"), None)
    with pytest.raises(smf.BadRequest):
        smf_stubs.check_request(memoryview(b"\xff\x00\x00\x00" + bytes(8)), None)
    body = memoryview(bytes(stub.ResponseT(name="ok").Encode()))
    assert smf_stubs.check_request(body, None) is body


def test_services_plug_into_the_router(smfc_corpus: Path) -> None:
    with imported_from(smfc_corpus) as load:
        geometry = load("corpus.geo.deep.Geometry_smf")
        other = load("corpus.other.Geometry_smf")
        shapes = load("corpus.geo.deep.Shapes_smf")
        router = smf.ServiceRouter()
        for module in (geometry, other, shapes):
            service = getattr(module, module.SERVICE_NAME)()
            assert service.service_name == module.SERVICE_NAME
            router.add_service(service)
        assert geometry.SERVICE_ID == other.SERVICE_ID  # same bare name
        assert router.get(geometry.Draw_WIRE_ID) is not None
        assert router.get(other.Annotate_WIRE_ID) is not None
        assert router.get(shapes.Area_WIRE_ID) is not None
        assert geometry.METHOD_NAMES[geometry.Draw_WIRE_ID] == "Geometry.Draw"


# ----------------------------------------------------------------------------- shipped files


def test_example_stubs_are_up_to_date(tmp_path: Path) -> None:
    """examples/demo/generated is ``smfc -o examples/demo/generated idl/demo.fbs``
    (with the binary schema, so ``smf list``/``smf call`` work against the demo server)."""
    shipped = REPO / "examples" / "demo" / "generated"
    result = run_smfc("-o", tmp_path, IDL / "demo.fbs")
    assert result.code == 0, result.err
    assert snapshot(shipped) == snapshot(tmp_path), (
        "stale: run smfc -o examples/demo/generated idl/demo.fbs"
    )


def test_smf_rpc_package_is_up_to_date(tmp_path: Path) -> None:
    """smf_rpc/ (the runtime's own wire types and built-in services) is
    ``smfc -o . idl/rpc.fbs idl/health.fbs idl/reflection.fbs``."""
    schemas = [IDL / "rpc.fbs", IDL / "health.fbs", IDL / "reflection.fbs"]
    result = run_smfc("-o", tmp_path, *schemas)
    assert result.code == 0, result.err
    assert snapshot(REPO / "smf_rpc") == snapshot(tmp_path / "smf_rpc"), (
        "stale: run smfc -o . idl/rpc.fbs idl/health.fbs idl/reflection.fbs"
    )


def _load_file(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rpc_fbs_header_is_the_wire_header(tmp_path: Path) -> None:
    assert run_smfc("-o", tmp_path, IDL / "rpc.fbs").code == 0
    header = _load_file(tmp_path / "smf_rpc" / "header.py", "_smfc_rpc_header")
    assert header.header.SizeOf() == smf.wire.HEADER_SIZE == 16
    builder = flatbuffers.Builder(0)
    builder.Finish(header.CreateHeader(builder, 3, 1, 0xBEEF, 60, 2292149667, 1792279101))
    buf = builder.Output()
    struct_bytes = bytes(buf[-16:])
    assert struct_bytes == smf.wire.HEADER.pack(3, 1, 0xBEEF, 60, 2292149667, 1792279101)
    flags = _load_file(tmp_path / "smf_rpc" / "header_bit_flags.py", "_smfc_rpc_flags")
    assert flags.header_bit_flags.has_payload_headers == smf.wire.FLAG_PAYLOAD_HEADERS


def test_rpc_fbs_describes_the_runtimes_payload_headers(flatc_exe: str, tmp_path: Path) -> None:
    headers = pytest.importorskip("smf.headers")
    prefixed = headers.encode({"b": "2", "a": "1"})
    decoded = json.loads(
        flatc_json(flatc_exe, IDL / "rpc.fbs", prefixed[4:], "smf_rpc.payload_headers", tmp_path)
    )
    assert decoded == {"dynamic_headers": [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}]}


def test_idl_demo_is_the_wire_md_schema(smfc_corpus: Path) -> None:
    with imported_from(smfc_corpus) as load:
        stub = load("smf_gen.demo.SmfStorage_smf")
        assert stub.SERVICE_ID == 212494116
        assert stub.Get_WIRE_ID == 1792279101
        assert stub.Put_METHOD_ID == 4204284524
