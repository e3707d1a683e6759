"""A small replicated-log broker built on smf (Raft per partition)."""
