"""How a user gets smf: a wheel built from a clean clone, installed by the pip Python ships.

Also the package boundaries the install relies on: the runtime ``smf`` never imports the
generator ``smfc`` or the tools ``smf_tools``, and an editable install is visible to mypy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_TOP_LEVEL = {"smf", "smfc", "smf_tools", "smf_rpc"}


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH and a PATH without the project's venv: only the fresh install counts.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_runtime_never_imports_the_generator_or_the_tools() -> None:
    # Every smf.* module but the `python -m smf` shim, which hands over to smf_tools.
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import smf
        names = [m.name for m in pkgutil.walk_packages(smf.__path__, "smf.")]
        for name in names:
            if name != "smf.__main__":
                importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("smfc", "smf_tools"))
        print(len(names), leaked)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    count, leaked = proc.stdout.split(" ", 1)
    assert int(count) > 10
    assert leaked.strip() == "[]"


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git checkout to clone")
@pytest.mark.timeout(600)  # pip, or clusters, on a shared 2-core machine
def test_wheel_from_a_clean_clone_installs_with_stock_pip(tmp_path: Path) -> None:
    """`git clone`, `pip wheel`, `pip install <wheel>` into a fresh venv (its own pip, not
    upgraded; the machine's index configuration applies), then the commands a user runs,
    from a directory outside the checkout."""
    src = tmp_path / "src"
    _run(["git", "clone", "--quiet", str(ROOT), str(src)], cwd=tmp_path)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    bin_dir = venv / "bin"
    py = str(bin_dir / "python")
    wheels = tmp_path / "wheels"
    _run([py, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(src)], tmp_path)
    (wheel,) = wheels.glob("smf-*.whl")

    with zipfile.ZipFile(wheel) as zf:
        top = {name.split("/")[0] for name in zf.namelist()}
    packages = {name for name in top if not name.endswith(".dist-info")}
    assert packages <= ALLOWED_TOP_LEVEL and {"smf", "smfc", "smf_tools"} <= packages, top

    _run([py, "-m", "pip", "install", "--quiet", str(wheel)], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    site = _run([py, "-c", "import smf, sys; print(smf.__file__)"], elsewhere).stdout.strip()
    assert Path(site).is_relative_to(venv), site  # the installed copy, not the checkout
    site_packages = Path(site).parent.parent
    assert not (site_packages / "codegen").exists()
    _run([py, "-c", "import importlib.util as u; assert u.find_spec('codegen') is None"], elsewhere)

    smfc_version = _run([str(bin_dir / "smfc"), "--version"], elsewhere).stdout
    assert smfc_version.startswith("smfc ") and "flatc " in smfc_version
    assert _run([py, "-m", "smfc", "--version"], elsewhere).stdout == smfc_version
    help_text = _run([str(bin_dir / "smf"), "--help"], elsewhere).stdout
    assert "demo" in help_text and "bench" in help_text
    demo = _run([str(bin_dir / "smf"), "demo", "--calls", "200"], elsewhere).stdout
    assert demo.count("errors     none") == 2, demo
    assert "run it from a checkout" not in demo

    # Prometheus is an extra: without it, the exporter's import names the extra to install.
    missing = subprocess.run(
        [py, "-c", "import smf.prometheus"], cwd=elsewhere, capture_output=True, text=True
    )
    assert missing.returncode == 1
    assert "pip install 'smf[prometheus]'" in missing.stderr


def test_a_missing_extra_is_named_on_import() -> None:
    code = "import sys; sys.modules['prometheus_client'] = None; import smf.prometheus"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 1
    assert "smf.prometheus needs prometheus-client" in proc.stderr
    assert "pip install 'smf[prometheus]'" in proc.stderr


def test_mypy_finds_smf_for_user_code_outside_the_checkout(tmp_path: Path) -> None:
    """`./dev` installs the project editable in compat mode (a .pth naming the checkout),
    which mypy follows; setuptools' default editable import hook is invisible to it."""
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    if mypy is None:
        pytest.skip("mypy is not installed next to this python")
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent(
            """
            import smf


            async def main() -> None:
                async with smf.Client("127.0.0.1", 7000) as client:
                    reply: memoryview = await client.call(1, b"", timeout=1.0)
                    print(bytes(reply))
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    proc = subprocess.run(
        [mypy, "--strict", "--no-incremental", str(app)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
