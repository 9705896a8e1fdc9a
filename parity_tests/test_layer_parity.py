"""Each layer alone against its PyTorch counterpart, forward and backward, in both dtypes.

One helper (`check_layer`) runs both sides from one seeded draw and compares output, input gradient and
parameter gradients through the parity engine; each test is one line on top of it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from parity.testing import assert_parity
from scratch import Conv3x3, MaxPool2, Softmax
from scratch.layer import Layer

DTYPES = [pytest.param(np.float64, id="float64"), pytest.param(np.float32, id="float32")]
SEEDS = [0, 1, 2]


def check_layer(layer: Layer, torch_forward: Callable, x: np.ndarray, seed: int, constant: bool = False) -> None:
    """Forward + backward of `layer` vs `torch_forward(x, *params)` (both in scratch layouts), all tensors compared."""
    dtype = x.dtype
    rng = np.random.default_rng(seed + 1000)
    out = layer.forward(x)
    d_out = rng.standard_normal(out.shape).astype(dtype)
    d_input = layer.backward(d_out)
    x_torch = torch.from_numpy(x.copy()).requires_grad_(True)
    params = {name: torch.from_numpy(value.copy()).requires_grad_(True) for name, value in layer.parameters().items()}
    out_torch = torch_forward(x_torch, *params.values())
    out_torch.backward(torch.from_numpy(d_out))
    scratch_side = {"out": out, "d_input": d_input, **{f"d_{n}": layer.grads[n] for n in params}}
    reference_side = {"out": out_torch.detach().numpy(), "d_input": x_torch.grad.numpy()}
    reference_side |= {f"d_{n}": p.grad.numpy() for n, p in params.items()}
    assert_parity(scratch_side, reference_side, dtype, names=list(reference_side), context=type(layer).__name__)


def torch_conv(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """PyTorch conv2d on scratch layouts: (H, W[, C]) input, (F, 3, 3[, C]) filters, (H-2, W-2, F) output."""
    x_nchw = (x if x.ndim == 3 else x[..., None]).permute(2, 0, 1)[None]
    weight = filters[:, None] if filters.ndim == 3 else filters.permute(0, 3, 1, 2)
    return F.conv2d(x_nchw, weight)[0].permute(1, 2, 0)


def torch_pool(x: torch.Tensor) -> torch.Tensor:
    """PyTorch max_pool2d(2) on an (H, W, C) input."""
    return F.max_pool2d(x.permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0)


def torch_softmax(x: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor) -> torch.Tensor:
    """The tutorial's dense + softmax on the HWC-flattened input."""
    return torch.softmax(x.reshape(-1) @ weights + biases, dim=0)


def random(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(28, 28), (11, 13), (5, 3)], ids=lambda s: "x".join(map(str, s)))
def test_conv_2d_input(dtype, seed, shape):
    check_layer(Conv3x3(8, rng=np.random.default_rng(seed), dtype=dtype), torch_conv, random(shape, dtype, seed), seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(12, 12, 3), (9, 7, 8)], ids=lambda s: "x".join(map(str, s)))
def test_conv_multichannel_input(dtype, seed, shape):
    layer = Conv3x3(4, in_channels=shape[2], rng=np.random.default_rng(seed), dtype=dtype)
    check_layer(layer, torch_conv, random(shape, dtype, seed), seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(26, 26, 8), (13, 11, 3), (3, 5, 1)], ids=lambda s: "x".join(map(str, s)))
def test_pool_without_ties(dtype, seed, shape):
    check_layer(MaxPool2(), torch_pool, random(shape, dtype, seed), seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [0.0, -0.5, 3.25])
@pytest.mark.parametrize("shape", [(26, 26, 8), (7, 9, 2)], ids=lambda s: "x".join(map(str, s)))
def test_pool_on_a_constant_input_ties_every_window(dtype, value, shape):
    layer = MaxPool2()
    check_layer(layer, torch_pool, np.full(shape, value, dtype=dtype), seed=0)
    assert layer.tied_windows == (shape[0] // 2) * (shape[1] // 2) * shape[2]


@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_with_partial_ties_from_quantised_values(dtype):
    """Values from {0, 1, 2}: many windows tie between two or three elements, not all four."""
    x = np.random.default_rng(5).integers(0, 3, (26, 26, 8)).astype(dtype)
    check_layer(MaxPool2(), torch_pool, x, seed=5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(13, 13, 8), (4, 5, 3)], ids=lambda s: "x".join(map(str, s)))
def test_softmax_layer(dtype, seed, shape):
    layer = Softmax(int(np.prod(shape)), 10, rng=np.random.default_rng(seed), dtype=dtype)
    layer.weights *= 50  # logits of order 1, so the softmax is not flat and its Jacobian matters
    check_layer(layer, torch_softmax, random(shape, dtype, seed), seed)
