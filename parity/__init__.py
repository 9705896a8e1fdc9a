"""The comparison engine: named tensors of scratch against the PyTorch reference, explained element by element.

`import parity` does not import torch (golden-record checks run without it); `parity.lockstep.experiment` does.
"""

from parity.engine.batch import compare_many
from parity.engine.compare import TensorComparison, compare
from parity.engine.tolerances import TOLERANCES, Tolerance, tolerance_for
from parity.lockstep.records import Divergence, LockstepRecord, StepRecord
from parity.lockstep.stepper import Lockstep, run_lockstep

__all__ = [
    "TOLERANCES",
    "Divergence",
    "Lockstep",
    "LockstepRecord",
    "StepRecord",
    "TensorComparison",
    "Tolerance",
    "compare",
    "compare_many",
    "run_lockstep",
    "tolerance_for",
]
