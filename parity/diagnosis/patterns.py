"""Pattern detectors: small functions over a (scratch, reference) pair of arrays, each testing one way code goes
wrong. Each returns its evidence (plain JSON values) when the pattern explains every element out of tolerance, else
None. They know nothing of layers; `parity.diagnosis.diagnose` decides which apply to which tensor.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np

from parity.engine.tolerances import Tolerance, tolerance_for

# Factors worth a name: what an exact multiple of the reference usually means.
_SMALL_INTEGER = 100_000
_TWO = {  # what a factor of exactly 2 either way usually is
    "times": " (a sum where a mean belongs, or a gradient counted twice)",
    "divided by": " (a mean where a sum belongs, or a gradient halved)",
}


def beyond(scratch: np.ndarray, reference: np.ndarray, tolerance: Tolerance) -> np.ndarray:
    """Elementwise: is |scratch - reference| out of its allowance? As in the comparison engine, NaN is out, and an
    infinity (whose allowance is infinite) is matched only by the same infinity."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf gives NaN
        out = ~(np.abs(scratch - reference) <= tolerance.allowed(reference)) | np.isinf(scratch) | np.isinf(reference)
        return out & ~(scratch == reference)


def matches(scratch: np.ndarray, candidate: np.ndarray, tolerance: Tolerance) -> bool:
    """Whether `scratch` equals `candidate` within the tolerance, shapes included."""
    return scratch.shape == candidate.shape and not beyond(scratch, candidate, tolerance).any()


def non_finite(scratch: np.ndarray, reference: np.ndarray) -> dict[str, object] | None:
    """inf or NaN on either side: which side, how many, and of what sort."""
    ours, theirs = ~np.isfinite(scratch), ~np.isfinite(reference)
    if not ours.any() and not theirs.any():
        return None
    side = "both" if ours.any() and theirs.any() else ("scratch" if ours.any() else "reference")
    values = scratch if ours.any() else reference
    sorts = [name for name, present in (("inf", np.isinf(values).any()), ("nan", np.isnan(values).any())) if present]
    return {"side": side, "scratch_count": int(ours.sum()), "reference_count": int(theirs.sum()), "values": sorts}


def dropped(scratch: np.ndarray, reference: np.ndarray, tolerance: Tolerance) -> dict[str, object] | None:
    """Every element out of tolerance is exactly 0 in scratch: a gradient lost or an update never applied."""
    bad = beyond(scratch, reference, tolerance)
    if not bad.any() or np.any(scratch[bad] != 0):
        return None
    return {"zeroed": int(bad.sum()), "size": int(bad.size), "all": bool(np.all(scratch == 0))}


def scale(
    scratch: np.ndarray, reference: np.ndarray, tolerance: Tolerance, lr: float | None = None, batch: int = 1
) -> dict[str, object] | None:
    """scratch = k * reference for one k != 1 (k = -1: a sign error; k = lr: the learning rate applied twice; k =
    `batch` or 1 / `batch`, for a gradient of a loss averaged over a batch: a sum where the mean belongs, or the
    mean taken twice)."""
    ours, theirs = scratch.astype(np.float64).ravel(), reference.astype(np.float64).ravel()
    norm = float(np.vdot(theirs, theirs))
    if norm == 0 or theirs.size < 2:  # any two single numbers are a multiple of each other
        return None
    factor = float(np.vdot(ours, theirs)) / norm
    if abs(factor - 1) < 1e-6 or abs(factor) < 1e-12 or not matches(ours, factor * theirs, tolerance):
        return None

    def fits(exact: float, loose: bool = True) -> bool:
        # The fitted factor carries the tensors' rounding (a float32 update read off weights far larger than it,
        # 0.1% off): a reading is also right when the exact factor, within 1% of it, explains every element.
        off = abs(factor - exact)
        near = loose and off <= 1e-2 * abs(exact)
        return off <= 1e-6 * abs(exact) or (near and matches(ours, exact * theirs, tolerance))

    return {"factor": factor, "reading": _reading(factor, lr, fits, batch)}


# Past this, n and n + 1 lie within 2% of each other: a factor 1% off cannot tell them apart.
_LOOSE_INTEGER = 50


def _reading(factor: float, lr: float | None, fits: Callable[..., bool], batch: int = 1) -> str:
    """What a factor usually means, as a short phrase; `fits(k, loose)`: whether exactly k explains the tensor."""
    if fits(-1.0):
        return "a sign error"
    if lr and fits(lr):
        return "the learning rate applied twice"
    if batch > 1 and fits(batch, loose=batch <= _LOOSE_INTEGER):
        return f"times {batch}, the batch size: a sum where the mean belongs"
    if batch > 1 and fits(1 / batch, loose=batch <= _LOOSE_INTEGER):
        return f"divided by {batch}, the batch size: the mean taken twice"
    for value, word in ((factor, "times"), (1 / factor, "divided by")):
        n = round(value)
        exact = n if word == "times" else 1 / n if n else 0.0
        if 2 <= abs(n) <= _SMALL_INTEGER and fits(exact, loose=abs(n) <= _LOOSE_INTEGER):
            return f"{word} {n}" + (_TWO[word] if n == 2 else "")
    return ""


def permuted(
    scratch: np.ndarray,
    reference: np.ndarray,
    tolerance: Tolerance,
    axis_names: tuple[str, ...],
    flatten_shape: tuple[int, ...] | None = None,
) -> dict[str, object] | None:
    """scratch = the reference with two axes swapped, some axes flipped, or (a dense layer's rows) a CHW flatten."""
    for transform, candidate in _rearrangements(reference, axis_names, flatten_shape):
        if matches(scratch, candidate, tolerance) and not matches(reference, candidate, tolerance):
            return {"transform": transform}
    return None


