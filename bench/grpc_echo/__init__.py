"""The gRPC echo service of ``bench/compare.py``: ``echo.proto`` beside this file.

Its stubs are generated at run time with grpcio-tools (``python -m grpc_tools.protoc``,
in a subprocess, into a temporary folder) rather than committed: generated code is tied
to the grpcio version that made it, and nothing generated needs to pass this repo's
linters.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

PROTO = Path(__file__).resolve().parent / "echo.proto"
SERVICE = "smfbench.Echo"


def generate(dest: Path) -> None:
    """Write ``echo_pb2.py`` and ``echo_pb2_grpc.py`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO.parent}",
            f"--python_out={dest}",
            f"--grpc_python_out={dest}",
            PROTO.name,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"grpc_tools.protoc failed ({proc.returncode}):\n{proc.stderr}")


def load(dest: Path) -> tuple[ModuleType, ModuleType]:
    """The generated ``(echo_pb2, echo_pb2_grpc)`` modules from ``dest``."""
    if str(dest) not in sys.path:
        sys.path.insert(0, str(dest))
    return importlib.import_module("echo_pb2"), importlib.import_module("echo_pb2_grpc")
