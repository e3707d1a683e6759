"""Tools that need both the runtime and the generator: the ``smf`` command."""
