"""Bad input to the scratch network: one ValueError naming the argument, and no weight moved. NumPy only."""

from __future__ import annotations

import numpy as np
import pytest
from scratch_helpers import assert_parameters_equal, first_train_digits, snapshot

import scratch
from scratch import Conv, Dense, MaxPool, SoftmaxCrossEntropy


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
@pytest.mark.parametrize("call", ["logits", "forward_backward", "train_step", "evaluate"])
def test_bad_image_raises_value_error_naming_image(image, call):
    net = scratch.tutorial_network(0)
    method = getattr(net, call)
    args = (image,) if call == "logits" else (image, 3)
    with pytest.raises(ValueError, match=r"^image: "):
        method(*args)


def test_image_shape_follows_the_network():
    """A network built for 11x13 wants 11x13 images and says so."""
    net = scratch.tutorial_network(0, image_shape=(11, 13))
    net.logits(_image((11, 13)))
    with pytest.raises(ValueError, match=r"image: expected shape \(11, 13\), got \(28, 28\)"):
        net.logits(_image())
    with pytest.raises(
        ValueError, match=r"image: expected shape \(11, 13\) or a batch \(N, 11, 13\), got \(2, 28, 28\)"
    ):
        net.logits(np.zeros((2, 28, 28), dtype=np.uint8))


@pytest.mark.parametrize(
    "image",
    [_image(dtype=np.uint8, fill=255), _image(dtype=np.int64, fill=0), _image(dtype=np.float32, fill=254.9)],
    ids=["uint8-255", "int64-0", "float32-254.9"],
)
def test_valid_raw_pixels_are_accepted(image):
    probs = scratch.tutorial_network(0).forward_backward(image, 0).tensors["probs"]
    assert probs.shape == (1, 10) and abs(probs.sum() - 1) < 1e-12


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
    assert np.isfinite(loss) and type(correct) is int and correct in (0, 1)


def test_label_range_follows_num_classes():
    net = scratch.tutorial_network(0, num_classes=3)
    net.evaluate(_image(), 2)
    with pytest.raises(ValueError, match=r"label: expected a class in 0\.\.2, got 3"):
        net.evaluate(_image(), 3)


BAD_BATCHES = {
    "empty-batch": (np.zeros((0, 28, 28), dtype=np.uint8), np.zeros(0, dtype=np.int64), r"^image: expected shape"),
    "batch-wrong-shape": (np.zeros((2, 28, 27), dtype=np.uint8), np.array([1, 2]), r"^image: expected shape"),
    "batch-4d": (np.zeros((2, 28, 28, 1), dtype=np.uint8), np.array([1, 2]), r"^image: expected shape"),
    "batch-nan-pixel": (np.stack([_with_pixel(1.0), _with_pixel(np.nan)]), np.array([1, 2]), r"^image: contains NaN"),
    "batch-pixel-above-255": (np.stack([_with_pixel(1.0), _with_pixel(256.0)]), np.array([1, 2]), r"^image: "),
    "labels-too-few": (np.zeros((3, 28, 28), dtype=np.uint8), np.array([1, 2]), r"^labels: expected 3 integer"),
    "labels-int-for-batch": (np.zeros((2, 28, 28), dtype=np.uint8), 3, r"^labels: expected 2 integer classes"),
    "labels-float": (np.zeros((2, 28, 28), dtype=np.uint8), np.array([1.0, 2.0]), r"^labels: expected 2 integer"),
    "labels-2d": (np.zeros((2, 28, 28), dtype=np.uint8), np.array([[1], [2]]), r"^labels: expected 2 integer"),
    "labels-out-of-range": (np.zeros((2, 28, 28), dtype=np.uint8), np.array([3, 10]), r"^labels: expected classes in"),
    "labels-negative": (np.zeros((2, 28, 28), dtype=np.uint8), np.array([-1, 0]), r"^labels: expected classes in"),
}


@pytest.mark.parametrize("images, labels, match", BAD_BATCHES.values(), ids=BAD_BATCHES.keys())
@pytest.mark.parametrize("call", ["forward_backward", "train_step", "evaluate"])
def test_bad_batch_raises_value_error_naming_images_or_labels(images, labels, match, call):
    with pytest.raises(ValueError, match=match):
        getattr(scratch.tutorial_network(0), call)(images, labels)


