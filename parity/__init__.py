"""The comparison engine: named tensors of scratch against the PyTorch reference, explained element by element.

`import parity` does not import torch (golden-record checks run without it); `parity.experiment` does.
"""

from parity.compare import TensorComparison, compare, compare_many
from parity.lockstep import Divergence, Lockstep, LockstepRecord, StepRecord, run_lockstep
from parity.tolerances import TOLERANCES, Tolerance, tolerance_for

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
