"""Diagnoses are data, and every layer is judged on its own.

First the pattern detectors one by one, each on an injected bug over real tensors; then whole runs in which two
bugs in two layers are both reported, each at its own layer, and a layer that only inherits error is never blamed.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference
import scratch
from parity.check.loader import load_impl
from parity.check.run import check_impl
from parity.check.selftest import DEFAULT_BASE
from parity.diagnosis import patterns
from parity.diagnosis.diagnose import Context, diagnose_tensor
from parity.diagnosis.pool import classify_routing
from parity.diagnosis.record import KINDS, Diagnosis, label
from parity.engine.compare import compare
from parity.engine.testing import ParityError, assert_lockstep
from parity.engine.tolerances import Tolerance, tolerance_for
from parity.lockstep import local
from parity.lockstep.experiment import ScratchSide
from parity.lockstep.stepper import run_lockstep
from scratch.conv import Conv
from scratch.maxpool import first_only

TOLERANCE = tolerance_for(np.float64)
TUTORIAL_CODE = DEFAULT_BASE.parent / "tutorial_cnn"  # the tutorial's own classes, as package data


@pytest.fixture(scope="module")
def step(tutorial_data):
    """The reference's tensors of one real tutorial step (torch), for detectors to be fed injected bugs."""
    train, _ = tutorial_data
    net = scratch.tutorial_network(0)
    return reference.ReferenceRunner(reference.to_torch(net)).forward_backward(train.images[:1], train.labels[:1])


def test_a_diagnosis_kind_outside_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="expected one of non_finite"):
        Diagnosis("typo", "conv1", "conv1.out", "text")
    assert set(KINDS) >= {"tie_policy", "routing", "scale", "permuted", "dropped", "broadcast", "partial"}


@pytest.mark.parametrize(
    ("factor", "reading"),
    [
        (-1.0, "a sign error"),
        (0.005, "the learning rate applied twice"),
        (2.0, "times 2 (a sum where a mean belongs, or a gradient counted twice)"),
        (0.5, "divided by 2 (a mean where a sum belongs, or a gradient halved)"),
    ],
)
def test_scale_finds_the_factor_and_says_what_it_means(step, factor, reading):
    filters = step["conv1.d_filters"]
    assert patterns.scale(factor * filters, filters, TOLERANCE, lr=0.005) == {
        "factor": pytest.approx(factor),
        "reading": reading,
    }
    assert patterns.scale(filters + 1e-9, filters, TOLERANCE) is None  # an offset is no factor


def test_a_factor_is_read_as_an_exact_one_only_when_that_fits_and_is_within_1_percent(step):
    """A float32 update read off far larger weights carries their rounding (0.005006 for lr twice): the exact
    factor is named when it explains every element too, but never one 10% away, however loose the tolerance."""
    filters = step["conv1.d_filters"]
    loose = Tolerance(atol=float(np.abs(filters).max()), rtol=0.0, reason="every factor near 1 fits")
    assert patterns.scale(-1.005 * filters, filters, loose)["reading"] == "a sign error"
    assert patterns.scale(-1.005 * filters, filters, TOLERANCE)["reading"] == ""
    assert patterns.scale(-0.9 * filters, filters, loose)["reading"] == ""
    assert patterns.scale(-2.0001 * filters, filters, loose)["reading"] == "times -2"  # -1 fits too, but is 50% off
    # 1.4% off lr: not lr twice, and 1/197 beside 1/196 and 1/198 is no reading a factor 1% off can make
    assert patterns.scale(0.005068 * filters, filters, loose, lr=0.005)["reading"] == ""


def test_a_factor_near_1_is_shown_with_the_digits_that_tell_it_from_1(step):
    """A 0.999999 x gradient is out of the float64 tolerance; its label must not read `1 x the reference`."""
    filters = step["conv1.d_filters"]
    found = patterns.scale(0.999999 * filters, filters, TOLERANCE, lr=0.005)
    assert label("scale", found) == "0.999999 x the reference"
    assert label("scale", {"factor": 1 - 1e-12, "reading": ""}) == "0.999999999999 x the reference"
    assert label("scale", {"factor": -1.0, "reading": "a sign error"}) == "-1 x the reference (a sign error)"


def test_permuted_names_the_axes(step):
    filters = step["conv1.d_filters"]  # (F, K, K)
    names = ("filter", "kernel row", "kernel column")
    found = patterns.permuted(filters.transpose(0, 2, 1), filters, TOLERANCE, names)
    assert found == {"transform": "kernel row and kernel column axes swapped"}
    found = patterns.permuted(filters[:, ::-1, ::-1], filters, TOLERANCE, names)
    assert found == {"transform": "flipped along the kernel row and kernel column axes"}


