"""The whole network, one step on real digits: every named tensor of scratch against the twin, by spec name.

Raw digits have a flat background, so many pool windows hold several equal maxima. Scratch and torch each compute
identical windows with position-dependent rounding in places (OpenBLAS's float32 gemm in scratch's conv, torch's
multi-channel conv in both dtypes), so an exact tie on one side can be a one-ULP near-tie on the other and route
its gradient to a neighbour. Hence two tests: on digits moved by less than half a grey level (no two windows
alike) every tensor must match; on the raw digits every tensor must match, or the first to diverge must be a pool's
input gradient whose every mismatch is such a proven near-tie flip (`parity.diagnosis.pool.near_tie_flips`).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

import reference
import scratch
from parity.diagnosis.pool import near_tie_flips
from parity.engine.compare import compare
from parity.engine.tolerances import tolerance_for
from scratch.splits import load_experiment_data

SPECS = [
    pytest.param("conv3x8,pool2,dense10", (28, 28), id="tutorial"),
    pytest.param("conv5x16,relu,pool2,conv3x32,relu,pool2,dense10", (28, 28), id="two-conv-blocks"),
    pytest.param("conv3x4b,relu,pool2,dense32,relu,dense10", (28, 28), id="conv-bias-two-dense"),
    pytest.param("conv3x8,pool2,conv3x4,dense10", (28, 28), id="conv-after-pool"),
    pytest.param("conv4x6b,relu,pool3,dense10", (27, 25), id="cropped-27x25-pool3"),
]
DTYPES = [pytest.param(np.float64, id="float64"), pytest.param(np.float32, id="float32")]
BATCHES = [pytest.param(1, id="batch1"), pytest.param(8, id="batch8")]


@cache
def digits(batch: int, image_shape: tuple[int, int], tie_free: bool) -> tuple[np.ndarray, np.ndarray]:
    """The first `batch` training digits (cropped to `image_shape`), raw or moved off every tie; and their labels."""
    train, _ = load_experiment_data(None)
    images = train.images[:batch, : image_shape[0], : image_shape[1]]
    if tie_free:  # within 0..255 still; each pixel moved by less than half a grey level
        images = np.abs(images - np.random.default_rng(0).uniform(0.01, 0.49, images.shape))
    if batch == 1:
        return images[0], int(train.labels[0])
    return images, train.labels[:batch]


def both_sides(spec: str, image_shape, dtype, images, labels) -> tuple[scratch.Network, dict, dict]:
    """One forward + backward on both sides from the same seeded weights: the network and both sides' tensors."""
    net = scratch.build_network(spec, seed=0, dtype=dtype, image_shape=image_shape)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    return net, net.forward_backward(images, labels).tensors, runner.forward_backward(images, labels)


def failures(mine: dict, theirs: dict, dtype) -> list[str]:
    """The message of every tensor of `theirs` that `mine` does not match."""
    results = (compare(name, mine[name], theirs[name], dtype) for name in theirs)
    return [result.message() for result in results if not result.passed]


def step_names(spec: scratch.NetworkSpec) -> list[str]:
    """Every tensor of a step, forward then backward (not the parameters after the update)."""
    return [info.name for info in spec.tensors if info.role != "param"]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("spec", "image_shape"), SPECS)
def test_every_tensor_matches_on_tie_free_digits(spec, image_shape, dtype, batch):
    net, mine, theirs = both_sides(spec, image_shape, dtype, *digits(batch, image_shape, tie_free=True))
    assert list(theirs) == step_names(net.spec) == list(mine)
    mismatched = failures(mine, theirs, dtype)
    assert not mismatched, "\n".join(mismatched)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("spec", "image_shape"), SPECS)
def test_raw_digits_match_up_to_near_tie_flips(spec, image_shape, dtype, batch):
    net, mine, theirs = both_sides(spec, image_shape, dtype, *digits(batch, image_shape, tie_free=False))
    first_failure = next((c for c in (compare(n, mine[n], theirs[n], dtype) for n in theirs) if not c.passed), None)
    if first_failure is None:
        return
    info = net.spec.tensor(first_failure.name)
    assert info.kind == "pool" and info.role == "d_in", first_failure.message()
    # Past a flip the gradients differ by construction (they went elsewhere), so the comparison stops here.
    layers = net.spec.layers
    pool = net.spec.layer(info.layer)
    pool_input = f"{layers[layers.index(pool) - 1].name}.out"
    tolerance = tolerance_for(dtype)
    flips = near_tie_flips(
        pool.kernel, mine[pool_input], theirs[pool_input], mine[info.name], theirs[info.name], tolerance, tolerance
    )
    assert flips > 0, f"not explained by near-tie flips: {first_failure.message()}"


