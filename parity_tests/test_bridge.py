"""The weight bridge: exact round trips for any spec, the layout mappings element by element, and refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference
import scratch
from reference.layouts import activation_to_torch, layout_for

SPECS = [
    pytest.param("conv3x8,pool2,dense10", (28, 28), id="tutorial"),
    pytest.param("conv5x16,relu,pool2,conv3x32,relu,pool2,dense10", (28, 28), id="two-conv-blocks"),
    pytest.param("conv3x4b,relu,pool2,dense32,relu,dense10", (28, 28), id="conv-bias-two-dense"),
    pytest.param("conv3x8,pool2,conv3x4,dense10", (28, 28), id="conv-after-pool"),
    pytest.param("conv3x8,pool2,dense10", (29, 27), id="tutorial-29x27"),
    pytest.param("conv4x3b,relu,pool3,conv2x5b,dense7,dense10", (29, 27), id="odd-29x27-deep"),
]
DTYPES = [pytest.param(np.float64, id="float64"), pytest.param(np.float32, id="float32")]


def random_network(spec: str, image_shape: tuple[int, int], dtype, seed: int = 0) -> scratch.Network:
    """A network whose every parameter, biases included, holds random values (biases start at zero)."""
    net = scratch.build_network(spec, seed, dtype, image_shape)
    rng = np.random.default_rng(seed + 100)
    net.load_parameters({name: rng.standard_normal(v.shape).astype(dtype) for name, v in net.parameters().items()})
    return net


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("spec", "image_shape"), SPECS)
def test_round_trip_is_bit_exact(spec, image_shape, dtype):
    net = random_network(spec, image_shape, dtype)
    back = reference.to_scratch(reference.to_torch(net))
    assert back.spec == net.spec
    assert list(back.parameters()) == list(net.spec.parameter_names)
    for name, value in net.parameters().items():
        assert back.parameters()[name].dtype == value.dtype, name
        np.testing.assert_array_equal(back.parameters()[name], value, err_msg=name)


@pytest.mark.parametrize(("spec", "image_shape"), SPECS)
def test_parameters_to_scratch_are_copies(spec, image_shape):
    twin = reference.to_torch(random_network(spec, image_shape, np.float64))
    params = reference.parameters_to_scratch(twin)
    before = {name: value.copy() for name, value in params.items()}
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter.add_(1.0)
    for name, value in params.items():
        np.testing.assert_array_equal(value, before[name], err_msg=f"{name} follows the twin")


def test_twin_has_one_module_per_spec_layer():
    twin = reference.Twin(scratch.parse_spec("conv3x4b,relu,pool2,dense32,relu,dense10"))
    kinds = [type(twin.module(layer.name)).__name__ for layer in twin.spec.layers]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "Linear", "ReLU", "Linear"]
    assert twin.module("conv1").bias is not None and twin.module("dense1").in_features == 13 * 13 * 4


def test_twin_forward_equals_scratch_logits():
    """The default spec in float64, on real digits: the same logits to within 1e-12."""
    from scratch.splits import load_experiment_data

    train, _ = load_experiment_data(None)
    net = random_network(scratch.DEFAULT_SPEC, (28, 28), np.float64, seed=3)
    images = train.images[:8]
    pixels = torch.from_numpy(images).to(torch.float64) / 255 - 0.5
    logits = reference.to_torch(net)(pixels[:, None]).detach().numpy()
    # 1e-12 absolute, far tighter than the parity tolerance here: these logits reach ~120, where its rtol allows
    # ~1e-8, while the two sides agree to ~1.2e-13 (measured). A bridge that rounds a weight is caught at the bridge.
    assert np.max(np.abs(logits - net.logits(images))) <= 1e-12


def test_dense_flatten_mapping_element_by_element():
    """Scratch row (i*W + j)*C + c is torch column c*H*W + i*W + j (Flatten on NCHW)."""
    spec = scratch.parse_spec("conv3x3,dense2", image_shape=(6, 5), num_classes=2)  # the dense sees (4, 3, 3)
    layout = layout_for(spec.layer("dense1"))
    weights = np.arange(4 * 3 * 3 * 2, dtype=np.float64).reshape(36, 2)
    torch_weights = layout.param_to_torch("weights", weights)
    assert torch_weights.shape == (2, 36)
    for i, j, c in [(0, 0, 0), (0, 0, 1), (2, 1, 2), (3, 2, 2)]:
        assert torch_weights[1, c * 12 + i * 3 + j] == weights[(i * 3 + j) * 3 + c, 1]
    np.testing.assert_array_equal(layout.param_to_scratch("weights", torch_weights), weights)


def test_dense_after_a_dense_is_a_plain_transpose():
    layout = layout_for(scratch.parse_spec("dense6,dense3", image_shape=(2, 2), num_classes=3).layer("dense2"))
    weights = np.arange(18.0).reshape(6, 3)
    np.testing.assert_array_equal(layout.param_to_torch("weights", weights), weights.T)


def test_conv_filter_and_activation_layouts_element_by_element():
    spec = scratch.parse_spec("conv1x3,conv2x4,dense10", image_shape=(5, 5))  # conv2 has 3 input channels
    filters = np.arange(4 * 2 * 2 * 3, dtype=np.float64).reshape(4, 2, 2, 3)  # (F, K, K, C)
    weight = layout_for(spec.layer("conv2")).param_to_torch("filters", filters)
    assert weight.shape == (4, 3, 2, 2) and weight[3, 2, 1, 0] == filters[3, 1, 0, 2]
    single = np.arange(3 * 1 * 1.0).reshape(3, 1, 1)  # conv1: one input channel, (F, K, K)
    assert layout_for(spec.layer("conv1")).param_to_torch("filters", single).shape == (3, 1, 1, 1)
    activation = np.arange(2 * 5 * 4 * 3.0).reshape(2, 5, 4, 3)  # NHWC
    assert activation_to_torch(activation)[1, 2, 4, 3] == activation[1, 4, 3, 2]


def test_refuses_parameters_of_the_wrong_shape():
    twin = reference.to_torch(scratch.build_network("conv3x8,pool2,dense10"))
    other = scratch.build_network("conv3x4,pool2,dense10").parameters()
    needs = r"conv1\.filters: the twin needs \(8, 3, 3\) float64, got \(4, 3, 3\) float64"
    with pytest.raises(ValueError, match=needs):
        reference.load_into_torch(twin, other)


def test_refuses_parameters_of_the_wrong_dtype():
    twin = reference.to_torch(scratch.build_network("conv3x8,pool2,dense10"))
    other = scratch.build_network("conv3x8,pool2,dense10", dtype=np.float32).parameters()
    needs = r"conv1\.filters: the twin needs \(8, 3, 3\) float64, got \(8, 3, 3\) float32"
    with pytest.raises(ValueError, match=needs):
        reference.load_into_torch(twin, other)


def test_refuses_a_missing_or_unknown_name_and_changes_nothing():
    net = random_network("conv3x8,pool2,dense10", (28, 28), np.float64)
    twin = reference.to_torch(net)
    before = reference.parameters_to_scratch(twin)
    params = {name: np.zeros_like(value) for name, value in net.parameters().items() if name != "dense1.biases"}
    with pytest.raises(ValueError, match=r"missing dense1\.biases"):
        reference.load_into_torch(twin, params)
    with pytest.raises(ValueError, match=r"unknown filters"):
        reference.load_into_torch(twin, {**net.parameters(), "filters": np.zeros((8, 3, 3))})  # an old name
    for name, value in reference.parameters_to_scratch(twin).items():
        np.testing.assert_array_equal(value, before[name], err_msg=f"{name} changed by a refused load")


def test_refuses_a_module_that_is_not_a_twin():
    refusal = "cannot bridge this module to scratch: expected a reference.Twin built from a spec, got Linear"
    with pytest.raises(ValueError, match=refusal):
        reference.to_scratch(torch.nn.Linear(3, 2))


def test_to_scratch_passes_network_options_on():
    twin = reference.to_torch(random_network("conv3x8,pool2,dense10", (12, 11), np.float32))
    net = reference.to_scratch(twin, tie_policy="all", impl="loops")
    assert net.dtype == np.float32 and net.image_shape == (12, 11)
    assert net.layer("pool1").tie_policy == "all" and type(net.layer("conv1")).__name__ == "ConvLoops"


def test_a_parameter_that_is_no_array_is_refused_before_any_is_loaded():
    """`None` for one parameter used to pass the check (as if missing) and fail in torch, the others already loaded."""
    net = random_network("conv3x8,pool2,dense10", (28, 28), np.float64)
    runner = reference.ReferenceRunner(reference.to_torch(net))
    before = runner.parameters()
    params = {name: value + 1 for name, value in before.items()}
    for name in ("dense1.biases", "conv1.filters"):
        with pytest.raises(ValueError, match=rf"{name}: the twin needs .* got NoneType"):
            runner.load_parameters({**params, name: None})
        for other, value in runner.parameters().items():
            np.testing.assert_array_equal(value, before[other], err_msg=f"{other} changed by a refused load")


def test_to_scratch_keeps_the_twins_tie_rule():
    twin = reference.to_torch(scratch.tutorial_network(0), tie_policy="all")
    assert reference.to_scratch(twin).layer("pool1").tie_policy == "all"
    assert reference.to_scratch(twin, tie_policy="first").layer("pool1").tie_policy == "first"  # unless told


@pytest.mark.parametrize("dtype", ["float64", np.float64, torch.int64, torch.float16], ids=repr)
def test_a_twin_of_another_dtype_is_refused_naming_it(dtype):
    from reference.twin import Twin

    with pytest.raises(ValueError, match=r"^dtype: expected torch.float32 or torch.float64"):
        Twin(scratch.parse_spec(), dtype)


@pytest.mark.parametrize("names", ["loss", 5], ids=["a string", "an int"])
def test_forward_backward_names_must_be_a_sequence_of_names(names):
    runner = reference.ReferenceRunner(reference.to_torch(scratch.tutorial_network(0)))
    with pytest.raises(ValueError, match=r"^names: expected a sequence of tensor names \(or None for all\)"):
        runner.forward_backward(np.zeros((1, 28, 28), np.uint8), [1], names)


def test_evaluate_checks_the_images_before_the_labels():
    """How many labels are wanted depends on the images: bad images are named as such, not as bad labels."""
    runner = reference.ReferenceRunner(reference.to_torch(scratch.tutorial_network(0)))
    with pytest.raises(ValueError, match=r"^image: expected shape \(28, 28\) or a batch"):
        runner.evaluate(np.zeros((3, 28, 28, 1), np.uint8), [0, 1, 2])


def test_one_layer_takes_arrays_with_a_reversed_size_1_axis():
    """The diagnosis flips kernels; a 1x1 kernel flipped keeps a negative stride that NumPy calls contiguous and
    torch.from_numpy refuses. The layer run alone takes it, and a flipped 1x1 kernel is the kernel itself."""
    from reference.layer import layer_gradients

    spec = scratch.parse_spec("conv1x4b,pool2,dense10", image_shape=(6, 6))
    conv = spec.layers[0]
    rng = np.random.default_rng(0)
    filters = rng.standard_normal((4, 1, 1))
    flipped = filters[:, ::-1, ::-1]
    assert flipped.flags.c_contiguous and min(flipped.strides) < 0
    inputs, d_out = rng.standard_normal((2, 6, 6, 1)), rng.standard_normal((2, 6, 6, 4))
    params = {"biases": np.zeros(4)}
    expected = layer_gradients(conv, {"filters": filters, **params}, inputs, d_out)
    got = layer_gradients(conv, {"filters": flipped, **params}, inputs[:, ::-1][:, ::-1], d_out)
    for want, have in zip(expected[:2], got[:2], strict=True):
        assert np.array_equal(want, have)
    assert all(np.array_equal(expected[2][name], got[2][name]) for name in expected[2])