def _rearrangements(
    reference: np.ndarray, axis_names: tuple[str, ...], flatten_shape: tuple[int, ...] | None
) -> Iterator[tuple[str, np.ndarray]]:
    names = axis_names if len(axis_names) == reference.ndim else tuple(f"axis {i}" for i in range(reference.ndim))
    if reference.ndim == 2:
        yield "transposed", reference.T
    for first, second in itertools.combinations(range(reference.ndim), 2):
        if reference.shape[first] == reference.shape[second] > 1:
            yield f"{names[first]} and {names[second]} axes swapped", np.swapaxes(reference, first, second)
    flippable = [axis for axis in range(reference.ndim) if reference.shape[axis] > 1]
    for count in (2, 1):
        for axes in itertools.combinations(flippable, count):
            which = " and ".join(names[axis] for axis in axes)
            yield (
                f"flipped along the {which} axes" if count > 1 else f"flipped along the {which} axis",
                np.flip(reference, axes),
            )
    if flatten_shape is not None and len(flatten_shape) == 3 and reference.shape[0] == np.prod(flatten_shape):
        height, width, channels = flatten_shape
        rest = reference.shape[1:]
        hwc_as_chw = reference.reshape(height, width, channels, *rest).transpose(2, 0, 1, *range(3, 3 + len(rest)))
        yield "rows in CHW flatten order (PyTorch's) instead of the tutorial's HWC", hwc_as_chw.reshape(reference.shape)
        chw_as_hwc = reference.reshape(channels, height, width, *rest).transpose(1, 2, 0, *range(3, 3 + len(rest)))
        yield "rows in an unusual flatten order (HWC read as CHW)", chw_as_hwc.reshape(reference.shape)


def broadcast(
    scratch: np.ndarray, reference: np.ndarray, tolerance: Tolerance, axis: int, axis_name: str
) -> dict[str, object] | None:
    """Every slice of scratch along `axis` (every filter, every unit) is the same, where the reference's are not."""
    if scratch.shape != reference.shape or scratch.ndim == 0 or scratch.shape[axis] < 2:
        return None
    ours, theirs = np.moveaxis(scratch, axis, 0), np.moveaxis(reference, axis, 0)
    if not all(matches(slice_, ours[0], tolerance) for slice_ in ours[1:]):
        return None
    if all(matches(slice_, theirs[0], tolerance) for slice_ in theirs[1:]):
        return None  # the reference's are the same too: nothing to blame
    same_as = next(
        (
            what
            for what, value in (("sum", theirs.sum(axis=0)), ("mean", theirs.mean(axis=0)))
            if matches(ours[0], value, tolerance)
        ),
        "",
    )
    return {"axis": axis_name, "count": int(ours.shape[0]), "same_as": same_as}


def border(scratch: np.ndarray, reference: np.ndarray, tolerance: Tolerance) -> dict[str, object] | None:
    """Of an `(N, H, W, C)` tensor, only the outer rows or columns (at most 2 deep) differ: a skipped border."""
    if scratch.shape != reference.shape or scratch.ndim != 4:
        return None
    bad = beyond(scratch, reference, tolerance)
    if not bad.any():
        return None
    height, width = bad.shape[1:3]
    best = None
    for top, bottom, left, right in itertools.product(range(3), repeat=4):
        if top + bottom >= height or left + right >= width or top + bottom + left + right == 0:
            continue
        inside = bad[:, top : height - bottom, left : width - right]
        if not inside.any() and (best is None or top + bottom + left + right < sum(best)):
            best = (top, bottom, left, right)
    if best is None:
        return None
    top, bottom, left, right = best
    return {"top_rows": top, "bottom_rows": bottom, "left_columns": left, "right_columns": right}


def some_samples(scratch: np.ndarray, reference: np.ndarray, tolerance: Tolerance) -> dict[str, object] | None:
    """Of a batch, some samples are right and the others off: only part of the batch contributed."""
    if scratch.shape != reference.shape or scratch.ndim < 2 or scratch.shape[0] < 2:
        return None
    bad = beyond(scratch, reference, tolerance).reshape(scratch.shape[0], -1).any(axis=1)
    if bad.all() or not bad.any():
        return None
    return {"right_samples": [int(i) for i in np.flatnonzero(~bad)], "batch": int(scratch.shape[0])}


# How many float32 eps of relative error (against the tensor's largest value) float32 numbers used in float64
# arithmetic leave: a rounding of 0.5 eps per operand, a little more through a sum.
DOWNCAST_EPS_MULTIPLE = 16


def downcast(scratch: np.ndarray, reference: np.ndarray, dtype: np.dtype) -> dict[str, object] | None:
    """In a float64 run, errors at float32's rounding level: something was computed or stored in float32."""
    if np.dtype(dtype) != np.float64 or scratch.shape != reference.shape:
        return None
    scale_ = float(np.abs(reference).max(initial=0.0))
    if scale_ == 0 or not matches(scratch, reference, tolerance_for(np.float32)):
        return None
    relative = float(np.abs(scratch - reference).max()) / scale_
    # Values that are float32 numbers were stored in float32: their error may have grown over a float32 computation
    # up to 1e-5. Values that are not (float32 weights or inputs in float64 arithmetic) have only the rounding of
    # those: a few float32 eps. Further off is an error of another kind (an extra term such as weight decay).
    stored = bool(np.array_equal(scratch.astype(np.float32), scratch))
    limit = 1e-5 if stored else DOWNCAST_EPS_MULTIPLE * float(np.finfo(np.float32).eps)
    return {"relative_error": relative} if 1e-9 < relative < limit else None
