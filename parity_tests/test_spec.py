"""The network spec: parsing, shapes carried from layer to layer, tensor names and their order, and bad specs.

NumPy only; `build_network` is only asked to reject the bad specs the parser rejects.
"""

from __future__ import annotations

import re
from itertools import pairwise

import numpy as np
import pytest

import scratch
from scratch.spec import DEFAULT_SPEC, LayerSpec, TensorInfo, parse_spec

# The tutorial's 15 tensors, in comparison order (the old names in the comments).
TUTORIAL_TENSORS = (
    "conv1.out",  # conv_out
    "pool1.out",  # pool_out
    "dense1.out",  # logits
    "probs",
    "loss",
    "dense1.d_out",  # d_logits
    "dense1.d_weights",  # d_dense_weights
    "dense1.d_biases",  # d_dense_biases
    "dense1.d_in",  # d_pool_out
    "pool1.d_in",  # d_conv_out
    "conv1.d_filters",  # d_filters
    "conv1.d_in",  # d_image
    "conv1.filters",  # filters
    "dense1.weights",  # dense_weights
    "dense1.biases",  # dense_biases
)

DEEP_SPEC = "conv5x16,relu,pool2,conv3x32,relu,pool2,dense10"
DEEP_TENSORS = (
    # forward, in layer order
    "conv1.out", "relu1.out", "pool1.out", "conv2.out", "relu2.out", "pool2.out", "dense1.out",
    "probs", "loss",
    # backward: dL/dlogits, then per layer (last first) its parameter gradients and its input gradient
    "dense1.d_out", "dense1.d_weights", "dense1.d_biases", "dense1.d_in",
    "pool2.d_in", "relu2.d_in", "conv2.d_filters", "conv2.d_in",
    "pool1.d_in", "relu1.d_in", "conv1.d_filters", "conv1.d_in",
    # the parameters after the update, in layer order
    "conv1.filters", "conv2.filters", "dense1.weights", "dense1.biases",
)  # fmt: skip

BIAS_SPEC = "conv3x4b,relu,pool2,dense32,relu,dense10"
BIAS_TENSORS = (
    "conv1.out", "relu1.out", "pool1.out", "dense1.out", "relu2.out", "dense2.out",
    "probs", "loss",
    "dense2.d_out", "dense2.d_weights", "dense2.d_biases", "dense2.d_in",
    "relu2.d_in", "dense1.d_weights", "dense1.d_biases", "dense1.d_in",
    "pool1.d_in", "relu1.d_in", "conv1.d_filters", "conv1.d_biases", "conv1.d_in",
    "conv1.filters", "conv1.biases", "dense1.weights", "dense1.biases", "dense2.weights", "dense2.biases",
)  # fmt: skip


def _summary(layer: LayerSpec) -> tuple:
    return (
        layer.kind,
        layer.name,
        layer.in_shape,
        layer.out_shape,
        layer.kernel,
        layer.units,
        layer.bias,
        layer.params,
    )


# --- parsing ---------------------------------------------------------------------------------------------


def test_the_tutorial_spec_is_the_default():
    assert DEFAULT_SPEC == "conv3x8,pool2,dense10"
    spec = parse_spec()
    assert spec.text == DEFAULT_SPEC and spec.image_shape == (28, 28) and spec.num_classes == 10
    assert [_summary(layer) for layer in spec.layers] == [
        ("conv", "conv1", (28, 28, 1), (26, 26, 8), 3, 8, False, (("filters", (8, 3, 3)),)),
        ("pool", "pool1", (26, 26, 8), (13, 13, 8), 2, 0, False, ()),
        ("dense", "dense1", (13, 13, 8), (10,), 0, 10, True, (("weights", (1352, 10)), ("biases", (10,)))),
    ]
    assert [layer.item for layer in spec.layers] == ["conv3x8", "pool2", "dense10"]
    assert spec.layer("dense1").fan_in == 1352


def test_a_conv_with_bias():
    """`conv5x16b`: a 5x5 kernel, 16 filters and a bias `(16,)` after the filters."""
    conv = parse_spec("conv5x16b,dense10").layers[0]
    assert _summary(conv) == (
        "conv", "conv1", (28, 28, 1), (24, 24, 16), 5, 16, True, (("filters", (16, 5, 5)), ("biases", (16,)))
    )  # fmt: skip
    assert parse_spec("conv5x16,dense10").layers[0].params == (("filters", (16, 5, 5)),)


