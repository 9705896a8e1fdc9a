"""`cnn-parity`: the entry point (`entry`) and, in a leaf module, the error type and exit codes (`errors`).

The names below load their module when first used (see `parity`'s own doc for why)."""

from __future__ import annotations

import importlib

_HOMES = {
    "COMMANDS": "parity.cli.entry",
    "build_parser": "parity.cli.entry",
    "main": "parity.cli.entry",
    "EXIT_DIVERGENCE": "parity.cli.errors",
    "EXIT_PARITY": "parity.cli.errors",
    "EXIT_USAGE": "parity.cli.errors",
    "UsageError": "parity.cli.errors",
}
__all__ = list(_HOMES)


def __getattr__(name: str) -> object:
    """One of `__all__`, from its module (imported on first use)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'parity.cli' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
