"""`smf bench` and `smf demo` as a user runs them: real processes, a live server."""

from __future__ import annotations

import json
import socket
import socketserver
import subprocess
import sys
import threading
import time
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
        [sys.executable, "-m", "smf_tools", "bench", *args],
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
        f"127.0.0.1:{port}",
        "--schema",
        str(SCHEMA),
        "--method",
        "SmfStorage.Get",
        "--data",
        "{}",
        "--timeout",
        "0.5",
    )
    assert proc.returncode == 2
    assert f"cannot connect to 127.0.0.1:{port}" in proc.stderr
    assert "tried for 0.5s" in proc.stderr


def test_bench_waits_for_a_server_started_in_the_background() -> None:
    # `server.py &` then `smf bench` at once, as the README does: the server is booting.
    from smf.workers import free_port

    port = free_port()
    load = subprocess.Popen(
        [sys.executable, "-m", "smf_tools", "bench", f"127.0.0.1:{port}", "--schema",
         str(SCHEMA), "--method", "SmfStorage.Get", "--data", "{}", "--calls", "50",
         "--timeout", "60", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    server = None
    try:
        # The server starts only after the bench has had time to find nothing listening
        # (it gave up at once before): the bench must still be waiting for it.
        time.sleep(2)
        assert load.poll() is None, load.communicate()
        server = subprocess.Popen(
            [sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        out, err = load.communicate(timeout=120)
    finally:
        load.kill()
        if server is not None:
            server.terminate()
            server.wait(10)
    assert load.returncode == 0, err
    assert json.loads(out)["calls"] == 50


def test_a_method_the_server_lacks_is_named_not_loaded(tmp_path: Path) -> None:
    # A schema whose service the demo server does not serve: its first call is a 404.
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
    assert out.returncode == 2, out.stdout
    assert "Other.Call" in out.stderr and "no such method on the server" in out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr


def test_demo_main_job_runs_from_a_checkout() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "smf", "demo", "--calls", "300"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1. smfc demo.fbs" in proc.stdout
    assert proc.stdout.count("errors     none") == 2


def test_demo_ships_the_checkouts_schema_and_server() -> None:
    # `smf demo` runs from package data, so it works installed; these copies must not drift.
    data = ROOT / "smf_tools" / "data"
    assert (data / "demo.fbs").read_bytes() == SCHEMA.read_bytes()
    assert (data / "demo_server.py").read_bytes() == SERVER.read_bytes()


def test_help_lists_every_command_with_one_line() -> None:
    from smf_tools.cli import COMMANDS

    proc = subprocess.run(
        [sys.executable, "-m", "smf", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name, (_module, text) in COMMANDS.items():
        assert [line for line in lines if line.split() == [name, *text.split()]], name
    assert {"demo", "bench"} <= set(COMMANDS)


def test_json_records_what_was_asked(demo_port: int) -> None:
    proc = bench(
        f"127.0.0.1:{demo_port}",
        "--schema",
        str(SCHEMA),
        "--method",
        "SmfStorage.Put",
        "--data",
        '{"name": "x"}',
        "--calls",
        "50",
        "--rate",
        "5000",
        "--concurrency",
        "3",
        "--connections",
        "2",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["method"] == "SmfStorage.Put"
    assert result["schema"] == str(SCHEMA)
    assert result["target_rate"] == 5000
    assert (result["connections"], result["concurrency"]) == (2, 3)
    assert result["address"] == f"127.0.0.1:{demo_port}"


def test_rate_below_target_warns_and_is_recorded(demo_port: int) -> None:
    # One caller cannot send a million calls a second: the run must say it fell short.
    proc = bench(
        f"127.0.0.1:{demo_port}",
        "--schema",
        str(SCHEMA),
        "--method",
        "SmfStorage.Get",
        "--data",
        '{"name": "x"}',
        "--calls",
        "300",
        "--rate",
        "1000000",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["below_target_rate"] is True
    (warning,) = result["warnings"]
    assert "below the target --rate 1000000" in warning and "--concurrency" in warning
    assert "warning: achieved" in proc.stderr


class _Peer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(params=["garbage", "silent"])
def not_smf_port(request: pytest.FixtureRequest) -> Iterator[int]:
    """A TCP peer on 127.0.0.1 that does not speak smf: it answers every request with an
    HTTP error page, or reads and never answers."""
    answer = request.param == "garbage"

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            conn: socket.socket = self.request
            while conn.recv(65536):
                if answer:
                    conn.sendall(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                        b"Content-Length: 11\r\n\r\nBad Request"
                    )

    server = _Peer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_peer_that_does_not_speak_smf_fails_fast(not_smf_port: int) -> None:
    # Before: every call waited its timeout (or failed) in turn, for hours with no output.
    proc = bench(
        f"127.0.0.1:{not_smf_port}",
        "--schema",
        str(SCHEMA),
        "--method",
        "SmfStorage.Get",
        "--data",
        "{}",
        "--timeout",
        "2",
    )
    assert proc.returncode == 2, proc.stdout
    assert f"127.0.0.1:{not_smf_port} sent no valid smf frame" in proc.stderr
    assert "is it an smf server?" in proc.stderr and "Traceback" not in proc.stderr


def test_server_streaming_method_reports_messages_and_first_message_latency(
    demo_port: int,
) -> None:
    # Watch streams ten messages per request: the run opens stream after stream until
    # --messages have arrived, three streams open at a time.
    proc = bench(
        f"127.0.0.1:{demo_port}",
        "--schema",
        str(SCHEMA),
        "--method",
        "SmfStorage.Watch",
        "--data",
        '{"name": "w"}',
        "--messages",
        "300",
        "--concurrency",
        "3",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["streaming"] == "server"
    assert result["errors"] == {}
    assert result["messages"] >= 300
    assert result["streams"] >= 27  # whole streams of 10; the last ones are cut short
    assert result["bytes"] > 0 and result["messages_per_s"] > 0 and result["mb_per_s"] > 0
    lat = result["first_message_latency_us"]
    assert list(lat) == ["p50", "p75", "p90", "p99", "p99.9", "p99.99", "max"]
    assert lat["p50"] > 0


def test_server_streaming_table_and_duration(demo_port: int) -> None:
    proc = bench(
        f"127.0.0.1:{demo_port}",
        "--schema",
        str(SCHEMA),
        "--method",
        "SmfStorage.Watch",
        "--data",
        '{"name": "w"}',
        "--duration",
        "0.5",
    )
    assert proc.returncode == 0, proc.stderr
    for word in ("server stream", "first message", "msgs/s", "MB/s", "errors     none"):
        assert word in proc.stdout


def test_calls_on_a_server_streaming_method_is_a_clear_error() -> None:
    proc = bench(
        "127.0.0.1:1", "--schema", str(SCHEMA), "--method", "SmfStorage.Watch",
        "--data", "{}", "--calls", "10",
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--messages or --duration" in proc.stderr
