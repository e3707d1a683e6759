"""The READMEs' commands work pasted as written into a shell.

Each README's ```sh blocks run, in order, as one bash script in a fresh copy of the
checkout (its tracked files, as `git clone` would give them, with uncommitted edits) after
the README's setup command: the copy's `.venv` is this checkout's, which `./dev` created.
Only ports and /tmp paths are rewritten, so runs in parallel never collide. The few
commands that are not run (the test suites themselves) are listed with the reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

NOT_RUN = {
    "./dev demo": "execs `python -m smf_tools demo` (tests/test_bench_cli.py runs it)",
    "./dev test": "the suite this test belongs to",
    "./dev slow": "the slow suite (CI runs it)",
    "python -m pytest -q tests/broker": "part of this suite",
    "python -m pytest -q -m slow tests/broker/test_broker_faults.py -s": "part of ./dev slow",
}


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def script_of(readme: str, skipped: set[str]) -> str:
    """The README's shell blocks as one script, without the commands in NOT_RUN."""
    lines = ["set -eo pipefail"]
    for block in sh_blocks(readme):
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()
            if command in NOT_RUN:
                skipped.add(command)
                continue
            lines.append(line)
    return "\n".join(lines) + "\n"


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + n >= 65536:
            continue
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def fresh_copy(dest: Path) -> Path:
    """The checkout's files as a clone has them (tracked, plus new files not ignored)."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    (dest / ".venv").symlink_to(ROOT / ".venv")  # what the README's setup command made
    return dest


def run_script(script: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # A shell as a new user has it: no venv on PATH (the README says to activate it).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    (cwd / "readme.sh").write_text(script)
    # Output to files, not pipes: servers left in the background would hold pipes open.
    with (cwd / "out.txt").open("w") as out, (cwd / "err.txt").open("w") as err:
        proc = subprocess.Popen(
            ["bash", "readme.sh"],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,  # the background servers it starts die with the test
        )
        try:
            proc.wait(timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, (cwd / "out.txt").read_text(), (cwd / "err.txt").read_text()
    )


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "activate").exists(), reason="needs ./dev's venv")
@pytest.mark.timeout(600)  # pip, or clusters, on a shared 2-core machine
def test_readme_commands_run_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    demo_port, broker_base = free_ports(1), free_ports(3)
    data = tmp_path / "broker-data"

    def adapt(text: str) -> str:
        text = text.replace("7000", str(demo_port)).replace("/tmp/broker", str(data))
        for i in range(3):
            text = text.replace(str(9091 + i), str(broker_base + i))
        return text

    clone = fresh_copy(tmp_path / "clone")
    (app,) = python_blocks(readme)
    (clone / "app.py").write_text(adapt(app))  # "Save this as app.py"
    skipped: set[str] = set()
    proc = run_script(adapt(script_of(readme, skipped)), clone)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert skipped == {"./dev demo", "./dev test"}
    assert "b'hi'" in proc.stdout  # PYTHONPATH=generated python app.py
    assert "SmfStorage.Get on 127.0.0.1" in proc.stdout and "errors     none" in proc.stdout
    assert "created topic t (2 partitions)" in proc.stdout
    assert re.search(r"^\d+ hello$", proc.stdout, re.M)  # produced, then consumed


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "activate").exists(), reason="needs ./dev's venv")
@pytest.mark.timeout(600)  # pip, or clusters, on a shared 2-core machine
def test_broker_readme_commands_run_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "examples" / "broker" / "README.md").read_text()
    base = free_ports(3)
    data = tmp_path / "broker-data"

    def adapt(text: str) -> str:
        text = text.replace("/tmp/broker", str(data))
        for i in range(3):
            text = text.replace(str(9001 + i), str(base + i))
        return text

    clone = fresh_copy(tmp_path / "clone")
    skipped: set[str] = set()
    # The README's setup line (activating the venv) is in its prose: prepend it.
    proc = run_script(adapt("source .venv/bin/activate\n" + script_of(readme, skipped)), clone)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert skipped == {
        "./dev slow",
        "python -m pytest -q tests/broker",
        "python -m pytest -q -m slow tests/broker/test_broker_faults.py -s",
    }
    out = proc.stdout
    assert "created topic orders (2 partitions)" in out
    assert re.search(r"^\d+ hello\n\d+ world$", out, re.M)
    assert "deleted topic orders" in out
    assert out.count("  ok  ") >= 2  # health of two nodes, then of node 1 alone


@pytest.mark.timeout(300)
def test_cluster_reports_when_it_is_ready(tmp_path: Path) -> None:
    base = free_ports(3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.broker", "cluster", "--nodes", "3", "--data",
         str(tmp_path), "--base-port", str(base)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = []
        for line in proc.stdout:  # the nodes' "listening" lines, then this one
            if line.startswith("cluster "):
                ready.append(line)
                break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    addresses = ", ".join(f"127.0.0.1:{base + i}" for i in range(3))
    assert ready and ready[0].startswith(f"cluster ready: 3 node(s) on {addresses}; "), ready
    assert re.search(r"controller leader: node [123]$", ready[0].strip())


def test_readme_lists_only_commands_that_exist() -> None:
    # Every NOT_RUN entry is still in a README (a stale one would hide nothing).
    text = (ROOT / "README.md").read_text() + (ROOT / "examples/broker/README.md").read_text()
    for command in NOT_RUN:
        assert command in text, command


async def test_broker_client_says_how_long_it_really_tried() -> None:
    # It gives up early when every node refuses; it used to claim the whole budget.
    from examples.broker.client import BrokerClient, BrokerUnavailable
    from smf.workers import free_port

    async with BrokerClient(f"127.0.0.1:{free_port()}", timeout=30.0) as client:
        with pytest.raises(BrokerUnavailable) as info:
            await client.create_topic("t", 1)
    message = str(info.value)
    assert re.search(r"gave up after \d+ tries in [\d.]+s of its 30s", message), message
