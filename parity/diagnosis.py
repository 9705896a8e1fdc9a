"""Naming a divergence: which layer, and whether it is a tie-policy difference, drift, overflow or a real bug."""

from __future__ import annotations

import math

from parity.compare import TensorComparison
from scratch.network import FORWARD_TENSORS

# Which part of the network produces each named tensor, and what a mismatch there usually means.
TENSOR_SOURCES: dict[str, tuple[str, str]] = {
    "conv_out": ("Conv3x3", "forward: check the kernel orientation (cross-correlation, no flip) and padding"),
    "pool_out": ("MaxPool2", "forward: check the 2x2 windows, stride and odd-size flooring"),
    "logits": ("Softmax", "dense forward: check the HWC flatten order and the (in, out) weight layout"),
    "probs": ("Softmax", "softmax function: check the exponent and normalisation"),
    "loss": ("loss", "cross-entropy: check -log p[label] / log-sum-exp"),
    "d_logits": ("Softmax", "gradient w.r.t. logits: expected p - onehot (check the softmax Jacobian)"),
    "d_dense_weights": ("Softmax", "dense weight gradient: expected outer(input, dL/dlogits)"),
    "d_dense_biases": ("Softmax", "dense bias gradient: expected dL/dlogits"),
    "d_pool_out": ("Softmax", "dense input gradient: expected W . dL/dlogits with the weights before the update"),
    "d_conv_out": ("MaxPool2", "backward routing: the gradient goes to each window's max"),
    "d_filters": ("Conv3x3", "filter gradient: expected sum over windows of dL/dout * window"),
    "d_image": ("Conv3x3", "input gradient: expected the full correlation of dL/dout with the filters"),
    "filters": ("Conv3x3", "SGD update of the filters: expected filters - lr * dL/dfilters"),
    "dense_weights": ("Softmax", "SGD update of the weights: expected weights - lr * dL/dweights"),
    "dense_biases": ("Softmax", "SGD update of the biases: expected biases - lr * dL/dbiases"),
}


def diagnose(
    failure: TensorComparison,
    step_comparisons: list[TensorComparison],
    tied_windows: int | None,
    previous_tolerance_used: float,
    untied_mismatches: int = 0,
) -> tuple[str, str]:
    """(layer, diagnosis) for the first tensor to exceed tolerance in a step.

    `untied_mismatches`: for a `d_conv_out` failure, how many windows without a tie received a different gradient
    (see `parity.ties.untied_routing_mismatches`); only when it is 0 is the cause a tie policy.
    """
    layer, hint = TENSOR_SOURCES.get(failure.name, ("?", "no hint for this tensor"))
    if failure.problem:
        return layer, f"{failure.problem} ({hint})"
    if not math.isfinite(failure.scratch_value):
        return layer, f"non-finite value in scratch ({failure.scratch_value}): overflow, e.g. an unshifted exp; {hint}"
    forward_agrees = all(c.passed for c in step_comparisons if c.name in FORWARD_TENSORS)
    if failure.name == "d_conv_out" and forward_agrees and untied_mismatches > 0:
        return layer, (
            f"routing error, not a tie policy: {untied_mismatches} pool window(s) without a tie sent their gradient "
            "somewhere other than their maximum while the forward pass agrees"
        )
    if failure.name == "d_conv_out" and forward_agrees and (tied_windows or 0) > 0:
        return layer, (
            f"tie-policy difference, not a numerical one: the forward pass agrees, and {tied_windows} pool windows "
            "are tied this step; PyTorch sends a tied window's gradient to its first maximum (row-major), "
            "scratch routes it elsewhere (the tutorial gives it to every tied element)"
        )
    if previous_tolerance_used > 0.1:
        return layer, (
            f"accumulated numerical drift: the previous step already used {100 * previous_tolerance_used:.0f}% "
            f"of the tolerance ({hint})"
        )
    return layer, f"implementation mismatch in {layer} {hint}"
