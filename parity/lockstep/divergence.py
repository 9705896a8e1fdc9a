"""The first divergence of a lockstep run, explained: by the failing layer's own verdict when it has one, by the
weights the two sides held when the layer is right on its own, else from the whole run's tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity.diagnosis import patterns
from parity.diagnosis.diagnose import DRIFT_SHARE, Context, diagnose_tensor
from parity.diagnosis.pool import count_tied_windows, pool_input
from parity.diagnosis.record import Diagnosis
from parity.engine.tolerances import tolerance_for
from parity.lockstep.local import LocalStep
from parity.lockstep.records import Divergence, StepRecord
from scratch.spec import NetworkSpec


@dataclass
class Evidence:
    """What a step leaves for explaining its first divergence."""

    scratch: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    local: dict[str, LocalStep]  # each layer judged on its own (empty when the side cannot be)
    before: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None  # both sides' weights before the step


def first_divergence(
    spec: NetworkSpec, dtype: np.dtype, lr: float, step: StepRecord, previous: float, evidence: Evidence
) -> Divergence:
    """The first tensor of `step` out of tolerance, and why; `previous` is the share of tolerance the step before
    used. Where a layer is wrong on its own, the tensor its diagnosis is of (else its first failing one): a tensor
    may fail earlier in the spec's order only through it (a near-tie flip it caused), and the divergence names where
    to start."""
    failures = [c for c in step.comparisons if not c.ok]
    wrong_alone = {name for name, local in evidence.local.items() if not local.passed}
    failure = next((c for c in failures if spec.judged_at(c.name) in wrong_alone), failures[0])
    layer = spec.judged_at(failure.name)
    local = evidence.local.get(layer)
    if local is not None and not local.passed:
        diagnosis = local.diagnose(evidence.reference)  # the layer itself is wrong
        # Named at the tensor its diagnosis is of, where that fails here too: an earlier tensor of the layer may
        # fail only through it (a near-tie flip that a wrong update leaves unproven).
        failure = next((c for c in failures if c.name == diagnosis.tensor), failure)
    elif local is not None:
        diagnosis = _inherited(spec, dtype, layer, failure.name, evidence, previous)
    else:  # no local verdict: judged from the whole run's tensors
        context = Context(spec, dtype, lr, previous_tolerance_used=previous)
        diagnosis = diagnose_tensor(failure, evidence.scratch, evidence.reference, context)
    info = spec.tensor(failure.name)
    tied = step.tied_windows
    if info.kind == "pool" and info.role == "d_in":
        inputs = pool_input(spec, info.layer, evidence.reference)
        tied = tied if inputs is None else count_tied_windows(inputs, spec.layer(info.layer).kernel)
    return Divergence(step.step, failure.name, info.layer, failure, tied, diagnosis)


def _inherited(spec: NetworkSpec, dtype, layer: str, tensor: str, evidence: Evidence, previous: float) -> Diagnosis:
    """A layer that is right on the reference's inputs and weights diverged: the two sides held different weights
    (a layout or update problem, named by a detector when one fits), another layer is wrong on its own, or the error
    accumulated."""
    tolerance = tolerance_for(dtype)
    ours, theirs = evidence.before
    for name in (name for name in spec.parameter_names if name in ours and spec.judged_at(name) == layer):
        if patterns.matches(ours[name], theirs[name], tolerance):
            continue
        info = spec.tensor(name)
        axes = ("input", "unit") if info.param == "weights" else ("filter", "kernel row", "kernel column", "channel")
        flatten = spec.layer(layer).in_shape if info.param == "weights" else None
        found = patterns.permuted(ours[name], theirs[name], tolerance, axes[: ours[name].ndim], flatten)
        how = f"equal up to {found['transform']}" if found else "not related by a permutation"
        return Diagnosis(
            "permuted" if found else "unexplained",
            layer,
            name,
            f"{layer} computes right from the reference's inputs and weights, but the two sides held different "
            f"{name} before this step ({how}): check how weights are copied between them (the layouts)",
            {"transform": found["transform"]} if found else {"weights_differ": name},
        )
    # A layer wrong on its own at this step can make this one's tensor differ where no detector tells how (a
    # near-tie flip is proven only if every tensor before the pool agrees with the rerouted gradient).
    failed_alone = [name for name, local in evidence.local.items() if not local.passed]
    if failed_alone:
        return Diagnosis(
            "unexplained",
            layer,
            tensor,
            f"{layer} is right on the reference's inputs and weights, yet its {tensor} differs in the whole-network "
            f"step; {', '.join(failed_alone)} {'is' if len(failed_alone) == 1 else 'are'} wrong on "
            f"{'its' if len(failed_alone) == 1 else 'their'} own at this step: start there",
            {"locally": "passed", "failed_alone": failed_alone},
        )
    if previous > DRIFT_SHARE:
        return Diagnosis(
            "drift",
            layer,
            tensor,
            f"accumulated numerical drift: {layer} is right on the reference's inputs and weights, and the step "
            f"before already used {100 * previous:.0f}% of the tolerance",
            {"previous_tolerance_used": previous},
        )
    if spec.layer(layer).kind == "pool":  # it routes by its inputs: its own and the reference's may tie otherwise
        return Diagnosis(
            "unexplained",
            layer,
            tensor,
            f"{layer} is right on the reference's inputs and weights, yet its {tensor} differs in the whole-network "
            "step, where it routes by its own inputs: those tie otherwise than the reference's, a rounding apart, "
            "and the difference is no proven near-tie flip. A tie rule wrong only for some tie patterns shows "
            "this way: see whether the layer is wrong on its own at a later step",
            {"locally": "passed", "routes_on_own_inputs": True},
        )
    return Diagnosis(
        "unexplained",
        layer,
        tensor,
        f"{layer} is right on the reference's inputs and weights, yet its {tensor} differs in the whole-network "
        "step: the difference comes from how the side chains its layers, not from the layer",
        {"locally": "passed"},
    )
