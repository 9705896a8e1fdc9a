"""The scratch layers: vectorised code against the tutorial's loops, dtypes, updates, and max-pool ties.

NumPy only. The *Loops classes are the tutorial's code line by line (the spec); the vectorised classes must
agree with them to <= 1e-12 in float64 on every named tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
from scratch_helpers import (
    ALL_TENSORS,
    SOFTMAX_MODES,
    TIE_POLICIES,
    assert_parameters_equal,
    assert_tensors_agree,
    first_train_digits,
    max_scaled_diff,
    network_pair,
    random_uint8_image,
    snapshot,
)

import scratch
from scratch import Conv3x3, Conv3x3Loops, MaxPool2, MaxPool2Loops, Softmax, SoftmaxLoops

TOL64 = 1e-12  # loops vs vectorised, float64
SEEDS = (0, 1, 7)


# --- whole network: loops vs vectorised ------------------------------------------------------------------


def _images(kind: str, seed: int) -> list[tuple[np.ndarray, int]]:
    """Inputs for one case: real digits, odd-sized random images, or constant images (every window tied)."""
    rng = np.random.default_rng(1000 + seed)
    if kind == "mnist":
        return first_train_digits(6)[2 * (seed % 3) : 2 * (seed % 3) + 3]
    if kind == "odd-11x13":
        return [(random_uint8_image(rng, (11, 13)), int(rng.integers(10))) for _ in range(3)]
    if kind == "small-7x7":
        return [(random_uint8_image(rng, (7, 7)), int(rng.integers(10))) for _ in range(3)]
    if kind == "constant":
        return [(np.full((28, 28), value, dtype=np.uint8), label) for value, label in ((0, 3), (255, 7), (128, 1))]
    raise AssertionError(kind)


IMAGE_KINDS = ("mnist", "odd-11x13", "small-7x7", "constant")


@pytest.mark.parametrize("kind", IMAGE_KINDS)
@pytest.mark.parametrize("softmax", SOFTMAX_MODES)
@pytest.mark.parametrize("tie_policy", TIE_POLICIES)
@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_loops_and_vectorized_agree_on_every_tensor(seed, tie_policy, softmax, kind):
    """Every tensor of forward_backward, then the weights after each SGD step: loops == vectorised to 1e-12."""
    images = _images(kind, seed)
    shape = images[0][0].shape
    vec, loops = network_pair(seed, image_shape=shape, tie_policy=tie_policy, softmax=softmax)
    for step, (image, label) in enumerate(images):
        t_vec = vec.forward_backward(image, label)
        t_loops = loops.forward_backward(image, label)
        assert set(t_vec.tensors) == set(ALL_TENSORS)
        assert_tensors_agree(t_vec.tensors, t_loops.tensors, TOL64, where=f"step {step}")
        assert t_vec.tied_windows == t_loops.tied_windows
        assert t_vec.correct == t_loops.correct
        if kind == "constant":  # a constant image makes every conv output of a filter equal: all windows tie
            assert t_vec.tied_windows == t_vec.tensors["pool_out"].size
        vec.update(0.005)
        loops.update(0.005)
        assert_tensors_agree(vec.parameters(), loops.parameters(), TOL64, where=f"params after step {step}")


def test_loops_and_vectorized_agree_over_thirty_training_steps():
    """Drift does not build up: 30 SGD steps on real digits, losses and weights still agree to 1e-12."""
    vec, loops = network_pair(3)
    for image, label in first_train_digits(30):
        loss_vec, correct_vec = vec.train_step(image, label)
        loss_loops, correct_loops = loops.train_step(image, label)
        assert abs(loss_vec - loss_loops) <= TOL64 and correct_vec == correct_loops
    assert_tensors_agree(vec.parameters(), loops.parameters(), TOL64)


@pytest.mark.parametrize("tie_policy", TIE_POLICIES)
def test_loops_and_vectorized_agree_in_float32(tie_policy):
    """float32 too (to float32 round-off, since the two sum in different orders)."""
    vec, loops = network_pair(0, np.float32, tie_policy=tie_policy)
    for image, label in first_train_digits(3):
        t_vec, t_loops = vec.forward_backward(image, label), loops.forward_backward(image, label)
        assert_tensors_agree(t_vec.tensors, t_loops.tensors, 1e-5)
        assert t_vec.tied_windows == t_loops.tied_windows


# --- each layer alone ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "in_channels, shape",
    [(None, (28, 28)), (None, (11, 13)), (None, (3, 3)), (3, (9, 8, 3)), (1, (6, 7, 1)), (5, (3, 4, 5))],
    ids=["2d-28x28", "2d-11x13", "2d-3x3", "hwc-9x8x3", "hwc-6x7x1", "hwc-3x4x5"],
)
def test_conv_layer_loops_and_vectorized_agree(in_channels, shape):
    """Conv3x3 alone, 2-D and (H, W, C) input: output, d_input and d_filters."""
    rng = np.random.default_rng(5)
    vec = Conv3x3(4, in_channels, rng=np.random.default_rng(1))
    loops = Conv3x3Loops(4, in_channels, rng=np.random.default_rng(1))
    x = rng.standard_normal(shape)
    out_vec, out_loops = vec.forward(x), loops.forward(x)
    assert out_vec.shape == (shape[0] - 2, shape[1] - 2, 4)
    assert max_scaled_diff(out_vec, out_loops) <= TOL64
    d_out = rng.standard_normal(out_vec.shape)
    d_in_vec, d_in_loops = vec.backward(d_out), loops.backward(d_out)
    assert d_in_vec.shape == x.shape == d_in_loops.shape
    assert max_scaled_diff(d_in_vec, d_in_loops) <= TOL64
    assert vec.grads["filters"].shape == vec.filters.shape
    assert max_scaled_diff(vec.grads["filters"], loops.grads["filters"]) <= TOL64


def test_conv_is_cross_correlation_without_flip():
    """out[i, j, f] = sum_kl x[i+k, j+l] * filters[f, k, l]: checked on a single-hot filter (no flip, no bias)."""
    for cls in (Conv3x3, Conv3x3Loops):
        conv = cls(1)
        conv.filters[...] = 0.0
        conv.filters[0, 0, 2] = 1.0  # picks x[i, j + 2]
        x = np.arange(30.0).reshape(5, 6)
        np.testing.assert_array_equal(conv.forward(x)[..., 0], x[0:3, 2:6])


@pytest.mark.parametrize("tie_policy", TIE_POLICIES)
@pytest.mark.parametrize(
    "shape", [(26, 26, 8), (5, 7, 2), (2, 2, 1), (3, 3, 4)], ids=["26x26x8", "5x7x2", "2x2x1", "3x3x4"]
)
@pytest.mark.parametrize("values", ["continuous", "few-levels"])
def test_maxpool_layer_loops_and_vectorized_agree(shape, tie_policy, values):
    """MaxPool2 alone: output, d_input and the tie count, with and without ties (few levels -> many ties)."""
    rng = np.random.default_rng(11)
    if values == "continuous":
        x = rng.standard_normal(shape)
    else:
        x = rng.integers(0, 3, size=shape).astype(np.float64)
        x[0, 0:2, 0] = 3.0  # at least one tie: the first window's top row holds its max twice
    vec, loops = MaxPool2(tie_policy), MaxPool2Loops(tie_policy)
    out_vec, out_loops = vec.forward(x), loops.forward(x)
    np.testing.assert_array_equal(out_vec, out_loops)
    assert vec.tied_windows == loops.tied_windows
    if values == "continuous":
        assert vec.tied_windows == 0
    else:
        assert vec.tied_windows > 0
    d_out = rng.standard_normal(out_vec.shape)
    np.testing.assert_array_equal(vec.backward(d_out), loops.backward(d_out))


@pytest.mark.parametrize("mode", SOFTMAX_MODES)
def test_softmax_layer_loops_and_vectorized_agree(mode):
    """Softmax alone: probs, backward from the tutorial's one-hot -1/p gradient, and backward_logits."""
    rng = np.random.default_rng(2)
    vec = Softmax(24, 10, rng=np.random.default_rng(4), mode=mode)
    loops = SoftmaxLoops(24, 10, rng=np.random.default_rng(4), mode=mode)
    x = rng.standard_normal((2, 3, 4))
    p_vec, p_loops = vec.forward(x), loops.forward(x)
    assert max_scaled_diff(p_vec, p_loops) <= TOL64
    assert abs(p_vec.sum() - 1) <= 1e-15 * 10
    for label in (0, 9):
        d_probs = np.zeros(10)
        d_probs[label] = -1 / p_vec[label]
        d_x_vec, d_x_loops = vec.backward(d_probs), loops.backward(d_probs)
        assert d_x_vec.shape == x.shape == d_x_loops.shape
        assert max_scaled_diff(d_x_vec, d_x_loops) <= TOL64
        for name in ("weights", "biases"):
            assert max_scaled_diff(vec.grads[name], loops.grads[name]) <= TOL64
        # dL/dlogits of cross-entropy is p - onehot, whichever route computed it.
        expected = p_vec.copy()
        expected[label] -= 1
        assert max_scaled_diff(vec.d_L_d_totals, expected) <= TOL64
    d_logits = rng.standard_normal(10)
    assert max_scaled_diff(vec.backward_logits(d_logits), loops.backward_logits(d_logits)) <= TOL64
    assert max_scaled_diff(vec.grads["weights"], loops.grads["weights"]) <= TOL64


