"""The PyTorch twin of a scratch network, built from the same spec: one torch module per spec layer."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from scratch.spec import LayerSpec, NetworkSpec


def _conv(layer: LayerSpec, dtype: torch.dtype) -> nn.Module:
    return nn.Conv2d(layer.in_shape[2], layer.units, layer.kernel, bias=layer.bias, dtype=dtype)


def _dense(layer: LayerSpec, dtype: torch.dtype) -> nn.Module:
    return nn.Linear(math.prod(layer.in_shape), layer.units, dtype=dtype)


class _EveryMaximum(torch.autograd.Function):
    """Max-pool whose backward gives a tied window's gradient to every maximum, in full: the tutorial's rule.

    PyTorch's own `max_pool2d` sends it to the first maximum only; this is the reference for code that keeps the
    tutorial's rule on purpose (`cnn-parity check --tie-policy all`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: int) -> torch.Tensor:
        out = F.max_pool2d(x, kernel)
        ctx.save_for_backward(x, out)
        ctx.kernel = kernel
        return out

    @staticmethod
    def backward(ctx, d_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, out = ctx.saved_tensors
        size = ctx.kernel
        height, width = out.shape[2] * size, out.shape[3] * size  # odd sizes floor: the rest gets no gradient
        spread = lambda t: t.repeat_interleave(size, dim=2).repeat_interleave(size, dim=3)  # noqa: E731
        d_x = torch.zeros_like(x)
        d_x[:, :, :height, :width] = torch.where(x[:, :, :height, :width] == spread(out), spread(d_out), 0)
        return d_x, None


class EveryMaximumPool(nn.Module):
    """`nn.MaxPool2d(K)` with the tutorial's tie rule in backward (see `_EveryMaximum`)."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The max of each K x K window, stride K."""
        return _EveryMaximum.apply(x, self.kernel)


TIE_POLICIES = ("first", "all")  # PyTorch's rule; the tutorial's


def _pool(layer: LayerSpec, dtype: torch.dtype, tie_policy: str = "first") -> nn.Module:
    # stride K, floor: the leftover rows are dropped
    return nn.MaxPool2d(layer.kernel) if tie_policy == "first" else EveryMaximumPool(layer.kernel)


# One builder per layer kind: adding a kind is one line here (and one converter in reference.layouts).
TORCH_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "conv": _conv,
    "relu": lambda layer, dtype: nn.ReLU(),
    "pool": _pool,
    "dense": _dense,
}


def build_module(layer: LayerSpec, dtype: torch.dtype, tie_policy: str = "first") -> nn.Module:
    """The torch module of one spec layer (a pool with `tie_policy`)."""
    if layer.kind == "pool":
        return TORCH_LAYERS["pool"](layer, dtype, tie_policy)
    return TORCH_LAYERS[layer.kind](layer, dtype)


class Twin(nn.Module):
    """The spec's layers in PyTorch; `forward` takes an NCHW batch `(N, 1, H, W)` and returns the logits."""

    def __init__(self, spec: NetworkSpec, dtype: torch.dtype = torch.float64, tie_policy: str = "first") -> None:
        super().__init__()
        if not isinstance(spec, NetworkSpec):
            raise ValueError(f"Twin: expected a scratch NetworkSpec (scratch.parse_spec), got {type(spec).__name__}")
        if tie_policy not in TIE_POLICIES:
            raise ValueError(f"tie_policy: expected one of {', '.join(TIE_POLICIES)}, got {tie_policy!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"dtype: expected torch.float32 or torch.float64 (reference.bridge.torch_dtype converts a NumPy one), "
                f"got {dtype!r}"
            )
        self.spec, self.dtype, self.tie_policy = spec, dtype, tie_policy
        self.layers = nn.ModuleDict({layer.name: build_module(layer, dtype, tie_policy) for layer in spec.layers})
        self.flatten = nn.Flatten()
        # A dense after an image-shaped input flattens it first (NCHW order: reference.layouts reorders the weights).
        self._flattens = frozenset(
            layer.name for layer in spec.layers if layer.kind == "dense" and len(layer.in_shape) == 3
        )

    def module(self, name: str) -> nn.Module:
        """The torch module of the spec layer called `name` (`conv1`, `pool1`, `dense1`, ...)."""
        return self.layers[name]

    def forward_layer(self, layer: LayerSpec, x: torch.Tensor) -> torch.Tensor:
        """One spec layer: its module, after the flatten a dense on an image-shaped input needs."""
        if layer.name in self._flattens:
            x = self.flatten(x)
        return self.layers[layer.name](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `(N, classes)` for an `(N, 1, H, W)` batch."""
        for layer in self.spec.layers:
            x = self.forward_layer(layer, x)
        return x
