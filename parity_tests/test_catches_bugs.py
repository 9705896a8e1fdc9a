"""Each kind of parity check can fail: deliberately wrong implementations are caught, at the right tensor and layer.

The tutorial's network (`conv3x8,pool2,dense10`, one image a step) and a deep one (two convs, relus and pools,
small batches): a bug injected into one layer kind is named at that layer, in spec names.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from scratch_helpers import near_tie_in_a_blank_window

import reference
import scratch
from parity.engine.testing import ParityError, assert_lockstep, assert_parity
from parity.lockstep.experiment import ScratchSide
from parity.lockstep.stepper import Lockstep, LockstepRecord, run_lockstep
from reference.layouts import DenseLayout
from scratch.conv import Conv
from scratch.dense import Dense
from scratch.loss import SoftmaxCrossEntropy
from scratch.maxpool import MaxPool, first_only
from scratch.relu import ReLU

# Two convs, two relus, two pools: every layer kind at a position where its bug cannot hide behind another layer's.
DEEP_SPEC = "conv3x4,relu,pool2,conv3x6,relu,pool2,dense10"


def short_run(tutorial_data, dtype=np.float64, steps: int = 5, **options) -> LockstepRecord:
    """A few lockstep steps, one real digit each, from the tutorial's init."""
    train, _ = tutorial_data
    net = scratch.tutorial_network(0, dtype, **options)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    batches = zip(train.images[:steps], train.labels[:steps], strict=True)
    return run_lockstep(ScratchSide(net), runner, net.spec, batches, dtype)


def deep_run(tutorial_data, patch: Callable[[scratch.Network], None] | None = None, steps: int = 3, batch: int = 4):
    """A few lockstep steps of `DEEP_SPEC` on batches of real digits; `patch(net)` injects a bug once it is built."""
    train, _ = tutorial_data
    net = scratch.build_network(DEEP_SPEC, 0, np.float64)
    runner = reference.ReferenceRunner(reference.to_torch(net))  # built before the patch: same weights on both sides
    if patch is not None:
        patch(net)
    lockstep = Lockstep(ScratchSide(net), runner, net.spec, np.float64)
    for start in range(0, steps * batch, batch):
        lockstep.step(train.images[start : start + batch], train.labels[start : start + batch])
    return lockstep.finish()


def first_divergence(record: LockstepRecord) -> tuple[int, str, str]:
    """(step, tensor, layer) of the first divergence; fails when nothing was caught."""
    divergence = record.first_divergence
    assert divergence is not None, "the injected bug was not caught"
    return divergence.step, divergence.tensor, divergence.layer


def only_in(net: scratch.Network, name: str, method: Callable, wrong: Callable) -> Callable:
    """`method` for every layer but `name`, where `wrong` runs instead: a bug in one layer of a kind."""
    target = net.layer(name)
    return lambda self, *args: (wrong if self is target else method)(self, *args)


def test_the_unmodified_network_passes(tutorial_data):
    assert_lockstep(short_run(tutorial_data))


def test_wrong_filter_gradient_is_caught_at_d_filters(tutorial_data, monkeypatch):
    correct = Conv.backward

    def transposed_kernel_gradient(self, d_L_d_out):
        d_input = correct(self, d_L_d_out)
        self.grads["filters"] = self.grads["filters"].transpose(0, 2, 1).copy()  # swapped kernel axes
        return d_input

    monkeypatch.setattr(Conv, "backward", transposed_kernel_gradient)
    record = short_run(tutorial_data)
    assert first_divergence(record) == (0, "conv1.d_filters", "conv1")
    diagnosis = record.first_divergence.diagnosis
    assert (diagnosis.kind, diagnosis.evidence) == (
        "permuted",
        {"transform": "kernel row and kernel column axes swapped"},
    )


def test_a_divergence_at_a_layer_right_on_its_own_points_to_the_layer_that_is_not(tutorial_data, monkeypatch):
    """A near-tie flip at step 0 fails pool1.d_in first in the spec's order, and the wrong filter gradient keeps it
    from being proven a flip: the pool is right on its own, so the divergence is conv1's, wrong on its own at that
    step, with its own diagnosis."""
    train, _ = tutorial_data
    correct = Conv.backward

    def filter_gradient_off(self, d_L_d_out):
        d_input = correct(self, d_L_d_out)
        self.grads["filters"] = self.grads["filters"] * 1.01
        return d_input

    net = scratch.tutorial_network(0)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    reference_out = runner.forward_backward(train.images[:1], train.labels[:1])["conv1.out"]
    monkeypatch.setattr(Conv, "forward", near_tie_in_a_blank_window(net, train.images[0], reference_out))
    monkeypatch.setattr(Conv, "backward", filter_gradient_off)
    record = short_run(tutorial_data)
    failed = [c.name for c in record.steps[0].comparisons if not c.ok]
    assert failed[:2] == ["pool1.d_in", "conv1.d_filters"]
    assert first_divergence(record) == (0, "conv1.d_filters", "conv1")
    diagnosis = record.first_divergence.diagnosis
    assert (diagnosis.kind, diagnosis.layer, diagnosis.evidence["factor"]) == ("scale", "conv1", pytest.approx(1.01))
    assert [layer.passed for layer in record.layers.values()] == [False, True, True]


