"""What a user's classifier gives, read from one probe forward: probabilities, as the tutorial's `Softmax` returns;
its totals, when the softmax lives in a class of its own (not supported, said so); and whether the vector it caches
is the logits or the logits less a constant (the usual guard against exp's overflow), which cannot be compared."""

from __future__ import annotations

import numpy as np

from parity.check.names import ImplError


def softmax(values: np.ndarray) -> np.ndarray:
    """The softmax of a vector, shifted by its max."""
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


def dense_totals(x: np.ndarray, weights: np.ndarray, layout: str, biases: np.ndarray | None) -> list[np.ndarray]:
    """A dense layer's totals `x . weights + biases`, for `x` flattened HWC and (an image) CHW: what its forward
    returns before any softmax."""
    x = np.asarray(x, dtype=np.float64)
    flats = [x.ravel()] + ([np.moveaxis(x, -1, 0).ravel()] if x.ndim == 3 else [])
    matrix = weights if layout == "(in, out)" else weights.T
    bias = 0.0 if biases is None else np.ravel(biases)
    return [flat @ matrix + bias for flat in flats]


def find_logits(cached: dict[str, np.ndarray], probs: np.ndarray, mapped: str | None) -> tuple[str | None, str]:
    """Which of the arrays of the probabilities' shape the classifier cached after forward holds the logits, and why
    (when `--map` named one that is not there: why not; when none is named: the reason it is the one, or "" for the
    tutorial's `last_totals`): the `--map` name, `last_totals`, or the only one whose softmax it returned."""
    if mapped is not None:
        missing = f"no array of shape {probs.shape} of that name after forward"
        return (mapped, "") if mapped in cached else (None, missing)
    if "last_totals" in cached:
        return "last_totals", ""
    fits = [n for n, a in cached.items() if np.all(np.isfinite(a)) and np.allclose(softmax(a), probs, rtol=1e-6)]
    return (fits[0], "the only cached vector whose softmax it returns") if len(fits) == 1 else (None, "")


def refuse_dense_output(
    label: str, cls: str, forward: str, out: np.ndarray, totals: list[np.ndarray], last: bool
) -> None:
    """ImplError when a dense layer's forward returned what its place cannot take (`refuse_totals` for the last
    layer, `refuse_hidden_softmax` for any other)."""
    (refuse_totals if last else refuse_hidden_softmax)(label, cls, forward, out, totals)


def refuse_hidden_softmax(label: str, cls: str, forward: str, out: np.ndarray, totals: list[np.ndarray]) -> None:
    """ImplError when a dense layer before the last returned the softmax of its `totals`: the twin has a softmax
    after the last layer only."""
    if np.size(out) > 1 and any(close(out, softmax(candidate)) for candidate in totals):
        raise ImplError(
            f"{label}: {cls}.{forward} returns probabilities (the softmax of its totals) in a layer that is not the "
            "last: check's twin, as the tutorial's network, has a softmax after the last layer only, and a dense "
            f"layer before it must return its totals. Give that layer a class whose forward returns input . weights "
            f"+ biases, or make {cls} the last layer"
        )


def refuse_totals(label: str, cls: str, forward: str, out: np.ndarray, totals: list[np.ndarray]) -> None:
    """ImplError when the last layer's forward returned its `totals`: its softmax is in a class of its own."""
    if any(close(out, candidate) for candidate in totals):
        raise ImplError(
            f"{label}: {cls}.{forward}, the last layer, returns its totals (input . weights + biases), not "
            "probabilities: check drives the tutorial's interface, where the classifier's forward returns the softmax "
            f"and its backprop takes dL/dprobs. A softmax in a class of its own is not supported: move it into {cls}'s "
            "forward and backprop"
        )


def refuse_softmax_layer(label: str, cls: str, forward: str, x: np.ndarray, out: np.ndarray) -> None:
    """ImplError when a layer without weights returned the softmax of its input: a softmax class of its own."""
    if np.shape(out) == x.shape and x.size > 1 and close(out, softmax(np.asarray(x, dtype=np.float64))):
        raise ImplError(
            f"{label}: {cls}.{forward} returns the softmax of its input: a softmax in a class of its own, which is not "
            "supported. In the tutorial's interface the classifier (the last dense layer) returns the softmax from its "
            "forward and takes dL/dprobs in its backprop: move the softmax into that layer's forward and backprop"
        )


def unseen_logits(cls: str, attribute: str, cached: np.ndarray, totals: list[np.ndarray]) -> str:
    """Why `cls.attribute` cannot be compared as the logits, when it holds the totals less a constant (their max):
    the same softmax, but not the logits; "" when it is the logits, or anything else (which is compared)."""
    cached = np.asarray(cached, dtype=np.float64)
    if any(close(cached, t) for t in totals):
        return ""
    if not any(t.shape == cached.shape and close(cached - cached.max(), t - t.max()) for t in totals):
        return ""
    return (
        f"{cls}.{attribute} holds the totals less a constant (as totals - max(totals)): the softmax and every gradient "
        "are those of the logits, but the logits themselves are not seen"
    )


def close(actual: object, expected: np.ndarray) -> bool:
    """Equal to float32 precision: what a layer computes in its own way, in either precision, is recognised (this
    reads what the code does, it judges nothing)."""
    actual = np.asarray(actual, dtype=np.float64)
    return actual.shape == expected.shape and bool(np.allclose(actual, expected, rtol=1e-5, atol=1e-7))
