"""What the engine knows about max-pools: tied windows, near-tie flips, routing errors, for any K x K pool at any
position (its input is whatever the trace names as the output of the layer before it).

Every function takes NHWC activations with the batch first, from the reference's own tensors where it can, so a
count never depends on the code under test.
"""

from __future__ import annotations

import numpy as np

from parity.diagnosis.patterns import beyond as beyond_tolerance
from parity.engine.tolerances import Tolerance
from scratch.spec import NetworkSpec


def windows(x: np.ndarray, size: int) -> np.ndarray:
    """`(N, H, W, C)` -> `(N, H//K, W//K, C, K*K)`, window elements in row-major order (odd sizes floor)."""
    batch, height, width, channels = x.shape
    out_h, out_w = height // size, width // size
    cropped = x[:, : size * out_h, : size * out_w]
    grouped = cropped.reshape(batch, out_h, size, out_w, size, channels).transpose(0, 1, 3, 5, 2, 4)
    return grouped.reshape(batch, out_h, out_w, channels, size * size)


def tied(pool_input: np.ndarray, size: int) -> np.ndarray:
    """Per window and channel: is its max there more than once? `(N, H//K, W//K, C)`."""
    elements = windows(pool_input, size)
    return np.count_nonzero(elements == elements.max(axis=-1, keepdims=True), axis=-1) > 1


def count_tied_windows(pool_input: np.ndarray, size: int) -> int:
    """How many (window, channel) pairs of a K x K/stride-K pool over `(N, H, W, C)` have their max more than once."""
    return int(np.count_nonzero(tied(pool_input, size)))


def _leftovers(mask: np.ndarray, size: int) -> int:
    """How many flagged elements lie in the rows and columns a K x K pool drops."""
    out_h, out_w = mask.shape[1] // size, mask.shape[2] // size
    return int(np.count_nonzero(mask[:, size * out_h :]) + np.count_nonzero(mask[:, : size * out_h, size * out_w :]))


def near_tie_flips(
    size: int,
    scratch_pool_input: np.ndarray,
    reference_pool_input: np.ndarray,
    scratch_d_pool_input: np.ndarray,
    reference_d_pool_input: np.ndarray,
    forward_tolerance: Tolerance,
    gradient_tolerance: Tolerance,
    rerouted: np.ndarray | None = None,
    tie_policy: str = "first",
) -> int:
    """Count windows whose gradient went elsewhere only because rounding reordered two near-equal maxima.

    Returns that count when it explains every out-of-tolerance element of the pool's input gradient (or, given
    `rerouted`, every element flagged there), else -1. Both sides route by `tie_policy`, each on its own input.
    With "first" (PyTorch's), a window is such a flip when: scratch routed its whole gradient to one element, the
    first maximum of scratch's *own* pool input; the reference routed it to its first maximum; the two candidates
    differ in the reference by no more than the forward tolerance; and the amount routed agrees. An exact tie in
    both inputs routed elsewhere (the tutorial's "all", or a last-max rule) is never a flip. With "all" (the
    tutorial's: every maximum gets the whole gradient), see `_every_maximum_flips`.
    """
    bad = beyond_tolerance(scratch_d_pool_input, reference_d_pool_input, gradient_tolerance)
    bad = bad if rerouted is None else bad | rerouted
    if _leftovers(bad, size):
        return -1  # leftover rows and columns never receive gradient
    bad_windows = windows(bad, size).any(axis=-1)
    if not bad_windows.any():
        return 0
    ref_in, own_in = windows(reference_pool_input, size)[bad_windows], windows(scratch_pool_input, size)[bad_windows]
    ref_d = windows(reference_d_pool_input, size)[bad_windows]
    own_d = windows(scratch_d_pool_input, size)[bad_windows]
    if tie_policy == "all":
        flips = _every_maximum_flips(ref_in, own_in, ref_d, own_d, forward_tolerance, gradient_tolerance)
        return int(flips.sum()) if flips.all() else -1
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


def _every_maximum_flips(
    ref_in: np.ndarray,
    own_in: np.ndarray,
    ref_d: np.ndarray,
    own_d: np.ndarray,
    forward_tolerance: Tolerance,
    gradient_tolerance: Tolerance,
) -> np.ndarray:
    """Per window `(windows, K*K)`, under the tutorial's rule: are its maxima a different set on each side only
    because rounding split or joined near-equal values? That is: the sets differ; every element of either is
    within forward tolerance of the reference's maximum; and scratch gave the reference's amount to each element
    of its *own* set and nothing elsewhere (an element that is no maximum of scratch's own input is a bug)."""
    ref_max = ref_in.max(axis=-1, keepdims=True)
    ref_set, own_set = ref_in == ref_max, own_in == own_in.max(axis=-1, keepdims=True)
    near = ref_max - ref_in <= forward_tolerance.allowed(ref_max)
    candidates_near = np.all(near | ~(ref_set | own_set), axis=-1)
    amount = np.where(ref_set, ref_d, 0).sum(axis=-1, keepdims=True) / ref_set.sum(axis=-1, keepdims=True)
    same_amount = np.abs(own_d - amount) <= gradient_tolerance.allowed(amount)
    routed_to_own_set = np.all(np.where(own_set, same_amount, own_d == 0), axis=-1)
    return np.any(ref_set != own_set, axis=-1) & candidates_near & routed_to_own_set