def test_permuted_finds_a_channel_first_flatten_of_the_dense_weights(step):
    weights = step["dense1.d_weights"]  # (13 * 13 * 8, 10), rows HWC
    chw = weights.reshape(13, 13, 8, 10).transpose(2, 0, 1, 3).reshape(weights.shape)
    found = patterns.permuted(chw, weights, TOLERANCE, ("input", "unit"), flatten_shape=(13, 13, 8))
    assert "CHW" in found["transform"]


def test_dropped_partial_and_some_samples(step):
    d_in = step["pool1.d_in"]
    assert patterns.dropped(np.zeros_like(d_in), d_in, TOLERANCE)["all"] is True
    out = step["conv1.out"].copy()
    skipped = out.copy()
    skipped[:, -1], skipped[:, :, -1] = 0, 0  # the loop stopped one short of the edge
    edge = {"top_rows": 0, "bottom_rows": 1, "left_columns": 0, "right_columns": 1}
    assert patterns.border(skipped, out, TOLERANCE) == edge
    batch = np.concatenate([out, out])
    wrong_second = batch.copy()
    wrong_second[1] += 1
    assert patterns.some_samples(wrong_second, batch, TOLERANCE) == {"right_samples": [0], "batch": 2}


def test_broadcast_sees_every_filter_given_the_same_summed_gradient(step):
    filters = step["conv1.d_filters"]
    summed = np.broadcast_to(filters.sum(axis=0), filters.shape)
    found = patterns.broadcast(summed, filters, TOLERANCE, 0, "filter")
    assert found == {"axis": "filter", "count": 8, "same_as": "sum"}
    assert patterns.broadcast(filters, filters, TOLERANCE, 0, "filter") is None


def test_downcast_and_non_finite(step):
    out = step["conv1.out"]
    assert patterns.downcast(out.astype(np.float32).astype(np.float64), out, np.float64) is not None
    assert patterns.downcast(out + 1e-3, out, np.float64) is None  # far beyond float32 rounding
    # 70 float32 eps off, in values no float32 holds: an extra term (weight decay), not float32 rounding
    extra = out + 70 * float(np.finfo(np.float32).eps) * np.abs(out).max() * np.sign(out)
    assert patterns.downcast(extra, out, np.float64) is None
    assert patterns.downcast(extra.astype(np.float32).astype(np.float64), out, np.float64) is not None  # stored
    overflowed = out.copy()
    overflowed[0, 0, 0, 0] = np.inf
    assert patterns.non_finite(overflowed, out)["side"] == "scratch"
    assert patterns.non_finite(overflowed, overflowed)["side"] == "both"


@pytest.mark.parametrize(
    ("ours", "theirs", "matched"),
    [(np.inf, np.inf, True), (np.inf, -np.inf, False), (1.0, np.inf, False), (np.inf, 1e308, False)],
    ids=["equal-infinities", "opposite-infinities", "finite-against-inf", "inf-against-finite"],
)
def test_the_detectors_treat_infinities_as_the_engine_does(ours, theirs, matched):
    """An infinite reference has an infinite allowance: only the same infinity may match it."""
    assert patterns.matches(np.array([ours]), np.array([theirs]), TOLERANCE) is matched
    assert compare("x", np.array([ours]), np.array([theirs]), np.float64).passed is matched


def _pool_routes(pool_input: np.ndarray, d_out: np.ndarray, rule) -> np.ndarray:
    """A 2x2 pool's input gradient routed by `rule(is_max planes) -> routes`, via scratch's window planes."""
    pool = scratch.MaxPool(2)
    pool.forward(pool_input)
    pool._is_max, pool.tie_policy = rule(pool._is_max), "all"
    return pool.backward(d_out)


@pytest.mark.parametrize(
    "rule, kind, name",
    [
        (lambda is_max: is_max, "tie_policy", "all"),  # the tutorial's
        (lambda is_max: first_only(is_max[::-1])[::-1], "tie_policy", "last"),  # a `>=` running max
        (lambda is_max: np.zeros_like(is_max), "dropped", None),  # a lost gradient is not "routed elsewhere"
        (lambda is_max: np.roll(first_only(is_max), 1, axis=0), "routing", "not to a maximum"),
    ],
    ids=["all", "last", "dropped", "misrouted"],
)
def test_pool_routing_tells_a_tie_rule_from_a_routing_error_and_a_dropped_gradient(step, rule, kind, name):
    pool_input, d_out, expected = step["conv1.out"], step["dense1.d_in"], step["pool1.d_in"]
    found_kind, evidence = classify_routing(2, pool_input, _pool_routes(pool_input, d_out, rule), expected, TOLERANCE)
    assert found_kind == kind
    assert evidence.get("rule") == name


