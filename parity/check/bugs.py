"""Realistic bugs for the self-test, each a small patch over a correct implementation: the tutorial's three
classes in parity/check/examples/fixed_cnn, and a two-conv network in parity/check/examples/two_conv_cnn
(`TWO_CONV_LAYERS`: a 5x5 conv on the image, ReLU, pool, a 5x5 conv on 8 channels with (F, C, K, K) filters,
ReLU, pool, the tutorial's Softmax).

A patch is a mixin class (`parity.check.patches`) that overrides one or two methods of one class (the line that
differs from the correct code is marked `# BUG:`); `with_bug` puts it in front of that class. Each bug says which
spec layer the check must blame first (`conv1` is `Conv3x3`, `pool1` is `MaxPool2`, `dense1` is `Softmax`'s dense
part and `loss` its softmax; in the two-conv network, a class used twice is blamed at its later layer, which backprop
reaches first) and what a real person would have done to make it; the self-test passes when `cnn-parity check`
catches every one and blames that layer. Some are loud (a flipped kernel breaks the forward pass at step 0), some are
invisible in the loss (the conv's input gradient is never used to train anything), and three only show under an edge
probe (an unshifted softmax, an odd-size pool edge, a ReLU's gradient at exactly 0).

The patches use the correct implementations' helpers (`Conv3x3.regions`, `MaxPool2.windows`/`max_position`,
`Softmax.totals_gradient`/`last_probs`, `ConvDeep.regions`/`input_gradient`), so they apply to those examples, not
to arbitrary code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from parity.check.loader import Impl
from parity.check.patches import (
    BiasGradientMean,
    ChwFlatten,
    DeepFilterGradientSummedOverChannels,
    DeepFiltersReadChannelsLast,
    DeepInputGradientFirstChannel,
    FirstConvFirstWindowOnly,
    FlippedKernel,
    Float32Conv,
    InputGradientAfterUpdate,
    InputGradientFlipped,
    JacobianSign,
    LastMax,
    LoopOffByOne,
    LrAppliedTwice,
    MissingBiasUpdate,
    OddEdgeShift,
    ReluGradientAtZero,
    ReluGradientUnmasked,
    SwappedIndices,
    TransposedWeightGradient,
    UnshiftedExp,
)

# The tutorial class that implements each spec layer of `conv3x8,pool2,dense10` (its Softmax computes the loss's
# softmax too).
TUTORIAL_CLASS = {"conv1": "Conv3x3", "pool1": "MaxPool2", "dense1": "Softmax", "loss": "Softmax"}


TUTORIAL, TWO_CONV = "tutorial", "two-conv"  # the correct implementations the bugs patch
TWO_CONV_LAYERS = "ConvFirst(8),ReLU(),MaxPool2(),ConvDeep(16,8),ReLU(),MaxPool2(),Softmax(256,10)"


@dataclass(frozen=True)
class Bug:
    """One injected bug: where it is, what a person did to write it, and the patch."""

    name: str
    layer: str  # the spec layer the check must blame: the one whose code is wrong (`conv1`, ..., `loss`)
    mistake: str  # one sentence: what a real person would have done wrong
    patch: type  # a mixin overriding methods of the correct class that implements that layer
    base: str = TUTORIAL  # which correct implementation it patches
    in_class: str = ""  # the class the patch goes in front of (default: the tutorial class of `layer`)

    @property
    def cls(self) -> str:
        """The class the patch goes in front of: `Conv3x3`, `MaxPool2`, `Softmax`, `ConvDeep`, ..."""
        return self.in_class or TUTORIAL_CLASS[self.layer]


def with_bug(base: Impl, bug: Bug) -> Impl:
    """`base` with `bug.patch` in front of the class that implements `bug.layer`."""
    correct = base.classes[bug.cls]
    buggy = type(f"{correct.__name__}_{bug.name.replace('-', '_')}", (bug.patch, correct), {})
    return replace(base, classes={**base.classes, bug.cls: buggy}, label=f"{base.label} + {bug.name}")


TWO_CONV_BUGS: tuple[Bug, ...] = (
    Bug(
        "deep-filters-read-channels-last",
        "conv2",
        "reshaped (F, C, K, K) filters as if they were (F, K, K, C)",
        DeepFiltersReadChannelsLast,
        TWO_CONV,
        "ConvDeep",
    ),
    Bug(
        "deep-input-gradient-one-channel",
        "conv2",
        "computed the input gradient for channel 0 only, as the single-channel code did",
        DeepInputGradientFirstChannel,
        TWO_CONV,
        "ConvDeep",
    ),
    Bug(
        "deep-filter-gradient-channels-summed",
        "conv2",
        "summed the filter gradient over channels and gave every channel that sum",
        DeepFilterGradientSummedOverChannels,
        TWO_CONV,
        "ConvDeep",
    ),
    Bug(
        "relu-gradient-unmasked",
        "relu2",
        "passed the gradient through the ReLU everywhere, negative inputs included",
        ReluGradientUnmasked,
        TWO_CONV,
        "ReLU",
    ),
    Bug(
        "relu-gradient-at-zero",
        "relu2",
        "masked the ReLU gradient with >= 0, passing it at an input of exactly 0 (only the relu-zero probe has one)",
        ReluGradientAtZero,
        TWO_CONV,
        "ReLU",
    ),
    Bug(
        "first-conv-first-window-only",
        "conv1",
        "broke out of the region loop after the first window",
        FirstConvFirstWindowOnly,
        TWO_CONV,
        "ConvFirst",
    ),
    Bug(
        "two-conv-pool-last-max",
        "pool2",
        "kept the running max with >=, so a tied window routes to its last maximum",
        LastMax,
        TWO_CONV,
        "MaxPool2",
    ),
)

TUTORIAL_BUGS: tuple[Bug, ...] = (
    Bug("flipped-kernel", "conv1", "implemented a textbook convolution, flipping the kernel", FlippedKernel),
    Bug(
        "lr-applied-twice",
        "conv1",
        "scaled the filter gradient by the learning rate, then updated with lr again",
        LrAppliedTwice,
    ),
    Bug("float32-conv", "conv1", "ran the convolution in float32 for speed and cast the result back", Float32Conv),
    Bug(
        "conv-loop-off-by-one",
        "conv1",
        "wrote range(h - 3) for the regions, leaving the last output row and column zero",
        LoopOffByOne,
    ),
    Bug(
        "conv-input-gradient-flipped",
        "conv1",
        "flipped the kernel for the input gradient of a cross-correlation",
        InputGradientFlipped,
    ),
    Bug(
        "pool-last-max",
        "pool1",
        "kept the running max with >=, so a tied window routes to its last maximum",
        LastMax,
    ),
    Bug(
        "pool-odd-edge-shift",
        "pool1",
        "wrote the windows back aligned to the far edge, shifting an odd input's gradient",
        OddEdgeShift,
    ),
    Bug("pool-swapped-indices", "pool1", "swapped i and j when writing the gradient back", SwappedIndices),
    Bug(
        "transposed-weight-gradient",
        "dense1",
        "reshaped a (nodes, input_len) gradient instead of transposing it",
        TransposedWeightGradient,
    ),
    Bug("chw-flatten", "dense1", "flattened channel-first as PyTorch does, against HWC-ordered weights", ChwFlatten),
    Bug("missing-bias-update", "dense1", "forgot the bias update", MissingBiasUpdate),
    Bug("softmax-jacobian-sign", "dense1", "dropped the minus sign of the off-diagonal softmax Jacobian", JacobianSign),
    Bug(
        "input-gradient-after-update",
        "dense1",
        "computed the input gradient with the already-updated weights",
        InputGradientAfterUpdate,
    ),
    Bug(
        "bias-gradient-mean",
        "dense1",
        "divided the bias gradient by the number of classes, like a batch mean",
        BiasGradientMean,
    ),
    Bug("softmax-unshifted-exp", "loss", "removed the max-subtraction from the softmax as a no-op", UnshiftedExp),
)

BUGS: tuple[Bug, ...] = TUTORIAL_BUGS + TWO_CONV_BUGS
