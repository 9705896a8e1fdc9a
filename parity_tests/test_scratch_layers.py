"""The scratch layers: vectorised code against the tutorial's loops, dtypes, initialisation, updates, max-pool ties.

NumPy only. The *Loops classes are the tutorial's code line by line (the spec); the vectorised classes must
agree with them to <= 1e-12 in float64 on every named tensor, for the tutorial and for deeper specs, batched or not.
"""

from __future__ import annotations

import numpy as np
import pytest
from scratch_helpers import (
    SMALL_SPECS,
    SOFTMAX_MODES,
    TIE_POLICIES,
    assert_parameters_equal,
    assert_tensors_agree,
    conv_keeps_exact_ties,
    first_train_digits,
    max_scaled_diff,
    network_pair,
    random_uint8_image,
    snapshot,
    step_names,
    total_ties,
    train_batch,
)

import scratch
from scratch import (
    Conv,
    ConvLoops,
    Dense,
    DenseLoops,
    MaxPool,
    MaxPoolLoops,
    ReLU,
    ReLULoops,
    SoftmaxCrossEntropy,
)

TOL64 = 1e-12  # loops vs vectorised, float64
SEEDS = (0, 1, 7)
POOLS = [MaxPool, MaxPoolLoops]
POOL_IDS = ["vectorized", "loops"]


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
        assert tuple(t_vec.tensors) == step_names(vec)
        assert_tensors_agree(t_vec.tensors, t_loops.tensors, TOL64, where=f"step {step}")
        assert t_vec.tied_windows == t_loops.tied_windows
        assert t_vec.correct == t_loops.correct
        if kind == "constant":  # a constant image makes every conv output of a filter equal: all windows tie
            assert t_vec.tied_windows == {"pool1": t_vec.tensors["pool1.out"].size}
        vec.update(0.005)
        loops.update(0.005)
        assert_tensors_agree(vec.parameters(), loops.parameters(), TOL64, where=f"params after step {step}")


@pytest.mark.parametrize("batch", [1, 3], ids=["batch1", "batch3"])
@pytest.mark.parametrize("softmax", SOFTMAX_MODES)
@pytest.mark.parametrize("tie_policy", TIE_POLICIES)
@pytest.mark.parametrize("case", SMALL_SPECS)
def test_loops_and_vectorized_agree_on_every_tensor_of_any_spec(case, tie_policy, softmax, batch):
    """Deeper specs (relu, biases, K = 5, channels > 1, pool3 on odd sizes) and batches: every tensor of two SGD
    steps, the parameters after each update included, loops == vectorised to 1e-12 (float64)."""
    text, shape = SMALL_SPECS[case]
    vec, loops = network_pair(2, spec=text, image_shape=shape, tie_policy=tie_policy, softmax=softmax)
    rng = np.random.default_rng(batch)
    for step in range(2):
        if shape == (28, 28):
            images, labels = train_batch(batch * step, batch)
        else:
            images, labels = random_uint8_image(rng, (batch, *shape)), rng.integers(0, 10, size=batch)
        t_vec, t_loops = vec.forward_backward(images, labels), loops.forward_backward(images, labels)
        assert t_vec.tied_windows == t_loops.tied_windows and t_vec.correct == t_loops.correct
        vec.update(0.005)
        loops.update(0.005)
        tensors_vec = {**t_vec.tensors, **vec.parameters()}
        tensors_loops = {**t_loops.tensors, **loops.parameters()}
        assert tuple(tensors_vec) == vec.spec.tensor_names, "not every tensor of the spec was produced"
        assert_tensors_agree(tensors_vec, tensors_loops, TOL64, where=f"{text} batch {batch} step {step}")
        assert tensors_vec["conv1.d_in"].shape == (batch, *shape, 1)
        assert tensors_vec["probs"].shape == (batch, 10) and tensors_vec["loss"].shape == ()


def test_loops_and_vectorized_agree_over_thirty_training_steps():
    """Drift does not build up: 30 SGD steps on real digits, losses and weights still agree to 1e-12."""
    vec, loops = network_pair(3)
    for image, label in first_train_digits(30):
        loss_vec, correct_vec = vec.train_step(image, label)
        loss_loops, correct_loops = loops.train_step(image, label)
        assert abs(loss_vec - loss_loops) <= TOL64 and correct_vec == correct_loops
    assert_tensors_agree(vec.parameters(), loops.parameters(), TOL64)


def test_conv_keeps_exact_ties_in_float64():
    """The float64 default keeps them on every kernel: its loops-vs-vectorised agreement is unconditional."""
    assert conv_keeps_exact_ties(np.float64)


