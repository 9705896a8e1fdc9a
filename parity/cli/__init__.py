"""`cnn-parity`: the entry point (`entry`) and, in a leaf module, the error type and exit codes (`errors`)."""

from parity.cli.entry import COMMANDS, build_parser, main
from parity.cli.errors import EXIT_DIVERGENCE, EXIT_PARITY, EXIT_USAGE, UsageError

__all__ = ["COMMANDS", "EXIT_DIVERGENCE", "EXIT_PARITY", "EXIT_USAGE", "UsageError", "build_parser", "main"]
