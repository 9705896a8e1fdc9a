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
    parameter_views,
    parameters_to_scratch,
)
from reference.twin import TutorialTwin


class ReferenceRunner:
    """The twin with plain `torch.optim.SGD`, stepped per sample like the tutorial."""

    def __init__(self, twin: TutorialTwin, lr: float = 0.005) -> None:
        self.twin = twin
        self.dtype = twin.conv.weight.dtype
        self.optimizer = torch.optim.SGD(twin.parameters(), lr=lr)
        self._parameters = (twin.conv.weight, twin.dense.weight, twin.dense.bias)  # the order of `PARAMETERS`
        self._parameter_views = parameter_views(twin)  # live NumPy views: SGD updates the parameters in place

    def image_tensor(self, image: np.ndarray) -> torch.Tensor:
        """The tutorial's `image / 255 - 0.5` in the twin's dtype, as a `(1, 1, H, W)` batch."""
        pixels = torch.from_numpy(np.ascontiguousarray(image)).to(self.dtype)
        return (pixels / 255 - 0.5).reshape(1, 1, *image.shape)

    def forward_backward(self, image: np.ndarray, label: int, everything: bool = True) -> dict[str, np.ndarray]:
        """Forward, cross-entropy, backward: every named tensor as a NumPy array in scratch layout.

        With `everything=False` it is a bare training step that returns only what it computes anyway and is small:
        `logits`, `loss`, `d_dense_biases` and `d_filters` (no activation gradients, no input gradient; the lockstep's
        cheap path between strided full comparisons).
        """
        twin = self.twin
        x = self.image_tensor(image).requires_grad_(everything)
        conv_out = twin.conv(x)  # (1, F, H-2, W-2)
        pool_out = twin.pool(conv_out)  # (1, F, (H-2)//2, (W-2)//2)
        logits = twin.dense(twin.flatten(pool_out))  # (1, classes)
        loss = F.cross_entropy(logits, torch.tensor([label]))
        # One backward pass for exactly the gradients compared; the parameters' go where torch.optim.SGD reads them.
        activations = (x, conv_out, pool_out, logits) if everything else ()
        gradients = torch.autograd.grad(loss, self._parameters + activations)
        for parameter, gradient in zip(self._parameters, gradients, strict=False):
            parameter.grad = gradient
        if everything:
            return self._all_tensors(loss, activations, gradients)
        d_filters, _, d_dense_biases = (gradient.numpy() for gradient in gradients)
        return {
            "logits": logits.detach()[0].numpy(),
            "loss": loss.detach().numpy(),
            "d_dense_biases": d_dense_biases,
            "d_filters": filters_to_scratch(d_filters, two_d_input=True),
        }

    def _all_tensors(self, loss, activations, gradients) -> dict[str, np.ndarray]:
        """Every named tensor as a NumPy view (no copies: each is new this step) in scratch layout."""
        conv_out, pool_out, logits = (activation.detach() for activation in activations[1:])
        d_filters, d_dense_weights, d_dense_biases, d_image, d_conv_out, d_pool_out, d_logits = (
            gradient.numpy() for gradient in gradients
        )
        return {
            "loss": loss.detach().numpy(),
            "logits": logits.numpy()[0],
            "conv_out": nchw_to_hwc(conv_out.numpy()),
            "pool_out": nchw_to_hwc(pool_out.numpy()),
            "probs": torch.softmax(logits, dim=1).numpy()[0],
            "d_logits": d_logits[0],
            "d_dense_weights": dense_weights_to_scratch(d_dense_weights, self.twin.pooled_shape),
            "d_dense_biases": d_dense_biases,
            "d_pool_out": nchw_to_hwc(d_pool_out),
            "d_conv_out": nchw_to_hwc(d_conv_out),
            "d_filters": filters_to_scratch(d_filters, two_d_input=True),
            "d_image": d_image[0, 0],
        }

    def update(self, lr: float | None = None) -> None:
        """One `torch.optim.SGD` step from the gradients of the last backward (at `lr`, if given)."""
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.optimizer.step()
        for parameter in self._parameters:  # the recorded gradients are views of these: no later backward may add
            parameter.grad = None

    @torch.no_grad()
    def evaluate(self, image: np.ndarray, label: int) -> tuple[float, bool]:
        """Loss and correctness of one image, without backward."""
        logits = self.twin(self.image_tensor(image))
        loss = F.cross_entropy(logits, torch.tensor([label]))
        return float(loss), bool(int(logits[0].argmax()) == label)

    def parameters(self) -> dict[str, np.ndarray]:
        """The twin's parameters in scratch layouts (copies)."""
        return parameters_to_scratch(self.twin, self._parameter_views)

    def load_parameters(self, params: dict[str, np.ndarray]) -> None:
        """Set the twin's parameters from scratch-layout arrays."""
        load_into_torch(self.twin, params)
