"""One spec layer run by PyTorch on given arrays: what the reference says a layer should give for any weights,
input and output gradient (the diagnosis asks "what if the weights were the updated ones?", "what if only the first
window counted?").
"""

from __future__ import annotations

import numpy as np
import torch

from reference.bridge import torch_dtype
from reference.layouts import activation_to_scratch, activation_to_torch, layout_for
from reference.twin import build_module
from scratch.spec import LayerSpec


def layer_gradients(
    layer: LayerSpec, params: dict[str, np.ndarray], inputs: np.ndarray, d_out: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(output, dL/dinput, parameter gradients by name) of `layer` from `params` (scratch layouts, by parameter
    name: `filters`), its `inputs` and the gradient `d_out` at its output, all in scratch layouts."""
    dtype = torch_dtype(inputs.dtype)
    module = build_module(layer, dtype)
    layout = layout_for(layer)
    with torch.no_grad():
        for name, value in params.items():
            getattr(module, layout.torch_names[name]).copy_(_tensor(layout.param_to_torch(name, value)))
    x = _tensor(activation_to_torch(inputs)).requires_grad_(True)
    flat = x.flatten(1) if layer.kind == "dense" and x.ndim == 4 else x
    out = module(flat)
    gradient = _tensor(activation_to_torch(d_out))
    tensors = [x] + [getattr(module, layout.torch_names[name]) for name in params]
    d_x, *d_params = torch.autograd.grad(out, tensors, gradient)
    grads = {name: layout.param_to_scratch(name, grad.numpy()) for name, grad in zip(params, d_params, strict=True)}
    return activation_to_scratch(out.detach().numpy()), activation_to_scratch(d_x.numpy()), grads


def _tensor(array: np.ndarray) -> torch.Tensor:
    """`array` as a new tensor. A copy in C order: NumPy calls an array whose size-1 axis is reversed contiguous and
    keeps its negative stride (the diagnosis flips kernels, 1x1 ones too), which torch.from_numpy refuses."""
    return torch.from_numpy(np.array(array, order="C"))
