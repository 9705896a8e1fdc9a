"""What the reference feeds one layer so the side under test can be judged on that layer alone."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scratch.spec import LayerSpec


@dataclass(frozen=True)
class LayerFeed:
    """The reference's view of one layer at one step, in scratch layouts.

    A side runs its own layer forward on `inputs` and backward on `d_out`, from `params`; what it gives back is
    compared with the reference's tensors of that layer, so a layer fed from the reference is never blamed for what
    a layer before it got wrong.
    """

    layer: LayerSpec
    inputs: np.ndarray  # the reference's input to the layer (the normalised image for the first)
    d_out: np.ndarray  # the reference's gradient at the layer's output
    params: dict[str, np.ndarray]  # the reference's weights before the step, by parameter name (`filters`)
    gradients: dict[str, np.ndarray]  # the reference's parameter gradients, to judge the update rule alone
    labels: np.ndarray
    lr: float
    logits: np.ndarray | None = None  # the last layer only: the reference's logits, which the loss is judged on
