"""Calls the SmfStorage demo server's Get and Put and prints the answers.

python examples/demo/client.py --host 127.0.0.1 --port 7000 [--name smf]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "generated"))

from smf_gen.demo.Request import RequestT
from smf_gen.demo.SmfStorage_smf import Get_WIRE_ID, Put_WIRE_ID, SmfStorageClient

import smf


async def call(host: str, port: int, name: str) -> None:
    async with smf.Client(host, port) as client:
        storage = SmfStorageClient(client)
        got = await storage.Get(RequestT(name=name))  # a Response table over the reply
        print(f"Get({name!r}) -> {_text(got.Name())!r}  (wire id {Get_WIRE_ID})")
        put = await storage.Put(RequestT(name=name), timeout=2.0)
        print(f"Put({name!r}) -> {_text(put.Name())!r}  (wire id {Put_WIRE_ID})")


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument("--name", default="smf")
    args = parser.parse_args(argv)
    try:
        smf.run(call(args.host, args.port, args.name))
    except smf.SmfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
