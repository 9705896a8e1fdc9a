"""Naming a difference: which kind it is (`parity.diagnosis.record.KINDS`), found by the pattern detectors that
apply to the tensor's layer kind and role, with the evidence, and a sentence for a person.

`diagnose_tensor` judges one tensor; `diagnose_layer` picks, of a layer's failing tensors, the first whose cause is
known (a wrong forward makes every tensor after it wrong too, and the parameter gradient may show the pattern
the output hides), float32-level error only where nothing else is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from parity.diagnosis import patterns
from parity.diagnosis.pool import classify_routing
from parity.diagnosis.record import REFERENCE_TIE_RULE_TEXT, TIE_RULE_TEXT, Diagnosis, factor_text
from parity.engine.compare import TensorComparison
from parity.engine.tolerances import Tolerance, tolerance_for
from parity.lockstep.feed import LayerFeed
from scratch.spec import LayerSpec, NetworkSpec, TensorInfo

# What a mismatch usually means, by the kind of layer and the role of the tensor in it: the advice of `unexplained`.
HINTS: dict[tuple[str, str], str] = {
    ("conv", "out"): "forward: check the kernel orientation (cross-correlation, no flip), padding and bias",
    ("relu", "out"): "forward: max(x, 0)",
    ("pool", "out"): "forward: check the K x K windows, stride K and odd-size flooring",
    ("dense", "out"): "dense forward: check the HWC flatten order and the (in, out) weight layout",
    ("loss", "probs"): "softmax function: check the exponent and normalisation",
    ("loss", "loss"): "cross-entropy: check -log p[label] / log-sum-exp, and the mean over the batch",
    ("dense", "d_out"): "gradient w.r.t. logits: expected (p - onehot) / batch size (check the softmax Jacobian)",
    ("conv", "d_param"): "parameter gradient: expected the sum over windows (and the batch) of dL/dout * window",
    ("dense", "d_param"): "parameter gradient: expected input^T . dL/dout",
    ("conv", "d_in"): "input gradient: expected the full correlation of dL/dout with the filters",
    ("relu", "d_in"): "input gradient: dL/dout where the input is positive, 0 elsewhere",
    ("pool", "d_in"): "backward routing: the gradient goes to each window's max",
    ("dense", "d_in"): "dense input gradient: expected dL/dout . W^T with the weights before the update",
    ("conv", "param"): "SGD update: expected param - lr * dL/dparam",
    ("dense", "param"): "SGD update: expected param - lr * dL/dparam",
}
# A bias gradient is a plain sum, whatever its layer: its hint is by parameter, ahead of the layer kind's.
BIAS_GRADIENT_HINT = "bias gradient: expected the sum of dL/dout over the batch (and, for a conv, over positions)"
# Tensors that a rearranged kernel or input explains: (kind, role) -> what to rearrange.
REARRANGED = {("conv", "out"): "filters", ("conv", "d_in"): "filters", ("dense", "out"): "input"}
ACTIVATION_ROLES = ("out", "probs", "d_out", "d_in")
DRIFT_SHARE = 0.1  # a step that already used this much of the tolerance makes the next failure drift, not a bug


@dataclass(frozen=True)
class Context:
    """What a detector may need besides the two arrays."""

    spec: NetworkSpec
    dtype: np.dtype
    lr: float
    feed: LayerFeed | None = None  # the reference's inputs to the layer; None when judging a whole run's tensors
    previous_tolerance_used: float = 0.0  # whole runs: the share of tolerance the step before used
    tie_policy: str = "first"  # the rule the reference's pools route ties by (check's --tie-policy)


def diagnose_layer(
    layer: str,
    comparisons: Sequence[TensorComparison],
    scratch: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    context: Context,
) -> Diagnosis | None:
    """The diagnosis of `layer` from its failing comparisons (None when none fails): the first with a known cause,
    else the first failure's `unexplained`. Float32-level error (`downcast`) names the layer only where it is all
    that is wrong: an error beside it that it does not explain is a bug of its own, and goes first."""
    failing = [c for c in comparisons if not c.ok and context.spec.judged_at(c.name) == layer]
    diagnoses = [diagnose_tensor(c, scratch, reference, context) for c in failing]
    known = next((d for d in diagnoses if d.kind not in ("unexplained", "downcast")), None)
    downcast = next((d for d in diagnoses if d.kind == "downcast"), None)
    if known is not None or downcast is None:
        return known or (diagnoses[0] if diagnoses else None)
    # Float32 numbers are in play: a tensor off by more than float32's own tolerance has an error of its own.
    beyond = list(_beyond_float32(failing, diagnoses, scratch, reference, context))
    return next((d for d in beyond if d.kind != "unexplained"), beyond[0] if beyond else downcast)


def _beyond_float32(failing, diagnoses, scratch, reference, context: Context):
    """The failing tensors left unexplained whose error float32's rounding cannot account for, each diagnosed under
    float32's tolerance (whose rounding hides any pattern from float64's); a parameter by its update."""
    for comparison, diagnosis in zip(failing, diagnoses, strict=True):
        ours, theirs = scratch.get(comparison.name), reference.get(comparison.name)
        if diagnosis.kind != "unexplained" or not isinstance(theirs, np.ndarray):
            continue
        info = context.spec.tensor(comparison.name)
        # Per-sample gradients (batch first) under atol / batch, as the comparison itself was judged.
        float32 = tolerance_for(np.float32, info.role, theirs.shape[0] if theirs.ndim else 1)
        if isinstance(ours, np.ndarray) and info.role == "param" and context.feed is not None:
            before = context.feed.params[info.param]  # as `_detect` does: the update is what is judged
            ours, theirs = ours - before, theirs - before
        if not (isinstance(ours, np.ndarray) and patterns.matches(ours, theirs, float32)):
            yield diagnose_tensor(replace(comparison, tolerance=float32), scratch, reference, context)


def diagnose_tensor(
    comparison: TensorComparison,
    scratch: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    context: Context,
) -> Diagnosis:
    """Why one tensor is out of tolerance: the first detector that explains every element, else `unexplained`."""
    info = context.spec.tensor(comparison.name)
    layer = context.spec.judged_at(info.name)
    ours, theirs = scratch.get(info.name), reference.get(info.name)
    found = None
    if isinstance(ours, np.ndarray) and isinstance(theirs, np.ndarray):
        found = _detect(info, np.asarray(ours), np.asarray(theirs), scratch, comparison, context)
    if found is None and context.feed is None and context.previous_tolerance_used > DRIFT_SHARE:
        found = "drift", {"previous_tolerance_used": context.previous_tolerance_used}
    kind, evidence = found or ("unexplained", {})
    return Diagnosis(kind, layer, info.name, _text(kind, info, evidence, comparison), evidence)


def _detect(info: TensorInfo, ours, theirs, scratch, comparison, context) -> tuple[str, dict] | None:
    """(kind, evidence) of the first pattern that explains the difference, tried from the most specific, under the
    tolerance the tensor was judged by."""
    tolerance = comparison.tolerance
    if comparison.problem:
        if ours.size == theirs.size and ours.ndim == 2 and ours.shape == theirs.T.shape:
            if patterns.matches(ours, theirs.T, tolerance):
                return "permuted", {"transform": f"stored transposed, {ours.shape} instead of {theirs.shape}"}
        return None
    if (evidence := patterns.non_finite(ours, theirs)) is not None:
        return "non_finite", {**evidence, **_exp_overflow(info, scratch, context)}
    feed, layer = context.feed, _layer_of(info, context.spec)
    if info.role == "param" and feed is not None:
        before = feed.params[info.param]
        # Bit for bit: an update too small for the tolerance to see (lr applied twice, in float32) is still one.
        if ours.shape == before.shape and np.array_equal(ours, before):
            return "dropped", {"update": "not applied"}
        ours, theirs = ours - before, theirs - before  # judge the update, not the weights
    if info.kind == "pool" and info.role == "d_in" and feed is not None:
        if (routing := classify_routing(layer.kernel, feed.inputs, ours, theirs, tolerance)) is not None:
            kind, evidence = routing
            return kind, {**evidence, "reference_rule": context.tie_policy} if kind == "tie_policy" else evidence
    for kind, detector in _detectors(info, layer, context, scratch, tolerance):
        if (evidence := detector(ours, theirs)) is not None:
            return kind, evidence
    return None


def _detectors(info: TensorInfo, layer: LayerSpec | None, context: Context, scratch, tolerance: Tolerance):
    """(kind, detector over (scratch, reference)) in the order tried, for this tensor's kind and role."""
    if info.role in ACTIVATION_ROLES:  # tensors with the batch first: (N, H, W, C) or (N, units)
        yield "partial", lambda s, r: patterns.border(s, r, tolerance)
        yield "partial", lambda s, r: patterns.some_samples(s, r, tolerance)
    if info.kind in ("conv", "dense") and info.role == "d_param" and context.feed is not None:
        yield "partial", lambda s, r: _windows_left_out(s, info.param, context.feed, tolerance)
    yield "dropped", lambda s, r: patterns.dropped(s, r, tolerance)
    yield "scale", lambda s, r: patterns.scale(s, r, tolerance, context.lr, _batch(info, context, scratch))
    flatten = layer.in_shape if layer is not None and info.kind == "dense" and len(layer.in_shape) == 3 else None
    flatten = flatten if info.param == "weights" else None
    yield "permuted", lambda s, r: patterns.permuted(s, r, tolerance, _axis_names(info, s.ndim), flatten)
    if info.role in ("d_param", "param") and info.kind in ("conv", "dense"):
        axis = 1 if info.param == "weights" else 0
        name = "filter" if info.kind == "conv" else "unit"
        yield "broadcast", lambda s, r: patterns.broadcast(s, r, tolerance, axis, name)
    if (info.kind, info.role) in REARRANGED and context.feed is not None:
        yield "permuted", lambda s, r: _rearranged(s, info.role, context.feed, tolerance)
    if info.role == "d_in" and info.kind in ("conv", "dense") and context.feed is not None:
        yield "stale_weights", lambda s, r: _stale_weights(s, scratch, context, tolerance)
    yield "downcast", lambda s, r: patterns.downcast(s, r, context.dtype)


