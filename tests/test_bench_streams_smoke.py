"""bench/streams.py runs end to end with tiny counts (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "streams.py"


def test_streams_bench_reports_every_system_and_the_slow_consumer() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            *("--sizes", "60", "--seconds", "0.01", "--repeats", "1", "--probe", "300"),
            *("--slow", "0.5", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    result = report["sizes"]["60"]
    assert set(result["msgs_per_s"]) == {"raw", "smf", "grpc"}
    assert all(rate > 0 for rate in result["msgs_per_s"].values())
    assert set(result["paired"]) == {"smf/raw", "smf/grpc"}
    slow = report["slow_consumer"]
    assert slow["unary_answered"] > 0 and slow["window_bytes"] == 1024 * 1024
