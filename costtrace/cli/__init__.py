"""The `costtrace` command line: thin entry points that parse, call, and print, one module per audience."""

from costtrace.cli import finance, operators, producers  # noqa: F401  (each adds its commands to `main`)
from costtrace.cli.main import down, main, unavailable

__all__ = ["down", "main", "unavailable"]
