"""Bad input to the scratch network: one ValueError naming the argument, and no weight moved. NumPy only."""

from __future__ import annotations

import numpy as np
import pytest
from scratch_helpers import assert_parameters_equal, first_train_digits, snapshot

import scratch
from scratch import Conv3x3, MaxPool2, Softmax


def _image(shape=(28, 28), dtype=np.uint8, fill=100):
    return np.full(shape, fill, dtype=dtype)


def _with_pixel(value, dtype=np.float64):
    image = np.full((28, 28), 100.0, dtype=dtype)
    image[3, 5] = value
    return image


BAD_IMAGES = {
    "shape-27x28": _image((27, 28)),
    "shape-28x28x1": _image((28, 28, 1)),
    "shape-flat-784": _image((784,)),
    "shape-scalar": np.array(5, dtype=np.uint8),
    "list-not-array": [[0] * 28] * 28,
    "none": None,
    "dtype-bool": np.zeros((28, 28), dtype=bool),
    "dtype-complex": np.zeros((28, 28), dtype=np.complex128),
    "dtype-object": np.zeros((28, 28), dtype=object),
    "dtype-str": np.full((28, 28), "1"),
    "nan-pixel": _with_pixel(np.nan),
    "inf-pixel": _with_pixel(np.inf),
    "minus-inf-pixel": _with_pixel(-np.inf),
    "nan-pixel-float32": _with_pixel(np.nan, np.float32),
    "negative-pixel": _with_pixel(-1.0),
    "pixel-above-255": _with_pixel(255.5),
    "int16-negative": _with_pixel(-3, np.int16),
    "int32-256": _with_pixel(256, np.int32),
    "prenormalised-minus-half": np.full((28, 28), -0.5),
}


@pytest.mark.parametrize("image", BAD_IMAGES.values(), ids=BAD_IMAGES.keys())
@pytest.mark.parametrize("call", ["forward", "forward_backward", "train_step", "evaluate"])
def test_bad_image_raises_value_error_naming_image(image, call):
    net = scratch.tutorial_network(0)
    method = getattr(net, call)
    args = (image,) if call == "forward" else (image, 3)
    with pytest.raises(ValueError, match=r"^image: "):
        method(*args)


def test_image_shape_follows_the_network():
    """A network built for 11x13 wants 11x13 images and says so."""
    net = scratch.tutorial_network(0, image_shape=(11, 13))
    net.forward(_image((11, 13)))
    with pytest.raises(ValueError, match=r"image: expected shape \(11, 13\), got \(28, 28\)"):
        net.forward(_image())


@pytest.mark.parametrize(
    "image",
    [_image(dtype=np.uint8, fill=255), _image(dtype=np.int64, fill=0), _image(dtype=np.float32, fill=254.9)],
    ids=["uint8-255", "int64-0", "float32-254.9"],
)
def test_valid_raw_pixels_are_accepted(image):
    probs = scratch.tutorial_network(0).forward(image)
    assert probs.shape == (10,) and abs(probs.sum() - 1) < 1e-12


BAD_LABELS = {
    "ten": 10,
    "minus-one": -1,
    "float-2.0": 2.0,
    "numpy-float": np.float64(3.0),
    "bool-true": True,
    "numpy-bool": np.bool_(False),
    "string": "3",
    "none": None,
    "array": np.array([3]),
}


@pytest.mark.parametrize("label", BAD_LABELS.values(), ids=BAD_LABELS.keys())
@pytest.mark.parametrize("call", ["forward_backward", "train_step", "evaluate"])
def test_bad_label_raises_value_error_naming_label(label, call):
    net = scratch.tutorial_network(0)
    with pytest.raises(ValueError, match=r"^label: "):
        getattr(net, call)(_image(), label)


@pytest.mark.parametrize("label", [0, 9, np.int64(4), np.uint8(7)], ids=["0", "9", "int64", "uint8"])
def test_valid_labels_are_accepted(label):
    loss, correct = scratch.tutorial_network(0).evaluate(_image(), label)
    assert np.isfinite(loss) and isinstance(correct, bool)


def test_label_range_follows_num_classes():
    net = scratch.tutorial_network(0, num_classes=3)
    net.evaluate(_image(), 2)
    with pytest.raises(ValueError, match=r"label: expected a class in 0\.\.2, got 3"):
        net.evaluate(_image(), 3)


BAD_LRS = {
    "zero": 0,
    "zero-float": 0.0,
    "negative": -0.005,
    "nan": float("nan"),
    "inf": float("inf"),
    "minus-inf": -np.inf,
    "numpy-nan": np.float32("nan"),
    "string": "0.005",
    "none": None,
    "bool": True,
    "complex": 0.005 + 0j,
    "array": np.array([0.005]),
}


@pytest.mark.parametrize("lr", BAD_LRS.values(), ids=BAD_LRS.keys())
def test_bad_lr_raises_value_error_naming_lr(lr):
    net = scratch.tutorial_network(0)
    with pytest.raises(ValueError, match=r"^lr: "):
        net.train_step(_image(), 3, lr=lr)
    net.forward_backward(_image(), 3)
    with pytest.raises(ValueError, match=r"^lr: "):
        net.update(lr)


BAD_DTYPES = [
    pytest.param(np.float16, id="float16"),
    pytest.param(np.int64, id="int64"),
    pytest.param(int, id="int-builtin"),
    pytest.param(np.complex128, id="complex128"),
    pytest.param(object, id="object"),
    pytest.param(bool, id="bool"),
    pytest.param("float16", id="str-float16"),
    pytest.param("nonsense", id="str-nonsense"),
    pytest.param(None, id="none"),
    pytest.param("", id="str-empty"),
    pytest.param([np.float32], id="a-list"),
]


