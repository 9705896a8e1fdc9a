"""The weight bridge between a scratch network and its twin: exact, by spec name, in either direction.

Layouts are `reference.layouts`' business; this module pairs each spec parameter (`conv1.filters`) with its torch
tensor and checks names, shapes and dtypes before anything is copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from reference.layouts import LayerLayout, layout_for
from reference.twin import Twin

if TYPE_CHECKING:  # scratch.network is imported where a network is built
    import scratch

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
_NUMPY_DTYPES = {value: key for key, value in _TORCH_DTYPES.items()}


def torch_dtype(dtype: object) -> torch.dtype:
    """The torch dtype of a NumPy float32/float64 dtype."""
    try:
        return _TORCH_DTYPES[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise ValueError(f"dtype: expected float32 or float64, got {dtype!r}") from None


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The NumPy dtype of a torch float32/float64 dtype."""
    try:
        return _NUMPY_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}") from None


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A detached NumPy copy of `tensor` (a copy, so a later in-place update cannot change it)."""
    return tensor.detach().numpy().copy()


@dataclass(frozen=True)
class ParameterLink:
    """One spec parameter and the torch tensor that holds it, with the converter between their layouts."""

    name: str  # the spec name, e.g. `conv1.filters`
    param: str  # the scratch parameter name, e.g. `filters`
    shape: tuple[int, ...]  # the scratch-layout shape
    tensor: torch.nn.Parameter
    layout: LayerLayout

    def to_scratch(self, value: np.ndarray) -> np.ndarray:
        """A torch-layout value of this parameter (or its gradient) in scratch's layout, a view where possible."""
        return self.layout.param_to_scratch(self.param, value)

    def to_torch(self, value: np.ndarray) -> np.ndarray:
        """A scratch-layout value of this parameter in torch's layout, a view where possible."""
        return self.layout.param_to_torch(self.param, value)


def parameter_links(twin: Twin) -> tuple[ParameterLink, ...]:
    """Every parameter of `twin`, in spec order (`spec.parameter_names`)."""
    links = []
    for layer in twin.spec.layers:
        layout, module = layout_for(layer), twin.module(layer.name)
        for param, shape in layer.params:
            tensor = getattr(module, layout.torch_names[param])
            links.append(ParameterLink(f"{layer.name}.{param}", param, shape, tensor, layout))
    return tuple(links)


def to_torch(net: scratch.Network, tie_policy: str = "first") -> Twin:
    """A twin of `net`'s spec holding exactly `net`'s weights (same dtype, same bits, torch layouts); its pools
    route ties by `tie_policy` (PyTorch's "first", or the tutorial's "all")."""
    from scratch.network import Network  # scratch is NumPy only: cheap, and only needed here

    if not isinstance(net, Network):
        raise ValueError(f"net: expected a scratch.Network (from scratch.build_network), got {type(net).__name__}")
    twin = Twin(net.spec, torch_dtype(net.dtype), tie_policy)
    load_into_torch(twin, net.parameters())
    return twin


def load_into_torch(twin: Twin, params: dict[str, np.ndarray]) -> None:
    """Copy scratch-layout parameters into `twin` in place; every name, shape and dtype is checked first."""
    if not isinstance(twin, Twin):
        raise ValueError(f"twin: expected a reference.Twin (from reference.to_torch(net)), got {type(twin).__name__}")
    if not isinstance(params, dict):
        raise ValueError(f"params: expected a dict of arrays by spec name, got {type(params).__name__}")
    links = parameter_links(twin)
    check_parameters(twin, links, params)
    with torch.no_grad():
        for link in links:
            link.tensor.copy_(torch.from_numpy(link.to_torch(params[link.name])))


def check_parameters(twin: Twin, links: tuple[ParameterLink, ...], params: dict[str, np.ndarray]) -> None:
    """One ValueError naming every missing, unknown or mis-shaped parameter (with both shapes and dtypes), if any."""
    dtype, expected = numpy_dtype(twin.dtype), [link.name for link in links]
    problems = [f"missing {name}" for name in expected if name not in params]
    problems += [f"unknown {name}" for name in params if name not in expected]
    for link in links:
        if link.name not in params:
            continue  # named missing above
        value = params[link.name]
        got = f"{value.shape} {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
        if got != f"{link.shape} {dtype}":
            problems.append(f"{link.name}: the twin needs {link.shape} {dtype}, got {got}")
    if problems:
        raise ValueError(f"parameters do not fit the twin of {twin.spec.text}: " + "; ".join(problems))


def parameters_to_scratch(twin: Twin, links: tuple[ParameterLink, ...] | None = None) -> dict[str, np.ndarray]:
    """The twin's parameters as NumPy copies in scratch layouts, under spec names.

    `links` are the twin's `parameter_links`, when the caller keeps them (saves rebuilding them every step).
    """
    result = {}
    for link in links or parameter_links(twin):
        live = link.tensor.detach().numpy()  # shares the parameter's memory: SGD changes it in place
        result[link.name] = owned_copy(link.to_scratch(live), live)
    return result


def owned_copy(value: np.ndarray, source: np.ndarray) -> np.ndarray:
    """`value` as a C-contiguous array sharing no memory with `source`, copied at most once."""
    if np.may_share_memory(value, source):
        return np.array(value, order="C")
    return np.ascontiguousarray(value)  # a conversion that had to reorder elements already made a fresh copy


def to_scratch(module: torch.nn.Module, **network_options: object) -> scratch.Network:
    """A scratch network of the twin's spec holding exactly its weights; `network_options` go to `build_network`."""
    if not isinstance(module, Twin):
        raise ValueError(
            f"cannot bridge this module to scratch: expected a reference.Twin built from a spec, "
            f"got {type(module).__name__}"
        )
    from scratch.network import build_network

    spec = module.spec
    options = {"image_shape": spec.image_shape, "num_classes": spec.num_classes, "tie_policy": module.tie_policy}
    options |= network_options  # the twin's pools route ties by its rule; scratch's do too, unless told otherwise
    net = build_network(spec, dtype=numpy_dtype(module.dtype), **options)
    net.load_parameters(parameters_to_scratch(module))
    return net
