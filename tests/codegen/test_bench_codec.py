"""bench/codec.py runs end to end (tiny counts: its numbers are not checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_codec_benchmark_prints_its_table() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "codec.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 9  # the header, then one row per message and operation
    assert any("Tree" in row and "verify" in row for row in rows)


def test_nested_echo_benchmark_prints_its_table() -> None:
    """bench/nested.py: smfc stubs, a flatc + Builder server and grpc.aio echo the nested
    Tree (tiny counts: the numbers are not checked)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "nested.py"), "--quick", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3  # the header, then smfc, flatc + Builder, grpc.aio
    assert "Targets:" in proc.stdout