ROUTED = ("pool1.d_in", "conv1.d_filters", "conv1.d_in")  # what depends on which window element is the max


@pytest.mark.parametrize("tie_policy", TIE_POLICIES)
def test_loops_and_vectorized_agree_in_float32(tie_policy):
    """float32 too (to float32 round-off, since the two sum in different orders).

    Where the BLAS breaks exact ties by row (see `conv_keeps_exact_ties`), a window tied in the loops is a near-tie
    in the vectorised code, whose gradient goes to its own first maximum: every such difference must be exactly
    that flip (a window tied in the loops, routed to one of its maxima, with the window's gradient), and the conv
    backward of the rerouted gradient must still agree with the loops' conv.
    """
    keeps_ties = conv_keeps_exact_ties()
    vec, loops = network_pair(0, np.float32, tie_policy=tie_policy)
    for image, label in first_train_digits(3):
        t_vec, t_loops = vec.forward_backward(image, label), loops.forward_backward(image, label)
        assert t_vec.tied_windows == t_loops.tied_windows
        if keeps_ties:
            assert_tensors_agree(t_vec.tensors, t_loops.tensors, 1e-5)
            continue
        unrouted = [name for name in t_vec.tensors if name not in ROUTED]
        assert_tensors_agree(*({name: t.tensors[name] for name in unrouted} for t in (t_vec, t_loops)), 1e-5)
        d_vec, d_loops = t_vec.tensors["pool1.d_in"][0], t_loops.tensors["pool1.d_in"][0]
        conv_loops, d_pool = t_loops.tensors["conv1.out"][0], t_vec.tensors["dense1.d_in"][0]
        flipped = {(i // 2, j // 2, c) for i, j, c in np.argwhere(np.abs(d_vec - d_loops) > 1e-5)}
        assert flipped, "the BLAS breaks exact ties, so some window should flip"
        for i, j, c in flipped:
            window = conv_loops[2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c]
            routed = d_vec[2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c] != 0
            assert np.count_nonzero(window == window.max()) > 1, f"window {(i, j, c)} differs but is not tied"
            assert routed.any() and (window[routed] == window.max()).all(), f"window {(i, j, c)}: not to a maximum"
            np.testing.assert_allclose(d_vec[2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c][routed], d_pool[i, j, c])
            if tie_policy == "first":
                assert np.count_nonzero(routed) == 1
        conv = ConvLoops(3, 8, dtype=np.float32)
        conv.filters[...] = vec.parameters()["conv1.filters"]
        conv.forward(vec.normalize(image))
        d_image = conv.backward(t_vec.tensors["pool1.d_in"])
        assert max_scaled_diff(t_vec.tensors["conv1.d_in"], d_image) <= 1e-5
        assert max_scaled_diff(t_vec.tensors["conv1.d_filters"], conv.grads["filters"]) <= 1e-5


# --- each layer alone ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kernel, in_channels, bias, shape",
    [
        (3, 1, False, (1, 28, 28, 1)),
        (3, 1, False, (1, 11, 13, 1)),
        (3, 1, False, (1, 3, 3, 1)),
        (3, 3, False, (1, 9, 8, 3)),
        (3, 1, False, (1, 6, 7, 1)),
        (3, 5, False, (1, 3, 4, 5)),
        (5, 3, True, (2, 9, 8, 3)),
        (5, 1, True, (3, 7, 6, 1)),
        (1, 2, True, (2, 4, 4, 2)),
    ],
    ids=["28x28", "11x13", "3x3", "9x8x3", "6x7x1", "3x4x5", "k5-bias-2x9x8x3", "k5-bias-3x7x6x1", "k1-bias-2x4x4x2"],
)
def test_conv_layer_loops_and_vectorized_agree(kernel, in_channels, bias, shape):
    """Conv alone, NHWC input with one or more channels, any K, with and without bias: output, d_input, grads."""
    rng = np.random.default_rng(5)
    vec = Conv(kernel, 4, in_channels, bias, rng=np.random.default_rng(1))
    loops = ConvLoops(kernel, 4, in_channels, bias, rng=np.random.default_rng(1))
    expected_filters = (4, kernel, kernel) if in_channels == 1 else (4, kernel, kernel, in_channels)
    assert vec.filters.shape == expected_filters
    if bias:  # a nonzero bias, so that adding it is tested
        vec.biases[...] = loops.biases[...] = rng.standard_normal(4)
    x = rng.standard_normal(shape)
    out_vec, out_loops = vec.forward(x), loops.forward(x)
    assert out_vec.shape == (shape[0], shape[1] - kernel + 1, shape[2] - kernel + 1, 4)
    assert max_scaled_diff(out_vec, out_loops) <= TOL64
    d_out = rng.standard_normal(out_vec.shape)
    d_in_vec, d_in_loops = vec.backward(d_out), loops.backward(d_out)
    assert d_in_vec.shape == x.shape == d_in_loops.shape
    assert max_scaled_diff(d_in_vec, d_in_loops) <= TOL64
    assert set(vec.grads) == set(loops.grads) == ({"filters", "biases"} if bias else {"filters"})
    assert vec.grads["filters"].shape == vec.filters.shape
    for name in vec.grads:
        assert max_scaled_diff(vec.grads[name], loops.grads[name]) <= TOL64, name
    if bias:
        np.testing.assert_allclose(vec.grads["biases"], d_out.sum(axis=(0, 1, 2)), rtol=1e-13)


@pytest.mark.parametrize("cls", [Conv, ConvLoops], ids=["vectorized", "loops"])
def test_conv_is_cross_correlation_without_flip(cls):
    """out[n, i, j, f] = sum_kl x[n, i+k, j+l] * filters[f, k, l]: checked on a single-hot filter (no flip, no bias)."""
    conv = cls(3, 1)
    conv.filters[...] = 0.0
    conv.filters[0, 0, 2] = 1.0  # picks x[i, j + 2]
    x = np.arange(60.0).reshape(2, 5, 6, 1)
    np.testing.assert_array_equal(conv.forward(x)[..., 0], x[:, 0:3, 2:6, 0])


@pytest.mark.parametrize("cls", [Conv, ConvLoops], ids=["vectorized", "loops"])
def test_conv_channels_are_the_last_filter_axis(cls):
    """With channels, filters are (F, K, K, C): filter f reads channel c through filters[f, :, :, c]."""
    conv = cls(2, 1, in_channels=3)
    conv.filters[...] = 0.0
    conv.filters[0, 1, 0, 2] = 1.0  # picks x[i + 1, j, channel 2]
    x = np.arange(2 * 4 * 5 * 3, dtype=np.float64).reshape(2, 4, 5, 3)
    np.testing.assert_array_equal(conv.forward(x)[..., 0], x[:, 1:4, 0:4, 2])


POOL_CASES = [(1, 26, 26, 8), (1, 5, 7, 2), (1, 2, 2, 1), (1, 3, 3, 4), (3, 7, 8, 2)]


@pytest.mark.parametrize("tie_policy", TIE_POLICIES)
@pytest.mark.parametrize(
    "kernel, shape",
    [(kernel, shape) for kernel in (2, 3) for shape in POOL_CASES if kernel <= min(shape[1:3])],
    ids=lambda v: f"pool{v}" if isinstance(v, int) else "x".join(map(str, v)),
)
@pytest.mark.parametrize("values", ["continuous", "few-levels"])
def test_maxpool_layer_loops_and_vectorized_agree(kernel, shape, tie_policy, values):
    """MaxPool alone (K = 2 and 3): output, d_input and the tie count, with and without ties (few levels -> ties)."""
    rng = np.random.default_rng(11)
    if values == "continuous":
        x = rng.standard_normal(shape)
    else:
        x = rng.integers(0, 3, size=shape).astype(np.float64)
        x[0, 0, 0:2, 0] = 3.0  # at least one tie: the first window's top row holds its max twice
    vec, loops = MaxPool(kernel, tie_policy), MaxPoolLoops(kernel, tie_policy)
    out_vec, out_loops = vec.forward(x), loops.forward(x)
    assert out_vec.shape == (shape[0], shape[1] // kernel, shape[2] // kernel, shape[3])
    np.testing.assert_array_equal(out_vec, out_loops)
    assert vec.tied_windows == loops.tied_windows
    if values == "continuous":
        assert vec.tied_windows == 0
    else:
        assert vec.tied_windows > 0
    d_out = rng.standard_normal(out_vec.shape)
    d_input = vec.backward(d_out)
    np.testing.assert_array_equal(d_input, loops.backward(d_out))
    assert d_input.flags.c_contiguous  # as every layer's output


@pytest.mark.parametrize("tie_policy", TIE_POLICIES)
@pytest.mark.parametrize("kernel, shape", [(2, (3, 2, 2, 8)), (3, (3, 3, 3, 2)), (2, (2, 26, 26, 8))])
def test_maxpool_backward_is_contiguous_whatever_the_input_layout(kernel, shape, tie_policy):
    """A Fortran-ordered input gives the C-ordered input's gradient, C-contiguous (one window per image of a batch is
    where NumPy would otherwise hand back a strided view)."""
    x = np.random.default_rng(5).integers(0, 3, size=shape).astype(np.float64)  # ties, so both policies route
    c_pool, f_pool = MaxPool(kernel, tie_policy), MaxPool(kernel, tie_policy)
    d_out = np.random.default_rng(6).standard_normal(c_pool.forward(x).shape)
    f_pool.forward(np.asfortranarray(x))
    d_input = f_pool.backward(d_out)
    assert d_input.flags.c_contiguous
    np.testing.assert_array_equal(d_input, c_pool.backward(d_out))


@pytest.mark.parametrize("batch", [1, 3])
def test_dense_layer_loops_and_vectorized_agree(batch):
    """Dense alone (the tutorial's `Softmax` without its softmax): totals, d_input and both gradients."""
    rng = np.random.default_rng(2)
    vec = Dense(24, 10, rng=np.random.default_rng(4))
    loops = DenseLoops(24, 10, rng=np.random.default_rng(4))
    vec.biases[...] = loops.biases[...] = rng.standard_normal(10)
    x = rng.standard_normal((batch, 2, 3, 4))
    t_vec, t_loops = vec.forward(x), loops.forward(x)
    assert t_vec.shape == (batch, 10)
    assert max_scaled_diff(t_vec, t_loops) <= TOL64
    loss = SoftmaxCrossEntropy()
    loss.forward(t_vec, np.arange(batch) * 9 % 10)  # labels 0 and 9 among them
    for d_logits in (loss.backward(), rng.standard_normal((batch, 10))):  # the loss's dL/dlogits, then any gradient
        d_x_vec, d_x_loops = vec.backward(d_logits), loops.backward(d_logits)
        assert d_x_vec.shape == x.shape == d_x_loops.shape
        assert max_scaled_diff(d_x_vec, d_x_loops) <= TOL64
        for name in ("weights", "biases"):
            assert vec.grads[name].shape == getattr(vec, name).shape
            assert max_scaled_diff(vec.grads[name], loops.grads[name]) <= TOL64, name


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("mode", SOFTMAX_MODES)
def test_softmax_cross_entropy_modes(mode, batch):
    """Probabilities sum to 1, the loss is the mean of -log p[label], and dL/dlogits = (p - onehot) / N, whichever
    route computed it (the tutorial's goes through its -1/p gradient and the e^t / S^2 Jacobian)."""
    rng = np.random.default_rng(2)
    logits = 3 * rng.standard_normal((batch, 10))
    labels = np.array([0, 9, 4, 9][:batch])
    loss = SoftmaxCrossEntropy(mode)
    probs, mean_loss = loss.forward(logits, labels)
    assert probs.shape == (batch, 10) and mean_loss.shape == ()
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=0, atol=1e-15 * 10)
    rows = np.arange(batch)
    assert float(mean_loss) == pytest.approx(float(np.mean(-np.log(probs[rows, labels]))), rel=1e-13)
    expected = probs.copy()
    expected[rows, labels] -= 1
    d_logits = loss.backward()
    assert d_logits.shape == (batch, 10)
    assert max_scaled_diff(d_logits, expected / batch) <= TOL64
    stable = SoftmaxCrossEntropy("stable")
    stable_probs, stable_loss = stable.forward(logits, labels)
    assert max_scaled_diff(probs, stable_probs) <= TOL64 and abs(float(mean_loss - stable_loss)) <= TOL64
    assert max_scaled_diff(d_logits, stable.backward()) <= TOL64


def test_dense_flattens_hwc():
    """The dense layer reads its (H, W, C) input in HWC order: flat index (i*W + j)*C + c."""
    for cls in (Dense, DenseLoops):
        layer = cls(2 * 3 * 4, 2)
        layer.weights[...] = 0.0
        layer.weights[(1 * 3 + 2) * 4 + 3, 0] = 1.0  # the weight for x[1, 2, 3]
        x = np.zeros((1, 2, 3, 4))
        x[0, 1, 2, 3] = 5.0
        np.testing.assert_array_equal(layer.forward(x), [[5.0, 0.0]])


@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (3, 7)], ids=["nhwc", "flat"])
def test_relu_layer_loops_and_vectorized_agree(shape):
    """ReLU alone: max(x, 0), and the gradient only where x > 0 (exact zeros at 0, as PyTorch)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape)
    x.flat[::5] = 0.0  # exact zeros: the kink, where the gradient is 0
    vec, loops = ReLU(), ReLULoops()
    out_vec, out_loops = vec.forward(x), loops.forward(x)
    np.testing.assert_array_equal(out_vec, np.maximum(x, 0))
    np.testing.assert_array_equal(out_vec, out_loops)
    d_out = rng.standard_normal(shape)
    d_vec, d_loops = vec.backward(d_out), loops.backward(d_out)
    np.testing.assert_array_equal(d_vec, np.where(x > 0, d_out, 0.0))
    np.testing.assert_array_equal(d_vec, d_loops)
    assert not np.signbit(d_vec[x <= 0]).any(), "a -0.0 gradient where the input was not positive"


# --- dtypes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["tutorial", "bias-two-dense"])
@pytest.mark.parametrize("impl", scratch.IMPLEMENTATIONS)
@pytest.mark.parametrize("softmax", SOFTMAX_MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_dtype_is_preserved(dtype, softmax, impl, case):
    """Every tensor is in the network's dtype, and the parameters stay in it (in place) through training."""
    text, _ = SMALL_SPECS[case]
    net = scratch.build_network(text, 0, dtype, softmax=softmax, impl=impl)
    live = net.parameters()
    for name, value in live.items():
        assert value.dtype == dtype, name
    image, label = first_train_digits(1)[0]
    trace = net.forward_backward(image, label)
    for name, value in trace.tensors.items():
        assert np.asarray(value).dtype == dtype, f"{name} is {np.asarray(value).dtype}"
    for image, label in first_train_digits(3):
        loss, correct = net.train_step(image, label, lr=0.005)
        assert isinstance(loss, float) and type(correct) is int and correct in (0, 1)
    images, labels = train_batch(3, 4)
    loss, correct = net.train_step(images, labels, lr=0.005)
    assert isinstance(loss, float) and type(correct) is int and 0 <= correct <= 4
    for name, value in net.parameters().items():
        assert value.dtype == dtype, f"{name} became {value.dtype}"
        assert value is live[name], f"{name} was replaced, not updated in place"
    # Float raw pixels are fine too: normalised into the network's dtype.
    trace = net.forward_backward(image.astype(np.float64), label)
    assert all(np.asarray(v).dtype == dtype for v in trace.tensors.values())


