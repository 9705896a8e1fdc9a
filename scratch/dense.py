"""Dense: a fully connected layer with a bias, on the HWC-flattened input (the tutorial's `Softmax` without its
softmax, which `scratch.loss` owns).

`weights` are `(in, out)`, rows in the HWC flatten order of the input; PyTorch's `Linear` stores `(out, in)` and
flattens NCHW (`reference.layouts` owns both mappings). Input `(N, ...)`, output `(N, out)`.
"""

from __future__ import annotations

import numpy as np

from scratch._checks import check_dtype
from scratch.layer import Layer


class Dense(Layer):
    """Vectorised dense layer: totals = x . W + b."""

    kind = "dense"
    param_names = ("weights", "biases")

    def __init__(
        self, input_len: int, nodes: int, rng: np.random.Generator | None = None, dtype: object = np.float64
    ) -> None:
        super().__init__()
        rng = np.random.default_rng(0) if rng is None else rng
        dtype = check_dtype(dtype)
        self.weights = (rng.standard_normal((input_len, nodes)) / input_len).astype(dtype)  # (in, out)
        self.biases = np.zeros(nodes, dtype=dtype)  # (out,)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Flatten each sample (HWC), then x . W + b: `(N, out)`."""
        inputs = self.weights.shape[0]
        if x.ndim < 2 or x[0].size != inputs:
            raise ValueError(f"dense input: expected (N, ...) with {inputs} values per sample, got shape {x.shape}")
        self.last_input_shape = x.shape
        self.last_input = x.reshape(x.shape[0], inputs)  # (N, in), HWC order
        # np.dot rather than @ throughout: the same BLAS call and bits, with less of NumPy's own work per call.
        return np.dot(self.last_input, self.weights) + self.biases  # (N, out)

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """dW = x^T . d, db = sum over the batch of d, dx = d . W^T (with W before any update)."""
        biases = np.add.reduce(d_L_d_out, axis=0)  # the ufunc itself: ndarray.sum wraps it in Python
        self.grads = {"weights": np.dot(self.last_input.T, d_L_d_out), "biases": biases}
        return np.dot(d_L_d_out, self.weights.T).reshape(self.last_input_shape)


class DenseLoops(Dense):
    """The tutorial's three gradient lines, one sample at a time: the spec."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The tutorial's `totals = np.dot(input, self.weights) + self.biases`, one sample at a time."""
        self.last_input_shape = x.shape
        self.last_input = x.reshape(x.shape[0], -1)
        totals = np.zeros((x.shape[0], self.weights.shape[1]), dtype=self.weights.dtype)
        for n, sample in enumerate(self.last_input):
            totals[n] = np.dot(sample, self.weights) + self.biases
        return totals

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """d_t/d_w = input, d_t/d_b = 1, d_t/d_inputs = weights, summed over the batch."""
        d_L_d_w = np.zeros_like(self.weights)
        d_L_d_b = np.zeros_like(self.biases)
        d_L_d_inputs = np.zeros_like(self.last_input)
        for n, d_L_d_t in enumerate(d_L_d_out):
            d_t_d_w, d_t_d_b, d_t_d_inputs = self.last_input[n], 1, self.weights
            d_L_d_w += d_t_d_w[np.newaxis].T @ d_L_d_t[np.newaxis]
            d_L_d_b += d_L_d_t * d_t_d_b
            d_L_d_inputs[n] = d_t_d_inputs @ d_L_d_t
        self.grads = {"weights": d_L_d_w, "biases": d_L_d_b}
        return d_L_d_inputs.reshape(self.last_input_shape)
