"""Near-tie flips: a pool gradient routed to another element only because rounding reordered two near-equal maxima,
or a ReLU gradient passed on one side only because rounding put an input within tolerance of 0 on the other side of it.

For each pool whose input gradient (or a tensor before it) fails, `parity.diagnosis.pool.near_tie_flips` proves
the routing element by element; for each ReLU, `sign_flips` finds the inputs whose sign rounding decided. What the
rerouted gradient changes upstream (every parameter gradient, input
gradient and updated parameter of the layers before the pool) is then recomputed from the reference's own tensors:
the backward of those layers is linear in the gradient, so each upstream tensor must equal the reference's plus the
backward of the rerouted part. A tensor that does not is a bug the flip does not excuse, and the step fails.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

import scratch
from parity.diagnosis.pool import beyond_tolerance, near_tie_flips, routed_elsewhere
from parity.engine.compare import compare
from parity.engine.tolerances import Tolerance, tolerance_for
from scratch.spec import NetworkSpec

if TYPE_CHECKING:
    from parity.lockstep.records import StepRecord


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
    forward_tolerance = tolerance_for(dtype)  # of the pools' and ReLUs' inputs, activations
    expected = dict(reference_tensors)  # the reference's tensors, with the consequences of every flip proven so far
    changed: set[str] = set()
    windows, signs = {}, {}
    for position in reversed(range(1, len(spec.layers))):
        layer = spec.layers[position]
        name = f"{layer.name}.d_in"
        upstream = {
            info.name for info in spec.tensors if info.layer in {earlier.name for earlier in spec.layers[:position]}
        }
        if layer.kind not in ("pool", "relu") or name not in by_name:
            continue
        if all(c.ok for c in step.comparisons if c.name == name or c.name in upstream):
            continue
        inputs = f"{spec.layers[position - 1].name}.out"
        if inputs not in scratch_tensors or inputs not in reference_tensors:
            if layer.kind == "pool":
                return  # the proof needs both sides' pool input; without it nothing is excused
            continue  # no sign is known to have flipped: none is claimed
        own_input, reference_input = scratch_tensors[inputs], reference_tensors[inputs]
        if layer.kind == "pool":
            ours, theirs = scratch_tensors[name], expected[name]
            tolerance = step.comparisons[by_name[name]].tolerance  # the pool's input gradient's own (per sample)
            elsewhere = routed_elsewhere(layer.kernel, ours, theirs)
            count = near_tie_flips(
                layer.kernel, own_input, reference_input, ours, theirs, forward_tolerance, tolerance,
                rerouted=elsewhere, tie_policy=tie_policy,
            )  # fmt: skip
            if count < 0:
                return  # a routing difference that is not a near-tie flip: a real difference, left failing
            rerouted = np.where(beyond_tolerance(ours, theirs, tolerance) | elsewhere, ours - theirs, 0)
        else:
            incoming = expected.get(f"{spec.layers[position + 1].name}.d_in")  # the ReLU's output gradient
            if incoming is None:  # not compared at this step
                continue
            flipped = sign_flips(own_input, reference_input, forward_tolerance) & (incoming != 0)
            count = int(np.count_nonzero(flipped))
            # Where the sign flipped, the gradient passes by scratch's own sign, as the reference's would have.
            ours = np.where(flipped, np.where(own_input > 0, incoming, 0), expected[name])
            rerouted = ours - expected[name]
        if count == 0:
            continue
        consequences = upstream_consequences(spec, position, rerouted, expected, images, lr, tie_policy)
        if consequences is None:
            return
        expected.update(consequences, **{name: ours})
        changed.update(consequences, {name})
        (windows if layer.kind == "pool" else signs)[layer.name] = count
    if not windows and not signs:
        return
    failing = [name for name in changed if name in by_name and not step.comparisons[by_name[name]].ok]
    for name in failing:  # a failure the flips do not account for is left unexplained, so the step fails
        if name not in scratch_tensors:
            return
        tolerance = step.comparisons[by_name[name]].tolerance
        if not compare(name, scratch_tensors[name], expected[name], dtype, tolerance, detail=False).passed:
            return
    step.flipped_windows += sum(windows.values())
    step.flipped_signs += sum(signs.values())
    for name in failing:
        step.comparisons[by_name[name]] = replace(step.comparisons[by_name[name]], explained=_reason(windows, signs))


def sign_flips(scratch_input: np.ndarray, reference_input: np.ndarray, forward_tolerance: Tolerance) -> np.ndarray:
    """Elementwise: is a ReLU input positive on one side only, the two within forward tolerance of each other (both
    within rounding of 0)? Such an element passes its gradient on one side only, and either is right."""
    differs = (scratch_input > 0) != (reference_input > 0)
    return differs & (np.abs(scratch_input - reference_input) <= forward_tolerance.allowed(reference_input))


def _reason(windows: dict[str, int], signs: dict[str, int]) -> str:
    """What an explained tensor says: how many flips of each kind, by layer."""
    parts = [f"{count} window{'s' * (count > 1)} in {pool}" for pool, count in windows.items()]
    parts += [f"{count} ReLU sign{'s' * (count > 1)} in {relu}" for relu, count in signs.items()]
    return f"near-tie flip(s) ({', '.join(parts)}): rounding reordered two values within forward tolerance"


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
