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

    def forward_backward(self, image: np.ndarray, label: int, everything: bool = True) -> dict[str, np.ndarray]:
        """Forward, cross-entropy, backward: every named tensor as a NumPy array in scratch layout.

        With `everything=False` it is a bare training step that returns only `loss` and `logits` (no retained
        activation gradients, no input gradient): the lockstep's cheap path between strided full comparisons.
        """
        twin = self.twin
        self.optimizer.zero_grad(set_to_none=True)
        x = self.image_tensor(image).requires_grad_(everything)
        conv_out = twin.conv(x)  # (1, F, H-2, W-2)
        pool_out = twin.pool(conv_out)  # (1, F, (H-2)//2, (W-2)//2)
        logits = twin.dense(twin.flatten(pool_out))  # (1, classes)
        if everything:
            for activation in (conv_out, pool_out, logits):
                activation.retain_grad()
        loss = F.cross_entropy(logits, torch.tensor([label]))
        loss.backward()
        # Views, not copies: every tensor here is new this step (grads are reset to None), so none changes later.
        tensors = {"logits": logits.detach()[0].numpy(), "loss": loss.detach().numpy()}
        if everything:
            tensors |= self._all_tensors(x, conv_out, pool_out, logits)
        return tensors

    def _all_tensors(self, x, conv_out, pool_out, logits) -> dict[str, np.ndarray]:
        twin = self.twin
        return {
            "conv_out": nchw_to_hwc(conv_out),
            "pool_out": nchw_to_hwc(pool_out),
            "probs": torch.softmax(logits.detach()[0], dim=0).numpy(),
            "d_logits": logits.grad[0].numpy(),
            "d_dense_weights": dense_weights_to_scratch(twin.dense.weight.grad.numpy(), twin.pooled_shape),
            "d_dense_biases": twin.dense.bias.grad.numpy(),
            "d_pool_out": nchw_to_hwc(pool_out.grad),
            "d_conv_out": nchw_to_hwc(conv_out.grad),
            "d_filters": filters_to_scratch(twin.conv.weight.grad.numpy(), two_d_input=True),
            "d_image": x.grad[0, 0].numpy(),
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
