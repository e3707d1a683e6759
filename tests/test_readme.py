"""The README's code sample runs as written (on a free port, with the shipped stubs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from smf.workers import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_readme_python_sample_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    (sample,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    script = tmp_path / "sample.py"
    script.write_text(sample.replace("7000", str(free_port())))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "examples" / "demo" / "generated")}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "b'hi'"
