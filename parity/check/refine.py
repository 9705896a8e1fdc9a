"""What a checked implementation's first divergence means when the tensor was not seen but recovered by the adapter
from the in-place weight update (`parity.check.adapter`): a wrong update rule shows there too, and for dL/dlogits
the weight gradient tells whether the logits' gradient itself or only the bias update is wrong."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from parity.diagnosis.patterns import matches
from parity.engine.tolerances import tolerance_for
from parity.lockstep.records import Divergence
from scratch.spec import NetworkSpec


def refine(
    div: Divergence,
    ours: dict[str, np.ndarray],
    theirs: dict[str, np.ndarray],
    recovered: tuple[str, ...],
    spec: NetworkSpec,
) -> Divergence:
    """The divergence with a note on recovery added to its diagnosis (text and evidence) when its tensor is one of
    `recovered` (obtained by arithmetic from the update, not seen); unchanged otherwise."""
    if div.tensor not in recovered:
        return div
    last = spec.layers[-1].name
    d_logits, d_weights = spec.name_of(last, "d_out"), spec.name_of(last, "d_param", "weights")
    # The input gradient the last layer returns is computed from dL/dlogits, and seen: a witness for it.
    d_input = spec.name_of(last, "d_in")
    witness = d_input if d_input not in recovered else None
    note, evidence = _recovery_note(div.tensor, d_logits, d_weights, witness, ours, theirs)
    diagnosis = div.diagnosis
    diagnosis = replace(diagnosis, text=f"{diagnosis.text}; {note}", evidence={**diagnosis.evidence, **evidence})
    return replace(div, diagnosis=diagnosis)


def _recovery_note(
    tensor: str,
    d_logits: str,
    d_weights: str,
    d_input: str | None,
    ours: dict[str, np.ndarray],
    theirs: dict[str, np.ndarray],
) -> tuple[str, dict]:
    """What a divergence in a recovered gradient can mean, since it was read off the weight update; `d_input`: the
    last layer's input gradient where it was seen (it is computed from dL/dlogits, not from the update)."""
    if tensor != d_logits:
        return (
            f"{tensor} is recovered from the in-place update as (before - after) / lr: a wrong update rule shows "
            "here too",
            {"recovered_from_update": True},
        )
    if _agrees(d_weights, ours, theirs):
        return (
            f"{d_logits} is recovered from the bias update, and the weight gradient agrees, so dL/dlogits itself "
            "is right: the bias gradient or its update is wrong",
            {"recovered_from_update": True, "weight_gradient_agrees": True},
        )
    if d_input is not None and _agrees(d_input, ours, theirs):
        return (
            f"{d_logits} is recovered from the bias update, and the weight gradient disagrees too, but {d_input}, "
            "which the layer computes from dL/dlogits, agrees: dL/dlogits is right, the weight and bias gradients "
            "or their SGD update are wrong",
            {"recovered_from_update": True, "weight_gradient_agrees": False, "input_gradient_agrees": True},
        )
    return (
        f"{d_logits} is recovered from the bias update, and the weight gradient disagrees too, so dL/dlogits itself "
        "is wrong: check the softmax Jacobian and the initial gradient",
        {"recovered_from_update": True, "weight_gradient_agrees": False},
    )


def _agrees(name: str, ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> bool:
    """Whether the side's `name` matches the twin's within the float64 tolerance (the check runs in float64)."""
    mine, reference = ours.get(name), theirs.get(name)
    return (
        isinstance(mine, np.ndarray)
        and isinstance(reference, np.ndarray)
        and matches(mine, reference, tolerance_for(np.float64))
    )
