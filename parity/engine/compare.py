"""The comparison engine: one named tensor, scratch against reference, explained element by element.

Both the pytest assertions and the report tables are built from `TensorComparison`, so they cannot disagree. Many
tensors at once, as a lockstep step compares them, go through `parity.engine.batch`, which gives the same results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from parity.engine.tolerances import Tolerance, tolerance_for


@dataclass(slots=True)
class TensorComparison:
    """How far one scratch tensor is from its reference, and whether that is within tolerance.

    Treat it as immutable (derive a changed one with `dataclasses.replace`). It is not `frozen=True` only because a
    frozen dataclass takes ~4x longer to build, and the lockstep builds ~15 of them every step.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    tolerance: Tolerance
    max_abs_error: float
    max_rel_error: float
    max_ulp: float
    p99_ulp: float
    mismatched: int
    size: int
    worst_index: tuple[int, ...]  # the element that uses the largest share of its allowance
    scratch_value: float
    reference_value: float
    worst_error: float
    worst_allowed: float
    problem: str = ""  # a shape or dtype mismatch: the values were not compared
    explained: str = ""  # set by the lockstep run when a mismatch is proven harmless (a near-tie argmax flip)

    @property
    def passed(self) -> bool:
        """True when every element is within its allowance and shapes and dtypes match."""
        return not self.problem and self.mismatched == 0

    @property
    def ok(self) -> bool:
        """Within tolerance, or out of it for a proven, harmless reason (see `explained`)."""
        return self.passed or bool(self.explained)

    @property
    def detailed(self) -> bool:
        """Whether the costlier statistics (relative error, ULPs, mismatch count) were computed."""
        return not math.isnan(self.max_ulp)

    @property
    def tolerance_used(self) -> float:
        """The largest |error| / allowance over the elements, as a fraction (1.0 = at the limit; inf for NaN)."""
        if self.problem:
            return math.inf
        if not (self.worst_allowed > 0 and math.isfinite(self.worst_allowed)):
            return 0.0 if self.passed else math.inf
        return self.worst_error / self.worst_allowed

    def message(self) -> str:
        """An assert_close-style explanation: which element, both values, how far off, against what allowance."""
        if self.problem:
            return f"{self.name}: {self.problem}"
        index = _index_text(self.worst_index)
        if self.passed:
            verdict = f"{self.name}: OK, all {self.size} elements within tolerance"
        else:
            share = f" ({100 * self.mismatched / self.size:.1f}%)" if self.detailed else ""
            verdict = f"{self.name}: mismatched elements: {self.mismatched} / {self.size}{share}"
        if self.explained:
            verdict += f" [explained: {self.explained}]"
        return (
            f"{verdict}. Greatest error (relative to its allowance) at index {index}: "
            f"scratch {self.scratch_value!r}, reference {self.reference_value!r}, "
            f"|error| {self.worst_error:.3g} "
            f"(up to {self.worst_allowed:.3g} allowed, {self.tolerance_used:.3g}x of it; "
            f"{self.dtype} tolerance: {self.tolerance.describe()}). Max abs error {self.max_abs_error:.3g}"
            + (
                f", max rel error {self.max_rel_error:.3g}, max ULP {self.max_ulp:.3g}, p99 ULP {self.p99_ulp:.3g}."
                if self.detailed
                else "."
            )
        )

    def row(self) -> dict[str, object]:
        """One report/table row (the same numbers the assertion message uses)."""
        return {
            "tensor": self.name,
            "shape": "x".join(map(str, self.shape)) or "scalar",
            "max |Δ|": self.max_abs_error,
            "max rel": self.max_rel_error,
            "max ULP": self.max_ulp,
            "p99 ULP": self.p99_ulp,
            "worst index": _index_text(self.worst_index),
            "% of tol": 100 * self.tolerance_used,
            "result": "PASS" if self.passed else ("EXPLAINED" if self.explained else "FAIL"),
        }


def compare(
    name: str,
    scratch: np.ndarray,
    reference: np.ndarray,
    dtype: object | None = None,
    tolerance: Tolerance | None = None,
    detail: bool = True,
) -> TensorComparison:
    """Compare `scratch` with `reference` element by element under the tolerance of `dtype`.

    With `detail=False` only what decides pass/fail is computed (the lockstep hot path); relative error and
    ULPs are then NaN, and `mismatched` is a lower bound (0 when passing, else at least 1).
    """
    scratch, reference = np.asarray(scratch), np.asarray(reference)
    dtype = np.dtype(dtype if dtype is not None else reference.dtype)
    tolerance = tolerance or tolerance_for(dtype)
    problem = structural_problem(scratch, reference, dtype)
    if problem:
        return _unmatched(name, scratch, reference, dtype, tolerance, problem)
    if reference.size == 0:
        return _empty(name, reference, dtype, tolerance)
    abs_error, allowed, share = _elementwise(scratch, reference, tolerance)
    # np.argmax returns the first NaN if there is one: a NaN share is then the worst element.
    worst = np.unravel_index(int(share.argmax()), share.shape)
    if not math.isfinite(share[worst]):  # non-finite values: equal ones match exactly, any other pair fails
        share = np.where(scratch == reference, 0.0, np.where(np.isnan(share), np.inf, share))
        worst = np.unravel_index(int(share.argmax()), share.shape)
    passed = bool(share[worst] <= 1)
    stats = {"max_rel_error": math.nan, "max_ulp": math.nan, "p99_ulp": math.nan, "mismatched": int(not passed)}
    if detail:
        stats = _detailed_stats(scratch, reference, abs_error, share)
    max_abs = float(abs_error.max(initial=0.0))
    return TensorComparison(
        name=name,
        shape=reference.shape,
        dtype=dtype.name,
        tolerance=tolerance,
        max_abs_error=math.inf if math.isnan(max_abs) else max_abs,
        size=reference.size,
        worst_index=tuple(int(i) for i in worst),
        scratch_value=float(scratch[worst]),
        reference_value=float(reference[worst]),
        worst_error=_error_at(abs_error[worst], share[worst]),
        worst_allowed=float(allowed[worst]),
        **stats,
    )


