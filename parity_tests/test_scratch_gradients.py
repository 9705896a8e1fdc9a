"""Finite-difference checks of every scratch gradient, batches, and what happens at max-pool ties.

NumPy only. Central differences (float64, eps 1e-6) must match the analytical gradients to a relative error of
1e-6 at points with no kink: no tied pool window, no max within reach of its runner-up, no ReLU input near 0
(continuous random images). At a tie the max is not differentiable, and finite differences and the first-max rule
legitimately disagree: see `test_at_a_tie_*`.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scratch_helpers import (
    SMALL_SPECS,
    SOFTMAX_MODES,
    TIE_POLICIES,
    assert_tensors_agree,
    assert_tensors_identical,
    continuous_image,
    max_scaled_diff,
    network_pair,
    random_uint8_image,
    step_tensors,
    total_ties,
    train_batch,
)

import scratch
from scratch import MaxPool, MaxPoolLoops

EPS = 1e-6
REL_TOL = 1e-6


# --- helpers ---------------------------------------------------------------------------------------------


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the batch of -log softmax(logits)[label], by log-sum-exp: what the finite differences
    differentiate (independent of `scratch.loss`)."""
    logits = np.atleast_2d(logits)
    shift = logits.max(axis=1, keepdims=True)
    log_sum = shift[:, 0] + np.log(np.sum(np.exp(logits - shift), axis=1))
    return float(np.mean(log_sum - logits[np.arange(len(logits)), labels]))


def loss_after(net: scratch.Network, start: int, x: np.ndarray, labels: np.ndarray) -> float:
    """The loss as a function of the input `x` of layer `start` (0: the normalised image), forward from there."""
    out = x
    for layer in net.layers[start:]:
        out = layer.forward(out)
    return cross_entropy(out, labels)


def central_difference(f, array: np.ndarray, indices, eps: float = EPS) -> np.ndarray:
    """(f(a + eps e_i) - f(a - eps e_i)) / 2 eps at each index, perturbing `array` in place and restoring it."""
    out = np.empty(len(indices))
    for n, index in enumerate(indices):
        saved = array[index]
        array[index] = saved + eps
        plus = f()
        array[index] = saved - eps
        minus = f()
        array[index] = saved
        out[n] = (plus - minus) / (2 * eps)
    return out


def relative_error(numerical: np.ndarray, analytical: np.ndarray) -> float:
    """||num - ana|| / max(||num||, ||ana||): insensitive to the many tiny or zero entries."""
    scale = max(np.linalg.norm(numerical), np.linalg.norm(analytical))
    assert scale > 0, "both gradients are zero: the check would prove nothing"
    return float(np.linalg.norm(numerical - analytical) / scale)


def all_indices(shape) -> list[tuple[int, ...]]:
    return [tuple(int(i) for i in index) for index in np.ndindex(*shape)]


def sample_indices(rng: np.random.Generator, shape, n: int) -> list[tuple[int, ...]]:
    """`n` distinct random indices (or all of them, if there are fewer)."""
    flat = np.arange(int(np.prod(shape)))
    if len(flat) > n:
        flat = rng.choice(flat, size=n, replace=False)
    return [tuple(int(i) for i in np.unravel_index(k, shape)) for k in flat]


def min_window_gap(x: np.ndarray, kernel: int = 2) -> float:
    """Smallest gap between a K x K pool window's max and its runner-up over an NHWC batch (or one HWC map):
    FD steps below it cross no kink."""
    x = x if x.ndim == 4 else x[np.newaxis]
    batch, height, width, channels = x.shape
    h, w = height // kernel, width // kernel
    cropped = x[:, : h * kernel, : w * kernel]
    windows = cropped.reshape(batch, h, kernel, w, kernel, channels).transpose(0, 1, 3, 5, 2, 4)
    ordered = np.sort(windows.reshape(-1, kernel * kernel), axis=1)
    return float(np.min(ordered[:, -1] - ordered[:, -2]))