def routed_elsewhere(size: int, scratch_d_pool_input: np.ndarray, reference_d_pool_input: np.ndarray) -> np.ndarray:
    """Elementwise: did exactly one side route gradient here, in a window where both sides routed some? A flip of a
    gradient smaller than the tolerance leaves the pool's input gradient within tolerance, yet its sum over a conv's
    windows upstream may not be. (A window one side gives no gradient at all differs in amount, not in routing.)"""
    own, ref = scratch_d_pool_input != 0, reference_d_pool_input != 0
    batch, height, width, channels = own.shape
    out_h, out_w = height // size, width // size
    both = windows(own, size).any(axis=-1) & windows(ref, size).any(axis=-1)  # (N, oh, ow, C)
    differs = (own != ref)[:, : size * out_h, : size * out_w].reshape(batch, out_h, size, out_w, size, channels)
    mask = np.zeros_like(own)  # leftover rows and columns: never routed by either side
    mask[:, : size * out_h, : size * out_w] = (differs & both[:, :, None, :, None]).reshape(
        batch, size * out_h, size * out_w, channels
    )
    return mask


def untied_routing_mismatches(
    size: int,
    reference_pool_input: np.ndarray,
    scratch_d_pool_input: np.ndarray,
    reference_d_pool_input: np.ndarray,
    gradient_tolerance: Tolerance,
) -> int:
    """How many windows without a tie (or leftover elements) got a different pool input gradient.

    Zero means every mismatch sits in a tied window: a tie-policy difference. More means a routing bug.
    """
    bad = beyond_tolerance(scratch_d_pool_input, reference_d_pool_input, gradient_tolerance)
    untied = ~tied(reference_pool_input, size)
    return _leftovers(bad, size) + int(np.count_nonzero(windows(bad, size).any(axis=-1) & untied))


def classify_routing(
    size: int,
    reference_pool_input: np.ndarray,
    scratch_d_pool_input: np.ndarray,
    reference_d_pool_input: np.ndarray,
    gradient_tolerance: Tolerance,
) -> tuple[str, dict[str, object]] | None:
    """What a pool's wrong input gradient is: (`dropped` | `tie_policy` | `routing`, evidence), or None when the
    windows do not tell (a tensor whose every gradient is on the element the reference routes to, all rounded or
    scaled alike, is left to the other detectors: float32 rounding, a factor).

    - `dropped`: every wrong window got no gradient at all;
    - `tie_policy`: every wrong window is tied, and each of its routed elements is one of its maxima holding the
      window's whole gradient: another tie rule (every maximum, the tutorial's; the last; ...);
    - `routing`: gradient sent to an element that is not a maximum, or into the rows and columns the pool drops.
    """
    bad = beyond_tolerance(scratch_d_pool_input, reference_d_pool_input, gradient_tolerance)
    if not bad.any():
        return None
    tied_windows = tied(reference_pool_input, size)
    evidence: dict[str, object] = {"tied_windows": int(tied_windows.sum())}
    if _leftovers(bad, size):
        return "routing", {**evidence, "leftover_elements": _leftovers(bad, size), "rule": "into dropped rows/columns"}
    wrong = windows(bad, size).any(axis=-1)
    ours = windows(scratch_d_pool_input, size)[wrong]
    evidence["wrong_windows"] = int(wrong.sum())
    if not ours.any():
        return "dropped", evidence
    if _rounded_or_scaled(scratch_d_pool_input, reference_d_pool_input):
        return None
    theirs = windows(reference_d_pool_input, size)[wrong]
    routed = ours != 0
    inputs = windows(reference_pool_input, size)[wrong]
    # The window's gradient: what each element the reference routes to holds (one under PyTorch's rule, every
    # maximum under the tutorial's).
    amount = theirs.sum(axis=-1, keepdims=True) / np.maximum(np.count_nonzero(theirs, axis=-1, keepdims=True), 1)
    maxima = inputs == inputs.max(axis=-1, keepdims=True)
    untied = int(np.count_nonzero(~tied_windows[wrong]))
    whole = ~routed | ~beyond_tolerance(ours, np.broadcast_to(amount, ours.shape), gradient_tolerance)
    if untied or not np.all(routed <= maxima) or not whole.all():
        return "routing", {**evidence, "untied_wrong_windows": untied, "rule": "not to a maximum"}
    return "tie_policy", {**evidence, "rule": _tie_rule(routed, maxima)}


def _rounded_or_scaled(scratch: np.ndarray, reference: np.ndarray) -> bool:
    """Whether every gradient of the whole tensor is where the reference's is, each off by one common ratio (1 up to
    rounding, or one factor): no routing question. A ratio in some windows only (a sign, one channel) is routing's."""
    routed = scratch != 0
    if not np.array_equal(routed, reference != 0) or not routed.any():
        return False
    ratios = scratch[routed] / reference[routed]
    return bool(np.allclose(ratios, ratios[0], rtol=1e-3))


def _tie_rule(routed: np.ndarray, maxima: np.ndarray) -> str:
    """Which tie rule routed these tied windows: `all` (every maximum), `first` or `last` (one maximum, row-major: a
    reference routing by the tutorial's rule), or `other` (one maximum, neither always the first nor the last, or a
    mix)."""
    if np.array_equal(routed, maxima):
        return "all"
    for rule, position in (
        ("first", np.argmax(maxima, axis=-1)),
        ("last", maxima.shape[-1] - 1 - np.argmax(maxima[..., ::-1], axis=-1)),
    ):
        only = np.zeros_like(maxima)
        only[np.arange(len(maxima)), position] = True
        if np.array_equal(routed, only):
            return rule
    return "other"


def pool_input(spec: NetworkSpec, pool: str, tensors: dict[str, np.ndarray]) -> np.ndarray | None:
    """The input of pool layer `pool` as the trace names it: the previous layer's output (None if not there)."""
    position = [layer.name for layer in spec.layers].index(pool)
    return tensors.get(f"{spec.layers[position - 1].name}.out") if position else None
