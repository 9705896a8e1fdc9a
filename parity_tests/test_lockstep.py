"""Lockstep training on real MNIST: every tensor, every step, both dtypes, free-running and teacher-forced, on the
tutorial's network and on deeper specs in mini-batches."""

from __future__ import annotations

import numpy as np
import pytest

import reference
import scratch
from parity.engine.testing import assert_lockstep
from parity.lockstep.experiment import ExperimentConfig, ScratchSide
from parity.lockstep.retention import SummarisedComparisons
from parity.lockstep.stepper import Lockstep, always_compared
from scratch.splits import batches

# One spec per shape of network the harness must follow: two convs, a ReLU before and after a pool, 5x5 kernels,
# a conv with a bias, two dense layers, and the benchmark's deep spec.
SPECS = {
    "two-convs": "conv3x8,pool2,conv3x16,pool2,dense10",
    "relu-before-pool": "conv3x8,relu,pool2,dense10",
    "relu-after-pool": "conv3x8,pool2,relu,dense10",
    "5x5-kernels": "conv5x8,pool2,dense10",
    "conv-bias": "conv3x8b,pool2,dense10",
    "two-dense": "conv3x8,pool2,dense32,relu,dense10",
    "deep": "conv5x16,relu,pool2,conv3x32,relu,pool2,dense10",
}


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


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_teacher_forced_conv_agrees_to_a_few_ulp(run_tutorial, dtype):
    """From identical weights both convs sum the same 9 products in the same order: with OpenBLAS's default
    kernels the outputs are bit-exact. An OPENBLAS_CORETYPE override (set on some of these machines, for old
    OpenBLAS builds) picks gemm kernels with another FMA grouping: measured at up to 2 ULP (1 in float64)."""
    record = run_tutorial(ExperimentConfig(dtype=dtype, mode="teacher")).record
    conv = [c for step in record.steps for c in step.comparisons if c.name == "conv1.out"]
    assert len(conv) == 3000
    assert max(c.max_abs_error for c in conv) <= 4 * np.finfo(dtype).eps  # |conv1.out| < 2: a few ULP at most


def test_stride_checks_the_small_tensors_every_step_and_ends_on_a_full_comparison(run_tutorial):
    record = run_tutorial(ExperimentConfig(dtype="float64", epochs=1, stride=10)).record
    assert always_compared(record.spec, "free") == ("dense1.out", "loss", "dense1.d_biases", "conv1.d_filters")
    assert [len(step.comparisons) for step in record.steps[:11]] == [15] + [4] * 9 + [15]
    assert [len(step.comparisons) for step in record.steps[-10:]] == [15] * 10  # 991-999 replayed in full at the end
    assert record.replayed_steps == 9
    assert_lockstep(record)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tutorial_tie_policy_diverges_at_the_pool_input_gradient(run_tutorial, dtype):
    result = run_tutorial(ExperimentConfig(dtype=dtype, tie_policy="all", epochs=1))
    divergence = result.record.first_divergence
    assert (divergence.step, divergence.tensor, divergence.layer) == (0, "pool1.d_in", "pool1")
    assert (divergence.diagnosis.kind, divergence.diagnosis.evidence["rule"]) == ("tie_policy", "all")
    assert divergence.tied_windows > 500
    # The pool is the only layer wrong on its own; the others are fed inputs that are already off.
    layers = result.record.layers
    assert [(layer.passed, layer.origin) for layer in layers.values()] == [
        (True, "propagated"),
        (False, "local"),
        (True, "propagated"),
    ]
    assert (layers["pool1"].step, layers["pool1"].tensor, layers["pool1"].diagnosis.kind) == (
        0,
        "pool1.d_in",
        "tie_policy",
    )


def lockstep_run(tutorial_data, arch: str, dtype: str, batch_size: int, images: int, mode: str = "free"):
    """Both sides of `arch` trained in lockstep on the first `images` training digits, every tensor every step."""
    train, _ = tutorial_data
    net = scratch.build_network(arch, 0, dtype)
    run = Lockstep(ScratchSide(net), reference.ReferenceRunner(reference.to_torch(net)), net.spec, dtype, mode=mode)
    for index in batches(np.arange(images), batch_size):
        run.step(train.images[index], train.labels[index])
    return run.finish()


@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("arch", list(SPECS.values()), ids=list(SPECS))
def test_any_spec_keeps_parity_in_lockstep(tutorial_data, arch, dtype, batch_size):
    """Every tensor of every layer, every step: 150 steps at batch 1, 50 at batch 8 (a last batch of 8 of 400)."""
    record = lockstep_run(tutorial_data, arch, dtype, batch_size, 150 if batch_size == 1 else 400)
    assert len(record.steps) == (150 if batch_size == 1 else 50)
    assert record.steps[0].comparisons[0].shape[0] == batch_size  # the first layer's output, batch first
    compared = {c.name for step in record.steps for c in step.comparisons}
    assert compared == set(record.spec.tensor_names)
    assert_lockstep(record, context=f"{arch} {dtype} batch {batch_size}")