def _exp_overflow(info: TensorInfo, scratch, context: Context) -> dict[str, object]:
    """For the loss's tensors: whether scratch's logits were finite but past where exp overflows (an unshifted
    softmax), as evidence; nothing when that is not what happened."""
    if info.kind not in ("loss", "dense") or info.role not in ("probs", "loss", "d_out"):
        return {}
    logits = scratch.get(context.spec.name_of(context.spec.layers[-1].name, "out"))
    probs = scratch.get(context.spec.name_of(context.spec.layers[-1].name, "probs"))
    if not isinstance(logits, np.ndarray) or not np.all(np.isfinite(logits)):
        return {}
    largest, limit = float(np.abs(logits).max(initial=0.0)), float(np.log(np.finfo(context.dtype).max))
    finite_probs = isinstance(probs, np.ndarray) and bool(np.all(np.isfinite(probs)))
    if largest > limit and not finite_probs:
        return {"cause": "unshifted_exp", "largest_logit": largest, "exp_overflows_at": limit}
    if finite_probs and info.role in ("loss", "d_out") and bool(np.any(probs == 0)):
        return {"cause": "probability_underflow", "largest_logit": largest}
    return {}


def _batch(info: TensorInfo, context: Context, scratch) -> int:
    """The step's samples for a gradient or an update (a factor of that many: a sum for a mean); else 1."""
    if info.role not in ("d_out", "d_in", "d_param", "param"):
        return 1
    if context.feed is not None:
        return len(context.feed.labels)
    logits = scratch.get(f"{context.spec.layers[-1].name}.out")
    return len(logits) if isinstance(logits, np.ndarray) and logits.ndim == 2 else 1


