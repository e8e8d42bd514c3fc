"""Subcommands of the ``figkd`` CLI: one module each, exposing ``COMMAND``."""
