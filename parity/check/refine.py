"""What a checked implementation's first divergence means when the tensor was not seen but recovered by the adapter
from the in-place weight update (`parity.check.adapter`): a wrong update rule shows there too, and for dL/dlogits
the weight gradient tells whether the logits' gradient itself or only the bias update is wrong."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from parity.diagnosis.patterns import matches
from parity.engine.tolerances import tolerance_for
from parity.lockstep.stepper import Divergence

# Where the adapter obtained a tensor by arithmetic rather than seeing it: a divergence there says so.
RECOVERED = ("dense1.d_out", "dense1.d_weights", "dense1.d_biases", "conv1.d_filters")


def refine(div: Divergence, ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> Divergence:
    """The divergence with a note on recovery added to its diagnosis (text and evidence) when its tensor was
    recovered from the update; unchanged otherwise."""
    if div.tensor not in RECOVERED:
        return div
    note, evidence = _recovery_note(div.tensor, ours, theirs)
    diagnosis = div.diagnosis
    diagnosis = replace(diagnosis, text=f"{diagnosis.text}; {note}", evidence={**diagnosis.evidence, **evidence})
    return replace(div, diagnosis=diagnosis)


def _recovery_note(tensor: str, ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> tuple[str, dict]:
    """What a divergence in a recovered gradient can mean, since it was read off the weight update."""
    if tensor != "dense1.d_out":
        return (
            f"{tensor} is recovered from the in-place update as (before - after) / lr: a wrong update rule shows "
            "here too",
            {"recovered_from_update": True},
        )
    mine, reference = ours.get("dense1.d_weights"), theirs.get("dense1.d_weights")
    agree = isinstance(mine, np.ndarray) and matches(mine, reference, tolerance_for(np.float64))
    if agree:
        return (
            "dense1.d_out is recovered from the bias update, and the weight gradient agrees, so dL/dlogits itself "
            "is right: the bias gradient or its update is wrong",
            {"recovered_from_update": True, "weight_gradient_agrees": True},
        )
    return (
        "dense1.d_out is recovered from the bias update, and the weight gradient disagrees too, so dL/dlogits itself "
        "is wrong: check the softmax Jacobian and the initial gradient",
        {"recovered_from_update": True, "weight_gradient_agrees": False},
    )
