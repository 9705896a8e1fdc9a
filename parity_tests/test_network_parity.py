"""The whole network, one step: every named tensor of scratch against the twin, forward then backward."""

from __future__ import annotations

import numpy as np
import pytest

import reference
import scratch
from parity.lockstep import STEP_TENSORS
from parity.testing import assert_parity
from parity.ties import count_tied_windows

DTYPES = [pytest.param(np.float64, id="float64"), pytest.param(np.float32, id="float32")]


def step_both(net: scratch.Network, image: np.ndarray, label: int) -> tuple[dict, dict]:
    """One forward + backward on both sides from the same weights; scratch and reference tensors."""
    runner = reference.ReferenceRunner(reference.to_torch(net))
    return net.forward_backward(image, label).tensors, runner.forward_backward(image, label)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("index", [0, 1, 17])
def test_real_digit_every_tensor(tutorial_data, dtype, seed, index):
    train, _ = tutorial_data
    net = scratch.tutorial_network(seed, dtype)
    scratch_side, reference_side = step_both(net, train.images[index], int(train.labels[index]))
    assert_parity(scratch_side, reference_side, dtype, names=STEP_TENSORS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"image_shape": (11, 13), "num_filters": 3, "num_classes": 4}, id="odd-11x13"),
        pytest.param({"image_shape": (9, 9), "num_filters": 1, "num_classes": 2}, id="odd-9x9-one-filter"),
        pytest.param({"image_shape": (28, 28), "num_filters": 16, "num_classes": 10}, id="16-filters"),
    ],
)
def test_other_shapes_every_tensor(dtype, options):
    net = scratch.tutorial_network(4, dtype, **options)
    image = np.random.default_rng(4).integers(0, 256, net.image_shape, dtype=np.uint8)
    assert_parity(*step_both(net, image, 1), dtype, names=STEP_TENSORS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pixel", [0, 255, 128])
def test_constant_image_ties_every_window(dtype, pixel):
    net = scratch.tutorial_network(0, dtype)
    scratch_side, reference_side = step_both(net, np.full((28, 28), pixel, dtype=np.uint8), 3)
    assert count_tied_windows(reference_side["conv_out"]) == 13 * 13 * 8
    assert_parity(scratch_side, reference_side, dtype, names=STEP_TENSORS)


def test_real_digits_tie_in_most_pool_windows(tutorial_data):
    """The flat background makes ~60% of windows tie: the reason the tie rule matters at all."""
    train, _ = tutorial_data
    net = scratch.tutorial_network(0)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    shares = [count_tied_windows(runner.forward_backward(img, 0)["conv_out"]) / 1352 for img in train.images[:50]]
    assert 0.4 < np.mean(shares) < 0.8