def test_a_batch_takes_labels_of_any_integer_dtype():
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    for labels in (np.array([0, 9, 4]), np.array([0, 9, 4], dtype=np.uint8), [0, 9, 4]):
        loss, correct = scratch.tutorial_network(0).evaluate(images, labels)
        assert np.isfinite(loss) and 0 <= correct <= 3


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
    "past-floats-range": 10**400,  # float() overflows
    "negative-fraction": __import__("fractions").Fraction(-1, 2),
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
        # Too small for the tutorial's spec: the message names the item that does not fit and its input.
        ({"image_shape": (3, 28)}, r"^network spec item 2 'pool2' \(input 1x26x8\): a 2x2 pool does not fit"),
        ({"image_shape": (28, 2)}, r"^network spec item 1 'conv3x8' \(input 28x2x1\): a 3x3 conv does not fit"),
        ({"image_shape": (0, 28)}, r"^image_shape: "),
        ({"image_shape": 28}, r"^image_shape: "),
        ({"num_filters": 0}, r"num_filters"),
        ({"num_classes": 1}, r"num_classes"),
    ],
    ids=["height-3", "width-2", "height-0", "not-a-pair", "no-filters", "one-class"],
)
def test_bad_architecture_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        scratch.tutorial_network(0, **kwargs)


@pytest.mark.parametrize(
    "spec, kwargs, match",
    [
        ("conv3x8,pool2,fc10", {}, r"^network spec item 3 'fc10' \(input 13x13x8\): unknown item"),
        ("conv3x8,pool2,dense10", {"num_classes": 3}, r"must end in dense3"),
        ("conv3x8,pool2,dense10", {"impl": "gpu"}, r"^impl: expected one of"),
        ("conv3x8,pool2,dense10", {"seed": -1}, r"^seed: expected a non-negative integer"),
        ("conv3x8,pool2,dense10", {"seed": 1.5}, r"^seed: "),
        ("dense10", {"image_shape": (4, 4), "tie_policy": "bogus"}, r"^tie_policy: expected one of"),
        (scratch.parse_spec(image_shape=(11, 13)), {"image_shape": (12, 12)}, r"^image_shape: \(12, 12\) given"),
    ],
    ids=[
        "unknown-item",
        "classes",
        "impl",
        "seed-negative",
        "seed-float",
        "tie-policy-without-a-pool",
        "spec-for-other-images",
    ],
)
def test_build_network_rejects_bad_arguments(spec, kwargs, match):
    with pytest.raises(ValueError, match=match):
        scratch.build_network(spec, **kwargs)


def test_build_network_takes_a_parsed_spec():
    spec = scratch.parse_spec("conv3x2b,relu,pool2,dense10", image_shape=(9, 9))
    net = scratch.build_network(spec, 0)
    assert net.spec is spec and net.image_shape == (9, 9)
    assert net.forward_backward(_image((9, 9)), 1).tensors["conv1.out"].shape == (1, 7, 7, 2)


# --- layers alone ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, match",
    [
        (np.zeros((1, 5, 5, 1), dtype=np.float32), r"expected dtype float64, got float32"),
        (np.zeros((5, 5, 1)), r"expected 4 dimensions"),
        (np.zeros((5, 5)), r"expected 4 dimensions"),
        (np.full((1, 5, 5, 1), np.nan), r"NaN or Inf at index \(0, 0, 0, 0\)"),
        (np.zeros((1, 2, 5, 1)), r"at least 3x3"),
        ([[0.0] * 5] * 5, r"expected a numpy array"),
    ],
    ids=["float32-into-float64", "hwc-not-nhwc", "2d", "nan", "too-small", "list"],
)
def test_conv_layer_rejects_bad_input(x, match):
    with pytest.raises(ValueError, match=r"^conv input: .*" + match):
        Conv(3, 2).forward(x)


def test_conv_layer_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"^conv input: expected 3 channels"):
        Conv(3, 2, in_channels=3).forward(np.zeros((1, 5, 5, 2)))


