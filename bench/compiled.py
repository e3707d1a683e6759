"""The generated codec compiled with mypyc, against the same modules as pure Python.

Optional, never a requirement: nothing in smf or smfc depends on it. Run from the
repository root (needs mypyc, which ships with mypy, a C compiler and Python's headers;
without them it prints why and exits 0)::

    python bench/compiled.py               # ~75 s on 2 cores: markdown tables on stdout
    python bench/compiled.py --quick       # tiny counts, demo schema only (smoke test)
    python bench/compiled.py --no-percall  # codec rows only

bench/codec.py generates smfc's modules for ``idl/demo.fbs``, ``idl/broker.fbs`` and its
Tree schema into a temporary directory (with flatc's, used here only to pack the Tree
through a ``flatbuffers.Builder`` for the verifier row). This script copies smfc's modules
for the three benchmark messages (``smf_gen.demo``: Request, Response and the
SmfStorage stubs; ``benchtree``: Child, Node, Tree and the TreeService stubs; ``broker``:
LogEntry, AppendRequest, AppendResponse, AppendBatch) as packages ``c_smf_gen``,
``c_benchtree`` and ``c_broker``, compiles that copy with mypyc (``opt_level=3``) and
times both in one process, interleaved, the best of ``--repeats`` (µs per message): the
**encode**, **read** and object-API **decode + encode** rows of bench/codec.py (its
own row builders, run once against each copy) and the generated **verifier**. Every
encode of the compiled copy is checked byte for byte against the pure one, every read
for the same values.

The generated code does not compile as it is; before compiling, the copy gets two
workarounds, both printed with the table (the pure copy is smfc's output untouched):

* ``cls.__new__(cls)`` in the object API's ``InitFromBuf``/``InitFromObj`` becomes
  ``cls()`` (every ``__init__`` argument has a default; ``_UnPackAt`` then sets every
  attribute): mypyc stops with an internal error on ``cls.__new__`` (every run first
  probes the untouched copy, mypyc's IR step only, and prints what it says);
* the classes of the ``*_smf`` stub modules get
  ``@mypyc_attr(allow_interpreted_subclasses=True)``: compiled classes are native, and a
  service is used by subclassing its base class (``interpreted classes cannot inherit
  from compiled``).

The stub rows (``--no-percall`` leaves them out): bench/percall.py's demo-stub rows
(socket-free server and client per call, each run a fresh process pinned to one CPU)
with the pure modules and with the compiled ones, alternating, the median of
``--percall-repeats`` runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from functools import partial
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import codec, percall  # noqa: E402

PACKAGES = ("smf_gen", "benchtree", "broker")
PREFIX = "c_"
DEMO = ("smf_gen/demo/Request", "smf_gen/demo/Response", "smf_gen/demo/SmfStorage_smf")
TREE = ("benchtree/Child", "benchtree/Node", "benchtree/Tree", "benchtree/TreeService_smf")
BROKER = ("broker/LogEntry", "broker/AppendRequest", "broker/AppendResponse", "broker/AppendBatch")
SERVICE_MODULE = "smf_gen.demo.SmfStorage_smf"

BUILD = """\
import sys
from mypyc.build import mypycify
files = sys.argv[2:]
if sys.argv[1] == "probe":  # IR and C only: mypyc's own errors, no C compiler
    mypycify(files, opt_level="3")
else:
    from setuptools import setup
    setup(
        name="smf_bench_compiled",
        ext_modules=mypycify(files, opt_level="3"),
        script_args=["build_ext", "--inplace"],
    )
"""


# ----------------------------------------------------------------------------- toolchain


def missing_toolchain() -> str | None:
    """Why mypyc cannot build here, or None."""
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "mypyc is not installed (it ships with mypy: pip install mypy)"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(os.environ.get("CC", cc).split()[0]) is None:
        return f"no C compiler ({cc!r} not found on PATH)"
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        return f"no Python headers ({include} is missing: install python3-dev)"
    return None


def mypy_version() -> str:
    from mypy.version import __version__

    return str(__version__)


# ----------------------------------------------------------------------------- the copy


def copy_renamed(ours: Path, dest: Path) -> None:
    """smfc's packages from ``ours`` into ``dest`` as ``c_<package>``, imports renamed."""
    for package in PACKAGES:
        shutil.copytree(ours / package, dest / (PREFIX + package))
    for path in dest.rglob("*.py"):
        text = re.sub(
            rf"^(\s*from\s+)({'|'.join(PACKAGES)})\.",
            rf"\1{PREFIX}\2.",
            path.read_text(),
            flags=re.M,
        )
        path.write_text(text)


