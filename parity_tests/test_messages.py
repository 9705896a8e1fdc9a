"""The messages and table rows explain themselves: tensor, element, both values, error, allowance."""

from __future__ import annotations

import numpy as np
import pytest

from parity.engine.compare import compare
from parity.engine.tables import comparison_table
from parity.engine.testing import ParityError, assert_parity, compare_tensors
from parity.engine.tolerances import TOLERANCES, tolerance_for
from scratch.spec import parse_spec


def perturbed(delta: float = 1e-9, dtype=np.float64):
    reference = (np.arange(6, dtype=dtype).reshape(2, 3) / 8).astype(dtype)
    scratch = reference.copy()
    scratch[1, 2] += delta
    return scratch, reference


def test_mismatch_message_names_element_values_error_and_allowance():
    comparison = compare("conv1.d_filters", *perturbed())
    assert comparison.message() == (
        "conv1.d_filters: mismatched elements: 1 / 6 (16.7%). "
        "Greatest error (relative to its allowance) at index (1, 2): "
        "scratch 0.625000001, reference 0.625, |error| 1e-09 (up to 6.35e-11 allowed, 15.7x of it; "
        "float64 tolerance: atol 1e-12 + rtol 1e-10*|reference|). Max abs error 1e-09, max rel error 1.6e-09, "
        "max ULP 9.01e+06, p99 ULP 9.01e+06."
    )


def test_table_row_carries_the_same_numbers():
    row = compare("conv1.d_filters", *perturbed()).row()
    assert row["tensor"] == "conv1.d_filters" and row["shape"] == "2x3" and row["worst index"] == "(1, 2)"
    assert row["result"] == "FAIL"
    assert row["% of tol"] == pytest.approx(100 * 1e-9 / 6.35e-11, rel=1e-2)
    assert "| conv1.d_filters | 2x3     |" in comparison_table([compare("conv1.d_filters", *perturbed())])


def test_passing_message():
    scratch, reference = perturbed(delta=0.0)
    assert compare("loss", scratch, reference).message().startswith("loss: OK, all 6 elements within tolerance.")


def test_nan_is_always_a_mismatch():
    scratch, reference = perturbed()
    scratch[0, 1] = np.nan
    comparison = compare("probs", scratch, reference)
    assert not comparison.passed
    assert "at index (0, 1): scratch nan, reference 0.125, |error| inf" in comparison.message()


def test_shape_and_dtype_are_checked_before_values():
    scratch, reference = perturbed()
    assert compare("x", scratch[:1], reference).message() == (
        "x: shape mismatch: scratch (1, 3), reference (2, 3); values not compared"
    )
    assert (
        "dtype mismatch: scratch float32, reference float64"
        in compare("x", scratch.astype(np.float32), reference).message()
    )


def test_assert_parity_names_the_first_divergence_and_shows_the_table():
    scratch, reference = perturbed()
    with pytest.raises(ParityError) as error:
        assert_parity({"a": reference, "b": scratch}, {"a": reference, "b": reference}, np.float64, names=["a", "b"])
    text = str(error.value)
    assert text.startswith("first divergence: b: mismatched elements: 1 / 6")
    assert "| a        | 2x3     |" in text and "| FAIL     |" in text


def test_compared_names_come_from_the_reference_or_the_spec_not_a_fixed_list():
    spec = parse_spec("conv3x4,relu,pool2,dense10")
    value = np.zeros(3)
    # A deep spec's tensors, handed over out of order and with one the spec does not make.
    reference = {name: value for name in ("relu1.d_in", "conv1.out", "extra", "relu1.out")}
    scratch = dict(reference)
    assert [c.name for c in compare_tensors(scratch, reference, np.float64)] == list(reference)
    by_spec = [c.name for c in compare_tensors(scratch, reference, np.float64, spec=spec)]
    assert by_spec == ["conv1.out", "relu1.out", "relu1.d_in"]  # the spec's order: forward, then backward
    with pytest.raises(ParityError, match="scratch produced no relu1.out"):
        compare_tensors({"conv1.out": value}, reference, np.float64, spec=spec)


def test_every_tolerance_has_a_reason_and_float64_beats_assert_close_defaults():
    for dtype, tolerance in TOLERANCES.items():
        assert len(tolerance.reason) > 40, dtype
    assert tolerance_for(np.float64).atol < 1e-7 / 1000  # assert_close's float64 default is 1e-7
    with pytest.raises(ValueError, match="no parity tolerance for dtype 'float16'"):
        tolerance_for("float16")


def test_a_per_sample_tolerance_is_shown_with_the_atol_it_applies():
    """At batch 4, float32's per-sample atol is 2.5e-06: a message that rounds it to one digit (3e-06) would state
    an allowance other than the one the element was judged by."""
    tolerance = tolerance_for(np.float32, "d_in", samples=4)
    assert tolerance.describe() == "atol 2.5e-06 + rtol 1e-05*|reference|"
    assert tolerance_for(np.float64).describe() == "atol 1e-12 + rtol 1e-10*|reference|"
    message = compare("conv1.d_in", np.full(3, 1e-5, np.float32), np.zeros(3, np.float32), np.float32, tolerance)
    assert "atol 2.5e-06" in message.message()
