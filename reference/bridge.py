"""The weight bridge: scratch layouts <-> PyTorch layouts, exactly (transposes and reshapes only, no arithmetic).

Scratch (the tutorial)                      PyTorch
filters    (F, 3, 3)  or (F, 3, 3, C)       conv.weight  (F, C, 3, 3)
activations (H, W, F)  HWC                  (1, F, H, W) NCHW
dense weights (in, out), in = (i*W + j)*F + f   dense.weight (out, in), in = f*H*W + i*W + j   (Flatten on NCHW)
dense biases (out,)                         dense.bias (out,)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # the bridge imports both sides lazily: reference.twin imports nothing from here
    import scratch
    from reference.twin import TutorialTwin


def filters_to_torch(filters: np.ndarray) -> np.ndarray:
    """Scratch filters `(F, 3, 3)` or `(F, 3, 3, C)` -> PyTorch `(F, C, 3, 3)`."""
    if filters.ndim == 3:
        return filters[:, np.newaxis]
    return filters.transpose(0, 3, 1, 2)


def filters_to_scratch(weight: np.ndarray, two_d_input: bool) -> np.ndarray:
    """PyTorch `(F, C, 3, 3)` -> scratch `(F, 3, 3)` (2-D input, C must be 1) or `(F, 3, 3, C)`."""
    if two_d_input:
        if weight.shape[1] != 1:
            raise ValueError(f"conv weight: a 2-D-input Conv3x3 needs 1 input channel, got shape {weight.shape}")
        return weight[:, 0]
    return weight.transpose(0, 2, 3, 1)


def dense_weights_to_torch(weights: np.ndarray, pooled_shape: tuple[int, int, int]) -> np.ndarray:
    """Scratch `(in, out)` with HWC-flattened rows -> PyTorch `(out, in)` with NCHW-flattened columns."""
    height, width, channels = pooled_shape
    return weights.reshape(height, width, channels, -1).transpose(3, 2, 0, 1).reshape(weights.shape[1], -1)


def dense_weights_to_scratch(weight: np.ndarray, pooled_shape: tuple[int, int, int]) -> np.ndarray:
    """PyTorch `(out, in)` with NCHW-flattened columns -> a new scratch `(in, out)` array, HWC-flattened rows."""
    height, width, channels = pooled_shape
    outputs = weight.shape[0]
    scratch = np.empty((height * width * channels, outputs), weight.dtype)  # (in, out), rows in (i, j, f) order
    by_position = weight.reshape(outputs, channels, height, width).transpose(2, 3, 1, 0)  # (H, W, F, out) view
    np.copyto(scratch.reshape(height, width, channels, outputs), by_position)
    return scratch


def nchw_to_hwc(activation: np.ndarray) -> np.ndarray:
    """A `(1, C, H, W)` PyTorch activation (or its gradient), as NumPy -> a scratch `(H, W, C)` view."""
    return activation[0].transpose(1, 2, 0)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A detached NumPy copy of `tensor` (a copy, so later in-place SGD cannot change a recorded value)."""
    return tensor.detach().numpy().copy()


_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    """The PyTorch dtype of a scratch float dtype."""
    return _TORCH_DTYPES[np.dtype(dtype)]


def to_torch(net: scratch.Network) -> TutorialTwin:
    """A `TutorialTwin` holding exactly `net`'s weights (same dtype, same values, PyTorch layouts)."""
    from reference.twin import TutorialTwin

    twin = TutorialTwin(
        image_shape=net.image_shape,
        num_filters=net.conv.num_filters,
        num_classes=net.num_classes,
        in_channels=net.conv.in_channels or 1,
        dtype=torch_dtype(net.dtype),
    )
    load_into_torch(twin, net.parameters())
    return twin


def load_into_torch(twin: TutorialTwin, params: dict[str, np.ndarray]) -> None:
    """Copy scratch-layout parameters into `twin` in place, checking every shape and dtype first."""
    expected = parameters_to_scratch(twin)
    for name, want in expected.items():
        got = params[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ValueError(
                f"architecture mismatch at {name}: the PyTorch twin needs {want.shape} {want.dtype}, "
                f"the scratch network has {got.shape} {got.dtype}"
            )
    with torch.no_grad():
        twin.conv.weight.copy_(torch.from_numpy(filters_to_torch(params["filters"]).copy()))
        twin.dense.weight.copy_(torch.from_numpy(dense_weights_to_torch(params["dense_weights"], twin.pooled_shape)))
        twin.dense.bias.copy_(torch.from_numpy(params["dense_biases"]))


def parameter_views(twin: TutorialTwin) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy views (no copies) of the twin's conv weight, dense weight and dense bias, in PyTorch layouts.

    They follow the live values: `torch.optim.SGD` and `load_into_torch` change the parameters in place.
    """
    return tuple(parameter.detach().numpy() for parameter in (twin.conv.weight, twin.dense.weight, twin.dense.bias))


def parameters_to_scratch(
    twin: TutorialTwin, views: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """The twin's parameters as NumPy copies in scratch layouts, under scratch's parameter names.

    `views` are the twin's `parameter_views`, when the caller keeps them (saves a few torch calls per step).
    """
    filters, dense_weights, dense_biases = views or parameter_views(twin)
    return {
        "filters": filters_to_scratch(filters, two_d_input=twin.conv.in_channels == 1).copy(),
        "dense_weights": dense_weights_to_scratch(dense_weights, twin.pooled_shape),  # a new array
        "dense_biases": dense_biases.copy(),
    }


def to_scratch(module: torch.nn.Module, **network_options: object) -> scratch.Network:
    """A scratch network holding exactly `module`'s weights; refuses a module that is not the tutorial's shape."""
    import scratch
    from reference.twin import TutorialTwin

    _check_architecture(module)
    assert isinstance(module, TutorialTwin)
    dtype = module.conv.weight.dtype
    numpy_dtype = {value: key for key, value in _TORCH_DTYPES.items()}[dtype]
    net = scratch.tutorial_network(
        dtype=numpy_dtype,
        num_filters=module.conv.out_channels,
        image_shape=module.image_shape,
        num_classes=module.dense.out_features,
        **network_options,
    )
    net.load_parameters(parameters_to_scratch(module))
    return net


def _check_architecture(module: torch.nn.Module) -> None:
    from reference.twin import TutorialTwin

    problems = []
    if not isinstance(module, TutorialTwin):
        problems.append(f"expected a reference.TutorialTwin, got {type(module).__name__}")
    else:
        conv, dense = module.conv, module.dense
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.bias is not None:
            problems.append("conv must be 3x3, stride 1, no padding, no bias")
        if conv.in_channels != 1:
            problems.append(f"scratch.tutorial_network takes 1 input channel, the conv has {conv.in_channels}")
        if dense.in_features != int(np.prod(module.pooled_shape)):
            problems.append(f"dense takes {dense.in_features} inputs, the pool gives {module.pooled_shape}")
        if conv.weight.dtype not in _TORCH_DTYPES.values() or dense.weight.dtype != conv.weight.dtype:
            problems.append(f"weights must all be float32 or float64, got {conv.weight.dtype}, {dense.weight.dtype}")
    if problems:
        raise ValueError("cannot bridge this module to scratch: " + "; ".join(problems))
