"""Near-tie flips: a pool gradient routed to another element only because rounding reordered two near-equal maxima,
or a ReLU gradient passed on one side only because rounding put an input within tolerance of 0 on the other side of it.

For each pool whose input gradient (or a tensor before it) fails, `parity.diagnosis.pool.near_tie_flips` proves
the routing element by element; for each ReLU, `sign_flips` finds the inputs whose sign rounding decided. What the
rerouted gradient changes upstream (every parameter gradient, input gradient and updated parameter of the layers
before the pool or ReLU) is then recomputed from the reference's own tensors: the backward of those layers is linear
in the gradient, so each upstream tensor must equal the reference's plus the backward of the rerouted part. A
compared tensor that does not, whether or not it failed against the reference, is a bug the flip does not excuse,
and the step fails.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

import scratch
from parity.diagnosis import patterns
from parity.diagnosis.pool import beyond_tolerance, near_tie_flips, routed_elsewhere
from parity.engine.compare import compare
from parity.engine.tolerances import Tolerance, tolerance_for
from scratch.spec import NetworkSpec

if TYPE_CHECKING:
    from parity.lockstep.records import StepRecord

# A rerouting found at one layer: the layer's input gradient as scratch's routing makes it, what that adds to the
# reference's, and how many windows or signs flipped.
Rerouting = tuple[np.ndarray, np.ndarray, int]


def explain_flips(
    spec: NetworkSpec,
    step: StepRecord,
    scratch_tensors: dict[str, np.ndarray],
    reference_tensors: dict[str, np.ndarray],
    dtype: np.dtype,
    images: np.ndarray,
    lr: float,
    tie_policy: str = "first",
) -> None:
    """Mark the failures of `step` that near-tie flips account for as explained (in place), with the evidence.
    `tie_policy`: the rule both sides' pools route ties by (PyTorch's "first", or the tutorial's "all").

    Two kinds of flip, each a choice rounding made between two values within forward tolerance of each other: a pool
    window whose gradient went to another of its near-equal maxima, and a ReLU input within forward tolerance of 0
    whose sign came out the other way (a pool window of zeros then routes its gradient to a masked element on one
    side and to the one just above 0 on the other). Layers are taken deepest first. A flip at one layer changes the
    gradient every earlier layer receives, so each one is judged against the reference's tensors as the deeper flips
    change them; the changes add up (the backward of the layers before it is linear in its input gradient). Any
    routing difference that is not a proven flip leaves the step's failures as they are."""
    by_name = {c.name: i for i, c in enumerate(step.comparisons)}
    expected = dict(reference_tensors)  # the reference's tensors, with the consequences of every flip proven so far
    forward_tolerance = tolerance_for(dtype)  # of the pools' and ReLUs' inputs, activations
    changed: set[str] = set()
    flips: dict[str, dict[str, int]] = {"pool": {}, "relu": {}}  # by kind, each layer's count
    for position in reversed(range(1, len(spec.layers))):
        layer, name = spec.layers[position], f"{spec.layers[position].name}.d_in"
        if layer.kind not in flips or (layer.kind == "pool" and name not in by_name):
            continue
        upstream = {info.name for info in spec.tensors if info.layer in {e.name for e in spec.layers[:position]}}
        if all(c.ok for c in step.comparisons if c.name == name or c.name in upstream):
            continue
        if layer.kind == "pool":
            comparison = step.comparisons[by_name[name]]
            found = _pool_rerouting(
                spec, position, comparison, scratch_tensors, expected, forward_tolerance, tie_policy
            )
            if found is None:
                return  # a routing difference that is not a near-tie flip, or no proof: left failing
        else:
            found = _relu_rerouting(spec, position, scratch_tensors, expected, forward_tolerance)
            if found is None:
                continue  # no sign is known to have flipped: none is claimed
        ours, rerouted, count = found
        if count == 0:
            continue
        consequences = upstream_consequences(spec, position, rerouted, expected, images, lr, tie_policy)
        if consequences is None:
            return
        expected.update(consequences, **{name: ours})
        changed.update(consequences, {name})
        flips[layer.kind][layer.name] = count
    if not any(flips.values()) or not _consistent(step, by_name, changed, scratch_tensors, expected, dtype):
        return
    step.flipped_windows += sum(flips["pool"].values())
    step.flipped_signs += sum(flips["relu"].values())
    reason = _reason(flips["pool"], flips["relu"])
    for name in changed:
        if name in by_name and not step.comparisons[by_name[name]].ok:
            step.comparisons[by_name[name]] = replace(step.comparisons[by_name[name]], explained=reason)


def _pool_rerouting(
    spec, position, comparison, scratch_tensors, expected, forward_tolerance, tie_policy
) -> Rerouting | None:
    """The pool at `position`'s near-tie flips, proven element by element; None when some routing difference is no
    such flip, or when either side's pool input is missing (then nothing is excused)."""
    layer, inputs = spec.layers[position], f"{spec.layers[position - 1].name}.out"
    if inputs not in scratch_tensors or inputs not in expected:
        return None
    ours, theirs = scratch_tensors[comparison.name], expected[comparison.name]
    tolerance = comparison.tolerance  # the pool's input gradient's own (per sample)
    elsewhere = routed_elsewhere(layer.kernel, ours, theirs)
    count = near_tie_flips(
        layer.kernel, scratch_tensors[inputs], expected[inputs], ours, theirs, forward_tolerance, tolerance,
        rerouted=elsewhere, tie_policy=tie_policy,
    )  # fmt: skip
    if count < 0:
        return None
    return ours, np.where(beyond_tolerance(ours, theirs, tolerance) | elsewhere, ours - theirs, 0), count


