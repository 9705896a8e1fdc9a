"""Lockstep training: both sides step on the same image with the same lr, and every named tensor is compared.

Modes:
- "free": each side trains on its own weights; errors accumulate, so this measures drift.
- "teacher": before each step the scratch side is reset to the reference's weights; this measures one-step error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from parity.compare import TensorComparison, compare
from parity.diagnosis import diagnose
from parity.ties import (
    beyond_tolerance,
    count_tied_windows,
    flip_consequences,
    near_tie_flips,
    untied_routing_mismatches,
)
from parity.tolerances import tolerance_for
from scratch.network import BACKWARD_TENSORS, FORWARD_TENSORS, PARAMETERS

STEP_TENSORS = FORWARD_TENSORS + BACKWARD_TENSORS
TENSOR_ORDER = STEP_TENSORS + PARAMETERS  # parameters are compared after the update
ALWAYS_COMPARED = ("loss",) + PARAMETERS  # compared every step, whatever the stride
# Tensors that depend on which element a pool window routed its gradient to. After a proven flip each of them must
# equal the reference's value recomputed with the rerouted gradient (`ties.flip_consequences`). A flip legitimately
# moves the filters off the reference's trajectory (by lr x the rerouted gradient, which can exceed float32
# tolerance), so after an explained flip a free-running run re-synchronises scratch to the reference's weights.
ROUTING_DEPENDENT = ("d_conv_out", "d_filters", "d_image", "filters")
MODES = ("free", "teacher")


class Side(Protocol):
    """One implementation in a lockstep run (scratch, the reference, or a user's code behind an adapter)."""

    def forward_backward(self, image: np.ndarray, label: int) -> dict[str, np.ndarray]: ...
    def update(self, lr: float) -> None: ...
    def parameters(self) -> dict[str, np.ndarray]: ...
    def load_parameters(self, params: dict[str, np.ndarray]) -> None: ...


@dataclass
class StepRecord:
    """One step of a lockstep run: both losses, the tie count, and the comparisons made."""

    step: int
    scratch_loss: float
    reference_loss: float
    scratch_correct: bool
    reference_correct: bool
    tied_windows: int | None  # tied pool windows in the reference's forward; None on steps without a full comparison
    comparisons: list[TensorComparison]
    flipped_windows: int = 0  # near-tie routing flips explained this step

    @property
    def passed(self) -> bool:
        """True when every compared tensor was within tolerance, or out of it for a proven harmless reason."""
        return all(c.ok for c in self.comparisons)

    @property
    def tolerance_used(self) -> float:
        """The largest share of tolerance used by any tensor this step (explained flips aside)."""
        return max((c.tolerance_used for c in self.comparisons if not c.explained), default=0.0)


@dataclass
class Divergence:
    """The first tensor, in forward-then-backward-then-parameters order, of the first step to exceed tolerance."""

    step: int
    tensor: str
    layer: str
    comparison: TensorComparison
    tied_windows: int | None
    diagnosis: str

    def message(self) -> str:
        """A one-paragraph explanation of the divergence."""
        return f"step {self.step}, {self.layer} {self.tensor}: {self.diagnosis}. {self.comparison.message()}"


@dataclass
class LockstepRecord:
    """Everything a lockstep run measured."""

    dtype: str
    mode: str
    stride: int
    lr: float
    steps: list[StepRecord] = field(default_factory=list)
    first_divergence: Divergence | None = None
    seconds: dict[str, float] = field(default_factory=lambda: {"scratch": 0.0, "reference": 0.0, "compare": 0.0})
    missing_tensors: tuple[str, ...] = ()
    worst_tolerance_used: float = 0.0
    resynced_steps: list[int] = field(default_factory=list)  # steps after which scratch took the reference's weights
    pending_worst: tuple[StepRecord, dict] | None = field(default=None, repr=False)  # detailed when the run ends
    reference_weights: dict | None = field(default=None, repr=False)  # the reference's weights after the last step

    @property
    def flipped_windows(self) -> int:
        """Near-tie routing flips explained over the run."""
        return sum(step.flipped_windows for step in self.steps)

    @property
    def passed(self) -> bool:
        """True when no tensor exceeded tolerance at any step (proven near-tie flips aside)."""
        return self.first_divergence is None

    def max_abs_error(self) -> dict[str, float]:
        """The largest absolute error of each tensor over the run (explained near-tie flips aside)."""
        worst: dict[str, float] = {}
        for step in self.steps:
            for c in step.comparisons:
                if not c.explained:
                    worst[c.name] = max(worst.get(c.name, 0.0), c.max_abs_error)
        return {name: worst[name] for name in TENSOR_ORDER if name in worst}

    def worst_step(self) -> StepRecord | None:
        """The step that used the largest share of tolerance (the first such step on a tie)."""
        return max(self.steps, key=lambda s: s.tolerance_used, default=None)


def run_lockstep(
    scratch: Side,
    reference: Side,
    images: Sequence[np.ndarray],
    labels: Sequence[int],
    dtype: object,
    lr: float = 0.005,
    stride: int = 1,
    mode: str = "free",
    record: LockstepRecord | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
) -> LockstepRecord:
    """Train both sides in lockstep on `images`; every tensor every `stride` steps, loss and parameters always."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if stride < 1:
        raise ValueError(f"stride: expected a positive integer, got {stride}")
    dtype = np.dtype(dtype)
    record = record or LockstepRecord(dtype=dtype.name, mode=mode, stride=stride, lr=lr)
    for image, label in zip(images, labels, strict=True):
        step = _lockstep_step(scratch, reference, image, int(label), dtype, lr, len(record.steps), record)
        record.steps.append(step)
        if on_step is not None:
            on_step(step)
    _detail_pending_worst(record)
    return record


def _lockstep_step(scratch, reference, image, label, dtype, lr, index, record) -> StepRecord:
    timer = time.perf_counter
    if record.mode == "teacher":
        scratch.load_parameters(reference.parameters())
    started = timer()
    scratch_tensors = scratch.forward_backward(image, label)
    scratch.update(lr)
    record.seconds["scratch"] += timer() - started
    started = timer()
    full = index % record.stride == 0
    reference_tensors = _reference_step(reference, image, label, lr, full)
    record.seconds["reference"] += timer() - started
    started = timer()
    # Parameters are compared right after both updates, before the next step changes them.
    scratch_tensors = {**scratch_tensors, **scratch.parameters()}
    record.missing_tensors = tuple(name for name in TENSOR_ORDER if name not in scratch_tensors)
    comparisons = _cheap_comparisons(scratch_tensors, reference_tensors, full, dtype)
    if not full and not all(c.passed for c in comparisons) and record.reference_weights is not None:
        # A step between strided full comparisons failed: redo the reference's step in full from its weights before
        # the step (torch on the CPU is deterministic), so the failure is localised as on a full step.
        reference.load_parameters(record.reference_weights)
        full, reference_tensors = True, _reference_step(reference, image, label, lr, full=True)
        comparisons = _cheap_comparisons(scratch_tensors, reference_tensors, full, dtype)
    record.reference_weights = {name: reference_tensors[name] for name in PARAMETERS}  # copies: the next start
    step = StepRecord(
        step=index,
        scratch_loss=float(scratch_tensors["loss"]),
        reference_loss=float(reference_tensors["loss"]),
        scratch_correct=bool(np.argmax(scratch_tensors["probs"]) == label) if "probs" in scratch_tensors else False,
        reference_correct=bool(np.argmax(reference_tensors["logits"]) == label),
        tied_windows=count_tied_windows(reference_tensors["conv_out"]) if full else None,
        comparisons=comparisons,
    )
    if not step.passed:
        _explain_flips(step, scratch_tensors, reference_tensors, dtype, image, lr)
        if step.flipped_windows and step.passed:
            scratch.load_parameters(reference.parameters())
            record.resynced_steps.append(index)
    # Full statistics (ULPs, relative error) only for the steps a report shows: the first, the first failure, and
    # the worst (whose tensors are kept and detailed once the run ends, since a new worst can come at any step).
    if index == 0 or (not step.passed and record.first_divergence is None):
        _detail(step, scratch_tensors, reference_tensors, dtype)
    if not step.passed and record.first_divergence is None:
        record.first_divergence = _divergence(step, record, scratch_tensors, reference_tensors, dtype)
    elif step.tolerance_used > record.worst_tolerance_used:
        names = [c.name for c in step.comparisons]
        record.pending_worst = (step, {n: (scratch_tensors[n].copy(), reference_tensors[n].copy()) for n in names})
    record.worst_tolerance_used = max(record.worst_tolerance_used, step.tolerance_used)
    record.seconds["compare"] += timer() - started
    return step


def _reference_step(reference, image, label, lr, full) -> dict[str, np.ndarray]:
    """One reference step; between strided full comparisons it runs bare (no activation gradients)."""
    tensors = reference.forward_backward(image, label) if full else reference.forward_backward(image, label, False)
    reference.update(lr)
    return {**tensors, **reference.parameters()}


def _cheap_comparisons(scratch_tensors, reference_tensors, full, dtype) -> list[TensorComparison]:
    names = [name for name in (TENSOR_ORDER if full else ALWAYS_COMPARED) if name in scratch_tensors]
    return [compare(n, scratch_tensors[n], reference_tensors[n], dtype, detail=False) for n in names]


def _detail(step: StepRecord, scratch_tensors, reference_tensors, dtype) -> None:
    step.comparisons = [
        replace(compare(c.name, scratch_tensors[c.name], reference_tensors[c.name], dtype), explained=c.explained)
        for c in step.comparisons
    ]


def _detail_pending_worst(record: LockstepRecord) -> None:
    if record.pending_worst is not None:
        step, tensors = record.pending_worst
        _detail(
            step,
            {n: pair[0] for n, pair in tensors.items()},
            {n: pair[1] for n, pair in tensors.items()},
            np.dtype(record.dtype),
        )
        record.pending_worst = None


def _explain_flips(step: StepRecord, scratch_tensors, reference_tensors, dtype, image, lr) -> None:
    """Mark a routing difference caused only by rounding at a near-tie as explained, with the evidence."""
    by_name = {c.name: i for i, c in enumerate(step.comparisons)}
    if "d_conv_out" not in by_name or step.comparisons[by_name["d_conv_out"]].passed:
        return
    tolerance = tolerance_for(dtype)
    flips = near_tie_flips(
        scratch_tensors["conv_out"],
        reference_tensors["conv_out"],
        scratch_tensors["d_conv_out"],
        reference_tensors["d_conv_out"],
        tolerance,
        tolerance,
    )
    if flips <= 0:
        return
    # Only the pool gradient was proven; its consequences downstream are recomputed and must match too.
    d_conv_out_delta = scratch_tensors["d_conv_out"] - reference_tensors["d_conv_out"]
    beyond = beyond_tolerance(scratch_tensors["d_conv_out"], reference_tensors["d_conv_out"], tolerance)
    expected = flip_consequences(image, reference_tensors, np.where(beyond, d_conv_out_delta, 0), lr)
    reason = f"near-tie flip in {flips} pool window(s): rounding reordered two maxima within forward tolerance"
    explained = {"d_conv_out": step.comparisons[by_name["d_conv_out"]]}
    for name in ROUTING_DEPENDENT[1:]:
        if name in by_name and not step.comparisons[by_name[name]].passed:
            if name not in scratch_tensors or not compare(name, scratch_tensors[name], expected[name], dtype).passed:
                return  # a failure the flip does not account for: left unexplained, so the step fails
            explained[name] = step.comparisons[by_name[name]]
    step.flipped_windows = flips
    for name, comparison in explained.items():
        step.comparisons[by_name[name]] = replace(comparison, explained=reason)


def _divergence(step: StepRecord, record: LockstepRecord, scratch_tensors, reference_tensors, dtype) -> Divergence:
    failure = next(c for c in step.comparisons if not c.ok)
    previous = record.steps[-1].tolerance_used if record.steps else 0.0  # this step is not appended yet
    untied = 0
    if failure.name == "d_conv_out" and not failure.problem:
        untied = untied_routing_mismatches(
            reference_tensors["conv_out"],
            scratch_tensors["d_conv_out"],
            reference_tensors["d_conv_out"],
            tolerance_for(dtype),
        )
    layer, diagnosis = diagnose(failure, step.comparisons, step.tied_windows, previous, untied)
    return Divergence(step.step, failure.name, layer, failure, step.tied_windows, diagnosis)