def test_a_last_partial_batch_is_trained_on_as_it_is(tutorial_data):
    record = lockstep_run(tutorial_data, SPECS["conv-bias"], "float64", 8, 21)
    assert [step.samples for step in record.steps] == [8, 8, 5]
    assert_lockstep(record)


def test_deep_spec_teacher_forced_keeps_parity(tutorial_data):
    assert_lockstep(lockstep_run(tutorial_data, SPECS["deep"], "float32", 8, 160, mode="teacher"))


class _SlightlyFastUpdates(ScratchSide):
    """An update 1e-11 too large: each step's weights are off by 1e-11 of its step, far within the float64
    allowance, but training on its own weights compounds it."""

    def update(self, lr: float) -> None:
        super().update(lr * (1 + 1e-11))


def test_an_error_within_one_step_fails_free_running_only(tutorial_data):
    """Teacher forcing measures one step's error: scratch starts each step from the reference's weights. Free-running
    measures the drift: the same 1e-11 error per update, compounded, fails after some steps, named as drift."""
    train, _ = tutorial_data
    records = {}
    for mode in ("free", "teacher"):
        net = scratch.tutorial_network(0, "float64")
        twin = reference.ReferenceRunner(reference.to_torch(net))
        run = Lockstep(_SlightlyFastUpdates(net), twin, net.spec, "float64", mode=mode)
        for image, label in zip(train.images[:200], train.labels[:200], strict=True):
            run.step(image, label)
        records[mode] = run.finish()
    assert_lockstep(records["teacher"])
    assert records["teacher"].worst_tolerance_used < 0.2  # measured 0.07
    divergence = records["free"].first_divergence
    assert divergence is not None and divergence.step > 10  # measured step 112 (dense1.out)
    assert all(step.passed for step in records["free"].steps[: divergence.step])
    assert divergence.diagnosis.kind == "drift"


def test_a_step_that_agrees_is_packed_with_the_figures_its_comparisons_have(tutorial_data, monkeypatch):
    """A step whose batch agreed keeps only its packed figures, made without `TensorComparison`s: the same run with
    every step built from them gives every step the same names, errors, shares and verdicts, bit for bit."""

    def figures(record):
        return [
            [(c.name, repr(c.max_abs_error), repr(c.tolerance_used), c.passed) for c in s.comparisons]
            for s in record.steps
        ]

    packed = lockstep_run(tutorial_data, SPECS["relu-after-pool"], "float32", 1, 40)
    monkeypatch.setattr(SummarisedComparisons, "agreed", classmethod(lambda cls, batch, cache: batch.comparisons()))
    built = lockstep_run(tutorial_data, SPECS["relu-after-pool"], "float32", 1, 40)
    # Packed from the batch: every step but the first and the worst, which are detailed in full when the run ends.
    detailed = {0, packed.worst_step().step}
    assert [isinstance(s.comparisons, SummarisedComparisons) for s in packed.steps] == [
        s.step not in detailed for s in packed.steps
    ]
    assert not isinstance(built.steps[-1].comparisons, SummarisedComparisons)  # never retired: built, not packed
    assert figures(packed) == figures(built)
    assert packed.worst_tolerance_used == built.worst_tolerance_used


def test_a_resynced_step_is_detailed_from_the_weights_it_ended_with(tutorial_data, monkeypatch):
    """A step whose failures a proven flip explains resyncs scratch to the reference's weights. Its tensors were
    read before, but scratch's parameters among them are its live arrays: kept as the run's worst step after the
    resync, they showed no error at all, another (summarised) step became the worst, and the report crashed."""
    from dataclasses import replace

    import parity.lockstep.stepper as stepper

    train, _ = tutorial_data
    net = scratch.tutorial_network(0)
    side, runner = ScratchSide(net), reference.ReferenceRunner(reference.to_torch(net))
    correct, calls = side.forward_backward, []

    def off_at_step_3(images, labels, names=None):
        tensors = correct(images, labels, names)
        calls.append(None)
        if len(calls) == 4:
            # Out of tolerance, and the filters it updates (the layer's own gradient array) just within.
            tensors["conv1.d_filters"] += 1e-10
        return tensors

    def proven_flip(spec, step, *args, **kwargs):  # as `explain_flips` marks what a proven flip accounts for
        step.comparisons = [c if c.ok else replace(c, explained="a flip (test)") for c in step.comparisons]
        step.flipped_windows += 1

    monkeypatch.setattr(side, "forward_backward", off_at_step_3)
    monkeypatch.setattr(stepper, "explain_flips", proven_flip)
    lockstep = Lockstep(side, runner, net.spec, np.float64)
    for index in range(6):
        lockstep.step(train.images[index], int(train.labels[index]))
    record = lockstep.finish()
    assert record.resynced_steps == [3] and record.first_divergence is None
    worst = record.worst_step()
    filters = next(c for c in worst.comparisons if c.name == "conv1.filters")
    assert worst.step == 3 and filters.max_abs_error > 0 and filters.row()["result"] == "PASS"