WORKAROUNDS = (
    "object API: cls.__new__(cls) -> cls() (mypyc internal error on cls.__new__)",
    "*_smf stubs: @mypyc_attr(allow_interpreted_subclasses=True) on each class "
    "(services are subclassed by interpreted code)",
)


def apply_workarounds(dest: Path, files: list[str]) -> None:
    for name in files:
        path = dest / name
        text = path.read_text().replace("cls.__new__(cls)", "cls()")
        if name.endswith("_smf.py"):
            text = text.replace(
                "from __future__ import annotations\n",
                "from __future__ import annotations\n\nfrom mypy_extensions import mypyc_attr\n",
                1,
            )
            text = re.sub(
                r"^class ",
                "@mypyc_attr(allow_interpreted_subclasses=True)\nclass ",
                text,
                flags=re.M,
            )
        path.write_text(text)


def _mypyc(mode: str, cwd: Path, files: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BUILD, mode, *files],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def _error_lines(out: str) -> str:
    """mypyc's own messages (``file:line: ...``), not the traceback around them."""
    lines = [line for line in out.splitlines() if re.match(r"^\S+\.py:\d+: ", line)]
    return "\n".join(lines[:6]) or out.strip()[-1500:]


def probe_as_generated(ours: Path, work: Path, files: list[str]) -> str | None:
    """mypyc on smfc's output unchanged (renamed only): None, or mypyc's error."""
    dest = work / "probe"
    copy_renamed(ours, dest)
    out = _mypyc("probe", dest, files)
    return None if out.returncode == 0 else _error_lines(out.stdout + out.stderr)


def compile_copy(ours: Path, dest: Path, files: list[str]) -> float:
    copy_renamed(ours, dest)
    apply_workarounds(dest, files)
    start = time.perf_counter()
    out = _mypyc("build", dest, files)
    if out.returncode != 0:
        raise SystemExit(
            f"mypyc failed, even with the workarounds:\n{_error_lines(out.stdout + out.stderr)}"
        )
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- codec rows


class CompiledView(codec.Generated):
    """bench/codec.py's row builders, pointed at the compiled ``c_*`` packages."""

    def __init__(self, pure: codec.Generated) -> None:  # nothing to build: ``pure`` did
        self.pb = pure.pb

    def ours(self, qualified: str, suffix: str = "") -> Any:  # type: ignore[override]
        return codec._cls(PREFIX + qualified, suffix)


def _round(reader: Any, obj: Any, buf: bytes) -> dict[str, Callable[[], object]]:
    return {"smfc": lambda: obj.InitFromObj(reader.GetRootAs(buf, 0)).Encode()}


def _extra_rows(g: codec.Generated, buffers: dict[str, tuple[str, bytes]]) -> list[codec.Row]:
    """The verifier per message, and object-API decode + encode where codec.py has none;
    ``buffers``: qualified table name -> (row label, a pure-encoded message)."""
    from smf.verify import verify_buffer

    rows = []
    for qualified, (label, buf) in buffers.items():
        reader, obj = g.ours(qualified), g.ours(qualified, "T")
        module = importlib.import_module(reader.__module__)
        verify = getattr(module, "verify_" + qualified.rpartition(".")[2])
        if qualified != "benchtree.Tree":
            rows.append(codec.Row(label, "decode + encode (object API)", _round(reader, obj, buf)))
        rows.append(codec.Row(label, "verify", {"smfc": partial(verify_buffer, buf, verify)}))
    return rows


def _builder_tree(g: codec.Generated, buf: bytes) -> bytes:
    """The Tree as a ``flatbuffers.Builder`` packs it (flatc's object API)."""
    import flatbuffers

    b = flatbuffers.Builder(8192)
    tree = g.theirs("benchtree.Tree", "T").InitFromObj(g.theirs("benchtree.Tree").GetRootAs(buf, 0))
    b.Finish(tree.Pack(b))
    return bytes(b.Output())