def test_requested_names_are_the_same_arrays_as_the_full_step():
    """The lockstep's cheap path: only what is asked for, equal to the full step's values."""
    net = scratch.build_network("conv3x4b,relu,pool2,dense32,relu,dense10", seed=2)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    images, labels = digits(8, (28, 28), tie_free=False)
    full = runner.forward_backward(images, labels)
    names = ["dense2.out", "loss", "dense2.d_biases", "conv1.d_filters", "relu1.d_in"]
    cheap = runner.forward_backward(images, labels, names)
    assert list(cheap) == names
    for name in names:
        np.testing.assert_array_equal(cheap[name], full[name], err_msg=name)
    first_layer_only = runner.forward_backward(images, labels, ["conv1.d_in"])  # the image's gradient
    np.testing.assert_array_equal(first_layer_only["conv1.d_in"], full["conv1.d_in"])
    # Parameter gradients alone take `backward`, which adds to a gradient already there: calls without an update
    # in between must still give one step's gradients, not their sum.
    parameters_only = ["loss", "dense2.d_biases", "conv1.d_filters"]
    for _ in range(2):
        again = runner.forward_backward(images, labels, parameters_only)
        for name in parameters_only:
            np.testing.assert_array_equal(again[name], full[name], err_msg=name)


def test_refuses_a_name_that_is_not_a_step_tensor():
    runner = reference.ReferenceRunner(reference.to_torch(scratch.build_network()))
    with pytest.raises(ValueError, match=r"'d_filters' is not a tensor of a conv3x8,pool2,dense10 step"):
        runner.forward_backward(*digits(1, (28, 28), tie_free=False), names=["loss", "d_filters"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_runners_update_is_torch_optim_sgd_bit_for_bit(dtype):
    """The runner calls PyTorch's functional SGD, not `torch.optim.SGD.step`: the same weights to the bit, over
    steps with a changed lr and a parameter that got no gradient (as `step`, it is left alone)."""
    import torch
    import torch.nn.functional as F

    spec = "conv3x4b,relu,pool2,dense32,relu,dense10"
    runner = reference.ReferenceRunner(reference.to_torch(scratch.build_network(spec, seed=3, dtype=dtype)), lr=0.05)
    twin = reference.to_torch(scratch.build_network(spec, seed=3, dtype=dtype))
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.05)
    images, labels = digits(8, (28, 28), tie_free=False)
    for step, lr in enumerate([None, None, 0.2, None]):
        runner.forward_backward(images, labels, names=["loss"])
        if step == 3:  # no gradient for one parameter: both must leave it as it is
            runner._param_tensors[0].grad = None
        runner.update(lr)
        if lr is not None:
            optimizer.param_groups[0]["lr"] = lr
        x = (torch.from_numpy(images).to(twin.dtype) / 255 - 0.5).unsqueeze(1)
        optimizer.zero_grad()
        F.cross_entropy(twin(x), torch.from_numpy(labels.astype(np.int64))).backward()
        if step == 3:
            next(twin.parameters()).grad = None
        optimizer.step()
    theirs = reference.ReferenceRunner(twin).parameters()
    for name, ours in runner.parameters().items():
        np.testing.assert_array_equal(ours, theirs[name], err_msg=name, strict=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_sgd_step_and_evaluate_match(dtype):
    spec = "conv3x4b,relu,pool2,dense32,relu,dense10"
    net = scratch.build_network(spec, seed=1, dtype=dtype)
    runner = reference.ReferenceRunner(reference.to_torch(net), lr=0.05)
    images, labels = digits(8, (28, 28), tie_free=True)
    net.train_step(images, labels, lr=0.05)
    runner.forward_backward(images, labels, names=["loss"])
    runner.update()
    mismatched = failures(net.parameters(), runner.parameters(), dtype)
    assert not mismatched, "\n".join(mismatched)
    (loss, correct), (their_loss, their_correct) = net.evaluate(images, labels), runner.evaluate(images, labels)
    assert correct == their_correct
    assert compare("loss", np.asarray(loss, dtype), np.asarray(their_loss, dtype), dtype).passed
