"""Implementations of the ``duplex`` subcommands (argument parsing lives in ``duplex.cli``)."""
