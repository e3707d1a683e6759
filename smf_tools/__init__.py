"""The ``smf`` command's tools (demo, bench, ...): they use both the runtime and smfc."""