@pytest.mark.parametrize("dtype", BAD_DTYPES)
def test_bad_dtype_raises_value_error_naming_dtype(dtype):
    with pytest.raises(ValueError, match=r"^dtype: "):
        scratch.tutorial_network(0, dtype)


@pytest.mark.parametrize(
    "dtype",
    [np.float32, np.float64, "float32", "float64", float, np.dtype("float32")],
    ids=["np.float32", "np.float64", "str-float32", "str-float64", "float-builtin", "np.dtype"],
)
def test_good_dtypes_are_accepted(dtype):
    net = scratch.tutorial_network(0, dtype)
    assert net.dtype == np.dtype(dtype)


@pytest.mark.parametrize(
    "argument, value",
    [
        ("tie_policy", "First"),
        ("tie_policy", "max"),
        ("tie_policy", ""),
        ("tie_policy", None),
        ("softmax", "unstable"),
        ("softmax", "Stable"),
        ("softmax", None),
        ("impl", "vectorised"),
        ("impl", "loop"),
        ("impl", None),
    ],
    ids=lambda v: repr(v),
)
def test_bad_choice_raises_value_error_naming_the_argument(argument, value):
    with pytest.raises(ValueError, match=rf"^{argument}: expected one of"):
        scratch.tutorial_network(0, **{argument: value})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_shape": (3, 28)}, r"^image_shape: "),
        ({"image_shape": (28, 2)}, r"^image_shape: "),
        ({"num_filters": 0}, r"num_filters"),
        ({"num_classes": 1}, r"num_classes"),
    ],
    ids=["height-3", "width-2", "no-filters", "one-class"],
)
def test_bad_architecture_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        scratch.tutorial_network(0, **kwargs)


# --- layers alone ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, match",
    [
        (np.zeros((5, 5), dtype=np.float32), r"expected dtype float64, got float32"),
        (np.zeros((5, 5, 1)), r"expected 2 dimensions"),
        (np.full((5, 5), np.nan), r"NaN or Inf at index \(0, 0\)"),
        (np.zeros((2, 5)), r"at least 3x3"),
        ([[0.0] * 5] * 5, r"expected a numpy array"),
    ],
    ids=["float32-into-float64", "3d-into-2d", "nan", "too-small", "list"],
)
def test_conv_layer_rejects_bad_input(x, match):
    with pytest.raises(ValueError, match=r"^Conv3x3 input: .*" + match):
        Conv3x3(2).forward(x)


def test_conv_layer_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"^Conv3x3 input: expected 3 channels"):
        Conv3x3(2, in_channels=3).forward(np.zeros((5, 5, 2)))


@pytest.mark.parametrize("x", [np.zeros((4, 4)), np.zeros((1, 4, 2)), "x"], ids=["2d", "one-row", "string"])
def test_maxpool_layer_rejects_bad_input(x):
    with pytest.raises(ValueError, match=r"^MaxPool2 input: "):
        MaxPool2().forward(x)


def test_softmax_layer_rejects_wrong_size():
    with pytest.raises(ValueError, match=r"^Softmax input: expected 12 values"):
        Softmax(12, 3).forward(np.zeros((2, 2, 2)))


@pytest.mark.parametrize("cls_kwargs", [{"tie_policy": "any"}], ids=["maxpool-tie-policy"])
def test_layer_constructors_check_choices(cls_kwargs):
    with pytest.raises(ValueError, match=r"^tie_policy: "):
        MaxPool2(**cls_kwargs)
    with pytest.raises(ValueError, match=r"^softmax: "):
        Softmax(4, 2, mode="fast")
    with pytest.raises(ValueError, match=r"^dtype: "):
        Conv3x3(2, dtype=np.int8)


# --- a failed step changes no weight ---------------------------------------------------------------------

FAILED_STEPS = {
    "nan-pixel": (BAD_IMAGES["nan-pixel"], 3, 0.005),
    "wrong-shape": (BAD_IMAGES["shape-27x28"], 3, 0.005),
    "bool-image": (BAD_IMAGES["dtype-bool"], 3, 0.005),
    "pixel-above-255": (BAD_IMAGES["pixel-above-255"], 3, 0.005),
    "label-10": (_image(), 10, 0.005),
    "label-bool": (_image(), True, 0.005),
    "lr-nan": (_image(), 3, float("nan")),
    "lr-zero": (_image(), 3, 0.0),
    "lr-string": (_image(), 3, "0.005"),
}


@pytest.mark.parametrize("impl", scratch.IMPLEMENTATIONS)
@pytest.mark.parametrize("image, label, lr", FAILED_STEPS.values(), ids=FAILED_STEPS.keys())
def test_a_failed_step_changes_no_weight(image, label, lr, impl):
    """Every check runs before any weight moves, including after real training steps."""
    net = scratch.tutorial_network(0, impl=impl)
    for digit, digit_label in first_train_digits(2):
        net.train_step(digit, digit_label)
    before = snapshot(net)
    with pytest.raises(ValueError):
        net.train_step(image, label, lr)
    assert_parameters_equal(net, before)
    # And the network still trains normally afterwards.
    digit, digit_label = first_train_digits(3)[2]
    net.train_step(digit, digit_label)
    assert not np.array_equal(net.parameters()["dense_biases"], before["dense_biases"])


def test_load_parameters_rejects_mismatch_and_changes_nothing():
    net = scratch.tutorial_network(0)
    before = snapshot(net)
    new = {name: value + 1 for name, value in before.items()}
    new["dense_biases"] = new["dense_biases"].astype(np.float32)
    with pytest.raises(ValueError, match=r"^dense_biases: expected shape"):
        net.load_parameters(new)
    assert_parameters_equal(net, before)
