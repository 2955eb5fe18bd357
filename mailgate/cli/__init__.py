"""The command line (`mailgate …`): a thin click layer over the library; see `base`."""

from mailgate.cli.base import cli, main

__all__ = ["cli", "main"]
