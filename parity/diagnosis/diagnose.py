"""Naming a divergence: which layer, and whether it is a tie-policy difference, drift, overflow or a real bug."""

from __future__ import annotations

import math

from parity.engine.compare import TensorComparison
from scratch.spec import NetworkSpec, TensorInfo

# What a mismatch usually means, by the kind of layer and the role of the tensor in it.
HINTS: dict[tuple[str, str], str] = {
    ("conv", "out"): "forward: check the kernel orientation (cross-correlation, no flip), padding and bias",
    ("relu", "out"): "forward: max(x, 0)",
    ("pool", "out"): "forward: check the K x K windows, stride K and odd-size flooring",
    ("dense", "out"): "dense forward: check the HWC flatten order and the (in, out) weight layout",
    ("loss", "probs"): "softmax function: check the exponent and normalisation",
    ("loss", "loss"): "cross-entropy: check -log p[label] / log-sum-exp, and the mean over the batch",
    ("dense", "d_out"): "gradient w.r.t. logits: expected (p - onehot) / batch size (check the softmax Jacobian)",
    ("conv", "d_param"): "parameter gradient: expected the sum over windows (and the batch) of dL/dout * window",
    ("dense", "d_param"): "parameter gradient: expected input^T . dL/dout (weights), the batch sum of dL/dout (biases)",
    ("conv", "d_in"): "input gradient: expected the full correlation of dL/dout with the filters",
    ("relu", "d_in"): "input gradient: dL/dout where the input is positive, 0 elsewhere",
    ("pool", "d_in"): "backward routing: the gradient goes to each window's max",
    ("dense", "d_in"): "dense input gradient: expected dL/dout . W^T with the weights before the update",
    ("conv", "param"): "SGD update: expected param - lr * dL/dparam",
    ("dense", "param"): "SGD update: expected param - lr * dL/dparam",
}


def diagnose(
    info: TensorInfo,
    failure: TensorComparison,
    step_comparisons: list[TensorComparison],
    spec: NetworkSpec,
    tied_windows: int | None,
    previous_tolerance_used: float,
    untied_mismatches: int = 0,
) -> str:
    """The diagnosis of the first tensor to exceed tolerance in a step.

    `untied_mismatches`: for a pool's input gradient, how many windows without a tie received a different gradient
    (see `parity.diagnosis.pool.untied_routing_mismatches`); only when it is 0 is the cause a tie policy.
    """
    hint = HINTS.get((info.kind, info.role), "no hint for this tensor")
    where = f"{info.layer} ({info.kind})"
    if failure.problem:
        return f"{failure.problem} ({hint})"
    if not math.isfinite(failure.scratch_value):
        return f"non-finite value in scratch ({failure.scratch_value}): overflow, e.g. an unshifted exp; {hint}"
    forward = {i.name for i in spec.tensors if i.phase == "forward"}
    forward_agrees = all(c.passed for c in step_comparisons if c.name in forward)
    pool_gradient = info.kind == "pool" and info.role == "d_in"
    if pool_gradient and forward_agrees and untied_mismatches > 0:
        return (
            f"routing error, not a tie policy: {untied_mismatches} pool window(s) without a tie sent their gradient "
            "somewhere other than their maximum while the forward pass agrees"
        )
    if pool_gradient and forward_agrees and (tied_windows or 0) > 0:
        return (
            f"tie-policy difference, not a numerical one: the forward pass agrees, and {tied_windows} pool windows "
            "are tied this step; PyTorch sends a tied window's gradient to its first maximum (row-major), "
            "scratch routes it elsewhere (the tutorial gives it to every tied element)"
        )
    if previous_tolerance_used > 0.1:
        return (
            f"accumulated numerical drift: the previous step already used {100 * previous_tolerance_used:.0f}% "
            f"of the tolerance ({hint})"
        )
    return f"implementation mismatch in {where} {hint}"
