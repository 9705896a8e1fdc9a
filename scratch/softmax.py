"""Softmax: the tutorial's dense layer with a softmax on top, on an HWC-flattened input.

`weights` are `(input_len, nodes)` (PyTorch's `Linear` stores `(nodes, input_len)`, and flattens NCHW: the bridge
in `reference/` owns both mappings). Two numerical modes:
- "stable" (default): probabilities from max-shifted logits; the network starts backward at dL/dlogits = p - onehot.
- "tutorial": `exp(totals) / sum` with no shift (overflows past ~709 in float64, ~88 in float32), and backward
  through the tutorial's `-1/p` initial gradient and its e^t / S^2 Jacobian.
"""

from __future__ import annotations

import numpy as np

from scratch._checks import check_choice, check_dtype
from scratch.layer import Layer

SOFTMAX_MODES = ("stable", "tutorial")


class Softmax(Layer):
    """Vectorised dense + softmax layer."""

    param_names = ("weights", "biases")

    def __init__(
        self,
        input_len: int,
        nodes: int,
        rng: np.random.Generator | None = None,
        dtype: object = np.float64,
        mode: str = "stable",
    ) -> None:
        super().__init__()
        rng = np.random.default_rng(0) if rng is None else rng
        dtype = check_dtype(dtype)
        self.weights = (rng.standard_normal((input_len, nodes)) / input_len).astype(dtype)  # (in, out)
        self.biases = np.zeros(nodes, dtype=dtype)  # (out,)
        self.mode = check_choice("softmax", mode, SOFTMAX_MODES)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Flatten HWC, totals = x . W + b (the logits), then softmax."""
        if x.size != self.weights.shape[0]:
            raise ValueError(f"Softmax input: expected {self.weights.shape[0]} values, got shape {x.shape}")
        self.last_input_shape = x.shape
        self.last_input = x.reshape(-1)  # (input_len,), HWC order
        self.last_totals = self.last_input @ self.weights + self.biases  # (nodes,) logits
        if self.mode == "stable":
            # Kept for the network's log-sum-exp loss, which would compute exactly these again.
            self.last_shifted_totals = self.last_totals
            self.last_shift = self.last_totals.max()
            exp = np.exp(self.last_totals - self.last_shift)
            self.last_exp_sum = np.add.reduce(exp, axis=0)  # np.sum's own reduction, without its ~1 us wrapper
            # No errstate needed (it costs ~2 us): shifted, every exp is <= 1 and the sum >= 1, so the division
            # cannot raise; NaN logits give NaN quietly.
            self.last_probs = exp / self.last_exp_sum
            return self.last_probs
        with np.errstate(over="ignore", invalid="ignore"):  # the tutorial's overflow is shown, not warned
            exp = np.exp(self.last_totals)
            self.last_probs = exp / np.sum(exp, axis=0)
        return self.last_probs

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """Backward from dL/d(probabilities): through the softmax Jacobian, then the dense layer."""
        return self.backward_logits(self._d_L_d_totals(d_L_d_out))

    def backward_logits(self, d_L_d_totals: np.ndarray) -> np.ndarray:
        """Backward from dL/dlogits: dW = x^T . d, db = d, dx = W . d (with W before any update)."""
        # The outer product x d^T as a (in, 1) @ (1, out) BLAS product: each entry is one rounded product, as in
        # np.outer, but ~7 us instead of ~15 (np.outer's broadcast loop runs only `out` = 10 elements at a time).
        d_L_d_w = np.dot(self.last_input[:, np.newaxis], d_L_d_totals[np.newaxis, :])  # (in, out)
        self.grads = {"weights": d_L_d_w, "biases": d_L_d_totals.copy()}
        self.d_L_d_totals = d_L_d_totals
        return (self.weights @ d_L_d_totals).reshape(self.last_input_shape)

    def _d_L_d_totals(self, d_L_d_out: np.ndarray) -> np.ndarray:
        if self.mode == "stable":
            probs = self.last_probs  # J^T v for softmax: p * (v - <v, p>)
            return probs * (d_L_d_out - d_L_d_out @ probs)
        # The tutorial's formula, which assumes a single nonzero entry of d_L_d_out.
        (nonzero,) = np.nonzero(d_L_d_out)
        i = int(nonzero[0])
        with np.errstate(over="ignore", invalid="ignore"):
            t_exp = np.exp(self.last_totals)
            S = np.sum(t_exp)
            d_out_d_t = -t_exp[i] * t_exp / (S**2)
            d_out_d_t[i] = t_exp[i] * (S - t_exp[i]) / (S**2)
            return d_L_d_out[i] * d_out_d_t


class SoftmaxLoops(Softmax):
    """The tutorial's backprop line by line (loop over d_L_d_out, act on the nonzero entry): the spec."""

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """The tutorial's walk over d_L_d_out; the Jacobian follows the layer's softmax mode."""
        for i, gradient in enumerate(d_L_d_out):
            if gradient == 0:
                continue
            with np.errstate(over="ignore", invalid="ignore"):
                if self.mode == "tutorial":
                    t_exp = np.exp(self.last_totals)
                    S = np.sum(t_exp)
                    d_out_d_t = -t_exp[i] * t_exp / (S**2)
                    d_out_d_t[i] = t_exp[i] * (S - t_exp[i]) / (S**2)
                else:
                    p = self.last_probs
                    d_out_d_t = -p[i] * p
                    d_out_d_t[i] = p[i] * (1 - p[i])
            d_L_d_t = gradient * d_out_d_t
            return self.backward_logits(d_L_d_t)
        raise ValueError("Softmax backward: d_L_d_out is all zeros (the tutorial expects one nonzero entry)")

    def backward_logits(self, d_L_d_totals: np.ndarray) -> np.ndarray:
        """The tutorial's three gradient lines."""
        d_t_d_w = self.last_input
        d_t_d_b = 1
        d_t_d_inputs = self.weights
        d_L_d_w = d_t_d_w[np.newaxis].T @ d_L_d_totals[np.newaxis]
        d_L_d_b = d_L_d_totals * d_t_d_b
        d_L_d_inputs = d_t_d_inputs @ d_L_d_totals
        self.grads = {"weights": d_L_d_w, "biases": d_L_d_b}
        self.d_L_d_totals = d_L_d_totals
        return d_L_d_inputs.reshape(self.last_input_shape)
