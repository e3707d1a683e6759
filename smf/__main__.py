"""``python -m smf COMMAND``: a shim for the ``smf`` command, which lives in ``smf_tools``
(the runtime itself never imports the tools or the generator)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from smf_tools.cli import main as tools_main

    return tools_main(argv)


if __name__ == "__main__":
    sys.exit(main())
