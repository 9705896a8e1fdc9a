"""The weight bridge: exact round trips, the HWC<->NCHW flatten mapping, and refusals of wrong architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference
import scratch
from parity.testing import assert_parity
from reference.bridge import dense_weights_to_scratch, dense_weights_to_torch
from reference.twin import TutorialTwin

CONFIGS = [
    pytest.param({"dtype": np.float64}, id="float64-tutorial"),
    pytest.param({"dtype": np.float32}, id="float32-tutorial"),
    pytest.param(
        {"dtype": np.float64, "num_filters": 3, "image_shape": (11, 13), "num_classes": 4}, id="odd-11x13-3f-4c"
    ),
    pytest.param({"dtype": np.float32, "num_filters": 5, "image_shape": (7, 7), "num_classes": 2}, id="float32-7x7"),
]


@pytest.mark.parametrize("options", CONFIGS)
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_round_trip_is_bit_exact(options, seed):
    net = scratch.tutorial_network(seed, **options)
    back = reference.to_scratch(reference.to_torch(net))
    for name, value in net.parameters().items():
        assert back.parameters()[name].dtype == value.dtype
        np.testing.assert_array_equal(back.parameters()[name], value, err_msg=name)


@pytest.mark.parametrize("options", CONFIGS)
def test_twin_computes_the_same_logits(options):
    net = scratch.tutorial_network(3, **options)
    image = np.random.default_rng(3).integers(0, 256, net.image_shape, dtype=np.uint8)
    net.forward(image)
    twin_logits = reference.ReferenceRunner(reference.to_torch(net)).forward_backward(image, 1)["logits"]
    assert_parity({"logits": net.softmax.last_totals}, {"logits": twin_logits}, net.dtype)


def test_flatten_mapping_element_by_element():
    """Tutorial flat index (i*13 + j)*8 + f is PyTorch's f*169 + i*13 + j."""
    pooled_shape = (13, 13, 8)
    scratch_weights = np.arange(13 * 13 * 8 * 2, dtype=np.float64).reshape(13 * 13 * 8, 2)
    torch_weights = dense_weights_to_torch(scratch_weights, pooled_shape)
    assert torch_weights.shape == (2, 1352)
    for i, j, f in [(0, 0, 0), (0, 0, 1), (2, 5, 7), (12, 12, 7)]:
        assert torch_weights[1, f * 169 + i * 13 + j] == scratch_weights[(i * 13 + j) * 8 + f, 1]
    np.testing.assert_array_equal(dense_weights_to_scratch(torch_weights, pooled_shape), scratch_weights)


def test_refuses_a_module_that_is_not_the_twin():
    with pytest.raises(ValueError, match="cannot bridge this module to scratch: expected a reference.TutorialTwin"):
        reference.to_scratch(torch.nn.Linear(3, 2))


def test_refuses_a_conv_with_bias():
    twin = TutorialTwin()
    twin.conv = torch.nn.Conv2d(1, 8, 3, bias=True, dtype=torch.float64)
    with pytest.raises(ValueError, match="conv must be 3x3, stride 1, no padding, no bias"):
        reference.to_scratch(twin)


def test_refuses_a_dense_layer_of_the_wrong_size():
    twin = TutorialTwin()
    twin.dense = torch.nn.Linear(100, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"dense takes 100 inputs, the pool gives \(13, 13, 8\)"):
        reference.to_scratch(twin)


def test_refuses_to_load_weights_of_another_architecture():
    twin = reference.to_torch(scratch.tutorial_network(0))
    other = scratch.tutorial_network(0, num_filters=4)
    with pytest.raises(ValueError, match=r"architecture mismatch at filters: the PyTorch twin needs \(8, 3, 3\)"):
        reference.load_into_torch(twin, other.parameters())


def test_refuses_mixed_dtypes():
    twin = reference.to_torch(scratch.tutorial_network(0))
    other = scratch.tutorial_network(0, np.float32)
    with pytest.raises(ValueError, match="architecture mismatch at filters: .* float64, .* float32"):
        reference.load_into_torch(twin, other.parameters())
