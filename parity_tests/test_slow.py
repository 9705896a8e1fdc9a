"""Slow parity runs (minutes): more seeds, and the loop implementation (the tutorial's code shape) in lockstep.

Run with `tox -e slow` or `python -m pytest -m slow`.
"""

from __future__ import annotations

import pytest

from parity.engine.testing import assert_lockstep
from parity.lockstep.experiment import ExperimentConfig

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", ["free", "teacher"])
def test_full_run_other_seeds(run_tutorial, seed, dtype, mode):
    result = run_tutorial(ExperimentConfig(dtype=dtype, mode=mode, seed=seed))
    assert_lockstep(result.record, context=result.config.name)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_loop_implementation_in_lockstep(run_tutorial, dtype):
    """The line-by-line loop code, with PyTorch's semantics selected, keeps parity for a whole epoch."""
    result = run_tutorial(ExperimentConfig(dtype=dtype, impl="loops", epochs=1))
    assert_lockstep(result.record, context=result.config.name)