def codec_rows(g: codec.Generated, only_demo: bool) -> list[codec.Row]:
    """codec.py's smfc rows, for ``g``'s modules (pure or compiled)."""
    from smf.verify import verify_buffer

    rows = codec.response_rows(g)
    response = bytes(g.ours("smf_gen.demo.Response", "T")(name="x" * 60).Encode())
    buffers = {"smf_gen.demo.Response": (rows[0].message, response)}
    if not only_demo:
        append = codec.append_rows(g)
        rows += [r for r in append if not r.operation.startswith("encode, flatc")]
        tree, tree_buf = codec.tree_rows(g)
        rows += tree
        encoded: Any = append[0].candidates["smfc"]()
        batch = bytes(encoded)
        buffers["broker.AppendBatch"] = (append[0].message, batch)
        buffers["benchtree.Tree"] = (tree[0].message, tree_buf)
    rows += _extra_rows(g, buffers)
    if not only_demo:
        packed = _builder_tree(g, tree_buf)
        verify = importlib.import_module(g.ours("benchtree.Tree").__module__).verify_Tree
        rows.append(
            codec.Row(
                f"Tree ({len(packed) / 1000:.1f} kB, from a Builder)",
                "verify",
                {"smfc": lambda: verify_buffer(packed, verify)},
            )
        )
    return rows


def paired_rows(pure: list[codec.Row], compiled: list[codec.Row]) -> list[codec.Row]:
    """One row per operation with candidates ``pure`` and ``mypyc``; encodes checked."""
    rows = []
    for p, c in zip(pure, compiled, strict=True):
        assert (p.message, p.operation) == (c.message, c.operation), (p.message, c.message)
        a, b = p.candidates["smfc"], c.candidates["smfc"]
        if "encode" in p.operation and bytes(a()) != bytes(b()):  # type: ignore[call-overload]
            raise SystemExit(f"{p.message} {p.operation}: the compiled encode differs")
        if "read" in p.operation and a() != b():
            raise SystemExit(f"{p.message} {p.operation}: the compiled read differs")
        rows.append(codec.Row(p.message, p.operation, {"pure": a, "mypyc": b}))
    return rows


def check_compiled(files: list[str]) -> list[str]:
    """The compiled modules, as imported: each must be an extension module."""
    names = []
    for name in files:
        module = importlib.import_module(PREFIX + name.removesuffix(".py").replace("/", "."))
        if not (module.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES)):
            raise SystemExit(f"{module.__name__} is not compiled: {module.__file__}")
        names.append(module.__name__.removeprefix(PREFIX))
    return names


# ----------------------------------------------------------------------------- percall


def _percall_child(row: str, path: str, module: str, calls: int, rounds: int) -> None:
    sys.path.insert(0, path)
    percall._demo = lambda: importlib.import_module(module)
    percall._child(row, calls, rounds)


def percall_rows(work: Path, opts: argparse.Namespace) -> dict[str, dict[str, float]]:
    """percall.py's demo-stub rows, pure and compiled, alternating; medians."""
    systems = {
        "pure": (work / "ours", SERVICE_MODULE),
        "mypyc": (work / "compiled", PREFIX + SERVICE_MODULE),
    }
    cpu = "1" if (os.cpu_count() or 1) > 1 and shutil.which("taskset") else None
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in systems}
    for repeat in range(opts.percall_repeats):
        order = list(systems) if repeat % 2 == 0 else list(reversed(systems))
        for row in percall.STUB_ROWS:
            for name in order:
                path, module = systems[name]
                cmd = [sys.executable, __file__, "--percall-row", row, str(path), module]
                cmd += ["--percall-calls", str(opts.percall_calls)]
                cmd += ["--percall-rounds", str(opts.percall_rounds)]
                if cpu is not None:
                    cmd = ["taskset", "-c", cpu, *cmd]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    raise SystemExit(f"percall {row} ({name}) failed:\n{out.stderr[-2000:]}")
                value = float(out.stdout.strip().splitlines()[-1])
                samples[name].setdefault(row, []).append(value)
    return {n: {r: statistics.median(v) for r, v in rows.items()} for n, rows in samples.items()}


