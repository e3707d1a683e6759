"""bench/compiled.py compiles the demo schema's generated modules with mypyc and runs
(tiny counts: its numbers are not checked); the compiled modules are then checked
against the pure ones here, in a fresh interpreter. Slow (~20-30 s, most of it the C
compiler); skipped without mypyc or a C compiler, which smf never needs."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "compiled.py"


def _toolchain_missing() -> str | None:
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed"
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    if shutil.which(cc.split()[0]) is None:
        return f"no C compiler ({cc})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers"
    return None


# Run in the work directory the benchmark kept: the pure modules are under ours/, the
# compiled copy (packages renamed c_*) under compiled/.
CHECK = """
import json, sys
from importlib.machinery import EXTENSION_SUFFIXES
sys.path[:0] = [sys.argv[1] + "/compiled", sys.argv[1] + "/ours"]
from smf.verify import verify_buffer
import smf_gen.demo.SmfStorage_smf as pure
import c_smf_gen.demo.SmfStorage_smf as compiled
import c_smf_gen.demo.Request as compiled_request
files = [m.__file__ for m in (compiled, compiled_request)]
same = []
for name in ("", "x", "\u00e9t\u00e9 " * 7, "y" * 1000, None):
    a = bytes(pure.RequestT(name=name).Encode())
    b = bytes(compiled.RequestT(name=name).Encode())
    # each side reads and verifies what the other wrote
    verify_buffer(a, compiled.verify_Request)
    verify_buffer(b, pure.verify_Request)
    back = compiled.RequestT.InitFromObj(compiled.Request.GetRootAs(a, 0))
    same.append(
        a == b
        and pure.Request.GetRootAs(b, 0).Name() == compiled.Request.GetRootAs(a, 0).Name()
        and bytes(back.Encode()) == a
    )
class Storage(compiled.SmfStorage):  # the compiled service base is subclassable
    async def Get(self, request, ctx):
        return compiled.ResponseT(name=request.Name())
class PureStorage(pure.SmfStorage):
    async def Get(self, request, ctx):
        return pure.ResponseT(name=request.Name())
handlers = Storage().method_handlers()
expected = PureStorage().method_handlers()
print(json.dumps({
    "extension": [f.endswith(tuple(EXTENSION_SUFFIXES)) for f in files],
    "same": same,
    "handlers": sorted(handlers) == sorted(expected) and pure.Get_WIRE_ID in handlers,
}))
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_compiled_codec_bench_runs_and_matches_the_pure_modules(tmp_path: Path) -> None:
    why = _toolchain_missing()
    if why is not None:
        pytest.skip(f"{why}: compiling the generated codec is optional")
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "compiled in" in out and "smf_gen.demo.SmfStorage_smf" in out, out
    assert "byte-identical" in out, out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    codec_rows = [r for r in rows[1:] if r.startswith("| Response")]
    assert rows[0] == "| message | operation | pure µs | mypyc µs | pure / mypyc |", out
    assert {r.split(" | ")[1] for r in codec_rows} == {
        "encode",
        "read (GetRootAs + Name())",
        "decode + encode (object API)",
        "verify",
    }, out
    assert all(r.rstrip(" |").endswith("x") for r in codec_rows), out
    stub_rows = [r for r in rows if r.split(" | ")[0].lstrip("| ") in {"server seq", "client 64"}]
    assert len(stub_rows) == 2, out

    check = subprocess.run(
        [sys.executable, "-c", CHECK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr
    result = json.loads(check.stdout)
    assert result["extension"] == [True, True], result
    assert result["same"] == [True] * 5, result
    assert result["handlers"] is True, result
