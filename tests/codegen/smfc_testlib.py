"""Helpers of the smfc tests: the corpus, running smfc, importing generated code without
leaking it into other tests, and flatc as the encoding/decoding oracle.

Test modules load its fixtures with ``pytest_plugins``; they have imported it by then, so
its asserts are left as they are (PYTEST_DONT_REWRITE).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from smfc.cli import main as smfc_main
from smfc.flatc import find_flatc

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCHEMAS = HERE / "schemas"
GOLDEN = HERE / "golden"
DATA = SCHEMAS / "data"
IDL = REPO / "idl"

# The shipped demo stubs are the demo case's golden copy (one copy, not two).
GOLDEN_DIRS: dict[str, Path] = {"demo": REPO / "examples" / "demo" / "generated"}

# name -> (schemas, include dirs): each is one smfc run with a golden copy of its output
# in GOLDEN_DIRS[name], else GOLDEN / name.
CASES: dict[str, tuple[list[Path], list[Path]]] = {
    "demo": ([IDL / "demo.fbs"], []),
    "rpc": ([IDL / "rpc.fbs"], []),
    "geo": ([SCHEMAS / "geo.fbs"], [SCHEMAS]),
    "multi": ([SCHEMAS / "multi.fbs"], [SCHEMAS]),
    "tables_only": ([SCHEMAS / "tables_only.fbs"], [SCHEMAS]),
    "long_names": ([SCHEMAS / "long_names.fbs"], []),
}

# Everything but rpc.fbs (its namespace, smf, would shadow the runtime) in one run.
CORPUS_SCHEMAS = [
    SCHEMAS / "geo.fbs",
    SCHEMAS / "multi.fbs",
    SCHEMAS / "tables_only.fbs",
    SCHEMAS / "long_names.fbs",
    SCHEMAS / "verify.fbs",
    SCHEMAS / "recursive.fbs",
    SCHEMAS / "codec.fbs",
    IDL / "demo.fbs",
]


@dataclass
class Run:
    code: int
    out: str
    err: str


def run_smfc(*args: str | Path) -> Run:
    """``smfc ARGS`` in-process, with its exit code and output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = smfc_main([str(a) for a in args])
    return Run(code, out.getvalue(), err.getvalue())


def smfc_args(schemas: list[Path], includes: list[Path], out: Path) -> list[str | Path]:
    args: list[str | Path] = ["-o", out]
    for directory in includes:
        args += ["-I", directory]
    return [*args, *schemas]


def generate_case(name: str, out: Path) -> Path:
    schemas, includes = CASES[name]
    result = run_smfc(*smfc_args(schemas, includes, out))
    assert result.code == 0, result.err
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative POSIX path -> content)."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@contextlib.contextmanager
def imported_from(root: Path) -> Iterator[Callable[[str], ModuleType]]:
    """``import_module`` for code generated under ``root``; afterwards the modules are
    forgotten, so another test can import the same names from elsewhere."""
    before = set(sys.modules)
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(root))
        for name in set(sys.modules) - before:
            if _under(sys.modules[name], root):
                del sys.modules[name]


def _under(module: ModuleType, root: Path) -> bool:
    file = getattr(module, "__file__", None)
    if file:
        return Path(file).is_relative_to(root)
    paths = getattr(module, "__path__", None) or []
    return any(str(p).startswith(str(root)) for p in paths)


def flatc_binary(flatc_exe: str, schema: Path, json_file: Path, out: Path, *extra: str) -> bytes:
    """The oracle's encoding: ``flatc -b`` of a JSON document."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [flatc_exe, "-b", "-I", str(SCHEMAS), *extra, "-o", str(out), str(schema), str(json_file)],
        check=True,
        capture_output=True,
    )
    (binary,) = out.glob(json_file.stem + ".*")  # .bin, or the schema's file_extension
    return binary.read_bytes()


def flatc_json(flatc_exe: str, schema: Path, data: bytes, root_type: str, out: Path) -> str:
    """The oracle's decoding: ``flatc --json --raw-binary`` of a buffer."""
    out.mkdir(parents=True, exist_ok=True)
    binary = out / "message.bin"
    binary.write_bytes(data)
    subprocess.run(
        [
            flatc_exe,
            "--json",
            "--strict-json",
            "--raw-binary",
            "--defaults-json",
            "--root-type",
            root_type,
            "-I",
            str(SCHEMAS),
            "-o",
            str(out),
            str(schema),
            "--",
            str(binary),
        ],
        check=True,
        capture_output=True,
    )
    return (out / "message.json").read_text()


def tool(name: str) -> list[str]:
    """How to run a dev tool of this venv (``python -m name``)."""
    return [sys.executable, "-m", name]


def copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


# Fixtures, loaded by each test module with pytest_plugins (a conftest.py here would shadow
# tests/conftest.py, which other test modules import by name). The corpus is made once.


@pytest.fixture(scope="session")
def flatc_exe() -> str:
    return find_flatc()


@pytest.fixture(scope="session")
def smfc_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole corpus generated in one smfc run (tests must not modify it)."""
    out = tmp_path_factory.mktemp("corpus") / "out"
    result = run_smfc(*smfc_args(CORPUS_SCHEMAS, [SCHEMAS], out))
    assert result.code == 0, result.err
    return out
