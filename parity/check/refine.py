"""Refining the engine's diagnosis of a checked implementation's first divergence from that step's tensors: an
exact factor (a sign, lr applied twice), float32-level error, or a tensor the adapter had to recover."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from parity.engine.tolerances import tolerance_for
from parity.lockstep.stepper import Divergence

# Where the adapter obtained a tensor by arithmetic rather than seeing it: a divergence there says so.
RECOVERED = ("dense1.d_out", "dense1.d_weights", "dense1.d_biases", "conv1.d_filters")


def refine(
    div: Divergence, ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], lr: float
) -> tuple[Divergence, str]:
    """Sharpen the engine's diagnosis with the step's tensors (what a per-tensor summary cannot see).

    Returns the divergence with the longer diagnosis, and a short cause for tables ('' when nothing was found):

    - one constant factor between the tensors (zero, lr, -1, 1/n): said, with what it usually means.
    - errors at float32 rounding level: said.
    - gradients recovered from the update: said, since a wrong update rule shows there too.
    """
    s, r = ours.get(div.tensor), theirs.get(div.tensor)
    diagnosis, extras, short = div.diagnosis, [], ""
    comparable = isinstance(s, np.ndarray) and isinstance(r, np.ndarray) and s.shape == r.shape
    comparable = comparable and bool(np.all(np.isfinite(s))) and bool(np.all(np.isfinite(r)))
    if comparable:
        factor, factor_short = _constant_factor(div.tensor, s, r, lr)
        float32 = "" if factor else _float32_level(s, r)
        extras += [factor, float32]
        short = short or factor_short or ("float32 rounding level" if float32 else "")
    extras.append(_recovery_note(div.tensor, ours, theirs))
    extras = [extra for extra in extras if extra]
    return replace(div, diagnosis="; ".join([diagnosis, *extras])), short


def _constant_factor(tensor: str, ours: np.ndarray, theirs: np.ndarray, lr: float) -> tuple[str, str]:
    """('conv1.d_filters is 0.005 x the reference's ... (= lr: ...)', short) when one factor explains every element."""
    norm = float(np.linalg.norm(theirs))
    if norm == 0:
        return "", ""
    factor = float(np.vdot(ours, theirs)) / norm**2
    if np.linalg.norm(ours - factor * theirs) > 1e-6 * norm or abs(factor - 1) < 1e-6:
        return "", ""
    if abs(factor) < 1e-12:
        return (
            f"{tensor} is zero wherever the reference's is not: never computed or never applied (a missing update?)",
            "zero: a missing update?",
        )
    text = f"{tensor} is {factor:.6g} x the reference's, element for element"
    if abs(factor - lr) <= 1e-6 * lr:
        return text + " (= the learning rate: lr applied twice?)", f"{factor:g} x the reference (= lr: applied twice?)"
    if abs(factor + 1) < 1e-6:
        return text + " (a sign error)", "-1 x the reference (a sign error)"
    n = round(1 / factor)
    if 2 <= abs(n) <= 100_000 and abs(1 / factor - n) < 1e-6 * abs(n):
        return text + f" (= 1/{n}: divided by {n}, e.g. a mean over {n} values?)", f"1/{n} of the reference (a mean?)"
    return text, f"{factor:.4g} x the reference"


def _float32_level(ours: np.ndarray, theirs: np.ndarray) -> str:
    scale = float(np.abs(theirs).max(initial=0.0))
    if scale == 0:
        return ""
    relative = float(np.abs(ours - theirs).max()) / scale
    if 1e-9 < relative < 1e-5:
        return (
            f"the errors are at float32 rounding level (max |error| / max |reference| = {relative:.2g}; float32 eps "
            "1.2e-7): is something computed in float32?"
        )
    return ""


def _recovery_note(tensor: str, ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> str:
    """What a divergence in a recovered gradient can mean, since it was read off the weight update."""
    if tensor not in RECOVERED:
        return ""
    if tensor == "dense1.d_out":
        mine, reference = ours.get("dense1.d_weights"), theirs.get("dense1.d_weights")
        weights_agree = (
            mine is not None
            and mine.shape == reference.shape
            and bool(np.all(np.abs(mine - reference) <= tolerance_for(np.float64).allowed(reference)))
        )
        if weights_agree:
            return (
                "dense1.d_out is recovered from the bias update, and the weight gradient agrees, so dL/dlogits "
                "itself is right: the bias gradient or its update is wrong"
            )
        return (
            "dense1.d_out is recovered from the bias update, and the weight gradient disagrees too, so dL/dlogits "
            "itself is wrong: check the softmax Jacobian and the initial gradient"
        )
    return (
        f"{tensor} is recovered from the in-place update as (before - after) / lr: a wrong update rule shows here too"
    )