def _relu_rerouting(spec, position, scratch_tensors, expected, forward_tolerance) -> Rerouting | None:
    """The ReLU at `position`'s sign flips, each passing the gradient it receives by scratch's own sign; None when
    an input to it or the gradient it receives is not at hand (no sign is then known to have flipped)."""
    name, inputs = f"{spec.layers[position].name}.d_in", f"{spec.layers[position - 1].name}.out"
    incoming = expected.get(f"{spec.layers[position + 1].name}.d_in")  # a ReLU is never last: a dense layer is
    if incoming is None or name not in expected or inputs not in scratch_tensors or inputs not in expected:
        return None
    own_input = scratch_tensors[inputs]
    flipped = sign_flips(own_input, expected[inputs], forward_tolerance) & (incoming != 0)
    ours = np.where(flipped, np.where(own_input > 0, incoming, 0), expected[name])
    return ours, ours - expected[name], int(np.count_nonzero(flipped))


def _consistent(step, by_name, changed, scratch_tensors, expected, dtype) -> bool:
    """Whether every compared tensor the flips change is, in scratch, within tolerance of its value as they change
    it: the failures they explain, and the tensors that agreed with the reference as well (one that agrees only
    there never saw the rerouted gradient: a bug the flips do not excuse)."""
    for name in changed & by_name.keys():
        if name not in scratch_tensors:
            return False
        tolerance = step.comparisons[by_name[name]].tolerance
        if not compare(name, scratch_tensors[name], expected[name], dtype, tolerance, detail=False).passed:
            return False
    return True


def sign_flips(scratch_input: np.ndarray, reference_input: np.ndarray, forward_tolerance: Tolerance) -> np.ndarray:
    """Elementwise: is a ReLU input positive on one side only, the two within forward tolerance of each other (both
    within rounding of 0)? Such an element passes its gradient on one side only, and either is right. NaN and
    infinities never are."""
    differs = (scratch_input > 0) != (reference_input > 0)
    # Within tolerance as the engine judges it: NaN never is, an infinity only against the same infinity.
    return differs & ~patterns.beyond(scratch_input, reference_input, forward_tolerance)


def _reason(windows: dict[str, int], signs: dict[str, int]) -> str:
    """What an explained tensor says: how many flips of each kind, by layer, and what rounding did."""
    parts = [f"{count} window{'s' * (count > 1)} in {pool}" for pool, count in windows.items()]
    parts += [f"{count} ReLU sign{'s' * (count > 1)} in {relu}" for relu, count in signs.items()]
    causes = ["rounding reordered two near-equal maxima"] * bool(windows)
    causes += ["rounding put a ReLU input within tolerance of 0 on the other side of it"] * bool(signs)
    return f"near-tie flip(s) ({', '.join(parts)}): {' and '.join(causes)}"


def upstream_consequences(
    spec: NetworkSpec,
    position: int,
    gradient: np.ndarray,
    reference_tensors: dict[str, np.ndarray],
    images: np.ndarray,
    lr: float,
    tie_policy: str = "first",
) -> dict[str, np.ndarray] | None:
    """The reference's tensors of layers `0 .. position-1` as they become when `gradient` is added at the input of
    layer `position` (pools before it routing by `tie_policy`); None when the reference's tensors needed are not all
    there."""
    dtype = gradient.dtype
    # Its layers, run on the reference's inputs and weights.
    net = scratch.build_network(spec, dtype=dtype, tie_policy=tie_policy)
    params_before = {}
    for layer in spec.layers[:position]:
        for param, _ in layer.params:
            after, grad = (
                reference_tensors.get(f"{layer.name}.{param}"),
                reference_tensors.get(f"{layer.name}.d_{param}"),
            )
            if after is None or grad is None:
                return None
            params_before[f"{layer.name}.{param}"] = after + dtype.type(lr) * grad
    current = net.parameters()
    net.load_parameters({name: params_before.get(name, value) for name, value in current.items()})
    inputs = [net.normalize(images)] + [reference_tensors.get(f"{layer.name}.out") for layer in spec.layers[:position]]
    if any(value is None for value in inputs):
        return None
    expected = {}
    for index in reversed(range(position)):
        layer_spec, layer = spec.layers[index], net.layers[index]
        layer.forward(inputs[index])  # caches the reference's input (for the pool: its routes)
        gradient = layer.backward(gradient)
        expected[f"{layer_spec.name}.d_in"] = reference_tensors.get(f"{layer_spec.name}.d_in", 0) + gradient
        for param, _ in layer_spec.params:
            extra = layer.grads[param]
            expected[f"{layer_spec.name}.d_{param}"] = reference_tensors[f"{layer_spec.name}.d_{param}"] + extra
            expected[f"{layer_spec.name}.{param}"] = (
                reference_tensors[f"{layer_spec.name}.{param}"] - dtype.type(lr) * extra
            )
    return expected