@pytest.mark.parametrize("ours, name", [(first_only, "first"), (lambda is_max: first_only(is_max[::-1])[::-1], "last")])
def test_pool_routing_against_a_reference_of_the_tutorials_rule_names_the_codes_rule(step, ours, name):
    """`check --tie-policy all`: the reference gives every tied maximum the window's gradient, so code routing to
    one maximum (PyTorch's rule, or the last) differs only in tied windows, and by the whole gradient there."""
    pool_input, d_out = step["conv1.out"], step["dense1.d_in"]
    tutorials = _pool_routes(pool_input, d_out, lambda is_max: is_max)
    found_kind, evidence = classify_routing(2, pool_input, _pool_routes(pool_input, d_out, ours), tutorials, TOLERANCE)
    assert (found_kind, evidence["rule"]) == ("tie_policy", name)


def test_check_against_the_tutorial_tie_policy_names_pytorchs_rule_in_code_that_keeps_it(tutorial_data):
    """Code with PyTorch's first-max rule, judged against `--tie-policy all`: a tie-policy difference, rule
    `first`, said as the reference's rule against the code's (not a routing error)."""
    train, _ = tutorial_data
    impl = load_impl(str(DEFAULT_BASE.parent / "fixed_cnn"))
    result = check_impl(impl, train.images, train.labels, steps=3, probes=(), tie_policy="all")
    diagnosis = result.runs[0].record.layers["pool1"].diagnosis
    assert (diagnosis.kind, diagnosis.evidence["rule"], diagnosis.evidence["reference_rule"]) == (
        "tie_policy",
        "first",
        "all",
    )
    assert "the reference gives every tied maximum" in diagnosis.text and "(PyTorch's rule)" in diagnosis.text
    assert [name for name, verdict in result.runs[0].record.layers.items() if verdict.failed_steps] == ["pool1"]


def test_a_routing_error_on_a_constant_image_is_not_called_a_tie_policy():
    """Every window of a constant image is tied; a gradient sent to the next window's element is still routing."""
    pool_input = np.full((1, 4, 4, 1), 0.3)
    d_out = np.arange(1.0, 5.0).reshape(1, 2, 2, 1)
    expected = _pool_routes(pool_input, d_out, first_only)
    shifted = np.roll(expected, 2, axis=2)  # into the window to the right
    assert classify_routing(2, pool_input, shifted, expected, TOLERANCE)[0] == "routing"


def test_gradients_routed_to_the_right_elements_but_rounded_are_no_routing_error(step):
    """A pool backward that writes into a float32 array sends every gradient where PyTorch does: the amounts are
    off, not the routing, so the pool detectors leave it and the downcast detector names it."""
    pool_input, expected = step["conv1.out"], step["pool1.d_in"]
    rounded = expected.astype(np.float32).astype(np.float64)
    assert classify_routing(2, pool_input, rounded, expected, TOLERANCE) is None
    assert classify_routing(2, pool_input, expected * 1.01, expected, TOLERANCE) is None  # a factor's detector's
    # The same elements, but a ratio in some windows only (the sign of |d_out|, one channel doubled): still routing's
    for partly in (np.abs(expected), expected * np.where(np.arange(expected.shape[-1]) == 0, 2.0, 1.0)):
        assert classify_routing(2, pool_input, partly, expected, TOLERANCE)[0] == "routing"
    assert patterns.downcast(rounded, expected, np.float64) is not None


# --- whole runs: two bugs, two layers, both reported -------------------------------------------------------------


def every_filter_the_same_summed_gradient(self, d_L_d_out):
    """Conv backward with the filter gradients summed over the filters and given to every one."""
    d_input = CORRECT_CONV_BACKWARD(self, d_L_d_out)
    self.grads["filters"] = np.broadcast_to(self.grads["filters"].sum(axis=0), self.filters.shape).copy()
    return d_input


CORRECT_CONV_BACKWARD = Conv.backward


def tutorial_run(tutorial_data, steps: int = 3, **options):
    train, _ = tutorial_data
    net = scratch.tutorial_network(0, **options)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    batches = zip(train.images[:steps], train.labels[:steps], strict=True)
    return run_lockstep(ScratchSide(net), runner, net.spec, batches, np.float64)


