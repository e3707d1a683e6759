"""bench/compare.py runs end to end with tiny counts (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

from bench._harness import HEADER, WIRE_ID, RawEchoServer

BENCH = Path(__file__).resolve().parent.parent / "bench" / "compare.py"
TINY = [
    "--repeats", "1", "--calls", "50", "--window-calls", "200", "--warmup", "10",
    "--sweep", "60,4096,1048576", "--sweep-min", "3", "--sweep-max", "20", "--sweep-mib", "1",
    "--workers-seconds", "0.3", "--workers-repeats", "1", "--quiet",
]  # fmt: skip


def test_compare_bench_writes_table_json_and_plots(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), *TINY, "--out", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)

    for system in ("raw", "smf", "stubs", "grpc"):
        median = result["median"][system]
        assert median["sequential"]["calls"] == 50
        assert median["window"]["calls"] == 200
        for mode in ("sequential", "window"):
            m = median[mode]
            assert 0 < m["p50_us"] <= m["p90_us"] <= m["p99_us"] <= m["p999_us"]
            assert m["calls_per_s"] > 0
        assert set(median["sweep"]) == {"60", "4096", "1048576"}
        assert median["sweep"]["1048576"]["calls"] == 3  # 1 MiB budget, at least 3 calls
        assert all(e["mb_per_s"] > 0 for e in median["sweep"].values())
        assert len(result["runs"][system]) == 1

    workers = result["workers"]
    for n in ("1", "2"):
        assert workers["median"][n]["calls_per_s"] > 0
        # every connection was served by some worker, and never by more than n of them
        (spread,) = workers["median"][n]["connections_per_worker"]
        assert sum(spread) == 2 * 4 and 1 <= len(spread) <= int(n)
    assert workers["scaling"] > 0

    targets = result["targets"]
    assert len(targets) == 7 and all(isinstance(t["pass"], bool) for t in targets)

    table = (tmp_path / "compare.md").read_text()
    for needle in ("raw floor", "smf stubs / grpc.aio", "1 MiB", "workers=2", "Targets"):
        assert needle in table, table
    assert sum(line.rstrip().endswith(("| PASS |", "| MISS |")) for line in table.splitlines()) == 7
    assert json.loads((tmp_path / "compare.json").read_text())["options"]["repeats"] == 1
    if importlib.util.find_spec("matplotlib") is not None:
        for png in ("latency.png", "sweep.png"):
            assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes | memoryview) -> None:
        self.writes.append(bytes(data))


def test_raw_floor_accumulates_frames_split_anywhere() -> None:
    """The floor's server echoes each frame whole, however the stream is cut into reads."""
    rng = random.Random(7)
    frames = [
        HEADER.pack(0, 0, session, size, 0, WIRE_ID) + rng.randbytes(size)
        for session, size in enumerate((1, 60, 4096, 300_000, 1_100_000, 60, 2_000_000), 1)
    ]
    stream = b"".join(frames)
    server = RawEchoServer()
    transport = _Transport()
    server.connection_made(transport)  # type: ignore[arg-type]
    pos = 0
    while pos < len(stream):
        buf = server.get_buffer(-1)
        n = min(len(buf), rng.choice((1, 7, 16, 1000, 65536, 1 << 20)), len(stream) - pos)
        buf[:n] = stream[pos : pos + n]
        del buf
        server.buffer_updated(n)
        pos += n
    assert b"".join(transport.writes) == stream
    ends = {sum(len(f) for f in frames[: i + 1]) for i in range(len(frames))}
    written = 0
    for chunk in transport.writes:  # every write ends on a frame boundary
        written += len(chunk)
        assert written in ends
