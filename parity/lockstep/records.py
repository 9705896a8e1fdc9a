"""What a lockstep run measured: each step's comparisons, the first divergence, and the run's record."""

from __future__ import annotations

from dataclasses import dataclass, field

from parity.diagnosis.record import Diagnosis
from parity.engine.compare import TensorComparison
from parity.lockstep.local import LayerVerdict
from parity.lockstep.retention import StepList, SummarisedComparisons
from scratch.spec import NetworkSpec


@dataclass
class StepRecord:
    """One step of a lockstep run: both losses, the tie count, and the comparisons made."""

    step: int
    scratch_loss: float
    reference_loss: float
    scratch_correct: int  # samples of the batch classified right
    reference_correct: int
    tied_windows: int | None  # tied pool windows (all pools) in the reference's forward; None unless detailed
    comparisons: list[TensorComparison] | SummarisedComparisons  # packed once the report needs only its figures
    flipped_windows: int = 0  # near-tie routing flips of pool windows explained this step
    flipped_signs: int = 0  # ReLU inputs within rounding of 0 whose sign flipped, explained this step
    full: bool = True  # every tensor compared; False on a strided step (only `always_compared`)
    samples: int = 1  # images in the step's batch

    @property
    def passed(self) -> bool:
        """True when every compared tensor was within tolerance, or out of it for a proven harmless reason."""
        if isinstance(self.comparisons, SummarisedComparisons):  # packed: read without unpacking
            return self.comparisons.all_ok
        return all(c.ok for c in self.comparisons)

    @property
    def flipped(self) -> bool:
        """Whether a near-tie flip of either kind was proven this step (after which scratch is re-synchronised)."""
        return bool(self.flipped_windows or self.flipped_signs)

    @property
    def tolerance_used(self) -> float:
        """The largest share of tolerance used by any tensor this step (explained flips aside)."""
        if isinstance(self.comparisons, SummarisedComparisons):
            return self.comparisons.largest_tolerance_used
        return max((c.tolerance_used for c in self.comparisons if not c.explained), default=0.0)


@dataclass
class Divergence:
    """The first step to exceed tolerance, and its first tensor in forward-then-backward-then-parameters order; of a
    layer wrong on its own at that step, where one is, the tensor its diagnosis is of (see
    `parity.lockstep.divergence.first_divergence`)."""

    step: int
    tensor: str
    layer: str
    comparison: TensorComparison
    tied_windows: int | None
    diagnosis: Diagnosis

    def message(self) -> str:
        """A one-paragraph explanation of the divergence."""
        return (
            f"step {self.step}, {self.layer} {self.tensor}: {self.diagnosis.text_for(self.tensor)}. "
            f"{self.comparison.message()}"
        )


@dataclass
class LockstepRecord:
    """Everything a lockstep run measured."""

    dtype: str
    mode: str
    stride: int
    lr: float
    spec: NetworkSpec
    steps: list[StepRecord] = field(default_factory=list)
    first_divergence: Divergence | None = None
    seconds: dict[str, float] = field(
        default_factory=lambda: {"scratch": 0.0, "reference": 0.0, "compare": 0.0, "replay": 0.0}
    )
    missing_tensors: tuple[str, ...] = ()
    worst_tolerance_used: float = 0.0
    resynced_steps: list[int] = field(default_factory=list)  # steps after which scratch took the reference's weights
    pending_worst: tuple[StepRecord, dict] | None = field(default=None, repr=False)  # detailed when the run ends
    replayed_steps: int = 0  # steps re-run in full to locate a failure or close the run (strided runs)
    # Strided steps that failed but passed when replayed from the same weights: a side is not deterministic (or the
    # replay did not restore its state), so nothing can be located; the run does not pass.
    unreproduced_failures: list[int] = field(default_factory=list)
    # Each layer judged on its own (see `parity.lockstep.local`), in layer order.
    layers: dict[str, LayerVerdict] = field(default_factory=dict)

    @property
    def flipped_windows(self) -> int:
        """Near-tie routing flips of pool windows explained over the run."""
        return sum(step.flipped_windows for step in self.steps)

    @property
    def flipped_signs(self) -> int:
        """ReLU sign flips of inputs within rounding of 0 explained over the run."""
        return sum(step.flipped_signs for step in self.steps)

    @property
    def passed(self) -> bool:
        """True when no tensor exceeded tolerance at any step (proven near-tie flips aside) and no layer failed
        on its own."""
        locally = all(verdict.passed is not False for verdict in self.layers.values())
        return self.first_divergence is None and not self.unreproduced_failures and locally

    def max_abs_error(self) -> dict[str, float]:
        """The largest absolute error of each compared tensor over the run (explained near-tie flips aside)."""
        worst: dict[str, float] = {}
        for step in self.steps:
            for c in step.comparisons:
                if not c.explained:
                    worst[c.name] = max(worst.get(c.name, 0.0), c.max_abs_error)
        return {name: worst[name] for name in self.spec.tensor_names if name in worst}

    def worst_step(self) -> StepRecord | None:
        """The step that used the largest share of tolerance (the first such step on a tie)."""
        return max(self.steps, key=lambda s: s.tolerance_used, default=None)

    def __post_init__(self) -> None:
        # Each step appended retires the one before it to what the report reads (`parity.lockstep.retention`), so
        # a run's memory stays nearly flat in its number of steps.
        self.steps = StepList(self, self.steps)
