"""The tutorial network: image -> Conv3x3 -> MaxPool2 -> Softmax, trained by per-sample SGD.

Every tensor the parity engine compares is produced here under one name (see `FORWARD_TENSORS`,
`BACKWARD_TENSORS`, `PARAMETERS`), in the scratch layouts: HWC activations, `(in, out)` dense weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scratch._checks import check_choice, check_dtype, check_image, check_label, check_lr
from scratch.conv import Conv3x3, Conv3x3Loops
from scratch.maxpool import MaxPool2, MaxPool2Loops
from scratch.softmax import Softmax, SoftmaxLoops

# Forward-then-backward order: the order in which a divergence is looked for.
FORWARD_TENSORS = ("conv_out", "pool_out", "logits", "probs", "loss")
BACKWARD_TENSORS = (
    "d_logits",
    "d_dense_weights",
    "d_dense_biases",
    "d_pool_out",
    "d_conv_out",
    "d_filters",
    "d_image",
)
PARAMETERS = ("filters", "dense_weights", "dense_biases")
IMPLEMENTATIONS = ("vectorized", "loops")
_LAYER_CLASSES = {"vectorized": (Conv3x3, MaxPool2, Softmax), "loops": (Conv3x3Loops, MaxPool2Loops, SoftmaxLoops)}


@dataclass
class StepTrace:
    """One forward + backward pass: every named tensor, plus the number of tied pool windows."""

    tensors: dict[str, np.ndarray]
    tied_windows: int
    correct: bool

    @property
    def loss(self) -> float:
        """The cross-entropy loss of the step."""
        return float(self.tensors["loss"])


class Network:
    """Conv3x3 -> MaxPool2 -> Softmax with the tutorial's training step; backward is separate from update."""

    def __init__(self, conv: Conv3x3, pool: MaxPool2, softmax: Softmax, image_shape: tuple[int, int]) -> None:
        self.conv, self.pool, self.softmax = conv, pool, softmax
        self.layers = [conv, pool, softmax]
        self.image_shape = tuple(image_shape)
        self.dtype = conv.filters.dtype
        self.num_classes = softmax.biases.shape[0]

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """The tutorial's `image / 255 - 0.5`, computed in the network's dtype."""
        check_image(image, self.image_shape)
        x = image.astype(self.dtype)  # a new array: the two steps below work in place on it
        x /= self.dtype.type(255)
        x -= self.dtype.type(0.5)
        return x

    def forward(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities for one raw image."""
        out = self.conv.forward(self.normalize(image))
        out = self.pool.forward(out)
        return self.softmax.forward(out)

    def evaluate(self, image: np.ndarray, label: int) -> tuple[float, bool]:
        """Loss and correctness of one image, without backward."""
        label = check_label(label, self.num_classes)
        probs = self.forward(image)
        return float(self._loss(label)), bool(np.argmax(probs) == label)

    def forward_backward(self, image: np.ndarray, label: int) -> StepTrace:
        """Run forward and backward for one image; every named tensor in the trace, no weight moved."""
        label = check_label(label, self.num_classes)
        x = self.normalize(image)
        conv_out = self.conv.forward(x)  # (H-2, W-2, F)
        pool_out = self.pool.forward(conv_out)  # ((H-2)//2, (W-2)//2, F)
        probs = self.softmax.forward(pool_out)  # (classes,)
        loss = self._loss(label)
        d_pool_out = self._backward_softmax(probs, label)
        d_conv_out = self.pool.backward(d_pool_out)
        d_image = self.conv.backward(d_conv_out)
        tensors = {
            "conv_out": conv_out,
            "pool_out": pool_out,
            "logits": self.softmax.last_totals,
            "probs": probs,
            "loss": loss,
            "d_logits": self.softmax.d_L_d_totals,
            "d_dense_weights": self.softmax.grads["weights"],
            "d_dense_biases": self.softmax.grads["biases"],
            "d_pool_out": d_pool_out,
            "d_conv_out": d_conv_out,
            "d_filters": self.conv.grads["filters"],
            # dL/d(normalised image); dL/d(raw pixel) is this / 255.
            "d_image": d_image,
        }
        return StepTrace(tensors, self.pool.tied_windows, bool(probs.argmax() == label))

    def update(self, lr: float) -> None:
        """Apply SGD to every layer from the gradients of the last backward."""
        lr = check_lr(lr)
        for layer in self.layers:
            layer.update(lr)

    def train_step(self, image: np.ndarray, label: int, lr: float = 0.005) -> tuple[float, bool]:
        """One SGD step on one image; returns (loss, correct). Bad input raises before any weight moves."""
        lr = check_lr(lr)
        trace = self.forward_backward(image, label)
        self.update(lr)
        return trace.loss, trace.correct

    def parameters(self) -> dict[str, np.ndarray]:
        """Live parameter arrays under their parity names (`filters`, `dense_weights`, `dense_biases`)."""
        return {
            "filters": self.conv.filters,
            "dense_weights": self.softmax.weights,
            "dense_biases": self.softmax.biases,
        }

    def load_parameters(self, params: dict[str, np.ndarray]) -> None:
        """Copy parameters in place; shapes and dtypes must match exactly."""
        missing = [name for name in self.parameters() if name not in params]
        if missing:
            raise ValueError(
                f"parameters: missing {', '.join(missing)} (expected filters, dense_weights, dense_biases)"
            )
        for name, current in self.parameters().items():
            new = np.asarray(params[name])
            if new.shape != current.shape or new.dtype != current.dtype:
                raise ValueError(f"{name}: expected shape {current.shape} {current.dtype}, got {new.shape} {new.dtype}")
        for name, current in self.parameters().items():
            current[...] = params[name]

    def _loss(self, label: int) -> np.ndarray:
        if self.softmax.mode == "tutorial":
            with np.errstate(divide="ignore", invalid="ignore"):
                return -np.log(self.softmax.last_probs[label])
        # Log-sum-exp, no overflow: max + log(sum(exp(logits - max))). The softmax forward computed that shift and
        # sum already (the same operations on the same values: the same result, ~2 us sooner); they are reused
        # only if they belong to these very logits.
        softmax, logits = self.softmax, self.softmax.last_totals
        if getattr(softmax, "last_shifted_totals", None) is logits:
            shift, exp_sum = softmax.last_shift, softmax.last_exp_sum
        else:
            shift = logits.max()
            exp_sum = np.sum(np.exp(logits - shift))
        return shift + np.log(exp_sum) - logits[label]

    def _backward_softmax(self, probs: np.ndarray, label: int) -> np.ndarray:
        if self.softmax.mode == "tutorial":
            gradient = np.zeros(self.num_classes, dtype=self.dtype)
            with np.errstate(divide="ignore"):
                gradient[label] = -1 / probs[label]
            return self.softmax.backward(gradient)
        d_L_d_logits = probs.copy()
        d_L_d_logits[label] -= 1  # d(cross-entropy)/dlogits = p - onehot
        return self.softmax.backward_logits(d_L_d_logits)


def tutorial_network(
    seed: int = 0,
    dtype: object = np.float64,
    *,
    num_filters: int = 8,
    image_shape: tuple[int, int] = (28, 28),
    num_classes: int = 10,
    tie_policy: str = "first",
    softmax: str = "stable",
    impl: str = "vectorized",
) -> Network:
    """Build the tutorial's CNN with its initialisation (filters randn/9, weights randn/input_len, zero biases)."""
    dtype = check_dtype(dtype)
    impl = check_choice("impl", impl, IMPLEMENTATIONS)
    height, width = image_shape
    if height < 4 or width < 4:
        raise ValueError(f"image_shape: expected at least 4x4 (3x3 conv then 2x2 pool), got {image_shape}")
    if num_filters < 1 or num_classes < 2:
        raise ValueError(f"expected num_filters >= 1 and num_classes >= 2, got {num_filters}, {num_classes}")
    conv_cls, pool_cls, softmax_cls = _LAYER_CLASSES[impl]
    rng = np.random.default_rng(seed)
    conv = conv_cls(num_filters, rng=rng, dtype=dtype)
    pool = pool_cls(tie_policy=tie_policy)
    pooled = ((height - 2) // 2) * ((width - 2) // 2) * num_filters
    dense = softmax_cls(pooled, num_classes, rng=rng, dtype=dtype, mode=softmax)
    return Network(conv, pool, dense, (height, width))