def test_relu_keeps_the_shape_after_a_conv_and_after_a_dense():
    spec = parse_spec("conv3x8,relu,pool2,dense20,relu,dense10")
    relu1, relu2 = spec.layer("relu1"), spec.layer("relu2")
    assert (relu1.kind, relu1.in_shape, relu1.out_shape, relu1.params) == ("relu", (26, 26, 8), (26, 26, 8), ())
    assert (relu2.in_shape, relu2.out_shape) == ((20,), (20,))
    assert spec.layer("dense2").params == (("weights", (20, 10)), ("biases", (10,)))


@pytest.mark.parametrize(
    "image_shape, pooled", [((28, 28), (8, 8, 8)), ((11, 13), (3, 3, 8)), ((5, 5), (1, 1, 8))], ids=str
)
def test_pool3_floors_odd_sizes(image_shape, pooled):
    """`pool3`: a 3x3 window, stride 3; what is left over at the bottom and right is dropped."""
    spec = parse_spec("conv3x8,pool3,dense10", image_shape)
    pool = spec.layer("pool1")
    assert (pool.kernel, pool.out_shape) == (3, pooled)
    assert spec.layer("dense1").params[0] == ("weights", (int(np.prod(pooled)), 10))


def test_shapes_and_channels_propagate_through_a_deep_spec():
    """Each layer's input is the previous output; a later conv's filters carry the channels before it."""
    spec = parse_spec(DEEP_SPEC)
    assert [_summary(layer) for layer in spec.layers] == [
        ("conv", "conv1", (28, 28, 1), (24, 24, 16), 5, 16, False, (("filters", (16, 5, 5)),)),
        ("relu", "relu1", (24, 24, 16), (24, 24, 16), 0, 0, False, ()),
        ("pool", "pool1", (24, 24, 16), (12, 12, 16), 2, 0, False, ()),
        ("conv", "conv2", (12, 12, 16), (10, 10, 32), 3, 32, False, (("filters", (32, 3, 3, 16)),)),
        ("relu", "relu2", (10, 10, 32), (10, 10, 32), 0, 0, False, ()),
        ("pool", "pool2", (10, 10, 32), (5, 5, 32), 2, 0, False, ()),
        ("dense", "dense1", (5, 5, 32), (10,), 0, 10, True, (("weights", (800, 10)), ("biases", (10,)))),
    ]
    for previous, layer in pairwise(spec.layers):
        assert layer.in_shape == previous.out_shape, layer.name


def test_layers_are_numbered_per_kind():
    spec = parse_spec("conv3x4,relu,conv3x4b,relu,pool2,dense16,relu,dense12,dense10")
    assert [layer.name for layer in spec.layers] == [
        "conv1", "relu1", "conv2", "relu2", "pool1", "dense1", "relu3", "dense2", "dense3"
    ]  # fmt: skip
    assert spec.layer("conv2").params == (("filters", (4, 3, 3, 4)), ("biases", (4,)))


def test_image_shape_and_num_classes_shape_the_network():
    spec = parse_spec("conv3x2,pool2,dense3", image_shape=(9, 12), num_classes=3)
    assert spec.image_shape == (9, 12) and spec.num_classes == 3
    assert [layer.out_shape for layer in spec.layers] == [(7, 10, 2), (3, 5, 2), (3,)]


def test_whitespace_around_items_is_ignored():
    assert parse_spec(" conv3x8 , pool2,dense10 ").text == DEFAULT_SPEC
    assert parse_spec(" conv3x8 , pool2,dense10 ") == parse_spec(DEFAULT_SPEC)


def test_describe_lists_each_layer_with_its_output():
    assert parse_spec().describe() == [
        ("image", "", "28x28x1"),
        ("conv1", "conv3x8", "26x26x8"),
        ("pool1", "pool2", "13x13x8"),
        ("dense1", "dense10", "10"),
    ]


# --- tensor names ----------------------------------------------------------------------------------------


def test_tutorial_tensor_names_and_order():
    """Exactly the tutorial's 15 tensors, renamed from the spec, in the order a divergence is looked for."""
    spec = parse_spec()
    assert spec.tensor_names == TUTORIAL_TENSORS
    assert spec.parameter_names == ("conv1.filters", "dense1.weights", "dense1.biases")
    assert [info.phase for info in spec.tensors] == ["forward"] * 5 + ["backward"] * 7 + ["update"] * 3


