"""The comparison engine: one named tensor, scratch against reference, explained element by element.

Both the pytest assertions and the report tables are built from `TensorComparison`, so they cannot disagree.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
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
    problem = _structural_problem(scratch, reference, dtype)
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


def compare_many(
    names: Sequence[str],
    scratch: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    dtype: object,
    tolerance: Tolerance | None = None,
    workspace: Workspace | None = None,
) -> list[TensorComparison]:
    """`compare(name, scratch[name], reference[name], dtype, detail=False)` for every name, in one batch.

    The results are the same as comparing one by one (tested); see `compare_batch` for how the batch works.
    """
    return compare_batch(names, scratch, reference, dtype, tolerance, workspace).comparisons()


def compare_batch(
    names: Sequence[str],
    scratch: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    dtype: object,
    tolerance: Tolerance | None = None,
    workspace: Workspace | None = None,
) -> BatchComparison:
    """Compare every named tensor in one batch: the verdict numbers at once, each `TensorComparison` on demand.

    The lockstep's hot path: each tensor's difference is written into `workspace`'s reusable arrays, end to end,
    and the rest of the work runs once over all of them: two NumPy calls per tensor and a handful per batch,
    instead of a dozen per tensor. Tensors with a structural problem, no elements or a non-finite value are left
    to the one-by-one path.
    """
    dtype = np.dtype(dtype)
    tolerance = tolerance or tolerance_for(dtype)
    pairs = [(name, np.asarray(scratch[name]), np.asarray(reference[name])) for name in names]
    return BatchComparison(pairs, dtype, tolerance, workspace or Workspace())


class BatchComparison:
    """A batch of named tensors compared in a `Workspace`'s arrays.

    `agreed` says whether every tensor matched in shape and dtype and was finite and within tolerance; then
    `max_abs_errors` and `tolerance_used` hold what each one's `TensorComparison` says (bit for bit, tested), which
    is all a lockstep step that agrees keeps of it. `comparisons()` builds the `TensorComparison`s from those
    figures and the tensors themselves: call it before anything changes them (a side's update moves its live
    parameters in place).
    """

    def __init__(
        self, pairs: list[tuple[str, np.ndarray, np.ndarray]], dtype: np.dtype, tolerance: Tolerance, workspace
    ) -> None:
        self.pairs, self.dtype, self.tolerance = pairs, dtype, tolerance
        self.batched = [pair for pair in pairs if pair[2].size and not _structural_problem(pair[1], pair[2], dtype)]
        self.layout = workspace.layout(tuple(reference.shape for _, _, reference in self.batched), dtype)
        if self.batched:
            _fill_shares(self.batched, tolerance, self.layout)
        layout = self.layout
        self.max_abs_errors: list[float] = (
            np.maximum.reduceat(layout.abs_error, layout.segment_starts).tolist() if self.batched else []
        )
        # The first element of each tensor with the largest share of its allowance (a NaN share, if any, comes first).
        self.worst_at = [
            start + int(shares.argmax()) for start, shares in zip(layout.starts, layout.share_slices, strict=True)
        ]
        # (|error|, allowance, share) there, per tensor.
        self.worst = [
            (layout.abs_error.item(at), layout.allowed.item(at), layout.share.item(at)) for at in self.worst_at
        ]
        self.agreed = len(self.batched) == len(pairs) and all(
            math.isfinite(share) and share <= 1 for _, _, share in self.worst
        )

    @property
    def names(self) -> list[str]:
        """The tensors' names, in order."""
        return [name for name, _, _ in self.pairs]

    @property
    def tolerance_used(self) -> list[float]:
        """Each tensor's `TensorComparison.tolerance_used`, in a batch that `agreed` (where every allowance is
        positive and finite); any other batch's are its `comparisons()`'."""
        if not self.agreed:
            raise ValueError("tolerance_used: only a batch that agreed has it here; read comparisons() instead")
        return [(0.0 if share == 0 else error) / allowance for error, allowance, share in self.worst]

    def comparisons(self) -> list[TensorComparison]:
        """Every tensor's `TensorComparison`, in order: what `compare(..., detail=False)` gives one by one."""
        results = {}
        for (name, scratch, reference), start, worst_at, (error, allowance, error_share), tensor_max_abs in zip(
            self.batched, self.layout.starts, self.worst_at, self.worst, self.max_abs_errors, strict=True
        ):
            if not math.isfinite(error_share):
                continue  # non-finite values: the one-by-one path sorts out which of them match
            flat_index = worst_at - start  # C order over the tensor's shape, whatever its strides (as `item` reads it)
            results[name] = TensorComparison(
                name=name,
                shape=reference.shape,
                dtype=self.layout.dtype_name,
                tolerance=self.tolerance,
                max_abs_error=tensor_max_abs,
                max_rel_error=math.nan,
                max_ulp=math.nan,
                p99_ulp=math.nan,
                mismatched=int(not error_share <= 1),
                size=reference.size,
                worst_index=_unravel(flat_index, reference.shape),
                scratch_value=float(scratch.item(flat_index)),
                reference_value=float(reference.item(flat_index)),
                worst_error=0.0 if error_share == 0 else error,  # as `_error_at` (a custom tolerance can round it)
                worst_allowed=allowance,
            )
        dtype, tolerance = self.dtype, self.tolerance
        return [results.get(name) or compare(name, s, r, dtype, tolerance, detail=False) for name, s, r in self.pairs]


