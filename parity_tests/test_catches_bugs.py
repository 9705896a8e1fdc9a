"""Each kind of parity check can fail: deliberately wrong implementations are caught, at the right tensor and layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference
import scratch
from parity.experiment import ScratchSide
from parity.lockstep import LockstepRecord, run_lockstep
from parity.testing import ParityError, assert_lockstep, assert_parity
from scratch.conv import Conv3x3


def short_run(tutorial_data, dtype=np.float64, steps: int = 5, **options) -> LockstepRecord:
    """A few lockstep steps on real digits from the tutorial's init."""
    train, _ = tutorial_data
    net = scratch.tutorial_network(0, dtype, **options)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    return run_lockstep(ScratchSide(net), runner, train.images[:steps], train.labels[:steps], dtype)


def first_divergence(record: LockstepRecord) -> tuple[int, str, str]:
    divergence = record.first_divergence
    assert divergence is not None, "the injected bug was not caught"
    return divergence.step, divergence.tensor, divergence.layer


def test_the_unmodified_network_passes(tutorial_data):
    assert_lockstep(short_run(tutorial_data))


def test_wrong_filter_gradient_is_caught_at_d_filters(tutorial_data, monkeypatch):
    correct = Conv3x3.backward

    def transposed_kernel_gradient(self, d_L_d_out):
        d_input = correct(self, d_L_d_out)
        self.grads["filters"] = self.grads["filters"].transpose(0, 2, 1).copy()  # swapped kernel axes
        return d_input

    monkeypatch.setattr(Conv3x3, "backward", transposed_kernel_gradient)
    record = short_run(tutorial_data)
    assert first_divergence(record) == (0, "d_filters", "Conv3x3")
    assert "implementation mismatch in Conv3x3" in record.first_divergence.diagnosis


def test_transposed_dense_weight_in_the_bridge_is_caught_at_the_logits(tutorial_data, monkeypatch):
    """The classic bridge bug: `.T` alone, forgetting that PyTorch flattens NCHW and the tutorial HWC."""
    monkeypatch.setattr(reference.bridge, "dense_weights_to_torch", lambda weights, pooled_shape: weights.T)
    record = short_run(tutorial_data)
    assert first_divergence(record) == (0, "logits", "Softmax")
    assert "HWC flatten order" in record.first_divergence.diagnosis


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_tutorial_tie_policy_is_caught_and_named(tutorial_data, dtype):
    record = short_run(tutorial_data, dtype, tie_policy="all")
    assert first_divergence(record) == (0, "d_conv_out", "MaxPool2")
    assert "tie-policy difference" in record.first_divergence.diagnosis


def test_float32_downcast_inside_a_float64_conv_is_caught(tutorial_data, monkeypatch):
    correct = Conv3x3.forward
    monkeypatch.setattr(Conv3x3, "forward", lambda self, x: correct(self, x).astype(np.float32).astype(np.float64))
    record = short_run(tutorial_data)
    assert first_divergence(record) == (0, "conv_out", "Conv3x3")
    assert record.first_divergence.comparison.max_abs_error < 1e-6  # small: PyTorch's default tolerance misses it


def test_float32_downcast_is_missed_by_assert_close_defaults_but_not_by_ours(tutorial_data, monkeypatch):
    """Why the tolerance table exists: torch.testing.assert_close's float64 defaults let this bug through."""
    train, _ = tutorial_data
    net = scratch.tutorial_network(0)
    correct = Conv3x3.forward
    monkeypatch.setattr(Conv3x3, "forward", lambda self, x: correct(self, x).astype(np.float32).astype(np.float64))
    scratch_side = net.forward_backward(train.images[0], int(train.labels[0])).tensors
    reference_side = reference.ReferenceRunner(reference.to_torch(net)).forward_backward(
        train.images[0], int(train.labels[0])
    )
    torch.testing.assert_close(torch.from_numpy(scratch_side["conv_out"]), torch.from_numpy(reference_side["conv_out"]))
    with pytest.raises(ParityError, match="first divergence: conv_out: mismatched elements"):
        assert_parity(scratch_side, reference_side, np.float64, names=["conv_out"])


def test_float32_rounding_of_the_filter_update_is_caught_after_one_step(tutorial_data, monkeypatch):
    """A float32 round trip in the SGD update alone: the forward and gradients agree, the parameters do not."""
    correct = Conv3x3.update

    def rounded_update(self, lr):
        correct(self, lr)
        self.filters[...] = self.filters.astype(np.float32)

    monkeypatch.setattr(Conv3x3, "update", rounded_update)
    record = short_run(tutorial_data)
    assert first_divergence(record) == (0, "filters", "Conv3x3")


def test_skipped_bias_update_is_caught_at_the_biases(tutorial_data, monkeypatch):
    monkeypatch.setattr(scratch.Softmax, "param_names", ("weights",))
    record = short_run(tutorial_data)
    assert first_divergence(record) == (0, "dense_biases", "Softmax")


def test_pool_routing_bug_outside_ties_is_not_called_a_tie_policy(tutorial_data, monkeypatch):
    """Gradients sent to the wrong windows: the forward agrees, ties exist, yet untied windows are wrong too."""
    correct = scratch.MaxPool2.backward
    monkeypatch.setattr(scratch.MaxPool2, "backward", lambda self, d_out: correct(self, d_out)[::-1].copy())
    record = short_run(tutorial_data)
    assert first_divergence(record) == (0, "d_conv_out", "MaxPool2")
    assert record.first_divergence.diagnosis.startswith("routing error, not a tie policy")
