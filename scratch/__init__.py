"""Sequential CNNs from scratch in NumPy, built from a spec: every tensor named, PyTorch semantics by default.

`import scratch` imports NumPy only, never torch, and runs nothing.
"""

from scratch.conv import Conv, ConvLoops
from scratch.dense import Dense, DenseLoops
from scratch.loss import SOFTMAX_MODES, SoftmaxCrossEntropy
from scratch.maxpool import TIE_POLICIES, MaxPool, MaxPoolLoops
from scratch.network import IMPLEMENTATIONS, LAYER_CLASSES, Network, StepTrace, build_network, tutorial_network
from scratch.relu import ReLU, ReLULoops
from scratch.spec import DEFAULT_SPEC, LayerSpec, NetworkSpec, TensorInfo, parse_spec

__all__ = [
    "Conv",
    "ConvLoops",
    "DEFAULT_SPEC",
    "Dense",
    "DenseLoops",
    "IMPLEMENTATIONS",
    "LAYER_CLASSES",
    "LayerSpec",
    "MaxPool",
    "MaxPoolLoops",
    "Network",
    "NetworkSpec",
    "ReLU",
    "ReLULoops",
    "SOFTMAX_MODES",
    "SoftmaxCrossEntropy",
    "StepTrace",
    "TIE_POLICIES",
    "TensorInfo",
    "build_network",
    "parse_spec",
    "tutorial_network",
]