def kink_margin(net: scratch.Network, tensors: dict, x: np.ndarray) -> float:
    """How far the point is from any kink: the smallest pool window gap and the smallest |ReLU input|."""
    margins = [np.inf]
    for position, layer in enumerate(net.spec.layers):
        layer_input = x if position == 0 else tensors[f"{net.spec.layers[position - 1].name}.out"]
        if layer.kind == "pool":
            margins.append(min_window_gap(layer_input, layer.kernel))
        elif layer.kind == "relu":
            margins.append(float(np.min(np.abs(layer_input))))
    return min(margins)


def check_every_gradient(
    net: scratch.Network, analytical: dict, x: np.ndarray, labels: np.ndarray, n_sample: int | None
) -> None:
    """Central differences of the whole network's loss w.r.t. every parameter, every layer's input and the
    logits, against each gradient the step names (`*.d_*`): every entry, or `n_sample` of them."""
    rng = np.random.default_rng(99)
    spec = net.spec

    def pick(shape, gradient):
        if n_sample is None:
            return all_indices(shape)
        # Most of a pool's input gradient is zero (not a window max): sample the routed entries too.
        routed = [tuple(int(i) for i in idx) for idx in np.argwhere(gradient != 0)]
        chosen = rng.choice(len(routed), size=min(n_sample, len(routed)), replace=False) if routed else []
        return [routed[k] for k in chosen] + sample_indices(rng, shape, n_sample)

    errors = {}
    params = net.parameters()
    for info in spec.tensors:
        if info.role == "d_param":  # the parameter, perturbed in place; the loss from the image
            array, position, start = params[f"{info.layer}.{info.param}"], 0, x
        elif info.role == "d_in":  # the layer's input: the image or the previous layer's output
            position = [layer.name for layer in spec.layers].index(info.layer)
            array = x.copy() if position == 0 else analytical[f"{spec.layers[position - 1].name}.out"].copy()
            start = array
        elif info.role == "d_out":  # dL/dlogits: the loss as a function of the logits directly
            array = analytical[f"{info.layer}.out"].copy()
            position, start = len(spec.layers), array
        else:
            continue
        gradient = analytical[info.name]
        assert gradient.shape == array.shape, f"{info.name}: shape {gradient.shape}, its variable {array.shape}"
        indices = pick(array.shape, gradient)
        numerical = central_difference(lambda: loss_after(net, position, start, labels), array, indices)  # noqa: B023
        errors[info.name] = relative_error(numerical, np.array([gradient[i] for i in indices]))
    expected = {info.name for info in spec.tensors if info.role in ("d_param", "d_in", "d_out")}
    assert set(errors) == expected, "a gradient went unchecked"
    bad = {name: err for name, err in errors.items() if not err <= REL_TOL}
    assert not bad, f"relative errors above {REL_TOL:g}: {bad}"


# --- gradients at points without ties --------------------------------------------------------------------


@pytest.mark.parametrize("tie_policy", TIE_POLICIES)
@pytest.mark.parametrize("softmax", SOFTMAX_MODES)
@pytest.mark.parametrize("impl", scratch.IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "shape, n_sample, seed",
    [((10, 12), None, 0), ((7, 9), None, 1), ((28, 28), 120, 2)],
    ids=["10x12-every-entry", "7x9-every-entry", "28x28-sampled"],
)
def test_every_gradient_matches_central_differences(shape, n_sample, seed, impl, softmax, tie_policy):
    """The tutorial: conv1.d_filters, dense1.d_weights, dense1.d_biases, conv1.d_in (the image), dense1.d_in
    (pool output), pool1.d_in (conv output), dense1.d_out (logits): relative error <= 1e-6.

    The analytical gradients come from `impl`; the finite differences always run the vectorised forward
    (same seed, same weights; the forwards agree to 1e-12, see test_scratch_layers), which keeps this fast.
    """
    kwargs = dict(image_shape=shape, softmax=softmax, tie_policy=tie_policy)
    net = scratch.tutorial_network(seed, impl=impl, **kwargs)
    rng = np.random.default_rng(seed)
    image, label = continuous_image(rng, shape), int(rng.integers(10))
    trace = net.forward_backward(image, label)
    assert trace.tied_windows == {"pool1": 0}, "the check needs a point without ties"
    # One FD step moves any conv output by at most eps * max(|x|, |filter|) < eps: a gap of 10 eps is safe.
    assert min_window_gap(trace.tensors["conv1.out"]) > 10 * EPS, "an FD step would cross a max-pool kink"
    analytical = {name: np.array(value, copy=True) for name, value in trace.tensors.items()}
    fd_net = scratch.tutorial_network(seed, impl="vectorized", **kwargs)
    check_every_gradient(fd_net, analytical, fd_net.normalize(image), np.array([label]), n_sample)