# --- initialisation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 4])
def test_tutorial_init_draws_filters_then_dense_weights_from_one_generator(seed):
    """The tutorial's init: filters randn(8, 3, 3) / 9, then dense weights randn(1352, 10) / 1352, drawn in that
    order from one `np.random.default_rng(seed)`; zero biases."""
    rng = np.random.default_rng(seed)
    filters = rng.standard_normal((8, 3, 3)) / 9
    weights = rng.standard_normal((1352, 10)) / 1352
    for net in (scratch.build_network(scratch.DEFAULT_SPEC, seed), scratch.tutorial_network(seed)):
        params = net.parameters()
        assert list(params) == ["conv1.filters", "dense1.weights", "dense1.biases"]
        np.testing.assert_array_equal(params["conv1.filters"], filters)
        np.testing.assert_array_equal(params["dense1.weights"], weights)
        np.testing.assert_array_equal(params["dense1.biases"], np.zeros(10))
        assert all(value.dtype == np.float64 for value in params.values())


@pytest.mark.parametrize("case", ["deep", "bias-two-dense"])
def test_any_spec_init_draws_layer_by_layer_from_one_generator(case):
    """Any spec: conv filters randn / (K*K), dense weights randn / fan_in, in layer order from one Generator
    (relu and pool draw nothing); every bias zero."""
    text, shape = SMALL_SPECS[case]
    net = scratch.build_network(text, 3, image_shape=shape)
    rng = np.random.default_rng(3)
    params = net.parameters()
    assert tuple(params) == net.spec.parameter_names
    for layer in net.spec.layers:
        for param, param_shape in layer.params:
            value = params[f"{layer.name}.{param}"]
            assert value.shape == param_shape
            if param == "biases":
                np.testing.assert_array_equal(value, np.zeros(param_shape))
            else:
                scale = layer.kernel**2 if layer.kind == "conv" else layer.fan_in
                np.testing.assert_array_equal(value, rng.standard_normal(param_shape) / scale, err_msg=layer.name)


