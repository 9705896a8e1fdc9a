"""pytest-facing assertions on top of the comparison engine: the failure text is the report's text."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from parity.compare import TensorComparison, compare
from parity.lockstep import TENSOR_ORDER, LockstepRecord
from parity.tables import comparison_table


class ParityError(AssertionError):
    """A scratch tensor is out of tolerance; the message explains which element, how far, against what."""


def compare_tensors(
    scratch: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    dtype: object,
    names: Iterable[str] | None = None,
) -> list[TensorComparison]:
    """Compare every named tensor present on both sides, in forward-then-backward order."""
    names = [n for n in TENSOR_ORDER if n in reference] if names is None else list(names)
    missing = [n for n in names if n not in scratch]
    if missing:
        raise ParityError(f"scratch produced no {', '.join(missing)}")
    return [compare(name, scratch[name], reference[name], dtype) for name in names]


def assert_parity(
    scratch: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    dtype: object,
    names: Iterable[str] | None = None,
    context: str = "",
) -> list[TensorComparison]:
    """Assert every named tensor matches; on failure, name the first one to diverge and show the whole table."""
    comparisons = compare_tensors(scratch, reference, dtype, names)
    failures = [c for c in comparisons if not c.passed]
    if failures:
        where = f" ({context})" if context else ""
        raise ParityError(f"first divergence{where}: {failures[0].message()}\n\n{comparison_table(comparisons)}")
    return comparisons


def assert_lockstep(record: LockstepRecord, context: str = "") -> None:
    """Assert a lockstep run kept parity at every step; on failure, explain the first divergence."""
    if record.first_divergence is not None:
        where = f" ({context})" if context else ""
        raise ParityError(f"lockstep parity lost{where}: {record.first_divergence.message()}")
