"""What ``smf health``, ``smf list`` and ``smf call`` share: addresses, the reflection
calls, schemas (reflected or from ``--schema``) and JSON through the real flatc."""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import smf
from smf.reflection import schema_bytes
from smf_rpc.reflection.ListServicesRequest import ListServicesRequestT
from smf_rpc.reflection.SchemaRequest import SchemaRequestT
from smf_rpc.reflection.ServerReflection_smf import ListServices_WIRE_ID, ServerReflectionClient
from smfc import flatc as flatc_mod
from smfc.bfbs import read_schema
from smfc.model import Method, Schema, Service

T = TypeVar("T")


class ToolError(Exception):
    """A one-line message for the user; the command exits with status 1 (2 for usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def client_for(address: str, timeout: float) -> smf.Client:
    """``HOST:PORT``, ``[V6]:PORT`` or ``unix:PATH``."""
    if address.startswith("unix:"):
        return smf.Client(unix_path=address[5:], timeout=timeout, connect_timeout=timeout)
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ToolError(f"bad address {address!r}: expected HOST:PORT or unix:PATH", 2)
    return smf.Client(host.strip("[]"), int(port), timeout=timeout, connect_timeout=timeout)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", metavar="HOST:PORT", help="the server (or unix:PATH)")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds per call and to connect (5)"
    )


def run(command: str, body: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``body`` on smf's loop; print a ``ToolError`` or smf error as one line."""
    try:
        return smf.run(body())
    except ToolError as exc:
        print(f"smf {command}: {exc}", file=sys.stderr)
        return exc.code
    except (smf.SmfError, OSError) as exc:
        print(f"smf {command}: {exc}", file=sys.stderr)
        return 1


@dataclass
class ServiceEntry:
    name: str
    fqn: str
    has_schema: bool
    methods: list[tuple[str, int]] = field(default_factory=list)


async def list_services(client: smf.Client, timeout: float) -> list[ServiceEntry]:
    try:
        reply = await ServerReflectionClient(client).ListServices(
            ListServicesRequestT(), timeout=timeout
        )
    except smf.NotFound:
        raise ToolError(
            f"{client.address} does not serve reflection (no method with wire id "
            f"{ListServices_WIRE_ID}); pass --schema FILE.fbs"
        ) from None
    entries = []
    for i in range(reply.ServicesLength()):
        info = reply.Services(i)
        if info is None:
            continue
        entry = ServiceEntry(_text(info.Name()), _text(info.Fqn()), bool(info.HasSchema()))
        for j in range(info.MethodsLength()):
            method = info.Methods(j)
            if method is None:
                continue
            entry.methods.append((_text(method.Name()), int(method.WireId())))
        entries.append(entry)
    return entries


async def reflected_schema(client: smf.Client, service: str, timeout: float) -> bytes:
    reply = await ServerReflectionClient(client).GetSchema(
        SchemaRequestT(service=service), timeout=timeout
    )
    return schema_bytes(reply)


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


# --------------------------------------------------------------------------- schemas


@dataclass
class Target:
    """A method resolved against a schema: what ``smf call`` needs."""

    service: Service
    method: Method
    bfbs: bytes

    @property
    def wire_id(self) -> int:
        return self.service.wire_id(self.method)


def compile_schema(path: Path, include_dirs: list[Path]) -> bytes:
    """The binary schema of a ``.fbs`` (or the bytes of a ``.bfbs``), by the real flatc."""
    if path.suffix == ".bfbs":
        return path.read_bytes()
    if not path.is_file():
        raise ToolError(f"{path}: no such schema file")
    binary = flatc_mod.find_flatc()
    root = path.resolve().parent
    with tempfile.TemporaryDirectory(prefix="smf-schema-") as tmp:
        try:
            return flatc_mod.binary_schema(
                binary, path.resolve(), [d.resolve() for d in include_dirs], root, Path(tmp)
            )
        except flatc_mod.FlatcError as exc:
            raise ToolError(f"flatc rejected {path}: {_one_line(str(exc))}") from None


def parse_schema(bfbs: bytes) -> Schema:
    try:
        return read_schema(bfbs)
    except ValueError as exc:
        raise ToolError(f"not a binary schema: {exc}") from None


def find_method(schema: Schema, service: str, method: str) -> tuple[Service, Method] | None:
    for candidate in schema.services.values():
        if service in (candidate.name, candidate.short_name):
            for m in candidate.methods:
                if m.name == method:
                    return candidate, m
    return None


def method_names(schema: Schema) -> list[str]:
    return sorted(f"{s.short_name}.{m.name}" for s in schema.services.values() for m in s.methods)


# --------------------------------------------------------------------------- JSON


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) or "flatc failed"


def _flatc_message(text: str, input_file: Path, what: str) -> str:
    message = _one_line(text)
    # "/tmp/x/request.json:1: 12: error: unknown field: nme" -> "line 1, column 12: ..."
    match = re.search(re.escape(str(input_file)) + r":(\d+): *(\d+): *error: *(.*)", message)
    if match:
        return f"{what}: line {match[1]}, column {match[2]}: {match[3]}"
    return f"{what}: {message}"


JSON_OPTIONS = ("--json", "--strict-json", "--raw-binary", "--defaults-json")


def _flatc(argv: list[str]) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolError(f"cannot run {argv[0]}: {exc}") from None
    if proc.returncode != 0:
        raise ToolError(proc.stderr + proc.stdout)


def json_to_buffer(bfbs: bytes, root_type: str, data: str) -> bytes:
    """``data`` (JSON) as a ``root_type`` FlatBuffer, encoded by flatc."""
    binary = flatc_mod.find_flatc()
    with tempfile.TemporaryDirectory(prefix="smf-call-") as tmp:
        work = Path(tmp)
        (work / "schema.bfbs").write_bytes(bfbs)
        request = work / "request.json"
        request.write_text(data, encoding="utf-8")
        inputs = [str(work / "schema.bfbs"), str(request)]
        try:
            _flatc([binary, "-b", "--root-type", root_type, "-o", str(work / "out"), *inputs])
        except ToolError as exc:
            raise ToolError(
                _flatc_message(str(exc), request, f"bad JSON for {root_type}")
            ) from None
        return (work / "out" / "request.bin").read_bytes()


def buffer_to_json(bfbs: bytes, root_type: str, body: bytes) -> str:
    """A ``root_type`` FlatBuffer as JSON (every field, defaults included), by flatc."""
    binary = flatc_mod.find_flatc()
    with tempfile.TemporaryDirectory(prefix="smf-call-") as tmp:
        work = Path(tmp)
        (work / "schema.bfbs").write_bytes(bfbs)
        (work / "response.bin").write_bytes(body)
        inputs = [str(work / "schema.bfbs"), "--", str(work / "response.bin")]
        try:
            _flatc(
                [binary, *JSON_OPTIONS, "--root-type", root_type, "-o", str(work / "out"), *inputs]
            )
        except ToolError as exc:
            message = _one_line(str(exc))
            raise ToolError(f"flatc cannot read the {root_type} response: {message}") from None
        return (work / "out" / "response.json").read_text(encoding="utf-8")


async def with_client(
    address: str, timeout: float, body: Callable[[smf.Client], Awaitable[T]]
) -> T:
    client = client_for(address, timeout)
    try:
        await asyncio.wait_for(client.connect(), timeout)
        return await body(client)
    finally:
        await client.close()
