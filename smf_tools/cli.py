"""The ``smf`` command: ``smf COMMAND [options]``; ``smf --help`` lists the commands.

Each command is a module with ``main(argv) -> int``, imported only when it runs, so
one command's dependencies never slow down or break another.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata

# name -> (module, one line of help). Add a command here and it shows in ``smf --help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("smf_tools.demo", "generate stubs, start the demo server, load it, print latency"),
    "bench": ("smf_tools.bench", "load one method of any schema and report latency percentiles"),
    "health": ("smf_tools.health", "ask a server's health service; exit 0 when SERVING"),
    "list": ("smf_tools.listing", "list the services and methods a server has (reflection)"),
    "call": ("smf_tools.call", "call one method with JSON in, JSON out (reflection or --schema)"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: smf COMMAND [options]   (smf COMMAND --help for a command's options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_module, text) in COMMANDS.items()]
    lines += ["", "The generator is a command of its own: smfc --help."]
    return "\n".join(lines)


def version() -> str:
    try:
        return metadata.version("smf")
    except metadata.PackageNotFoundError:  # a checkout that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args and args[0] == "--version":
        print(f"smf {version()}")
        return 0
    if not args or args[0] not in COMMANDS:
        if args:
            print(f"smf: unknown command {args[0]!r}", file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
