"""smfc: FlatBuffers IDL -> typed smf server and client stubs for Python.

``smfc -o OUT schema.fbs`` (see ``smfc.cli``) or, from Python, ``generate``.
"""

from __future__ import annotations

from .generate import Result, SchemaError, generate, render
from .model import crc32
from .version import __version__

__all__ = ["Result", "SchemaError", "__version__", "crc32", "generate", "render"]
