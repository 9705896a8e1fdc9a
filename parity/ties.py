"""Counting tied 2x2 pool windows, from the reference's own pool input (independent of the code under test)."""

from __future__ import annotations

import numpy as np

from parity.tolerances import Tolerance


def count_tied_windows(pool_input: np.ndarray) -> int:
    """How many (window, channel) pairs of a 2x2/stride-2 pool over `(H, W, C)` have their max more than once."""
    windows = _windows(pool_input)
    return int(np.count_nonzero(np.count_nonzero(windows == windows.max(axis=-1, keepdims=True), axis=-1) > 1))


def beyond_tolerance(scratch: np.ndarray, reference: np.ndarray, tolerance: Tolerance) -> np.ndarray:
    """Elementwise: is |scratch - reference| out of its allowance (NaN counts as out)?"""
    return ~(np.abs(scratch - reference) <= tolerance.allowed(reference))


def _windows(x: np.ndarray) -> np.ndarray:
    """`(H, W, C)` -> `(H//2, W//2, C, 4)`, window elements in row-major order (odd sizes floor)."""
    out_h, out_w = x.shape[0] // 2, x.shape[1] // 2
    return np.stack([x[r : 2 * out_h : 2, c : 2 * out_w : 2] for r in (0, 1) for c in (0, 1)], axis=-1)


def near_tie_flips(
    scratch_pool_input: np.ndarray,
    reference_pool_input: np.ndarray,
    scratch_d_pool_input: np.ndarray,
    reference_d_pool_input: np.ndarray,
    forward_tolerance: Tolerance,
    gradient_tolerance: Tolerance,
) -> int:
    """Count windows whose gradient went elsewhere only because rounding reordered two near-equal maxima.

    Returns that count when it explains every out-of-tolerance element of the pool's input gradient, else -1.
    A window is such a flip when: scratch routed its whole gradient to one element, the first maximum of scratch's
    *own* pool input; the reference routed it to its first maximum; the two candidates differ in the reference by
    no more than the forward tolerance; and the amount routed agrees. An exact tie in both inputs routed elsewhere
    (the tutorial's "all", or a last-max rule) is never a flip.
    """
    bad = beyond_tolerance(scratch_d_pool_input, reference_d_pool_input, gradient_tolerance)
    out_h, out_w = bad.shape[0] // 2, bad.shape[1] // 2
    if bad[2 * out_h :].any() or bad[:, 2 * out_w :].any():
        return -1  # odd-size leftovers never receive gradient
    bad_windows = _windows(bad).any(axis=-1)
    if not bad_windows.any():
        return 0
    ref_in, own_in = _windows(reference_pool_input)[bad_windows], _windows(scratch_pool_input)[bad_windows]
    ref_d, own_d = _windows(reference_d_pool_input)[bad_windows], _windows(scratch_d_pool_input)[bad_windows]
    rows = np.arange(len(ref_in))
    ref_route, own_route = ref_in.argmax(axis=-1), own_in.argmax(axis=-1)  # first maximum, as PyTorch
    single_route = np.count_nonzero(own_d, axis=-1) <= 1
    routed_to_own_max = (own_d[rows, own_route] != 0) | (own_d.sum(axis=-1) == 0)
    gap = ref_in[rows, ref_route] - ref_in[rows, own_route]
    near_tie = (own_route != ref_route) & (gap <= forward_tolerance.allowed(ref_in[rows, ref_route]))
    same_amount = np.abs(own_d[rows, own_route] - ref_d[rows, ref_route]) <= gradient_tolerance.allowed(
        ref_d[rows, ref_route]
    )
    flips = single_route & routed_to_own_max & near_tie & same_amount
    return int(flips.sum()) if flips.all() else -1


def untied_routing_mismatches(
    reference_pool_input: np.ndarray,
    scratch_d_pool_input: np.ndarray,
    reference_d_pool_input: np.ndarray,
    gradient_tolerance: Tolerance,
) -> int:
    """How many windows without a tie (or odd-size leftovers) got a different pool input gradient.

    Zero means every mismatch sits in a tied window: a tie-policy difference. More means a routing bug.
    """
    bad = beyond_tolerance(scratch_d_pool_input, reference_d_pool_input, gradient_tolerance)
    out_h, out_w = bad.shape[0] // 2, bad.shape[1] // 2
    leftovers = int(np.count_nonzero(bad[2 * out_h :]) + np.count_nonzero(bad[: 2 * out_h, 2 * out_w :]))
    windows = _windows(reference_pool_input)
    tied = np.count_nonzero(windows == windows.max(axis=-1, keepdims=True), axis=-1) > 1
    return leftovers + int(np.count_nonzero(_windows(bad).any(axis=-1) & ~tied))


def flip_consequences(
    image: np.ndarray,
    reference_tensors: dict[str, np.ndarray],
    flipped_gradient: np.ndarray,
    lr: float,
) -> dict[str, np.ndarray]:
    """What the reference's filter gradient, input gradient and updated filters become with a rerouted pool gradient.

    `flipped_gradient` is scratch's minus the reference's pool input gradient, kept only where they differ beyond
    tolerance (the flipped windows), shape `(H-2, W-2, F)`. The conv is linear in it, so each rerouted element adds
    its window of the normalised image to dL/dfilters and its filter to dL/dimage. A tensor of scratch's that agrees
    with these within tolerance is explained by the flip; one that does not is a bug the flip does not excuse.
    """
    dtype = flipped_gradient.dtype
    x = image.astype(dtype) / dtype.type(255) - dtype.type(0.5)  # the tutorial's normalisation, as both sides do
    filters_before = reference_tensors["filters"] + dtype.type(lr) * reference_tensors["d_filters"]
    d_filters = reference_tensors["d_filters"].copy()
    d_image = reference_tensors["d_image"].copy()
    for i, j, f in np.argwhere(flipped_gradient != 0):  # a handful of elements: the flipped windows' maxima
        d_filters[f] += flipped_gradient[i, j, f] * x[i : i + 3, j : j + 3]
        d_image[i : i + 3, j : j + 3] += flipped_gradient[i, j, f] * filters_before[f]
    filters = reference_tensors["filters"] - dtype.type(lr) * (d_filters - reference_tensors["d_filters"])
    return {"d_filters": d_filters, "d_image": d_image, "filters": filters}
