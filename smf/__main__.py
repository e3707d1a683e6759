"""``python -m smf COMMAND``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    commands = {"demo": "smf.demo", "bench": "smf.bench"}
    # smf_tools' subcommands (the smf_tools.cli entry point registers the same modules).
    commands |= {"health": "smf_tools.health", "list": "smf_tools.listing"}
    commands["call"] = "smf_tools.call"
    if not args or args[0] not in commands:
        print(f"usage: smf {{{','.join(commands)}}} [options]", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(commands[args[0]])
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
