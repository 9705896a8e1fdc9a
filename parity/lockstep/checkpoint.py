"""A strided lockstep run's checkpoint: both sides' weights and the record's state before a run of strided steps,
kept so that the steps since can be replayed in full (`parity.lockstep.stepper`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from parity.lockstep.local import copy_verdicts

if TYPE_CHECKING:
    from parity.lockstep.records import StepRecord
    from parity.lockstep.stepper import Lockstep


@dataclass
class Checkpoint:
    """Both sides' weights and the record's state before a run of strided steps, and the steps taken since."""

    scratch_weights: dict[str, np.ndarray]
    reference_weights: dict[str, np.ndarray]
    steps: int
    worst_tolerance_used: float
    pending_worst: tuple[StepRecord, dict] | None
    resynced_steps: int
    layers: dict
    unverified: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (images, labels) of each step

    @classmethod
    def take(cls, lockstep: Lockstep) -> Checkpoint:
        """The state now (weights copied: the sides update theirs in place)."""
        record = lockstep.record
        return cls(
            scratch_weights={name: np.array(value) for name, value in lockstep.scratch.parameters().items()},
            reference_weights={name: np.array(value) for name, value in lockstep.reference.parameters().items()},
            steps=len(record.steps),
            worst_tolerance_used=record.worst_tolerance_used,
            pending_worst=record.pending_worst,
            resynced_steps=len(record.resynced_steps),
            layers=copy_verdicts(record.layers),
        )

    def restore(self, lockstep: Lockstep) -> None:
        """Put both sides and the record back as they were when the checkpoint was taken."""
        record = lockstep.record
        lockstep.scratch.load_parameters(self.scratch_weights)
        lockstep.reference.load_parameters(self.reference_weights)
        del record.steps[self.steps :]
        del record.resynced_steps[self.resynced_steps :]
        record.first_divergence = None  # checkpoints are only taken before the first divergence
        record.worst_tolerance_used, record.pending_worst = self.worst_tolerance_used, self.pending_worst
        record.layers = copy_verdicts(self.layers)  # the checkpoint's own stay intact for another restore


@contextmanager
def timed_as_replay(seconds: dict[str, float]) -> Iterator[None]:
    """Time spent inside goes to `seconds["replay"]`: the per-part times stay those of each step's first run."""
    started = dict(seconds)
    try:
        yield
    finally:
        seconds["replay"] += sum(seconds[part] - started[part] for part in started if part != "replay")
        seconds.update({part: value for part, value in started.items() if part != "replay"})