def test_a_tie_rule_in_the_pool_does_not_hide_a_broken_conv(tutorial_data, monkeypatch):
    """The tutorial's pooling and a conv whose filters all get the same update: both named, each at its layer."""
    monkeypatch.setattr(Conv, "backward", every_filter_the_same_summed_gradient)
    layers = tutorial_run(tutorial_data, tie_policy="all").layers
    assert (layers["pool1"].step, layers["pool1"].diagnosis.kind) == (0, "tie_policy")
    conv = layers["conv1"]
    assert (conv.step, conv.tensor, conv.diagnosis.kind) == (0, "conv1.d_filters", "broadcast")
    assert conv.diagnosis.evidence == {"axis": "filter", "count": 8, "same_as": "sum"}
    assert layers["dense1"].passed and layers["dense1"].origin == "propagated"


def test_a_layer_that_makes_nan_of_finite_values_is_wrong_and_the_layers_it_feeds_are_still_judged(
    tutorial_data, monkeypatch
):
    """NaN from finite inputs on one side is a layer's own error; the layers after it, fed from the reference,
    see no NaN and are judged as usual."""
    correct_backward = scratch.Dense.backward

    def nan_in_the_input_gradient(self, d_L_d_out):
        d_L_d_input = correct_backward(self, d_L_d_out)
        d_L_d_input[0, 0, 0, 0] = np.nan
        return d_L_d_input

    monkeypatch.setattr(scratch.Dense, "backward", nan_in_the_input_gradient)
    layers = tutorial_run(tutorial_data).layers
    dense = layers["dense1"]
    assert (dense.passed, dense.step, dense.tensor, dense.diagnosis.kind) == (False, 0, "dense1.d_in", "non_finite")
    assert dense.diagnosis.evidence["side"] == "scratch"
    assert all(layers[name].passed and layers[name].unjudged_steps == 0 for name in ("conv1", "pool1"))


NAN, INF = np.nan, np.inf


@pytest.mark.parametrize(
    ("fed_non_finite", "differences", "unjudgeable"),
    [
        ("inputs", [(5.0, 7.0)], True),  # fed an overflow: nothing it gives back says anything of the layer
        ("d_out", [(5.0, 7.0)], True),
        ("filters", [(5.0, 7.0)], True),
        (None, [(NAN, NAN)], True),  # NaN on both sides from finite inputs: both overflowed alike
        (None, [(NAN, NAN), (NAN, NAN)], True),
        (None, [(NAN, 7.0)], False),  # NaN on one side only: its own error
        (None, [(5.0, NAN)], False),
        (None, [(NAN, NAN), (NAN, 7.0)], False),  # one element NaN on one side only is enough
        (None, [(NAN, NAN), (5.0, 7.0)], False),  # and so is one finite difference
        (None, [(INF, -INF)], False),  # infinities of opposite signs: a sign error, not an overflow alike
        (None, [(5.0, 7.0)], False),  # finite and wrong
    ],
)
def test_a_layer_is_left_unjudged_only_where_nothing_can_be_compared(fed_non_finite, differences, unjudgeable):
    spec = scratch.build_network("conv3x8,pool2,dense10").spec
    fed = {"inputs": np.zeros((1, 28, 28, 1)), "d_out": np.ones((1, 26, 26, 8)), "filters": np.ones((8, 3, 3))}
    if fed_non_finite:
        fed[fed_non_finite].flat[0] = np.inf
    feed = local.LayerFeed(spec.layers[0], fed["inputs"], fed["d_out"], {"filters": fed["filters"]}, {}, [3], 0.005)
    ours, theirs = np.full((1, 26, 26, 8), 2.0), np.full((1, 26, 26, 8), 2.0)
    for position, (scratch_value, reference_value) in enumerate(differences):
        ours.flat[position], theirs.flat[position] = scratch_value, reference_value
    failed = [compare("conv1.out", ours, theirs, np.float64, detail=False)]
    assert not failed[0].passed
    decided = local.unjudgeable(feed, failed, {"conv1.out": ours}, {"conv1.out": theirs})
    assert decided is unjudgeable


class OverflowAt:
    """A reference side that hands over `pool1.out` with an infinity at the batch of `image`: it overflowed there."""

    def __init__(self, runner, image):
        self.runner, self.image = runner, image

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def forward_backward(self, images, labels, names=None):
        tensors = self.runner.forward_backward(images, labels, names)
        if np.array_equal(images[0], self.image) and "pool1.out" in tensors:
            tensors["pool1.out"] = tensors["pool1.out"].copy()
            tensors["pool1.out"].flat[0] = np.inf
        return tensors