def test_transposed_dense_weight_in_the_bridge_is_caught_at_the_logits(tutorial_data, monkeypatch):
    """The classic bridge bug: `.T` alone, forgetting that PyTorch flattens NCHW and the tutorial HWC."""
    monkeypatch.setattr(DenseLayout, "param_to_torch", lambda self, name, value: value if name == "biases" else value.T)
    record = short_run(tutorial_data)
    assert first_divergence(record) == (0, "dense1.out", "dense1")
    diagnosis = record.first_divergence.diagnosis  # dense1 is right on the reference's weights: the weights differ
    assert (diagnosis.kind, diagnosis.tensor) == ("permuted", "dense1.weights")
    assert "flatten order" in diagnosis.evidence["transform"]
    assert record.layers["dense1"].passed and record.layers["dense1"].origin == "propagated"


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_tutorial_tie_policy_is_caught_and_named(tutorial_data, dtype):
    record = short_run(tutorial_data, dtype, tie_policy="all")
    assert first_divergence(record) == (0, "pool1.d_in", "pool1")
    diagnosis = record.first_divergence.diagnosis
    assert (diagnosis.kind, diagnosis.evidence["rule"]) == ("tie_policy", "all")
    assert [layer.passed for layer in record.layers.values()] == [True, False, True]  # only the pool is wrong


def test_float32_downcast_inside_a_float64_conv_is_caught(tutorial_data, monkeypatch):
    correct = Conv.forward
    monkeypatch.setattr(Conv, "forward", lambda self, x: correct(self, x).astype(np.float32).astype(np.float64))
    record = short_run(tutorial_data)
    assert first_divergence(record) == (0, "conv1.out", "conv1")
    assert record.first_divergence.comparison.max_abs_error < 1e-6  # small: PyTorch's default tolerance misses it


def test_float32_downcast_is_missed_by_assert_close_defaults_but_not_by_ours(tutorial_data, monkeypatch):
    """Why the tolerance table exists: torch.testing.assert_close's float64 defaults let this bug through."""
    train, _ = tutorial_data
    net = scratch.tutorial_network(0)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    correct = Conv.forward
    monkeypatch.setattr(Conv, "forward", lambda self, x: correct(self, x).astype(np.float32).astype(np.float64))
    scratch_side = net.forward_backward(train.images[0], int(train.labels[0])).tensors
    reference_side = runner.forward_backward(train.images[0], int(train.labels[0]))
    torch.testing.assert_close(
        torch.from_numpy(scratch_side["conv1.out"]), torch.from_numpy(np.ascontiguousarray(reference_side["conv1.out"]))
    )
    with pytest.raises(ParityError, match="first divergence: conv1.out: mismatched elements"):
        assert_parity(scratch_side, reference_side, np.float64, names=["conv1.out"])


def test_float32_rounding_of_the_filter_update_is_caught_after_one_step(tutorial_data, monkeypatch):
    """A float32 round trip in the SGD update alone: the forward and gradients agree, the parameters do not."""
    correct = Conv.update

    def rounded_update(self, lr):
        correct(self, lr)
        self.filters[...] = self.filters.astype(np.float32)

    monkeypatch.setattr(Conv, "update", rounded_update)
    record = short_run(tutorial_data)
    assert first_divergence(record) == (0, "conv1.filters", "conv1")
    assert [layer.passed for layer in record.layers.values()] == [False, True, True]  # its update, judged alone


def test_skipped_bias_update_is_caught_at_the_biases(tutorial_data, monkeypatch):
    monkeypatch.setattr(Dense, "param_names", ("weights",))
    record = short_run(tutorial_data)
    assert first_divergence(record) == (0, "dense1.biases", "dense1")
    assert [layer.passed for layer in record.layers.values()] == [True, True, False]


