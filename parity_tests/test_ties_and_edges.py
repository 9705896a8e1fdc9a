"""The engine's own edge cases: non-finite values, empty tensors, near-tie flips and their consequences, strides."""

from __future__ import annotations

import math

import numpy as np
import pytest

import reference
import scratch
from parity.compare import compare
from parity.experiment import ExperimentConfig, ScratchSide
from parity.lockstep import run_lockstep
from parity.ties import flip_consequences, near_tie_flips
from parity.tolerances import tolerance_for

F64 = tolerance_for(np.float64)
INF, NAN = math.inf, math.nan


@pytest.mark.parametrize(
    ("scratch_value", "reference_value", "passes"),
    [
        (NAN, INF, False),
        (-INF, INF, False),
        (5.0, INF, False),
        (INF, 5.0, False),
        (NAN, 1.0, False),
        (NAN, NAN, False),
        (INF, INF, True),
        (1.0, 1.0, True),
    ],
    ids=["nan-vs-inf", "-inf-vs-inf", "finite-vs-inf", "inf-vs-finite", "nan", "nan-vs-nan", "equal-inf", "equal"],
)
@pytest.mark.parametrize("detail", [True, False], ids=["detailed", "cheap"])
def test_non_finite_values(scratch_value, reference_value, passes, detail):
    comparison = compare("x", np.array([1.0, scratch_value]), np.array([1.0, reference_value]), detail=detail)
    assert comparison.passed is passes
    assert comparison.mismatched == (0 if passes else 1)


def test_empty_tensors_compare_as_equal():
    assert compare("x", np.zeros((0, 3)), np.zeros((0, 3))).passed


def window_tensors(values: list[float], routed_to: int, amount: float = 1.0):
    """One 2x2 window, one channel: its values and a pool-input gradient routed to one element (row-major)."""
    pool_input = np.array(values, dtype=np.float64).reshape(2, 2, 1)
    gradient = np.zeros((2, 2, 1))
    gradient.reshape(-1)[routed_to] = amount
    return pool_input, gradient


def test_a_near_tie_routed_to_scratch_own_maximum_is_a_flip():
    reference_in, reference_d = window_tensors([1.0, 1.0 - 1e-14, 0.0, 0.0], routed_to=0)
    scratch_in, scratch_d = window_tensors([1.0 - 1e-14, 1.0, 0.0, 0.0], routed_to=1)
    assert near_tie_flips(scratch_in, reference_in, scratch_d, reference_d, F64, F64) == 1


def test_an_exact_tie_routed_to_the_last_maximum_is_not_a_flip():
    values = [1.0, 1.0, 0.0, 0.0]
    reference_in, reference_d = window_tensors(values, routed_to=0)
    scratch_in, scratch_d = window_tensors(values, routed_to=1)
    assert near_tie_flips(scratch_in, reference_in, scratch_d, reference_d, F64, F64) == -1


def test_a_flip_with_the_wrong_amount_is_not_a_flip():
    reference_in, reference_d = window_tensors([1.0, 1.0 - 1e-14, 0.0, 0.0], routed_to=0)
    scratch_in, scratch_d = window_tensors([1.0 - 1e-14, 1.0, 0.0, 0.0], routed_to=1, amount=2.0)
    assert near_tie_flips(scratch_in, reference_in, scratch_d, reference_d, F64, F64) == -1


def test_a_gap_beyond_the_forward_tolerance_is_not_a_flip():
    reference_in, reference_d = window_tensors([1.0, 0.999, 0.0, 0.0], routed_to=0)
    scratch_in, scratch_d = window_tensors([0.999, 1.0, 0.0, 0.0], routed_to=1)
    assert near_tie_flips(scratch_in, reference_in, scratch_d, reference_d, F64, F64) == -1