def test_a_layer_fed_an_overflow_at_one_step_is_judged_again_at_the_next(tutorial_data):
    train, _ = tutorial_data
    net = scratch.tutorial_network(0)
    overflowing = OverflowAt(reference.ReferenceRunner(reference.to_torch(net)), train.images[1])
    batches = zip(train.images[:4, np.newaxis], train.labels[:4, np.newaxis], strict=True)
    dense = run_lockstep(ScratchSide(net), overflowing, net.spec, batches, np.float64).layers["dense1"]
    assert (dense.unjudged_steps, dense.first_unjudged_step, dense.unjudged_now) == (1, 1, False)
    assert (dense.checked_steps, dense.passed, dense.origin) == (3, True, "unjudged")


def test_a_layer_that_fails_alone_where_the_network_agreed_is_wrong_whatever_it_was_fed(tutorial_data):
    """Equal infinities agree: a step can agree with an overflow in it. A layer that then fails alone is wrong."""
    train, _ = tutorial_data
    net = scratch.tutorial_network(0)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    params_before = runner.parameters()
    images, labels = train.images[:1], train.labels[:1]
    tensors = OverflowAt(runner, images[0]).forward_backward(images, labels)
    judge = local.LocalJudge(net.spec, np.float64, 0.005)
    for agreed, passed in ((False, None), (True, False)):
        verdicts = local.fresh_verdicts(net.spec)
        judge.judge(ScratchSide(net), 0, images, labels, tensors, params_before, verdicts, ("dense1",), agreed)
        assert (verdicts["dense1"].passed, verdicts["dense1"].unjudged_steps) == (passed, int(not agreed))


def test_a_shape_mismatch_is_judged_even_where_the_layer_was_fed_an_overflow():
    spec = scratch.build_network("conv3x8,pool2,dense10").spec
    inputs = np.full((1, 28, 28, 1), np.nan)
    feed = local.LayerFeed(
        spec.layers[0], inputs, np.ones((1, 26, 26, 8)), {"filters": np.ones((8, 3, 3))}, {}, [3], 0.005
    )
    ours, theirs = np.full((1, 26, 26, 7), np.nan), np.full((1, 26, 26, 8), np.nan)
    failed = [compare("conv1.out", ours, theirs, np.float64, detail=False)]
    assert failed[0].problem
    assert not local.unjudgeable(feed, failed, {"conv1.out": ours}, {"conv1.out": theirs})


def test_the_same_two_bugs_in_tutorial_interface_code_are_both_reported_by_check(tutorial_data):
    """`check` on the tutorial's own code (every-tie pooling) with a broken filter gradient added."""
    train, _ = tutorial_data
    impl = load_impl(str(TUTORIAL_CODE))
    correct = impl.classes["Conv3x3"]

    class SameUpdateForEveryFilter(correct):
        def backprop(self, d_L_d_out, learn_rate):
            d_L_d_filters = np.zeros(self.filters.shape)
            for im_region, i, j in self.iterate_regions(self.last_input):
                for f in range(self.num_filters):
                    d_L_d_filters += d_L_d_out[i, j, f] * im_region  # BUG: every filter gets every filter's share
            self.filters -= learn_rate * d_L_d_filters
            return None

    impl.classes["Conv3x3"] = SameUpdateForEveryFilter
    main = check_impl(impl, train.images, train.labels, steps=3, probes=()).main
    layers = main.record.layers
    assert (layers["pool1"].diagnosis.kind, layers["pool1"].diagnosis.evidence["rule"]) == ("tie_policy", "all")
    assert (layers["conv1"].tensor, layers["conv1"].diagnosis.kind) == ("conv1.d_filters", "broadcast")
    assert layers["dense1"].passed


def fixed_code_with(**replacements):
    """The corrected tutorial-interface code with some classes replaced: `make(correct_class)` by class name."""
    impl = load_impl(str(DEFAULT_BASE))
    for name, make in replacements.items():
        impl.classes[name] = make(impl.classes[name])
    return impl


def float32_filters(correct, step_twice=False):
    """The corrected Conv3x3 keeping its filters in float32; `step_twice`: its update applied twice as well."""

    class Float32Filters(correct):
        def __init__(self, num_filters, rng=None):
            super().__init__(num_filters, rng)
            self.filters = self.filters.astype(np.float32)  # "to halve the memory": a float32-level error

        def backprop(self, d_L_d_out, learn_rate):
            before = self.filters.copy()
            d_L_d_input = super().backprop(d_L_d_out, learn_rate)
            if step_twice:
                self.filters -= before - self.filters  # BUG: the step taken again, a gradient counted twice
            return d_L_d_input

    return Float32Filters