def test_softmax_flattens_hwc():
    """The dense layer reads its (H, W, C) input in HWC order: flat index (i*W + j)*C + c."""
    layer = Softmax(2 * 3 * 4, 2)
    layer.weights[...] = 0.0
    layer.weights[(1 * 3 + 2) * 4 + 3, 0] = 1.0  # the weight for x[1, 2, 3]
    x = np.zeros((2, 3, 4))
    x[1, 2, 3] = 5.0
    layer.forward(x)
    np.testing.assert_array_equal(layer.last_totals, [5.0, 0.0])


# --- dtypes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", scratch.IMPLEMENTATIONS)
@pytest.mark.parametrize("softmax", SOFTMAX_MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_dtype_is_preserved(dtype, softmax, impl):
    """Every tensor is in the network's dtype, and the parameters stay in it (in place) through training."""
    net = scratch.tutorial_network(0, dtype, softmax=softmax, impl=impl)
    live = net.parameters()
    for name, value in live.items():
        assert value.dtype == dtype, name
    image, label = first_train_digits(1)[0]
    trace = net.forward_backward(image, label)
    for name, value in trace.tensors.items():
        assert np.asarray(value).dtype == dtype, f"{name} is {np.asarray(value).dtype}"
    for image, label in first_train_digits(3):
        loss, correct = net.train_step(image, label, lr=0.005)
        assert isinstance(loss, float) and isinstance(correct, bool)
    for name, value in net.parameters().items():
        assert value.dtype == dtype, f"{name} became {value.dtype}"
        assert value is live[name], f"{name} was replaced, not updated in place"
    # Float raw pixels are fine too: normalised into the network's dtype.
    trace = net.forward_backward(image.astype(np.float64), label)
    assert all(np.asarray(v).dtype == dtype for v in trace.tensors.values())


def test_float32_network_starts_from_rounded_float64_weights():
    """The float32 init is the float64 init rounded, so the two can be compared step by step."""
    w64 = scratch.tutorial_network(4, np.float64).parameters()
    w32 = scratch.tutorial_network(4, np.float32).parameters()
    for name in w64:
        np.testing.assert_array_equal(w32[name], w64[name].astype(np.float32))


# --- backward vs update ----------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", scratch.IMPLEMENTATIONS)
def test_backward_moves_no_weight_and_update_applies_sgd(impl):
    """forward_backward leaves every weight alone; update(lr) then applies exactly param -= lr * grad."""
    net = scratch.tutorial_network(2, impl=impl)
    image, label = first_train_digits(1)[0]
    before = snapshot(net)
    trace = net.forward_backward(image, label)
    assert_parameters_equal(net, before)
    trace_again = net.forward_backward(image, label)  # nothing moved, so the same step again
    assert_tensors_agree(trace_again.tensors, trace.tensors, 0.0)
    lr = 0.01
    net.update(lr)
    grads = {"filters": "d_filters", "dense_weights": "d_dense_weights", "dense_biases": "d_dense_biases"}
    for name, value in net.parameters().items():
        expected = before[name] - lr * trace.tensors[grads[name]]
        np.testing.assert_array_equal(value, expected, err_msg=name)
        assert not np.array_equal(value, before[name]), f"{name} did not move"


def test_train_step_is_forward_backward_then_update():
    """train_step(image, label, lr) == forward_backward + update(lr), bit for bit."""
    a, b = scratch.tutorial_network(6), scratch.tutorial_network(6)
    for image, label in first_train_digits(5):
        loss, correct = a.train_step(image, label, lr=0.02)
        trace = b.forward_backward(image, label)
        b.update(0.02)
        assert loss == trace.loss and correct == trace.correct
    assert_tensors_agree(a.parameters(), b.parameters(), 0.0)


@pytest.mark.parametrize("impl", scratch.IMPLEMENTATIONS)
def test_each_layer_backward_moves_no_weight(impl):
    """Layer by layer: backward fills grads and returns d_input, but changes no parameter."""
    net = scratch.tutorial_network(1, impl=impl)
    image, label = first_train_digits(1)[0]
    trace = net.forward_backward(image, label)
    rng = np.random.default_rng(0)
    d_outs = {
        id(net.conv): rng.standard_normal(trace.tensors["conv_out"].shape),
        id(net.pool): rng.standard_normal(trace.tensors["pool_out"].shape),
        id(net.softmax): -np.eye(10)[label] / trace.tensors["probs"][label],
    }
    for layer in net.layers:
        before = {name: value.copy() for name, value in layer.parameters().items()}
        d_out = d_outs[id(layer)]
        layer.backward(d_out)
        assert set(layer.grads) == set(layer.param_names)
        for name, value in layer.parameters().items():
            np.testing.assert_array_equal(value, before[name], err_msg=f"{type(layer).__name__}.{name} moved")


@pytest.mark.parametrize("impl", scratch.IMPLEMENTATIONS)
@pytest.mark.parametrize("softmax", SOFTMAX_MODES)
def test_backprop_is_backward_then_update(impl, softmax):
    """The tutorial's `backprop(d, lr)` == `backward(d)` then `update(lr)`, layer by layer, on a real digit."""
    a = scratch.tutorial_network(0, softmax=softmax, impl=impl)
    b = scratch.tutorial_network(0, softmax=softmax, impl=impl)
    image, label = first_train_digits(1)[0]
    lr = 0.005
    for net in (a, b):
        net.forward(image)
    probs = a.softmax.last_probs
    gradient = np.zeros(10)
    gradient[label] = -1 / probs[label]  # the tutorial's initial gradient
    # a: the tutorial's chain of backprop calls.
    g_a = a.softmax.backprop(gradient, lr)
    g_a = a.pool.backprop(g_a)
    g_a = a.conv.backprop(g_a, lr)
    # b: backward everywhere first, then update.
    g_b = b.softmax.backward(gradient)
    g_b = b.pool.backward(g_b)
    g_b = b.conv.backward(g_b)
    for layer in b.layers:
        layer.update(lr)
    np.testing.assert_array_equal(g_a, g_b)
    assert_tensors_agree(a.parameters(), b.parameters(), 0.0)


def test_softmax_backprop_uses_weights_before_the_update():
    """As in the tutorial, the input gradient is computed with the weights *before* they move."""
    layer = Softmax(6, 3, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal(6)
    probs = layer.forward(x)
    w_before = layer.weights.copy()
    gradient = np.array([0.0, -1 / probs[1], 0.0])
    d_x = layer.backprop(gradient, 0.5)
    np.testing.assert_array_equal(d_x, w_before @ layer.d_L_d_totals)
    assert not np.array_equal(layer.weights, w_before)


# --- max-pool tie policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [MaxPool2, MaxPool2Loops], ids=["vectorized", "loops"])
@pytest.mark.parametrize(
    "tie_policy, expected",
    [("first", [[1.0, 0.0], [0.0, 0.0]]), ("all", [[1.0, 1.0], [1.0, 1.0]])],
    ids=["first", "all"],
)
def test_fully_tied_window_routing(cls, tie_policy, expected):
    """[[1, 1], [1, 1]]: "first" routes to (0, 0) only (PyTorch), "all" to all four (the tutorial)."""
    pool = cls(tie_policy)
    out = pool.forward(np.ones((2, 2, 1)))
    np.testing.assert_array_equal(out, [[[1.0]]])
    assert pool.tied_windows == 1
    d_in = pool.backward(np.full((1, 1, 1), 2.5))
    np.testing.assert_array_equal(d_in[..., 0], 2.5 * np.array(expected))


@pytest.mark.parametrize("cls", [MaxPool2, MaxPool2Loops], ids=["vectorized", "loops"])
@pytest.mark.parametrize(
    "window, first_index",
    [
        ([[0, 1], [0, 1]], (0, 1)),
        ([[0, 0], [1, 1]], (1, 0)),
        ([[2, 0], [0, 2]], (0, 0)),
        ([[0, 3], [3, 3]], (0, 1)),
    ],
    ids=["right-column", "bottom-row", "diagonal", "three-way"],
)
def test_partial_tie_first_max_is_row_major(cls, window, first_index):
    """Under "first" the earliest maximum in row-major order wins; under "all" every maximum gets it."""
    x = np.array(window, dtype=np.float64)[..., np.newaxis]
    first, every = cls("first"), cls("all")
    first.forward(x)
    every.forward(x)
    assert first.tied_windows == every.tied_windows == 1
    expected_first = np.zeros((2, 2))
    expected_first[first_index] = 1.0
    np.testing.assert_array_equal(first.backward(np.ones((1, 1, 1)))[..., 0], expected_first)
    np.testing.assert_array_equal(every.backward(np.ones((1, 1, 1)))[..., 0], (x[..., 0] == x.max()).astype(float))


@pytest.mark.parametrize("cls", [MaxPool2, MaxPool2Loops], ids=["vectorized", "loops"])
def test_ties_are_per_channel(cls):
    """Channel 0 tied, channel 1 not: one tied window, and each channel routes on its own."""
    x = np.stack([np.ones((2, 2)), np.array([[0.0, 4.0], [1.0, 2.0]])], axis=-1)
    pool = cls("first")
    np.testing.assert_array_equal(pool.forward(x), [[[1.0, 4.0]]])
    assert pool.tied_windows == 1
    d_in = pool.backward(np.array([[[1.0, 2.0]]]))
    np.testing.assert_array_equal(d_in[..., 0], [[1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(d_in[..., 1], [[0.0, 2.0], [0.0, 0.0]])


@pytest.mark.parametrize("cls", [MaxPool2, MaxPool2Loops], ids=["vectorized", "loops"])
@pytest.mark.parametrize("tie_policy", TIE_POLICIES)
def test_odd_sizes_floor(cls, tie_policy):
    """(5, 7, 2) pools to (2, 3, 2): the last row and column are dropped, and get zero gradient."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 7, 2))
    pool = cls(tie_policy)
    out = pool.forward(x)
    assert out.shape == (2, 3, 2)
    expected = x[:4, :6].reshape(2, 2, 3, 2, 2).max(axis=(1, 3))
    np.testing.assert_array_equal(out, expected)
    d_in = pool.backward(np.ones_like(out))
    assert d_in.shape == x.shape
    assert not d_in[4].any() and not d_in[:, 6].any()
    assert d_in.sum() == out.size  # no ties: one routed element per window


@pytest.mark.parametrize("cls", [MaxPool2, MaxPool2Loops], ids=["vectorized", "loops"])
def test_tied_windows_count(cls):
    """tied_windows counts (window, channel) pairs whose max occurs more than once; it resets each forward."""
    x = np.zeros((4, 6, 2))
    x[0:2, 0:2, 0] = [[5, 1], [2, 3]]  # untied
    x[0:2, 2:4, 0] = [[5, 5], [2, 3]]  # tied
    x[2:4, 4:6, 1] = [[-1, -2], [-3, -4]]  # untied (max -1 once)
    # every other (window, channel) is all zeros: tied. 6 windows x 2 channels = 12; untied: 2.
    pool = cls("first")
    pool.forward(x)
    assert pool.tied_windows == 10
    pool.forward(np.random.default_rng(0).standard_normal((4, 6, 2)))
    assert pool.tied_windows == 0


@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed{s}")
def test_tie_rate_on_real_digits_is_about_sixty_percent(seed):
    """Flat MNIST background + a bias-free conv: ~60% of pool windows tie at init (measured 0.60-0.63).

    This is why the tie policy matters: with "all", a tied window passes its gradient on up to 4 times.
    """
    net = scratch.tutorial_network(seed)
    digits = first_train_digits(20)
    tied = sum(net.forward_backward(image, label).tied_windows for image, label in digits)
    rate = tied / (len(digits) * 13 * 13 * 8)
    assert 0.4 <= rate <= 0.8, f"tie rate {rate:.3f}"


def test_tie_policies_differ_on_real_digits_but_agree_forward():
    """On a real digit, "first" and "all" share every forward tensor but not the backward ones."""
    image, label = first_train_digits(1)[0]
    first = scratch.tutorial_network(0, tie_policy="first").forward_backward(image, label)
    every = scratch.tutorial_network(0, tie_policy="all").forward_backward(image, label)
    for name in scratch.FORWARD_TENSORS + ("d_logits", "d_dense_weights", "d_dense_biases", "d_pool_out"):
        np.testing.assert_array_equal(first.tensors[name], every.tensors[name], err_msg=name)
    assert not np.allclose(first.tensors["d_filters"], every.tensors["d_filters"])
    # "all" only ever adds copies: wherever "first" routed a gradient, "all" routed the same value.
    routed = first.tensors["d_conv_out"] != 0
    np.testing.assert_array_equal(every.tensors["d_conv_out"][routed], first.tensors["d_conv_out"][routed])