@pytest.mark.parametrize("case", ["tutorial", "deep", "bias-two-dense"])
def test_float32_network_starts_from_rounded_float64_weights(case):
    """The float32 init is the float64 init rounded, so the two can be compared step by step."""
    text, shape = SMALL_SPECS[case]
    w64 = scratch.build_network(text, 4, np.float64, image_shape=shape).parameters()
    w32 = scratch.build_network(text, 4, np.float32, image_shape=shape).parameters()
    assert list(w32) == list(w64)
    for name in w64:
        assert w32[name].dtype == np.float32
        np.testing.assert_array_equal(w32[name], w64[name].astype(np.float32))
    if case == "tutorial":
        w32 = scratch.tutorial_network(4, np.float32).parameters()
        for name in w64:
            np.testing.assert_array_equal(w32[name], w64[name].astype(np.float32))


def test_seeds_give_reproducible_and_distinct_weights():
    a, b, c = (scratch.build_network(scratch.DEFAULT_SPEC, seed).parameters() for seed in (5, 5, 6))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["conv1.filters"], c["conv1.filters"])


# --- backward vs update ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["tutorial", "bias-two-dense"])
@pytest.mark.parametrize("impl", scratch.IMPLEMENTATIONS)
def test_backward_moves_no_weight_and_update_applies_sgd(impl, case):
    """forward_backward leaves every weight alone; update(lr) then applies exactly param -= lr * grad."""
    text, shape = SMALL_SPECS[case]
    net = scratch.build_network(text, 2, impl=impl, image_shape=shape)
    if case == "tutorial":
        image, label = first_train_digits(1)[0]
    else:
        image, label = random_uint8_image(np.random.default_rng(2), shape), 3
    before = snapshot(net)
    trace = net.forward_backward(image, label)
    assert_parameters_equal(net, before)
    trace_again = net.forward_backward(image, label)  # nothing moved, so the same step again
    assert_tensors_agree(trace_again.tensors, trace.tensors, 0.0)
    lr = 0.01
    net.update(lr)
    for name, value in net.parameters().items():
        layer, param = name.split(".")
        expected = before[name] - lr * trace.tensors[f"{layer}.d_{param}"]
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


