"""``python -m smfc``: the same as the ``smfc`` command."""

import sys

from .cli import main

sys.exit(main())