def test_pool_routing_bug_outside_ties_is_not_called_a_tie_policy(tutorial_data, monkeypatch):
    """Gradients sent to the wrong windows: the forward agrees, ties exist, yet untied windows are wrong too."""
    correct = MaxPool.backward
    monkeypatch.setattr(MaxPool, "backward", lambda self, d_out: correct(self, d_out)[:, ::-1].copy())  # rows reversed
    record = short_run(tutorial_data)
    assert first_divergence(record) == (0, "pool1.d_in", "pool1")
    diagnosis = record.first_divergence.diagnosis
    assert diagnosis.kind == "routing" and diagnosis.evidence["untied_wrong_windows"] > 0


# --- a bug in each layer kind of a deep network, named at its layer -----------------------------------------------


def test_a_pool_right_on_the_references_inputs_but_not_its_own_is_told_of_its_ties(monkeypatch):
    """First-max routing that forgets the third plane's maxima (`plane + 2`) is wrong only in windows whose maxima
    are the bottom two. On blank images every window of the reference's pool input ties four ways; scratch's conv
    output is made one ulp lower in each window's top row, so its own windows tie in their bottom two. The pool is
    right alone, and the first divergence says why, not 'how the side chains its layers'."""

    def forgets_the_third_plane(is_max):
        first, taken = np.empty_like(is_max), is_max[0]
        first[0] = is_max[0]
        for plane in range(1, len(is_max)):
            np.greater(is_max[plane], taken, out=first[plane])
            if plane + 2 < len(is_max):
                taken = taken | is_max[plane]
        return first

    correct_forward = Conv.forward

    def a_rounding_lower_in_top_rows(self, x):
        out = correct_forward(self, x)
        out[:, 0::2] = np.nextafter(out[:, 0::2], -np.inf)  # within the forward tolerance
        return out

    def blank_run() -> LockstepRecord:
        net = scratch.tutorial_network(0)
        runner = reference.ReferenceRunner(reference.to_torch(net))
        blank = [(np.zeros((28, 28), np.uint8), label) for label in (3, 7)]
        return run_lockstep(ScratchSide(net), runner, net.spec, blank, np.float64)

    monkeypatch.setattr(Conv, "forward", a_rounding_lower_in_top_rows)
    assert blank_run().passed  # with the right rule: near-tie flips, proven
    monkeypatch.setattr(scratch.maxpool, "first_only", forgets_the_third_plane)
    record = blank_run()
    divergence = record.first_divergence
    assert (divergence.step, divergence.tensor, divergence.diagnosis.kind) == (0, "pool1.d_in", "unexplained")
    assert divergence.diagnosis.evidence == {"locally": "passed", "routes_on_own_inputs": True}
    assert "tie otherwise than the reference's" in divergence.diagnosis.text


def test_the_unmodified_deep_network_passes(tutorial_data):
    """The baseline for the injected bugs below: without them, the deep network keeps parity on these steps."""
    record = deep_run(tutorial_data)
    assert_lockstep(record)
    assert [step.samples for step in record.steps] == [4, 4, 4]


def test_a_wrong_filter_gradient_in_the_second_conv_only_is_blamed_on_it(tutorial_data, monkeypatch):
    correct = Conv.backward

    def transposed_kernel_gradient(self, d_L_d_out):
        d_input = correct(self, d_L_d_out)
        self.grads["filters"] = self.grads["filters"].transpose(0, 2, 1, 3).copy()  # (F, K, K, C): kernel axes swapped
        return d_input

    def patch(net):
        monkeypatch.setattr(Conv, "backward", only_in(net, "conv2", correct, transposed_kernel_gradient))

    record = deep_run(tutorial_data, patch)
    assert first_divergence(record) == (0, "conv2.d_filters", "conv2")
    diagnosis = record.first_divergence.diagnosis
    assert (diagnosis.kind, diagnosis.layer) == ("permuted", "conv2")
    assert diagnosis.evidence == {"transform": "kernel row and kernel column axes swapped"}
    assert all(c.passed for c in record.steps[0].comparisons if c.name.startswith("conv1.d_"))  # conv1 is right
    assert {name for name, layer in record.layers.items() if not layer.passed} == {"conv2"}


def test_a_relu_passing_gradient_where_its_input_is_not_positive_is_caught_at_the_deepest_relu(
    tutorial_data, monkeypatch
):
    """Every ReLU is wrong; backward runs deepest first, so relu2's input gradient is the first to differ."""
    monkeypatch.setattr(ReLU, "backward", lambda self, d_L_d_out: d_L_d_out)
    record = deep_run(tutorial_data)
    assert first_divergence(record) == (0, "relu2.d_in", "relu2")
    diagnosis = record.first_divergence.diagnosis
    assert (diagnosis.kind, diagnosis.layer, diagnosis.tensor) == ("unexplained", "relu2", "relu2.d_in")
    assert "where the input is positive" in diagnosis.text  # the relu's own advice
    assert {name for name, layer in record.layers.items() if not layer.passed} == {"relu1", "relu2"}