@pytest.mark.parametrize("case", ["tutorial", "bias-two-dense"])
@pytest.mark.parametrize("impl", scratch.IMPLEMENTATIONS)
def test_each_layer_backward_moves_no_weight(impl, case):
    """Layer by layer: backward fills grads and returns d_input, but changes no parameter."""
    text, shape = SMALL_SPECS[case]
    net = scratch.build_network(text, 1, impl=impl, image_shape=shape)
    image = first_train_digits(1)[0][0] if case == "tutorial" else random_uint8_image(np.random.default_rng(1), shape)
    trace = net.forward_backward(image, 4)
    rng = np.random.default_rng(0)
    for layer_spec, layer in zip(net.spec.layers, net.layers, strict=True):
        assert net.layer(layer_spec.name) is layer
        before = {name: value.copy() for name, value in layer.parameters().items()}
        d_out = rng.standard_normal(trace.tensors[f"{layer_spec.name}.out"].shape)
        d_in = layer.backward(d_out)
        assert d_in.shape == (1, *layer_spec.in_shape)
        assert set(layer.grads) == set(layer.param_names) == {param for param, _ in layer_spec.params}
        for name, value in layer.parameters().items():
            np.testing.assert_array_equal(value, before[name], err_msg=f"{layer_spec.name}.{name} moved")


