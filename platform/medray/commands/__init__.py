"""Subcommands of the ``medray`` CLI, one module each."""
