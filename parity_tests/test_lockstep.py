"""Lockstep training on real MNIST: every tensor, every step, both dtypes, free-running and teacher-forced."""

from __future__ import annotations

import pytest

from parity.experiment import ExperimentConfig
from parity.testing import assert_lockstep


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", ["free", "teacher"])
def test_full_tutorial_run_keeps_parity(run_tutorial, dtype, mode):
    """3 epochs x 1,000 real digits: the tutorial's whole experiment, every tensor compared at every step."""
    result = run_tutorial(ExperimentConfig(dtype=dtype, mode=mode))
    assert len(result.record.steps) == 3000
    assert_lockstep(result.record, context=result.config.name)
    assert result.test["scratch"]["accuracy"] == result.test["reference"]["accuracy"]
    assert result.test["scratch"]["accuracy"] >= 0.78  # the tutorial's own result


def test_float64_free_run_uses_under_one_percent_of_tolerance(run_tutorial):
    """float64 parity is ~1e-15: if this creeps up, something changed in the numerics."""
    record = run_tutorial(ExperimentConfig(dtype="float64")).record
    assert record.worst_tolerance_used < 0.01
    assert record.flipped_windows == 0


def test_teacher_forced_conv_is_bit_exact(run_tutorial):
    """From identical weights, both convs sum the same 9 products in the same order."""
    record = run_tutorial(ExperimentConfig(dtype="float32", mode="teacher")).record
    assert max(c.max_abs_error for step in record.steps for c in step.comparisons if c.name == "conv_out") == 0.0


def test_stride_checks_the_small_tensors_every_step_and_ends_on_a_full_comparison(run_tutorial):
    record = run_tutorial(ExperimentConfig(dtype="float64", epochs=1, stride=10)).record
    assert [len(step.comparisons) for step in record.steps[:11]] == [15] + [4] * 9 + [15]
    assert [len(step.comparisons) for step in record.steps[-10:]] == [15] * 10  # 991-999 replayed in full at the end
    assert record.replayed_steps == 9
    assert_lockstep(record)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tutorial_tie_policy_diverges_at_the_pool_input_gradient(run_tutorial, dtype):
    result = run_tutorial(ExperimentConfig(dtype=dtype, tie_policy="all", epochs=1))
    divergence = result.record.first_divergence
    assert (divergence.step, divergence.tensor, divergence.layer) == (0, "d_conv_out", "MaxPool2")
    assert divergence.diagnosis.startswith("tie-policy difference, not a numerical one")
    assert divergence.tied_windows > 500
