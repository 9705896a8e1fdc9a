"""Many named tensors compared in one batch: what `compare(..., detail=False)` gives one by one, at a fraction of
the calls (the lockstep's hot path).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from parity.engine.compare import TensorComparison, allowance_shares, compare, structural_problem
from parity.engine.tolerances import Tolerance, tolerance_for


def compare_many(
    names: Sequence[str],
    scratch: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    dtype: object,
    tolerance: Tolerance | Mapping[str, Tolerance] | None = None,
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
    tolerance: Tolerance | Mapping[str, Tolerance] | None = None,
    workspace: Workspace | None = None,
) -> BatchComparison:
    """Compare every named tensor in one batch: the verdict numbers at once, each `TensorComparison` on demand.

    The lockstep's hot path: each tensor's difference is written into `workspace`'s reusable arrays, end to end,
    and the rest of the work runs once over all of them: two NumPy calls per tensor and a handful per batch,
    instead of a dozen per tensor. Tensors with a structural problem, no elements or a non-finite value are left
    to the one-by-one path. `tolerance`: one for every tensor, or one per name (default: the dtype's).
    """
    dtype = np.dtype(dtype)
    pairs = [(name, np.asarray(scratch[name]), np.asarray(reference[name])) for name in names]
    if isinstance(tolerance, Mapping):
        tolerances = [tolerance[name] for name in names]
    else:
        tolerances = [tolerance or tolerance_for(dtype)] * len(names)
    return BatchComparison(pairs, dtype, tolerances, workspace or Workspace())


class BatchComparison:
    """A batch of named tensors compared in a `Workspace`'s arrays.

    `agreed` says whether every tensor matched in shape and dtype and was finite and within tolerance; then
    `max_abs_errors` and `tolerance_used` hold what each one's `TensorComparison` says (bit for bit, tested), which
    is all a lockstep step that agrees keeps of it. `comparisons()` builds the `TensorComparison`s from those
    figures and the tensors themselves: call it before anything changes them (a side's update moves its live
    parameters in place).
    """

    def __init__(
        self,
        pairs: list[tuple[str, np.ndarray, np.ndarray]],
        dtype: np.dtype,
        tolerances: list[Tolerance],
        workspace: Workspace,
    ) -> None:
        self.pairs, self.dtype = pairs, dtype
        self.tolerance_of = {name: tolerance for (name, _, _), tolerance in zip(pairs, tolerances, strict=True)}
        self.batched = [pair for pair in pairs if pair[2].size and not structural_problem(pair[1], pair[2], dtype)]
        # Nothing to batch takes no slot in the workspace (it would only push out a layout in use).
        shapes = tuple(reference.shape for _, _, reference in self.batched)
        self.layout = layout = workspace.layout(shapes, dtype) if self.batched else _Layout((), dtype)
        self.max_abs_errors: list[float] = []
        self._max_shares: list[float] = []  # each tensor's largest share of its allowance (NaN if it has one)
        if self.batched:
            _fill_shares(self.batched, [self.tolerance_of[name] for name, _, _ in self.batched], layout)
            self.max_abs_errors = np.maximum.reduceat(layout.abs_error, layout.segment_starts).tolist()
            self._max_shares = np.maximum.reduceat(layout.share, layout.segment_starts).tolist()
        self.agreed = len(self.batched) == len(pairs) and all(
            math.isfinite(share) and share <= 1 for share in self._max_shares
        )

    @functools.cached_property
    def worst_at(self) -> list[int]:
        """The first element of each tensor with the largest share of its allowance (a NaN share, if any, comes
        first), as an index into the layout's arrays. Found only when asked for: a batch that agrees in float64 never
        needs it."""
        layout = self.layout
        return [start + int(shares.argmax()) for start, shares in zip(layout.starts, layout.share_slices, strict=True)]

    @functools.cached_property
    def worst(self) -> list[tuple[float, float, float]]:
        """(|error|, allowance, share) at `worst_at`, per tensor."""
        layout = self.layout
        return [(layout.abs_error.item(at), layout.allowed.item(at), layout.share.item(at)) for at in self.worst_at]

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
        if self.dtype == np.float64:
            # The float64 shares are the very division `TensorComparison.tolerance_used` does (in Python floats):
            # the largest is its value, bit for bit, with no need to find where it is.
            return list(self._max_shares)
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
                tolerance=self.tolerance_of[name],
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
        dtype, tolerance_of = self.dtype, self.tolerance_of
        return [
            results.get(name) or compare(name, s, r, dtype, tolerance_of[name], detail=False)
            for name, s, r in self.pairs
        ]


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
        self._bounds, self._atols = bounds, {}

    def atols(self, tolerances: list[Tolerance]) -> np.ndarray:
        """Each element's atol, from its tensor's tolerance (made once per set of atols). The rtols must agree."""
        if len({t.rtol for t in tolerances}) != 1:
            raise ValueError("tolerances of one batch must share their rtol; only atol may differ by tensor")
        key = tuple(t.atol for t in tolerances)
        if key not in self._atols:
            atols = np.empty(len(self.abs_error), self.abs_error.dtype)
            for (start, end), atol in zip(self._bounds, key, strict=True):
                atols[start:end] = atol
            self._atols = {key: atols}  # one set in use at a time: a batch's last, short step has its own layout
        return self._atols[key]


def _fill_shares(pairs: list[tuple[str, np.ndarray, np.ndarray]], tolerances: list[Tolerance], layout: _Layout) -> None:
    """Write each pair's |error|, allowance (under its tolerance) and share of it into its slots of `layout`."""
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
        if len({(t.atol, t.rtol) for t in tolerances}) == 1:
            allowance_shares(layout.abs_error, layout.allowed, tolerances[0], out=layout.share)
        else:  # the same rtol, atols by tensor (per-sample gradients of a batch): one atol per element
            allowance_shares(
                layout.abs_error, layout.allowed, tolerances[0], out=layout.share, atol=layout.atols(tolerances)
            )


def _unravel(flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """`np.unravel_index` for one index, as plain ints (several times faster for a handful of dimensions)."""
    index = []
    for extent in reversed(shape):
        flat_index, position = divmod(flat_index, extent)
        index.append(position)
    return tuple(reversed(index))
