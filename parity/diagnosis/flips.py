"""Near-tie flips: a pool gradient routed to another element only because rounding reordered two near-equal maxima.

For each pool whose input gradient fails, `ties.near_tie_flips` proves the routing element by element. What the
rerouted gradient changes upstream (every parameter gradient, input gradient and updated parameter of the layers
before the pool) is then recomputed from the reference's own tensors: the backward of those layers is linear in the
gradient, so each upstream tensor must equal the reference's plus the backward of the rerouted part. A tensor that
does not is a bug the flip does not excuse, and the step fails.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

import scratch
from parity.diagnosis.pool import beyond_tolerance, near_tie_flips, routed_elsewhere
from parity.engine.compare import compare
from parity.engine.tolerances import tolerance_for
from scratch.spec import NetworkSpec


def explain_flips(spec: NetworkSpec, step, scratch_tensors, reference_tensors, dtype, images, lr) -> None:
    """Mark the failures of `step` that near-tie flips account for as explained, with the evidence."""
    by_name = {c.name: i for i, c in enumerate(step.comparisons)}
    tolerance = tolerance_for(dtype)
    positions = [i for i, layer in enumerate(spec.layers) if layer.kind == "pool"]
    for position in reversed(positions):  # the deepest pool first: its flips reach every layer before it
        pool = spec.layers[position]
        name = f"{pool.name}.d_in"
        upstream = {
            info.name for info in spec.tensors if info.layer in {layer.name for layer in spec.layers[:position]}
        }
        failing = [c.name for c in step.comparisons if not c.ok and (c.name == name or c.name in upstream)]
        if name not in by_name or not failing or position == 0:
            continue
        inputs = f"{spec.layers[position - 1].name}.out"
        if inputs not in scratch_tensors or inputs not in reference_tensors:
            return
        elsewhere = routed_elsewhere(pool.kernel, scratch_tensors[name], reference_tensors[name])
        flips = near_tie_flips(
            pool.kernel,
            scratch_tensors[inputs],
            reference_tensors[inputs],
            scratch_tensors[name],
            reference_tensors[name],
            tolerance,
            tolerance,
            rerouted=elsewhere,
        )
        if flips <= 0:
            return
        delta = scratch_tensors[name] - reference_tensors[name]
        beyond = beyond_tolerance(scratch_tensors[name], reference_tensors[name], tolerance)
        rerouted = np.where(beyond | elsewhere, delta, 0)
        expected = upstream_consequences(spec, position, rerouted, reference_tensors, images, lr)
        if expected is None:
            return
        reason = (
            f"near-tie flip in {flips} pool window(s) of {pool.name}: "
            "rounding reordered two maxima within forward tolerance"
        )
        explained = [name] if not step.comparisons[by_name[name]].ok else []
        for upstream, value in expected.items():
            if upstream in by_name and not step.comparisons[by_name[upstream]].ok:
                if (
                    upstream not in scratch_tensors
                    or not compare(upstream, scratch_tensors[upstream], value, dtype).passed
                ):
                    return  # a failure the flip does not account for: left unexplained, so the step fails
                explained.append(upstream)
        step.flipped_windows += flips
        for tensor in explained:
            step.comparisons[by_name[tensor]] = replace(step.comparisons[by_name[tensor]], explained=reason)
        return


def upstream_consequences(spec: NetworkSpec, position: int, gradient, reference_tensors, images, lr) -> dict | None:
    """The reference's tensors of layers `0 .. position-1` as they become when `gradient` is added at the input of
    layer `position`; None when the reference's tensors needed are not all there."""
    dtype = gradient.dtype
    net = scratch.build_network(spec, dtype=dtype)  # its layers, run on the reference's inputs and weights
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
