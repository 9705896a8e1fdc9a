"""pytest-facing assertions on top of the comparison engine: the failure text is the report's text."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from parity.engine.compare import TensorComparison, compare
from parity.engine.tables import comparison_table
from parity.engine.tolerances import tensor_tolerances
from parity.lockstep.stepper import LockstepRecord
from scratch.spec import NetworkSpec


class ParityError(AssertionError):
    """A scratch tensor is out of tolerance; the message explains which element, how far, against what."""


def compared_names(
    reference: dict[str, np.ndarray], names: Iterable[str] | None = None, spec: NetworkSpec | None = None
) -> list[str]:
    """The tensors to compare: `names` as given; else the spec's tensors the reference has, in the spec's order
    (forward, loss, backward, parameters); else the reference's own order."""
    if names is not None:
        return list(names)
    if spec is not None:
        return [name for name in spec.tensor_names if name in reference]
    return list(reference)


def compare_tensors(
    scratch: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    dtype: object,
    names: Iterable[str] | None = None,
    spec: NetworkSpec | None = None,
) -> list[TensorComparison]:
    """Compare every named tensor (default: every reference tensor, see `compared_names`) against scratch's; with
    `spec`, the per-sample gradients of a batch under `Tolerance.per_sample_of` its size, as the lockstep judges."""
    names = compared_names(reference, names, spec)
    missing = [n for n in names if n not in scratch]
    if missing:
        raise ParityError(f"scratch produced no {', '.join(missing)}")
    tolerances = {}
    first = spec.tensors[0].name if spec is not None else None  # the first layer's output: the batch first
    if first in reference:
        tolerances = tensor_tolerances(spec.tensors, np.dtype(dtype), int(np.shape(reference[first])[0]))
    return [compare(name, scratch[name], reference[name], dtype, tolerances.get(name)) for name in names]


def assert_parity(
    scratch: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    dtype: object,
    names: Iterable[str] | None = None,
    context: str = "",
    spec: NetworkSpec | None = None,
) -> list[TensorComparison]:
    """Assert every named tensor matches; on failure, name the first one to diverge and show the whole table."""
    comparisons = compare_tensors(scratch, reference, dtype, names, spec)
    failures = [c for c in comparisons if not c.passed]
    if failures:
        where = f" ({context})" if context else ""
        raise ParityError(f"first divergence{where}: {failures[0].message()}\n\n{comparison_table(comparisons)}")
    return comparisons


def assert_lockstep(record: LockstepRecord, context: str = "") -> None:
    """Assert a lockstep run kept parity at every step; on failure, explain the first divergence."""
    where = f" ({context})" if context else ""
    if record.first_divergence is not None:
        raise ParityError(f"lockstep parity lost{where}: {record.first_divergence.message()}")
    if record.unreproduced_failures:  # strided steps that failed and passed when replayed: not deterministic
        raise ParityError(f"lockstep parity not shown{where}: steps {record.unreproduced_failures} failed once only")
    for verdict in record.layers.values():  # each layer on its own, fed the reference's inputs
        if verdict.passed is False:
            raise ParityError(
                f"layer {verdict.name} wrong on its own{where}: step {verdict.step}, {verdict.tensor}: "
                f"{verdict.diagnosis.text_for(verdict.tensor)}"
            )
