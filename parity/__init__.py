"""The comparison engine: named tensors of scratch against the PyTorch reference, explained element by element.

`import parity` imports nothing else: the names below load their module when first used, so `import parity.cli`
(the console script's first line) is quick, and a Ctrl-C while a command starts meets its handler rather than an
import of NumPy. Nothing here imports torch (golden-record checks run without it); `reference` does.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "compare_many": "parity.engine.batch",
    "TensorComparison": "parity.engine.compare",
    "compare": "parity.engine.compare",
    "TOLERANCES": "parity.engine.tolerances",
    "Tolerance": "parity.engine.tolerances",
    "tolerance_for": "parity.engine.tolerances",
    "Divergence": "parity.lockstep.records",
    "LockstepRecord": "parity.lockstep.records",
    "StepRecord": "parity.lockstep.records",
    "Lockstep": "parity.lockstep.stepper",
    "run_lockstep": "parity.lockstep.stepper",
}
__all__ = list(_HOMES)


def __getattr__(name: str) -> object:
    """One of `__all__`, from its module (imported on first use)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'parity' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