@pytest.mark.parametrize("step_twice", [False, True], ids=["float32-only", "float32-and-doubled"])
def test_float32_weights_do_not_hide_a_doubled_update_beside_them(tutorial_data, step_twice):
    """Filters kept in float32 make every tensor of the conv differ at float32's rounding level; an update taken
    twice besides is far beyond it, and is what the layer is blamed for, told under float32's tolerance (its
    rounding hides the factor from float64's)."""
    train, _ = tutorial_data
    impl = fixed_code_with(Conv3x3=lambda correct: float32_filters(correct, step_twice))
    conv = check_impl(impl, train.images, train.labels, steps=2, probes=()).main.record.layers["conv1"]
    if not step_twice:
        assert conv.diagnosis.kind == "downcast"
        return
    diagnosis = conv.diagnosis
    assert (diagnosis.tensor, diagnosis.kind, diagnosis.evidence["factor"]) == (
        "conv1.d_filters",
        "scale",
        pytest.approx(2, rel=1e-4),
    )
    assert diagnosis.evidence["reading"].startswith("times 2")


def lr_applied_twice_in_the_update(correct):
    """The corrected Softmax whose SGD update scales the gradient by the learning rate twice."""

    class LrTwice(correct):
        def backprop(self, d_L_d_out, learn_rate):
            weights, biases = self.weights.copy(), self.biases.copy()
            d_L_d_input = super().backprop(d_L_d_out, learn_rate)
            self.weights[...] = weights - learn_rate * (weights - self.weights)  # BUG: lr * (lr * gradient)
            self.biases[...] = biases - learn_rate * (biases - self.biases)
            return d_L_d_input

    return LrTwice


def test_a_wrong_dense_update_is_told_from_a_wrong_logits_gradient_by_the_input_gradient(tutorial_data):
    """`check` reads dL/dlogits off the bias update; when the weight update disagrees too, the input gradient the
    layer returns (computed from dL/dlogits, not from the update) tells a wrong update from a wrong dL/dlogits."""
    train, _ = tutorial_data
    impl = fixed_code_with(Softmax=lr_applied_twice_in_the_update)
    divergence = check_impl(impl, train.images, train.labels, steps=2, probes=()).main.record.first_divergence
    diagnosis = divergence.diagnosis
    assert (divergence.tensor, diagnosis.kind, diagnosis.evidence["reading"]) == (
        "dense1.d_out",
        "scale",
        "the learning rate applied twice",
    )
    assert diagnosis.evidence["weight_gradient_agrees"] is False
    assert diagnosis.evidence["input_gradient_agrees"] is True


def test_check_with_the_tutorial_tie_policy_judges_only_the_rest(tutorial_data):
    """`--tie-policy all`: the tutorial's own code passes, pooling included."""
    train, _ = tutorial_data
    impl = load_impl(str(TUTORIAL_CODE))
    result = check_impl(impl, train.images, train.labels, steps=5, probes=("constant",), tie_policy="all")
    assert result.passed
    assert all(layer.passed for run in result.runs for layer in run.record.layers.values())


def test_accumulated_drift_is_told_from_a_bug(tutorial_data, monkeypatch):
    """Weights that creep away from the reference's a little more every step (below tolerance until they are
    not), while every layer computes right from the reference's inputs: drift, not a layer's fault."""
    correct_update = scratch.Network.update

    def creeping_update(self, lr):
        correct_update(self, lr)
        self.layer("dense1").biases[0] += 4e-13

    monkeypatch.setattr(scratch.Network, "update", creeping_update)
    record = tutorial_run(tutorial_data, steps=6)
    divergence = record.first_divergence
    assert (divergence.tensor, divergence.diagnosis.kind) == ("dense1.biases", "drift")
    assert all(layer.passed for layer in record.layers.values())
    assert record.layers["dense1"].origin == "propagated"