CORRECT_POOL_BACKWARD = MaxPool.backward  # taken at import, before any test patches it


def last_max_backward(self, d_L_d_out):
    """MaxPool's backward with each window's gradient sent to its LAST maximum (row-major): a tie rule of its own."""
    is_max, policy = self._is_max, self.tie_policy
    # The routing masks are planes in row-major window order: the first maximum of the reversed planes is the last.
    self._is_max, self.tie_policy = first_only(is_max[::-1])[::-1], "all"
    try:
        return CORRECT_POOL_BACKWARD(self, d_L_d_out)
    finally:
        self._is_max, self.tie_policy = is_max, policy


def rows_reversed_backward(self, d_L_d_out):
    """MaxPool's backward with its rows reversed: gradients in the wrong windows, tied or not."""
    return CORRECT_POOL_BACKWARD(self, d_L_d_out)[:, ::-1].copy()


@pytest.mark.parametrize(
    ("wrong", "diagnosis"),
    # pool2's input is 11 x 11: reversed rows also send gradient into the 11th row, which the pool drops
    [(last_max_backward, ("tie_policy", "last")), (rows_reversed_backward, ("routing", "into dropped rows/columns"))],
    ids=["last-max", "rows-reversed"],
)
def test_a_pool_bug_in_the_second_pool_only_is_blamed_on_it_and_told_apart(
    tutorial_data, monkeypatch, wrong, diagnosis
):
    """After a relu most pool windows tie at 0: last-max routing differs only there (a tie rule), reversed rows
    differ in untied windows too (a routing bug)."""

    def patch(net):
        monkeypatch.setattr(MaxPool, "backward", only_in(net, "pool2", CORRECT_POOL_BACKWARD, wrong))

    record = deep_run(tutorial_data, patch)
    assert first_divergence(record) == (0, "pool2.d_in", "pool2")
    found = record.first_divergence.diagnosis
    assert (found.kind, found.evidence["rule"]) == diagnosis
    assert record.first_divergence.tied_windows > 0


def test_a_skipped_dense_bias_update_is_caught_at_the_biases(tutorial_data, monkeypatch):
    monkeypatch.setattr(Dense, "param_names", ("weights",))
    record = deep_run(tutorial_data)
    assert first_divergence(record) == (0, "dense1.biases", "dense1")
    diagnosis = record.first_divergence.diagnosis
    assert (diagnosis.kind, diagnosis.tensor, diagnosis.evidence) == (
        "dropped",
        "dense1.biases",
        {"update": "not applied"},
    )


def test_a_softmax_gradient_of_the_wrong_sign_is_caught_at_the_logits_gradient(tutorial_data, monkeypatch):
    correct = SoftmaxCrossEntropy.backward
    monkeypatch.setattr(SoftmaxCrossEntropy, "backward", lambda self: -correct(self))
    record = deep_run(tutorial_data)
    assert first_divergence(record) == (0, "dense1.d_out", "dense1")
    diagnosis = record.first_divergence.diagnosis
    assert (diagnosis.kind, diagnosis.evidence["reading"]) == ("scale", "a sign error")
    assert diagnosis.evidence["factor"] == -1


@pytest.mark.parametrize("factor, reading", [(4, "times 4, the batch size"), (1 / 4, "divided by 4, the batch size")])
def test_a_loss_gradient_summed_over_the_batch_is_read_as_such_and_said_to_be_the_losss(
    tutorial_data, monkeypatch, factor, reading
):
    """The mean over the batch left out of the softmax cross-entropy's backward (or taken twice): dense1.d_out is
    `batch` times the reference's, and the text says it comes from the loss, not from the dense layer."""
    correct = SoftmaxCrossEntropy.backward
    monkeypatch.setattr(SoftmaxCrossEntropy, "backward", lambda self: correct(self) * factor)
    record = deep_run(tutorial_data)  # batches of 4
    assert first_divergence(record) == (0, "dense1.d_out", "dense1")
    for diagnosis in (record.first_divergence.diagnosis, record.layers["dense1"].diagnosis):
        assert diagnosis.kind == "scale" and diagnosis.evidence["reading"].startswith(reading)
        assert "dense1.d_out (dL/dlogits, from the softmax cross-entropy's backward)" in diagnosis.text


