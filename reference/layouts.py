"""Scratch <-> PyTorch layouts, one converter per layer kind: the only place that knows a layout.

Scratch                                           PyTorch
activations   (N, H, W, C) NHWC, or flat (N, k)   (N, C, H, W) NCHW, or flat (N, k)
conv filters  (F, K, K) for C = 1, else (F, K, K, C)   Conv2d.weight (F, C, K, K)
conv biases   (F,)                                Conv2d.bias (F,)
dense weights (in, out), rows in HWC order        Linear.weight (out, in), columns in NCHW-flatten (CHW) order
dense biases  (out,)                              Linear.bias (out,)

Every conversion is a transpose, a reshape or a copy: no arithmetic, so a round trip is bit-exact. A conversion
returns a view where it can; callers that keep a result past the next in-place update copy it.
"""

from __future__ import annotations

import numpy as np

from scratch.spec import LayerSpec


def activation_to_torch(activation: np.ndarray) -> np.ndarray:
    """NHWC -> NCHW (a view); a flat `(N, k)` activation is the same in both."""
    return activation.transpose(0, 3, 1, 2) if activation.ndim == 4 else activation


def activation_to_scratch(activation: np.ndarray) -> np.ndarray:
    """NCHW -> NHWC (a view); a flat `(N, k)` activation is the same in both."""
    return activation.transpose(0, 2, 3, 1) if activation.ndim == 4 else activation


class LayerLayout:
    """A layer without parameters (relu, pool): only its activations change layout."""

    # scratch parameter name -> the torch module's attribute
    torch_names: dict[str, str] = {}

    def __init__(self, layer: LayerSpec) -> None:
        self.layer = layer

    def param_to_torch(self, name: str, value: np.ndarray) -> np.ndarray:
        """A scratch-layout parameter (or its gradient) in the torch module's layout."""
        raise KeyError(f"{self.layer.name} has no parameter {name!r}")

    def param_to_scratch(self, name: str, value: np.ndarray) -> np.ndarray:
        """A torch-layout parameter (or its gradient) in scratch's layout."""
        raise KeyError(f"{self.layer.name} has no parameter {name!r}")


class ConvLayout(LayerLayout):
    """Filters `(F, K, K[, C])` <-> `(F, C, K, K)`; biases are `(F,)` on both sides."""

    torch_names = {"filters": "weight", "biases": "bias"}

    def param_to_torch(self, name: str, value: np.ndarray) -> np.ndarray:
        """Scratch filters -> `(F, C, K, K)` (a view); biases unchanged."""
        if name == "biases":
            return value
        return value[:, np.newaxis] if value.ndim == 3 else value.transpose(0, 3, 1, 2)

    def param_to_scratch(self, name: str, value: np.ndarray) -> np.ndarray:
        """`(F, C, K, K)` -> scratch filters (a view): `(F, K, K)` for one input channel, else `(F, K, K, C)`."""
        if name == "biases":
            return value
        return value[:, 0] if self.layer.in_shape[2] == 1 else value.transpose(0, 2, 3, 1)


class DenseLayout(LayerLayout):
    """Weights `(in, out)` <-> `(out, in)`, reordering the inputs HWC <-> CHW after an image-shaped input."""

    torch_names = {"weights": "weight", "biases": "bias"}

    def param_to_torch(self, name: str, value: np.ndarray) -> np.ndarray:
        """Scratch `(in, out)` -> `(out, in)` with NCHW-flattened columns."""
        if name == "biases":
            return value
        if len(self.layer.in_shape) != 3:
            return value.T
        height, width, channels = self.layer.in_shape
        # Row (i*W + j)*C + c of scratch is column c*H*W + i*W + j of torch's Flatten on NCHW.
        return value.reshape(height, width, channels, -1).transpose(3, 2, 0, 1).reshape(value.shape[1], -1)

    def param_to_scratch(self, name: str, value: np.ndarray) -> np.ndarray:
        """`(out, in)` with NCHW-flattened columns -> scratch `(in, out)` with HWC-flattened rows."""
        if name == "biases":
            return value
        if len(self.layer.in_shape) != 3:
            return value.T
        height, width, channels = self.layer.in_shape
        return value.reshape(-1, channels, height, width).transpose(2, 3, 1, 0).reshape(-1, value.shape[0])


LAYOUTS: dict[str, type[LayerLayout]] = {
    "conv": ConvLayout,
    "relu": LayerLayout,
    "pool": LayerLayout,
    "dense": DenseLayout,
}


def layout_for(layer: LayerSpec) -> LayerLayout:
    """The converter of `layer`'s kind, for that layer's shapes."""
    return LAYOUTS[layer.kind](layer)