def test_a_filter_gradient_from_the_first_window_only_is_partial(tutorial_data, monkeypatch):
    """A `return` inside the region loop: only the first window of each image counts."""

    def first_window_only(self, d_L_d_out):
        first = np.zeros_like(d_L_d_out)
        first[:, 0, 0] = d_L_d_out[:, 0, 0]
        CORRECT_CONV_BACKWARD(self, first)
        first_window_gradient = self.grads["filters"]
        d_input = CORRECT_CONV_BACKWARD(self, d_L_d_out)
        self.grads["filters"] = first_window_gradient
        return d_input

    monkeypatch.setattr(Conv, "backward", first_window_only)
    conv = tutorial_run(tutorial_data, steps=1).layers["conv1"]
    assert (conv.tensor, conv.diagnosis.kind, conv.diagnosis.evidence) == (
        "conv1.d_filters",
        "partial",
        {"windows": "only the first window of each image"},
    )


def test_an_input_gradient_from_the_updated_weights_is_stale(tutorial_data, monkeypatch):
    """The dense layer's input gradient taken after the update (as code that updates inside backprop does)."""
    correct = scratch.Dense.backward

    def with_updated_weights(self, d_L_d_out):
        correct(self, d_L_d_out)
        weights = self.weights - 0.005 * self.grads["weights"]
        return (d_L_d_out @ weights.T).reshape(self.last_input_shape)

    monkeypatch.setattr(scratch.Dense, "backward", with_updated_weights)
    dense = tutorial_run(tutorial_data, steps=1).layers["dense1"]
    assert (dense.tensor, dense.diagnosis.kind) == ("dense1.d_in", "stale_weights")


def test_the_suite_helper_fails_a_layer_wrong_on_its_own(tutorial_data, monkeypatch):
    monkeypatch.setattr(Conv, "backward", every_filter_the_same_summed_gradient)
    with pytest.raises(ParityError, match="conv1"):
        assert_lockstep(tutorial_run(tutorial_data, steps=1))


def test_a_large_learning_rate_is_not_blamed_on_an_unshifted_exp(tutorial_data):
    """Correct code that shifts its softmax, driven at lr 10: the logits explode and a probability underflows to 0,
    so -log(p) is infinite where log-sum-exp is not. That is said; an unshifted exp is not blamed."""
    train, _ = tutorial_data
    impl = load_impl(str(DEFAULT_BASE))
    main = check_impl(impl, train.images, train.labels, steps=5, lr=10.0, probes=()).main
    diagnosis = main.record.first_divergence.diagnosis
    assert (diagnosis.kind, diagnosis.evidence["side"], diagnosis.evidence["cause"]) == (
        "non_finite",
        "scratch",
        "probability_underflow",
    )
    assert "unshifted" not in diagnosis.text


# --- when layers run alone: a run that agrees everywhere implies its verdicts, a disagreement runs them -----------


def count_runs_alone(monkeypatch) -> list[str]:
    """The layers `ScratchSide.run_layer` is asked to run alone, in order, from now on."""
    calls, correct = [], ScratchSide.run_layer

    def counted(self, feed):
        calls.append(feed.layer.name)
        return correct(self, feed)

    monkeypatch.setattr(ScratchSide, "run_layer", counted)
    return calls


EVERY_LAYER = ["conv1", "pool1", "dense1"]


def test_an_agreeing_run_runs_its_smooth_layers_alone_only_now_and_then(tutorial_data, monkeypatch):
    """Every layer run alone at the first step and every ALONE_EVERY-th; at the steps between, where every tensor
    agreed in lockstep, the conv and dense verdicts are implied and only the pool, which routes by comparisons,
    runs alone."""
    monkeypatch.setattr(local, "ALONE_EVERY", 4)
    calls = count_runs_alone(monkeypatch)
    record = tutorial_run(tutorial_data, steps=10)
    assert record.passed
    assert calls == [name for step in range(10) for name in (EVERY_LAYER if step % 4 == 0 else ["pool1"])]
    counts = {name: (v.checked_steps, v.implied_steps, v.failed_steps) for name, v in record.layers.items()}
    assert counts == {"conv1": (10, 7, 0), "pool1": (10, 0, 0), "dense1": (10, 7, 0)}


def test_a_pool_whose_rule_differs_only_on_the_references_exact_input_is_caught(tutorial_data, monkeypatch):
    """A pool that gives a tied window's gradient to every maximum only when run alone (on the reference's exact
    input) and routes like PyTorch in the lockstep run: every tensor agrees in lockstep, so only running the pool
    alone at every step can catch it. (A real pool does this when its own input rounds an exact tie apart.)"""
    monkeypatch.setattr(local, "ALONE_EVERY", 1000)
    correct = ScratchSide.run_layer

    def tutorial_rule_when_alone(self, feed):
        layer = self.net.layer(feed.layer.name)
        policy = getattr(layer, "tie_policy", None)
        if policy is not None:
            layer.tie_policy = "all"
        try:
            return correct(self, feed)
        finally:
            if policy is not None:
                layer.tie_policy = policy

    monkeypatch.setattr(ScratchSide, "run_layer", tutorial_rule_when_alone)
    record = tutorial_run(tutorial_data, steps=3)
    assert record.first_divergence is None  # nothing differs in the lockstep run
    pool = record.layers["pool1"]
    assert (pool.step, pool.tensor, pool.diagnosis.kind, pool.failed_steps) == (0, "pool1.d_in", "tie_policy", 3)
    assert not record.passed


