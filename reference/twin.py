"""The PyTorch twin of a scratch network, built from the same spec: one torch module per spec layer."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from scratch.spec import LayerSpec, NetworkSpec


def _conv(layer: LayerSpec, dtype: torch.dtype) -> nn.Module:
    return nn.Conv2d(layer.in_shape[2], layer.units, layer.kernel, bias=layer.bias, dtype=dtype)


def _dense(layer: LayerSpec, dtype: torch.dtype) -> nn.Module:
    return nn.Linear(math.prod(layer.in_shape), layer.units, dtype=dtype)


# One builder per layer kind: adding a kind is one line here (and one converter in reference.layouts).
TORCH_LAYERS: dict[str, Callable[[LayerSpec, torch.dtype], nn.Module]] = {
    "conv": _conv,
    "relu": lambda layer, dtype: nn.ReLU(),
    "pool": lambda layer, dtype: nn.MaxPool2d(layer.kernel),  # stride K, floor: the leftover rows are dropped
    "dense": _dense,
}


class Twin(nn.Module):
    """The spec's layers in PyTorch; `forward` takes an NCHW batch `(N, 1, H, W)` and returns the logits."""

    def __init__(self, spec: NetworkSpec, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        if not isinstance(spec, NetworkSpec):
            raise ValueError(f"Twin: expected a scratch NetworkSpec (scratch.parse_spec), got {type(spec).__name__}")
        self.spec, self.dtype = spec, dtype
        self.layers = nn.ModuleDict({layer.name: TORCH_LAYERS[layer.kind](layer, dtype) for layer in spec.layers})
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