@pytest.mark.parametrize("impl", scratch.IMPLEMENTATIONS)
@pytest.mark.parametrize("softmax", SOFTMAX_MODES)
def test_backprop_is_backward_then_update(impl, softmax):
    """The tutorial's `backprop(d, lr)` == `backward(d)` then `update(lr)`, layer by layer, on a real digit."""
    a = scratch.tutorial_network(0, softmax=softmax, impl=impl)
    b = scratch.tutorial_network(0, softmax=softmax, impl=impl)
    image, label = first_train_digits(1)[0]
    lr = 0.005
    gradients = []
    for net in (a, b):
        net.loss.forward(net.logits(image), np.array([label]))
        gradients.append(net.loss.backward())  # dL/dlogits (the tutorial mode through its -1/p gradient)
    np.testing.assert_array_equal(gradients[0], gradients[1])
    # a: the tutorial's chain of backprop calls.
    g_a = gradients[0]
    for layer in reversed(a.layers):
        g_a = layer.backprop(g_a, lr)
    # b: backward everywhere first, then update.
    g_b = gradients[1]
    for layer in reversed(b.layers):
        g_b = layer.backward(g_b)
    for layer in b.layers:
        layer.update(lr)
    np.testing.assert_array_equal(g_a, g_b)
    assert_tensors_agree(a.parameters(), b.parameters(), 0.0)