@pytest.mark.parametrize("param", ["weights", "biases"])
def test_a_dense_parameter_gradient_of_the_first_sample_only_is_named_partial(tutorial_data, monkeypatch, param):
    """`d_L_d_out[0]` where the sum over the batch belongs: the gradient the reference computes from sample 0."""
    correct = Dense.backward

    def patched(self, d_L_d_out):
        d_in = correct(self, d_L_d_out)
        every_sample, sample_0 = self.grads, np.zeros_like(d_L_d_out)
        sample_0[0] = d_L_d_out[0]
        correct(self, sample_0)
        self.grads = {**every_sample, param: self.grads[param]}
        return d_in

    monkeypatch.setattr(Dense, "backward", patched)
    record = deep_run(tutorial_data)  # batches of 4
    diagnosis = record.layers["dense1"].diagnosis
    assert (diagnosis.kind, diagnosis.tensor, diagnosis.evidence) == (
        "partial",
        f"dense1.d_{param}",
        {"windows": "only the first image of the batch"},
    )


def test_a_batch_computed_from_its_first_sample_only_is_named_with_the_samples_that_are_right(
    tutorial_data, monkeypatch
):
    """A batch loop written `for n in range(1)`, the other rows filled from the first: only sample 0 is right."""
    correct = Dense.forward

    def first_sample_only(self, x):
        out = correct(self, x)
        out[1:] = out[0]
        return out

    monkeypatch.setattr(Dense, "forward", first_sample_only)
    record = deep_run(tutorial_data)
    assert first_divergence(record) == (0, "dense1.out", "dense1")
    diagnosis = record.first_divergence.diagnosis
    assert (diagnosis.kind, diagnosis.evidence) == ("partial", {"right_samples": [0], "batch": 4})
    assert record.layers["dense1"].diagnosis.kind == "partial"  # on its own too, fed the reference's batch


@pytest.mark.parametrize("batch", [1, 64, 500])
def test_a_sign_flipped_input_gradient_is_caught_in_float32_at_any_batch_size(tutorial_data, monkeypatch, batch):
    """A mean loss makes every per-sample gradient 1/batch of its own: under a fixed atol of 1e-5, float32's, the
    whole of `conv1.d_in` fitted inside the allowance at batch 500 and its sign could be anything. Per-sample
    gradients are judged under atol / batch (`Tolerance.per_sample_of`)."""
    train, _ = tutorial_data
    correct = Conv.backward
    monkeypatch.setattr(Conv, "backward", lambda self, d_L_d_out: -correct(self, d_L_d_out))
    net = scratch.tutorial_network(0, np.float32)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    lockstep = Lockstep(ScratchSide(net), runner, net.spec, np.float32)
    lockstep.step(train.images[:batch], train.labels[:batch])
    record = lockstep.finish()
    assert first_divergence(record) == (0, "conv1.d_in", "conv1")
    assert record.first_divergence.comparison.tolerance.atol == pytest.approx(1e-5 / batch)


@pytest.mark.parametrize(
    ("wrong_step", "batch", "factor", "reading"),
    [
        (lambda lr, gradient: lr * lr * gradient, 1, 0.005, "the learning rate applied twice"),
        (lambda lr, gradient: -lr * gradient, 4, -1, "a sign error"),
    ],
    ids=["lr-twice", "sign"],
)
def test_a_wrong_update_in_float32_is_named_at_the_weights_it_moves(
    tutorial_data, monkeypatch, wrong_step, batch, factor, reading
):
    """In float32 an update scaled by lr once more moves the weights by less than the tolerance sees, yet moves
    them: it is the update's factor, not an update never applied. And the near-tie flips a wrong update leaves
    unproven make the conv's input gradient fail first in the spec's order: the divergence is still named at the
    tensor the conv is wrong in."""
    train, _ = tutorial_data

    def update(self, lr):
        for name in self.param_names:
            getattr(self, name)[...] -= wrong_step(lr, self.grads[name])
        self.grads = {}

    monkeypatch.setattr(scratch.layer.Layer, "update", update)
    net = scratch.tutorial_network(0, np.float32)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    lockstep = Lockstep(ScratchSide(net), runner, net.spec, np.float32)
    for start in range(0, 4 * batch, batch):
        lockstep.step(train.images[start : start + batch], train.labels[start : start + batch])
    record = lockstep.finish()
    assert first_divergence(record) == (0, "conv1.filters", "conv1")
    for layer in ("conv1", "dense1"):
        diagnosis = record.layers[layer].diagnosis
        assert (diagnosis.kind, diagnosis.evidence["reading"]) == ("scale", reading), diagnosis.text
        assert diagnosis.evidence["factor"] == pytest.approx(factor, rel=1e-2)
