"""bench/latency.py and bench/interleaved.py run end to end with tiny counts (no timing
assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "latency.py"
TINY = [
    *("--calls", "40", "--window-calls", "200", "--warmup", "10", "--repeats", "1"),
    *("--quiet", "--no-record"),
]


def _run(*extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH), *TINY, *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_latency_bench_prints_table_and_json_for_both_systems() -> None:
    table = _run()
    for needle in ("raw", "smf", "smf/raw", "p50 µs", "p99 µs", "p999 µs", "calls/s", "targets"):
        assert needle in table, table
    assert sum(line.strip().endswith(("PASS", "MISS")) for line in table.splitlines()) == 3

    result = json.loads(_run("--json"))
    for system in ("raw", "smf"):
        for mode in ("sequential", "window"):
            summary = result["median"][system][mode]
            assert summary["calls"] == (40 if mode == "sequential" else 200)
            for key in ("p50_us", "p99_us", "p999_us", "calls_per_s"):
                assert summary[key] > 0
            assert summary["p50_us"] <= summary["p99_us"] <= summary["p999_us"]
        assert len(result["runs"][system]) == 1
    assert set(result["ratio"]) == {"sequential", "window"}
    # With one repeat, the paired ratio (median of per-repeat ratios) is that ratio.
    for mode in ("sequential", "window"):
        for key, value in result["ratio"][mode].items():
            assert abs(result["paired_ratio"][mode][key] - value) < 1e-9
    assert [t["ratio"] for t in result["targets"]] == [
        result["paired_ratio"]["sequential"]["p50_us"],
        result["paired_ratio"]["sequential"]["p99_us"],
        result["paired_ratio"]["window"]["calls_per_s"],
    ]
    assert [t["target"] for t in result["targets"]] == [
        "sequential p50 smf/raw",
        "sequential p99 smf/raw",
        "window calls/s smf/raw",
    ]
    assert all(isinstance(t["pass"], bool) for t in result["targets"])


def test_latency_bench_compares_two_checkouts_and_records_a_summary(tmp_path: Path) -> None:
    """--baseline DIR: the A/B mode (smf against the smf of another checkout, here this
    same one); without --no-record the summary is appended as one JSON line."""
    root = BENCH.parent.parent
    table = _run("--baseline", str(root))
    assert "smf/base" in table and "paired" in table and "targets" not in table
    result = json.loads(_run("--baseline", str(root), "--json"))
    assert result["systems"] == ["base", "smf"]
    assert result["baseline"] == str(root)
    assert set(result["median"]) == {"base", "smf"}
    for mode in ("sequential", "window"):
        assert result["median"]["base"][mode]["calls_per_s"] > 0
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_latency", BENCH)
    assert spec is not None and spec.loader is not None
    latency = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(latency)
    log = tmp_path / "results" / "latency.jsonl"
    latency.record(result, log)
    latency.record(result, log)
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert "runs" not in json.loads(lines[0])
    assert json.loads(lines[1])["median"] == result["median"]


def test_interleaved_bench_prints_both_systems_and_the_ratio() -> None:
    script = BENCH.parent / "interleaved.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--blocks", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("raw p50", "smf p50", "smf/raw p50"):
        assert needle in out, out
