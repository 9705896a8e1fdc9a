"""The markdown building blocks report.md is made of: GitHub tables, and a run's spec re-read from report.json."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from tabulate import tabulate

from reports.summary import number
from scratch.spec import NetworkSpec, parse_spec


def table(rows: Sequence[dict[str, object]], spec: str = ".3g") -> str:
    """A GitHub table of `rows`; floats `spec`-formatted, everything else as text."""
    if not rows:
        return "_(nothing to show)_"
    headers = [_cell(key) for key in rows[0]]
    body = [
        [_cell(number(value, spec) if isinstance(value, float) else value) for value in row.values()] for row in rows
    ]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def _cell(value: object) -> str:
    """Table cell text; a `|` inside a cell would end it in GitHub markdown, so it is escaped."""
    return str(value).replace("|", "\\|")


def comparison_table(rows: Sequence[dict[str, object]]) -> str:
    """The engine's per-tensor rows (max abs, max rel, ULPs, % of tolerance, result), as stored in report.json."""
    return table(rows)


@functools.lru_cache(maxsize=32)
def _parsed(text: str, image_shape: tuple[int, int], num_classes: int) -> NetworkSpec:
    return parse_spec(text, image_shape, num_classes)


def run_spec(run: dict[str, object]) -> NetworkSpec:
    """The run's network spec, re-parsed from what report.json records (its text, image shape, classes)."""
    return _parsed(str(run["architecture"]), tuple(run["image_shape"]), int(run["num_classes"]))