def rerouted_step(tutorial_data):
    """A real step, and the same step with one window's pool gradient moved to another element by hand."""
    train, _ = tutorial_data
    net = scratch.tutorial_network(0)
    image, label, lr = train.images[0], int(train.labels[0]), 0.005
    runner = reference.ReferenceRunner(reference.to_torch(net))
    reference_tensors = runner.forward_backward(image, label)
    runner.update(lr)
    reference_tensors |= runner.parameters()
    d_conv_out = reference_tensors["d_conv_out"].copy()
    i, j, f = np.argwhere(d_conv_out != 0)[0]
    other = (i ^ 1, j, f)  # the other row of the same window
    d_conv_out[other], d_conv_out[i, j, f] = d_conv_out[i, j, f], 0.0
    net.forward_backward(image, label)
    d_image = net.conv.backward(d_conv_out)  # scratch's conv backward with the rerouted gradient
    filters_after = net.conv.filters - lr * net.conv.grads["filters"]
    rerouted = {"d_filters": net.conv.grads["filters"], "d_image": d_image, "filters": filters_after}
    return image, reference_tensors, d_conv_out - reference_tensors["d_conv_out"], rerouted


def test_flip_consequences_match_a_conv_backward_with_the_rerouted_gradient(tutorial_data):
    image, reference_tensors, delta, rerouted = rerouted_step(tutorial_data)
    expected = flip_consequences(image, reference_tensors, delta, 0.005)
    for name in ("d_filters", "d_image", "filters"):
        assert compare(name, rerouted[name], expected[name]).passed, name


def test_a_filter_gradient_bug_on_a_flip_step_is_not_excused(tutorial_data):
    image, reference_tensors, delta, rerouted = rerouted_step(tutorial_data)
    expected = flip_consequences(image, reference_tensors, delta, 0.005)
    assert not compare("d_filters", rerouted["d_filters"] * 1.001, expected["d_filters"]).passed


def test_the_float32_run_explains_its_one_flip_and_resyncs(run_tutorial):
    record = run_tutorial(ExperimentConfig(dtype="float32")).record
    flip_steps = [step.step for step in record.steps if step.flipped_windows]
    assert flip_steps == record.resynced_steps == [968]
    explained = [c.name for c in record.steps[968].comparisons if c.explained]
    assert explained[0] == "d_conv_out" and set(explained) <= {"d_conv_out", "d_filters", "d_image", "filters"}


def break_softmax_update_on(monkeypatch, image: np.ndarray, parameter: str, index, amount: float) -> None:
    """Make scratch's Softmax update add `amount` to `parameter[index]` after the correct update, on the step that
    trains on `image`: a bug that depends on the input, so a replay meets it again."""
    correct_update, correct_step = scratch.Softmax.update, ScratchSide.forward_backward
    current = []

    def remember_image(self, step_image, label):
        current[:] = [step_image]
        return correct_step(self, step_image, label)

    def wrong_update(self, lr):
        correct_update(self, lr)
        if np.array_equal(current[0], image):
            getattr(self, parameter)[index] += amount

    monkeypatch.setattr(ScratchSide, "forward_backward", remember_image)
    monkeypatch.setattr(scratch.Softmax, "update", wrong_update)


def test_a_failure_between_strided_comparisons_is_localised_by_a_full_replay(tutorial_data, monkeypatch):
    """Stride 5: step 3 compares only logits and loss; the wrong bias shows in step 4's logits, and the replay of
    steps 1-4 in full names step 3's update exactly."""
    train, _ = tutorial_data
    net = scratch.tutorial_network(0)
    break_softmax_update_on(monkeypatch, train.images[3], "biases", 0, 1e-6)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    record = run_lockstep(ScratchSide(net), runner, train.images[:6], train.labels[:6], np.float64, stride=5)
    divergence = record.first_divergence
    assert (divergence.step, divergence.tensor, divergence.layer) == (3, "dense_biases", "Softmax")
    assert len(record.steps[3].comparisons) == 15  # every tensor, from the full replay
    assert all(c.passed for c in record.steps[3].comparisons if c.name != "dense_biases")
    assert [len(step.comparisons) for step in record.steps] == [15] * 6  # steps 5 (full) and 6 after the divergence
    assert record.replayed_steps == 4


