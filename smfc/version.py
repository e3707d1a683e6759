"""smfc's version (a module of its own: the CLI needs it without importing the package)."""

__version__ = "0.1.0"
