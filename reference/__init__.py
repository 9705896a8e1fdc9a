"""The PyTorch twin of a scratch network, built from the same spec, and the exact weight bridge between them."""

from reference.bridge import load_into_torch, parameters_to_scratch, to_numpy, to_scratch, to_torch, torch_dtype
from reference.runner import ReferenceRunner
from reference.twin import Twin

__all__ = [
    "ReferenceRunner",
    "Twin",
    "load_into_torch",
    "parameters_to_scratch",
    "to_numpy",
    "to_scratch",
    "to_torch",
    "torch_dtype",
]
