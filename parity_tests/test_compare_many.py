"""`compare_many` (the lockstep's batched hot path) gives exactly what `compare(..., detail=False)` gives, one by one.

One engine: the batch is an optimisation, never a second opinion. Equality is checked on `repr`, which spells every
float exactly (and NaN as `nan`, which `==` would not match).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parity.engine.batch import MAX_LAYOUTS, Workspace, compare_batch, compare_many
from parity.engine.compare import compare
from parity.engine.tolerances import Tolerance, tolerance_for

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
SHAPES = [(), (1,), (10,), (3, 4), (26, 26, 8), (2, 3, 4, 5)]
# Errors as multiples of the allowance atol + rtol*|reference|: well inside, at the edge, just outside, far outside.
ERROR_SHARES = [0.0, 0.3, 1.0, 1.0000001, 3.0, 1e6]
SPECIALS = [math.nan, math.inf, -math.inf]


def one_by_one(names, scratch, reference, dtype):
    return [compare(name, scratch[name], reference[name], dtype, detail=False) for name in names]


def assert_same(batched, single):
    assert [repr(c) for c in batched] == [repr(c) for c in single]


def tensor_pair(rng, shape, dtype, error_share, transposed, special):
    """A reference tensor and a scratch tensor off by `error_share` of the allowance (somewhere), maybe with a
    non-finite value, the reference maybe a transposed view (as torch's NCHW tensors are in scratch layout)."""
    tolerance = tolerance_for(dtype)
    reference = np.array(rng.normal(scale=rng.choice([1e-3, 1.0, 30.0]), size=shape), dtype)
    if transposed and reference.ndim >= 2:
        reference = np.ascontiguousarray(reference.T).T  # same values, non-contiguous layout
    noise = rng.uniform(-1, 1, size=shape) * (tolerance.atol + tolerance.rtol * np.abs(reference))
    scratch = np.array(reference + error_share * noise, dtype)
    if special is not None and scratch.size:
        position = tuple(int(rng.integers(n)) for n in shape)
        scratch[position] = special
        if rng.random() < 0.5:
            reference = reference.copy()
            reference[position] = special if rng.random() < 0.5 else -special
    return np.asarray(scratch), np.asarray(reference)


def named_pairs(rng, dtype, picks):
    """Names, and the scratch and reference tensors by name, one pair per pick (see `tensor_pair`)."""
    names = [f"t{i}" for i in range(len(picks))]
    pairs = [tensor_pair(rng, shape, np.dtype(dtype), *rest) for shape, *rest in picks]
    scratch = {name: pair[0] for name, pair in zip(names, pairs, strict=True)}
    reference = {name: pair[1] for name, pair in zip(names, pairs, strict=True)}
    return names, scratch, reference


@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(["float64", "float32"]),
    picks=st.lists(
        st.tuples(
            st.sampled_from(SHAPES),
            st.sampled_from(ERROR_SHARES),
            st.booleans(),
            st.one_of(st.none(), st.sampled_from(SPECIALS)),
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_property_batched_equals_one_by_one(seed, dtype, picks):
    """The batch gives what one by one gives; of a batch that agreed the lockstep keeps only `max_abs_errors` and
    `tolerance_used`, which must be the comparisons' own figures, and `agreed` must mean every tensor was finite,
    non-empty and passed."""
    names, scratch, reference = named_pairs(np.random.default_rng(seed), dtype, picks)
    single = one_by_one(names, scratch, reference, dtype)
    assert_same(compare_many(names, scratch, reference, dtype), single)
    batch = compare_batch(names, scratch, reference, dtype)
    assert_same(batch.comparisons(), single)
    finite = all(np.isfinite(scratch[n]).all() and np.isfinite(reference[n]).all() and reference[n].size for n in names)
    assert batch.agreed == (finite and all(c.passed for c in single))
    if batch.agreed:
        assert batch.names == names
        assert repr(batch.max_abs_errors) == repr([c.max_abs_error for c in single])
        assert repr(batch.tolerance_used) == repr([c.tolerance_used for c in single])


@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(["float64", "float32"]),
    samples=st.lists(st.sampled_from([1, 7, 64, 500]), min_size=1, max_size=8),
)
def test_property_per_tensor_tolerances_batched_equal_one_by_one(seed, dtype, samples):
    """A batch whose tensors have atols of their own (per-sample gradients at several batch sizes) gives, tensor for
    tensor, what `compare` gives under that tensor's tolerance."""
    rng = np.random.default_rng(seed)
    picks = [(SHAPES[i % len(SHAPES)], ERROR_SHARES[i % len(ERROR_SHARES)], False, None) for i in range(len(samples))]
    names, scratch, reference = named_pairs(rng, dtype, picks)
    tolerances = {name: tolerance_for(dtype).per_sample_of(n) for name, n in zip(names, samples, strict=True)}
    single = [compare(n, scratch[n], reference[n], dtype, tolerances[n], detail=False) for n in names]
    batch = compare_batch(names, scratch, reference, dtype, tolerances)
    assert_same(batch.comparisons(), single)
    assert batch.agreed == all(c.passed for c in single)
    if batch.agreed:
        assert repr(batch.tolerance_used) == repr([c.tolerance_used for c in single])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("transposed", [False, True])
def test_a_batch_within_tolerance_agrees_with_the_figures_of_its_comparisons(dtype, transposed):
    """Batches that agree, as nearly every lockstep step does: in float32 the share of tolerance must be worked out
    as `TensorComparison.tolerance_used` works it out (in float64), not read off the float32 shares."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        names, scratch, reference = named_pairs(rng, dtype, [(shape, 0.9, transposed, None) for shape in SHAPES])
        batch = compare_batch(names, scratch, reference, dtype)
        single = one_by_one(names, scratch, reference, dtype)
        assert batch.agreed
        assert repr(batch.max_abs_errors) == repr([c.max_abs_error for c in single])
        assert repr(batch.tolerance_used) == repr([c.tolerance_used for c in single])


def test_structural_problems_and_empty_tensors_take_the_one_by_one_path():
    scratch = {
        "ok": np.ones(3),
        "shape": np.ones((2, 3)),
        "dtype": np.ones(3, np.float32),
        "empty": np.zeros((0, 4)),
        "nan": np.array([1.0, math.nan]),
    }
    reference = {"ok": np.ones(3), "shape": np.ones((3, 2)), "dtype": np.ones(3), "empty": np.zeros((0, 4))}
    reference["nan"] = np.array([1.0, 2.0])
    names = list(scratch)
    batched = compare_many(names, scratch, reference, np.float64)
    assert_same(batched, one_by_one(names, scratch, reference, np.float64))
    assert [c.passed for c in batched] == [True, False, False, True, False]
    # A batch agrees only when every tensor was compared in it: an empty one passes, but is not packed as agreeing.
    for name in names[1:]:
        assert not compare_batch(["ok", name], scratch, reference, np.float64).agreed, name
    assert compare_batch(["ok"], scratch, reference, np.float64).agreed


def test_a_workspace_serves_batches_of_any_size_and_dtype():
    """One workspace across full and strided steps (different totals) and dtypes: no stale values leak."""
    rng = np.random.default_rng(0)
    workspace = Workspace()
    for size, dtype in [(1000, "float64"), (10, "float64"), (5000, "float32"), (10, "float64"), (3, "float32")]:
        reference = {"a": rng.normal(size=size).astype(dtype), "b": rng.normal(size=(2,)).astype(dtype)}
        scratch = {name: (value * (1 + 1e-3)).astype(dtype) for name, value in reference.items()}
        batched = compare_many(["a", "b"], scratch, reference, dtype, workspace=workspace)
        assert_same(batched, one_by_one(["a", "b"], scratch, reference, dtype))


def test_a_workspace_reused_past_its_layout_limit_still_compares_right():
    """More shape sets than the workspace keeps, each seen again with new values and a transposed reference: a
    layout evicted and made anew, or reused, never leaks an earlier batch's numbers."""
    rng = np.random.default_rng(2)
    workspace = Workspace()
    shape_sets = [[(n, 3), (2, n)] for n in range(1, 2 * MAX_LAYOUTS + 2)]
    for shapes in shape_sets + shape_sets[::-1]:
        reference = {f"t{i}": np.ascontiguousarray(rng.normal(size=shape).T).T for i, shape in enumerate(shapes)}
        scratch = {name: value * (1 + rng.choice([0.0, 1e-11, 1e-8])) for name, value in reference.items()}
        names = list(reference)
        assert_same(
            compare_many(names, scratch, reference, "float64", workspace=workspace),
            one_by_one(names, scratch, reference, "float64"),
        )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_batch_catches_a_single_wrong_element_among_many(dtype):
    """The failing check of the batch itself: one element out of ~40k, in the middle tensor, is found and named."""
    rng = np.random.default_rng(1)
    shapes = {"first": (26, 26, 8), "middle": (1352, 10), "last": (10,)}
    reference = {name: rng.normal(size=shape).astype(dtype) for name, shape in shapes.items()}
    scratch = {name: value.copy() for name, value in reference.items()}
    scratch["middle"][700, 3] += 1e-3
    first, middle, last = compare_many(list(shapes), scratch, reference, dtype)
    assert first.passed and last.passed and not middle.passed
    assert middle.worst_index == (700, 3)
    assert "mismatched elements" in middle.message() and "(700, 3)" in middle.message()


@pytest.mark.parametrize(
    ("tolerance", "scratch", "reference"),
    [
        (Tolerance(atol=10.0, rtol=0.0, reason="test"), [5e-324], [0.0]),  # the share underflows to 0, not the error
        (Tolerance(atol=0.0, rtol=1e10, reason="test"), [1e300], [1.1e300]),  # the allowance overflows to inf
    ],
    ids=["share-underflows", "allowance-overflows"],
)
def test_custom_tolerances_at_the_edges_of_float_range(tolerance, scratch, reference):
    scratch, reference = {"x": np.array(scratch)}, {"x": np.array(reference)}
    batched = compare_many(["x"], scratch, reference, np.float64, tolerance)
    assert_same(batched, [compare("x", scratch["x"], reference["x"], np.float64, tolerance, detail=False)])