@pytest.mark.parametrize("text, names", [(DEEP_SPEC, DEEP_TENSORS), (BIAS_SPEC, BIAS_TENSORS)], ids=["deep", "bias"])
def test_deep_spec_tensor_names_and_order(text, names):
    spec = parse_spec(text)
    assert spec.tensor_names == names
    assert spec.parameter_names == tuple(name for name in names if spec.tensor(name).role == "param")
    phases = [info.phase for info in spec.tensors]
    assert phases == sorted(phases, key=("forward", "backward", "update").index), "phases out of order"


def test_tensor_info_says_what_each_tensor_is():
    spec = parse_spec(BIAS_SPEC)
    assert spec.tensor("conv1.out") == TensorInfo("conv1.out", "conv1", "conv", "out")
    assert spec.tensor("probs") == TensorInfo("probs", "loss", "loss", "probs")
    assert spec.tensor("loss") == TensorInfo("loss", "loss", "loss", "loss")
    assert spec.tensor("dense2.d_out") == TensorInfo("dense2.d_out", "dense2", "dense", "d_out")
    assert spec.tensor("conv1.d_biases") == TensorInfo("conv1.d_biases", "conv1", "conv", "d_param", "biases")
    assert spec.tensor("relu2.d_in") == TensorInfo("relu2.d_in", "relu2", "relu", "d_in")
    assert spec.tensor("dense1.weights") == TensorInfo("dense1.weights", "dense1", "dense", "param", "weights")
    assert spec.tensor("dense1.weights").phase == "update"
    assert spec.tensor("relu2.d_in").phase == "backward" and spec.tensor("loss").phase == "forward"
    # Only the last layer's output gradient has a name: the others are the next layer's input gradient.
    assert [info.name for info in spec.tensors if info.role == "d_out"] == ["dense2.d_out"]


def test_unknown_tensor_and_layer_names_raise_key_error():
    spec = parse_spec()
    with pytest.raises(KeyError, match=r"'conv_out' is not a tensor of conv3x8,pool2,dense10"):
        spec.tensor("conv_out")
    with pytest.raises(KeyError, match=r"'conv2' is not a layer"):
        spec.layer("conv2")


# --- bad specs: one clear ValueError each, naming the item and the shape there ---------------------------

BAD_SPECS = {
    "unknown-item": ("conv3x8,pool2,fc10", r"^network spec item 3 'fc10' \(input 13x13x8\): unknown item; expected"),
    "unknown-uppercase": ("Conv3x8,pool2,dense10", r"^network spec item 1 'Conv3x8' \(input 28x28x1\): unknown item"),
    "unknown-spaced": ("conv3x8 pool2,dense10", r"^network spec item 1 'conv3x8 pool2' \(input 28x28x1\): unknown"),
    "unknown-no-filters": ("conv3,dense10", r"^network spec item 1 'conv3' \(input 28x28x1\): unknown item"),
    "full-width-digit": (
        "conv\uff13x8,pool2,dense10",
        r"^network spec item 1 'conv.x8' \(input 28x28x1\): unknown item",
    ),
    "conv-k0": ("conv0x8,pool2,dense10", r"^network spec item 1 'conv0x8' \(input 28x28x1\): K must be at least 1"),
    "pool-k0": ("conv3x8,pool0,dense10", r"^network spec item 2 'pool0' \(input 26x26x8\): K must be at least 1"),
    "conv-f0": ("conv3x0,dense10", r"^network spec item 1 'conv3x0' \(input 28x28x1\): F must be at least 1"),
    "leading-zero": (
        "conv3x8,pool2,dense010",
        r"^network spec item 3 'dense010' \(input 13x13x8\): units is written with a leading zero; write 10, not 010$",
    ),
    "leading-zero-filters": ("conv3x08b,dense10", r"^network spec item 1 'conv3x08b' .*: F is written with a leading"),
    "too-many-digits": (
        "conv" + "9" * 5000 + "x8,dense10",
        r"^network spec item 1 'conv9{33}\.\.\.' \(input 28x28x1\): K has 5,000 digits, beyond any layer that fits$",
    ),
    "dense-0": ("conv3x8,dense0,dense10", r"^network spec item 2 'dense0' \(input 26x26x8\): units must be at least"),
    "conv-shrunk": (
        "conv3x8,pool2,conv14x4,dense10",
        r"^network spec item 3 'conv14x4' \(input 13x13x8\): a 14x14 conv does not fit; the input has shrunk",
    ),
    "pool-shrunk": (
        "conv5x4,pool3,pool3,pool3,dense10",
        r"^network spec item 4 'pool3' \(input 2x2x4\): a 3x3 pool does not fit",
    ),
    "pool-after-dense": ("dense20,pool2,dense10", r"^network spec item 2 'pool2' \(input 20\): a pool needs an image"),
    "conv-after-dense": ("dense20,conv3x4,dense10", r"^network spec item 2 'conv3x4' \(input 20\): a conv needs"),
    "ends-in-pool": (
        "conv3x8,pool2",
        r"^network spec 'conv3x8,pool2': must end in dense10 .*; it ends in 'pool2' with output 13x13x8$",
    ),
    "ends-in-relu": ("conv3x8,pool2,dense10,relu", r"must end in dense10 .*; it ends in 'relu' with output 10$"),
    "wrong-classes": ("conv3x8,pool2,dense5", r"must end in dense10 .*; it ends in 'dense5' with output 5$"),
    "empty-item": ("conv3x8,,dense10", r"^network spec item 2 '' \(input 26x26x8\): empty item; expected"),
    "trailing-comma": ("conv3x8,pool2,dense10,", r"^network spec item 4 '' \(input 10\): empty item"),
    "empty-text": ("", r"^network spec item 1 '' \(input 28x28x1\): empty item"),
    "blank-text": ("  ", r"^network spec item 1 '' \(input 28x28x1\): empty item"),
}


