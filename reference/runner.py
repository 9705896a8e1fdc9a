"""Drive the twin one image at a time and hand back every named tensor in scratch layouts."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from reference.bridge import (
    dense_weights_to_scratch,
    filters_to_scratch,
    load_into_torch,
    nchw_to_hwc,
    parameters_to_scratch,
    to_numpy,
)
from reference.twin import TutorialTwin


class ReferenceRunner:
    """The twin with plain `torch.optim.SGD`, stepped per sample like the tutorial."""

    def __init__(self, twin: TutorialTwin, lr: float = 0.005) -> None:
        self.twin = twin
        self.dtype = twin.conv.weight.dtype
        self.optimizer = torch.optim.SGD(twin.parameters(), lr=lr)

    def image_tensor(self, image: np.ndarray) -> torch.Tensor:
        """The tutorial's `image / 255 - 0.5` in the twin's dtype, as a `(1, 1, H, W)` batch."""
        pixels = torch.from_numpy(np.ascontiguousarray(image)).to(self.dtype)
        return (pixels / 255 - 0.5).reshape(1, 1, *image.shape)

    def forward_backward(self, image: np.ndarray, label: int) -> dict[str, np.ndarray]:
        """Forward, cross-entropy, backward: every named tensor as a NumPy array in scratch layout."""
        twin = self.twin
        self.optimizer.zero_grad(set_to_none=True)
        x = self.image_tensor(image).requires_grad_(True)
        conv_out = twin.conv(x)  # (1, F, H-2, W-2)
        pool_out = twin.pool(conv_out)  # (1, F, (H-2)//2, (W-2)//2)
        logits = twin.dense(twin.flatten(pool_out))  # (1, classes)
        for activation in (conv_out, pool_out, logits):
            activation.retain_grad()
        loss = F.cross_entropy(logits, torch.tensor([label]))
        loss.backward()
        return {
            "conv_out": nchw_to_hwc(conv_out),
            "pool_out": nchw_to_hwc(pool_out),
            "logits": to_numpy(logits[0]),
            "probs": to_numpy(torch.softmax(logits.detach()[0], dim=0)),
            "loss": to_numpy(loss),
            "d_logits": to_numpy(logits.grad[0]),
            "d_dense_weights": dense_weights_to_scratch(to_numpy(twin.dense.weight.grad), twin.pooled_shape),
            "d_dense_biases": to_numpy(twin.dense.bias.grad),
            "d_pool_out": nchw_to_hwc(pool_out.grad),
            "d_conv_out": nchw_to_hwc(conv_out.grad),
            "d_filters": filters_to_scratch(to_numpy(twin.conv.weight.grad), two_d_input=True),
            "d_image": to_numpy(x.grad[0, 0]),
        }

    def update(self, lr: float | None = None) -> None:
        """One `torch.optim.SGD` step from the gradients of the last backward (at `lr`, if given)."""
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.optimizer.step()

    @torch.no_grad()
    def evaluate(self, image: np.ndarray, label: int) -> tuple[float, bool]:
        """Loss and correctness of one image, without backward."""
        logits = self.twin(self.image_tensor(image))
        loss = F.cross_entropy(logits, torch.tensor([label]))
        return float(loss), bool(int(logits[0].argmax()) == label)

    def parameters(self) -> dict[str, np.ndarray]:
        """The twin's parameters in scratch layouts."""
        return parameters_to_scratch(self.twin)

    def load_parameters(self, params: dict[str, np.ndarray]) -> None:
        """Set the twin's parameters from scratch-layout arrays."""
        load_into_torch(self.twin, params)