@pytest.mark.parametrize(
    "x", [np.zeros((4, 4)), np.zeros((4, 4, 2)), np.zeros((1, 1, 4, 2)), "x"], ids=["2d", "hwc", "one-row", "string"]
)
def test_maxpool_layer_rejects_bad_input(x):
    with pytest.raises(ValueError, match=r"^pool input: "):
        MaxPool(2).forward(x)


def test_maxpool_layer_rejects_input_below_its_kernel():
    with pytest.raises(ValueError, match=r"^pool input: expected at least 3x3, got shape \(1, 2, 5, 1\)"):
        MaxPool(3).forward(np.zeros((1, 2, 5, 1)))


@pytest.mark.parametrize("x", [np.zeros((1, 2, 2, 2)), np.zeros(12)], ids=["8-values", "no-batch-axis"])
def test_dense_layer_rejects_wrong_size(x):
    with pytest.raises(ValueError, match=r"^dense input: expected \(N, \.\.\.\) with 12 values per sample"):
        Dense(12, 3).forward(x)


@pytest.mark.parametrize("cls_kwargs", [{"tie_policy": "any"}], ids=["maxpool-tie-policy"])
def test_layer_constructors_check_choices(cls_kwargs):
    with pytest.raises(ValueError, match=r"^tie_policy: "):
        MaxPool(2, **cls_kwargs)
    with pytest.raises(ValueError, match=r"^softmax: "):
        SoftmaxCrossEntropy("fast")
    with pytest.raises(ValueError, match=r"^dtype: "):
        Conv(3, 2, dtype=np.int8)
    with pytest.raises(ValueError, match=r"^dtype: "):
        Dense(4, 2, dtype=np.float16)


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
    "batch-nan-pixel": (BAD_BATCHES["batch-nan-pixel"][0], np.array([1, 2]), 0.005),
    "batch-labels-too-few": (np.zeros((3, 28, 28), dtype=np.uint8), np.array([1, 2]), 0.005),
    "batch-lr-nan": (np.zeros((2, 28, 28), dtype=np.uint8), np.array([1, 2]), float("nan")),
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
    assert not np.array_equal(net.parameters()["dense1.biases"], before["dense1.biases"])


def test_load_parameters_rejects_mismatch_and_changes_nothing():
    net = scratch.tutorial_network(0)
    before = snapshot(net)
    new = {name: value + 1 for name, value in before.items()}
    new["dense1.biases"] = new["dense1.biases"].astype(np.float32)
    with pytest.raises(ValueError, match=r"^dense1.biases: expected shape"):
        net.load_parameters(new)
    assert_parameters_equal(net, before)
    del new["conv1.filters"]
    with pytest.raises(ValueError, match=r"^parameters: missing conv1.filters"):
        net.load_parameters(new)
    assert_parameters_equal(net, before)


def test_load_parameters_takes_live_arrays_swapped_between_parameters():
    """Sources that are the network's own live arrays (two biases swapped) are read before any is written."""
    net = scratch.build_network("dense10,relu,dense10", image_shape=(4, 4))
    live = net.parameters()
    live["dense1.biases"][:], live["dense2.biases"][:] = 1, 2
    net.load_parameters({**live, "dense1.biases": live["dense2.biases"], "dense2.biases": live["dense1.biases"]})
    assert (net.parameters()["dense1.biases"] == 2).all() and (net.parameters()["dense2.biases"] == 1).all()


def test_an_update_without_a_backward_before_it_is_refused_on_both_sides():
    """Gradients are used up by the update they make: a second update used to apply them again in scratch (the twin
    does not), and one before any backward raised a bare KeyError."""
    import reference

    net = scratch.tutorial_network(0)
    with pytest.raises(ValueError, match=r"^Conv.update: no gradient of its filters since the last update"):
        net.update(0.005)
    net.forward_backward(_image((28, 28)), 3)
    net.update(0.005)
    after_one = snapshot(net)
    with pytest.raises(ValueError, match=r"run backward \(Network.forward_backward\) before each update"):
        net.update(0.005)
    assert_parameters_equal(net, after_one)
    runner = reference.ReferenceRunner(reference.to_torch(scratch.tutorial_network(0)))
    runner.forward_backward(_image((28, 28))[np.newaxis], [3])
    runner.update()
    with pytest.raises(ValueError, match=r"^update: no gradients since the last update"):
        runner.update()


