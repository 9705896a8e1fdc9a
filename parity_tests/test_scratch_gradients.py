"""Finite-difference checks of every scratch gradient, and what happens at max-pool ties.

NumPy only. Central differences (float64, eps 1e-6) must match the analytical gradients to a relative error of
1e-6 at points with no tied pool window (continuous random images). At a tie the max is not differentiable,
and finite differences and the first-max rule legitimately disagree: see `test_at_a_tie_*`.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scratch_helpers import (
    SOFTMAX_MODES,
    TIE_POLICIES,
    assert_tensors_agree,
    continuous_image,
    network_pair,
    random_uint8_image,
)

import scratch
from scratch import MaxPool2, MaxPool2Loops

EPS = 1e-6
REL_TOL = 1e-6


# --- helpers ---------------------------------------------------------------------------------------------


def cross_entropy(logits: np.ndarray, label: int) -> float:
    """-log softmax(logits)[label], by log-sum-exp: the loss the finite differences differentiate."""
    shift = logits.max()
    return float(shift + np.log(np.sum(np.exp(logits - shift))) - logits[label])


def loss_from_pool_out(net: scratch.Network, pool_out: np.ndarray, label: int) -> float:
    net.softmax.forward(pool_out)
    return cross_entropy(net.softmax.last_totals, label)


def loss_from_conv_out(net: scratch.Network, conv_out: np.ndarray, label: int) -> float:
    return loss_from_pool_out(net, net.pool.forward(conv_out), label)


def loss_from_image(net: scratch.Network, x: np.ndarray, label: int) -> float:
    """Loss as a function of the *normalised* image (d_image is dL/d(normalised image))."""
    return loss_from_conv_out(net, net.conv.forward(x), label)


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


def min_window_gap(conv_out: np.ndarray) -> float:
    """Smallest gap between a pool window's max and its runner-up: FD steps below it cross no kink."""
    h, w = conv_out.shape[0] // 2 * 2, conv_out.shape[1] // 2 * 2
    windows = conv_out[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).transpose(0, 2, 4, 1, 3).reshape(-1, 4)
    ordered = np.sort(windows, axis=1)
    return float(np.min(ordered[:, 3] - ordered[:, 2]))


def check_every_gradient(net: scratch.Network, analytical: dict, x: np.ndarray, label: int, n_sample: int | None):
    """Central differences of the loss w.r.t. every parameter and every intermediate the trace names."""
    rng = np.random.default_rng(99)

    def pick(shape):
        return all_indices(shape) if n_sample is None else sample_indices(rng, shape, n_sample)

    errors = {}
    params = net.parameters()
    for name, grad_name in (
        ("filters", "d_filters"),
        ("dense_weights", "d_dense_weights"),
        ("dense_biases", "d_dense_biases"),
    ):
        indices = pick(params[name].shape)
        numerical = central_difference(lambda: loss_from_image(net, x, label), params[name], indices)
        errors[grad_name] = relative_error(numerical, np.array([analytical[grad_name][i] for i in indices]))

    x = x.copy()
    indices = pick(x.shape)
    numerical = central_difference(lambda: loss_from_image(net, x, label), x, indices)
    errors["d_image"] = relative_error(numerical, np.array([analytical["d_image"][i] for i in indices]))

    pool_out = analytical["pool_out"].copy()
    indices = pick(pool_out.shape)
    numerical = central_difference(lambda: loss_from_pool_out(net, pool_out, label), pool_out, indices)
    errors["d_pool_out"] = relative_error(numerical, np.array([analytical["d_pool_out"][i] for i in indices]))

    conv_out = analytical["conv_out"].copy()
    if n_sample is None:
        indices = all_indices(conv_out.shape)
    else:  # most conv outputs are not a window max (zero gradient): sample the routed ones too
        routed = [tuple(int(i) for i in idx) for idx in np.argwhere(analytical["d_conv_out"] != 0)]
        chosen = rng.choice(len(routed), size=min(n_sample, len(routed)), replace=False)
        indices = [routed[k] for k in chosen] + pick(conv_out.shape)
    numerical = central_difference(lambda: loss_from_conv_out(net, conv_out, label), conv_out, indices)
    errors["d_conv_out"] = relative_error(numerical, np.array([analytical["d_conv_out"][i] for i in indices]))

    # d_logits: the loss as a function of the logits directly.
    logits = analytical["logits"].copy()
    numerical = central_difference(lambda: cross_entropy(logits, label), logits, all_indices(logits.shape))
    errors["d_logits"] = relative_error(numerical, analytical["d_logits"])

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
    """filters, dense weights and biases, d_image, d_pool_out, d_conv_out, d_logits: rel. error <= 1e-6.

    The analytical gradients come from `impl`; the finite differences always run the vectorised forward
    (same seed, same weights; the forwards agree to 1e-12, see test_scratch_layers), which keeps this fast.
    """
    kwargs = dict(image_shape=shape, softmax=softmax, tie_policy=tie_policy)
    net = scratch.tutorial_network(seed, impl=impl, **kwargs)
    rng = np.random.default_rng(seed)
    image, label = continuous_image(rng, shape), int(rng.integers(10))
    trace = net.forward_backward(image, label)
    assert trace.tied_windows == 0, "the check needs a point without ties"
    # One FD step moves any conv output by at most eps * max(|x|, |filter|) < eps: a gap of 10 eps is safe.
    assert min_window_gap(trace.tensors["conv_out"]) > 10 * EPS, "an FD step would cross a max-pool kink"
    analytical = {name: np.array(value, copy=True) for name, value in trace.tensors.items()}
    fd_net = scratch.tutorial_network(seed, impl="vectorized", **kwargs)
    check_every_gradient(fd_net, analytical, fd_net.normalize(image), label, n_sample)


