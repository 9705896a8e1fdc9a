"""Each layer alone against its torch twin module, forward and backward, in both dtypes and at batch 1 and 4.

One helper (`helper_test_layer`, after tinygrad's `helper_test_op`) builds the scratch layer and the twin's module
from the same weights, runs both forward and backward with the same upstream gradient, and compares the output, the
input gradient and every parameter gradient through the parity engine; each test is one line on top of it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import reference
import scratch
from parity.engine.compare import compare
from reference.bridge import parameter_links
from reference.layouts import activation_to_scratch, activation_to_torch

DTYPES = [pytest.param(np.float64, id="float64"), pytest.param(np.float32, id="float32")]
BATCHES = [pytest.param(1, id="batch1"), pytest.param(4, id="batch4")]


def layer_under_test(item: str, in_shape: tuple[int, ...]) -> tuple[str, tuple[int, int], str]:
    """A spec whose second layer is `item` with per-sample input `in_shape`: (spec, image shape, layer name).

    The first layer only gives `item` its input shape: a 1x1 conv makes C channels, a dense a flat input.
    """
    kind = item.rstrip("0123456789xb")
    if len(in_shape) == 1:
        first, image_shape = f"dense{in_shape[0]}", (2, 3)
    else:
        first, image_shape = f"conv1x{in_shape[2]}", in_shape[:2]
    counted = 2 if first.startswith(kind) else 1
    return f"{first},{item},dense3", image_shape, f"{kind}{counted}"


def helper_test_layer(item: str, in_shape: tuple[int, ...], dtype, batch: int, x: np.ndarray | None = None):
    """Forward + backward of one spec item in scratch and in torch from the same weights; every tensor compared."""
    spec_text, image_shape, name = layer_under_test(item, in_shape)
    net = scratch.build_network(spec_text, seed=1, dtype=dtype, image_shape=image_shape, num_classes=3)
    rng = np.random.default_rng(7)
    # Random biases too (they start at zero), so a bias that is added twice or not at all shows.
    net.load_parameters({n: rng.standard_normal(v.shape).astype(dtype) for n, v in net.parameters().items()})
    layer_spec, layer = net.spec.layer(name), net.layer(name)
    twin = reference.to_torch(net)
    x = rng.standard_normal((batch, *in_shape)).astype(dtype) if x is None else x
    out = layer.forward(x)
    d_out = rng.standard_normal(out.shape).astype(dtype)
    d_in = layer.backward(d_out)

    x_torch = torch.from_numpy(activation_to_torch(x).copy()).requires_grad_(True)
    out_torch = twin.forward_layer(layer_spec, x_torch)
    links = [link for link in parameter_links(twin) if link.name.startswith(f"{name}.")]
    grads = torch.autograd.grad(
        out_torch, [x_torch, *(link.tensor for link in links)], torch.from_numpy(activation_to_torch(d_out).copy())
    )
    scratch_side = {"out": out, "d_in": d_in} | {f"d_{link.param}": layer.grads[link.param] for link in links}
    reference_side = {"out": out_torch.detach(), "d_in": grads[0]}
    reference_side = {key: activation_to_scratch(value.numpy()) for key, value in reference_side.items()}
    for link, grad in zip(links, grads[1:], strict=True):
        reference_side[f"d_{link.param}"] = link.to_scratch(grad.numpy())
    results = [compare(f"{name}.{key}", value, reference_side[key], dtype) for key, value in scratch_side.items()]
    assert all(result.passed for result in results), "\n".join(result.message() for result in results)
    return layer


def distinct_values(batch: int, in_shape: tuple[int, ...], dtype) -> np.ndarray:
    """A random permutation of distinct, exactly representable values: no pool window has a tie."""
    size = batch * math.prod(in_shape)
    return (np.random.default_rng(3).permutation(size) - size / 2).astype(dtype).reshape(batch, *in_shape)


def param_id(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


CONVS = [
    pytest.param(f"conv{k}x4{'b' if bias else ''}", (9, 8, channels), id=f"conv{k}x4{'b' if bias else ''}-{channels}ch")
    for k in (1, 3, 5)
    for channels in (1, 3)
    for bias in (False, True)
]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("item", "in_shape"), CONVS)
def test_conv(item, in_shape, dtype, batch):
    helper_test_layer(item, in_shape, dtype, batch)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_shape", [(6, 7, 1), (5, 4, 3)], ids=param_id)
def test_relu(in_shape, dtype, batch):
    helper_test_layer("relu", in_shape, dtype, batch)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_shape", [(7, 9, 3), (11, 10, 2), (5, 5, 1)], ids=param_id)
@pytest.mark.parametrize("item", ["pool2", "pool3"])
def test_pool_without_ties(item, in_shape, dtype, batch):
    helper_test_layer(item, in_shape, dtype, batch, x=distinct_values(batch, in_shape, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("item", ["pool2", "pool3"])
def test_pool_routes_a_tied_window_to_its_first_maximum_like_torch(item, dtype):
    """A constant input ties every window; both sides send its gradient to the first element (row-major)."""
    layer = helper_test_layer(item, (7, 9, 2), dtype, 4, x=np.full((4, 7, 9, 2), 0.25, dtype))
    kernel = int(item[-1])
    assert layer.tied_windows == 4 * (7 // kernel) * (9 // kernel) * 2


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "in_shape",
    [pytest.param((5, 4, 3), id="after-image-5x4x3"), pytest.param((12,), id="after-flat-12")],
)
def test_dense(in_shape, dtype, batch):
    helper_test_layer("dense7", in_shape, dtype, batch)