@pytest.mark.parametrize("cls", [Dense, DenseLoops], ids=["vectorized", "loops"])
def test_dense_backprop_uses_weights_before_the_update(cls):
    """As in the tutorial, the input gradient is computed with the weights *before* they move."""
    layer = cls(6, 3, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((1, 6))
    layer.forward(x)
    w_before = layer.weights.copy()
    gradient = np.array([[0.1, -0.7, 0.6]])
    d_x = layer.backprop(gradient, 0.5)
    if cls is Dense:  # the same product, so bit for bit
        np.testing.assert_array_equal(d_x, gradient @ w_before.T)
    else:  # the tutorial's W . d, one sample at a time
        np.testing.assert_array_equal(d_x, (w_before @ gradient[0])[np.newaxis])
    assert not np.array_equal(layer.weights, w_before)


# --- max-pool tie policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", POOLS, ids=POOL_IDS)
@pytest.mark.parametrize(
    "tie_policy, expected",
    [("first", [[1.0, 0.0], [0.0, 0.0]]), ("all", [[1.0, 1.0], [1.0, 1.0]])],
    ids=["first", "all"],
)
def test_fully_tied_window_routing(cls, tie_policy, expected):
    """[[1, 1], [1, 1]]: "first" routes to (0, 0) only (PyTorch), "all" to all four (the tutorial)."""
    pool = cls(2, tie_policy)
    out = pool.forward(np.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(out, [[[[1.0]]]])
    assert pool.tied_windows == 1
    d_in = pool.backward(np.full((1, 1, 1, 1), 2.5))
    np.testing.assert_array_equal(d_in[0, ..., 0], 2.5 * np.array(expected))


@pytest.mark.parametrize("cls", POOLS, ids=POOL_IDS)
@pytest.mark.parametrize("tie_policy", TIE_POLICIES)
def test_fully_tied_3x3_window_routing(cls, tie_policy):
    """A tied 3x3 window: "first" routes to (0, 0) only, "all" to all nine."""
    pool = cls(3, tie_policy)
    np.testing.assert_array_equal(pool.forward(np.full((1, 3, 3, 1), -2.0)), [[[[-2.0]]]])
    assert pool.tied_windows == 1
    d_in = pool.backward(np.full((1, 1, 1, 1), 1.5))[0, ..., 0]
    expected = np.full((3, 3), 1.5) if tie_policy == "all" else np.pad([[1.5]], ((0, 2), (0, 2)))
    np.testing.assert_array_equal(d_in, expected)


@pytest.mark.parametrize("cls", POOLS, ids=POOL_IDS)
@pytest.mark.parametrize(
    "window, first_index",
    [
        ([[0, 1], [0, 1]], (0, 1)),
        ([[0, 0], [1, 1]], (1, 0)),
        ([[2, 0], [0, 2]], (0, 0)),
        ([[0, 3], [3, 3]], (0, 1)),
        ([[0, 0, 1], [0, 1, 0], [1, 0, 0]], (0, 2)),
        ([[0, 0, 0], [0, 0, 4], [4, 0, 0]], (1, 2)),
    ],
    ids=["right-column", "bottom-row", "diagonal", "three-way", "3x3-anti-diagonal", "3x3-two-rows"],
)
def test_partial_tie_first_max_is_row_major(cls, window, first_index):
    """Under "first" the earliest maximum in row-major order wins; under "all" every maximum gets it."""
    x = np.array(window, dtype=np.float64)[np.newaxis, ..., np.newaxis]
    size = x.shape[1]
    first, every = cls(size, "first"), cls(size, "all")
    first.forward(x)
    every.forward(x)
    assert first.tied_windows == every.tied_windows == 1
    expected_first = np.zeros((size, size))
    expected_first[first_index] = 1.0
    np.testing.assert_array_equal(first.backward(np.ones((1, 1, 1, 1)))[0, ..., 0], expected_first)
    expected_all = (x[0, ..., 0] == x.max()).astype(float)
    np.testing.assert_array_equal(every.backward(np.ones((1, 1, 1, 1)))[0, ..., 0], expected_all)


@pytest.mark.parametrize("cls", POOLS, ids=POOL_IDS)
def test_ties_are_per_channel(cls):
    """Channel 0 tied, channel 1 not: one tied window, and each channel routes on its own."""
    x = np.stack([np.ones((2, 2)), np.array([[0.0, 4.0], [1.0, 2.0]])], axis=-1)[np.newaxis]
    pool = cls(2, "first")
    np.testing.assert_array_equal(pool.forward(x), [[[[1.0, 4.0]]]])
    assert pool.tied_windows == 1
    d_in = pool.backward(np.array([[[[1.0, 2.0]]]]))
    np.testing.assert_array_equal(d_in[0, ..., 0], [[1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(d_in[0, ..., 1], [[0.0, 2.0], [0.0, 0.0]])


@pytest.mark.parametrize("cls", POOLS, ids=POOL_IDS)
def test_ties_are_per_sample(cls):
    """Sample 0 tied, sample 1 not: one tied window; each sample routes on its own."""
    x = np.stack([np.ones((2, 2)), np.array([[0.0, 1.0], [3.0, 2.0]])])[..., np.newaxis]
    pool = cls(2, "all")
    np.testing.assert_array_equal(pool.forward(x)[:, 0, 0, 0], [1.0, 3.0])
    assert pool.tied_windows == 1
    d_in = pool.backward(np.ones((2, 1, 1, 1)))
    np.testing.assert_array_equal(d_in[..., 0], [np.ones((2, 2)), [[0.0, 0.0], [1.0, 0.0]]])


@pytest.mark.parametrize("cls", POOLS, ids=POOL_IDS)
@pytest.mark.parametrize("tie_policy", TIE_POLICIES)
@pytest.mark.parametrize(
    "kernel, shape, pooled", [(2, (5, 7, 2), (2, 3, 2)), (3, (7, 8, 2), (2, 2, 2))], ids=["pool2-5x7", "pool3-7x8"]
)
def test_odd_sizes_floor(cls, tie_policy, kernel, shape, pooled):
    """(5, 7, 2) pools to (2, 3, 2) (K = 2), (7, 8, 2) to (2, 2, 2) (K = 3): the leftover rows and columns are
    dropped, and get zero gradient."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, *shape))
    pool = cls(kernel, tie_policy)
    out = pool.forward(x)
    assert out.shape == (2, *pooled)
    rows, cols = kernel * pooled[0], kernel * pooled[1]
    expected = x[:, :rows, :cols].reshape(2, pooled[0], kernel, pooled[1], kernel, 2).max(axis=(2, 4))
    np.testing.assert_array_equal(out, expected)
    d_in = pool.backward(np.ones_like(out))
    assert d_in.shape == x.shape
    assert not d_in[:, rows:].any() and not d_in[:, :, cols:].any()
    assert d_in.sum() == out.size  # no ties: one routed element per window


@pytest.mark.parametrize("cls", POOLS, ids=POOL_IDS)
def test_tied_windows_count(cls):
    """tied_windows counts (sample, window, channel) triples whose max occurs more than once; it resets each
    forward."""
    x = np.zeros((1, 4, 6, 2))
    x[0, 0:2, 0:2, 0] = [[5, 1], [2, 3]]  # untied
    x[0, 0:2, 2:4, 0] = [[5, 5], [2, 3]]  # tied
    x[0, 2:4, 4:6, 1] = [[-1, -2], [-3, -4]]  # untied (max -1 once)
    # every other (window, channel) is all zeros: tied. 6 windows x 2 channels = 12; untied: 2.
    pool = cls(2, "first")
    pool.forward(x)
    assert pool.tied_windows == 10
    pool.forward(np.concatenate([x, x]))  # two samples: twice the count
    assert pool.tied_windows == 20
    pool.forward(np.random.default_rng(0).standard_normal((1, 4, 6, 2)))
    assert pool.tied_windows == 0


@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed{s}")
def test_tie_rate_on_real_digits_is_about_sixty_percent(seed):
    """Flat MNIST background + a bias-free conv: ~60% of pool windows tie at init (measured 0.60-0.63).

    This is why the tie policy matters: with "all", a tied window passes its gradient on up to 4 times.
    """
    net = scratch.tutorial_network(seed)
    digits = first_train_digits(20)
    tied = sum(net.forward_backward(image, label).tied_windows["pool1"] for image, label in digits)
    rate = tied / (len(digits) * 13 * 13 * 8)
    assert 0.4 <= rate <= 0.8, f"tie rate {rate:.3f}"
    images, labels = train_batch(0, 20)  # counted over a batch, the same windows tie
    assert total_ties(net.forward_backward(images, labels)) == tied


def test_tie_policies_differ_on_real_digits_but_agree_forward():
    """On a real digit, "first" and "all" share every forward tensor but not the backward ones."""
    image, label = first_train_digits(1)[0]
    first = scratch.tutorial_network(0, tie_policy="first").forward_backward(image, label)
    every = scratch.tutorial_network(0, tie_policy="all").forward_backward(image, label)
    forward = [info.name for info in scratch.parse_spec().tensors if info.phase == "forward"]
    assert forward == ["conv1.out", "pool1.out", "dense1.out", "probs", "loss"]
    for name in forward + ["dense1.d_out", "dense1.d_weights", "dense1.d_biases", "dense1.d_in"]:
        np.testing.assert_array_equal(first.tensors[name], every.tensors[name], err_msg=name)
    assert not np.allclose(first.tensors["conv1.d_filters"], every.tensors["conv1.d_filters"])
    # "all" only ever adds copies: wherever "first" routed a gradient, "all" routed the same value.
    routed = first.tensors["pool1.d_in"] != 0
    np.testing.assert_array_equal(every.tensors["pool1.d_in"][routed], first.tensors["pool1.d_in"][routed])