def test_raw_pixel_gradient_is_d_image_over_255():
    """d_image is w.r.t. the normalised image x/255 - 0.5, so dL/d(raw pixel) = d_image / 255."""
    net = scratch.tutorial_network(0, image_shape=(9, 9))
    rng = np.random.default_rng(4)
    image, label = continuous_image(rng, (9, 9)), 5
    d_image = net.forward_backward(image, label).tensors["d_image"].copy()
    eps = 1e-4  # raw-pixel scale
    raw = image.copy()

    def loss():
        net.forward(raw)  # the public path: raw pixels in, normalised inside
        return cross_entropy(net.softmax.last_totals, label)

    indices = all_indices(raw.shape)
    numerical = central_difference(loss, raw, indices, eps=eps)
    assert relative_error(numerical, np.array([d_image[i] for i in indices]) / 255) <= REL_TOL


# --- at a tie: finite differences and the first-max rule legitimately disagree --------------------------


@pytest.mark.parametrize("cls", [MaxPool2, MaxPool2Loops], ids=["vectorized", "loops"])
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
    x = np.ones((2, 2, 1))
    first, every = cls("first"), cls("all")

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
    g_first = first.backward(np.ones((1, 1, 1))).ravel()
    g_all = every.backward(np.ones((1, 1, 1))).ravel()
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
    first = scratch.tutorial_network(3, image_shape=(12, 12), softmax=softmax, tie_policy="first")
    every = scratch.tutorial_network(3, image_shape=(12, 12), softmax=softmax, tie_policy="all")
    t_first, t_all = first.forward_backward(image, label), every.forward_backward(image, label)
    assert t_first.tied_windows == t_first.tensors["pool_out"].size  # every window tied
    x = first.normalize(image)

    filters = first.parameters()["filters"]
    indices = all_indices(filters.shape)
    numerical = central_difference(lambda: loss_from_image(first, x, label), filters, indices)
    d_first = np.array([t_first.tensors["d_filters"][i] for i in indices])
    d_all = np.array([t_all.tensors["d_filters"][i] for i in indices])
    assert relative_error(numerical, d_first) <= REL_TOL
    np.testing.assert_allclose(d_all, 4 * d_first, rtol=1e-12)
    assert relative_error(numerical, d_all) > 0.5

    conv_out = t_first.tensors["conv_out"].copy()
    d_pool = t_first.tensors["d_pool_out"]
    d_conv_first = t_first.tensors["d_conv_out"]
    window = [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]  # the first window of filter 0, row-major
    numerical = central_difference(lambda: loss_from_conv_out(first, conv_out, label), conv_out, window)
    np.testing.assert_allclose(numerical, 0.5 * d_pool[0, 0, 0], rtol=1e-6)
    np.testing.assert_array_equal([d_conv_first[i] for i in window], [d_pool[0, 0, 0], 0, 0, 0])


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
    assert t_vec.tensors["pool_out"].shape == pooled
    assert t_vec.tensors["d_image"].shape == shape
    if constant:
        assert t_vec.tied_windows == t_vec.tensors["pool_out"].size


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
    assert t_loops.tied_windows == t_loops.tensors["pool_out"].size
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
    """Any small shape and seed without ties: d_image and d_filters match central differences."""
    shape = (height, width)
    net = scratch.tutorial_network(seed, image_shape=shape, num_filters=num_filters, softmax=softmax)
    rng = np.random.default_rng(seed)
    image, label = continuous_image(rng, shape), int(rng.integers(10))
    trace = net.forward_backward(image, label)
    assume(trace.tied_windows == 0 and min_window_gap(trace.tensors["conv_out"]) > 10 * EPS)
    x = net.normalize(image)
    for name, array, grad in (
        ("d_image", x, trace.tensors["d_image"].copy()),
        ("d_filters", net.parameters()["filters"], trace.tensors["d_filters"].copy()),
    ):
        indices = all_indices(array.shape)
        numerical = central_difference(lambda: loss_from_image(net, x, label), array, indices)
        analytical = np.array([grad[i] for i in indices])
        if np.linalg.norm(analytical) < 1e-12:  # e.g. a loss already ~0: nothing to compare
            continue
        assert relative_error(numerical, analytical) <= REL_TOL, name