def _elementwise(scratch, reference, tolerance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|scratch - reference|, its allowance, and their ratio, elementwise (NaN where both are infinite)."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf gives NaN, handled by the callers
        abs_error = np.asarray(np.subtract(scratch, reference))
        allowed = np.asarray(np.abs(reference))
        return abs_error, allowed, allowance_shares(abs_error, allowed, tolerance)


def allowance_shares(
    abs_error: np.ndarray,
    allowed: np.ndarray,
    tolerance: Tolerance,
    out: np.ndarray | None = None,
    atol: float | np.ndarray | None = None,
) -> np.ndarray:
    """From `scratch - reference` and `|reference|` (both changed in place into |error| and its allowance), the
    share of the allowance each element uses. The one place this arithmetic is written: both paths round alike.
    Callers ignore invalid and overflowing values (np.errstate): inf / inf gives NaN, which they handle; an inf
    allowance is fine."""
    # In place: allocations cost as much as the arithmetic here.
    np.abs(abs_error, out=abs_error)
    allowed *= tolerance.rtol
    allowed += tolerance.atol if atol is None else atol  # = tolerance.allowed(reference); `atol`: one per element
    return np.asarray(np.divide(abs_error, allowed, out=out))


def _detailed_stats(scratch, reference, abs_error, share) -> dict[str, float | int]:
    abs_error = np.where(np.isnan(abs_error), np.inf, abs_error)
    ulps = ulp_distance(scratch, reference)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_error = np.where(abs_error == 0, 0.0, abs_error / np.abs(reference))
    return {
        "max_rel_error": float(rel_error.max(initial=0.0)),
        "max_ulp": float(ulps.max(initial=0.0)),
        "p99_ulp": float(np.quantile(ulps, 0.99, method="higher")) if ulps.size else 0.0,
        "mismatched": int(np.count_nonzero(~(share <= 1))),  # the same test as `passed`
    }


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many representable floats lie between a and b, elementwise, as float64 (inf where either is NaN)."""
    int_type = {4: np.int32, 8: np.int64}[a.dtype.itemsize]
    a_line, b_line = (_on_number_line(np.ascontiguousarray(x).view(int_type)) for x in (a, b))
    same_sign = (a_line < 0) == (b_line < 0)
    with np.errstate(over="ignore"):  # the opposite-sign branch may wrap; np.where discards it
        exact = np.abs(a_line - b_line).astype(np.float64)
    across_zero = np.abs(a_line).astype(np.float64) + np.abs(b_line).astype(np.float64)
    distance = np.where(same_sign, exact, across_zero)
    distance[np.isnan(a) | np.isnan(b)] = np.inf
    return distance


def _on_number_line(bits: np.ndarray) -> np.ndarray:
    """Map IEEE bit patterns so adjacent floats are adjacent integers (-0.0 and 0.0 both at 0)."""
    return np.where(bits < 0, np.iinfo(bits.dtype).min - bits, bits)


def structural_problem(scratch: np.ndarray, reference: np.ndarray, dtype: np.dtype) -> str:
    """Why the two cannot be compared value by value (shapes or dtypes differ), or "" when they can."""
    if scratch.shape != reference.shape:
        return f"shape mismatch: scratch {scratch.shape}, reference {reference.shape}; values not compared"
    if scratch.dtype != reference.dtype or scratch.dtype != dtype:
        return (
            f"dtype mismatch: scratch {scratch.dtype}, reference {reference.dtype}, run dtype {dtype}; "
            "values not compared (nothing may be cast silently)"
        )
    return ""


def _error_at(abs_error: float, share: float) -> float:
    """The error to report at one element: 0 for equal values (also equal infinities), inf for a NaN error."""
    if share == 0:
        return 0.0
    return math.inf if math.isnan(abs_error) else float(abs_error)


def _empty(name, reference, dtype, tolerance) -> TensorComparison:
    return TensorComparison(
        name=name,
        shape=reference.shape,
        dtype=dtype.name,
        tolerance=tolerance,
        max_abs_error=0.0,
        max_rel_error=0.0,
        max_ulp=0.0,
        p99_ulp=0.0,
        mismatched=0,
        size=0,
        worst_index=(),
        scratch_value=math.nan,
        reference_value=math.nan,
        worst_error=0.0,
        worst_allowed=tolerance.atol,
    )


def _unmatched(name, scratch, reference, dtype, tolerance, problem) -> TensorComparison:
    return TensorComparison(
        name=name,
        shape=reference.shape,
        dtype=dtype.name,
        tolerance=tolerance,
        max_abs_error=math.inf,
        max_rel_error=math.inf,
        max_ulp=math.inf,
        p99_ulp=math.inf,
        mismatched=reference.size,
        size=reference.size,
        worst_index=(),
        scratch_value=math.nan,
        reference_value=math.nan,
        worst_error=math.inf,
        worst_allowed=0.0,
        problem=problem,
    )


def _index_text(index: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, index)) + ("," if len(index) == 1 else "") + ")" if index else "()"
