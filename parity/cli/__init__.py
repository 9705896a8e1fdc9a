"""`cnn-parity`: the entry point (`entry`) and, in a leaf module, the error type and exit codes (`errors`).

The names below load their module when first used (see `parity`'s own doc for why)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parity.cli.entry import COMMANDS, build_parser, main
    from parity.cli.errors import EXIT_DIVERGENCE, EXIT_PARITY, EXIT_USAGE, UsageError

_HOMES = {
    "COMMANDS": "parity.cli.entry",
    "build_parser": "parity.cli.entry",
    "main": "parity.cli.entry",
    "EXIT_DIVERGENCE": "parity.cli.errors",
    "EXIT_PARITY": "parity.cli.errors",
    "EXIT_USAGE": "parity.cli.errors",
    "UsageError": "parity.cli.errors",
}
__all__ = ["COMMANDS", "EXIT_DIVERGENCE", "EXIT_PARITY", "EXIT_USAGE", "UsageError", "build_parser", "main"]


def __getattr__(name: str) -> object:
    """One of `__all__`, from its module (imported on first use)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'parity.cli' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