def test_a_bug_that_starts_late_is_judged_alone_at_its_step(tutorial_data, monkeypatch):
    """A dense input gradient that doubles from step 5 on, in a run whose layers would otherwise not run alone
    again: the disagreement runs them, so the bug is named at its step and layer, and the pool and conv before it,
    fed a doubled gradient, are right on their own."""
    monkeypatch.setattr(local, "ALONE_EVERY", 1000)
    steps, correct_forward_backward, correct_backward = [0], scratch.Network.forward_backward, scratch.Dense.backward

    def counting(self, *args, **kwargs):
        steps[0] += 1
        return correct_forward_backward(self, *args, **kwargs)

    def doubled_from_step_5(self, d_L_d_out):
        d_input = correct_backward(self, d_L_d_out)
        return 2 * d_input if steps[0] > 5 else d_input

    monkeypatch.setattr(scratch.Network, "forward_backward", counting)
    monkeypatch.setattr(scratch.Dense, "backward", doubled_from_step_5)
    calls = count_runs_alone(monkeypatch)
    record = tutorial_run(tutorial_data, steps=8)
    dense = record.layers["dense1"]
    assert (dense.step, dense.tensor, dense.diagnosis.kind) == (5, "dense1.d_in", "scale")
    # A least-squares factor over the tensor: exactly 2 only where scratch's and torch's dense backward round alike
    # (not with OpenBLAS's SkylakeX kernel, whose last bit differs); the rounding of a dot product, not a tolerance.
    assert dense.diagnosis.evidence["factor"] == pytest.approx(2.0, rel=1e-12)
    assert dense.diagnosis.evidence["reading"].startswith("times 2")
    # Every layer at step 0, the pool alone at steps 1-4, every layer at 5, 6 and 7: every step that disagrees.
    assert calls == EVERY_LAYER + ["pool1"] * 4 + EVERY_LAYER * 3
    assert (dense.checked_steps, dense.implied_steps, dense.failed_steps) == (8, 4, 3)
    assert all(record.layers[name].passed for name in ("conv1", "pool1"))
    assert record.layers["pool1"].origin == "propagated"


def test_a_diagnosis_of_another_tensor_than_the_failure_shown_says_which():
    """A layer's first failing tensor can fit no pattern while a later one does: the text then leads with its own."""
    diagnosis = Diagnosis("routing", "pool1", "pool1.d_in", "routing error", {})
    assert diagnosis.text_for("pool1.d_in") == "routing error"
    assert diagnosis.text_for("pool1.out") == "pool1.d_in: routing error"


@pytest.mark.parametrize(
    ("arch", "name", "expected"),
    [
        ("conv3x8b,pool2,dense10", "conv1.d_biases", "bias gradient: expected the sum of dL/dout"),
        ("conv3x8b,pool2,dense10", "conv1.d_filters", "the sum over windows (and the batch) of dL/dout * window"),
        ("conv3x8,pool2,dense10", "dense1.d_biases", "bias gradient: expected the sum of dL/dout"),
        ("conv3x8,pool2,dense10", "dense1.d_weights", "input^T . dL/dout"),
    ],
)
def test_an_unexplained_gradient_is_hinted_at_by_its_own_parameter(arch, name, expected):
    """A conv's bias gradient is a sum of dL/dout, not the filters' sum of windows: each gradient gets its own hint."""
    spec = scratch.parse_spec(arch)
    info = spec.tensor(name)
    shape = dict(spec.layer(info.layer).params)[info.param]
    theirs = np.linspace(-1.0, 1.0, int(np.prod(shape))).reshape(shape)
    ours = theirs + np.random.default_rng(0).normal(0, 1e-3, theirs.shape)  # noise: no pattern fits
    comparison = compare(name, ours, theirs, np.float64)
    found = diagnose_tensor(comparison, {name: ours}, {name: theirs}, Context(spec, np.dtype(np.float64), 0.005))
    assert found.kind == "unexplained"
    assert expected in found.text
    assert ("bias gradient" in found.text) == name.endswith("d_biases")