# ----------------------------------------------------------------------------- output


def table(rows: list[codec.Row]) -> str:
    lines = [
        "| message | operation | pure µs | mypyc µs | pure / mypyc |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        pure, compiled = row.best["pure"], row.best["mypyc"]
        lines.append(
            f"| {row.message} | {row.operation} | {pure:.2f} | {compiled:.2f} "
            f"| {pure / compiled:.2f}x |"
        )
    return "\n".join(lines)


def percall_table(medians: dict[str, dict[str, float]]) -> str:
    lines = [
        "| demo stubs, socket-free (percall.py) | pure µs | mypyc µs | pure / mypyc |",
        "|---|---|---|---|",
    ]
    for row in percall.STUB_ROWS:
        pure, compiled = medians["pure"][row], medians["mypyc"][row]
        lines.append(
            f"| {row.removeprefix('stubs ')} | {pure:.2f} | {compiled:.2f} "
            f"| {pure / compiled:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts, demo schema only")
    parser.add_argument("--repeats", type=int, default=5, help="codec repeats, best counts (5)")
    parser.add_argument("--no-percall", action="store_true", help="leave out the stub rows")
    parser.add_argument("--percall-calls", type=int, default=8000, help="calls per round (8000)")
    parser.add_argument("--percall-rounds", type=int, default=3, help="rounds per run (3)")
    parser.add_argument("--percall-repeats", type=int, default=3, help="runs per row (3)")
    parser.add_argument("--keep", metavar="DIR", help="generate into DIR and leave it there")
    parser.add_argument("--percall-row", nargs=3, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.percall_row:
        row, path, module = opts.percall_row
        _percall_child(row, path, module, opts.percall_calls, opts.percall_rounds)
        return 0
    why = missing_toolchain()
    if why is not None:
        print(f"bench/compiled.py skipped: {why}. Compiling is optional; nothing else needs it.")
        return 0
    if opts.quick:
        opts.repeats, budget = 1, 0.0
        opts.percall_calls, opts.percall_rounds, opts.percall_repeats = 128, 1, 1
    else:
        budget = 0.1
    files = [f + ".py" for f in (DEMO if opts.quick else DEMO + TREE + BROKER)]
    prefixed = [PREFIX + f for f in files]
    if opts.keep:
        work = Path(opts.keep).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="smf-bench-compiled-"))
    try:
        g = codec.Generated(work)
        as_generated = probe_as_generated(work / "ours", work, prefixed)
        seconds = compile_copy(work / "ours", work / "compiled", prefixed)
        sys.path.insert(0, str(work / "compiled"))
        importlib.invalidate_caches()
        compiled = check_compiled(files)
        rows = paired_rows(codec_rows(g, opts.quick), codec_rows(CompiledView(g), opts.quick))
        order = ["Response", "AppendBatch", "Tree"]  # stable: each message's rows together
        rows.sort(key=lambda row: order.index(row.message.split()[0]))
        codec.measure(rows, opts.repeats, budget)
        medians = None if opts.no_percall else percall_rows(work, opts)
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"python {sys.version.split()[0]}, mypy/mypyc {mypy_version()} (opt_level 3), "
        f"{os.cpu_count()} CPUs; codec: best of {opts.repeats} interleaved repeats, "
        "µs per message\n"
    )
    print(f"compiled in {seconds:.0f} s: {', '.join(compiled)}")
    print(f"as generated: {'compiles' if as_generated is None else 'mypyc fails:'}")
    if as_generated is not None:
        print("    " + as_generated.replace("\n", "\n    "))
    print("workarounds in the compiled copy:\n" + "".join(f"  - {w}\n" for w in WORKAROUNDS))
    print("every encode of the compiled modules is byte-identical to the pure ones,")
    print("every read returns the same\n")
    print(table(rows))
    if medians is not None:
        runs = f"median of {opts.percall_repeats} runs, each the best of {opts.percall_rounds}"
        print(f"\n{runs} rounds of {opts.percall_calls} calls, µs per call\n")
        print(percall_table(medians))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