@pytest.mark.parametrize("text, message", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_a_bad_spec_raises_one_value_error_naming_the_item_and_shape(text, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_spec(text)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text", [spec for spec, _ in BAD_SPECS.values()], ids=BAD_SPECS.keys())
def test_build_network_rejects_the_same_specs(text):
    with pytest.raises(ValueError, match=r"^network spec "):
        scratch.build_network(text)


def test_the_shape_check_follows_the_image_shape():
    """conv14 fits a 30x30 image's pooled 14x14 map, not a 28x28 one's 13x13."""
    assert parse_spec("conv3x8,pool2,conv14x4,dense10", image_shape=(30, 30)).layer("conv2").out_shape == (1, 1, 4)
    with pytest.raises(ValueError, match=r"'conv3x8' \(input 2x9x1\): a 3x3 conv does not fit"):
        parse_spec(DEFAULT_SPEC, image_shape=(2, 9))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text": None}, r"^network spec: expected text such as 'conv3x8,pool2,dense10', got NoneType"),
        ({"text": ["conv3x8", "pool2", "dense10"]}, r"^network spec: expected text"),
        ({"image_shape": (28,)}, r"^image_shape: expected \(height, width\)"),
        ({"image_shape": (28, 0)}, r"^image_shape: "),
        ({"image_shape": (28.0, 28)}, r"^image_shape: "),
        ({"num_classes": 1}, r"^num_classes: expected an integer >= 2, got 1"),
        ({"num_classes": 10.0}, r"^num_classes: "),
    ],
    ids=["none", "list", "one-side", "zero-side", "float-side", "one-class", "float-classes"],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(**kwargs)


def test_num_classes_sets_the_last_dense():
    assert parse_spec("conv3x8,pool2,dense3", num_classes=3).layers[-1].units == 3
    with pytest.raises(ValueError, match=re.escape("must end in dense3")):
        parse_spec(DEFAULT_SPEC, num_classes=3)


@pytest.mark.parametrize(
    ("text", "image_shape", "said"),
    [
        (
            "conv3x8,pool2,dense10",
            (3000, 3000),
            "item 1 'conv3x8' (input 3000x3000x1): its output would hold 71,904,032",
        ),
        ("dense100000", (28, 28), "item 1 'dense100000' (input 28x28x1): its weights would hold 78,400,000"),
    ],
    ids=["output", "parameters"],
)
def test_a_layer_past_the_size_cap_is_refused_before_anything_is_allocated(text, image_shape, said):
    """Found by its size alone: a 3000x3000 digit would otherwise allocate ~0.6 GB per conv output."""
    with pytest.raises(ValueError) as refused:
        parse_spec(text, image_shape)
    message = str(refused.value)
    assert said in message and "more than the 50,000,000 a layer may" in message
    assert message.endswith("use fewer units or filters, or smaller images")


@pytest.mark.parametrize(
    ("text", "ties"),
    [("conv3x8,pool2,dense10", True), ("conv3x8,pool1,dense10", False), ("conv3x8,relu,dense10", False),
     ("conv3x8,pool1,pool3,dense10", True)],
)  # fmt: skip
def test_pools_can_tie_only_with_windows_of_more_than_one_element(text, ties):
    from scratch.spec import pools_can_tie

    assert pools_can_tie(text) is ties
