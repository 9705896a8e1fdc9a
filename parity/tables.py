"""Tables of comparisons, shared by assertion messages, the terminal summary and report.md."""

from __future__ import annotations

from collections.abc import Iterable

from tabulate import tabulate

from parity.compare import TensorComparison


def comparison_table(comparisons: Iterable[TensorComparison], tablefmt: str = "github") -> str:
    """One row per tensor: errors, ULPs, share of tolerance, result."""
    rows = [c.row() for c in comparisons]
    return tabulate(rows, headers="keys", tablefmt=tablefmt, floatfmt=".3g") if rows else ""