class Workspace:
    """Preallocated flat work arrays for `compare_batch`, laid out once per set of tensor shapes.

    Every tensor of a batch has its slot in three contiguous arrays (|error|, allowance, share), and each slot's
    view in the tensor's shape is made once: a step's comparison then writes into memory that stays in cache, and
    its per-tensor work is two NumPy calls. Fresh arrays of this size (~330 KB each for the tutorial in float64)
    would come from mmap and be page-faulted on every step. One workspace per lockstep run; not shared between
    threads.
    """

    def __init__(self) -> None:
        self._layouts: dict[tuple, _Layout] = {}

    def layout(self, shapes: tuple[tuple[int, ...], ...], dtype: np.dtype) -> _Layout:
        """The slots for tensors of `shapes` (in order) and `dtype`, made on first use."""
        key = (dtype, shapes)
        layout = self._layouts.pop(key, None) or _Layout(shapes, dtype)
        self._layouts[key] = layout  # last: the most recently used
        if len(self._layouts) > MAX_LAYOUTS:  # a caller comparing ever-new shapes: memory stays bounded
            del self._layouts[next(iter(self._layouts))]  # the least recently used
        return layout


# A lockstep run uses up to six: full steps, strided steps and layers run alone, each for the full batches and for
# a short last one.
MAX_LAYOUTS = 8


class _Layout:
    """Tensors of given shapes end to end in three flat arrays, with each tensor's views into them."""

    def __init__(self, shapes: tuple[tuple[int, ...], ...], dtype: np.dtype) -> None:
        ends = list(itertools.accumulate((math.prod(shape) for shape in shapes), initial=0))
        self.starts = ends[:-1]  # each tensor's first element
        self.abs_error, self.allowed, self.share = (np.empty(ends[-1], dtype) for _ in range(3))
        bounds = list(itertools.pairwise(ends))
        self.error_views = [self.abs_error[a:b].reshape(shape) for (a, b), shape in zip(bounds, shapes, strict=True)]
        self.allowed_views = [self.allowed[a:b].reshape(shape) for (a, b), shape in zip(bounds, shapes, strict=True)]
        self.share_slices = [self.share[a:b] for a, b in bounds]
        self.segment_starts = np.array(self.starts, dtype=np.intp)
        self.dtype_name = dtype.name  # a slow property in NumPy 2: read once per layout


def _fill_shares(pairs: list[tuple[str, np.ndarray, np.ndarray]], tolerance: Tolerance, layout: _Layout) -> None:
    """Write each pair's |error|, allowance and share of it into its slots of `layout`."""
    slots = zip(pairs, layout.error_views, layout.allowed_views, strict=True)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf gives NaN: such tensors go one by one
        for (_, scratch, reference), error, allowance in slots:
            if reference.flags.c_contiguous:
                np.subtract(scratch, reference, out=error)
                np.abs(reference, out=allowance)
            else:  # torch's NCHW activations seen as NHWC: read the strided view once, then work contiguous
                np.copyto(allowance, reference)
                np.subtract(scratch, allowance, out=error)
                np.abs(allowance, out=allowance)
        _shares(layout.abs_error, layout.allowed, tolerance, out=layout.share)


def _unravel(flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """`np.unravel_index` for one index, as plain ints (several times faster for a handful of dimensions)."""
    index = []
    for extent in reversed(shape):
        flat_index, position = divmod(flat_index, extent)
        index.append(position)
    return tuple(reversed(index))


def _elementwise(scratch, reference, tolerance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|scratch - reference|, its allowance, and their ratio, elementwise (NaN where both are infinite)."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf gives NaN, handled by the callers
        abs_error = np.asarray(np.subtract(scratch, reference))
        allowed = np.asarray(np.abs(reference))
        return abs_error, allowed, _shares(abs_error, allowed, tolerance)


def _shares(
    abs_error: np.ndarray, allowed: np.ndarray, tolerance: Tolerance, out: np.ndarray | None = None
) -> np.ndarray:
    """From `scratch - reference` and `|reference|` (both changed in place into |error| and its allowance), the
    share of the allowance each element uses. The one place this arithmetic is written: both paths round alike.
    Callers ignore invalid and overflowing values (np.errstate): inf / inf gives NaN, which they handle; an inf
    allowance is fine."""
    # In place: allocations cost as much as the arithmetic here.
    np.abs(abs_error, out=abs_error)
    allowed *= tolerance.rtol
    allowed += tolerance.atol  # = tolerance.allowed(reference)
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


def _structural_problem(scratch: np.ndarray, reference: np.ndarray, dtype: np.dtype) -> str:
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
