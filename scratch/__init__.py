"""The tutorial CNN from scratch in NumPy: every tensor named, PyTorch semantics by default.

`import scratch` imports NumPy only, never torch, and runs nothing.
"""

from scratch.conv import Conv3x3, Conv3x3Loops
from scratch.maxpool import TIE_POLICIES, MaxPool2, MaxPool2Loops
from scratch.network import (
    BACKWARD_TENSORS,
    FORWARD_TENSORS,
    IMPLEMENTATIONS,
    PARAMETERS,
    Network,
    StepTrace,
    tutorial_network,
)
from scratch.softmax import SOFTMAX_MODES, Softmax, SoftmaxLoops

__all__ = [
    "BACKWARD_TENSORS",
    "Conv3x3",
    "Conv3x3Loops",
    "FORWARD_TENSORS",
    "IMPLEMENTATIONS",
    "MaxPool2",
    "MaxPool2Loops",
    "Network",
    "PARAMETERS",
    "SOFTMAX_MODES",
    "Softmax",
    "SoftmaxLoops",
    "StepTrace",
    "TIE_POLICIES",
    "tutorial_network",
]