# Small specs that between them check each layer kind: conv with and without bias, with channels > 1 and K = 5,
# relu after a conv, a pool and a dense, pools of 2 and 3 (odd sizes), two dense layers. (spec, image shape, seed)
# A relu comes after a pool, not before it (the two commute): a relu feeding a pool makes every window of negative
# inputs a tie of zeros, a kink the finite differences would straddle. Seeds chosen for a point without kinks.
FD_SPECS = {
    "conv-bias-channels-k5": ("conv3x3b,relu,conv5x4b,pool2,dense10", (12, 12), 3),
    "conv-k5-pool3-odd": ("conv5x2,pool3,dense10", (11, 13), 1),
    "relu-after-dense": ("conv3x4b,pool2,relu,dense12,relu,dense10", (8, 9), 2),
    "pool3-channels": ("conv3x3,pool2,conv3x5b,pool3,relu,dense10", (16, 17), 3),
}


@pytest.mark.parametrize("batch", [1, 2], ids=["batch1", "batch2"])
@pytest.mark.parametrize("impl", scratch.IMPLEMENTATIONS)
@pytest.mark.parametrize("case", FD_SPECS)
def test_every_gradient_of_any_spec_matches_central_differences(case, impl, batch):
    """Every parameter gradient, every layer's input gradient and dL/dlogits of small specs, whole-network loss
    (the mean over the batch), every entry: relative error <= 1e-6, at a point 1e-4 away from any kink."""
    text, shape, seed = FD_SPECS[case]
    net = scratch.build_network(text, seed, image_shape=shape, impl=impl)
    for layer in net.layers:  # nonzero biases, so that every bias path carries a gradient through the network
        if "biases" in layer.param_names:
            layer.biases[...] = np.random.default_rng(seed).uniform(-0.05, 0.05, layer.biases.shape)
    rng = np.random.default_rng(100 + seed)
    images, labels = continuous_image(rng, (batch, *shape)), rng.integers(0, 10, size=batch)
    trace = net.forward_backward(images, labels)
    x = net.normalize(images)
    analytical = {name: np.array(value, copy=True) for name, value in trace.tensors.items()}
    assert total_ties(trace) == 0, "the check needs a point without ties"
    # An FD step moves any activation by a small multiple of eps here (weights ~ randn / fan-in): 100 eps is safe.
    margin = kink_margin(net, analytical, x)
    assert margin > 100 * EPS, f"a kink is {margin:.3g} away: an FD step could cross it"
    fd_net = scratch.build_network(text, seed, image_shape=shape)
    fd_net.load_parameters(net.parameters())
    check_every_gradient(fd_net, analytical, x, labels, None)


def test_raw_pixel_gradient_is_d_image_over_255():
    """conv1.d_in is w.r.t. the normalised image x/255 - 0.5, so dL/d(raw pixel) = conv1.d_in / 255."""
    net = scratch.tutorial_network(0, image_shape=(9, 9))
    rng = np.random.default_rng(4)
    image, label = continuous_image(rng, (9, 9)), 5
    d_image = net.forward_backward(image, label).tensors["conv1.d_in"][0, ..., 0].copy()
    eps = 1e-4  # raw-pixel scale
    raw = image.copy()

    def loss():
        return cross_entropy(net.logits(raw), np.array([label]))  # the public path: raw pixels in

    indices = all_indices(raw.shape)
    numerical = central_difference(loss, raw, indices, eps=eps)
    assert relative_error(numerical, np.array([d_image[i] for i in indices]) / 255) <= REL_TOL


# --- batches ---------------------------------------------------------------------------------------------

BATCH_CASES = ["tutorial", "deep", "bias-two-dense", "pool3-odd"]


