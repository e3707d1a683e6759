"""`smf bench` and `smf demo` as a user runs them: real processes, a live server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "idl" / "demo.fbs"
SERVER = ROOT / "examples" / "demo" / "server.py"


@pytest.fixture(scope="module")
def demo_port() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(10)


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smf", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_json_output_on_a_live_server(demo_port: int) -> None:
    proc = bench(
        f"127.0.0.1:{demo_port}",
        "--schema",
        str(SCHEMA),
        "--method",
        "SmfStorage.Get",
        "--data",
        '{"name": "hello"}',
        "--calls",
        "400",
        "--warmup",
        "50",
        "--connections",
        "2",
        "--concurrency",
        "4",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == {"calls", "errors", "calls_per_s", "latency_us"}
    assert result["calls"] == 400
    assert result["errors"] == {}
    assert result["calls_per_s"] > 0
    lat = result["latency_us"]
    assert list(lat) == ["p50", "p75", "p90", "p99", "p99.9", "p99.99", "max"]
    values = list(lat.values())
    assert values == sorted(values) and values[0] > 0


def test_open_loop_rate_and_hgrm_file(demo_port: int, tmp_path: Path) -> None:
    hgrm = tmp_path / "out.hgrm"
    proc = bench(
        f"127.0.0.1:{demo_port}",
        "--schema",
        str(SCHEMA),
        "--method",
        "SmfStorage.Put",
        "--data",
        '{"name": "x"}',
        "--duration",
        "1",
        "--rate",
        "500",
        "--concurrency",
        "4",
        "--json",
        "--hgrm",
        str(hgrm),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    # An open loop at 500/s for 1 s: about 500 calls, whatever the latency.
    assert 300 <= result["calls"] <= 700
    text = hgrm.read_text()
    assert "Percentile" in text and "#[Mean" in text


def test_table_output(demo_port: int) -> None:
    proc = bench(
        f"127.0.0.1:{demo_port}",
        "--schema",
        str(SCHEMA),
        "--method",
        "SmfStorage.Get",
        "--data",
        '{"name": "t"}',
        "--calls",
        "200",
    )
    assert proc.returncode == 0, proc.stderr
    for word in ("p50", "p99.99", "max", "calls/s", "errors     none"):
        assert word in proc.stdout


@pytest.mark.parametrize(
    ("method", "data", "message"),
    [
        ("SmfStorage.Nope", "{}", "has no method 'Nope'"),
        ("Nope.Get", "{}", "no service 'Nope'"),
        ("SmfStorage.Get", '{"name": 1,}', "not a valid smf_gen.demo.Request"),
        ("Get", "{}", "expected Service.Method"),
    ],
)
def test_bad_input_is_a_clear_error(method: str, data: str, message: str) -> None:
    proc = bench("127.0.0.1:1", "--schema", str(SCHEMA), "--method", method, "--data", data)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_server_is_a_clear_error() -> None:
    from smf.workers import free_port

    port = free_port()
    proc = bench(
        f"127.0.0.1:{port}", "--schema", str(SCHEMA), "--method", "SmfStorage.Get", "--data", "{}"
    )
    assert proc.returncode == 2
    assert f"cannot connect to 127.0.0.1:{port}" in proc.stderr


def test_errors_are_counted_by_status(tmp_path: Path) -> None:
    # A schema whose service the demo server does not serve: every call is a 404.
    schema = tmp_path / "other.fbs"
    schema.write_text("namespace other; table Q { a: int; } rpc_service Other { Call(Q): Q; }\n")
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        out = bench(
            f"127.0.0.1:{port}",
            "--schema",
            str(schema),
            "--method",
            "Other.Call",
            "--data",
            '{"a": 1}',
            "--calls",
            "20",
            "--json",
        )
    finally:
        proc.terminate()
        proc.wait(10)
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert result["errors"] == {"404": 20}
    assert result["calls"] == 0


def test_demo_main_job_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "smf", "demo", "--calls", "300"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1. smfc idl/demo.fbs" in proc.stdout
    assert proc.stdout.count("errors     none") == 2
