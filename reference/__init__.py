"""The PyTorch twin of the scratch network and the exact weight bridge between their layouts."""

from reference.bridge import load_into_torch, parameters_to_scratch, to_scratch, to_torch
from reference.runner import ReferenceRunner
from reference.twin import TutorialTwin

__all__ = ["ReferenceRunner", "TutorialTwin", "load_into_torch", "parameters_to_scratch", "to_scratch", "to_torch"]