def _batch(case: str, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real digits for 28x28 specs, random images otherwise (their ties included)."""
    _, shape = SMALL_SPECS[case]
    if shape == (28, 28):
        return train_batch(10 * seed, size)
    rng = np.random.default_rng(seed)
    return random_uint8_image(rng, (size, *shape)), rng.integers(0, 10, size=size)


@pytest.mark.parametrize("impl", scratch.IMPLEMENTATIONS)
@pytest.mark.parametrize("softmax", SOFTMAX_MODES)
@pytest.mark.parametrize("tie_policy", TIE_POLICIES)
@pytest.mark.parametrize("case", BATCH_CASES)
def test_a_batch_gradient_is_the_mean_of_the_per_sample_gradients(case, tie_policy, softmax, impl):
    """A batch of B: the loss is the mean of the B losses, every parameter gradient the mean of the B per-sample
    ones, and each sample's activation gradients 1/B of its own (<= 1e-12, float64)."""
    text, shape = SMALL_SPECS[case]
    kwargs = dict(image_shape=shape, tie_policy=tie_policy, softmax=softmax, impl=impl)
    net = scratch.build_network(text, 1, **kwargs)
    images, labels = _batch(case, 3)
    batch = net.forward_backward(images, labels)
    singles = [
        {name: np.array(v, copy=True) for name, v in net.forward_backward(images[n], int(labels[n])).tensors.items()}
        for n in range(3)
    ]
    assert batch.correct == sum(int(np.argmax(single["probs"][0]) == labels[n]) for n, single in enumerate(singles))
    assert float(batch.tensors["loss"]) == pytest.approx(np.mean([float(s["loss"]) for s in singles]), rel=1e-14)
    assert total_ties(batch) == sum(total_ties(net.forward_backward(images[n], int(labels[n]))) for n in range(3))
    for info in net.spec.tensors:
        if info.role == "param" or info.name == "loss":
            continue
        stacked = np.concatenate([single[info.name] for single in singles]) if info.role != "d_param" else None
        if info.role == "d_param":
            expected = np.mean([single[info.name] for single in singles], axis=0)
        elif info.role in ("d_out", "d_in"):
            expected = stacked / 3  # the mean's 1/B, per sample
        else:
            expected = stacked
        actual = batch.tensors[info.name]
        assert actual.shape == expected.shape, info.name
        assert max_scaled_diff(actual, expected) <= 1e-12, info.name


@pytest.mark.parametrize("impl", scratch.IMPLEMENTATIONS)
@pytest.mark.parametrize("softmax", SOFTMAX_MODES)
@pytest.mark.parametrize("case", BATCH_CASES)
def test_a_batch_of_one_is_the_per_sample_step_bit_for_bit(case, softmax, impl):
    """train_step on `(1, H, W)` images and `(1,)` labels is the one-image step, every tensor bit for bit."""
    text, shape = SMALL_SPECS[case]
    kwargs = dict(image_shape=shape, softmax=softmax, impl=impl)
    one, batched = scratch.build_network(text, 2, **kwargs), scratch.build_network(text, 2, **kwargs)
    images, labels = _batch(case, 3, seed=1)
    for n in range(3):
        single = step_tensors(one, images[n], int(labels[n]))
        batch = step_tensors(batched, images[n : n + 1], labels[n : n + 1])
        assert_tensors_identical(batch, single, where=f"sample {n}")
    a, b = scratch.build_network(text, 2, **kwargs), scratch.build_network(text, 2, **kwargs)
    for n in range(3):
        assert a.train_step(images[n], int(labels[n])) == b.train_step(images[n : n + 1], labels[n : n + 1])


@pytest.mark.parametrize("case", ["tutorial", "bias-two-dense"])
def test_train_step_takes_one_image_or_a_batch(case):
    """One image and an int label, or `(N, H, W)` images and `(N,)` labels: (mean loss, number right)."""
    text, shape = SMALL_SPECS[case]
    net = scratch.build_network(text, 0, image_shape=shape)
    images, labels = _batch(case, 5)
    mean_loss, correct = scratch.build_network(text, 0, image_shape=shape).evaluate(images, labels)
    losses = [scratch.build_network(text, 0, image_shape=shape).evaluate(images[n], int(labels[n])) for n in range(5)]
    assert mean_loss == pytest.approx(np.mean([loss for loss, _ in losses]), rel=1e-14)
    assert correct == sum(right for _, right in losses) and type(correct) is int
    loss, right = net.train_step(images, labels)
    assert loss == pytest.approx(mean_loss, rel=1e-14) and right == correct
    loss, right = net.train_step(images[0], int(labels[0]))
    assert isinstance(loss, float) and right in (0, 1)
    loss, right = net.train_step(images[:2], list(labels[:2]))  # any integer sequence as labels
    assert isinstance(loss, float) and 0 <= right <= 2


# --- at a tie: finite differences and the first-max rule legitimately disagree --------------------------


@pytest.mark.parametrize("cls", [MaxPool, MaxPoolLoops], ids=["vectorized", "loops"])
def test_at_a_tie_finite_differences_split_while_first_max_routes_to_one(cls):
    """At a tied window the max has no gradient; the three answers below are all "right" for what they ask.

    Take L = max(a, b, c, d) at a = b = c = d = 1. Raising any one input by eps raises L by eps (forward
    difference 1); lowering it leaves L at 1 (backward difference 0); so the central difference is 1/2 for
    every input, and the vector (1/2, 1/2, 1/2, 1/2) is not even a subgradient (those sum to 1). The
    analytical rule must pick one: "first" (PyTorch) routes to the first max in row-major order, (1, 0, 0, 0),
    a true subgradient that matches the derivative along the diagonal (all four moving together, which is
    what happens when a shared weight moves a flat region); "all" (the tutorial) gives (1, 1, 1, 1), which
    sums to 4: it counts the window's gradient four times. So plain finite differences (and gradcheck) fail
    at ties for every policy: a gradient check must avoid ties, as the tests above do.
    """
    x = np.ones((1, 2, 2, 1))
    first, every = cls(2, "first"), cls(2, "all")

    def pooled_sum():
        return float(first.forward(x).sum())

    indices = all_indices(x.shape)
    central = central_difference(pooled_sum, x, indices)
    forward_diff = np.array([(_shifted(pooled_sum, x, i, EPS) - 1.0) / EPS for i in indices])
    backward_diff = np.array([(1.0 - _shifted(pooled_sum, x, i, -EPS)) / EPS for i in indices])
    np.testing.assert_allclose(central, 0.5, rtol=1e-8)
    np.testing.assert_allclose(forward_diff, 1.0, rtol=1e-8)
    np.testing.assert_allclose(backward_diff, 0.0, atol=1e-8)

    first.forward(x)
    every.forward(x)
    assert first.tied_windows == every.tied_windows == 1
    g_first = first.backward(np.ones((1, 1, 1, 1))).ravel()
    g_all = every.backward(np.ones((1, 1, 1, 1))).ravel()
    np.testing.assert_array_equal(g_first, [1, 0, 0, 0])
    np.testing.assert_array_equal(g_all, [1, 1, 1, 1])
    assert not np.allclose(g_first, central) and not np.allclose(g_all, central)
    # Along the diagonal (every input + eps) the max is differentiable, with derivative 1: "first" gets it.
    diagonal = (_shifted(pooled_sum, x, ..., EPS) - _shifted(pooled_sum, x, ..., -EPS)) / (2 * EPS)
    assert diagonal == pytest.approx(1.0, rel=1e-8)
    assert g_first.sum() == pytest.approx(diagonal) and g_all.sum() == 4


def _shifted(f, array: np.ndarray, index, delta: float) -> float:
    saved = array[index].copy() if index is ... else array[index]
    array[index] = saved + delta
    value = f()
    array[index] = saved
    return value


@pytest.mark.parametrize("softmax", SOFTMAX_MODES)
def test_at_a_tie_in_the_network_first_max_is_right_where_the_loss_is_smooth(softmax):
    """A constant image ties every pool window, yet the loss is smooth in the filters (all four window
    entries move together), so finite differences there are valid: they match "first" and are a quarter of
    "all" (the tutorial's rule counts each tied window's gradient four times). W.r.t. one tied conv output the
    loss has a kink: the central difference is half of the first-max gradient, the split seen above.
    """
    image, label = np.full((12, 12), 200, dtype=np.uint8), 4
    labels = np.array([label])
    first = scratch.tutorial_network(3, image_shape=(12, 12), softmax=softmax, tie_policy="first")
    every = scratch.tutorial_network(3, image_shape=(12, 12), softmax=softmax, tie_policy="all")
    t_first, t_all = first.forward_backward(image, label), every.forward_backward(image, label)
    assert t_first.tied_windows == {"pool1": t_first.tensors["pool1.out"].size}  # every window tied
    x = first.normalize(image)

    filters = first.parameters()["conv1.filters"]
    indices = all_indices(filters.shape)
    numerical = central_difference(lambda: loss_after(first, 0, x, labels), filters, indices)
    d_first = np.array([t_first.tensors["conv1.d_filters"][i] for i in indices])
    d_all = np.array([t_all.tensors["conv1.d_filters"][i] for i in indices])
    assert relative_error(numerical, d_first) <= REL_TOL
    np.testing.assert_allclose(d_all, 4 * d_first, rtol=1e-12)
    assert relative_error(numerical, d_all) > 0.5

    conv_out = t_first.tensors["conv1.out"].copy()
    d_pool = t_first.tensors["dense1.d_in"]  # dL/d(pool output)
    d_conv_first = t_first.tensors["pool1.d_in"]  # dL/d(conv output)
    window = [(0, 0, 0, 0), (0, 0, 1, 0), (0, 1, 0, 0), (0, 1, 1, 0)]  # the first window of filter 0, row-major
    numerical = central_difference(lambda: loss_after(first, 1, conv_out, labels), conv_out, window)
    np.testing.assert_allclose(numerical, 0.5 * d_pool[0, 0, 0, 0], rtol=1e-6)
    np.testing.assert_array_equal([d_conv_first[i] for i in window], [d_pool[0, 0, 0, 0], 0, 0, 0])


# --- property tests (hypothesis) -------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(
    max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(
    height=st.integers(4, 12),
    width=st.integers(4, 12),
    num_filters=st.integers(2, 4),  # 1 filter: see test_single_filter_constant_image_ties_every_window
    num_classes=st.integers(2, 5),
    seed=st.integers(0, 2**16),
    tie_policy=st.sampled_from(TIE_POLICIES),
    softmax=st.sampled_from(SOFTMAX_MODES),
    constant=st.booleans(),
)
def test_property_loops_and_vectorized_agree(
    height, width, num_filters, num_classes, seed, tie_policy, softmax, constant
):
    """Any small shape, seed and mode: the loops spec and the vectorised code agree to 1e-12 (float64)."""
    rng = np.random.default_rng(seed)
    shape = (height, width)
    vec, loops = network_pair(
        seed,
        image_shape=shape,
        num_filters=num_filters,
        num_classes=num_classes,
        tie_policy=tie_policy,
        softmax=softmax,
    )
    image = np.full(shape, rng.integers(256), dtype=np.uint8) if constant else random_uint8_image(rng, shape)
    label = int(rng.integers(num_classes))
    t_vec, t_loops = vec.forward_backward(image, label), loops.forward_backward(image, label)
    assert_tensors_agree(t_vec.tensors, t_loops.tensors, 1e-12)
    assert t_vec.tied_windows == t_loops.tied_windows
    pooled = ((height - 2) // 2, (width - 2) // 2, num_filters)
    assert t_vec.tensors["pool1.out"].shape == (1, *pooled)
    assert t_vec.tensors["conv1.d_in"].shape == (1, *shape, 1)
    if constant:
        assert t_vec.tied_windows == {"pool1": t_vec.tensors["pool1.out"].size}


@st.composite
def small_specs(draw) -> tuple[str, tuple[int, int]]:
    """A random spec that fits its random small image: 1-2 conv blocks (any K, F, bias, relu, pool) then 1-2 dense."""
    height, width = draw(st.integers(5, 12)), draw(st.integers(5, 12))
    items, side = [], min(height, width)
    for _ in range(draw(st.integers(1, 2))):
        kernel = draw(st.integers(1, min(4, side)))
        items.append(f"conv{kernel}x{draw(st.integers(2, 4))}{'b' if draw(st.booleans()) else ''}")
        side -= kernel - 1
        if draw(st.booleans()):
            items.append("relu")
        pool = draw(st.integers(0, min(3, side)))
        if pool >= 2:
            items.append(f"pool{pool}")
            side //= pool
    if draw(st.booleans()):
        items += [f"dense{draw(st.integers(2, 8))}", "relu"]
    return ",".join([*items, "dense10"]), (height, width)


@PROPERTY_SETTINGS
@given(
    case=small_specs(), batch=st.integers(1, 3), seed=st.integers(0, 2**16), tie_policy=st.sampled_from(TIE_POLICIES)
)
def test_property_any_spec_loops_and_vectorized_agree(case, batch, seed, tie_policy):
    """Any small spec and batch: every tensor of a step, the update included, loops == vectorised to 1e-12."""
    text, shape = case
    vec, loops = network_pair(seed, spec=text, image_shape=shape, tie_policy=tie_policy)
    rng = np.random.default_rng(seed)
    images, labels = random_uint8_image(rng, (batch, *shape)), rng.integers(0, 10, size=batch)
    t_vec, t_loops = step_tensors(vec, images, labels), step_tensors(loops, images, labels)
    assert_tensors_agree(t_vec, t_loops, 1e-12, where=text)


@pytest.mark.parametrize("shape", [(4, 5), (8, 7), (12, 13)], ids=["4x5", "8x7", "12x13"])
def test_single_filter_constant_image_ties_every_window(shape):
    """A constant image gives identical 3x3 patches, so every conv output of a filter should be bit-identical
    and every pool window tied (the loops spec does this). With num_filters=1 a matrix product would be a BLAS
    gemv, which rounds tail rows differently (seen with OpenBLAS 0.3.31, SkylakeX): ties would break by position
    and the gradient would be routed elsewhere. The vectorised conv therefore sums rows itself for one filter.
    """
    vec, loops = network_pair(1, image_shape=shape, num_filters=1, num_classes=2)
    image = np.full(shape, 121, dtype=np.uint8)
    t_vec, t_loops = vec.forward_backward(image, 0), loops.forward_backward(image, 0)
    assert t_loops.tied_windows == {"pool1": t_loops.tensors["pool1.out"].size}
    assert_tensors_agree(t_vec.tensors, t_loops.tensors, 1e-12)
    assert t_vec.tied_windows == t_loops.tied_windows


@PROPERTY_SETTINGS
@given(
    height=st.integers(4, 9),
    width=st.integers(4, 9),
    num_filters=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    softmax=st.sampled_from(SOFTMAX_MODES),
)
def test_property_image_and_filter_gradients_match_finite_differences(height, width, num_filters, seed, softmax):
    """Any small shape and seed without ties: conv1.d_in and conv1.d_filters match central differences."""
    shape = (height, width)
    net = scratch.tutorial_network(seed, image_shape=shape, num_filters=num_filters, softmax=softmax)
    rng = np.random.default_rng(seed)
    image, label = continuous_image(rng, shape), int(rng.integers(10))
    trace = net.forward_backward(image, label)
    assume(total_ties(trace) == 0 and min_window_gap(trace.tensors["conv1.out"]) > 10 * EPS)
    x = net.normalize(image)
    labels = np.array([label])
    for name, array, grad in (
        ("conv1.d_in", x, trace.tensors["conv1.d_in"].copy()),
        ("conv1.d_filters", net.parameters()["conv1.filters"], trace.tensors["conv1.d_filters"].copy()),
    ):
        indices = all_indices(array.shape)
        numerical = central_difference(lambda: loss_after(net, 0, x, labels), array, indices)  # noqa: B023
        analytical = np.array([grad[i] for i in indices])
        if np.linalg.norm(analytical) < 1e-12:  # e.g. a loss already ~0: nothing to compare
            continue
        assert relative_error(numerical, analytical) <= REL_TOL, name
