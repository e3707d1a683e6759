"""``smf health``, ``smf list`` and ``smf call`` against real server processes, run from a
directory outside the checkout."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_SERVER = REPO / "examples" / "demo" / "server.py"
PLAIN_SERVER = REPO / "tests" / "_channel_server.py"


def _smf() -> list[str]:
    script = Path(sys.executable).parent / "smf"
    return [str(script)] if script.exists() else [sys.executable, "-m", "smf"]


def _start(argv: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, line
    port = line.strip().rsplit(":", 1)[-1].split()[-1]
    return proc, f"127.0.0.1:{port}"


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo server, its stubs generated with ``smfc --bfbs`` (so reflection has them)."""
    stubs = tmp_path_factory.mktemp("stubs")
    subprocess.run(
        [sys.executable, "-m", "smfc", "--bfbs", "-o", str(stubs), str(REPO / "idl" / "demo.fbs")],
        check=True,
    )
    assert (stubs / "smf_gen" / "demo" / "SmfStorage_smf.bfbs").is_file()
    proc, address = _start([sys.executable, str(DEMO_SERVER), "--port", "0", "--stubs", str(stubs)])
    try:
        yield address
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def no_reflection() -> Iterator[str]:
    proc, address = _start([sys.executable, str(PLAIN_SERVER), "--no-reflection"])
    try:
        yield address
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cwd")


def _run(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_smf(), *args], cwd=cwd, capture_output=True, text=True, input=stdin, timeout=120
    )


def _one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_health_exits_0_when_serving_and_1_otherwise(demo: str, elsewhere: Path) -> None:
    ok = _run(elsewhere, "health", demo)
    assert (ok.returncode, ok.stdout) == (0, "SERVING\n")
    assert _run(elsewhere, "health", demo, "SmfStorage").returncode == 0
    unknown = _run(elsewhere, "health", demo, "Nope")
    assert (unknown.returncode, unknown.stdout) == (1, "SERVICE_UNKNOWN\n")


def test_health_of_an_unreachable_server_is_a_one_line_failure(elsewhere: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: refused
        port = s.getsockname()[1]
        message = _one_line_error(_run(elsewhere, "health", f"127.0.0.1:{port}"))
    assert "cannot connect" in message


def test_list_shows_services_methods_ids_and_types(demo: str, elsewhere: Path) -> None:
    result = _run(elsewhere, "list", demo)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    at = lines.index("smf_gen.demo.SmfStorage")
    assert lines[at + 1].split() == [
        "Get",
        "1792279101",
        "smf_gen.demo.Request",
        "->",
        "smf_gen.demo.Response",
    ]
    assert lines[at + 2].split()[:2] == ["Put", "4130483528"]
    assert "smf_rpc.health.Health" in lines


def test_call_takes_and_prints_json(demo: str, elsewhere: Path) -> None:
    result = _run(elsewhere, "call", demo, "SmfStorage.Get", "--data", '{"name": "hi"}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"name": "hi"}
    qualified = _run(
        elsewhere, "call", demo, "smf_gen.demo.SmfStorage.Put", "-d", "@-", stdin='{"name": "x"}'
    )
    assert json.loads(qualified.stdout) == {"name": "x"}


def test_call_reports_an_unknown_method(demo: str, elsewhere: Path) -> None:
    message = _one_line_error(_run(elsewhere, "call", demo, "SmfStorage.Got"))
    assert "has no method 'Got'" in message and "SmfStorage.Get" in message
    message = _one_line_error(_run(elsewhere, "call", demo, "Nope.Get"))
    assert "serves no service 'Nope'" in message


def test_call_reports_bad_json_with_its_position(demo: str, elsewhere: Path) -> None:
    message = _one_line_error(_run(elsewhere, "call", demo, "SmfStorage.Get", "-d", '{"nme": 1}'))
    assert message.startswith("smf call: bad JSON for smf_gen.demo.Request: line 1, column")
    assert "unknown field: nme" in message
    message = _one_line_error(_run(elsewhere, "call", demo, "SmfStorage.Get", "-d", '{"name": '))
    assert "bad JSON" in message


def test_call_without_reflection_says_to_pass_a_schema(no_reflection: str, elsewhere: Path) -> None:
    message = _one_line_error(_run(elsewhere, "call", no_reflection, "SmfStorage.Get"))
    assert "does not serve reflection" in message and "--schema" in message
    message = _one_line_error(_run(elsewhere, "list", no_reflection))
    assert "does not serve reflection" in message


def test_call_with_a_schema_file_needs_no_reflection(no_reflection: str, elsewhere: Path) -> None:
    schema = str(REPO / "idl" / "demo.fbs")
    result = _run(
        elsewhere,
        "call",
        no_reflection,
        "SmfStorage.Put",
        "--schema",
        schema,
        "-d",
        '{"name": "0"}',
    )
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == {"name"}
    message = _one_line_error(
        _run(elsewhere, "call", no_reflection, "SmfStorage.Nope", "--schema", schema)
    )
    assert "has no method SmfStorage.Nope" in message


def test_a_service_generated_without_bfbs_is_listed_but_not_callable_by_name(
    elsewhere: Path,
) -> None:
    proc, address = _start([sys.executable, str(PLAIN_SERVER)])  # the shipped stubs: no .bfbs
    try:
        listing = _run(elsewhere, "list", address)
        assert "smf_gen.demo.SmfStorage (no schema)" in listing.stdout.splitlines()
        message = _one_line_error(_run(elsewhere, "call", address, "SmfStorage.Get"))
        assert "has no schema for smf_gen.demo.SmfStorage" in message
    finally:
        _stop(proc)