def test_a_full_comparison_that_fails_replays_the_strided_steps_before_it(tutorial_data, monkeypatch):
    """Stride 5: d_image (compared only on full steps) is wrong for digits 3 and 5. Step 5 fails; the replay of
    steps 1-5 in full names step 3, where it started."""
    train, _ = tutorial_data
    net = scratch.tutorial_network(0)
    correct_step = ScratchSide.forward_backward

    def d_image_wrong_for_digits_3_and_5(self, image, label):
        tensors = correct_step(self, image, label)
        if any(np.array_equal(image, train.images[i]) for i in (3, 5)):
            tensors = {**tensors, "d_image": tensors["d_image"] + 1e-6}
        return tensors

    monkeypatch.setattr(ScratchSide, "forward_backward", d_image_wrong_for_digits_3_and_5)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    record = run_lockstep(ScratchSide(net), runner, train.images[:8], train.labels[:8], np.float64, stride=5)
    divergence = record.first_divergence
    assert (divergence.step, divergence.tensor) == (3, "d_image")
    assert record.replayed_steps == 5
    assert [len(step.comparisons) for step in record.steps] == [15] * 6 + [4, 4]  # no replays after the divergence


def test_a_strided_failure_that_a_replay_does_not_reproduce_fails_the_run(tutorial_data, monkeypatch):
    """A side that is wrong only the first time it sees digit 3 cannot be located: the replay passes. That is
    recorded, and the run does not pass (nothing is hidden by the replay)."""
    train, _ = tutorial_data
    net = scratch.tutorial_network(0)
    correct_update = scratch.Softmax.update
    calls = []

    def biases_wrong_on_the_fourth_update_only(self, lr):
        calls.append(lr)
        correct_update(self, lr)
        if len(calls) == 4:
            self.biases[0] += 1e-6

    monkeypatch.setattr(scratch.Softmax, "update", biases_wrong_on_the_fourth_update_only)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    record = run_lockstep(ScratchSide(net), runner, train.images[:6], train.labels[:6], np.float64, stride=5)
    assert record.first_divergence is None
    assert record.unreproduced_failures == [4]  # step 3's wrong bias shows in step 4's logits
    assert not record.passed


def test_teacher_forced_strided_runs_still_compare_every_update(tutorial_data, monkeypatch):
    """Teacher forcing resets scratch to the reference's weights before each step, so a wrong update on a strided
    step would be erased unseen: teacher runs compare the parameters at every step."""
    train, _ = tutorial_data
    net = scratch.tutorial_network(0)
    break_softmax_update_on(monkeypatch, train.images[13], "weights", (0, 0), 1e-3)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    record = run_lockstep(
        ScratchSide(net), runner, train.images[:20], train.labels[:20], np.float64, stride=10, mode="teacher"
    )
    assert (record.first_divergence.step, record.first_divergence.tensor) == (13, "dense_weights")


def test_a_strided_run_that_diverged_still_knows_which_tensors_scratch_has(run_tutorial):
    """After the first divergence nothing is replayed, so the last steps stay strided; that is no missing tensor."""
    result = run_tutorial(ExperimentConfig(dtype="float64", tie_policy="all", softmax="tutorial", epochs=1, stride=10))
    assert result.record.first_divergence.step == 0
    assert not result.record.steps[-1].full
    assert result.record.missing_tensors == ()
    assert result.record.replayed_steps == 0


def test_replays_are_timed_apart(run_tutorial):
    record = run_tutorial(ExperimentConfig(dtype="float64", epochs=1, stride=10)).record
    assert record.replayed_steps == 9 and record.seconds["replay"] > 0
