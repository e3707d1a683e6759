"""bench/percall.py runs end to end with tiny counts, alone and against a baseline
checkout (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "percall.py"
TINY = ["--calls", "128", "--rounds", "1", "--repeats", "1", "--no-record"]


def _run(*extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH), *TINY, *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_percall_prints_every_row_with_a_positive_time() -> None:
    result = json.loads(_run("--json"))
    rows = result["medians"]["smf"]
    assert set(rows) == {
        f"{prefix}{side} {mode}"
        for prefix in ("", "stubs ")
        for side in ("server", "client")
        for mode in ("seq", "64")
    }
    assert all(value > 0 for value in rows.values()), rows
    table = _run()
    assert "stubs / raw echo, server, 64 in flight" in table, table


def test_percall_against_a_baseline_prints_ratios(tmp_path: Path) -> None:
    # This tree as its own baseline: the A/B plumbing, not a speed claim.
    (tmp_path / "smf").symlink_to(ROOT / "smf")
    table = _run("--baseline", str(tmp_path), "--no-stubs")
    header, *rows = table.splitlines()
    assert "base" in header and "smf/base" in header, table
    assert len(rows) == 4 and all(row.rstrip().endswith("x") for row in rows), table