def _layer_of(info: TensorInfo, spec: NetworkSpec) -> LayerSpec | None:
    return None if info.layer == "loss" else spec.layer(info.layer)


def _axis_names(info: TensorInfo, ndim: int) -> tuple[str, ...]:
    if info.role in ("d_param", "param"):
        if info.kind == "conv" and info.param == "filters":
            return ("filter", "kernel row", "kernel column", "channel")[:ndim]
        return ("input", "unit") if info.param == "weights" else ("unit",)
    return ("sample", "row", "column", "channel") if ndim == 4 else ("sample", "unit")[:ndim]


def _windows_left_out(ours: np.ndarray, param: str, feed: LayerFeed, tolerance) -> dict[str, object] | None:
    """A parameter gradient that is the reference's over only some of the output windows (a conv's), or over only
    the first sample of the batch (a gradient taken from `d_out[0]` alone)."""
    d_out, masks = feed.d_out, {}
    if feed.layer.kind == "conv":
        masks["only the first window of each image"] = (slice(None), slice(0, 1), slice(0, 1))
    if d_out.shape[0] > 1:
        masks["only the first image of the batch"] = (slice(0, 1),)
    if feed.layer.kind == "conv":
        masks["all but the last output row and column"] = (slice(None), slice(0, -1), slice(0, -1))
        masks["all but the first output row and column"] = (slice(None), slice(1, None), slice(1, None))
    if not masks:
        return None
    from reference.layer import layer_gradients  # torch: only when such a gradient is being explained

    for which, kept in masks.items():
        masked = np.zeros_like(d_out)
        masked[kept] = d_out[kept]
        _, _, grads = layer_gradients(feed.layer, feed.params, feed.inputs, masked)
        if patterns.matches(ours, grads[param], tolerance):
            return {"windows": which}
    return None


