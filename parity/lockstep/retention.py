"""What a lockstep record keeps of a step once it is past: only what the report reads of it.

A step's comparisons (`TensorComparison`, ~15 a step, ~0.6 KB each) are needed in full only for the steps a report
tabulates: the first, the first divergence and the worst (which the stepper details again from its kept tensors when
the run ends). Every other step is read for each tensor's name, max |error|, share of tolerance, verdict and flip
explanation (plots, `max_abs_error`, `percent_of_tolerance`, failing-step counts), so its comparisons shrink to those
five fields, packed (`SummarisedComparisons`, ~0.3 KB a step): a step that agreed is packed by the stepper at once,
straight from its batch's figures (`SummarisedComparisons.agreed`), any other once the next step is appended. A
record's memory then grows by under 1 KB a step instead of ~10 KB.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    from parity.engine.batch import BatchComparison
    from parity.lockstep.records import LockstepRecord, StepRecord


class ComparisonSummary:
    """What the report reads of one tensor's comparison at a packed step (a `TensorComparison`'s fields, read-only)."""

    __slots__ = ("name", "max_abs_error", "tolerance_used", "passed", "explained")

    def __init__(self, name: str, max_abs_error: float, tolerance_used: float, passed: bool, explained: str) -> None:
        self.name, self.max_abs_error, self.tolerance_used = name, max_abs_error, tolerance_used
        self.passed, self.explained = passed, explained

    @property
    def ok(self) -> bool:
        """Within tolerance, or out of it for a proven, harmless reason (as `TensorComparison.ok`)."""
        return self.passed or bool(self.explained)

    @property
    def detailed(self) -> bool:
        """Never: the costlier statistics are kept only for the steps a report shows in full."""
        return False

    def __repr__(self) -> str:
        return f"ComparisonSummary({self.name!r}, max_abs_error={self.max_abs_error!r}, passed={self.passed})"


class SummarisedComparisons(Sequence[ComparisonSummary]):
    """A step's comparisons, packed: the names (shared between steps), one array of errors and shares of tolerance,
    the verdicts as bytes, and the flip explanations when there are any."""

    __slots__ = ("names", "values", "verdicts", "explanations")

    def __init__(self, comparisons: Iterable, names_cache: dict[tuple[str, ...], tuple[str, ...]]) -> None:
        comparisons = list(comparisons)
        names = tuple(c.name for c in comparisons)
        self.names = names_cache.setdefault(names, names)
        self.values = array("d", [c.max_abs_error for c in comparisons] + [c.tolerance_used for c in comparisons])
        self.verdicts = bytes(bool(c.passed) for c in comparisons)
        explained = tuple(c.explained for c in comparisons)
        self.explanations = explained if any(explained) else None

    @classmethod
    def agreed(
        cls, batch: BatchComparison, names_cache: dict[tuple[str, ...], tuple[str, ...]]
    ) -> SummarisedComparisons:
        """A batch in which every tensor agreed, packed straight from its figures (no `TensorComparison` made)."""
        packed = cls.__new__(cls)
        names = tuple(batch.names)
        packed.names = names_cache.setdefault(names, names)
        packed.values = array("d", batch.max_abs_errors + batch.tolerance_used)
        packed.verdicts = b"\x01" * len(names)
        packed.explanations = None
        return packed

    @property
    def all_ok(self) -> bool:
        """Every tensor within tolerance or explained (as `all(c.ok for c in self)`)."""
        if self.explanations is None:
            return all(self.verdicts)
        return all(c.ok for c in self)

    @property
    def largest_tolerance_used(self) -> float:
        """The largest share of tolerance of an unexplained tensor (as `StepRecord.tolerance_used` reads it)."""
        if self.explanations is None:
            return max(self.values[len(self.names) :], default=0.0)
        return max((c.tolerance_used for c in self if not c.explained), default=0.0)

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, index: int) -> ComparisonSummary: ...
    @overload
    def __getitem__(self, index: slice) -> list[ComparisonSummary]: ...
    def __getitem__(self, index: int | slice) -> ComparisonSummary | list[ComparisonSummary]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        count = len(self.names)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError(f"comparison {index} of a step with {count}")
        explained = "" if self.explanations is None else self.explanations[index]
        return ComparisonSummary(
            self.names[index],
            self.values[index],
            self.values[count + index],
            bool(self.verdicts[index]),
            explained,
        )

    def __iter__(self) -> Iterator[ComparisonSummary]:
        return (self[index] for index in range(len(self.names)))


class StepList(list):
    """A run's steps: appending one retires the step before it to its summary (`retire`)."""

    def __init__(self, record: LockstepRecord, steps: Iterable[StepRecord] = ()) -> None:
        super().__init__(steps)
        self.record = record
        self.names_cache: dict[tuple[str, ...], tuple[str, ...]] = {}

    def append(self, step: StepRecord) -> None:
        """Append `step`; the previous step keeps only what the report reads of it, unless shown in full."""
        if self:
            retire(self.record, self[-1], self.names_cache)
        super().append(step)


def retire(record: LockstepRecord, step: StepRecord, names_cache: dict[tuple[str, ...], tuple[str, ...]]) -> None:
    """Summarise `step`'s comparisons unless a report shows the step in full: the first step and the first divergence
    (the worst step is detailed again from its kept tensors when the run ends)."""
    divergence = record.first_divergence
    if step.step == 0 or (divergence is not None and divergence.step == step.step):
        return
    if not isinstance(step.comparisons, SummarisedComparisons):
        step.comparisons = SummarisedComparisons(step.comparisons, names_cache)
