"""Generated streaming API: smfc turns every kind of ``streaming`` method into typed
server and client stubs that pass mypy --strict and run against each other."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import smf

HERE = Path(__file__).resolve().parent / "streams"
REPO = HERE.parents[1]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("streams_gen")
    subprocess.run(
        [sys.executable, "-m", "smfc", "-o", str(out), str(HERE / "kinds.fbs")],
        check=True,
        capture_output=True,
    )
    shutil.copy(HERE / "usage.py", out / "streams_usage.py")
    sys.path.insert(0, str(out))
    yield out
    sys.path.remove(str(out))
    for name in [m for m in sys.modules if m.startswith(("streamtest", "streams_usage"))]:
        del sys.modules[name]


def test_generated_streaming_stubs_pass_mypy_strict_and_ruff(generated: Path) -> None:
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "streamtest/Log_smf.py", "streams_usage.py"],
        cwd=generated,
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYPATH": str(REPO)},
    )
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr
    ruff = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--isolated",
            "--select",
            "E,F,W",
            "--line-length",
            "100",
            "streamtest/Log_smf.py",
        ],
        cwd=generated,
        capture_output=True,
        text=True,
    )
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr


async def test_every_streaming_kind_runs_end_to_end(generated: Path) -> None:
    import streams_usage

    service: Any = streams_usage.LogService()
    assert sorted(kind for kind, _ in service.stream_handlers().values()) == [
        "bidi",
        "client",
        "server",
    ]
    assert len(service.method_handlers()) == 2  # Ping and Explicit stay unary
    server = smf.Server()
    server.add_service(service)
    await server.start("127.0.0.1", 0)
    try:
        async with smf.Client("127.0.0.1", server.port) as client:
            out = await streams_usage.exercise(client)
    finally:
        await server.stop(grace=0.5)
    assert out == [
        "0=t:0",
        "1=t:1",
        "2=t:2",
        "ack 4/12",
        "ack 1/1",
        "re:a",
        "re:b",
        "pong",
        "broke at 0",
    ]
