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
    """argparse type: a network spec whose items parse (`conv3x8,pool2,dense10`); shapes are checked against the
    data's image size when the network is built."""
    from scratch.spec import parse_spec

    try:
        return parse_spec(text, image_shape=(4096, 4096)).text
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).replace(" (input 4096x4096x1)", "")) from None