def test_a_masked_array_is_refused_and_a_matrix_read_as_an_array():
    """In-place arithmetic on a masked array skips its masked pixels, which the conv then read raw: a loss of 9.6
    instead of 2.3, silently. An np.matrix image broadcast wrongly."""
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8), dtype=np.uint8)
    net = scratch.build_network("conv3x4,pool2,dense10", image_shape=(8, 8))
    with pytest.raises(ValueError, match=r"^image: a masked array; .*np\.ma\.filled"):
        net.train_step(np.ma.masked_array(images, mask=images > 200), np.array([1, 2]), 0.1)
    with pytest.warns(PendingDeprecationWarning):  # NumPy's own warning about np.matrix
        matrix = np.asmatrix(images[0])
    np.testing.assert_array_equal(net.logits(matrix), net.logits(images[0]))


@pytest.mark.parametrize("impl", scratch.IMPLEMENTATIONS)
def test_training_that_diverged_reaches_the_loss_as_nan_in_either_implementation(impl):
    """Past the images, a non-finite activation means training diverged: the loss is NaN, as in PyTorch. The loops'
    conv used to raise on it instead, unlike the vectorised one."""
    net = scratch.build_network("conv3x2,conv3x2,dense10", image_shape=(8, 8), impl=impl)
    net.load_parameters({**net.parameters(), "conv1.filters": np.full((2, 3, 3), 1e308)})
    with np.errstate(over="ignore", invalid="ignore"):  # NumPy's warnings, as training diverges
        loss, _ = net.train_step(_image((8, 8), fill=255), 3, 0.1)  # 9 x 0.5 x 1e308 overflows
    assert np.isnan(loss)


def test_an_lr_of_any_real_type_is_taken_as_a_float():
    import fractions

    net = scratch.tutorial_network(0)
    loss, _ = net.train_step(_image(), 3, fractions.Fraction(1, 200))
    other = scratch.tutorial_network(0)
    assert other.train_step(_image(), 3, 0.005)[0] == loss
    assert_parameters_equal(net, snapshot(other))


def test_a_long_bad_label_value_is_described_not_printed():
    net = scratch.build_network("conv3x2,pool2,dense10", image_shape=(8, 8))
    with pytest.raises(ValueError) as error:
        net.train_step(np.zeros((2000, 8, 8), np.uint8), [0.5] * 2000, 0.1)
    assert str(error.value).endswith("got an array of shape (2000,) and dtype float64") and len(str(error.value)) < 150
    with pytest.raises(ValueError, match=r"got array\(\[\[1\], \[2\]\]\)$"):  # short: shown, on one line
        net.train_step(np.zeros((2, 8, 8), np.uint8), np.array([[1], [2]]), 0.1)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_filters": np.int64(8), "num_classes": np.int64(10)}, {"image_shape": (np.int64(28), np.uint16(28))}],
    ids=["numpy-counts", "numpy-sides"],
)
def test_numpy_integers_are_integers(kwargs):
    net = scratch.tutorial_network(0, **kwargs)
    assert net.spec.text == "conv3x8,pool2,dense10" and net.image_shape == (28, 28)
    assert all(type(side) is int for side in net.image_shape)


def test_a_parsed_spec_with_an_image_shape_that_is_no_pair_is_one_error():
    with pytest.raises(ValueError, match=r"^image_shape: expected \(height, width\) as two positive integers, got 28"):
        scratch.build_network(scratch.parse_spec(), image_shape=28)


def test_an_unknown_layer_name_is_a_key_error_naming_the_network():
    with pytest.raises(KeyError, match=r"'conv9' is not a layer of conv3x8,pool2,dense10"):
        scratch.tutorial_network(0).layer("conv9")


def test_a_network_update_after_one_layer_updated_alone_moves_no_weight():
    net = scratch.tutorial_network(0)
    net.forward_backward(_image(), 3)
    net.layer("dense1").update(0.005)  # uses dense1's gradients up
    before = snapshot(net)
    with pytest.raises(ValueError, match=r"^Dense.update: no gradient of its weights"):
        net.update(0.005)
    assert_parameters_equal(net, before)  # conv1 did not move either