def _rearranged(ours: np.ndarray, role: str, feed: LayerFeed, tolerance) -> dict[str, object] | None:
    """The layer's output or input gradient as the reference computes it from a rearranged kernel (flipped,
    transposed) or, for a dense layer, from its input flattened channel-first."""
    from reference.layer import layer_gradients  # torch: only when such a tensor is being explained

    for transform, params, inputs in _rearranged_feeds(feed):
        out, d_in, _ = layer_gradients(feed.layer, params, inputs, feed.d_out)
        if patterns.matches(ours, out if role == "out" else d_in, tolerance):
            return {"transform": transform, "recomputed": True}
    return None


def _rearranged_feeds(feed: LayerFeed):
    """(what was rearranged, params, inputs) to try for `feed`'s layer."""
    if feed.layer.kind == "conv":
        filters = feed.params["filters"]  # (F, K, K[, C])
        for transform, kernel in (
            ("the kernel flipped (a textbook convolution; PyTorch cross-correlates)", filters[:, ::-1, ::-1]),
            ("the kernel's row and column axes swapped", np.swapaxes(filters, 1, 2)),
        ):
            yield transform, {**feed.params, "filters": np.ascontiguousarray(kernel)}, feed.inputs
    elif feed.inputs.ndim == 4:  # a dense after an image-shaped input: the flatten order
        channel_first = feed.inputs.transpose(0, 3, 1, 2).reshape(feed.inputs.shape)  # CHW order, read as HWC
        yield (
            "the input flattened channel-first (CHW, PyTorch's order) against HWC-ordered weights",
            feed.params,
            channel_first,
        )


def _stale_weights(ours: np.ndarray, scratch, context: Context, tolerance) -> dict[str, object] | None:
    """An input gradient computed from the weights after the update (the side's own update, or the reference's)."""
    from reference.layer import layer_gradients  # torch: only when an input gradient is being explained

    feed = context.feed
    for whose in ("own", "reference's"):
        updated = {}
        for param, before in feed.params.items():
            own = scratch.get(context.spec.name_of(feed.layer.name, "d_param", param))
            gradient = own if whose == "own" else feed.gradients[param]
            if not isinstance(gradient, np.ndarray) or gradient.shape != before.shape:
                break
            updated[param] = before - before.dtype.type(context.lr) * gradient
        else:
            _, d_in, _ = layer_gradients(feed.layer, updated, feed.inputs, feed.d_out)
            if patterns.matches(ours, d_in, tolerance):
                return {"weights": f"after the update ({whose} gradient)"}
    return None


def _hint(info: TensorInfo) -> str:
    """What a mismatch of this tensor usually means."""
    if info.role == "d_param" and info.param == "biases":
        return BIAS_GRADIENT_HINT
    return HINTS.get((info.kind, info.role), "no hint for this tensor")


# The loss's tensors are judged at the last dense layer, whose code a tutorial-style Softmax shares; the text says
# which part of it computes them, so an error in the loss is not read as the dense layer's.
COMPUTED_BY_THE_LOSS = {
    "probs": "the softmax's output",
    "d_out": "dL/dlogits, from the softmax cross-entropy's backward",
}


