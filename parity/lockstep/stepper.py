"""Lockstep training: both sides step on the same batch with the same lr, and every named tensor is compared.

Modes:
- "free": each side trains on its own weights; errors accumulate, so this measures drift.
- "teacher": before each step the scratch side is reset to the reference's weights; this measures one-step error.

Stride K: every tensor is compared every K steps, the small `always_compared` ones every step. Comparing every
element costs about as much as the training step itself, so between full comparisons only the small tensors are
compared. Nothing is lost in locating a failure: both sides' weights are kept from the last step
verified in full, and when a comparison fails (or the run ends) every step since then is replayed with every tensor
compared (NumPy and torch on the CPU are deterministic). A divergence the strided comparisons see is named at its exact
step and tensor, as with K = 1; one confined to tensors compared only in full, at steps in between, that leaves the
weights within tolerance (a tie routed to another element of identical patches) is seen at the next full step where it
appears. A failure the replay does not reproduce is recorded, and the run fails: when the replay resynced scratch at a
near-tie flip, that is decided by retracing the steps as they first ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np

from parity.diagnosis.flips import explain_flips
from parity.diagnosis.pool import count_tied_windows, pool_input
from parity.engine.batch import Workspace, compare_batch, compare_many
from parity.engine.compare import compare
from parity.engine.tolerances import tensor_tolerances
from parity.lockstep.checkpoint import Checkpoint, timed_as_replay
from parity.lockstep.divergence import Evidence, first_divergence
from parity.lockstep.local import LocalJudge, fresh_verdicts
from parity.lockstep.records import LockstepRecord, StepRecord
from parity.lockstep.retention import SummarisedComparisons
from scratch.spec import NetworkSpec

MODES = ("free", "teacher")
# `cnn-parity report`'s default stride. Comparing every element of every step costs about +110-145% over training
# both models bare at stride 1, stride 10 +25-55% (the lockstep section of `python -m parity.benchmark`, over runs
# on these noisy machines; the target for both is +30%). Stride 1 becomes the default once it meets it; its
# recording alone, with nothing compared (`record_both`), costs +35-49%.
DEFAULT_REPORT_STRIDE = 10


def always_compared(spec: NetworkSpec, mode: str) -> tuple[str, ...]:
    """The tensors compared at every step of a run in `mode`, whatever the stride.

    The logits, the loss and every parameter gradient but the dense weights': small, and computed by a bare
    training step anyway. The conv filter gradients are where a pool gradient routed to another element (a near-tie
    flip) shows at the step it happens.
    """
    names = [f"{spec.layers[-1].name}.out", "loss"]
    names += [
        info.name
        for info in spec.tensors
        if info.role == "d_param" and not (info.kind == "dense" and info.param == "weights")
    ]
    # Teacher forcing resets scratch to the reference's weights before each step, so a wrong update would be erased
    # before any later comparison could see it: the parameters are compared at every step too.
    return tuple(names) + (spec.parameter_names if mode == "teacher" else ())


class Side(Protocol):
    """One implementation in a lockstep run (scratch, the reference, or a user's code behind an adapter).

    Tensors and parameters are named by the run's spec, in scratch layouts; `names`, when given, are the tensors
    wanted this step (a side may return more)."""

    def forward_backward(
        self, images: np.ndarray, labels: np.ndarray, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]: ...
    def update(self, lr: float) -> None: ...
    def parameters(self) -> dict[str, np.ndarray]: ...
    def load_parameters(self, params: dict[str, np.ndarray]) -> None: ...


def run_lockstep(
    scratch: Side,
    reference: Side,
    spec: NetworkSpec,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    dtype: object,
    lr: float = 0.005,
    stride: int = 1,
    mode: str = "free",
    record: LockstepRecord | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
) -> LockstepRecord:
    """Train both sides in lockstep on `(images, labels)` batches: every tensor every `stride` steps."""
    lockstep = Lockstep(scratch, reference, spec, dtype, lr, stride, mode, record)
    for images, labels in batches:
        step = lockstep.step(images, labels)
        if on_step is not None:
            on_step(step)
    return lockstep.finish()


def as_batch(images: np.ndarray, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """One image `(H, W)` and its label, or a batch `(N, H, W)` and its labels, as a batch and an int array."""
    images = np.asarray(images)
    if images.ndim == 2:
        return images[np.newaxis], np.array([int(labels)])
    return images, np.asarray(labels).reshape(-1)


class Lockstep:
    """Two sides stepped together one batch at a time; `record` holds everything measured so far."""

    def __init__(  # `judge_layers`: judge each layer on its own where the side can (see parity.lockstep.local);
        # `tie_policy`: the rule the reference's pools route ties by (see reference.twin)
        self,
        scratch: Side,
        reference: Side,
        spec: NetworkSpec,
        dtype: object,
        lr: float = 0.005,
        stride: int = 1,
        mode: str = "free",
        record: LockstepRecord | None = None,
        judge_layers: bool = True,
        tie_policy: str = "first",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if stride < 1:
            raise ValueError(f"stride: expected a positive integer, got {stride}")
        self.scratch, self.reference, self.spec = scratch, reference, spec
        self.tie_policy = tie_policy  # the reference's max-pool tie rule: near-tie flips are proven against it
        self.dtype, self.lr = np.dtype(dtype), lr
        self.record = record or LockstepRecord(dtype=self.dtype.name, mode=mode, stride=stride, lr=lr, spec=spec)
        # Every layer judged on its own at the steps compared in full, when the side can run one layer alone.
        judged = judge_layers and hasattr(scratch, "run_layer")
        self.local = LocalJudge(spec, self.dtype, lr, tie_policy) if judged else None
        if not self.record.layers:
            self.record.layers = fresh_verdicts(spec)
        self.workspace = Workspace()
        self.always = always_compared(spec, mode)
        # Per kind of step, what is compared and which of it a side's step returns (the rest are the parameters
        # after the update), worked out once.
        self.plans = {
            full: (compared, [name for name in compared if spec.tensor(name).role != "param"])
            for full, compared in ((True, spec.tensor_names), (False, self.always))
        }
        self.logits = f"{spec.layers[-1].name}.out"
        self._checkpoint: Checkpoint | None = None  # strided runs: the state after the last step verified in full

    def step(self, images: np.ndarray, labels: object) -> StepRecord:
        """Train both sides on one image or batch, compare, and append the step to the record.

        In a strided run a failure replays the steps since the last full comparison; the step returned is then the
        replayed one."""
        images, labels = as_batch(images, labels)
        record = self.record
        index = len(record.steps)
        full = index % record.stride == 0
        if record.stride > 1 and self._checkpoint is None and record.first_divergence is None:
            self._checkpoint = Checkpoint.take(self)
        step = _lockstep_step(self, images, labels, index, full)
        record.steps.append(step)
        if self._checkpoint is not None:
            self._checkpoint.unverified.append((images.copy(), labels.copy()))  # callers may reuse the buffers
            if not step.passed and (len(self._checkpoint.unverified) > 1 or not full):
                return self._replay_to_locate(index)
            if full:  # verified (or, when it failed, located): the next step starts from a new checkpoint
                self._checkpoint = None
        return step

    def finish(self) -> LockstepRecord:
        """The record, with its last steps verified in full and full statistics for its worst step."""
        if self._checkpoint is not None:
            self._replay_in_full()
        _detail_pending_worst(self.record)
        return self.record

    def _replay_to_locate(self, failed_step: int) -> StepRecord:
        """Replay in full after a failure; a failure that does not come back is recorded (the run then fails)."""
        checkpoint, record = self._checkpoint, self.record
        failing = [c.name for c in record.steps[-1].comparisons if not c.ok]
        step = self._replay_in_full()
        if record.first_divergence is None:
            # A flip proven in the replay resyncs scratch at its step, so the replay's later steps no longer retrace
            # the first run's: whether the failure comes back is asked of a retrace of that run itself.
            flipped = any(s.flipped for s in record.steps[checkpoint.steps :])
            if not flipped or not self._fails_again(checkpoint, failing):
                record.unreproduced_failures.append(failed_step)
        return step

    def _replay_in_full(self) -> StepRecord:
        """Restore both sides to the checkpoint and re-run every step since, comparing every tensor."""
        checkpoint, self._checkpoint = self._checkpoint, None
        checkpoint.restore(self)
        with timed_as_replay(self.record.seconds):
            for images, labels in checkpoint.unverified:
                self.record.steps.append(_lockstep_step(self, images, labels, len(self.record.steps), full=True))
                self.record.replayed_steps += 1
        return self.record.steps[-1]

    def _fails_again(self, checkpoint: Checkpoint, failing: list[str]) -> bool:
        """Whether `failing`, tensors of the last step since `checkpoint`, fail again when those steps are retraced as
        they first ran: strided where they were, and with no resync (only a step compared in full can prove a flip,
        and the one among them, the last, failed). Nothing is recorded; both sides are left as they were."""
        scratch, reference = self.scratch, self.reference
        now = _copies(scratch.parameters()), reference.parameters()
        scratch.load_parameters(checkpoint.scratch_weights)
        reference.load_parameters(checkpoint.reference_weights)
        with timed_as_replay(self.record.seconds):
            for offset, (images, labels) in enumerate(checkpoint.unverified):
                index = checkpoint.steps + offset
                if self.record.mode == "teacher":
                    scratch.load_parameters(reference.parameters())
                tensors = record_both(self, images, labels, full=index % self.record.stride == 0)
            # Compared before the weights are put back: the scratch tensors include its live parameters.
            tolerances = tensor_tolerances(self.spec.tensors, self.dtype, len(labels))
            again = any(not c.passed for c in compare_many(failing, *tensors, self.dtype, tolerances))
        scratch.load_parameters(now[0])
        reference.load_parameters(now[1])
        return again


def _lockstep_step(lockstep: Lockstep, images, labels, index, full) -> StepRecord:
    scratch, reference, record, dtype, lr, spec = (
        lockstep.scratch,
        lockstep.reference,
        lockstep.record,
        lockstep.dtype,
        lockstep.lr,
        lockstep.spec,
    )
    timer = time.perf_counter
    if record.mode == "teacher":
        scratch.load_parameters(reference.parameters())
    compared = lockstep.plans[full][0]
    judged = full and lockstep.local is not None
    # The weights both sides start the step from: the layers are judged from the reference's, and a divergence
    # of layers that are right on their own is traced to weights that differ.
    before = (_copies(scratch.parameters()), reference.parameters()) if judged else None
    scratch_tensors, reference_tensors = record_both(lockstep, images, labels, full)
    started = timer()
    if index == 0:
        record.missing_tensors = tuple(name for name in spec.tensor_names if name not in scratch_tensors)
    names = [name for name in compared if name in scratch_tensors]
    tolerances = tensor_tolerances(spec.tensors, dtype, len(labels))  # per-sample gradients: of a mean over N
    batch = compare_batch(names, scratch_tensors, reference_tensors, dtype, tolerances, lockstep.workspace)
    # A step that agrees keeps only what a report reads of it, packed at once; one that does not, every detail.
    comparisons = SummarisedComparisons.agreed(batch, record.steps.names_cache) if batch.agreed else batch.comparisons()
    logits = lockstep.logits
    step = StepRecord(
        step=index,
        scratch_loss=float(scratch_tensors["loss"]),
        reference_loss=float(reference_tensors["loss"]),
        scratch_correct=_correct(scratch_tensors.get(logits, scratch_tensors.get("probs")), labels),
        reference_correct=_correct(reference_tensors[logits], labels),
        tied_windows=None,  # counted by `_detail`, for the steps a report shows
        comparisons=comparisons,
        full=full,
        samples=len(labels),
    )
    if not step.passed:
        explain_flips(spec, step, scratch_tensors, reference_tensors, dtype, images, lr, lockstep.tie_policy)
    # A proven flip resyncs scratch to the reference's weights, but only once everything below has read this step's
    # tensors: scratch's parameters among them are its live arrays, which the resync overwrites.
    resync = step.flipped and step.passed
    local = {}
    if judged:
        # Every tensor compared and within tolerance: a batch that agreed, or one that passed though it did not agree
        # (an empty tensor, equal infinities).
        agreed = len(names) == len(spec.tensor_names) and (batch.agreed or all(c.passed for c in step.comparisons))
        alone = lockstep.local.layers_alone(agreed, record.layers)
        lockstep.local.count_implied(record.layers, alone)
        if alone:
            local = lockstep.local.judge(
                scratch, index, images, labels, reference_tensors, before[1], record.layers, alone, agreed
            )
    if not step.passed:
        _count_lockstep_failures(spec, step, record)
    # Full statistics (ULPs, relative error, tied windows) only for the steps a report shows: the first, the first
    # failure, and the worst (whose tensors are kept and detailed once the run ends, since a new worst can come at
    # any step).
    if index == 0 or (not step.passed and record.first_divergence is None):
        _detail(spec, step, scratch_tensors, reference_tensors, dtype)
    if not step.passed and record.first_divergence is None:
        evidence = Evidence(scratch_tensors, reference_tensors, local, before)
        previous = record.steps[-1].tolerance_used if record.steps else 0.0  # this step is not appended yet
        record.first_divergence = first_divergence(spec, dtype, lr, step, previous, evidence)
    elif step.tolerance_used > record.worst_tolerance_used:
        record.pending_worst = (step, {n: (scratch_tensors[n].copy(), reference_tensors[n].copy()) for n in names})
    record.worst_tolerance_used = max(record.worst_tolerance_used, step.tolerance_used)
    if resync:
        scratch.load_parameters(reference.parameters())
        record.resynced_steps.append(index)
    record.seconds["compare"] += timer() - started
    return step


def record_both(
    lockstep: Lockstep, images: np.ndarray, labels: np.ndarray, full: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Both sides' training step on one batch, and the tensors each hands over for a step of this kind (`full`:
    every tensor; else the `always_compared` ones), the parameters after the update among them where compared: the
    sides' half of a lockstep step, before anything is compared or judged. Each side's time goes to the record's
    `seconds`."""
    scratch, reference, seconds = lockstep.scratch, lockstep.reference, lockstep.record.seconds
    timer = time.perf_counter
    compared, wanted = lockstep.plans[full]
    with_parameters = len(wanted) < len(compared)
    started = timer()
    scratch_tensors = scratch.forward_backward(images, labels, wanted)
    scratch.update(lockstep.lr)
    seconds["scratch"] += timer() - started
    started = timer()
    reference_tensors = reference.forward_backward(images, labels, None if full else wanted)
    reference.update(lockstep.lr)
    if with_parameters:  # compared right after both updates, before the next step changes them
        reference_tensors.update(reference.parameters())
    seconds["reference"] += timer() - started
    if with_parameters:
        scratch_tensors = {**scratch_tensors, **scratch.parameters()}
    return scratch_tensors, reference_tensors


def _copies(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.array(value) for name, value in params.items()}


def _count_lockstep_failures(spec: NetworkSpec, step: StepRecord, record: LockstepRecord) -> None:
    """Each layer with a tensor out of tolerance in the lockstep comparison at this step, counted once, but for
    those that could not be judged on their own the last time they ran alone (`LayerVerdict.unjudged_now`): nothing
    tells where their error came from. (An overflow at a step compared in part is counted until the next step
    compared in full finds the layer unjudged.)"""
    for layer in {spec.judged_at(c.name) for c in step.comparisons if not c.ok}:
        if not record.layers[layer].unjudged_now:
            record.layers[layer].lockstep_failed_steps += 1


def _correct(scores: np.ndarray | None, labels: np.ndarray) -> int:
    """Samples whose largest logit (or probability, for code that keeps no logits) is the label's."""
    return 0 if scores is None else int(np.count_nonzero(scores.argmax(axis=-1) == labels))


def _tied_windows(spec: NetworkSpec, tensors: dict[str, np.ndarray]) -> int | None:
    counts = []
    for layer in spec.layers:
        if layer.kind == "pool":
            inputs = pool_input(spec, layer.name, tensors)
            if inputs is None:
                return None
            counts.append(count_tied_windows(inputs, layer.kernel))
    return sum(counts)


def _detail(spec: NetworkSpec, step: StepRecord, scratch_tensors, reference_tensors, dtype) -> None:
    if step.full:
        step.tied_windows = _tied_windows(spec, reference_tensors)
    tolerances = tensor_tolerances(spec.tensors, dtype, step.samples)
    step.comparisons = [
        replace(
            compare(c.name, scratch_tensors[c.name], reference_tensors[c.name], dtype, tolerances[c.name]),
            explained=c.explained,
        )
        for c in step.comparisons
    ]


def _detail_pending_worst(record: LockstepRecord) -> None:
    if record.pending_worst is not None:
        step, tensors = record.pending_worst
        _detail(
            record.spec,
            step,
            {n: pair[0] for n, pair in tensors.items()},
            {n: pair[1] for n, pair in tensors.items()},
            np.dtype(record.dtype),
        )
        record.pending_worst = None
