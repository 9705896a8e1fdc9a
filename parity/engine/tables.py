"""Plain-text tables: the one renderer behind assertion messages, the terminal summaries, check, selftest and
report.md."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from tabulate import tabulate

from parity.engine.compare import TensorComparison


def text_table(rows: Sequence[Mapping[str, object]], tablefmt: str = "github", float_format: str = ".3g") -> str:
    """One row per mapping, its keys as headers; floats `float_format`-ed, every cell shown as the text it is."""
    cells = [{key: format(value, float_format) if isinstance(value, float) else value for key, value in row.items()}
             for row in rows]  # fmt: skip
    return tabulate(cells, headers="keys", tablefmt=tablefmt, disable_numparse=True)


def comparison_table(comparisons: Iterable[TensorComparison], tablefmt: str = "github") -> str:
    """One row per tensor: errors, ULPs, share of tolerance, result."""
    rows = [c.row() for c in comparisons]
    return text_table(rows, tablefmt) if rows else ""