def _text(kind: str, info: TensorInfo, evidence: dict, comparison: TensorComparison) -> str:
    """The sentence for a person, from the kind and its evidence."""
    name, hint = info.name, _hint(info)
    if info.role in COMPUTED_BY_THE_LOSS:
        name = f"{name} ({COMPUTED_BY_THE_LOSS[info.role]})"
    if kind == "non_finite":
        return _non_finite_text(name, evidence)
    if kind == "tie_policy":
        return (
            f"tie-policy difference, not a numerical one: {name} differs only in tied windows "
            f"({evidence['wrong_windows']} windows differ, every one of them among the {evidence['tied_windows']} "
            f"tied); {REFERENCE_TIE_RULE_TEXT[evidence.get('reference_rule', 'first')]}, here "
            f"{TIE_RULE_TEXT[evidence['rule']]}"
        )
    if kind == "routing":
        where = (
            f"{evidence['leftover_elements']} gradient element(s) in the rows/columns the pool drops"
            if "leftover_elements" in evidence
            else f"{evidence['wrong_windows']} window(s), {evidence['untied_wrong_windows']} of them untied, sent "
            "their gradient to an element that is not their maximum, or in the wrong amount"
        )
        return f"routing error, not a tie policy: {where}"
    if kind == "dropped":
        if evidence.get("update") == "not applied":
            return f"{name} was never updated: it still holds its value from before the step (a missing SGD update)"
        if "wrong_windows" in evidence:
            return f"{name}: {evidence['wrong_windows']} window(s) got no gradient at all (a lost gradient)"
        whole = "everywhere" if evidence["all"] else f"at {evidence['zeroed']} of {evidence['size']} elements"
        return f"{name} is zero {whole} where the reference's is not: never computed, lost, or never applied"
    if kind == "scale":
        reading = f" ({evidence['reading']})" if evidence["reading"] else ""
        what = "the update of " + name if info.role == "param" else name
        return f"{what} is {factor_text(evidence['factor'], 6)} x the reference's, element for element{reading}"
    if kind == "permuted" and evidence.get("recomputed"):
        return f"{name} is what the reference computes with {evidence['transform']}"
    if kind == "permuted":
        return f"{name} equals the reference's, {evidence['transform']}"
    if kind == "broadcast":
        same = f" (the {evidence['same_as']} over the reference's)" if evidence["same_as"] else ""
        return f"every {evidence['axis']} of {name} received the same value{same}: {evidence['count']} identical slices"
    if kind == "partial":
        return f"{name} is right only in part: {_partial_text(evidence)}"
    if kind == "stale_weights":
        return f"{name} was computed with the weights {evidence['weights']}, not those before it: {hint}"
    if kind == "downcast":
        return (
            f"{name}: errors at float32 rounding level in a float64 run (max |error| / max |reference| = "
            f"{evidence['relative_error']:.2g}; float32 eps 1.2e-7): is something computed or stored in float32?"
        )
    if kind == "drift":
        return (
            f"accumulated numerical drift: the step before already used "
            f"{100 * evidence['previous_tolerance_used']:.0f}% of the tolerance ({hint})"
        )
    problem = f"{comparison.problem}; " if comparison.problem else ""
    return f"{problem}implementation mismatch in {info.layer} ({info.kind}) {hint}"


def _non_finite_text(name: str, evidence: dict) -> str:
    sorts = "/".join(evidence["values"])
    if evidence["side"] == "both":
        return (
            f"{name} overflowed on both sides ({sorts}: {evidence['scratch_count']} element(s) in scratch, "
            f"{evidence['reference_count']} in the reference): the values outgrew the dtype, e.g. a learning rate too "
            "large for this network, not a difference between the two"
        )
    if evidence["side"] == "reference":
        return f"the reference's {name} is non-finite ({sorts}) where scratch's is finite: the reference overflowed"
    where = f"{name} is non-finite ({sorts}, {evidence['scratch_count']} element(s)) in scratch only, where the " + (
        "reference's is finite"
    )
    if evidence.get("cause") == "probability_underflow":
        return (
            f"{where}: a probability underflowed to 0 (the logits reach {evidence['largest_logit']:.4g}), so "
            "-log(p) or -1/p is infinite where the reference's log-sum-exp stays finite: the logits have grown huge "
            "(a learning rate too large for this network?); the softmax itself is fine"
        )
    if evidence.get("cause") == "unshifted_exp":
        return (
            f"{where}: the logits are finite but reach {evidence['largest_logit']:.4g}, past "
            f"{evidence['exp_overflows_at']:.4g} where exp overflows: an unshifted softmax (subtract the largest "
            "logit before exp)"
        )
    return f"{where}: an overflow in scratch's own arithmetic"


def _partial_text(evidence: dict) -> str:
    if "windows" in evidence:
        return f"it sums {evidence['windows']}"
    if "right_samples" in evidence:
        return f"only samples {evidence['right_samples']} of the batch of {evidence['batch']} are right"
    sides = [
        f"{evidence[key]} {label}"
        for key, label in (
            ("top_rows", "top row(s)"),
            ("bottom_rows", "bottom row(s)"),
            ("left_columns", "left column(s)"),
            ("right_columns", "right column(s)"),
        )
        if evidence[key]
    ]
    return f"only the border differs ({', '.join(sides)}): a loop that skips the edge"
